//! Sessions: `<root>/<name>/` holding
//! * `session.json` — [`SessionConfig`] (open models, datasets, settings),
//!   written atomically; unknown fields are kept and written back;
//! * `probes.jsonl` — one JSON record per probe, appended durably;
//! * `labels/<dataset-id>.jsonl` — label journals (see `journal`);
//! * `runs/<run-id>/`, `evals/<eval-id>/` — ids are UTC stamps
//!   `YYYYMMDD-HHMMSS`, with `-001`, `-002`, … when taken (sortable).
//!
//! The root (default `./sessions`, or `$FRAUDLAB_SESSIONS`) is chosen by the
//! caller.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::data::fsutil;
use crate::data::journal::Journal;

/// Contents of `session.json`. Missing fields take defaults; unknown fields
/// are kept in `extra` and written back.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionConfig {
    /// RFC 3339 creation time.
    pub created: Option<String>,
    /// Model paths or names that were open.
    pub models: Vec<String>,
    /// Dataset paths that were open.
    pub datasets: Vec<String>,
    pub active_model: Option<String>,
    pub active_dataset: Option<String>,
    /// Free-form settings (other modules' keys).
    pub settings: Map<String, Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An open session folder.
#[derive(Debug, Clone)]
pub struct Session {
    name: String,
    dir: PathBuf,
}

/// Check a session name: `[A-Za-z0-9_.-]+`, at most 100 chars, not `.`/`..`.
pub fn validate_session_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 100
        || name == "."
        || name == ".."
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        bail!(
            "invalid session name {name:?}: use 1-100 of A-Z a-z 0-9 _ . - (and not \".\" or \"..\")"
        );
    }
    Ok(())
}

impl Session {
    /// Open `<root>/<name>`, creating it and its `labels/`, `runs/`, `evals/`
    /// folders as needed.
    pub fn open(root: &Path, name: &str) -> Result<Session> {
        validate_session_name(name)?;
        let dir = root.join(name);
        for sub in ["labels", "runs", "evals"] {
            fsutil::create_dir_durable(&dir.join(sub))?;
        }
        Ok(Session {
            name: name.to_string(),
            dir,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("session.json")
    }
    pub fn probes_path(&self) -> PathBuf {
        self.dir.join("probes.jsonl")
    }
    pub fn labels_dir(&self) -> PathBuf {
        self.dir.join("labels")
    }
    /// `labels/<dataset-id>.jsonl` (see `dataset::dataset_id`).
    pub fn labels_path(&self, dataset_id: &str) -> PathBuf {
        self.labels_dir().join(format!("{dataset_id}.jsonl"))
    }
    pub fn runs_dir(&self) -> PathBuf {
        self.dir.join("runs")
    }
    pub fn evals_dir(&self) -> PathBuf {
        self.dir.join("evals")
    }
    pub fn run_dir(&self, run_id: &str) -> PathBuf {
        self.runs_dir().join(run_id)
    }
    pub fn eval_dir(&self, eval_id: &str) -> PathBuf {
        self.evals_dir().join(eval_id)
    }

    /// Read `session.json` (defaults when missing; an error naming the file
    /// when it is not valid JSON for a session).
    pub fn load_config(&self) -> Result<SessionConfig> {
        let p = self.config_path();
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("{} is not a valid session file", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SessionConfig {
                created: Some(fsutil::rfc3339(fsutil::now_unix().floor())),
                ..Default::default()
            }),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
        }
    }

    /// Write `session.json` atomically (pretty JSON).
    pub fn save_config(&self, cfg: &SessionConfig) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(cfg)?;
        bytes.push(b'\n');
        fsutil::write_atomic(&self.config_path(), &bytes)
    }

    /// Append one record to `probes.jsonl` durably.
    pub fn append_probe(&self, record: &Value) -> Result<()> {
        let line = serde_json::to_string(record)?;
        fsutil::append_line_durable(&self.probes_path(), line.as_bytes())
    }

