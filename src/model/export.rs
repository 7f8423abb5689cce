//! `fraudlab export --format gguf`: a loaded model (its adapter folded in first) as one GGUF
//! file that llama.cpp, and so ollama, load: the `qwen2` keys llama.cpp reads, tensors under
//! the names llama.cpp's own converter gives Qwen2, and the tokenizer (byte-level BPE with
//! the `qwen2` pre-tokenizer), its special ids and the chat template in the metadata.
//!
//! Which tensor gets which encoding follows that converter: 2-D weights (the token embedding
//! included) take the requested type, norms and biases stay f32.

use anyhow::{bail, Context, Result};
use candle_core::DType;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use super::config::{ids_of, Qwen2Config};
use super::gguf::{gguf_name, QWEN2_SPLIT};
use super::gguf_format::{file_type_name, file_type_of, GgufBuilder, MetaValue, TensorType};
use super::qwen2::Qwen2;
use super::tokenizer::TextTokenizer;

/// What `export_gguf` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GgufExport {
    pub path: std::path::PathBuf,
    /// llama.cpp's name of the file type: "F32", "F16", "Q8_0".
    pub file_type: &'static str,
    pub tensors: usize,
    pub bytes: u64,
}

/// The export types `--type` takes.
pub fn parse_type(s: &str) -> Result<TensorType> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "f32" => TensorType::F32,
        "f16" => TensorType::F16,
        "q8_0" => TensorType::Q8_0,
        _ => bail!("--type {s}: use f32, f16 or q8_0"),
    })
}

/// Token types of `tokenizer.ggml.token_type`.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// The tokenizer as GGUF metadata: tokens by id (exactly `n_vocab`, ids the tokenizer lacks
/// filled with `[PADn]`, unused), their types, merges, special ids, chat template.
fn tokenizer_meta(
    tok: &TextTokenizer,
    cfg: &Qwen2Config,
    n_vocab: usize,
) -> Result<Vec<(&'static str, MetaValue)>> {
    let j: serde_json::Value = serde_json::from_str(
        &tok.inner
            .to_string(false)
            .map_err(|e| anyhow::anyhow!("cannot serialise the tokenizer: {e}"))?,
    )?;
    let model = &j["model"];
    if model["type"] != "BPE" || model["byte_fallback"] == true {
        bail!(
            "the tokenizer is not a byte-level BPE (`{}`): llama.cpp's `gpt2` tokenizer could not reproduce it",
            model["type"].as_str().unwrap_or("?")
        );
    }
    // llama.cpp re-implements each pre-tokenizer by name: the split must be Qwen2's.
    let pre = j["pre_tokenizer"].to_string();
    let split = serde_json::to_string(QWEN2_SPLIT)?;
    if !pre.contains(&split) {
        bail!("the tokenizer's pre-tokenizer is not Qwen2's split pattern, so llama.cpp (`tokenizer.ggml.pre = qwen2`) would tokenize differently");
    }
    let mut tokens: Vec<Option<String>> = vec![None; n_vocab];
    let mut types = vec![NORMAL; n_vocab];
    let mut place = |id: u64, text: &str| -> Result<usize> {
        let i = id as usize;
        if i >= n_vocab {
            bail!("token `{text}` has id {id}, past the model's {n_vocab} embeddings");
        }
        tokens[i] = Some(text.to_string());
        Ok(i)
    };
    for (text, id) in model["vocab"].as_object().into_iter().flatten() {
        place(
            id.as_u64().context("a vocabulary id is not a number")?,
            text,
        )?;
    }
    for a in j["added_tokens"].as_array().into_iter().flatten() {
        let text = a["content"].as_str().unwrap_or_default();
        let i = place(a["id"].as_u64().context("an added token has no id")?, text)?;
        // as llama.cpp's converter: special, or looking like `<|…|>`, is a control token
        let looks_special = text.starts_with("<|") && text.ends_with("|>");
        types[i] = if a["special"] == true || looks_special {
            CONTROL
        } else {
            USER_DEFINED
        };
    }
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let pad = format!("[PAD{i}]");
            match t {
                Some(t) if t != pad => t,
                _ => {
                    types[i] = UNUSED;
                    pad
                }
            }
        })
        .collect();
    let merges: Vec<String> = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m {
            serde_json::Value::Array(p) => format!(
                "{} {}",
                p.first().and_then(|x| x.as_str()).unwrap_or_default(),
                p.get(1).and_then(|x| x.as_str()).unwrap_or_default()
            ),
            other => other.as_str().unwrap_or_default().to_string(),
        })
        .collect();
    let id_of = |t: &Option<String>| t.as_deref().and_then(|t| tok.token_id(t));
    let eos = id_of(&tok.eos_token).or_else(|| ids_of(cfg.eos_token_id.as_ref()).first().copied());
    let bos = ids_of(cfg.bos_token_id.as_ref())
        .first()
        .copied()
        .or_else(|| id_of(&tok.bos_token));
    let mut meta = vec![
        ("tokenizer.ggml.model", MetaValue::Str("gpt2".into())),
        ("tokenizer.ggml.pre", MetaValue::Str("qwen2".into())),
        ("tokenizer.ggml.tokens", MetaValue::Strs(tokens)),
        ("tokenizer.ggml.token_type", MetaValue::I32s(types)),
        ("tokenizer.ggml.merges", MetaValue::Strs(merges)),
    ];
    for (key, id) in [
        ("tokenizer.ggml.eos_token_id", eos),
        ("tokenizer.ggml.padding_token_id", tok.pad_id),
        ("tokenizer.ggml.bos_token_id", bos),
    ] {
        if let Some(id) = id.filter(|&i| (i as usize) < n_vocab) {
            meta.push((key, MetaValue::U32(id)));
        }
    }
    // Qwen2 prompts start with no bos token; fraudlab never adds one either
    meta.push(("tokenizer.ggml.add_bos_token", MetaValue::Bool(false)));
    if let Some(t) = &tok.chat_template {
        meta.push(("tokenizer.chat_template", MetaValue::Str(t.clone())));
    }
    Ok(meta)
}

