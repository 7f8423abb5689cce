//! LoRA adapters in the PEFT layout: `adapter_config.json` + `adapter_model.safetensors` with
//! keys such as `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::path::Path;

use super::qwen2::{Lora, Qwen2, PROJECTIONS};
use super::safetensors_io::{save_atomic, SafetensorsFile};

/// LoRA settings, named as PEFT names them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSpec {
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f32,
    pub target_modules: Vec<String>,
    #[serde(default)]
    pub use_rslora: bool,
    /// Decoder layers that get LoRA (PEFT's `layers_to_transform`); all when `None`. Below
    /// the lowest one nothing is trained, so training neither back-propagates there nor,
    /// with a frozen-prefix cache, recomputes those layers after the first pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers_to_transform: Option<Vec<usize>>,
}

impl Default for LoraSpec {
    /// The recipe of the fraud-dialogue notebooks: r 8, alpha 16, dropout 0.05, 7 projections.
    fn default() -> Self {
        Self {
            r: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.05,
            target_modules: PROJECTIONS.iter().map(|s| s.to_string()).collect(),
            use_rslora: false,
            layers_to_transform: None,
        }
    }
}

/// A layer list as `--layers` takes it: `12-23`, `0,2,4` or a mix (`0-3,20-23`); sorted,
/// without repeats.
pub fn parse_layers(s: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |t: &str| -> Result<usize> {
            t.trim()
                .parse()
                .with_context(|| format!("--layers `{s}`: `{t}` is not a layer number"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    bail!("--layers `{s}`: range {a}-{b} runs backwards");
                }
                out.extend(a..=b);
            }
            None => out.push(num(part)?),
        }
    }
    if out.is_empty() {
        bail!("--layers `{s}`: no layer given");
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// A layer list written back compactly (`12-23`, `0-3,20-23`).
pub fn format_layers(layers: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < layers.len() {
        let mut j = i;
        while j + 1 < layers.len() && layers[j + 1] == layers[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            layers[i].to_string()
        } else {
            format!("{}-{}", layers[i], layers[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

/// The decoder layer a PEFT module name belongs to (`model.layers.7.mlp.up_proj` → 7).
pub fn layer_of(module: &str) -> Option<usize> {
    let rest = module.split("layers.").nth(1)?;
    rest.split('.').next()?.parse().ok()
}

impl LoraSpec {
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }
    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            bail!("LoRA rank r must be positive");
        }
        for t in &self.target_modules {
            if !PROJECTIONS.contains(&t.as_str()) {
                bail!(
                    "target module `{t}` is not a Qwen2 projection (use {})",
                    PROJECTIONS.join(",")
                );
            }
        }
        if self.target_modules.is_empty() {
            bail!("no LoRA target modules");
        }
        Ok(())
    }
    fn targets(&self, module_name: &str) -> bool {
        let last = module_name.rsplit('.').next().unwrap_or("");
        let layer_ok = match (&self.layers_to_transform, layer_of(module_name)) {
            (Some(ls), Some(l)) => ls.contains(&l),
            _ => true,
        };
        layer_ok && self.target_modules.iter().any(|t| t == last)
    }

    /// The lowest adapted layer (0 when every layer is).
    pub fn lowest_layer(&self) -> usize {
        self.layers_to_transform
            .as_ref()
            .and_then(|l| l.iter().min().copied())
            .unwrap_or(0)
    }
}

/// The PEFT key of a LoRA matrix.
pub fn peft_key(module: &str, which: char) -> String {
    format!("base_model.model.{module}.lora_{which}.weight")
}

/// A trainable LoRA matrix pair.
pub struct LoraVars {
    pub module: String,
    pub a: Var,
    pub b: Var,
}

/// Deterministic uniform values in [-bound, bound] (SplitMix64).
fn uniform(seed: u64, n: usize, bound: f64) -> Vec<f32> {
    let mut s = seed ^ 0xD1B54A32D192ED03;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E3779B97F4A7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
            let u = ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64;
            ((2.0 * u - 1.0) * bound) as f32
        })
        .collect()
}

/// Attaches fresh trainable LoRA matrices to the targeted layers, as PEFT initialises them:
/// A Kaiming-uniform (a = sqrt 5, i.e. U(-1/sqrt(in), 1/sqrt(in))), B zeros.
pub fn attach_lora(model: &mut Qwen2, spec: &LoraSpec, seed: u64) -> Result<Vec<LoraVars>> {
    spec.validate()?;
    let n = model.layers.len();
    if let Some(bad) = spec.layers_to_transform.iter().flatten().find(|&&l| l >= n) {
        bail!(
            "LoRA layer {bad} does not exist: the model has layers 0-{}",
            n - 1
        );
    }
    let dev = model.device.clone();
    let dtype = super::qwen2::compute_dtype(model.dtype);
    let mut out = Vec::new();
    for (k, (name, lin)) in model.linears_mut().into_iter().enumerate() {
        if !spec.targets(&name) {
            continue;
        }
        let bound = 1.0 / (lin.in_features as f64).sqrt();
        let a = Tensor::from_vec(
            uniform(
                seed.wrapping_mul(1_000_003).wrapping_add(k as u64),
                spec.r * lin.in_features,
                bound,
            ),
            (spec.r, lin.in_features),
            &dev,
        )?
        .to_dtype(dtype)?;
        let a = Var::from_tensor(&a)?;
        let b = Var::zeros((lin.out_features, spec.r), dtype, &dev)?;
        lin.lora = Some(Lora {
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
            scale: spec.scale(),
            dropout: spec.lora_dropout,
            id: k as u64,
        });
        out.push(LoraVars { module: name, a, b });
    }
    if out.is_empty() {
        bail!("no layer matched the LoRA target modules");
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PeftConfig {
    #[serde(default)]
    peft_type: Option<String>,
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    lora_dropout: f32,
    #[serde(default)]
    target_modules: serde_json::Value,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    bias: Option<String>,
    /// null, one layer, or a list
    #[serde(default)]
    layers_to_transform: serde_json::Value,
}

/// Writes an adapter in the PEFT layout.
pub fn save_adapter(
    dir: &Path,
    spec: &LoraSpec,
    vars: &[LoraVars],
    base_model: &str,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let mut tensors = Vec::new();
    for v in vars {
        tensors.push((
            peft_key(&v.module, 'A'),
            v.a.as_tensor().to_dtype(DType::F32)?.contiguous()?,
        ));
        tensors.push((
            peft_key(&v.module, 'B'),
            v.b.as_tensor().to_dtype(DType::F32)?.contiguous()?,
        ));
    }
    save_atomic(&tensors, &dir.join("adapter_model.safetensors"))?;
    let cfg = serde_json::json!({
        "alpha_pattern": {},
        "auto_mapping": null,
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_pattern": null,
        "layers_to_transform": spec.layers_to_transform,
        "lora_alpha": spec.lora_alpha,
        "lora_dropout": spec.lora_dropout,
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": spec.r,
        "rank_pattern": {},
        "revision": null,
        "target_modules": spec.target_modules,
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": spec.use_rslora,
    });
    crate::data::write_atomic(
        &dir.join("adapter_config.json"),
        serde_json::to_string_pretty(&cfg)?.as_bytes(),
    )
}

/// Reads a PEFT LoRA adapter (ours or one written by Python `peft`) and attaches it to the
/// model for inference. Returns its spec.
pub fn load_adapter(model: &mut Qwen2, dir: &Path) -> Result<LoraSpec> {
    let cp = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&cp)
        .with_context(|| format!("{}: cannot read adapter config", cp.display()))?;
    let pc: PeftConfig = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a PEFT adapter config", cp.display()))?;
    if pc.peft_type.as_deref().is_some_and(|t| t != "LORA") {
        bail!(
            "{}: adapter type {:?} is not supported (LoRA only)",
            cp.display(),
            pc.peft_type
        );
    }
    if pc.use_dora {
        bail!("{}: DoRA adapters are not supported", cp.display());
    }
    if pc.fan_in_fan_out {
        bail!(
            "{}: fan_in_fan_out adapters are not supported",
            cp.display()
        );
    }
    let wp = dir.join("adapter_model.safetensors");
    if !wp.exists() {
        let bin = dir.join("adapter_model.bin");
        if bin.exists() {
            bail!(
                "{}: pickled adapters are not supported; save with safe_serialization=True",
                bin.display()
            );
        }
        bail!("{}: missing adapter weights", wp.display());
    }
    if pc.r == 0 || pc.r > 1 << 16 {
        bail!(
            "{}: LoRA rank r is {}; it must be between 1 and 65536",
            cp.display(),
            pc.r
        );
    }
    if !pc.lora_alpha.is_finite() {
        bail!("{}: lora_alpha must be a finite number", cp.display());
    }
    let target_modules = match &pc.target_modules {
        serde_json::Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map(String::from))
            .collect::<Option<Vec<_>>>()
            .with_context(|| format!("{}: target_modules must be a list of names", cp.display()))?,
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Null => vec![],
        _ => bail!(
            "{}: target_modules must be a list of names or a string",
            cp.display()
        ),
    };
    let f = SafetensorsFile::open(&wp)?;
    let spec = LoraSpec {
        r: pc.r,
        lora_alpha: pc.lora_alpha,
        lora_dropout: pc.lora_dropout,
        target_modules,
        use_rslora: pc.use_rslora,
        layers_to_transform: match &pc.layers_to_transform {
            serde_json::Value::Null => None,
            serde_json::Value::Number(n) => Some(vec![n
                .as_u64()
                .with_context(|| format!("{}: layers_to_transform {n}", cp.display()))?
                as usize]),
            serde_json::Value::Array(a) => Some(
                a.iter()
                    .map(|x| x.as_u64().map(|v| v as usize))
                    .collect::<Option<Vec<_>>>()
                    .with_context(|| {
                        format!(
                            "{}: layers_to_transform must hold layer numbers",
                            cp.display()
                        )
                    })?,
            ),
            v => bail!(
                "{}: layers_to_transform {v} is not a layer list",
                cp.display()
            ),
        },
    };
    let dev: Device = model.device.clone();
    let mut found = 0;
    for (k, (name, lin)) in model.linears_mut().into_iter().enumerate() {
        // PEFT may save with or without the adapter name in the key.
        let (ka, kb) = (peft_key(&name, 'A'), peft_key(&name, 'B'));
        let (ka, kb) = if f.entries.contains_key(&ka) {
            (ka, kb)
        } else {
            let alt = |w: char| format!("base_model.model.{name}.lora_{w}.default.weight");
            (alt('A'), alt('B'))
        };
        if !f.entries.contains_key(&ka) {
            continue;
        }
        let a = f.load(&ka, DType::F32, &dev)?;
        let b = f
            .load(&kb, DType::F32, &dev)
            .with_context(|| format!("{}: `{ka}` has no matching B", wp.display()))?;
        let two = |t: &Tensor, k: &str| {
            t.dims2()
                .with_context(|| format!("{}: `{k}` is not a matrix", wp.display()))
        };
        let (r, inp) = two(&a, &ka)?;
        let (out, r2) = two(&b, &kb)?;
        if r != pc.r || r2 != pc.r || inp != lin.in_features || out != lin.out_features {
            bail!(
                "{}: `{name}` LoRA shapes A {:?} B {:?} do not fit the layer ({} -> {}, r {})",
                wp.display(),
                a.dims(),
                b.dims(),
                lin.in_features,
                lin.out_features,
                pc.r
            );
        }
        // LoRA runs in the activations' dtype (f32, also over bf16 base weights).
        let dt = super::qwen2::compute_dtype(lin.dense_dtype().unwrap_or(DType::F32));
        lin.lora = Some(Lora {
            a: a.to_dtype(dt)?,
            b: b.to_dtype(dt)?,
            scale: spec.scale(),
            dropout: 0.0,
            id: k as u64,
        });
        found += 1;
    }
    if found == 0 {
        bail!(
            "{}: no LoRA weights match this model's layers",
            wp.display()
        );
    }
    Ok(spec)
}

/// Folds every attached LoRA into its base weight (`W + scale · B A`) and removes it.
pub fn merge_lora(model: &mut Qwen2) -> Result<()> {
    for (_, lin) in model.linears_mut() {
        if let Some(l) = lin.lora.take() {
            let w = lin.dense_weight()?.to_dtype(DType::F32)?;
            let delta =
                (l.b.to_dtype(DType::F32)?
                    .matmul(&l.a.to_dtype(DType::F32)?)?
                    * l.scale)?;
            let merged = (w + delta)?;
            let dt = lin.dense_dtype().unwrap_or(DType::F32);
            lin.weight = super::qwen2::LinearWeight::Dense(merged.to_dtype(dt)?);
        }
    }
    Ok(())
}

/// File beside `adapter_config.json` with what fraudlab needs to use an adapter as a
/// classifier (peft ignores it).
pub const META_FILE: &str = "fraudlab.json";

/// Streaming decision rule: alert once `consecutive` turns in a row score at or above
/// `threshold`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StreamRule {
    pub threshold: f64,
    pub consecutive: usize,
}

