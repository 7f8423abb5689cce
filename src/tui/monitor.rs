//! Monitor pane: a conversation followed turn by turn by one or more loaded models side by
//! side. A dialogue of the open dataset is replayed (one turn on `n`, or played at a pace on
//! Space), or turns are typed / pasted live. Each turn goes to every followed model as its
//! own `MonitorTurn` request; the next turn is sent only once every followed model has
//! answered the previous one, so the engine is never flooded. The view shows the turns with
//! each model's P(fraud), a risk-over-turns chart with the threshold, the alert (which turn,
//! which model, who and why once explained), latencies, and the dialogue's true label.

use crossterm::event::{KeyCode, KeyEvent};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Cell, Chart, Dataset, GraphType, Paragraph, Row, Table, Wrap};
use ratatui::Frame;
use serde_json::{json, Value};
use std::cell::Cell as StdCell;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::app::{Action, App, PickPurpose, Slot};
use super::keys::{plain, strings};
use super::theme;
use super::widgets::{char_width, display_width, one_line, truncate, wrap, TextEditor};
use crate::data::dataset::parse_turns;
use crate::engine::monitor::{Explanation, MonitorConfig, TurnResult};
use crate::engine::{Command, EngineState, RequestId, Subject};
use crate::model::adapter::AdapterMeta;

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
        match self.engine_state {
            EngineState::Training => Some(
                "the engine is training: a turn would wait until the run ends (Train pane: x stops it)"
                    .into(),
            ),
            EngineState::Evaluating => Some(
                "the engine is evaluating: a turn would wait until it ends (Esc cancels it)".into(),
            ),
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

    // ------------------------------------------------------------ conversation

    /// Ends the conversation (MonitorEnd to its followers) and starts a fresh one from the
    /// script's first turn; the play state stays.
    fn monitor_restart(&mut self, out: &mut Vec<Action>) {
        self.monitor_restart_with(true, out)
    }

    /// [`App::monitor_restart`]; `end`: send MonitorEnd (not needed before MonitorConfigure,
    /// which forgets the model's conversations).
    fn monitor_restart_with(&mut self, end: bool, out: &mut Vec<Action>) {
        let m = &mut self.monitor;
        if m.started && end {
            for f in &m.followers {
                out.push(Action::Engine(Command::MonitorEnd {
                    key: f.key.clone(),
                    conversation: m.conversation.clone(),
                }));
            }
        }
        m.seq += 1;
        m.conversation = format!("tui-{}", m.seq);
        m.started = false;
        m.followers.clear();
        m.turns.clear();
        m.pending.clear();
        m.explaining.clear();
        m.auto_explained = false;
        m.next = 0;
        m.last_sent = None;
        m.live_queue.clear();
        m.outbox.clear();
    }

    /// Configures every candidate model for the conversation (MonitorConfigure) and makes
    /// them its followers. Err: why none can follow.
    fn monitor_start(&mut self, out: &mut Vec<Action>) -> Result<(), String> {
        if self.monitor.started {
            return Ok(());
        }
        let cands: Vec<Slot> = self.monitor_candidates().into_iter().cloned().collect();
        if cands.is_empty() {
            return Err(
                "none of the chosen models is loaded: m chooses among the loaded ones".into(),
            );
        }
        let mut followers = Vec::new();
        let mut problems = Vec::new();
        for s in &cands {
            match self.monitor_cfg_for(s) {
                Ok(cfg) => followers.push(Follower {
                    key: s.key.clone(),
                    label: s.label(),
                    cfg,
                    stopped: None,
                    alert: None,
                    explain: ExplainState::None,
                }),
                Err(e) => problems.push(e),
            }
        }
        if followers.is_empty() {
            return Err(format!(
                "cannot read the adapter settings: {}",
                problems.join("; ")
            ));
        }
        for f in &followers {
            out.push(Action::Engine(Command::MonitorConfigure {
                key: f.key.clone(),
                cfg: f.cfg.clone(),
            }));
        }
        self.monitor.followers = followers;
        self.monitor.started = true;
        if !problems.is_empty() {
            self.warn(format!(
                "not following with: {} (its adapter settings)",
                problems.join("; ")
            ));
        }
        Ok(())
    }

    /// Sends one turn to every active follower. False (and a message) when it cannot.
    fn monitor_send(
        &mut self,
        speaker: String,
        text: String,
        typed: bool,
        out: &mut Vec<Action>,
    ) -> bool {
        if let Some(why) = self.monitor_blocked() {
            self.warn(why);
            return false;
        }
        if self.monitor.waiting() > 0 {
            let n = self.monitor.active().count();
            let back = n.saturating_sub(self.monitor.waiting());
            self.info(format!(
                "waiting for the previous turn's results ({back} of {n} back)"
            ));
            return false;
        }
        if let Err(e) = self.monitor_start(out) {
            self.warn(e);
            return false;
        }
        // followers unloaded since the conversation started stop following
        let ready: Vec<String> = self.ready_slots().map(|s| s.key.clone()).collect();
        for f in &mut self.monitor.followers {
            if f.stopped.is_none() && !ready.contains(&f.key) {
                f.stopped = Some("unloaded".into());
            }
        }
        let active: Vec<usize> = self.monitor.active().map(|(i, _)| i).collect();
        if active.is_empty() {
            self.warn("no followed model can go on (see the errors): r starts again with the loaded models");
            return false;
        }
        let row = self.monitor.turns.len();
        let mut scores = vec![Score::Skipped; self.monitor.followers.len()];
        for fi in active {
            let request = self.request_id();
            scores[fi] = Score::Waiting(request);
            self.monitor.pending.insert(request, (fi, row));
            out.push(Action::Engine(Command::MonitorTurn {
                request,
                key: self.monitor.followers[fi].key.clone(),
                conversation: self.monitor.conversation.clone(),
                speaker: speaker.clone(),
                text: text.clone(),
            }));
        }
        self.monitor.turns.push(TurnRow {
            speaker,
            text,
            typed,
            scores,
        });
        self.monitor.last_sent = Some(Instant::now());
        if self.engine_busy() && self.engine_state != EngineState::Monitoring {
            self.warn(strings::ENGINE_BUSY_QUEUED);
        }
        true
    }

    /// Picks the highlighted dialogue when none is picked. False (and a message) when there
    /// is nothing to pick.
    fn monitor_ensure_script(&mut self, out: &mut Vec<Action>) -> bool {
        if self.monitor.script.is_some() {
            return true;
        }
        if self.data.samples.is_empty() {
            self.warn(strings::MONITOR_NO_DIALOGUE);
            return false;
        }
        let i = self.monitor.list_sel.min(self.data.samples.len() - 1);
        self.monitor_pick(i, out)
    }

    /// Sends the script's next turn. False when there is none (or it cannot be sent).
    fn monitor_next(&mut self, out: &mut Vec<Action>) -> bool {
        if let Some(why) = self.monitor_blocked() {
            self.warn(why);
            return false;
        }
        if !self.monitor_ensure_script(out) {
            return false;
        }
        let Some(s) = &self.monitor.script else {
            return false;
        };
        let Some((sp, tx)) = s.turns.get(self.monitor.next).cloned() else {
            self.info(format!(
                "end of dialogue #{} ({} turns): r replays it, Enter picks another, i types a turn",
                s.index + 1,
                s.turns.len()
            ));
            return false;
        };
        if self.monitor_send(sp, tx, false, out) {
            self.monitor.next += 1;
            true
        } else {
            false
        }
    }

    /// Follows dialogue `i` of the open dataset from its first turn (a fresh conversation).
    fn monitor_pick(&mut self, i: usize, out: &mut Vec<Action>) -> bool {
        let Some(s) = self.data.samples.get(i) else {
            return false;
        };
        let turns = s.turns();
        if turns.is_empty() {
            self.warn(format!("dialogue #{} has no turns", i + 1));
            return false;
        }
        let label = self.data.effective(i);
        let speaker = self
            .data
            .hand
            .get(&s.id)
            .and_then(|h| h.fraud_speaker.clone())
            .or(s.fraud_speaker.clone());
        let script = Script {
            index: i,
            id: s.id.clone(),
            label,
            fraud_speaker: speaker,
            turns,
        };
        self.monitor_restart(out);
        let n = script.turns.len();
        self.monitor.script = Some(script);
        self.monitor.list_sel = i;
        self.monitor.show_list = false;
        self.info(format!(
            "following dialogue #{} ({}, {n} turns): n sends the next turn, Space plays",
            i + 1,
            label_text(label)
        ));
        self.save_session();
        true
    }

    /// Sets the alert rule for every followed model (MonitorConfigure, which forgets the
    /// conversation) and starts the conversation again.
    fn monitor_set_rule(
        &mut self,
        threshold: Option<f64>,
        k: Option<usize>,
        out: &mut Vec<Action>,
    ) {
        if let Some(t) = threshold {
            self.monitor.threshold = Some(t);
        }
        if let Some(k) = k {
            self.monitor.consecutive = Some(k);
        }
        self.save_session();
        let rule = format!(
            "threshold {:.2}, alert after {} turn(s) in a row",
            self.monitor_current_threshold(),
            self.monitor_current_consecutive()
        );
        if self.ready_slots().next().is_none() {
            self.info(format!("{rule} (applies once a model is loaded)"));
            return;
        }
        let had_turns = !self.monitor.turns.is_empty();
        // configuring forgets the models' conversations: no MonitorEnd needed for them
        self.monitor_restart_with(false, out);
        match self.monitor_start(out) {
            Ok(()) => {
                let names: Vec<String> = self
                    .monitor
                    .followers
                    .iter()
                    .map(|f| f.label.clone())
                    .collect();
                if had_turns {
                    self.warn(format!(
                        "{rule} for {}: reconfigured, so the conversation starts again from turn 1",
                        names.join(", ")
                    ));
                } else {
                    self.info(format!("{rule} for {}", names.join(", ")));
                }
            }
            Err(e) => self.warn(e),
        }
    }

    fn monitor_pick_models(&mut self) {
        let slots: Vec<Slot> = self.ready_slots().cloned().collect();
        if slots.is_empty() {
            self.warn(
                self.monitor_blocked()
                    .unwrap_or_else(|| strings::MONITOR_NEEDS_MODEL.into()),
            );
            return;
        }
        let m = &self.monitor;
        let checked = slots
            .iter()
            .map(|s| m.chosen.is_empty() || m.chosen.contains(&s.key))
            .collect();
        self.open_picker(
            strings::MONITOR_PICK_TITLE,
            slots.iter().map(|s| s.label()).collect(),
            slots.iter().map(|s| s.key.clone()).collect(),
            Some(checked),
            PickPurpose::MonitorModels,
        );
    }

    pub(super) fn monitor_set_models(&mut self, chosen: Vec<String>, out: &mut Vec<Action>) {
        let ready: Vec<String> = self.ready_slots().map(|s| s.key.clone()).collect();
        let all = chosen.is_empty() || ready.iter().all(|k| chosen.contains(k));
        self.monitor.chosen = if all { Vec::new() } else { chosen };
        self.save_session();
        let names: Vec<String> = self
            .monitor_candidates()
            .iter()
            .map(|s| s.label())
            .collect();
        let what = if all {
            format!("every loaded model follows ({})", names.join(", "))
        } else {
            format!("following with {}", names.join(", "))
        };
        let same = self.monitor.started
            && self.monitor.followers.len() == names.len()
            && self
                .monitor
                .followers
                .iter()
                .all(|f| self.monitor_candidates().iter().any(|s| s.key == f.key));
        if self.monitor.started && !same {
            let had_turns = !self.monitor.turns.is_empty();
            self.monitor_restart(out);
            if had_turns {
                self.warn(format!("{what}: the conversation starts again from turn 1"));
                return;
            }
        }
        self.info(what);
    }

    /// `x`: asks the alerted models (or, with no alert, the first follower) who the
    /// fraudster is and why.
    fn monitor_explain(&mut self, out: &mut Vec<Action>) {
        if self.monitor.turns.is_empty() {
            self.warn("nothing to explain yet: send a turn first (n, or i to type one)");
            return;
        }
        let mut targets: Vec<usize> = self
            .monitor
            .active()
            .filter(|(_, f)| f.alert.is_some() && !matches!(f.explain, ExplainState::Asked(_)))
            .map(|(i, _)| i)
            .collect();
        let no_alert = self.monitor.followers.iter().all(|f| f.alert.is_none());
        if no_alert {
            targets = self.monitor.active().map(|(i, _)| i).take(1).collect();
        }
        if targets.is_empty() {
            self.info("the explanation is on its way");
            return;
        }
        for &fi in &targets {
            self.monitor_ask_explain(fi, out);
        }
        let names: Vec<String> = targets
            .iter()
            .map(|&i| self.monitor.followers[i].label.clone())
            .collect();
        if no_alert {
            self.info(format!(
                "no alert yet: asking {} who the fraudster would be anyway…",
                names.join(", ")
            ));
        } else {
            self.info(format!(
                "asking {} who the fraudster is and why…",
                names.join(", ")
            ));
        }
    }

    fn monitor_ask_explain(&mut self, fi: usize, out: &mut Vec<Action>) {
        let request = self.request_id();
        let m = &mut self.monitor;
        let f = &mut m.followers[fi];
        f.explain = ExplainState::Asked(request);
        m.explaining.insert(request, fi);
        out.push(Action::Engine(Command::MonitorExplain {
            request,
            key: f.key.clone(),
            conversation: m.conversation.clone(),
            max_tokens: EXPLAIN_TOKENS,
        }));
    }

    // ------------------------------------------------------------ keys

    pub(super) fn monitor_key(&mut self, key: &KeyEvent, out: &mut Vec<Action>) -> bool {
        let n = self.data.samples.len();
        let page = 10usize;
        match key.code {
            KeyCode::Right => {
                self.monitor_next(out);
            }
            KeyCode::Enter => {
                if n == 0 {
                    self.warn(strings::MONITOR_NO_DIALOGUE);
                } else {
                    let i = self.monitor.list_sel.min(n - 1);
                    if self.monitor_pick(i, out) {
                        if let Some(why) = self.monitor_blocked() {
                            self.warn(why);
                        }
                    }
                }
            }
            KeyCode::Down => {
                self.monitor.list_sel = (self.monitor.list_sel + 1).min(n.saturating_sub(1))
            }
            KeyCode::Up => self.monitor.list_sel = self.monitor.list_sel.saturating_sub(1),
            KeyCode::PageDown => {
                self.monitor.list_sel = (self.monitor.list_sel + page).min(n.saturating_sub(1))
            }
            KeyCode::PageUp => self.monitor.list_sel = self.monitor.list_sel.saturating_sub(page),
            KeyCode::Home => self.monitor.list_sel = 0,
            KeyCode::End => self.monitor.list_sel = n.saturating_sub(1),
            KeyCode::Esc => {
                if self.monitor.playing {
                    self.monitor.playing = false;
                    self.info("replay paused (Space plays on)");
                } else {
                    return false;
                }
            }
            _ => match plain(key) {
                Some('n') => {
                    self.monitor_next(out);
                }
                Some(' ') => self.monitor_toggle_play(out),
                Some('r') => {
                    let playing = self.monitor.playing;
                    self.monitor_restart(out);
                    self.monitor.playing = playing;
                    let what = match &self.monitor.script {
                        Some(s) => format!("dialogue #{} starts again from turn 1", s.index + 1),
                        None => "a fresh conversation".into(),
                    };
                    self.info(format!(
                        "{what} (conversation {})",
                        self.monitor.conversation
                    ));
                }
                Some('i') => {
                    self.monitor.editing = true;
                    self.monitor.show_list = false;
                }
                Some('t') => {
                    let t = self.monitor_current_threshold() + THRESHOLD_STEP;
                    self.monitor_set_rule(Some(round_threshold(t)), None, out);
                }
                Some('T') => {
                    let t = self.monitor_current_threshold() - THRESHOLD_STEP;
                    self.monitor_set_rule(Some(round_threshold(t)), None, out);
                }
                Some('k') => {
                    let k = (self.monitor_current_consecutive() + 1).min(MAX_CONSECUTIVE);
                    self.monitor_set_rule(None, Some(k), out);
                }
                Some('K') => {
                    let k = self.monitor_current_consecutive().saturating_sub(1).max(1);
                    self.monitor_set_rule(None, Some(k), out);
                }
                Some('+') | Some('=') => {
                    self.monitor.set_pace(true);
                    self.info(format!("replay pace {:.1} s a turn", self.monitor.pace_s));
                    self.save_session();
                }
                Some('-') | Some('_') => {
                    self.monitor.set_pace(false);
                    self.info(format!("replay pace {:.1} s a turn", self.monitor.pace_s));
                    self.save_session();
                }
                Some('m') => self.monitor_pick_models(),
                Some('x') => self.monitor_explain(out),
                Some('e') => {
                    self.monitor.auto_explain = !self.monitor.auto_explain;
                    self.info(if self.monitor.auto_explain {
                        "an alert is explained automatically (once a conversation)"
                    } else {
                        "alerts are not explained automatically (x asks)"
                    });
                    self.save_session();
                }
                Some('l') => self.monitor.show_list = !self.monitor.show_list,
                _ => return false,
            },
        }
        true
    }

    fn monitor_toggle_play(&mut self, out: &mut Vec<Action>) {
        if self.monitor.playing {
            self.monitor.playing = false;
            self.info("replay paused (Space plays on)");
            return;
        }
        if let Some(why) = self.monitor_blocked() {
            self.warn(why);
            return;
        }
        if !self.monitor_ensure_script(out) {
            return;
        }
        if self.monitor.script_done() {
            // played to the end: play it again
            self.monitor_restart(out);
        }
        self.monitor.playing = true;
        let pace = self.monitor.pace_s;
        if self.monitor.waiting() == 0 && !self.monitor_next(out) {
            self.monitor.playing = false;
            return;
        }
        self.info(format!(
            "playing at {pace:.1} s a turn (Space pauses, +/- change the pace)"
        ));
    }

    /// Keys while the live input line has the focus.
    pub(super) fn monitor_edit_key(&mut self, key: &KeyEvent, out: &mut Vec<Action>) {
        match key.code {
            KeyCode::Esc => self.monitor.editing = false,
            KeyCode::Enter => {
                let text = self.monitor.input.text();
                let Some((sp, tx)) = parse_live_turn(&text) else {
                    return;
                };
                if let Some(why) = self.monitor_blocked() {
                    self.warn(why);
                    return;
                }
                if self.monitor.waiting() > 0 || !self.monitor.live_queue.is_empty() {
                    self.monitor.live_queue.push_back((sp, tx));
                    self.monitor.input.set_text("");
                    let q = self.monitor.live_queue.len();
                    self.info(format!(
                        "queued ({q} waiting): sent once the previous turn's results are back"
                    ));
                    return;
                }
                if self.monitor_send(sp, tx, true, out) {
                    self.monitor.input.set_text("");
                }
            }
            _ => {
                self.monitor.input.handle_key(key);
            }
        }
    }

    /// A paste on the pane: one line goes into the input line; several become live turns,
    /// sent one by one as results come back.
    pub(super) fn monitor_paste(&mut self, s: &str) {
        let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.len() <= 1 {
            self.monitor.editing = true;
            self.monitor.show_list = false;
            self.monitor
                .input
                .insert_str(s.trim_end_matches(['\n', '\r']));
            return;
        }
        let turns = parse_turns(s);
        let n = turns.len();
        self.monitor.live_queue.extend(turns);
        self.monitor.show_list = false;
        match self.monitor_blocked() {
            Some(why) => self.warn(format!("{n} pasted turn(s) queued; {why}")),
            None => self.info(format!("{n} pasted turn(s) queued: sent one by one")),
        }
    }

    /// What is due on a tick: queued commands, queued live turns, the paced replay.
    pub(super) fn monitor_due(&mut self, now: Instant, out: &mut Vec<Action>) {
        out.extend(self.monitor.outbox.drain(..).map(Action::Engine));
        if self.monitor.waiting() > 0 {
            return;
        }
        if !self.monitor.live_queue.is_empty() {
            // blocked (no model, the engine training…): they wait; the paste said why
            if self.monitor_blocked().is_some() {
                return;
            }
            if let Some((sp, tx)) = self.monitor.live_queue.pop_front() {
                if !self.monitor_send(sp, tx, true, out) {
                    self.monitor.live_queue.clear();
                }
            }
            return;
        }
        if !self.monitor.playing {
            return;
        }
        let pace = Duration::from_secs_f64(self.monitor.pace_s);
        if self
            .monitor
            .last_sent
            .is_some_and(|t| now.saturating_duration_since(t) < pace)
        {
            return;
        }
        if self.monitor.script_done() || !self.monitor_next(out) {
            self.monitor.playing = false;
        }
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

// ---------------------------------------------------------------- drawing

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    let m = &app.monitor;
    let has_data = !app.data.samples.is_empty();
    let wide = area.width >= 120;
    let nothing_yet = m.script.is_none() && m.turns.is_empty() && !m.editing;
    let list = has_data && (wide || m.show_list || nothing_yet);
    let main = if list && wide {
        let lw = (area.width * 3 / 10).clamp(36, 60);
        let [l, r] = Layout::horizontal([Constraint::Length(lw), Constraint::Fill(1)]).areas(area);
        draw_list(f, l, app);
        r
    } else if list {
        draw_list(f, area, app);
        return;
    } else {
        area
    };
    let chart_h = if main.height >= 34 {
        14
    } else if main.height >= 20 {
        9
    } else {
        0
    };
    let [head, turns, bottom, input] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(chart_h),
        Constraint::Length(3),
    ])
    .areas(main);
    draw_head(f, head, app);
    draw_turns(f, turns, app);
    if chart_h > 0 {
        let side_w = (bottom.width * 2 / 5).clamp(30, 56).min(bottom.width);
        let [chart, side] =
            Layout::horizontal([Constraint::Fill(1), Constraint::Length(side_w)]).areas(bottom);
        draw_chart(f, chart, app);
        draw_alert(f, side, app);
    }
    draw_input(f, input, app);
}

