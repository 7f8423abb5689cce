//! The Qwen2 engine on tiny generated models: cached decoding, padded batches, every weight
//! format, tokenizer agreement, generation, and the bad-input messages.

mod common;
use common::*;

use candle_core::{DType, Tensor};
use fraudlab::engine::generate::{generate, SamplingParams, StopReason};
use fraudlab::model::tiny::TinySpec;
use fraudlab::model::{self, LoadOptions, Mode};
use std::sync::atomic::AtomicBool;

fn last_logits(lm: &model::LoadedModel, ids: &[u32]) -> Vec<f32> {
    let t = Tensor::new(ids, &lm.model.device)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    lm.model
        .forward_last(&t, None, None)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn kv_cached_decoding_equals_full_recomputation() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let lm = model::load(m.to_str().unwrap(), LoadOptions::default()).unwrap();
    let ids = lm
        .tokenizer
        .encode("<|im_start|>user\n你好，请问验证码是多少？ hello world<|im_end|>")
        .unwrap();
    assert!(ids.len() > 8);
    let mut cache = lm.model.new_cache(1);
    // prefill half, then one token at a time
    let half = ids.len() / 2;
    let t = Tensor::new(&ids[..half], &lm.model.device)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    lm.model.forward_last(&t, None, Some(&mut cache)).unwrap();
    let mut last = vec![];
    for &id in &ids[half..] {
        let t = Tensor::new(&[id], &lm.model.device)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        last = lm
            .model
            .forward_last(&t, None, Some(&mut cache))
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap();
    }
    let full = last_logits(&lm, &ids);
    assert_eq!(cache.len(), ids.len());
    assert!(
        max_abs_diff(&last, &full) < 1e-4,
        "cached vs full differ by {}",
        max_abs_diff(&last, &full)
    );
}

#[test]
fn packed_forward_equals_each_sequence_alone() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let lm = model::load(m.to_str().unwrap(), LoadOptions::default()).unwrap();
    let prefix = lm.tokenizer.encode("共同的前缀 shared prefix").unwrap();
    let seqs: Vec<Vec<u32>> = [
        "短的句子",
        "a somewhat longer sentence, 还有中文",
        "中等 medium",
    ]
    .iter()
    .map(|t| lm.tokenizer.encode(t).unwrap())
    .collect();
    let lens: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
    let flat = seqs.concat();
    // with no prefix, and continuing a cached prefix
    for with_prefix in [false, true] {
        let mut cache = lm.model.new_cache(1);
        if with_prefix {
            let p = Tensor::new(prefix.as_slice(), &lm.model.device)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            lm.model
                .forward_hidden(&p, None, Some(&mut cache), Mode::Infer)
                .unwrap();
        }
        let hidden = lm
            .model
            .forward_packed(&flat, &lens, with_prefix.then_some(&cache), Mode::Infer)
            .unwrap();
        assert_eq!(
            cache.len(),
            if with_prefix { prefix.len() } else { 0 },
            "prefix left unchanged"
        );
        let logits = lm
            .model
            .logits(&hidden.squeeze(0).unwrap(), Mode::Infer)
            .unwrap();
        let mut end = 0;
        for s in &seqs {
            end += s.len();
            let got: Vec<f32> = logits.get(end - 1).unwrap().to_vec1().unwrap();
            let whole = if with_prefix {
                [prefix.clone(), s.clone()].concat()
            } else {
                s.clone()
            };
            let diff = max_abs_diff(&got, &last_logits(&lm, &whole));
            assert!(
                diff < 1e-4,
                "sequence ending at {end} (prefix {with_prefix}) differs by {diff}"
            );
        }
    }
}

