//! Train pane: the run's settings (recipe defaults), start / pause / resume / stop, live
//! charts of training and validation loss and of the learning rate, throughput and ETA,
//! recent log lines, and the session's past runs with their loss curves overlaid.

use crossterm::event::{KeyCode, KeyEvent};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Axis, Cell, Chart, Dataset, GraphType, LegendPosition, Paragraph, Row, Table, Wrap,
};
use ratatui::Frame;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::app::{spec_name, Action, App, InputPurpose, PickPurpose};
use super::keys::{self, plain, strings};
use super::theme;
use super::widgets::{human_secs, short_float, truncate};
use crate::engine::train::{Schedule, StepMetrics, TrainConfig, TrainEvent, TrainSummary};
use crate::engine::Command;

/// The settings form, top to bottom.
pub const FIELDS: [&str; 24] = [
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
        self.train.runs = ids
            .iter()
            .map(|id| RunInfo::load(id, &runs_dir.join(id)))
            .collect();
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

    pub(super) fn train_key(&mut self, key: &KeyEvent, out: &mut Vec<Action>) -> bool {
        if self.train.view == TrainView::Runs {
            let n = self.train.runs.len();
            match key.code {
                KeyCode::Char(' ') => {
                    if let Some(r) = self.train.runs.get(self.train.run_sel) {
                        let id = r.id.clone();
                        if self.train.shown.is_empty() {
                            self.train.shown = self
                                .train
                                .shown_runs()
                                .iter()
                                .map(|r| r.id.clone())
                                .collect();
                        }
                        if !self.train.shown.remove(&id) {
                            self.train.shown.insert(id);
                        }
                    }
                    return true;
                }
                KeyCode::Enter => {
                    self.train_load_run_adapter(out);
                    return true;
                }
                _ if keys::is_down(key) => {
                    self.train.run_sel = (self.train.run_sel + 1).min(n.saturating_sub(1));
                    return true;
                }
                _ if keys::is_up(key) => {
                    self.train.run_sel = self.train.run_sel.saturating_sub(1);
                    return true;
                }
                _ => {}
            }
        } else {
            let f = self.train.field;
            match key.code {
                KeyCode::Enter | KeyCode::Char(' ') => {
                    self.train_edit_field(f);
                    return true;
                }
                _ if keys::is_down(key) => {
                    self.train.field = (f + 1).min(FIELDS.len() - 1);
                    return true;
                }
                _ if keys::is_up(key) => {
                    self.train.field = f.saturating_sub(1);
                    return true;
                }
                KeyCode::PageDown => {
                    self.train.field = (f + 8).min(FIELDS.len() - 1);
                    return true;
                }
                KeyCode::PageUp => {
                    self.train.field = f.saturating_sub(8);
                    return true;
                }
                _ => {}
            }
        }
        match plain(key) {
            Some('s') => self.train_start(out),
            Some('p') => self.train_pause_resume(out),
            Some('x') if self.train.live.active => {
                out.push(Action::StopTraining);
                self.train.stop_requested = true;
                self.warn("stopping after this step (a checkpoint and the adapter are written)…");
            }
            Some('v') => {
                self.train.view = match self.train.view {
                    TrainView::Live => TrainView::Runs,
                    TrainView::Runs => TrainView::Live,
                };
                if self.train.view == TrainView::Runs {
                    self.train_load_runs();
                }
            }
            Some('D') => {
                self.train.cfg = TrainConfig::default();
                self.train.apply_labels = true;
                self.info("settings reset to the recipe defaults");
                self.save_session();
            }
            _ => return false,
        }
        true
    }

    fn train_edit_field(&mut self, f: usize) {
        if self.train.toggle(f) {
            self.save_session();
            return;
        }
        if f == 0 {
            let mut values: Vec<String> = self
                .slots
                .iter()
                .filter(|s| s.adapter.is_none())
                .map(|s| s.spec.clone())
                .collect();
            for m in &self.models.list {
                let p = m.path.display().to_string();
                if m.problem.is_none() && !values.contains(&p) {
                    values.push(p);
                }
            }
            if values.is_empty() {
                self.warn(strings::TRAIN_NEEDS_MODEL);
                return;
            }
            let items = values
                .iter()
                .map(|v| {
                    let loaded = self.slots.iter().any(|s| &s.spec == v);
                    format!("{}{}", spec_name(v), if loaded { "  (loaded)" } else { "" })
                })
                .collect();
            self.open_picker(
                "Model to fine-tune",
                items,
                values,
                None,
                PickPurpose::TrainModel,
            );
            return;
        }
        let cur = match f {
            1 => self.train.cfg.data.display().to_string(),
            7 => format!("{}", self.train.cfg.lr),
            _ => {
                let t = self.train.field_text(f, None, None);
                if t == "none" || t == "each epoch" || t == "at the end" {
                    String::new()
                } else {
                    t
                }
            }
        };
        let title = match f {
            1 => "Training data file (empty: the Data pane's dataset)".to_string(),
            9 | 20 | 22 => format!("{} (empty: none)", FIELDS[f]),
            18 | 19 => format!(
                "{} (0: {})",
                FIELDS[f],
                if f == 18 { "each epoch" } else { "at the end" }
            ),
            13 => "schedule: constant, linear or cosine".into(),
            _ => FIELDS[f].to_string(),
        };
        self.open_input(title, &cur, InputPurpose::TrainField(f));
    }

    pub(super) fn train_set_field(&mut self, f: usize, text: &str) {
        match self.train.set_field(f, text) {
            Ok(()) => self.save_session(),
            Err(e) => self.error(e),
        }
    }

    fn train_pause_resume(&mut self, out: &mut Vec<Action>) {
        if !self.train.live.active {
            self.info("no run is going");
            return;
        }
        if self.train.live.paused || self.train.pause_requested {
            out.push(Action::ResumeTraining);
            self.train.pause_requested = false;
            self.info("resuming…");
        } else {
            out.push(Action::PauseTraining);
            self.train.pause_requested = true;
            self.info("pausing after this step…");
        }
    }

    /// Starts a run with the form's settings in a new `runs/<id>/` of the session.
    pub fn train_start(&mut self, out: &mut Vec<Action>) {
        if self.train.live.active {
            self.warn(strings::TRAIN_ALREADY);
            return;
        }
        let mut cfg = self.train.cfg.clone();
        if cfg.model.is_empty() {
            match self.train_default_model() {
                Some(m) => cfg.model = m,
                None => {
                    self.warn(strings::TRAIN_NEEDS_MODEL);
                    return;
                }
            }
        }
        if cfg.data.as_os_str().is_empty() {
            match &self.data.path {
                Some(p) => cfg.data = p.clone(),
                None => {
                    self.warn(strings::TRAIN_NEEDS_DATA);
                    return;
                }
            }
        }
        if !cfg.data.exists() {
            self.error(format!("{}: no such file", cfg.data.display()));
            return;
        }
        let id = match self.session.new_run_id() {
            Ok(id) => id,
            Err(e) => {
                self.error(format!("cannot create the run folder: {e:#}"));
                return;
            }
        };
        let dir = self.session.run_dir(&id);
        cfg.out_dir = dir.clone();
        cfg.resume = false;
        let mut live = LiveRun {
            active: true,
            id: Some(id.clone()),
            run_dir: Some(dir.clone()),
            ..Default::default()
        };
        if self.train.apply_labels {
            match self.labelled_copy(&cfg.data, &dir) {
                Ok(Some((p, n))) => {
                    live.log(format!(
                        "applied {n} hand label(s): training on {}",
                        p.display()
                    ));
                    cfg.data = p;
                }
                Ok(None) => {}
                Err(e) => {
                    self.error(format!("cannot apply the hand labels: {e:#}"));
                    let _ = std::fs::remove_dir(&dir);
                    return;
                }
            }
        }
        live.log(format!(
            "run {id}: {} on {}",
            spec_name(&cfg.model),
            cfg.data.display()
        ));
        self.train.live = live;
        self.train.stop_requested = false;
        self.train.pause_requested = false;
        self.train.view = TrainView::Live;
        out.push(Action::Engine(Command::Train(Box::new(cfg))));
        if self.engine_busy() {
            self.warn(strings::ENGINE_BUSY_QUEUED);
        } else {
            self.info(format!("training run {id} starting…"));
        }
        self.save_session();
    }

    /// With hand labels in the session's journal for `data`: the dataset with those labels
    /// applied, written to `<run>/data-with-labels.jsonl` (fraud format).
    fn labelled_copy(
        &self,
        data: &Path,
        run_dir: &Path,
    ) -> anyhow::Result<Option<(PathBuf, usize)>> {
        let out = run_dir.join(LABELLED_COPY);
        Ok(self.write_labelled_copy(data, &out)?.map(|n| (out, n)))
    }

    fn train_load_run_adapter(&mut self, out: &mut Vec<Action>) {
        let Some(r) = self.train.runs.get(self.train.run_sel) else {
            return;
        };
        if !r.has_adapter() {
            self.info("this run has no adapter (still running, stopped before writing it, or full fine-tuning)");
            return;
        }
        let Some(cfg) = &r.config else {
            self.error("the run has no readable config.json");
            return;
        };
        let (spec, adapter) = (cfg.model.clone(), r.dir.join("adapter"));
        self.load_model(spec, Some(adapter), out);
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

// ---------------------------------------------------------------- drawing

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    let left_w = 38.min(area.width / 2);
    let [left, right] =
        Layout::horizontal([Constraint::Length(left_w), Constraint::Fill(1)]).areas(area);
    draw_form(f, left, app);
    match app.train.view {
        TrainView::Live => draw_live(f, right, app),
        TrainView::Runs => draw_runs(f, right, app),
    }
}

fn draw_form(f: &mut Frame, area: Rect, app: &App) {
    let t = &app.train;
    let focus = t.view == TrainView::Live;
    let block = theme::block(strings::TRAIN_FORM_TITLE, focus);
    let inner = block.inner(area);
    f.render_widget(block, area);
    let h = inner.height as usize;
    let off = if h == 0 {
        0
    } else {
        t.field.saturating_sub(h.saturating_sub(1))
    };
    let name_w = 15;
    let val_w = (inner.width as usize).saturating_sub(name_w + 1);
    let data_default = app.data.path.as_deref();
    let model_default = app.train_default_model();
    let lines: Vec<Line> = FIELDS
        .iter()
        .enumerate()
        .skip(off)
        .take(h)
        .map(|(i, name)| {
            let v = t.field_text(i, data_default, model_default.as_deref());
            let sel = i == t.field && focus;
            let ns = if sel { theme::focused() } else { theme::dim() };
            let vs = if sel { theme::focused() } else { Style::new() };
            Line::from(vec![
                Span::styled(format!("{name:<name_w$}"), ns),
                Span::raw(" "),
                Span::styled(truncate(&v, val_w), vs),
            ])
        })
        .collect();
    f.render_widget(Paragraph::new(lines), inner);
}

/// y bounds with a margin; `[0, 1]` when empty.
fn y_bounds<'a>(series: impl Iterator<Item = &'a [(f64, f64)]>) -> [f64; 2] {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for s in series {
        for &(_, y) in s {
            if y.is_finite() {
                lo = lo.min(y);
                hi = hi.max(y);
            }
        }
    }
    if !lo.is_finite() {
        return [0.0, 1.0];
    }
    if hi - lo < 1e-12 {
        let d = if hi.abs() > 0.0 { hi.abs() * 0.1 } else { 1.0 };
        return [lo - d, hi + d];
    }
    let pad = (hi - lo) * 0.05;
    [
        (lo - pad).max(if lo >= 0.0 { 0.0 } else { f64::NEG_INFINITY }),
        hi + pad,
    ]
}

