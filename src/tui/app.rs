//! The workbench state and its update functions: keys in, `Action`s (engine commands) out,
//! engine events in. No terminal here, so every behaviour is testable with plain calls.
//! Each pane's own keys live in its file (`impl App` blocks there).

use crossterm::event::{Event as TermEvent, KeyCode, KeyEvent, KeyEventKind};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::data::DataPane;
use super::engine::Sent;
use super::eval::EvalPane;
use super::keys::{self, plain, strings};
use super::models::ModelsPane;
use super::monitor::MonitorPane;
use super::probe::ProbePane;
use super::train::TrainPane;
use super::widgets::TextEditor;
use crate::data::{Session, SessionConfig};
use crate::engine::{Command, EngineState, LoadedInfo};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Models,
    Probe,
    Train,
    Data,
    Eval,
    Monitor,
}

impl Tab {
    pub const ALL: [Tab; 6] = [
        Tab::Models,
        Tab::Probe,
        Tab::Train,
        Tab::Data,
        Tab::Eval,
        Tab::Monitor,
    ];

    pub fn index(self) -> usize {
        Tab::ALL.iter().position(|&t| t == self).unwrap_or(0)
    }

    pub fn title(self) -> &'static str {
        strings::TAB_TITLES[self.index()]
    }

    pub fn name(self) -> String {
        self.title().to_lowercase()
    }

    pub fn from_name(s: &str) -> Option<Tab> {
        Tab::ALL.into_iter().find(|t| t.name() == s.to_lowercase())
    }
}

/// What the update asks the outside (the engine) to do.
#[derive(Debug)]
pub enum Action {
    Engine(Command),
    /// Cancel the worker's commands (probes, scores, monitored turns, a download).
    Cancel,
    /// Cancel the evaluation running beside the worker.
    CancelEvaluation,
    PauseTraining,
    ResumeTraining,
    StopTraining,
    Quit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Ok,
    Warn,
    Error,
}

#[derive(Debug, Clone)]
pub struct Message {
    pub text: String,
    pub level: Level,
    pub at: Instant,
}

#[derive(Debug, Clone)]
pub enum SlotState {
    Loading,
    Ready(LoadedInfo),
}

/// A model loaded (or loading) in the engine.
#[derive(Debug, Clone)]
pub struct Slot {
    pub key: String,
    pub spec: String,
    pub adapter: Option<PathBuf>,
    pub name: String,
    pub state: SlotState,
}

impl Slot {
    pub fn is_ready(&self) -> bool {
        matches!(self.state, SlotState::Ready(_))
    }

    /// Name plus the adapter's run id, for column titles.
    pub fn label(&self) -> String {
        match &self.adapter {
            Some(a) => format!("{} + {}", self.name, adapter_label(a)),
            None => self.name.clone(),
        }
    }
}

/// `runs/<id>/adapter` → `<id>`; other paths: the folder name.
pub fn adapter_label(p: &std::path::Path) -> String {
    let last = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if last == "adapter" || last == "best" {
        if let Some(id) = p.parent().and_then(|q| q.file_name()) {
            return id.to_string_lossy().into_owned();
        }
    }
    last
}

