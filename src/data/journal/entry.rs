//! One journal line ([`JournalEntry`]), reading journal bytes ([`parse_journal`]: torn tail,
//! corrupt lines) and replaying entries to the current labels.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};

use crate::data::fsutil;

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
pub(super) fn parse_chunk(bytes: &[u8], first_line: usize) -> (JournalReport, usize) {
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

pub(super) fn state_of(e: &JournalEntry) -> LabelState {
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
