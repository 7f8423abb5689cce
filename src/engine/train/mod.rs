//! Supervised fine-tuning on the engine: LoRA (PEFT layout) or full fine-tuning, AdamW with
//! warmup + constant / linear / cosine schedules, gradient accumulation and clipping, a
//! validation split with best-checkpoint keeping and early stopping, atomic checkpoints that a
//! killed run resumes from exactly, time-budgeted schedules, a frozen-prefix cache for LoRA on
//! a range of layers, and live metrics (events + `metrics.jsonl`).
//!
//! Rooms: `config` (what a run is told and reports), `load` (its examples), `batch`
//! (examples, packing, losses), `optim` (what is trained, AdamW, schedule), `checkpoint`
//! (save, resume, prune), `memory` (figures and the estimate), `budget` (clock, costs, the
//! time-budget plan), `frozen` (the frozen-prefix cache), `tune` (the recipe search), and
//! here the [`Trainer`] that drives the loop: [`Trainer::start`] sets a run up (or resumes
//! it), [`Trainer::run`] takes optimizer steps until the end, a stop, early stopping or the
//! time budget, and writes the final adapter.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor, Var, D};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::data::{self, Sample, SampleBody, DEFAULT_SYSTEM};
use crate::model::adapter::{attach_lora, save_adapter, LoraSpec, LoraVars};
use crate::model::qwen2::{LinearWeight, Mode};
use crate::model::safetensors_io::{save_atomic, SafetensorsFile};
use crate::model::{self, LoadedModel, Qwen2, TextTokenizer};

mod batch;
mod budget;
mod checkpoint;
mod config;
mod frozen;
mod load;
mod memory;
mod optim;
mod plan;
pub mod tune;
mod validate;

pub use batch::{
    epoch_order, eval_loss, make_example, mean_loss, mean_loss_cached, val_probabilities, Example,
    Verdict,
};
pub use budget::{
    parse_duration, plan, Clock, Costs, EvalLoad, Meter, Plan, SimClock, StepLoad, WallClock, Work,
    PLAN_FILL,
};
pub use checkpoint::latest_checkpoint;
pub use config::{
    f32_name, Calibration, Schedule, StepMetrics, TrainConfig, TrainControl, TrainEvent,
    TrainSummary, BUDGET_EVALS,
};
pub use frozen::{CacheStats, FrozenCache, Set};
pub use load::{load_examples, load_split};
pub use memory::{available_mib, estimate_mib, rss_mib};
pub use optim::lr_at;
pub use validate::threshold_for_recall;
#[allow(unused_imports)]
use {batch::*, checkpoint::*, config::*, memory::*, optim::*};

/// A frozen-prefix cache several runs share (the trials of `tune`).
pub type SharedCache = Arc<Mutex<FrozenCache>>;

