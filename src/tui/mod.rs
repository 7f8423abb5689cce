//! The workbench: six panes (Models, Probe, Train, Data, Eval, Monitor) over one engine.
//!
//! * [`app`] holds the state and its update (keys → actions, engine events → state);
//! * [`draw`] paints a frame from `&App` alone (snapshot-testable with `TestBackend`);
//! * [`event_loop`] runs on a tokio current-thread runtime: terminal events arrive from a
//!   std thread over an mpsc channel, engine events are drained on a ~30 ms tick (which
//!   also sends what is due without a key: the Monitor pane's paced replay), and a frame is
//!   drawn right after each key and whenever something changed;
//! * [`terminal`] switches the terminal and always gives it back (quit, error, panic, and
//!   SIGTERM / SIGHUP / SIGINT, which end the loop as a quit does).

pub mod app;
pub mod data;
pub mod engine;
pub mod eval;
/// Realistic app states for tests and benchmarks; not in the shipped binary (the `fixtures`
/// feature, which the tests and examples turn on through the dev-dependency on this package).
#[cfg(feature = "fixtures")]
pub mod fixtures;
pub mod io;
pub mod keys;
pub mod models;
pub mod monitor;
pub mod probe;
pub mod terminal;
pub mod theme;
pub mod train;
pub mod widgets;

use anyhow::{bail, Context, Result};
use crossterm::event::Event as TermEvent;
use ratatui::backend::Backend;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Clear, Paragraph, Tabs};
use ratatui::{Frame, Terminal};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

pub use app::{Action, App, AppOptions, Tab};
use app::{Level, Modal};
use keys::strings;
pub use terminal::StoppedBySignal;
use terminal::TerminalGuard;

use crate::data::Session;
use crate::engine::Engine;

/// The sessions root: `FRAUDLAB_SESSIONS`, else `./sessions`.
pub fn sessions_root() -> PathBuf {
    std::env::var_os("FRAUDLAB_SESSIONS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("sessions"))
}

/// Opens the workbench on session `session`. Returns when the user quits, or with
/// [`StoppedBySignal`] after SIGTERM / SIGHUP / SIGINT; the terminal is restored on quit, on
/// a signal, on error and on panic, and the session is saved on quit and on a signal.
pub fn run(session: &str, models_dir: &[PathBuf]) -> Result<()> {
    if !std::io::stdout().is_terminal() {
        bail!(strings::NOT_A_TERMINAL);
    }
    terminal::install()?;
    let root = sessions_root();
    let sess = Session::open(&root, session)
        .with_context(|| format!("cannot open session {session:?} under {}", root.display()))?;
    let (mut app, startup) = App::open(
        sess,
        AppOptions {
            sessions_root: root,
            model_dirs: models_dir.to_vec(),
        },
    );
    let engine = Engine::spawn(4096);
    apply(startup, &engine);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let result = {
        let mut term = TerminalGuard::enter()?;
        let (tx, mut rx) = unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let reader = std::thread::Builder::new()
            .name("fraudlab-input".into())
            .spawn(move || {
                while !stop2.load(Ordering::Relaxed) {
                    match crossterm::event::poll(Duration::from_millis(100)) {
                        Ok(true) => match crossterm::event::read() {
                            Ok(ev) => {
                                if tx.send(ev).is_err() {
                                    break;
                                }
                            }
                            Err(_) => break,
                        },
                        Ok(false) => {}
                        Err(_) => break,
                    }
                }
            })?;
        let r = rt.block_on(event_loop(
            &mut term.terminal,
            &mut app,
            &mut rx,
            &engine,
            &mut |_| {},
        ));
        stop.store(true, Ordering::Relaxed);
        let _ = reader.join();
        r
    };
    // the terminal is back: a further signal ends the process at once
    terminal::exit_on_next_signal();
    terminal::print_deferred_panics();
    app.save_session_on_exit();
    if app.engine_working() {
        // no terminal after SIGHUP: nothing to print to then
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "{}", strings::QUIT_WAIT);
    }
    drop(engine);
    match terminal::signal_received() {
        Some(signal) => Err(StoppedBySignal { signal }.into()),
        None => result,
    }
}

