//! Models pane: what is on disk, what it needs in RAM, what is loaded; loading, unloading,
//! adding folders, the demo model.

use crossterm::event::{KeyCode, KeyEvent};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table, Wrap};
use ratatui::Frame;
use std::path::{Path, PathBuf};

use super::app::{Action, App, InputPurpose, PickPurpose, SlotState};
use super::io::{AfterScan, IoJob};
use super::keys::{self, plain, strings};
use super::theme;
use super::widgets::{human_bytes, human_count, truncate};
use crate::engine::Command;
use crate::model::discover::{self, ModelInfo};
use crate::model::loader::Precision;

#[derive(Debug, Default)]
pub struct ModelsPane {
    pub list: Vec<ModelInfo>,
    pub selected: usize,
    /// Folders or files the user added with `a` (kept in the session).
    pub added_dirs: Vec<PathBuf>,
    pub offset: std::cell::Cell<usize>,
    /// How models are loaded (`p` cycles it; kept in the session); the RAM columns follow it.
    pub precision: Precision,
    /// Scans on the I/O worker.
    pub scanning: usize,
}

/// The engine key of a model with an optional adapter, loaded at `precision` (f32 keys
/// carry no suffix, so a model can be loaded in f32 and bf16 side by side).
pub fn slot_key(spec: &str, adapter: Option<&Path>, precision: Precision) -> String {
    let key = match adapter {
        Some(a) => format!("{spec} + {}", a.display()),
        None => spec.to_string(),
    };
    match precision {
        Precision::F32 => key,
        p => format!("{key} [{}]", p.name()),
    }
}

impl App {
    /// Where models are looked for besides the caches: `--models-dir`, folders added in the
    /// session, and `<sessions root>/.models` (the demo model).
    pub fn model_dirs(&self) -> Vec<PathBuf> {
        let mut v = self.opts.model_dirs.clone();
        v.extend(self.models.added_dirs.iter().cloned());
        let demo = self.opts.sessions_root.join(".models");
        if demo.is_dir() {
            v.push(demo);
        }
        v
    }

    /// The session's added folders and load precision, before a scan.
    fn before_scan(&mut self) {
        if let Some(p) = self
            .tui_settings()
            .get("load_precision")
            .and_then(|v| v.as_str())
            .and_then(Precision::parse)
        {
            self.models.precision = p;
        }
        if self.models.added_dirs.is_empty() {
            if let Some(serde_json::Value::Array(a)) = self.tui_settings().get("model_dirs") {
                self.models.added_dirs = a
                    .iter()
                    .filter_map(|v| v.as_str().map(PathBuf::from))
                    .collect();
            }
        }
    }

    /// Discovers models now, on this thread (tests; the workbench uses [`Self::request_scan`]).
    pub fn rescan_models(&mut self) {
        self.before_scan();
        let list = discover::discover(&self.model_dirs());
        self.models_discovered(list, AfterScan::Nothing);
    }

    /// Queues a scan for the I/O worker; the list shows "scanning…" until it is in.
    pub fn request_scan(&mut self, then: AfterScan) {
        self.before_scan();
        self.models.scanning += 1;
        let dirs = self.model_dirs();
        self.io_jobs.push(IoJob::Discover { dirs, then });
    }

    /// A scan is in: the new list, the selection kept (or moved to an added folder).
    pub(super) fn models_discovered(&mut self, list: Vec<ModelInfo>, then: AfterScan) {
        let sel = self
            .models
            .list
            .get(self.models.selected)
            .map(|m| m.path.clone());
        self.models.list = list;
        self.models.selected = sel
            .and_then(|p| self.models.list.iter().position(|m| m.path == p))
            .unwrap_or(0)
            .min(self.models.list.len().saturating_sub(1));
        match then {
            AfterScan::Nothing => {}
            AfterScan::Report => {
                let n = self.models.list.len();
                self.info(format!("{n} model(s) found"));
            }
            AfterScan::Select(p) => {
                match self.models.list.iter().position(|m| m.path.starts_with(&p)) {
                    Some(i) => {
                        self.models.selected = i;
                        self.ok(format!("added {}", p.display()));
                    }
                    None => self.warn(format!(
                        "{}: no Qwen2-family model found there (folders with config.json, .gguf files)",
                        p.display()
                    )),
                }
            }
        }
    }

    pub fn selected_model(&self) -> Option<&ModelInfo> {
        self.models.list.get(self.models.selected)
    }

