//! The engine worker: one thread that owns every loaded model. The UI sends `Command`s and
//! drains `Event`s each frame; it never touches a tensor. Every event names what it belongs
//! to ([`Subject`]: a request id, a model key, the training run…), never a string to parse.
//! Each command gets its own cancel flag when it is sent, so cancelling request R (or
//! everything in flight) reaches exactly the commands sent before, between tokens, steps or
//! batches, even while the worker is busy; pause and stop of training act the same way.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;

/// The id of a request (a generation, a scoring, a monitored turn…), chosen by the sender.
pub type RequestId = u64;

use super::eval::{evaluate, EvalConfig, EvalResult};
use super::generate::{build_prompt, generate, Generation, SamplingParams};
use super::monitor::{Explanation, Monitor, MonitorConfig, TurnResult};
pub use super::subject::Subject;
use super::train::{train, TrainConfig, TrainControl, TrainEvent};
use crate::model::{self, LoadOptions, LoadedModel};

/// What a loaded model is, for display.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadedInfo {
    pub key: String,
    pub name: String,
    pub parameters: u64,
    pub layers: usize,
    pub quantized: bool,
    pub adapter: Option<PathBuf>,
    pub load_s: f64,
}

#[derive(Debug, Clone)]
pub enum Command {
    /// Load a model (folder, hub id, .gguf) under `key`, optionally with a LoRA adapter.
    Load {
        key: String,
        spec: String,
        opts: LoadOptions,
        adapter: Option<PathBuf>,
    },
    Unload {
        key: String,
    },
    /// Generate with every model in `keys`, one after the other, streaming tokens.
    Generate {
        request: u64,
        keys: Vec<String>,
        system: Option<String>,
        prompt: String,
        raw: bool,
        params: SamplingParams,
    },
    /// Generate with model `key` after a conversation rendered by its chat template (the
    /// HTTP server's chat completions); the same events as `Generate`.
    Chat {
        request: RequestId,
        key: String,
        messages: Vec<crate::model::ChatMessage>,
        params: SamplingParams,
    },
    /// Fraud probabilities of samples under a loaded model (score mode).
    Score {
        request: u64,
        key: String,
        samples: Vec<crate::data::Sample>,
    },
    Train(Box<TrainConfig>),
    /// A recipe search (`fraudlab tune`) over the default grid on the config's settings,
    /// within `budget_s`; its trials report as training runs, one after the other.
    Tune {
        base: Box<TrainConfig>,
        budget_s: f64,
    },
    Evaluate(Box<EvalConfig>),
    /// Download a model by hub id into the Hugging Face cache.
    Download {
        id: String,
    },
    /// Sets how the model under `key` monitors conversations (forgets the ones it follows).
    /// Without it a model monitors with its adapter's `fraudlab.json`, else the defaults.
    MonitorConfigure {
        key: String,
        cfg: MonitorConfig,
    },
    /// One more turn of a live conversation, scored incrementally.
    MonitorTurn {
        request: RequestId,
        key: String,
        conversation: String,
        speaker: String,
        text: String,
    },
    /// Who the fraudster is and why, asked of the model for a followed conversation.
    MonitorExplain {
        request: RequestId,
        key: String,
        conversation: String,
        max_tokens: usize,
    },
    MonitorEnd {
        key: String,
        conversation: String,
    },
    Shutdown,
}

