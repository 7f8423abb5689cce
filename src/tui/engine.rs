//! The workbench's side of the engine: what it sent and what has ended, engine events in,
//! the status line's engine figure, and Esc's cancel. `impl App` blocks; the state is in
//! `app.rs`.

use std::time::Instant;

use super::app::{Action, App, Level, Slot, SlotState};
use crate::engine::{BackgroundJob, Command, EngineState, Event, Subject};

/// An engine command in flight.
#[derive(Debug, Clone)]
pub(super) enum Sent {
    Generate(u64),
    Score(u64),
    Monitor(u64),
    Load(String),
    Other,
}

impl App {
    /// Whether the engine's worker is busy with a command (a load, a probe, a score, a
    /// monitored turn, a download): a command sent now waits for it. Background runs
    /// (training, evaluation) do not make it busy.
    pub fn engine_busy(&self) -> bool {
        !matches!(self.engine_state, EngineState::Idle | EngineState::Stopped)
    }

    /// Whether anything runs in the engine: its worker or a background run.
    pub fn engine_working(&self) -> bool {
        self.engine_busy() || self.engine_training || self.engine_evaluating
    }

    /// Notes the engine commands sent, in order: the worker takes them one after the other
    /// and reports `State(Idle)` after each, which tells which one ended. A training run or
    /// an evaluation ends there as a command once its thread has started (or it was
    /// refused); its own end is `Event::Background`.
    pub(super) fn track(&mut self, out: &[Action]) {
        for a in out {
            if let Action::Engine(c) = a {
                self.sent.push_back(match c {
                    Command::Generate { request, .. } => Sent::Generate(*request),
                    Command::Score { request, .. } => Sent::Score(*request),
                    Command::MonitorTurn { request, .. }
                    | Command::MonitorExplain { request, .. } => Sent::Monitor(*request),
                    Command::Load { key, .. } => Sent::Load(key.clone()),
                    _ => Sent::Other,
                });
            }
        }
    }

    /// The oldest command in flight has ended: whatever it left unfinished is over.
    fn command_ended(&mut self) {
        let Some(done) = self.sent.pop_front() else {
            return;
        };
        match done {
            Sent::Generate(r) => self.probe_request_ended(r),
            Sent::Score(r) => {
                if self.data.scoring == Some(r) {
                    self.data.scoring = None;
                }
            }
            Sent::Monitor(r) => self.monitor_request_ended(r),
            Sent::Load(key) => self.slots.retain(|s| s.key != key || s.is_ready()),
            Sent::Other => {}
        }
    }

    /// Commands sent to the engine and not finished yet.
    pub fn commands_in_flight(&self) -> usize {
        self.sent.len()
    }

    /// Esc / x: cancel what the engine does now: the worker's command first (a probe, a
    /// score, a monitored turn, a download), else the training run (stopped after its step,
    /// with a checkpoint), else the evaluation.
    pub fn cancel_work(&mut self, out: &mut Vec<Action>) {
        match self.engine_state {
            EngineState::Loading => {
                self.info("loading cannot be cancelled; it finishes in a moment")
            }
            EngineState::Idle | EngineState::Stopped => {
                if self.engine_training {
                    out.push(Action::StopTraining);
                    self.train.stop_requested = true;
                    self.warn(
                        "stopping training after this step (a checkpoint and the adapter are written)",
                    );
                } else if self.engine_evaluating {
                    out.push(Action::CancelEvaluation);
                    self.warn("cancelling the evaluation…");
                } else if self.slots.iter().any(|s| !s.is_ready()) {
                    self.info("loading cannot be cancelled; it finishes in a moment");
                }
            }
            _ => {
                out.push(Action::Cancel);
                self.warn("cancelling…");
            }
        }
    }

    // ------------------------------------------------------------ engine events

