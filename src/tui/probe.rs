//! Probe pane: system and user prompt editors, sampling settings, every loaded model's
//! answer streamed side by side with time to first token and tokens/s, a JSON badge, the
//! session's probe history, and a built-in probe suite as a capability matrix.

use crossterm::event::{KeyCode, KeyEvent};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table, Wrap};
use ratatui::Frame;
use serde_json::{json, Value};
use std::time::Instant;

use super::app::{Action, App, InputPurpose};
use super::keys::{self, plain, strings};
use super::theme;
use super::widgets::{display_width, one_line, short_float, truncate, wrap, TextEditor};
use crate::data::{parse_answer, DEFAULT_INSTRUCTION, DEFAULT_SYSTEM};
use crate::engine::generate::{Generation, SamplingParams, StopReason};
use crate::engine::Command;

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

    fn finished(&self) -> bool {
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

/// A prompt of the built-in suite.
#[derive(Debug, Clone)]
pub struct SuitePrompt {
    pub name: &'static str,
    pub prompt: String,
    /// The answer should be fraud JSON.
    pub expects_json: bool,
    pub max_tokens: usize,
}

/// The built-in probe suite: a plain question, and the fraud judgement prompt on a fraud
/// and a normal dialogue.
pub fn builtin_suite() -> Vec<SuitePrompt> {
    let fraud = "张伟：您好，我是银行客服，您的账户涉嫌洗钱，需要把资金转到安全账户。\n李娜：真的吗？我该怎么办？\n张伟：请马上告诉我手机收到的验证码，我帮您操作。";
    let normal = "王芳：周末一起去爬山吗？\n李明：好啊，几点出发？\n王芳：早上八点，在地铁站见。";
    vec![
        SuitePrompt {
            name: "介绍大语言模型",
            prompt: strings::DEFAULT_PROMPT.to_string(),
            expects_json: false,
            max_tokens: 128,
        },
        SuitePrompt {
            name: "判断: 诈骗对话",
            prompt: format!("{DEFAULT_INSTRUCTION}\n{fraud}"),
            expects_json: true,
            max_tokens: 96,
        },
        SuitePrompt {
            name: "判断: 正常对话",
            prompt: format!("{DEFAULT_INSTRUCTION}\n{normal}"),
            expects_json: true,
            max_tokens: 96,
        },
        SuitePrompt {
            name: "follow: JSON only",
            prompt: "Reply with only this JSON and nothing else: {\"is_fraud\": false}".into(),
            expects_json: true,
            max_tokens: 32,
        },
    ]
}

#[derive(Debug, Clone)]
pub struct SuiteRun {
    pub prompts: Vec<SuitePrompt>,
    pub requests: Vec<u64>,
    pub cells: Vec<Vec<ModelOutput>>,
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
    }

    pub(super) fn probe_paste(&mut self, s: &str) {
        if self.probe.field <= F_PROMPT {
            self.probe.editing = true;
            self.probe.editor_mut().insert_str(s);
        }
    }

    pub(super) fn probe_edit_key(&mut self, key: &KeyEvent, out: &mut Vec<Action>) {
        if keys::is_run(key) {
            self.probe_run(out);
            return;
        }
        match key.code {
            KeyCode::Esc => {
                self.probe.editing = false;
                self.save_session();
            }
            KeyCode::Tab | KeyCode::BackTab => {
                self.probe.field = if self.probe.field == F_SYSTEM {
                    F_PROMPT
                } else {
                    F_SYSTEM
                }
            }
            _ => {
                self.probe.editor_mut().handle_key(key);
            }
        }
    }

    pub(super) fn probe_key(&mut self, key: &KeyEvent, out: &mut Vec<Action>) -> bool {
        if keys::is_run(key) {
            self.probe_run(out);
            return true;
        }
        let f = self.probe.field;
        match key.code {
            KeyCode::Enter => {
                self.probe_edit_field(f);
                return true;
            }
            KeyCode::Left if f > F_PROMPT => self.probe.adjust(f, -1),
            KeyCode::Right if f > F_PROMPT => self.probe.adjust(f, 1),
            _ if keys::is_down(key) => self.probe.field = (f + 1).min(FIELDS.len() - 1),
            _ if keys::is_up(key) => self.probe.field = f.saturating_sub(1),
            _ => match plain(key) {
                Some('i') => self.probe_edit_field(f),
                Some('e') => self.probe_edit_field(F_PROMPT),
                Some('+') | Some('=') if f > F_PROMPT => self.probe.adjust(f, 1),
                Some('-') if f > F_PROMPT => self.probe.adjust(f, -1),
                Some('b') => self.probe_run_suite(out),
                Some('v') => {
                    self.probe.view = match self.probe.view {
                        ProbeView::Outputs => ProbeView::History,
                        ProbeView::History => ProbeView::Suite,
                        ProbeView::Suite => ProbeView::Outputs,
                    }
                }
                Some('[') => {
                    self.probe.view = ProbeView::History;
                    let n = self.probe.history.len();
                    self.probe.history_sel = (self.probe.history_sel + 1).min(n.saturating_sub(1));
                }
                Some(']') => {
                    self.probe.view = ProbeView::History;
                    self.probe.history_sel = self.probe.history_sel.saturating_sub(1);
                }
                Some('r') if self.probe.view == ProbeView::History => self.probe_recall(),
                Some('c') => {
                    self.probe.run = None;
                    self.probe.suite = None;
                }
                _ => return false,
            },
        }
        true
    }

    fn probe_edit_field(&mut self, f: usize) {
        self.probe.field = f;
        if f <= F_PROMPT {
            self.probe.editing = true;
        } else {
            let cur = match f {
                3 => self
                    .probe
                    .params
                    .top_k
                    .map(|k| k.to_string())
                    .unwrap_or_default(),
                4 => self
                    .probe
                    .params
                    .top_p
                    .map(|k| k.to_string())
                    .unwrap_or_default(),
                _ => self.probe.setting_text(f),
            };
            let title = format!("{} (empty: off for top-k / top-p)", FIELDS[f]);
            self.open_input(title, &cur, InputPurpose::ProbeSetting(f));
        }
    }

    pub(super) fn probe_set_setting(&mut self, f: usize, text: &str) {
        let p = &mut self.probe.params;
        let bad = |what: &str| format!("{}: {what}", FIELDS.get(f).copied().unwrap_or("setting"));
        let r: Result<(), String> = match f {
            2 => text
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .map(|x| p.temperature = x)
                .ok_or_else(|| bad("a number ≥ 0")),
            3 if text.is_empty() || text == "off" || text == "0" => {
                p.top_k = None;
                Ok(())
            }
            3 => text
                .parse::<usize>()
                .map(|k| p.top_k = Some(k))
                .map_err(|_| bad("a whole number, or empty for off")),
            4 if text.is_empty() || text == "off" => {
                p.top_p = None;
                Ok(())
            }
            4 => text
                .parse::<f64>()
                .ok()
                .filter(|x| *x > 0.0 && *x <= 1.0)
                .map(|x| p.top_p = if x >= 1.0 { None } else { Some(x) })
                .ok_or_else(|| bad("a number in (0, 1]")),
            5 => text
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .map(|n| p.max_tokens = n)
                .ok_or_else(|| bad("a whole number > 0")),
            6 => text
                .parse::<u64>()
                .map(|n| p.seed = n)
                .map_err(|_| bad("a whole number")),
            _ => Ok(()),
        };
        match r {
            Ok(()) => self.save_session(),
            Err(e) => self.error(e),
        }
    }

    fn probe_recall(&mut self) {
        let n = self.probe.history.len();
        if n == 0 {
            return;
        }
        let item = self.probe.history[n - 1 - self.probe.history_sel.min(n - 1)].clone();
        self.probe.system.set_text(&item.system);
        self.probe.user.set_text(&item.prompt);
        self.info("the entry's prompts are in the editors (F5 runs them)");
    }

    /// The loaded models as (key, label).
    fn probe_targets(&self) -> Vec<(String, String)> {
        self.ready_slots()
            .map(|s| (s.key.clone(), s.label()))
            .collect()
    }

    pub fn probe_run(&mut self, out: &mut Vec<Action>) {
        let targets = self.probe_targets();
        if targets.is_empty() {
            self.warn(strings::NO_LOADED);
            return;
        }
        let prompt = self.probe.user.text();
        if prompt.trim().is_empty() {
            self.warn("write a prompt first (Enter edits it)");
            return;
        }
        let system = self.probe.system.text();
        let system = (!system.trim().is_empty()).then_some(system);
        let request = self.request_id();
        let params = self.probe.params.clone();
        self.probe.run = Some(ProbeRun {
            request,
            system: system.clone(),
            prompt: prompt.clone(),
            params: params.clone(),
            outputs: targets
                .iter()
                .map(|(k, l)| ModelOutput::new(k, l))
                .collect(),
        });
        self.probe.view = ProbeView::Outputs;
        out.push(Action::Engine(Command::Generate {
            request,
            keys: targets.into_iter().map(|t| t.0).collect(),
            system,
            prompt,
            raw: false,
            params,
        }));
        if self.engine_busy() {
            self.warn(strings::ENGINE_BUSY_QUEUED);
        }
        self.save_session();
    }

    pub fn probe_run_suite(&mut self, out: &mut Vec<Action>) {
        let targets = self.probe_targets();
        if targets.is_empty() {
            self.warn(strings::NO_LOADED);
            return;
        }
        let prompts = builtin_suite();
        let mut requests = Vec::new();
        let mut cells = Vec::new();
        for p in &prompts {
            let request = self.request_id();
            requests.push(request);
            cells.push(
                targets
                    .iter()
                    .map(|(k, l)| ModelOutput::new(k, l))
                    .collect(),
            );
            out.push(Action::Engine(Command::Generate {
                request,
                keys: targets.iter().map(|t| t.0.clone()).collect(),
                system: Some(DEFAULT_SYSTEM.to_string()),
                prompt: p.prompt.clone(),
                raw: false,
                params: SamplingParams {
                    max_tokens: p.max_tokens,
                    ..Default::default()
                },
            }));
        }
        self.probe.suite = Some(SuiteRun {
            prompts,
            requests,
            cells,
        });
        self.probe.view = ProbeView::Suite;
        self.info(format!(
            "running the probe suite on {} model(s)…",
            targets.len()
        ));
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
                let name = s.prompts[i].name.to_string();
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
                    Some(i) => (
                        Some(DEFAULT_SYSTEM.to_string()),
                        s.prompts[i].prompt.clone(),
                        SamplingParams {
                            max_tokens: s.prompts[i].max_tokens,
                            ..Default::default()
                        },
                    ),
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
            for row in &mut s.cells {
                if let Some(o) = row.iter_mut().find(|o| o.key == key && !o.finished()) {
                    o.error = Some(message.to_string());
                    break;
                }
            }
        }
    }
}

