//! Eval pane: dataset, models and adapters, mode and limit; a progress bar; metrics side by
//! side; the confusion matrix and ROC curve at a threshold moved with the arrow keys; the
//! mistakes, each one Enter away from the Data pane.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Axis, Cell, Chart, Dataset, Gauge, GraphType, LegendPosition, Paragraph, Row, Table, Wrap,
};
use ratatui::Frame;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::app::{adapter_label, spec_name, Action, App, InputPurpose, PickPurpose, Tab};
use super::keys::{self, plain, strings};
use super::theme;
use super::widgets::{one_line, truncate};
use crate::data::metrics::{self, EvalRow, Metrics};
use crate::engine::eval::{EvalConfig, EvalMode, EvalResult, EvalTarget, Prediction};
use crate::engine::Command;

/// One model's result with its curve and mistakes at the current threshold.
#[derive(Debug, Clone)]
pub struct EvalView {
    pub result: EvalResult,
    pub name: String,
    pub rows: Vec<EvalRow>,
    pub roc: Vec<(f64, f64)>,
    pub at: Metrics,
    /// Indices into `result.predictions`.
    pub mistakes: Vec<usize>,
}

impl EvalView {
    pub fn new(result: EvalResult, threshold: f64) -> Self {
        let rows: Vec<EvalRow> = result
            .predictions
            .iter()
            .map(crate::engine::eval::Prediction::row)
            .collect();
        let roc = metrics::roc_curve(&rows)
            .iter()
            .map(|p| (p.fpr, p.tpr))
            .collect();
        let name = match &result.adapter {
            Some(a) => format!("{} + {}", spec_name(&result.model), adapter_label(a)),
            None => spec_name(&result.model),
        };
        let mut v = EvalView {
            result,
            name,
            rows,
            roc,
            at: Metrics::default(),
            mistakes: Vec::new(),
        };
        v.set_threshold(threshold);
        v
    }

    pub fn set_threshold(&mut self, t: f64) {
        if self.rows.is_empty() {
            // results restored without predictions: the saved metrics
            self.at = self.result.metrics.clone();
            self.mistakes.clear();
            return;
        }
        self.at = metrics::at_threshold(&self.rows, t);
        self.mistakes = self
            .result
            .predictions
            .iter()
            .enumerate()
            .filter(|(_, p)| predicted_at(p, t) != p.label)
            .map(|(i, _)| i)
            .collect();
    }

    pub fn has_scores(&self) -> bool {
        !self.roc.is_empty()
    }
}

fn predicted_at(p: &Prediction, t: f64) -> bool {
    match p.probability.filter(|x| x.is_finite()) {
        Some(x) => x >= t,
        None => p.predicted.unwrap_or(false),
    }
}

#[derive(Debug)]
pub struct EvalPane {
    pub data: Option<PathBuf>,
    pub mode: EvalMode,
    pub limit: Option<usize>,
    /// Chosen (model spec, adapter) pairs; empty: every loaded model.
    pub chosen: Vec<(String, Option<PathBuf>)>,
    pub running: bool,
    pub started: Option<Instant>,
    /// (model, done, total)
    pub progress: (String, usize, usize),
    pub results: Vec<EvalView>,
    pub result_sel: usize,
    pub threshold: f64,
    pub mistake_sel: usize,
    pub eval_id: Option<String>,
    /// The file the shown results were computed on (a copy with hand labels, or the dataset).
    pub results_data: Option<PathBuf>,
    /// The dataset to open for a mistake (the dataset the copy was made from).
    pub source_data: Option<PathBuf>,
    /// id → first turn, for the mistakes list.
    pub previews: HashMap<String, String>,
    /// id → dialogue text of the evaluated samples (finds a sample whose id changed with
    /// its hand label).
    pub texts: HashMap<String, String>,
    pub error: Option<String>,
}

impl Default for EvalPane {
    fn default() -> Self {
        Self {
            data: None,
            mode: EvalMode::Score,
            limit: None,
            chosen: Vec::new(),
            running: false,
            started: None,
            progress: (String::new(), 0, 0),
            results: Vec::new(),
            result_sel: 0,
            threshold: 0.5,
            mistake_sel: 0,
            eval_id: None,
            results_data: None,
            source_data: None,
            previews: HashMap::new(),
            texts: HashMap::new(),
            error: None,
        }
    }
}

impl EvalPane {
    pub fn restore(&mut self, v: Option<&Value>) {
        let Some(v) = v else { return };
        if let Some(m) = v["mode"].as_str().and_then(|m| m.parse().ok()) {
            self.mode = m;
        }
        self.limit = v["limit"].as_u64().map(|x| x as usize);
        self.data = v["data"].as_str().map(PathBuf::from);
        if let Some(a) = v["chosen"].as_array() {
            self.chosen = a
                .iter()
                .filter_map(|t| {
                    Some((
                        t["model"].as_str()?.to_string(),
                        t["adapter"].as_str().map(PathBuf::from),
                    ))
                })
                .collect();
        }
    }

