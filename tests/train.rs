//! Fine-tuning on tiny generated models: gradient checks, overfitting, resume, adapters.

mod common;
use common::*;

use candle_core::{DType, Tensor};
use fraudlab::engine::train::{
    make_example, mean_loss, train, Schedule, TrainConfig, TrainControl, TrainEvent,
};
use fraudlab::model::adapter::{attach_lora, load_adapter, merge_lora, LoraSpec};
use fraudlab::model::tiny::TinySpec;
use fraudlab::model::{self, LoadOptions, Mode};
use std::sync::atomic::Ordering;

fn examples(
    lm: &model::LoadedModel,
    n: usize,
    dir: &std::path::Path,
) -> Vec<fraudlab::engine::train::Example> {
    let f = dir.join("ex.jsonl");
    fraud_jsonl(&f, n);
    let r = fraudlab::data::load(&f).unwrap();
    r.samples
        .iter()
        .map(|s| make_example(&lm.tokenizer, s, 512, false).unwrap().unwrap())
        .collect()
}

#[test]
fn packed_batch_with_shared_prefix_equals_examples_one_by_one() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let mut lm = model::load(
        m.to_str().unwrap(),
        LoadOptions {
            dtype: DType::F64,
            quantized: false,
        },
    )
    .unwrap();
    let ex = examples(&lm, 3, d.path());
    let common = ex[0]
        .ids
        .iter()
        .zip(&ex[1].ids)
        .take_while(|(a, b)| a == b)
        .count();
    assert!(
        common >= 8,
        "the examples share their prompt prefix ({common} tokens)"
    );
    let spec = LoraSpec {
        lora_dropout: 0.0,
        ..Default::default()
    };
    let vars = attach_lora(&mut lm.model, &spec, 3).unwrap();
    for (i, v) in vars.iter().enumerate() {
        let vals = fraudlab::model::tiny::randn(50 + i as u64, v.b.elem_count(), 0.05);
        let t = Tensor::from_vec(vals, v.b.shape(), &lm.model.device).unwrap();
        v.b.set(&t.to_dtype(DType::F64).unwrap()).unwrap();
    }
    let mode = Mode::Train { dropout_seed: 0 };
    let n_targets = |e: &fraudlab::engine::train::Example| e.labels.iter().flatten().count() as f64;
    // the batch: one forward, the prefix computed once
    let batch = mean_loss(&lm.model, &ex, mode).unwrap();
    let gb = batch.backward().unwrap();
    // one by one, weighted as the batch weighs them
    let total: f64 = ex.iter().map(n_targets).sum();
    let mut sum = 0.0;
    let mut grads_one: Vec<Vec<f64>> = vec![];
    for e in &ex {
        let l = (mean_loss(&lm.model, std::slice::from_ref(e), mode).unwrap()
            * (n_targets(e) / total))
            .unwrap();
        sum += l.to_scalar::<f64>().unwrap();
        let g = l.backward().unwrap();
        let flat: Vec<f64> = g
            .get(vars[0].a.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        grads_one.push(flat);
    }
    let b = batch.to_scalar::<f64>().unwrap();
    assert!(
        (b - sum).abs() < 1e-10 * b.abs().max(1.0),
        "batch loss {b} vs one by one {sum}"
    );
    let want: Vec<f64> = (0..grads_one[0].len())
        .map(|k| grads_one.iter().map(|g| g[k]).sum())
        .collect();
    let got: Vec<f64> = gb
        .get(vars[0].a.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    let scale = want.iter().map(|x| x.abs()).fold(0.0, f64::max);
    assert!(
        scale > 0.0 && worst < 1e-9 * scale.max(1.0),
        "gradient differs by {worst} (scale {scale})"
    );
}

#[test]
fn example_masks_everything_but_the_answer() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let lm = model::load(m.to_str().unwrap(), LoadOptions::default()).unwrap();
    let ex = examples(&lm, 2, d.path());
    let tok = &lm.tokenizer;
    let targets: Vec<u32> = ex[0].labels.iter().flatten().copied().collect();
    let want = [
        tok.encode("{\"is_fraud\": true}").unwrap(),
        vec![tok.token_id("<|im_end|>").unwrap()],
    ]
    .concat();
    assert_eq!(
        targets, want,
        "loss on the answer and the end-of-turn token only"
    );
    let first = ex[0].labels.iter().position(|l| l.is_some()).unwrap();
    assert_eq!(
        tok.decode(&ex[0].ids[..first], false)
            .unwrap()
            .rsplit("<|im_start|>")
            .next()
            .unwrap(),
        "assistant\n"
    );
    // max_len keeps the answer and the head of the prompt
    let r = fraudlab::data::load(&d.path().join("ex.jsonl")).unwrap();
    let short = make_example(tok, &r.samples[0], 40, false)
        .unwrap()
        .unwrap();
    assert_eq!(short.ids.len(), 40);
    assert_eq!(
        short.labels.iter().flatten().copied().collect::<Vec<_>>(),
        want
    );
    assert_eq!(short.ids[..5], ex[0].ids[..5]);
}

