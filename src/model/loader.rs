//! Finding and loading a model: a Hugging Face folder, a hub-cache or ModelScope-cache entry,
//! a model id looked up in those caches, or a GGUF file.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::config::Qwen2Config;
use super::gguf::{GgufFile, GgufSource};
use super::qwen2::{Qwen2, SafetensorsSource};
use super::safetensors_io::WeightFiles;
use super::tokenizer::TextTokenizer;

/// How to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// f32 or bf16 for dense weights.
    pub dtype: DType,
    /// For GGUF: keep weights quantized (fast path) instead of dequantizing (exact path).
    pub quantized: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            quantized: false,
        }
    }
}

/// The dtype a user names for dense weights: `f32` (exact) or `bf16` (half the memory; the
/// base weights in bf16, activations and LoRA in f32).
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        _ => bail!("dtype `{s}`: use f32 or bf16"),
    }
}

/// How the workbench loads a model's weights (the Models pane's `p`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Dense f32 (GGUF blocks dequantized): the exact path.
    #[default]
    F32,
    /// Dense bf16: half the memory; computed in f32, on bf16 dot products where the CPU has
    /// them.
    Bf16,
    /// GGUF blocks kept quantized (a folder loads f32).
    Quantized,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Bf16, Precision::Quantized];

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Quantized => "quantized",
        }
    }

    pub fn parse(s: &str) -> Option<Precision> {
        Precision::ALL.into_iter().find(|p| p.name() == s)
    }

    /// The next one, in the order f32 → bf16 → quantized → f32.
    pub fn next(self) -> Precision {
        match self {
            Precision::F32 => Precision::Bf16,
            Precision::Bf16 => Precision::Quantized,
            Precision::Quantized => Precision::F32,
        }
    }

    pub fn options(self) -> LoadOptions {
        LoadOptions {
            dtype: if self == Precision::Bf16 {
                DType::BF16
            } else {
                DType::F32
            },
            quantized: self == Precision::Quantized,
        }
    }
}

/// Where a model's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelLocation {
    /// A folder with config.json, safetensors and tokenizer.json.
    Folder(PathBuf),
    Gguf(PathBuf),
}

impl ModelLocation {
    pub fn path(&self) -> &Path {
        match self {
            ModelLocation::Folder(p) | ModelLocation::Gguf(p) => p,
        }
    }
}

#[derive(Clone)]
pub struct LoadedModel {
    pub model: Qwen2,
    pub tokenizer: TextTokenizer,
    pub location: ModelLocation,
    /// Display name: folder or file name, or the hub id.
    pub name: String,
    pub load_s: f64,
    pub quantized: bool,
}

pub fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The Hugging Face hub cache folder (`HF_HUB_CACHE`, `HF_HOME/hub`, `~/.cache/huggingface/hub`).
pub fn hf_cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return p.into();
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    home().join(".cache/huggingface/hub")
}

/// The ModelScope cache folder (`MODELSCOPE_CACHE`, `~/.cache/modelscope/hub`).
pub fn modelscope_cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("MODELSCOPE_CACHE") {
        return p.into();
    }
    home().join(".cache/modelscope/hub")
}

/// The snapshot a hub-cache repo folder (`models--Org--Name`) points at: `refs/main` if
/// present, else the most recently modified snapshot with a config.json.
pub fn hf_snapshot(repo_dir: &Path) -> Option<PathBuf> {
    let snaps = repo_dir.join("snapshots");
    if let Ok(rev) = std::fs::read_to_string(repo_dir.join("refs/main")) {
        // a commit id only: the file's content becomes a path
        let rev = rev.trim();
        if super::safe_path::is_commit_hash(rev) && snaps.join(rev).join("config.json").exists() {
            return Some(snaps.join(rev));
        }
    }
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    for e in std::fs::read_dir(&snaps).ok()?.flatten() {
        let p = e.path();
        if p.join("config.json").exists() {
            let t = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            if best.as_ref().is_none_or(|(bt, _)| t > *bt) {
                best = Some((t, p));
            }
        }
    }
    best.map(|(_, p)| p)
}