#[test]
fn batched_padded_forward_equals_unbatched() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let lm = model::load(m.to_str().unwrap(), LoadOptions::default()).unwrap();
    let texts = [
        "短的句子",
        "a somewhat longer sentence with more tokens in it, 还有中文",
        "中等长度 medium",
    ];
    let seqs: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| lm.tokenizer.encode(t).unwrap())
        .collect();
    let max = seqs.iter().map(|s| s.len()).max().unwrap();
    let pad = lm.tokenizer.pad_id.unwrap();
    for left in [true, false] {
        let mut flat = vec![];
        let mut valid = vec![];
        for s in &seqs {
            let p = max - s.len();
            let (row, v): (Vec<u32>, Vec<bool>) = if left {
                (
                    [vec![pad; p], s.clone()].concat(),
                    [vec![false; p], vec![true; s.len()]].concat(),
                )
            } else {
                (
                    [s.clone(), vec![pad; p]].concat(),
                    [vec![true; s.len()], vec![false; p]].concat(),
                )
            };
            flat.extend(row);
            valid.push(v);
        }
        let input = Tensor::from_vec(flat, (seqs.len(), max), &lm.model.device).unwrap();
        let hidden = lm
            .model
            .forward_hidden(&input, Some(&valid), None, Mode::Infer)
            .unwrap();
        let logits = lm.model.logits(&hidden, Mode::Infer).unwrap();
        for (r, s) in seqs.iter().enumerate() {
            let pos = if left { max - 1 } else { s.len() - 1 };
            let got: Vec<f32> = logits.get(r).unwrap().get(pos).unwrap().to_vec1().unwrap();
            let want = last_logits(&lm, s);
            let diff = max_abs_diff(&got, &want);
            assert!(
                diff < 1e-4,
                "row {r} ({}) differs by {diff}",
                if left { "left" } else { "right" }
            );
        }
    }
}

