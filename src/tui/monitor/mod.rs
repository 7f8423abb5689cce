//! Monitor pane: a conversation followed turn by turn by one or more loaded models side by
//! side. A dialogue of the open dataset is replayed (one turn on `n`, or played at a pace on
//! Space), or turns are typed / pasted live. Each turn goes to every followed model as its
//! own `MonitorTurn` request; the next turn is sent only once every followed model has
//! answered the previous one, so the engine is never flooded. The view shows the turns with
//! each model's P(fraud), a risk-over-turns chart with the threshold, the alert (which turn,
//! which model, who and why once explained), latencies, and the dialogue's true label.
//!
//! This file holds the pane's state (the script, followers, turns and their scores, the
//! saved settings), the checks and configuration lookups the keys and the view share, the
//! handlers for the engine's monitor events, and small formatting helpers; the key
//! handling and the conversation actions it triggers are in `keys.rs`, the drawing in
//! `view.rs`.

use serde_json::{json, Value};
use std::cell::Cell as StdCell;
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use super::app::{Action, App, Slot};
use super::keys::strings;
use super::widgets::{one_line, TextEditor};
use crate::data::dataset::parse_turns;
use crate::engine::monitor::{Explanation, MonitorConfig, TurnResult};
use crate::engine::{Command, EngineState, RequestId, Subject};
use crate::model::adapter::AdapterMeta;

mod keys;
mod view;

pub use view::draw;

/// Replay paces, seconds a turn.
pub const PACES: [f64; 8] = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0];
pub const DEFAULT_PACE: f64 = 1.5;
/// What `t` / `T` move the threshold by.
pub const THRESHOLD_STEP: f64 = 0.05;
pub const MAX_CONSECUTIVE: usize = 10;
/// Tokens an explanation may generate for each field (speaker, reason).
pub const EXPLAIN_TOKENS: usize = 64;

/// The dialogue being replayed (its turns copied when it was picked).
#[derive(Debug, Clone)]
pub struct Script {
    /// Index into the Data pane's samples.
    pub index: usize,
    pub id: String,
    /// The label that counts (hand label, else the file's).
    pub label: Option<bool>,
    pub fraud_speaker: Option<String>,
    pub turns: Vec<(String, String)>,
}