/// Carries out actions on the engine.
pub fn apply(actions: Vec<Action>, engine: &Engine) {
    for a in actions {
        match a {
            Action::Engine(c) => engine.send(c),
            Action::Cancel => engine.cancel_interactive(),
            Action::CancelEvaluation => engine.cancel_evaluation(),
            Action::PauseTraining => engine.pause_training(),
            Action::ResumeTraining => engine.resume_training(),
            Action::StopTraining => engine.stop_training(),
            Action::Quit => {}
        }
    }
}

/// The loop: terminal events from `input`, engine events on a 30 ms tick, a frame after each
/// change. `after_draw` runs after every frame (benchmarks time with it).
pub async fn event_loop<B: Backend>(
    terminal: &mut Terminal<B>,
    app: &mut App,
    input: &mut UnboundedReceiver<TermEvent>,
    engine: &Engine,
    after_draw: &mut dyn FnMut(&App),
) -> Result<()> {
    let mut tick = tokio::time::interval(Duration::from_millis(30));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let io = io::IoWorker::spawn()?;
    terminal.draw(|f| draw(f, app))?;
    after_draw(app);
    loop {
        let mut dirty = false;
        for job in app.take_io() {
            io.send(job);
        }
        tokio::select! {
            ev = input.recv() => match ev {
                Some(ev) => {
                    test_panic_hook(&ev);
                    let acts = app.handle_event(&ev);
                    apply(acts, engine);
                    // take whatever else is already queued before drawing (fast typing, paste)
                    while let Ok(ev) = input.try_recv() {
                        let acts = app.handle_event(&ev);
                        apply(acts, engine);
                    }
                    dirty = true;
                }
                None => break,
            },
            _ = tick.tick() => {
                if terminal::signal_received().is_some() {
                    break;
                }
                let events = engine.drain();
                if !events.is_empty() {
                    dirty = true;
                    for e in events {
                        app.on_engine_event(e);
                    }
                }
                for done in io.drain() {
                    app.on_io(done);
                    dirty = true;
                }
                if app.tick(Instant::now()) {
                    dirty = true;
                }
                let due = app.due(Instant::now());
                if !due.is_empty() {
                    apply(due, engine);
                    dirty = true;
                }
            }
        }
        if app.quit {
            break;
        }
        if dirty {
            terminal.draw(|f| draw(f, app))?;
            after_draw(app);
        }
    }
    Ok(())
}

/// The test hook [`crate::TEST_PANIC_ENV`]`=ui-thread`: F12 panics the UI thread.
fn test_panic_hook(ev: &TermEvent) {
    if let TermEvent::Key(k) = ev {
        if k.code == crossterm::event::KeyCode::F(12)
            && crate::test_panic_due(crate::TestPanic::UiThread)
        {
            panic!("test panic in the UI thread ({})", crate::TEST_PANIC_ENV);
        }
    }
}

// ---------------------------------------------------------------- drawing

/// Paints the whole workbench from the state.
pub fn draw(f: &mut Frame, app: &App) {
    let area = f.area();
    let [top, body, msg, status] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_tabs(f, top, app);
    match app.tab {
        Tab::Models => models::draw(f, body, app),
        Tab::Probe => probe::draw(f, body, app),
        Tab::Train => train::draw(f, body, app),
        Tab::Data => data::draw(f, body, app),
        Tab::Eval => eval::draw(f, body, app),
        Tab::Monitor => monitor::draw(f, body, app),
    }
    draw_message(f, msg, app);
    draw_status(f, status, app);
    if let Some(m) = &app.modal {
        draw_modal(f, body, m);
    }
    if app.help {
        draw_help(f, area, app);
    }
}

