//! GGUF files of architecture `qwen2`: config from metadata, weights (dequantized to f32 for
//! the exact path, or kept quantized for Candle's quantized matmul), and the tokenizer and
//! chat template from the `tokenizer.*` metadata.

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};
use serde_json::json;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::config::{Qwen2Config, Unsupported, ARCHITECTURE};
use super::qwen2::{check_shape, LinearWeight, WeightSource};

/// An opened GGUF file, its header checked against the file size.
pub struct GgufFile {
    pub path: PathBuf,
    pub content: Content,
    file: Mutex<File>,
}

/// The Qwen2 pre-tokenizer's split pattern.
pub const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path)
            .with_context(|| format!("{}: cannot open GGUF file", path.display()))?;
        let len = file.seek(SeekFrom::End(0))?;
        file.seek(SeekFrom::Start(0))?;
        let content = super::gguf_header::read_header(&mut file, len)
            .map_err(|e| anyhow::anyhow!("{}: not a readable GGUF file: {e:#}", path.display()))?;
        let me = Self {
            path: path.to_path_buf(),
            content,
            file: Mutex::new(file),
        };
        let Some(arch) = me.meta_str("general.architecture") else {
            bail!(
                "{}: GGUF metadata lacks a string `general.architecture`",
                path.display()
            );
        };
        if arch != "qwen2" {
            return Err(Unsupported(format!(
                "{}: GGUF architecture `{arch}` is not supported; fraudlab runs `qwen2` ({ARCHITECTURE})",
                path.display()
            ))
            .into());
        }
        Ok(me)
    }

    pub fn meta(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }
    pub fn meta_str(&self, key: &str) -> Option<String> {
        self.meta(key).and_then(|v| v.to_string().ok()).cloned()
    }
    fn meta_u64(&self, key: &str) -> Option<u64> {
        let v = self.meta(key)?;
        v.to_u64()
            .ok()
            .or_else(|| v.to_u32().ok().map(u64::from))
            .or_else(|| v.to_i32().ok().and_then(|x| u64::try_from(x).ok()))
            .or_else(|| v.to_i64().ok().and_then(|x| u64::try_from(x).ok()))
    }
    fn meta_f64(&self, key: &str) -> Option<f64> {
        let v = self.meta(key)?;
        v.to_f32().ok().map(f64::from).or_else(|| v.to_f64().ok())
    }
    fn need_u64(&self, key: &str) -> Result<usize> {
        self.meta_u64(key).map(|x| x as usize).with_context(|| {
            format!(
                "{}: GGUF metadata lacks `{key}` (a non-negative integer)",
                self.path.display()
            )
        })
    }

    pub fn config(&self) -> Result<Qwen2Config> {
        let heads = self.need_u64("qwen2.attention.head_count")?;
        let vocab = match self
            .meta("tokenizer.ggml.tokens")
            .and_then(|v| v.to_vec().ok())
        {
            Some(t) => t.len(),
            None => self.tensor_shape("token_embd.weight")?[0],
        };
        let tied = !self.content.tensor_infos.contains_key("output.weight");
        let mut cfg = Qwen2Config::tiny(vocab);
        cfg.hidden_size = self.need_u64("qwen2.embedding_length")?;
        cfg.intermediate_size = self.need_u64("qwen2.feed_forward_length")?;
        cfg.num_hidden_layers = self.need_u64("qwen2.block_count")?;
        cfg.num_attention_heads = heads;
        cfg.num_key_value_heads = Some(
            self.meta_u64("qwen2.attention.head_count_kv")
                .map(|x| x as usize)
                .unwrap_or(heads),
        );
        cfg.max_position_embeddings = self
            .meta_u64("qwen2.context_length")
            .map(|x| x as usize)
            .unwrap_or(32768);
        cfg.rms_norm_eps = self
            .meta_f64("qwen2.attention.layer_norm_rms_epsilon")
            .unwrap_or(1e-6);
        cfg.rope_theta = self.meta_f64("qwen2.rope.freq_base").unwrap_or(1_000_000.0);
        cfg.tie_word_embeddings = tied;
        cfg.bos_token_id = self
            .meta_u64("tokenizer.ggml.bos_token_id")
            .map(|x| json!(x));
        cfg.eos_token_id = self
            .meta_u64("tokenizer.ggml.eos_token_id")
            .map(|x| json!(x));
        cfg.validate()
            .with_context(|| format!("{}: inconsistent GGUF metadata", self.path.display()))?;
        Ok(cfg)
    }

    pub fn tensor_shape(&self, gguf_name: &str) -> Result<Vec<usize>> {
        Ok(self
            .content
            .tensor_infos
            .get(gguf_name)
            .with_context(|| format!("{}: no tensor `{gguf_name}`", self.path.display()))?
            .shape
            .dims()
            .to_vec())
    }

    pub fn qtensor(&self, gguf_name: &str) -> Result<QTensor> {
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        self.content
            .tensor(&mut *f, gguf_name, &Device::Cpu)
            .map_err(|e| anyhow::anyhow!("{}: tensor `{gguf_name}`: {e}", self.path.display()))
    }

    /// Parameter count from the tensor shapes.
    pub fn parameter_count(&self) -> u64 {
        self.content
            .tensor_infos
            .values()
            .map(|i| i.shape.elem_count() as u64)
            .sum()
    }

    /// The dominant quantization type, e.g. "Q5_0".
    pub fn quant_summary(&self) -> String {
        let mut counts: HashMap<String, u64> = HashMap::new();
        for i in self.content.tensor_infos.values() {
            *counts.entry(format!("{:?}", i.ggml_dtype)).or_default() +=
                i.shape.elem_count() as u64;
        }
        counts
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(k, _)| k)
            .unwrap_or_default()
    }

    /// The file's type as llama.cpp names it, from `general.file_type` ("Q4_K_M"); without
    /// that key (or with a value llama.cpp does not name), the type most weights have.
    pub fn file_type(&self) -> String {
        self.meta_u64("general.file_type")
            .and_then(|t| u32::try_from(t).ok())
            .and_then(super::gguf_format::file_type_name)
            .map(String::from)
            .unwrap_or_else(|| self.quant_summary())
    }

    pub fn chat_template(&self) -> Option<String> {
        self.meta_str("tokenizer.chat_template")
    }

    /// A `tokenizer.json` (Hugging Face `tokenizers` format) built from the GGUF metadata.
    pub fn tokenizer_json(&self) -> Result<serde_json::Value> {
        let p = self.path.display();
        let model = self.meta_str("tokenizer.ggml.model").unwrap_or_default();
        if model != "gpt2" {
            bail!(
                "{p}: tokenizer model `{model}` is not supported (expected byte-level BPE `gpt2`)"
            );
        }
        let strings = |key: &str| -> Result<Vec<String>> {
            let arr = self
                .meta(key)
                .with_context(|| format!("{p}: GGUF metadata lacks `{key}`"))?
                .to_vec()
                .map_err(|_| anyhow::anyhow!("{p}: GGUF metadata `{key}` is not an array"))?;
            arr.iter()
                .enumerate()
                .map(|(i, v)| {
                    v.to_string().cloned().map_err(|_| {
                        anyhow::anyhow!("{p}: GGUF metadata `{key}`[{i}] is not a string")
                    })
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let types: Vec<i64> = match self.meta("tokenizer.ggml.token_type") {
            None => vec![1; tokens.len()],
            Some(v) => v
                .to_vec()
                .map_err(|_| {
                    anyhow::anyhow!("{p}: GGUF metadata `tokenizer.ggml.token_type` is not an array")
                })?
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.to_i32()
                        .map(i64::from)
                        .or_else(|_| v.to_u32().map(i64::from))
                        .map_err(|_| {
                            anyhow::anyhow!(
                                "{p}: GGUF metadata `tokenizer.ggml.token_type`[{i}] is not an integer"
                            )
                        })
                })
                .collect::<Result<_>>()?,
        };
        let merges = strings("tokenizer.ggml.merges")?;
        let pre = self
            .meta_str("tokenizer.ggml.pre")
            .unwrap_or_else(|| "qwen2".into());
        if pre != "qwen2" {
            bail!("{p}: pre-tokenizer `{pre}` is not supported (expected `qwen2`)");
        }
        Ok(build_tokenizer_json(&tokens, &types, &merges))
    }

    /// Special token strings by role (eos, bos, pad), from the metadata ids.
    pub fn special_token(&self, role: &str) -> Option<String> {
        let id = self.meta_u64(&format!("tokenizer.ggml.{role}_token_id"))? as usize;
        let toks = self.meta("tokenizer.ggml.tokens")?.to_vec().ok()?;
        toks.get(id)?.to_string().ok().cloned()
    }
}