/// The threshold(s) in use, for the header.
fn threshold_text(app: &App) -> String {
    let m = &app.monitor;
    if !m.followers.is_empty() {
        let mut ts: Vec<f64> = m.followers.iter().map(|f| f.cfg.threshold).collect();
        ts.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
        let ks: Vec<usize> = m.followers.iter().map(|f| f.cfg.consecutive).collect();
        let t = if ts.len() == 1 {
            format!("{:.2}", ts[0])
        } else {
            ts.iter()
                .map(|t| format!("{t:.2}"))
                .collect::<Vec<_>>()
                .join("/")
        };
        let k = if ks.iter().all(|&k| k == ks[0]) {
            ks[0].to_string()
        } else {
            ks.iter()
                .map(|k| k.to_string())
                .collect::<Vec<_>>()
                .join("/")
        };
        return format!("threshold {t} · K {k}");
    }
    let t = m
        .threshold
        .map(|t| format!("{t:.2}"))
        .unwrap_or_else(|| "per model".into());
    let k = m
        .consecutive
        .map(|k| k.to_string())
        .unwrap_or_else(|| "per model".into());
    format!("threshold {t} · K {k}")
}

fn draw_head(f: &mut Frame, area: Rect, app: &App) {
    let m = &app.monitor;
    let names: Vec<String> = if m.started {
        m.followers
            .iter()
            .map(|x| match &x.stopped {
                Some(_) => format!("{} (stopped)", x.label),
                None => x.label.clone(),
            })
            .collect()
    } else {
        app.ready_slots()
            .filter(|s| m.chosen.is_empty() || m.chosen.contains(&s.key))
            .map(|s| s.label())
            .collect()
    };
    let play = if m.playing {
        Span::styled(
            format!("▶ {:.1} s/turn", m.pace_s),
            theme::ok().add_modifier(Modifier::BOLD),
        )
    } else {
        Span::styled(format!("⏸ {:.1} s/turn", m.pace_s), theme::dim())
    };
    let mut spans = vec![
        play,
        Span::raw("  "),
        Span::styled(threshold_text(app), theme::accent()),
        Span::styled(
            format!("  explain {}", if m.auto_explain { "auto" } else { "on x" }),
            theme::dim(),
        ),
        Span::styled("  models ", theme::dim()),
    ];
    let used: usize = spans.iter().map(|s| display_width(&s.content)).sum();
    let models = if names.is_empty() {
        "(none loaded)".to_string()
    } else {
        names.join(", ")
    };
    spans.push(Span::raw(truncate(
        &models,
        (area.width as usize).saturating_sub(used),
    )));
    let line = Line::from(spans);
    f.render_widget(Paragraph::new(line), area);
}