fn draw_tabs(f: &mut Frame, area: Rect, app: &App) {
    let right = format!(" session {} ", app.session.name());
    let rw = (widgets::display_width(&right) as u16).min(area.width / 3);
    let [l, r] = Layout::horizontal([Constraint::Fill(1), Constraint::Length(rw)]).areas(area);
    let names: Vec<String> = Tab::ALL
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{} {}", i + 1, t.title()))
        .collect();
    let [name, tabs_a] = Layout::horizontal([Constraint::Length(10), Constraint::Fill(1)]).areas(l);
    // padded titles when they all fit, else unpadded (every pane stays visible at 80 columns)
    let padded: usize = names
        .iter()
        .map(|n| widgets::display_width(n) + 3)
        .sum::<usize>()
        .saturating_sub(1);
    let pad = if padded <= tabs_a.width as usize {
        " "
    } else {
        ""
    };
    let titles: Vec<Line> = names.into_iter().map(Line::from).collect();
    let tabs = Tabs::new(titles)
        .select(app.tab.index())
        .style(theme::dim())
        .highlight_style(
            Style::new()
                .fg(theme::ACCENT)
                .add_modifier(Modifier::BOLD | Modifier::REVERSED),
        )
        .divider("│")
        .padding(pad, pad);
    f.render_widget(
        Paragraph::new(Span::styled(
            format!(" {} ", strings::APP),
            theme::bold().fg(theme::ACCENT),
        )),
        name,
    );
    f.render_widget(tabs, tabs_a);
    f.render_widget(
        Paragraph::new(Span::styled(
            widgets::truncate(&right, rw as usize),
            theme::dim(),
        )),
        r,
    );
}

fn level_style(l: Level) -> Style {
    match l {
        Level::Info => Style::new(),
        Level::Ok => theme::ok(),
        Level::Warn => theme::warn(),
        Level::Error => theme::err().add_modifier(Modifier::BOLD),
    }
}

fn draw_message(f: &mut Frame, area: Rect, app: &App) {
    if let Some(m) = &app.message {
        let text = widgets::truncate(&widgets::one_line(&m.text), area.width as usize);
        f.render_widget(
            Paragraph::new(Span::styled(text, level_style(m.level))),
            area,
        );
    }
}