#[test]
fn train_mode_forward_matches_inference_kernels() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let lm = model::load(m.to_str().unwrap(), LoadOptions::default()).unwrap();
    let ids = lm
        .tokenizer
        .encode("训练和推理的前向应当一致 same forward")
        .unwrap();
    let t = Tensor::new(ids.as_slice(), &lm.model.device)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let a = lm
        .model
        .forward_hidden(&t, None, None, Mode::Infer)
        .unwrap();
    let b = lm
        .model
        .forward_hidden(&t, None, None, Mode::Train { dropout_seed: 1 })
        .unwrap();
    let diff = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        diff < 1e-4,
        "differentiable ops differ from fused kernels by {diff}"
    );
}

#[test]
fn lora_gradients_match_finite_differences() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let mut lm = model::load(
        m.to_str().unwrap(),
        LoadOptions {
            dtype: DType::F64,
            quantized: false,
        },
    )
    .unwrap();
    let ex = examples(&lm, 2, d.path());
    let spec = LoraSpec {
        lora_dropout: 0.0,
        ..Default::default()
    };
    let vars = attach_lora(&mut lm.model, &spec, 7).unwrap();
    // B starts at zero (so A's gradient is zero); give it values to check both.
    for (i, v) in vars.iter().enumerate() {
        let n = v.b.elem_count();
        let vals = fraudlab::model::tiny::randn(100 + i as u64, n, 0.05);
        let t = Tensor::from_vec(vals, v.b.shape(), &lm.model.device)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        v.b.set(&t).unwrap();
    }
    let mode = Mode::Train { dropout_seed: 0 };
    let loss = mean_loss(&lm.model, &ex, mode).unwrap();
    let grads = loss.backward().unwrap();
    let eps = 1e-5;
    let mut checked = 0;
    for (vi, v) in vars.iter().enumerate().filter(|(i, _)| i % 5 == 0) {
        for (which, var) in [("A", &v.a), ("B", &v.b)] {
            let g = grads
                .get(var.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let base = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            for k in [0, base.len() / 3, base.len() - 1] {
                let at = |delta: f64| {
                    let mut p = base.clone();
                    p[k] += delta;
                    var.set(&Tensor::from_vec(p, var.shape(), &lm.model.device).unwrap())
                        .unwrap();
                    mean_loss(&lm.model, &ex, mode)
                        .unwrap()
                        .to_scalar::<f64>()
                        .unwrap()
                };
                let fd = (at(eps) - at(-eps)) / (2.0 * eps);
                var.set(&Tensor::from_vec(base.clone(), var.shape(), &lm.model.device).unwrap())
                    .unwrap();
                let err = (fd - g[k]).abs() / fd.abs().max(g[k].abs()).max(1e-6);
                assert!(
                    err < 1e-4,
                    "{} {which}[{k}]: autograd {} vs finite difference {fd} (rel {err:.2e})",
                    v.module,
                    g[k]
                );
                checked += 1;
            }
        }
        let _ = vi;
    }
    assert!(checked >= 18);
}

