//! Supervised fine-tuning on the engine: LoRA (PEFT layout) or full fine-tuning, AdamW with
//! warmup + constant / linear / cosine schedules, gradient accumulation and clipping, a
//! validation split with best-checkpoint keeping and early stopping, atomic checkpoints that a
//! killed run resumes from exactly, and live metrics (events + `metrics.jsonl`).
//!
//! Rooms: `config` (what a run is told and reports), `data` (its examples), `batch`
//! (examples, packing, losses), `optim` (what is trained, AdamW, schedule), `checkpoint`
//! (save, resume, prune), `memory` (figures and the estimate), and here the [`Trainer`] that
//! drives the loop: [`Trainer::start`] sets a run up (or resumes it), [`Trainer::run`] takes
//! optimizer steps until the end, a stop or early stopping, and writes the final adapter.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor, Var, D};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::data::{self, Sample, SampleBody, DEFAULT_SYSTEM};
use crate::model::adapter::{attach_lora, save_adapter, LoraSpec, LoraVars};
use crate::model::qwen2::{LinearWeight, Mode};
use crate::model::safetensors_io::{save_atomic, SafetensorsFile};
use crate::model::{self, LoadOptions, LoadedModel, Qwen2, TextTokenizer};

mod batch;
mod checkpoint;
mod config;
mod load;
mod memory;
mod optim;

pub use batch::{epoch_order, eval_loss, make_example, mean_loss, Example};
pub use checkpoint::latest_checkpoint;
pub use config::{
    f32_name, Calibration, Schedule, StepMetrics, TrainConfig, TrainControl, TrainEvent,
    TrainSummary,
};
pub use load::load_examples;
pub use memory::{available_mib, estimate_mib, rss_mib};
pub use optim::lr_at;
#[allow(unused_imports)]
use {batch::*, checkpoint::*, config::*, memory::*, optim::*};

