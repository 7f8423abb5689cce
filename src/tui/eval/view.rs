//! The Eval pane's drawing: the setup, the metrics table, the confusion matrix, the
//! mistakes list and the ROC curve.

use super::*;

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    let e = &app.eval;
    let table_h = (e.results.len() as u16 + 3).clamp(4, 10);
    let setup_h = if e.running { 5 } else { 4 };
    let [setup, table, bottom] = Layout::vertical([
        Constraint::Length(setup_h),
        Constraint::Length(table_h),
        Constraint::Min(6),
    ])
    .areas(area);
    draw_setup(f, setup, app);
    draw_metrics(f, table, app);
    let roc_w = if bottom.width >= 120 {
        bottom.width / 2
    } else {
        bottom.width * 2 / 5
    };
    let [left, right] =
        Layout::horizontal([Constraint::Fill(1), Constraint::Length(roc_w)]).areas(bottom);
    let [conf, mistakes] =
        Layout::vertical([Constraint::Length(5), Constraint::Fill(1)]).areas(left);
    draw_confusion(f, conf, app);
    draw_mistakes(f, mistakes, app);
    draw_roc(f, right, app);
}

fn draw_setup(f: &mut Frame, area: Rect, app: &App) {
    let e = &app.eval;
    let block = theme::block(
        format!(
            "{}{}",
            strings::EVAL_TITLE,
            e.eval_id
                .as_ref()
                .map(|i| format!(" {i}"))
                .unwrap_or_default()
        ),
        true,
    );
    let inner = block.inner(area);
    f.render_widget(block, area);
    let data = app
        .eval_dataset()
        .map(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .unwrap_or_else(|| "(none: open one in Data)".into());
    let targets: Vec<String> = app
        .eval_targets()
        .iter()
        .map(|(s, a)| match a {
            Some(a) => format!("{} + {}", spec_name(s), adapter_label(a)),
            None => spec_name(s),
        })
        .collect();
    let line1 = Line::from(vec![
        Span::styled("data ", theme::dim()),
        Span::raw(data),
        Span::styled("  mode ", theme::dim()),
        Span::raw(format!("{:?}", e.mode).to_lowercase()),
        Span::styled("  limit ", theme::dim()),
        Span::raw(
            e.limit
                .map(|l| l.to_string())
                .unwrap_or_else(|| "all".into()),
        ),
        Span::styled("  threshold ", theme::dim()),
        Span::styled(format!("{:.2}", e.threshold), theme::accent()),
    ]);
    let line2 = Line::from(vec![
        Span::styled("models ", theme::dim()),
        Span::raw(if targets.is_empty() {
            "(none loaded: t chooses)".to_string()
        } else {
            targets.join(", ")
        }),
    ]);
    let mut lines = vec![line1, line2];
    if let Some(err) = &e.error {
        lines[1] = Line::styled(format!("failed: {err}"), theme::err());
    }
    let [text, gauge] = Layout::vertical([Constraint::Length(2), Constraint::Fill(1)]).areas(inner);
    f.render_widget(Paragraph::new(lines), text);
    if e.running && gauge.height > 0 {
        let (m, done, total) = &e.progress;
        let ratio = if *total > 0 {
            *done as f64 / *total as f64
        } else {
            0.0
        };
        let el = e.started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0);
        let label = if *total > 0 {
            format!("{} {done}/{total} · {:.0}s", spec_name(m), el)
        } else {
            format!("loading… {el:.0}s")
        };
        f.render_widget(
            Gauge::default()
                .ratio(ratio.clamp(0.0, 1.0))
                .label(label)
                .gauge_style(theme::accent()),
            gauge,
        );
    }
}

fn fmt_opt(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.3}")).unwrap_or_else(|| "–".into())
}

fn draw_metrics(f: &mut Frame, area: Rect, app: &App) {
    let e = &app.eval;
    let title = format!("Metrics at threshold {:.2}", e.threshold);
    if e.results.is_empty() {
        let msg = if e.running {
            "running…"
        } else {
            strings::NO_RESULTS
        };
        f.render_widget(
            Paragraph::new(msg)
                .wrap(Wrap { trim: true })
                .block(theme::block(title, false)),
            area,
        );
        return;
    }
    let rows: Vec<Row> = e
        .results
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let m = &v.at;
            let row = Row::new(vec![
                Cell::from(v.name.clone()),
                Cell::from(format!("{:.3}", m.precision)),
                Cell::from(format!("{:.3}", m.recall)),
                Cell::from(format!("{:.3}", m.f1)),
                Cell::from(format!("{:.3}", m.accuracy)),
                Cell::from(fmt_opt(m.roc_auc)),
                Cell::from(fmt_opt(m.pr_auc)),
                Cell::from(format!("{:.1}", v.result.samples_per_s)),
                Cell::from(format!("{}", m.n)),
            ]);
            if i == e.result_sel && e.results.len() > 1 {
                row.style(theme::selected())
            } else {
                row
            }
        })
        .collect();
    let widths = [
        Constraint::Fill(1),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Length(6),
        Constraint::Length(9),
        Constraint::Length(5),
    ];
    let table = Table::new(rows, widths)
        .header(
            Row::new([
                "model",
                "prec",
                "recall",
                "F1",
                "acc",
                "ROC-AUC",
                "PR-AUC",
                "samples/s",
                "n",
            ])
            .style(theme::header()),
        )
        .block(theme::block(title, false));
    f.render_widget(table, area);
}