/// Runs (or resumes) a training run to the end, a stop, early stopping or its time budget.
pub fn train(
    tc: &TrainConfig,
    control: &TrainControl,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<TrainSummary> {
    let lm = model::load_for_training(&tc.model, tc.load_options()?)?;
    train_loaded(lm, tc, control, on_event)
}

/// [`train`] on a model already loaded.
pub fn train_loaded(
    lm: LoadedModel,
    tc: &TrainConfig,
    control: &TrainControl,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<TrainSummary> {
    Trainer::start(lm, tc, RunOptions::default(), on_event)?.run(control, on_event)
}

/// What a run borrows from its caller besides the config: the clock it reads, and a
/// frozen-prefix cache shared with other runs.
#[derive(Default)]
pub struct RunOptions {
    /// the wall clock when `None`
    pub clock: Option<Box<dyn Clock>>,
    /// a cache made for these examples (at or below the run's lowest adapted layer); the run
    /// makes its own when `None` and the run freezes some layers
    pub frozen: Option<SharedCache>,
}

/// Figures of the optimizer step being gathered (over its micro-batches).
#[derive(Default)]
struct Window {
    loss: f64,
    tokens: usize,
    samples: usize,
    /// targets of all its micro-batches: each micro-batch's loss is divided by them
    targets: usize,
    /// the micro-batches, with the indices of their examples
    batches: Vec<(Batch, Vec<usize>)>,
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
    eval_every: usize,
    start_step: usize,
    clock: Box<dyn Clock>,
    /// training seconds before this process took the run over (a resumed run)
    t_offset: f64,
    /// the clock's reading at the first step of this process
    t_first: f64,
    setup_s: f64,
    step_t: f64,
    meter: Meter,
    /// seconds of the final validation pass (reported with the calibration)
    final_eval_s: f64,
    /// the meter after this process's first micro-batch (a cold one: the plan measures
    /// the warm ones after it when there are any)
    first_micro: Option<Meter>,
    /// the meter when this process made the first plan (the re-plan measures from it)
    plan_meter: Option<Meter>,
    frozen: Option<SharedCache>,
    /// the last full validation pass: per example with a verdict, its label and P(fraud)
    last_val: Option<Vec<(bool, f64)>>,
    window: Window,
}

/// Memory a frozen-prefix cache may take by default: a quarter of what is available, at
/// most 8 GiB.
fn default_cache_bytes() -> u64 {
    let avail = available_mib().unwrap_or(4096.0);
    ((avail / 4.0).min(8192.0) * 1048576.0) as u64
}

impl<'a> Trainer<'a> {
    /// Checks the config, loads the examples, makes the trainable tensors, refuses a run
    /// that will not fit in memory, resumes from the newest checkpoint when asked, writes
    /// `config.json` and reports `Started`.
    pub fn start(
        lm: LoadedModel,
        tc: &'a TrainConfig,
        opts: RunOptions,
        on_event: &mut dyn FnMut(TrainEvent),
    ) -> Result<Self> {
        let wall = Instant::now();
        if tc.batch == 0 || tc.grad_accum == 0 || tc.max_len < 8 {
            bail!("batch and grad-accum must be positive and max-len at least 8");
        }
        if tc
            .time_budget_s
            .is_some_and(|b| !(b > 0.0 && b.is_finite()))
        {
            bail!("the time budget must be a positive number of seconds");
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
        drop(val_s);
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
        let frozen = match opts.frozen {
            Some(c) => {
                let layer = c
                    .lock()
                    .map_err(|_| anyhow::anyhow!("cache poisoned"))?
                    .layer();
                if layer > model.frozen_below() {
                    bail!(
                        "the shared frozen-prefix cache is at layer {layer}, above the run's lowest trained layer {}",
                        model.frozen_below()
                    );
                }
                Some(c)
            }
            None => new_frozen_cache(&model, tc, &train_ex, &val_ex, &run_dir, on_event)?,
        };
        let micro_per_epoch = train_ex.len().div_ceil(tc.batch);
        let steps_per_epoch = micro_per_epoch.div_ceil(tc.grad_accum);
        let mut total = tc.max_steps.unwrap_or(steps_per_epoch * tc.epochs).max(1);
        let mut warmup = tc
            .warmup_steps
            .unwrap_or((tc.warmup_ratio * total as f64).ceil() as usize);
        let mut eval_every = tc.eval_every;
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
            plan: None,
            train_s: 0.0,
            samples_seen: 0,
        };
        let metrics_path = run_dir.join("metrics.jsonl");
        if tc.resume {
            if let Some(s) = resume(tc, &run_dir, &metrics_path, &tr, &mut opt, on_event)? {
                st = s;
            }
        } else if metrics_path.exists() {
            std::fs::remove_file(&metrics_path)?;
        }
        if let Some(p) = &st.plan {
            // a resumed time-budgeted run keeps the schedule it planned
            total = p.total_steps;
            warmup = p.warmup_steps;
            eval_every = p.eval_every;
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
        let clock = opts.clock.unwrap_or_else(|| Box::new(WallClock::new()));
        let t_first = clock.now();
        Ok(Self {
            tc,
            model,
            tr,
            opt,
            start_step: st.step,
            t_offset: st.train_s,
            st,
            train_ex,
            val_ex,
            run_dir,
            metrics_path,
            micro_per_epoch,
            total,
            warmup,
            eval_every,
            step_t: t_first,
            t_first,
            setup_s: wall.elapsed().as_secs_f64(),
            clock,
            meter: Meter::default(),
            first_micro: None,
            plan_meter: None,
            final_eval_s: 0.0,
            frozen,
            last_val: None,
            window: Window::default(),
        })
    }

    /// Waits while the engine has interactive work pending (see `engine::gate`); like a
    /// pause, the wait counts neither against the time budget nor in the step's time.
    fn yield_to_interactive(&mut self, control: &TrainControl) {
        let t = self.clock.now();
        if !control.gate.wait_clear(&control.stop).is_zero() {
            let waited = self.clock.now() - t;
            self.t_offset -= waited;
            self.step_t += waited;
        }
    }

    /// Training seconds so far (what a time budget counts).
    fn now(&self) -> f64 {
        self.t_offset + self.clock.now() - self.t_first
    }

    /// Optimizer steps until the end, a stop, early stopping or the time budget; then the
    /// final output.
    pub fn run(
        mut self,
        control: &TrainControl,
        on_event: &mut dyn FnMut(TrainEvent),
    ) -> Result<TrainSummary> {
        let mut end = "completed";
        'outer: while self.st.step < self.total {
            let order = self.order(self.st.epoch);
            while self.st.micro < self.micro_per_epoch && self.st.step < self.total {
                self.yield_to_interactive(control);
                if !self.micro_step(&order)? {
                    continue;
                }
                let mut m = self.optimizer_step()?;
                let plan_due = match &self.st.plan {
                    None => self.tc.time_budget_s.is_some(),
                    // halfway: plan again from what the steps since the first plan cost
                    Some(p) => {
                        !p.replanned && self.st.step * 2 >= self.total && self.st.step < self.total
                    }
                };
                if plan_due {
                    self.make_plan(control, on_event)?;
                    m.total_steps = self.total;
                }
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

    /// The examples' order in `epoch`.
    fn order(&self, epoch: usize) -> Vec<usize> {
        if self.tc.shuffle {
            epoch_order(self.train_ex.len(), self.tc.seed, epoch)
        } else {
            (0..self.train_ex.len()).collect()
        }
    }

    /// The micro-batches (example indices) of the optimizer step starting at micro-batch
    /// `micro` of an epoch in `order`.
    fn step_members(&self, order: &[usize], micro: usize) -> Vec<Vec<usize>> {
        let tc = self.tc;
        let upto = (micro + tc.grad_accum).min(self.micro_per_epoch);
        (micro..upto)
            .map(|m| order[m * tc.batch..((m + 1) * tc.batch).min(order.len())].to_vec())
            .collect()
    }

    /// One micro-batch: forward, backward, gradients accumulated. True when it was the last
    /// of its optimizer step.
    fn micro_step(&mut self, order: &[usize]) -> Result<bool> {
        let tc = self.tc;
        // gather the micro-batches of one optimizer step first, to normalise by their targets
        if self.window.batches.is_empty() {
            for idx in self.step_members(order, self.st.micro) {
                let refs: Vec<&Example> = idx.iter().map(|&i| &self.train_ex[i]).collect();
                let b = make_batch(&refs)?;
                self.window.batches.push((b, idx));
            }
            self.window.targets = self
                .window
                .batches
                .iter()
                .map(|(b, _)| b.targets.len())
                .sum::<usize>()
                .max(1);
        }
        let (batch, idx) = self.window.batches.remove(0);
        let seed = tc.seed.wrapping_mul(0x2545F4914F6CDD1D)
            ^ ((self.st.epoch * self.micro_per_epoch + self.st.micro) as u64)
                .wrapping_mul(0x9E3779B97F4A7C15);
        let start = self.frozen_input(Set::Train, &batch, &idx)?;
        let t0 = self.clock.now();
        let nll = batch_nll_at(
            &self.model,
            &batch,
            start.as_ref(),
            Mode::Train { dropout_seed: seed },
        )?;
        let loss = (nll / self.window.targets as f64)?;
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
        let w = &mut self.window;
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
        self.clock.charge(Work::Step {
            tokens: batch.ids.len(),
        });
        self.meter.step_s += self.clock.now() - t0;
        self.meter.step_tokens += batch.ids.len() as u64;
        if self.first_micro.is_none() {
            self.first_micro = Some(self.meter);
        }
        self.st.micro += 1;
        Ok(self.window.batches.is_empty())
    }

    /// A batch's hidden states at the frozen-prefix cache's layer (computed and kept for the
    /// examples not seen yet), with that layer; `None` without a cache.
    fn frozen_input(
        &mut self,
        set: Set,
        batch: &Batch,
        idx: &[usize],
    ) -> Result<Option<(Tensor, usize)>> {
        let Some(cache) = &self.frozen else {
            return Ok(None);
        };
        let mut c = cache
            .lock()
            .map_err(|_| anyhow::anyhow!("frozen-prefix cache poisoned"))?;
        let ex = match set {
            Set::Train => &self.train_ex,
            Set::Val => &self.val_ex,
        };
        let members: Vec<(usize, &[u32])> =
            idx.iter().map(|&i| (i, ex[i].ids.as_slice())).collect();
        let before = c.stats.computed_tokens;
        let t0 = self.clock.now();
        let x = c.batch_input(&self.model, set, &members, batch.shared)?;
        let tokens = (c.stats.computed_tokens - before) as usize;
        if tokens > 0 {
            self.clock.charge(Work::Frozen { tokens });
            self.meter.frozen_s += self.clock.now() - t0;
            self.meter.frozen_tokens += tokens as u64;
        }
        Ok(Some((x, c.layer())))
    }

    /// Clips the accumulated gradients and applies AdamW; the step's figures.
    fn optimizer_step(&mut self) -> Result<StepMetrics> {
        let tc = self.tc;
        let t0 = self.clock.now();
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
        self.clock.charge(Work::Optim);
        self.meter.optim_s += self.clock.now() - t0;
        self.meter.optim_n += 1;
        let now = self.now();
        let st = &mut self.st;
        st.step += 1;
        st.adam_t = self.opt.t;
        st.last_loss = Some(w.loss);
        st.samples_seen += w.samples;
        let step_s = self.clock.now() - self.step_t;
        self.step_t = self.clock.now();
        let elapsed = now - self.t_offset;
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
            elapsed_s: now,
            eta_s: eta,
            rss_mib: rss_mib().0,
            eval_loss: None,
            eval_auc: None,
        })
    }

    /// Validation, the metrics line, checkpoints, stop / early stopping / budget / pause.
    fn after_step(
        &mut self,
        mut m: StepMetrics,
        control: &TrainControl,
        on_event: &mut dyn FnMut(TrainEvent),
    ) -> Result<Next> {
        let tc = self.tc;
        let epoch_end = self.st.micro >= self.micro_per_epoch;
        let step = self.st.step;
        let over_budget = tc
            .time_budget_s
            .is_some_and(|b| step < self.total && self.now() >= b);
        let last = step == self.total || over_budget;
        let want_eval = !self.val_ex.is_empty()
            && ((self.eval_every > 0 && step.is_multiple_of(self.eval_every))
                || (self.eval_every == 0 && epoch_end)
                || last);
        let mut improved = false;
        if want_eval {
            let all: Vec<usize> = (0..self.val_ex.len()).collect();
            let t0 = self.now();
            let el = self.val_loss(&all, control)?;
            if last {
                // the final evaluation (where the threshold is chosen) counts apart from
                // the training time a budget holds
                let d = self.now() - t0;
                self.final_eval_s += d;
                self.t_offset -= d;
            }
            m.eval_loss = Some(el);
            m.eval_auc = self.val_auc();
            let st = &mut self.st;
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
        self.st.train_s = self.now();
        m.elapsed_s = self.st.train_s;
        data::append_line_durable(
            &self.metrics_path,
            format!("{}\n", serde_json::to_string(&m)?).as_bytes(),
        )?;
        on_event(TrainEvent::Step(m));
        let st = &mut self.st;
        if epoch_end {
            st.epoch += 1;
            st.micro = 0;
        }
        let stop = control.stop.load(Ordering::SeqCst);
        let early = tc
            .early_stopping
            .is_some_and(|p| st.evals_without_improvement >= p);
        let save = (tc.save_every > 0 && st.step.is_multiple_of(tc.save_every))
            || st.step == self.total
            || stop
            || early
            || over_budget
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
        if over_budget {
            return Ok(Next::End("time-budget"));
        }
        if control.pause.load(Ordering::SeqCst) {
            on_event(TrainEvent::Paused { step: st.step });
            let paused = self.clock.now();
            while control.pause.load(Ordering::SeqCst) && !control.stop.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            // a pause does not count against the time budget
            self.t_offset -= self.clock.now() - paused;
            on_event(TrainEvent::Resumed { step: self.st.step });
            self.step_t = self.clock.now();
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
        let train_s = self.now();
        let process_s = self.clock.now() - self.t_first;
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
        let t_cal = Instant::now();
        let calibration = if end == "stopped" {
            None
        } else {
            self.calibrate(on_event)?
        };
        let cal_only = t_cal.elapsed().as_secs_f64();
        let calibrate_s = cal_only + self.final_eval_s;
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
        let frozen_cache = self
            .frozen
            .as_ref()
            .and_then(|c| c.lock().ok().map(|c| c.stats.clone()));
        let summary = TrainSummary {
            run_dir: self.run_dir.clone(),
            output_dir,
            steps: self.st.step,
            final_loss: self.st.last_loss,
            best_eval_loss: self.st.best_eval_loss,
            best_step: self.st.best_step,
            end: end.to_string(),
            seconds: self.setup_s + process_s + cal_only,
            calibration,
            samples_seen: self.st.samples_seen,
            train_s,
            setup_s: self.setup_s,
            calibrate_s,
            plan: self.st.plan.clone(),
            frozen_cache,
            meter: self.meter,
        };
        data::write_atomic(
            &self.run_dir.join("summary.json"),
            serde_json::to_string_pretty(&summary)?.as_bytes(),
        )?;
        on_event(TrainEvent::Finished(summary.clone()));
        Ok(summary)
    }
}

/// The run's own frozen-prefix cache, when it freezes some layers (LoRA on a range whose
/// lowest layer is above 0) and the cache is not turned off.
fn new_frozen_cache(
    model: &Qwen2,
    tc: &TrainConfig,
    train_ex: &[Example],
    val_ex: &[Example],
    run_dir: &Path,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<Option<SharedCache>> {
    let layer = model.frozen_below();
    if layer == 0 || layer >= model.layers.len() || tc.frozen_cache_mib == Some(0) {
        return Ok(None);
    }
    let budget = tc
        .frozen_cache_mib
        .map(|m| m as u64 * 1048576)
        .unwrap_or_else(default_cache_bytes);
    let ids: Vec<&[u32]> = train_ex
        .iter()
        .chain(val_ex)
        .map(|e| e.ids.as_slice())
        .collect();
    let p = crate::engine::eval::common_prefix(&ids);
    let cache = FrozenCache::new(
        model,
        layer,
        &ids[0][..p],
        budget,
        run_dir.join("frozen-cache.bin"),
    )?;
    on_event(TrainEvent::Log(format!(
        "layers 0-{} are frozen: their output is cached after the first pass ({} MiB in memory, then {}; prompt prefix of {p} tokens run once)",
        layer - 1,
        budget / 1048576,
        run_dir.join("frozen-cache.bin").display()
    )));
    Ok(Some(Arc::new(Mutex::new(cache))))
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

/// `--resume`: the state of the newest checkpoint that reads back whole (its config must be
/// the run's own), with metrics past it dropped; `None` when there is no checkpoint.
fn resume(
    tc: &TrainConfig,
    run_dir: &Path,
    metrics_path: &Path,
    tr: &Trainable,
    opt: &mut AdamW,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<Option<TrainerState>> {
    let Some(_) = latest_checkpoint(run_dir) else {
        on_event(TrainEvent::Log(
            "no checkpoint to resume from; starting fresh".into(),
        ));
        // the steps a killed start logged are redone
        if metrics_path.exists() {
            std::fs::remove_file(metrics_path)?;
        }
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
    let (dir, st) =
        read_newest_checkpoint(run_dir, tr, opt, tc, &mut |m| on_event(TrainEvent::Log(m)))?;
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