/// Runs (or resumes) a training run to the end, a stop, or early stopping.
pub fn train(
    tc: &TrainConfig,
    control: &TrainControl,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<TrainSummary> {
    let lm = model::load(
        &tc.model,
        LoadOptions {
            dtype: model::loader::parse_dtype(&tc.dtype)?,
            ..Default::default()
        },
    )?;
    train_loaded(lm, tc, control, on_event)
}

/// [`train`] on a model already loaded.
pub fn train_loaded(
    lm: LoadedModel,
    tc: &TrainConfig,
    control: &TrainControl,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<TrainSummary> {
    Trainer::start(lm, tc, on_event)?.run(control, on_event)
}

/// Figures of the optimizer step being gathered (over its micro-batches).
#[derive(Default)]
struct Window {
    loss: f64,
    tokens: usize,
    samples: usize,
    /// targets of all its micro-batches: each micro-batch's loss is divided by them
    targets: usize,
    batches: Vec<Batch>,
    grads: Option<Vec<Tensor>>,
}

/// What the loop does after an optimizer step.
enum Next {
    Continue,
    NewEpoch,
    End(&'static str),
}

/// A training run in progress.
pub struct Trainer<'a> {
    tc: &'a TrainConfig,
    model: Qwen2,
    tok: TextTokenizer,
    /// labelled fraud-format validation samples, for the decision threshold at the end
    val_samples: Vec<Sample>,
    tr: Trainable,
    opt: AdamW,
    st: TrainerState,
    train_ex: Vec<Example>,
    val_ex: Vec<Example>,
    run_dir: PathBuf,
    metrics_path: PathBuf,
    micro_per_epoch: usize,
    total: usize,
    warmup: usize,
    start_step: usize,
    t_start: Instant,
    step_t: Instant,
    window: Window,
}

impl<'a> Trainer<'a> {
    /// Checks the config, loads the examples, makes the trainable tensors, refuses a run
    /// that will not fit in memory, resumes from the newest checkpoint when asked, writes
    /// `config.json` and reports `Started`.
    pub fn start(
        lm: LoadedModel,
        tc: &'a TrainConfig,
        on_event: &mut dyn FnMut(TrainEvent),
    ) -> Result<Self> {
        let t_start = Instant::now();
        if tc.batch == 0 || tc.grad_accum == 0 || tc.max_len < 8 {
            bail!("batch and grad-accum must be positive and max-len at least 8");
        }
        if lm.quantized {
            bail!("training needs the dense model (load without --quantized)");
        }
        let run_dir = tc.out_dir.clone();
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("{}: cannot create run folder", run_dir.display()))?;
        let LoadedModel {
            mut model,
            tokenizer: tok,
            ..
        } = lm;
        let (train_s, val_s, summary) = load::load_split(tc)?;
        let (train_ex, val_ex) = load::examples_of(tc, &tok, &train_s, &val_s)?;
        drop(train_s);
        let val_samples: Vec<Sample> = val_s
            .into_iter()
            .filter(|s| s.label.is_some() && matches!(s.body, SampleBody::Fraud { .. }))
            .map(|s| {
                if tc.anonymize_speakers {
                    s.anonymized()
                } else {
                    s
                }
            })
            .collect();
        on_event(TrainEvent::Log(summary));
        let tr = if tc.full {
            make_all_trainable(&mut model)?
        } else {
            lora_trainable(attach_lora(&mut model, &tc.lora, tc.seed)?)
        };
        let trainable: u64 = tr.vars.iter().map(|v| v.elem_count() as u64).sum();
        let est = estimate_mib(&model.cfg, tc, trainable);
        if let Some(avail) = available_mib() {
            if est > avail {
                bail!(
                    "this run needs about {:.1} GiB but {:.1} GiB is available: {}",
                    est / 1024.0,
                    avail / 1024.0,
                    if tc.full {
                        "use LoRA instead of full fine-tuning, or a smaller --batch / --max-len"
                    } else {
                        "use a smaller --batch or --max-len"
                    }
                );
            }
        }
        let micro_per_epoch = train_ex.len().div_ceil(tc.batch);
        let steps_per_epoch = micro_per_epoch.div_ceil(tc.grad_accum);
        let total = tc.max_steps.unwrap_or(steps_per_epoch * tc.epochs).max(1);
        let warmup = tc
            .warmup_steps
            .unwrap_or((tc.warmup_ratio * total as f64).ceil() as usize);
        let mut opt = AdamW::new(&tr.vars)?;
        let mut st = TrainerState {
            step: 0,
            epoch: 0,
            micro: 0,
            best_eval_loss: None,
            best_step: None,
            evals_without_improvement: 0,
            adam_t: 0,
            last_loss: None,
        };
        let metrics_path = run_dir.join("metrics.jsonl");
        if tc.resume {
            if let Some(s) = resume(tc, &run_dir, &metrics_path, &tr, &mut opt, on_event)? {
                st = s;
            }
        } else if metrics_path.exists() {
            std::fs::remove_file(&metrics_path)?;
        }
        data::write_atomic(
            &run_dir.join("config.json"),
            serde_json::to_string_pretty(tc)?.as_bytes(),
        )?;
        on_event(TrainEvent::Started {
            run_dir: run_dir.clone(),
            total_steps: total,
            start_step: st.step,
            train_samples: train_ex.len(),
            val_samples: val_ex.len(),
            estimate_mib: est,
        });
        Ok(Self {
            tc,
            model,
            tok,
            val_samples,
            tr,
            opt,
            start_step: st.step,
            st,
            train_ex,
            val_ex,
            run_dir,
            metrics_path,
            micro_per_epoch,
            total,
            warmup,
            t_start,
            step_t: Instant::now(),
            window: Window::default(),
        })
    }

    /// Optimizer steps until the end, a stop or early stopping; then the final output.
    pub fn run(
        mut self,
        control: &TrainControl,
        on_event: &mut dyn FnMut(TrainEvent),
    ) -> Result<TrainSummary> {
        let mut end = "completed";
        'outer: while self.st.step < self.total {
            let order = if self.tc.shuffle {
                epoch_order(self.train_ex.len(), self.tc.seed, self.st.epoch)
            } else {
                (0..self.train_ex.len()).collect()
            };
            while self.st.micro < self.micro_per_epoch && self.st.step < self.total {
                if !self.micro_step(&order)? {
                    continue;
                }
                let m = self.optimizer_step()?;
                match self.after_step(m, control, on_event)? {
                    Next::Continue => {}
                    Next::NewEpoch => continue 'outer,
                    Next::End(why) => {
                        end = why;
                        break 'outer;
                    }
                }
            }
        }
        self.finish(end, on_event)
    }

    /// One micro-batch: forward, backward, gradients accumulated. True when it was the last
    /// of its optimizer step.
    fn micro_step(&mut self, order: &[usize]) -> Result<bool> {
        let tc = self.tc;
        let w = &mut self.window;
        // gather the micro-batches of one optimizer step first, to normalise by their targets
        if w.batches.is_empty() {
            let upto = (self.st.micro + tc.grad_accum).min(self.micro_per_epoch);
            for m in self.st.micro..upto {
                let idx = &order[m * tc.batch..((m + 1) * tc.batch).min(order.len())];
                let refs: Vec<&Example> = idx.iter().map(|&i| &self.train_ex[i]).collect();
                w.batches.push(make_batch(&refs)?);
            }
            w.targets = w
                .batches
                .iter()
                .map(|b| b.targets.len())
                .sum::<usize>()
                .max(1);
        }
        let batch = w.batches.remove(0);
        let seed = tc.seed.wrapping_mul(0x2545F4914F6CDD1D)
            ^ ((self.st.epoch * self.micro_per_epoch + self.st.micro) as u64)
                .wrapping_mul(0x9E3779B97F4A7C15);
        let nll = batch_nll(&self.model, &batch, Mode::Train { dropout_seed: seed })?;
        let loss = (nll / w.targets as f64)?;
        let grads = loss.backward()?;
        let g: Vec<Tensor> = self
            .tr
            .vars
            .iter()
            .map(|v| {
                grads
                    .get(v.as_tensor())
                    .cloned()
                    .map(Ok)
                    .unwrap_or_else(|| v.as_tensor().zeros_like())
            })
            .collect::<candle_core::Result<_>>()?;
        w.grads = Some(match w.grads.take() {
            None => g,
            Some(a) => a
                .iter()
                .zip(&g)
                .map(|(x, y)| x + y)
                .collect::<candle_core::Result<_>>()?,
        });
        w.loss += scalar(&loss)?;
        w.tokens += batch.tokens;
        w.samples += batch.lens.len();
        self.st.micro += 1;
        Ok(w.batches.is_empty())
    }

    /// Clips the accumulated gradients and applies AdamW; the step's figures.
    fn optimizer_step(&mut self) -> Result<StepMetrics> {
        let tc = self.tc;
        let w = std::mem::take(&mut self.window);
        let mut g = w.grads.unwrap_or_default();
        let sq: f64 = g
            .iter()
            .map(|t| scalar(&t.sqr()?.sum_all()?))
            .sum::<Result<f64>>()?;
        let norm = sq.sqrt();
        if !w.loss.is_finite() || !norm.is_finite() {
            bail!(
                "loss became {} at step {}; stopped. The last good checkpoint in {} is kept (try a lower --lr)",
                if w.loss.is_finite() { "finite but the gradient is not" } else { "NaN or infinite" },
                self.st.step + 1,
                self.run_dir.join("checkpoints").display()
            );
        }
        if tc.max_grad_norm > 0.0 && norm > tc.max_grad_norm {
            let c = tc.max_grad_norm / (norm + 1e-6);
            g = g
                .iter()
                .map(|t| t * c)
                .collect::<candle_core::Result<_>>()?;
        }
        let lr = lr_at(tc, self.st.step, self.total, self.warmup);
        self.opt.step(&self.tr.vars, &g, lr, tc)?;
        let st = &mut self.st;
        st.step += 1;
        st.adam_t = self.opt.t;
        st.last_loss = Some(w.loss);
        let step_s = self.step_t.elapsed().as_secs_f64();
        self.step_t = Instant::now();
        let elapsed = self.t_start.elapsed().as_secs_f64();
        let done = st.step - self.start_step;
        let eta = elapsed / done as f64 * (self.total - st.step) as f64;
        Ok(StepMetrics {
            step: st.step,
            total_steps: self.total,
            epoch: st.epoch as f64 + st.micro as f64 / self.micro_per_epoch as f64,
            loss: w.loss,
            lr,
            grad_norm: norm,
            step_s,
            tokens_per_s: w.tokens as f64 / step_s.max(1e-9),
            samples_per_s: w.samples as f64 / step_s.max(1e-9),
            elapsed_s: elapsed,
            eta_s: eta,
            rss_mib: rss_mib().0,
            eval_loss: None,
        })
    }

    /// Validation, the metrics line, checkpoints, stop / early stopping / pause.
    fn after_step(
        &mut self,
        mut m: StepMetrics,
        control: &TrainControl,
        on_event: &mut dyn FnMut(TrainEvent),
    ) -> Result<Next> {
        let tc = self.tc;
        let epoch_end = self.st.micro >= self.micro_per_epoch;
        let st = &mut self.st;
        let want_eval = !self.val_ex.is_empty()
            && ((tc.eval_every > 0 && st.step % tc.eval_every == 0)
                || (tc.eval_every == 0 && epoch_end)
                || st.step == self.total);
        let mut improved = false;
        if want_eval {
            let el = eval_loss(&self.model, &self.val_ex, tc.batch)?;
            m.eval_loss = Some(el);
            improved = st.best_eval_loss.is_none_or(|b| el < b);
            if improved {
                st.best_eval_loss = Some(el);
                st.best_step = Some(st.step);
                st.evals_without_improvement = 0;
            } else {
                st.evals_without_improvement += 1;
            }
            on_event(TrainEvent::Eval {
                step: st.step,
                eval_loss: el,
                best: improved,
            });
        }
        data::append_line_durable(
            &self.metrics_path,
            format!("{}\n", serde_json::to_string(&m)?).as_bytes(),
        )?;
        on_event(TrainEvent::Step(m));
        if epoch_end {
            st.epoch += 1;
            st.micro = 0;
        }
        let stop = control.stop.load(Ordering::SeqCst);
        let early = tc
            .early_stopping
            .is_some_and(|p| st.evals_without_improvement >= p);
        let save = (tc.save_every > 0 && st.step % tc.save_every == 0)
            || st.step == self.total
            || stop
            || early
            || improved;
        if save {
            let dir = self
                .run_dir
                .join("checkpoints")
                .join(format!("step-{}", st.step));
            write_checkpoint(&dir, &self.tr, &self.opt, st, tc, &tc.model)?;
            on_event(TrainEvent::Checkpoint {
                step: st.step,
                path: dir.clone(),
            });
            if improved {
                copy_dir(&dir, &self.run_dir.join("checkpoints").join("best"))?;
            }
            prune_checkpoints(&self.run_dir, tc.keep_checkpoints);
        }
        if stop {
            return Ok(Next::End("stopped"));
        }
        if early {
            return Ok(Next::End("early-stopped"));
        }
        if control.pause.load(Ordering::SeqCst) {
            on_event(TrainEvent::Paused { step: st.step });
            while control.pause.load(Ordering::SeqCst) && !control.stop.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            on_event(TrainEvent::Resumed { step: st.step });
            self.step_t = Instant::now();
        }
        Ok(if epoch_end {
            Next::NewEpoch // a new epoch: a new order
        } else {
            Next::Continue
        })
    }

    /// The final output (the adapter in PEFT's layout, or the full model folder) and
    /// `summary.json`.
    fn finish(self, end: &str, on_event: &mut dyn FnMut(TrainEvent)) -> Result<TrainSummary> {
        let tc = self.tc;
        let output_dir = if tc.full {
            let out = self.run_dir.join("model");
            crate::model::convert::write_hf_folder(
                &self.model,
                &crate::model::loader::resolve(&tc.model)?,
                &out,
            )?;
            out
        } else {
            let out = self.run_dir.join("adapter");
            save_adapter(&out, &tc.lora, &self.tr.lora, &tc.model)?;
            out
        };
        // the decision threshold, chosen on validation (never on test data)
        let calibration = if end == "stopped" {
            None
        } else {
            self.calibrate(on_event)?
        };
        if !tc.full {
            let mut meta = adapter_meta(tc);
            if let Some(c) = &calibration {
                meta.threshold = Some(c.threshold);
                if let Some(t) = c.threshold_for_recall_95 {
                    meta.threshold_for_recall.insert("0.95".into(), t);
                }
            }
            meta.write(&output_dir)?;
        }
        let summary = TrainSummary {
            run_dir: self.run_dir.clone(),
            output_dir,
            steps: self.st.step,
            final_loss: self.st.last_loss,
            best_eval_loss: self.st.best_eval_loss,
            best_step: self.st.best_step,
            end: end.to_string(),
            seconds: self.t_start.elapsed().as_secs_f64(),
            calibration,
        };
        data::write_atomic(
            &self.run_dir.join("summary.json"),
            serde_json::to_string_pretty(&summary)?.as_bytes(),
        )?;
        on_event(TrainEvent::Finished(summary.clone()));
        Ok(summary)
    }
}