    pub fn to_settings(&self) -> Value {
        let chosen: Vec<Value> = self
            .chosen
            .iter()
            .map(|(m, a)| json!({"model": m, "adapter": a}))
            .collect();
        json!({"mode": self.mode, "limit": self.limit, "data": self.data, "chosen": chosen})
    }

    pub fn set_threshold(&mut self, t: f64) {
        self.threshold = (t.clamp(0.0, 1.0) * 1000.0).round() / 1000.0;
        for v in &mut self.results {
            v.set_threshold(self.threshold);
        }
        let n = self.current().map(|v| v.mistakes.len()).unwrap_or(0);
        self.mistake_sel = self.mistake_sel.min(n.saturating_sub(1));
    }

    pub fn current(&self) -> Option<&EvalView> {
        self.results.get(self.result_sel)
    }
}

fn target_key(spec: &str, adapter: Option<&Path>) -> String {
    format!(
        "{spec}\t{}",
        adapter.map(|a| a.display().to_string()).unwrap_or_default()
    )
}

fn parse_target_key(k: &str) -> (String, Option<PathBuf>) {
    let (s, a) = k.split_once('\t').unwrap_or((k, ""));
    (s.to_string(), (!a.is_empty()).then(|| PathBuf::from(a)))
}

impl App {
    /// Models and adapters that can be evaluated: loaded models, and every run's adapter on
    /// its base model.
    pub fn eval_options(&self) -> Vec<(String, Option<PathBuf>, String)> {
        let mut v: Vec<(String, Option<PathBuf>, String)> = Vec::new();
        for s in &self.slots {
            v.push((s.spec.clone(), s.adapter.clone(), s.label()));
        }
        for r in self.train.runs.iter().rev() {
            if let (true, Some(c)) = (r.has_adapter(), &r.config) {
                let a = r.dir.join("adapter");
                if !v
                    .iter()
                    .any(|(s, ad, _)| *s == c.model && ad.as_deref() == Some(a.as_path()))
                {
                    v.push((
                        c.model.clone(),
                        Some(a),
                        format!("{} + adapter {}", spec_name(&c.model), r.id),
                    ));
                }
            }
        }
        v
    }

    /// The targets a run would use now.
    pub fn eval_targets(&self) -> Vec<(String, Option<PathBuf>)> {
        if self.eval.chosen.is_empty() {
            self.slots
                .iter()
                .map(|s| (s.spec.clone(), s.adapter.clone()))
                .collect()
        } else {
            self.eval.chosen.clone()
        }
    }

    pub fn eval_dataset(&self) -> Option<PathBuf> {
        self.eval.data.clone().or_else(|| self.data.path.clone())
    }

    pub(super) fn eval_key(&mut self, key: &KeyEvent, out: &mut Vec<Action>) -> bool {
        let fine = key.modifiers.contains(KeyModifiers::SHIFT);
        let step = if fine { 0.01 } else { 0.05 };
        let nm = self.eval.current().map(|v| v.mistakes.len()).unwrap_or(0);
        match key.code {
            KeyCode::Left => self.eval.set_threshold(self.eval.threshold - step),
            KeyCode::Right => self.eval.set_threshold(self.eval.threshold + step),
            KeyCode::Enter => self.eval_open_mistake(),
            KeyCode::PageDown => {
                self.eval.mistake_sel = (self.eval.mistake_sel + 10).min(nm.saturating_sub(1))
            }
            KeyCode::PageUp => self.eval.mistake_sel = self.eval.mistake_sel.saturating_sub(10),
            _ if keys::is_down(key) => {
                self.eval.mistake_sel = (self.eval.mistake_sel + 1).min(nm.saturating_sub(1))
            }
            _ if keys::is_up(key) => {
                self.eval.mistake_sel = self.eval.mistake_sel.saturating_sub(1)
            }
            _ => match plain(key) {
                Some('s') => self.eval_start(out),
                Some('m') => {
                    self.eval.mode = match self.eval.mode {
                        EvalMode::Score => EvalMode::Generate,
                        EvalMode::Generate => EvalMode::Stream,
                        EvalMode::Stream => EvalMode::Score,
                    };
                    self.save_session();
                }
                Some('l') => {
                    let cur = self.eval.limit.map(|l| l.to_string()).unwrap_or_default();
                    self.open_input(strings::EVAL_LIMIT_TITLE, &cur, InputPurpose::EvalLimit);
                }
                Some('o') => {
                    let cur = self
                        .eval
                        .data
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default();
                    self.open_input(strings::EVAL_DATA_TITLE, &cur, InputPurpose::EvalData);
                }
                Some('t') => self.eval_pick_targets(),
                Some('[') => {
                    self.eval.result_sel = self.eval.result_sel.saturating_sub(1);
                    self.eval.mistake_sel = 0;
                }
                Some(']') => {
                    self.eval.result_sel =
                        (self.eval.result_sel + 1).min(self.eval.results.len().saturating_sub(1));
                    self.eval.mistake_sel = 0;
                }
                Some('<') | Some(',') => self.eval.set_threshold(self.eval.threshold - 0.01),
                Some('>') | Some('.') => self.eval.set_threshold(self.eval.threshold + 0.01),
                _ => return false,
            },
        }
        true
    }