    pub fn on_engine_event(&mut self, ev: Event) {
        match ev {
            Event::State(s) => {
                if s == EngineState::Idle {
                    self.busy_since = None;
                } else if self.engine_state == EngineState::Idle || self.busy_since.is_none() {
                    self.busy_since = Some(Instant::now());
                }
                self.engine_state = s;
                if s == EngineState::Idle {
                    self.command_ended();
                }
                if s == EngineState::Stopped {
                    // nothing sent will end now
                    while !self.sent.is_empty() {
                        self.command_ended();
                    }
                }
            }
            Event::Loaded(info) => {
                let text = format!(
                    "loaded {} ({} parameters) in {:.1}s",
                    info.name,
                    super::widgets::human_count(info.parameters),
                    info.load_s
                );
                self.restoring.remove(&info.key);
                match self.slots.iter_mut().find(|s| s.key == info.key) {
                    Some(s) => {
                        s.name = info.name.clone();
                        s.state = SlotState::Ready(info);
                    }
                    None => self.slots.push(Slot {
                        key: info.key.clone(),
                        spec: info.key.clone(),
                        adapter: info.adapter.clone(),
                        name: info.name.clone(),
                        state: SlotState::Ready(info),
                    }),
                }
                self.ok(text);
                self.save_session();
            }
            Event::Unloaded { key } => {
                self.slots.retain(|s| s.key != key);
                self.save_session();
            }
            Event::Token { request, key, text } => self.probe_on_token(request, &key, &text),
            Event::Generated {
                request,
                key,
                generation,
            } => self.probe_on_generated(request, &key, generation),
            Event::Scored {
                request,
                key,
                probabilities,
            } => self.data_on_scored(request, &key, probabilities),
            Event::Background { job, running } => self.on_background(job, running),
            Event::Refused { subject, reason } => {
                let why = reason.to_string();
                match subject {
                    Subject::Train => self.train_on_error(&why),
                    Subject::Eval => self.eval_on_error(&why),
                    _ => {}
                }
                self.error(format!("{subject}: {why}"));
            }
            Event::Train(e) => self.train_on_event(e),
            Event::EvalProgress { model, done, total } => self.eval_on_progress(model, done, total),
            Event::EvalDone(results) => self.eval_on_done(results),
            Event::DownloadProgress { id, progress } => {
                self.info(format!(
                    "downloading {id} {}",
                    crate::model::download::bar(&progress, 20)
                ));
            }
            Event::Downloaded { id, path } => {
                self.ok(format!("downloaded {id} to {}", path.display()));
                self.request_scan(super::io::AfterScan::Nothing);
            }
            Event::MonitorTurn {
                request,
                key,
                result,
            } => self.monitor_on_turn(request, &key, result),
            Event::Explained {
                request,
                key,
                explanation,
            } => self.monitor_on_explained(request, &key, explanation),
            Event::Error { subject, message } => self.on_engine_error(subject, message),
        }
    }

    /// A training run or an evaluation started or ended in the background.
    fn on_background(&mut self, job: BackgroundJob, running: bool) {
        match job {
            BackgroundJob::Train => {
                self.engine_training = running;
                if !running && self.train.live.active {
                    self.train_on_error("the run ended without a summary");
                }
            }
            BackgroundJob::Eval => {
                self.engine_evaluating = running;
                if !running {
                    self.eval.running = false;
                }
            }
        }
    }

    fn on_engine_error(&mut self, subject: Subject, message: String) {
        match &subject {
            Subject::Load { spec, key } => {
                self.restoring.remove(key);
                let before = self.slots.len();
                self.slots.retain(|s| &s.spec != spec || s.is_ready());
                if self.slots.len() != before {
                    self.save_session();
                }
            }
            Subject::Generate { key, .. } => self.probe_on_error(key, &message),
            Subject::Score { .. } => self.data.scoring = None,
            Subject::Train => self.train_on_error(&message),
            Subject::Eval => self.eval_on_error(&message),
            Subject::Engine => {
                self.data.scoring = None;
                self.train_on_error(&message);
                self.eval_on_error(&message);
            }
            Subject::Monitor { .. } => self.monitor_on_error(&subject, &message),
            Subject::Download { .. } => {}
        }
        if message == "cancelled" {
            self.warn(format!("{subject}: cancelled"));
        } else {
            self.error(format!("{subject}: {message}"));
        }
    }

    /// One line on what the engine does, for the status bar.
    pub fn engine_status(&self) -> (String, Level) {
        const SPIN: [char; 8] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧'];
        let spin = SPIN[self.spinner % SPIN.len()];
        let loading = self.slots.iter().filter(|s| !s.is_ready()).count();
        let worker = match self.engine_state {
            EngineState::Idle if loading > 0 => Some(format!("{spin} loading")),
            EngineState::Idle => None,
            EngineState::Stopped => {
                return (
                    "✖ engine stopped: quit and start again".into(),
                    Level::Error,
                )
            }
            EngineState::Loading => Some(format!("{spin} loading")),
            EngineState::Generating => Some(format!("{spin} generating")),
            EngineState::Scoring => Some(format!("{spin} scoring")),
            EngineState::Monitoring => Some(format!("{spin} monitoring")),
            EngineState::Downloading => Some(format!("{spin} downloading")),
        };
        // the worker's command first, then the background runs
        let mut parts: Vec<String> = worker.into_iter().collect();
        if self.engine_training {
            let t = &self.train;
            let step = t
                .live
                .metrics
                .last()
                .map(|m| m.step)
                .unwrap_or(t.live.start_step);
            let mut s = if t.live.paused {
                format!("⏸ paused at step {step}/{}", t.live.total_steps)
            } else {
                format!("{spin} training step {step}/{}", t.live.total_steps)
            };
            if let Some(m) = t.live.metrics.last() {
                if !t.live.paused {
                    s.push_str(&format!(" · ETA {}", super::widgets::human_secs(m.eta_s)));
                }
            }
            parts.push(s);
        }
        if self.engine_evaluating {
            let p = &self.eval.progress;
            parts.push(format!("{spin} evaluating {}/{}", p.1, p.2));
        }
        if parts.is_empty() {
            ("● idle".into(), Level::Ok)
        } else {
            (parts.join(" · "), Level::Warn)
        }
    }
}
