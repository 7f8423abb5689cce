//! `fraudlab convert`: a GGUF model written as a standard Hugging Face folder.

use anyhow::{Context, Result};
use candle_core::DType;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;

use super::gguf::{GgufFile, GgufSource};
use super::qwen2::Qwen2;
use super::safetensors_io::save_atomic;
use super::tiny::tokenizer_config_json;
use super::tokenizer::CHATML_TEMPLATE;
use super::write_file_atomic;

/// Writes config.json, model.safetensors (f32), tokenizer.json, tokenizer_config.json (with
/// the chat template) and generation_config.json. Returns a one-line summary.
pub fn gguf_to_hf(gguf_path: &Path, out: &Path) -> Result<String> {
    let g = Arc::new(GgufFile::open(gguf_path)?);
    let mut cfg = g.config()?;
    cfg.torch_dtype = Some("float32".into());
    let tok_json = g.tokenizer_json()?;
    let src = GgufSource { gguf: g.clone(), quantized: false, dtype: DType::F32 };
    let model = Qwen2::load(&cfg, &src, DType::F32, &candle_core::Device::Cpu)?;
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let weights = model.named_weights()?;
    save_atomic(&weights, &out.join("model.safetensors"))?;
    let mut cfg_json = serde_json::to_value(&cfg)?;
    cfg_json["use_sliding_window"] = json!(false);
    write_file_atomic(&out.join("config.json"), serde_json::to_string_pretty(&cfg_json)?.as_bytes())?;
    write_file_atomic(&out.join("tokenizer.json"), serde_json::to_string(&tok_json)?.as_bytes())?;
    let added: Vec<(u32, String, bool)> = tok_json["added_tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                a["id"].as_u64().unwrap_or(0) as u32,
                a["content"].as_str().unwrap_or_default().to_string(),
                a["special"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    let eos = g.special_token("eos").unwrap_or_else(|| "<|endoftext|>".into());
    let pad = g.special_token("padding").unwrap_or_else(|| "<|endoftext|>".into());
    let template = g.chat_template().unwrap_or_else(|| CHATML_TEMPLATE.into());
    let tc = tokenizer_config_json(&added, &template, &eos, &pad, cfg.max_position_embeddings);
    write_file_atomic(&out.join("tokenizer_config.json"), serde_json::to_string_pretty(&tc)?.as_bytes())?;
    let id = |t: &str| tok_json["added_tokens"].as_array().and_then(|a| {
        a.iter().find(|x| x["content"] == t).and_then(|x| x["id"].as_u64())
    });
    let gen = json!({
        "bos_token_id": id("<|endoftext|>"),
        "eos_token_id": id(&eos),
        "pad_token_id": id(&pad),
    });
    write_file_atomic(&out.join("generation_config.json"), serde_json::to_string_pretty(&gen)?.as_bytes())?;
    Ok(format!(
        "converted {} ({} layers, {} parameters) to {}",
        gguf_path.display(),
        cfg.num_hidden_layers,
        cfg.parameter_count(),
        out.display()
    ))
}
