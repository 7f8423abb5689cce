//! Probe pane: system and user prompt editors, sampling settings, every loaded model's
//! answer streamed side by side with time to first token and tokens/s, a JSON badge, the
//! session's probe history, and the capability suite (`data::suite`) as a pass/fail matrix.
//!
//! This file holds the pane's state (the editors, sampling settings, the current run and
//! suite run with each model's streamed output and graded results, the history), the JSON
//! badge, and the handlers for the engine's generation events (grading and saving the suite); the key handling and
//! the runs it starts are in `keys.rs`, the drawing in `view.rs`.

use ratatui::style::Style;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;

use super::app::App;
use super::keys::strings;
use super::theme;
use super::widgets::TextEditor;
use crate::data::suite::{self, Case, CaseResult, SuiteResults};
use crate::data::{parse_answer, DEFAULT_SYSTEM};
use crate::engine::generate::{Generation, SamplingParams};

mod keys;
mod view;

pub use view::draw;

/// The probe form, top to bottom.
pub const FIELDS: [&str; 7] = [
    "system",
    "prompt",
    "temperature",
    "top-k",
    "top-p",
    "max tokens",
    "seed",
];
const F_SYSTEM: usize = 0;
const F_PROMPT: usize = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeView {
    Outputs,
    History,
    Suite,
}

/// One model's answer to a probe, streaming or done.
#[derive(Debug, Clone)]
pub struct ModelOutput {
    pub key: String,
    pub label: String,
    pub text: String,
    pub pieces: usize,
    pub started: Instant,
    pub first_at: Option<Instant>,
    pub done: Option<Generation>,
    pub error: Option<String>,
    /// The engine ended the request before this model answered (cancelled).
    pub cancelled: bool,
}

impl ModelOutput {
    pub fn new(key: &str, label: &str) -> Self {
        Self {
            key: key.into(),
            label: label.into(),
            text: String::new(),
            pieces: 0,
            started: Instant::now(),
            first_at: None,
            done: None,
            error: None,
            cancelled: false,
        }
    }

    fn push(&mut self, piece: &str) {
        if self.first_at.is_none() {
            self.first_at = Some(Instant::now());
        }
        self.text.push_str(piece);
        self.pieces += 1;
    }

    pub fn finished(&self) -> bool {
        self.done.is_some() || self.error.is_some() || self.cancelled
    }

    /// Seconds to the first token and tokens/s (final figures once done, live estimates before).
    pub fn speed(&self) -> (Option<f64>, Option<f64>) {
        if let Some(g) = &self.done {
            return (Some(g.ttft_s), Some(g.decode_tok_s));
        }
        let ttft = self
            .first_at
            .map(|t| t.duration_since(self.started).as_secs_f64());
        let rate = self.first_at.and_then(|t| {
            let s = t.elapsed().as_secs_f64();
            (s > 0.05 && self.pieces > 1).then(|| (self.pieces - 1) as f64 / s)
        });
        (ttft, rate)
    }
}

#[derive(Debug, Clone)]
pub struct ProbeRun {
    pub request: u64,
    pub system: Option<String>,
    pub prompt: String,
    pub params: SamplingParams,
    pub outputs: Vec<ModelOutput>,
}

/// A probe from the session's probes.jsonl.
#[derive(Debug, Clone)]
pub struct HistoryItem {
    pub time: String,
    pub model: String,
    pub system: String,
    pub prompt: String,
    pub output: String,
    pub ttft_s: Option<f64>,
    pub tok_s: Option<f64>,
    pub suite: Option<String>,
}

impl HistoryItem {
    fn from_json(v: &Value) -> Option<Self> {
        Some(Self {
            // the workbench writes RFC 3339, the headless `probe` command unix seconds
            time: match &v["time"] {
                Value::String(s) => s.clone(),
                Value::Number(n) => n
                    .as_f64()
                    .map(crate::data::fsutil::rfc3339)
                    .unwrap_or_default(),
                _ => String::new(),
            },
            model: v["model"].as_str()?.to_string(),
            system: v["system"].as_str().unwrap_or("").to_string(),
            prompt: v["prompt"].as_str()?.to_string(),
            output: v["output"].as_str().unwrap_or("").to_string(),
            ttft_s: v["ttft_s"].as_f64(),
            tok_s: v["decode_tok_s"].as_f64(),
            suite: v["suite"].as_str().map(str::to_string),
        })
    }
}