/// Builds a byte-level BPE `tokenizer.json` of the Qwen2 kind. Tokens of GGUF type 3
/// (control) or 4 (user-defined) become added tokens; control tokens are special.
pub fn build_tokenizer_json(
    tokens: &[String],
    types: &[i64],
    merges: &[String],
) -> serde_json::Value {
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        let ty = types.get(id).copied().unwrap_or(1);
        // Added tokens stay in the model vocabulary too: `tokenizers` gives an added token
        // missing from it a fresh id past the end instead of the one in the file.
        if vocab.contains_key(tok) {
            continue; // a repeated token keeps its first id
        }
        vocab.insert(tok.clone(), json!(id));
        if ty == 3 || ty == 4 {
            added.push(json!({
                "id": id, "content": tok, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": ty == 3
            }));
        }
    }
    let bl = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false});
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": false},
            bl.clone()
        ]},
        "post_processor": bl.clone(),
        "decoder": bl,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": "", "end_of_word_suffix": "",
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges
        }
    })
}

/// GGUF tensor name of a Hugging Face Qwen2 tensor name.
pub fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.into());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (i, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let g = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        _ => return None,
    };
    Some(format!("blk.{i}.{g}.{kind}"))
}

/// A tensor's f32 values: matrices over the thread pool, the rest by Candle.
fn dequantize(q: &QTensor) -> Result<Tensor> {
    if q.shape().rank() == 2 {
        if let Some(t) = crate::model::kernels::quant::dequantize(q)? {
            return Ok(t);
        }
    }
    Ok(q.dequantize(&Device::Cpu)?)
}