fn axis_labels(b: [f64; 2]) -> Vec<Span<'static>> {
    let mid = (b[0] + b[1]) / 2.0;
    vec![
        Span::raw(short_float(b[0])),
        Span::raw(short_float(mid)),
        Span::raw(short_float(b[1])),
    ]
}

fn step_axis(max_step: f64) -> Axis<'static> {
    let m = max_step.max(1.0);
    Axis::default()
        .title("step")
        .style(theme::dim())
        .bounds([0.0, m])
        .labels(vec![
            Span::raw("0"),
            Span::raw(format!("{:.0}", m / 2.0)),
            Span::raw(format!("{m:.0}")),
        ])
}

fn draw_live(f: &mut Frame, area: Rect, app: &App) {
    let live = &app.train.live;
    let show_lr = area.height >= 18 && area.width >= 70;
    let log_h = if area.height >= 30 { 8 } else { 5 };
    let [charts, bottom, logs] = Layout::vertical([
        Constraint::Min(6),
        Constraint::Length(if show_lr { 8 } else { 5 }),
        Constraint::Length(log_h),
    ])
    .areas(area);
    let title = match (&live.id, live.active, live.paused) {
        (Some(id), true, true) => format!("{} {id} — paused", strings::TRAIN_LIVE_TITLE),
        (Some(id), true, false) => format!("{} {id}", strings::TRAIN_LIVE_TITLE),
        (Some(id), false, _) => format!(
            "{} {id} — {}",
            strings::TRAIN_LIVE_TITLE,
            live.summary
                .as_ref()
                .map(|s| s.end.as_str())
                .unwrap_or("ended")
        ),
        (None, _, _) => strings::TRAIN_LIVE_TITLE.to_string(),
    };
    if live.loss.is_empty() {
        let mut lines = vec![Line::from(if live.active {
            "waiting for the first step…"
        } else {
            strings::NO_RUN_YET
        })];
        if let Some(e) = &live.error {
            lines.push(Line::styled(format!("failed: {e}"), theme::err()));
        }
        f.render_widget(
            Paragraph::new(lines)
                .wrap(Wrap { trim: true })
                .block(theme::block(title, false)),
            charts,
        );
    } else {
        let max_step = (live.total_steps as f64).max(live.loss.last().map(|p| p.0).unwrap_or(1.0));
        let yb = y_bounds([live.loss.as_slice(), live.eval.as_slice()].into_iter());
        let mut ds = vec![Dataset::default()
            .name("train loss")
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::new().fg(theme::SERIES[0]))
            .data(&live.loss)];
        if !live.eval.is_empty() {
            ds.push(
                Dataset::default()
                    .name("eval loss")
                    .marker(Marker::Dot)
                    .graph_type(if live.eval.len() > 1 {
                        GraphType::Line
                    } else {
                        GraphType::Scatter
                    })
                    .style(Style::new().fg(theme::SERIES[1]))
                    .data(&live.eval),
            );
        }
        let chart = Chart::new(ds)
            .block(theme::block(title, false))
            .x_axis(step_axis(max_step))
            .y_axis(
                Axis::default()
                    .title("loss")
                    .style(theme::dim())
                    .bounds(yb)
                    .labels(axis_labels(yb)),
            )
            .legend_position(Some(LegendPosition::TopRight))
            .hidden_legend_constraints((Constraint::Ratio(1, 2), Constraint::Ratio(1, 2)));
        f.render_widget(chart, charts);
    }
    let stats_area = if show_lr {
        let [lr_a, st] =
            Layout::horizontal([Constraint::Fill(1), Constraint::Length(34)]).areas(bottom);
        let max_step = (live.total_steps as f64).max(live.lr.last().map(|p| p.0).unwrap_or(1.0));
        let top = live.lr.iter().map(|p| p.1).fold(app.train.cfg.lr, f64::max);
        let yb = [0.0, top * 1.05];
        let chart = Chart::new(vec![Dataset::default()
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::new().fg(theme::SERIES[2]))
            .data(&live.lr)])
        .block(theme::block("learning rate", false))
        .x_axis(step_axis(max_step))
        .y_axis(Axis::default().style(theme::dim()).bounds(yb).labels(vec![
            Span::raw(format!("{:.0e}", yb[0])),
            Span::raw(format!("{:.0e}", yb[1])),
        ]));
        f.render_widget(chart, lr_a);
        st
    } else {
        bottom
    };
    let mut lines = Vec::new();
    if let Some(m) = live.metrics.last() {
        lines.push(Line::from(vec![
            Span::styled("step ", theme::dim()),
            Span::raw(format!("{}/{}", m.step, m.total_steps)),
            Span::styled("  epoch ", theme::dim()),
            Span::raw(format!("{:.2}", m.epoch)),
        ]));
        lines.push(Line::from(vec![
            Span::styled("loss ", theme::dim()),
            Span::raw(format!("{:.4}", m.loss)),
            Span::styled("  lr ", theme::dim()),
            Span::raw(format!("{:.1e}", m.lr)),
        ]));
        lines.push(Line::from(vec![
            Span::styled("speed ", theme::dim()),
            Span::raw(format!(
                "{:.0} tok/s · {:.2} samples/s",
                m.tokens_per_s, m.samples_per_s
            )),
        ]));
        lines.push(Line::from(vec![
            Span::styled("elapsed ", theme::dim()),
            Span::raw(human_secs(m.elapsed_s)),
            Span::styled("  ETA ", theme::dim()),
            Span::raw(if live.active {
                human_secs(m.eta_s)
            } else {
                "–".into()
            }),
        ]));
        lines.push(Line::from(vec![
            Span::styled("grad norm ", theme::dim()),
            Span::raw(short_float(m.grad_norm)),
            Span::styled("  RSS ", theme::dim()),
            Span::raw(format!("{:.0} MiB", m.rss_mib)),
        ]));
        if let Some(e) = live.eval.last() {
            lines.push(Line::from(vec![
                Span::styled("eval loss ", theme::dim()),
                Span::raw(format!("{:.4} at step {}", e.1, e.0)),
            ]));
        }
    } else {
        lines.push(Line::styled(
            "s start · p pause/resume · x stop",
            theme::dim(),
        ));
    }
    f.render_widget(
        Paragraph::new(lines).block(theme::block("Progress", false)),
        stats_area,
    );
    let block = theme::block("Log", false);
    let inner = block.inner(logs);
    f.render_widget(block, logs);
    let h = inner.height as usize;
    let w = inner.width as usize;
    let lines: Vec<Line> = live
        .logs
        .iter()
        .skip(live.logs.len().saturating_sub(h))
        .map(|l| {
            let st = if l.starts_with("failed") {
                theme::err()
            } else {
                Style::new()
            };
            Line::styled(truncate(&super::widgets::one_line(l), w), st)
        })
        .collect();
    f.render_widget(Paragraph::new(lines), inner);
}