/// One model's answer to one turn.
#[derive(Debug, Clone, PartialEq)]
pub enum Score {
    /// Sent; the result is not back yet.
    Waiting(RequestId),
    Done(TurnResult),
    Failed(String),
    /// The model had stopped following the conversation.
    Skipped,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExplainState {
    None,
    Asked(RequestId),
    Done(Explanation),
    Failed(String),
}

/// A model following the conversation.
#[derive(Debug, Clone)]
pub struct Follower {
    pub key: String,
    pub label: String,
    /// The configuration sent to the engine for this conversation.
    pub cfg: MonitorConfig,
    /// Why it stopped following (a failed or cancelled turn, the model unloaded).
    pub stopped: Option<String>,
    /// (turn, speaker of that turn, P(fraud) there) where its alert fired.
    pub alert: Option<(usize, String, f64)>,
    pub explain: ExplainState,
}

/// A turn of the conversation and each follower's score (same order as the followers).
#[derive(Debug, Clone)]
pub struct TurnRow {
    pub speaker: String,
    pub text: String,
    /// Typed or pasted live (not from the picked dialogue).
    pub typed: bool,
    pub scores: Vec<Score>,
}

impl TurnRow {
    pub fn complete(&self) -> bool {
        !self.scores.iter().any(|s| matches!(s, Score::Waiting(_)))
    }
}

#[derive(Debug)]
pub struct MonitorPane {
    // settings (saved in the session)
    /// The alert threshold for every followed model; `None`: each model's own (its
    /// adapter's calibrated threshold, else 0.5).
    pub threshold: Option<f64>,
    /// Turns in a row at or above the threshold that fire the alert; `None`: the model's.
    pub consecutive: Option<usize>,
    /// Seconds a turn when playing.
    pub pace_s: f64,
    /// Ask for an explanation once when the first alert fires.
    pub auto_explain: bool,
    /// Model keys that follow; empty: every ready model.
    pub chosen: Vec<String>,
    /// Highlighted dialogue (index into the Data pane's samples).
    pub list_sel: usize,
    pub list_offset: StdCell<usize>,
    /// Narrow terminals: the list instead of the conversation.
    pub show_list: bool,
    // the conversation
    pub script: Option<Script>,
    /// Index into `script.turns` of the next turn to send.
    pub next: usize,
    pub conversation: String,
    seq: u64,
    /// Configured and followed (the followers are fixed until it restarts).
    pub started: bool,
    pub followers: Vec<Follower>,
    pub turns: Vec<TurnRow>,
    /// Turn requests in flight: request → (follower, row).
    pub pending: HashMap<RequestId, (usize, usize)>,
    /// Explain requests in flight: request → follower.
    pub explaining: HashMap<RequestId, usize>,
    auto_explained: bool,
    pub playing: bool,
    pub last_sent: Option<Instant>,
    /// Live turns waiting for the previous turn's results.
    pub live_queue: VecDeque<(String, String)>,
    /// Commands to send on the next tick (asked from an engine event).
    pub outbox: Vec<Command>,
    pub editing: bool,
    pub input: TextEditor,
}

impl Default for MonitorPane {
    fn default() -> Self {
        Self {
            threshold: None,
            consecutive: None,
            pace_s: DEFAULT_PACE,
            auto_explain: true,
            chosen: Vec::new(),
            list_sel: 0,
            list_offset: StdCell::new(0),
            show_list: true,
            script: None,
            next: 0,
            conversation: "tui-1".into(),
            seq: 1,
            started: false,
            followers: Vec::new(),
            turns: Vec::new(),
            pending: HashMap::new(),
            explaining: HashMap::new(),
            auto_explained: false,
            playing: false,
            last_sent: None,
            live_queue: VecDeque::new(),
            outbox: Vec::new(),
            editing: false,
            input: TextEditor::single(""),
        }
    }
}

impl MonitorPane {
    pub fn restore(&mut self, v: Option<&Value>) {
        let Some(v) = v else { return };
        self.threshold = v["threshold"].as_f64().filter(|t| (0.0..=1.0).contains(t));
        self.consecutive = v["consecutive"]
            .as_u64()
            .map(|k| (k as usize).clamp(1, MAX_CONSECUTIVE));
        if let Some(p) = v["pace_s"].as_f64().filter(|p| p.is_finite()) {
            self.pace_s = p.clamp(PACES[0], PACES[PACES.len() - 1]);
        }
        if let Some(a) = v["auto_explain"].as_bool() {
            self.auto_explain = a;
        }
        if let Some(i) = v["dialogue"].as_u64() {
            self.list_sel = i as usize;
        }
        if let Some(a) = v["models"].as_array() {
            self.chosen = a
                .iter()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect();
        }
    }

    pub fn to_settings(&self) -> Value {
        let dialogue = self
            .script
            .as_ref()
            .map(|s| s.index)
            .unwrap_or(self.list_sel);
        json!({
            "threshold": self.threshold,
            "consecutive": self.consecutive,
            "pace_s": self.pace_s,
            "auto_explain": self.auto_explain,
            "dialogue": dialogue,
            "models": self.chosen,
        })
    }

    /// Turn requests not answered yet.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }

    /// Followers still following.
    pub fn active(&self) -> impl Iterator<Item = (usize, &Follower)> {
        self.followers
            .iter()
            .enumerate()
            .filter(|(_, f)| f.stopped.is_none())
    }

    /// The script has no turn left to send.
    pub fn script_done(&self) -> bool {
        self.script
            .as_ref()
            .is_some_and(|s| self.next >= s.turns.len())
    }