    /// All probe records, plus the 1-based numbers of lines that were not
    /// JSON (e.g. a torn last line). Missing file: none.
    pub fn read_probes(&self) -> Result<(Vec<Value>, Vec<usize>)> {
        let p = self.probes_path();
        let bytes = match fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", p.display())),
        };
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice(line) {
                Ok(v) => out.push(v),
                Err(_) => bad.push(i + 1),
            }
        }
        Ok((out, bad))
    }

    /// Reserve a new run folder `runs/<id>/` and return the id.
    pub fn new_run_id(&self) -> Result<String> {
        new_stamped_dir(&self.runs_dir())
    }

    /// Reserve a new recipe-search folder `runs/tune-<stamp>/` and return its id.
    pub fn new_tune_id(&self) -> Result<String> {
        let id = self.new_run_id()?;
        let tuned = format!("tune-{id}");
        std::fs::rename(self.run_dir(&id), self.run_dir(&tuned))
            .with_context(|| format!("{}: cannot create", self.run_dir(&tuned).display()))?;
        Ok(tuned)
    }

    /// Reserve a new eval folder `evals/<id>/` and return the id.
    pub fn new_eval_id(&self) -> Result<String> {
        new_stamped_dir(&self.evals_dir())
    }

    /// Ids of existing runs, sorted (oldest first).
    pub fn list_runs(&self) -> Result<Vec<String>> {
        list_dirs(&self.runs_dir())
    }

    /// Ids of existing evals, sorted (oldest first).
    pub fn list_evals(&self) -> Result<Vec<String>> {
        list_dirs(&self.evals_dir())
    }
}

/// Create `<parent>/<UTC stamp>[-NNN]/` with `create_dir` (so two callers can
/// not get the same id) and return its name.
fn new_stamped_dir(parent: &Path) -> Result<String> {
    fsutil::create_dir_durable(parent)?;
    let stamp = fsutil::compact_stamp(fsutil::now_unix().floor());
    for n in 0..10_000u32 {
        let id = if n == 0 {
            stamp.clone()
        } else {
            format!("{stamp}-{n:03}")
        };
        let dir = parent.join(&id);
        match fs::create_dir(&dir) {
            Ok(()) => {
                fsutil::sync_dir(parent)?;
                return Ok(id);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
        }
    }
    bail!("cannot find a free id in {}", parent.display())
}

fn list_dirs(dir: &Path) -> Result<Vec<String>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    let mut out: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| !n.starts_with('.'))
        .collect();
    out.sort();
    Ok(out)
}

/// Labelled counts of one dataset journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LabelCount {
    pub dataset_id: String,
    pub labelled: usize,
    pub fraud: usize,
}

/// An overview of a session folder.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionSummary {
    pub name: String,
    pub probes: usize,
    pub labels: Vec<LabelCount>,
    pub runs: usize,
    pub evals: usize,
    /// Latest modification time of its files and folders (top levels).
    pub last_modified: Option<SystemTime>,
}

