//! Evaluation metrics for binary fraud classification.
//!
//! Conventions:
//! * An unparseable prediction (`predicted: None`) is counted in
//!   `unparseable` **and** treated as "not fraud" in the confusion matrix (as
//!   the seed workflow does), so `tp + fp + tn + fn == n` and accuracy is over
//!   all rows.
//! * Undefined ratios (e.g. precision with no positive predictions) are 0,
//!   never NaN.
//! * ROC-AUC and PR-AUC use only rows with a finite `probability` (the score
//!   of "fraud"); they are `None` (JSON `null`) when there are no such rows or
//!   only one class among them. ROC-AUC counts ties as half (rank / trapezoid
//!   method); PR-AUC is average precision, step-wise over distinct thresholds:
//!   `Σ (R_k − R_{k−1}) · P_k`.

use serde::{Deserialize, Serialize};

/// One evaluated sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalRow {
    /// The true label (fraud = true).
    pub label: bool,
    /// The parsed prediction; `None` when the answer could not be parsed.
    pub predicted: Option<bool>,
    /// The model's probability of fraud, when known.
    pub probability: Option<f64>,
}

/// Metrics; serialises to exactly the keys `n, precision, recall, f1,
/// accuracy, tp, fp, tn, fn, unparseable, roc_auc, pr_auc`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub n: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub accuracy: f64,
    pub tp: usize,
    pub fp: usize,
    pub tn: usize,
    #[serde(rename = "fn")]
    pub fn_: usize,
    pub unparseable: usize,
    pub roc_auc: Option<f64>,
    pub pr_auc: Option<f64>,
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Confusion-matrix metrics for (label, prediction) pairs; AUCs left `None`.
fn confusion(pairs: impl Iterator<Item = (bool, Option<bool>)>) -> Metrics {
    let mut m = Metrics::default();
    for (label, pred) in pairs {
        m.n += 1;
        if pred.is_none() {
            m.unparseable += 1;
        }
        match (label, pred.unwrap_or(false)) {
            (true, true) => m.tp += 1,
            (false, true) => m.fp += 1,
            (false, false) => m.tn += 1,
            (true, false) => m.fn_ += 1,
        }
    }
    m.precision = ratio(m.tp, m.tp + m.fp);
    m.recall = ratio(m.tp, m.tp + m.fn_);
    m.f1 = if m.precision + m.recall > 0.0 {
        2.0 * m.precision * m.recall / (m.precision + m.recall)
    } else {
        0.0
    };
    m.accuracy = ratio(m.tp + m.tn, m.n);
    m
}

/// Metrics from the rows' parsed predictions, with ROC-AUC and PR-AUC.
pub fn compute(rows: &[EvalRow]) -> Metrics {
    let mut m = confusion(rows.iter().map(|r| (r.label, r.predicted)));
    m.roc_auc = roc_auc(rows);
    m.pr_auc = pr_auc(rows);
    m
}

/// Metrics when a row with a probability is predicted fraud iff
/// `probability >= threshold`; rows without one keep their parsed prediction.
/// The AUCs do not depend on the threshold.
pub fn at_threshold(rows: &[EvalRow], threshold: f64) -> Metrics {
    let mut m = confusion(rows.iter().map(|r| match score(r) {
        Some(p) => (r.label, Some(p >= threshold)),
        None => (r.label, r.predicted),
    }));
    m.roc_auc = roc_auc(rows);
    m.pr_auc = pr_auc(rows);
    m
}

fn score(r: &EvalRow) -> Option<f64> {
    r.probability.filter(|p| p.is_finite())
}

/// (score, label) of scored rows, by score descending.
fn scored(rows: &[EvalRow]) -> Vec<(f64, bool)> {
    let mut v: Vec<(f64, bool)> = rows
        .iter()
        .filter_map(|r| score(r).map(|p| (p, r.label)))
        .collect();
    v.sort_by(|a, b| b.0.total_cmp(&a.0));
    v
}

/// Groups of equal scores: (threshold, positives, negatives), descending.
fn groups(v: &[(f64, bool)]) -> Vec<(f64, usize, usize)> {
    let mut out: Vec<(f64, usize, usize)> = Vec::new();
    for &(s, l) in v {
        match out.last_mut() {
            Some(g) if g.0 == s => {
                if l {
                    g.1 += 1
                } else {
                    g.2 += 1
                }
            }
            _ => out.push((s, usize::from(l), usize::from(!l))),
        }
    }
    out
}