/// Bytes free to an unprivileged writer on the file system holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a NUL-terminated path and `s` a plain struct statvfs fills in.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some(s.f_bavail as u64 * s.f_frsize as u64)
}

/// Writes `model` (dense weights; fold an adapter in with `merge_lora` first) and its
/// tokenizer as a GGUF file at `out`, atomically: `out` is the complete new file or what it
/// was before. `cancel` stops between tensors (the partial file is removed).
pub fn export_gguf(
    model: &Qwen2,
    tok: &TextTokenizer,
    ty: TensorType,
    name: &str,
    out: &Path,
    cancel: &AtomicBool,
) -> Result<GgufExport> {
    if model
        .clone()
        .linears_mut()
        .iter()
        .any(|(_, l)| l.lora.is_some())
    {
        bail!("the model has a LoRA adapter attached: merge it into the weights before export");
    }
    let cfg = &model.cfg;
    let weights = model.named_weights()?;
    let n_vocab = weights[0].1.dim(0)?;
    let mut g = GgufBuilder::new();
    let s = |x: &str| MetaValue::Str(x.into());
    let u = |x: usize| MetaValue::U32(x as u32);
    g.meta("general.architecture", s("qwen2"));
    g.meta("general.type", s("model"));
    g.meta("general.name", s(name));
    g.meta("general.file_type", MetaValue::U32(file_type_of(ty)));
    g.meta("general.quantization_version", MetaValue::U32(2));
    g.meta("qwen2.block_count", u(cfg.num_hidden_layers));
    g.meta("qwen2.context_length", u(cfg.max_position_embeddings));
    g.meta("qwen2.embedding_length", u(cfg.hidden_size));
    g.meta("qwen2.feed_forward_length", u(cfg.intermediate_size));
    g.meta("qwen2.attention.head_count", u(cfg.num_attention_heads));
    g.meta("qwen2.attention.head_count_kv", u(cfg.kv_heads()));
    g.meta(
        "qwen2.rope.freq_base",
        MetaValue::F32(cfg.rope_theta as f32),
    );
    g.meta(
        "qwen2.attention.layer_norm_rms_epsilon",
        MetaValue::F32(cfg.rms_norm_eps as f32),
    );
    for (k, v) in tokenizer_meta(tok, cfg, n_vocab)? {
        g.meta(k, v);
    }
    for (hf, t) in &weights {
        let gname = gguf_name(hf).with_context(|| format!("no GGUF name for tensor `{hf}`"))?;
        let t_ty = if t.rank() == 2 { ty } else { TensorType::F32 };
        g.tensor(&gname, t.dims(), t_ty)
            .with_context(|| format!("cannot export as {}", ty.name()))?;
    }
    let size = g.file_size();
    let dir = crate::data::fsutil::parent_dir(out);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("{}: cannot create the folder", dir.display()))?;
    if let Some(free) = free_bytes(&dir) {
        if free < size {
            bail!(
                "{}: not enough disk space: the file needs {size} bytes, {free} are free",
                out.display()
            );
        }
    }
    crate::data::fsutil::write_atomic_with(out, |w| {
        g.write(w, &mut |i| {
            if cancel.load(Ordering::Relaxed) {
                bail!("export stopped");
            }
            Ok(weights[i]
                .1
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?)
        })
    })?;
    Ok(GgufExport {
        path: out.to_path_buf(),
        file_type: file_type_name(file_type_of(ty)).unwrap_or("?"),
        tensors: g.tensors().len(),
        bytes: size,
    })
}
