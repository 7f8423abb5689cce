//! `config.json` of a Qwen2-family model (Qwen2, Qwen2.5, Qwen1.5: `Qwen2ForCausalLM`).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The fields of a Hugging Face `config.json` the Qwen2 forward needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Qwen2Config {
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub torch_dtype: Option<String>,
    /// Every other field of the file, kept so a converted or merged folder writes it back.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn default_model_type() -> String {
    "qwen2".into()
}
fn default_max_pos() -> usize {
    32768
}
fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10000.0
}

pub const ARCHITECTURE: &str = "Qwen2ForCausalLM";

/// A model of another architecture: readable, but not one fraudlab runs. Discovery lists such
/// models with this reason rather than as broken files.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unsupported(pub String);

impl Qwen2Config {
    /// Reads and validates `config.json`; every error names the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read model config", path.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?;
        let archs: Vec<String> = value
            .get("architectures")
            .and_then(|a| a.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let model_type = value
            .get("model_type")
            .and_then(|m| m.as_str())
            .unwrap_or("");
        let is_qwen2 =
            archs.iter().any(|a| a == ARCHITECTURE) || (archs.is_empty() && model_type == "qwen2");
        if !is_qwen2 {
            let named = if archs.is_empty() {
                format!("model_type `{model_type}`")
            } else {
                format!("architecture {}", archs.join(", "))
            };
            return Err(Unsupported(format!(
                "{}: unsupported {named}; fraudlab runs the Qwen2 family ({ARCHITECTURE}: Qwen2, Qwen2.5, Qwen1.5)",
                path.display()
            ))
            .into());
        }
        check_types(&value).map_err(|why| anyhow::anyhow!("{}: {why}", path.display()))?;
        let mut value = value;
        normalise_rope(&mut value)
            .with_context(|| format!("{}: unsupported rope settings", path.display()))?;
        if value.get("torch_dtype").is_none() {
            if let Some(d) = value.get("dtype").cloned() {
                value["torch_dtype"] = d;
            }
        }
        let cfg: Qwen2Config = serde_json::from_value(value)
            .with_context(|| format!("{}: not a valid Qwen2 config", path.display()))?;
        cfg.validate()
            .with_context(|| format!("{}: inconsistent config", path.display()))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        // Bounds well past the largest Qwen2-family model, so that an absurd value is refused
        // here instead of driving an allocation (layers, rotary tables) that aborts.
        for (name, v, max) in [
            ("vocab_size", self.vocab_size, 1 << 22),
            ("hidden_size", self.hidden_size, 1 << 16),
            ("intermediate_size", self.intermediate_size, 1 << 18),
            ("num_hidden_layers", self.num_hidden_layers, 1 << 10),
            ("num_attention_heads", self.num_attention_heads, 1 << 10),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                1 << 21,
            ),
        ] {
            if v == 0 || v > max {
                bail!("{name} is {v}; it must be between 1 and {max}");
            }
        }
        for (name, v) in [
            ("rope_theta", self.rope_theta),
            ("rms_norm_eps", self.rms_norm_eps),
        ] {
            if !(v.is_finite() && v > 0.0) {
                bail!("{name} is {v}; it must be a positive number");
            }
        }
        if self.rms_norm_eps >= 1.0 {
            bail!("rms_norm_eps is {}; it must be below 1", self.rms_norm_eps);
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            bail!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        let kv = self.kv_heads();
        if kv == 0 || kv > self.num_attention_heads || !self.num_attention_heads.is_multiple_of(kv)
        {
            bail!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {kv}",
                self.num_attention_heads
            );
        }
        if !self.head_dim().is_multiple_of(2) {
            bail!(
                "head dimension {} is odd; rotary embeddings need an even one",
                self.head_dim()
            );
        }
        Ok(())
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The eos ids named in the config (an integer or a list).
    pub fn eos_ids(&self) -> Vec<u32> {
        ids_of(self.eos_token_id.as_ref())
    }

    /// Parameters of the model, counting a separate output projection when untied.
    pub fn parameter_count(&self) -> u64 {
        let h = self.hidden_size as u64;
        let i = self.intermediate_size as u64;
        let v = self.vocab_size as u64;
        let kvd = (self.kv_heads() * self.head_dim()) as u64;
        let attn = (h * h + h) + 2 * (h * kvd + kvd) + h * h;
        let mlp = 3 * h * i;
        let layer = attn + mlp + 2 * h;
        let mut n = v * h + self.num_hidden_layers as u64 * layer + h;
        if !self.tie_word_embeddings {
            n += v * h;
        }
        n
    }

