//! The engine worker: one thread that owns every loaded model. The UI sends `Command`s and
//! drains `Event`s each frame; it never touches a tensor. Every event names what it belongs
//! to ([`Subject`]: a request id, a model key, the training run…), never a string to parse.
//! Each command gets its own cancel flag when it is sent, so cancelling request R (or
//! everything in flight) reaches exactly the commands sent before, between tokens, steps or
//! batches, even while the worker is busy; pause and stop of training act the same way.
//!
//! Rooms: `types` (commands, events, states), `run` (the worker thread and what each command
//! does), and here the [`Engine`] and [`EngineHandle`] that send and cancel.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;

mod run;
mod types;

pub use super::subject::Subject;
use super::train::TrainControl;
use run::Worker;
pub use types::{Command, EngineState, Event, LoadedInfo, RequestId};

/// A command and the cancel flag it was given when sent.
struct Job {
    cmd: Command,
    cancel: Arc<AtomicBool>,
}

/// Cancel flags of the commands sent and not finished, by request id when they have one.
type InFlight = Arc<Mutex<Vec<(Option<RequestId>, Weak<AtomicBool>)>>>;

/// The UI's side of the engine.
pub struct Engine {
    tx: Sender<Job>,
    pub events: Receiver<Event>,
    in_flight: InFlight,
    pub train_control: Arc<TrainControl>,
    thread: Option<JoinHandle<()>>,
    /// The worker thread's end was reported.
    stopped: AtomicBool,
}

/// A handle that sends commands and cancels them from any thread (the HTTP server's).
#[derive(Clone)]
pub struct EngineHandle {
    tx: Sender<Job>,
    in_flight: InFlight,
}

impl EngineHandle {
    pub fn send(&self, c: Command) {
        send_job(&self.tx, &self.in_flight, c)
    }
    pub fn cancel_request(&self, request: RequestId) {
        cancel_where(&self.in_flight, |r| r == Some(request))
    }
}

fn send_job(tx: &Sender<Job>, in_flight: &InFlight, cmd: Command) {
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let mut g = in_flight.lock().unwrap_or_else(|e| e.into_inner());
        g.retain(|(_, w)| w.strong_count() > 0);
        g.push((cmd.request(), Arc::downgrade(&cancel)));
    }
    let _ = tx.send(Job { cmd, cancel });
}

fn cancel_where(in_flight: &InFlight, pick: impl Fn(Option<RequestId>) -> bool) {
    let g = in_flight.lock().unwrap_or_else(|e| e.into_inner());
    for (r, w) in g.iter() {
        if pick(*r) {
            if let Some(f) = w.upgrade() {
                f.store(true, Ordering::SeqCst);
            }
        }
    }
}

impl Engine {
    /// Starts the worker thread. `event_capacity` bounds the event queue (tokens and steps
    /// can flood); when full, streamed tokens wait for the UI to drain.
    pub fn spawn(event_capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let (etx, erx) = mpsc::sync_channel::<Event>(event_capacity);
        let control = Arc::new(TrainControl::default());
        let ctl2 = control.clone();
        let idle = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("fraudlab-engine".into())
            .spawn(move || {
                Worker {
                    models: BTreeMap::new(),
                    adapters: BTreeMap::new(),
                    monitors: BTreeMap::new(),
                    events: etx,
                    cancel: idle,
                    control: ctl2,
                }
                .run(rx)
            })
            .expect("spawn engine thread");
        Self {
            tx,
            events: erx,
            in_flight: Arc::new(Mutex::new(Vec::new())),
            train_control: control,
            thread: Some(thread),
            stopped: AtomicBool::new(false),
        }
    }

    /// A handle for other threads.
    pub fn handle(&self) -> EngineHandle {
        EngineHandle {
            tx: self.tx.clone(),
            in_flight: self.in_flight.clone(),
        }
    }

    pub fn send(&self, c: Command) {
        send_job(&self.tx, &self.in_flight, c)
    }

    /// Cancels every command sent so far (generation, scoring, evaluation, download, monitor
    /// turns) between tokens / batches; commands sent afterwards are not affected. Training
    /// has its own stop.
    pub fn cancel(&self) {
        cancel_where(&self.in_flight, |_| true)
    }

    /// Cancels the commands of one request.
    pub fn cancel_request(&self, request: RequestId) {
        cancel_where(&self.in_flight, |r| r == Some(request))
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
        let _ = self.tx.send(Job {
            cmd: Command::Shutdown,
            cancel: Arc::new(AtomicBool::new(true)),
        });
        // Drain so a worker blocked on a full event queue can finish.
        if let Some(t) = self.thread.take() {
            while !t.is_finished() {
                while self.events.try_recv().is_ok() {}
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let _ = t.join();
        }
    }
}
