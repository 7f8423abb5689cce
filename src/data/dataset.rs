//! Dataset formats: reading, format detection, the [`Sample`] type and ids.
//!
//! Every format is read line by line (`BufRead`, bytes, UTF-8 checked per
//! line). A line that is not JSON, lacks a field, has a field of the wrong
//! type or is not valid UTF-8 becomes a [`BadLine`] and the rest of the file
//! still loads. A missing or unreadable file is an error naming the file.
//!
//! Formats ([`Format`]):
//! * `fraud` JSONL: `instruction` (str), `input` (str: the dialogue, one
//!   `speaker: utterance` turn a line, ASCII `:` or full-width `：`), `label`
//!   (bool), optional `fraud_speaker`, `reason` (str or null).
//! * `alpaca`: JSONL or a JSON array file; `instruction`, optional `input`,
//!   `output`. When `output` is JSON with a bool `is_fraud` it gives the label
//!   (and `fraud_speaker`, `reason` inside it).
//! * `chat` JSONL: `{"messages": [{"role": "system|user|assistant", "content": ..}]}`;
//!   labelled when the last assistant message is JSON with `is_fraud`.
//! * `sharegpt` JSONL: `{"conversations": [{"from": "system|human|gpt", "value": ..}]}`;
//!   loaded as chat samples (human→user, gpt→assistant).
//! * `text`: `{"text": ..}` JSONL, or a `.txt` file, which is **one** sample
//!   holding the whole file (trailing whitespace trimmed; empty file → none).
//! * `csv`: turn-level dialogues with header `case,speaker,content,is_fraud`
//!   (RFC 4180 quoting). Turns are grouped by `case` in first-appearance order
//!   into [`Dialogue`]s; each becomes a fraud sample with [`DEFAULT_INSTRUCTION`],
//!   `input` = the turns as `speaker: content` lines, label = any fraud turn,
//!   fraud speaker = the speaker(s) of the fraud turns.
//!
//! Any JSON-based format may also be a JSON array file (first non-blank byte
//! `[`); bad elements are then reported with `line` = the 1-based element index.
//!
//! Ids: every sample's id is 16 hex chars (64 bits) of SHA-256 over its
//! content, see [`Sample::compute_id`]. Identical content gives the same id, so
//! duplicates are dropped by default (counted in the summary);
//! [`LoadOptions::keep_duplicates`] keeps them (they then share an id).

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::data::hash;

/// The instruction given to fraud samples built from CSV dialogues/windows.
pub const DEFAULT_INSTRUCTION: &str = "你是一个分析诈骗案例的专家，你的任务是分析下面对话内容是否存在经济诈骗(is_fraud:<bool>)，如果存在经济诈骗，请找出正在进行诈骗行为的发言者姓名(fraud_speaker:<str>)，并给出你的分析理由(reason:<str>)，最后以json格式输出。";

/// The system prompt of the training recipe.
pub const DEFAULT_SYSTEM: &str = "You are a helpful assistant.";

/// Longest speaker name (in chars) recognised before a colon in a dialogue line.
pub const MAX_SPEAKER_CHARS: usize = 24;

// ------------------------------------------------------------- Format ----

/// A dataset format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Fraud,
    Alpaca,
    Chat,
    #[serde(rename = "sharegpt")]
    ShareGpt,
    Text,
    Csv,
}

impl Format {
    pub const ALL: [Format; 6] = [
        Format::Fraud,
        Format::Alpaca,
        Format::Chat,
        Format::ShareGpt,
        Format::Text,
        Format::Csv,
    ];

    /// Lower-case name: `fraud`, `alpaca`, `chat`, `sharegpt`, `text`, `csv`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Fraud => "fraud",
            Format::Alpaca => "alpaca",
            Format::Chat => "chat",
            Format::ShareGpt => "sharegpt",
            Format::Text => "text",
            Format::Csv => "csv",
        }
    }

    /// Parse a name (case-insensitive; `share-gpt`, `share_gpt`, `txt`, `raw`,
    /// `messages` are accepted too).
    pub fn from_name(s: &str) -> Option<Format> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fraud" => Some(Format::Fraud),
            "alpaca" => Some(Format::Alpaca),
            "chat" | "messages" => Some(Format::Chat),
            "sharegpt" | "share-gpt" | "share_gpt" => Some(Format::ShareGpt),
            "text" | "txt" | "raw" => Some(Format::Text),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }

    /// Detect the format of a file: `.csv` → csv, `.txt` → text, otherwise
    /// by the keys of the first JSON object (line, or array element) with
    /// recognised keys; `fraud` when none is found.
    pub fn detect(path: &Path) -> Result<Format> {
        if let Some(f) = format_from_extension(path) {
            return Ok(f);
        }
        let file = open(path)?;
        let mut reader = BufReader::new(file);
        if starts_with_array(&mut reader, path)? {
            let items = read_json_array(reader, path)?;
            return Ok(items
                .iter()
                .find_map(detect_from_keys)
                .unwrap_or(Format::Fraud));
        }
        let mut lines = LineReader::new(reader, path);
        while let Some(line) = lines.next_line()? {
            if let Ok(text) = line.text {
                if let Ok(v) = serde_json::from_str::<Value>(text.trim()) {
                    if let Some(f) = detect_from_keys(&v) {
                        return Ok(f);
                    }
                }
            }
        }
        Ok(Format::Fraud)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Format {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Format::from_name(s).ok_or_else(|| {
            anyhow!("unknown dataset format {s:?} (expected fraud, alpaca, chat, sharegpt, text or csv)")
        })
    }
}

fn extension(path: &Path) -> String {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
}

fn format_from_extension(path: &Path) -> Option<Format> {
    match extension(path).as_str() {
        "csv" => Some(Format::Csv),
        "txt" => Some(Format::Text),
        _ => None,
    }
}

/// The format a JSON object's keys suggest, if any.
fn detect_from_keys(v: &Value) -> Option<Format> {
    let o = v.as_object()?;
    let has = |k: &str| o.contains_key(k);
    if has("messages") {
        Some(Format::Chat)
    } else if has("conversations") {
        Some(Format::ShareGpt)
    } else if has("label") {
        Some(Format::Fraud)
    } else if has("output") {
        Some(Format::Alpaca)
    } else if has("text") {
        Some(Format::Text)
    } else if has("instruction") || has("input") {
        Some(Format::Fraud)
    } else {
        None
    }
}

// ------------------------------------------------------------ Samples ----

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Message {
        Message {
            role: role.to_string(),
            content: content.into(),
        }
    }
}

/// The content of a sample, by source shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SampleBody {
    Fraud {
        instruction: String,
        input: String,
    },
    Alpaca {
        instruction: String,
        input: String,
        output: String,
    },
    /// Chat and ShareGPT samples (roles normalised to system/user/assistant).
    Chat {
        messages: Vec<Message>,
    },
    Text {
        text: String,
    },
}

/// A dataset sample, usable by training, evaluation and the UI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// 16 hex chars, see [`Sample::compute_id`].
    pub id: String,
    pub body: SampleBody,
    pub label: Option<bool>,
    pub fraud_speaker: Option<String>,
    pub reason: Option<String>,
}

/// A parsed `{"is_fraud": .., "fraud_speaker": .., "reason": ..}` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub is_fraud: bool,
    pub fraud_speaker: Option<String>,
    pub reason: Option<String>,
}