#[test]
fn sharded_tied_gguf_and_converted_models_agree() {
    let d = tmp();
    let single = tiny_model(
        d.path(),
        TinySpec {
            seed: 3,
            ..Default::default()
        },
    );
    let sharded_dir = d.path().join("sharded");
    std::fs::create_dir_all(&sharded_dir).unwrap();
    let sharded = tiny_model(
        &sharded_dir,
        TinySpec {
            seed: 3,
            sharded: true,
            ..Default::default()
        },
    );
    assert!(sharded.join("model.safetensors.index.json").exists());
    let ids_text = "The capital of France is 巴黎";
    let a = model::load(single.to_str().unwrap(), LoadOptions::default()).unwrap();
    let b = model::load(sharded.to_str().unwrap(), LoadOptions::default()).unwrap();
    let ids = a.tokenizer.encode(ids_text).unwrap();
    let la = last_logits(&a, &ids);
    assert_eq!(max_abs_diff(&la, &last_logits(&b, &ids)), 0.0);

    // GGUF with f32 blocks: the exact path gives the same numbers.
    let g = tiny_gguf(&single, false);
    let lg = model::load(g.to_str().unwrap(), LoadOptions::default()).unwrap();
    assert_eq!(lg.tokenizer.encode(ids_text).unwrap(), ids);
    assert!(max_abs_diff(&la, &last_logits(&lg, &ids)) < 1e-5);

    // Q8_0 blocks: dequantized exact path and quantized fast path agree closely.
    let q = tiny_gguf(&single, true);
    let deq = model::load(q.to_str().unwrap(), LoadOptions::default()).unwrap();
    let qnt = model::load(
        q.to_str().unwrap(),
        LoadOptions {
            quantized: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(qnt.quantized);
    let (x, y) = (last_logits(&deq, &ids), last_logits(&qnt, &ids));
    let scale = la.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(
        max_abs_diff(&x, &y) < 0.03 * scale,
        "quantized path differs by {} (scale {scale})",
        max_abs_diff(&x, &y)
    );
    assert!(max_abs_diff(&x, &la) < 0.05 * scale);

    // convert: GGUF -> HF folder loads and matches.
    let out = d.path().join("converted");
    let o = run(&[
        "convert",
        "--gguf",
        g.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let c = model::load(out.to_str().unwrap(), LoadOptions::default()).unwrap();
    assert!(max_abs_diff(&la, &last_logits(&c, &ids)) < 1e-5);
    let tc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("tokenizer_config.json")).unwrap())
            .unwrap();
    assert!(tc["chat_template"].as_str().unwrap().contains("im_start"));

    // tied embeddings load too
    let tied_dir = d.path().join("tied");
    std::fs::create_dir_all(&tied_dir).unwrap();
    let tied = tiny_model(
        &tied_dir,
        TinySpec {
            tied: true,
            ..Default::default()
        },
    );
    let t = model::load(tied.to_str().unwrap(), LoadOptions::default()).unwrap();
    assert!(t.model.tied);
    assert_eq!(last_logits(&t, &ids).len(), t.model.cfg.vocab_size);

    // bf16 weights run and stay close to f32
    let bf = model::load(
        single.to_str().unwrap(),
        LoadOptions {
            dtype: DType::BF16,
            quantized: false,
        },
    )
    .unwrap();
    let lb = last_logits(&bf, &ids);
    assert!(
        max_abs_diff(&la, &lb) < 0.05 * scale,
        "bf16 differs by {}",
        max_abs_diff(&la, &lb)
    );
}

#[test]
fn gguf_tokenizer_agrees_with_tokenizer_json() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let g = tiny_gguf(&m, true);
    let hf = model::load(m.to_str().unwrap(), LoadOptions::default())
        .unwrap()
        .tokenizer;
    let gg = model::load(g.to_str().unwrap(), LoadOptions::default())
        .unwrap()
        .tokenizer;
    let cases = [
        "你好，世界！我们来分析一下这段对话。",
        "The quick brown fox jumps over the lazy dog.",
        "emoji 🙂🎉 and 👨‍👩‍👧",
        "tabs\tand   spaces\n\n  newlines   ",
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n诈骗?<|im_end|>\n<|im_start|>assistant\n",
        "<|endoftext|>{\"is_fraud\": true}",
    ];
    for c in cases {
        let a = hf.encode(c).unwrap();
        assert_eq!(a, gg.encode(c).unwrap(), "tokenizers disagree on {c:?}");
        assert_eq!(hf.decode(&a, false).unwrap(), c, "round trip of {c:?}");
    }
    let s = hf.encode("<|im_start|>").unwrap();
    assert_eq!(s, vec![hf.token_id("<|im_start|>").unwrap()]);
    assert_eq!(
        hf.eos_ids,
        gg.eos_ids
            .iter()
            .copied()
            .filter(|i| hf.eos_ids.contains(i))
            .collect::<Vec<_>>()
    );
    assert!(gg.eos_ids.contains(&gg.token_id("<|im_end|>").unwrap()));
}

#[test]
fn generation_greedy_streaming_seeded_and_cancellable() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let lm = model::load(m.to_str().unwrap(), LoadOptions::default()).unwrap();
    let prompt = fraudlab::engine::generate::build_prompt(
        &lm.tokenizer,
        Some("You are a helpful assistant."),
        "你好",
        false,
    )
    .unwrap();
    assert!(prompt.ends_with("<|im_start|>assistant\n"));
    let ids = lm.tokenizer.encode(&prompt).unwrap();
    let cancel = AtomicBool::new(false);
    let params = SamplingParams {
        max_tokens: 12,
        ..Default::default()
    };
    let mut streamed = String::new();
    let g1 = generate(&lm, &ids, &params, &cancel, &mut |p| streamed.push_str(p)).unwrap();
    let g2 = generate(&lm, &ids, &params, &cancel, &mut |_| {}).unwrap();
    assert_eq!(g1.token_ids, g2.token_ids, "greedy is deterministic");
    assert_eq!(streamed, g1.text, "streamed pieces make the text");
    assert!(g1.generated_tokens <= 12);
    if g1.stop == StopReason::MaxTokens {
        assert_eq!(g1.generated_tokens, 12);
    }
    let sp = SamplingParams {
        temperature: 0.9,
        top_k: Some(20),
        top_p: Some(0.9),
        seed: 5,
        max_tokens: 10,
    };
    let a = generate(&lm, &ids, &sp, &cancel, &mut |_| {}).unwrap();
    let b = generate(&lm, &ids, &sp, &cancel, &mut |_| {}).unwrap();
    assert_eq!(a.token_ids, b.token_ids, "same seed, same tokens");
    cancel.store(true, std::sync::atomic::Ordering::SeqCst);
    let c = generate(&lm, &ids, &params, &cancel, &mut |_| {}).unwrap();
    assert_eq!(c.stop, StopReason::Cancelled);
    assert_eq!(c.generated_tokens, 0);
}

