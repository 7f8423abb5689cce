//! The kernels the CPU under the tests can run, each against the portable path, through the
//! whole model: logits (prefill, short batches, decode) and LoRA gradients, f32 and bf16
//! weights. So every CI run checks the fast paths of the machine it lands on. Also: the
//! `FRAUDLAB_KERNELS` switch, and (opt-in, real model) bf16 logits against PyTorch's own
//! bf16 error.

mod common;
use common::*;

use candle_core::{DType, Tensor};
use fraudlab::engine::train::{make_example, mean_loss, Example};
use fraudlab::model::adapter::{attach_lora, LoraSpec};
use fraudlab::model::kernels::{self, available, with_level, Level};
use fraudlab::model::tiny::TinySpec;
use fraudlab::model::{self, LoadOptions, LoadedModel, Mode, Qwen2Config};

/// A tiny model whose sizes are no multiple of the kernels' vector and tile widths: hidden
/// 72 (4.5 vectors of 16), MLP 200, four heads of 18.
fn spec() -> TinySpec {
    let mut c = Qwen2Config::tiny(0);
    c.hidden_size = 72;
    c.intermediate_size = 200;
    c.num_attention_heads = 4;
    c.num_key_value_heads = Some(2);
    TinySpec {
        config: Some(c),
        ..Default::default()
    }
}

fn dense(dtype: DType) -> LoadOptions {
    LoadOptions {
        dtype,
        quantized: false,
    }
}

/// An inference load: bf16 layer weights packed for the bf16 matmul where the CPU has it.
fn load(path: &std::path::Path, dtype: DType) -> LoadedModel {
    model::load(path.to_str().unwrap(), dense(dtype)).unwrap()
}

/// A load to train on: every weight row-major.
fn load_row_major(path: &std::path::Path, dtype: DType) -> LoadedModel {
    model::load_for_training(path.to_str().unwrap(), dense(dtype)).unwrap()
}

fn is_packed(lm: &mut LoadedModel) -> bool {
    lm.model
        .linears_mut()
        .iter()
        .all(|(_, l)| matches!(l.weight, model::qwen2::LinearWeight::Packed(_)))
}

/// Last-position logits of a 40-token prefill (the blocked matmuls), then of 5 tokens at
/// once (the gemv on several rows), then of 3 decoded tokens (the gemv on one row).
fn logits_run(lm: &LoadedModel) -> Vec<Vec<f32>> {
    let m = &lm.model;
    let ids: Vec<u32> = (0..48)
        .map(|i| (i * 7 + 3) % m.cfg.vocab_size as u32)
        .collect();
    let mut cache = m.new_cache(1);
    let mut out = Vec::new();
    let mut step = |from: usize, to: usize, cache: &mut model::KvCache| {
        let t = Tensor::new(&ids[from..to], &m.device)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let l = m.forward_last(&t, None, Some(cache)).unwrap();
        out.push(l.squeeze(0).unwrap().to_vec1::<f32>().unwrap());
    };
    step(0, 40, &mut cache);
    step(40, 45, &mut cache);
    for i in 45..48 {
        step(i, i + 1, &mut cache);
    }
    out
}

/// max |a - b| over max(1, max |b|): the error relative to the logits' scale.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(1f32, |m, x| m.max(x.abs()));
    max_abs_diff(a, b) / scale
}

/// The bound for a fast path against the portable one, relative to the values' scale.
///
/// f32 weights, and bf16 weights on levels without bf16 dot products (which widen the same
/// bf16 values to f32): the same products summed in another order, so f32 rounding only:
/// 1e-4 (measured about 1e-6).
///
/// With AVX512-BF16 the many-row products also round their f32 inputs (activations,
/// output gradients) to bf16, as every bf16 framework does: a relative error of 2⁻⁹ per
/// element, the same as rounding the weights to bf16 did. So the fast path may move the
/// result by about as much as the weights' rounding moved it: `weights_rounding` is that
/// move (the bf16 model's portable result against the f32 model's), and the bound twice it.
fn bound(dtype: DType, level: Level, weights_rounding: f32) -> f32 {
    if dtype == DType::BF16 && level >= Level::Avx512Bf16 {
        2.0 * weights_rounding
    } else {
        1e-4
    }
}