/// Parse an answer as models really write it: a JSON object with `is_fraud` (a bool, or the
/// strings `"true"`/`"false"`), alone or inside a code fence or other text; or an object cut
/// off by the token limit, whose fields are taken as far as they are complete (`is_fraud`
/// when its value was written; a string field up to where it was cut). `fraud_speaker` /
/// `reason` are taken when they are strings. `None`: no decision can be read.
/// The one parser for answers: evaluation, the probe suite and the monitor use it.
pub fn parse_answer(text: &str) -> Option<Answer> {
    let t = text.trim();
    let whole = |o: &serde_json::Map<String, Value>| -> Option<Answer> {
        let is_fraud = json_decision(o.get("is_fraud")?)?;
        let s = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
        Some(Answer {
            is_fraud,
            fraud_speaker: s("fraud_speaker"),
            reason: s("reason"),
        })
    };
    // every `{` from the first: the first complete object with a decision wins
    for (i, _) in t.match_indices('{') {
        let mut it = serde_json::Deserializer::from_str(&t[i..]).into_iter::<Value>();
        if let Some(Ok(Value::Object(o))) = it.next() {
            if let Some(a) = whole(&o) {
                return Some(a);
            }
        }
    }
    // a cut-off object: read its fields one by one
    let start = t.find('{')?;
    let body = &t[start..];
    let is_fraud = match partial_field(body, "is_fraud")? {
        Partial::Bool(b) => b,
        Partial::Str(s, true) if s.eq_ignore_ascii_case("true") => true,
        Partial::Str(s, true) if s.eq_ignore_ascii_case("false") => false,
        _ => return None,
    };
    let s = |k: &str| match partial_field(body, k) {
        Some(Partial::Str(s, _)) => Some(s),
        _ => None,
    };
    Some(Answer {
        is_fraud,
        fraud_speaker: s("fraud_speaker"),
        reason: s("reason"),
    })
}

fn json_decision(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// A field value read from possibly cut-off JSON: a bool, or a string and whether it was
/// closed.
enum Partial {
    Bool(bool),
    Str(String, bool),
}

/// The value of `"key": …` in JSON text that may end anywhere.
fn partial_field(body: &str, key: &str) -> Option<Partial> {
    let pat = format!("\"{key}\"");
    let at = body.find(&pat)? + pat.len();
    let rest = body[at..].trim_start().strip_prefix(':')?.trim_start();
    if rest.starts_with("true") {
        return Some(Partial::Bool(true));
    }
    if rest.starts_with("false") {
        return Some(Partial::Bool(false));
    }
    let mut chars = rest.strip_prefix('"')?.chars();
    let mut out = String::new();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(Partial::Str(out, true)),
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some('u') => {
                    let hex: String = chars.by_ref().take(4).collect();
                    match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                        Some(c) if hex.len() == 4 => out.push(c),
                        _ => break,
                    }
                }
                Some(c) => out.push(c),
                None => break,
            },
            c => out.push(c),
        }
    }
    Some(Partial::Str(out, false))
}

/// The answer JSON exactly as Python's `json.dumps({...}, ensure_ascii=False)`
/// writes it: `{"is_fraud": true}`, or with `fields`
/// `{"is_fraud": true, "fraud_speaker": "..", "reason": ".."}` (`null` for a
/// missing value).
pub fn answer_json(
    is_fraud: bool,
    fraud_speaker: Option<&str>,
    reason: Option<&str>,
    fields: bool,
) -> String {
    let mut s = format!("{{\"is_fraud\": {is_fraud}");
    if fields {
        let js = |v: Option<&str>| match v {
            Some(v) => serde_json::to_string(v).unwrap_or_else(|_| "null".into()),
            None => "null".to_string(),
        };
        s.push_str(", \"fraud_speaker\": ");
        s.push_str(&js(fraud_speaker));
        s.push_str(", \"reason\": ");
        s.push_str(&js(reason));
    }
    s.push('}');
    s
}

/// Split a dialogue line into (speaker, utterance) when it starts with a
/// speaker name (1..=[`MAX_SPEAKER_CHARS`] chars) and `:` or `：`.
fn split_speaker(line: &str) -> Option<(&str, &str)> {
    let (pos, colon) = line.char_indices().find(|&(_, c)| c == ':' || c == '：')?;
    let speaker = line[..pos].trim();
    let n = speaker.chars().count();
    if n == 0 || n > MAX_SPEAKER_CHARS {
        return None;
    }
    Some((speaker, line[pos + colon.len_utf8()..].trim()))
}

/// Parse dialogue text into (speaker, utterance) turns. Blank lines are
/// skipped; a line without a leading `speaker:` continues the previous turn
/// (joined with `\n`), or becomes a turn with an empty speaker if it is first.
pub fn parse_turns(text: &str) -> Vec<(String, String)> {
    let mut turns: Vec<(String, String)> = Vec::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        match split_speaker(line) {
            Some((s, u)) => turns.push((s.to_string(), u.to_string())),
            None => match turns.last_mut() {
                Some(last) => {
                    if !last.1.is_empty() {
                        last.1.push('\n');
                    }
                    last.1.push_str(line);
                }
                None => turns.push((String::new(), line.to_string())),
            },
        }
    }
    turns
}

impl Sample {
    /// A fraud-format sample (id computed).
    pub fn fraud(
        instruction: impl Into<String>,
        input: impl Into<String>,
        label: Option<bool>,
        fraud_speaker: Option<String>,
        reason: Option<String>,
    ) -> Sample {
        Sample::with_id(
            SampleBody::Fraud {
                instruction: instruction.into(),
                input: input.into(),
            },
            label,
            fraud_speaker,
            reason,
        )
    }

    /// An Alpaca sample; the label (and speaker, reason) come from `output`
    /// when it parses as an answer.
    pub fn alpaca(
        instruction: impl Into<String>,
        input: impl Into<String>,
        output: impl Into<String>,
    ) -> Sample {
        let output = output.into();
        let ans = parse_answer(&output);
        Sample::with_id(
            SampleBody::Alpaca {
                instruction: instruction.into(),
                input: input.into(),
                output,
            },
            ans.as_ref().map(|a| a.is_fraud),
            ans.as_ref().and_then(|a| a.fraud_speaker.clone()),
            ans.and_then(|a| a.reason),
        )
    }

    /// A chat sample; labelled when the last assistant message is an answer.
    pub fn chat(messages: Vec<Message>) -> Sample {
        let ans = messages
            .iter()
            .rev()
            .find(|m| m.role == "assistant")
            .and_then(|m| parse_answer(&m.content));
        Sample::with_id(
            SampleBody::Chat { messages },
            ans.as_ref().map(|a| a.is_fraud),
            ans.as_ref().and_then(|a| a.fraud_speaker.clone()),
            ans.and_then(|a| a.reason),
        )
    }

    /// A raw-text sample (unlabelled).
    pub fn text(text: impl Into<String>) -> Sample {
        Sample::with_id(SampleBody::Text { text: text.into() }, None, None, None)
    }

    fn with_id(
        body: SampleBody,
        label: Option<bool>,
        fraud_speaker: Option<String>,
        reason: Option<String>,
    ) -> Sample {
        let mut s = Sample {
            id: String::new(),
            body,
            label,
            fraud_speaker,
            reason,
        };
        s.id = s.compute_id();
        s
    }

