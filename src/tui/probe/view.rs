//! Probe pane, drawing: [`draw`] paints the pane from `&App` alone — the system and user
//! prompt editors, the sampling settings, and the streamed outputs side by side, the
//! probe history or the suite's capability matrix.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table, Wrap};
use ratatui::Frame;

use super::{json_badge, ModelOutput, ProbeView, FIELDS, F_PROMPT, F_SYSTEM};
use crate::engine::generate::StopReason;
use crate::tui::app::App;
use crate::tui::keys::strings;
use crate::tui::theme;
use crate::tui::widgets::{display_width, one_line, short_float, truncate, wrap, TextEditor};

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
    let r = &s.results;
    let fails: Vec<String> = r
        .results
        .iter()
        .filter(|x| !x.pass)
        .map(|x| format!("✗ {} × {}: {}", x.name, x.model, x.failures()))
        .collect();
    let fail_h = if fails.is_empty() {
        0
    } else {
        (fails.len() as u16 + 2).min(area.height / 3)
    };
    let [top, bottom] =
        Layout::vertical([Constraint::Fill(1), Constraint::Length(fail_h)]).areas(area);
    let mut header = vec![Cell::from("case"), Cell::from("checks")];
    header.extend(r.models.iter().map(|m| Cell::from(m.label.clone())));
    let mut rows: Vec<Row> = Vec::new();
    for (i, c) in r.cases.iter().enumerate() {
        let checks = match c.expect_json.as_ref().and_then(|o| o.get("is_fraud")) {
            Some(v) => format!("is_fraud={v}"),
            None => c.tags.first().cloned().unwrap_or_else(|| "format".into()),
        };
        let mut cells = vec![Cell::from(c.name.clone()), Cell::from(checks)];
        for j in 0..r.models.len() {
            let o = s.cells.get(i).and_then(|row| row.get(j));
            let (text, style) = match (s.result(i, j), o) {
                (Some(x), _) if x.pass => (
                    format!("✓ {} tok/s", short_float(x.tokens_per_s)),
                    theme::ok(),
                ),
                (Some(x), _) => {
                    let first = x
                        .checks
                        .iter()
                        .find(|c| !c.pass)
                        .map(|c| c.check.as_str())
                        .unwrap_or("");
                    (format!("✗ {first}"), theme::err())
                }
                (None, Some(o)) if o.cancelled => ("cancelled".to_string(), theme::dim()),
                (None, Some(o)) if !o.finished() => ("…".to_string(), theme::dim()),
                _ => ("–".to_string(), theme::dim()),
            };
            cells.push(Cell::from(Span::styled(text, style)));
        }
        rows.push(Row::new(cells));
    }
    let mut total = vec![
        Cell::from(Span::styled("passed", theme::bold())),
        Cell::from(""),
    ];
    for m in &r.models {
        let (p, n) = r.score(&m.label);
        total.push(Cell::from(Span::styled(
            format!("{p}/{n} of {}", r.cases.len()),
            theme::bold(),
        )));
    }
    rows.push(Row::new(total));
    let mut widths = vec![Constraint::Length(20), Constraint::Length(14)];
    widths.extend(r.models.iter().map(|_| Constraint::Fill(1)));
    let saved = match &s.saved {
        Some(_) => format!(" · saved {}", r.id),
        None => String::new(),
    };
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(theme::header()))
        .block(theme::block(
            format!(
                "{} — pass/fail matrix ({}){saved} · b runs, E exports",
                strings::SUITE_TITLE,
                r.suite
            ),
            false,
        ));
    f.render_widget(table, top);
    if fail_h > 0 {
        let block = theme::block("Failures", false);
        let inner = block.inner(bottom);
        f.render_widget(block, bottom);
        let w = inner.width as usize;
        let lines: Vec<Line> = fails
            .iter()
            .map(|l| Line::styled(truncate(&one_line(l), w), theme::warn()))
            .collect();
        f.render_widget(Paragraph::new(lines), inner);
    }
}
