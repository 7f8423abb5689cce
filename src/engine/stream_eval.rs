//! Early-detection evaluation (`eval --mode stream`): each labelled dialogue is replayed turn
//! by turn through the live monitor ([`super::monitor`]), and the per-turn risks tell how
//! early a fraud is caught and how often an honest dialogue raises a false alarm, for any
//! threshold and number of consecutive turns. `calibrate` picks the streaming rule that
//! keeps false alarms per honest dialogue under a target.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};

use super::monitor::{Monitor, MonitorConfig};
use crate::data::{Dialogue, Sample};
use crate::model::LoadedModel;

/// The per-turn risks of one dialogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DialogueRisks {
    pub id: String,
    pub label: bool,
    /// 1-based turn at which the fraudster first speaks, where per-turn labels exist
    /// (turn-level CSV).
    pub fraud_first_turn: Option<usize>,
    pub risks: Vec<f64>,
}

impl DialogueRisks {
    /// The 1-based turn whose alert fires under (threshold, k), if any.
    pub fn alert_turn(&self, threshold: f64, k: usize) -> Option<usize> {
        let mut run = 0;
        for (i, &p) in self.risks.iter().enumerate() {
            run = if p >= threshold { run + 1 } else { 0 };
            if run >= k.max(1) {
                return Some(i + 1);
            }
        }
        None
    }
}

