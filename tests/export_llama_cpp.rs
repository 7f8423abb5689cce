//! Opt-in: fraudlab's GGUF exports read by the tools llama.cpp users have. Set
//! FRAUDLAB_TEST_PY to a Python with the `gguf` package (REF_PY): it must read our files
//! (keys, tensors, tokenizer) and quantize to the same bytes. With `llama-cpp-python`
//! installed in that Python, llama.cpp loads the exports and must tokenize and compute as
//! fraudlab does; with FRAUDLAB_TEST_HF (REF_HF) too, on the real model's f16 export and the
//! reference prompts (`../shared/reference/parity.json`); with FRAUDLAB_TEST_GGUF, the file
//! type fraudlab names for that file is the one `gguf` names.

mod common;
use common::*;

use candle_core::{Device, Tensor};
use fraudlab::model::gguf::GgufFile;
use fraudlab::model::tiny::TinySpec;
use fraudlab::model::{self, LoadOptions};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn python() -> Option<String> {
    let p = std::env::var("FRAUDLAB_TEST_PY").ok();
    if p.is_none() {
        eprintln!("skipped: set FRAUDLAB_TEST_PY to a python with the `gguf` package (and llama-cpp-python) to check exports with them");
    }
    p
}

fn has_llama_cpp(py: &str) -> bool {
    let ok = std::process::Command::new(py)
        .args(["-c", "import llama_cpp"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipped: `import llama_cpp` fails in {py}: install llama-cpp-python there to run llama.cpp on the exports");
    }
    ok
}

fn check(py: &str, args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/gguf_export_check.py");
    let o = std::process::Command::new(py)
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "python {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn export(model: &Path, ty: &str, out: &Path) {
    let o = run(&[
        "export",
        "--model",
        model.to_str().unwrap(),
        "--type",
        ty,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// What fraudlab makes of each prompt: ids, top-10 last-position logits, greedy tokens.
struct Run {
    ids: Vec<u32>,
    top: Vec<(u32, f32)>,
    greedy: Vec<u32>,
}

fn ours(spec: &Path, prompts: &[String], n_greedy: usize) -> Vec<Run> {
    let lm = model::load(spec.to_str().unwrap(), LoadOptions::default()).unwrap();
    prompts
        .iter()
        .map(|p| {
            let ids = lm.tokenizer.encode(p).unwrap();
            let mut cache = lm.model.new_cache(1);
            let step = |ids: &[u32], cache: &mut model::KvCache| -> Vec<f32> {
                let x = Tensor::new(ids, &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap();
                lm.model
                    .forward_last(&x, None, Some(cache))
                    .unwrap()
                    .squeeze(0)
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            };
            let mut logits = step(&ids, &mut cache);
            let mut top: Vec<(u32, f32)> = logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, l))
                .collect();
            top.sort_by(|a, b| b.1.total_cmp(&a.1));
            top.truncate(10);
            let mut greedy = Vec::new();
            for _ in 0..n_greedy {
                let next = (0..logits.len())
                    .max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)))
                    .unwrap() as u32;
                greedy.push(next);
                logits = step(&[next], &mut cache);
            }
            Run { ids, top, greedy }
        })
        .collect()
}

/// llama.cpp's run of the same prompts on `file`.
fn llama(py: &str, file: &Path, prompts: &[String], n_greedy: usize, dir: &Path) -> Vec<Run> {
    let pj = dir.join("prompts.json");
    std::fs::write(&pj, serde_json::to_string(prompts).unwrap()).unwrap();
    let v = check(
        py,
        &[
            "llama",
            file.to_str().unwrap(),
            pj.to_str().unwrap(),
            &n_greedy.to_string(),
        ],
    );
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| Run {
            ids: ids(&r["ids"]),
            top: r["top"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| (t[0].as_u64().unwrap() as u32, t[1].as_f64().unwrap() as f32))
                .collect(),
            greedy: ids(&r["greedy"]),
        })
        .collect()
}

/// How much of llama.cpp's choices must be fraudlab's, beyond the token ids.
#[derive(Clone, Copy, PartialEq, PartialOrd)]
enum Agree {
    Ids,
    FirstChoice,
    Greedy,
}

/// Checks llama.cpp's runs against fraudlab's: the same ids, top-10 logits (those in both
/// top 10s) within `tol`, and the first choice or all greedy tokens as `agree` says.
fn compare(what: &str, ll: &[Run], us: &[Run], tol: f32, agree: Agree) {
    let mut worst = 0f32;
    for (i, (a, b)) in ll.iter().zip(us).enumerate() {
        assert_eq!(a.ids, b.ids, "{what}: prompt {i}: token ids");
        if agree >= Agree::FirstChoice {
            assert_eq!(a.top[0].0, b.top[0].0, "{what}: prompt {i}: first choice");
        }
        for (id, l) in &a.top {
            if let Some(m) = b.top.iter().find(|t| t.0 == *id) {
                worst = worst.max((l - m.1).abs());
            }
        }
        if agree == Agree::Greedy {
            assert_eq!(a.greedy, b.greedy, "{what}: prompt {i}: greedy tokens");
        }
    }
    eprintln!("{what}: max |top-10 logit difference| llama.cpp vs fraudlab = {worst:.2e}");
    assert!(worst <= tol, "{what}: {worst} > {tol}");
}

