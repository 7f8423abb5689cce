//! Discovery of local models: the Hugging Face hub cache, the ModelScope cache, and folders
//! or `.gguf` files under user-given paths (`--models-dir`, `FRAUDLAB_MODELS`).
//!
//! One bad entry never stops a scan: a file or folder that looks like a model but cannot be
//! read is listed with its problem (`status` "broken"), and a model of another architecture
//! with the reason (`status` "unsupported"), beside the good ones.

use serde::Serialize;
use std::path::{Path, PathBuf};

use super::config::{size_label, Qwen2Config, Unsupported};
use super::gguf::GgufFile;
use super::loader::{
    display_name, hf_cache_dir, hf_snapshot, modelscope_cache_dir, ModelLocation, Precision,
};
use super::safetensors_io::WeightFiles;

/// What the Models pane and `fraudlab models` show of a model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub path: PathBuf,
    /// "hf-cache", "modelscope-cache", "folder"
    pub source: String,
    /// "Qwen2", "Qwen2.5", "Qwen1.5", or "Qwen2-family"
    pub family: String,
    pub size: String,
    /// "base" or "instruct"
    pub variant: String,
    /// "safetensors (f32)", "gguf (Q4_K_M)"…
    pub format: String,
    pub parameters: u64,
    pub disk_bytes: u64,
    pub layers: usize,
    pub hidden: usize,
    pub vocab: usize,
    pub context: usize,
    /// Set when the entry looks like a model but cannot be read or run; the reason.
    pub problem: Option<String>,
    /// "ok", "unsupported" (another architecture) or "broken" (cannot be read).
    pub status: String,
}

pub const STATUS_OK: &str = "ok";
pub const STATUS_UNSUPPORTED: &str = "unsupported";
pub const STATUS_BROKEN: &str = "broken";

/// Bytes under a folder, following links to files (hub-cache snapshots link into blobs/) but
/// not links to folders, to a bounded depth.
fn dir_size(p: &Path, depth: usize) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            if let Ok(m) = std::fs::metadata(e.path()) {
                if m.is_file() {
                    n += m.len();
                } else if depth > 0 && e.file_type().is_ok_and(|t| t.is_dir()) {
                    // real folders only: a linked folder may lead back up the tree
                    n += dir_size(&e.path(), depth - 1);
                }
            }
        }
    }
    n
}

/// Family from the name (Qwen1.5 and Qwen2.5 share the Qwen2 architecture).
pub fn family_of(name: &str) -> String {
    let l = name.to_lowercase();
    for (k, f) in [
        ("qwen2.5", "Qwen2.5"),
        ("qwen2_5", "Qwen2.5"),
        ("qwen1.5", "Qwen1.5"),
        ("qwen1_5", "Qwen1.5"),
        ("qwen2", "Qwen2"),
    ] {
        if l.contains(k) {
            return f.into();
        }
    }
    "Qwen2-family".into()
}

/// Instruct (chat-tuned) or base, from the name.
pub fn variant_of(name: &str) -> String {
    let l = name.to_lowercase();
    if l.contains("instruct") || l.contains("chat") || l.contains("-it") {
        "instruct".into()
    } else {
        "base".into()
    }
}

/// An entry before anything is read: names from the path, nothing known yet.
fn blank(name: String, path: &Path, source: &str) -> ModelInfo {
    ModelInfo {
        family: family_of(&name),
        variant: variant_of(&name),
        name,
        path: path.to_path_buf(),
        source: source.into(),
        size: "?".into(),
        format: String::new(),
        parameters: 0,
        disk_bytes: 0,
        layers: 0,
        hidden: 0,
        vocab: 0,
        context: 0,
        problem: None,
        status: STATUS_OK.into(),
    }
}

