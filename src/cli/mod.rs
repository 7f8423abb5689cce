//! Headless commands (clap). Every command prints JSON with `--json` for scripts.
//!
//! `args` holds every command's arguments; one file of handlers per group of commands
//! (`models`, `train`, `eval`, `data`, `live`, `handoff`, `suite`), each using `args` and
//! `common` only, so no two handler files depend on each other.

use anyhow::Result;

mod args;
mod common;
mod data;
mod eval;
mod handoff;
mod live;
mod models;
mod suite;
mod train;

pub use args::*;
pub use common::{fmt_secs, load_with_adapter, open_session, sessions_root};
pub use live::{parse_turn_line, turn_line};

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        None => crate::tui::run(&cli.session, &cli.models_dir),
        Some(Command::Models { json }) => models::cmd_models(&cli.models_dir, json),
        Some(Command::Probe(a)) => models::cmd_probe(a, &cli.session),
        Some(Command::Logits(a)) => models::cmd_logits(a),
        Some(Command::Train(a)) => train::cmd_train(*a, &cli.session),
        Some(Command::Tune(a)) => train::cmd_tune(*a, &cli.session),
        Some(Command::Eval(a)) => eval::cmd_eval(a, &cli.session),
        Some(Command::Merge {
            model,
            adapter,
            out,
        }) => models::cmd_merge(&model, &adapter, &out),
        Some(Command::Export(a)) => models::cmd_export(a),
        Some(Command::Data { cmd }) => data::run(cmd, &cli.session),
        Some(Command::Label { dataset, list }) => data::label(&dataset, list, &cli.session),
        Some(Command::Sessions { json }) => data::sessions(json),
        Some(Command::Convert { gguf, out }) => models::cmd_convert(&gguf, &out),
        Some(Command::DemoModel { out, gguf }) => models::cmd_demo(&out, gguf),
        Some(Command::Monitor(a)) => live::monitor(a),
        Some(Command::Serve(a)) => crate::serve::run(a),
        Some(Command::Handoff { cmd }) => handoff::cmd_handoff(cmd),
        Some(Command::Runs { cmd }) => handoff::cmd_runs(cmd, &cli.session),
        Some(Command::Suite(a)) => suite::cmd_suite(a, &cli.session),
        Some(Command::Download { id, revision, json }) => {
            models::cmd_download(&id, revision.as_deref(), json)
        }
    }
}