    /// Asks the engine to load `spec` (with an adapter) unless it is loaded or loading.
    pub fn load_model(&mut self, spec: String, adapter: Option<PathBuf>, out: &mut Vec<Action>) {
        let precision = self.models.precision;
        let key = slot_key(&spec, adapter.as_deref(), precision);
        if self.slots.iter().any(|s| s.key == key) {
            self.info(format!(
                "{} is already loaded",
                super::app::spec_name(&spec)
            ));
            return;
        }
        let name = match precision {
            Precision::F32 => super::app::spec_name(&spec),
            p => format!("{} ({})", super::app::spec_name(&spec), p.name()),
        };
        self.slots.push(super::app::Slot {
            key: key.clone(),
            spec: spec.clone(),
            adapter: adapter.clone(),
            name: name.clone(),
            state: SlotState::Loading,
        });
        let opts = precision.options();
        out.push(Action::Engine(Command::Load {
            key,
            spec,
            opts,
            adapter,
        }));
        if self.engine_busy() {
            self.warn(strings::ENGINE_BUSY_QUEUED);
        } else {
            self.info(format!("loading {name}…"));
        }
    }

    pub(super) fn models_key(&mut self, key: &KeyEvent, out: &mut Vec<Action>) -> bool {
        let n = self.models.list.len();
        match key.code {
            KeyCode::Enter => {
                if let Some(m) = self.selected_model() {
                    if let Some(p) = &m.problem {
                        let t = format!("{}: {p}", m.name);
                        self.error(t);
                    } else {
                        let spec = m.path.display().to_string();
                        self.load_model(spec, None, out);
                    }
                }
                return true;
            }
            KeyCode::Home => self.models.selected = 0,
            KeyCode::End => self.models.selected = n.saturating_sub(1),
            _ if keys::is_down(key) => {
                self.models.selected = (self.models.selected + 1).min(n.saturating_sub(1))
            }
            _ if keys::is_up(key) => self.models.selected = self.models.selected.saturating_sub(1),
            _ => match plain(key) {
                Some('u') => self.unload_selected(out),
                Some('p') => {
                    self.models.precision = self.models.precision.next();
                    self.info(strings::precision_note(self.models.precision));
                    let name = self.models.precision.name();
                    self.set_tui_setting("load_precision", serde_json::json!(name));
                    self.save_session();
                }
                Some('L') => self.pick_adapter(),
                Some('a') => {
                    self.open_input(strings::ADD_PATH_TITLE, "", InputPurpose::AddModelPath)
                }
                Some('g') => self.open_input(strings::HUB_TITLE, "", InputPurpose::HubId),
                Some('r') => {
                    self.request_scan(AfterScan::Report);
                    self.info("scanning for models…");
                }
                Some('d') => match self.write_demo_model() {
                    Ok(p) => {
                        let t = format!(
                            "wrote the demo model to {} — {} (Enter loads it)",
                            p.display(),
                            strings::DEMO_WARNING
                        );
                        self.ok(t);
                    }
                    Err(e) => self.error(format!("cannot write the demo model: {e:#}")),
                },
                _ => return false,
            },
        }
        true
    }

    fn unload_selected(&mut self, out: &mut Vec<Action>) {
        let Some(m) = self.selected_model() else {
            return;
        };
        let spec = m.path.display().to_string();
        let keys: Vec<String> = self
            .slots
            .iter()
            .filter(|s| s.spec == spec && s.is_ready())
            .map(|s| s.key.clone())
            .collect();
        if keys.is_empty() {
            self.info("this model is not loaded");
            return;
        }
        for key in keys {
            out.push(Action::Engine(Command::Unload { key }));
        }
    }

    fn pick_adapter(&mut self) {
        let Some(m) = self.selected_model() else {
            return;
        };
        let spec = m.path.display().to_string();
        let runs: Vec<(String, PathBuf)> = self
            .train
            .runs
            .iter()
            .rev()
            .filter(|r| r.has_adapter())
            .map(|r| {
                (
                    format!("{}  {}", r.id, r.model_name()),
                    r.dir.join("adapter"),
                )
            })
            .collect();
        if runs.is_empty() {
            self.info(strings::NO_ADAPTERS);
            return;
        }
        let (items, values): (Vec<String>, Vec<String>) = runs
            .into_iter()
            .map(|(l, p)| (l, p.display().to_string()))
            .unzip();
        self.open_picker(
            strings::ADAPTER_PICK_TITLE,
            items,
            values,
            None,
            PickPurpose::Adapter { spec },
        );
    }

