//! Key handling on `App` without a terminal or an engine: which actions keys produce, how
//! engine events change the state, and what reaches the session on disk.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use fraudlab::data::{Journal, Session};
use fraudlab::engine::train::TrainEvent;
use fraudlab::engine::{BackgroundJob, Command, EngineState, Event, Subject};
use fraudlab::tui::app::{Modal, SlotState, Tab};
use fraudlab::tui::{fixtures, Action, App, AppOptions};
use std::path::{Path, PathBuf};

fn key(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
}
fn code(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}
fn ctrl(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL)
}

fn new_app(root: &Path) -> App {
    let s = Session::open(root, "t").unwrap();
    App::new(
        s,
        AppOptions {
            sessions_root: root.to_path_buf(),
            model_dirs: vec![],
        },
    )
}

fn press(app: &mut App, keys: &[KeyEvent]) -> Vec<Action> {
    keys.iter().flat_map(|k| app.handle_key(*k)).collect()
}

fn type_text(app: &mut App, s: &str) {
    for c in s.chars() {
        app.handle_key(key(c));
    }
}

/// An app with a dataset of `n` samples open and one ready model.
fn with_data(root: &Path, n: usize) -> (App, PathBuf) {
    let mut app = new_app(root);
    let p = root.join("d.jsonl");
    fixtures::write_dataset(&p, n).unwrap();
    app.open_dataset(&p);
    app.slots.push(fraudlab::tui::app::Slot {
        key: "m".into(),
        spec: "/models/m".into(),
        adapter: None,
        name: "m".into(),
        state: SlotState::Ready(fixtures::loaded_info("m", "m", 1000)),
    });
    (app, p)
}

#[test]
fn tabs_help_and_quit() {
    let d = tempfile::tempdir().unwrap();
    let mut app = new_app(d.path());
    assert_eq!(app.tab, Tab::Models);
    press(&mut app, &[key('4')]);
    assert_eq!(app.tab, Tab::Data);
    press(&mut app, &[code(KeyCode::Tab)]);
    assert_eq!(app.tab, Tab::Eval);
    press(&mut app, &[code(KeyCode::Tab)]);
    assert_eq!(app.tab, Tab::Monitor);
    press(&mut app, &[code(KeyCode::Tab)]);
    assert_eq!(app.tab, Tab::Models);
    press(&mut app, &[code(KeyCode::BackTab)]);
    assert_eq!(app.tab, Tab::Monitor);
    press(&mut app, &[key('?')]);
    assert!(app.help);
    press(&mut app, &[key('j'), key('k')]);
    assert!(app.help, "j/k scroll the help");
    press(&mut app, &[key('z')]);
    assert!(!app.help);
    let a = press(&mut app, &[key('q')]);
    assert!(app.quit && matches!(a[..], [Action::Quit]));
}

#[test]
fn ctrl_c_quits_from_anywhere() {
    let d = tempfile::tempdir().unwrap();
    let mut app = new_app(d.path());
    app.tab = Tab::Probe;
    press(&mut app, &[code(KeyCode::Enter)]);
    assert!(app.probe.editing);
    press(&mut app, &[ctrl('c')]);
    assert!(app.quit);
    let mut app = new_app(d.path());
    app.open_input("x", "", fraudlab::tui::app::InputPurpose::Search);
    press(&mut app, &[ctrl('c')]);
    assert!(app.quit);
}

