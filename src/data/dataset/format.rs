//! Dataset formats and their detection (extension, then the keys of the first item).

#[allow(unused_imports)]
use super::*;

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

pub(super) fn extension(path: &Path) -> String {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
}

pub(super) fn format_from_extension(path: &Path) -> Option<Format> {
    match extension(path).as_str() {
        "csv" => Some(Format::Csv),
        "txt" => Some(Format::Text),
        _ => None,
    }
}

/// The format a JSON object's keys suggest, if any.
pub(super) fn detect_from_keys(v: &Value) -> Option<Format> {
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