/// Weights from a GGUF file: dense tensors dequantized to `dtype`; linear weights either
/// dequantized too (exact path) or kept quantized.
pub struct GgufSource {
    pub gguf: Arc<GgufFile>,
    pub quantized: bool,
    pub dtype: DType,
}

impl GgufSource {
    fn read(&self, hf: &str, shape: &[usize]) -> Result<QTensor> {
        let g = gguf_name(hf).with_context(|| format!("no GGUF name for `{hf}`"))?;
        let got = self.gguf.tensor_shape(&g)?;
        check_shape(&g, &got, shape, &self.gguf.path.display().to_string())?;
        self.gguf.qtensor(&g)
    }
}

impl WeightSource for GgufSource {
    fn dense(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let q = self.read(name, shape)?;
        Ok(dequantize(&q)?.to_dtype(self.dtype)?)
    }
    fn linear(&self, name: &str, shape: &[usize]) -> Result<LinearWeight> {
        let q = self.read(name, shape)?;
        if self.quantized && !matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
        {
            Ok(LinearWeight::Quant(QMatMul::from_qtensor(q)?))
        } else {
            Ok(LinearWeight::Dense(dequantize(&q)?.to_dtype(self.dtype)?))
        }
    }
    fn has(&self, name: &str) -> bool {
        gguf_name(name).is_some_and(|g| self.gguf.content.tensor_infos.contains_key(&g))
    }
    fn describe(&self) -> String {
        self.gguf.path.display().to_string()
    }
}