#[test]
fn models_precision_loads_bf16_beside_f32_and_is_kept() {
    let d = tempfile::tempdir().unwrap();
    let mut app = new_app(d.path());
    let p = d.path().join("models/Qwen2.5-0.5B-Instruct");
    app.models.list = vec![fixtures::model_info(
        "Qwen2.5-0.5B-Instruct",
        &p,
        494_000_000,
        "instruct",
    )];
    let spec = p.display().to_string();
    press(&mut app, &[key('1'), code(KeyCode::Enter)]);
    // p: f32 → bf16; the same model loads again, in bf16, under its own key
    press(&mut app, &[key('p')]);
    let a = press(&mut app, &[code(KeyCode::Enter)]);
    match &a[..] {
        [Action::Engine(Command::Load { key, opts, .. })] => {
            assert_eq!(key, &format!("{spec} [bf16]"));
            assert_eq!(opts.dtype, candle_core::DType::BF16);
            assert!(!opts.quantized);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(app.slots.len(), 2);
    assert!(app.slots[1].name.ends_with("(bf16)"));
    // quantized next, then back to f32
    press(&mut app, &[key('p')]);
    assert_eq!(app.models.precision.name(), "quantized");
    // the choice is kept in the session
    let reopened = App::open(
        Session::open(d.path(), "t").unwrap(),
        AppOptions {
            sessions_root: d.path().to_path_buf(),
            model_dirs: vec![],
        },
    )
    .0;
    assert_eq!(reopened.models.precision.name(), "quantized");
    press(&mut app, &[key('p')]);
    assert_eq!(app.models.precision.name(), "f32");
}

#[test]
fn models_load_unload_and_session_records_them() {
    let d = tempfile::tempdir().unwrap();
    let mut app = new_app(d.path());
    let p = d.path().join("models/Qwen2.5-0.5B-Instruct");
    app.models.list = vec![fixtures::model_info(
        "Qwen2.5-0.5B-Instruct",
        &p,
        494_000_000,
        "instruct",
    )];
    let spec = p.display().to_string();
    let a = press(&mut app, &[code(KeyCode::Enter)]);
    match &a[..] {
        [Action::Engine(Command::Load {
            key,
            spec: s,
            adapter: None,
            ..
        })] => {
            assert_eq!(s, &spec);
            assert_eq!(key, &spec);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(app.slots[0].state, SlotState::Loading));
    // loading twice does nothing
    assert!(press(&mut app, &[code(KeyCode::Enter)]).is_empty());
    app.on_engine_event(Event::Loaded(fixtures::loaded_info(
        &spec,
        "Qwen2.5-0.5B-Instruct",
        494_000_000,
    )));
    assert!(app.slots[0].is_ready());
    let cfg = app.session.load_config().unwrap();
    assert_eq!(cfg.models, vec![spec.clone()]);
    let a = press(&mut app, &[key('u')]);
    assert!(matches!(&a[..], [Action::Engine(Command::Unload { key })] if key == &spec));
    app.on_engine_event(Event::Unloaded { key: spec.clone() });
    assert!(app.slots.is_empty());
    assert!(app.session.load_config().unwrap().models.is_empty());
    // a failed load removes the slot and shows why
    press(&mut app, &[code(KeyCode::Enter)]);
    app.on_engine_event(Event::Error {
        subject: Subject::Load {
            key: spec.clone(),
            spec: spec.clone(),
        },
        message: "no such file".into(),
    });
    assert!(app.slots.is_empty());
    assert!(app.message.as_ref().unwrap().text.contains("no such file"));
}

#[test]
fn demo_model_is_written_listed_and_selected() {
    let d = tempfile::tempdir().unwrap();
    let mut app = new_app(d.path());
    press(&mut app, &[key('d')]);
    let dir = d.path().join(".models/fraudlab-demo-tiny");
    assert!(dir.join("config.json").exists(), "{:?}", app.message);
    let m = app.selected_model().expect("listed");
    assert_eq!(m.path, dir);
    assert!(app.message.as_ref().unwrap().text.contains("DEMO"));
}

#[test]
fn hub_download_explains_network() {
    let d = tempfile::tempdir().unwrap();
    let mut app = new_app(d.path());
    press(&mut app, &[key('g')]);
    assert!(matches!(app.modal, Some(Modal::Input(_))));
    type_text(&mut app, "Nobody/NoSuchModel-0.5B");
    let a = press(&mut app, &[code(KeyCode::Enter)]);
    assert!(
        a.iter().any(|x| matches!(x, Action::Engine(fraudlab::engine::Command::Download { id }) if id == "Nobody/NoSuchModel-0.5B")),
        "an unknown hub id is downloaded by the engine: {a:?}"
    );
    let t = &app.message.as_ref().unwrap().text;
    assert!(
        t.contains("downloading") && t.contains("huggingface-cli download Nobody/NoSuchModel-0.5B"),
        "{t}"
    );
    // the engine's progress and its failure reach the message line
    app.on_engine_event(fraudlab::engine::Event::DownloadProgress {
        id: "Nobody/NoSuchModel-0.5B".into(),
        progress: fraudlab::model::download::DownloadProgress {
            file: "model.safetensors".into(),
            done: 50_000_000,
            total: Some(100_000_000),
            fetched: 40_000_000,
            files_done: 2,
            files_total: 5,
            bytes_per_s: 4e6,
            eta_s: Some(12.5),
        },
    });
    let t = &app.message.as_ref().unwrap().text;
    assert!(
        t.contains("50%") && t.contains("ETA 13s") && t.contains("4.0 MB/s"),
        "{t}"
    );
    app.on_engine_event(fraudlab::engine::Event::Error {
        subject: Subject::Download {
            id: "Nobody/NoSuchModel-0.5B".into(),
        },
        message: "cannot reach the model hub".into(),
    });
    assert!(app.message.as_ref().unwrap().text.contains("cannot reach"));
}

#[test]
fn probe_edit_run_stream_and_history() {
    let d = tempfile::tempdir().unwrap();
    let (mut app, _) = with_data(d.path(), 4);
    app.tab = Tab::Probe;
    // edit the prompt: Enter starts editing; digits are text, not tabs
    press(&mut app, &[code(KeyCode::Enter), ctrl('a'), ctrl('k')]);
    type_text(&mut app, "你好2");
    assert_eq!(app.tab, Tab::Probe);
    assert_eq!(app.probe.user.text(), "你好2");
    press(&mut app, &[code(KeyCode::Enter)]);
    type_text(&mut app, "x");
    assert_eq!(app.probe.user.text(), "你好2\nx");
    let a = press(&mut app, &[code(KeyCode::F(5))]);
    let req = match &a[..] {
        [Action::Engine(Command::Generate {
            request,
            keys,
            prompt,
            system,
            ..
        })] => {
            assert_eq!(keys, &vec!["m".to_string()]);
            assert_eq!(prompt, "你好2\nx");
            assert_eq!(system.as_deref(), Some(fraudlab::data::DEFAULT_SYSTEM));
            *request
        }
        other => panic!("{other:?}"),
    };
    press(&mut app, &[code(KeyCode::Esc)]);
    assert!(!app.probe.editing);
    app.on_engine_event(Event::Token {
        request: req,
        key: "m".into(),
        text: "{\"is_fraud\": ".into(),
    });
    app.on_engine_event(Event::Token {
        request: req,
        key: "m".into(),
        text: "true}".into(),
    });
    assert_eq!(
        app.probe.run.as_ref().unwrap().outputs[0].text,
        "{\"is_fraud\": true}"
    );
    app.on_engine_event(Event::Generated {
        request: req,
        key: "m".into(),
        generation: fixtures::generation("{\"is_fraud\": true}"),
    });
    let (probes, _) = app.session.read_probes().unwrap();
    assert_eq!(probes.len(), 1);
    assert_eq!(probes[0]["prompt"], "你好2\nx");
    assert_eq!(probes[0]["output"], "{\"is_fraud\": true}");
    assert!(probes[0]["decode_tok_s"].as_f64().is_some());
    assert_eq!(app.probe.history.len(), 1);
    // Ctrl-R runs too; and the suite sends one request per prompt
    assert_eq!(press(&mut app, &[ctrl('r')]).len(), 1);
    let a = press(&mut app, &[key('b')]);
    let cases =
        fraudlab::data::suite::parse_suite(fraudlab::data::suite::DEFAULT_SUITE, "built-in")
            .unwrap();
    assert_eq!(a.len(), cases.len());
}

#[test]
fn the_suite_fails_wrong_verdicts_saves_the_matrix_and_reopens_it() {
    let d = tempfile::tempdir().unwrap();
    let (mut app, _) = with_data(d.path(), 4);
    app.tab = Tab::Probe;
    let a = press(&mut app, &[key('b')]);
    assert!(!a.is_empty());
    // the model calls every dialogue honest
    for act in &a {
        let Action::Engine(Command::Generate { request, .. }) = act else {
            panic!("{act:?}")
        };
        app.on_engine_event(Event::Generated {
            request: *request,
            key: "m".into(),
            generation: fixtures::generation("{\"is_fraud\": false}"),
        });
    }
    let suite = app.probe.suite.as_ref().unwrap();
    let saved = suite.saved.clone().expect("saved once every answer is in");
    assert!(saved.is_file(), "{}", saved.display());
    let fraud_case = suite
        .results
        .cases
        .iter()
        .find(|c| {
            c.expect_json
                .as_ref()
                .is_some_and(|e| e.get("is_fraud") == Some(&serde_json::json!(true)))
        })
        .expect("the default suite has a fraud case")
        .name
        .clone();
    let r = suite.results.get(&fraud_case, "m").unwrap();
    assert!(!r.pass, "a fraud dialogue judged honest fails: {r:?}");
    let (ok, n) = suite.results.score("m");
    assert!(ok < n, "{ok}/{n}");
    let shown = fraudlab::tui::render_to_string(&app, 160, 40);
    // E exports Markdown and CSV beside the saved results
    press(&mut app, &[key('E')]);
    assert!(saved.with_extension("md").is_file());
    assert!(saved.with_extension("csv").is_file());
    // a new workbench on the same session shows the same matrix
    let mut again = new_app(d.path());
    again.tab = Tab::Probe;
    let reopened = again
        .probe
        .suite
        .as_ref()
        .expect("reopened with the session");
    assert_eq!(reopened.results.score("m"), (ok, n));
    assert!(!reopened.results.get(&fraud_case, "m").unwrap().pass);
    assert!(shown.contains("Capability suite"), "{shown}");
}

#[test]
fn probe_without_model_warns() {
    let d = tempfile::tempdir().unwrap();
    let mut app = new_app(d.path());
    app.tab = Tab::Probe;
    assert!(press(&mut app, &[code(KeyCode::F(5))]).is_empty());
    assert!(app.message.as_ref().unwrap().text.contains("load a model"));
}

#[test]
fn probe_sampling_settings() {
    let d = tempfile::tempdir().unwrap();
    let mut app = new_app(d.path());
    app.tab = Tab::Probe;
    press(
        &mut app,
        &[key('j'), code(KeyCode::Right), code(KeyCode::Right)],
    );
    assert!((app.probe.params.temperature - 0.2).abs() < 1e-9);
    press(
        &mut app,
        &[key('j'), key('j'), key('j'), code(KeyCode::Enter)],
    );
    assert!(matches!(app.modal, Some(Modal::Input(_))));
    press(&mut app, &[ctrl('u')]);
    type_text(&mut app, "77");
    press(&mut app, &[code(KeyCode::Enter)]);
    assert_eq!(app.probe.params.max_tokens, 77);
    // a bad value is refused with a message
    press(&mut app, &[code(KeyCode::Enter), ctrl('u')]);
    type_text(&mut app, "lots");
    press(&mut app, &[code(KeyCode::Enter)]);
    assert_eq!(app.probe.params.max_tokens, 77);
    assert!(app.message.as_ref().unwrap().text.contains("max tokens"));
}

#[test]
fn labels_are_durable_before_moving_on() {
    let d = tempfile::tempdir().unwrap();
    let (mut app, data) = with_data(d.path(), 6);
    app.tab = Tab::Data;
    let id0 = app.data.samples[0].id.clone();
    let id1 = app.data.samples[1].id.clone();
    press(&mut app, &[key('n')]);
    assert_eq!(app.data.selected, 1, "moved on");
    let jp = app.session.labels_path(&fraudlab::data::dataset_id(&data));
    let on_disk = Journal::read(&jp).unwrap().current_labels();
    assert_eq!(on_disk.get(&id0).map(|l| l.label), Some(false));
    press(&mut app, &[key('f')]);
    let on_disk = Journal::read(&jp).unwrap().current_labels();
    assert_eq!(on_disk.get(&id1).map(|l| l.label), Some(true));
    assert_eq!(app.data.counts.hand, 2);
    // undo the last label: back on that sample, label gone
    press(&mut app, &[key('u')]);
    assert_eq!(app.data.selected_sample().unwrap().id, id1);
    assert!(!Journal::read(&jp)
        .unwrap()
        .current_labels()
        .contains_key(&id1));
    // read-only journal: the label is refused and the selection stays
    app.data.journal = None;
    app.data.journal_error = Some("locked by another fraudlab".into());
    let before = app.data.selected;
    press(&mut app, &[key('f')]);
    assert_eq!(app.data.selected, before);
    assert!(app.message.as_ref().unwrap().text.contains("read-only"));
}

#[test]
fn speaker_reason_filters_and_search() {
    let d = tempfile::tempdir().unwrap();
    let (mut app, _) = with_data(d.path(), 10);
    app.tab = Tab::Data;
    press(&mut app, &[key('j')]); // sample 1 (fraud)
    let id = app.data.selected_sample().unwrap().id.clone();
    let speakers = app.data.selected_sample().unwrap().speakers();
    press(&mut app, &[key('s')]);
    assert!(matches!(app.modal, Some(Modal::Picker(_))));
    press(&mut app, &[key('j'), code(KeyCode::Enter)]);
    let st = app.data.hand.get(&id).unwrap();
    assert!(st.label);
    assert_eq!(st.fraud_speaker.as_deref(), Some(speakers[1].as_str()));
    press(&mut app, &[key('r')]);
    type_text(&mut app, "索要验证码");
    press(&mut app, &[code(KeyCode::Enter)]);
    assert_eq!(
        app.data.hand.get(&id).unwrap().reason.as_deref(),
        Some("索要验证码")
    );
    assert_eq!(
        app.data.selected_sample().unwrap().id,
        id,
        "speaker and reason keep the selection"
    );
    // filters: all → unlabelled (none: the file labels everything) → fraud → normal
    press(&mut app, &[key('v')]);
    assert_eq!(app.data.visible.len(), 0);
    press(&mut app, &[key('v')]);
    assert_eq!(app.data.visible.len(), 5);
    press(&mut app, &[key('v'), key('v'), key('v')]);
    assert_eq!(app.data.visible.len(), 10);
    press(&mut app, &[key('/')]);
    type_text(&mut app, "验证码");
    press(&mut app, &[code(KeyCode::Enter)]);
    assert_eq!(
        app.data.visible.len(),
        5,
        "the fraud dialogues ask for a code"
    );
    press(&mut app, &[code(KeyCode::Esc)]);
    assert_eq!(app.data.visible.len(), 10);
}

#[test]
fn scoring_and_most_uncertain() {
    let d = tempfile::tempdir().unwrap();
    let (mut app, _) = with_data(d.path(), 8);
    app.tab = Tab::Data;
    let a = press(&mut app, &[key('S')]);
    let (req, n) = match &a[..] {
        [Action::Engine(Command::Score {
            request,
            key,
            samples,
        })] => {
            assert_eq!(key, "m");
            (*request, samples.len())
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(n, 8);
    let probs: Vec<(String, f64)> = app
        .data
        .samples
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.clone(), if i == 5 { 0.52 } else { 0.05 }))
        .collect();
    app.on_engine_event(Event::Scored {
        request: req,
        key: "m".into(),
        probabilities: probs,
    });
    press(&mut app, &[key('U')]);
    assert_eq!(app.data.selected, 5);
    // disagreements: fraud samples scored 0.05
    app.data.filter = fraudlab::tui::data::Filter::Disagree;
    app.data.refresh();
    assert_eq!(
        app.data.visible.len(),
        3,
        "samples 1, 3, 7 are fraud but scored low"
    );
}

#[test]
fn next_unlabelled_on_text_dataset() {
    let d = tempfile::tempdir().unwrap();
    let mut app = new_app(d.path());
    let p = d.path().join("raw.jsonl");
    let lines: Vec<String> = (0..4)
        .map(|i| serde_json::json!({"text": fixtures::dialogue(i).0}).to_string())
        .collect();
    std::fs::write(&p, lines.join("\n")).unwrap();
    app.open_dataset(&p);
    app.tab = Tab::Data;
    assert_eq!(app.data.counts.labelled, 0);
    press(&mut app, &[key('f'), key('n')]);
    assert_eq!(app.data.counts.hand, 2);
    press(&mut app, &[key('g'), key('N')]);
    assert_eq!(app.data.selected, 2);
}

#[test]
fn training_start_pause_stop_and_events() {
    let d = tempfile::tempdir().unwrap();
    let (mut app, data) = with_data(d.path(), 6);
    app.tab = Tab::Train;
    // max steps through the form
    let f = fraudlab::tui::train::field_index("max steps").unwrap();
    for _ in 0..f {
        press(&mut app, &[key('j')]);
    }
    press(&mut app, &[code(KeyCode::Enter)]);
    type_text(&mut app, "2");
    press(&mut app, &[code(KeyCode::Enter)]);
    assert_eq!(app.train.cfg.max_steps, Some(2));
    let a = press(&mut app, &[key('s')]);
    let cfg = match &a[..] {
        [Action::Engine(Command::Train(c))] => c.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(cfg.model, "/models/m");
    assert_eq!(cfg.data, data, "no hand labels: the dataset itself");
    assert_eq!(cfg.max_steps, Some(2));
    assert!(cfg.out_dir.starts_with(app.session.runs_dir()) && cfg.out_dir.is_dir());
    assert!(app.train.live.active);
    assert!(press(&mut app, &[key('s')]).is_empty(), "one run at a time");
    assert!(matches!(
        press(&mut app, &[key('p')])[..],
        [Action::PauseTraining]
    ));
    assert!(matches!(
        press(&mut app, &[key('p')])[..],
        [Action::ResumeTraining]
    ));
    assert!(matches!(
        press(&mut app, &[key('x')])[..],
        [Action::StopTraining]
    ));
    app.on_engine_event(Event::Background {
        job: BackgroundJob::Train,
        running: true,
    });
    app.on_engine_event(Event::Train(TrainEvent::Started {
        run_dir: cfg.out_dir.clone(),
        total_steps: 2,
        start_step: 0,
        train_samples: 6,
        val_samples: 0,
        estimate_mib: 100.0,
    }));
    app.on_engine_event(Event::Train(TrainEvent::Step(fixtures::step_metrics(1, 2))));
    assert_eq!(app.train.live.loss.len(), 1);
    assert!(app.engine_status().0.contains("step 1/2"));
    // Esc stops training too
    assert!(matches!(
        press(&mut app, &[code(KeyCode::Esc)])[..],
        [Action::StopTraining]
    ));
    app.on_engine_event(Event::Error {
        subject: Subject::Train,
        message: "boom".into(),
    });
    assert!(!app.train.live.active);
    assert_eq!(app.train.live.error.as_deref(), Some("boom"));
}

#[test]
fn training_applies_hand_labels() {
    let d = tempfile::tempdir().unwrap();
    let (mut app, _) = with_data(d.path(), 6);
    app.tab = Tab::Data;
    press(&mut app, &[key('f')]); // sample 0 is normal in the file; hand label fraud
    app.tab = Tab::Train;
    let a = press(&mut app, &[key('s')]);
    let Action::Engine(Command::Train(cfg)) = &a[0] else {
        panic!()
    };
    assert!(cfg.data.ends_with("data-with-labels.jsonl"));
    let r = fraudlab::data::load(&cfg.data).unwrap();
    assert_eq!(r.samples.len(), 6);
    assert_eq!(
        r.samples.iter().filter(|s| s.label == Some(true)).count(),
        4
    );
}

#[test]
fn evaluation_threshold_and_mistake_to_data() {
    let d = tempfile::tempdir().unwrap();
    let (mut app, _) = with_data(d.path(), 10);
    app.tab = Tab::Eval;
    let a = press(&mut app, &[key('s')]);
    let cfg = match &a[..] {
        [Action::Engine(Command::Evaluate(c))] => c.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(cfg.targets.len(), 1);
    assert!(cfg
        .out_dir
        .as_ref()
        .unwrap()
        .starts_with(app.session.evals_dir()));
    assert!(app.eval.running);
    // results: every sample scored 0.6 → normal samples are false alarms at 0.5
    let preds: Vec<fraudlab::engine::eval::Prediction> = app
        .data
        .samples
        .iter()
        .map(|s| fraudlab::engine::eval::Prediction {
            id: s.id.clone(),
            label: s.label.unwrap(),
            probability: Some(0.6),
            answer: None,
            predicted: Some(true),
        })
        .collect();
    let rows: Vec<_> = preds
        .iter()
        .map(|p| fraudlab::data::EvalRow {
            label: p.label,
            predicted: p.predicted,
            probability: p.probability,
        })
        .collect();
    app.on_engine_event(Event::EvalDone(vec![fraudlab::engine::eval::EvalResult {
        model: "/models/m".into(),
        adapter: None,
        mode: fraudlab::engine::eval::EvalMode::Score,
        metrics: fraudlab::data::metrics::compute(&rows),
        samples_per_s: 10.0,
        seconds: 1.0,
        stream: None,
        rule: None,
        predictions: preds,
    }]));
    assert!(!app.eval.running);
    assert_eq!(app.eval.results[0].mistakes.len(), 5);
    assert!((app.eval.results[0].at.recall - 1.0).abs() < 1e-9);
    press(&mut app, &[code(KeyCode::Right), code(KeyCode::Right)]);
    assert!((app.eval.threshold - 0.6).abs() < 1e-9);
    press(&mut app, &[code(KeyCode::Right)]);
    // above every score: the fraud samples are now missed
    assert_eq!(app.eval.results[0].at.tp, 0);
    assert_eq!(app.eval.results[0].mistakes.len(), 5);
    press(&mut app, &[key('j'), code(KeyCode::Enter)]);
    assert_eq!(app.tab, Tab::Data);
    let v = &app.eval.results[0];
    let want = &v.result.predictions[v.mistakes[1]].id;
    assert_eq!(&app.data.selected_sample().unwrap().id, want);
    assert!(app.data.detail);
}

#[test]
fn escape_cancels_engine_work() {
    let d = tempfile::tempdir().unwrap();
    let mut app = new_app(d.path());
    app.on_engine_event(Event::State(EngineState::Generating));
    assert!(matches!(
        press(&mut app, &[code(KeyCode::Esc)])[..],
        [Action::Cancel]
    ));
    assert!(matches!(press(&mut app, &[key('x')])[..], [Action::Cancel]));
    app.on_engine_event(Event::State(EngineState::Idle));
    assert!(press(&mut app, &[code(KeyCode::Esc)]).is_empty());
}

#[test]
fn a_model_reaches_the_session_only_once_it_loaded() {
    let d = tempfile::tempdir().unwrap();
    let opts = || AppOptions {
        sessions_root: d.path().into(),
        model_dirs: vec![],
    };
    let reopen = || App::open(Session::open(d.path(), "t").unwrap(), opts());
    let loads = |a: &[Action]| {
        a.iter()
            .filter(|a| matches!(a, Action::Engine(Command::Load { .. })))
            .count()
    };
    let mut app = new_app(d.path());
    let p = d.path().join("models/m");
    app.models.list = vec![fixtures::model_info("m", &p, 1000, "instruct")];
    let spec = p.display().to_string();
    press(&mut app, &[code(KeyCode::Enter)]);
    app.save_session();
    assert!(app.session.load_config().unwrap().models.is_empty());
    app.on_engine_event(Event::Loaded(fixtures::loaded_info(&spec, "m", 1000)));
    assert_eq!(
        app.session.load_config().unwrap().models,
        vec![spec.clone()]
    );
    drop(app);

    // the next start loads it again; until it has loaded, session.json does not name it,
    // so a load that kills the process is not tried again on the start after
    let (app, actions) = reopen();
    assert_eq!(loads(&actions), 1);
    assert!(app.session.load_config().unwrap().models.is_empty());
    drop(app); // the process died while loading
    let (mut app, actions) = reopen();
    assert_eq!(loads(&actions), 0, "the crashed model is not loaded again");

    // a clean quit while a session model still loads keeps it
    press(&mut app, &[key('1')]);
    app.models.list = vec![fixtures::model_info("m", &p, 1000, "instruct")];
    press(&mut app, &[code(KeyCode::Enter)]);
    app.on_engine_event(Event::Loaded(fixtures::loaded_info(&spec, "m", 1000)));
    drop(app);
    let (mut app, actions) = reopen();
    assert_eq!(loads(&actions), 1);
    app.save_session_on_exit();
    assert_eq!(app.session.load_config().unwrap().models, vec![spec]);
}

#[test]
fn session_restores_models_dataset_and_pane() {
    let d = tempfile::tempdir().unwrap();
    let data;
    {
        let (mut app, p) = with_data(d.path(), 5);
        data = p;
        app.tab = Tab::Data;
        press(&mut app, &[key('f')]);
        app.save_session();
    }
    let s = Session::open(d.path(), "t").unwrap();
    let (mut app, actions) = App::open(
        s,
        AppOptions {
            sessions_root: d.path().into(),
            model_dirs: vec![],
        },
    );
    // discovery and the dataset are queued for the I/O worker: the dataset shows once in
    assert!(app.io_pending());
    assert_eq!(app.data.path, None);
    assert_eq!(app.data.loading.as_deref(), Some(data.as_path()));
    app.finish_io();
    assert!(!app.io_pending());
    assert_eq!(app.tab, Tab::Data);
    assert_eq!(app.data.path.as_deref(), Some(data.as_path()));
    assert_eq!(app.data.counts.hand, 1);
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Engine(Command::Load { spec, .. }) if spec == "/models/m")));
}

#[test]
fn broken_session_file_is_reported_not_overwritten() {
    let d = tempfile::tempdir().unwrap();
    let s = Session::open(d.path(), "t").unwrap();
    std::fs::write(s.config_path(), "{ not json").unwrap();
    let mut app = App::new(
        s,
        AppOptions {
            sessions_root: d.path().into(),
            model_dirs: vec![],
        },
    );
    assert!(app
        .message
        .as_ref()
        .unwrap()
        .text
        .contains("not be overwritten"));
    app.tab = Tab::Data;
    app.save_session();
    assert_eq!(
        std::fs::read_to_string(app.session.config_path()).unwrap(),
        "{ not json"
    );
}

#[test]
fn paste_goes_into_the_editor() {
    let d = tempfile::tempdir().unwrap();
    let mut app = new_app(d.path());
    app.tab = Tab::Probe;
    app.handle_event(&crossterm::event::Event::Paste(
        "张伟：转账\r\n李娜：好".into(),
    ));
    assert!(app.probe.editing);
    assert!(app.probe.user.text().ends_with("张伟：转账\n李娜：好"));
}

#[test]
fn commands_end_in_order_and_close_what_they_left_open() {
    let d = tempfile::tempdir().unwrap();
    let (mut app, _) = with_data(d.path(), 4);
    app.tab = Tab::Probe;
    // a suite of several requests queued; the first answers, then a cancel ends the rest
    let a = press(&mut app, &[key('b')]);
    let n = a.len();
    assert_eq!(app.commands_in_flight(), n);
    let Action::Engine(Command::Generate { request, .. }) = &a[0] else {
        panic!()
    };
    app.on_engine_event(Event::State(EngineState::Generating));
    app.on_engine_event(Event::Generated {
        request: *request,
        key: "m".into(),
        generation: fixtures::generation("大语言模型"),
    });
    app.on_engine_event(Event::State(EngineState::Idle));
    assert_eq!(app.commands_in_flight(), n - 1);
    press(&mut app, &[code(KeyCode::Esc)]); // idle now: nothing to cancel
    for _ in 1..n {
        app.on_engine_event(Event::State(EngineState::Idle));
    }
    assert_eq!(app.commands_in_flight(), 0);
    let suite = app.probe.suite.as_ref().unwrap();
    assert!(suite.cells[0][0].done.is_some());
    assert!(
        suite.cells[1..].iter().all(|r| r[0].cancelled),
        "the rest never answered"
    );
    let s = fraudlab::tui::render_to_string(&app, 160, 40);
    assert!(s.contains("cancelled"), "{s}");
}

#[test]
fn a_recipe_search_needs_a_time_budget_and_lists_its_trials_as_runs() {
    let d = tempfile::tempdir().unwrap();
    let (mut app, _) = with_data(d.path(), 6);
    app.tab = Tab::Train;
    assert!(
        press(&mut app, &[key('T')]).is_empty(),
        "no budget: nothing starts"
    );
    assert!(app.message.as_ref().unwrap().text.contains("time budget"));
    // the budget and a layer range through the form
    for (field, text) in [("time budget", "15m"), ("layers", "1-1")] {
        let f = fraudlab::tui::train::field_index(field).unwrap();
        while app.train.field < f {
            press(&mut app, &[key('j')]);
        }
        press(&mut app, &[code(KeyCode::Enter)]);
        type_text(&mut app, text);
        press(&mut app, &[code(KeyCode::Enter)]);
    }
    assert_eq!(app.train.cfg.time_budget_s, Some(900.0));
    assert_eq!(app.train.cfg.lora.layers_to_transform, Some(vec![1]));
    let a = press(&mut app, &[key('T')]);
    let (base, budget) = match &a[..] {
        [Action::Engine(Command::Tune { base, budget_s })] => (base.clone(), *budget_s),
        other => panic!("{other:?}"),
    };
    assert_eq!(budget, 900.0);
    assert!(base.val_split > 0.0, "a search selects on validation");
    let name = base
        .out_dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(name.starts_with("tune-"), "{name}");
    // its trials show in the runs view, each as a run
    for t in ["0-lr1e-4-r8-all", "1-lr2e-4-r8-all"] {
        let dir = base.out_dir.join("trials").join(t);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("metrics.jsonl"),
            "{\"step\":1,\"loss\":0.5,\"total_steps\":2}\n",
        )
        .unwrap();
    }
    app.train.live.active = false;
    press(&mut app, &[key('v')]);
    let ids: Vec<&str> = app.train.runs.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        vec![
            format!("{name}/0-lr1e-4-r8-all"),
            format!("{name}/1-lr2e-4-r8-all")
        ]
    );
}

