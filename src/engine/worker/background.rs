//! Background runs: a training run (or a recipe search) and an evaluation, each on a thread
//! of its own beside the worker, at most one of each; and the loaded weights they share.
//!
//! A run is handed the worker's loaded model of the same spec when that model holds what
//! the run would load itself (training: f32 dense weights; evaluation: the options
//! evaluation loads with). It gets a clone: new handles on the same tensor storage, with
//! any adapter the worker's model carries taken off, so attaching LoRA factors or another
//! adapter adds those factors only and the worker's model is left as it was.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::run::{panic_message, Worker};
use super::{BackgroundJob, Event, Refusal, Subject};
use crate::engine::eval::{evaluate_with, target_load_options, with_adapter, EvalConfig};
use crate::engine::train::tune::{tune_loaded, Grid, TuneEvent};
use crate::engine::train::{train_loaded, TrainConfig, TrainEvent};
use crate::model::{self, LoadOptions, LoadedModel};

/// One background slot: its thread and whether a run is going in it.
pub(super) struct Background {
    job: BackgroundJob,
    /// cleared by the run's thread before it reports its end, so a command sent on that
    /// report is never refused
    running: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    pub(super) fn new(job: BackgroundJob) -> Self {
        Self {
            job,
            running: Arc::new(AtomicBool::new(false)),
            thread: None,
        }
    }

    pub(super) fn busy(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// Runs `work` on a thread of its own: `Background { running: true }` now, then what
    /// `work` reports, its error (or panic) under `subject`, and `Background { running:
    /// false }` last.
    fn start(
        &mut self,
        events: SyncSender<Event>,
        subject: Subject,
        work: impl FnOnce(&SyncSender<Event>) -> anyhow::Result<()> + Send + 'static,
    ) {
        self.join();
        let job = self.job;
        self.running.store(true, Ordering::SeqCst);
        let _ = events.send(Event::Background { job, running: true });
        let running = self.running.clone();
        let ev = events.clone();
        let subj = subject.clone();
        let spawned = std::thread::Builder::new()
            .name(match job {
                BackgroundJob::Train => "fraudlab-train".into(),
                BackgroundJob::Eval => "fraudlab-eval".into(),
            })
            .spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&ev)));
                let message = match r {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(format!("{e:#}")),
                    Err(p) => Some(format!(
                        "internal error ({}); the engine goes on",
                        panic_message(p.as_ref())
                    )),
                };
                if let Some(message) = message {
                    let _ = ev.send(Event::Error {
                        subject: subj,
                        message,
                    });
                }
                running.store(false, Ordering::SeqCst);
                let _ = ev.send(Event::Background {
                    job,
                    running: false,
                });
            });
        match spawned {
            Ok(t) => self.thread = Some(t),
            Err(e) => {
                self.running.store(false, Ordering::SeqCst);
                let _ = events.send(Event::Error {
                    subject,
                    message: format!("cannot start a thread: {e}"),
                });
                let _ = events.send(Event::Background {
                    job,
                    running: false,
                });
            }
        }
    }

    /// Waits for the run's thread to end (at once when none is going).
    pub(super) fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the training slot is asked to run.
pub(super) enum TrainJob {
    Run(Box<TrainConfig>),
    /// a recipe search over the default grid within `budget_s`
    Tune {
        base: Box<TrainConfig>,
        budget_s: f64,
    },
}

/// The base weights of a loaded model, shared: a clone (new handles on the same storage)
/// with no adapter.
pub fn shared_base(lm: &LoadedModel) -> LoadedModel {
    let mut base = lm.clone();
    for (_, lin) in base.model.linears_mut() {
        lin.lora = None;
    }
    base
}

