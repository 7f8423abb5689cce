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

mod answer;
mod csv;
mod dialogue;
mod format;
mod load;
mod sample;
#[cfg(test)]
mod tests;

pub use answer::*;
pub use csv::*;
pub use dialogue::*;
pub use format::*;
pub use load::*;
pub use sample::*;
#[allow(unused_imports)]
use {answer::*, csv::*, dialogue::*, format::*, load::*, sample::*};

pub const DEFAULT_INSTRUCTION: &str = "你是一个分析诈骗案例的专家，你的任务是分析下面对话内容是否存在经济诈骗(is_fraud:<bool>)，如果存在经济诈骗，请找出正在进行诈骗行为的发言者姓名(fraud_speaker:<str>)，并给出你的分析理由(reason:<str>)，最后以json格式输出。";

/// The system prompt of the training recipe.
pub const DEFAULT_SYSTEM: &str = "You are a helpful assistant.";

/// Longest speaker name (in chars) recognised before a colon in a dialogue line.
pub const MAX_SPEAKER_CHARS: usize = 24;

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
