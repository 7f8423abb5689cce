//! The terminal while the workbench runs, and always given back.
//!
//! [`TerminalGuard`] switches to raw mode, the alternate screen, bracketed paste and (where
//! the terminal has it) the keyboard protocol, and restores all of it when dropped: on quit,
//! on an error, and while a panic unwinds. The panic hook restores the terminal before the
//! UI thread's panic is printed, so the report lands on the normal screen; a panic on another
//! thread (the engine catches its own and reports it as the failed command's error) leaves
//! the screen alone, and its report is printed once the workbench has given the terminal
//! back. SIGTERM, SIGHUP and SIGINT (which only arrives from outside: in raw mode Ctrl-C is
//! a key) set a flag through `signal-hook`; the event loop then ends as on quit, so the
//! session is saved. Once the terminal is restored, another signal ends the process at once
//! (a quit waiting for the engine to finish its step).

use anyhow::{Context, Result};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Once};
use std::thread::ThreadId;

/// The signals that end the workbench cleanly.
const STOP_SIGNALS: [i32; 3] = [libc::SIGTERM, libc::SIGHUP, libc::SIGINT];

static ENHANCED_KEYS: AtomicBool = AtomicBool::new(false);
/// The thread that owns the screen while it is switched (the UI thread).
static SCREEN_OWNER: Mutex<Option<ThreadId>> = Mutex::new(None);
/// Panic reports of other threads, held while the screen is switched.
static DEFERRED: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// The stop signal received (0: none).
static SIGNAL: LazyLock<Arc<AtomicUsize>> = LazyLock::new(|| Arc::new(AtomicUsize::new(0)));
/// Set once the terminal is given back: a further stop signal exits at once.
static EXIT_ON_SIGNAL: LazyLock<Arc<AtomicBool>> =
    LazyLock::new(|| Arc::new(AtomicBool::new(false)));

/// The workbench was ended by a signal, after restoring the terminal and saving the
/// session; the process exits with 128 + the signal number.
#[derive(Debug, thiserror::Error)]
#[error("fraudlab: stopped by signal {signal}; the session is saved")]
pub struct StoppedBySignal {
    pub signal: i32,
}

/// Installs the stop-signal flags and the panic hook (once per process).
pub(super) fn install() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let owner = *SCREEN_OWNER.lock().unwrap_or_else(|e| e.into_inner());
            match owner {
                Some(id) if id == std::thread::current().id() => {
                    restore_terminal();
                    print_deferred_panics();
                    prev(info);
                }
                Some(_) => {
                    let name = std::thread::current().name().unwrap_or("?").to_string();
                    DEFERRED
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(format!("thread '{name}' {info}"));
                }
                None => prev(info),
            }
        }));
        for sig in STOP_SIGNALS {
            let r = signal_hook::flag::register_usize(sig, SIGNAL.clone(), sig as usize).and_then(
                |_| {
                    signal_hook::flag::register_conditional_shutdown(
                        sig,
                        128 + sig,
                        EXIT_ON_SIGNAL.clone(),
                    )
                },
            );
            if let Err(e) = r {
                result = Err(e).context("cannot install the signal handlers");
                return;
            }
        }
    });
    result
}

/// The stop signal received, if any.
pub fn signal_received() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s as i32),
    }
}

/// From now on a stop signal ends the process at once.
pub(super) fn exit_on_next_signal() {
    EXIT_ON_SIGNAL.store(true, Ordering::SeqCst);
}

/// Prints (to stderr, errors ignored: after SIGHUP there is no terminal) the panic reports
/// of other threads held while the screen was switched.
pub(super) fn print_deferred_panics() {
    use std::io::Write;
    let held = std::mem::take(&mut *DEFERRED.lock().unwrap_or_else(|e| e.into_inner()));
    for p in held {
        let _ = writeln!(std::io::stderr(), "{p}");
    }
}

/// Gives the terminal back (once: later calls do nothing).
fn restore_terminal() {
    use crossterm::{cursor, event, execute, terminal};
    if SCREEN_OWNER
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .is_none()
    {
        return;
    }
    let mut out = std::io::stdout();
    if ENHANCED_KEYS.swap(false, Ordering::SeqCst) {
        let _ = execute!(out, event::PopKeyboardEnhancementFlags);
    }
    let _ = execute!(
        out,
        event::DisableBracketedPaste,
        terminal::LeaveAlternateScreen,
        cursor::Show
    );
    let _ = terminal::disable_raw_mode();
}

/// The switched terminal; restored when dropped.
pub(super) struct TerminalGuard {
    pub terminal: Terminal<CrosstermBackend<std::io::Stdout>>,
}

impl TerminalGuard {
    pub(super) fn enter() -> Result<Self> {
        use crossterm::{event, execute, terminal};
        terminal::enable_raw_mode().context("cannot switch the terminal to raw mode")?;
        *SCREEN_OWNER.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::thread::current().id());
        let mut out = std::io::stdout();
        if let Err(e) = execute!(
            out,
            terminal::EnterAlternateScreen,
            event::EnableBracketedPaste
        ) {
            restore_terminal();
            return Err(e.into());
        }
        // Ctrl-Enter needs the keyboard protocol; terminals without it still have F5 / Ctrl-R.
        if matches!(terminal::supports_keyboard_enhancement(), Ok(true))
            && execute!(
                out,
                event::PushKeyboardEnhancementFlags(
                    event::KeyboardEnhancementFlags::DISAMBIGUATE_ESCAPE_CODES
                )
            )
            .is_ok()
        {
            ENHANCED_KEYS.store(true, Ordering::SeqCst);
        }
        match Terminal::new(CrosstermBackend::new(out)) {
            Ok(terminal) => Ok(Self { terminal }),
            Err(e) => {
                restore_terminal();
                Err(e.into())
            }
        }
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}
