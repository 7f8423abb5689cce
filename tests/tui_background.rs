//! The workbench while the engine trains or evaluates in the background: interactive work is
//! sent at once with no "the engine is busy" message, the status line shows both sides, and
//! Esc cancels the interactive command before it stops the run.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use fraudlab::data::Session;
use fraudlab::engine::train::TrainEvent;
use fraudlab::engine::{BackgroundJob, Command, EngineState, Event, Refusal, Subject};
use fraudlab::tui::app::{Level, SlotState, Tab};
use fraudlab::tui::keys::strings;
use fraudlab::tui::{fixtures, Action, App, AppOptions};
use std::path::Path;

fn key(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
}
fn code(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}
fn press(app: &mut App, keys: &[KeyEvent]) -> Vec<Action> {
    keys.iter().flat_map(|k| app.handle_key(*k)).collect()
}

/// An app with a dataset open and one ready model, a two-step training run started, the
/// worker done with the command and the run going on beside it.
fn training_app(root: &Path) -> App {
    let s = Session::open(root, "t").unwrap();
    let mut app = App::new(
        s,
        AppOptions {
            sessions_root: root.to_path_buf(),
            model_dirs: vec![],
        },
    );
    let p = root.join("d.jsonl");
    fixtures::write_dataset(&p, 6).unwrap();
    app.open_dataset(&p);
    app.slots.push(fraudlab::tui::app::Slot {
        key: "m".into(),
        spec: "/models/m".into(),
        adapter: None,
        name: "m".into(),
        state: SlotState::Ready(fixtures::loaded_info("m", "m", 1000)),
    });
    app.tab = Tab::Train;
    let a = press(&mut app, &[key('s')]);
    let Some(Action::Engine(Command::Train(cfg))) = a.first() else {
        panic!("{a:?}")
    };
    let run_dir = cfg.out_dir.clone();
    // the worker starts the run's thread and is free again
    app.on_engine_event(Event::Background {
        job: BackgroundJob::Train,
        running: true,
    });
    app.on_engine_event(Event::State(EngineState::Idle));
    app.on_engine_event(Event::Train(TrainEvent::Started {
        run_dir,
        total_steps: 2,
        start_step: 0,
        train_samples: 6,
        val_samples: 0,
        estimate_mib: 100.0,
    }));
    app.on_engine_event(Event::Train(TrainEvent::Step(fixtures::step_metrics(1, 2))));
    assert_eq!(app.commands_in_flight(), 0);
    assert!(app.train.live.active);
    app
}

fn busy_message(app: &App) -> bool {
    app.message
        .as_ref()
        .is_some_and(|m| m.text == strings::ENGINE_BUSY_QUEUED)
}

#[test]
fn a_probe_during_training_goes_at_once_and_esc_cancels_it_before_the_run() {
    let d = tempfile::tempdir().unwrap();
    let mut app = training_app(d.path());
    assert!(
        !app.engine_busy(),
        "the worker is free while the run goes on"
    );
    assert!(app.engine_working());
    assert!(app.engine_status().0.contains("training step 1/2"));
    app.tab = Tab::Probe;
    let a = press(&mut app, &[code(KeyCode::F(5))]);
    let request = match &a[..] {
        [Action::Engine(Command::Generate { request, .. })] => *request,
        other => panic!("{other:?}"),
    };
    assert!(!busy_message(&app), "{:?}", app.message);
    app.on_engine_event(Event::State(EngineState::Generating));
    let (status, level) = app.engine_status();
    assert!(
        status.contains("generating") && status.contains("training step 1/2"),
        "{status}"
    );
    assert_eq!(level, Level::Warn);
    // Esc: the probe first; the run is not stopped
    assert!(matches!(
        press(&mut app, &[code(KeyCode::Esc)])[..],
        [Action::Cancel]
    ));
    assert!(!app.train.stop_requested);
    app.on_engine_event(Event::Generated {
        request,
        key: "m".into(),
        generation: fixtures::generation("{\"is_fraud\": false}"),
    });
    app.on_engine_event(Event::State(EngineState::Idle));
    assert!(app.train.live.active, "the run goes on");
    // with the worker idle, Esc stops the run
    assert!(matches!(
        press(&mut app, &[code(KeyCode::Esc)])[..],
        [Action::StopTraining]
    ));
    // a run whose thread ends without its summary is not left "running"
    app.on_engine_event(Event::Background {
        job: BackgroundJob::Train,
        running: false,
    });
    assert!(!app.train.live.active);
    assert!(!app.engine_working());
    assert_eq!(app.engine_status().0, "● idle");
}

#[test]
fn loads_and_monitored_turns_do_not_wait_for_training() {
    let d = tempfile::tempdir().unwrap();
    let mut app = training_app(d.path());
    let mut out = Vec::new();
    app.load_model("/models/other".into(), None, &mut out);
    assert!(matches!(out[..], [Action::Engine(Command::Load { .. })]));
    assert!(!busy_message(&app), "{:?}", app.message);
    // the Monitor pane sends a turn during training
    press(
        &mut app,
        &[key('6'), code(KeyCode::Down), code(KeyCode::Enter)],
    );
    let a = press(&mut app, &[key('n')]);
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::Engine(Command::MonitorTurn { .. }))),
        "{a:?} {:?}",
        app.message
    );
    assert!(!busy_message(&app), "{:?}", app.message);
}

#[test]
fn a_refused_run_is_reported_and_one_run_at_a_time_in_the_pane() {
    let d = tempfile::tempdir().unwrap();
    let mut app = training_app(d.path());
    app.tab = Tab::Train;
    assert!(press(&mut app, &[key('s')]).is_empty(), "one run at a time");
    // the pane lost track of the engine's run (its error ended the pane's): the engine
    // refuses the next one, and the pane says why
    app.on_engine_event(Event::Error {
        subject: Subject::Train,
        message: "boom".into(),
    });
    assert!(!app.train.live.active);
    assert!(
        press(&mut app, &[key('s')]).is_empty(),
        "the engine still runs one"
    );
    app.on_engine_event(Event::Background {
        job: BackgroundJob::Train,
        running: false,
    });
    let a = press(&mut app, &[key('s')]);
    assert!(matches!(a[..], [Action::Engine(Command::Train(_))]));
    app.on_engine_event(Event::Refused {
        subject: Subject::Train,
        reason: Refusal::TrainingRunning,
    });
    app.on_engine_event(Event::State(EngineState::Idle));
    assert!(!app.train.live.active);
    let err = app.train.live.error.clone().unwrap_or_default();
    assert!(err.contains("already going"), "{err}");
    assert_eq!(app.message.as_ref().map(|m| m.level), Some(Level::Error));
}

#[test]
fn esc_cancels_an_evaluation_running_beside_an_idle_worker() {
    let d = tempfile::tempdir().unwrap();
    let mut app = training_app(d.path());
    app.on_engine_event(Event::Train(TrainEvent::Log("x".into())));
    app.on_engine_event(Event::Background {
        job: BackgroundJob::Train,
        running: false,
    });
    app.on_engine_event(Event::Background {
        job: BackgroundJob::Eval,
        running: true,
    });
    app.on_engine_event(Event::EvalProgress {
        model: "m".into(),
        done: 3,
        total: 6,
    });
    assert!(app.engine_status().0.contains("evaluating 3/6"));
    app.tab = Tab::Eval;
    assert!(matches!(
        press(&mut app, &[code(KeyCode::Esc)])[..],
        [Action::CancelEvaluation]
    ));
}