/// Describes a model from its config and headers (no weights are read). A model that cannot
/// be read, or is of another architecture, gets its problem and status.
pub fn describe(loc: &ModelLocation, source: &str) -> ModelInfo {
    let mut info = blank(display_name(loc), loc.path(), source);
    let cfg: anyhow::Result<Qwen2Config> = match loc {
        ModelLocation::Folder(d) => {
            info.disk_bytes = dir_size(d, 8);
            let c = Qwen2Config::from_file(&d.join("config.json"));
            let dt = c
                .as_ref()
                .ok()
                .and_then(|c| c.torch_dtype.clone())
                .unwrap_or_else(|| "?".into());
            info.format = format!("safetensors ({dt})");
            // a folder whose config reads is still broken without a tokenizer or readable
            // weights: say so here rather than when it is loaded
            c.and_then(|c| {
                let tj = d.join("tokenizer.json");
                if !tj.is_file() {
                    anyhow::bail!("{}: missing tokenizer", tj.display());
                }
                WeightFiles::open_folder(d)?;
                Ok(c)
            })
        }
        ModelLocation::Gguf(f) => {
            info.disk_bytes = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
            match GgufFile::open(f) {
                Ok(g) => {
                    info.format = format!("gguf ({})", g.file_type());
                    if let Some(n) = g.meta_str("general.name") {
                        if info.family == "Qwen2-family" {
                            info.family = family_of(&n);
                        }
                        if info.variant == "base" {
                            info.variant = variant_of(&n);
                        }
                    }
                    g.config()
                }
                Err(e) => {
                    info.format = "gguf".into();
                    Err(e)
                }
            }
        }
    };
    match cfg {
        Ok(c) => {
            info.parameters = c.parameter_count();
            info.size = size_label(info.parameters);
            info.layers = c.num_hidden_layers;
            info.hidden = c.hidden_size;
            info.vocab = c.vocab_size;
            info.context = c.max_position_embeddings;
        }
        Err(e) => {
            info.status = if e.downcast_ref::<Unsupported>().is_some() {
                STATUS_UNSUPPORTED
            } else {
                STATUS_BROKEN
            }
            .into();
            info.problem = Some(format!("{e:#}"));
        }
    }
    info
}

/// A folder that holds weights but no config.json, or a hub-cache entry with no complete
/// snapshot: listed as broken.
fn broken(name: String, path: &Path, source: &str, problem: String) -> ModelInfo {
    let mut info = blank(name, path, source);
    info.disk_bytes = dir_size(path, 8);
    info.status = STATUS_BROKEN.into();
    info.problem = Some(problem);
    info
}

fn has_weights(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten().any(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.ends_with(".safetensors") || n == "model.safetensors.index.json")
        })
    })
}

/// `Org/Name` of a hub-cache folder `models--Org--Name`.
fn hub_name(repo: &Path) -> String {
    repo.file_name()
        .and_then(|n| n.to_str())
        .map(|n| {
            n.strip_prefix("models--")
                .unwrap_or(n)
                .replacen("--", "/", 1)
        })
        .unwrap_or_default()
}

fn hub_entry(repo: &Path, source: &str) -> ModelInfo {
    match hf_snapshot(repo) {
        Some(s) => describe(&ModelLocation::Folder(s), source),
        None => broken(
            hub_name(repo),
            repo,
            source,
            format!(
                "{}: no complete snapshot (no snapshots/*/config.json; an unfinished download?)",
                repo.display()
            ),
        ),
    }
}

fn scan_dir(dir: &Path, depth: usize, source: &str, out: &mut Vec<ModelInfo>) {
    if depth == 0 {
        return;
    }
    if dir.is_file() {
        if dir.extension().is_some_and(|e| e == "gguf") {
            out.push(describe(&ModelLocation::Gguf(dir.to_path_buf()), source));
        }
        return;
    }
    if dir.join("config.json").exists() {
        out.push(describe(&ModelLocation::Folder(dir.to_path_buf()), source));
        return;
    }
    if dir.join("snapshots").is_dir() {
        out.push(hub_entry(dir, source));
        return;
    }
    if has_weights(dir) {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().replace("___", "."))
            .unwrap_or_default();
        let problem = format!(
            "{}: missing config.json (the folder holds weights but no config)",
            dir.display()
        );
        out.push(broken(name, dir, source, problem));
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        let hidden = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if p.is_dir() || p.extension().is_some_and(|e| e == "gguf") {
            scan_dir(&p, depth - 1, source, out);
        }
    }
}

