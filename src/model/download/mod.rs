//! Downloading a model by hub id into the cache that other tools share: the Hugging Face
//! cache (`models--Org--Name/blobs/`, `snapshots/<commit>/` links into it, `refs/`), or the
//! ModelScope cache (`models/<org>/<name>/`) for an id written `ms:Org/Name`. Only what
//! fraudlab loads is fetched (`wanted`); files already in the cache are not fetched again;
//! partial files resume; checksums the hub gives are verified; progress (size, rate, ETA) and
//! cancel for the Models pane and `fraudlab download`.
//!
//! `http` owns the client (timeouts, token, resume, checks), `hf` and `modelscope` each hub's
//! listing and cache layout. Names from a hub pass `model::safe_path` before they touch a path.

mod hf;
mod http;
mod modelscope;

pub use http::Timeouts;

use anyhow::{bail, Result};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

/// Where a download stands, for a progress bar.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DownloadProgress {
    /// The file being fetched (or checked) now.
    pub file: String,
    /// Bytes of the model on disk so far, files found in the cache and resumed parts included.
    pub done: u64,
    /// Bytes of the whole model (of the files fraudlab needs), when the hub lists sizes.
    pub total: Option<u64>,
    /// Bytes sent by the hub in this run.
    pub fetched: u64,
    pub files_done: usize,
    pub files_total: usize,
    /// Transfer rate in this run, bytes per second.
    pub bytes_per_s: f64,
    /// Seconds left at that rate.
    pub eta_s: Option<f64>,
}

/// Which hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Source {
    HuggingFace,
    ModelScope,
}

/// Where and how to download. `from_env` reads what the hubs' own Python packages read;
/// tests set the fields by hand.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub source: Source,
    /// Base address, e.g. `https://huggingface.co` or a mirror.
    pub endpoint: String,
    /// The cache folder (`HF_HUB_CACHE`…, or `MODELSCOPE_CACHE`…).
    pub cache: PathBuf,
    /// Sent as an `Authorization: Bearer` header to the hub's own address only.
    pub token: Option<String>,
    /// No network at all: only what is in the cache.
    pub offline: bool,
    pub timeouts: Timeouts,
}

fn env_true(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "on" | "yes" | "true"
        )
    })
}

