//! Inference while training: the engine answers probes, scores and evaluations while a
//! (tiny) training run goes on in the background, one run at a time, with the loaded
//! weights shared. Order is asserted on the engine's events, never on wall-clock time.

mod common;
use common::*;

use fraudlab::engine::eval::{EvalConfig, EvalTarget};
use fraudlab::engine::generate::{SamplingParams, StopReason};
use fraudlab::engine::train::{TrainConfig, TrainEvent};
use fraudlab::engine::{BackgroundJob, Command, Engine, EngineState, Event, Refusal, Subject};
use fraudlab::model::tiny::TinySpec;
use fraudlab::model::LoadOptions;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// No test waits longer than this for an event (a hang fails, never blocks the suite).
const LIMIT: Duration = Duration::from_secs(120);

/// The engine and every event seen so far, in order.
struct Rig {
    engine: Engine,
    seen: Vec<Event>,
}

impl Rig {
    fn new() -> Self {
        Self {
            engine: Engine::spawn(4096),
            seen: Vec::new(),
        }
    }

    /// Waits for an event `pick` accepts at index `from` or later (every event is kept in
    /// `seen`); its index.
    fn wait_from(&mut self, from: usize, what: &str, pick: impl Fn(&Event) -> bool) -> usize {
        let t0 = Instant::now();
        let mut at = from;
        loop {
            if let Some(i) = self.seen.get(at..).and_then(|v| v.iter().position(&pick)) {
                return at + i;
            }
            at = at.max(self.seen.len());
            assert!(t0.elapsed() < LIMIT, "no {what} within {LIMIT:?}");
            match self.engine.events.recv_timeout(Duration::from_millis(50)) {
                Ok(e) => self.seen.push(e),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(e) => panic!("the engine stopped: {e}"),
            }
        }
    }

    fn wait(&mut self, what: &str, pick: impl Fn(&Event) -> bool) -> usize {
        self.wait_from(0, what, pick)
    }

    fn load(&mut self, key: &str, spec: &Path, opts: LoadOptions) {
        self.engine.send(Command::Load {
            key: key.into(),
            spec: spec.display().to_string(),
            opts,
            adapter: None,
        });
        let k = key.to_string();
        let i = self.wait("load", |e| {
            matches!(e, Event::Loaded(info) if info.key == k)
                || matches!(e, Event::Error { subject: Subject::Load { key, .. }, .. } if *key == k)
        });
        assert!(
            matches!(self.seen[i], Event::Loaded(_)),
            "{:?}",
            self.seen[i]
        );
    }

    /// Index of the first training step after index `after`.
    fn step_after(&mut self, after: usize) -> usize {
        self.wait_from(after + 1, "a training step", |e| {
            matches!(e, Event::Train(TrainEvent::Step(_)))
        })
    }

    fn index_of(&self, pick: impl Fn(&Event) -> bool) -> Option<usize> {
        self.seen.iter().position(pick)
    }

    fn probe(&self, request: u64, key: &str, max_tokens: usize) {
        self.engine.send(Command::Generate {
            request,
            keys: vec![key.into()],
            system: None,
            prompt: "你好，请介绍一下你自己。".into(),
            raw: false,
            params: SamplingParams {
                max_tokens,
                ..Default::default()
            },
        });
    }

    /// How the worker's next command (sent at `from` or later) ended: its index and, when it
    /// generated at all, how generation `request` stopped (a probe cancelled before it
    /// started reports no generation).
    fn command_end(&mut self, from: usize, request: u64) -> (usize, Option<StopReason>) {
        let start = self.wait_from(
            from,
            "the worker's start",
            |e| matches!(e, Event::State(s) if *s != EngineState::Idle),
        );
        let end = self.wait_from(start, "the worker's end", |e| {
            matches!(e, Event::State(EngineState::Idle))
        });
        let stop = self.seen[start..end].iter().find_map(|e| match e {
            Event::Generated {
                request: r,
                generation,
                ..
            } if *r == request => Some(generation.stop),
            _ => None,
        });
        (end, stop)
    }

    /// The probe's result: its stop reason.
    fn generated(&mut self, request: u64) -> (usize, StopReason) {
        let i = self.wait("the probe's result", |e| {
            matches!(e, Event::Generated { request: r, .. } if *r == request)
                || matches!(e, Event::Error { subject: Subject::Generate { request: r, .. }, .. } if *r == request)
        });
        match &self.seen[i] {
            Event::Generated { generation, .. } => (i, generation.stop),
            e => panic!("the probe failed: {e:?}"),
        }
    }