/// A run of the capability suite (the session's `suite.jsonl`, else the built-in one) over
/// the loaded models: every case's streamed answers, and the graded results, which are saved
/// in the session once every answer is in.
#[derive(Debug, Clone)]
pub struct SuiteRun {
    /// Cases, models (columns) and the results graded so far.
    pub results: SuiteResults,
    /// The engine key of each model column.
    pub keys: Vec<String>,
    /// One request per case.
    pub requests: Vec<u64>,
    /// Per case, per model: the answer as it streams.
    pub cells: Vec<Vec<ModelOutput>>,
    /// Where the results were saved (`suites/<id>.json`).
    pub saved: Option<PathBuf>,
}

impl SuiteRun {
    /// A run about to start: one empty cell per case and model.
    pub fn new(results: SuiteResults, keys: Vec<String>, requests: Vec<u64>) -> Self {
        let cells = results
            .cases
            .iter()
            .map(|_| {
                keys.iter()
                    .zip(&results.models)
                    .map(|(k, m)| ModelOutput::new(k, &m.label))
                    .collect()
            })
            .collect();
        Self {
            results,
            keys,
            requests,
            cells,
            saved: None,
        }
    }

    /// A saved run, reopened with the session.
    pub fn reopened(results: SuiteResults, path: PathBuf) -> Self {
        let mut r = Self::new(results, Vec::new(), Vec::new());
        r.saved = Some(path);
        r
    }

    /// The graded result of case `i` for model column `j`, if in.
    pub fn result(&self, i: usize, j: usize) -> Option<&CaseResult> {
        let c = self.results.cases.get(i)?;
        let m = self.results.models.get(j)?;
        self.results.get(&c.name, &m.label)
    }

    /// Every answer is in (answered, failed or cancelled).
    pub fn finished(&self) -> bool {
        self.requests.is_empty() || self.cells.iter().flatten().all(ModelOutput::finished)
    }

    fn record(&mut self, i: usize, key: &str, r: impl FnOnce(&Case, &str) -> CaseResult) {
        let Some(j) = self.keys.iter().position(|k| k == key) else {
            return;
        };
        let (Some(case), Some(m)) = (self.results.cases.get(i), self.results.models.get(j)) else {
            return;
        };
        let res = r(case, &m.label);
        self.results
            .results
            .retain(|x| !(x.name == res.name && x.model == res.model));
        self.results.results.push(res);
    }
}

#[derive(Debug)]
pub struct ProbePane {
    pub system: TextEditor,
    pub user: TextEditor,
    pub params: SamplingParams,
    pub field: usize,
    pub editing: bool,
    pub view: ProbeView,
    pub run: Option<ProbeRun>,
    pub history: Vec<HistoryItem>,
    /// 0 = newest.
    pub history_sel: usize,
    pub suite: Option<SuiteRun>,
}

impl Default for ProbePane {
    fn default() -> Self {
        Self {
            system: TextEditor::new(DEFAULT_SYSTEM, true),
            user: TextEditor::new(strings::DEFAULT_PROMPT, true),
            params: SamplingParams::default(),
            field: F_PROMPT,
            editing: false,
            view: ProbeView::Outputs,
            run: None,
            history: Vec::new(),
            history_sel: 0,
            suite: None,
        }
    }
}

impl ProbePane {
    pub fn restore(&mut self, v: Option<&Value>) {
        let Some(v) = v else { return };
        if let Some(s) = v["system"].as_str() {
            self.system.set_text(s);
        }
        if let Some(s) = v["prompt"].as_str() {
            self.user.set_text(s);
        }
        if let Ok(p) = serde_json::from_value::<SamplingParams>(v["params"].clone()) {
            self.params = p;
        }
    }

    pub fn to_settings(&self) -> Value {
        json!({"system": self.system.text(), "prompt": self.user.text(), "params": self.params})
    }

