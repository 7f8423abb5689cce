//! The engine: a worker thread that owns every loaded model and answers the interactive
//! commands (loads, generation, scoring, monitored turns, downloads) one after the other, and
//! background runs (a training run or recipe search, an evaluation) on threads of their own
//! beside it, at most one of each, so a probe never waits for a run to end. A run trains or
//! evaluates on the worker's loaded model when it can, sharing its weights (Candle tensors
//! are reference-counted: a clone of a model is new handles on the same storage). The UI
//! sends `Command`s and drains `Event`s each frame; it never touches a tensor. Every event
//! names what it belongs to ([`Subject`]: a request id, a model key, the training run…),
//! never a string to parse. Each command gets its own cancel flag when it is sent, so
//! cancelling request R (or everything in flight) reaches exactly the commands sent before,
//! between tokens, steps or batches; pause and stop of training act the same way. The cores
//! go to interactive work first (`engine::gate`).
//!
//! Rooms: `types` (commands, events, states), `run` (the worker thread and what each
//! interactive command does), `background` (the runs' threads and the weights they share),
//! and here the [`Engine`] and [`EngineHandle`] that send and cancel.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;

mod background;
mod run;
mod types;

use super::gate::{PriorityGate, Ticket};
pub use super::subject::Subject;
use super::train::TrainControl;
use run::Worker;
pub use types::{BackgroundJob, Command, EngineState, Event, LoadedInfo, Refusal, RequestId};

/// A command, the cancel flag it was given when sent, and its place at the priority gate
/// while it is pending (interactive commands only).
struct Job {
    cmd: Command,
    cancel: Arc<AtomicBool>,
    ticket: Option<Ticket>,
}

/// A command sent and not finished: its request id, whether it runs in the background, and
/// its cancel flag.
struct Sent {
    request: Option<RequestId>,
    background: Option<BackgroundJob>,
    cancel: Weak<AtomicBool>,
}

/// The sending side, shared by the engine and its handles.
#[derive(Clone)]
struct Outbox {
    tx: Sender<Job>,
    in_flight: Arc<Mutex<Vec<Sent>>>,
    gate: Arc<PriorityGate>,
}

impl Outbox {
    fn send(&self, cmd: Command) {
        let cancel = Arc::new(AtomicBool::new(false));
        {
            let mut g = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            g.retain(|s| s.cancel.strong_count() > 0);
            g.push(Sent {
                request: cmd.request(),
                background: cmd.background(),
                cancel: Arc::downgrade(&cancel),
            });
        }
        // taken now, not when the worker starts it: a background run does not begin a step
        // while interactive work waits in the queue
        let ticket = cmd.is_interactive().then(|| self.gate.ticket());
        let _ = self.tx.send(Job {
            cmd,
            cancel,
            ticket,
        });
    }

    fn cancel_where(&self, pick: impl Fn(&Sent) -> bool) {
        let g = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        for s in g.iter().filter(|s| pick(s)) {
            if let Some(f) = s.cancel.upgrade() {
                f.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// The UI's side of the engine.
pub struct Engine {
    out: Outbox,
    pub events: Receiver<Event>,
    pub train_control: Arc<TrainControl>,
    thread: Option<JoinHandle<()>>,
    /// The worker thread's end was reported.
    stopped: AtomicBool,
}

/// A handle that sends commands and cancels them from any thread (the HTTP server's).
#[derive(Clone)]
pub struct EngineHandle {
    out: Outbox,
}

impl EngineHandle {
    pub fn send(&self, c: Command) {
        self.out.send(c)
    }
    pub fn cancel_request(&self, request: RequestId) {
        self.out.cancel_where(|s| s.request == Some(request))
    }
}

impl Engine {
    /// Starts the worker thread. `event_capacity` bounds the event queue (tokens and steps
    /// can flood); when full, streamed tokens wait for the UI to drain.
    pub fn spawn(event_capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let (etx, erx) = mpsc::sync_channel::<Event>(event_capacity);
        let control = Arc::new(TrainControl::default());
        let gate = control.gate.clone();
        let ctl2 = control.clone();
        let thread = std::thread::Builder::new()
            .name("fraudlab-engine".into())
            .spawn(move || Worker::new(etx, ctl2).run(rx))
            .expect("spawn engine thread");
        Self {
            out: Outbox {
                tx,
                in_flight: Arc::new(Mutex::new(Vec::new())),
                gate,
            },
            events: erx,
            train_control: control,
            thread: Some(thread),
            stopped: AtomicBool::new(false),
        }
    }

    /// A handle for other threads.
    pub fn handle(&self) -> EngineHandle {
        EngineHandle {
            out: self.out.clone(),
        }
    }

    pub fn send(&self, c: Command) {
        self.out.send(c)
    }

    /// Cancels every command sent so far (generation, scoring, evaluation, download, monitor
    /// turns) between tokens / batches; commands sent afterwards are not affected. Training
    /// has its own stop.
    pub fn cancel(&self) {
        self.out.cancel_where(|_| true)
    }

    /// Cancels the worker's commands sent so far (generation, scoring, download, monitor
    /// turns), not the background runs.
    pub fn cancel_interactive(&self) {
        self.out.cancel_where(|s| s.background.is_none())
    }

    /// Cancels the evaluation running (or sent) in the background.
    pub fn cancel_evaluation(&self) {
        self.out
            .cancel_where(|s| s.background == Some(BackgroundJob::Eval))
    }

    /// Cancels the commands of one request.
    pub fn cancel_request(&self, request: RequestId) {
        self.out.cancel_where(|s| s.request == Some(request))
    }

    pub fn pause_training(&self) {
        self.train_control.pause.store(true, Ordering::SeqCst);
    }
    pub fn resume_training(&self) {
        self.train_control.pause.store(false, Ordering::SeqCst);
    }
    pub fn stop_training(&self) {
        self.train_control.stop.store(true, Ordering::SeqCst);
        self.train_control.pause.store(false, Ordering::SeqCst);
    }

    /// Every event waiting now. Once the worker thread has ended (which a caught panic does
    /// not do), an error and `State(Stopped)` say so, once.
    pub fn drain(&self) -> Vec<Event> {
        let mut v: Vec<Event> = self.events.try_iter().collect();
        if self.thread.as_ref().is_some_and(|t| t.is_finished())
            && !self.stopped.swap(true, Ordering::SeqCst)
        {
            v.extend(self.events.try_iter());
            v.push(Event::Error {
                subject: Subject::Engine,
                message: "the engine thread has stopped; nothing more can run: quit (q) and start fraudlab again".into(),
            });
            v.push(Event::State(EngineState::Stopped));
        }
        v
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.cancel();
        self.train_control.stop.store(true, Ordering::SeqCst);
        let _ = self.out.tx.send(Job {
            cmd: Command::Shutdown,
            cancel: Arc::new(AtomicBool::new(true)),
            ticket: None,
        });
        // Drain so a worker (or a background run) blocked on a full event queue can finish;
        // the worker ends once its background runs have (a stopped run writes its
        // checkpoint and adapter first).
        if let Some(t) = self.thread.take() {
            while !t.is_finished() {
                while self.events.try_recv().is_ok() {}
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let _ = t.join();
        }
    }
}
