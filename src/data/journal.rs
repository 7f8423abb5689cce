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
//! a label only after `Ok`. A failed append (a full disk) is truncated away. A
//! torn last line (no trailing newline, or not JSON: what a kill or a crash can
//! leave) is ignored, reported, and cut off (ftruncate + fsync) so new lines are
//! not glued to it; a corrupt line elsewhere is reported and skipped.
//!
//! Several writers (the workbench and `fraudlab label`, in any number of
//! processes) share one journal. Each action takes an exclusive lock on the file
//! (`File::lock`) for the few milliseconds it lasts, first reads the lines the
//! others appended (so an undo sees them), then appends. [`Journal::compact`]
//! rewrites the file atomically (temp file, fsync, rename, fsync folder) under
//! the lock of the file it replaces; a writer that opened the old file notices,
//! once it holds the lock, that the path names another file, and reopens it
//! before it writes — no line goes to the replaced file. [`Journal::open`]
//! compacts a journal whose superseded lines (undone or relabelled) pass
//! [`COMPACT_MIN_SUPERSEDED`] and outnumber the current labels (multi-level undo
//! does not reach back past a compaction). [`Journal::read`] reads without
//! locking.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::data::fsutil;

/// Another writer held the journal's lock for longer than [`LOCK_WAIT`] (a stopped
/// process, say).
#[derive(Debug, thiserror::Error)]
#[error("the label journal {} is locked by another fraudlab window or process (waited {}s)", path.display(), LOCK_WAIT.as_secs())]
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
    parse_chunk(bytes, 0).0
}

/// [`parse_journal`] of bytes that follow `first_line` lines of the file (for line
/// numbers); also the number of lines before `valid_len`.
fn parse_chunk(bytes: &[u8], first_line: usize) -> (JournalReport, usize) {
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
            return (rep, n);
        }
        match parsed.and_then(|v| JournalEntry::from_value(&v)) {
            Ok(entry) => rep.entries.push(entry),
            Err(reason) => rep.bad_lines.push(JournalBadLine {
                line: first_line + n + 1,
                reason,
                text: clip(&lossy),
            }),
        }
    }
    (rep, spans.len())
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

/// How long an action waits for another writer's lock before it gives up.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// [`Journal::open`] compacts a journal with at least this many superseded lines (when
/// they also outnumber the current labels and no line is corrupt).
pub const COMPACT_MIN_SUPERSEDED: usize = 1000;

/// Takes the exclusive lock on `file`, waiting up to [`LOCK_WAIT`]. A file system without
/// locks is used unlocked.
fn lock_exclusive(file: &File, path: &Path) -> Result<()> {
    let start = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) => {
                if start.elapsed() > LOCK_WAIT {
                    return Err(JournalLocked {
                        path: path.to_path_buf(),
                    }
                    .into());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            // file systems without flock support: go on unlocked
            Err(std::fs::TryLockError::Error(_)) => return Ok(()),
        }
    }
}

/// The identity of a file (device, inode).
fn file_id(m: &std::fs::Metadata) -> (u64, u64) {
    (m.dev(), m.ino())
}

