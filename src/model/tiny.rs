//! Tiny random Qwen2 models written to disk: for tests, and the offline demo model of the
//! workbench. A small byte-level BPE tokenizer is trained on a built-in text so the model has
//! a real tokenizer with merges and Qwen's special tokens.

use anyhow::{Context, Result};
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;

use super::config::Qwen2Config;
use super::gguf::{build_tokenizer_json, gguf_name};
use super::safetensors_io::save_atomic;
use super::tokenizer::CHATML_TEMPLATE;

pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Text the tiny tokenizer's merges are learnt from: English, Chinese dialogue, JSON answers.
const CORPUS: &str = "You are a helpful assistant. The quick brown fox jumps over the lazy dog. \
The capital of France is Paris. {\"is_fraud\": true} {\"is_fraud\": false} \
你是一个分析诈骗案例的专家，你的任务是分析下面对话内容是否存在经济诈骗。\
客服: 您好，您的账户存在异常，请把验证码告诉我。用户: 好的，验证码是多少？\
张经理: 我们是正规的贷款平台，需要您先交保证金。李婷: 怎么提现不了了？平台显示异常了！\
introduce large language models briefly. the the the and and is is of of to to in in";

/// GPT-2's byte-to-character table used by byte-level BPE.
pub fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec![' '; 256];
    for (b, c) in bs.iter().zip(cs) {
        table[*b as usize] = char::from_u32(c).unwrap();
    }
    table
}

/// Learns `n_merges` BPE merges from `text` and returns (tokens by id, merges).
pub fn train_bpe(text: &str, n_merges: usize) -> (Vec<String>, Vec<String>) {
    let table = byte_chars();
    let mut tokens: Vec<String> = table.iter().map(|c| c.to_string()).collect();
    // words: split before spaces, like the GPT-2 family's pre-tokenizer roughly does
    let mut words: Vec<Vec<String>> = Vec::new();
    let mut cur = String::new();
    for ch in text.chars() {
        if ch == ' ' && !cur.is_empty() {
            words.push(cur.bytes().map(|b| table[b as usize].to_string()).collect());
            cur.clear();
        }
        cur.push(ch);
    }
    if !cur.is_empty() {
        words.push(cur.bytes().map(|b| table[b as usize].to_string()).collect());
    }
    let mut merges = Vec::new();
    for _ in 0..n_merges {
        let mut counts: HashMap<(String, String), usize> = HashMap::new();
        for w in &words {
            for p in w.windows(2) {
                *counts.entry((p[0].clone(), p[1].clone())).or_default() += 1;
            }
        }
        // most frequent pair; ties broken by the pair itself for determinism
        let Some(((a, b), n)) = counts
            .into_iter()
            .max_by(|x, y| x.1.cmp(&y.1).then(y.0.cmp(&x.0)))
        else {
            break;
        };
        if n < 2 {
            break;
        }
        let merged = format!("{a}{b}");
        merges.push(format!("{a} {b}"));
        tokens.push(merged.clone());
        for w in words.iter_mut() {
            let mut i = 0;
            while i + 1 < w.len() {
                if w[i] == a && w[i + 1] == b {
                    w[i] = merged.clone();
                    w.remove(i + 1);
                }
                i += 1;
            }
        }
    }
    (tokens, merges)
}

/// Options for a tiny model.
#[derive(Debug, Clone)]
pub struct TinySpec {
    pub seed: u64,
    pub merges: usize,
    /// Write the weights as two shards with an index.
    pub sharded: bool,
    pub tied: bool,
    /// Override the config (layers etc.); the vocab size is set from the tokenizer.
    pub config: Option<Qwen2Config>,
}

impl Default for TinySpec {
    fn default() -> Self {
        Self {
            seed: 0,
            merges: 150,
            sharded: false,
            tied: false,
            config: None,
        }
    }
}

/// The tokens (by id) and types (1 normal, 3 control) of the tiny tokenizer.
pub fn tiny_vocab(merges: usize) -> (Vec<String>, Vec<i64>, Vec<String>) {
    let (mut tokens, merges) = train_bpe(CORPUS, merges);
    let mut types = vec![1i64; tokens.len()];
    for s in SPECIAL_TOKENS {
        tokens.push(s.to_string());
        types.push(3);
    }
    (tokens, types, merges)
}

/// Deterministic pseudo-random normal values (SplitMix64 + Box-Muller).
pub fn randn(seed: u64, n: usize, std: f32) -> Vec<f32> {
    let mut s = seed.wrapping_add(0x9E3779B97F4A7C15);
    let mut next = || {
        s = s.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let u1 = next().max(1e-12);
            let u2 = next();
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32 * std
        })
        .collect()
}