    fn editor_mut(&mut self) -> &mut TextEditor {
        if self.field == F_SYSTEM {
            &mut self.system
        } else {
            &mut self.user
        }
    }

    /// The text of a sampling setting.
    pub fn setting_text(&self, field: usize) -> String {
        let p = &self.params;
        match field {
            2 => format!("{:.2}", p.temperature),
            3 => p
                .top_k
                .map(|k| k.to_string())
                .unwrap_or_else(|| "off".into()),
            4 => p
                .top_p
                .map(|x| format!("{x:.2}"))
                .unwrap_or_else(|| "off".into()),
            5 => p.max_tokens.to_string(),
            6 => p.seed.to_string(),
            _ => String::new(),
        }
    }

    /// Steps a sampling setting up (`dir` 1) or down (-1).
    pub fn adjust(&mut self, field: usize, dir: i64) {
        let p = &mut self.params;
        match field {
            2 => {
                p.temperature =
                    ((p.temperature + 0.1 * dir as f64).max(0.0) * 100.0).round() / 100.0
            }
            3 => {
                let k = p.top_k.unwrap_or(0) as i64 + 5 * dir;
                p.top_k = (k > 0).then_some(k as usize);
            }
            4 => {
                let x = p.top_p.unwrap_or(1.0) + 0.05 * dir as f64;
                p.top_p = (x < 0.999).then_some((x.max(0.05) * 100.0).round() / 100.0);
            }
            5 => p.max_tokens = (p.max_tokens as i64 + 32 * dir).clamp(1, 32768) as usize,
            6 => p.seed = (p.seed as i64 + dir).max(0) as u64,
            _ => {}
        }
    }
}

/// The JSON badge of an answer: parses as fraud JSON (with its verdict), JSON-ish but
/// broken, or plain text.
pub fn json_badge(text: &str) -> (String, Style) {
    if text.trim().is_empty() {
        return ("…".into(), theme::dim());
    }
    match parse_answer(text) {
        Some(a) => (format!("JSON ✓ is_fraud={}", a.is_fraud), theme::ok()),
        None if text.contains('{') => ("JSON ✗".into(), theme::err()),
        None => ("text".into(), theme::dim()),
    }
}

impl App {
    pub(super) fn probe_load_history(&mut self) {
        match self.session.read_probes() {
            Ok((v, _bad)) => {
                self.probe.history = v.iter().filter_map(HistoryItem::from_json).collect();
            }
            Err(e) => self.error(format!("cannot read the probe history: {e:#}")),
        }
        // the last suite matrix is shown again with the session
        if self.probe.suite.is_none() {
            if let Some(r) = SuiteResults::latest(&self.session) {
                let p = suite::results_dir(&self.session).join(format!("{}.json", r.id));
                self.probe.suite = Some(SuiteRun::reopened(r, p));
            }
        }
    }

    fn probe_output_mut(
        &mut self,
        request: u64,
        key: &str,
    ) -> Option<(&mut ModelOutput, Option<String>)> {
        if let Some(run) = &mut self.probe.run {
            if run.request == request {
                return run
                    .outputs
                    .iter_mut()
                    .find(|o| o.key == key)
                    .map(|o| (o, None));
            }
        }
        if let Some(s) = &mut self.probe.suite {
            if let Some(i) = s.requests.iter().position(|&r| r == request) {
                let name = s.results.cases[i].name.clone();
                return s.cells[i]
                    .iter_mut()
                    .find(|o| o.key == key)
                    .map(|o| (o, Some(name)));
            }
        }
        None
    }

    pub(super) fn probe_on_token(&mut self, request: u64, key: &str, text: &str) {
        if let Some((o, _)) = self.probe_output_mut(request, key) {
            o.push(text);
        }
    }

