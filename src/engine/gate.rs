//! The priority gate: interactive work first. A command someone waits for (a probe, a
//! score, a monitored turn, a load) holds a [`Ticket`] from the moment it is sent until the
//! worker has finished it; a background run (training, evaluation) calls
//! [`PriorityGate::wait_clear`] between its steps or batches and waits while any ticket is
//! out. The cores are rayon's one global pool: a background run never starts new work
//! while interactive work is pending, and the step it is in when a request arrives finishes
//! sharing the pool with it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Interactive commands sent and not finished, and a condition background runs wait on.
#[derive(Debug, Default)]
pub struct PriorityGate {
    pending: Mutex<usize>,
    cleared: Condvar,
}

/// One interactive command in flight; the gate opens when the last ticket is dropped.
#[derive(Debug)]
pub struct Ticket {
    gate: Arc<PriorityGate>,
}

impl PriorityGate {
    /// A ticket for an interactive command, held until it has run.
    pub fn ticket(self: &Arc<Self>) -> Ticket {
        *self.lock() += 1;
        Ticket { gate: self.clone() }
    }

    /// Whether interactive work is pending now.
    pub fn busy(&self) -> bool {
        *self.lock() > 0
    }

    /// Waits while interactive work is pending (or until `stop` is set); the time it waited
    /// (zero when the gate was open).
    pub fn wait_clear(&self, stop: &AtomicBool) -> Duration {
        let t0 = Instant::now();
        let mut g = self.lock();
        if *g == 0 {
            return Duration::ZERO;
        }
        // a timeout so that a stop set without a notification is seen
        while *g > 0 && !stop.load(Ordering::SeqCst) {
            g = self
                .cleared
                .wait_timeout(g, Duration::from_millis(50))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        t0.elapsed()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut g = self.gate.lock();
        *g = g.saturating_sub(1);
        if *g == 0 {
            self.gate.cleared.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_background_run_waits_until_the_last_ticket_is_dropped() {
        let gate = Arc::new(PriorityGate::default());
        let stop = AtomicBool::new(false);
        assert_eq!(gate.wait_clear(&stop), Duration::ZERO, "open: no wait");
        let a = gate.ticket();
        let b = gate.ticket();
        assert!(gate.busy());
        let (tx, rx) = std::sync::mpsc::channel();
        let g2 = gate.clone();
        let waiter = std::thread::spawn(move || {
            let stop = AtomicBool::new(false);
            g2.wait_clear(&stop);
            tx.send(()).unwrap();
        });
        drop(a);
        // one ticket still out: the waiter stays blocked
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        drop(b);
        rx.recv_timeout(Duration::from_secs(10))
            .expect("released by the last ticket");
        waiter.join().unwrap();
        assert!(!gate.busy());
    }

    #[test]
    fn a_stop_ends_the_wait() {
        let gate = Arc::new(PriorityGate::default());
        let _t = gate.ticket();
        let stop = Arc::new(AtomicBool::new(false));
        let (g2, s2) = (gate.clone(), stop.clone());
        let waiter = std::thread::spawn(move || g2.wait_clear(&s2));
        stop.store(true, Ordering::SeqCst);
        waiter.join().unwrap();
        assert!(gate.busy(), "the ticket is still out");
    }
}
