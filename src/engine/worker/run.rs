//! The worker thread: its loop, and what each command does.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;

use super::background::{Background, TrainJob};
use super::{BackgroundJob, Command, EngineState, Event, Job, LoadedInfo, RequestId, Subject};
use crate::engine::generate::{build_prompt, generate, Generation, SamplingParams};
use crate::engine::monitor::{Monitor, MonitorConfig};
use crate::engine::train::TrainControl;
use crate::model::{self, LoadOptions, LoadedModel};

pub(super) struct Worker {
    pub(super) models: BTreeMap<String, LoadedModel>,
    /// the adapter each model was loaded with
    pub(super) adapters: BTreeMap<String, PathBuf>,
    /// the spec and options each model was loaded with
    pub(super) sources: BTreeMap<String, (String, LoadOptions)>,
    pub(super) monitors: BTreeMap<String, Monitor>,
    pub(super) events: SyncSender<Event>,
    /// the running command's cancel flag
    pub(super) cancel: Arc<AtomicBool>,
    pub(super) control: Arc<TrainControl>,
    pub(super) training: Background,
    pub(super) evaluation: Background,
}

impl Worker {
    pub(super) fn new(events: SyncSender<Event>, control: Arc<TrainControl>) -> Self {
        Self {
            models: BTreeMap::new(),
            adapters: BTreeMap::new(),
            sources: BTreeMap::new(),
            monitors: BTreeMap::new(),
            events,
            cancel: Arc::new(AtomicBool::new(false)),
            control,
            training: Background::new(BackgroundJob::Train),
            evaluation: Background::new(BackgroundJob::Eval),
        }
    }

    pub(super) fn emit(&self, e: Event) {
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

    pub(super) fn run(mut self, rx: Receiver<Job>) {
        while let Ok(job) = rx.recv() {
            if matches!(job.cmd, Command::Shutdown) {
                break;
            }
            let Job {
                cmd,
                cancel,
                ticket,
            } = job;
            self.cancel = cancel;
            let subject = cmd.subject();
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.handle(cmd)));
            if let Err(payload) = result {
                // a bug: the command fails with it, and the worker goes on with its models
                let what = panic_message(payload.as_ref());
                self.emit(Event::Error {
                    subject,
                    message: format!("internal error ({what}); the engine goes on"),
                });
            }
            // the background runs may take the cores again
            drop(ticket);
            self.emit(Event::State(EngineState::Idle));
        }
        // a stopped run writes its checkpoint and adapter before the engine ends
        self.training.join();
        self.evaluation.join();
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
                        self.sources.insert(key.clone(), (spec.clone(), opts));
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
                // a background run sharing its weights keeps them until it ends
                self.models.remove(&key);
                self.sources.remove(&key);
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
                let r = crate::engine::eval::score_samples(
                    lm,
                    &samples,
                    8,
                    &self.cancel,
                    &mut |_, _| {},
                );
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
            Command::Train(cfg) => self.start_training(TrainJob::Run(cfg)),
            Command::Tune { base, budget_s } => {
                self.start_training(TrainJob::Tune { base, budget_s })
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
            Command::Evaluate(cfg) => self.start_evaluation(*cfg),
        }
    }
}

/// What a caught panic said.
pub(super) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