    pub(super) fn probe_on_generated(&mut self, request: u64, key: &str, g: Generation) {
        let (system, prompt, params) = match &self.probe.run {
            Some(r) if r.request == request => {
                (r.system.clone(), r.prompt.clone(), r.params.clone())
            }
            _ => match &self.probe.suite {
                Some(s) => match s.requests.iter().position(|&r| r == request) {
                    Some(i) => {
                        let c = &s.results.cases[i];
                        (
                            c.system_prompt(),
                            c.user_prompt(),
                            SamplingParams {
                                max_tokens: c.max_tokens_or(suite::DEFAULT_MAX_TOKENS),
                                ..Default::default()
                            },
                        )
                    }
                    None => return,
                },
                None => return,
            },
        };
        let spec = self
            .slots
            .iter()
            .find(|s| s.key == key)
            .map(|s| (s.spec.clone(), s.adapter.clone(), s.label()));
        let Some((o, suite)) = self.probe_output_mut(request, key) else {
            return;
        };
        o.text = g.text.clone();
        o.done = Some(g.clone());
        let label = o.label.clone();
        let (spec, adapter, label) = spec.unwrap_or((key.to_string(), None, label));
        let record = json!({
            "time": crate::data::fsutil::rfc3339(crate::data::fsutil::now_unix()),
            "model": label,
            "spec": spec,
            "adapter": adapter,
            "system": system,
            "prompt": prompt,
            "params": params,
            "output": g.text,
            "prompt_tokens": g.prompt_tokens,
            "generated_tokens": g.generated_tokens,
            "ttft_s": g.ttft_s,
            "prefill_tok_s": g.prefill_tok_s,
            "decode_tok_s": g.decode_tok_s,
            "stop": g.stop,
            "suite": suite,
        });
        if let Some(h) = HistoryItem::from_json(&record) {
            self.probe.history.push(h);
        }
        if let Err(e) = self.session.append_probe(&record) {
            self.error(format!("cannot save the probe: {e:#}"));
        }
        if let Some(s) = &mut self.probe.suite {
            if let Some(i) = s.requests.iter().position(|&r| r == request) {
                s.record(i, key, |c, m| {
                    CaseResult::graded(c, m, &g.text, g.decode_tok_s, g.generated_tokens)
                });
                self.probe_suite_save_when_done();
            }
        }
    }

    /// Saves the suite's results in the session once every answer is in.
    pub(super) fn probe_suite_save_when_done(&mut self) {
        let Some(s) = &mut self.probe.suite else {
            return;
        };
        if s.saved.is_some() || !s.finished() || s.results.results.is_empty() {
            return;
        }
        match s.results.save(&self.session) {
            Ok(p) => {
                let models: Vec<String> = s
                    .results
                    .models
                    .iter()
                    .map(|m| {
                        let (ok, n) = s.results.score(&m.label);
                        format!("{} {ok}/{n}", m.label)
                    })
                    .collect();
                s.saved = Some(p.clone());
                self.ok(format!(
                    "suite done: {} — saved in {} (E exports Markdown and CSV)",
                    models.join(", "),
                    p.display()
                ));
            }
            Err(e) => self.error(format!("cannot save the suite results: {e:#}")),
        }
    }

    /// The engine finished request `r`: outputs still open were cancelled (or never ran).
    pub(super) fn probe_request_ended(&mut self, r: u64) {
        let close = |o: &mut ModelOutput| {
            if !o.finished() {
                o.cancelled = true;
            }
        };
        if let Some(run) = &mut self.probe.run {
            if run.request == r {
                run.outputs.iter_mut().for_each(close);
            }
        }
        if let Some(s) = &mut self.probe.suite {
            if let Some(i) = s.requests.iter().position(|&q| q == r) {
                s.cells[i].iter_mut().for_each(close);
                self.probe_suite_save_when_done();
            }
        }
    }

    pub(super) fn probe_on_error(&mut self, key: &str, message: &str) {
        if let Some(run) = &mut self.probe.run {
            for o in run
                .outputs
                .iter_mut()
                .filter(|o| o.key == key && !o.finished())
            {
                o.error = Some(message.to_string());
            }
        }
        if let Some(s) = &mut self.probe.suite {
            let mut failed = None;
            for (i, row) in s.cells.iter_mut().enumerate() {
                if let Some(o) = row.iter_mut().find(|o| o.key == key && !o.finished()) {
                    o.error = Some(message.to_string());
                    failed = Some(i);
                    break;
                }
            }
            if let Some(i) = failed {
                s.record(i, key, |c, m| CaseResult::failed(c, m, message));
                self.probe_suite_save_when_done();
            }
        }
    }
}
