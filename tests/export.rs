//! `fraudlab export`: GGUF files (f32, f16, Q8_0) of tiny models reload in fraudlab with the
//! source's logits (f32 exactly; f16 and Q8_0 exactly those of the source rounded the same
//! way, and within a stated distance of the source), an adapter folds in as `merge` folds
//! it, the tokenizer and chat template survive, the file type is named from
//! `general.file_type`, and bad requests and a full disk are clear errors.
//! Opt-in checks with Python's `gguf` package and llama.cpp are in `export_llama_cpp.rs`.

mod common;
use common::*;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use fraudlab::model::adapter::{attach_lora, save_adapter, LoraSpec};
use fraudlab::model::gguf::GgufFile;
use fraudlab::model::safetensors_io::{save_atomic, WeightFiles};
use fraudlab::model::tiny::TinySpec;
use fraudlab::model::{self, ChatMessage, LoadOptions};
use std::path::{Path, PathBuf};

const PROMPTS: [&str; 5] = [
    "The quick brown fox jumps over the lazy dog. The capital of France is",
    "客服: 您好，您的账户存在异常，请把验证码告诉我。\n用户: 好的",
    "<|im_start|>user\n你好 hello<|im_end|>\n<|im_start|>assistant\n",
    "{\"is_fraud\": true}  \n\n  123 4567 it's",
    "<|endoftext|>张经理: 我们是正规的贷款平台",
];