#[test]
fn every_fast_path_gives_the_portable_logits() {
    let d = tmp();
    let m = tiny_model(d.path(), spec());
    let f32_logits = with_level(Level::Portable, || logits_run(&load(&m, DType::F32)));
    // bf16 both packed ahead (where the CPU packs) and row-major
    for (dtype, row_major) in [
        (DType::F32, false),
        (DType::BF16, false),
        (DType::BF16, true),
    ] {
        let lm = if row_major {
            load_row_major(&m, dtype)
        } else {
            load(&m, dtype)
        };
        let want = with_level(Level::Portable, || logits_run(&lm));
        let rounding = (want.iter().zip(&f32_logits))
            .map(|(a, b)| rel_err(a, b))
            .fold(0f32, f32::max);
        for l in available().into_iter().filter(|l| *l != Level::Portable) {
            let got = with_level(l, || logits_run(&lm));
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let e = rel_err(g, w);
                eprintln!(
                    "logits {dtype:?} (row-major {row_major}) {l:?} step {i}: {e:.2e} (weights' rounding {rounding:.2e})"
                );
                assert!(
                    e <= bound(dtype, l, rounding),
                    "{dtype:?} (row-major {row_major}) {l:?} step {i}: {e:.2e}"
                );
            }
        }
    }
}

fn examples(lm: &LoadedModel, dir: &std::path::Path) -> Vec<Example> {
    let f = dir.join("ex.jsonl");
    fraud_jsonl(&f, 3);
    fraudlab::data::load(&f)
        .unwrap()
        .samples
        .iter()
        .map(|s| make_example(&lm.tokenizer, s, 512, false).unwrap().unwrap())
        .collect()
}

/// The loss and every LoRA gradient of one packed batch, flattened.
fn grads(lm: &LoadedModel, vars: &[model::adapter::LoraVars], ex: &[Example]) -> Vec<Vec<f32>> {
    let loss = mean_loss(&lm.model, ex, Mode::Train { dropout_seed: 5 }).unwrap();
    let g = loss.backward().unwrap();
    let mut out = vec![vec![loss
        .to_dtype(DType::F32)
        .unwrap()
        .to_scalar()
        .unwrap()]];
    for v in vars {
        for t in [&v.a, &v.b] {
            let gt = g
                .get(t.as_tensor())
                .expect("a gradient for every LoRA matrix");
            out.push(gt.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
    }
    out
}

#[test]
fn every_fast_path_gives_the_portable_gradients() {
    let d = tmp();
    let m = tiny_model(d.path(), spec());
    let mut f32_grads = None;
    for dtype in [DType::F32, DType::BF16] {
        let mut lm = load(&m, dtype);
        let ex = examples(&lm, d.path());
        assert!(
            ex.iter().map(|e| e.ids.len()).sum::<usize>() > 16,
            "rows past the gemv"
        );
        let vars = attach_lora(&mut lm.model, &LoraSpec::default(), 1).unwrap();
        // B starts at zero (PEFT's init), which would make every A gradient zero
        for (i, v) in vars.iter().enumerate() {
            let vals = fraudlab::model::tiny::randn(90 + i as u64, v.b.elem_count(), 0.1);
            v.b.set(&Tensor::from_vec(vals, v.b.shape(), &lm.model.device).unwrap())
                .unwrap();
        }
        // the loss, then the gradients: each compared at its own scale
        let worst = |a: &[Vec<f32>], b: &[Vec<f32>]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| rel_err(x, y))
                .fold(0f32, f32::max)
        };
        let want = with_level(Level::Portable, || grads(&lm, &vars, &ex));
        assert!(want[1..].iter().any(|g| g.iter().any(|x| *x != 0.0)));
        let rounding = f32_grads
            .as_ref()
            .map_or(0.0, |f: &Vec<Vec<f32>>| worst(&want, f));
        for l in available().into_iter().filter(|l| *l != Level::Portable) {
            let got = with_level(l, || grads(&lm, &vars, &ex));
            let e = worst(&got, &want);
            eprintln!("gradients {dtype:?} {l:?}: {e:.2e} (weights' rounding {rounding:.2e})");
            assert!(e <= bound(dtype, l, rounding), "{dtype:?} {l:?}: {e:.2e}");
        }
        f32_grads.get_or_insert(want);
    }
}

