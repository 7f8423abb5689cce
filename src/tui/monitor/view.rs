//! Monitor pane, drawing: [`draw`] paints the pane from `&App` alone — the dialogue list,
//! the header with the play state and alert rule, the turns with each model's P(fraud),
//! the risk-over-turns chart, the alert / explanation side panel and the live input line.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Cell, Chart, Dataset, GraphType, Paragraph, Row, Table, Wrap};
use ratatui::Frame;

use super::{fmt_ms, label_text, median, risk_bar, short_labels, verdict, ExplainState, Score};
use crate::tui::app::App;
use crate::tui::keys::strings;
use crate::tui::theme;
use crate::tui::widgets::{char_width, display_width, one_line, truncate, wrap};

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    let m = &app.monitor;
    let has_data = !app.data.samples.is_empty();
    let wide = area.width >= 120;
    let nothing_yet = m.script.is_none() && m.turns.is_empty() && !m.editing;
    let list = has_data && (wide || m.show_list || nothing_yet);
    let main = if list && wide {
        let lw = (area.width * 3 / 10).clamp(36, 60);
        let [l, r] = Layout::horizontal([Constraint::Length(lw), Constraint::Fill(1)]).areas(area);
        draw_list(f, l, app);
        r
    } else if list {
        draw_list(f, area, app);
        return;
    } else {
        area
    };
    let chart_h = if main.height >= 34 {
        14
    } else if main.height >= 20 {
        9
    } else {
        0
    };
    let [head, turns, bottom, input] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(chart_h),
        Constraint::Length(3),
    ])
    .areas(main);
    draw_head(f, head, app);
    draw_turns(f, turns, app);
    if chart_h > 0 {
        let side_w = (bottom.width * 2 / 5).clamp(30, 56).min(bottom.width);
        let [chart, side] =
            Layout::horizontal([Constraint::Fill(1), Constraint::Length(side_w)]).areas(bottom);
        draw_chart(f, chart, app);
        draw_alert(f, side, app);
    }
    draw_input(f, input, app);
}

/// The threshold(s) in use, for the header.
fn threshold_text(app: &App) -> String {
    let m = &app.monitor;
    if !m.followers.is_empty() {
        let mut ts: Vec<f64> = m.followers.iter().map(|f| f.cfg.threshold).collect();
        ts.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
        let ks: Vec<usize> = m.followers.iter().map(|f| f.cfg.consecutive).collect();
        let t = if ts.len() == 1 {
            format!("{:.2}", ts[0])
        } else {
            ts.iter()
                .map(|t| format!("{t:.2}"))
                .collect::<Vec<_>>()
                .join("/")
        };
        let k = if ks.iter().all(|&k| k == ks[0]) {
            ks[0].to_string()
        } else {
            ks.iter()
                .map(|k| k.to_string())
                .collect::<Vec<_>>()
                .join("/")
        };
        return format!("threshold {t} · K {k}");
    }
    let t = m
        .threshold
        .map(|t| format!("{t:.2}"))
        .unwrap_or_else(|| "per model".into());
    let k = m
        .consecutive
        .map(|k| k.to_string())
        .unwrap_or_else(|| "per model".into());
    format!("threshold {t} · K {k}")
}

fn draw_head(f: &mut Frame, area: Rect, app: &App) {
    let m = &app.monitor;
    let names: Vec<String> = if m.started {
        m.followers
            .iter()
            .map(|x| match &x.stopped {
                Some(_) => format!("{} (stopped)", x.label),
                None => x.label.clone(),
            })
            .collect()
    } else {
        app.ready_slots()
            .filter(|s| m.chosen.is_empty() || m.chosen.contains(&s.key))
            .map(|s| s.label())
            .collect()
    };
    let play = if m.playing {
        Span::styled(
            format!("▶ {:.1} s/turn", m.pace_s),
            theme::ok().add_modifier(Modifier::BOLD),
        )
    } else {
        Span::styled(format!("⏸ {:.1} s/turn", m.pace_s), theme::dim())
    };
    let mut spans = vec![
        play,
        Span::raw("  "),
        Span::styled(threshold_text(app), theme::accent()),
        Span::styled(
            format!("  explain {}", if m.auto_explain { "auto" } else { "on x" }),
            theme::dim(),
        ),
        Span::styled("  models ", theme::dim()),
    ];
    let used: usize = spans.iter().map(|s| display_width(&s.content)).sum();
    let models = if names.is_empty() {
        "(none loaded)".to_string()
    } else {
        names.join(", ")
    };
    spans.push(Span::raw(truncate(
        &models,
        (area.width as usize).saturating_sub(used),
    )));
    let line = Line::from(spans);
    f.render_widget(Paragraph::new(line), area);
}