fn export(model: &Path, adapter: Option<&Path>, ty: &str, out: &Path) {
    let mut a = vec![
        "export",
        "--model",
        model.to_str().unwrap(),
        "--type",
        ty,
        "--out",
        out.to_str().unwrap(),
    ];
    if let Some(ad) = adapter {
        a.extend(["--adapter", ad.to_str().unwrap()]);
    }
    let o = run(&a);
    assert!(
        o.status.success(),
        "export {ty}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Last-position logits of every prompt.
fn logits(spec: &Path, adapter: Option<&Path>) -> Vec<Vec<f32>> {
    let mut lm = model::load(spec.to_str().unwrap(), LoadOptions::default()).unwrap();
    if let Some(a) = adapter {
        model::adapter::load_adapter(&mut lm.model, a).unwrap();
    }
    PROMPTS
        .iter()
        .map(|p| {
            let ids = lm.tokenizer.encode(p).unwrap();
            let x = Tensor::new(ids.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            lm.model
                .forward_last(&x, None, None)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec1()
                .unwrap()
        })
        .collect()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| max_abs_diff(x, y))
        .fold(0.0, f32::max)
}

fn max_abs(a: &[Vec<f32>]) -> f32 {
    a.iter().flatten().fold(0f32, |m, x| m.max(x.abs()))
}

/// A copy of the HF folder `src` whose 2-D weights went through `round`.
fn rounded_copy(src: &Path, out: &Path, round: impl Fn(&Tensor) -> Tensor) -> PathBuf {
    std::fs::create_dir_all(out).unwrap();
    for f in std::fs::read_dir(src).unwrap().flatten() {
        let n = f.file_name();
        if !n.to_string_lossy().ends_with(".safetensors") {
            std::fs::copy(f.path(), out.join(n)).unwrap();
        }
    }
    let files = WeightFiles::open_folder(src).unwrap();
    let mut names: Vec<String> = files.names().cloned().collect();
    names.sort();
    let weights: Vec<(String, Tensor)> = names
        .iter()
        .map(|n| {
            let t = files.load(n, DType::F32, &Device::Cpu).unwrap();
            let t = if t.rank() == 2 { round(&t) } else { t };
            (n.clone(), t)
        })
        .collect();
    save_atomic(&weights, &out.join("model.safetensors")).unwrap();
    out.to_path_buf()
}

fn through(t: &Tensor, dt: GgmlDType) -> Tensor {
    QTensor::quantize(t, dt)
        .unwrap()
        .dequantize(&Device::Cpu)
        .unwrap()
}

#[test]
fn exports_reload_with_the_logits_of_the_source_rounded_alike() {
    for tied in [false, true] {
        let d = tmp();
        let m = tiny_model(
            d.path(),
            TinySpec {
                tied,
                ..Default::default()
            },
        );
        let source = logits(&m, None);
        let scale = max_abs(&source);
        // Distance to the source, relative to the largest logit: the random tiny model
        // amplifies weight errors (measured: f16 2e-3, Q8_0 4e-2 of the largest logit), so
        // the bounds are loose; the exact check against the rounded source is the real one.
        for (ty, name, dt, tol) in [
            ("f32", "F32", GgmlDType::F32, 0.0),
            ("f16", "F16", GgmlDType::F16, 5e-3),
            ("q8_0", "Q8_0", GgmlDType::Q8_0, 0.1),
        ] {
            let out = d.path().join(format!("m-{ty}.gguf"));
            export(&m, None, ty, &out);
            let g = GgufFile::open(&out).unwrap();
            assert_eq!(g.file_type(), name);
            let ty_of = |t: &str| g.content.tensor_infos[t].ggml_dtype;
            assert_eq!(ty_of("blk.0.attn_q.weight"), dt);
            assert_eq!(ty_of("blk.1.ffn_down.weight"), dt);
            assert_eq!(
                ty_of("token_embd.weight"),
                dt,
                "the embedding as llama.cpp's converter"
            );
            assert_eq!(ty_of("blk.0.attn_q.bias"), GgmlDType::F32);
            assert_eq!(ty_of("blk.0.attn_norm.weight"), GgmlDType::F32);
            assert_eq!(ty_of("output_norm.weight"), GgmlDType::F32);
            assert_eq!(
                g.content.tensor_infos.contains_key("output.weight"),
                !tied,
                "output.weight only when untied"
            );
            let got = logits(&out, None);
            // the same weights rounded by ggml's reference quantizers (candle's) give the
            // same logits bit for bit: the export stores exactly those values
            let want = logits(
                &rounded_copy(&m, &d.path().join(format!("r-{ty}")), |t| through(t, dt)),
                None,
            );
            assert_eq!(got, want, "{ty} (tied {tied}): not the rounded source");
            let dist = max_diff(&got, &source);
            eprintln!(
                "{ty} tied={tied}: max |logit - source| = {dist:.2e} (max |logit| {scale:.2})"
            );
            assert!(dist <= tol * scale, "{ty}: {dist} over {tol} x {scale}");
            if ty == "f32" {
                assert_eq!(got, source, "f32 export: the source's logits exactly");
            }
        }
    }
}

#[test]
fn an_adapter_is_folded_in_as_merge_folds_it() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let mut lm = model::load(m.to_str().unwrap(), LoadOptions::default()).unwrap();
    let spec = LoraSpec {
        r: 4,
        lora_dropout: 0.0,
        ..Default::default()
    };
    let vars = attach_lora(&mut lm.model, &spec, 5).unwrap();
    for (i, v) in vars.iter().enumerate() {
        let vals = fraudlab::model::tiny::randn(40 + i as u64, v.b.elem_count(), 0.2);
        v.b.set(&Tensor::from_vec(vals, v.b.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
    let ad = d.path().join("adapter");
    save_adapter(&ad, &spec, &vars, "tiny").unwrap();

    let merged = d.path().join("merged");
    let o = run(&[
        "merge",
        "--model",
        m.to_str().unwrap(),
        "--adapter",
        ad.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = d.path().join("with-adapter.gguf");
    export(&m, Some(&ad), "f32", &out);
    let got = logits(&out, None);
    assert_eq!(got, logits(&merged, None), "the export is the merged model");
    let with_adapter = logits(&m, Some(&ad));
    assert!(max_diff(&got, &with_adapter) < 1e-4 * max_abs(&got).max(1.0));
    let base = logits(&m, None);
    assert!(
        max_diff(&got, &base) > 1e-2,
        "the adapter changed nothing: the test adapter is too weak"
    );

    // `--format hf` is the merge into a Hugging Face folder
    let hf = d.path().join("hf");
    let o = run(&[
        "export",
        "--model",
        m.to_str().unwrap(),
        "--adapter",
        ad.to_str().unwrap(),
        "--format",
        "hf",
        "--out",
        hf.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(logits(&hf, None), got);
}

#[test]
fn the_tokenizer_and_chat_template_round_trip() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let out = d.path().join("m.gguf");
    export(&m, None, "q8_0", &out);
    let src = model::load(m.to_str().unwrap(), LoadOptions::default()).unwrap();
    let exp = model::load(out.to_str().unwrap(), LoadOptions::default()).unwrap();
    let (a, b) = (&src.tokenizer, &exp.tokenizer);
    assert_eq!(a.vocab_size(), b.vocab_size());
    for p in PROMPTS {
        let ids = a.encode(p).unwrap();
        assert_eq!(ids, b.encode(p).unwrap(), "{p:?}");
        assert_eq!(b.decode(&ids, false).unwrap(), p);
    }
    assert!(b.chat_template.is_some());
    assert_eq!(a.chat_template, b.chat_template);
    let msgs = [
        ChatMessage::new("system", "You are a helpful assistant."),
        ChatMessage::new("user", "客服: 请把验证码告诉我"),
    ];
    assert_eq!(
        a.apply_chat_template(&msgs, true).unwrap(),
        b.apply_chat_template(&msgs, true).unwrap()
    );
    assert_eq!(a.eos_ids, b.eos_ids);
    assert_eq!(a.pad_id, b.pad_id);

    let g = GgufFile::open(&out).unwrap();
    let id = |t: &str| a.token_id(t).unwrap() as u64;
    let meta_u = |k: &str| g.meta(k).unwrap().to_u32().unwrap() as u64;
    assert_eq!(g.meta_str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(g.meta_str("tokenizer.ggml.pre").unwrap(), "qwen2");
    assert_eq!(meta_u("tokenizer.ggml.eos_token_id"), id("<|im_end|>"));
    assert_eq!(
        meta_u("tokenizer.ggml.padding_token_id"),
        id("<|endoftext|>")
    );
    assert_eq!(meta_u("tokenizer.ggml.bos_token_id"), id("<|endoftext|>"));
    assert!(!g
        .meta("tokenizer.ggml.add_bos_token")
        .unwrap()
        .to_bool()
        .unwrap());
    let types = g
        .meta("tokenizer.ggml.token_type")
        .unwrap()
        .to_vec()
        .unwrap();
    assert_eq!(types[id("<|im_start|>") as usize].to_i32().unwrap(), 3);
    assert_eq!(types[0].to_i32().unwrap(), 1);
    assert_eq!(g.meta_str("general.architecture").unwrap(), "qwen2");
    let cfg = g.config().unwrap();
    assert_eq!(cfg.num_hidden_layers, src.model.cfg.num_hidden_layers);
    assert_eq!(cfg.kv_heads(), src.model.cfg.kv_heads());
    assert_eq!(cfg.rope_theta, src.model.cfg.rope_theta);
    assert_eq!(
        cfg.max_position_embeddings,
        src.model.cfg.max_position_embeddings
    );

    // a GGUF source exports to the same tokens (and logits) as the folder it came from
    let again = d.path().join("again.gguf");
    export(&out, None, "q8_0", &again);
    let e2 = model::load(again.to_str().unwrap(), LoadOptions::default()).unwrap();
    for p in PROMPTS {
        assert_eq!(a.encode(p).unwrap(), e2.tokenizer.encode(p).unwrap());
    }
    assert_eq!(
        logits(&again, None),
        logits(&out, None),
        "Q8_0 again is lossless"
    );
}

#[test]
fn the_file_type_is_read_from_general_file_type() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    // tiny_gguf's files have no `general.file_type`: the tensor census names them
    assert_eq!(
        GgufFile::open(&tiny_gguf(&m, true)).unwrap().file_type(),
        "Q8_0"
    );
    assert_eq!(
        GgufFile::open(&tiny_gguf(&m, false)).unwrap().file_type(),
        "F32"
    );
    let dir = d.path().join("models");
    std::fs::create_dir_all(&dir).unwrap();
    export(&m, None, "f16", &dir.join("tiny-f16.gguf"));
    let o = run(&["models", "--json", "--models-dir", dir.to_str().unwrap()]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["format"], "gguf (F16)", "{v}");
}

#[test]
fn bad_requests_and_a_full_disk_are_clear_errors() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let ms = m.to_str().unwrap();
    let out = d.path().join("out.gguf");
    let os = out.to_str().unwrap();
    let args = |extra: &[&str]| {
        let mut a = vec!["export", "--model", ms, "--out", os];
        a.extend(extra);
        run(&a)
    };
    assert_clean_error(&args(&["--type", "q4_k"]), &["--type q4_k", "q8_0"]);
    assert_clean_error(&args(&["--format", "onnx"]), &["--format onnx"]);
    assert_clean_error(
        &args(&["--format", "hf", "--type", "f16"]),
        &["--type", "f32"],
    );
    let missing = d.path().join("nope");
    assert_clean_error(&args(&["--adapter", missing.to_str().unwrap()]), &["nope"]);

    // rows of 48 values are not whole Q8_0 blocks: refused, f16 goes through
    let mut cfg = model::Qwen2Config::tiny(0);
    cfg.hidden_size = 48;
    cfg.intermediate_size = 96;
    let odd = d.path().join("odd");
    std::fs::create_dir_all(&odd).unwrap();
    fraudlab::model::tiny::write_tiny_model(
        &odd,
        &TinySpec {
            config: Some(cfg),
            ..Default::default()
        },
    )
    .unwrap();
    let oo = d.path().join("odd.gguf");
    let o = run(&[
        "export",
        "--model",
        odd.to_str().unwrap(),
        "--type",
        "q8_0",
        "--out",
        oo.to_str().unwrap(),
    ]);
    assert_clean_error(&o, &["Q8_0", "48", "32-value blocks"]);
    assert!(!oo.exists());
    export(&odd, None, "f16", &oo);

    // a full disk: a clear error, the old file kept, no temporary file left behind
    std::fs::write(&out, b"old").unwrap();
    let o = bin()
        .env(fraudlab::data::fsutil::ENOSPC_ENV, "20000")
        .args(["export", "--model", ms, "--type", "f32", "--out", os])
        .output()
        .unwrap();
    assert_clean_error(&o, &["out.gguf", "No space left"]);
    assert_eq!(std::fs::read(&out).unwrap(), b"old");
    let left: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    // and with space, it goes through
    export(&m, None, "f32", &out);
    assert_eq!(GgufFile::open(&out).unwrap().file_type(), "F32");
}