/// `--dtype bf16` training: the base weights stay bf16, the LoRA weights, their gradients
/// and the optimizer state f32; the tiny model overfits as it does in f32, and the adapter
/// it writes is f32 and loads on the f32 model. Full fine-tuning refuses bf16.
#[test]
fn bf16_base_trains_an_f32_adapter() {
    use fraudlab::engine::train::{train, TrainConfig, TrainControl, TrainEvent};
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let data = d.path().join("train.jsonl");
    fraud_jsonl(&data, 8);
    let tc = TrainConfig {
        model: m.to_str().unwrap().into(),
        data: data.clone(),
        out_dir: d.path().join("run"),
        batch: 4,
        grad_accum: 1,
        lr: 1e-2,
        max_steps: Some(40),
        seed: 3,
        dtype: "bf16".into(),
        ..TrainConfig::default()
    };
    let mut losses = vec![];
    let s = train(&tc, &TrainControl::default(), &mut |e| {
        if let TrainEvent::Step(m) = e {
            losses.push(m.loss)
        }
    })
    .unwrap();
    assert_eq!(losses.len(), 40);
    assert!(
        losses[0] > 2.0 && *losses.last().unwrap() < 0.5,
        "a bf16 base overfits 8 samples too: {} → {}",
        losses[0],
        losses.last().unwrap()
    );
    let f = fraudlab::model::safetensors_io::SafetensorsFile::open(
        &s.output_dir.join("adapter_model.safetensors"),
    )
    .unwrap();
    assert!(!f.entries.is_empty());
    assert!(f.entries.values().all(|e| e.dtype == DType::F32));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("run/config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["dtype"], "bf16");
    let mut f32m = load(&m, DType::F32);
    fraudlab::model::adapter::load_adapter(&mut f32m.model, &s.output_dir).unwrap();
    let full = TrainConfig {
        full: true,
        out_dir: d.path().join("full"),
        ..tc
    };
    let e = train(&full, &TrainControl::default(), &mut |_| {}).unwrap_err();
    assert!(format!("{e:#}").contains("full fine-tuning trains every weight in f32"));
}

/// An inference load packs the bf16 layer weights where the CPU has the bf16 matmul, and a
/// training load keeps them row-major. The packed model computes what the row-major one
/// does: f32 rounding apart for logits on every level (a few rows, and the last layer's
/// feed-forward in a prefill, go to the gemv on row-major weights and stream the packed
/// ones through the matmul; both round x to bf16 on the bf16 level), and the same bits for
/// the loss and LoRA gradients of a training batch (many rows: the same panels reach the
/// same kernel, and a run sharing a loaded model repacks them for the input gradients).
#[test]
fn packed_weights_give_the_row_major_results() {
    let d = tmp();
    let m = tiny_model(d.path(), spec());
    let mut packed = load(&m, DType::BF16);
    let mut plain = load_row_major(&m, DType::BF16);
    assert!(!is_packed(&mut plain));
    if !available().contains(&Level::Avx512Bf16) {
        assert!(!is_packed(&mut packed), "packed without the bf16 matmul");
        eprintln!("skipped: this CPU has no bf16 matmul, so nothing is packed");
        return;
    }
    assert!(is_packed(&mut packed));
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for l in available() {
        let (a, b) = with_level(l, || (logits_run(&packed), logits_run(&plain)));
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            let e = rel_err(x, y);
            assert!(e <= 1e-4, "{l:?} step {i}: {e:.2e}");
        }
    }
    let ex = examples(&plain, d.path());
    let mut g = vec![];
    for lm in [&mut packed, &mut plain] {
        let vars = attach_lora(&mut lm.model, &LoraSpec::default(), 1).unwrap();
        for (i, v) in vars.iter().enumerate() {
            let vals = fraudlab::model::tiny::randn(90 + i as u64, v.b.elem_count(), 0.1);
            v.b.set(&Tensor::from_vec(vals, v.b.shape(), &lm.model.device).unwrap())
                .unwrap();
        }
        g.push(grads(lm, &vars, &ex));
    }
    assert!(g[1][1..].iter().any(|t| t.iter().any(|x| *x != 0.0)));
    for (i, (x, y)) in g[0].iter().zip(&g[1]).enumerate() {
        assert_eq!(bits(x), bits(y), "loss or gradient {i}");
    }
}