// ---------------------------------------------------------------- drawing

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    let left_w = (area.width * 2 / 5)
        .max(34)
        .min(area.width.saturating_sub(20));
    let [left, right] =
        Layout::horizontal([Constraint::Length(left_w), Constraint::Fill(1)]).areas(area);
    let sys_h = if left.height >= 30 { 7 } else { 5 };
    let set_h = (FIELDS.len() as u16 - 2 + 2).min(left.height / 3).max(3);
    let [sys, user, settings] = Layout::vertical([
        Constraint::Length(sys_h),
        Constraint::Min(3),
        Constraint::Length(set_h),
    ])
    .areas(left);
    let p = &app.probe;
    draw_editor(
        f,
        sys,
        &p.system,
        strings::SYSTEM_TITLE,
        p.field == F_SYSTEM,
        p.editing && p.field == F_SYSTEM,
    );
    draw_editor(
        f,
        user,
        &p.user,
        strings::PROMPT_TITLE,
        p.field == F_PROMPT,
        p.editing && p.field == F_PROMPT,
    );
    draw_settings(f, settings, app);
    match p.view {
        ProbeView::Outputs => draw_outputs(f, right, app),
        ProbeView::History => draw_history(f, right, app),
        ProbeView::Suite => draw_suite(f, right, app),
    }
}

