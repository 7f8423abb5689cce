//! `fraudlab handoff llamafactory` and `fraudlab runs import`.

use anyhow::{bail, Context, Result};
use std::path::Path;

use super::args::*;
use super::common::*;
use crate::engine::train::{TrainConfig, TrainSummary};
use crate::handoff::{self, HandoffOptions, ImportOptions};

/// A run folder's settings (`config.json`) and the steps its time budget planned, if any.
fn run_settings(dir: &Path) -> Result<(TrainConfig, Option<usize>)> {
    let p = dir.join("config.json");
    let text =
        std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))?;
    let tc: TrainConfig = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a fraudlab run's config.json", p.display()))?;
    let planned = std::fs::read_to_string(dir.join("summary.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<TrainSummary>(&s).ok())
        .and_then(|s| s.plan.map(|p| p.total_steps));
    Ok((tc, planned))
}

pub(super) fn cmd_handoff(cmd: HandoffCmd) -> Result<()> {
    let HandoffCmd::Llamafactory(a) = cmd;
    let data_given = a.train.data.as_os_str() != "-";
    let out = a
        .train
        .out
        .clone()
        .context("--out: give the hand-off folder")?;
    let (mut tc, planned) = match &a.run {
        Some(run) => {
            let (mut tc, planned) = run_settings(run)?;
            if !a.train.model.is_empty() {
                tc.model = a.train.model.clone();
            }
            if data_given {
                tc.data = a.train.data.clone();
            }
            if a.train.val.is_some() {
                tc.val = a.train.val.clone();
            }
            (tc, planned)
        }
        None => {
            if a.train.model.is_empty() || !data_given {
                bail!(
                    "give --model and --data (the run's settings), or --run DIR to repeat a run's"
                );
            }
            (train_config(&a.train, out.clone())?, None)
        }
    };
    tc.out_dir = out.clone();
    tc.resume = false;
    let r = handoff::write_llamafactory(
        &tc,
        &out,
        &HandoffOptions {
            force: a.force,
            count_tokens: true,
            planned_steps: planned,
        },
    )?;
    if a.train.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    println!(
        "wrote {} ({} training, {} validation samples{}): {}",
        out.display(),
        r.train_samples,
        r.val_samples,
        if r.unlabelled > 0 {
            format!(", {} unlabelled left out", r.unlabelled)
        } else {
            String::new()
        },
        r.files.join(", ")
    );
    println!(
        "run it there:  cd {} && llamafactory-cli train {}",
        out.display(),
        handoff::YAML_FILE
    );
    println!(
        "several GPUs:  FORCE_TORCHRUN=1 NPROC_PER_NODE=N llamafactory-cli train {}",
        handoff::YAML_FILE
    );
    println!(
        "back here:     fraudlab runs import {} --name NAME",
        out.join(handoff::OUTPUT_DIR).display()
    );
    let applies: Vec<_> = r
        .gaps
        .iter()
        .filter(|g| !g.note.contains("not used by this run"))
        .collect();
    println!(
        "{} setting(s) LLaMA-Factory does not take as they are (README.md says what was done):",
        applies.len()
    );
    for g in applies {
        println!("  - {}", g.setting);
    }
    Ok(())
}

pub(super) fn cmd_runs(cmd: RunsCmd, session: &str) -> Result<()> {
    let RunsCmd::Import {
        dir,
        name,
        model,
        json,
    } = cmd;
    let sess = open_session(session)?;
    let r = handoff::import_run(&sess, &dir, &ImportOptions { name, model })?;
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "imported run {} into {}: adapter in {}, {}",
            r.run_id,
            r.run_dir.display(),
            r.adapter.display(),
            match &r.log {
                Some(src) => format!("{} logged steps from {src}", r.steps),
                None => "no training log found".into(),
            }
        );
    }
    if !r.model_found {
        eprintln!(
            "warning: the base model `{}` is not found on this machine; give --model when importing (or edit the run's config.json) so the panes can load it",
            r.model
        );
    }
    Ok(())
}
