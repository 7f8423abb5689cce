//! Writing a model as a standard Hugging Face folder: `fraudlab convert` (GGUF to HF),
//! `fraudlab merge` (base + LoRA) and full fine-tuning output.

use anyhow::{Context, Result};
use candle_core::DType;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;

use super::gguf::{GgufFile, GgufSource};
use super::loader::ModelLocation;
use super::qwen2::Qwen2;
use super::safetensors_io::save_atomic;
use super::tiny::tokenizer_config_json;
use super::tokenizer::CHATML_TEMPLATE;
use super::write_file_atomic;

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    write_file_atomic(path, serde_json::to_string_pretty(v)?.as_bytes())
}

/// Tokenizer files for a GGUF model, built from its metadata.
fn write_gguf_tokenizer(g: &GgufFile, out: &Path, max_len: usize) -> Result<()> {
    let tok_json = g.tokenizer_json()?;
    write_file_atomic(
        &out.join("tokenizer.json"),
        serde_json::to_string(&tok_json)?.as_bytes(),
    )?;
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
    let eos = g
        .special_token("eos")
        .unwrap_or_else(|| "<|endoftext|>".into());
    let pad = g
        .special_token("padding")
        .unwrap_or_else(|| "<|endoftext|>".into());
    let template = g.chat_template().unwrap_or_else(|| CHATML_TEMPLATE.into());
    write_json(
        &out.join("tokenizer_config.json"),
        &tokenizer_config_json(&added, &template, &eos, &pad, max_len),
    )?;
    let id = |t: &str| added.iter().find(|(_, c, _)| c == t).map(|(i, _, _)| *i);
    write_json(
        &out.join("generation_config.json"),
        &json!({"bos_token_id": id("<|endoftext|>"), "eos_token_id": id(&eos), "pad_token_id": id(&pad)}),
    )
}

/// Writes `model` (its dense weights, LoRA not included: merge first) as an HF folder, with
/// the tokenizer files of the model it was loaded from.
pub fn write_hf_folder(model: &Qwen2, from: &ModelLocation, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let weights = model.named_weights()?;
    save_atomic(&weights, &out.join("model.safetensors"))?;
    let mut cfg = model.cfg.clone();
    cfg.torch_dtype = Some(
        if model.weight_dtype == DType::BF16 {
            "bfloat16"
        } else {
            "float32"
        }
        .into(),
    );
    cfg.tie_word_embeddings = model.tied;
    let mut cfg_json = serde_json::to_value(&cfg)?;
    cfg_json["use_sliding_window"] = json!(false);
    if let Some(o) = cfg_json.as_object_mut() {
        o.remove("rope_parameters");
        o.remove("dtype");
    }
    write_json(&out.join("config.json"), &cfg_json)?;
    match from {
        ModelLocation::Folder(d) => {
            for f in [
                "tokenizer.json",
                "tokenizer_config.json",
                "generation_config.json",
                "chat_template.jinja",
                "vocab.json",
                "merges.txt",
            ] {
                let src = d.join(f);
                if src.exists() {
                    let bytes = std::fs::read(&src)
                        .with_context(|| format!("{}: cannot read", src.display()))?;
                    write_file_atomic(&out.join(f), &bytes)?;
                }
            }
        }
        ModelLocation::Gguf(f) => {
            write_gguf_tokenizer(&GgufFile::open(f)?, out, cfg.max_position_embeddings)?
        }
    }
    Ok(())
}

/// `fraudlab convert`: config.json, model.safetensors (f32), tokenizer.json,
/// tokenizer_config.json (with the chat template), generation_config.json.
pub fn gguf_to_hf(gguf_path: &Path, out: &Path) -> Result<String> {
    let g = Arc::new(GgufFile::open(gguf_path)?);
    let cfg = g.config()?;
    let src = GgufSource {
        gguf: g.clone(),
        quantized: false,
        dtype: DType::F32,
    };
    let model = Qwen2::load(&cfg, &src, DType::F32, &candle_core::Device::Cpu)?;
    write_hf_folder(&model, &ModelLocation::Gguf(gguf_path.to_path_buf()), out)?;
    Ok(format!(
        "converted {} ({} layers, {} parameters) to {}",
        gguf_path.display(),
        cfg.num_hidden_layers,
        cfg.parameter_count(),
        out.display()
    ))
}