#[test]
fn kernels_switch_is_checked_and_reported() {
    let d = tmp();
    let m = tiny_model(d.path(), spec());
    let out = bin()
        .env(kernels::ENV, "avx1024")
        .args(["logits", "--model", m.to_str().unwrap(), "--prompt", "hi"])
        .args(["--json"])
        .output()
        .unwrap();
    assert_clean_error(&out, &["FRAUDLAB_KERNELS=avx1024", "portable"]);
    // forced portable: the same answer as the default path, within the f32 bound
    let logits = |level: &str| -> Vec<f64> {
        let o = bin()
            .env(kernels::ENV, level)
            .args([
                "logits",
                "--model",
                m.to_str().unwrap(),
                "--prompt",
                "hello there",
            ])
            .args(["--json", "--top", "5"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["logit"].as_f64().unwrap())
            .collect()
    };
    let (p, a) = (logits("portable"), logits("auto"));
    for (x, y) in p.iter().zip(&a) {
        assert!((x - y).abs() <= 1e-4 * y.abs().max(1.0), "{x} vs {y}");
    }
}

/// Opt-in, real model (FRAUDLAB_TEST_HF: the f32 Hugging Face folder; FRAUDLAB_TEST_PY: a
/// Python with torch and transformers): on the six parity prompts, our bf16 logits against
/// our f32 logits must stay within the error PyTorch's own bf16 shows against its f32
/// (the largest over the vocabulary, prompt by prompt), and pick the same top token.
#[test]
fn bf16_logits_within_pytorch_bf16_error() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let parity = root.join("../shared/reference/parity.json");
    let (Ok(hf), Ok(py)) = (
        std::env::var("FRAUDLAB_TEST_HF"),
        std::env::var("FRAUDLAB_TEST_PY"),
    ) else {
        eprintln!("skipped: set FRAUDLAB_TEST_HF (the f32 HF folder) and FRAUDLAB_TEST_PY (Python with torch) to compare bf16 errors");
        return;
    };
    assert!(parity.exists(), "{} is missing", parity.display());
    let p: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(parity).unwrap()).unwrap();
    let d = tmp();
    let mut files = Vec::new();
    let mut names = Vec::new();
    for (name, case) in p["prompts"].as_object().unwrap() {
        let f = d.path().join(format!("{name}.txt"));
        std::fs::write(&f, case["text"].as_str().unwrap()).unwrap();
        files.push(f);
        names.push(name.clone());
    }
    let out = std::process::Command::new(&py)
        .arg(root.join("bench/bf16_logits.py"))
        .arg(&hf)
        .args(&files)
        .stderr(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "bench/bf16_logits.py failed");
    let torch: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let f32m = load(std::path::Path::new(&hf), DType::F32);
    let bf16m = load(std::path::Path::new(&hf), DType::BF16);
    for ((name, f), t) in names.iter().zip(&files).zip(&torch) {
        let ids = f32m
            .tokenizer
            .encode(&std::fs::read_to_string(f).unwrap())
            .unwrap();
        let last = |lm: &LoadedModel| -> Vec<f32> {
            let x = Tensor::new(ids.as_slice(), &lm.model.device)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let l = lm.model.forward_last(&x, None, None).unwrap();
            l.squeeze(0).unwrap().to_vec1().unwrap()
        };
        let (a, b) = (last(&f32m), last(&bf16m));
        let ours = max_abs_diff(&a, &b) as f64;
        let rms = (a
            .iter()
            .zip(&b)
            .map(|(x, y)| ((x - y) as f64).powi(2))
            .sum::<f64>()
            / a.len() as f64)
            .sqrt();
        let argmax = |v: &[f32]| (0..v.len()).max_by(|&i, &j| v[i].total_cmp(&v[j])).unwrap();
        let theirs = t["max_abs"].as_f64().unwrap();
        eprintln!(
            "{name} ({} tokens): bf16 vs f32 max |Δ| ours {ours:.4} (rms {rms:.4}), PyTorch {theirs:.4} (rms {:.4})",
            ids.len(),
            t["rms"].as_f64().unwrap()
        );
        assert!(ours <= theirs, "{name}: {ours} > PyTorch's {theirs}");
        assert_eq!(argmax(&a), argmax(&b), "{name}: top token");
        assert_eq!(argmax(&a) as u64, t["f32_top1"].as_u64().unwrap(), "{name}");
    }
}