fn draw_list(f: &mut Frame, area: Rect, app: &App) {
    let d = &app.data;
    let m = &app.monitor;
    if d.samples.is_empty() {
        f.render_widget(
            Paragraph::new(strings::MONITOR_NO_DATASET)
                .wrap(Wrap { trim: true })
                .block(theme::block(strings::MONITOR_LIST_TITLE, true)),
            area,
        );
        return;
    }
    let name = d
        .path
        .as_ref()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let title = format!(
        "{} · {name} · {} — Enter follows",
        strings::MONITOR_LIST_TITLE,
        d.samples.len()
    );
    let block = theme::block(title, true);
    let h = area.height.saturating_sub(3) as usize;
    let n = d.samples.len();
    let sel = m.list_sel.min(n - 1);
    let mut off = m.list_offset.get();
    if sel < off {
        off = sel;
    } else if h > 0 && sel >= off + h {
        off = sel + 1 - h;
    }
    off = off.min(n.saturating_sub(h.max(1)));
    m.list_offset.set(off);
    // the picked dialogue, while the same dataset is open
    let picked = m
        .script
        .as_ref()
        .filter(|s| d.samples.get(s.index).is_some_and(|x| x.id == s.id))
        .map(|s| s.index);
    let rows: Vec<Row> = (off..n)
        .take(h.max(1))
        .map(|i| {
            let s = &d.samples[i];
            let label = d.effective(i);
            // only the rows on screen are parsed
            let turns = s.turns().len();
            let mark = if picked == Some(i) { "▶" } else { " " };
            let row = Row::new(vec![
                Cell::from(format!("{mark}{}", i + 1)),
                Cell::from(Span::styled(
                    match label {
                        Some(true) => "fraud",
                        Some(false) => "normal",
                        None => "–",
                    },
                    theme::label_style(label),
                )),
                Cell::from(turns.to_string()),
                Cell::from(d.previews.get(i).map(String::as_str).unwrap_or("")),
            ]);
            if i == sel {
                row.style(theme::selected())
            } else {
                row
            }
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(5),
            Constraint::Fill(1),
        ],
    )
    .header(Row::new(["#", "label", "turns", "first turn"]).style(theme::header()))
    .block(block);
    f.render_widget(table, area);
}

fn turns_title(app: &App) -> String {
    let m = &app.monitor;
    let mut t = strings::MONITOR_TITLE.to_string();
    match &m.script {
        Some(s) => t.push_str(&format!(
            " · dialogue #{} · {} · turn {}/{}",
            s.index + 1,
            label_text(s.label),
            m.next,
            s.turns.len()
        )),
        None if !m.turns.is_empty() => t.push_str(&format!(" · live · {} turns", m.turns.len())),
        None => {}
    }
    let typed = m.turns.iter().filter(|r| r.typed).count();
    if typed > 0 && m.script.is_some() {
        t.push_str(&format!(" · +{typed} typed"));
    }
    if m.waiting() > 0 {
        t.push_str(" · scoring…");
    }
    t
}