fn draw_runs(f: &mut Frame, area: Rect, app: &App) {
    let t = &app.train;
    if t.runs.is_empty() {
        f.render_widget(
            Paragraph::new(strings::NO_RUNS).block(theme::block(strings::TRAIN_RUNS_TITLE, true)),
            area,
        );
        return;
    }
    let table_h = (t.runs.len() as u16 + 3).min(area.height / 2).max(4);
    let [top, chart_a] =
        Layout::vertical([Constraint::Length(table_h), Constraint::Fill(1)]).areas(area);
    let shown: Vec<&RunInfo> = t.shown_runs();
    let visible = table_h.saturating_sub(3) as usize;
    let off = t.run_sel.saturating_sub(visible.saturating_sub(1));
    let rows: Vec<Row> = t
        .runs
        .iter()
        .enumerate()
        .skip(off)
        .take(visible.max(1))
        .map(|(i, r)| {
            let color_i = shown.iter().position(|s| s.id == r.id);
            let mark = match color_i {
                Some(c) => {
                    Span::styled("■", Style::new().fg(theme::SERIES[c % theme::SERIES.len()]))
                }
                None => Span::raw("□"),
            };
            let row = Row::new(vec![
                Cell::from(mark),
                Cell::from(r.id.clone()),
                Cell::from(r.model_name()),
                Cell::from(format!("{}/{}", r.steps(), r.total.max(r.steps()))),
                Cell::from(
                    r.loss
                        .last()
                        .map(|p| format!("{:.4}", p.1))
                        .unwrap_or_else(|| "–".into()),
                ),
                Cell::from(
                    r.summary
                        .as_ref()
                        .and_then(|s| s.best_eval_loss)
                        .map(|x| format!("{x:.4}"))
                        .unwrap_or_else(|| "–".into()),
                ),
                Cell::from(r.end()),
                Cell::from(if r.has_adapter() { "adapter" } else { "" }),
            ]);
            if i == t.run_sel {
                row.style(theme::selected())
            } else {
                row
            }
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Length(1),
            Constraint::Length(19),
            Constraint::Fill(1),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(12),
            Constraint::Length(7),
        ],
    )
    .header(
        Row::new(["", "run", "model", "steps", "loss", "best val", "end", ""])
            .style(theme::header()),
    )
    .block(theme::block(
        format!(
            "{} (Space overlay, Enter load adapter)",
            strings::TRAIN_RUNS_TITLE
        ),
        true,
    ));
    f.render_widget(table, top);
    let max_step = shown
        .iter()
        .flat_map(|r| r.loss.last().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let yb = y_bounds(shown.iter().map(|r| r.loss.as_slice()));
    let ds: Vec<Dataset> = shown
        .iter()
        .enumerate()
        .map(|(i, r)| {
            Dataset::default()
                .name(r.id.clone())
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(Style::new().fg(theme::SERIES[i % theme::SERIES.len()]))
                .data(&r.loss)
        })
        .collect();
    let chart = Chart::new(ds)
        .block(theme::block("training loss of the marked runs", false))
        .x_axis(step_axis(max_step))
        .y_axis(
            Axis::default()
                .title("loss")
                .style(theme::dim())
                .bounds(yb)
                .labels(axis_labels(yb)),
        )
        .legend_position(Some(LegendPosition::TopRight))
        .hidden_legend_constraints((Constraint::Ratio(1, 2), Constraint::Ratio(1, 2)));
    f.render_widget(chart, chart_a);
}