    fn eval_pick_targets(&mut self) {
        let opts = self.eval_options();
        if opts.is_empty() {
            self.warn(strings::EVAL_NEEDS_TARGET);
            return;
        }
        let current = self.eval_targets();
        let checked = opts
            .iter()
            .map(|(s, a, _)| current.iter().any(|(cs, ca)| cs == s && ca == a))
            .collect();
        let items = opts.iter().map(|o| o.2.clone()).collect();
        let values = opts
            .iter()
            .map(|(s, a, _)| target_key(s, a.as_deref()))
            .collect();
        self.open_picker(
            strings::TARGETS_TITLE,
            items,
            values,
            Some(checked),
            PickPurpose::EvalTargets,
        );
    }

    pub(super) fn eval_set_targets(&mut self, chosen: Vec<String>) {
        self.eval.chosen = chosen.iter().map(|k| parse_target_key(k)).collect();
        self.save_session();
    }

    pub(super) fn eval_set_limit(&mut self, text: &str) {
        if text.is_empty() || text == "all" {
            self.eval.limit = None;
        } else {
            match text.parse::<usize>() {
                Ok(n) if n > 0 => self.eval.limit = Some(n),
                _ => {
                    self.error(format!("limit: `{text}` is not a whole number > 0"));
                    return;
                }
            }
        }
        self.save_session();
    }

    pub(super) fn eval_set_data(&mut self, text: &str) {
        if text.is_empty() {
            self.eval.data = None;
        } else {
            let p = PathBuf::from(text);
            if !p.exists() {
                self.error(format!("{}: no such file", p.display()));
                return;
            }
            self.eval.data = Some(p);
        }
        self.save_session();
    }

    pub fn eval_start(&mut self, out: &mut Vec<Action>) {
        if self.eval.running || self.engine_evaluating {
            self.warn("an evaluation is running (Esc cancels it)");
            return;
        }
        let Some(data) = self.eval_dataset() else {
            self.warn(strings::EVAL_NEEDS_DATA);
            return;
        };
        let targets = self.eval_targets();
        if targets.is_empty() {
            self.warn(strings::EVAL_NEEDS_TARGET);
            return;
        }
        let id = match self.session.new_eval_id() {
            Ok(id) => id,
            Err(e) => {
                self.error(format!("cannot create the eval folder: {e:#}"));
                return;
            }
        };
        let dir = self.session.eval_dir(&id);
        let mut eval_data = data.clone();
        match self.write_labelled_copy(&data, &dir.join(super::train::LABELLED_COPY)) {
            Ok(Some(n)) => {
                eval_data = dir.join(super::train::LABELLED_COPY);
                self.info(format!("{n} hand label(s) applied for this evaluation"));
            }
            Ok(None) => {}
            Err(e) => {
                self.error(format!("cannot apply the hand labels: {e:#}"));
                return;
            }
        }
        let cfg = EvalConfig {
            targets: targets
                .into_iter()
                .map(|(model, adapter)| EvalTarget { model, adapter })
                .collect(),
            data: eval_data.clone(),
            limit: self.eval.limit,
            mode: self.eval.mode,
            out_dir: Some(dir),
            ..Default::default()
        };
        self.eval.running = true;
        self.eval.started = Some(Instant::now());
        self.eval.progress = (String::new(), 0, 0);
        self.eval.eval_id = Some(id.clone());
        self.eval.error = None;
        self.eval.results_data = Some(eval_data);
        self.eval.source_data = Some(data);
        out.push(Action::Engine(Command::Evaluate(Box::new(cfg))));
        if self.engine_busy() {
            self.warn(strings::ENGINE_BUSY_QUEUED);
        } else {
            self.info(format!("evaluation {id} starting…"));
        }
        self.save_session();
    }

