//! The hand-label journal: `sessions/<name>/labels/<dataset-id>.jsonl`.
//!
//! Append-only, one JSON object per line per action:
//! ```text
//! {"id":"0123456789abcdef","action":"label","label":true,"fraud_speaker":"甲","reason":null,"time":1795445701.123}
//! {"id":"0123456789abcdef","action":"undo","time":1795445702.5}
//! ```
//! `time` is written as unix seconds (float); an RFC 3339 string is accepted
//! on read. An `undo` reverts that sample's most recent label that is not yet
//! undone (multi-level, per sample); an undo with nothing to revert is a no-op.
//!
//! Durability: every action is one line written with a single `write` to an
//! `O_APPEND` file and `fdatasync`ed before the call returns `Ok` — acknowledge
//! a label only after `Ok`. A failed append is truncated away. On open, a torn
//! last line (no trailing newline, or not JSON) is ignored, reported, and cut
//! off (ftruncate + fsync) so new lines are not glued to it; a corrupt line
//! elsewhere is reported and skipped. [`Journal::compact`] rewrites the file
//! atomically (temp file, fsync, rename, fsync folder).
//!
//! A [`Journal`] holds an exclusive advisory lock (`flock`) on its file, so a
//! second writer — another process, or a second `Journal` on the same file in
//! this process — gets a [`JournalLocked`] error instead of racing (a
//! compaction by one writer would otherwise drop lines appended by the
//! other). [`Journal::read`] reads without locking.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Read;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::data::fsutil;

/// Another `Journal` holds the lock on this file.
#[derive(Debug, thiserror::Error)]
#[error("the label journal {path} is open in another fraudlab window or process")]
pub struct JournalLocked {
    pub path: PathBuf,
}

/// A journal action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Label,
    Undo,
}

/// One journal line.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalEntry {
    pub id: String,
    pub action: Action,
    /// `Some` for `label`, `None` for `undo`.
    pub label: Option<bool>,
    pub fraud_speaker: Option<String>,
    pub reason: Option<String>,
    /// Unix seconds.
    pub time: f64,
}

impl JournalEntry {
    /// The JSON line (without newline).
    pub fn to_line(&self) -> String {
        let time = if self.time.is_finite() {
            self.time
        } else {
            0.0
        };
        let v = match self.action {
            Action::Label => json!({
                "id": self.id,
                "action": "label",
                "label": self.label.unwrap_or(false),
                "fraud_speaker": self.fraud_speaker,
                "reason": self.reason,
                "time": time,
            }),
            Action::Undo => json!({"id": self.id, "action": "undo", "time": time}),
        };
        v.to_string()
    }

    /// Parse one line; the error is the reason it is bad.
    pub fn parse(text: &str) -> Result<JournalEntry, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        Self::from_value(&v)
    }

    fn from_value(v: &Value) -> Result<JournalEntry, String> {
        let o: &Map<String, Value> = v.as_object().ok_or("not a JSON object")?;
        let id = match o.get("id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(_) => return Err("field `id` must be a non-empty string".into()),
            None => return Err("missing field `id`".into()),
        };
        let action = match o.get("action").and_then(Value::as_str) {
            Some("label") => Action::Label,
            Some("undo") => Action::Undo,
            Some(a) => return Err(format!("unknown action {a:?}")),
            None => return Err("missing or non-string field `action`".into()),
        };
        let label = match (action, o.get("label")) {
            (Action::Label, Some(Value::Bool(b))) => Some(*b),
            (Action::Label, _) => return Err("a label entry needs a bool `label`".into()),
            (Action::Undo, _) => None,
        };
        let opt = |k: &str| -> Result<Option<String>, String> {
            match o.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(format!("field `{k}` must be a string or null")),
            }
        };
        let time = match o.get("time") {
            None | Some(Value::Null) => 0.0,
            Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
            Some(Value::String(s)) => fsutil::parse_rfc3339(s)
                .ok_or_else(|| format!("field `time` is not RFC 3339: {s:?}"))?,
            Some(_) => return Err("field `time` must be a number or an RFC 3339 string".into()),
        };
        Ok(JournalEntry {
            id,
            action,
            label,
            fraud_speaker: opt("fraud_speaker")?,
            reason: opt("reason")?,
            time,
        })
    }
}