/// Resolves what the user typed: a path (folder, hub-cache repo folder, .gguf file) or a
/// model id such as `Qwen/Qwen2-0.5B-Instruct` found in the HF or ModelScope cache.
pub fn resolve(spec: &str) -> Result<ModelLocation> {
    let p = PathBuf::from(spec);
    if p.exists() {
        if p.is_file() {
            let is_gguf = std::fs::File::open(&p)
                .ok()
                .and_then(|mut f| {
                    let mut m = [0u8; 4];
                    std::io::Read::read_exact(&mut f, &mut m)
                        .ok()
                        .map(|_| &m == b"GGUF")
                })
                .unwrap_or(false);
            if is_gguf || p.extension().is_some_and(|e| e == "gguf") {
                return Ok(ModelLocation::Gguf(p));
            }
            if p.file_name().is_some_and(|n| n == "config.json") {
                return Ok(ModelLocation::Folder(p.parent().unwrap().to_path_buf()));
            }
            bail!(
                "{}: not a model (expected a folder with config.json or a .gguf file)",
                p.display()
            );
        }
        if p.join("config.json").exists() {
            return Ok(ModelLocation::Folder(p));
        }
        if p.join("snapshots").is_dir() {
            return hf_snapshot(&p).map(ModelLocation::Folder).with_context(|| {
                format!("{}: hub-cache entry has no complete snapshot", p.display())
            });
        }
        let ggufs: Vec<PathBuf> = std::fs::read_dir(&p)
            .map(|r| {
                r.flatten()
                    .map(|e| e.path())
                    .filter(|f| f.extension().is_some_and(|e| e == "gguf"))
                    .collect()
            })
            .unwrap_or_default();
        if ggufs.len() == 1 {
            return Ok(ModelLocation::Gguf(ggufs[0].clone()));
        }
        bail!(
            "{}: missing config.json (not a Hugging Face model folder)",
            p.display()
        );
    }
    // A model id: look in the caches.
    if let Some((org, name)) = spec.split_once('/') {
        if !org.is_empty() && !name.is_empty() && !name.contains('/') {
            let hf = hf_cache_dir().join(format!("models--{org}--{name}"));
            if let Some(s) = hf_snapshot(&hf) {
                return Ok(ModelLocation::Folder(s));
            }
            let ms_name = name.replace('.', "___");
            for base in [
                modelscope_cache_dir(),
                modelscope_cache_dir().join("models"),
            ] {
                let d = base.join(org).join(&ms_name);
                if d.join("config.json").exists() {
                    return Ok(ModelLocation::Folder(d));
                }
            }
        }
    }
    bail!("{spec}: no such model folder or file, and no model of that id in the Hugging Face or ModelScope cache")
}

/// The display name of a location.
pub fn display_name(loc: &ModelLocation) -> String {
    let p = loc.path();
    // hub cache: .../models--Org--Name/snapshots/<rev>
    if let Some(repo) = p.parent().and_then(|s| s.parent()) {
        if let Some(n) = repo.file_name().and_then(|n| n.to_str()) {
            if let Some(rest) = n.strip_prefix("models--") {
                return rest.replacen("--", "/", 1);
            }
        }
    }
    let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("model");
    n.replace("___", ".")
}

pub fn load_config(loc: &ModelLocation) -> Result<Qwen2Config> {
    match loc {
        ModelLocation::Folder(d) => Qwen2Config::from_file(&d.join("config.json")),
        ModelLocation::Gguf(f) => GgufFile::open(f)?.config(),
    }
}

/// Loads a model and its tokenizer for inference: bf16 layer weights are packed for the bf16 matmul where the
/// CPU runs it (see [`Qwen2::pack_weights`]).
pub fn load(spec: &str, opts: LoadOptions) -> Result<LoadedModel> {
    let loc = resolve(spec)?;
    load_location(&loc, opts)
}

/// Loads a model to train on: its weights stay row-major, as the training products read
/// them (a packed weight would be repacked for every input gradient).
pub fn load_for_training(spec: &str, opts: LoadOptions) -> Result<LoadedModel> {
    let loc = resolve(spec)?;
    load_with(&loc, opts, false)
}

/// [`load`] from a resolved location.
pub fn load_location(loc: &ModelLocation, opts: LoadOptions) -> Result<LoadedModel> {
    load_with(loc, opts, true)
}

fn load_with(loc: &ModelLocation, opts: LoadOptions, pack: bool) -> Result<LoadedModel> {
    let t0 = Instant::now();
    let device = Device::Cpu;
    // f64 is for gradient checks in tests; users choose f32 or bf16.
    if !matches!(opts.dtype, DType::F32 | DType::BF16 | DType::F64) {
        bail!("dtype {:?} is not supported (use f32 or bf16)", opts.dtype);
    }
    let (mut model, tokenizer, quantized) = match loc {
        ModelLocation::Folder(dir) => {
            let cfg_path = dir.join("config.json");
            if !cfg_path.exists() {
                bail!("{}: missing config.json", dir.display());
            }
            let cfg = Qwen2Config::from_file(&cfg_path)?;
            let tokenizer = TextTokenizer::from_folder(dir)?;
            let files = WeightFiles::open_folder(dir)?;
            let src = SafetensorsSource {
                files,
                dtype: opts.dtype,
                device: device.clone(),
            };
            let model = Qwen2::load(&cfg, &src, opts.dtype, &device)
                .with_context(|| format!("{}: cannot load the model", dir.display()))?;
            (model, tokenizer, false)
        }
        ModelLocation::Gguf(f) => {
            let g = Arc::new(GgufFile::open(f)?);
            let cfg = g.config()?;
            let tokenizer = TextTokenizer::from_gguf(&g)?;
            let dtype = if opts.quantized {
                DType::F32
            } else {
                opts.dtype
            };
            let src = GgufSource {
                gguf: g.clone(),
                quantized: opts.quantized,
                dtype,
            };
            let model = Qwen2::load(&cfg, &src, dtype, &device)
                .with_context(|| format!("{}: cannot load the model", f.display()))?;
            (model, tokenizer, opts.quantized)
        }
    };
    if pack && opts.dtype == DType::BF16 {
        model.pack_weights()?;
    }
    Ok(LoadedModel {
        model,
        tokenizer,
        location: loc.clone(),
        name: display_name(loc),
        load_s: t0.elapsed().as_secs_f64(),
        quantized,
    })
}