    pub(super) fn eval_on_progress(&mut self, model: String, done: usize, total: usize) {
        self.eval.progress = (model, done, total);
    }

    pub(super) fn eval_on_done(&mut self, results: Vec<EvalResult>) {
        self.eval.running = false;
        let t = self.eval.threshold;
        self.eval.results = results.into_iter().map(|r| EvalView::new(r, t)).collect();
        self.eval.result_sel = 0;
        self.eval.mistake_sel = 0;
        self.eval_build_previews();
        let best = self
            .eval
            .results
            .iter()
            .map(|v| format!("{} F1 {:.3}", v.name, v.at.f1))
            .collect::<Vec<_>>()
            .join(", ");
        self.ok(format!("evaluation done: {best}"));
    }

    pub(super) fn eval_on_error(&mut self, message: &str) {
        if self.eval.running {
            self.eval.running = false;
            self.eval.error = Some(message.to_string());
        }
    }

    fn eval_build_previews(&mut self) {
        self.eval.previews.clear();
        self.eval.texts.clear();
        let Some(p) = self.eval.results_data.clone() else {
            return;
        };
        if self.data.path.as_deref() == Some(p.as_path()) {
            for (s, pr) in self.data.samples.iter().zip(&self.data.previews) {
                self.eval.previews.insert(s.id.clone(), pr.clone());
            }
        } else if let Ok(r) = crate::data::load(&p) {
            for s in &r.samples {
                let first = s
                    .dialogue_text()
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty())
                    .unwrap_or("");
                self.eval
                    .previews
                    .insert(s.id.clone(), truncate(&one_line(first), 120));
                self.eval
                    .texts
                    .insert(s.id.clone(), s.dialogue_text().to_string());
            }
        }
    }

    /// Shows the newest saved evaluation of the session.
    pub fn eval_load_latest(&mut self) {
        let Ok(ids) = self.session.list_evals() else {
            return;
        };
        for id in ids.iter().rev() {
            let dir = self.session.eval_dir(id);
            if let Some((cfg, results)) = read_eval_dir(&dir) {
                let t = self.eval.threshold;
                self.eval.results = results.into_iter().map(|r| EvalView::new(r, t)).collect();
                self.eval.eval_id = Some(id.clone());
                let is_copy = cfg
                    .data
                    .file_name()
                    .is_some_and(|n| n == super::train::LABELLED_COPY);
                self.eval.source_data = if is_copy {
                    self.data.path.clone()
                } else {
                    Some(cfg.data.clone())
                };
                self.eval.results_data = Some(cfg.data);
                self.eval_build_previews();
                return;
            }
        }
    }

    fn eval_open_mistake(&mut self) {
        let Some(v) = self.eval.current() else { return };
        let Some(&i) = v.mistakes.get(self.eval.mistake_sel) else {
            return;
        };
        let mut id = v.result.predictions[i].id.clone();
        let Some(data) = self
            .eval
            .source_data
            .clone()
            .or_else(|| self.eval.results_data.clone())
        else {
            return;
        };
        if self.data.path.as_deref() != Some(data.as_path()) {
            self.open_dataset(&data);
        }
        if !self.data.samples.iter().any(|s| s.id == id) {
            // the evaluated copy carries hand labels, which change ids: find it by its text
            if let Some(t) = self.eval.texts.get(&id) {
                if let Some(s) = self.data.samples.iter().find(|s| s.dialogue_text() == t) {
                    id = s.id.clone();
                }
            }
        }
        if self.data.select_id(&id) {
            self.data.detail = true;
            self.data.stats_view = false;
            self.tab = Tab::Data;
        } else {
            self.error(format!("sample {id} is not in {}", data.display()));
        }
    }
}

/// Reads `evals/<id>/`: config.json, metrics.json and predictions.jsonl.
pub fn read_eval_dir(dir: &Path) -> Option<(EvalConfig, Vec<EvalResult>)> {
    let cfg: EvalConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).ok()?).ok()?;
    let mut results: Vec<EvalResult> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).ok()?).ok()?;
    if let Ok(text) = std::fs::read_to_string(dir.join("predictions.jsonl")) {
        for l in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(l) else {
                continue;
            };
            let Ok(p) = serde_json::from_value::<Prediction>(v.clone()) else {
                continue;
            };
            let model = v["model"].as_str().unwrap_or("");
            let adapter = v["adapter"].as_str().map(PathBuf::from);
            if let Some(r) = results
                .iter_mut()
                .find(|r| r.model == model && r.adapter == adapter)
            {
                r.predictions.push(p);
            }
        }
    }
    Some((cfg, results))
}

// ---------------------------------------------------------------- drawing

mod view;
pub use view::draw;
