//! The engine worker: one thread that owns every loaded model. The UI sends `Command`s and
//! drains `Event`s each frame; it never touches a tensor. Cancel, pause and stop act through
//! shared flags, so they take effect between tokens, steps or batches even while the worker
//! is busy.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::eval::{evaluate, EvalConfig, EvalResult};
use super::generate::{build_prompt, generate, Generation, SamplingParams};
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
    /// Fraud probabilities of samples under a loaded model (score mode).
    Score {
        request: u64,
        key: String,
        samples: Vec<crate::data::Sample>,
    },
    Train(Box<TrainConfig>),
    Evaluate(Box<EvalConfig>),
    /// Download a model by hub id into the Hugging Face cache.
    Download {
        id: String,
    },
    Shutdown,
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
    /// `context` says what failed (e.g. "load Qwen/Qwen2-0.5B"), `message` why.
    Error {
        context: String,
        message: String,
    },
}

/// The UI's side of the engine.
pub struct Engine {
    tx: Sender<Command>,
    pub events: Receiver<Event>,
    cancel: Arc<AtomicBool>,
    pub train_control: Arc<TrainControl>,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    /// Starts the worker thread. `event_capacity` bounds the event queue (tokens and steps
    /// can flood); when full, streamed tokens wait for the UI to drain.
    pub fn spawn(event_capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel::<Command>();
        let (etx, erx) = mpsc::sync_channel::<Event>(event_capacity);
        let cancel = Arc::new(AtomicBool::new(false));
        let control = Arc::new(TrainControl::default());
        let (c2, ctl2) = (cancel.clone(), control.clone());
        let thread = std::thread::Builder::new()
            .name("fraudlab-engine".into())
            .spawn(move || {
                Worker {
                    models: BTreeMap::new(),
                    events: etx,
                    cancel: c2,
                    control: ctl2,
                }
                .run(rx)
            })
            .expect("spawn engine thread");
        Self {
            tx,
            events: erx,
            cancel,
            train_control: control,
            thread: Some(thread),
        }
    }

    pub fn send(&self, c: Command) {
        // A new request clears an old cancel.
        self.cancel.store(false, Ordering::SeqCst);
        let _ = self.tx.send(c);
    }

    /// Stops the current generation, scoring or evaluation between tokens / batches.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
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

    /// Every event waiting now.
    pub fn drain(&self) -> Vec<Event> {
        self.events.try_iter().collect()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
        self.train_control.stop.store(true, Ordering::SeqCst);
        let _ = self.tx.send(Command::Shutdown);
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
    events: SyncSender<Event>,
    cancel: Arc<AtomicBool>,
    control: Arc<TrainControl>,
}

impl Worker {
    fn emit(&self, e: Event) {
        // Blocking send: the UI drains every frame. Drop only when the UI is gone.
        let _ = self.events.send(e);
    }

    /// For high-rate events: skipped when the queue is full rather than stalling work.
    fn emit_lossy(&self, e: Event) {
        if let Err(TrySendError::Full(e)) = self.events.try_send(e) {
            let _ = self.events.send(e);
        }
    }

    fn run(mut self, rx: Receiver<Command>) {
        while let Ok(cmd) = rx.recv() {
            if matches!(cmd, Command::Shutdown) {
                break;
            }
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.handle(cmd)));
            if result.is_err() {
                self.emit(Event::Error {
                    context: "engine".into(),
                    message: "internal error (panic) in the engine; see stderr".into(),
                });
            }
            self.emit(Event::State(EngineState::Idle));
        }
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
                            adapter,
                            load_s: lm.load_s,
                        };
                        self.models.insert(key, lm);
                        self.emit(Event::Loaded(info));
                    }
                    Err(e) => self.emit(Event::Error {
                        context: format!("load {spec}"),
                        message: format!("{e:#}"),
                    }),
                }
            }
            Command::Unload { key } => {
                self.models.remove(&key);
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
                    let Some(lm) = self.models.get(&key) else {
                        self.emit(Event::Error {
                            context: format!("generate with {key}"),
                            message: "model is not loaded".into(),
                        });
                        continue;
                    };
                    let r = (|| -> anyhow::Result<Generation> {
                        let text = build_prompt(&lm.tokenizer, system.as_deref(), &prompt, raw)?;
                        let ids = lm.tokenizer.encode(&text)?;
                        generate(lm, &ids, &params, &self.cancel, &mut |piece| {
                            self.emit_lossy(Event::Token {
                                request,
                                key: key.clone(),
                                text: piece.to_string(),
                            })
                        })
                    })();
                    match r {
                        Ok(generation) => self.emit(Event::Generated {
                            request,
                            key: key.clone(),
                            generation,
                        }),
                        Err(e) => self.emit(Event::Error {
                            context: format!("generate with {key}"),
                            message: format!("{e:#}"),
                        }),
                    }
                }
            }
            Command::Score {
                request,
                key,
                samples,
            } => {
                self.emit(Event::State(EngineState::Scoring));
                let Some(lm) = self.models.get(&key) else {
                    self.emit(Event::Error {
                        context: format!("score with {key}"),
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
                        context: format!("score with {key}"),
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
                        context: "training".into(),
                        message: format!("{e:#}"),
                    });
                }
            }
            Command::Download { id } => {
                self.emit(Event::State(EngineState::Downloading));
                let events = self.events.clone();
                let r = crate::model::download::download(&id, &self.cancel, &mut |p| {
                    let _ = events.try_send(Event::DownloadProgress {
                        id: id.clone(),
                        progress: p.clone(),
                    });
                });
                match r {
                    Ok(path) => self.emit(Event::Downloaded { id, path }),
                    Err(e) => self.emit(Event::Error {
                        context: format!("download {id}"),
                        message: format!("{e:#}"),
                    }),
                }
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
                        context: "evaluation".into(),
                        message: format!("{e:#}"),
                    }),
                }
            }
        }
    }
}