fn draw_list(f: &mut Frame, area: Rect, app: &App) {
    let d = &app.data;
    let m = &app.monitor;
    if d.samples.is_empty() {
        f.render_widget(
            Paragraph::new(strings::MONITOR_NO_DATASET)
                .wrap(Wrap { trim: true })
                .block(theme::block(strings::MONITOR_LIST_TITLE, true)),
            area,
        );
        return;
    }
    let name = d
        .path
        .as_ref()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let title = format!(
        "{} · {name} · {} — Enter follows",
        strings::MONITOR_LIST_TITLE,
        d.samples.len()
    );
    let block = theme::block(title, true);
    let h = area.height.saturating_sub(3) as usize;
    let n = d.samples.len();
    let sel = m.list_sel.min(n - 1);
    let mut off = m.list_offset.get();
    if sel < off {
        off = sel;
    } else if h > 0 && sel >= off + h {
        off = sel + 1 - h;
    }
    off = off.min(n.saturating_sub(h.max(1)));
    m.list_offset.set(off);
    // the picked dialogue, while the same dataset is open
    let picked = m
        .script
        .as_ref()
        .filter(|s| d.samples.get(s.index).is_some_and(|x| x.id == s.id))
        .map(|s| s.index);
    let rows: Vec<Row> = (off..n)
        .take(h.max(1))
        .map(|i| {
            let s = &d.samples[i];
            let label = d.effective(i);
            // only the rows on screen are parsed
            let turns = s.turns().len();
            let mark = if picked == Some(i) { "▶" } else { " " };
            let row = Row::new(vec![
                Cell::from(format!("{mark}{}", i + 1)),
                Cell::from(Span::styled(
                    match label {
                        Some(true) => "fraud",
                        Some(false) => "normal",
                        None => "–",
                    },
                    theme::label_style(label),
                )),
                Cell::from(turns.to_string()),
                Cell::from(d.previews.get(i).map(String::as_str).unwrap_or("")),
            ]);
            if i == sel {
                row.style(theme::selected())
            } else {
                row
            }
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(5),
            Constraint::Fill(1),
        ],
    )
    .header(Row::new(["#", "label", "turns", "first turn"]).style(theme::header()))
    .block(block);
    f.render_widget(table, area);
}

