//! The Data pane's drawing: the sample table, the detail view and the statistics.

use super::*;

fn label_text(l: Option<bool>) -> &'static str {
    match l {
        Some(true) => "fraud",
        Some(false) => "normal",
        None => "–",
    }
}

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    let d = &app.data;
    if d.path.is_none() {
        let text = match &d.loading {
            Some(p) => format!("loading {}…", p.display()),
            None => strings::NO_DATASET.to_string(),
        };
        f.render_widget(
            Paragraph::new(vec![Line::from(text)])
                .wrap(Wrap { trim: true })
                .block(theme::block(strings::DATA_TITLE, true)),
            area,
        );
        return;
    }
    let wide = area.width >= 120;
    if wide {
        let [l, r] =
            Layout::horizontal([Constraint::Percentage(55), Constraint::Fill(1)]).areas(area);
        draw_table(f, l, app);
        if d.stats_view {
            draw_stats(f, r, app);
        } else {
            draw_detail(f, r, app);
        }
    } else if d.stats_view {
        draw_stats(f, area, app);
    } else if d.detail {
        draw_detail(f, area, app);
    } else {
        draw_table(f, area, app);
    }
}

fn draw_table(f: &mut Frame, area: Rect, app: &App) {
    let d = &app.data;
    let name = d
        .path
        .as_ref()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut title = format!(
        "{} · {name} · {} · {} of {}",
        strings::DATA_TITLE,
        d.filter.name(),
        d.visible.len(),
        d.samples.len()
    );
    if !d.search.is_empty() {
        title.push_str(&format!(" · /{}", d.search));
    }
    if d.journal.is_none() {
        title.push_str(" · read-only");
    }
    if let Some(p) = &d.loading {
        title.push_str(&format!(
            " · loading {}…",
            p.file_name().unwrap_or_default().to_string_lossy()
        ));
    }
    let c = d.counts;
    let counter = format!(
        " labelled {}/{} · hand-labelled {} · remaining {} ",
        c.labelled,
        c.total,
        c.hand,
        c.total - c.labelled
    );
    let block = theme::block(title, true).title_bottom(Line::styled(counter, theme::accent()));
    let inner_h = area.height.saturating_sub(3) as usize;
    let sel = d.selected;
    let mut off = d.offset.get();
    if sel < off {
        off = sel;
    } else if inner_h > 0 && sel >= off + inner_h {
        off = sel + 1 - inner_h;
    }
    if off + inner_h > d.visible.len() {
        off = d.visible.len().saturating_sub(inner_h);
    }
    d.offset.set(off);
    let has_probs = !d.probs.is_empty();
    let rows: Vec<Row> = d.visible[off.min(d.visible.len())..]
        .iter()
        .take(inner_h.max(1))
        .enumerate()
        .map(|(k, &i)| {
            let s = &d.samples[i];
            let hand = d.hand.get(&s.id).map(|h| h.label);
            let prob = d.probs.get(&s.id).copied();
            let mut cells = vec![
                Cell::from(format!("{}", i + 1)),
                Cell::from(Span::styled(
                    label_text(s.label),
                    theme::label_style(s.label),
                )),
                Cell::from(Span::styled(
                    label_text(hand),
                    theme::label_style(hand).add_modifier(Modifier::BOLD),
                )),
            ];
            if has_probs {
                let st = match (prob, d.hand.get(&s.id).map(|h| h.label).or(s.label)) {
                    (Some(p), Some(l)) if (p >= 0.5) != l => theme::warn(),
                    _ => Style::new(),
                };
                cells.push(Cell::from(Span::styled(
                    prob.map(|p| format!("{p:.2}"))
                        .unwrap_or_else(|| "–".into()),
                    st,
                )));
            }
            cells.push(Cell::from(d.lens[i].to_string()));
            cells.push(Cell::from(d.previews[i].as_str()));
            let row = Row::new(cells);
            if off + k == sel {
                row.style(theme::selected())
            } else {
                row
            }
        })
        .collect();
    let mut header = vec!["#", "label", "hand"];
    let mut widths = vec![
        Constraint::Length(5),
        Constraint::Length(6),
        Constraint::Length(6),
    ];
    if has_probs {
        header.push("P(fraud)");
        widths.push(Constraint::Length(8));
    }
    header.extend(["len", "first turn"]);
    widths.extend([Constraint::Length(5), Constraint::Fill(1)]);
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(theme::header()))
        .block(block);
    f.render_widget(table, area);
}