    /// The content id: 16 hex chars of SHA-256 of
    /// * fraud, and Alpaca with a parsed label: `instruction \n input` — the
    ///   label is not part of the id, so a hand label or a relabelled export keeps
    ///   the sample's id, and a fraud sample and its Alpaca export share one;
    /// * Alpaca without a label: `"alpaca\n" instruction \n input \n output`;
    /// * chat (and ShareGPT): `"chat\n"` then `role \x1f content \x1e` per message;
    /// * text: `"text\n" text`.
    ///
    /// `fraud_speaker` and `reason` are not part of the id.
    pub fn compute_id(&self) -> String {
        let mut h = hash::Sha256::new();
        match &self.body {
            SampleBody::Fraud { instruction, input } => {
                for part in [instruction.as_str(), "\n", input] {
                    h.update(part.as_bytes());
                }
            }
            SampleBody::Alpaca {
                instruction,
                input,
                output,
            } => {
                let parts: Vec<&str> = match self.label {
                    Some(_) => vec![instruction, "\n", input],
                    None => vec!["alpaca\n", instruction, "\n", input, "\n", output],
                };
                for part in parts {
                    h.update(part.as_bytes());
                }
            }
            SampleBody::Chat { messages } => {
                h.update(b"chat\n");
                for m in messages {
                    h.update(m.role.as_bytes());
                    h.update(b"\x1f");
                    h.update(m.content.as_bytes());
                    h.update(b"\x1e");
                }
            }
            SampleBody::Text { text } => {
                h.update(b"text\n");
                h.update(text.as_bytes());
            }
        }
        hash::hex(&h.finish()[..8])
    }

    /// Short format name of the body: `fraud`, `alpaca`, `chat` or `text`.
    pub fn kind(&self) -> &'static str {
        match self.body {
            SampleBody::Fraud { .. } => "fraud",
            SampleBody::Alpaca { .. } => "alpaca",
            SampleBody::Chat { .. } => "chat",
            SampleBody::Text { .. } => "text",
        }
    }

    /// The dialogue text: fraud → `input`; Alpaca → `input` (or `instruction`
    /// when `input` is empty); chat → the last user message, with a leading
    /// [`DEFAULT_INSTRUCTION`] removed; text → the text.
    pub fn dialogue_text(&self) -> &str {
        match &self.body {
            SampleBody::Fraud { input, .. } => input,
            SampleBody::Alpaca {
                instruction, input, ..
            } => {
                if input.trim().is_empty() {
                    instruction
                } else {
                    input
                }
            }
            SampleBody::Chat { messages } => messages
                .iter()
                .rev()
                .find(|m| m.role == "user")
                .map(|m| {
                    m.content
                        .strip_prefix(DEFAULT_INSTRUCTION)
                        .unwrap_or(&m.content)
                })
                .unwrap_or(""),
            SampleBody::Text { text } => text,
        }
    }

    /// (speaker, utterance) turns of [`Sample::dialogue_text`], see [`parse_turns`].
    pub fn turns(&self) -> Vec<(String, String)> {
        parse_turns(self.dialogue_text())
    }

    /// Distinct non-empty speakers in first-appearance order.
    pub fn speakers(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (s, _) in self.turns() {
            if !s.is_empty() && seen.insert(s.clone()) {
                out.push(s);
            }
        }
        out
    }

    /// Length of [`Sample::dialogue_text`] in chars.
    pub fn char_len(&self) -> usize {
        self.dialogue_text().chars().count()
    }

    /// The first turn, if any.
    pub fn first_turn(&self) -> Option<(String, String)> {
        self.turns().into_iter().next()
    }

    /// The user prompt: `instruction + input` (plain concatenation) for fraud
    /// and Alpaca, the last user message for chat, the text for text.
    pub fn prompt_text(&self) -> String {
        match &self.body {
            SampleBody::Fraud { instruction, input }
            | SampleBody::Alpaca {
                instruction, input, ..
            } => format!("{instruction}{input}"),
            SampleBody::Chat { messages } => messages
                .iter()
                .rev()
                .find(|m| m.role == "user")
                .map(|m| m.content.clone())
                .unwrap_or_default(),
            SampleBody::Text { text } => text.clone(),
        }
    }

    /// The expected assistant answer: for a labelled fraud sample
    /// [`answer_json`] (with `fraud_speaker`/`reason` when `answer_fields`),
    /// for Alpaca its `output`, for chat the last assistant message.
    pub fn expected_answer(&self, answer_fields: bool) -> Option<String> {
        match &self.body {
            SampleBody::Fraud { .. } => self.label.map(|l| {
                answer_json(
                    l,
                    self.fraud_speaker.as_deref(),
                    self.reason.as_deref(),
                    answer_fields,
                )
            }),
            SampleBody::Alpaca { output, .. } => Some(output.clone()),
            SampleBody::Chat { messages } => messages
                .iter()
                .rev()
                .find(|m| m.role == "assistant")
                .map(|m| m.content.clone()),
            SampleBody::Text { .. } => None,
        }
    }

    /// Chat messages per the training recipe: `system` (omitted when empty),
    /// user = [`Sample::prompt_text`], and with `with_answer` the assistant
    /// [`Sample::expected_answer`] (omitted when there is none, e.g. an
    /// unlabelled fraud sample). Chat samples give their own messages
    /// (without `with_answer`: those before the last assistant message).
    pub fn to_chat_messages(
        &self,
        system: &str,
        with_answer: bool,
        answer_fields: bool,
    ) -> Vec<Message> {
        if let SampleBody::Chat { messages } = &self.body {
            if with_answer {
                return messages.clone();
            }
            let end = messages
                .iter()
                .rposition(|m| m.role == "assistant")
                .unwrap_or(messages.len());
            return messages[..end].to_vec();
        }
        let mut out = Vec::with_capacity(3);
        if !system.is_empty() {
            out.push(Message::new("system", system));
        }
        out.push(Message::new("user", self.prompt_text()));
        if with_answer {
            if let Some(a) = self.expected_answer(answer_fields) {
                out.push(Message::new("assistant", a));
            }
        }
        out
    }
}

// ---------------------------------------------------------- Dialogues ----

/// One turn of a turn-level (CSV) dialogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    pub speaker: String,
    pub content: String,
    pub is_fraud: bool,
}

/// A whole dialogue from a turn-level CSV file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dialogue {
    pub case: String,
    pub turns: Vec<Turn>,
}

/// The turns as `speaker: content` lines joined by `\n`.
pub fn turns_to_input(turns: &[Turn]) -> String {
    let mut s = String::new();
    for (i, t) in turns.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        s.push_str(&t.speaker);
        s.push_str(": ");
        s.push_str(&t.content);
    }
    s
}

/// The distinct speakers of the fraud turns (first-appearance order) joined
/// by `", "`; `None` when no turn is a fraud turn.
pub fn fraud_speaker_of(turns: &[Turn]) -> Option<String> {
    let mut names: Vec<&str> = Vec::new();
    for t in turns.iter().filter(|t| t.is_fraud) {
        if !names.contains(&t.speaker.as_str()) {
            names.push(&t.speaker);
        }
    }
    if turns.iter().any(|t| t.is_fraud) {
        Some(names.join(", "))
    } else {
        None
    }
}

/// A fraud sample (with [`DEFAULT_INSTRUCTION`]) from turns.
pub fn sample_from_turns(turns: &[Turn]) -> Sample {
    let label = turns.iter().any(|t| t.is_fraud);
    Sample::fraud(
        DEFAULT_INSTRUCTION,
        turns_to_input(turns),
        Some(label),
        fraud_speaker_of(turns),
        None,
    )
}