fn turns_title(app: &App) -> String {
    let m = &app.monitor;
    let mut t = strings::MONITOR_TITLE.to_string();
    match &m.script {
        Some(s) => t.push_str(&format!(
            " · dialogue #{} · {} · turn {}/{}",
            s.index + 1,
            label_text(s.label),
            m.next,
            s.turns.len()
        )),
        None if !m.turns.is_empty() => t.push_str(&format!(" · live · {} turns", m.turns.len())),
        None => {}
    }
    let typed = m.turns.iter().filter(|r| r.typed).count();
    if typed > 0 && m.script.is_some() {
        t.push_str(&format!(" · +{typed} typed"));
    }
    if m.waiting() > 0 {
        t.push_str(" · scoring…");
    }
    t
}

fn draw_turns(f: &mut Frame, area: Rect, app: &App) {
    let m = &app.monitor;
    let block = theme::block(turns_title(app), !m.editing);
    if m.turns.is_empty() {
        let msg = match app.monitor_blocked() {
            Some(why) if app.ready_slots().next().is_none() => why,
            _ => strings::MONITOR_EMPTY.to_string(),
        };
        f.render_widget(
            Paragraph::new(msg).wrap(Wrap { trim: true }).block(block),
            area,
        );
        return;
    }
    let nf = m.followers.len();
    let inner_w = area.width.saturating_sub(2) as usize;
    // per model: "0.83 ▇▇▇▇▇" (number and bar), narrower when room is short
    let bar_w = if inner_w >= 60 + nf * 12 {
        6
    } else if inner_w >= 40 + nf * 8 {
        3
    } else {
        0
    };
    let col_w = 4 + if bar_w > 0 { bar_w + 1 } else { 0 };
    let h = area.height.saturating_sub(3) as usize;
    let off = m.turns.len().saturating_sub(h.max(1));
    // speaker colours by first appearance
    let mut speakers: Vec<&str> = Vec::new();
    for r in &m.turns {
        if !speakers.contains(&r.speaker.as_str()) {
            speakers.push(&r.speaker);
        }
    }
    let text_w = inner_w.saturating_sub(5 + nf * (col_w + 1) + 7).max(4);
    let alert_turns: Vec<usize> = m
        .followers
        .iter()
        .filter_map(|f| f.alert.as_ref().map(|a| a.0))
        .collect();
    let rows: Vec<Row> = m
        .turns
        .iter()
        .enumerate()
        .skip(off)
        .map(|(i, r)| {
            let turn = i + 1;
            let fired = alert_turns.contains(&turn);
            let num = Cell::from(Span::styled(
                format!("{turn}{}", if fired { "!" } else { "" }),
                if fired {
                    theme::err().add_modifier(Modifier::BOLD)
                } else {
                    theme::dim()
                },
            ));
            let si = speakers.iter().position(|s| *s == r.speaker).unwrap_or(0);
            let who = if r.speaker.is_empty() {
                String::new()
            } else {
                format!("{}: ", r.speaker)
            };
            let body = one_line(&r.text);
            let who_w = display_width(&who).min(text_w);
            let mut text_spans = vec![Span::styled(
                truncate(&who, text_w),
                Style::new().fg(theme::speaker_color(si)),
            )];
            text_spans.push(Span::raw(truncate(&body, text_w.saturating_sub(who_w))));
            if r.typed {
                text_spans.push(Span::styled(" ⌨", theme::dim()));
            }
            let mut cells = vec![num, Cell::from(Line::from(text_spans))];
            let mut lat: Option<f64> = None;
            for (fi, s) in r.scores.iter().enumerate() {
                let thr = m.followers.get(fi).map(|f| f.cfg.threshold).unwrap_or(0.5);
                cells.push(match s {
                    Score::Waiting(_) => Cell::from(Span::styled("…", theme::dim())),
                    Score::Skipped => Cell::from(Span::styled("–", theme::dim())),
                    Score::Failed(e) => Cell::from(Span::styled(
                        if e == "cancelled" { "cancel" } else { "error" },
                        theme::err(),
                    )),
                    Score::Done(t) => {
                        lat = Some(lat.map_or(t.latency_ms, |l: f64| l.max(t.latency_ms)));
                        let st = if t.p_fraud >= thr {
                            theme::err().add_modifier(Modifier::BOLD)
                        } else {
                            theme::ok()
                        };
                        let txt = if bar_w > 0 {
                            format!("{:.2} {}", t.p_fraud, risk_bar(t.p_fraud, bar_w))
                        } else {
                            format!("{:.2}", t.p_fraud)
                        };
                        Cell::from(Span::styled(txt, st))
                    }
                });
            }
            cells.push(Cell::from(Span::styled(
                lat.map(fmt_ms).unwrap_or_default(),
                theme::dim(),
            )));
            Row::new(cells)
        })
        .collect();
    // model columns in their chart colours
    let mut header = vec![Cell::from("#"), Cell::from("turn")];
    let mut widths = vec![Constraint::Length(4), Constraint::Fill(1)];
    let labels: Vec<String> = m.followers.iter().map(|f| f.label.clone()).collect();
    for (fi, label) in short_labels(&labels).iter().enumerate() {
        header.push(Cell::from(Span::styled(
            truncate(label, col_w),
            theme::bold().fg(theme::SERIES[fi % theme::SERIES.len()]),
        )));
        widths.push(Constraint::Length(col_w as u16));
    }
    header.push(Cell::from("ms"));
    widths.push(Constraint::Length(6));
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(theme::header()))
        .block(block);
    f.render_widget(table, area);
}