/// ROC-AUC by the trapezoid rule over tie groups (equal to the rank /
/// Mann-Whitney statistic with ties counted as half).
pub fn roc_auc(rows: &[EvalRow]) -> Option<f64> {
    let v = scored(rows);
    let p = v.iter().filter(|x| x.1).count();
    let n = v.len() - p;
    if p == 0 || n == 0 {
        return None;
    }
    let mut area = 0.0;
    let mut neg_above = 0usize;
    for (_, gp, gn) in groups(&v) {
        // positives in this group beat all negatives below and tie with gn
        area += gp as f64 * (n - neg_above) as f64 - gp as f64 * gn as f64 / 2.0;
        neg_above += gn;
    }
    Some(area / (p as f64 * n as f64))
}

/// Average precision (step-wise PR-AUC).
pub fn pr_auc(rows: &[EvalRow]) -> Option<f64> {
    let v = scored(rows);
    let p = v.iter().filter(|x| x.1).count();
    if p == 0 || p == v.len() {
        return None;
    }
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut prev_recall = 0.0;
    let mut ap = 0.0;
    for (_, gp, gn) in groups(&v) {
        tp += gp;
        fp += gn;
        let recall = tp as f64 / p as f64;
        let precision = tp as f64 / (tp + fp) as f64;
        ap += (recall - prev_recall) * precision;
        prev_recall = recall;
    }
    Some(ap)
}

/// A point of the ROC curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RocPoint {
    pub fpr: f64,
    pub tpr: f64,
    /// Predict fraud when score ≥ threshold (`+∞` for the first point,
    /// serialised as `null`).
    pub threshold: f64,
}

/// A point of the precision-recall curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PrPoint {
    pub recall: f64,
    pub precision: f64,
    /// As for [`RocPoint::threshold`].
    pub threshold: f64,
}

/// ROC curve from (0, 0) through one point per distinct score, descending;
/// empty when AUC is undefined.
pub fn roc_curve(rows: &[EvalRow]) -> Vec<RocPoint> {
    let v = scored(rows);
    let p = v.iter().filter(|x| x.1).count();
    let n = v.len() - p;
    if p == 0 || n == 0 {
        return Vec::new();
    }
    let mut out = vec![RocPoint {
        fpr: 0.0,
        tpr: 0.0,
        threshold: f64::INFINITY,
    }];
    let (mut tp, mut fp) = (0, 0);
    for (t, gp, gn) in groups(&v) {
        tp += gp;
        fp += gn;
        out.push(RocPoint {
            fpr: fp as f64 / n as f64,
            tpr: tp as f64 / p as f64,
            threshold: t,
        });
    }
    out
}

/// Precision-recall curve from (recall 0, precision 1) through one point per
/// distinct score, descending; empty when there are no scored positives.
pub fn pr_curve(rows: &[EvalRow]) -> Vec<PrPoint> {
    let v = scored(rows);
    let p = v.iter().filter(|x| x.1).count();
    if p == 0 {
        return Vec::new();
    }
    let mut out = vec![PrPoint {
        recall: 0.0,
        precision: 1.0,
        threshold: f64::INFINITY,
    }];
    let (mut tp, mut fp) = (0, 0);
    for (t, gp, gn) in groups(&v) {
        tp += gp;
        fp += gn;
        out.push(PrPoint {
            recall: tp as f64 / p as f64,
            precision: tp as f64 / (tp + fp) as f64,
            threshold: t,
        });
    }
    out
}