fn draw_turns(f: &mut Frame, area: Rect, app: &App) {
    let m = &app.monitor;
    let block = theme::block(turns_title(app), !m.editing);
    if m.turns.is_empty() {
        let msg = match app.monitor_blocked() {
            Some(why) if app.ready_slots().next().is_none() => why,
            _ => strings::MONITOR_EMPTY.to_string(),
        };
        f.render_widget(
            Paragraph::new(msg).wrap(Wrap { trim: true }).block(block),
            area,
        );
        return;
    }
    let nf = m.followers.len();
    let inner_w = area.width.saturating_sub(2) as usize;
    // per model: "0.83 ▇▇▇▇▇" (number and bar), narrower when room is short
    let bar_w = if inner_w >= 60 + nf * 12 {
        6
    } else if inner_w >= 40 + nf * 8 {
        3
    } else {
        0
    };
    let col_w = 4 + if bar_w > 0 { bar_w + 1 } else { 0 };
    let h = area.height.saturating_sub(3) as usize;
    let off = m.turns.len().saturating_sub(h.max(1));
    // speaker colours by first appearance
    let mut speakers: Vec<&str> = Vec::new();
    for r in &m.turns {
        if !speakers.contains(&r.speaker.as_str()) {
            speakers.push(&r.speaker);
        }
    }
    let text_w = inner_w.saturating_sub(5 + nf * (col_w + 1) + 7).max(4);
    let alert_turns: Vec<usize> = m
        .followers
        .iter()
        .filter_map(|f| f.alert.as_ref().map(|a| a.0))
        .collect();
    let rows: Vec<Row> = m
        .turns
        .iter()
        .enumerate()
        .skip(off)
        .map(|(i, r)| {
            let turn = i + 1;
            let fired = alert_turns.contains(&turn);
            let num = Cell::from(Span::styled(
                format!("{turn}{}", if fired { "!" } else { "" }),
                if fired {
                    theme::err().add_modifier(Modifier::BOLD)
                } else {
                    theme::dim()
                },
            ));
            let si = speakers.iter().position(|s| *s == r.speaker).unwrap_or(0);
            let who = if r.speaker.is_empty() {
                String::new()
            } else {
                format!("{}: ", r.speaker)
            };
            let body = one_line(&r.text);
            let who_w = display_width(&who).min(text_w);
            let mut text_spans = vec![Span::styled(
                truncate(&who, text_w),
                Style::new().fg(theme::speaker_color(si)),
            )];
            text_spans.push(Span::raw(truncate(&body, text_w.saturating_sub(who_w))));
            if r.typed {
                text_spans.push(Span::styled(" ⌨", theme::dim()));
            }
            let mut cells = vec![num, Cell::from(Line::from(text_spans))];
            let mut lat: Option<f64> = None;
            for (fi, s) in r.scores.iter().enumerate() {
                let thr = m.followers.get(fi).map(|f| f.cfg.threshold).unwrap_or(0.5);
                cells.push(match s {
                    Score::Waiting(_) => Cell::from(Span::styled("…", theme::dim())),
                    Score::Skipped => Cell::from(Span::styled("–", theme::dim())),
                    Score::Failed(e) => Cell::from(Span::styled(
                        if e == "cancelled" { "cancel" } else { "error" },
                        theme::err(),
                    )),
                    Score::Done(t) => {
                        lat = Some(lat.map_or(t.latency_ms, |l: f64| l.max(t.latency_ms)));
                        let st = if t.p_fraud >= thr {
                            theme::err().add_modifier(Modifier::BOLD)
                        } else {
                            theme::ok()
                        };
                        let txt = if bar_w > 0 {
                            format!("{:.2} {}", t.p_fraud, risk_bar(t.p_fraud, bar_w))
                        } else {
                            format!("{:.2}", t.p_fraud)
                        };
                        Cell::from(Span::styled(txt, st))
                    }
                });
            }
            cells.push(Cell::from(Span::styled(
                lat.map(fmt_ms).unwrap_or_default(),
                theme::dim(),
            )));
            Row::new(cells)
        })
        .collect();
    // model columns in their chart colours
    let mut header = vec![Cell::from("#"), Cell::from("turn")];
    let mut widths = vec![Constraint::Length(4), Constraint::Fill(1)];
    let labels: Vec<String> = m.followers.iter().map(|f| f.label.clone()).collect();
    for (fi, label) in short_labels(&labels).iter().enumerate() {
        header.push(Cell::from(Span::styled(
            truncate(label, col_w),
            theme::bold().fg(theme::SERIES[fi % theme::SERIES.len()]),
        )));
        widths.push(Constraint::Length(col_w as u16));
    }
    header.push(Cell::from("ms"));
    widths.push(Constraint::Length(6));
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(theme::header()))
        .block(block);
    f.render_widget(table, area);
}