    /// A config for a tiny random model, used by tests and the offline demo model.
    pub fn tiny(vocab_size: usize) -> Self {
        Qwen2Config {
            architectures: vec![ARCHITECTURE.into()],
            model_type: "qwen2".into(),
            vocab_size,
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: Some(2),
            max_position_embeddings: 4096,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            tie_word_embeddings: false,
            bos_token_id: None,
            eos_token_id: None,
            torch_dtype: Some("float32".into()),
            extra: Default::default(),
        }
    }
}

/// The types of the fields the forward reads, checked before deserialising so that a wrong
/// one is reported by name (serde's message does not say which field it was).
fn check_types(v: &serde_json::Value) -> std::result::Result<(), String> {
    use serde_json::Value;
    let shown = |x: &Value| {
        let s = x.to_string();
        match s.char_indices().nth(60) {
            Some((i, _)) => format!("{}…", &s[..i]),
            None => s,
        }
    };
    let sizes = [
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "max_position_embeddings",
    ];
    for k in sizes {
        match v.get(k) {
            None => {}
            Some(Value::Null) if k == "num_key_value_heads" => {}
            Some(x) if x.as_u64().is_some() => {}
            Some(x) => {
                return Err(format!(
                    "`{k}` must be a non-negative integer, not {}",
                    shown(x)
                ))
            }
        }
    }
    for k in ["rms_norm_eps", "rope_theta"] {
        match v.get(k) {
            None | Some(Value::Number(_)) => {}
            Some(x) => return Err(format!("`{k}` must be a number, not {}", shown(x))),
        }
    }
    match v.get("tie_word_embeddings") {
        None | Some(Value::Bool(_)) => {}
        Some(x) => {
            return Err(format!(
                "`tie_word_embeddings` must be true or false, not {}",
                shown(x)
            ))
        }
    }
    match v.get("architectures") {
        None => {}
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {}
        Some(x) => {
            return Err(format!(
                "`architectures` must be a list of names, not {}",
                shown(x)
            ))
        }
    }
    Ok(())
}

/// Newer configs keep `rope_theta` inside `rope_parameters` (or `rope_scaling`): bring it to
/// the top level, and refuse rope scalings this forward does not implement.
fn normalise_rope(v: &mut serde_json::Value) -> Result<()> {
    for key in ["rope_parameters", "rope_scaling"] {
        let Some(rp) = v.get(key).filter(|r| r.is_object()).cloned() else {
            continue;
        };
        let ty = rp
            .get("rope_type")
            .or_else(|| rp.get("type"))
            .and_then(|t| t.as_str())
            .unwrap_or("default");
        if ty != "default" {
            bail!(
                "rope type `{ty}` in `{key}` is not supported (only the default rotary embedding)"
            );
        }
        if v.get("rope_theta").is_none() {
            if let Some(t) = rp.get("rope_theta") {
                v["rope_theta"] = t.clone();
            }
        }
    }
    Ok(())
}

/// Token ids from a JSON integer or list of integers.
pub fn ids_of(v: Option<&serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .into_iter()
            .collect(),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()))
            .collect(),
        _ => vec![],
    }
}

/// "0.5B", "1.5B", "7B"… from a parameter count (embedding included, as model cards name them).
pub fn size_label(params: u64) -> String {
    let b = params as f64 / 1e9;
    let known = [0.5, 1.5, 3.0, 7.0, 14.0, 32.0, 72.0];
    for k in known {
        if (b - k).abs() / k < 0.35 {
            return if k.fract() == 0.0 {
                format!("{}B", k as u64)
            } else {
                format!("{k}B")
            };
        }
    }
    if b >= 1.0 {
        format!("{b:.1}B")
    } else {
        format!("{:.0}M", params as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn sizes() {
        assert_eq!(size_label(630_000_000), "0.5B");
        assert_eq!(size_label(494_000_000), "0.5B");
        assert_eq!(size_label(1_540_000_000), "1.5B");
        assert_eq!(size_label(7_600_000_000), "7B");
        assert_eq!(size_label(40_000), "0M");
    }
    #[test]
    fn qwen25_half_b_count() {
        let mut c = Qwen2Config::tiny(151936);
        c.hidden_size = 896;
        c.intermediate_size = 4864;
        c.num_hidden_layers = 24;
        c.num_attention_heads = 14;
        c.num_key_value_heads = Some(2);
        c.tie_word_embeddings = true;
        // Qwen2.5-0.5B: 494,032,768 parameters.
        assert_eq!(c.parameter_count(), 494_032_768);
    }
}
