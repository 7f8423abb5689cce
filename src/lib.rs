//! fraudlab: a terminal workbench for building small LLM fraud-dialogue classifiers.
//!
//! `model` runs Qwen2-family models in Candle, `engine` drives them on a worker thread
//! (generation, scoring, training, evaluation), `data` holds datasets, labels and sessions,
//! `tui` is the workbench, `cli` the headless commands, `handoff` the folders that move a run to
//! a multi-GPU trainer and bring its adapter back.

pub mod cli;
pub mod data;
pub mod engine;
pub mod fmt;
pub mod handoff;
pub mod model;
pub mod serve;
pub mod tui;

/// Keeps freed memory in the process for reuse. Tensors are allocated and freed at a high
/// rate (every op of every step); by default glibc maps and unmaps large blocks each time,
/// and the kernel zeroes every fresh page, which cost over a tenth of a training step.
/// (Blocks over 32 MiB are still mapped afresh: glibc caps the threshold there. Taking every
/// block from the heap instead, or mimalloc, made a batch-4 step grow past 24 GiB.)
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before heavy allocation.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Test hook for the tests of panic handling: `FRAUDLAB_TEST_PANIC=ui-thread` makes the
/// workbench's UI thread panic when F12 is pressed, `engine-load` makes the engine panic on
/// the first model load of the process. Any other value, or none, does nothing.
pub const TEST_PANIC_ENV: &str = "FRAUDLAB_TEST_PANIC";

/// Where [`TEST_PANIC_ENV`] can ask for a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestPanic {
    UiThread,
    EngineLoad,
}

/// Whether the test hook asks for a panic here now (the engine's: once per process).
pub fn test_panic_due(at: TestPanic) -> bool {
    use std::sync::atomic::{AtomicBool, Ordering};
    static ENGINE_DONE: AtomicBool = AtomicBool::new(false);
    static WANTED: std::sync::OnceLock<Option<TestPanic>> = std::sync::OnceLock::new();
    let wanted = *WANTED.get_or_init(|| match std::env::var(TEST_PANIC_ENV).as_deref() {
        Ok("ui-thread") => Some(TestPanic::UiThread),
        Ok("engine-load") => Some(TestPanic::EngineLoad),
        _ => None,
    });
    wanted == Some(at) && (at != TestPanic::EngineLoad || !ENGINE_DONE.swap(true, Ordering::SeqCst))
}