    /// The end of a run, at index `from` or later.
    fn finished(&mut self, from: usize) -> (usize, fraudlab::engine::train::TrainSummary) {
        let i = self.wait_from(from, "the run's end", |e| {
            matches!(e, Event::Train(TrainEvent::Finished(_)))
                || matches!(
                    e,
                    Event::Error {
                        subject: Subject::Train,
                        ..
                    }
                )
        });
        match &self.seen[i] {
            Event::Train(TrainEvent::Finished(s)) => (i, s.clone()),
            e => panic!("the run failed: {e:?}"),
        }
    }

    fn background_end(&mut self, from: usize, job: BackgroundJob) -> usize {
        self.wait_from(
            from,
            "the background run's end",
            |e| matches!(e, Event::Background { job: j, running: false } if *j == job),
        )
    }

    fn logs(&self) -> Vec<String> {
        self.seen
            .iter()
            .filter_map(|e| match e {
                Event::Train(TrainEvent::Log(l)) => Some(l.clone()),
                _ => None,
            })
            .collect()
    }
}

/// A run long enough to be going on whatever the test does meanwhile (it is stopped).
fn long_run(model: &Path, data: &Path, out: PathBuf) -> TrainConfig {
    TrainConfig {
        model: model.display().to_string(),
        data: data.into(),
        out_dir: out,
        batch: 1,
        grad_accum: 1,
        max_len: 128,
        max_steps: Some(1_000_000),
        ..Default::default()
    }
}

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let data = d.path().join("train.jsonl");
    fraud_jsonl(&data, 8);
    (d, m, data)
}

#[test]
fn a_probe_answers_while_a_training_run_goes_on() {
    let (d, m, data) = setup();
    let mut rig = Rig::new();
    rig.load("m", &m, LoadOptions::default());
    rig.engine.send(Command::Train(Box::new(long_run(
        &m,
        &data,
        d.path().join("run"),
    ))));
    let first = rig.wait("a training step", |e| {
        matches!(e, Event::Train(TrainEvent::Step(_)))
    });
    rig.probe(7, "m", 16);
    let (answered, _) = rig.generated(7);
    // the run goes on after the answer: a step comes after it, then the stop ends it
    let later = rig.step_after(answered);
    assert!(later > answered);
    assert!(
        rig.index_of(|e| matches!(e, Event::Train(TrainEvent::Finished(_))))
            .is_none(),
        "the probe was answered while the run went on"
    );
    rig.engine.stop_training();
    let (end, summary) = rig.finished(0);
    assert_eq!(summary.end, "stopped");
    assert!(end > answered && first < answered);
    let bg_end = rig.background_end(0, BackgroundJob::Train);
    assert!(bg_end > end, "the background run reports its end last");
    // the probe's own events keep their request id and model key
    assert!(rig.seen.iter().any(|e| matches!(
        e,
        Event::Generated { request: 7, key, .. } if key == "m"
    )));
    assert!(
        rig.logs().iter().any(|l| l.contains("weights are shared")),
        "{:?}",
        rig.logs()
    );
}

#[test]
fn a_second_training_run_is_refused_and_the_first_goes_on() {
    let (d, m, data) = setup();
    let mut rig = Rig::new();
    rig.engine.send(Command::Train(Box::new(long_run(
        &m,
        &data,
        d.path().join("run1"),
    ))));
    rig.step_after(0);
    rig.engine.send(Command::Tune {
        base: Box::new(long_run(&m, &data, d.path().join("run2"))),
        budget_s: 60.0,
    });
    let refused = rig.wait("the refusal", |e| matches!(e, Event::Refused { .. }));
    match &rig.seen[refused] {
        Event::Refused { subject, reason } => {
            assert_eq!(*subject, Subject::Train);
            assert_eq!(*reason, Refusal::TrainingRunning);
            assert!(reason.to_string().contains("already going"));
        }
        _ => unreachable!(),
    }
    // the first run was not touched: it steps on, and a stop ends it as usual
    rig.step_after(refused);
    assert!(
        !d.path().join("run2").exists(),
        "nothing of the refused run ran"
    );
    rig.engine.stop_training();
    let (_, summary) = rig.finished(0);
    assert_eq!(summary.end, "stopped");
    assert!(summary.run_dir.ends_with("run1"));
    rig.background_end(0, BackgroundJob::Train);
    // once it has ended, a new run is accepted
    let mut short = long_run(&m, &data, d.path().join("run3"));
    short.max_steps = Some(2);
    let n = rig.seen.len();
    rig.engine.send(Command::Train(Box::new(short)));
    let (end, summary) = rig.finished(n);
    assert!(end > n);
    assert_eq!(summary.end, "completed");
    assert_eq!(summary.steps, 2);
}

