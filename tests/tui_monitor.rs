//! The Monitor pane on `App` without a terminal: which commands its keys send (one
//! `MonitorTurn` per followed model, `MonitorConfigure` on threshold changes, nothing while a
//! turn is being scored or with no model), how engine events land on screen (the turn, the
//! risk, the alert box), what the status line says, the paced replay, the session; and one
//! replayed turn through the real engine on a tiny model.

mod common;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use fraudlab::data::Session;
use fraudlab::engine::monitor::{Explanation, TurnResult};
use fraudlab::engine::{Command, Engine, Event, Subject};
use fraudlab::model::tiny::TinySpec;
use fraudlab::model::LoadOptions;
use fraudlab::tui::app::{Level, Modal, Slot, SlotState, Tab};
use fraudlab::tui::{fixtures, render_to_string, Action, App, AppOptions};
use std::path::Path;
use std::time::{Duration, Instant};

fn key(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
}
fn code(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
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

fn ready(app: &mut App, key: &str, name: &str) {
    app.slots.push(Slot {
        key: key.into(),
        spec: format!("/models/{key}"),
        adapter: None,
        name: name.into(),
        state: SlotState::Ready(fixtures::loaded_info(key, name, 1000)),
    });
}

/// A dataset of `n` fixture dialogues (odd ones fraud) and the given ready models.
fn app_with(root: &Path, n: usize, models: &[(&str, &str)]) -> App {
    let mut app = new_app(root);
    let p = root.join("d.jsonl");
    fixtures::write_dataset(&p, n).unwrap();
    app.open_dataset(&p);
    for (k, name) in models {
        ready(&mut app, k, name);
    }
    app.message = None;
    app
}

fn press(app: &mut App, keys: &[KeyEvent]) -> Vec<Action> {
    keys.iter().flat_map(|k| app.handle_key(*k)).collect()
}

fn type_text(app: &mut App, s: &str) -> Vec<Action> {
    s.chars().flat_map(|c| app.handle_key(key(c))).collect()
}

/// One frame as text; FRAUDLAB_PRINT_SNAPSHOTS=1 prints it.
fn frame(app: &App, w: u16, h: u16) -> String {
    let s = render_to_string(app, w, h);
    if std::env::var_os("FRAUDLAB_PRINT_SNAPSHOTS").is_some() {
        println!("---- monitor {w}x{h}\n{s}");
    }
    s
}

fn message(app: &App) -> String {
    app.message
        .as_ref()
        .map(|m| m.text.clone())
        .unwrap_or_default()
}

/// (request, key, conversation, speaker, text) of every MonitorTurn.
fn turns_of(acts: &[Action]) -> Vec<(u64, String, String, String, String)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Engine(Command::MonitorTurn {
                request,
                key,
                conversation,
                speaker,
                text,
            }) => Some((
                *request,
                key.clone(),
                conversation.clone(),
                speaker.clone(),
                text.clone(),
            )),
            _ => None,
        })
        .collect()
}

/// (key, threshold, consecutive) of every MonitorConfigure.
fn configures_of(acts: &[Action]) -> Vec<(String, f64, usize)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Engine(Command::MonitorConfigure { key, cfg }) => {
                Some((key.clone(), cfg.threshold, cfg.consecutive))
            }
            _ => None,
        })
        .collect()
}

fn result(conv: &str, turn: usize, speaker: &str, p: f64, alert_turn: Option<usize>) -> TurnResult {
    TurnResult {
        conversation: conv.into(),
        turn,
        speaker: speaker.into(),
        p_fraud: p,
        alert: alert_turn.is_some(),
        alert_turn,
        latency_ms: 12.5 * turn as f64,
        prompt_tokens: 40 * turn,
        computed_tokens: 30,
        window_start: 1,
        slid: false,
        evicted: None,
    }
}

/// Picks dialogue #2 (a fraud one) and sends its first turn.
fn pick_second_and_next(app: &mut App) -> Vec<Action> {
    press(app, &[key('6'), code(KeyCode::Down), code(KeyCode::Enter)]);
    assert!(app.monitor.script.is_some(), "{}", message(app));
    press(app, &[key('n')])
}