/// An open, appendable label journal (see the module docs for how writers share it).
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    /// The identity of `file`; when `path` names another file, it was compacted.
    id: (u64, u64),
    /// Bytes of `file` read and applied, and the lines they hold.
    read_len: u64,
    read_lines: usize,
    report: JournalReport,
    stacks: HashMap<String, Vec<usize>>,
    live: Vec<bool>,
    /// Per entry: appended by another writer while this one was open.
    foreign: Vec<bool>,
    opened: bool,
    /// Lines before and after the compaction done at open.
    compacted: Option<(usize, usize)>,
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

    /// Open (creating it and its folder when missing) for appending: read it, cut off a
    /// torn last line, and compact it when most of its lines are superseded.
    pub fn open(path: &Path) -> Result<Journal> {
        let (file, _created) = fsutil::open_append(path)?;
        let id = file_id(
            &file
                .metadata()
                .with_context(|| format!("cannot stat label journal {}", path.display()))?,
        );
        let mut j = Journal {
            path: path.to_path_buf(),
            file,
            id,
            read_len: 0,
            read_lines: 0,
            report: JournalReport::default(),
            stacks: HashMap::new(),
            live: Vec::new(),
            foreign: Vec::new(),
            opened: false,
            compacted: None,
        };
        j.locked(|j| {
            let lines = j.read_lines;
            let superseded =
                j.report.entries.len() - j.stacks.values().filter(|s| !s.is_empty()).count();
            if superseded >= COMPACT_MIN_SUPERSEDED
                && superseded * 2 > j.report.entries.len()
                && j.report.bad_lines.is_empty()
            {
                j.compact_locked()?;
                j.compacted = Some((lines, j.read_lines));
            }
            Ok(())
        })?;
        j.opened = true;
        Ok(j)
    }

    /// Runs `f` holding the lock on the file `path` names now, after reading what other
    /// writers appended.
    fn locked<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        lock_exclusive(&self.file, &self.path)?;
        let r = self.catch_up().and_then(|()| f(self));
        let _ = self.file.unlock();
        r
    }

    /// Forgets what was read (the file is read again from its start).
    fn reset(&mut self) {
        self.read_len = 0;
        self.read_lines = 0;
        self.report = JournalReport::default();
        self.stacks.clear();
        self.live.clear();
        self.foreign.clear();
    }

    /// With the lock held: follows a compaction by another writer (reopening the file the
    /// path names now), then reads and applies the lines appended since the last read,
    /// cutting off a torn last line.
    fn catch_up(&mut self) -> Result<()> {
        loop {
            match std::fs::metadata(&self.path) {
                Ok(m) if file_id(&m) == self.id => break,
                _ => {
                    let _ = self.file.unlock();
                    let (file, _) = fsutil::open_append(&self.path)?;
                    lock_exclusive(&file, &self.path)?;
                    self.id = file_id(&file.metadata().with_context(|| {
                        format!("cannot stat label journal {}", self.path.display())
                    })?);
                    self.file = file;
                    self.reset();
                }
            }
        }
        let len = self
            .file
            .metadata()
            .with_context(|| format!("cannot stat label journal {}", self.path.display()))?
            .len();
        if len < self.read_len {
            // cut by hand: read it whole again
            self.reset();
        }
        if len == self.read_len {
            return Ok(());
        }
        let mut bytes = vec![0; (len - self.read_len) as usize];
        self.file
            .read_exact_at(&mut bytes, self.read_len)
            .with_context(|| format!("cannot read label journal {}", self.path.display()))?;
        let (chunk, lines) = parse_chunk(&bytes, self.read_lines);
        if chunk.valid_len < bytes.len() as u64 {
            self.file
                .set_len(self.read_len + chunk.valid_len)
                .and_then(|_| self.file.sync_all())
                .with_context(|| {
                    format!(
                        "cannot truncate the torn last line of label journal {}",
                        self.path.display()
                    )
                })?;
        }
        self.read_len += chunk.valid_len;
        self.read_lines += lines;
        let foreign = self.opened;
        for e in chunk.entries {
            self.apply(e, foreign);
        }
        self.report.bad_lines.extend(chunk.bad_lines);
        if chunk.torn_tail.is_some() {
            self.report.torn_tail = chunk.torn_tail;
        }
        self.report.valid_len = self.read_len;
        Ok(())
    }

    fn apply(&mut self, entry: JournalEntry, foreign: bool) {
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
        self.foreign.push(foreign);
        self.report.entries.push(entry);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What was read at open, plus the entries appended since (by this writer and, as of
    /// this writer's last action, by others).
    pub fn report(&self) -> &JournalReport {
        &self.report
    }

    pub fn entries(&self) -> &[JournalEntry] {
        &self.report.entries
    }

    /// Lines before and after the compaction [`Journal::open`] did, if it did one.
    pub fn compacted_at_open(&self) -> Option<(usize, usize)> {
        self.compacted
    }

    /// Reads what other writers appended since this writer's last action.
    pub fn refresh(&mut self) -> Result<()> {
        self.locked(|_| Ok(()))
    }

    /// Appends `entry` durably (with the lock held), then applies it.
    fn append_locked(&mut self, entry: JournalEntry) -> Result<()> {
        let line = entry.to_line();
        fsutil::append_to(&mut self.file, &self.path, line.as_bytes())?;
        self.read_len += line.len() as u64 + 1;
        self.read_lines += 1;
        self.report.valid_len = self.read_len;
        self.apply(entry, false);
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
        let entry = JournalEntry {
            id: id.to_string(),
            action: Action::Label,
            label: Some(label),
            fraud_speaker,
            reason,
            time: fsutil::now_unix(),
        };
        self.locked(|j| j.append_locked(entry))
    }

    /// Undo the sample's most recent live label (whoever wrote it). `Ok(false)` (nothing
    /// written) when it has none.
    pub fn undo(&mut self, id: &str) -> Result<bool> {
        self.locked(|j| j.undo_locked(id))
    }

    fn undo_locked(&mut self, id: &str) -> Result<bool> {
        if self.stacks.get(id).is_none_or(Vec::is_empty) {
            return Ok(false);
        }
        self.append_locked(JournalEntry {
            id: id.to_string(),
            action: Action::Undo,
            label: None,
            fraud_speaker: None,
            reason: None,
            time: fsutil::now_unix(),
        })?;
        Ok(true)
    }

    /// Undo the most recent live label of any sample, leaving alone those other writers
    /// added while this one was open; returns its id.
    pub fn undo_last(&mut self) -> Result<Option<String>> {
        self.locked(|j| {
            let Some(i) = (0..j.live.len())
                .rev()
                .find(|&i| j.live[i] && !j.foreign[i])
            else {
                return Ok(None);
            };
            let id = j.report.entries[i].id.clone();
            j.undo_locked(&id)?;
            Ok(Some(id))
        })
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
        self.locked(Self::compact_locked)
    }

    fn compact_locked(&mut self) -> Result<()> {
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
        // the old file stays locked until the new one has replaced it: a writer waiting for
        // its lock then finds the path naming the new file and reopens
        let file = fsutil::replace_file(&self.path, buf.as_bytes(), |_| Ok(()))
            .with_context(|| format!("cannot compact label journal {}", self.path.display()))?;
        let id = file_id(
            &file
                .metadata()
                .with_context(|| format!("cannot stat label journal {}", self.path.display()))?,
        );
        let old = std::mem::replace(&mut self.file, file);
        let _ = old.unlock();
        self.id = id;
        self.reset();
        self.read_len = buf.len() as u64;
        self.read_lines = entries.len();
        self.report.valid_len = self.read_len;
        for e in entries {
            self.apply(e, false);
        }
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
    }

    #[test]
    fn two_writers_share_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let p = jpath(dir.path());
        let mut a = Journal::open(&p).unwrap();
        let mut b = Journal::open(&p).unwrap();
        a.label("s1", true, None, None).unwrap();
        b.label("s2", false, None, None).unwrap();
        // b's undo sees a's label; a's undo_last leaves b's label alone
        assert!(b.undo("s1").unwrap());
        assert_eq!(
            a.undo_last().unwrap(),
            None,
            "a's only label was undone by b"
        );
        a.refresh().unwrap();
        assert_eq!(a.current_labels(), b.current_labels());
        assert_eq!(a.current_labels().keys().collect::<Vec<_>>(), vec!["s2"]);
        a.label("s3", true, None, None).unwrap();
        assert_eq!(a.undo_last().unwrap().as_deref(), Some("s3"));
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 5);
        assert!(Journal::read(&p).unwrap().bad_lines.is_empty());
    }

    #[test]
    fn a_writer_follows_a_compaction_by_another() {
        let dir = tempfile::tempdir().unwrap();
        let p = jpath(dir.path());
        let mut old = Journal::open(&p).unwrap();
        let mut c = Journal::open(&p).unwrap();
        for i in 0..30 {
            c.label(&format!("s{}", i % 3), i % 2 == 0, None, None)
                .unwrap();
        }
        c.compact().unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap().lines().count(), 3);
        // `old` still holds the replaced file: its next line must reach the new one
        old.label("late", true, None, None).unwrap();
        let on_disk = Journal::read(&p).unwrap().current_labels();
        assert_eq!(on_disk.len(), 4);
        assert!(on_disk["late"].label);
        assert_eq!(old.current_labels(), on_disk);
        c.refresh().unwrap();
        assert_eq!(c.current_labels(), on_disk);
    }

    #[test]
    fn open_compacts_a_journal_of_mostly_superseded_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = jpath(dir.path());
        {
            let mut j = Journal::open(&p).unwrap();
            for i in 0..(COMPACT_MIN_SUPERSEDED + 20) {
                j.label(&format!("s{}", i % 10), i % 3 == 0, None, None)
                    .unwrap();
            }
            assert_eq!(j.compacted_at_open(), None);
        }
        let before = Journal::read(&p).unwrap().current_labels();
        let j = Journal::open(&p).unwrap();
        assert_eq!(
            j.compacted_at_open(),
            Some((COMPACT_MIN_SUPERSEDED + 20, 10))
        );
        assert_eq!(j.current_labels(), before);
        assert_eq!(Journal::read(&p).unwrap().current_labels(), before);
        assert_eq!(std::fs::read_to_string(&p).unwrap().lines().count(), 10);
        // a few superseded lines, or a corrupt line, are left alone
        drop(j);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.extend_from_slice(b"not json\n");
        for _ in 0..COMPACT_MIN_SUPERSEDED {
            bytes.extend_from_slice(br#"{"id":"s1","action":"label","label":true,"time":1}"#);
            bytes.push(b'\n');
        }
        std::fs::write(&p, &bytes).unwrap();
        let j = Journal::open(&p).unwrap();
        assert_eq!(
            j.compacted_at_open(),
            None,
            "a corrupt line stops compaction"
        );
        assert_eq!(j.report().bad_lines.len(), 1);
    }

    #[test]
    fn a_full_disk_loses_no_label_and_labelling_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let p = jpath(dir.path());
        let mut j = Journal::open(&p).unwrap();
        j.label("a", true, None, None).unwrap();
        let before = std::fs::read(&p).unwrap();
        fsutil::simulate_disk_full_after(Some(10));
        let err = j.label("b", false, None, None).unwrap_err();
        fsutil::simulate_disk_full_after(None);
        let msg = format!("{err:#}");
        assert!(
            msg.contains("ds-0123abcd.jsonl") && msg.contains("No space left"),
            "{msg}"
        );
        assert_eq!(std::fs::read(&p).unwrap(), before, "no partial line");
        assert_eq!(j.get("b"), None, "a failed label is not applied");
        j.label("b", false, None, None).unwrap();
        let on_disk = Journal::read(&p).unwrap();
        assert_eq!(on_disk.current_labels().len(), 2);
        assert!(on_disk.torn_tail.is_none() && on_disk.bad_lines.is_empty());
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