fn draw_confusion(f: &mut Frame, area: Rect, app: &App) {
    let Some(v) = app.eval.current() else {
        f.render_widget(theme::block("Confusion", false), area);
        return;
    };
    let m = &v.at;
    let rows = vec![
        Row::new(vec![
            Cell::from("fraud"),
            Cell::from(Span::styled(format!("TP {}", m.tp), theme::ok())),
            Cell::from(Span::styled(format!("FN {}", m.fn_), theme::err())),
        ]),
        Row::new(vec![
            Cell::from("normal"),
            Cell::from(Span::styled(format!("FP {}", m.fp), theme::err())),
            Cell::from(Span::styled(format!("TN {}", m.tn), theme::ok())),
        ]),
    ];
    let mut title = format!("Confusion · {}", v.name);
    if m.unparseable > 0 {
        title.push_str(&format!(" · {} unparseable", m.unparseable));
    }
    let table = Table::new(
        rows,
        [
            Constraint::Length(14),
            Constraint::Length(12),
            Constraint::Length(12),
        ],
    )
    .header(Row::new(["actual \\ pred", "pred fraud", "pred normal"]).style(theme::header()))
    .block(theme::block(title, false));
    f.render_widget(table, area);
}

fn draw_mistakes(f: &mut Frame, area: Rect, app: &App) {
    let e = &app.eval;
    let Some(v) = e.current() else {
        f.render_widget(theme::block("Mistakes", true), area);
        return;
    };
    let title = format!("Mistakes ({}) — Enter opens in Data", v.mistakes.len());
    let block = theme::block(title, true);
    let inner = block.inner(area);
    f.render_widget(block, area);
    if v.rows.is_empty() {
        f.render_widget(
            Paragraph::new("predictions were not saved with this result").style(theme::dim()),
            inner,
        );
        return;
    }
    let h = inner.height as usize;
    let w = inner.width as usize;
    let sel = e.mistake_sel;
    let off = sel.saturating_sub(h.saturating_sub(1));
    let lines: Vec<Line> = v
        .mistakes
        .iter()
        .enumerate()
        .skip(off)
        .take(h)
        .map(|(k, &i)| {
            let p = &v.result.predictions[i];
            let what = if p.label {
                "missed fraud"
            } else {
                "false alarm"
            };
            let score = match (p.probability, &p.answer) {
                (Some(x), _) => format!("{x:.2}"),
                (None, Some(a)) => truncate(&one_line(a), 16),
                _ => "–".into(),
            };
            let head = format!("{:<12} {:>5} ", what, score);
            let prev = e
                .previews
                .get(&p.id)
                .cloned()
                .unwrap_or_else(|| p.id.clone());
            let line = Line::from(vec![
                Span::styled(head.clone(), theme::label_style(Some(p.label))),
                Span::raw(truncate(
                    &prev,
                    w.saturating_sub(crate::tui::widgets::display_width(&head)),
                )),
            ]);
            if k == sel {
                line.style(theme::selected())
            } else {
                line
            }
        })
        .collect();
    f.render_widget(Paragraph::new(lines), inner);
}

fn draw_roc(f: &mut Frame, area: Rect, app: &App) {
    let e = &app.eval;
    let Some(v) = e.current().filter(|v| v.has_scores()) else {
        f.render_widget(
            Paragraph::new(strings::NO_ROC)
                .wrap(Wrap { trim: true })
                .block(theme::block("ROC", false)),
            area,
        );
        return;
    };
    let m = &v.at;
    let fpr = if m.fp + m.tn > 0 {
        m.fp as f64 / (m.fp + m.tn) as f64
    } else {
        0.0
    };
    let point = [(fpr, m.recall)];
    let diag = [(0.0, 0.0), (1.0, 1.0)];
    let ds = vec![
        Dataset::default()
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(theme::dim())
            .data(&diag),
        Dataset::default()
            .name(format!("AUC {}", fmt_opt(m.roc_auc)))
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::new().fg(theme::SERIES[0]))
            .data(&v.roc),
        Dataset::default()
            .name(format!(
                "t={:.2} P {:.2} R {:.2}",
                e.threshold, m.precision, m.recall
            ))
            .marker(Marker::Block)
            .graph_type(GraphType::Scatter)
            .style(Style::new().fg(theme::WARN))
            .data(&point),
    ];
    let axis = |t: &'static str| {
        Axis::default()
            .title(t)
            .style(theme::dim())
            .bounds([0.0, 1.0])
            .labels(vec![Span::raw("0"), Span::raw("0.5"), Span::raw("1")])
    };
    let chart = Chart::new(ds)
        .block(theme::block(
            format!("ROC · {} (←/→ threshold)", v.name),
            false,
        ))
        .x_axis(axis("FPR"))
        .y_axis(axis("TPR"))
        .legend_position(Some(LegendPosition::BottomRight))
        .hidden_legend_constraints((Constraint::Ratio(1, 1), Constraint::Ratio(1, 1)));
    f.render_widget(chart, area);
}
