//! `fraudlab train`.

use anyhow::{Context, Result};
use serde_json::json;

use super::args::*;
use super::common::*;
use crate::model;

pub(super) fn cmd_train(a: TrainArgs, session: &str) -> Result<()> {
    use crate::engine::train::{train, TrainConfig, TrainControl, TrainEvent};
    let targets: Vec<String> = a
        .target
        .split(',')
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    let sess = open_session(session)?;
    let out = match (&a.out, a.resume) {
        (Some(o), _) => o.clone(),
        (None, true) => {
            let runs = sess.list_runs()?;
            let last = runs
                .last()
                .with_context(|| format!("session `{session}` has no run to resume"))?;
            sess.run_dir(last)
        }
        (None, false) => sess.run_dir(&sess.new_run_id()?),
    };
    let tc = TrainConfig {
        model: a.model.clone(),
        data: a.data.clone(),
        val: a.val.clone(),
        val_split: a.val_split,
        out_dir: out,
        full: a.full,
        lora: model::adapter::LoraSpec {
            r: a.lora_r,
            lora_alpha: a.lora_alpha,
            lora_dropout: a.lora_dropout,
            target_modules: targets,
            use_rslora: false,
        },
        lr: a.lr,
        epochs: a.epochs,
        max_steps: a.max_steps,
        batch: a.batch,
        grad_accum: a.grad_accum,
        max_len: a.max_len,
        schedule: a.schedule.parse()?,
        warmup_ratio: a.warmup_ratio,
        warmup_steps: a.warmup_steps,
        weight_decay: a.weight_decay,
        max_grad_norm: a.max_grad_norm,
        seed: a.seed,
        save_every: a.save_every,
        eval_every: a.eval_every,
        early_stopping: a.early_stopping,
        resume: a.resume,
        answer_fields: a.answer_fields,
        anonymize_speakers: a.anonymize_speakers,
        limit: a.limit,
        dtype: a.dtype.clone(),
        ..TrainConfig::default()
    };
    let control = TrainControl::default();
    // Ctrl-C (SIGINT) or SIGTERM stops after the current step with a checkpoint and the adapter.
    install_stop_signals();
    let json = a.json;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let summary = train(&tc, &control, &mut |e| {
        if STOP_SIGNAL.load(std::sync::atomic::Ordering::SeqCst) {
            control
                .stop
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        match e {
            TrainEvent::Step(m) => {
                if json {
                    println!("{}", serde_json::to_string(&m).unwrap_or_default());
                } else {
                    let w = 30;
                    let done = (m.step * w / m.total_steps.max(1)).min(w);
                    let line = format!(
                        "[{}{}] step {}/{} loss {:.4}{} lr {:.2e} {:.1}s/step {:.0} tok/s ETA {}",
                        "#".repeat(done),
                        ".".repeat(w - done),
                        m.step,
                        m.total_steps,
                        m.loss,
                        m.eval_loss
                            .map(|e| format!(" eval {e:.4}"))
                            .unwrap_or_default(),
                        m.lr,
                        m.step_s,
                        m.tokens_per_s,
                        fmt_secs(m.eta_s)
                    );
                    if tty {
                        eprint!("\r{line}\x1b[K");
                    } else {
                        eprintln!("{line}");
                    }
                }
            }
            TrainEvent::Started {
                run_dir,
                total_steps,
                start_step,
                train_samples,
                val_samples,
                estimate_mib,
            } => {
                if !json {
                    eprintln!(
                    "training in {} : {train_samples} train / {val_samples} val samples, steps {start_step}..{total_steps}, ~{:.1} GiB",
                    run_dir.display(),
                    estimate_mib / 1024.0
                );
                }
            }
            TrainEvent::Log(l) => {
                if !json {
                    eprintln!("{l}");
                }
            }
            TrainEvent::Checkpoint { .. }
            | TrainEvent::Eval { .. }
            | TrainEvent::Paused { .. }
            | TrainEvent::Resumed { .. } => {}
            TrainEvent::Finished(_) => {
                if tty && !json {
                    eprintln!();
                }
            }
        }
    })?;
    if json {
        println!("{}", json!({"finished": summary}));
    } else {
        eprintln!(
            "{} after {} steps; output in {}",
            summary.end,
            summary.steps,
            summary.output_dir.display()
        );
    }
    Ok(())
}
