//! Evaluation on tiny generated models: prefix-cached batched scoring equals full
//! recomputation; the CLI's side-by-side JSON and saved predictions.

mod common;
use common::*;

use candle_core::Tensor;
use fraudlab::engine::eval::{generate_answers, score_prompt, score_samples};
use fraudlab::model::tiny::TinySpec;
use fraudlab::model::{self, LoadOptions};
use std::sync::atomic::AtomicBool;

#[test]
fn prefix_cached_batched_scoring_equals_full_recomputation() {
    let d = tmp();
    let m = tiny_model(
        d.path(),
        TinySpec {
            seed: 9,
            ..Default::default()
        },
    );
    let data = d.path().join("d.jsonl");
    fraud_jsonl(&data, 7);
    let (samples, _) = fraudlab::engine::eval::load_labelled(&data, None).unwrap();
    let lm = model::load(m.to_str().unwrap(), LoadOptions::default()).unwrap();
    let cancel = AtomicBool::new(false);
    let mut calls = vec![];
    let probs = score_samples(&lm, &samples, 3, &cancel, &mut |d, n| calls.push((d, n))).unwrap();
    assert_eq!(calls.last(), Some(&(7, 7)), "progress reaches the end");
    for (s, p) in samples.iter().zip(&probs) {
        let (ids, t, f) = score_prompt(&lm.tokenizer, s).unwrap();
        let x = Tensor::new(ids.as_slice(), &lm.model.device)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let l: Vec<f32> = lm
            .model
            .forward_last(&x, None, None)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        let want = 1.0 / (1.0 + (-((l[t as usize] - l[f as usize]) as f64)).exp());
        assert!((p - want).abs() < 1e-5, "cached+batched {p} vs full {want}");
        assert!(*p > 0.0 && *p < 1.0);
    }
    // the continuation tokens are those of the training target
    let (_, t, f) = score_prompt(&lm.tokenizer, &samples[0]).unwrap();
    assert_ne!(t, f);
    let dt = lm.tokenizer.decode(&[t], false).unwrap();
    let df = lm.tokenizer.decode(&[f], false).unwrap();
    assert!(
        " true".starts_with(dt.as_str()) && " false".starts_with(df.as_str()),
        "{dt:?} {df:?}"
    );
}

#[test]
fn batched_greedy_answers_equal_one_by_one_generation() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let data = d.path().join("d.jsonl");
    fraud_jsonl(&data, 5);
    let (samples, _) = fraudlab::engine::eval::load_labelled(&data, None).unwrap();
    let lm = model::load(m.to_str().unwrap(), LoadOptions::default()).unwrap();
    let cancel = AtomicBool::new(false);
    let batched = generate_answers(&lm, &samples, 12, 4, &cancel, &mut |_, _| {}).unwrap();
    let params = fraudlab::engine::generate::SamplingParams {
        max_tokens: 12,
        ..Default::default()
    };
    let mut nonempty = 0;
    for (s, got) in samples.iter().zip(&batched) {
        let msgs = s.to_chat_messages(fraudlab::data::DEFAULT_SYSTEM, false, false);
        let ids = lm
            .tokenizer
            .encode(&lm.tokenizer.apply_chat_template(&msgs, true).unwrap())
            .unwrap();
        let want =
            fraudlab::engine::generate::generate(&lm, &ids, &params, &cancel, &mut |_| {}).unwrap();
        assert_eq!(got, &want.text, "sample {}", s.id);
        nonempty += !got.is_empty() as usize;
    }
    assert!(nonempty > 0, "the tiny model says something");
}

