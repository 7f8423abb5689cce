//! The engine: the only place a model runs. Headless functions (generate, score, train,
//! evaluate) that the CLI calls directly, and a worker thread the TUI and the server drive
//! over command and event channels, with training and evaluation on threads of their own
//! beside it (sharing its loaded weights; interactive work first, see `gate`).

pub mod eval;
pub mod gate;
pub mod generate;
pub mod monitor;
pub mod stream_eval;
mod subject;
pub mod suite;
pub mod train;
pub mod worker;

pub use worker::{
    BackgroundJob, Command, Engine, EngineHandle, EngineState, Event, LoadedInfo, Refusal,
    RequestId, Subject,
};