fn env_nonempty(var: &str) -> Option<String> {
    std::env::var(var)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

impl HubConfig {
    pub fn from_env(source: Source) -> Self {
        match source {
            Source::HuggingFace => Self {
                source,
                endpoint: env_nonempty("HF_ENDPOINT")
                    .unwrap_or_else(|| "https://huggingface.co".into()),
                cache: super::loader::hf_cache_dir(),
                token: hf_token(),
                offline: env_true("HF_HUB_OFFLINE") || env_true("TRANSFORMERS_OFFLINE"),
                timeouts: Timeouts::from_env(
                    "HF_HUB_ETAG_TIMEOUT",
                    "HF_HUB_DOWNLOAD_TIMEOUT",
                    10.0,
                    10.0,
                ),
            },
            Source::ModelScope => Self {
                source,
                endpoint: modelscope::endpoint_from_env(),
                cache: super::loader::modelscope_cache_dir(),
                token: env_nonempty("MODELSCOPE_API_TOKEN"),
                offline: false,
                timeouts: Timeouts::from_env(
                    "MODELSCOPE_API_HTTP_CLIENT_CONNECT_TIMEOUT",
                    "MODELSCOPE_API_HTTP_CLIENT_TIMEOUT",
                    10.0,
                    30.0,
                ),
            },
        }
    }
}

/// The Hugging Face token: `HF_TOKEN`, else the file `huggingface-cli login` writes
/// (`HF_TOKEN_PATH`, else `HF_HOME/token`, else `~/.cache/huggingface/token`).
fn hf_token() -> Option<String> {
    if let Some(t) = env_nonempty("HF_TOKEN") {
        return Some(t);
    }
    let path = std::env::var_os("HF_TOKEN_PATH")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HF_HOME").map(|h| PathBuf::from(h).join("token")))
        .unwrap_or_else(|| super::loader::home().join(".cache/huggingface/token"));
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// What a download did.
#[derive(Debug, Clone, Serialize)]
pub struct Downloaded {
    pub source: Source,
    pub id: String,
    /// The model folder (a snapshot in the Hugging Face cache).
    pub path: PathBuf,
    /// The commit (Hugging Face) or revision (ModelScope) fetched.
    pub revision: String,
    pub files: usize,
    /// Files fetched in this run (the others were in the cache).
    pub fetched_files: usize,
    pub fetched_bytes: u64,
}

/// `ms:Org/Name` (ModelScope), `hf:Org/Name` or `Org/Name` (Hugging Face).
pub fn parse_spec(spec: &str) -> Result<(Source, String)> {
    let spec = spec.trim();
    let (source, id) = if let Some(id) = spec.strip_prefix("ms:") {
        (Source::ModelScope, id)
    } else if let Some(id) = spec.strip_prefix("hf:") {
        (Source::HuggingFace, id)
    } else {
        (Source::HuggingFace, spec)
    };
    if !valid_id(id) {
        bail!("`{spec}` is not a model id (expected Org/Name, or ms:Org/Name for ModelScope)");
    }
    Ok((source, id.to_string()))
}

fn valid_id(id: &str) -> bool {
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 96
            && s != "."
            && s != ".."
            && !s.starts_with('-')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    matches!(id.split_once('/'), Some((a, b)) if ok(a) && ok(b))
}

/// Downloads `spec` (`Org/Name` or `ms:Org/Name`) at `revision` (the hub's default branch
/// when `None`) with the settings of the environment.
pub fn download(
    spec: &str,
    revision: Option<&str>,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(&DownloadProgress),
) -> Result<Downloaded> {
    let (source, id) = parse_spec(spec)?;
    download_with(
        &HubConfig::from_env(source),
        &id,
        revision,
        cancel,
        progress,
    )
}

/// Downloads `id` (`Org/Name`) with explicit settings.
pub fn download_with(
    cfg: &HubConfig,
    id: &str,
    revision: Option<&str>,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(&DownloadProgress),
) -> Result<Downloaded> {
    if !valid_id(id) {
        bail!("`{id}` is not a model id (expected Org/Name)");
    }
    if let Some(r) = revision {
        check_revision(r)?;
    }
    match cfg.source {
        Source::HuggingFace => hf::download(cfg, id, revision, cancel, progress),
        Source::ModelScope => modelscope::download(cfg, id, revision, cancel, progress),
    }
}

/// A revision the user names: a commit, a branch or a tag (`refs/pr/1` too); it becomes a
/// file under `refs/`, so it is held to the rules of a relative path.
fn check_revision(r: &str) -> Result<()> {
    super::safe_path::check_relative(r, "--revision")?;
    if !r
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
    {
        bail!(
            "--revision `{}`: not a branch, tag or commit name",
            r.escape_debug()
        );
    }
    Ok(())
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

/// The checks every hub's listing must pass: fraudlab can load what it names.
fn check_complete(id: &str, files: &[String]) -> Result<()> {
    if !files.iter().any(|f| f.ends_with(".safetensors")) {
        bail!("{id}: the repository has no safetensors weights (fraudlab does not read pickled .bin weights)");
    }
    if !files.iter().any(|f| f == "config.json") || !files.iter().any(|f| f == "tokenizer.json") {
        bail!("{id}: the repository lacks config.json or tokenizer.json");
    }
    Ok(())
}

/// The downloaded folder must load: its config parses and the shards its index names are
/// plain names among the files fetched.
fn check_folder(dir: &std::path::Path, files: &[String]) -> Result<()> {
    if files.iter().any(|f| f == "model.safetensors.index.json") {
        let index = dir.join("model.safetensors.index.json");
        for shard in super::safetensors_io::index_shards(&index)? {
            if !files.contains(&shard) {
                bail!(
                    "{}: names shard `{shard}`, which the repository does not have",
                    index.display()
                );
            }
        }
    }
    super::config::Qwen2Config::from_file(&dir.join("config.json"))?;
    Ok(())
}

/// Counts bytes and files, and turns them into `DownloadProgress` reports (at most ten a
/// second, plus one at each file's start and end).
struct Meter<'a> {
    p: DownloadProgress,
    report: &'a mut dyn FnMut(&DownloadProgress),
    /// `done` before the current file
    before_file: u64,
    first_fresh: Option<Instant>,
    last: Option<Instant>,
}

impl<'a> Meter<'a> {
    fn new(
        report: &'a mut dyn FnMut(&DownloadProgress),
        files_total: usize,
        total: Option<u64>,
    ) -> Self {
        Self {
            p: DownloadProgress {
                file: String::new(),
                done: 0,
                total,
                fetched: 0,
                files_done: 0,
                files_total,
                bytes_per_s: 0.0,
                eta_s: None,
            },
            report,
            before_file: 0,
            first_fresh: None,
            last: None,
        }
    }

    fn start_file(&mut self, name: &str) {
        self.p.file = name.to_string();
        self.before_file = self.p.done;
        self.emit(true);
    }

    /// The current file now holds `file_bytes`; `fresh` of them just came from the hub.
    fn file_bytes(&mut self, file_bytes: u64, fresh: u64) {
        if fresh > 0 && self.first_fresh.is_none() {
            self.first_fresh = Some(Instant::now());
        }
        self.p.fetched += fresh;
        self.p.done = self.before_file + file_bytes;
        self.emit(false);
    }

    fn end_file(&mut self, size: u64) {
        self.p.done = self.before_file + size;
        self.p.files_done += 1;
        self.emit(true);
    }

    fn emit(&mut self, force: bool) {
        let now = Instant::now();
        if !force
            && self
                .last
                .is_some_and(|t| now.duration_since(t).as_millis() < 100)
        {
            return;
        }
        self.last = Some(now);
        if let Some(t0) = self.first_fresh {
            let dt = now.duration_since(t0).as_secs_f64();
            if dt > 0.2 {
                self.p.bytes_per_s = self.p.fetched as f64 / dt;
            }
        }
        self.p.eta_s = match self.p.total {
            Some(t) if self.p.bytes_per_s > 0.0 => {
                Some(t.saturating_sub(self.p.done) as f64 / self.p.bytes_per_s)
            }
            _ => None,
        };
        (self.report)(&self.p);
    }
}

fn human_bytes(n: f64) -> String {
    if n >= 1e9 {
        format!("{:.2} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} MB", n / 1e6)
    } else {
        format!("{:.0} kB", n / 1e3)
    }
}

fn human_secs(s: f64) -> String {
    let s = s.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// A one-line progress bar for the workbench's status line.
pub fn bar(p: &DownloadProgress, width: usize) -> String {
    let frac = match p.total {
        Some(t) if t > 0 => (p.done as f64 / t as f64).min(1.0),
        _ => 0.0,
    };
    let n = (frac * width as f64).round() as usize;
    let size = match p.total {
        Some(t) => format!("{}/{}", human_bytes(p.done as f64), human_bytes(t as f64)),
        None => human_bytes(p.done as f64),
    };
    let mut s = format!(
        "[{}{}] {:>3.0}% {} {size}",
        "#".repeat(n),
        ".".repeat(width - n),
        frac * 100.0,
        p.file,
    );
    if p.bytes_per_s > 0.0 {
        s += &format!(", {}/s", human_bytes(p.bytes_per_s));
    }
    if let Some(eta) = p.eta_s {
        s += &format!(", ETA {}", human_secs(eta));
    }
    s += &format!(" ({}/{} files)", p.files_done, p.files_total);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_and_ids() {
        assert_eq!(
            parse_spec("Qwen/Qwen2.5-0.5B").unwrap(),
            (Source::HuggingFace, "Qwen/Qwen2.5-0.5B".into())
        );
        assert_eq!(
            parse_spec("ms:Qwen/Qwen2.5-0.5B").unwrap(),
            (Source::ModelScope, "Qwen/Qwen2.5-0.5B".into())
        );
        assert_eq!(parse_spec("hf:A/b").unwrap().0, Source::HuggingFace);
        for bad in [
            "x", "a/b/c", "../x", "a/..", "ms:", "a/-rf", "a b/c", "a/b\\c",
        ] {
            assert!(parse_spec(bad).is_err(), "{bad}");
        }
        for ok in [
            "main",
            "v1.0",
            "refs/pr/1",
            "0123456789abcdef0123456789abcdef01234567",
        ] {
            check_revision(ok).unwrap();
        }
        for bad in ["../../x", "/etc", "a//b", "a b", "a\\b", ""] {
            assert!(check_revision(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_what_fraudlab_loads() {
        let all: Vec<String> = [
            "config.json",
            "README.md",
            "model-00001-of-00002.safetensors",
            "pytorch_model.bin",
            "onnx/model.safetensors",
            "tokenizer.json",
            "chat_template.jinja",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            wanted(&all),
            [
                "config.json",
                "model-00001-of-00002.safetensors",
                "tokenizer.json",
                "chat_template.jinja"
            ]
        );
    }

    #[test]
    fn meter_reports_rate_and_eta() {
        let mut seen = Vec::new();
        let mut report = |p: &DownloadProgress| seen.push(p.clone());
        let mut m = Meter::new(&mut report, 2, Some(1000));
        m.start_file("a");
        m.file_bytes(100, 0); // resumed: not counted in the rate
        m.first_fresh = Some(Instant::now() - std::time::Duration::from_secs(1));
        m.last = None;
        m.file_bytes(300, 200);
        m.end_file(400);
        let last = seen.last().unwrap();
        assert_eq!((last.done, last.fetched, last.files_done), (400, 200, 1));
        assert!(
            last.bytes_per_s > 150.0 && last.bytes_per_s < 201.0,
            "{last:?}"
        );
        let eta = last.eta_s.unwrap();
        assert!(eta > 2.9 && eta < 4.1, "600 bytes left at ~200 B/s: {eta}");
        let b = bar(last, 10);
        assert!(
            b.contains("40%") && b.contains("ETA") && b.contains("(1/2 files)"),
            "{b}"
        );
    }
}
