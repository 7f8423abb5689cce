//! The engine: the only place a model runs. Headless functions (generate, score, train,
//! evaluate) that the CLI calls directly, and a worker thread the TUI drives over command and
//! event channels.

pub mod eval;
pub mod generate;
pub mod monitor;
pub mod stream_eval;
mod subject;
pub mod suite;
pub mod train;
pub mod worker;

pub use worker::{
    Command, Engine, EngineHandle, EngineState, Event, LoadedInfo, RequestId, Subject,
};