/// A corrupt journal line that was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalBadLine {
    /// 1-based line number.
    pub line: usize,
    pub reason: String,
    /// The line (lossy UTF-8, at most 200 chars).
    pub text: String,
}

/// What reading a journal found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JournalReport {
    pub entries: Vec<JournalEntry>,
    /// The ignored torn last line (lossy UTF-8, at most 200 chars).
    pub torn_tail: Option<String>,
    pub bad_lines: Vec<JournalBadLine>,
    /// Bytes up to the end of the last complete line (where a torn tail starts).
    pub valid_len: u64,
}

impl JournalReport {
    /// The current labels by replaying the entries.
    pub fn current_labels(&self) -> BTreeMap<String, LabelState> {
        replay(&self.entries)
    }

    /// A one-line description of problems found, if any.
    pub fn problems(&self) -> Option<String> {
        let mut parts = Vec::new();
        if !self.bad_lines.is_empty() {
            let lines: Vec<String> = self.bad_lines.iter().map(|b| b.line.to_string()).collect();
            parts.push(format!("skipped corrupt line(s) {}", lines.join(", ")));
        }
        if self.torn_tail.is_some() {
            parts.push("ignored a torn last line (an unfinished write)".to_string());
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

fn clip(s: &str) -> String {
    s.chars().take(200).collect()
}

/// Parse journal bytes. The last non-blank line is torn when it has no
/// trailing newline or is not JSON; blank lines are skipped.
pub fn parse_journal(bytes: &[u8]) -> JournalReport {
    let mut spans: Vec<(usize, usize, bool)> = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        match bytes[pos..].iter().position(|&b| b == b'\n') {
            Some(i) => {
                spans.push((pos, pos + i, true));
                pos += i + 1;
            }
            None => {
                spans.push((pos, bytes.len(), false));
                pos = bytes.len();
            }
        }
    }
    let blank = |s: &[u8]| s.iter().all(u8::is_ascii_whitespace);
    let last = spans.iter().rposition(|&(s, e, _)| !blank(&bytes[s..e]));
    let mut rep = JournalReport {
        valid_len: bytes.len() as u64,
        ..Default::default()
    };
    for (n, &(s, e, has_nl)) in spans.iter().enumerate() {
        let raw = &bytes[s..e];
        if blank(raw) {
            continue;
        }
        let lossy = String::from_utf8_lossy(raw);
        let parsed: Result<Value, String> = std::str::from_utf8(raw)
            .map_err(|e| format!("invalid UTF-8 at byte {}", e.valid_up_to()))
            .and_then(|t| serde_json::from_str(t.trim()).map_err(|e| format!("not JSON: {e}")));
        if Some(n) == last && (!has_nl || parsed.is_err()) {
            rep.torn_tail = Some(clip(&lossy));
            rep.valid_len = s as u64;
            break;
        }
        match parsed.and_then(|v| JournalEntry::from_value(&v)) {
            Ok(entry) => rep.entries.push(entry),
            Err(reason) => rep.bad_lines.push(JournalBadLine {
                line: n + 1,
                reason,
                text: clip(&lossy),
            }),
        }
    }
    rep
}

/// The current label of a sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelState {
    pub label: bool,
    pub fraud_speaker: Option<String>,
    pub reason: Option<String>,
    pub time: f64,
}

/// Per-id stacks of live label entries (indices into `entries`), and which
/// label entries are live (not undone).
fn replay_stacks(entries: &[JournalEntry]) -> (HashMap<String, Vec<usize>>, Vec<bool>) {
    let mut stacks: HashMap<String, Vec<usize>> = HashMap::new();
    let mut live = vec![false; entries.len()];
    for (i, e) in entries.iter().enumerate() {
        match e.action {
            Action::Label => {
                stacks.entry(e.id.clone()).or_default().push(i);
                live[i] = true;
            }
            Action::Undo => {
                if let Some(j) = stacks.get_mut(&e.id).and_then(Vec::pop) {
                    live[j] = false;
                }
            }
        }
    }
    (stacks, live)
}

fn state_of(e: &JournalEntry) -> LabelState {
    LabelState {
        label: e.label.unwrap_or(false),
        fraud_speaker: e.fraud_speaker.clone(),
        reason: e.reason.clone(),
        time: e.time,
    }
}

/// Replay entries (labels, then undos in order) to the current labels.
pub fn replay(entries: &[JournalEntry]) -> BTreeMap<String, LabelState> {
    let (stacks, _) = replay_stacks(entries);
    stacks
        .into_iter()
        .filter_map(|(id, st)| st.last().map(|&i| (id, state_of(&entries[i]))))
        .collect()
}

fn lock_exclusive(file: &File, path: &Path) -> Result<()> {
    // SAFETY: flock on a valid, open file descriptor owned by `file`.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(JournalLocked {
                path: path.to_path_buf(),
            }
            .into());
        }
        // file systems without flock support: go on unlocked
    }
    Ok(())
}

