//! Snapshot tests of every pane at 80x24 and 200x50 on ratatui's TestBackend: key strings
//! (titles, headers, a loaded model, a CJK dialogue line) must be on screen, and wide
//! characters must take two cells. Set FRAUDLAB_PRINT_SNAPSHOTS=1 to see the frames.

use fraudlab::tui::app::Tab;
use fraudlab::tui::{fixtures, render_to_string, App};

fn app() -> (tempfile::TempDir, App) {
    let dir = tempfile::tempdir().unwrap();
    let app = fixtures::demo_app(dir.path(), 200, 120).unwrap();
    (dir, app)
}

fn frame(app: &App, w: u16, h: u16) -> String {
    let s = render_to_string(app, w, h);
    if std::env::var_os("FRAUDLAB_PRINT_SNAPSHOTS").is_some() {
        println!("---- {:?} {w}x{h}\n{s}", app.tab);
    }
    s
}

fn assert_has(screen: &str, what: &[&str]) {
    for w in what {
        assert!(screen.contains(w), "missing {w:?} in\n{screen}");
    }
}

const SIZES: [(u16, u16); 2] = [(80, 24), (200, 50)];

#[test]
fn chrome_on_every_pane() {
    let (_d, mut app) = app();
    for tab in Tab::ALL {
        app.tab = tab;
        for (w, h) in SIZES {
            let s = frame(&app, w, h);
            assert_eq!(s.lines().count(), h as usize);
            assert_has(&s, &["1 Models", "5 Eval", "loaded", "mem"]);
            // every row is exactly w cells wide
            for line in s.lines() {
                assert_eq!(
                    fraudlab::tui::widgets::display_width(line),
                    w as usize,
                    "row {line:?}"
                );
            }
        }
    }
}

#[test]
fn models_pane_ram_follows_the_load_precision() {
    let (_d, mut app) = app();
    app.tab = Tab::Models;
    let f32_screen = frame(&app, 200, 50);
    assert_has(&f32_screen, &["loads as f32"]);
    app.handle_key(crossterm::event::KeyEvent::new(
        crossterm::event::KeyCode::Char('p'),
        crossterm::event::KeyModifiers::NONE,
    ));
    let bf16_screen = frame(&app, 200, 50);
    assert_has(&bf16_screen, &["loads as bf16"]);
    let m = &app.models.list[0];
    use fraudlab::model::discover::ram_estimates;
    use fraudlab::model::loader::Precision;
    let (f, _, _) = ram_estimates(m, Precision::F32);
    let (b, _, _) = ram_estimates(m, Precision::Bf16);
    assert!(b < f * 6 / 10, "bf16 needs about half: {b} vs {f}");
    let shown = |bytes: u64| fraudlab::tui::widgets::human_bytes(bytes);
    assert!(f32_screen.contains(&shown(f)) && !f32_screen.contains(&shown(b)));
    assert!(bf16_screen.contains(&shown(b)));
}

#[test]
fn models_pane() {
    let (_d, mut app) = app();
    app.tab = Tab::Models;
    let s = frame(&app, 80, 24);
    assert_has(
        &s,
        &[
            "Models (3 found, 2 loaded)",
            "name",
            "RAM inf",
            "LoRA",
            "Qwen2.5-0.5B-Instruct",
            "advice",
        ],
    );
    let s = frame(&app, 200, 50);
    assert_has(
        &s,
        &[
            "family",
            "format",
            "full FT",
            "Qwen2.5-72B-Instruct",
            "Qwen2.5",
            "instruct",
        ],
    );
}

#[test]
fn models_pane_empty_explains_where_to_look() {
    let dir = tempfile::tempdir().unwrap();
    let session = fraudlab::data::Session::open(dir.path(), "s").unwrap();
    let app = App::new(
        session,
        fraudlab::tui::AppOptions {
            sessions_root: dir.path().into(),
            model_dirs: vec![],
        },
    );
    let s = frame(&app, 120, 30);
    assert_has(
        &s,
        &[
            "No models found",
            "Hugging Face cache",
            "ModelScope cache",
            "FRAUDLAB_MODELS",
            "Press d",
        ],
    );
    let s = frame(&app, 80, 24);
    assert_has(&s, &["No models found"]);
}

#[test]
fn probe_pane() {
    let (_d, mut app) = app();
    app.tab = Tab::Probe;
    for (w, h) in SIZES {
        let s = frame(&app, w, h);
        assert_has(
            &s,
            &[
                "System",
                "Prompt",
                "Sampling",
                "tok/s",
                "请简短介绍下大语言模型",
            ],
        );
    }
    let s = frame(&app, 200, 50);
    assert_has(
        &s,
        &[
            "Qwen2.5-0.5B-Instruct",
            "Qwen2.5-1.5B",
            "JSON ✓ is_fraud=true",
            "TTFT 0.21s",
            "temperature",
            "max tokens",
        ],
    );
    app.probe.view = fraudlab::tui::probe::ProbeView::Suite;
    let s = frame(&app, 200, 50);
    assert_has(
        &s,
        &[
            "Capability suite — pass/fail matrix (built-in)",
            "诈骗: 冒充客服退款",
            "is_fraud=true",
            "✓ 21.50 tok/s",
            "✗ expect_json",
        ],
    );
    app.probe.view = fraudlab::tui::probe::ProbeView::History;
    let s = frame(&app, 200, 50);
    assert_has(&s, &["History (20 probes", "大语言模型是一种"]);
    let s = frame(&app, 80, 24);
    assert_has(&s, &["History"]);
}

