//! `fraudlab eval`: the side-by-side table, stream mode's figures, calibration, k-fold.

use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use crate::data::{self, tools, Format};

use super::args::*;
use super::common::*;

fn eval_targets(models: &[String], adapters: &[String]) -> Vec<crate::engine::eval::EvalTarget> {
    use crate::engine::eval::EvalTarget;
    let adapter = |a: &str| {
        if a == "-" || a.is_empty() {
            None
        } else {
            Some(PathBuf::from(a))
        }
    };
    if models.len() == 1 && adapters.len() > 1 {
        return adapters
            .iter()
            .map(|a| EvalTarget {
                model: models[0].clone(),
                adapter: adapter(a),
            })
            .collect();
    }
    models
        .iter()
        .enumerate()
        .map(|(i, m)| EvalTarget {
            model: m.clone(),
            adapter: adapters.get(i).and_then(|a| adapter(a)),
        })
        .collect()
}

pub(super) fn cmd_eval(a: EvalArgs, session: &str) -> Result<()> {
    use crate::engine::eval::{evaluate, EvalConfig};
    let sess = open_session(session)?;
    let cfg = EvalConfig {
        targets: eval_targets(&a.model, &a.adapter),
        data: a.data.clone(),
        limit: a.limit,
        mode: a.mode.parse()?,
        batch: a.batch,
        threshold: a.threshold.unwrap_or(0.5),
        adapter_thresholds: a.threshold.is_none(),
        consecutive: a.consecutive.unwrap_or(1),
        anonymize_speakers: a.anonymize_speakers,
        max_tokens: a.max_tokens,
        quantized: a.quantized,
        dtype: a.dtype.clone(),
        out_dir: Some(sess.eval_dir(&sess.new_eval_id()?)),
    };
    if let Some(k) = a.folds {
        let recipe = match &a.recipe {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("{}: cannot read the recipe", p.display()))?;
                Some(
                    serde_json::from_str::<crate::engine::train::TrainConfig>(&text).with_context(
                        || {
                            format!(
                                "{}: not a training config (a run's config.json)",
                                p.display()
                            )
                        },
                    )?,
                )
            }
            None => None,
        };
        return kfold_eval(&cfg, k, recipe.as_ref(), a.json);
    }
    let cancel = AtomicBool::new(false);
    let bar = progress_bar(a.json, "samples");
    let mut current = String::new();
    let results = evaluate(&cfg, &cancel, &mut |m, d, n| {
        if m != current {
            // a new model: its own count and rate
            current = m.to_string();
            bar.set_message(current.clone());
            bar.reset();
        }
        bar.set_length(n as u64);
        bar.set_position(d as u64);
    });
    bar.finish_and_clear();
    let results = results?;
    if a.json {
        for r in &results {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        println!(
            "{:<44} {:>6} {:>9} {:>7} {:>6} {:>8} {:>7} {:>7} {:>5} {:>5} {:>5} {:>5} {:>6} {:>9}",
            "model / adapter",
            "n",
            "precision",
            "recall",
            "f1",
            "accuracy",
            "roc_auc",
            "pr_auc",
            "tp",
            "fp",
            "tn",
            "fn",
            "unpars",
            "samples/s"
        );
        for r in &results {
            let m = &r.metrics;
            let name = match &r.adapter {
                Some(ad) => format!("{} + {}", r.model, ad.display()),
                None => r.model.clone(),
            };
            let opt = |x: Option<f64>| x.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into());
            println!(
                "{:<44} {:>6} {:>9.3} {:>7.3} {:>6.3} {:>8.3} {:>7} {:>7} {:>5} {:>5} {:>5} {:>5} {:>6} {:>9.2}",
                name, m.n, m.precision, m.recall, m.f1, m.accuracy, opt(m.roc_auc), opt(m.pr_auc), m.tp, m.fp, m.tn, m.fn_, m.unparseable, r.samples_per_s
            );
        }
        for r in &results {
            if let Some(rule) = &r.rule {
                if r.stream.is_none() {
                    println!(
                        "{}: threshold {:.4} ({})",
                        r.adapter
                            .as_ref()
                            .map(|a| a.display().to_string())
                            .unwrap_or_else(|| r.model.clone()),
                        rule.threshold,
                        rule.source
                    );
                }
            }
            if let Some(st) = &r.stream {
                print_stream(r, st);
            }
        }
        if let Some(d) = &cfg.out_dir {
            println!("predictions in {}", d.display());
        }
    }
    if let Some(target) = a.calibrate {
        calibrate_stream(&results, target, a.json)?;
    }
    Ok(())
}

fn print_stream(r: &crate::engine::eval::EvalResult, st: &crate::engine::eval::StreamOutcome) {
    let s = &st.report;
    let opt = |x: Option<f64>| x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
    let name = match &r.adapter {
        Some(ad) => format!("{} + {}", r.model, ad.display()),
        None => r.model.clone(),
    };
    println!(
        "\nstream: {name}\n  rule: alert once {} turn(s) in a row have P(fraud) >= {:.3} ({})",
        s.consecutive, s.threshold, st.threshold_source
    );
    println!(
        "  detection rate {:.3} ({} of {} fraud dialogues); false alarms {:.3} ({} of {} honest dialogues)",
        s.detection_rate, s.detected, s.fraud_dialogues, s.false_alarm_rate, s.false_alarms, s.normal_dialogues
    );
    println!(
        "  turns to the alert: mean {} median {}; share of the dialogue: {}; from the fraudster's first turn: {}",
        opt(s.mean_turns_to_alert),
        opt(s.median_turns_to_alert),
        opt(s.mean_share_to_alert),
        opt(s.mean_turns_from_fraudster)
    );
    println!(
        "  {} turns scored, {:.1} turns/s; detection rate by turn:",
        st.turns_scored, st.turns_per_s
    );
    print!("{}", crate::engine::stream_eval::detection_chart(s, 40));
}