    /// Writes the tiny demo model under `<sessions root>/.models/`, lists and selects it.
    pub fn write_demo_model(&mut self) -> anyhow::Result<PathBuf> {
        let dir = self
            .opts
            .sessions_root
            .join(".models")
            .join(strings::DEMO_NAME);
        if !dir.join("config.json").exists() {
            crate::model::tiny::write_tiny_model(&dir, &crate::model::tiny::TinySpec::default())?;
        }
        self.rescan_models();
        if let Some(i) = self.models.list.iter().position(|m| m.path == dir) {
            self.models.selected = i;
        }
        Ok(dir)
    }

    pub(super) fn add_model_path(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        let p = PathBuf::from(shellish(text));
        if !p.exists() {
            self.error(format!("{}: no such file or folder", p.display()));
            return;
        }
        let p = std::fs::canonicalize(&p).unwrap_or(p);
        if !self.models.added_dirs.contains(&p) {
            self.models.added_dirs.push(p.clone());
        }
        self.save_session();
        self.request_scan(AfterScan::Select(p.clone()));
        self.info(format!("scanning {}…", p.display()));
    }

    pub(super) fn hub_id(&mut self, text: &str, out: &mut Vec<Action>) {
        if text.is_empty() {
            return;
        }
        // `ms:Org/Name` is looked up in the caches by its id
        let local = crate::model::download::parse_spec(text)
            .map(|(_, id)| id)
            .unwrap_or_else(|_| text.to_string());
        match crate::model::loader::resolve(&local) {
            Ok(loc) => {
                let spec = loc.path().display().to_string();
                self.load_model(spec, None, out);
                self.info(format!("{text} is in the local cache; loading it"));
            }
            Err(_) => {
                out.push(Action::Engine(crate::engine::Command::Download {
                    id: text.to_string(),
                }));
                self.info(strings::hub_download_started(text));
            }
        }
    }
}

/// `~/x` → `$HOME/x`.
fn shellish(s: &str) -> String {
    match s.strip_prefix("~/") {
        Some(rest) => format!("{}/{rest}", crate::model::loader::home().display()),
        None => s.to_string(),
    }
}

fn ram_cell(bytes: u64, total: u64) -> Cell<'static> {
    let style = if total > 0 && bytes > total {
        theme::err().add_modifier(Modifier::BOLD)
    } else {
        Style::new()
    };
    Cell::from(Span::styled(human_bytes(bytes), style))
}

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    let list = &app.models.list;
    let detail_h = if area.height >= 30 { 9 } else { 6 };
    let [top, bottom] =
        Layout::vertical([Constraint::Min(5), Constraint::Length(detail_h)]).areas(area);
    let title = format!(
        "{} ({} found, {} loaded) · loads as {}{}",
        strings::MODELS_TITLE,
        list.len(),
        app.ready_slots().count(),
        app.models.precision.name(),
        if app.models.scanning > 0 {
            " · scanning…"
        } else {
            ""
        }
    );
    let block = theme::block(title, true);
    if list.is_empty() && app.models.scanning > 0 {
        f.render_widget(
            Paragraph::new(vec![Line::from("scanning for models…")]).block(block),
            top,
        );
    } else if list.is_empty() {
        let mut lines = vec![
            Line::styled(strings::NO_MODELS, theme::bold()),
            Line::from(""),
            Line::from(strings::NO_MODELS_WHERE),
            Line::from(format!(
                "  {}  (Hugging Face cache)",
                crate::model::loader::hf_cache_dir().display()
            )),
            Line::from(format!(
                "  {}  (ModelScope cache)",
                crate::model::loader::modelscope_cache_dir().display()
            )),
            Line::from(format!("  {}", strings::NO_MODELS_FLAGS)),
        ];
        for d in app.model_dirs() {
            lines.push(Line::styled(format!("  {}", d.display()), theme::dim()));
        }
        lines.push(Line::from(""));
        lines.push(Line::styled(strings::NO_MODELS_DEMO, theme::accent()));
        lines.push(Line::from(strings::NO_MODELS_ADD));
        f.render_widget(
            Paragraph::new(lines)
                .block(block)
                .wrap(Wrap { trim: false }),
            top,
        );
    } else {
        draw_table(f, top, app, block);
    }
    draw_detail(f, bottom, app);
}