const PROMPTS: [&str; 4] = [
    "The quick brown fox jumps over the lazy dog. The capital of France is",
    "客服: 您好，您的账户存在异常，请把验证码告诉我。\n用户: 好的",
    "<|im_start|>user\n你好 hello<|im_end|>\n<|im_start|>assistant\n",
    "{\"is_fraud\": true}  \n\n  123 4567 it's",
];

#[test]
fn the_gguf_package_reads_the_exports() {
    let Some(py) = python() else { return };
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let src = model::load(m.to_str().unwrap(), LoadOptions::default()).unwrap();
    let cfg = &src.model.cfg;
    let mut files = Vec::new();
    for (ty, code) in [("f32", 0), ("f16", 1), ("q8_0", 7)] {
        let out = d.path().join(format!("{ty}.gguf"));
        export(&m, ty, &out);
        let r = check(&py, &["gguf", out.to_str().unwrap()]);
        let k = &r["keys"];
        assert_eq!(k["general.architecture"], "qwen2");
        assert_eq!(k["general.file_type"], code);
        assert_eq!(k["general.alignment"], 32);
        let g = GgufFile::open(&out).unwrap();
        assert_eq!(k["file_type_name"], g.file_type().as_str());
        for (key, want) in [
            ("qwen2.block_count", cfg.num_hidden_layers),
            ("qwen2.context_length", cfg.max_position_embeddings),
            ("qwen2.embedding_length", cfg.hidden_size),
            ("qwen2.feed_forward_length", cfg.intermediate_size),
            ("qwen2.attention.head_count", cfg.num_attention_heads),
            ("qwen2.attention.head_count_kv", cfg.kv_heads()),
        ] {
            assert_eq!(k[key], want, "{key}");
            assert_eq!(r["key_types"][key][0], "UINT32", "{key}");
        }
        for key in [
            "qwen2.rope.freq_base",
            "qwen2.attention.layer_norm_rms_epsilon",
        ] {
            assert_eq!(r["key_types"][key][0], "FLOAT32", "{key}");
        }
        assert_eq!(k["qwen2.rope.freq_base"], cfg.rope_theta);
        // tensors: names, ggml-order shapes and types as fraudlab wrote them
        let tensors = r["tensors"].as_array().unwrap();
        assert_eq!(tensors.len(), g.content.tensor_infos.len());
        for t in tensors {
            let info = &g.content.tensor_infos[t["name"].as_str().unwrap()];
            let mut dims = info.shape.dims().to_vec();
            dims.reverse();
            assert_eq!(t["shape"], serde_json::json!(dims), "{t}");
            assert_eq!(t["type"], format!("{:?}", info.ggml_dtype), "{t}");
        }
        // the tokenizer
        assert_eq!(k["tokenizer.ggml.model"], "gpt2");
        assert_eq!(k["tokenizer.ggml.pre"], "qwen2");
        assert_eq!(k["tokenizer.ggml.tokens"]["len"], cfg.vocab_size);
        assert_eq!(k["tokenizer.ggml.token_type"]["array_of"], "INT32");
        assert_eq!(k["tokenizer.ggml.merges"]["array_of"], "STRING");
        assert_eq!(k["tokenizer.ggml.add_bos_token"], false);
        assert_eq!(
            k["tokenizer.chat_template"],
            src.tokenizer.chat_template.clone().unwrap()
        );
        for (key, tok) in [
            ("tokenizer.ggml.eos_token_id", "<|im_end|>"),
            ("tokenizer.ggml.padding_token_id", "<|endoftext|>"),
        ] {
            assert_eq!(k[key], src.tokenizer.token_id(tok).unwrap(), "{key}");
        }
        for (id, t) in r["tokens"].as_array().unwrap().iter().enumerate() {
            let t = t.as_str().unwrap();
            if r["token_types"][id] != 5 {
                assert_eq!(src.tokenizer.token_id(t), Some(id as u32), "token {t:?}");
            }
        }
        files.push(out);
    }
    // f16 and Q8_0 bytes are those `gguf.quants.quantize` makes of the f32 export's values
    for f in &files[1..] {
        let r = check(
            &py,
            &["requant", files[0].to_str().unwrap(), f.to_str().unwrap()],
        );
        assert_eq!(r["checked"], 7 * 2 + 2, "{r}"); // 7 projections a layer, embedding, output
        assert_eq!(r["differ"], serde_json::json!([]), "{}", f.display());
    }
}