/// `eval --mode stream --calibrate T`: the rule that keeps false alarms under T, saved in
/// each evaluated adapter's fraudlab.json.
fn calibrate_stream(
    results: &[crate::engine::eval::EvalResult],
    target: f64,
    json: bool,
) -> Result<()> {
    use crate::model::adapter::{AdapterMeta, StreamRule};
    if !(0.0..=1.0).contains(&target) {
        bail!("--calibrate {target}: the false-alarm target is a share between 0 and 1");
    }
    for r in results {
        let Some(st) = &r.stream else {
            bail!("--calibrate needs --mode stream");
        };
        let Some(best) = crate::engine::stream_eval::calibrate(&st.risks, target, 4) else {
            bail!("--calibrate needs honest (label false) dialogues in the data");
        };
        let saved = match &r.adapter {
            Some(dir) => {
                let mut meta = AdapterMeta::read(dir)?.unwrap_or_default();
                meta.stream = Some(StreamRule {
                    threshold: best.threshold,
                    consecutive: best.consecutive,
                });
                meta.write(dir)?;
                Some(dir.join(crate::model::adapter::META_FILE))
            }
            None => None,
        };
        if json {
            println!(
                "{}",
                json!({"calibrated": best, "target_false_alarm_rate": target, "saved": saved})
            );
        } else {
            println!(
                "\ncalibrated (false alarms <= {:.1}%): threshold {:.4}, {} turn(s) in a row -> detection {:.3}, false alarms {:.3}, mean turns to alert {}",
                target * 100.0,
                best.threshold,
                best.consecutive,
                best.detection_rate,
                best.false_alarm_rate,
                best.mean_turns_to_alert.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into())
            );
            match saved {
                Some(p) => println!("saved in {}", p.display()),
                None => {
                    println!("no adapter: nothing saved (pass --adapter to store the rule with it)")
                }
            }
        }
    }
    Ok(())
}

/// k-fold cross-validation: for each fold, train an adapter on the other folds with the first
/// target model and `recipe` (a training config, e.g. a run's config.json; the recipe
/// defaults when `None`), then evaluate it on the held-out fold.
pub(super) fn kfold_eval(
    cfg: &crate::engine::eval::EvalConfig,
    k: usize,
    recipe: Option<&crate::engine::train::TrainConfig>,
    json: bool,
) -> Result<()> {
    use crate::engine::eval::{evaluate_loaded, load_labelled};
    use crate::engine::train::{train_loaded, TrainConfig, TrainControl};
    let (samples, _) = load_labelled(&cfg.data, cfg.limit)?;
    let folds = tools::kfold(&samples, k, 0)?;
    let out = cfg.out_dir.clone().unwrap_or_else(|| PathBuf::from("."));
    let target = cfg.targets.first().context("no model")?;
    let mut all = Vec::new();
    for (i, f) in folds.iter().enumerate() {
        let dir = out.join(format!("fold-{i}"));
        let train_file = dir.join("train.jsonl");
        tools::export(
            &tools::pick(&samples, &f.train),
            Format::Fraud,
            &train_file,
            &Default::default(),
        )?;
        let tc = TrainConfig {
            model: target.model.clone(),
            data: train_file,
            val: None,
            out_dir: dir.join("run"),
            resume: false,
            limit: None,
            ..recipe.cloned().unwrap_or_default()
        };
        // the recipe's dtype for training, the evaluation's own for the held-out fold
        let lm = crate::model::load_for_training(&target.model, tc.load_options()?)?;
        let control = TrainControl::default();
        let summary = train_loaded(lm, &tc, &control, &mut |_| {})?;
        let mut lm = crate::model::load(
            &target.model,
            crate::engine::eval::target_load_options(cfg)?,
        )?;
        crate::model::adapter::load_adapter(&mut lm.model, &summary.output_dir)?;
        let val = tools::pick(&samples, &f.val);
        let cancel = std::sync::atomic::AtomicBool::new(false);
        let (m, _, secs) = evaluate_loaded(&lm, &val, cfg, &cancel, &mut |_, _| {})?;
        if json {
            println!("{}", json!({"fold": i, "metrics": m, "seconds": secs}));
        } else {
            println!(
                "fold {i}: precision {:.3} recall {:.3} f1 {:.3}",
                m.precision, m.recall, m.f1
            );
        }
        all.push(m);
    }
    let mean =
        |f: &dyn Fn(&data::Metrics) -> f64| all.iter().map(f).sum::<f64>() / all.len() as f64;
    let summary = json!({"folds": k, "precision": mean(&|m| m.precision), "recall": mean(&|m| m.recall), "f1": mean(&|m| m.f1), "accuracy": mean(&|m| m.accuracy)});
    data::write_atomic(
        &out.join("kfold.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    println!("{summary}");
    Ok(())
}