/// The folders searched besides the caches: `extra` then `FRAUDLAB_MODELS` (':'-separated).
pub fn search_paths(extra: &[PathBuf]) -> Vec<PathBuf> {
    let mut v = extra.to_vec();
    if let Some(s) = std::env::var_os("FRAUDLAB_MODELS") {
        v.extend(std::env::split_paths(&s));
    }
    v
}

/// Every model found: good ones, broken ones with their problem, and models of other
/// architectures with the reason (see the module docs).
pub fn discover(extra: &[PathBuf]) -> Vec<ModelInfo> {
    let mut out = Vec::new();
    let hf = hf_cache_dir();
    if let Ok(rd) = std::fs::read_dir(&hf) {
        let mut repos: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("models--"))
            })
            .collect();
        repos.sort();
        for r in repos {
            out.push(hub_entry(&r, "hf-cache"));
        }
    }
    let ms = modelscope_cache_dir();
    for base in [ms.clone(), ms.join("models")] {
        if let Ok(orgs) = std::fs::read_dir(&base) {
            let mut orgs: Vec<PathBuf> = orgs
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect();
            orgs.sort();
            for org in orgs {
                if org.file_name().is_some_and(|n| n == "models") {
                    continue;
                }
                scan_dir(&org, 2, "modelscope-cache", &mut out);
            }
        }
    }
    for p in search_paths(extra) {
        scan_dir(&p, 4, "folder", &mut out);
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|m| seen.insert(std::fs::canonicalize(&m.path).unwrap_or(m.path.clone())));
    out
}

/// RAM a model needs, in bytes, loaded at `precision`: for inference, LoRA training (None:
/// training needs dense weights) and full fine-tuning (always f32) at a typical batch (4 x
/// 512 tokens). Estimates for the Models pane.
pub fn ram_estimates(info: &ModelInfo, precision: Precision) -> (u64, Option<u64>, u64) {
    let f32_bytes = info.parameters * 4;
    let gguf = info.format.starts_with("gguf");
    let weights = match precision {
        Precision::F32 => f32_bytes,
        Precision::Bf16 => info.parameters * 2,
        // the blocks as on disk, plus the token embeddings, dequantized to f32 for lookups
        Precision::Quantized if gguf => info.disk_bytes + (info.vocab * info.hidden) as u64 * 4,
        Precision::Quantized => f32_bytes,
    };
    // activations kept for the backward pass, about 30 floats per hidden unit per token and layer
    let act = 4 * 512 * info.hidden.max(1) as u64 * info.layers.max(1) as u64 * 4 * 30;
    let inference = weights + weights / 10 + (256 << 20);
    let lora = (precision != Precision::Quantized || !gguf).then_some(inference + act);
    let full = f32_bytes * 4 + act + (512 << 20); // weights, grads, Adam m and v
    (inference, lora, full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_estimates_follow_the_precision() {
        let mut m = describe(&ModelLocation::Folder("/nonexistent".into()), "folder");
        m.parameters = 500_000_000;
        m.hidden = 896;
        m.layers = 24;
        m.vocab = 151_936;
        let (f32_inf, f32_lora, full) = ram_estimates(&m, Precision::F32);
        let (bf_inf, bf_lora, bf_full) = ram_estimates(&m, Precision::Bf16);
        assert!(bf_inf < f32_inf && bf_lora.unwrap() < f32_lora.unwrap());
        // the weights halve; the fixed overhead does not
        assert!((f32_inf - bf_inf) as f64 > 0.5 * 500e6 * 2.0);
        assert_eq!(
            full, bf_full,
            "full fine-tuning is f32 whatever the load precision"
        );
        // a folder has no quantized blocks: quantized loads it in f32
        assert_eq!(ram_estimates(&m, Precision::Quantized).0, f32_inf);
        m.format = "gguf (Q5_0)".into();
        m.disk_bytes = 400_000_000;
        let (q_inf, q_lora, _) = ram_estimates(&m, Precision::Quantized);
        assert!(q_inf < bf_inf && q_inf > m.disk_bytes);
        assert_eq!(q_lora, None, "training needs dense weights");
    }
}
