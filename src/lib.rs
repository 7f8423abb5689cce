//! fraudlab: a terminal workbench for building small LLM fraud-dialogue classifiers.
//!
//! `model` runs Qwen2-family models in Candle, `engine` drives them on a worker thread
//! (generation, scoring, training, evaluation), `data` holds datasets, labels and sessions,
//! `tui` is the workbench, `cli` the headless commands.

pub mod cli;
pub mod data;
pub mod engine;
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
