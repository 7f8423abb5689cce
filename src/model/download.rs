//! Downloading a model by hub id into the Hugging Face cache layout
//! (`models--Org--Name/snapshots/<rev>/`, `refs/main`), with progress and cancel.
//!
//! The transfer is done by the system's `curl` (no TLS stack is compiled into fraudlab);
//! `HF_ENDPOINT` selects a mirror. Only what fraudlab loads is fetched: the config files,
//! the tokenizer and the safetensors weights.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::loader::hf_cache_dir;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DownloadProgress {
    pub file: String,
    pub done: u64,
    pub total: Option<u64>,
    pub files_done: usize,
    pub files_total: usize,
}

/// The hub's base address (`HF_ENDPOINT`, else Hugging Face's).
pub fn hub_endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .unwrap_or_else(|_| "https://huggingface.co".into())
        .trim_end_matches('/')
        .to_string()
}

fn valid_id(id: &str) -> bool {
    let ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    matches!(id.split_once('/'), Some((a, b)) if ok(a) && ok(b))
}

/// Files of a repository that fraudlab needs.
pub fn wanted(files: &[String]) -> Vec<String> {
    let fixed = [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors.index.json",
        "chat_template.jinja",
    ];
    files
        .iter()
        .filter(|f| {
            !f.contains('/') && (fixed.contains(&f.as_str()) || f.ends_with(".safetensors"))
        })
        .cloned()
        .collect()
}

fn curl(url: &str, out: Option<&Path>) -> Command {
    let mut c = Command::new("curl");
    c.args(["-sS", "-f", "-L", "--connect-timeout", "20", "--retry", "2"]);
    if let Ok(t) = std::env::var("HF_TOKEN") {
        c.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    if let Some(o) = out {
        c.arg("-o").arg(o);
    }
    c.arg(url);
    c
}

/// Downloads `id` (e.g. `Qwen/Qwen2-0.5B-Instruct`) and returns its snapshot folder.
pub fn download(
    id: &str,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(&DownloadProgress),
) -> Result<PathBuf> {
    if !valid_id(id) {
        bail!("`{id}` is not a model id (expected Org/Name)");
    }
    let endpoint = hub_endpoint();
    let api = format!("{endpoint}/api/models/{id}?blobs=true");
    let out = curl(&api, None)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run curl to download {id}: {e} (install curl, or fetch the model elsewhere and use --models-dir)"))?;
    if !out.status.success() {
        bail!(
            "{id}: cannot reach the model hub at {endpoint}: {} (offline? set HF_ENDPOINT for a mirror, or copy the model into a folder and use --models-dir)",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{id}: the hub's answer is not JSON"))?;
    let rev = info["sha"].as_str().unwrap_or("main").to_string();
    let siblings = info["siblings"].as_array().cloned().unwrap_or_default();
    let names: Vec<String> = siblings
        .iter()
        .filter_map(|s| s["rfilename"].as_str().map(String::from))
        .collect();
    let files = wanted(&names);
    if !files.iter().any(|f| f.ends_with(".safetensors")) {
        bail!("{id}: the repository has no safetensors weights (fraudlab does not read pickled .bin weights)");
    }
    if !files.iter().any(|f| f == "config.json") || !files.iter().any(|f| f == "tokenizer.json") {
        bail!("{id}: the repository lacks config.json or tokenizer.json");
    }
    let size_of = |f: &str| {
        siblings
            .iter()
            .find(|s| s["rfilename"] == f)
            .and_then(|s| s["size"].as_u64())
    };
    let (org, name) = id.split_once('/').unwrap();
    let repo = hf_cache_dir().join(format!("models--{org}--{name}"));
    let snap = repo.join("snapshots").join(&rev);
    std::fs::create_dir_all(&snap).with_context(|| format!("{}: cannot create", snap.display()))?;
    for (i, f) in files.iter().enumerate() {
        let dest = snap.join(f);
        let total = size_of(f);
        if dest.exists()
            && total.is_none_or(|t| {
                std::fs::metadata(&dest)
                    .map(|m| m.len() == t)
                    .unwrap_or(false)
            })
        {
            progress(&DownloadProgress {
                file: f.clone(),
                done: total.unwrap_or(0),
                total,
                files_done: i + 1,
                files_total: files.len(),
            });
            continue;
        }
        let tmp = snap.join(format!("{f}.incomplete"));
        let url = format!("{endpoint}/{id}/resolve/{rev}/{f}");
        let mut child = curl(&url, Some(&tmp))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run curl")?;
        let status = loop {
            if cancel.load(Ordering::Relaxed) {
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_file(&tmp);
                bail!("download of {id} cancelled");
            }
            if let Some(s) = child.try_wait()? {
                break s;
            }
            let done = std::fs::metadata(&tmp).map(|m| m.len()).unwrap_or(0);
            progress(&DownloadProgress {
                file: f.clone(),
                done,
                total,
                files_done: i,
                files_total: files.len(),
            });
            std::thread::sleep(Duration::from_millis(200));
        };
        if !status.success() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            let _ = std::fs::remove_file(&tmp);
            bail!("{id}: downloading {f} failed: {}", err.trim());
        }
        let got = std::fs::metadata(&tmp).map(|m| m.len()).unwrap_or(0);
        if let Some(t) = total.filter(|&t| t != got) {
            let _ = std::fs::remove_file(&tmp);
            bail!("{id}: {f} arrived with {got} bytes, the hub says {t}");
        }
        std::fs::rename(&tmp, &dest)
            .with_context(|| format!("{}: cannot write", dest.display()))?;
        progress(&DownloadProgress {
            file: f.clone(),
            done: got,
            total: Some(got),
            files_done: i + 1,
            files_total: files.len(),
        });
    }
    std::fs::create_dir_all(repo.join("refs"))?;
    crate::data::write_atomic(&repo.join("refs/main"), rev.as_bytes())?;
    // the folder must load as a model
    super::config::Qwen2Config::from_file(&snap.join("config.json"))?;
    Ok(snap)
}

/// A text progress bar for a terminal or a status line.
pub fn bar(p: &DownloadProgress, width: usize) -> String {
    let frac = match p.total {
        Some(t) if t > 0 => (p.done as f64 / t as f64).min(1.0),
        _ => 0.0,
    };
    let n = (frac * width as f64).round() as usize;
    format!(
        "[{}{}] {:>3.0}% {} ({}/{} files, {:.1} MB)",
        "#".repeat(n),
        ".".repeat(width - n),
        frac * 100.0,
        p.file,
        p.files_done,
        p.files_total,
        p.done as f64 / 1e6
    )
}