/// Replays every sample turn by turn. `dialogues[i]`, when given, is the source of
/// `samples[i]` with per-turn labels.
pub fn replay(
    lm: &LoadedModel,
    samples: &[Sample],
    dialogues: Option<&[Dialogue]>,
    cfg: &MonitorConfig,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<DialogueRisks>> {
    let mut mon = Monitor::new(MonitorConfig {
        max_conversations: 1,
        ..cfg.clone()
    })?;
    let mut out = Vec::with_capacity(samples.len());
    for (i, s) in samples.iter().enumerate() {
        let turns = s.turns();
        let mut risks = Vec::with_capacity(turns.len());
        for (sp, tx) in &turns {
            if cancel.load(Ordering::Relaxed) {
                anyhow::bail!("cancelled");
            }
            if tx.trim().is_empty() && sp.trim().is_empty() {
                continue;
            }
            let r = mon
                .turn(lm, &s.id, sp, tx)
                .map_err(|e| e.context(format!("sample {}", s.id)))?;
            risks.push(r.p_fraud);
        }
        mon.end(&s.id);
        let fraud_first_turn = dialogues
            .and_then(|d| d.get(i))
            .and_then(|d| d.turns.iter().position(|t| t.is_fraud))
            .map(|p| p + 1);
        out.push(DialogueRisks {
            id: s.id.clone(),
            label: s.label.unwrap_or(false),
            fraud_first_turn,
            risks,
        });
        progress(i + 1, samples.len());
    }
    Ok(out)
}

/// Early-detection figures at one streaming rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamReport {
    pub threshold: f64,
    pub consecutive: usize,
    pub fraud_dialogues: usize,
    pub normal_dialogues: usize,
    /// Fraud dialogues with an alert, and their share.
    pub detected: usize,
    pub detection_rate: f64,
    /// Normal dialogues with an alert at any turn, and their share.
    pub false_alarms: usize,
    pub false_alarm_rate: f64,
    /// Over detected fraud dialogues: turns until the alert, counted from turn 1.
    pub mean_turns_to_alert: Option<f64>,
    pub median_turns_to_alert: Option<f64>,
    /// Over detected fraud dialogues: the alert turn as a share of the dialogue's turns.
    pub mean_share_to_alert: Option<f64>,
    /// Where per-turn labels exist: turns from the fraudster's first turn to the alert
    /// (1 = the alert fired on that turn; 0 or less: before the fraudster spoke).
    pub mean_turns_from_fraudster: Option<f64>,
    /// `detection_by_turn[t]`: share of fraud dialogues alerted by turn t+1.
    pub detection_by_turn: Vec<f64>,
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

pub fn report(risks: &[DialogueRisks], threshold: f64, consecutive: usize) -> StreamReport {
    let fraud: Vec<&DialogueRisks> = risks.iter().filter(|d| d.label).collect();
    let normal: Vec<&DialogueRisks> = risks.iter().filter(|d| !d.label).collect();
    let mut turns_to = Vec::new();
    let mut shares = Vec::new();
    let mut from_fraudster = Vec::new();
    let max_turns = fraud.iter().map(|d| d.risks.len()).max().unwrap_or(0);
    let mut by_turn = vec![0usize; max_turns];
    for d in &fraud {
        if let Some(t) = d.alert_turn(threshold, consecutive) {
            turns_to.push(t as f64);
            shares.push(t as f64 / d.risks.len().max(1) as f64);
            if let Some(f) = d.fraud_first_turn {
                from_fraudster.push(t as f64 - f as f64 + 1.0);
            }
            for c in by_turn.iter_mut().skip(t - 1) {
                *c += 1;
            }
        }
    }
    let false_alarms = normal
        .iter()
        .filter(|d| d.alert_turn(threshold, consecutive).is_some())
        .count();
    let share = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    StreamReport {
        threshold,
        consecutive,
        fraud_dialogues: fraud.len(),
        normal_dialogues: normal.len(),
        detected: turns_to.len(),
        detection_rate: share(turns_to.len(), fraud.len()),
        false_alarms,
        false_alarm_rate: share(false_alarms, normal.len()),
        mean_turns_to_alert: mean(&turns_to),
        median_turns_to_alert: median(&turns_to),
        mean_share_to_alert: mean(&shares),
        mean_turns_from_fraudster: mean(&from_fraudster),
        detection_by_turn: by_turn.iter().map(|&c| share(c, fraud.len())).collect(),
    }
}

/// The streaming rule (threshold, K ≤ `max_k`) with the highest detection rate whose false
/// alarms per honest dialogue stay at or under `target`; ties go to the earlier mean alert,
/// then the higher threshold. Thresholds tried: every per-turn risk seen (the rule changes
/// only there). `None` when no dialogue is honest or no rule keeps under the target (a
/// threshold above every risk always does, but detects nothing: then that rule is returned).
pub fn calibrate(risks: &[DialogueRisks], target: f64, max_k: usize) -> Option<StreamReport> {
    if !risks.iter().any(|d| !d.label) {
        return None;
    }
    let mut cands: Vec<f64> = risks.iter().flat_map(|d| d.risks.iter().copied()).collect();
    cands.sort_by(|a, b| a.total_cmp(b));
    cands.dedup();
    // thinning keeps calibration fast on big sets: at most ~2000 thresholds
    let step = (cands.len() / 2000).max(1);
    let mut thresholds: Vec<f64> = cands.iter().step_by(step).copied().collect();
    if let Some(&top) = cands.last() {
        // just above every risk: the rule that never fires
        thresholds.push((top + 1e-9).min(1.0));
    }
    let mut best: Option<StreamReport> = None;
    for k in 1..=max_k.max(1) {
        for &t in &thresholds {
            let r = report(risks, t, k);
            if r.false_alarm_rate > target {
                continue;
            }
            let better = match &best {
                None => true,
                Some(b) => {
                    let (ra, rb) = (r.detection_rate, b.detection_rate);
                    if (ra - rb).abs() > 1e-12 {
                        ra > rb
                    } else {
                        let (ma, mb) = (
                            r.mean_turns_to_alert.unwrap_or(f64::INFINITY),
                            b.mean_turns_to_alert.unwrap_or(f64::INFINITY),
                        );
                        if (ma - mb).abs() > 1e-12 {
                            ma < mb
                        } else {
                            r.threshold > b.threshold
                        }
                    }
                }
            };
            if better {
                best = Some(r);
            }
        }
    }
    best
}

/// A small text chart of detection rate against turns (for the CLI).
pub fn detection_chart(r: &StreamReport, width: usize) -> String {
    let mut s = String::new();
    let n = r.detection_by_turn.len();
    if n == 0 {
        return s;
    }
    let rows: Vec<usize> = if n <= 12 {
        (0..n).collect()
    } else {
        (0..12).map(|i| i * (n - 1) / 11).collect()
    };
    for i in rows {
        let v = r.detection_by_turn[i];
        let bar = (v * width as f64).round() as usize;
        s.push_str(&format!(
            "  turn {:>3} {:>5.1}% {}\n",
            i + 1,
            v * 100.0,
            "█".repeat(bar)
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(label: bool, risks: &[f64]) -> DialogueRisks {
        DialogueRisks {
            id: String::new(),
            label,
            fraud_first_turn: None,
            risks: risks.to_vec(),
        }
    }

    #[test]
    fn alert_turns_and_report() {
        let x = d(true, &[0.1, 0.6, 0.7, 0.2, 0.9]);
        assert_eq!(x.alert_turn(0.5, 1), Some(2));
        assert_eq!(x.alert_turn(0.5, 2), Some(3));
        assert_eq!(x.alert_turn(0.5, 3), None);
        assert_eq!(x.alert_turn(0.95, 1), None);
        let set = vec![
            x,
            d(true, &[0.2, 0.3, 0.8]),
            d(false, &[0.1, 0.55, 0.1]),
            d(false, &[0.1, 0.2]),
        ];
        let r = report(&set, 0.5, 1);
        assert_eq!((r.detected, r.false_alarms), (2, 1));
        assert_eq!(r.detection_rate, 1.0);
        assert_eq!(r.false_alarm_rate, 0.5);
        assert_eq!(r.mean_turns_to_alert, Some(2.5));
        assert_eq!(r.detection_by_turn, vec![0.0, 0.5, 1.0, 1.0, 1.0]);
        // K = 2 removes the honest dialogue's single spike but catches the first fraud later
        let r2 = report(&set, 0.5, 2);
        assert_eq!((r2.detected, r2.false_alarms), (1, 0));
        // calibration with no false alarm allowed: K 1 above 0.55 catches both frauds
        let c = calibrate(&set, 0.0, 3).unwrap();
        assert_eq!(c.false_alarms, 0);
        assert_eq!(c.detection_rate, 1.0);
        assert!(c.threshold > 0.55 && c.threshold <= 0.6, "{}", c.threshold);
        assert_eq!(c.consecutive, 1);
        // no honest dialogue: nothing to calibrate on
        assert!(calibrate(&set[..2], 0.05, 3).is_none());
    }
}