    /// Follower `fi`'s latencies (ms) so far, in turn order.
    pub fn latencies(&self, fi: usize) -> Vec<f64> {
        self.turns
            .iter()
            .filter_map(|r| match r.scores.get(fi) {
                Some(Score::Done(t)) => Some(t.latency_ms),
                _ => None,
            })
            .collect()
    }

    /// The earliest alert: (follower, turn).
    pub fn first_alert(&self) -> Option<(usize, usize)> {
        self.followers
            .iter()
            .enumerate()
            .filter_map(|(i, f)| f.alert.as_ref().map(|a| (i, a.0)))
            .min_by_key(|&(i, t)| (t, i))
    }

    fn set_pace(&mut self, faster: bool) {
        let i = PACES
            .iter()
            .position(|&p| p >= self.pace_s - 1e-9)
            .unwrap_or(PACES.len() - 1);
        let j = if faster {
            i.saturating_sub(1)
        } else {
            (i + 1).min(PACES.len() - 1)
        };
        self.pace_s = PACES[j];
    }
}

/// `speaker: utterance` (or `speaker：utterance`) → (speaker, utterance); a line without a
/// speaker keeps the whole text with an empty speaker.
pub fn parse_live_turn(line: &str) -> Option<(String, String)> {
    let line = one_line(line.trim());
    if line.is_empty() {
        return None;
    }
    parse_turns(&line).into_iter().next()
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

fn fmt_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

/// Column titles for models side by side: the labels without the start they all share
/// (`Qwen2.5-0.5B…`, `Qwen2.5-1.5B…` → `0.5B…`, `1.5B…`), so narrow columns still differ.
pub fn short_labels(labels: &[String]) -> Vec<String> {
    if labels.len() < 2 {
        return labels.to_vec();
    }
    let first: Vec<char> = labels[0].chars().collect();
    let mut common = first.len();
    for l in &labels[1..] {
        common = common.min(
            first
                .iter()
                .zip(l.chars())
                .take_while(|(a, b)| **a == *b)
                .count(),
        );
    }
    if common < 3 || labels.iter().any(|l| l.chars().count() <= common) {
        return labels.to_vec();
    }
    labels
        .iter()
        .map(|l| l.chars().skip(common).collect())
        .collect()
}

/// A bar of `w` cells for a probability, in eighths.
pub fn risk_bar(p: f64, w: usize) -> String {
    const EIGHTHS: [char; 8] = ['▏', '▎', '▍', '▌', '▋', '▊', '▉', '█'];
    let n = (p.clamp(0.0, 1.0) * (w * 8) as f64).round() as usize;
    let mut s: String = "█".repeat(n / 8);
    if let Some(&c) = (n % 8).checked_sub(1).and_then(|r| EIGHTHS.get(r)) {
        s.push(c);
    }
    let used = s.chars().count();
    s.push_str(&" ".repeat(w.saturating_sub(used)));
    s
}

impl App {
    // ------------------------------------------------------------ checks

    /// Why a turn cannot be sent now, if it cannot.
    fn monitor_blocked(&self) -> Option<String> {
        if self.ready_slots().next().is_none() {
            return Some(if self.slots.iter().any(|s| !s.is_ready()) {
                strings::MONITOR_MODEL_LOADING.into()
            } else {
                strings::MONITOR_NEEDS_MODEL.into()
            });
        }
        // training and evaluation run beside the worker: a turn does not wait for them
        match self.engine_state {
            EngineState::Downloading => Some(
                "the engine is downloading a model: a turn would wait until it ends (Esc cancels it)"
                    .into(),
            ),
            _ => None,
        }
    }

    /// The slots that would follow a new conversation.
    fn monitor_candidates(&self) -> Vec<&Slot> {
        let m = &self.monitor;
        self.ready_slots()
            .filter(|s| m.chosen.is_empty() || m.chosen.contains(&s.key))
            .collect()
    }

    /// The monitoring configuration of a model: its adapter's prompt and alert rule, with
    /// the pane's threshold and consecutive count when set.
    fn monitor_cfg_for(&self, slot: &Slot) -> Result<MonitorConfig, String> {
        let meta = AdapterMeta::for_adapter(slot.adapter.as_deref())
            .map_err(|e| format!("{}: {e:#}", slot.label()))?;
        let mut cfg = MonitorConfig::from_meta(&meta);
        if let Some(t) = self.monitor.threshold {
            cfg.threshold = t;
        }
        if let Some(k) = self.monitor.consecutive {
            cfg.consecutive = k;
        }
        Ok(cfg)
    }

    /// The threshold a model would use now (for t / T to start from).
    fn monitor_current_threshold(&self) -> f64 {
        if let Some(t) = self.monitor.threshold {
            return t;
        }
        if let Some(f) = self.monitor.followers.first() {
            return f.cfg.threshold;
        }
        self.monitor_candidates()
            .first()
            .and_then(|s| self.monitor_cfg_for(s).ok())
            .map(|c| c.threshold)
            .unwrap_or(0.5)
    }

    fn monitor_current_consecutive(&self) -> usize {
        if let Some(k) = self.monitor.consecutive {
            return k;
        }
        if let Some(f) = self.monitor.followers.first() {
            return f.cfg.consecutive;
        }
        self.monitor_candidates()
            .first()
            .and_then(|s| self.monitor_cfg_for(s).ok())
            .map(|c| c.consecutive)
            .unwrap_or(1)
    }

    // ------------------------------------------------------------ engine events

    pub(super) fn monitor_on_turn(&mut self, request: RequestId, _key: &str, result: TurnResult) {
        let Some((fi, row)) = self.monitor.pending.remove(&request) else {
            return; // a turn of a conversation that has ended
        };
        if result.conversation != self.monitor.conversation {
            return;
        }
        let m = &mut self.monitor;
        let Some(r) = m.turns.get_mut(row) else {
            return;
        };
        if let Some(s) = r.scores.get_mut(fi) {
            *s = Score::Done(result.clone());
        }
        let mut alert_msg = None;
        let mut explain = false;
        if result.alert && m.followers[fi].alert.is_none() {
            let turn = result.alert_turn.unwrap_or(result.turn);
            let at = m.turns.get(turn.saturating_sub(1));
            let speaker = at.map(|t| t.speaker.clone()).unwrap_or_default();
            let p = match at.and_then(|t| t.scores.get(fi)) {
                Some(Score::Done(t)) => t.p_fraud,
                _ => result.p_fraud,
            };
            let f = &mut m.followers[fi];
            f.alert = Some((turn, speaker, p));
            alert_msg = Some(format!(
                "ALERT: {} flagged turn {turn} (P(fraud) {p:.2} ≥ {:.2})",
                f.label, f.cfg.threshold
            ));
            if m.auto_explain && !m.auto_explained {
                m.auto_explained = true;
                explain = true;
            }
        }
        if explain {
            // sent on the next tick: an engine event cannot send
            let mut asked = Vec::new();
            self.monitor_ask_explain(fi, &mut asked);
            self.monitor
                .outbox
                .extend(asked.into_iter().filter_map(|a| match a {
                    Action::Engine(c) => Some(c),
                    _ => None,
                }));
        }
        if let Some(msg) = alert_msg {
            self.warn(msg);
        }
        let row_done = self.monitor.turns.get(row).is_some_and(TurnRow::complete);
        if row_done
            && row + 1 == self.monitor.turns.len()
            && self.monitor.script_done()
            && self.monitor.live_queue.is_empty()
        {
            self.monitor.playing = false;
            let summary = self.monitor_summary();
            if self.monitor.followers.iter().any(|f| f.alert.is_some()) {
                self.warn(summary);
            } else {
                self.ok(summary);
            }
        }
    }

    /// One line on how the replayed dialogue went: alert or not, against its label.
    pub fn monitor_summary(&self) -> String {
        let m = &self.monitor;
        let Some(s) = &m.script else {
            return String::new();
        };
        let head = format!(
            "end of dialogue #{} ({}, {} turns)",
            s.index + 1,
            label_text(s.label),
            s.turns.len()
        );
        let parts: Vec<String> = m
            .followers
            .iter()
            .map(|f| format!("{}: {}", f.label, verdict(s.label, f, true)))
            .collect();
        format!("{head}: {}", parts.join("; "))
    }

    pub(super) fn monitor_on_explained(&mut self, request: RequestId, _key: &str, e: Explanation) {
        let Some(fi) = self.monitor.explaining.remove(&request) else {
            return;
        };
        if e.conversation != self.monitor.conversation {
            return;
        }
        let f = &mut self.monitor.followers[fi];
        let who = e
            .fraud_speaker
            .clone()
            .unwrap_or_else(|| "no speaker named".into());
        let why = e.reason.clone().unwrap_or_else(|| "no reason given".into());
        let msg = format!("{} explains: {who} — {}", f.label, one_line(&why));
        f.explain = ExplainState::Done(e);
        self.ok(msg);
    }

    pub(super) fn monitor_on_error(&mut self, subject: &Subject, message: &str) {
        let Subject::Monitor {
            request,
            key,
            conversation,
        } = subject
        else {
            return;
        };
        if *request == 0 && conversation.is_empty() {
            // MonitorConfigure refused the configuration
            let m = &mut self.monitor;
            for f in m.followers.iter_mut().filter(|f| &f.key == key) {
                f.stopped = Some(format!("configuration refused: {message}"));
            }
            m.playing = false;
            return;
        }
        self.monitor_failed(*request, message);
    }

    /// A monitor request ended: when it is still waiting, it ended without a result.
    pub(super) fn monitor_request_ended(&mut self, request: RequestId) {
        if self.monitor.pending.contains_key(&request)
            || self.monitor.explaining.contains_key(&request)
        {
            self.monitor_failed(request, "ended without a result (engine error)");
        }
    }

    fn monitor_failed(&mut self, request: RequestId, message: &str) {
        let m = &mut self.monitor;
        if let Some((fi, row)) = m.pending.remove(&request) {
            if let Some(s) = m.turns.get_mut(row).and_then(|r| r.scores.get_mut(fi)) {
                *s = Score::Failed(message.to_string());
            }
            // the engine left the turn out of the model's conversation: it cannot go on
            if let Some(f) = m.followers.get_mut(fi) {
                f.stopped = Some(message.to_string());
            }
            m.playing = false;
        } else if let Some(fi) = m.explaining.remove(&request) {
            if let Some(f) = m.followers.get_mut(fi) {
                f.explain = ExplainState::Failed(message.to_string());
            }
        }
    }
}

fn round_threshold(t: f64) -> f64 {
    (t.clamp(THRESHOLD_STEP, 1.0 - THRESHOLD_STEP) * 100.0).round() / 100.0
}

fn label_text(l: Option<bool>) -> &'static str {
    match l {
        Some(true) => "fraud",
        Some(false) => "normal",
        None => "unlabelled",
    }
}

/// A follower's result against the dialogue's label.
fn verdict(label: Option<bool>, f: &Follower, done: bool) -> String {
    match (label, &f.alert) {
        (Some(true), Some((t, _, _))) => format!("caught at turn {t}"),
        (Some(true), None) if done => "missed (no alert)".into(),
        (Some(true), None) => "no alert yet".into(),
        (Some(false), Some((t, _, _))) => format!("false alarm at turn {t}"),
        (Some(false), None) if done => "no alarm (right)".into(),
        (Some(false), None) => "no alarm so far".into(),
        (None, Some((t, _, _))) => format!("alert at turn {t}"),
        (None, None) => "no alert".into(),
    }
}
