//! Train pane, drawing: [`draw`] paints the pane from `&App` alone — the settings form,
//! the live run (loss, validation loss and learning-rate charts, throughput, ETA, log
//! lines) or the session's past runs with their loss curves overlaid.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Axis, Cell, Chart, Dataset, GraphType, LegendPosition, Paragraph, Row, Table, Wrap,
};
use ratatui::Frame;

use super::{RunInfo, TrainView, FIELDS};
use crate::tui::app::App;
use crate::tui::keys::strings;
use crate::tui::theme;
use crate::tui::widgets::{human_secs, short_float, truncate};

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
            Line::styled(truncate(&crate::tui::widgets::one_line(l), w), st)
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
