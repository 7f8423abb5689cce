//! The engine: the only place a model runs. Headless functions (generate, logits) that the CLI
//! calls directly, and a worker thread the TUI drives over command and event channels.

pub mod generate;