/// Display name of a model spec (path or hub id).
pub fn spec_name(spec: &str) -> String {
    let p = std::path::Path::new(spec);
    if p.exists() {
        crate::model::loader::display_name(&if p.is_file() {
            crate::model::ModelLocation::Gguf(p.to_path_buf())
        } else {
            crate::model::ModelLocation::Folder(p.to_path_buf())
        })
    } else if spec.starts_with(['/', '.', '~']) {
        // a path that is gone: its last part
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| spec.to_string())
    } else {
        spec.to_string()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputPurpose {
    AddModelPath,
    HubId,
    ProbeSetting(usize),
    TrainField(usize),
    OpenDataset,
    Search,
    Reason,
    EvalLimit,
    EvalData,
}

#[derive(Debug, Clone)]
pub struct InputModal {
    pub title: String,
    pub editor: TextEditor,
    pub purpose: InputPurpose,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PickPurpose {
    Speaker,
    TrainModel,
    Adapter { spec: String },
    EvalTargets,
    MonitorModels,
}

#[derive(Debug, Clone)]
pub struct PickerModal {
    pub title: String,
    pub items: Vec<String>,
    pub values: Vec<String>,
    pub selected: usize,
    /// Multi-select when set.
    pub checked: Option<Vec<bool>>,
    pub purpose: PickPurpose,
}

#[derive(Debug, Clone)]
pub enum Modal {
    Input(InputModal),
    Picker(PickerModal),
}

#[derive(Debug, Clone, Default)]
pub struct AppOptions {
    /// The sessions root (the demo model goes to `<root>/.models/`).
    pub sessions_root: PathBuf,
    /// `--models-dir` folders.
    pub model_dirs: Vec<PathBuf>,
}

pub struct App {
    pub session: Session,
    pub cfg: SessionConfig,
    /// False when session.json could not be read: it is then never overwritten.
    cfg_ok: bool,
    pub opts: AppOptions,
    pub tab: Tab,
    /// What the engine's worker does.
    pub engine_state: EngineState,
    /// A training run (or recipe search) goes on in the engine, beside the worker.
    pub engine_training: bool,
    /// An evaluation goes on in the engine, beside the worker.
    pub engine_evaluating: bool,
    pub busy_since: Option<Instant>,
    pub slots: Vec<Slot>,
    pub models: ModelsPane,
    pub probe: ProbePane,
    pub train: TrainPane,
    pub data: DataPane,
    pub eval: EvalPane,
    pub monitor: MonitorPane,
    pub modal: Option<Modal>,
    pub help: bool,
    pub help_scroll: usize,
    pub message: Option<Message>,
    pub rss_mib: f64,
    pub mem_total_bytes: u64,
    pub spinner: usize,
    pub quit: bool,
    next_request: u64,
    pub(super) sent: std::collections::VecDeque<Sent>,
    last_rss: Option<Instant>,
    started: Instant,
    /// Keys of the session's models being loaded again at startup: session.json keeps them
    /// only on a clean exit (a model is written there once it has loaded, so a model whose
    /// load kills the process is not loaded again on the next start).
    pub(super) restoring: std::collections::HashSet<String>,
    exiting: bool,
    /// Slow work for the I/O worker (discovery, datasets), taken by the event loop.
    pub(super) io_jobs: Vec<super::io::IoJob>,
}

/// Resident memory of this process (VmRSS) in MiB.
pub fn rss_mib() -> f64 {
    crate::engine::train::rss_mib().0
}

/// MemTotal from /proc/meminfo in bytes (0 when unknown).
pub fn mem_total_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|x| x.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

impl App {
    /// The state of a session, nothing started: no model discovery, no dataset, no engine
    /// command. Tests build on this; [`App::open`] is what the workbench uses.
    pub fn new(session: Session, opts: AppOptions) -> App {
        let (cfg, cfg_ok, err) = match session.load_config() {
            Ok(c) => (c, true, None),
            Err(e) => (
                SessionConfig::default(),
                false,
                Some(format!("{e:#} — it will not be overwritten")),
            ),
        };
        let mut app = App {
            session,
            cfg,
            cfg_ok,
            opts,
            tab: Tab::Models,
            engine_state: EngineState::Idle,
            engine_training: false,
            engine_evaluating: false,
            busy_since: None,
            slots: Vec::new(),
            models: ModelsPane::default(),
            probe: ProbePane::default(),
            train: TrainPane::default(),
            data: DataPane::default(),
            eval: EvalPane::default(),
            monitor: MonitorPane::default(),
            modal: None,
            help: false,
            help_scroll: 0,
            message: None,
            rss_mib: rss_mib(),
            mem_total_bytes: mem_total_bytes(),
            spinner: 0,
            quit: false,
            next_request: 1,
            sent: Default::default(),
            last_rss: None,
            started: Instant::now(),
            restoring: Default::default(),
            exiting: false,
            io_jobs: Vec::new(),
        };
        let tui = app.tui_settings();
        if let Some(t) = tui
            .get("tab")
            .and_then(Value::as_str)
            .and_then(Tab::from_name)
        {
            app.tab = t;
        }
        app.probe.restore(tui.get("probe"));
        app.train.restore(tui.get("train"));
        app.eval.restore(tui.get("eval"));
        app.monitor.restore(tui.get("monitor"));
        app.probe_load_history();
        app.train_load_runs();
        if let Some(e) = err {
            app.error(e);
        }
        app
    }

    /// The workbench as it opens: models discovered, the session's dataset opened (or the
    /// bundled sample), its models loaded again, the last evaluation shown. Discovery and the
    /// dataset are queued for the I/O worker ([`App::take_io`]; [`App::finish_io`] does them
    /// in place).
    pub fn open(session: Session, opts: AppOptions) -> (App, Vec<Action>) {
        let mut app = App::new(session, opts);
        let mut out = Vec::new();
        app.request_scan(super::io::AfterScan::Nothing);
        // models first: opening the dataset saves the session, which records the loaded models
        let mut to_load: Vec<(String, Option<PathBuf>)> =
            app.cfg.models.iter().map(|m| (m.clone(), None)).collect();
        if let Some(Value::Array(a)) = app.tui_settings().get("adapter_models") {
            for v in a {
                if let (Some(s), Some(ad)) = (v["spec"].as_str(), v["adapter"].as_str()) {
                    to_load.push((s.to_string(), Some(PathBuf::from(ad))));
                }
            }
        }
        for (spec, adapter) in to_load {
            app.load_model(spec, adapter, &mut out);
        }
        app.restoring = app.slots.iter().map(|s| s.key.clone()).collect();
        // before any load starts: session.json names only models that loaded
        app.save_session();
        let dataset = app
            .cfg
            .active_dataset
            .clone()
            .map(PathBuf::from)
            .or_else(default_dataset);
        if let Some(p) = dataset {
            if p.exists() {
                app.request_dataset(&p);
            } else {
                app.warn(format!("{}: the session's dataset is gone", p.display()));
            }
        }
        app.eval_load_latest();
        app.track(&out);
        (app, out)
    }

    pub fn request_id(&mut self) -> u64 {
        self.next_request += 1;
        self.next_request
    }

    // ------------------------------------------------------------ messages

    pub fn say(&mut self, level: Level, text: impl Into<String>) {
        self.message = Some(Message {
            text: text.into(),
            level,
            at: Instant::now(),
        });
    }
    pub fn info(&mut self, t: impl Into<String>) {
        self.say(Level::Info, t)
    }
    pub fn ok(&mut self, t: impl Into<String>) {
        self.say(Level::Ok, t)
    }
    pub fn warn(&mut self, t: impl Into<String>) {
        self.say(Level::Warn, t)
    }
    pub fn error(&mut self, t: impl Into<String>) {
        self.say(Level::Error, t)
    }

    // ------------------------------------------------------------ session

    /// `settings.tui` of session.json.
    pub fn tui_settings(&self) -> Map<String, Value> {
        self.cfg
            .settings
            .get("tui")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    }

    pub fn set_tui_setting(&mut self, key: &str, v: Value) {
        let mut t = self.tui_settings();
        t.insert(key.to_string(), v);
        self.cfg.settings.insert("tui".into(), Value::Object(t));
    }

    /// The last save, on quit: the session's models still loading are kept too.
    pub fn save_session_on_exit(&mut self) {
        self.exiting = true;
        self.save_session();
    }

    /// Whether session.json names this model: once it has loaded (or, on the last save, when
    /// it came from the session and is still loading).
    fn recorded(&self, s: &Slot) -> bool {
        s.is_ready() || (self.exiting && self.restoring.contains(&s.key))
    }

    /// Writes session.json: loaded models, open dataset, pane, settings.
    pub fn save_session(&mut self) {
        self.cfg.models = self
            .slots
            .iter()
            .filter(|s| s.adapter.is_none() && self.recorded(s))
            .map(|s| s.spec.clone())
            .collect();
        self.cfg.models.dedup();
        let with_adapter: Vec<Value> = self
            .slots
            .iter()
            .filter(|s| self.recorded(s))
            .filter_map(|s| {
                s.adapter
                    .as_ref()
                    .map(|a| json!({"spec": s.spec, "adapter": a}))
            })
            .collect();
        self.set_tui_setting("adapter_models", Value::Array(with_adapter));
        self.cfg.active_model = self
            .slots
            .iter()
            .find(|s| self.recorded(s))
            .map(|s| s.spec.clone());
        if let Some(p) = &self.data.path {
            let p = p.display().to_string();
            self.cfg.active_dataset = Some(p.clone());
            if !self.cfg.datasets.contains(&p) {
                self.cfg.datasets.push(p);
            }
        }
        let tab = self.tab.name();
        self.set_tui_setting("tab", json!(tab));
        let probe = self.probe.to_settings();
        self.set_tui_setting("probe", probe);
        let train = self.train.to_settings();
        self.set_tui_setting("train", train);
        let eval = self.eval.to_settings();
        self.set_tui_setting("eval", eval);
        let monitor = self.monitor.to_settings();
        self.set_tui_setting("monitor", monitor);
        let dirs = json!(self.models.added_dirs);
        self.set_tui_setting("model_dirs", dirs);
        if !self.cfg_ok {
            return;
        }
        if let Err(e) = self.session.save_config(&self.cfg) {
            self.error(format!("cannot save the session: {e:#}"));
        }
    }

    // ------------------------------------------------------------ models

    pub fn ready_slots(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter().filter(|s| s.is_ready())
    }

    /// The first ready model (scoring uses it).
    pub fn first_ready(&self) -> Option<&Slot> {
        self.ready_slots().next()
    }

    // ------------------------------------------------------------ input

    /// A terminal event.
    pub fn handle_event(&mut self, ev: &TermEvent) -> Vec<Action> {
        match ev {
            TermEvent::Key(k) => self.handle_key(*k),
            TermEvent::Paste(s) => {
                self.handle_paste(s);
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    pub fn handle_paste(&mut self, s: &str) {
        if let Some(Modal::Input(m)) = &mut self.modal {
            m.editor.insert_str(s);
        } else if self.tab == Tab::Probe {
            self.probe_paste(s);
        } else if self.tab == Tab::Monitor {
            self.monitor_paste(s);
        }
    }

    /// A key: what it asks of the engine.
    pub fn handle_key(&mut self, key: KeyEvent) -> Vec<Action> {
        let out = self.handle_key_inner(key);
        self.track(&out);
        out
    }

    /// Commands due now without a key: the Monitor pane's paced replay, turns typed or
    /// pasted while the previous one was scored, the explanation asked when an alert fires.
    /// The event loop calls it on every tick (`now` is the tick's time).
    pub fn due(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        self.monitor_due(now, &mut out);
        self.track(&out);
        out
    }

    fn handle_key_inner(&mut self, key: KeyEvent) -> Vec<Action> {
        let mut out = Vec::new();
        if key.kind == KeyEventKind::Release {
            return out;
        }
        if keys::ctrl(&key, 'c') {
            self.request_quit(&mut out);
            return out;
        }
        if self.help {
            match key.code {
                KeyCode::Down | KeyCode::Char('j') => self.help_scroll += 1,
                KeyCode::Up | KeyCode::Char('k') => {
                    self.help_scroll = self.help_scroll.saturating_sub(1)
                }
                KeyCode::PageDown => self.help_scroll += 10,
                KeyCode::PageUp => self.help_scroll = self.help_scroll.saturating_sub(10),
                _ => self.help = false,
            }
            return out;
        }
        if let Some(modal) = self.modal.take() {
            self.modal_key(modal, &key, &mut out);
            return out;
        }
        if self.tab == Tab::Probe && self.probe.editing {
            self.probe_edit_key(&key, &mut out);
            return out;
        }
        if self.tab == Tab::Monitor && self.monitor.editing {
            self.monitor_edit_key(&key, &mut out);
            return out;
        }
        match (key.code, plain(&key)) {
            (_, Some('q')) => {
                self.request_quit(&mut out);
                return out;
            }
            (_, Some('?')) => {
                self.help = true;
                self.help_scroll = 0;
                return out;
            }
            (_, Some(c @ '1'..='6')) => {
                self.tab = Tab::ALL[(c as u8 - b'1') as usize];
                return out;
            }
            (KeyCode::Tab, _) => {
                self.tab = Tab::ALL[(self.tab.index() + 1) % Tab::ALL.len()];
                return out;
            }
            (KeyCode::BackTab, _) => {
                let n = Tab::ALL.len();
                self.tab = Tab::ALL[(self.tab.index() + n - 1) % n];
                return out;
            }
            _ => {}
        }
        let handled = match self.tab {
            Tab::Models => self.models_key(&key, &mut out),
            Tab::Probe => self.probe_key(&key, &mut out),
            Tab::Train => self.train_key(&key, &mut out),
            Tab::Data => self.data_key(&key, &mut out),
            Tab::Eval => self.eval_key(&key, &mut out),
            Tab::Monitor => self.monitor_key(&key, &mut out),
        };
        if !handled && (key.code == KeyCode::Esc || plain(&key) == Some('x')) {
            self.cancel_work(&mut out);
        }
        out
    }

    fn request_quit(&mut self, out: &mut Vec<Action>) {
        self.quit = true;
        out.push(Action::Quit);
    }

    pub fn open_input(&mut self, title: impl Into<String>, initial: &str, purpose: InputPurpose) {
        self.modal = Some(Modal::Input(InputModal {
            title: title.into(),
            editor: TextEditor::single(initial),
            purpose,
        }));
    }

    pub fn open_picker(
        &mut self,
        title: impl Into<String>,
        items: Vec<String>,
        values: Vec<String>,
        checked: Option<Vec<bool>>,
        purpose: PickPurpose,
    ) {
        self.modal = Some(Modal::Picker(PickerModal {
            title: title.into(),
            items,
            values,
            selected: 0,
            checked,
            purpose,
        }));
    }

    fn modal_key(&mut self, modal: Modal, key: &KeyEvent, out: &mut Vec<Action>) {
        match modal {
            Modal::Input(mut m) => match key.code {
                KeyCode::Esc => {}
                KeyCode::Enter => {
                    let text = m.editor.text();
                    self.submit_input(m.purpose, text.trim().to_string(), out);
                }
                _ => {
                    m.editor.handle_key(key);
                    self.modal = Some(Modal::Input(m));
                }
            },
            Modal::Picker(mut p) => {
                let n = p.items.len();
                match key.code {
                    KeyCode::Esc => return,
                    KeyCode::Enter => {
                        let chosen: Vec<String> = match &p.checked {
                            Some(c) => p
                                .values
                                .iter()
                                .zip(c)
                                .filter(|(_, &on)| on)
                                .map(|(v, _)| v.clone())
                                .collect(),
                            None => p.values.get(p.selected).cloned().into_iter().collect(),
                        };
                        self.submit_pick(p.purpose, chosen, out);
                        return;
                    }
                    KeyCode::Char(' ') => {
                        if let Some(c) = &mut p.checked {
                            if let Some(x) = c.get_mut(p.selected) {
                                *x = !*x;
                            }
                        }
                    }
                    KeyCode::Home | KeyCode::Char('g') => p.selected = 0,
                    KeyCode::End | KeyCode::Char('G') => p.selected = n.saturating_sub(1),
                    _ if keys::is_down(key) => {
                        p.selected = (p.selected + 1).min(n.saturating_sub(1))
                    }
                    _ if keys::is_up(key) => p.selected = p.selected.saturating_sub(1),
                    _ => {}
                }
                self.modal = Some(Modal::Picker(p));
            }
        }
    }

    fn submit_input(&mut self, purpose: InputPurpose, text: String, out: &mut Vec<Action>) {
        match purpose {
            InputPurpose::AddModelPath => self.add_model_path(&text),
            InputPurpose::HubId => self.hub_id(&text, out),
            InputPurpose::ProbeSetting(i) => self.probe_set_setting(i, &text),
            InputPurpose::TrainField(i) => self.train_set_field(i, &text),
            InputPurpose::OpenDataset => {
                if text.is_empty() {
                    return;
                }
                let p = PathBuf::from(&text);
                self.request_dataset(&p);
            }
            InputPurpose::Search => self.data_search(&text),
            InputPurpose::Reason => self.data_set_reason(&text),
            InputPurpose::EvalLimit => self.eval_set_limit(&text),
            InputPurpose::EvalData => self.eval_set_data(&text),
        }
    }

    fn submit_pick(&mut self, purpose: PickPurpose, chosen: Vec<String>, out: &mut Vec<Action>) {
        match purpose {
            PickPurpose::Speaker => {
                if let Some(s) = chosen.into_iter().next() {
                    self.data_set_speaker(&s);
                }
            }
            PickPurpose::TrainModel => {
                if let Some(s) = chosen.into_iter().next() {
                    self.train.cfg.model = s;
                    self.save_session();
                }
            }
            PickPurpose::Adapter { spec } => {
                if let Some(a) = chosen.into_iter().next() {
                    self.load_model(spec, Some(PathBuf::from(a)), out);
                }
            }
            PickPurpose::EvalTargets => self.eval_set_targets(chosen),
            PickPurpose::MonitorModels => self.monitor_set_models(chosen, out),
        }
    }

    /// Periodic update (memory figure, spinner, message expiry). True when a redraw is due.
    pub fn tick(&mut self, now: Instant) -> bool {
        let mut dirty = false;
        if self
            .last_rss
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            let r = rss_mib();
            if (r - self.rss_mib).abs() >= 0.5 {
                dirty = true;
            }
            self.rss_mib = r;
            self.last_rss = Some(now);
        }
        let busy = self.engine_working() || self.slots.iter().any(|s| !s.is_ready());
        if busy {
            let frame = (now.duration_since(self.started).as_millis() / 120) as usize;
            if frame != self.spinner {
                self.spinner = frame;
                dirty = true;
            }
        }
        if let Some(m) = &self.message {
            let keep = match m.level {
                Level::Info | Level::Ok => 8,
                Level::Warn => 15,
                Level::Error => 60,
            };
            if now.duration_since(m.at) > Duration::from_secs(keep) {
                self.message = None;
                dirty = true;
            }
        }
        dirty
    }
}

/// The bundled sample dialogues, built into the binary.
pub const SAMPLE_DIALOGUES: &[u8] = include_bytes!("../../assets/sample-dialogues.jsonl");

/// The bundled sample dataset: the working folder's `assets/` copy, else the source tree's,
/// else the copy built into the binary, written once under the sessions folder (so a binary
/// run anywhere, its build folder gone, still opens with dialogues).
pub fn default_dataset() -> Option<PathBuf> {
    let rel = PathBuf::from("assets/sample-dialogues.jsonl");
    if rel.exists() {
        return Some(rel);
    }
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/sample-dialogues.jsonl");
    if src.exists() {
        return Some(src);
    }
    let out = super::sessions_root()
        .join(".bundled")
        .join("sample-dialogues.jsonl");
    let same = std::fs::read(&out).is_ok_and(|b| b == SAMPLE_DIALOGUES);
    if same {
        return Some(out);
    }
    let dir = out.parent()?;
    std::fs::create_dir_all(dir).ok()?;
    crate::data::write_atomic(&out, SAMPLE_DIALOGUES).ok()?;
    Some(out)
}