fn draw_editor(
    f: &mut Frame,
    area: Rect,
    ed: &TextEditor,
    title: &str,
    focus: bool,
    editing: bool,
) {
    let t = if editing {
        format!("{title} — editing (Esc done, F5 run)")
    } else {
        title.to_string()
    };
    let block = theme::block(t, focus);
    let inner = block.inner(area);
    f.render_widget(block, area);
    if inner.width == 0 || inner.height == 0 {
        return;
    }
    let (rows, (cx, cy)) = ed.layout(inner.width as usize);
    let h = inner.height as usize;
    let off = if editing && cy >= h { cy + 1 - h } else { 0 };
    let lines: Vec<Line> = rows.into_iter().skip(off).take(h).map(Line::from).collect();
    f.render_widget(Paragraph::new(lines), inner);
    if editing {
        f.set_cursor_position((inner.x + cx as u16, inner.y + (cy - off) as u16));
    }
}

fn draw_settings(f: &mut Frame, area: Rect, app: &App) {
    let p = &app.probe;
    let block = theme::block(strings::SAMPLING_TITLE, p.field > F_PROMPT);
    let inner = block.inner(area);
    f.render_widget(block, area);
    let mut items: Vec<Span> = Vec::new();
    let mut lines: Vec<Line> = Vec::new();
    let two_cols = (inner.height as usize) < FIELDS.len() - 2;
    for (i, name) in FIELDS.iter().enumerate().skip(2) {
        let val = p.setting_text(i);
        let style = if p.field == i {
            theme::focused()
        } else {
            Style::new()
        };
        let s = Span::styled(format!(" {name} {val} "), style);
        if two_cols {
            items.push(s);
        } else {
            lines.push(Line::from(vec![
                Span::styled(
                    format!("{name:<12}"),
                    if p.field == i {
                        theme::focused()
                    } else {
                        theme::dim()
                    },
                ),
                Span::styled(format!(" {val}"), style.remove_modifier(Modifier::empty())),
            ]));
        }
    }
    if two_cols {
        f.render_widget(
            Paragraph::new(Line::from(items)).wrap(Wrap { trim: true }),
            inner,
        );
    } else {
        f.render_widget(Paragraph::new(lines), inner);
    }
}