fn draw_chart(f: &mut Frame, area: Rect, app: &App) {
    let m = &app.monitor;
    let planned = m.script.as_ref().map(|s| s.turns.len()).unwrap_or(0);
    let max_x = planned.max(m.turns.len()).max(2) as f64;
    let series: Vec<Vec<(f64, f64)>> = (0..m.followers.len())
        .map(|fi| {
            m.turns
                .iter()
                .enumerate()
                .filter_map(|(i, r)| match r.scores.get(fi) {
                    Some(Score::Done(t)) => Some(((i + 1) as f64, t.p_fraud)),
                    _ => None,
                })
                .collect()
        })
        .collect();
    let mut thresholds: Vec<f64> = if m.followers.is_empty() {
        vec![m.threshold.unwrap_or(0.5)]
    } else {
        m.followers.iter().map(|f| f.cfg.threshold).collect()
    };
    thresholds.sort_by(|a, b| a.total_cmp(b));
    thresholds.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
    let lines: Vec<[(f64, f64); 2]> = thresholds.iter().map(|&t| [(1.0, t), (max_x, t)]).collect();
    let mut ds = Vec::new();
    // the legend is the block's bottom title: a chart legend would hide the first turns
    let mut legend = vec![Span::raw(" ")];
    for l in &lines {
        ds.push(
            Dataset::default()
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(theme::warn())
                .data(l),
        );
    }
    let ts: Vec<String> = thresholds.iter().map(|t| format!("{t:.2}")).collect();
    legend.push(Span::styled(
        format!("── threshold {} ", ts.join("/")),
        theme::warn(),
    ));
    for (fi, pts) in series.iter().enumerate() {
        let style = Style::new().fg(theme::SERIES[fi % theme::SERIES.len()]);
        legend.push(Span::styled(
            format!("── {} ", truncate(&m.followers[fi].label, 24)),
            style,
        ));
        // one point alone is no line: a dot
        let (marker, kind) = if pts.len() > 1 {
            (Marker::Braille, GraphType::Line)
        } else {
            (Marker::Dot, GraphType::Scatter)
        };
        ds.push(
            Dataset::default()
                .marker(marker)
                .graph_type(kind)
                .style(style)
                .data(pts),
        );
    }
    let mid = ((1.0 + max_x) / 2.0).round();
    let chart = Chart::new(ds)
        .block(theme::block("Risk over turns", false).title_bottom(Line::from(legend)))
        .x_axis(
            Axis::default()
                .title("turn")
                .style(theme::dim())
                .bounds([1.0, max_x])
                .labels(vec![
                    Span::raw("1"),
                    Span::raw(format!("{mid:.0}")),
                    Span::raw(format!("{max_x:.0}")),
                ]),
        )
        .y_axis(
            Axis::default()
                .style(theme::dim())
                .bounds([0.0, 1.0])
                .labels(vec![Span::raw("0"), Span::raw("0.5"), Span::raw("1")]),
        )
        .legend_position(None);
    f.render_widget(chart, area);
}