fn base_config(
    model: &std::path::Path,
    data: &std::path::Path,
    out: &std::path::Path,
) -> TrainConfig {
    TrainConfig {
        model: model.to_str().unwrap().into(),
        data: data.into(),
        out_dir: out.into(),
        batch: 2,
        grad_accum: 2,
        lr: 1e-2,
        max_steps: Some(8),
        schedule: Schedule::Cosine,
        warmup_ratio: 0.25,
        seed: 3,
        ..TrainConfig::default()
    }
}

#[test]
fn tiny_model_overfits_and_adapter_round_trips() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let data = d.path().join("train.jsonl");
    fraud_jsonl(&data, 8);
    let mut tc = base_config(&m, &data, &d.path().join("run"));
    tc.max_steps = Some(60);
    tc.grad_accum = 1;
    tc.batch = 4;
    tc.val = Some(data.clone());
    tc.eval_every = 20;
    let mut losses = vec![];
    let mut evals = vec![];
    let s = train(&tc, &TrainControl::default(), &mut |e| match e {
        TrainEvent::Step(m) => losses.push(m.loss),
        TrainEvent::Eval { eval_loss, .. } => evals.push(eval_loss),
        _ => {}
    })
    .unwrap();
    assert_eq!(losses.len(), 60);
    assert!(losses[0] > 2.0, "starts high: {}", losses[0]);
    assert!(
        *losses.last().unwrap() < 0.3,
        "a tiny model overfits 8 samples: final loss {}",
        losses.last().unwrap()
    );
    assert_eq!(evals.len(), 3);
    assert!(evals[2] < evals[0]);
    assert_eq!(s.end, "completed");
    let run = d.path().join("run");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 60);
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    for k in [
        "step",
        "loss",
        "lr",
        "grad_norm",
        "step_s",
        "tokens_per_s",
        "rss_mib",
    ] {
        assert!(first.get(k).is_some(), "metrics lack {k}");
    }
    assert!(run.join("checkpoints/best/trainer_state.json").exists());

    // PEFT layout
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(s.output_dir.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 8);
    assert_eq!(cfg["lora_alpha"], 16.0);
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["target_modules"].as_array().unwrap().len(), 7);
    let f = fraudlab::model::safetensors_io::SafetensorsFile::open(
        &s.output_dir.join("adapter_model.safetensors"),
    )
    .unwrap();
    assert!(f
        .entries
        .contains_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));
    assert!(f
        .entries
        .contains_key("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"));
    assert_eq!(f.entries.len(), 2 * 7 * 2);
    assert_eq!(
        f.entries["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape,
        vec![8, 32]
    );

    // the adapter changes the model; merged weights give the same logits as the adapter
    let ids_model = model::load(m.to_str().unwrap(), LoadOptions::default()).unwrap();
    let ids = ids_model
        .tokenizer
        .encode("<|im_start|>user\nhello<|im_end|>\n")
        .unwrap();
    let t = Tensor::new(ids.as_slice(), &ids_model.model.device)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let base: Vec<f32> = ids_model
        .model
        .forward_last(&t, None, None)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap();
    let mut with = model::load(m.to_str().unwrap(), LoadOptions::default()).unwrap();
    load_adapter(&mut with.model, &s.output_dir).unwrap();
    let adapted: Vec<f32> = with
        .model
        .forward_last(&t, None, None)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(max_abs_diff(&base, &adapted) > 1e-3);
    merge_lora(&mut with.model).unwrap();
    let merged: Vec<f32> = with
        .model
        .forward_last(&t, None, None)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(max_abs_diff(&adapted, &merged) < 1e-3);

    // score mode on the trained model separates the labels; it agrees with greedy's first token
    let (samples, _) = fraudlab::engine::eval::load_labelled(&data, None).unwrap();
    let mut lm = model::load(m.to_str().unwrap(), LoadOptions::default()).unwrap();
    load_adapter(&mut lm.model, &s.output_dir).unwrap();
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let probs =
        fraudlab::engine::eval::score_samples(&lm, &samples, 3, &cancel, &mut |_, _| {}).unwrap();
    for (s, p) in samples.iter().zip(&probs) {
        assert_eq!(*p >= 0.5, s.label.unwrap(), "p {p} for label {:?}", s.label);
        let (prompt, t, f) = fraudlab::engine::eval::score_prompt(&lm.tokenizer, s).unwrap();
        let g = fraudlab::engine::generate::generate(
            &lm,
            &prompt,
            &fraudlab::engine::generate::SamplingParams {
                max_tokens: 1,
                ..Default::default()
            },
            &cancel,
            &mut |_| {},
        )
        .unwrap();
        let first = g.token_ids[0];
        assert!(
            first == t || first == f,
            "greedy's first token answers true/false"
        );
        assert_eq!(
            first == t,
            *p >= 0.5,
            "score mode agrees with greedy's first token"
        );
    }
}