/// The score threshold with the best F1 (ties: the higher threshold) and
/// its metrics; `None` without scored rows.
pub fn best_f1_threshold(rows: &[EvalRow]) -> Option<(f64, Metrics)> {
    let v = scored(rows);
    let mut best: Option<(f64, Metrics)> = None;
    for (t, _, _) in groups(&v) {
        let m = at_threshold(rows, t);
        if best.as_ref().is_none_or(|(_, b)| m.f1 > b.f1) {
            best = Some((t, m));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(label: bool, predicted: Option<bool>, probability: Option<f64>) -> EvalRow {
        EvalRow {
            label,
            predicted,
            probability,
        }
    }

    fn ten() -> Vec<EvalRow> {
        vec![
            row(true, Some(true), Some(0.9)),
            row(true, Some(true), Some(0.8)),
            row(true, Some(false), Some(0.4)),
            row(true, None, None),
            row(false, Some(true), Some(0.7)),
            row(false, Some(false), Some(0.2)),
            row(false, Some(false), Some(0.1)),
            row(false, None, None),
            row(false, Some(false), Some(0.4)),
            row(true, Some(true), Some(0.6)),
        ]
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn hand_computed_ten_rows() {
        let m = compute(&ten());
        assert_eq!(
            (m.n, m.tp, m.fp, m.tn, m.fn_, m.unparseable),
            (10, 3, 1, 4, 2, 2)
        );
        assert!(close(m.precision, 0.75));
        assert!(close(m.recall, 0.6));
        assert!(close(m.f1, 2.0 / 3.0));
        assert!(close(m.accuracy, 0.7));
        // positives 0.9 0.8 0.6 0.4 vs negatives 0.7 0.4 0.2 0.1: (4+4+3+2.5)/16
        assert!(close(m.roc_auc.unwrap(), 13.5 / 16.0));
        // AP = .25·1 + .25·1 + .25·.75 + .25·(4/6)
        assert!(close(m.pr_auc.unwrap(), 0.6875 + 1.0 / 6.0));
        let j = serde_json::to_string(&m).unwrap();
        let keys: Vec<String> =
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&j)
                .unwrap()
                .keys()
                .cloned()
                .collect();
        assert_eq!(
            keys,
            [
                "n",
                "precision",
                "recall",
                "f1",
                "accuracy",
                "tp",
                "fp",
                "tn",
                "fn",
                "unparseable",
                "roc_auc",
                "pr_auc"
            ]
        );
        let back: Metrics = serde_json::from_str(&j).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn threshold_slider() {
        let m = at_threshold(&ten(), 0.75);
        assert_eq!((m.tp, m.fp, m.tn, m.fn_, m.unparseable), (2, 0, 5, 3, 2));
        assert!(close(m.precision, 1.0));
        assert!(close(m.recall, 0.4));
        let m = at_threshold(&ten(), 0.0);
        assert_eq!((m.tp, m.fp), (4, 4));
        let (t, best) = best_f1_threshold(&ten()).unwrap();
        // at 0.4: tp 4, fp 2, fn 1 → P 2/3, R 4/5, F1 8/11 (best)
        assert_eq!(t, 0.4);
        assert!(close(best.f1, 8.0 / 11.0));
    }

    #[test]
    fn auc_ties_and_degenerate_cases() {
        let tied: Vec<EvalRow> = [true, false, true, false]
            .iter()
            .map(|&l| row(l, Some(true), Some(0.5)))
            .collect();
        assert!(close(roc_auc(&tied).unwrap(), 0.5));
        assert!(close(pr_auc(&tied).unwrap(), 0.5));
        let perfect = vec![row(true, None, Some(0.9)), row(false, None, Some(0.1))];
        assert_eq!(roc_auc(&perfect), Some(1.0));
        assert_eq!(pr_auc(&perfect), Some(1.0));
        // classic example: scores .1 .4 .35 .8, labels 0 0 1 1 → 0.75
        let ex = vec![
            row(false, None, Some(0.1)),
            row(false, None, Some(0.4)),
            row(true, None, Some(0.35)),
            row(true, None, Some(0.8)),
        ];
        assert!(close(roc_auc(&ex).unwrap(), 0.75));
        assert!(close(pr_auc(&ex).unwrap(), 0.5 + 0.5 * 2.0 / 3.0));
        let one_class = vec![row(true, Some(true), Some(0.9))];
        assert_eq!(roc_auc(&one_class), None);
        let m = compute(&[]);
        assert_eq!(m, Metrics::default());
        let j = serde_json::to_string(&compute(&[row(false, None, None)])).unwrap();
        assert!(j.contains("\"roc_auc\":null") && !j.contains("NaN"), "{j}");
        assert!(
            !serde_json::to_string(&compute(&[row(true, Some(false), Some(f64::NAN))]))
                .unwrap()
                .contains("NaN")
        );
    }

    #[test]
    fn curves() {
        let r = roc_curve(&ten());
        assert_eq!(r.first().unwrap().threshold, f64::INFINITY);
        assert_eq!((r.last().unwrap().fpr, r.last().unwrap().tpr), (1.0, 1.0));
        assert_eq!(r.len(), 1 + 7);
        // trapezoid area of the curve equals roc_auc
        let area: f64 = r
            .windows(2)
            .map(|w| (w[1].fpr - w[0].fpr) * (w[1].tpr + w[0].tpr) / 2.0)
            .sum();
        assert!(close(area, roc_auc(&ten()).unwrap()));
        let p = pr_curve(&ten());
        assert_eq!(p.len(), 8);
        assert_eq!(
            p[1],
            PrPoint {
                recall: 0.25,
                precision: 1.0,
                threshold: 0.9
            }
        );
        assert!(serde_json::to_string(&r)
            .unwrap()
            .contains("\"threshold\":null"));
        assert!(roc_curve(&[]).is_empty() && pr_curve(&[]).is_empty());
    }
}
