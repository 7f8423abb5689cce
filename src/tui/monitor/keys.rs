//! Monitor pane, key handling: the `impl App` methods behind the pane's keys, the live
//! input line, pastes and the tick (paced replay, queued live turns, the outbox), and the
//! conversation actions they trigger — starting, restarting and configuring the
//! followers, sending a turn to each, picking a dialogue or the models, asking for an
//! explanation.

use crossterm::event::{KeyCode, KeyEvent};
use std::time::{Duration, Instant};

use super::{
    label_text, parse_live_turn, round_threshold, ExplainState, Follower, Score, Script, TurnRow,
    EXPLAIN_TOKENS, MAX_CONSECUTIVE, THRESHOLD_STEP,
};
use crate::data::dataset::parse_turns;
use crate::engine::{Command, EngineState};
use crate::tui::app::{Action, App, PickPurpose, Slot};
use crate::tui::keys::{plain, strings};

impl App {
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

    pub(in crate::tui) fn monitor_set_models(
        &mut self,
        chosen: Vec<String>,
        out: &mut Vec<Action>,
    ) {
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

    pub(super) fn monitor_ask_explain(&mut self, fi: usize, out: &mut Vec<Action>) {
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

    pub(in crate::tui) fn monitor_key(&mut self, key: &KeyEvent, out: &mut Vec<Action>) -> bool {
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
    pub(in crate::tui) fn monitor_edit_key(&mut self, key: &KeyEvent, out: &mut Vec<Action>) {
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
    pub(in crate::tui) fn monitor_paste(&mut self, s: &str) {
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
    pub(in crate::tui) fn monitor_due(&mut self, now: Instant, out: &mut Vec<Action>) {
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
}