fn draw_table(f: &mut Frame, area: Rect, app: &App, block: ratatui::widgets::Block<'static>) {
    let wide = area.width >= 120;
    let total = app.mem_total_bytes;
    let mut header = vec!["", "name", "size", "kind"];
    let mut widths = vec![
        Constraint::Length(2),
        Constraint::Fill(1),
        Constraint::Length(5),
        Constraint::Length(8),
    ];
    if wide {
        header.extend(["family", "format"]);
        widths.extend([Constraint::Length(12), Constraint::Length(18)]);
    }
    header.extend(["params", "disk", "RAM inf", "LoRA", "full FT"]);
    widths.extend([
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(9),
    ]);
    let inner_h = area.height.saturating_sub(3) as usize;
    let sel = app.models.selected;
    let mut off = app.models.offset.get();
    if sel < off {
        off = sel;
    } else if inner_h > 0 && sel >= off + inner_h {
        off = sel + 1 - inner_h;
    }
    app.models.offset.set(off);
    let rows: Vec<Row> = app
        .models
        .list
        .iter()
        .enumerate()
        .skip(off)
        .take(inner_h.max(1))
        .map(|(i, m)| {
            let spec = m.path.display().to_string();
            let slot = app.slots.iter().find(|s| s.spec == spec);
            let mark = match slot.map(|s| &s.state) {
                Some(SlotState::Ready(_)) => Span::styled("●", theme::ok()),
                Some(SlotState::Loading) => Span::styled("◌", theme::warn()),
                None if m.problem.is_some() => Span::styled("!", theme::err()),
                None => Span::raw(" "),
            };
            let demo = m.name == strings::DEMO_NAME;
            let name = if demo {
                format!("{} (demo)", m.name)
            } else {
                m.name.clone()
            };
            let (inf, lora, full) = discover::ram_estimates(m, app.models.precision);
            let mut cells = vec![
                Cell::from(mark),
                Cell::from(Span::styled(
                    name,
                    if demo { theme::warn() } else { Style::new() },
                )),
                Cell::from(m.size.clone()),
                Cell::from(m.variant.clone()),
            ];
            if wide {
                cells.push(Cell::from(m.family.clone()));
                cells.push(Cell::from(truncate(&m.format, 18)));
            }
            cells.push(Cell::from(human_count(m.parameters)));
            cells.push(Cell::from(human_bytes(m.disk_bytes)));
            cells.push(ram_cell(inf, total));
            cells.push(match lora {
                Some(b) => ram_cell(b, total),
                None => Cell::from(Span::styled("dense", theme::dim())),
            });
            cells.push(ram_cell(full, total));
            let row = Row::new(cells);
            if i == sel {
                row.style(theme::selected())
            } else {
                row
            }
        })
        .collect();
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(theme::header()))
        .block(block)
        .column_spacing(1);
    f.render_widget(table, area);
}

fn draw_detail(f: &mut Frame, area: Rect, app: &App) {
    let mut lines: Vec<Line> = Vec::new();
    let advice = match app.data.samples.len() {
        0 => strings::ADVICE_NONE.to_string(),
        n => strings::advice(n),
    };
    if let Some(m) = app.selected_model() {
        lines.push(Line::from(vec![
            Span::styled(m.name.clone(), theme::bold()),
            Span::styled(format!("  {}", m.path.display()), theme::dim()),
        ]));
        if let Some(p) = &m.problem {
            let what = if m.status == discover::STATUS_UNSUPPORTED {
                "not supported"
            } else {
                "cannot be read"
            };
            lines.push(Line::styled(format!("{what}: {p}"), theme::err()));
        }
        if m.name == strings::DEMO_NAME {
            lines.push(Line::styled(strings::DEMO_WARNING, theme::warn()));
        }
    }
    lines.push(Line::from(vec![
        Span::styled("advice: ", theme::accent()),
        Span::raw(advice),
        Span::styled(strings::ADVICE_SUITE, theme::dim()),
    ]));
    if let Some(m) = app.selected_model() {
        lines.push(Line::from(format!(
            "{} · {} · {} layers · hidden {} · context {} · from {}",
            m.family, m.format, m.layers, m.hidden, m.context, m.source
        )));
    }
    let loaded: Vec<String> = app
        .slots
        .iter()
        .map(|s| {
            if s.is_ready() {
                s.label()
            } else {
                format!("{} (loading…)", s.label())
            }
        })
        .collect();
    if !loaded.is_empty() {
        lines.push(Line::from(vec![
            Span::styled("loaded: ", theme::dim()),
            Span::raw(loaded.join(", ")),
        ]));
    }
    if app.mem_total_bytes > 0 {
        lines.push(Line::styled(
            format!(
                "machine RAM {} — estimates above it are red",
                human_bytes(app.mem_total_bytes)
            ),
            theme::dim(),
        ));
    }
    f.render_widget(
        Paragraph::new(lines)
            .block(theme::block("Details", false))
            .wrap(Wrap { trim: true }),
        area,
    );
}