/// An open, locked, appendable label journal.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    report: JournalReport,
    stacks: HashMap<String, Vec<usize>>,
    live: Vec<bool>,
}

impl Journal {
    /// Read a journal without opening it for appending (no lock, no repair).
    /// A missing file is an empty journal.
    pub fn read(path: &Path) -> Result<JournalReport> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(parse_journal(&bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(JournalReport::default()),
            Err(e) => {
                Err(e).with_context(|| format!("cannot read label journal {}", path.display()))
            }
        }
    }

    /// Open (creating it and its folder when missing) for appending: lock it,
    /// read it, and cut off a torn last line.
    pub fn open(path: &Path) -> Result<Journal> {
        let (mut file, _created) = fsutil::open_append(path)?;
        lock_exclusive(&file, path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .with_context(|| format!("cannot read label journal {}", path.display()))?;
        let report = parse_journal(&bytes);
        if report.valid_len < bytes.len() as u64 {
            file.set_len(report.valid_len)
                .and_then(|_| file.sync_all())
                .with_context(|| {
                    format!(
                        "cannot truncate the torn last line of label journal {}",
                        path.display()
                    )
                })?;
        }
        let (stacks, live) = replay_stacks(&report.entries);
        Ok(Journal {
            path: path.to_path_buf(),
            file,
            report,
            stacks,
            live,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What was read at open, plus the entries appended since.
    pub fn report(&self) -> &JournalReport {
        &self.report
    }

    pub fn entries(&self) -> &[JournalEntry] {
        &self.report.entries
    }

    /// Append `entry` durably, then apply it.
    fn append(&mut self, entry: JournalEntry) -> Result<()> {
        fsutil::append_to(&mut self.file, &self.path, entry.to_line().as_bytes())?;
        let i = self.report.entries.len();
        match entry.action {
            Action::Label => {
                self.stacks.entry(entry.id.clone()).or_default().push(i);
                self.live.push(true);
            }
            Action::Undo => {
                self.live.push(false);
                if let Some(j) = self.stacks.get_mut(&entry.id).and_then(Vec::pop) {
                    self.live[j] = false;
                }
            }
        }
        self.report.entries.push(entry);
        Ok(())
    }

    /// Record a label; it is on disk when this returns `Ok`.
    pub fn label(
        &mut self,
        id: &str,
        label: bool,
        fraud_speaker: Option<String>,
        reason: Option<String>,
    ) -> Result<()> {
        anyhow::ensure!(!id.is_empty(), "cannot label a sample with an empty id");
        self.append(JournalEntry {
            id: id.to_string(),
            action: Action::Label,
            label: Some(label),
            fraud_speaker,
            reason,
            time: fsutil::now_unix(),
        })
    }

    /// Undo the sample's most recent live label. `Ok(false)` (nothing written)
    /// when it has none.
    pub fn undo(&mut self, id: &str) -> Result<bool> {
        if self.stacks.get(id).is_none_or(Vec::is_empty) {
            return Ok(false);
        }
        self.append(JournalEntry {
            id: id.to_string(),
            action: Action::Undo,
            label: None,
            fraud_speaker: None,
            reason: None,
            time: fsutil::now_unix(),
        })?;
        Ok(true)
    }

    /// Undo the most recent live label of any sample; returns its id.
    pub fn undo_last(&mut self) -> Result<Option<String>> {
        let Some(i) = self.live.iter().rposition(|&l| l) else {
            return Ok(None);
        };
        let id = self.report.entries[i].id.clone();
        self.undo(&id)?;
        Ok(Some(id))
    }

    /// The current label of one sample.
    pub fn get(&self, id: &str) -> Option<LabelState> {
        let &i = self.stacks.get(id)?.last()?;
        Some(state_of(&self.report.entries[i]))
    }

    /// All current labels, by id.
    pub fn current_labels(&self) -> BTreeMap<String, LabelState> {
        self.stacks
            .iter()
            .filter_map(|(id, st)| {
                st.last()
                    .map(|&i| (id.clone(), state_of(&self.report.entries[i])))
            })
            .collect()
    }

    /// (labelled, fraud, not fraud) counts of the current labels.
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut fraud = 0;
        let mut total = 0;
        for st in self.stacks.values() {
            if let Some(&i) = st.last() {
                total += 1;
                if self.report.entries[i].label == Some(true) {
                    fraud += 1;
                }
            }
        }
        (total, fraud, total - fraud)
    }

    /// Rewrite the journal atomically to one label entry per labelled sample
    /// (ordered by when that label was given, original times kept). Undo
    /// history, corrupt lines and the torn tail are dropped.
    pub fn compact(&mut self) -> Result<()> {
        let mut current: Vec<usize> = self
            .stacks
            .values()
            .filter_map(|s| s.last().copied())
            .collect();
        current.sort_unstable();
        let entries: Vec<JournalEntry> = current
            .iter()
            .map(|&i| self.report.entries[i].clone())
            .collect();
        let mut buf = String::new();
        for e in &entries {
            buf.push_str(&e.to_line());
            buf.push('\n');
        }
        let path = self.path.clone();
        let file =
            fsutil::replace_file(&self.path, buf.as_bytes(), |f| lock_exclusive(f, &path))
                .with_context(|| format!("cannot compact label journal {}", self.path.display()))?;
        self.file = file;
        let (stacks, live) = replay_stacks(&entries);
        self.stacks = stacks;
        self.live = live;
        self.report = JournalReport {
            valid_len: buf.len() as u64,
            entries,
            ..Default::default()
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn jpath(dir: &Path) -> PathBuf {
        dir.join("labels").join("ds-0123abcd.jsonl")
    }

    #[test]
    fn append_undo_replay() {
        let dir = tempfile::tempdir().unwrap();
        let p = jpath(dir.path());
        {
            let mut j = Journal::open(&p).unwrap();
            j.label("a", true, Some("甲".into()), Some("转账".into()))
                .unwrap();
            j.label("b", false, None, None).unwrap();
            j.label("a", false, None, None).unwrap();
            assert!(!j.get("a").unwrap().label);
            assert!(j.undo("a").unwrap());
            assert!(j.get("a").unwrap().label);
            assert_eq!(j.get("a").unwrap().fraud_speaker.as_deref(), Some("甲"));
            assert_eq!(j.counts(), (2, 1, 1));
            assert_eq!(j.undo_last().unwrap().as_deref(), Some("b"));
            assert_eq!(j.undo_last().unwrap().as_deref(), Some("a"));
            assert_eq!(j.undo_last().unwrap(), None);
            assert!(!j.undo("a").unwrap());
            j.label("c", true, None, None).unwrap();
        }
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 7);
        assert!(text.ends_with('\n'));
        let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["action"], "label");
        assert_eq!(first["fraud_speaker"], "甲");
        assert!(first["time"].as_f64().unwrap() > 1.6e9);
        let j = Journal::open(&p).unwrap();
        let cur = j.current_labels();
        assert_eq!(cur.keys().collect::<Vec<_>>(), vec!["c"]);
        assert_eq!(Journal::read(&p).unwrap().current_labels(), cur);
    }

    #[test]
    fn torn_tail_is_ignored_and_truncated_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let p = jpath(dir.path());
        {
            let mut j = Journal::open(&p).unwrap();
            j.label("a", true, None, None).unwrap();
            j.label("b", false, None, None).unwrap();
        }
        let good = std::fs::read(&p).unwrap();
        for tail in [
            &b"{\"id\":\"c\",\"action\":\"la"[..],
            b"{\"id\":\"c\",\"action\":\"label\",\"label\":true}", // complete but unacknowledged
            b"\0\0\0\0",
            b"garbage\n",
        ] {
            let mut bytes = good.clone();
            bytes.extend_from_slice(tail);
            std::fs::write(&p, &bytes).unwrap();
            let r = Journal::read(&p).unwrap();
            assert!(r.torn_tail.is_some(), "{tail:?}");
            assert!(r.bad_lines.is_empty());
            assert_eq!(r.entries.len(), 2);
            assert_eq!(r.valid_len, good.len() as u64);
            assert_eq!(std::fs::read(&p).unwrap(), bytes, "read does not repair");
            let mut j = Journal::open(&p).unwrap();
            assert!(j.report().torn_tail.is_some());
            assert!(j.report().problems().unwrap().contains("torn"));
            assert_eq!(std::fs::read(&p).unwrap(), good);
            j.label("d", true, None, None).unwrap();
            drop(j);
            let r = Journal::read(&p).unwrap();
            assert_eq!(r.torn_tail, None);
            assert_eq!(r.current_labels().len(), 3);
            std::fs::write(&p, &good).unwrap();
        }
    }

    #[test]
    fn corrupt_middle_line_is_reported_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let p = jpath(dir.path());
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let mut f = File::create(&p).unwrap();
        writeln!(
            f,
            r#"{{"id":"a","action":"label","label":true,"time":"2026-11-23T14:55:01Z"}}"#
        )
        .unwrap();
        f.write_all(b"\xff\xfe not json\n").unwrap();
        writeln!(f, r#"{{"id":"b","action":"label","label":"yes"}}"#).unwrap();
        writeln!(f).unwrap();
        writeln!(f, r#"{{"id":"b","action":"label","label":false,"time":5}}"#).unwrap();
        drop(f);
        let mut j = Journal::open(&p).unwrap();
        let r = j.report();
        assert_eq!(r.torn_tail, None);
        assert_eq!(
            r.bad_lines.iter().map(|b| b.line).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert!(r.bad_lines[0].reason.contains("UTF-8"));
        assert!(r.bad_lines[1].reason.contains("bool"));
        assert_eq!(j.get("a").unwrap().time, 1_795_445_701.0);
        assert!(!j.get("b").unwrap().label);
        // bad middle lines are kept on disk (no repair) and appending works
        j.label("c", true, None, None).unwrap();
        assert_eq!(Journal::read(&p).unwrap().bad_lines.len(), 2);
    }

    #[test]
    fn compaction_preserves_the_current_view() {
        let dir = tempfile::tempdir().unwrap();
        let p = jpath(dir.path());
        let mut j = Journal::open(&p).unwrap();
        for i in 0..20 {
            j.label(
                &format!("s{}", i % 5),
                i % 2 == 0,
                Some(format!("sp{i}")),
                None,
            )
            .unwrap();
        }
        j.undo("s1").unwrap();
        j.undo("s2").unwrap();
        j.undo("s2").unwrap();
        j.undo("s2").unwrap();
        j.undo("s2").unwrap();
        let before = j.current_labels();
        assert!(!before.contains_key("s2"));
        j.compact().unwrap();
        assert_eq!(j.current_labels(), before);
        assert_eq!(
            std::fs::read_to_string(&p).unwrap().lines().count(),
            before.len()
        );
        assert_eq!(Journal::read(&p).unwrap().current_labels(), before);
        // appending after compaction goes to the new file
        j.label("s9", true, None, None).unwrap();
        assert_eq!(
            Journal::read(&p).unwrap().current_labels().len(),
            before.len() + 1
        );
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp files left");
        // the compacted file is still locked by `j`
        let err = Journal::open(&p).unwrap_err();
        assert!(err.downcast_ref::<JournalLocked>().is_some());
        drop(j);
        assert!(Journal::open(&p).is_ok());
    }

    #[test]
    fn second_writer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = jpath(dir.path());
        let _j = Journal::open(&p).unwrap();
        let err = Journal::open(&p).unwrap_err();
        assert!(err.to_string().contains("ds-0123abcd.jsonl"));
        assert!(Journal::read(&p).is_ok());
    }

    #[test]
    fn entry_lines_round_trip() {
        let e = JournalEntry {
            id: "x".into(),
            action: Action::Label,
            label: Some(true),
            fraud_speaker: None,
            reason: Some("r".into()),
            time: 12.5,
        };
        assert_eq!(
            e.to_line(),
            r#"{"id":"x","action":"label","label":true,"fraud_speaker":null,"reason":"r","time":12.5}"#
        );
        assert_eq!(JournalEntry::parse(&e.to_line()).unwrap(), e);
        assert!(JournalEntry::parse(r#"{"id":"x","action":"relabel"}"#).is_err());
        assert!(JournalEntry::parse(r#"{"action":"undo"}"#).is_err());
        assert_eq!(
            Journal::read(Path::new("/nonexistent/j.jsonl")).unwrap(),
            JournalReport::default()
        );
    }
}