fn draw_detail(f: &mut Frame, area: Rect, app: &App) {
    let d = &app.data;
    let Some(s) = d.selected_sample() else {
        f.render_widget(
            Paragraph::new("no sample in view").block(theme::block("Dialogue", false)),
            area,
        );
        return;
    };
    let kind = if s.kind() == "fraud" {
        String::new()
    } else {
        format!(" ({})", s.kind())
    };
    let block = theme::block(
        format!("Dialogue {}{kind}", &s.id[..s.id.len().min(8)]),
        false,
    );
    let inner = block.inner(area);
    f.render_widget(block, area);
    let w = inner.width as usize;
    let hand = d.hand.get(&s.id);
    let mut lines: Vec<Line> = Vec::new();
    let mut head = vec![
        Span::styled("label ", theme::dim()),
        Span::styled(label_text(s.label), theme::label_style(s.label)),
    ];
    head.push(Span::styled("  hand ", theme::dim()));
    let hl = hand.map(|h| h.label);
    head.push(Span::styled(
        label_text(hl),
        theme::label_style(hl).add_modifier(Modifier::BOLD),
    ));
    if let Some(p) = d.probs.get(&s.id) {
        head.push(Span::styled("  P(fraud) ", theme::dim()));
        head.push(Span::raw(format!("{p:.3}")));
        if let Some(m) = &d.prob_model {
            head.push(Span::styled(format!(" ({m})"), theme::dim()));
        }
    }
    lines.push(Line::from(head));
    let nonempty = |o: Option<String>| o.filter(|x| !x.trim().is_empty());
    let (speaker, reason) = match hand {
        Some(h) => (
            nonempty(h.fraud_speaker.clone()),
            nonempty(h.reason.clone()),
        ),
        None => (
            nonempty(s.fraud_speaker.clone()),
            nonempty(s.reason.clone()),
        ),
    };
    if let Some(sp) = &speaker {
        lines.push(Line::from(vec![
            Span::styled("fraud speaker ", theme::dim()),
            Span::styled(sp.clone(), Style::new().fg(theme::FRAUD)),
        ]));
    }
    if let Some(r) = &reason {
        for row in wrap(&format!("reason: {r}"), w) {
            lines.push(Line::styled(row, theme::dim()));
        }
    }
    lines.push(Line::styled("─".repeat(w), theme::dim()));
    let speakers = s.speakers();
    for (sp, text) in s.turns() {
        let ci = speakers.iter().position(|x| *x == sp).unwrap_or(0);
        let mut style = Style::new()
            .fg(theme::speaker_color(ci))
            .add_modifier(Modifier::BOLD);
        if speaker
            .as_deref()
            .is_some_and(|f| f.split([',', '，', '、']).any(|n| n.trim() == sp))
        {
            style = style.add_modifier(Modifier::UNDERLINED);
        }
        let name = if sp.is_empty() {
            String::new()
        } else {
            format!("{sp}: ")
        };
        let indent = display_width(&name).min(w / 3);
        let body_w = w.saturating_sub(indent).max(1);
        for (k, row) in wrap(&text, body_w).into_iter().enumerate() {
            if k == 0 {
                lines.push(Line::from(vec![
                    Span::styled(truncate(&name, indent.max(1)), style),
                    Span::raw(row),
                ]));
            } else {
                lines.push(Line::from(vec![
                    Span::raw(" ".repeat(indent)),
                    Span::raw(row),
                ]));
            }
        }
    }
    let h = inner.height as usize;
    let max_scroll = lines.len().saturating_sub(h);
    let skip = d.detail_scroll.min(max_scroll);
    let lines: Vec<Line> = lines.into_iter().skip(skip).take(h).collect();
    f.render_widget(Paragraph::new(lines), inner);
}

fn draw_stats(f: &mut Frame, area: Rect, app: &App) {
    let d = &app.data;
    let Some(st) = &d.stats else { return };
    let c = d.counts;
    let [text_a, chart_a] = Layout::vertical([
        Constraint::Length(9.min(area.height / 2)),
        Constraint::Fill(1),
    ])
    .areas(area);
    let mut lines = vec![
        Line::from(vec![
            Span::styled("samples ", theme::dim()),
            Span::raw(c.total.to_string()),
            Span::styled("  fraud ", theme::dim()),
            Span::styled(c.fraud.to_string(), Style::new().fg(theme::FRAUD)),
            Span::styled("  normal ", theme::dim()),
            Span::styled(c.normal.to_string(), Style::new().fg(theme::NORMAL)),
            Span::styled("  unlabelled ", theme::dim()),
            Span::raw((c.total - c.labelled).to_string()),
            Span::styled("  hand ", theme::dim()),
            Span::raw(c.hand.to_string()),
        ]),
        Line::from(vec![
            Span::styled("chars ", theme::dim()),
            Span::raw(format!(
                "min {} · median {:.0} · mean {:.0} · max {}",
                st.chars.min, st.chars.median, st.chars.mean, st.chars.max
            )),
        ]),
        Line::from(vec![
            Span::styled("turns ", theme::dim()),
            Span::raw(format!("mean {:.1} · max {}", st.turns.mean, st.turns.max)),
            Span::styled("  speakers ", theme::dim()),
            Span::raw(st.distinct_speakers.to_string()),
        ]),
    ];
    if !st.top_speakers.is_empty() {
        let top: Vec<String> = st
            .top_speakers
            .iter()
            .take(6)
            .map(|s| format!("{} ({})", s.name, s.samples))
            .collect();
        lines.push(Line::from(vec![
            Span::styled("top speakers ", theme::dim()),
            Span::raw(top.join(", ")),
        ]));
    }
    lines.push(Line::styled(d.summary.clone(), theme::dim()));
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: true })
            .block(theme::block("Statistics", false)),
        text_a,
    );
    let n = st.char_hist.len().max(1) as u16;
    let inner_w = chart_a.width.saturating_sub(2);
    let bar_w = (inner_w / n).saturating_sub(1).clamp(1, 12);
    let bars: Vec<Bar> = st
        .char_hist
        .iter()
        .map(|b| {
            Bar::default()
                .value(b.count as u64)
                .label(Line::from(crate::tui::widgets::human_count(b.lo as u64)))
        })
        .collect();
    let chart = BarChart::default()
        .block(theme::block("dialogue length (chars) histogram", false))
        .data(BarGroup::default().bars(&bars))
        .bar_width(bar_w)
        .bar_gap(1)
        .bar_style(theme::accent())
        .value_style(
            Style::new()
                .fg(ratatui::style::Color::Black)
                .bg(theme::ACCENT),
        );
    f.render_widget(chart, chart_a);
}