#[test]
fn cli_eval_side_by_side_json_and_predictions() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let data = d.path().join("d.jsonl");
    fraud_jsonl(&data, 6);
    let sessions = d.path().join("sessions");
    let ms = m.to_str().unwrap();
    let o = bin()
        .env("FRAUDLAB_SESSIONS", &sessions)
        .args([
            "eval",
            "--model",
            ms,
            "--model",
            ms,
            "--data",
            data.to_str().unwrap(),
            "--json",
            "--batch",
            "4",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    for k in [
        "n",
        "precision",
        "recall",
        "f1",
        "accuracy",
        "tp",
        "fp",
        "tn",
        "fn",
        "unparseable",
        "roc_auc",
        "pr_auc",
        "samples_per_s",
        "model",
        "adapter",
    ] {
        assert!(rows[0].get(k).is_some(), "eval --json lacks {k}");
    }
    assert_eq!(rows[0]["n"], 6);
    let r = &rows[0];
    let sum = ["tp", "fp", "tn", "fn"]
        .iter()
        .map(|k| r[*k].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(sum, 6);
    assert_eq!(
        rows[0]["roc_auc"], rows[1]["roc_auc"],
        "same model, same samples, same scores"
    );
    let evals = sessions.join("default/evals");
    let dir = std::fs::read_dir(&evals)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let preds = std::fs::read_to_string(dir.join("predictions.jsonl")).unwrap();
    assert_eq!(preds.lines().count(), 12);
    let p: serde_json::Value = serde_json::from_str(preds.lines().next().unwrap()).unwrap();
    for k in ["id", "label", "probability", "predicted", "model"] {
        assert!(p.get(k).is_some(), "prediction lacks {k}");
    }
    assert!(dir.join("metrics.json").exists() && dir.join("config.json").exists());

    // generate mode counts unparseable answers separately
    let o = bin()
        .env("FRAUDLAB_SESSIONS", &sessions)
        .args([
            "eval",
            "--model",
            ms,
            "--data",
            data.to_str().unwrap(),
            "--json",
            "--mode",
            "generate",
            "--max-tokens",
            "6",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let g: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(g["n"], 6);
    assert!(g["roc_auc"].is_null(), "no probabilities in generate mode");
    let counted = ["tp", "fp", "tn", "fn"]
        .iter()
        .map(|k| g[*k].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(
        counted, 6,
        "unparseable answers count as not fraud in the matrix"
    );
}

#[test]
fn kfold_cross_validation_trains_and_scores_each_fold() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let data = d.path().join("d.jsonl");
    fraud_jsonl(&data, 8);
    let sessions = d.path().join("sessions");
    let o = bin()
        .env("FRAUDLAB_SESSIONS", &sessions)
        .args([
            "eval",
            "--model",
            m.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--folds",
            "2",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "two folds and the mean");
    for f in &lines[..2] {
        assert_eq!(
            f["metrics"]["n"], 4,
            "each held-out fold has half the samples"
        );
    }
    assert_eq!(lines[2]["folds"], 2);
    let evals = std::fs::read_dir(sessions.join("default/evals"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(evals.join("kfold.json").exists());
    assert!(evals
        .join("fold-0/run/adapter/adapter_model.safetensors")
        .exists());
}

#[test]
fn training_calibrates_the_threshold_on_validation_and_eval_uses_it() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let data = d.path().join("d.jsonl");
    fraud_jsonl(&data, 12);
    let run_dir = d.path().join("run");
    let out = run(&[
        "train",
        "--model",
        m.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        run_dir.to_str().unwrap(),
        "--val-split",
        "0.5",
        "--max-steps",
        "2",
        "--batch",
        "2",
        "--grad-accum",
        "1",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("summary.json")).unwrap())
            .unwrap();
    let cal = &summary["calibration"];
    let t = cal["threshold"].as_f64().expect("a calibrated threshold");
    assert!((0.0..=1.0).contains(&t));
    assert_eq!(cal["n"], 6);
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run_dir.join("adapter/fraudlab.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["threshold"].as_f64(), Some(t));
    assert!(meta["threshold_for_recall"]["0.95"].as_f64().is_some());
    // eval without --threshold decides at the saved threshold, and says so
    let adapter = run_dir.join("adapter");
    let out = run_json(&[
        "eval",
        "--model",
        m.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out["rule"]["threshold"].as_f64(), Some(t));
    assert_eq!(out["rule"]["source"], "the adapter's calibrated threshold");
    let given = run_json(&[
        "eval",
        "--model",
        m.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--threshold",
        "0.5",
        "--json",
    ]);
    assert_eq!(given["rule"]["source"], "given");
}

fn run_json(args: &[&str]) -> serde_json::Value {
    let o = run(args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().next().unwrap()).unwrap()
}

#[test]
fn kfold_trains_each_fold_with_the_recipe_given() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let data = d.path().join("d.jsonl");
    fraud_jsonl(&data, 8);
    let recipe = fraudlab::engine::train::TrainConfig {
        lr: 3e-4,
        max_steps: Some(1),
        batch: 2,
        grad_accum: 1,
        lora: fraudlab::model::adapter::LoraSpec {
            r: 4,
            target_modules: vec!["q_proj".into(), "v_proj".into()],
            ..Default::default()
        },
        ..Default::default()
    };
    let rp = d.path().join("recipe.json");
    std::fs::write(&rp, serde_json::to_string(&recipe).unwrap()).unwrap();
    let sessions = d.path().join("sessions");
    let o = bin()
        .env("FRAUDLAB_SESSIONS", &sessions)
        .args([
            "eval",
            "--model",
            m.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--folds",
            "2",
            "--recipe",
            rp.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let evals = std::fs::read_dir(sessions.join("default/evals"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    for f in 0..2 {
        let run = evals.join(format!("fold-{f}/run"));
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["lr"], 3e-4);
        assert_eq!(cfg["lora"]["r"], 4);
        let ad: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(run.join("adapter/adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(ad["r"], 4);
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap())
                .unwrap();
        assert_eq!(summary["steps"], 1);
    }
    // a file that is not a training config is refused by name
    let bad = d.path().join("bad.json");
    std::fs::write(&bad, "{\"nope\": 1}").unwrap();
    let o = run(&[
        "eval",
        "--model",
        m.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--folds",
        "2",
        "--recipe",
        bad.to_str().unwrap(),
    ]);
    assert_clean_error(&o, &["bad.json", "training config"]);
}
