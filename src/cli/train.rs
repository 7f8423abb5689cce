//! `fraudlab train`.

use anyhow::{Context, Result};
use serde_json::json;

use super::args::*;
use super::common::*;
use crate::model;

pub(super) fn cmd_train(a: TrainArgs, session: &str) -> Result<()> {
    use crate::engine::train::{train, TrainControl, TrainEvent};
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
    let tc = train_config(&a, out)?;
    let control = TrainControl::default();
    // Ctrl-C (SIGINT) or SIGTERM stops after the current step with a checkpoint and the adapter.
    install_stop_signals();
    let json = a.json;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // a bar on a terminal; a line a step in a log (not a terminal); JSON lines with --json
    let bar = progress_bar(json || !tty, "steps");
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
                    return;
                }
                let line = format!(
                    "loss {:.4}{} lr {:.2e} {:.1}s/step {:.0} tok/s",
                    m.loss,
                    m.eval_loss
                        .map(|e| format!(" eval {e:.4}"))
                        .unwrap_or_default(),
                    m.lr,
                    m.step_s,
                    m.tokens_per_s,
                );
                if tty {
                    // the trainer's ETA knows the plan (a time budget, validation passes)
                    bar.set_length(m.total_steps as u64);
                    bar.set_position(m.step as u64);
                    bar.set_message(format!("{line} (trainer's ETA {})", fmt_secs(m.eta_s)));
                } else {
                    eprintln!(
                        "step {}/{} {line} ETA {}",
                        m.step,
                        m.total_steps,
                        fmt_secs(m.eta_s)
                    );
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
                    bar.suspend(|| eprintln!(
                        "training in {} : {train_samples} train / {val_samples} val samples, steps {start_step}..{total_steps}, ~{:.1} GiB",
                        run_dir.display(),
                        estimate_mib / 1024.0
                    ));
                    bar.set_length(total_steps as u64);
                    bar.set_position(start_step as u64);
                    bar.reset_eta();
                }
            }
            TrainEvent::Log(l) => {
                if !json {
                    bar.suspend(|| eprintln!("{l}"));
                }
            }
            TrainEvent::Planned(p) => {
                if json {
                    println!("{}", json!({ "plan": p }));
                }
            }
            TrainEvent::Checkpoint { .. }
            | TrainEvent::Eval { .. }
            | TrainEvent::Paused { .. }
            | TrainEvent::Resumed { .. } => {}
            TrainEvent::Finished(_) => bar.finish_and_clear(),
        }
    })?;
    bar.finish_and_clear();
    if json {
        println!("{}", json!({"finished": summary}));
    } else {
        eprintln!(
            "{} after {} steps ({} samples, {:.0}s of training; setup {:.0}s, calibration {:.0}s); output in {}",
            summary.end,
            summary.steps,
            summary.samples_seen,
            summary.train_s,
            summary.setup_s,
            summary.calibrate_s,
            summary.output_dir.display()
        );
    }
    Ok(())
}

/// `fraudlab tune`.
pub(super) fn cmd_tune(a: TuneArgs, session: &str) -> Result<()> {
    use crate::engine::train::tune::{tune, Grid, TuneEvent};
    use crate::engine::train::{TrainControl, TrainEvent};
    let t = &a.train;
    let budget = t
        .time_budget
        .context("tune needs --time-budget (the whole search's, e.g. 60m)")?;
    let sess = open_session(session)?;
    let out = match &t.out {
        Some(o) => o.clone(),
        None => sess.run_dir(&sess.new_tune_id()?),
    };
    let mut base = train_config(t, out)?;
    if base.val.is_none() && base.val_split <= 0.0 {
        base.val_split = 0.1;
    }
    let list = |s: &str, what: &str| -> Result<Vec<String>> {
        let v: Vec<String> = s
            .split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect();
        if v.is_empty() {
            anyhow::bail!("--grid-{what}: nothing to try");
        }
        Ok(v)
    };
    let lrs = list(&a.grid_lr, "lr")?
        .iter()
        .map(|x| {
            x.parse::<f64>()
                .ok()
                .filter(|v| *v > 0.0 && v.is_finite())
                .with_context(|| format!("--grid-lr: `{x}` is not a learning rate"))
        })
        .collect::<Result<Vec<_>>>()?;
    let ranks = list(&a.grid_r, "r")?
        .iter()
        .map(|x| {
            x.parse::<usize>()
                .ok()
                .filter(|v| *v > 0)
                .with_context(|| format!("--grid-r: `{x}` is not a rank"))
        })
        .collect::<Result<Vec<_>>>()?;
    // no layer list: the model's default ranges, once it is loaded
    let layers = match &a.grid_layers {
        Some(g) => g
            .split(';')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(|x| {
                if x == "all" {
                    Ok(None)
                } else {
                    model::adapter::parse_layers(x).map(Some)
                }
            })
            .collect::<Result<Vec<_>>>()?,
        None => vec![],
    };
    let grid = Grid { lrs, ranks, layers };
    let control = TrainControl::default();
    install_stop_signals();
    let json = t.json;
    let result = tune(&base, &grid, budget, a.eta, &control, &mut |e| {
        if STOP_SIGNAL.load(std::sync::atomic::Ordering::SeqCst) {
            control
                .stop
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        match e {
            TuneEvent::TrialStarted {
                name,
                rung,
                index,
                of,
                budget_s,
            } => {
                if !json {
                    eprintln!(
                        "trial {index}/{of} (rung {rung}): {name}, {}",
                        fmt_secs(budget_s)
                    );
                }
            }
            TuneEvent::TrialFinished(t) => {
                if json {
                    println!("{}", json!({ "trial": t }));
                } else {
                    eprintln!(
                        "  {}: {} steps, {} samples in {}; validation loss {} ROC-AUC {} F1 {}",
                        t.name,
                        t.steps,
                        t.samples,
                        fmt_secs(t.train_s),
                        opt3(t.eval_loss),
                        opt3(t.val_auc),
                        opt3(t.val_f1)
                    );
                }
            }
            TuneEvent::Train(TrainEvent::Log(l)) if !json => eprintln!("  {l}"),
            TuneEvent::Train(_) | TuneEvent::Finished(_) => {}
        }
    })?;
    if json {
        println!("{}", json!({ "finished": result }));
    } else {
        eprintln!(
            "best recipe {} (validation ROC-AUC {}, F1 {} at threshold {}); adapter in {}; every trial in {}",
            result.best.name,
            opt3(result.best.val_auc),
            opt3(result.best.val_f1),
            opt3(result.best.threshold),
            result.adapter.display(),
            base.out_dir.join("tune.json").display()
        );
    }
    Ok(())
}

fn opt3(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.3}")).unwrap_or_else(|| "–".into())
}