fn output_lines(o: &ModelOutput, width: usize, height: usize) -> Vec<Line<'static>> {
    let mut lines: Vec<Line> = Vec::new();
    let (badge, style) = json_badge(&o.text);
    lines.push(Line::from(Span::styled(
        badge,
        style.add_modifier(Modifier::BOLD),
    )));
    let body_h = height.saturating_sub(2);
    if let Some(e) = &o.error {
        for r in wrap(&format!("error: {e}"), width) {
            lines.push(Line::styled(r, theme::err()));
        }
    } else {
        let rows = wrap(&o.text, width);
        let skip = rows.len().saturating_sub(body_h);
        lines.extend(rows.into_iter().skip(skip).map(Line::from));
    }
    while lines.len() < height.saturating_sub(1) {
        lines.push(Line::from(""));
    }
    lines.truncate(height.saturating_sub(1));
    let (ttft, rate) = o.speed();
    let mut stats = format!(
        "TTFT {} · {} tok/s",
        ttft.map(|t| format!("{t:.2}s"))
            .unwrap_or_else(|| "–".into()),
        rate.map(|r| format!("{r:.1}"))
            .unwrap_or_else(|| "–".into())
    );
    if let Some(g) = &o.done {
        let stop = match g.stop {
            StopReason::Eos => "eos",
            StopReason::MaxTokens => "max tokens",
            StopReason::Cancelled => "cancelled",
        };
        stats.push_str(&format!(" · {} tok · {stop}", g.generated_tokens));
    } else if o.cancelled {
        stats.push_str(" · cancelled");
    } else if o.error.is_none() {
        stats.push_str(" · streaming…");
    }
    lines.push(Line::styled(stats, theme::accent()));
    lines
}

fn draw_outputs(f: &mut Frame, area: Rect, app: &App) {
    let Some(run) = &app.probe.run else {
        let mut lines = vec![Line::from(strings::NO_OUTPUT_YET)];
        if app.first_ready().is_none() {
            lines.push(Line::from(""));
            lines.push(Line::styled(strings::NO_LOADED, theme::warn()));
        }
        f.render_widget(
            Paragraph::new(lines)
                .wrap(Wrap { trim: true })
                .block(theme::block(strings::OUTPUTS_TITLE, false)),
            area,
        );
        return;
    };
    let n = run.outputs.len().max(1);
    let stack = n > 1 && (area.width as usize) / n < 24;
    let areas = if stack {
        Layout::vertical(vec![Constraint::Ratio(1, n as u32); n]).split(area)
    } else {
        Layout::horizontal(vec![Constraint::Ratio(1, n as u32); n]).split(area)
    };
    for (o, a) in run.outputs.iter().zip(areas.iter()) {
        let block = theme::block(o.label.clone(), false);
        let inner = block.inner(*a);
        f.render_widget(block, *a);
        let lines = output_lines(o, inner.width as usize, inner.height as usize);
        f.render_widget(Paragraph::new(lines), inner);
    }
}