#[test]
fn datasets_and_scans_open_on_the_io_worker_and_stale_results_are_dropped() {
    use fraudlab::tui::io::{AfterScan, IoWorker};
    let d = tempfile::tempdir().unwrap();
    let mut app = new_app(d.path());
    let a = d.path().join("a.jsonl");
    let b = d.path().join("b.jsonl");
    fixtures::write_dataset(&a, 3).unwrap();
    fixtures::write_dataset(&b, 5).unwrap();
    // Enter on the open-dataset prompt queues the file; nothing is read on this thread
    app.tab = Tab::Data;
    press(&mut app, &[key('o')]);
    type_text(&mut app, a.to_str().unwrap());
    press(&mut app, &[code(KeyCode::Enter)]);
    assert_eq!(app.data.path, None);
    assert_eq!(app.data.loading.as_deref(), Some(a.as_path()));
    assert!(fraudlab::tui::render_to_string(&app, 100, 20).contains("loading"));
    let worker = IoWorker::spawn().unwrap();
    for job in app.take_io() {
        worker.send(job);
    }
    // the user asks for another file before the first is in: the first is dropped
    app.request_dataset(&b);
    app.request_scan(AfterScan::Report);
    for job in app.take_io() {
        worker.send(job);
    }
    let mut got = 0;
    let t0 = std::time::Instant::now();
    while got < 3 {
        for done in worker.drain() {
            app.on_io(done);
            got += 1;
        }
        assert!(t0.elapsed().as_secs() < 30, "the worker answers");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(app.data.path.as_deref(), Some(b.as_path()));
    assert_eq!(app.data.samples.len(), 5);
    assert!(!app.io_pending());
    assert!(app
        .message
        .as_ref()
        .unwrap()
        .text
        .contains("model(s) found"));
    // a file that cannot be read is an error naming it; the open dataset stays
    app.request_dataset(&d.path().join("missing.jsonl"));
    app.finish_io();
    assert!(app.message.as_ref().unwrap().text.contains("missing.jsonl"));
    assert_eq!(app.data.path.as_deref(), Some(b.as_path()));
}
