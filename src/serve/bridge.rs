//! Between the HTTP handlers (async, many) and the engine worker (one thread, one command at
//! a time). A request is sent with [`Bridge::submit`], which gives it an id and a channel; one
//! thread drains the engine's events and routes each to the channel of the request it
//! names. The engine runs commands in the order they were sent and reports
//! `State(Idle)` after each, so the bridge keeps that order too. A request's place in the
//! queue is freed when its result or error is routed, or else by the `Idle` that ends it,
//! which also closes its channel (a request the engine ended without a result sees it close).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::engine::worker::{
    Command, Engine, EngineHandle, EngineState, Event, RequestId, Subject,
};

/// The request an event belongs to, if any.
fn event_request(e: &Event) -> Option<RequestId> {
    match e {
        Event::Token { request, .. }
        | Event::Generated { request, .. }
        | Event::Scored { request, .. }
        | Event::MonitorTurn { request, .. }
        | Event::Explained { request, .. } => Some(*request),
        Event::Error {
            subject:
                Subject::Generate { request, .. }
                | Subject::Score { request, .. }
                | Subject::Monitor { request, .. },
            ..
        } => Some(*request),
        _ => None,
    }
}

#[derive(Default)]
struct Inner {
    /// where each waiting request's events go
    routes: HashMap<RequestId, UnboundedSender<Event>>,
    /// commands sent and not yet ended, in the engine's order (`None`: no request id)
    order: VecDeque<Option<RequestId>>,
    /// requests waiting or running
    pending: usize,
    next: RequestId,
}

/// The queue was full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy {
    pub pending: usize,
    pub capacity: usize,
}

struct Shared {
    handle: EngineHandle,
    inner: Mutex<Inner>,
    capacity: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The handlers' side: cheap to clone.
#[derive(Clone)]
pub struct Bridge {
    shared: Arc<Shared>,
}

/// A request sent to the engine: its events, in order. Dropped before its result came (the
/// client went away), it cancels the request.
pub struct Ticket {
    pub id: RequestId,
    rx: UnboundedReceiver<Event>,
    handle: EngineHandle,
    done: bool,
}

impl Ticket {
    /// The next event of this request; `None` once the engine has ended it.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The result arrived: dropping the ticket no longer cancels anything.
    pub fn finish(&mut self) {
        self.done = true;
    }