#[test]
fn six_opens_the_pane_and_its_keys_are_documented() {
    let d = tempfile::tempdir().unwrap();
    let mut app = app_with(d.path(), 6, &[("m1", "Qwen-A")]);
    press(&mut app, &[key('6')]);
    assert_eq!(app.tab, Tab::Monitor);
    for (w, h) in [(80, 24), (200, 50)] {
        let s = frame(&app, w, h);
        assert!(s.contains("6 Monitor"), "tab bar at {w}x{h}:\n{s}");
        assert!(s.contains("1 Models"), "{s}");
        assert!(
            s.contains("Dialogues"),
            "the dialogue list at {w}x{h}:\n{s}"
        );
        assert!(s.contains("n next"), "footer hints at {w}x{h}:\n{s}");
    }
    // Tab cycles through the sixth pane
    press(&mut app, &[code(KeyCode::Tab)]);
    assert_eq!(app.tab, Tab::Models);
    press(&mut app, &[code(KeyCode::BackTab)]);
    assert_eq!(app.tab, Tab::Monitor);
    // the help overlay lists the pane's keys first
    press(&mut app, &[key('?')]);
    let s = frame(&app, 200, 50);
    for want in [
        "Monitor (this pane)",
        "play / pause the replay",
        "alert threshold",
        "1-6",
    ] {
        assert!(s.contains(want), "help lacks {want:?}:\n{s}");
    }
}

#[test]
fn next_sends_the_first_turn_to_every_ready_model() {
    let d = tempfile::tempdir().unwrap();
    let mut app = app_with(d.path(), 6, &[("m1", "Qwen-A"), ("m2", "Qwen-B")]);
    let acts = pick_second_and_next(&mut app);
    let first = app.data.samples[1].turns()[0].clone();
    // the conversation is configured for each model first (threshold 0.5, K 1 by default)
    let cfgs = configures_of(&acts);
    assert_eq!(
        cfgs,
        vec![("m1".to_string(), 0.5, 1), ("m2".to_string(), 0.5, 1)]
    );
    let t = turns_of(&acts);
    assert_eq!(t.len(), 2, "{acts:?}");
    assert_eq!(t[0].1, "m1");
    assert_eq!(t[1].1, "m2");
    assert_ne!(t[0].0, t[1].0, "one request id per model");
    assert_eq!(t[0].2, t[1].2, "the same conversation");
    for x in &t {
        assert_eq!((x.3.clone(), x.4.clone()), first);
    }
    // configure comes before the turn
    let pos_cfg = acts
        .iter()
        .position(|a| matches!(a, Action::Engine(Command::MonitorConfigure { .. })))
        .unwrap();
    let pos_turn = acts
        .iter()
        .position(|a| matches!(a, Action::Engine(Command::MonitorTurn { .. })))
        .unwrap();
    assert!(pos_cfg < pos_turn);
    // the next turn waits for both results
    let again = press(&mut app, &[key('n'), code(KeyCode::Right)]);
    assert!(turns_of(&again).is_empty(), "{again:?}");
    assert!(message(&app).contains("waiting"), "{}", message(&app));
    // one result back: still waiting for the other
    app.on_engine_event(Event::MonitorTurn {
        request: t[0].0,
        key: "m1".into(),
        result: result(&t[0].2, 1, &first.0, 0.2, None),
    });
    assert!(turns_of(&press(&mut app, &[key('n')])).is_empty());
    assert!(message(&app).contains("1 of 2 back"), "{}", message(&app));
    app.on_engine_event(Event::MonitorTurn {
        request: t[1].0,
        key: "m2".into(),
        result: result(&t[1].2, 1, &first.0, 0.3, None),
    });
    let second = app.data.samples[1].turns()[1].clone();
    let acts = press(&mut app, &[code(KeyCode::Right)]);
    let t2 = turns_of(&acts);
    assert_eq!(t2.len(), 2);
    assert!(
        configures_of(&acts).is_empty(),
        "configured once a conversation"
    );
    assert_eq!((t2[0].3.clone(), t2[0].4.clone()), second);
}