fn draw_chart(f: &mut Frame, area: Rect, app: &App) {
    let m = &app.monitor;
    let planned = m.script.as_ref().map(|s| s.turns.len()).unwrap_or(0);
    let max_x = planned.max(m.turns.len()).max(2) as f64;
    let series: Vec<Vec<(f64, f64)>> = (0..m.followers.len())
        .map(|fi| {
            m.turns
                .iter()
                .enumerate()
                .filter_map(|(i, r)| match r.scores.get(fi) {
                    Some(Score::Done(t)) => Some(((i + 1) as f64, t.p_fraud)),
                    _ => None,
                })
                .collect()
        })
        .collect();
    let mut thresholds: Vec<f64> = if m.followers.is_empty() {
        vec![m.threshold.unwrap_or(0.5)]
    } else {
        m.followers.iter().map(|f| f.cfg.threshold).collect()
    };
    thresholds.sort_by(|a, b| a.total_cmp(b));
    thresholds.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
    let lines: Vec<[(f64, f64); 2]> = thresholds.iter().map(|&t| [(1.0, t), (max_x, t)]).collect();
    let mut ds = Vec::new();
    // the legend is the block's bottom title: a chart legend would hide the first turns
    let mut legend = vec![Span::raw(" ")];
    for l in &lines {
        ds.push(
            Dataset::default()
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(theme::warn())
                .data(l),
        );
    }
    let ts: Vec<String> = thresholds.iter().map(|t| format!("{t:.2}")).collect();
    legend.push(Span::styled(
        format!("── threshold {} ", ts.join("/")),
        theme::warn(),
    ));
    for (fi, pts) in series.iter().enumerate() {
        let style = Style::new().fg(theme::SERIES[fi % theme::SERIES.len()]);
        legend.push(Span::styled(
            format!("── {} ", truncate(&m.followers[fi].label, 24)),
            style,
        ));
        // one point alone is no line: a dot
        let (marker, kind) = if pts.len() > 1 {
            (Marker::Braille, GraphType::Line)
        } else {
            (Marker::Dot, GraphType::Scatter)
        };
        ds.push(
            Dataset::default()
                .marker(marker)
                .graph_type(kind)
                .style(style)
                .data(pts),
        );
    }
    let mid = ((1.0 + max_x) / 2.0).round();
    let chart = Chart::new(ds)
        .block(theme::block("Risk over turns", false).title_bottom(Line::from(legend)))
        .x_axis(
            Axis::default()
                .title("turn")
                .style(theme::dim())
                .bounds([1.0, max_x])
                .labels(vec![
                    Span::raw("1"),
                    Span::raw(format!("{mid:.0}")),
                    Span::raw(format!("{max_x:.0}")),
                ]),
        )
        .y_axis(
            Axis::default()
                .style(theme::dim())
                .bounds([0.0, 1.0])
                .labels(vec![Span::raw("0"), Span::raw("0.5"), Span::raw("1")]),
        )
        .legend_position(None);
    f.render_widget(chart, area);
}