fn draw_alert(f: &mut Frame, area: Rect, app: &App) {
    let m = &app.monitor;
    let alerted = m.first_alert().is_some();
    let title = match m.first_alert() {
        Some((fi, t)) => format!("ALERT at turn {t} · {}", m.followers[fi].label),
        None => "Alert".to_string(),
    };
    let block = if alerted {
        theme::block(title, true)
            .border_style(theme::err())
            .title_style(theme::err().add_modifier(Modifier::BOLD))
    } else {
        theme::block(title, false)
    };
    let inner = block.inner(area);
    f.render_widget(block, area);
    let w = inner.width.max(1) as usize;
    let mut lines: Vec<Line> = Vec::new();
    let push_wrapped = |lines: &mut Vec<Line>, text: &str, style: Style| {
        for r in wrap(text, w) {
            lines.push(Line::styled(r, style));
        }
    };
    let label = m.script.as_ref().and_then(|s| s.label);
    if m.followers.is_empty() {
        push_wrapped(&mut lines, "no conversation yet", theme::dim());
    }
    let done = m.script_done() && m.waiting() == 0;
    for fo in &m.followers {
        match &fo.alert {
            Some((t, sp, p)) => {
                push_wrapped(
                    &mut lines,
                    &format!(
                        "{}: fired at turn {t} (P {p:.2} ≥ {:.2})",
                        fo.label, fo.cfg.threshold
                    ),
                    theme::err().add_modifier(Modifier::BOLD),
                );
                if !sp.is_empty() {
                    push_wrapped(
                        &mut lines,
                        &format!("speaker of that turn: {sp}"),
                        Style::new(),
                    );
                }
            }
            None => push_wrapped(
                &mut lines,
                &format!("{}: {}", fo.label, strings::MONITOR_NO_ALERT),
                theme::ok(),
            ),
        }
        match &fo.explain {
            ExplainState::None if fo.alert.is_some() => {
                push_wrapped(&mut lines, "x explains who and why", theme::dim())
            }
            ExplainState::None => {}
            ExplainState::Asked(_) => push_wrapped(&mut lines, "explaining…", theme::dim()),
            ExplainState::Done(e) => {
                push_wrapped(
                    &mut lines,
                    &format!(
                        "fraudster: {}",
                        e.fraud_speaker.as_deref().unwrap_or("(not named)")
                    ),
                    theme::warn(),
                );
                push_wrapped(
                    &mut lines,
                    &format!(
                        "reason: {}",
                        one_line(e.reason.as_deref().unwrap_or("(none given)"))
                    ),
                    Style::new(),
                );
            }
            ExplainState::Failed(e) => {
                push_wrapped(&mut lines, &format!("explain failed: {e}"), theme::err())
            }
        }
        if let Some(s) = &fo.stopped {
            push_wrapped(&mut lines, &format!("stopped: {s}"), theme::err());
        }
        if m.script.is_some() && !m.turns.is_empty() {
            let v = verdict(label, fo, done);
            let st = match (label, fo.alert.is_some()) {
                (Some(true), true) | (Some(false), false) => theme::ok(),
                (Some(_), _) if done || fo.alert.is_some() => theme::err(),
                _ => theme::dim(),
            };
            push_wrapped(&mut lines, &format!("→ {v}"), st);
        }
    }
    if let Some(s) = &m.script {
        let mut t = format!("true label: {}", label_text(s.label));
        if let Some(sp) = &s.fraud_speaker {
            t.push_str(&format!(" (fraudster {sp})"));
        }
        push_wrapped(&mut lines, &t, theme::label_style(s.label));
    }
    // latency per model: last and median
    if !m.followers.is_empty() && !m.turns.is_empty() {
        lines.push(Line::styled("latency (last · median)", theme::header()));
        for (fi, fo) in m.followers.iter().enumerate() {
            let l = m.latencies(fi);
            let last = l.last().copied();
            let med = median(&l);
            let tok = m.turns.iter().rev().find_map(|r| match r.scores.get(fi) {
                Some(Score::Done(t)) => Some(t.computed_tokens),
                _ => None,
            });
            let txt = format!(
                "{}: {} · {} ms{}",
                truncate(&fo.label, w.saturating_sub(22).max(6)),
                last.map(fmt_ms).unwrap_or_else(|| "–".into()),
                med.map(fmt_ms).unwrap_or_else(|| "–".into()),
                tok.map(|t| format!(" · {t} tok")).unwrap_or_default()
            );
            lines.push(Line::styled(
                truncate(&txt, w),
                Style::new().fg(theme::SERIES[fi % theme::SERIES.len()]),
            ));
        }
    }
    // the alert comes first: what does not fit is the end
    let h = inner.height as usize;
    f.render_widget(
        Paragraph::new(lines.into_iter().take(h).collect::<Vec<_>>()),
        inner,
    );
}

fn draw_input(f: &mut Frame, area: Rect, app: &App) {
    let m = &app.monitor;
    let mut title = format!(
        "{} — {}",
        strings::MONITOR_INPUT_TITLE,
        if m.editing {
            "typing: Enter sends `speaker: utterance`, Esc stops"
        } else {
            "i types a turn (`speaker: utterance`)"
        }
    );
    if !m.live_queue.is_empty() {
        title.push_str(&format!(" · {} queued", m.live_queue.len()));
    }
    let block = theme::block(title, m.editing);
    let inner = block.inner(area);
    f.render_widget(block, area);
    if inner.width == 0 || inner.height == 0 {
        return;
    }
    let width = inner.width as usize;
    let (rows, (cx, _)) = m.input.layout(usize::MAX / 4);
    let text = rows.into_iter().next().unwrap_or_default();
    let skip_w = (cx + 1).saturating_sub(width);
    let mut shown = String::new();
    let mut acc = 0;
    for c in text.chars() {
        if acc >= skip_w {
            shown.push(c);
        }
        acc += char_width(c);
    }
    f.render_widget(Paragraph::new(truncate(&shown, width)), inner);
    if m.editing {
        f.set_cursor_position((
            inner.x + (cx - skip_w).min(width.saturating_sub(1)) as u16,
            inner.y,
        ));
    }
}
