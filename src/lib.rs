//! fraudlab: a terminal workbench for building small LLM fraud-dialogue classifiers.
//!
//! `model` runs Qwen2-family models in Candle, `engine` drives them on a worker thread
//! (generation, scoring, training, evaluation), `data` holds datasets, labels and sessions,
//! `tui` is the workbench, `cli` the headless commands.

pub mod model;
pub mod data;
pub mod engine;
pub mod cli;