impl Worker {
    /// Keys of the loaded models of `spec`: loaded with the same words, or from the same
    /// files.
    fn loaded_of(&self, spec: &str) -> Vec<String> {
        let files = crate::model::loader::resolve(spec)
            .ok()
            .and_then(|l| l.path().canonicalize().ok());
        self.sources
            .iter()
            .filter(|(key, (s, _))| {
                s == spec
                    || files.as_ref().is_some_and(|f| {
                        self.models.get(*key).is_some_and(|lm| {
                            lm.location.path().canonicalize().ok().as_ref() == Some(f)
                        })
                    })
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// A loaded model of `spec` that was loaded with `opts`, as shared base weights.
    fn shared_as(&self, spec: &str, opts: LoadOptions) -> Option<(String, LoadedModel)> {
        self.loaded_of(spec).into_iter().find_map(|k| {
            let lm = self.models.get(&k)?;
            (self.sources.get(&k)?.1 == opts).then(|| (k, shared_base(lm)))
        })
    }

    /// The base a training run on `spec` takes from the loaded models, and what to tell
    /// the user about it: the shared weights, or why the run loads its own copy.
    fn training_base(
        &self,
        spec: &str,
        full: bool,
        opts: LoadOptions,
    ) -> (Option<LoadedModel>, Option<String>) {
        if let Some((key, lm)) = self.shared_as(spec, opts) {
            let note = format!(
                "training on the loaded model {} (`{key}`): its weights are shared, not loaded again{}",
                lm.name,
                if full {
                    " (full fine-tuning trains a copy of them)"
                } else {
                    ""
                }
            );
            return (Some(lm), Some(note));
        }
        let note = self.loaded_of(spec).first().and_then(|k| {
            let lm = self.models.get(k)?;
            let what = if lm.quantized {
                "quantized (GGUF blocks)".to_string()
            } else {
                format!("in {:?}", lm.model.dtype).to_lowercase()
            };
            let want = format!("{:?}", opts.dtype).to_lowercase();
            Some(format!(
                "the loaded model {} (`{k}`) is {what}; the run trains on {want} dense weights, so it loads its own {want} copy",
                lm.name
            ))
        });
        (None, note)
    }

    /// Starts a training run or a recipe search on the training slot; refused while one
    /// is going.
    pub(super) fn start_training(&mut self, job: TrainJob) {
        if self.training.busy() {
            self.emit(Event::Refused {
                subject: Subject::Train,
                reason: Refusal::TrainingRunning,
            });
            return;
        }
        self.control.stop.store(false, Ordering::SeqCst);
        self.control.pause.store(false, Ordering::SeqCst);
        let cfg = match &job {
            TrainJob::Run(c) | TrainJob::Tune { base: c, .. } => c,
        };
        let opts = match cfg.load_options() {
            Ok(o) => o,
            Err(e) => {
                self.emit(Event::Error {
                    subject: Subject::Train,
                    message: format!("{e:#}"),
                });
                return;
            }
        };
        let (base, note) = self.training_base(&cfg.model, cfg.full, opts);
        let control = self.control.clone();
        let events = self.events.clone();
        self.training.start(events, Subject::Train, move |events| {
            let send = |e: TrainEvent| {
                let _ = events.send(Event::Train(e));
            };
            if let Some(n) = note {
                send(TrainEvent::Log(n));
            }
            let cfg = match &job {
                TrainJob::Run(c) | TrainJob::Tune { base: c, .. } => c,
            };
            let lm = match base {
                Some(lm) => lm,
                None => model::load_for_training(&cfg.model, opts)?,
            };
            match &job {
                TrainJob::Run(cfg) => {
                    train_loaded(lm, cfg, &control, &mut |e| send(e))?;
                }
                TrainJob::Tune { base, budget_s } => {
                    tune_loaded(
                        lm,
                        base,
                        &Grid::default(),
                        *budget_s,
                        3,
                        &control,
                        &mut |e| match e {
                            TuneEvent::Train(e) => send(e),
                            e => send(TrainEvent::Log(tune_line(&e))),
                        },
                    )?;
                }
            }
            Ok(())
        });
    }

    /// Starts an evaluation on the evaluation slot; refused while one is going. It waits
    /// at the priority gate between batches, and stops at its cancel flag.
    pub(super) fn start_evaluation(&mut self, cfg: EvalConfig) {
        if self.evaluation.busy() {
            self.emit(Event::Refused {
                subject: Subject::Eval,
                reason: Refusal::EvaluationRunning,
            });
            return;
        }
        let opts = match target_load_options(&cfg) {
            Ok(o) => o,
            Err(e) => {
                self.emit(Event::Error {
                    subject: Subject::Eval,
                    message: format!("{e:#}"),
                });
                return;
            }
        };
        let mut bases: BTreeMap<String, LoadedModel> = BTreeMap::new();
        for t in &cfg.targets {
            if !bases.contains_key(&t.model) {
                if let Some((_, lm)) = self.shared_as(&t.model, opts) {
                    bases.insert(t.model.clone(), lm);
                }
            }
        }
        let cancel = self.cancel.clone();
        let gate = self.control.gate.clone();
        let events = self.events.clone();
        self.evaluation.start(events, Subject::Eval, move |events| {
            let results = evaluate_with(
                &cfg,
                &cancel,
                &mut |model, done, total| {
                    let _ = events.try_send(Event::EvalProgress {
                        model: model.to_string(),
                        done,
                        total,
                    });
                    gate.wait_clear(&cancel);
                },
                &mut |t| {
                    let lm = match bases.get(&t.model) {
                        Some(b) => b.clone(),
                        None => model::load(&t.model, opts)?,
                    };
                    with_adapter(lm, t)
                },
            )?;
            let _ = events.send(Event::EvalDone(results));
            Ok(())
        });
    }
}

/// A recipe search's progress as a line of the run's log.
fn tune_line(e: &TuneEvent) -> String {
    let f3 = |x: Option<f64>| x.map(|a| format!("{a:.3}")).unwrap_or("–".into());
    match e {
        TuneEvent::Train(_) => String::new(),
        TuneEvent::TrialStarted {
            name,
            rung,
            index,
            of,
            budget_s,
        } => format!(
            "tune trial {index}/{of} (rung {rung}): {name} for {}",
            crate::fmt::human_secs(*budget_s)
        ),
        TuneEvent::TrialFinished(t) => format!(
            "tune trial {}: validation ROC-AUC {} F1 {}",
            t.name,
            f3(t.val_auc),
            f3(t.val_f1)
        ),
        TuneEvent::Finished(r) => format!(
            "tune: best recipe {} (validation ROC-AUC {}); its adapter is in {}",
            r.best.name,
            f3(r.best.val_auc),
            r.adapter.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::adapter::{attach_lora, LoraSpec};
    use crate::model::qwen2::LinearWeight;
    use crate::model::Qwen2;
    use candle_core::{CpuStorage, Storage, Tensor};

    /// Where a tensor's first element lives.
    fn data_ptr(t: &Tensor) -> usize {
        let (s, l) = t.storage_and_layout();
        match &*s {
            Storage::Cpu(CpuStorage::F32(v)) => v[l.start_offset()..].as_ptr() as usize,
            other => panic!("not f32 on the CPU: {:?}", other.dtype()),
        }
    }

    /// Every base weight of a model (embedding, norms, dense linear weights), by address.
    fn weight_ptrs(m: &mut Qwen2) -> Vec<usize> {
        let mut v = vec![data_ptr(&m.embed_tokens), data_ptr(&m.norm)];
        for l in &m.layers {
            v.push(data_ptr(&l.input_layernorm));
            v.push(data_ptr(&l.post_attention_layernorm));
        }
        for (name, lin) in m.linears_mut() {
            match &lin.weight {
                LinearWeight::Dense(w) => v.push(data_ptr(w)),
                LinearWeight::Packed(p) => v.push(std::sync::Arc::as_ptr(p) as usize),
                LinearWeight::Quant(_) => panic!("{name} is quantized"),
            }
        }
        v
    }

    #[test]
    fn a_shared_base_points_to_the_loaded_weights_and_lora_adds_only_factors() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("tiny");
        crate::model::tiny::write_tiny_model(&dir, &Default::default()).unwrap();
        let mut loaded = model::load(dir.to_str().unwrap(), LoadOptions::default()).unwrap();
        // the worker's model carries an adapter: the shared base comes without it
        attach_lora(&mut loaded.model, &LoraSpec::default(), 1).unwrap();
        let engine_ptrs = weight_ptrs(&mut loaded.model);
        let mut base = shared_base(&loaded);
        assert!(base
            .model
            .linears_mut()
            .iter()
            .all(|(_, l)| l.lora.is_none()));
        // a training run attaches its own factors to the shared base
        let vars = attach_lora(&mut base.model, &LoraSpec::default(), 7).unwrap();
        assert!(!vars.is_empty());
        let run_ptrs = weight_ptrs(&mut base.model);
        assert_eq!(engine_ptrs.len(), run_ptrs.len());
        assert_eq!(engine_ptrs, run_ptrs, "no base weight was copied");
        // the factors are new storage, and the worker's model keeps its own adapter
        for v in &vars {
            assert!(!engine_ptrs.contains(&data_ptr(v.a.as_tensor())));
        }
        let (_, first) = loaded.model.linears_mut().into_iter().next().unwrap();
        let (_, run_first) = base.model.linears_mut().into_iter().next().unwrap();
        assert_ne!(
            data_ptr(&first.lora.as_ref().unwrap().a),
            data_ptr(&run_first.lora.as_ref().unwrap().a)
        );
    }
}