impl Dialogue {
    /// Fraud when any turn is.
    pub fn is_fraud(&self) -> bool {
        self.turns.iter().any(|t| t.is_fraud)
    }

    pub fn fraud_speaker(&self) -> Option<String> {
        fraud_speaker_of(&self.turns)
    }

    /// The whole dialogue as one fraud sample.
    pub fn to_sample(&self) -> Sample {
        sample_from_turns(&self.turns)
    }
}

// ------------------------------------------------------------ Loading ----

/// A line that could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadLine {
    pub file: PathBuf,
    /// 1-based line number (for a JSON array file: 1-based element index; for
    /// CSV: the line the record starts on).
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for BadLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.reason)
    }
}

/// How to load a dataset.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Force a format instead of detecting it.
    pub format: Option<Format>,
    /// Keep samples whose id was already seen (they share the id).
    pub keep_duplicates: bool,
}

/// The result of loading a dataset file.
#[derive(Debug, Clone)]
pub struct LoadResult {
    pub path: PathBuf,
    pub format: Format,
    pub samples: Vec<Sample>,
    pub bad_lines: Vec<BadLine>,
    /// Samples dropped because their id was already loaded.
    pub duplicates: usize,
    /// CSV only: `dialogues[i]` is the source of `samples[i]` (empty otherwise).
    pub dialogues: Vec<Dialogue>,
    /// e.g. `loaded 98 samples from FILE, skipped 2 bad lines`.
    pub summary: String,
}

/// Load a dataset, detecting its format.
pub fn load(path: &Path) -> Result<LoadResult> {
    load_with(path, &LoadOptions::default())
}

/// Load a dataset in the given format.
pub fn load_as(path: &Path, format: Format) -> Result<LoadResult> {
    load_with(
        path,
        &LoadOptions {
            format: Some(format),
            ..Default::default()
        },
    )
}

/// Load a dataset with options.
pub fn load_with(path: &Path, opts: &LoadOptions) -> Result<LoadResult> {
    let forced = opts.format.or_else(|| format_from_extension(path));
    let mut bad = Vec::new();
    let mut raw: Vec<Sample> = Vec::new();
    let mut dialogues: Vec<Dialogue> = Vec::new();
    let mut turn_count = 0;
    let format;
    if forced == Some(Format::Csv) {
        format = Format::Csv;
        let (d, b) = read_csv_dialogues(path)?;
        bad = b;
        turn_count = d.iter().map(|d| d.turns.len()).sum();
        raw = d.iter().map(Dialogue::to_sample).collect();
        dialogues = d;
    } else if forced == Some(Format::Text) && extension(path) == "txt" {
        format = Format::Text;
        let mut bytes = Vec::new();
        open(path)?
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(&bytes);
        match std::str::from_utf8(bytes) {
            Ok(t) if t.trim().is_empty() => {}
            Ok(t) => raw.push(Sample::text(t.trim_end())),
            Err(e) => {
                let line = 1 + bytes[..e.valid_up_to()]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count();
                bad.push(BadLine {
                    file: path.to_path_buf(),
                    line,
                    reason: format!("invalid UTF-8 at byte {}", e.valid_up_to()),
                });
            }
        }
    } else {
        let mut reader = BufReader::new(open(path)?);
        if starts_with_array(&mut reader, path)? {
            let items = read_json_array(reader, path)?;
            format = forced
                .or_else(|| items.iter().find_map(detect_from_keys))
                .unwrap_or(Format::Fraud);
            for (i, v) in items.iter().enumerate() {
                match parse_item(v, format) {
                    Ok(s) => raw.push(s),
                    Err(reason) => bad.push(BadLine {
                        file: path.to_path_buf(),
                        line: i + 1,
                        reason: format!("array element {}: {reason}", i + 1),
                    }),
                }
            }
        } else {
            let mut fmt_now = forced;
            // lines before the format is known that were valid JSON objects with
            // unrecognised keys: parse them once the format is known
            let mut pending: Vec<(usize, Value)> = Vec::new();
            let mut lines = LineReader::new(reader, path);
            while let Some(line) = lines.next_line()? {
                let bad_line = |reason: String| BadLine {
                    file: path.to_path_buf(),
                    line: line.number,
                    reason,
                };
                let text = match &line.text {
                    Ok(t) => t.trim(),
                    Err(reason) => {
                        bad.push(bad_line(reason.clone()));
                        continue;
                    }
                };
                if text.is_empty() {
                    continue;
                }
                let v: Value = match serde_json::from_str(text) {
                    Ok(v) => v,
                    Err(e) => {
                        bad.push(bad_line(format!("not JSON: {e}")));
                        continue;
                    }
                };
                let f = match fmt_now {
                    Some(f) => f,
                    None => match detect_from_keys(&v) {
                        Some(f) => {
                            fmt_now = Some(f);
                            for (n, pv) in pending.drain(..) {
                                if let Err(reason) = parse_item(&pv, f) {
                                    bad.push(BadLine {
                                        file: path.to_path_buf(),
                                        line: n,
                                        reason,
                                    });
                                }
                            }
                            f
                        }
                        None => {
                            pending.push((line.number, v));
                            continue;
                        }
                    },
                };
                match parse_item(&v, f) {
                    Ok(s) => raw.push(s),
                    Err(reason) => bad.push(bad_line(reason)),
                }
            }
            format = fmt_now.unwrap_or(Format::Fraud);
            for (n, pv) in pending {
                let reason = match parse_item(&pv, format) {
                    Err(r) => r,
                    Ok(_) => "unrecognised keys".to_string(),
                };
                bad.push(BadLine {
                    file: path.to_path_buf(),
                    line: n,
                    reason,
                });
            }
            bad.sort_by_key(|b| b.line);
        }
    }

    // de-duplicate by id, keeping the first
    let mut duplicates = 0;
    let mut samples = Vec::with_capacity(raw.len());
    let mut kept_dialogues = Vec::new();
    let mut seen = HashSet::new();
    let mut dialogues = dialogues.into_iter();
    for s in raw {
        let d = dialogues.next();
        if !opts.keep_duplicates && !seen.insert(s.id.clone()) {
            duplicates += 1;
            continue;
        }
        samples.push(s);
        kept_dialogues.extend(d);
    }

    let mut summary = format!("loaded {} samples", samples.len());
    if format == Format::Csv {
        summary.push_str(&format!(" ({turn_count} turns)"));
    }
    summary.push_str(&format!(" from {}", path.display()));
    if !bad.is_empty() {
        summary.push_str(&format!(
            ", skipped {} bad line{}",
            bad.len(),
            if bad.len() == 1 { "" } else { "s" }
        ));
    }
    if duplicates > 0 {
        summary.push_str(&format!(
            ", dropped {duplicates} duplicate{}",
            if duplicates == 1 { "" } else { "s" }
        ));
    }
    Ok(LoadResult {
        path: path.to_path_buf(),
        format,
        samples,
        bad_lines: bad,
        duplicates,
        dialogues: kept_dialogues,
        summary,
    })
}

fn open(path: &Path) -> Result<File> {
    let f = File::open(path).with_context(|| format!("cannot open dataset {}", path.display()))?;
    if f.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        bail!("cannot read dataset {}: it is a folder", path.display());
    }
    Ok(f)
}