/// Random weights for `cfg` under Hugging Face names.
pub fn random_weights(cfg: &Qwen2Config, seed: u64) -> Result<Vec<(String, Tensor)>> {
    let dev = Device::Cpu;
    let h = cfg.hidden_size;
    let kvd = cfg.kv_heads() * cfg.head_dim();
    let im = cfg.intermediate_size;
    let mut out = Vec::new();
    let mut k = seed.wrapping_mul(1000);
    let mut add = |name: String, shape: Vec<usize>, std: f32, ones: bool| -> Result<()> {
        k += 1;
        let n: usize = shape.iter().product();
        let v = if ones {
            randn(k, n, 0.1).into_iter().map(|x| 1.0 + x).collect()
        } else {
            randn(k, n, std)
        };
        out.push((name, Tensor::from_vec(v, shape, &dev)?));
        Ok(())
    };
    add(
        "model.embed_tokens.weight".into(),
        vec![cfg.vocab_size, h],
        0.5,
        false,
    )?;
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let s = 1.0 / (h as f32).sqrt();
        add(
            format!("{p}.self_attn.q_proj.weight"),
            vec![h, h],
            s * 2.0,
            false,
        )?;
        add(format!("{p}.self_attn.q_proj.bias"), vec![h], 0.1, false)?;
        add(
            format!("{p}.self_attn.k_proj.weight"),
            vec![kvd, h],
            s * 2.0,
            false,
        )?;
        add(format!("{p}.self_attn.k_proj.bias"), vec![kvd], 0.1, false)?;
        add(
            format!("{p}.self_attn.v_proj.weight"),
            vec![kvd, h],
            s,
            false,
        )?;
        add(format!("{p}.self_attn.v_proj.bias"), vec![kvd], 0.1, false)?;
        add(format!("{p}.self_attn.o_proj.weight"), vec![h, h], s, false)?;
        add(format!("{p}.mlp.gate_proj.weight"), vec![im, h], s, false)?;
        add(format!("{p}.mlp.up_proj.weight"), vec![im, h], s, false)?;
        add(
            format!("{p}.mlp.down_proj.weight"),
            vec![h, im],
            1.0 / (im as f32).sqrt(),
            false,
        )?;
        add(format!("{p}.input_layernorm.weight"), vec![h], 0.0, true)?;
        add(
            format!("{p}.post_attention_layernorm.weight"),
            vec![h],
            0.0,
            true,
        )?;
    }
    add("model.norm.weight".into(), vec![h], 0.0, true)?;
    if !cfg.tie_word_embeddings {
        // wide enough that a fine-tune can make sharp predictions through the frozen head
        add("lm_head.weight".into(), vec![cfg.vocab_size, h], 0.6, false)?;
    }
    Ok(out)
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    crate::model::write_file_atomic(path, serde_json::to_string_pretty(v)?.as_bytes())
}

/// The tokenizer_config.json transformers expects of a Qwen2 model.
pub fn tokenizer_config_json(
    added: &[(u32, String, bool)],
    chat_template: &str,
    eos: &str,
    pad: &str,
    max_len: usize,
) -> serde_json::Value {
    let mut dec = serde_json::Map::new();
    for (id, content, special) in added {
        dec.insert(
            id.to_string(),
            json!({"content": content, "lstrip": false, "normalized": false, "rstrip": false,
                   "single_word": false, "special": special}),
        );
    }
    json!({
        "add_bos_token": false,
        "add_prefix_space": false,
        "added_tokens_decoder": dec,
        "bos_token": null,
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": false,
        "eos_token": eos,
        "errors": "replace",
        "model_max_length": max_len,
        "pad_token": pad,
        "split_special_tokens": false,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": null
    })
}

/// Writes a tiny random Qwen2 model as a Hugging Face folder and returns its config.
pub fn write_tiny_model(dir: &Path, spec: &TinySpec) -> Result<Qwen2Config> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let (tokens, types, merges) = tiny_vocab(spec.merges);
    let mut cfg = spec
        .config
        .clone()
        .unwrap_or_else(|| Qwen2Config::tiny(tokens.len()));
    cfg.vocab_size = tokens.len();
    cfg.tie_word_embeddings = spec.tied;
    let eos = (tokens.len() - 1) as u32; // <|im_end|>
    let eot = (tokens.len() - 3) as u32; // <|endoftext|>
    cfg.eos_token_id = Some(json!(eot));
    cfg.bos_token_id = Some(json!(eot));
    write_json(&dir.join("config.json"), &serde_json::to_value(&cfg)?)?;
    write_json(
        &dir.join("tokenizer.json"),
        &build_tokenizer_json(&tokens, &types, &merges),
    )?;
    let added: Vec<(u32, String, bool)> = SPECIAL_TOKENS
        .iter()
        .map(|s| {
            (
                tokens.iter().position(|t| t == s).unwrap() as u32,
                s.to_string(),
                true,
            )
        })
        .collect();
    write_json(
        &dir.join("tokenizer_config.json"),
        &tokenizer_config_json(
            &added,
            CHATML_TEMPLATE,
            "<|im_end|>",
            "<|endoftext|>",
            cfg.max_position_embeddings,
        ),
    )?;
    write_json(
        &dir.join("generation_config.json"),
        &json!({"bos_token_id": eot, "eos_token_id": [eos, eot], "pad_token_id": eot}),
    )?;
    let weights = random_weights(&cfg, spec.seed)?;
    if spec.sharded {
        let half = weights.len() / 2;
        let names = [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
        ];
        let mut map = serde_json::Map::new();
        for (i, part) in [&weights[..half], &weights[half..]].into_iter().enumerate() {
            save_atomic(part, &dir.join(names[i]))?;
            for (n, _) in part {
                map.insert(n.clone(), json!(names[i]));
            }
        }
        write_json(
            &dir.join("model.safetensors.index.json"),
            &json!({"metadata": {"total_size": 0}, "weight_map": map}),
        )?;
    } else {
        save_atomic(&weights, &dir.join("model.safetensors"))?;
    }
    Ok(cfg)
}