#[test]
fn llama_cpp_runs_the_tiny_exports_as_fraudlab_does() {
    let Some(py) = python() else { return };
    if !has_llama_cpp(&py) {
        return;
    }
    let d = tmp();
    let prompts: Vec<String> = PROMPTS.iter().map(|s| s.to_string()).collect();
    for tied in [false, true] {
        let m = tiny_model(
            &d.path().join(format!("t{tied}")),
            TinySpec {
                tied,
                ..Default::default()
            },
        );
        // f32 (with llama.cpp's KV cache in f32) computes what fraudlab computes. For f16
        // and Q8_0 weights llama.cpp's matmuls round the activations too (to f16, to Q8_0
        // blocks), which the random tiny model amplifies (measured: 1e-2 and 0.16 for
        // logits up to 12): f16 keeps the first choice, Q8_0 only the ids and the distance.
        for (ty, tol, agree) in [
            ("f32", 1e-3, Agree::Greedy),
            ("f16", 0.1, Agree::FirstChoice),
            ("q8_0", 1.0, Agree::Ids),
        ] {
            let out = d.path().join(format!("tiny-{tied}-{ty}.gguf"));
            export(&m, ty, &out);
            let ll = llama(&py, &out, &prompts, 5, d.path());
            let us = ours(&out, &prompts, 5);
            compare(&format!("tiny {ty} tied={tied}"), &ll, &us, tol, agree);
            // and the ids are those of the source folder's tokenizer
            let src = model::load(m.to_str().unwrap(), LoadOptions::default()).unwrap();
            for (p, r) in prompts.iter().zip(&ll) {
                assert_eq!(src.tokenizer.encode(p).unwrap(), r.ids);
            }
        }
    }
}

#[test]
fn llama_cpp_runs_the_real_models_f16_export_as_fraudlab_does() {
    let Some(py) = python() else { return };
    let Ok(hf) = std::env::var("FRAUDLAB_TEST_HF") else {
        eprintln!("skipped: set FRAUDLAB_TEST_HF to the real model's Hugging Face folder");
        return;
    };
    if !has_llama_cpp(&py) {
        return;
    }
    let parity = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/parity.json");
    let Ok(text) = std::fs::read_to_string(&parity) else {
        eprintln!("skipped: {} is absent", parity.display());
        return;
    };
    let pj: Value = serde_json::from_str(&text).unwrap();
    let mut prompts = Vec::new();
    let mut ref_ids = Vec::new();
    for (_, p) in pj["prompts"].as_object().unwrap() {
        prompts.push(p["text"].as_str().unwrap().to_string());
        ref_ids.push(p["token_ids"].clone());
    }
    // about 1 GB: under target/, removed at the end
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let d = tempfile::tempdir_in(&dir).unwrap();
    let out = d.path().join("real-f16.gguf");
    let t0 = std::time::Instant::now();
    export(Path::new(&hf), "f16", &out);
    eprintln!(
        "exported {hf} as f16 in {:.1} s ({} bytes)",
        t0.elapsed().as_secs_f64(),
        std::fs::metadata(&out).unwrap().len()
    );
    assert_eq!(GgufFile::open(&out).unwrap().file_type(), "F16");
    let ll = llama(&py, &out, &prompts, 8, d.path());
    let us = ours(&out, &prompts, 8);
    let src = ours(Path::new(&hf), &prompts, 0);
    for (i, ((a, b), want)) in ll.iter().zip(&src).zip(&ref_ids).enumerate() {
        assert_eq!(
            a.ids, b.ids,
            "prompt {i}: llama.cpp's ids vs the source tokenizer's"
        );
        assert_eq!(
            serde_json::json!(a.ids),
            *want,
            "prompt {i}: vs parity.json"
        );
    }
    // llama.cpp rounds activations to f16 in its f16 matmuls and keeps an f16 KV cache
    // (measured: 4e-3)
    compare("real f16", &ll, &us, 0.05, Agree::Greedy);
    // and fraudlab's f16 export stays near the f32 source
    let mut worst = 0f32;
    for (a, b) in us.iter().zip(&src) {
        assert_eq!(a.top[0].0, b.top[0].0);
        for (id, l) in &a.top {
            if let Some(m) = b.top.iter().find(|t| t.0 == *id) {
                worst = worst.max((l - m.1).abs());
            }
        }
    }
    eprintln!(
        "real f16 export vs f32 source (fraudlab): max |top-10 logit difference| = {worst:.2e}"
    );
    assert!(worst < 0.05, "{worst}"); // measured: 4e-3
}

#[test]
fn the_real_gguf_file_type_is_named_as_gguf_names_it() {
    let Some(py) = python() else { return };
    let Ok(f) = std::env::var("FRAUDLAB_TEST_GGUF") else {
        eprintln!("skipped: set FRAUDLAB_TEST_GGUF to a real GGUF file");
        return;
    };
    let r = check(&py, &["gguf", &f]);
    let g = GgufFile::open(Path::new(&f)).unwrap();
    eprintln!(
        "{f}: general.file_type names it {}, the tensor census {}",
        g.file_type(),
        g.quant_summary()
    );
    assert_eq!(r["keys"]["file_type_name"], g.file_type().as_str());
}