fn draw_alert(f: &mut Frame, area: Rect, app: &App) {
    let m = &app.monitor;
    let alerted = m.first_alert().is_some();
    let title = match m.first_alert() {
        Some((fi, t)) => format!("ALERT at turn {t} · {}", m.followers[fi].label),
        None => "Alert".to_string(),
    };
    let block = if alerted {
        theme::block(title, true)
            .border_style(theme::err())
            .title_style(theme::err().add_modifier(Modifier::BOLD))
    } else {
        theme::block(title, false)
    };
    let inner = block.inner(area);
    f.render_widget(block, area);
    let w = inner.width.max(1) as usize;
    let mut lines: Vec<Line> = Vec::new();
    let push_wrapped = |lines: &mut Vec<Line>, text: &str, style: Style| {
        for r in wrap(text, w) {
            lines.push(Line::styled(r, style));
        }
    };
    let label = m.script.as_ref().and_then(|s| s.label);
    if m.followers.is_empty() {
        push_wrapped(&mut lines, "no conversation yet", theme::dim());
    }
    let done = m.script_done() && m.waiting() == 0;
    for fo in &m.followers {
        match &fo.alert {
            Some((t, sp, p)) => {
                push_wrapped(
                    &mut lines,
                    &format!(
                        "{}: fired at turn {t} (P {p:.2} ≥ {:.2})",
                        fo.label, fo.cfg.threshold
                    ),
                    theme::err().add_modifier(Modifier::BOLD),
                );
                if !sp.is_empty() {
                    push_wrapped(
                        &mut lines,
                        &format!("speaker of that turn: {sp}"),
                        Style::new(),
                    );
                }
            }
            None => push_wrapped(
                &mut lines,
                &format!("{}: {}", fo.label, strings::MONITOR_NO_ALERT),
                theme::ok(),
            ),
        }
        match &fo.explain {
            ExplainState::None if fo.alert.is_some() => {
                push_wrapped(&mut lines, "x explains who and why", theme::dim())
            }
            ExplainState::None => {}
            ExplainState::Asked(_) => push_wrapped(&mut lines, "explaining…", theme::dim()),
            ExplainState::Done(e) => {
                push_wrapped(
                    &mut lines,
                    &format!(
                        "fraudster: {}",
                        e.fraud_speaker.as_deref().unwrap_or("(not named)")
                    ),
                    theme::warn(),
                );
                push_wrapped(
                    &mut lines,
                    &format!(
                        "reason: {}",
                        one_line(e.reason.as_deref().unwrap_or("(none given)"))
                    ),
                    Style::new(),
                );
            }
            ExplainState::Failed(e) => {
                push_wrapped(&mut lines, &format!("explain failed: {e}"), theme::err())
            }
        }
        if let Some(s) = &fo.stopped {
            push_wrapped(&mut lines, &format!("stopped: {s}"), theme::err());
        }
        if m.script.is_some() && !m.turns.is_empty() {
            let v = verdict(label, fo, done);
            let st = match (label, fo.alert.is_some()) {
                (Some(true), true) | (Some(false), false) => theme::ok(),
                (Some(_), _) if done || fo.alert.is_some() => theme::err(),
                _ => theme::dim(),
            };
            push_wrapped(&mut lines, &format!("→ {v}"), st);
        }
    }
    if let Some(s) = &m.script {
        let mut t = format!("true label: {}", label_text(s.label));
        if let Some(sp) = &s.fraud_speaker {
            t.push_str(&format!(" (fraudster {sp})"));
        }
        push_wrapped(&mut lines, &t, theme::label_style(s.label));
    }
    // latency per model: last and median
    if !m.followers.is_empty() && !m.turns.is_empty() {
        lines.push(Line::styled("latency (last · median)", theme::header()));
        for (fi, fo) in m.followers.iter().enumerate() {
            let l = m.latencies(fi);
            let last = l.last().copied();
            let med = median(&l);
            let tok = m.turns.iter().rev().find_map(|r| match r.scores.get(fi) {
                Some(Score::Done(t)) => Some(t.computed_tokens),
                _ => None,
            });
            let txt = format!(
                "{}: {} · {} ms{}",
                truncate(&fo.label, w.saturating_sub(22).max(6)),
                last.map(fmt_ms).unwrap_or_else(|| "–".into()),
                med.map(fmt_ms).unwrap_or_else(|| "–".into()),
                tok.map(|t| format!(" · {t} tok")).unwrap_or_default()
            );
            lines.push(Line::styled(
                truncate(&txt, w),
                Style::new().fg(theme::SERIES[fi % theme::SERIES.len()]),
            ));
        }
    }
    // the alert comes first: what does not fit is the end
    let h = inner.height as usize;
    f.render_widget(
        Paragraph::new(lines.into_iter().take(h).collect::<Vec<_>>()),
        inner,
    );
}