#[test]
fn resumed_run_ends_like_an_uninterrupted_one() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let data = d.path().join("train.jsonl");
    fraud_jsonl(&data, 10);
    let full = base_config(&m, &data, &d.path().join("full"));
    let a = train(&full, &TrainControl::default(), &mut |_| {}).unwrap();

    let cut = base_config(&m, &data, &d.path().join("cut"));
    let control = TrainControl::default();
    let mut seen = 0;
    let b = train(&cut, &control, &mut |e| {
        if let TrainEvent::Step(m) = e {
            seen = m.step;
            if m.step == 3 {
                control.stop.store(true, Ordering::SeqCst);
            }
        }
    })
    .unwrap();
    assert_eq!(b.end, "stopped");
    assert_eq!(seen, 3);
    let resumed = TrainConfig {
        resume: true,
        ..cut.clone()
    };
    let c = train(&resumed, &TrainControl::default(), &mut |_| {}).unwrap();
    assert_eq!(c.steps, 8);
    let load = |p: &std::path::Path| {
        let f = fraudlab::model::safetensors_io::SafetensorsFile::open(
            &p.join("adapter_model.safetensors"),
        )
        .unwrap();
        let mut v = vec![];
        for k in f.entries.keys() {
            v.extend(
                f.load(k, DType::F32, &candle_core::Device::Cpu)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            );
        }
        v
    };
    // bit-identical (same seed, same machine): the adapter files' bytes, not a tolerance
    let bytes = |p: &std::path::Path| std::fs::read(p.join("adapter_model.safetensors")).unwrap();
    assert!(
        bytes(&a.output_dir) == bytes(&c.output_dir),
        "the resumed run's adapter bytes differ from the uninterrupted run's"
    );
    assert!(load(&a.output_dir).iter().any(|v| *v != 0.0));
    // metrics of the resumed run: each step once
    let steps: Vec<u64> = std::fs::read_to_string(d.path().join("cut/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, (1..=8).collect::<Vec<_>>());
    // resuming with other settings is refused
    let other = TrainConfig {
        resume: true,
        lr: 0.5,
        ..cut
    };
    assert!(format!(
        "{:#}",
        train(&other, &TrainControl::default(), &mut |_| {}).unwrap_err()
    )
    .contains("config.json"));
}

#[test]
fn nan_loss_stops_and_keeps_the_last_checkpoint() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let data = d.path().join("train.jsonl");
    fraud_jsonl(&data, 8);
    let mut tc = base_config(&m, &data, &d.path().join("run"));
    tc.lr = 1e30;
    tc.schedule = Schedule::Constant;
    tc.warmup_ratio = 0.0;
    tc.max_grad_norm = 0.0;
    tc.save_every = 1;
    let e = train(&tc, &TrainControl::default(), &mut |_| {}).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("NaN") || msg.contains("infinite") || msg.contains("not"),
        "{msg}"
    );
    assert!(msg.contains("checkpoint"), "{msg}");
    assert!(d
        .path()
        .join("run/checkpoints/step-1/adapter_model.safetensors")
        .exists());
}