    /// The event that ends the request (its result or its error), skipping streamed text.
    pub async fn result(&mut self) -> Result<Event, String> {
        loop {
            match self.next().await {
                Some(Event::Token { .. }) => continue,
                Some(Event::Error { message, .. }) => {
                    self.finish();
                    return Err(message);
                }
                Some(e) => {
                    self.finish();
                    return Ok(e);
                }
                None => {
                    self.finish();
                    return Err("the engine ended the request without a result".into());
                }
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done {
            self.handle.cancel_request(self.id);
        }
    }
}

impl Bridge {
    /// Sends the command `make` builds for a fresh request id, unless `capacity` requests
    /// are already waiting or running.
    pub fn submit(&self, make: impl FnOnce(RequestId) -> Command) -> Result<Ticket, Busy> {
        let s = &self.shared;
        let mut g = s.lock();
        if g.pending >= s.capacity {
            return Err(Busy {
                pending: g.pending,
                capacity: s.capacity,
            });
        }
        g.next += 1;
        let id = g.next;
        let (tx, rx) = unbounded_channel();
        g.routes.insert(id, tx);
        g.order.push_back(Some(id));
        g.pending += 1;
        // under the lock: the engine's order is the bridge's
        s.handle.send(make(id));
        Ok(Ticket {
            id,
            rx,
            handle: s.handle.clone(),
            done: false,
        })
    }

    /// Sends a command that has no request id and answers nothing (ending a conversation);
    /// it does not count against the queue.
    pub fn send(&self, cmd: Command) {
        let s = &self.shared;
        let mut g = s.lock();
        g.order.push_back(None);
        s.handle.send(cmd);
    }

    /// Requests waiting or running now.
    pub fn pending(&self) -> usize {
        self.shared.lock().pending
    }

    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }

    fn route(&self, e: Event) {
        let mut g = self.shared.lock();
        let g = &mut *g;
        match e {
            Event::State(EngineState::Idle) => {
                // a request still routed ended without a result (its channel closes now)
                if let Some(Some(id)) = g.order.pop_front() {
                    if g.routes.remove(&id).is_some() {
                        g.pending -= 1;
                    }
                }
            }
            e => {
                let id = match &e {
                    // the running command failed inside the engine: it is the oldest one
                    Event::Error {
                        subject: Subject::Engine,
                        ..
                    } => g.order.front().copied().flatten(),
                    e => event_request(e),
                };
                let Some(id) = id else { return };
                if matches!(e, Event::Token { .. }) {
                    if let Some(tx) = g.routes.get(&id) {
                        // a receiver gone (the client left) is fine: the request is cancelled
                        let _ = tx.send(e);
                    }
                } else if let Some(tx) = g.routes.remove(&id) {
                    // the result or the error: the place in the queue is free before the
                    // client hears of it, so a client that sends its next request at once
                    // is not refused
                    g.pending -= 1;
                    let _ = tx.send(e);
                }
            }
        }
    }
}

/// The thread that owns the engine and drains its events.
pub struct EventPump {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EventPump {
    /// Takes the engine (its events must be drained all the time: the worker blocks on a
    /// full queue) and routes its events; `capacity` bounds the requests waiting or running.
    pub fn start(engine: Engine, capacity: usize) -> std::io::Result<(Bridge, EventPump)> {
        let bridge = Bridge {
            shared: Arc::new(Shared {
                handle: engine.handle(),
                inner: Mutex::new(Inner::default()),
                capacity,
            }),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (b, st) = (bridge.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("fraudlab-serve-events".into())
            .spawn(move || {
                while !st.load(Ordering::SeqCst) {
                    match engine.events.recv_timeout(Duration::from_millis(50)) {
                        Ok(e) => b.route(e),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
                // cancels what is left and joins the worker
                drop(engine);
            })?;
        Ok((
            bridge,
            EventPump {
                stop,
                thread: Some(thread),
            },
        ))
    }

    /// Stops routing, cancels whatever the engine still runs and waits for it.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for EventPump {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_name_their_request() {
        let e = Event::Error {
            subject: Subject::Score {
                request: 7,
                key: "m".into(),
            },
            message: "x".into(),
        };
        assert_eq!(event_request(&e), Some(7));
        assert_eq!(event_request(&Event::State(EngineState::Idle)), None);
    }

    #[test]
    fn results_route_and_idle_frees_the_place() {
        let engine = Engine::spawn(16);
        let (bridge, pump) = EventPump::start(engine, 1).unwrap();
        // the model is not loaded: the engine answers with an error, then Idle
        let mut t = bridge
            .submit(|request| Command::Score {
                request,
                key: "none".into(),
                samples: Vec::new(),
            })
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let r = rt.block_on(t.result());
        assert!(r.unwrap_err().contains("not loaded"));
        // the place was freed before the error was delivered
        assert_eq!(bridge.pending(), 0);
        // and with room for one, a second request is refused while the first waits
        let _first = bridge
            .submit(|request| Command::MonitorTurn {
                request,
                key: "none".into(),
                conversation: "c".into(),
                speaker: "A".into(),
                text: "x".into(),
            })
            .unwrap();
        let second = bridge.submit(|request| Command::Score {
            request,
            key: "none".into(),
            samples: Vec::new(),
        });
        // (unless the engine already answered the first)
        if let Err(b) = second {
            assert_eq!(
                b,
                Busy {
                    pending: 1,
                    capacity: 1
                }
            );
        }
        pump.stop();
    }
}