fn draw_status(f: &mut Frame, area: Rect, app: &App) {
    let (state, level) = app.engine_status();
    let mut spans = vec![Span::styled(
        format!(" {state} "),
        level_style(level).add_modifier(Modifier::REVERSED),
    )];
    let loaded = app.ready_slots().count();
    spans.push(Span::styled(format!(" {loaded} loaded "), theme::dim()));
    spans.push(Span::styled(
        format!(" mem {:.0} MiB ", app.rss_mib),
        theme::dim(),
    ));
    let used: usize = spans
        .iter()
        .map(|s| widgets::display_width(&s.content))
        .sum();
    let tail = [("?", "help"), ("q", "quit")];
    let tail_w: usize = tail
        .iter()
        .map(|(k, w)| widgets::display_width(k) + widgets::display_width(w) + 3)
        .sum();
    let mut room = (area.width as usize).saturating_sub(used + tail_w);
    let mut hint_spans = Vec::new();
    for (k, what) in keys::hints(app.tab) {
        let w = widgets::display_width(k) + widgets::display_width(what) + 3;
        if w > room {
            break;
        }
        room -= w;
        hint_spans.push(Span::styled(format!(" {k}"), theme::accent()));
        hint_spans.push(Span::raw(format!(" {what} ")));
    }
    for (k, what) in tail {
        hint_spans.push(Span::styled(format!(" {k}"), theme::accent()));
        hint_spans.push(Span::raw(format!(" {what} ")));
    }
    spans.extend(hint_spans);
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_modal(f: &mut Frame, body: Rect, m: &Modal) {
    match m {
        Modal::Input(inp) => {
            let w = (body.width.saturating_sub(4)).clamp(20, 90);
            let r = widgets::centered(body, w, 3);
            f.render_widget(Clear, r);
            let block = theme::block(format!("{} — Enter ok, Esc cancel", inp.title), true);
            let inner = block.inner(r);
            f.render_widget(block, r);
            let width = inner.width.max(1) as usize;
            // one line: scroll horizontally so the cursor stays visible
            let (rows, (cx, cy)) = inp.editor.layout(usize::MAX / 4);
            let text = rows.into_iter().next().unwrap_or_default();
            let skip_w = (cx + 1).saturating_sub(width);
            let mut shown = String::new();
            let mut acc = 0;
            for c in text.chars() {
                let cw = widgets::char_width(c);
                if acc >= skip_w {
                    shown.push(c);
                }
                acc += cw;
            }
            f.render_widget(Paragraph::new(widgets::truncate(&shown, width)), inner);
            let _ = cy;
            f.set_cursor_position((
                inner.x + (cx - skip_w).min(width.saturating_sub(1)) as u16,
                inner.y,
            ));
        }
        Modal::Picker(p) => {
            let longest = p
                .items
                .iter()
                .map(|s| widgets::display_width(s))
                .max()
                .unwrap_or(10)
                .max(widgets::display_width(&p.title)) as u16;
            let w = (longest + 8).clamp(24, body.width.saturating_sub(2).max(24));
            let h = (p.items.len() as u16 + 2).clamp(3, body.height.max(3));
            let r = widgets::centered(body, w, h);
            f.render_widget(Clear, r);
            let block = theme::block(p.title.clone(), true);
            let inner = block.inner(r);
            f.render_widget(block, r);
            let rows = inner.height as usize;
            let off = p.selected.saturating_sub(rows.saturating_sub(1));
            let lines: Vec<Line> = p
                .items
                .iter()
                .enumerate()
                .skip(off)
                .take(rows)
                .map(|(i, it)| {
                    let mark = match &p.checked {
                        Some(c) => {
                            if c.get(i).copied().unwrap_or(false) {
                                "[x] "
                            } else {
                                "[ ] "
                            }
                        }
                        None => "",
                    };
                    let line = Line::from(format!("{mark}{it}"));
                    if i == p.selected {
                        line.style(theme::selected())
                    } else {
                        line
                    }
                })
                .collect();
            f.render_widget(Paragraph::new(lines), inner);
        }
    }
}

fn draw_help(f: &mut Frame, area: Rect, app: &App) {
    let w = area.width.saturating_sub(4).min(100);
    let h = area.height.saturating_sub(2);
    let r = widgets::centered(area, w, h);
    f.render_widget(Clear, r);
    let block = theme::block(strings::HELP_TITLE, true);
    let inner = block.inner(r);
    f.render_widget(block, r);
    let key_w = 24usize.min(inner.width as usize / 3);
    let what_w = (inner.width as usize).saturating_sub(key_w + 1);
    let mut lines: Vec<Line> = Vec::new();
    let section = |title: &str, list: &[keys::KeyHelp], lines: &mut Vec<Line>| {
        lines.push(Line::styled(title.to_string(), theme::header()));
        for k in list {
            for (i, row) in widgets::wrap(k.what, what_w.max(1)).into_iter().enumerate() {
                let key = if i == 0 {
                    format!("{:<key_w$}", widgets::truncate(k.keys, key_w))
                } else {
                    " ".repeat(key_w)
                };
                lines.push(Line::from(vec![
                    Span::styled(key, theme::accent()),
                    Span::raw(" "),
                    Span::raw(row),
                ]));
            }
        }
        lines.push(Line::from(""));
    };
    let cur = app.tab;
    section(
        &format!("{} (this pane)", cur.title()),
        keys::pane_keys(cur),
        &mut lines,
    );
    section(strings::GLOBAL_SECTION, keys::GLOBAL, &mut lines);
    for t in Tab::ALL.into_iter().filter(|&t| t != cur) {
        section(t.title(), keys::pane_keys(t), &mut lines);
    }
    let skip = app
        .help_scroll
        .min(lines.len().saturating_sub(inner.height as usize));
    f.render_widget(
        Paragraph::new(lines.into_iter().skip(skip).collect::<Vec<_>>()),
        inner,
    );
}

/// For tests and benchmarks: one frame of `app` on a `TestBackend` of `w` x `h`, as text
/// (rows joined by newlines; a wide character's second cell is skipped).
pub fn render_to_string(app: &App, w: u16, h: u16) -> String {
    let backend = ratatui::backend::TestBackend::new(w, h);
    let mut t = Terminal::new(backend).expect("test backend");
    t.draw(|f| draw(f, app)).expect("draw");
    buffer_text(t.backend().buffer())
}

/// The text of a buffer, row by row.
pub fn buffer_text(b: &ratatui::buffer::Buffer) -> String {
    let mut s = String::new();
    for y in 0..b.area.height {
        let mut skip = 0;
        for x in 0..b.area.width {
            if skip > 0 {
                skip -= 1;
                continue;
            }
            let sym = b[(x, y)].symbol();
            s.push_str(sym);
            skip = widgets::display_width(sym).saturating_sub(1);
        }
        s.push('\n');
    }
    s
}