/// `fraudlab.json`: how the adapter's training prompts were built and the thresholds chosen
/// for it, so evaluation, the monitor and the server build the same prompt and decide alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterMeta {
    pub instruction: String,
    pub system: String,
    #[serde(default)]
    pub anonymize_speakers: bool,
    /// Whole-dialogue decision threshold (F1-best on validation), if one was chosen.
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Thresholds reaching a recall on validation, keyed by the recall ("0.95").
    #[serde(default)]
    pub threshold_for_recall: std::collections::BTreeMap<String, f64>,
    /// Streaming rule (per-turn threshold and consecutive turns), if calibrated.
    #[serde(default)]
    pub stream: Option<StreamRule>,
}

impl Default for AdapterMeta {
    fn default() -> Self {
        Self {
            instruction: crate::data::DEFAULT_INSTRUCTION.to_string(),
            system: crate::data::DEFAULT_SYSTEM.to_string(),
            anonymize_speakers: false,
            threshold: None,
            threshold_for_recall: Default::default(),
            stream: None,
        }
    }
}

impl AdapterMeta {
    /// The metadata of the adapter folder `dir`: `None` when it has no `fraudlab.json`.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let p = dir.join(META_FILE);
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("{}: cannot read", p.display())),
        };
        let m: Self = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a valid {META_FILE}", p.display()))?;
        for (what, t) in [
            ("threshold", m.threshold),
            ("stream.threshold", m.stream.map(|s| s.threshold)),
        ] {
            if let Some(t) = t {
                if !(0.0..=1.0).contains(&t) {
                    bail!("{}: {what} {t} is not a probability", p.display());
                }
            }
        }
        for (k, t) in &m.threshold_for_recall {
            if !(0.0..=1.0).contains(t) {
                bail!(
                    "{}: threshold_for_recall[{k:?}] {t} is not a probability",
                    p.display()
                );
            }
        }
        if m.stream.is_some_and(|s| s.consecutive == 0) {
            bail!("{}: stream.consecutive must be at least 1", p.display());
        }
        Ok(Some(m))
    }

    /// The metadata of an optional adapter folder, or the defaults.
    pub fn for_adapter(dir: Option<&Path>) -> Result<Self> {
        Ok(match dir {
            Some(d) => Self::read(d)?.unwrap_or_default(),
            None => Self::default(),
        })
    }

    /// Writes `fraudlab.json` into `dir` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let p = dir.join(META_FILE);
        crate::data::write_atomic(&p, serde_json::to_string_pretty(self)?.as_bytes())
    }
}