#[test]
fn results_render_the_turn_the_risk_and_the_alert() {
    let d = tempfile::tempdir().unwrap();
    let mut app = app_with(d.path(), 6, &[("m1", "Qwen-A"), ("m2", "Qwen-B")]);
    let acts = pick_second_and_next(&mut app);
    let t = turns_of(&acts);
    let (sp, text) = app.data.samples[1].turns()[0].clone();
    app.on_engine_event(Event::MonitorTurn {
        request: t[0].0,
        key: "m1".into(),
        result: result(&t[0].2, 1, &sp, 0.12, None),
    });
    app.on_engine_event(Event::MonitorTurn {
        request: t[1].0,
        key: "m2".into(),
        result: result(&t[1].2, 1, &sp, 0.87, Some(1)),
    });
    let s = frame(&app, 200, 50);
    assert!(s.contains(&sp), "speaker:\n{s}");
    // the start of the utterance is on screen (it may be cut at the column's end)
    let head: String = text.chars().take(6).collect();
    assert!(s.contains(&head), "utterance {head:?}:\n{s}");
    assert!(s.contains("0.12"), "m1's risk:\n{s}");
    assert!(s.contains("0.87"), "m2's risk:\n{s}");
    assert!(s.contains("ALERT at turn 1"), "alert box:\n{s}");
    assert!(
        s.contains("Qwen-B: fired at turn 1"),
        "the firing model:\n{s}"
    );
    assert!(s.contains("Qwen-A: no alert"), "{s}");
    assert!(s.contains("Risk over turns"), "chart:\n{s}");
    assert!(s.contains("threshold 0.50"), "{s}");
    assert!(
        s.contains("true label: fraud"),
        "the dialogue's label:\n{s}"
    );
    assert!(s.contains("caught at turn 1"), "{s}");
    assert!(s.contains("latency"), "{s}");
    assert!(
        s.contains("ALERT: Qwen-B flagged turn 1"),
        "status line:\n{s}"
    );
    // the narrow layout shows the same essentials
    let s = frame(&app, 80, 24);
    assert!(s.contains("0.87") && s.contains("ALERT at turn 1"), "{s}");
    // the alert was explained automatically, once: the explain request goes out on a tick
    let due = app.due(Instant::now());
    let explains: Vec<(u64, String)> = due
        .iter()
        .filter_map(|a| match a {
            Action::Engine(Command::MonitorExplain { request, key, .. }) => {
                Some((*request, key.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(explains.len(), 1, "{due:?}");
    assert_eq!(explains[0].1, "m2");
    assert!(app.due(Instant::now()).is_empty(), "asked once");
    app.on_engine_event(Event::Explained {
        request: explains[0].0,
        key: "m2".into(),
        explanation: Explanation {
            conversation: t[1].2.clone(),
            fraud_speaker: Some(sp.clone()),
            reason: Some("索要验证码".into()),
            raw: String::new(),
        },
    });
    let s = frame(&app, 200, 50);
    assert!(s.contains("reason: 索要验证码"), "{s}");
    assert!(s.contains(&format!("fraudster: {sp}")), "{s}");
}

#[test]
fn threshold_and_consecutive_keys_reconfigure_every_model() {
    let d = tempfile::tempdir().unwrap();
    let mut app = app_with(d.path(), 6, &[("m1", "Qwen-A"), ("m2", "Qwen-B")]);
    let acts = pick_second_and_next(&mut app);
    let old_conv = turns_of(&acts)[0].2.clone();
    let acts = press(&mut app, &[key('t')]);
    let c = configures_of(&acts);
    assert_eq!(c.len(), 2, "{acts:?}");
    for (i, k) in ["m1", "m2"].iter().enumerate() {
        assert_eq!(c[i].0, *k);
        assert!((c[i].1 - 0.55).abs() < 1e-9, "{c:?}");
    }
    assert!(
        message(&app).contains("threshold 0.55"),
        "{}",
        message(&app)
    );
    assert!(message(&app).contains("starts again"), "{}", message(&app));
    // a fresh conversation from turn 1
    assert_ne!(app.monitor.conversation, old_conv);
    assert!(app.monitor.turns.is_empty());
    assert_eq!(app.monitor.next, 0);
    let c = configures_of(&press(&mut app, &[key('T'), key('T')]));
    assert!((c.last().unwrap().1 - 0.45).abs() < 1e-9, "{c:?}");
    let c = configures_of(&press(&mut app, &[key('k')]));
    assert_eq!(c.len(), 2);
    assert!(
        c.iter().all(|x| x.2 == 2 && (x.1 - 0.45).abs() < 1e-9),
        "{c:?}"
    );
    assert_eq!(
        configures_of(&press(&mut app, &[key('K'), key('K')]))[0].2,
        1,
        "K stays at least 1"
    );
    // the next turn goes to the reconfigured conversation without configuring again
    let acts = press(&mut app, &[key('n')]);
    assert!(configures_of(&acts).is_empty());
    let t = turns_of(&acts);
    assert_eq!(t.len(), 2);
    assert_eq!(t[0].2, app.monitor.conversation);
    assert_eq!(
        (t[0].3.clone(), t[0].4.clone()),
        app.data.samples[1].turns()[0]
    );
    let s = frame(&app, 200, 50);
    assert!(s.contains("threshold 0.45 · K 1"), "{s}");
}

#[test]
fn next_with_no_model_sends_nothing_and_says_why() {
    let d = tempfile::tempdir().unwrap();
    let mut app = app_with(d.path(), 4, &[]);
    let acts = press(&mut app, &[key('6'), key('n')]);
    assert!(acts.is_empty(), "{acts:?}");
    let m = app.message.clone().expect("a message");
    assert!(m.text.contains("no model loaded"), "{}", m.text);
    assert_eq!(m.level, Level::Warn);
    let s = frame(&app, 80, 24);
    assert!(s.contains("no model loaded"), "status line:\n{s}");
    // Space and a typed turn say the same
    app.message = None;
    assert!(press(&mut app, &[key(' ')]).is_empty());
    assert!(message(&app).contains("no model loaded"));
    press(&mut app, &[key('i')]);
    let mut acts = type_text(&mut app, "A: hi");
    acts.extend(press(&mut app, &[code(KeyCode::Enter)]));
    assert!(acts.is_empty());
    assert_eq!(
        app.monitor.input.text(),
        "A: hi",
        "the text stays to send later"
    );
    // a model still loading: wait
    app.slots.push(Slot {
        key: "m".into(),
        spec: "/m".into(),
        adapter: None,
        name: "m".into(),
        state: SlotState::Loading,
    });
    press(&mut app, &[code(KeyCode::Esc)]);
    assert!(press(&mut app, &[key('n')]).is_empty());
    assert!(message(&app).contains("still loading"), "{}", message(&app));
}

#[test]
fn no_dataset_says_so() {
    let d = tempfile::tempdir().unwrap();
    let mut app = new_app(d.path());
    ready(&mut app, "m1", "Qwen-A");
    let acts = press(&mut app, &[key('6'), key('n')]);
    assert!(acts.is_empty());
    assert!(
        message(&app).contains("nothing to replay"),
        "{}",
        message(&app)
    );
    assert!(press(&mut app, &[code(KeyCode::Enter)]).is_empty());
}

#[test]
fn a_typed_live_turn_is_sent() {
    let d = tempfile::tempdir().unwrap();
    let mut app = new_app(d.path());
    ready(&mut app, "m1", "Qwen-A");
    press(&mut app, &[key('6'), key('i')]);
    assert!(app.monitor.editing);
    // keys that act elsewhere are text here
    let mut acts = type_text(&mut app, "A: hello");
    assert!(acts.is_empty());
    assert!(!app.quit && app.tab == Tab::Monitor);
    acts.extend(press(&mut app, &[code(KeyCode::Enter)]));
    let t = turns_of(&acts);
    assert_eq!(t.len(), 1, "{acts:?}");
    assert_eq!(
        (t[0].1.as_str(), t[0].3.as_str(), t[0].4.as_str()),
        ("m1", "A", "hello")
    );
    assert!(app.monitor.input.text().is_empty(), "the line is cleared");
    // typed while the first is scored: queued, sent by the tick once the result is back
    type_text(&mut app, "B：你好 q6");
    let acts = press(&mut app, &[code(KeyCode::Enter)]);
    assert!(turns_of(&acts).is_empty());
    assert!(!app.quit, "q typed is text");
    assert_eq!(app.monitor.live_queue.len(), 1);
    assert!(
        turns_of(&app.due(Instant::now())).is_empty(),
        "still waiting"
    );
    app.on_engine_event(Event::MonitorTurn {
        request: t[0].0,
        key: "m1".into(),
        result: result(&t[0].2, 1, "A", 0.1, None),
    });
    let t2 = turns_of(&app.due(Instant::now()));
    assert_eq!(t2.len(), 1);
    assert_eq!((t2[0].3.as_str(), t2[0].4.as_str()), ("B", "你好 q6"));
    assert_eq!(t2[0].2, t[0].2, "the same conversation");
    let s = frame(&app, 120, 30);
    assert!(s.contains("A: hello"), "{s}");
    assert!(s.contains("Live turn"), "{s}");
    // Esc leaves the input line; keys act again
    press(&mut app, &[code(KeyCode::Esc)]);
    assert!(!app.monitor.editing);
    // a pasted block becomes live turns, sent one by one
    app.on_engine_event(Event::MonitorTurn {
        request: t2[0].0,
        key: "m1".into(),
        result: result(&t2[0].2, 2, "B", 0.2, None),
    });
    app.handle_paste("A: one\nB: two\n");
    assert_eq!(app.monitor.live_queue.len(), 2);
    let t3 = turns_of(&app.due(Instant::now()));
    assert_eq!(t3.len(), 1);
    assert_eq!(t3[0].4, "one");
    assert!(
        turns_of(&app.due(Instant::now())).is_empty(),
        "one at a time"
    );
}

#[test]
fn an_error_for_a_monitor_request_shows_in_the_status_line() {
    let d = tempfile::tempdir().unwrap();
    let mut app = app_with(d.path(), 6, &[("m1", "Qwen-A"), ("m2", "Qwen-B")]);
    let acts = pick_second_and_next(&mut app);
    let t = turns_of(&acts);
    app.on_engine_event(Event::Error {
        subject: Subject::Monitor {
            request: t[0].0,
            key: "m1".into(),
            conversation: t[0].2.clone(),
        },
        message: "the prompt is longer than the context".into(),
    });
    let m = app.message.clone().unwrap();
    assert_eq!(m.level, Level::Error);
    assert!(
        m.text.contains("the prompt is longer than the context"),
        "{}",
        m.text
    );
    let s = frame(&app, 200, 50);
    assert!(s.contains("the prompt is longer than the context"), "{s}");
    assert!(s.contains("error"), "the turn's cell:\n{s}");
    // the other model goes on alone
    app.on_engine_event(Event::MonitorTurn {
        request: t[1].0,
        key: "m2".into(),
        result: result(&t[1].2, 1, "x", 0.3, None),
    });
    let t2 = turns_of(&press(&mut app, &[key('n')]));
    assert_eq!(t2.len(), 1);
    assert_eq!(t2[0].1, "m2");
    // a turn whose command ended without any event (engine panic) does not hang the pane
    app.on_engine_event(Event::State(fraudlab::engine::EngineState::Monitoring));
    for _ in 0..8 {
        app.on_engine_event(Event::State(fraudlab::engine::EngineState::Idle));
    }
    assert_eq!(app.monitor.waiting(), 0);
}

#[test]
fn play_waits_for_results_and_the_pace() {
    let d = tempfile::tempdir().unwrap();
    let mut app = app_with(d.path(), 6, &[("m1", "Qwen-A")]);
    press(
        &mut app,
        &[key('6'), code(KeyCode::Down), code(KeyCode::Enter)],
    );
    // Space plays: the first turn goes at once
    let acts = press(&mut app, &[key(' ')]);
    let t = turns_of(&acts);
    assert_eq!(t.len(), 1);
    assert!(app.monitor.playing);
    let later = Instant::now() + Duration::from_secs(30);
    assert!(
        turns_of(&app.due(later)).is_empty(),
        "never before the results"
    );
    app.on_engine_event(Event::MonitorTurn {
        request: t[0].0,
        key: "m1".into(),
        result: result(&t[0].2, 1, "x", 0.1, None),
    });
    assert!(
        turns_of(&app.due(Instant::now())).is_empty(),
        "the pace (1.5 s) first"
    );
    let t2 = turns_of(&app.due(later));
    assert_eq!(t2.len(), 1);
    assert_eq!(app.monitor.next, 2);
    // faster / slower
    press(&mut app, &[key('+'), key('+')]);
    assert!((app.monitor.pace_s - 0.5).abs() < 1e-9);
    press(&mut app, &[key('+')]);
    assert!(
        (app.monitor.pace_s - 0.5).abs() < 1e-9,
        "0.5 s at the fastest"
    );
    press(&mut app, &[key('-'); 20]);
    assert!(
        (app.monitor.pace_s - 5.0).abs() < 1e-9,
        "5 s at the slowest"
    );
    // Space pauses
    press(&mut app, &[key(' ')]);
    assert!(!app.monitor.playing);
    app.on_engine_event(Event::MonitorTurn {
        request: t2[0].0,
        key: "m1".into(),
        result: result(&t2[0].2, 2, "x", 0.1, None),
    });
    assert!(app.due(later).is_empty());
    // r: MonitorEnd for the old conversation, a fresh id, turn 1 again
    let old = app.monitor.conversation.clone();
    let acts = press(&mut app, &[key('r')]);
    assert!(acts.iter().any(|a| matches!(a,
        Action::Engine(Command::MonitorEnd { key, conversation }) if key == "m1" && *conversation == old)));
    assert_ne!(app.monitor.conversation, old);
    let t3 = turns_of(&press(&mut app, &[key('n')]));
    assert_eq!(
        (t3[0].3.clone(), t3[0].4.clone()),
        app.data.samples[1].turns()[0]
    );
    assert_eq!(t3[0].2, app.monitor.conversation);
    // a late result of the ended conversation is ignored
    app.on_engine_event(Event::MonitorTurn {
        request: t2[0].0,
        key: "m1".into(),
        result: result(&old, 2, "x", 0.99, Some(2)),
    });
    assert!(app.monitor.followers.iter().all(|f| f.alert.is_none()));
}

#[test]
fn the_models_that_follow_can_be_chosen() {
    let d = tempfile::tempdir().unwrap();
    let mut app = app_with(d.path(), 6, &[("m1", "Qwen-A"), ("m2", "Qwen-B")]);
    press(&mut app, &[key('6'), key('m')]);
    match &app.modal {
        Some(Modal::Picker(p)) => {
            assert_eq!(p.values, vec!["m1".to_string(), "m2".to_string()]);
            assert_eq!(p.checked, Some(vec![true, true]));
        }
        other => panic!("{other:?}"),
    }
    // untick the first, done
    press(&mut app, &[key(' '), code(KeyCode::Enter)]);
    assert_eq!(app.monitor.chosen, vec!["m2".to_string()]);
    press(&mut app, &[code(KeyCode::Enter)]);
    let t = turns_of(&press(&mut app, &[key('n')]));
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].1, "m2");
}

#[test]
fn the_session_keeps_the_pane_settings() {
    let d = tempfile::tempdir().unwrap();
    {
        let mut app = app_with(d.path(), 6, &[("m1", "Qwen-A")]);
        press(
            &mut app,
            &[key('6'), key('t'), key('k'), key('-'), key('e')],
        );
        press(
            &mut app,
            &[
                code(KeyCode::Down),
                code(KeyCode::Down),
                code(KeyCode::Enter),
            ],
        );
        app.save_session();
    }
    let app = new_app(d.path());
    assert_eq!(app.tab, Tab::Monitor);
    let m = &app.monitor;
    assert_eq!(m.threshold, Some(0.55));
    assert_eq!(m.consecutive, Some(2));
    assert!((m.pace_s - 2.0).abs() < 1e-9, "{}", m.pace_s);
    assert!(!m.auto_explain);
    assert_eq!(m.list_sel, 2, "the chosen dialogue");
}

/// One replayed turn through the real engine on a tiny model, and an explanation.
#[test]
fn end_to_end_with_the_engine() {
    let d = tempfile::tempdir().unwrap();
    let model = common::tiny_model(d.path(), TinySpec::default());
    let spec = model.display().to_string();
    let mut app = app_with(d.path(), 4, &[]);
    // an alert may fire on random weights: x then asks, not the automatic explanation
    app.monitor.auto_explain = false;
    let engine = Engine::spawn(256);
    engine.send(Command::Load {
        key: spec.clone(),
        spec: spec.clone(),
        opts: LoadOptions::default(),
        adapter: None,
    });
    let pump = |app: &mut App, until: &dyn Fn(&App) -> bool| {
        let t0 = Instant::now();
        while !until(app) {
            assert!(t0.elapsed() < Duration::from_secs(120), "timed out");
            for e in engine.drain() {
                app.on_engine_event(e);
            }
            let due = app.due(Instant::now());
            fraudlab::tui::apply(due, &engine);
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    pump(&mut app, &|a: &App| a.ready_slots().count() == 1);
    let acts = pick_second_and_next(&mut app);
    assert_eq!(turns_of(&acts).len(), 1);
    fraudlab::tui::apply(acts, &engine);
    pump(&mut app, &|a: &App| {
        a.monitor.turns.len() == 1 && a.monitor.turns[0].complete()
    });
    let r = match &app.monitor.turns[0].scores[0] {
        fraudlab::tui::monitor::Score::Done(r) => r.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(r.turn, 1);
    assert!((0.0..=1.0).contains(&r.p_fraud));
    let s = frame(&app, 200, 50);
    assert!(s.contains(&format!("{:.2}", r.p_fraud)), "{s}");
    // x asks for an explanation (no alert yet): it comes back into the alert box
    let acts = press(&mut app, &[key('x')]);
    assert!(acts
        .iter()
        .any(|a| matches!(a, Action::Engine(Command::MonitorExplain { .. }))));
    fraudlab::tui::apply(acts, &engine);
    pump(&mut app, &|a: &App| {
        !matches!(
            a.monitor.followers[0].explain,
            fraudlab::tui::monitor::ExplainState::Asked(_)
        )
    });
    assert!(
        matches!(
            app.monitor.followers[0].explain,
            fraudlab::tui::monitor::ExplainState::Done(_)
        ),
        "{:?} / {}",
        app.monitor.followers[0].explain,
        message(&app)
    );
}

#[test]
fn risk_bars_and_column_titles() {
    use fraudlab::tui::monitor::{parse_live_turn, risk_bar, short_labels};
    use fraudlab::tui::widgets::display_width;
    assert_eq!(risk_bar(0.0, 4), "    ");
    assert_eq!(risk_bar(0.5, 6), "███   ");
    assert_eq!(risk_bar(1.0, 3), "███");
    for i in 0..=100 {
        assert_eq!(display_width(&risk_bar(i as f64 / 100.0, 5)), 5);
    }
    assert_eq!(
        short_labels(&["Qwen2.5-0.5B-Instruct".into(), "Qwen2.5-1.5B".into()]),
        vec!["0.5B-Instruct".to_string(), "1.5B".to_string()]
    );
    assert_eq!(short_labels(&["a".into()]), vec!["a".to_string()]);
    assert_eq!(
        parse_live_turn("  客服：请转账 "),
        Some(("客服".into(), "请转账".into()))
    );
    assert_eq!(
        parse_live_turn("hello"),
        Some((String::new(), "hello".into()))
    );
    assert_eq!(parse_live_turn("   "), None);
}