impl Command {
    /// The request id a command carries, if it has one.
    pub fn request(&self) -> Option<RequestId> {
        match self {
            Self::Generate { request, .. }
            | Self::Chat { request, .. }
            | Self::Score { request, .. }
            | Self::MonitorTurn { request, .. }
            | Self::MonitorExplain { request, .. } => Some(*request),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EngineState {
    Idle,
    Loading,
    Generating,
    Scoring,
    Training,
    Evaluating,
    Downloading,
    Monitoring,
    /// The worker thread has ended (it should not: a panic in a command is caught and
    /// reported as that command's error); nothing more will run.
    Stopped,
}

#[derive(Debug, Clone)]
pub enum Event {
    State(EngineState),
    Loaded(LoadedInfo),
    Unloaded {
        key: String,
    },
    /// A piece of streamed text.
    Token {
        request: u64,
        key: String,
        text: String,
    },
    Generated {
        request: u64,
        key: String,
        generation: Generation,
    },
    Scored {
        request: u64,
        key: String,
        probabilities: Vec<(String, f64)>,
    },
    Train(TrainEvent),
    EvalProgress {
        model: String,
        done: usize,
        total: usize,
    },
    EvalDone(Vec<EvalResult>),
    DownloadProgress {
        id: String,
        progress: crate::model::download::DownloadProgress,
    },
    Downloaded {
        id: String,
        path: PathBuf,
    },
    MonitorTurn {
        request: RequestId,
        key: String,
        result: TurnResult,
    },
    Explained {
        request: RequestId,
        key: String,
        explanation: Explanation,
    },
    /// `subject` says what failed, `message` why ("cancelled" when it was cancelled).
    Error {
        subject: Subject,
        message: String,
    },
}

impl Event {
    /// Whether the event may be dropped when the queue is full (a streamed piece of text, a
    /// progress report); results, errors and states never are.
    pub fn droppable(&self) -> bool {
        matches!(
            self,
            Self::Token { .. } | Self::EvalProgress { .. } | Self::DownloadProgress { .. }
        )
    }
}

/// A command and the cancel flag it was given when sent.
struct Job {
    cmd: Command,
    cancel: Arc<AtomicBool>,
}

/// Cancel flags of the commands sent and not finished, by request id when they have one.
type InFlight = Arc<Mutex<Vec<(Option<RequestId>, Weak<AtomicBool>)>>>;

/// The UI's side of the engine.
pub struct Engine {
    tx: Sender<Job>,
    pub events: Receiver<Event>,
    in_flight: InFlight,
    pub train_control: Arc<TrainControl>,
    thread: Option<JoinHandle<()>>,
    /// The worker thread's end was reported.
    stopped: AtomicBool,
}

/// A handle that sends commands and cancels them from any thread (the HTTP server's).
#[derive(Clone)]
pub struct EngineHandle {
    tx: Sender<Job>,
    in_flight: InFlight,
}

impl EngineHandle {
    pub fn send(&self, c: Command) {
        send_job(&self.tx, &self.in_flight, c)
    }
    pub fn cancel_request(&self, request: RequestId) {
        cancel_where(&self.in_flight, |r| r == Some(request))
    }
}

fn send_job(tx: &Sender<Job>, in_flight: &InFlight, cmd: Command) {
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let mut g = in_flight.lock().unwrap_or_else(|e| e.into_inner());
        g.retain(|(_, w)| w.strong_count() > 0);
        g.push((cmd.request(), Arc::downgrade(&cancel)));
    }
    let _ = tx.send(Job { cmd, cancel });
}

fn cancel_where(in_flight: &InFlight, pick: impl Fn(Option<RequestId>) -> bool) {
    let g = in_flight.lock().unwrap_or_else(|e| e.into_inner());
    for (r, w) in g.iter() {
        if pick(*r) {
            if let Some(f) = w.upgrade() {
                f.store(true, Ordering::SeqCst);
            }
        }
    }
}

impl Engine {
    /// Starts the worker thread. `event_capacity` bounds the event queue (tokens and steps
    /// can flood); when full, streamed tokens wait for the UI to drain.
    pub fn spawn(event_capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let (etx, erx) = mpsc::sync_channel::<Event>(event_capacity);
        let control = Arc::new(TrainControl::default());
        let ctl2 = control.clone();
        let idle = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("fraudlab-engine".into())
            .spawn(move || {
                Worker {
                    models: BTreeMap::new(),
                    adapters: BTreeMap::new(),
                    monitors: BTreeMap::new(),
                    events: etx,
                    cancel: idle,
                    control: ctl2,
                }
                .run(rx)
            })
            .expect("spawn engine thread");
        Self {
            tx,
            events: erx,
            in_flight: Arc::new(Mutex::new(Vec::new())),
            train_control: control,
            thread: Some(thread),
            stopped: AtomicBool::new(false),
        }
    }

    /// A handle for other threads.
    pub fn handle(&self) -> EngineHandle {
        EngineHandle {
            tx: self.tx.clone(),
            in_flight: self.in_flight.clone(),
        }
    }

    pub fn send(&self, c: Command) {
        send_job(&self.tx, &self.in_flight, c)
    }

    /// Cancels every command sent so far (generation, scoring, evaluation, download, monitor
    /// turns) between tokens / batches; commands sent afterwards are not affected. Training
    /// has its own stop.
    pub fn cancel(&self) {
        cancel_where(&self.in_flight, |_| true)
    }

    /// Cancels the commands of one request.
    pub fn cancel_request(&self, request: RequestId) {
        cancel_where(&self.in_flight, |r| r == Some(request))
    }

    pub fn pause_training(&self) {
        self.train_control.pause.store(true, Ordering::SeqCst);
    }
    pub fn resume_training(&self) {
        self.train_control.pause.store(false, Ordering::SeqCst);
    }
    pub fn stop_training(&self) {
        self.train_control.stop.store(true, Ordering::SeqCst);
        self.train_control.pause.store(false, Ordering::SeqCst);
    }

    /// Every event waiting now. Once the worker thread has ended (which a caught panic does
    /// not do), an error and `State(Stopped)` say so, once.
    pub fn drain(&self) -> Vec<Event> {
        let mut v: Vec<Event> = self.events.try_iter().collect();
        if self.thread.as_ref().is_some_and(|t| t.is_finished())
            && !self.stopped.swap(true, Ordering::SeqCst)
        {
            v.extend(self.events.try_iter());
            v.push(Event::Error {
                subject: Subject::Engine,
                message: "the engine thread has stopped; nothing more can run: quit (q) and start fraudlab again".into(),
            });
            v.push(Event::State(EngineState::Stopped));
        }
        v
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.cancel();
        self.train_control.stop.store(true, Ordering::SeqCst);
        let _ = self.tx.send(Job {
            cmd: Command::Shutdown,
            cancel: Arc::new(AtomicBool::new(true)),
        });
        // Drain so a worker blocked on a full event queue can finish.
        if let Some(t) = self.thread.take() {
            while !t.is_finished() {
                while self.events.try_recv().is_ok() {}
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let _ = t.join();
        }
    }
}

struct Worker {
    models: BTreeMap<String, LoadedModel>,
    /// the adapter each model was loaded with
    adapters: BTreeMap<String, PathBuf>,
    monitors: BTreeMap<String, Monitor>,
    events: SyncSender<Event>,
    /// the running command's cancel flag
    cancel: Arc<AtomicBool>,
    control: Arc<TrainControl>,
}

impl Worker {
    fn emit(&self, e: Event) {
        // Blocking send: the UI drains every frame. Drop only when the UI is gone.
        let _ = self.events.send(e);
    }

    /// Streamed text: pieces the full queue cannot take now are coalesced into the next
    /// `Token` event (and the final `Generated` event carries the whole text anyway).
    fn emit_text(&self, pending: &mut String, request: RequestId, key: &str, piece: &str) {
        pending.push_str(piece);
        let e = Event::Token {
            request,
            key: key.to_string(),
            text: std::mem::take(pending),
        };
        if let Err(mpsc::TrySendError::Full(Event::Token { text, .. })) = self.events.try_send(e) {
            *pending = text;
        }
    }

    fn run(mut self, rx: Receiver<Job>) {
        while let Ok(job) = rx.recv() {
            if matches!(job.cmd, Command::Shutdown) {
                break;
            }
            self.cancel = job.cancel;
            let cmd = job.cmd;
            let subject = cmd.subject();
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.handle(cmd)));
            if let Err(payload) = result {
                // a bug: the command fails with it, and the worker goes on with its models
                let what = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                self.emit(Event::Error {
                    subject,
                    message: format!("internal error ({what}); the engine goes on"),
                });
            }
            self.emit(Event::State(EngineState::Idle));
        }
    }

    /// Emits the result of a request, or the error with its subject.
    fn reply<T>(&self, r: anyhow::Result<T>, subject: Subject, ok: impl FnOnce(T) -> Event) {
        match r {
            Ok(v) => self.emit(ok(v)),
            Err(e) => self.emit(Event::Error {
                subject,
                message: format!("{e:#}"),
            }),
        }
    }

    /// Generates from prompt ids with model `key`, streaming its text as `Token` events.
    fn stream_generation(
        &self,
        request: RequestId,
        key: &str,
        ids: &[u32],
        params: &SamplingParams,
    ) -> anyhow::Result<Generation> {
        let lm = self
            .models
            .get(key)
            .ok_or_else(|| anyhow::anyhow!("model is not loaded"))?;
        let mut pending = String::new();
        generate(lm, ids, params, &self.cancel, &mut |piece| {
            self.emit_text(&mut pending, request, key, piece)
        })
    }

    /// Runs `f` on the monitor of model `key` and the model.
    fn with_monitor<T>(
        &mut self,
        key: &str,
        f: impl FnOnce(&mut Monitor, &LoadedModel) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        if !self.models.contains_key(key) {
            anyhow::bail!("model is not loaded");
        }
        self.monitor(key)?;
        let m = self.monitors.get_mut(key).expect("monitor");
        f(m, &self.models[key])
    }

    /// The monitor of model `key` (made from its adapter's metadata on first use).
    fn monitor(&mut self, key: &str) -> anyhow::Result<&mut Monitor> {
        if !self.monitors.contains_key(key) {
            let adapter = self.adapters.get(key);
            let meta =
                crate::model::adapter::AdapterMeta::for_adapter(adapter.map(|p| p.as_path()))?;
            let m = Monitor::new(MonitorConfig::from_meta(&meta))?;
            self.monitors.insert(key.to_string(), m);
        }
        Ok(self.monitors.get_mut(key).expect("inserted"))
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Shutdown => {}
            Command::Load {
                key,
                spec,
                opts,
                adapter,
            } => {
                self.emit(Event::State(EngineState::Loading));
                if crate::test_panic_due(crate::TestPanic::EngineLoad) {
                    panic!(
                        "test panic in the engine thread ({})",
                        crate::TEST_PANIC_ENV
                    );
                }
                let r = (|| -> anyhow::Result<LoadedModel> {
                    let mut lm = model::load(&spec, opts)?;
                    if let Some(a) = &adapter {
                        crate::model::adapter::load_adapter(&mut lm.model, a)?;
                    }
                    Ok(lm)
                })();
                match r {
                    Ok(lm) => {
                        let info = LoadedInfo {
                            key: key.clone(),
                            name: lm.name.clone(),
                            parameters: lm.model.cfg.parameter_count(),
                            layers: lm.model.cfg.num_hidden_layers,
                            quantized: lm.quantized,
                            adapter: adapter.clone(),
                            load_s: lm.load_s,
                        };
                        self.models.insert(key.clone(), lm);
                        self.monitors.remove(&key);
                        match adapter {
                            Some(a) => self.adapters.insert(key, a),
                            None => self.adapters.remove(&key),
                        };
                        self.emit(Event::Loaded(info));
                    }
                    Err(e) => self.emit(Event::Error {
                        subject: Subject::Load {
                            key: key.clone(),
                            spec: spec.clone(),
                        },
                        message: format!("{e:#}"),
                    }),
                }
            }
            Command::Unload { key } => {
                self.models.remove(&key);
                self.monitors.remove(&key);
                self.adapters.remove(&key);
                self.emit(Event::Unloaded { key });
            }
            Command::Generate {
                request,
                keys,
                system,
                prompt,
                raw,
                params,
            } => {
                self.emit(Event::State(EngineState::Generating));
                for key in keys {
                    if self.cancel.load(Ordering::SeqCst) {
                        break;
                    }
                    let r = (|| -> anyhow::Result<Generation> {
                        let lm = self
                            .models
                            .get(&key)
                            .ok_or_else(|| anyhow::anyhow!("model is not loaded"))?;
                        let text = build_prompt(&lm.tokenizer, system.as_deref(), &prompt, raw)?;
                        let ids = lm.tokenizer.encode(&text)?;
                        self.stream_generation(request, &key, &ids, &params)
                    })();
                    let subject = Subject::Generate {
                        request,
                        key: key.clone(),
                    };
                    self.reply(r, subject, |generation| Event::Generated {
                        request,
                        key,
                        generation,
                    });
                }
            }
            Command::Chat {
                request,
                key,
                messages,
                params,
            } => {
                self.emit(Event::State(EngineState::Generating));
                let subject = Subject::Generate {
                    request,
                    key: key.clone(),
                };
                let r = (|| -> anyhow::Result<Generation> {
                    if self.cancel.load(Ordering::SeqCst) {
                        anyhow::bail!("cancelled");
                    }
                    let lm = self
                        .models
                        .get(&key)
                        .ok_or_else(|| anyhow::anyhow!("model is not loaded"))?;
                    let text = lm.tokenizer.apply_chat_template(&messages, true)?;
                    let ids = lm.tokenizer.encode(&text)?;
                    self.stream_generation(request, &key, &ids, &params)
                })();
                self.reply(r, subject, |generation| Event::Generated {
                    request,
                    key,
                    generation,
                });
            }
            Command::Score {
                request,
                key,
                samples,
            } => {
                self.emit(Event::State(EngineState::Scoring));
                let Some(lm) = self.models.get(&key) else {
                    self.emit(Event::Error {
                        subject: Subject::Score {
                            request,
                            key: key.clone(),
                        },
                        message: "model is not loaded".into(),
                    });
                    return;
                };
                let r = super::eval::score_samples(lm, &samples, 8, &self.cancel, &mut |_, _| {});
                match r {
                    Ok(p) => {
                        let probabilities = samples.iter().map(|s| s.id.clone()).zip(p).collect();
                        self.emit(Event::Scored {
                            request,
                            key,
                            probabilities,
                        })
                    }
                    Err(e) => self.emit(Event::Error {
                        subject: Subject::Score {
                            request,
                            key: key.clone(),
                        },
                        message: format!("{e:#}"),
                    }),
                }
            }
            Command::Train(cfg) => {
                self.emit(Event::State(EngineState::Training));
                self.control.stop.store(false, Ordering::SeqCst);
                self.control.pause.store(false, Ordering::SeqCst);
                let events = self.events.clone();
                let r = train(&cfg, &self.control, &mut |e| {
                    let _ = events.send(Event::Train(e));
                });
                if let Err(e) = r {
                    self.emit(Event::Error {
                        subject: Subject::Train,
                        message: format!("{e:#}"),
                    });
                }
            }
            Command::Tune { base, budget_s } => {
                use super::train::tune::{tune, Grid, TuneEvent};
                self.emit(Event::State(EngineState::Training));
                self.control.stop.store(false, Ordering::SeqCst);
                self.control.pause.store(false, Ordering::SeqCst);
                let events = self.events.clone();
                let send = |e: TrainEvent| {
                    let _ = events.send(Event::Train(e));
                };
                let r =
                    tune(
                        &base,
                        &Grid::default(),
                        budget_s,
                        3,
                        &self.control,
                        &mut |e| match e {
                            TuneEvent::Train(e) => send(e),
                            TuneEvent::TrialStarted {
                                name,
                                rung,
                                index,
                                of,
                                budget_s,
                            } => send(TrainEvent::Log(format!(
                                "tune trial {index}/{of} (rung {rung}): {name} for {}",
                                crate::fmt::human_secs(budget_s)
                            ))),
                            TuneEvent::TrialFinished(t) => send(TrainEvent::Log(format!(
                                "tune trial {}: validation ROC-AUC {} F1 {}",
                                t.name,
                                t.val_auc.map(|a| format!("{a:.3}")).unwrap_or("–".into()),
                                t.val_f1.map(|a| format!("{a:.3}")).unwrap_or("–".into())
                            ))),
                            TuneEvent::Finished(r) => send(TrainEvent::Log(format!(
                            "tune: best recipe {} (validation ROC-AUC {}); its adapter is in {}",
                            r.best.name,
                            r.best.val_auc.map(|a| format!("{a:.3}")).unwrap_or("–".into()),
                            r.adapter.display()
                        ))),
                        },
                    );
                if let Err(e) = r {
                    self.emit(Event::Error {
                        subject: Subject::Train,
                        message: format!("{e:#}"),
                    });
                }
            }
            Command::Download { id } => {
                self.emit(Event::State(EngineState::Downloading));
                let events = self.events.clone();
                let r = crate::model::download::download(&id, None, &self.cancel, &mut |p| {
                    let _ = events.try_send(Event::DownloadProgress {
                        id: id.clone(),
                        progress: p.clone(),
                    });
                });
                match r {
                    Ok(d) => self.emit(Event::Downloaded { id, path: d.path }),
                    Err(e) => self.emit(Event::Error {
                        subject: Subject::Download { id: id.clone() },
                        message: format!("{e:#}"),
                    }),
                }
            }
            Command::MonitorConfigure { key, cfg } => match Monitor::new(cfg) {
                Ok(m) => {
                    self.monitors.insert(key, m);
                }
                Err(e) => self.emit(Event::Error {
                    subject: Subject::Monitor {
                        request: 0,
                        key,
                        conversation: String::new(),
                    },
                    message: format!("{e:#}"),
                }),
            },
            Command::MonitorEnd { key, conversation } => {
                if let Some(m) = self.monitors.get_mut(&key) {
                    m.end(&conversation);
                }
            }
            Command::MonitorTurn {
                request,
                key,
                conversation,
                speaker,
                text,
            } => {
                self.emit(Event::State(EngineState::Monitoring));
                let subject = Subject::Monitor {
                    request,
                    key: key.clone(),
                    conversation: conversation.clone(),
                };
                let r = if self.cancel.load(Ordering::SeqCst) {
                    Err(anyhow::anyhow!("cancelled"))
                } else {
                    self.with_monitor(&key, |m, lm| m.turn(lm, &conversation, &speaker, &text))
                };
                self.reply(r, subject, |result| Event::MonitorTurn {
                    request,
                    key,
                    result,
                });
            }
            Command::MonitorExplain {
                request,
                key,
                conversation,
                max_tokens,
            } => {
                self.emit(Event::State(EngineState::Monitoring));
                let subject = Subject::Monitor {
                    request,
                    key: key.clone(),
                    conversation: conversation.clone(),
                };
                let cancel = self.cancel.clone();
                let r = self.with_monitor(&key, |m, lm| {
                    m.explain(lm, &conversation, max_tokens, &cancel)
                });
                self.reply(r, subject, |explanation| Event::Explained {
                    request,
                    key,
                    explanation,
                });
            }
            Command::Evaluate(cfg) => {
                self.emit(Event::State(EngineState::Evaluating));
                let events = self.events.clone();
                let r = evaluate(&cfg, &self.cancel, &mut |model, done, total| {
                    let _ = events.try_send(Event::EvalProgress {
                        model: model.to_string(),
                        done,
                        total,
                    });
                });
                match r {
                    Ok(res) => self.emit(Event::EvalDone(res)),
                    Err(e) => self.emit(Event::Error {
                        subject: Subject::Eval,
                        message: format!("{e:#}"),
                    }),
                }
            }
        }
    }
}
