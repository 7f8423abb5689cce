//! Train pane: the run's settings (recipe defaults), start / pause / resume / stop, live
//! charts of training and validation loss and of the learning rate, throughput and ETA,
//! recent log lines, and the session's past runs with their loss curves overlaid.
//!
//! This file holds the pane's state (the settings form and its fields, the live run, the
//! session's past runs), the run list loading and the handlers for the engine's training
//! events; the key handling and the actions it triggers (editing a field, start, pause /
//! resume, loading a run's adapter) are in `keys.rs`, the drawing in `view.rs`.

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::app::{spec_name, App};
use super::widgets::short_float;
use crate::engine::train::{Schedule, StepMetrics, TrainConfig, TrainEvent, TrainSummary};

mod keys;
mod view;

pub use view::draw;

/// The settings form, top to bottom.
pub const FIELDS: [&str; 27] = [
    "model",
    "data",
    "hand labels",
    "method",
    "LoRA r",
    "LoRA alpha",
    "LoRA dropout",
    "learning rate",
    "epochs",
    "max steps",
    "batch",
    "grad accum",
    "max len",
    "schedule",
    "warmup ratio",
    "weight decay",
    "max grad norm",
    "val split",
    "eval every",
    "save every",
    "early stopping",
    "answer fields",
    "limit",
    "seed",
    "time budget",
    "layers",
    "anonymize",
];

/// File name of a dataset copy with the session's hand labels applied (in a run or eval folder).
pub const LABELLED_COPY: &str = "data-with-labels.jsonl";

/// Index of a form field by name.
pub fn field_index(name: &str) -> Option<usize> {
    FIELDS.iter().position(|f| *f == name)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainView {
    Live,
    Runs,
}

/// The run in progress (or the last one).
#[derive(Debug, Clone, Default)]
pub struct LiveRun {
    pub active: bool,
    pub id: Option<String>,
    pub run_dir: Option<PathBuf>,
    pub total_steps: usize,
    pub start_step: usize,
    pub train_samples: usize,
    pub val_samples: usize,
    pub estimate_mib: f64,
    pub metrics: Vec<StepMetrics>,
    pub loss: Vec<(f64, f64)>,
    pub eval: Vec<(f64, f64)>,
    pub lr: Vec<(f64, f64)>,
    pub logs: Vec<String>,
    pub paused: bool,
    pub summary: Option<TrainSummary>,
    pub error: Option<String>,
}

impl LiveRun {
    pub fn log(&mut self, s: impl Into<String>) {
        self.logs.push(s.into());
        if self.logs.len() > 500 {
            self.logs.drain(..100);
        }
    }

    pub fn push_step(&mut self, m: StepMetrics) {
        self.loss.push((m.step as f64, m.loss));
        self.lr.push((m.step as f64, m.lr));
        if let Some(e) = m.eval_loss {
            if self.eval.last().is_none_or(|p| p.0 != m.step as f64) {
                self.eval.push((m.step as f64, e));
            }
        }
        self.total_steps = self.total_steps.max(m.total_steps);
        self.metrics.push(m);
    }
}

/// A past run of the session.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub id: String,
    pub dir: PathBuf,
    pub config: Option<TrainConfig>,
    pub loss: Vec<(f64, f64)>,
    pub eval: Vec<(f64, f64)>,
    pub total: usize,
    pub summary: Option<TrainSummary>,
}