#[test]
fn cli_probe_and_logits_json() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let o = run(&[
        "probe",
        "--model",
        m.to_str().unwrap(),
        "--prompt",
        "你好",
        "--max-tokens",
        "5",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for k in [
        "text",
        "prompt_tokens",
        "generated_tokens",
        "load_s",
        "prefill_tok_s",
        "decode_tok_s",
    ] {
        assert!(v.get(k).is_some(), "probe --json lacks {k}");
    }
    assert!(v["generated_tokens"].as_u64().unwrap() <= 5);
    let o = run(&[
        "logits",
        "--model",
        m.to_str().unwrap(),
        "--prompt",
        "<|im_start|>user\nhi",
        "--raw",
        "--top",
        "3",
        "--json",
    ]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let top = v["top"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    assert!(top[0]["logit"].as_f64().unwrap() >= top[1]["logit"].as_f64().unwrap());
    let ids: Vec<u64> = v["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    let tok = model::load(m.to_str().unwrap(), LoadOptions::default())
        .unwrap()
        .tokenizer;
    assert_eq!(
        ids[0] as u32,
        tok.token_id("<|im_start|>").unwrap(),
        "--raw keeps special tokens: {ids:?}"
    );
    assert_eq!(
        ids.iter().map(|&i| i as u32).collect::<Vec<_>>(),
        tok.encode("<|im_start|>user\nhi").unwrap()
    );
    let models = run(&[
        "models",
        "--json",
        "--models-dir",
        d.path().to_str().unwrap(),
    ]);
    let list: serde_json::Value = serde_json::from_slice(&models.stdout).unwrap();
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["path"].as_str().unwrap().ends_with("tiny")));
}

fn write(p: &std::path::Path, bytes: &[u8]) {
    std::fs::write(p, bytes).unwrap();
}

#[test]
fn bad_inputs_give_clear_errors() {
    let d = tmp();
    let good = tiny_model(d.path(), TinySpec::default());
    let copy = |name: &str| -> std::path::PathBuf {
        let p = d.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        for e in std::fs::read_dir(&good).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), p.join(e.file_name())).unwrap();
        }
        p
    };
    let probe = |m: &std::path::Path| {
        run(&[
            "probe",
            "--model",
            m.to_str().unwrap(),
            "--prompt",
            "hi",
            "--max-tokens",
            "2",
        ])
    };

    // missing folder
    let o = probe(&d.path().join("nope"));
    assert_clean_error(&o, &["nope"]);

    // config.json that is not JSON
    let p = copy("badjson");
    write(&p.join("config.json"), b"{ not json");
    assert_clean_error(&probe(&p), &["config.json", "not valid JSON"]);

    // another architecture
    let p = copy("llama");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.join("config.json")).unwrap()).unwrap();
    c["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    write(&p.join("config.json"), c.to_string().as_bytes());
    assert_clean_error(&probe(&p), &["config.json", "LlamaForCausalLM"]);

    // missing tokenizer
    let p = copy("notok");
    std::fs::remove_file(p.join("tokenizer.json")).unwrap();
    assert_clean_error(&probe(&p), &["tokenizer.json", "missing tokenizer"]);

    // truncated safetensors: header length beyond the file
    let p = copy("trunc-header");
    write(
        &p.join("model.safetensors"),
        &[0xff, 0xff, 0, 0, 0, 0, 0, 0, b'{'],
    );
    assert_clean_error(&probe(&p), &["model.safetensors", "header length"]);

    // truncated safetensors: tensor data beyond the file
    let p = copy("trunc-data");
    let bytes = std::fs::read(p.join("model.safetensors")).unwrap();
    write(&p.join("model.safetensors"), &bytes[..bytes.len() - 100]);
    assert_clean_error(&probe(&p), &["model.safetensors", "truncated"]);

    // a shard named in the index but missing
    let sd = d.path().join("shards");
    std::fs::create_dir_all(&sd).unwrap();
    let sharded = tiny_model(
        &sd,
        TinySpec {
            sharded: true,
            ..Default::default()
        },
    );
    std::fs::remove_file(sharded.join("model-00002-of-00002.safetensors")).unwrap();
    assert_clean_error(
        &probe(&sharded),
        &[
            "model.safetensors.index.json",
            "model-00002-of-00002.safetensors",
            "missing",
        ],
    );

    // tensor shape contradicting the config
    let p = copy("shape");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.join("config.json")).unwrap()).unwrap();
    c["intermediate_size"] = serde_json::json!(96);
    write(&p.join("config.json"), c.to_string().as_bytes());
    assert_clean_error(&probe(&p), &["model.safetensors", "gate_proj", "shape"]);

    // GGUF: another architecture, and a truncated file
    let g = tiny_gguf(&good, true);
    let bytes = std::fs::read(&g).unwrap();
    let t = d.path().join("trunc.gguf");
    write(&t, &bytes[..bytes.len() - 64]);
    assert_clean_error(&probe(&t), &["trunc.gguf", "truncated"]);
    let t2 = d.path().join("header.gguf");
    write(&t2, &bytes[..100]);
    assert_clean_error(&probe(&t2), &["header.gguf"]);
    let needle = b"qwen2";
    let pos = bytes.windows(5).position(|w| w == needle).unwrap();
    let mut other = bytes.clone();
    other[pos..pos + 5].copy_from_slice(b"llama");
    let t3 = d.path().join("llama.gguf");
    write(&t3, &other);
    assert_clean_error(&probe(&t3), &["llama.gguf", "llama"]);

    // a prompt longer than the model's context (4096 tokens for the tiny model)
    let long = "诈骗 ".repeat(6000);
    let o = run(&[
        "probe",
        "--model",
        good.to_str().unwrap(),
        "--prompt",
        &long,
    ]);
    assert_clean_error(&o, &["context"]);
    let o = run(&[
        "logits",
        "--model",
        good.to_str().unwrap(),
        "--prompt",
        &long,
    ]);
    assert_clean_error(&o, &["context"]);
}