/// Whether the first non-blank byte (after a BOM) is `[`; consumes nothing
/// but leading whitespace and the BOM.
fn starts_with_array<R: BufRead>(r: &mut R, path: &Path) -> Result<bool> {
    let mut first = true;
    loop {
        let buf = r
            .fill_buf()
            .with_context(|| format!("cannot read {}", path.display()))?;
        if buf.is_empty() {
            return Ok(false);
        }
        if first && buf.starts_with(b"\xef\xbb\xbf") {
            r.consume(3);
            first = false;
            continue;
        }
        first = false;
        let n = buf.iter().take_while(|b| b.is_ascii_whitespace()).count();
        if n == 0 {
            return Ok(buf[0] == b'[');
        }
        r.consume(n);
    }
}

fn read_json_array<R: Read>(mut r: R, path: &Path) -> Result<Vec<Value>> {
    let mut bytes = Vec::new();
    r.read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let v: Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a valid JSON array", path.display()))?;
    match v {
        Value::Array(items) => Ok(items),
        _ => bail!("{} is not a JSON array", path.display()),
    }
}

/// One physical line: 1-based number and text (or why it is not UTF-8).
struct Line {
    number: usize,
    text: Result<String, String>,
}

/// Reads lines as bytes and checks UTF-8 per line (a BOM on line 1 and a
/// trailing `\r` are removed).
struct LineReader<'a, R: BufRead> {
    r: R,
    path: &'a Path,
    number: usize,
    buf: Vec<u8>,
}

impl<'a, R: BufRead> LineReader<'a, R> {
    fn new(r: R, path: &'a Path) -> Self {
        LineReader {
            r,
            path,
            number: 0,
            buf: Vec::new(),
        }
    }

    /// The next line, `None` at the end.
    fn next_raw(&mut self) -> Result<Option<(usize, &[u8])>> {
        self.buf.clear();
        let n = self.r.read_until(b'\n', &mut self.buf).with_context(|| {
            format!(
                "cannot read {} after line {}",
                self.path.display(),
                self.number
            )
        })?;
        if n == 0 {
            return Ok(None);
        }
        self.number += 1;
        let mut b: &[u8] = &self.buf;
        if let Some(x) = b.strip_suffix(b"\n") {
            b = x;
        }
        if let Some(x) = b.strip_suffix(b"\r") {
            b = x;
        }
        if self.number == 1 {
            b = b.strip_prefix(b"\xef\xbb\xbf").unwrap_or(b);
        }
        Ok(Some((self.number, b)))
    }

    fn next_line(&mut self) -> Result<Option<Line>> {
        Ok(self.next_raw()?.map(|(number, b)| Line {
            number,
            text: std::str::from_utf8(b)
                .map(str::to_string)
                .map_err(|e| format!("invalid UTF-8 at byte {}", e.valid_up_to())),
        }))
    }
}

// --------------------------------------------------------- JSON items ----

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn as_object(v: &Value) -> Result<&Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("expected a JSON object, got {}", type_name(v)))
}

fn req_str(o: &Map<String, Value>, key: &str) -> Result<String, String> {
    match o.get(key) {
        None => Err(format!("missing field `{key}`")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v) => Err(format!(
            "field `{key}` must be a string, got {}",
            type_name(v)
        )),
    }
}

fn opt_str(o: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(format!(
            "field `{key}` must be a string or null, got {}",
            type_name(v)
        )),
    }
}

fn req_bool(o: &Map<String, Value>, key: &str) -> Result<bool, String> {
    match o.get(key) {
        None => Err(format!("missing field `{key}`")),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(format!(
            "field `{key}` must be a bool, got {}",
            type_name(v)
        )),
    }
}

fn req_array<'v>(o: &'v Map<String, Value>, key: &str) -> Result<&'v Vec<Value>, String> {
    match o.get(key) {
        None => Err(format!("missing field `{key}`")),
        Some(Value::Array(a)) if a.is_empty() => Err(format!("field `{key}` is empty")),
        Some(Value::Array(a)) => Ok(a),
        Some(v) => Err(format!(
            "field `{key}` must be an array, got {}",
            type_name(v)
        )),
    }
}

fn chat_role(role: &str) -> Option<&'static str> {
    match role {
        "system" => Some("system"),
        "user" | "human" => Some("user"),
        "assistant" | "gpt" => Some("assistant"),
        _ => None,
    }
}

fn parse_messages(
    items: &[Value],
    field: &str,
    role_key: &str,
    content_key: &str,
) -> Result<Vec<Message>, String> {
    let mut out = Vec::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        let o = m
            .as_object()
            .ok_or_else(|| format!("{field}[{i}] must be an object, got {}", type_name(m)))?;
        let role = req_str(o, role_key).map_err(|e| format!("{field}[{i}]: {e}"))?;
        let content = req_str(o, content_key).map_err(|e| format!("{field}[{i}]: {e}"))?;
        let role =
            chat_role(&role).ok_or_else(|| format!("{field}[{i}]: unknown {role_key} {role:?}"))?;
        out.push(Message::new(role, content));
    }
    Ok(out)
}

/// Parse one JSON item in `format`; the error is the bad-line reason.
fn parse_item(v: &Value, format: Format) -> Result<Sample, String> {
    let o = as_object(v)?;
    match format {
        Format::Fraud | Format::Csv => {
            let instruction = req_str(o, "instruction")?;
            let input = req_str(o, "input")?;
            // `label` may be absent or null: an unlabelled dialogue, e.g. one to hand-label.
            let label = match o.get("label") {
                None | Some(Value::Null) => None,
                Some(_) => Some(req_bool(o, "label")?),
            };
            let fraud_speaker = opt_str(o, "fraud_speaker")?;
            let reason = opt_str(o, "reason")?;
            Ok(Sample::fraud(
                instruction,
                input,
                label,
                fraud_speaker,
                reason,
            ))
        }
        Format::Alpaca => {
            let instruction = req_str(o, "instruction")?;
            let input = opt_str(o, "input")?.unwrap_or_default();
            let output = req_str(o, "output")?;
            Ok(Sample::alpaca(instruction, input, output))
        }
        Format::Chat => {
            let items = req_array(o, "messages")?;
            Ok(Sample::chat(parse_messages(
                items, "messages", "role", "content",
            )?))
        }
        Format::ShareGpt => {
            let items = req_array(o, "conversations")?;
            Ok(Sample::chat(parse_messages(
                items,
                "conversations",
                "from",
                "value",
            )?))
        }
        Format::Text => Ok(Sample::text(req_str(o, "text")?)),
    }
}

// ---------------------------------------------------------------- CSV ----

/// A minimal RFC 4180 reader: quoted fields may hold commas, doubled quotes
/// and newlines; `\r\n` line ends are accepted; a quote inside an unquoted
/// field, or text after a closing quote, is kept literally (lenient).
struct CsvReader<'a, R: BufRead> {
    lines: LineReader<'a, R>,
}

enum CsvState {
    FieldStart,
    Unquoted,
    Quoted,
    QuoteInQuoted,
}

/// A CSV record: the line it starts on and its fields, or why it is bad.
type CsvRecord = (usize, Result<Vec<String>, String>);

