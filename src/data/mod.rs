//! Data layer of fraudlab: dataset formats and tools, the durable hand-label
//! journal, sessions on disk, evaluation metrics, and file helpers.
//!
//! * [`dataset`] — reading fraud / Alpaca / chat / ShareGPT / text / CSV
//!   datasets into [`Sample`]s with stable content ids.
//! * [`tools`] — stats, stratified split, undersampling, k-fold, export,
//!   sliding window over CSV dialogues.
//! * [`journal`] — append-only label journal (fsync per action, undo, torn
//!   tail repair, atomic compaction).
//! * [`session`] — `sessions/<name>/` layout, `session.json`, run/eval ids.
//! * [`metrics`] — confusion metrics, ROC-AUC, PR-AUC, curves, thresholds.
//! * [`suite`] — the capability suite: cases, checks, saved results, Markdown / CSV.
//! * [`fsutil`] — `write_atomic`, durable appends, time formatting.
//! * [`hash`] — SHA-256 content ids (the `sha2` crate).

pub mod dataset;
pub mod fsutil;
pub mod hash;
pub mod journal;
pub mod metrics;
pub mod session;
pub mod suite;
pub mod tools;

pub use dataset::{
    anonymize_turns, answer_json, dataset_id, is_label_leak, load, load_as, load_with,
    parse_answer, parse_turns, Answer, BadLine, Dialogue, Format, LoadOptions, LoadResult, Message,
    Sample, SampleBody, Turn, DEFAULT_INSTRUCTION, DEFAULT_SYSTEM,
};
pub use fsutil::{append_line_durable, write_atomic};
pub use journal::{Journal, JournalEntry, JournalLocked, JournalReport, LabelState};
pub use metrics::{EvalRow, Metrics};
pub use session::{list_sessions, Session, SessionConfig, SessionSummary};
pub use tools::{ExportOptions, Fold, Rng, Split, Stats};