fn draw_history(f: &mut Frame, area: Rect, app: &App) {
    let h = &app.probe.history;
    let title = format!(
        "{} ({} probes; [ ] move, r recall)",
        strings::HISTORY_TITLE,
        h.len()
    );
    if h.is_empty() {
        f.render_widget(
            Paragraph::new(strings::NO_HISTORY).block(theme::block(title, false)),
            area,
        );
        return;
    }
    let [list, detail] =
        Layout::vertical([Constraint::Percentage(45), Constraint::Fill(1)]).areas(area);
    let block = theme::block(title, false);
    let inner = block.inner(list);
    f.render_widget(block, list);
    let rows_h = inner.height as usize;
    let sel = app.probe.history_sel.min(h.len() - 1);
    let off = sel.saturating_sub(rows_h.saturating_sub(1));
    let w = inner.width as usize;
    let lines: Vec<Line> = h
        .iter()
        .rev()
        .enumerate()
        .skip(off)
        .take(rows_h)
        .map(|(i, it)| {
            let (badge, bs) = json_badge(&it.output);
            let time = it.time.get(5..16).unwrap_or(&it.time).replace('T', " ");
            let left = format!("{time} {} ", truncate(&it.model, 18));
            let right = format!(
                " {} {}",
                it.tok_s.map(|r| format!("{r:.0}t/s")).unwrap_or_default(),
                badge
            );
            let room = w.saturating_sub(display_width(&left) + display_width(&right));
            let line = Line::from(vec![
                Span::styled(left, theme::dim()),
                Span::raw(truncate(&one_line(&it.prompt), room)),
                Span::raw(" ".repeat(
                    room.saturating_sub(display_width(&truncate(&one_line(&it.prompt), room))),
                )),
                Span::styled(right, bs),
            ]);
            if i == sel {
                line.style(theme::selected())
            } else {
                line
            }
        })
        .collect();
    f.render_widget(Paragraph::new(lines), inner);
    let it = &h[h.len() - 1 - sel];
    let block = theme::block(
        format!(
            "{} {}",
            it.model,
            it.suite
                .clone()
                .map(|s| format!("· suite: {s}"))
                .unwrap_or_default()
        ),
        false,
    );
    let inner = block.inner(detail);
    f.render_widget(block, detail);
    let width = inner.width as usize;
    let mut lines: Vec<Line> = Vec::new();
    for r in wrap(&it.prompt, width) {
        lines.push(Line::styled(r, theme::accent()));
    }
    lines.push(Line::styled("─".repeat(width), theme::dim()));
    for r in wrap(&it.output, width) {
        lines.push(Line::from(r));
    }
    f.render_widget(Paragraph::new(lines), inner);
}

fn draw_suite(f: &mut Frame, area: Rect, app: &App) {
    let Some(s) = &app.probe.suite else {
        f.render_widget(
            Paragraph::new(strings::NO_SUITE)
                .wrap(Wrap { trim: true })
                .block(theme::block(strings::SUITE_TITLE, false)),
            area,
        );
        return;
    };
    let models: Vec<String> = s
        .cells
        .first()
        .map(|r| r.iter().map(|o| o.label.clone()).collect())
        .unwrap_or_default();
    let mut header = vec![Cell::from("prompt"), Cell::from("expects")];
    header.extend(models.iter().map(|m| Cell::from(m.clone())));
    let rows: Vec<Row> = s
        .prompts
        .iter()
        .zip(&s.cells)
        .map(|(p, row)| {
            let mut cells = vec![
                Cell::from(p.name),
                Cell::from(if p.expects_json { "JSON" } else { "text" }),
            ];
            for o in row {
                let (badge, style) = if let Some(e) = &o.error {
                    (format!("✗ {}", truncate(e, 20)), theme::err())
                } else if o.cancelled {
                    ("cancelled".to_string(), theme::dim())
                } else if !o.finished() {
                    ("…".to_string(), theme::dim())
                } else {
                    let (b, st) = json_badge(&o.text);
                    let ok = if p.expects_json {
                        b.starts_with("JSON ✓")
                    } else {
                        !o.text.trim().is_empty()
                    };
                    let rate = o.speed().1.map(short_float).unwrap_or_else(|| "–".into());
                    (
                        format!("{} {b} · {rate} tok/s", if ok { "ok" } else { "no" }),
                        if ok { st } else { theme::warn() },
                    )
                };
                cells.push(Cell::from(Span::styled(badge, style)));
            }
            Row::new(cells)
        })
        .collect();
    let mut widths = vec![Constraint::Length(18), Constraint::Length(7)];
    widths.extend(models.iter().map(|_| Constraint::Fill(1)));
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(theme::header()))
        .block(theme::block(
            format!(
                "{} — capability matrix (ok: the answer has the expected shape)",
                strings::SUITE_TITLE
            ),
            false,
        ));
    f.render_widget(table, area);
}