#[test]
fn cancelling_a_probe_does_not_stop_training_and_stopping_training_does_not_cancel_a_probe() {
    let (d, m, data) = setup();
    let mut rig = Rig::new();
    rig.load("m", &m, LoadOptions::default());
    rig.engine.send(Command::Train(Box::new(long_run(
        &m,
        &data,
        d.path().join("run"),
    ))));
    let step = rig.step_after(0);
    // a long probe, cancelled by its id and by "cancel everything sent so far"
    rig.probe(1, "m", 3000);
    rig.engine.cancel_request(1);
    rig.engine.cancel();
    let (cancelled, stop) = rig.command_end(step, 1);
    assert!(
        stop.is_none_or(|s| s == StopReason::Cancelled),
        "the probe was cancelled: {stop:?}"
    );
    let after = rig.step_after(cancelled);
    assert!(after > cancelled, "training goes on after the cancel");
    assert!(rig
        .index_of(|e| matches!(e, Event::Train(TrainEvent::Finished(_))))
        .is_none());
    // a probe sent, then training stopped: the probe answers in full
    rig.probe(2, "m", 12);
    rig.engine.stop_training();
    let (_, stop) = rig.generated(2);
    assert_ne!(stop, StopReason::Cancelled);
    let (_, summary) = rig.finished(0);
    assert_eq!(summary.end, "stopped");
}

#[test]
fn training_and_evaluation_share_the_loaded_weights() {
    let (d, m, data) = setup();
    let mut rig = Rig::new();
    rig.load("m", &m, LoadOptions::default());
    // the weights on disk are gone: only the loaded copy can serve the run
    std::fs::remove_file(m.join("model.safetensors")).unwrap();
    let mut short = long_run(&m, &data, d.path().join("run"));
    short.max_steps = Some(3);
    rig.engine.send(Command::Train(Box::new(short)));
    let (_, summary) = rig.finished(0);
    assert_eq!(summary.end, "completed");
    assert!(
        rig.logs().iter().any(|l| l.contains("weights are shared")),
        "{:?}",
        rig.logs()
    );
    rig.background_end(0, BackgroundJob::Train);
    // an evaluation of the run's adapter on the same loaded base
    rig.engine.send(Command::Evaluate(Box::new(EvalConfig {
        targets: vec![EvalTarget {
            model: m.display().to_string(),
            adapter: Some(summary.output_dir.clone()),
        }],
        data: data.clone(),
        ..Default::default()
    })));
    let i = rig.wait("the evaluation", |e| {
        matches!(e, Event::EvalDone(_))
            || matches!(
                e,
                Event::Error {
                    subject: Subject::Eval,
                    ..
                }
            )
    });
    match &rig.seen[i] {
        Event::EvalDone(r) => {
            assert_eq!(r.len(), 1);
            assert_eq!(r[0].metrics.n, 8);
        }
        e => panic!("{e:?}"),
    }
    rig.background_end(0, BackgroundJob::Eval);
}

#[test]
fn a_quantized_load_is_not_trained_on_and_the_run_says_why() {
    let (d, m, data) = setup();
    let gguf = tiny_gguf(&m, true);
    let mut rig = Rig::new();
    rig.load(
        "q",
        &gguf,
        LoadOptions {
            quantized: true,
            ..Default::default()
        },
    );
    let mut short = long_run(&gguf, &data, d.path().join("run"));
    short.max_steps = Some(2);
    rig.engine.send(Command::Train(Box::new(short)));
    let (_, summary) = rig.finished(0);
    assert_eq!(summary.end, "completed");
    let logs = rig.logs();
    assert!(
        logs.iter()
            .any(|l| l.contains("quantized") && l.contains("its own f32 copy")),
        "{logs:?}"
    );
    assert!(!logs.iter().any(|l| l.contains("weights are shared")));
}

#[test]
fn an_evaluation_and_scores_run_beside_training() {
    let (d, m, data) = setup();
    let mut rig = Rig::new();
    rig.load("m", &m, LoadOptions::default());
    rig.engine.send(Command::Train(Box::new(long_run(
        &m,
        &data,
        d.path().join("run"),
    ))));
    rig.step_after(0);
    rig.engine.send(Command::Evaluate(Box::new(EvalConfig {
        targets: vec![EvalTarget {
            model: m.display().to_string(),
            adapter: None,
        }],
        data: data.clone(),
        batch: 2,
        ..Default::default()
    })));
    let samples = fraudlab::data::load(&data).unwrap().samples;
    rig.engine.send(Command::Score {
        request: 9,
        key: "m".into(),
        samples: samples[..2].to_vec(),
    });
    let scored = rig.wait("the scores", |e| {
        matches!(e, Event::Scored { request: 9, .. })
    });
    let done = rig.wait("the evaluation", |e| matches!(e, Event::EvalDone(_)));
    rig.background_end(0, BackgroundJob::Eval);
    assert!(rig
        .index_of(|e| matches!(e, Event::Train(TrainEvent::Finished(_))))
        .is_none());
    let later = rig.step_after(scored.max(done));
    assert!(later > done);
    rig.engine.stop_training();
    let (_, summary) = rig.finished(0);
    assert_eq!(summary.end, "stopped");
}