fn draw_input(f: &mut Frame, area: Rect, app: &App) {
    let m = &app.monitor;
    let mut title = format!(
        "{} — {}",
        strings::MONITOR_INPUT_TITLE,
        if m.editing {
            "typing: Enter sends `speaker: utterance`, Esc stops"
        } else {
            "i types a turn (`speaker: utterance`)"
        }
    );
    if !m.live_queue.is_empty() {
        title.push_str(&format!(" · {} queued", m.live_queue.len()));
    }
    let block = theme::block(title, m.editing);
    let inner = block.inner(area);
    f.render_widget(block, area);
    if inner.width == 0 || inner.height == 0 {
        return;
    }
    let width = inner.width as usize;
    let (rows, (cx, _)) = m.input.layout(usize::MAX / 4);
    let text = rows.into_iter().next().unwrap_or_default();
    let skip_w = (cx + 1).saturating_sub(width);
    let mut shown = String::new();
    let mut acc = 0;
    for c in text.chars() {
        if acc >= skip_w {
            shown.push(c);
        }
        acc += char_width(c);
    }
    f.render_widget(Paragraph::new(truncate(&shown, width)), inner);
    if m.editing {
        f.set_cursor_position((
            inner.x + (cx - skip_w).min(width.saturating_sub(1)) as u16,
            inner.y,
        ));
    }
}