impl RunInfo {
    pub fn load(id: &str, dir: &Path) -> RunInfo {
        let config = std::fs::read_to_string(dir.join("config.json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok());
        let summary = std::fs::read_to_string(dir.join("summary.json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok());
        let mut loss = Vec::new();
        let mut eval = Vec::new();
        let mut total = 0;
        if let Ok(text) = std::fs::read_to_string(dir.join("metrics.jsonl")) {
            for l in text.lines() {
                let Ok(v) = serde_json::from_str::<Value>(l) else {
                    continue;
                };
                let (Some(step), Some(lo)) = (v["step"].as_f64(), v["loss"].as_f64()) else {
                    continue;
                };
                loss.push((step, lo));
                if let Some(e) = v["eval_loss"].as_f64() {
                    eval.push((step, e));
                }
                total = total.max(v["total_steps"].as_u64().unwrap_or(0) as usize);
            }
        }
        RunInfo {
            id: id.to_string(),
            dir: dir.to_path_buf(),
            config,
            loss,
            eval,
            total,
            summary,
        }
    }

    pub fn has_adapter(&self) -> bool {
        self.dir
            .join("adapter")
            .join("adapter_config.json")
            .exists()
    }

    pub fn model_name(&self) -> String {
        self.config
            .as_ref()
            .map(|c| spec_name(&c.model))
            .unwrap_or_else(|| "?".into())
    }

    pub fn steps(&self) -> usize {
        self.summary
            .as_ref()
            .map(|s| s.steps)
            .unwrap_or_else(|| self.loss.last().map(|p| p.0 as usize).unwrap_or(0))
    }

    pub fn end(&self) -> String {
        match &self.summary {
            Some(s) => s.end.clone(),
            None if self.loss.is_empty() => "no steps".into(),
            None => "interrupted".into(),
        }
    }
}

#[derive(Debug)]
pub struct TrainPane {
    pub cfg: TrainConfig,
    pub apply_labels: bool,
    pub field: usize,
    pub view: TrainView,
    pub live: LiveRun,
    pub runs: Vec<RunInfo>,
    pub run_sel: usize,
    /// Runs whose curves are overlaid (ids); empty: the newest few.
    pub shown: BTreeSet<String>,
    pub stop_requested: bool,
    pub pause_requested: bool,
}

impl Default for TrainPane {
    fn default() -> Self {
        Self {
            cfg: TrainConfig::default(),
            apply_labels: true,
            field: 0,
            view: TrainView::Live,
            live: LiveRun::default(),
            runs: Vec::new(),
            run_sel: 0,
            shown: BTreeSet::new(),
            stop_requested: false,
            pause_requested: false,
        }
    }
}

impl TrainPane {
    pub fn restore(&mut self, v: Option<&Value>) {
        let Some(v) = v else { return };
        if let Ok(c) = serde_json::from_value::<TrainConfig>(v["config"].clone()) {
            self.cfg = c;
        }
        if let Some(b) = v["apply_labels"].as_bool() {
            self.apply_labels = b;
        }
    }

    pub fn to_settings(&self) -> Value {
        let mut c = self.cfg.clone();
        c.out_dir = PathBuf::new();
        serde_json::json!({"config": c, "apply_labels": self.apply_labels})
    }

    /// Text of a form field.
    pub fn field_text(
        &self,
        i: usize,
        data_default: Option<&Path>,
        model_default: Option<&str>,
    ) -> String {
        let c = &self.cfg;
        let opt = |o: Option<usize>| o.map(|x| x.to_string()).unwrap_or_else(|| "none".into());
        match i {
            0 if c.model.is_empty() => model_default
                .map(|m| format!("{} (default)", spec_name(m)))
                .unwrap_or_else(|| "(choose)".into()),
            0 => spec_name(&c.model),
            1 if c.data.as_os_str().is_empty() => data_default
                .map(|p| {
                    format!(
                        "{} (Data pane)",
                        p.file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default()
                    )
                })
                .unwrap_or_else(|| "(choose)".into()),
            1 => c.data.display().to_string(),
            2 => if self.apply_labels { "apply" } else { "ignore" }.into(),
            3 => if c.full { "full fine-tune" } else { "LoRA" }.into(),
            4 => c.lora.r.to_string(),
            5 => short_float(c.lora.lora_alpha),
            6 => format!("{:.2}", c.lora.lora_dropout),
            7 => format!("{:.1e}", c.lr),
            8 => c.epochs.to_string(),
            9 => opt(c.max_steps),
            10 => c.batch.to_string(),
            11 => c.grad_accum.to_string(),
            12 => c.max_len.to_string(),
            13 => format!("{:?}", c.schedule).to_lowercase(),
            14 => format!("{:.2}", c.warmup_ratio),
            15 => short_float(c.weight_decay),
            16 => short_float(c.max_grad_norm),
            17 => format!("{:.2}", c.val_split),
            18 => {
                if c.eval_every == 0 {
                    "each epoch".into()
                } else {
                    c.eval_every.to_string()
                }
            }
            19 => {
                if c.save_every == 0 {
                    "at the end".into()
                } else {
                    c.save_every.to_string()
                }
            }
            20 => opt(c.early_stopping),
            21 => if c.answer_fields {
                "is_fraud, speaker, reason"
            } else {
                "is_fraud"
            }
            .into(),
            22 => opt(c.limit),
            23 => c.seed.to_string(),
            24 => c
                .time_budget_s
                .map(|b| format!("{} (plans steps)", crate::fmt::human_secs(b)))
                .unwrap_or_else(|| "none".into()),
            25 => c
                .lora
                .layers_to_transform
                .as_deref()
                .map(crate::model::adapter::format_layers)
                .unwrap_or_else(|| "all".into()),
            26 => if c.anonymize_speakers {
                "speakers as A, B…"
            } else {
                "speakers as in the data"
            }
            .into(),
            _ => String::new(),
        }
    }

    /// Sets a field from typed text.
    pub fn set_field(&mut self, i: usize, text: &str) -> Result<(), String> {
        let c = &mut self.cfg;
        let t = text.trim();
        let none = t.is_empty() || t == "none" || t == "-";
        fn num<T: std::str::FromStr>(t: &str, what: &str) -> Result<T, String> {
            t.parse::<T>()
                .map_err(|_| format!("{what}: `{t}` is not a valid value"))
        }
        let pos = |t: &str, what: &str| -> Result<usize, String> {
            let n: usize = num(t, what)?;
            if n == 0 {
                Err(format!("{what}: must be at least 1"))
            } else {
                Ok(n)
            }
        };
        let name = FIELDS.get(i).copied().unwrap_or("field");
        match i {
            0 => c.model = t.to_string(),
            1 => c.data = PathBuf::from(t),
            4 => c.lora.r = pos(t, name)?,
            5 => c.lora.lora_alpha = num(t, name)?,
            6 => {
                let d: f32 = num(t, name)?;
                if !(0.0..1.0).contains(&d) {
                    return Err(format!("{name}: between 0 and 1"));
                }
                c.lora.lora_dropout = d
            }
            7 => {
                let x: f64 = num(t, name)?;
                if !(x > 0.0 && x.is_finite()) {
                    return Err(format!("{name}: must be positive"));
                }
                c.lr = x
            }
            8 => c.epochs = pos(t, name)?,
            9 => c.max_steps = if none { None } else { Some(pos(t, name)?) },
            10 => c.batch = pos(t, name)?,
            11 => c.grad_accum = pos(t, name)?,
            12 => {
                let n: usize = num(t, name)?;
                if n < 8 {
                    return Err(format!("{name}: at least 8"));
                }
                c.max_len = n
            }
            13 => c.schedule = t.parse::<Schedule>().map_err(|e| e.to_string())?,
            14 => {
                let x: f64 = num(t, name)?;
                if !(0.0..=1.0).contains(&x) {
                    return Err(format!("{name}: between 0 and 1"));
                }
                c.warmup_ratio = x
            }
            15 => c.weight_decay = num(t, name)?,
            16 => c.max_grad_norm = num(t, name)?,
            17 => {
                let x: f64 = num(t, name)?;
                if !(0.0..0.9).contains(&x) {
                    return Err(format!("{name}: between 0 and 0.9"));
                }
                c.val_split = x
            }
            18 => c.eval_every = if none { 0 } else { num(t, name)? },
            19 => c.save_every = if none { 0 } else { num(t, name)? },
            20 => c.early_stopping = if none { None } else { Some(pos(t, name)?) },
            22 => c.limit = if none { None } else { Some(pos(t, name)?) },
            23 => c.seed = num(t, name)?,
            24 => {
                c.time_budget_s = if none {
                    None
                } else {
                    Some(
                        crate::engine::train::parse_duration(t)
                            .map_err(|e| format!("{name}: {e}"))?,
                    )
                }
            }
            25 => {
                c.lora.layers_to_transform = if none || t == "all" {
                    None
                } else {
                    Some(crate::model::adapter::parse_layers(t).map_err(|e| e.to_string())?)
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Toggles or cycles a boolean / choice field; false when the field takes text.
    pub fn toggle(&mut self, i: usize) -> bool {
        let c = &mut self.cfg;
        match i {
            2 => self.apply_labels = !self.apply_labels,
            3 => c.full = !c.full,
            13 => {
                c.schedule = match c.schedule {
                    Schedule::Constant => Schedule::Linear,
                    Schedule::Linear => Schedule::Cosine,
                    Schedule::Cosine => Schedule::Constant,
                }
            }
            21 => c.answer_fields = !c.answer_fields,
            26 => c.anonymize_speakers = !c.anonymize_speakers,
            _ => return false,
        }
        true
    }

    /// Runs whose curves the runs view overlays.
    pub fn shown_runs(&self) -> Vec<&RunInfo> {
        if self.shown.is_empty() {
            let n = self.runs.len();
            self.runs.iter().skip(n.saturating_sub(4)).collect()
        } else {
            self.runs
                .iter()
                .filter(|r| self.shown.contains(&r.id))
                .collect()
        }
    }
}

impl App {
    pub(super) fn train_load_runs(&mut self) {
        let ids = self.session.list_runs().unwrap_or_default();
        let runs_dir = self.session.runs_dir();
        let mut runs = Vec::new();
        for id in &ids {
            let dir = runs_dir.join(id);
            // a recipe search: its trials, each a run of its own
            let trials = dir.join("trials");
            if trials.is_dir() {
                let mut names: Vec<String> = std::fs::read_dir(&trials)
                    .map(|rd| {
                        rd.flatten()
                            .filter(|e| e.path().is_dir())
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                names.sort();
                for n in names {
                    runs.push(RunInfo::load(&format!("{id}/{n}"), &trials.join(&n)));
                }
            } else {
                runs.push(RunInfo::load(id, &dir));
            }
        }
        self.train.runs = runs;
        self.train.run_sel = self
            .train
            .run_sel
            .min(self.train.runs.len().saturating_sub(1));
    }

    /// The model the run uses when the field is empty: the first loaded base model, else
    /// the Models pane's selection.
    pub fn train_default_model(&self) -> Option<String> {
        self.slots
            .iter()
            .find(|s| s.adapter.is_none())
            .map(|s| s.spec.clone())
            .or_else(|| {
                self.selected_model()
                    .filter(|m| m.problem.is_none())
                    .map(|m| m.path.display().to_string())
            })
    }

    pub(super) fn train_on_event(&mut self, e: TrainEvent) {
        let live = &mut self.train.live;
        match e {
            TrainEvent::Started {
                run_dir,
                total_steps,
                start_step,
                train_samples,
                val_samples,
                estimate_mib,
            } => {
                live.active = true;
                live.run_dir = Some(run_dir);
                live.total_steps = total_steps;
                live.start_step = start_step;
                live.train_samples = train_samples;
                live.val_samples = val_samples;
                live.estimate_mib = estimate_mib;
                live.log(format!(
                    "started: {total_steps} steps, {train_samples} training / {val_samples} validation samples, about {:.0} MiB",
                    estimate_mib
                ));
            }
            TrainEvent::Step(m) => live.push_step(m),
            TrainEvent::Planned(p) => {
                live.total_steps = p.total_steps;
            }
            TrainEvent::Eval {
                step,
                eval_loss,
                best,
            } => {
                if live.eval.last().is_none_or(|p| p.0 != step as f64) {
                    live.eval.push((step as f64, eval_loss));
                }
                live.log(format!(
                    "step {step}: validation loss {eval_loss:.4}{}",
                    if best { " (best)" } else { "" }
                ));
            }
            TrainEvent::Checkpoint { step, path } => {
                live.log(format!("step {step}: checkpoint {}", path.display()))
            }
            TrainEvent::Paused { step } => {
                live.paused = true;
                live.log(format!("paused at step {step}"));
            }
            TrainEvent::Resumed { step } => {
                live.paused = false;
                live.log(format!("resumed at step {step}"));
            }
            TrainEvent::Log(s) => live.log(s),
            TrainEvent::Finished(s) => {
                live.active = false;
                live.paused = false;
                let text = format!(
                    "training {}: {} steps, final loss {}, output in {}",
                    s.end,
                    s.steps,
                    s.final_loss.map(short_float).unwrap_or_else(|| "–".into()),
                    s.output_dir.display()
                );
                live.log(text.clone());
                live.summary = Some(s);
                self.train.stop_requested = false;
                self.train.pause_requested = false;
                self.ok(text);
                self.train_load_runs();
            }
        }
    }

    pub(super) fn train_on_error(&mut self, message: &str) {
        if !self.train.live.active {
            return;
        }
        let live = &mut self.train.live;
        live.active = false;
        live.paused = false;
        live.error = Some(message.to_string());
        live.log(format!("failed: {message}"));
        self.train.stop_requested = false;
        self.train.pause_requested = false;
        self.train_load_runs();
    }
}