impl<'a, R: BufRead> CsvReader<'a, R> {
    fn next_record(&mut self) -> Result<Option<CsvRecord>> {
        let mut fields: Vec<Vec<u8>> = Vec::new();
        let mut cur: Vec<u8> = Vec::new();
        let mut state = CsvState::FieldStart;
        let mut start = 0;
        loop {
            let Some((number, bytes)) = self.lines.next_raw()? else {
                if start == 0 {
                    return Ok(None);
                }
                return Ok(Some((start, Err("unterminated quoted field".to_string()))));
            };
            if start == 0 {
                if bytes.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                start = number;
            }
            for &b in bytes {
                state = match state {
                    CsvState::FieldStart => match b {
                        b'"' => CsvState::Quoted,
                        b',' => {
                            fields.push(Vec::new());
                            CsvState::FieldStart
                        }
                        _ => {
                            cur.push(b);
                            CsvState::Unquoted
                        }
                    },
                    CsvState::Unquoted => {
                        if b == b',' {
                            fields.push(std::mem::take(&mut cur));
                            CsvState::FieldStart
                        } else {
                            cur.push(b);
                            CsvState::Unquoted
                        }
                    }
                    CsvState::Quoted => {
                        if b == b'"' {
                            CsvState::QuoteInQuoted
                        } else {
                            cur.push(b);
                            CsvState::Quoted
                        }
                    }
                    CsvState::QuoteInQuoted => match b {
                        b'"' => {
                            cur.push(b'"');
                            CsvState::Quoted
                        }
                        b',' => {
                            fields.push(std::mem::take(&mut cur));
                            CsvState::FieldStart
                        }
                        _ => {
                            cur.push(b);
                            CsvState::Unquoted
                        }
                    },
                };
            }
            if matches!(state, CsvState::Quoted) {
                cur.push(b'\n');
                continue;
            }
            fields.push(cur);
            let mut out = Vec::with_capacity(fields.len());
            for (i, f) in fields.into_iter().enumerate() {
                match String::from_utf8(f) {
                    Ok(s) => out.push(s),
                    Err(e) => {
                        return Ok(Some((
                            start,
                            Err(format!(
                                "invalid UTF-8 in field {} at byte {}",
                                i + 1,
                                e.utf8_error().valid_up_to()
                            )),
                        )))
                    }
                }
            }
            return Ok(Some((start, Ok(out))));
        }
    }
}

fn parse_csv_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// Read a turn-level CSV file (`case,speaker,content,is_fraud`, columns
/// found by header name, any order, extra columns ignored) into dialogues
/// grouped by `case` in first-appearance order, plus its bad records.
pub fn read_csv_dialogues(path: &Path) -> Result<(Vec<Dialogue>, Vec<BadLine>)> {
    let mut csv = CsvReader {
        lines: LineReader::new(BufReader::new(open(path)?), path),
    };
    let header = match csv.next_record()? {
        None => return Ok((Vec::new(), Vec::new())),
        Some((_, Ok(h))) => h,
        Some((n, Err(e))) => bail!("{}:{n}: bad CSV header: {e}", path.display()),
    };
    let header: Vec<String> = header
        .iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    let col = |name: &str| {
        header.iter().position(|h| h == name).ok_or_else(|| {
            anyhow!(
                "{}: the CSV header lacks column `{name}` (expected case,speaker,content,is_fraud; found {})",
                path.display(),
                header.join(",")
            )
        })
    };
    let (c_case, c_speaker, c_content, c_fraud) = (
        col("case")?,
        col("speaker")?,
        col("content")?,
        col("is_fraud")?,
    );
    let need = 1 + c_case.max(c_speaker).max(c_content).max(c_fraud);
    let mut dialogues: Vec<Dialogue> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut bad = Vec::new();
    while let Some((line, rec)) = csv.next_record()? {
        let bad_line = |reason: String| BadLine {
            file: path.to_path_buf(),
            line,
            reason,
        };
        let fields = match rec {
            Ok(f) => f,
            Err(e) => {
                bad.push(bad_line(e));
                continue;
            }
        };
        if fields.len() < need {
            bad.push(bad_line(format!(
                "expected {} fields, found {}",
                header.len(),
                fields.len()
            )));
            continue;
        }
        let Some(is_fraud) = parse_csv_bool(&fields[c_fraud]) else {
            bad.push(bad_line(format!(
                "is_fraud must be True/False/true/false/1/0, got {:?}",
                fields[c_fraud]
            )));
            continue;
        };
        let case = fields[c_case].trim().to_string();
        let turn = Turn {
            speaker: fields[c_speaker].trim().to_string(),
            content: fields[c_content].trim().to_string(),
            is_fraud,
        };
        let i = *index.entry(case.clone()).or_insert_with(|| {
            dialogues.push(Dialogue {
                case,
                turns: Vec::new(),
            });
            dialogues.len() - 1
        });
        dialogues[i].turns.push(turn);
    }
    Ok((dialogues, bad))
}

// ---------------------------------------------------------- Dataset id ----