#[test]
fn train_pane() {
    let (_d, mut app) = app();
    app.tab = Tab::Train;
    for (w, h) in SIZES {
        let s = frame(&app, w, h);
        assert_has(
            &s,
            &[
                "Run settings",
                "model",
                "learning rate",
                "loss",
                "step",
                "Progress",
                "Log",
            ],
        );
    }
    let s = frame(&app, 200, 50);
    assert_has(
        &s,
        &[
            "max steps",
            "learning rate",
            "train loss",
            "tok/s",
            "ETA",
            "eval loss",
            "checkpoint",
            "Live run 20250101-120000",
        ],
    );
    app.train.view = fraudlab::tui::train::TrainView::Runs;
    let s = frame(&app, 200, 50);
    assert_has(
        &s,
        &[
            "Past runs",
            "20241230-090000",
            "training loss of the marked runs",
        ],
    );
    let s = frame(&app, 80, 24);
    assert_has(&s, &["Past runs"]);
}

#[test]
fn data_pane() {
    let (_d, mut app) = app();
    app.tab = Tab::Data;
    let s = frame(&app, 80, 24);
    assert_has(
        &s,
        &[
            "dialogues.jsonl",
            "label",
            "hand",
            "first turn",
            "hand-labelled 3",
            "张伟",
        ],
    );
    app.data.selected = 1; // a fraud sample with a fraud speaker
    let s = frame(&app, 200, 50);
    assert_has(
        &s,
        &[
            "P(fraud)",
            "Dialogue",
            "您好，请问是",
            "fraud speaker",
            "验证码",
        ],
    );
    // narrow: Enter shows the dialogue instead of the table
    app.data.detail = true;
    let s = frame(&app, 80, 24);
    assert_has(&s, &["Dialogue", "您好"]);
    app.data.detail = false;
    app.data.stats_view = true;
    for (w, h) in SIZES {
        let s = frame(&app, w, h);
        assert_has(&s, &["Statistics", "histogram"]);
    }
}

#[test]
fn data_pane_cjk_is_two_cells_wide() {
    let (_d, mut app) = app();
    app.tab = Tab::Data;
    let backend = ratatui::backend::TestBackend::new(200, 50);
    let mut t = ratatui::Terminal::new(backend).unwrap();
    t.draw(|f| fraudlab::tui::draw(f, &app)).unwrap();
    let buf = t.backend().buffer().clone();
    // find a CJK character and check the next cell is its (empty) continuation
    let mut found = 0;
    for y in 0..50 {
        for x in 0..199u16 {
            let sym = buf[(x, y)].symbol();
            if sym == "您" {
                assert_eq!(
                    buf[(x + 1, y)].symbol(),
                    " ",
                    "continuation cell of a wide char"
                );
                assert_eq!(buf[(x + 2, y)].symbol(), "好");
                found += 1;
            }
        }
    }
    assert!(found > 3, "CJK dialogue text on screen");
    app.data.selected = 1;
    let s = frame(&app, 200, 50);
    assert!(s.contains("您好，请问是"));
}

#[test]
fn eval_pane() {
    let (_d, mut app) = app();
    app.tab = Tab::Eval;
    for (w, h) in SIZES {
        let s = frame(&app, w, h);
        assert_has(
            &s,
            &[
                "Evaluation",
                "Metrics at threshold 0.50",
                "prec",
                "recall",
                "F1",
                "Confusion",
                "TP ",
                "Mistakes",
            ],
        );
    }
    let s = frame(&app, 200, 50);
    assert_has(
        &s,
        &[
            "ROC-AUC",
            "PR-AUC",
            "samples/s",
            "ROC",
            "FPR",
            "missed fraud",
            "+ 20241230-090000",
        ],
    );
}

#[test]
fn help_overlay_lists_every_key() {
    let (_d, mut app) = app();
    app.help = true;
    app.tab = Tab::Data;
    let s = frame(&app, 200, 50);
    assert_has(
        &s,
        &[
            "Keys",
            "Data (this pane)",
            "label fraud / not fraud",
            "Everywhere",
            "quit",
        ],
    );
    let s = frame(&app, 80, 24);
    assert_has(&s, &["Keys"]);
}

#[test]
fn modal_input_and_picker_render() {
    let (_d, mut app) = app();
    app.tab = Tab::Data;
    app.open_input(
        "Search the dialogues",
        "验证码",
        fraudlab::tui::app::InputPurpose::Search,
    );
    let s = frame(&app, 80, 24);
    assert_has(&s, &["Search the dialogues", "验证码"]);
    app.modal = None;
    app.open_picker(
        "Who is the fraudster?",
        vec!["张伟".into(), "李娜".into()],
        vec!["张伟".into(), "李娜".into()],
        None,
        fraudlab::tui::app::PickPurpose::Speaker,
    );
    let s = frame(&app, 80, 24);
    assert_has(&s, &["Who is the fraudster?", "张伟", "李娜"]);
}

#[test]
fn tiny_terminal_does_not_panic() {
    let (_d, mut app) = app();
    app.help = false;
    for tab in Tab::ALL {
        app.tab = tab;
        for (w, h) in [(1, 1), (10, 5), (30, 8), (40, 12)] {
            let _ = render_to_string(&app, w, h);
        }
    }
    app.help = true;
    let _ = render_to_string(&app, 20, 6);
}