fn mtime(p: &Path) -> Option<SystemTime> {
    fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Summaries of all sessions under `root` (sorted by name; a missing root
/// gives none). Unreadable parts are counted as empty.
pub fn list_sessions(root: &Path) -> Result<Vec<SessionSummary>> {
    let names = list_dirs(root)?;
    let mut out = Vec::new();
    for name in names {
        if validate_session_name(&name).is_err() {
            continue;
        }
        let s = Session {
            dir: root.join(&name),
            name: name.clone(),
        };
        let mut times = vec![
            mtime(&s.dir),
            mtime(&s.config_path()),
            mtime(&s.probes_path()),
        ];
        let probes = fs::read(s.probes_path())
            .map(|b| {
                b.split(|&c| c == b'\n')
                    .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
                    .count()
            })
            .unwrap_or(0);
        let mut labels = Vec::new();
        if let Ok(rd) = fs::read_dir(s.labels_dir()) {
            let mut files: Vec<PathBuf> = rd
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
                .collect();
            files.sort();
            for f in files {
                times.push(mtime(&f));
                let Ok(rep) = Journal::read(&f) else { continue };
                let cur = rep.current_labels();
                labels.push(LabelCount {
                    dataset_id: f
                        .file_stem()
                        .map(|x| x.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    labelled: cur.len(),
                    fraud: cur.values().filter(|l| l.label).count(),
                });
            }
        }
        let runs = list_dirs(&s.runs_dir()).unwrap_or_default();
        let evals = list_dirs(&s.evals_dir()).unwrap_or_default();
        times.extend(runs.iter().map(|r| mtime(&s.run_dir(r))));
        times.extend(evals.iter().map(|e| mtime(&s.eval_dir(e))));
        out.push(SessionSummary {
            name,
            probes,
            labels,
            runs: runs.len(),
            evals: evals.len(),
            last_modified: times.into_iter().flatten().max(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", ".", "..", "a/b", "a b", "ü", "../x"] {
            assert!(Session::open(dir.path(), bad).is_err(), "{bad:?}");
        }
        for good in ["default", "exp-1.2_b", ".hidden"] {
            assert!(Session::open(dir.path(), good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn layout_config_probes_and_ids() {
        let dir = tempfile::tempdir().unwrap();
        let s = Session::open(dir.path(), "demo").unwrap();
        for sub in ["labels", "runs", "evals"] {
            assert!(s.dir().join(sub).is_dir());
        }
        assert_eq!(
            s.labels_path("ds-1"),
            dir.path().join("demo/labels/ds-1.jsonl")
        );

        // config: defaults, round trip, unknown fields kept
        let mut cfg = s.load_config().unwrap();
        assert!(cfg.created.is_some());
        cfg.models.push("models/qwen".into());
        s.save_config(&cfg).unwrap();
        assert_eq!(s.load_config().unwrap(), cfg);
        std::fs::write(
            s.config_path(),
            r#"{"datasets":["a.jsonl"],"future_field":{"x":1},"settings":{"lr":0.001}}"#,
        )
        .unwrap();
        let cfg = s.load_config().unwrap();
        assert_eq!(cfg.datasets, vec!["a.jsonl"]);
        assert_eq!(cfg.extra["future_field"]["x"], 1);
        s.save_config(&cfg).unwrap();
        let text = std::fs::read_to_string(s.config_path()).unwrap();
        assert!(text.contains("future_field"));
        std::fs::write(s.config_path(), "{not json").unwrap();
        assert!(format!("{:#}", s.load_config().unwrap_err()).contains("session.json"));

        s.append_probe(&serde_json::json!({"text": "甲: 你好", "p": 0.9}))
            .unwrap();
        s.append_probe(&serde_json::json!({"text": "b"})).unwrap();
        let (probes, bad) = s.read_probes().unwrap();
        assert_eq!(probes.len(), 2);
        assert!(bad.is_empty());

        let a = s.new_run_id().unwrap();
        let b = s.new_run_id().unwrap();
        assert_ne!(a, b);
        assert!(s.run_dir(&a).is_dir() && s.run_dir(&b).is_dir());
        assert_eq!(a.len(), 15);
        let runs = s.list_runs().unwrap();
        assert_eq!(runs.len(), 2);
        let mut sorted = runs.clone();
        sorted.sort();
        assert_eq!(runs, sorted);
        assert!(s.new_eval_id().is_ok());

        let mut j = Journal::open(&s.labels_path("ds-1")).unwrap();
        j.label("x", true, None, None).unwrap();
        j.label("y", false, None, None).unwrap();
        drop(j);
        Session::open(dir.path(), "other").unwrap();
        let list = list_sessions(dir.path()).unwrap();
        assert_eq!(list.len(), 2);
        let d = &list[0];
        assert_eq!(d.name, "demo");
        assert_eq!((d.probes, d.runs, d.evals), (2, 2, 1));
        assert_eq!(
            d.labels,
            vec![LabelCount {
                dataset_id: "ds-1".into(),
                labelled: 2,
                fraud: 1
            }]
        );
        assert!(d.last_modified.is_some());
        assert_eq!(list[1].probes, 0);
        assert!(list_sessions(&dir.path().join("none")).unwrap().is_empty());
    }
}
