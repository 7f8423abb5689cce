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
//!
//! Rooms: `entry` (one line, reading journal bytes, replay); here the
//! [`Journal`] writer and its locking.

use anyhow::{Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::data::fsutil;

mod entry;
use entry::{parse_chunk, state_of};
pub use entry::{
    parse_journal, replay, Action, JournalBadLine, JournalEntry, JournalReport, LabelState,
};

/// Another writer held the journal's lock for longer than [`LOCK_WAIT`] (a stopped
/// process, say).
#[derive(Debug, thiserror::Error)]
#[error("the label journal {} is locked by another fraudlab window or process (waited {}s)", path.display(), LOCK_WAIT.as_secs())]
pub struct JournalLocked {
    pub path: PathBuf,
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
mod tests;