/// A stable id for a dataset file, used to name its label journal: the file
/// stem with every char outside `[A-Za-z0-9_-]` replaced by `_` (at most 48
/// chars; `dataset` if empty), `-`, and 8 hex chars of SHA-256 of the canonical
/// absolute path (the lexical absolute path when the file does not exist).
/// It depends on where the file is, not on its content, so editing a dataset
/// keeps its journal (sample ids then decide which labels still apply), while
/// two same-named files in different folders get different journals.
pub fn dataset_id(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut clean: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    if clean.is_empty() {
        clean = "dataset".to_string();
    }
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()
                .map(|d| d.join(path))
                .unwrap_or_else(|_| path.to_path_buf())
        }
    });
    let h = hash::short_hash(abs.to_string_lossy().as_bytes(), 8);
    format!("{clean}-{h}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
        p
    }

    fn fraud_line(input: &str, label: bool) -> String {
        serde_json::json!({"instruction": "判断", "input": input, "label": label,
                           "fraud_speaker": if label { "骗子" } else { "" }, "reason": "因为"})
        .to_string()
    }

    #[test]
    fn fraud_jsonl_with_every_bad_line_kind() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        bytes.extend(fraud_line("甲：你好\n乙: 转账", true).bytes()); // 1
        bytes.extend(b"\nnot json\n"); // 2
        bytes.extend(br#"{"instruction":"x","label":true}"#); // 3 missing input
        bytes.extend(b"\n");
        bytes.extend(br#"{"instruction":"x","input":"y","label":"yes"}"#); // 4 wrong type
        bytes.extend(b"\n");
        bytes.extend(b"{\"instruction\":\"x\",\"input\":\"\xff\xfe\",\"label\":true}\n"); // 5 bad utf8
        bytes.extend(b"\n"); // 6 blank: skipped silently
        bytes.extend(fraud_line("甲: 在吗", false).bytes()); // 7
        bytes.extend(b"\n[1,2]\n"); // 8 not an object
        bytes.extend(br#"{"instruction":"x","input":"y","la"#); // 9 torn last line
        let p = write(dir.path(), "d.jsonl", &bytes);
        let r = load(&p).unwrap();
        assert_eq!(r.format, Format::Fraud);
        assert_eq!(r.samples.len(), 2);
        let lines: Vec<usize> = r.bad_lines.iter().map(|b| b.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 8, 9]);
        assert!(r.bad_lines[0].reason.starts_with("not JSON"));
        assert_eq!(r.bad_lines[1].reason, "missing field `input`");
        assert_eq!(
            r.bad_lines[2].reason,
            "field `label` must be a bool, got a string"
        );
        assert!(r.bad_lines[3].reason.contains("UTF-8"));
        assert!(r.bad_lines[4].reason.contains("object"));
        assert!(r.bad_lines[5].reason.starts_with("not JSON"));
        assert_eq!(r.bad_lines[0].file, p);
        assert_eq!(
            r.summary,
            format!("loaded 2 samples from {}, skipped 6 bad lines", p.display())
        );
        let s = &r.samples[0];
        assert_eq!(s.label, Some(true));
        assert_eq!(s.fraud_speaker.as_deref(), Some("骗子"));
        assert_eq!(s.id.len(), 16);
        assert!(s.id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(
            s.turns(),
            vec![("甲".into(), "你好".into()), ("乙".into(), "转账".into())]
        );
        assert_eq!(s.speakers(), vec!["甲", "乙"]);
        assert_eq!(s.prompt_text(), "判断甲：你好\n乙: 转账");
        assert_eq!(s.char_len(), "甲：你好\n乙: 转账".chars().count());
    }

    #[test]
    fn ids_are_stable_and_duplicates_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let a = fraud_line("甲: 1", true);
        let b = fraud_line("甲: 2", false);
        let p = write(dir.path(), "a.jsonl", format!("{a}\n{b}\n{a}\n").as_bytes());
        let r = load(&p).unwrap();
        assert_eq!(r.samples.len(), 2);
        assert_eq!(r.duplicates, 1);
        assert!(r.summary.ends_with("dropped 1 duplicate"), "{}", r.summary);
        let r2 = load_with(
            &p,
            &LoadOptions {
                keep_duplicates: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(r2.samples.len(), 3);
        assert_eq!(r2.samples[0].id, r2.samples[2].id);
        // re-ordered file: same ids
        let p2 = write(dir.path(), "b.jsonl", format!("{b}\n{a}\n").as_bytes());
        let r3 = load(&p2).unwrap();
        assert_eq!(r3.samples[0].id, r.samples[1].id);
        assert_eq!(r3.samples[1].id, r.samples[0].id);
        // id = sha256(instruction \n input): a label does not change it
        assert_eq!(r.samples[0].id, hash::content_id("判断\n甲: 1".as_bytes()));
        let relabelled = Sample::fraud("判断", "甲: 1", Some(false), None, None);
        assert_eq!(relabelled.id, r.samples[0].id);
        let unlabelled = Sample::fraud("判断", "甲: 1", None, None, None);
        assert_eq!(unlabelled.id, r.samples[0].id);
    }

    #[test]
    fn alpaca_array_and_jsonl() {
        let dir = tempfile::tempdir().unwrap();
        let arr = r#"[
          {"instruction": "判断", "input": "甲: 你好", "output": "{\"is_fraud\": true, \"fraud_speaker\": \"甲\", \"reason\": \"r\"}"},
          {"instruction": "写诗", "output": "床前明月光"},
          {"instruction": "x", "input": 3, "output": "y"},
          {"input": "no instruction", "output": "y"}
        ]"#;
        let p = write(dir.path(), "a.json", arr.as_bytes());
        let r = load(&p).unwrap();
        assert_eq!(r.format, Format::Alpaca);
        assert_eq!(r.samples.len(), 2);
        assert_eq!(r.samples[0].label, Some(true));
        assert_eq!(r.samples[0].fraud_speaker.as_deref(), Some("甲"));
        assert_eq!(r.samples[0].reason.as_deref(), Some("r"));
        assert_eq!(r.samples[1].label, None);
        assert_eq!(r.bad_lines.len(), 2);
        assert_eq!(r.bad_lines[0].line, 3);
        assert!(r.bad_lines[0].reason.contains("`input`"));
        assert!(r.bad_lines[1]
            .reason
            .contains("missing field `instruction`"));
        // fraud sample and its Alpaca form share the id
        let f = Sample::fraud("判断", "甲: 你好", Some(true), None, None);
        assert_eq!(f.id, r.samples[0].id);

        // .json holding JSONL
        let line = r#"{"instruction":"i","input":"","output":"{\"is_fraud\": false}"}"#;
        let p = write(dir.path(), "b.json", format!("{line}\n").as_bytes());
        let r = load(&p).unwrap();
        assert_eq!(r.format, Format::Alpaca);
        assert_eq!(r.samples[0].label, Some(false));
        // a broken array file is an error naming the file
        let p = write(dir.path(), "c.json", b"[{\"instruction\": ");
        assert!(format!("{:#}", load(&p).unwrap_err()).contains("c.json"));
    }

    #[test]
    fn chat_and_sharegpt() {
        let dir = tempfile::tempdir().unwrap();
        let chat = r#"{"messages":[{"role":"system","content":"s"},{"role":"user","content":"甲: 转钱"},{"role":"assistant","content":"{\"is_fraud\": true}"}]}
{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}
{"messages":[{"role":"wizard","content":"x"}]}
{"messages":"nope"}
{"messages":[{"role":"user"}]}
"#;
        let p = write(dir.path(), "c.jsonl", chat.as_bytes());
        let r = load(&p).unwrap();
        assert_eq!(r.format, Format::Chat);
        assert_eq!(r.samples.len(), 2);
        assert_eq!(r.samples[0].label, Some(true));
        assert_eq!(r.samples[1].label, None);
        assert_eq!(r.bad_lines.len(), 3);
        assert!(r.bad_lines[0].reason.contains("unknown role"));
        assert!(r.bad_lines[1].reason.contains("must be an array"));
        assert!(r.bad_lines[2].reason.contains("missing field `content`"));
        let m = r.samples[0].to_chat_messages("ignored", false, false);
        assert_eq!(m.len(), 2);
        assert_eq!(r.samples[0].turns(), vec![("甲".into(), "转钱".into())]);

        let sg = r#"{"conversations":[{"from":"system","value":"s"},{"from":"human","value":"甲: 转钱"},{"from":"gpt","value":"{\"is_fraud\": true}"}]}
{"conversations":[{"from":"robot","value":"x"}]}
"#;
        let p = write(dir.path(), "s.jsonl", sg.as_bytes());
        let r2 = load(&p).unwrap();
        assert_eq!(r2.format, Format::ShareGpt);
        assert_eq!(r2.samples.len(), 1);
        assert_eq!(r2.bad_lines.len(), 1);
        // ShareGPT and chat forms of the same conversation share the id
        assert_eq!(r2.samples[0].id, r.samples[0].id);
        assert_eq!(
            r2.samples[0].to_chat_messages("", true, false)[2].role,
            "assistant"
        );
    }

    #[test]
    fn text_jsonl_and_txt() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "t.jsonl",
            b"{\"text\":\"one\"}\n{\"text\":5}\n{\"text\":\"two\"}\n",
        );
        let r = load(&p).unwrap();
        assert_eq!(r.format, Format::Text);
        assert_eq!(r.samples.len(), 2);
        assert_eq!(r.bad_lines[0].line, 2);
        let p = write(dir.path(), "t.txt", "甲: 你好\n\n乙: 再见\n".as_bytes());
        let r = load(&p).unwrap();
        assert_eq!(r.samples.len(), 1);
        assert_eq!(r.samples[0].turns().len(), 2);
        let p = write(dir.path(), "bad.txt", b"ok\n\xff");
        let r = load(&p).unwrap();
        assert_eq!(r.samples.len(), 0);
        assert_eq!(r.bad_lines[0].line, 2);
        let p = write(dir.path(), "empty.txt", b"  \n");
        assert_eq!(load(&p).unwrap().samples.len(), 0);
    }

    #[test]
    fn csv_quoting_grouping_and_bad_records() {
        let dir = tempfile::tempdir().unwrap();
        let csv = "\u{feff}case,speaker,content,is_fraud\r\n\
            c1,张三,\"你好，我是客服\",False\r\n\
            c2,李四,\"他说\"\"转账\"\"\",true\r\n\
            c1,王五,\"第一行\n第二行\",True\r\n\
            c1,张三,好的,0\r\n\
            c3,赵六,x,maybe\r\n\
            c2,李四,嗯,1\r\n\
            c4,x\r\n\
            c5,周七,\"BADBYTE\",0\r\n\
            c2,钱八,还有,false\r\n\
            c9,a,\"never closed,1\n";
        let csv = csv.replace("BADBYTE", "\u{1}").into_bytes();
        let csv: Vec<u8> = csv
            .into_iter()
            .map(|b| if b == 1 { 0xff } else { b })
            .collect();
        let p = write(dir.path(), "d.csv", &csv);
        let (dialogues, bad) = read_csv_dialogues(&p).unwrap();
        assert_eq!(dialogues.len(), 2);
        assert_eq!(dialogues[0].case, "c1");
        assert_eq!(dialogues[0].turns.len(), 3);
        assert_eq!(dialogues[0].turns[0].content, "你好，我是客服");
        assert_eq!(dialogues[0].turns[1].content, "第一行\n第二行");
        assert!(dialogues[0].turns[1].is_fraud);
        assert_eq!(dialogues[1].turns[0].content, "他说\"转账\"");
        assert_eq!(dialogues[1].turns.len(), 3);
        let bad_lines: Vec<usize> = bad.iter().map(|b| b.line).collect();
        assert_eq!(bad_lines, vec![7, 9, 10, 12]);
        assert!(bad[0].reason.contains("is_fraud"));
        assert!(bad[1].reason.contains("expected 4 fields"));
        assert!(bad[2].reason.contains("UTF-8"));
        assert!(bad[3].reason.contains("unterminated"));

        let r = load(&p).unwrap();
        assert_eq!(r.format, Format::Csv);
        assert_eq!(r.samples.len(), 2);
        assert_eq!(r.dialogues.len(), 2);
        let s = &r.samples[0];
        assert_eq!(s.label, Some(true));
        assert_eq!(s.fraud_speaker.as_deref(), Some("王五"));
        match &s.body {
            SampleBody::Fraud { instruction, input } => {
                assert_eq!(instruction, DEFAULT_INSTRUCTION);
                assert_eq!(
                    input,
                    "张三: 你好，我是客服\n王五: 第一行\n第二行\n张三: 好的"
                );
            }
            _ => panic!(),
        }
        assert_eq!(r.samples[1].fraud_speaker.as_deref(), Some("李四"));
        assert!(r.summary.contains("(6 turns)") && r.summary.contains("4 bad lines"));

        let p = write(dir.path(), "h.csv", b"case,who,content,is_fraud\nc,a,b,0\n");
        assert!(format!("{:#}", load(&p).unwrap_err()).contains("`speaker`"));
    }

    #[test]
    fn detection_and_override() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "x.data",
            b"garbage\n{\"foo\":1}\n{\"messages\":[{\"role\":\"user\",\"content\":\"q\"}]}\n",
        );
        assert_eq!(Format::detect(&p).unwrap(), Format::Chat);
        let r = load(&p).unwrap();
        assert_eq!(r.samples.len(), 1);
        assert_eq!(r.bad_lines.len(), 2);
        assert_eq!(r.bad_lines[1].line, 2);
        // explicit override: text-format reading of the same file
        let r = load_as(&p, Format::Text).unwrap();
        assert_eq!(r.format, Format::Text);
        assert_eq!(r.samples.len(), 0);
        assert_eq!(r.bad_lines.len(), 3);
        assert_eq!("ShareGPT".parse::<Format>().unwrap(), Format::ShareGpt);
        assert!("yaml".parse::<Format>().is_err());
        let err = load(&dir.path().join("missing.jsonl")).unwrap_err();
        assert!(format!("{err:#}").contains("missing.jsonl"));
    }

    #[test]
    fn turns_and_chat_messages() {
        let t = parse_turns("前言\n甲：你好: 朋友\n  继续说\n\n乙:好\n这是一个非常非常非常非常非常非常非常非常非常长的前缀: 不是说话人");
        assert_eq!(
            t,
            vec![
                ("".into(), "前言".into()),
                ("甲".into(), "你好: 朋友\n继续说".into()),
                (
                    "乙".into(),
                    "好\n这是一个非常非常非常非常非常非常非常非常非常长的前缀: 不是说话人".into()
                ),
            ]
        );
        let s = Sample::fraud(
            "指令",
            "甲: 你好",
            Some(true),
            Some("甲".into()),
            Some("他\"骗\"人\n".into()),
        );
        let m = s.to_chat_messages(DEFAULT_SYSTEM, true, false);
        assert_eq!(m[0], Message::new("system", "You are a helpful assistant."));
        assert_eq!(m[1], Message::new("user", "指令甲: 你好"));
        assert_eq!(m[2], Message::new("assistant", "{\"is_fraud\": true}"));
        let m = s.to_chat_messages(DEFAULT_SYSTEM, true, true);
        assert_eq!(
            m[2].content,
            "{\"is_fraud\": true, \"fraud_speaker\": \"甲\", \"reason\": \"他\\\"骗\\\"人\\n\"}"
        );
        assert_eq!(s.to_chat_messages("", false, false).len(), 1);
        assert_eq!(
            answer_json(false, None, None, true),
            "{\"is_fraud\": false, \"fraud_speaker\": null, \"reason\": null}"
        );
        assert_eq!(s.first_turn(), Some(("甲".into(), "你好".into())));
        assert_eq!(
            parse_answer("```json\n{\"is_fraud\": false}\n```").map(|a| a.is_fraud),
            Some(false)
        );
        assert_eq!(parse_answer("{\"is_fraud\": 1}"), None);
        // text around the object, and objects cut off by the token limit
        let a = parse_answer("答案如下：{\"is_fraud\": true, \"fraud_speaker\": \"张三\"} 以上").unwrap();
        assert!(a.is_fraud);
        assert_eq!(a.fraud_speaker.as_deref(), Some("张三"));
        let a = parse_answer("{\"is_fraud\": true, \"fraud_speaker\": \"李\\\"四\", \"reason\": \"冒充客服索要验证").unwrap();
        assert!(a.is_fraud);
        assert_eq!(a.fraud_speaker.as_deref(), Some("李\"四"));
        assert_eq!(a.reason.as_deref(), Some("冒充客服索要验证"));
        assert_eq!(parse_answer("{\"is_fraud\": fa"), None);
        assert_eq!(parse_answer("{\"is_fraud\""), None);
        assert_eq!(parse_answer("no json here"), None);
    }

    #[test]
    fn dataset_ids() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "my data.v1.jsonl", b"");
        let id = dataset_id(&p);
        let (stem, h) = id.rsplit_once('-').unwrap();
        assert_eq!(stem, "my_data_v1");
        assert_eq!(h.len(), 8);
        assert_eq!(dataset_id(&p), id);
        let q = dir.path().join("other").join("my data.v1.jsonl");
        assert_ne!(dataset_id(&q), id);
    }
}