/// Writes a GGUF file of architecture `qwen2` from a Hugging Face folder's weights and
/// tokenizer (tokens, token types, merges, chat template in the metadata). `dtype` is the
/// block type of the 2-D weights (F32 for an exact file, Q8_0 etc. for a quantized one).
pub fn write_gguf(dir: &Path, out: &Path, dtype: GgmlDType) -> Result<()> {
    let cfg = Qwen2Config::from_file(&dir.join("config.json"))?;
    let tj: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("tokenizer.json")).context("tokenizer.json")?,
    )?;
    let vocab = tj["model"]["vocab"]
        .as_object()
        .context("tokenizer.json has no vocab")?;
    let mut tokens = vec![String::new(); cfg.vocab_size];
    let mut types = vec![1i32; cfg.vocab_size];
    for (t, id) in vocab {
        if let Some(i) = id.as_u64().filter(|&i| (i as usize) < tokens.len()) {
            tokens[i as usize] = t.clone();
        }
    }
    for a in tj["added_tokens"].as_array().into_iter().flatten() {
        if let Some(i) = a["id"].as_u64().filter(|&i| (i as usize) < tokens.len()) {
            tokens[i as usize] = a["content"].as_str().unwrap_or_default().to_string();
            types[i as usize] = if a["special"].as_bool().unwrap_or(false) {
                3
            } else {
                4
            };
        }
    }
    let merges: Vec<Value> = tj["model"]["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m {
            serde_json::Value::Array(p) => Value::String(format!(
                "{} {}",
                p[0].as_str().unwrap_or_default(),
                p[1].as_str().unwrap_or_default()
            )),
            other => Value::String(other.as_str().unwrap_or_default().to_string()),
        })
        .collect();
    let tc: serde_json::Value = std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();
    let eos_tok = tc["eos_token"].as_str().unwrap_or("<|endoftext|>");
    let eos_id = tokens.iter().position(|t| t == eos_tok).unwrap_or(0) as u32;
    let pad_id = tokens
        .iter()
        .position(|t| t == "<|endoftext|>")
        .unwrap_or(0) as u32;
    let template = tc["chat_template"]
        .as_str()
        .unwrap_or(CHATML_TEMPLATE)
        .to_string();
    let u = |x: usize| Value::U32(x as u32);
    let meta: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("qwen2".into())),
        (
            "general.name",
            Value::String(
                dir.file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("model")
                    .into(),
            ),
        ),
        ("qwen2.context_length", u(cfg.max_position_embeddings)),
        ("qwen2.embedding_length", u(cfg.hidden_size)),
        ("qwen2.feed_forward_length", u(cfg.intermediate_size)),
        ("qwen2.block_count", u(cfg.num_hidden_layers)),
        ("qwen2.attention.head_count", u(cfg.num_attention_heads)),
        ("qwen2.attention.head_count_kv", u(cfg.kv_heads())),
        (
            "qwen2.attention.layer_norm_rms_epsilon",
            Value::F32(cfg.rms_norm_eps as f32),
        ),
        ("qwen2.rope.freq_base", Value::F32(cfg.rope_theta as f32)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("qwen2".into())),
        (
            "tokenizer.ggml.tokens",
            Value::Array(tokens.iter().map(|t| Value::String(t.clone())).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array(types.iter().map(|&t| Value::I32(t)).collect()),
        ),
        ("tokenizer.ggml.merges", Value::Array(merges)),
        ("tokenizer.ggml.eos_token_id", Value::U32(eos_id)),
        ("tokenizer.ggml.padding_token_id", Value::U32(pad_id)),
        ("tokenizer.ggml.bos_token_id", Value::U32(pad_id)),
        ("tokenizer.chat_template", Value::String(template)),
    ];
    let files = super::safetensors_io::WeightFiles::open_folder(dir)?;
    let mut names: Vec<String> = files.names().cloned().collect();
    names.sort();
    let mut qts = Vec::new();
    for n in &names {
        let t = files.load(n, DType::F32, &Device::Cpu)?;
        let g = gguf_name(n).with_context(|| format!("no GGUF name for {n}"))?;
        let q = if t.rank() == 2 && t.dim(1)? % dtype.block_size() == 0 {
            QTensor::quantize(&t, dtype)?
        } else {
            QTensor::quantize(&t, GgmlDType::F32)?
        };
        qts.push((g, q));
    }
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = qts.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut buf = std::io::Cursor::new(Vec::new());
    candle_core::quantized::gguf_file::write(&mut buf, &meta_refs, &t_refs)?;
    crate::model::write_file_atomic(out, &buf.into_inner())
}