impl Trainer<'_> {
    /// The F1-best decision threshold on the labelled validation dialogues (score mode on
    /// the trained model), with its precision and recall and the threshold that keeps recall
    /// at 0.95; `None` without a validation set holding both labels.
    fn calibrate(&self, on_event: &mut dyn FnMut(TrainEvent)) -> Result<Option<Calibration>> {
        let v = &self.val_samples;
        let pos = v.iter().filter(|s| s.label == Some(true)).count();
        if pos == 0 || pos == v.len() {
            return Ok(None);
        }
        let t0 = Instant::now();
        let cancel = AtomicBool::new(false);
        let probs = crate::engine::eval::score_with(
            &self.model,
            &self.tok,
            v,
            self.tc.batch.max(1),
            &cancel,
            &mut |_, _| {},
        )?;
        let rows: Vec<data::EvalRow> = v
            .iter()
            .zip(&probs)
            .map(|(s, &p)| data::EvalRow {
                label: s.label == Some(true),
                predicted: Some(p >= 0.5),
                probability: Some(p),
            })
            .collect();
        let Some((threshold, m)) = data::metrics::best_f1_threshold(&rows) else {
            return Ok(None);
        };
        let at_half = data::metrics::at_threshold(&rows, 0.5);
        let c = Calibration {
            threshold,
            n: v.len(),
            precision: m.precision,
            recall: m.recall,
            f1: m.f1,
            f1_at_half: at_half.f1,
            threshold_for_recall_95: threshold_for_recall(&rows, 0.95),
        };
        on_event(TrainEvent::Log(format!(
            "decision threshold {:.4} (F1-best on {} validation dialogues, {:.0}s): precision {:.3} recall {:.3} F1 {:.3} (F1 {:.3} at 0.5)",
            c.threshold,
            c.n,
            t0.elapsed().as_secs_f64(),
            c.precision,
            c.recall,
            c.f1,
            c.f1_at_half
        )));
        Ok(Some(c))
    }
}