#[test]
fn full_fine_tuning_and_memory_refusal() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let data = d.path().join("train.jsonl");
    fraud_jsonl(&data, 6);
    let mut tc = base_config(&m, &data, &d.path().join("full"));
    tc.full = true;
    tc.lr = 3e-3;
    tc.max_steps = Some(10);
    let mut losses = vec![];
    let s = train(&tc, &TrainControl::default(), &mut |e| {
        if let TrainEvent::Step(m) = e {
            losses.push(m.loss)
        }
    })
    .unwrap();
    assert!(losses.last().unwrap() < &losses[0]);
    let out = model::load(s.output_dir.to_str().unwrap(), LoadOptions::default()).unwrap();
    assert_eq!(out.model.cfg.num_hidden_layers, 2);

    let mut huge = base_config(&m, &data, &d.path().join("huge"));
    huge.batch = 4096;
    huge.max_len = 65536;
    let e = format!(
        "{:#}",
        train(&huge, &TrainControl::default(), &mut |_| {}).unwrap_err()
    );
    assert!(e.contains("GiB") && e.contains("--batch"), "{e}");
}

#[test]
fn cli_train_json_lines_and_bad_data_lines() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let data = d.path().join("train.jsonl");
    fraud_jsonl(&data, 6);
    let mut text = std::fs::read_to_string(&data).unwrap();
    text.push_str("{not json\n{\"instruction\": \"x\", \"input\": 3, \"label\": true}\n");
    std::fs::write(&data, text).unwrap();
    let out = d.path().join("run");
    let o = bin()
        .args([
            "train",
            "--model",
            m.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--max-steps",
            "3",
            "--batch",
            "2",
            "--grad-accum",
            "1",
            "--json",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "3 steps and the summary");
    for k in [
        "step",
        "loss",
        "lr",
        "grad_norm",
        "step_s",
        "tokens_per_s",
        "rss_mib",
    ] {
        assert!(lines[0].get(k).is_some(), "step line lacks {k}");
    }
    assert!(out.join("adapter/adapter_config.json").exists());
    // the data layer names the file and line of each bad line
    let o = bin()
        .args(["data", "stats", data.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("train.jsonl") && err.contains(":7") && err.contains(":8"),
        "{err}"
    );
    assert!(err.contains("skipped 2"), "{err}");
}

#[test]
fn cli_train_stops_cleanly_on_sigterm_and_resumes() {
    use std::io::BufRead;
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let data = d.path().join("train.jsonl");
    fraud_jsonl(&data, 8);
    let out = d.path().join("run");
    let spawn = |resume: bool| {
        let mut args = vec![
            "train",
            "--model",
            m.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend([
            "--max-steps",
            "5000",
            "--batch",
            "2",
            "--grad-accum",
            "1",
            "--json",
        ]);
        if resume {
            args.push("--resume");
        }
        bin()
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut child = spawn(false);
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("\"step\":1"), "{first}");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "a stop signal ends the run cleanly: {status:?}"
    );
    let last: serde_json::Value = serde_json::from_str(rest.last().unwrap()).unwrap();
    assert_eq!(last["finished"]["end"], "stopped");
    let steps = last["finished"]["steps"].as_u64().unwrap();
    assert!(steps < 5000);
    assert!(out.join("adapter/adapter_model.safetensors").exists());
    assert!(out
        .join(format!("checkpoints/step-{steps}/trainer_state.json"))
        .exists());
    // and it resumes from there
    let mut again = spawn(true);
    let mut lines = std::io::BufReader::new(again.stdout.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(
        first["step"].as_u64().unwrap(),
        steps + 1,
        "resumes after the checkpoint"
    );
    unsafe { libc::kill(again.id() as i32, libc::SIGTERM) };
    for _ in lines {}
    assert!(again.wait().unwrap().success());
}