/// Parity with the Python reference on the real model: opt-in (FRAUDLAB_TEST_GGUF and/or
/// FRAUDLAB_TEST_HF, e.g. from ../shared/reference/bench/setup.sh), skipped otherwise.
#[test]
fn parity_with_reference_on_real_model() {
    let parity =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/parity.json");
    let models: Vec<String> = ["FRAUDLAB_TEST_GGUF", "FRAUDLAB_TEST_HF"]
        .iter()
        .filter_map(|k| std::env::var(k).ok())
        .collect();
    if models.is_empty() || !parity.exists() {
        eprintln!("skipped: set FRAUDLAB_TEST_GGUF / FRAUDLAB_TEST_HF to the real model (and keep ../shared/reference/parity.json) to run the parity check");
        return;
    }
    let p: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(parity).unwrap()).unwrap();
    for m in models {
        let lm = model::load(&m, LoadOptions::default()).unwrap();
        for (name, case) in p["prompts"].as_object().unwrap() {
            let ids = lm.tokenizer.encode(case["text"].as_str().unwrap()).unwrap();
            let want: Vec<u32> = case["token_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(ids, want, "{m}: token ids of {name}");
            let logits = last_logits(&lm, &ids);
            for t in case["top"].as_array().unwrap() {
                let id = t["id"].as_u64().unwrap() as usize;
                let r = t["logit"].as_f64().unwrap();
                let rel = (logits[id] as f64 - r).abs() / r.abs().max(1.0);
                assert!(
                    rel < 1e-3,
                    "{m}: {name} token {id}: {} vs reference {r} (rel {rel:.2e})",
                    logits[id]
                );
            }
        }
    }
}