/// The highest threshold whose recall on `rows` is at least `recall`.
pub fn threshold_for_recall(rows: &[data::EvalRow], recall: f64) -> Option<f64> {
    let mut pos: Vec<f64> = rows
        .iter()
        .filter(|r| r.label)
        .filter_map(|r| r.probability)
        .collect();
    if pos.is_empty() {
        return None;
    }
    pos.sort_by(|a, b| b.total_cmp(a));
    let need = ((recall * pos.len() as f64).ceil() as usize).clamp(1, pos.len());
    Some(pos[need - 1])
}

/// The LoRA factors as the run's trainable tensors.
fn lora_trainable(lora: Vec<LoraVars>) -> Trainable {
    let mut names = Vec::new();
    let mut vars = Vec::new();
    for l in &lora {
        names.push(format!("{}.lora_A", l.module));
        vars.push(l.a.clone());
        names.push(format!("{}.lora_B", l.module));
        vars.push(l.b.clone());
    }
    Trainable { names, vars, lora }
}

/// `--resume`: the state of the newest checkpoint (its config must be the run's own), with
/// metrics past it dropped; `None` when there is no checkpoint.
fn resume(
    tc: &TrainConfig,
    run_dir: &Path,
    metrics_path: &Path,
    tr: &Trainable,
    opt: &mut AdamW,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<Option<TrainerState>> {
    let Some((_, dir)) = latest_checkpoint(run_dir) else {
        on_event(TrainEvent::Log(
            "no checkpoint to resume from; starting fresh".into(),
        ));
        return Ok(None);
    };
    let prev: Option<TrainConfig> = std::fs::read_to_string(run_dir.join("config.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok());
    if let Some(p) = prev {
        let mut a = p.clone();
        let mut b = tc.clone();
        a.resume = false;
        b.resume = false;
        if a != b {
            bail!(
                "{}: --resume with settings other than the run's own config.json",
                run_dir.display()
            );
        }
    }
    let st = read_checkpoint(&dir, tr, opt, tc)?;
    // metrics past the checkpoint are redone
    if let Ok(text) = std::fs::read_to_string(metrics_path) {
        let kept: String = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s as usize <= st.step)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        data::write_atomic(metrics_path, kept.as_bytes())?;
    }
    on_event(TrainEvent::Log(format!(
        "resumed from {} (step {})",
        dir.display(),
        st.step
    )));
    Ok(Some(st))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_for_a_recall_on_known_scores() {
        let rows: Vec<data::EvalRow> = [
            (true, 0.9),
            (true, 0.8),
            (true, 0.3),
            (true, 0.6),
            (false, 0.7),
        ]
        .iter()
        .map(|&(label, p)| data::EvalRow {
            label,
            predicted: Some(p >= 0.5),
            probability: Some(p),
        })
        .collect();
        // 4 fraud scores 0.9 0.8 0.6 0.3: recall 0.95 needs all four, 0.75 three, 0.5 two
        assert_eq!(threshold_for_recall(&rows, 0.95), Some(0.3));
        assert_eq!(threshold_for_recall(&rows, 0.75), Some(0.6));
        assert_eq!(threshold_for_recall(&rows, 0.5), Some(0.8));
        assert_eq!(threshold_for_recall(&rows[4..], 0.95), None);
        let (t, m) = data::metrics::best_f1_threshold(&rows).unwrap();
        assert_eq!(t, 0.3);
        assert!((m.f1 - 8.0 / 9.0).abs() < 1e-9);
    }
}
