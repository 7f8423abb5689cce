//! Reading dataset files line by line into samples, with bad lines reported.

#[allow(unused_imports)]
use super::*;

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

pub(super) fn open(path: &Path) -> Result<File> {
    let f = File::open(path).with_context(|| format!("cannot open dataset {}", path.display()))?;
    if f.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        bail!("cannot read dataset {}: it is a folder", path.display());
    }
    Ok(f)
}

/// Whether the first non-blank byte (after a BOM) is `[`; consumes nothing
/// but leading whitespace and the BOM.
pub(super) fn starts_with_array<R: BufRead>(r: &mut R, path: &Path) -> Result<bool> {
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

pub(super) fn read_json_array<R: Read>(mut r: R, path: &Path) -> Result<Vec<Value>> {
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

/// Longest line (or CSV record) read: a longer one is reported as a bad line and skipped
/// without being held in memory. Dialogues and documents are far shorter.
pub const MAX_LINE_BYTES: usize = 32 << 20;

/// One physical line: 1-based number and text (or why it is bad: not UTF-8, too long).
pub(super) struct Line {
    pub(super) number: usize,
    pub(super) text: Result<String, String>,
}

/// Reads lines as bytes and checks UTF-8 per line (a BOM on line 1 and a
/// trailing `\r` are removed).
pub(super) struct LineReader<'a, R: BufRead> {
    r: R,
    path: &'a Path,
    number: usize,
    buf: Vec<u8>,
}

/// A raw line: its number and bytes, or the reason it was skipped.
pub(super) type RawLine<'b> = (usize, Result<&'b [u8], String>);

impl<'a, R: BufRead> LineReader<'a, R> {
    pub(super) fn new(r: R, path: &'a Path) -> Self {
        LineReader {
            r,
            path,
            number: 0,
            buf: Vec::new(),
        }
    }

    /// The next line, `None` at the end. A line over [`MAX_LINE_BYTES`] is skipped to its
    /// end without being kept.
    pub(super) fn next_raw(&mut self) -> Result<Option<RawLine<'_>>> {
        self.buf.clear();
        let what = |n: usize| format!("cannot read {} after line {n}", self.path.display());
        let n = (&mut self.r)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut self.buf)
            .with_context(|| what(self.number))?;
        if n == 0 {
            return Ok(None);
        }
        self.number += 1;
        if self.buf.len() > MAX_LINE_BYTES && self.buf.last() != Some(&b'\n') {
            let mut skipped = self.buf.len() as u64;
            loop {
                let chunk = self.r.fill_buf().with_context(|| what(self.number))?;
                if chunk.is_empty() {
                    break;
                }
                let (used, end) = match chunk.iter().position(|&b| b == b'\n') {
                    Some(i) => (i + 1, true),
                    None => (chunk.len(), false),
                };
                self.r.consume(used);
                skipped += used as u64;
                if end {
                    break;
                }
            }
            self.buf.clear();
            return Ok(Some((
                self.number,
                Err(format!(
                    "line is {skipped} bytes long, over the limit of {MAX_LINE_BYTES}"
                )),
            )));
        }
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
        Ok(Some((self.number, Ok(b))))
    }

    pub(super) fn next_line(&mut self) -> Result<Option<Line>> {
        Ok(self.next_raw()?.map(|(number, b)| Line {
            number,
            text: b.and_then(|b| {
                std::str::from_utf8(b)
                    .map(str::to_string)
                    .map_err(|e| format!("invalid UTF-8 at byte {}", e.valid_up_to()))
            }),
        }))
    }
}

// --------------------------------------------------------- JSON items ----

pub(super) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(super) fn as_object(v: &Value) -> Result<&Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("expected a JSON object, got {}", type_name(v)))
}

pub(super) fn req_str(o: &Map<String, Value>, key: &str) -> Result<String, String> {
    match o.get(key) {
        None => Err(format!("missing field `{key}`")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v) => Err(format!(
            "field `{key}` must be a string, got {}",
            type_name(v)
        )),
    }
}

pub(super) fn opt_str(o: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(format!(
            "field `{key}` must be a string or null, got {}",
            type_name(v)
        )),
    }
}

pub(super) fn req_bool(o: &Map<String, Value>, key: &str) -> Result<bool, String> {
    match o.get(key) {
        None => Err(format!("missing field `{key}`")),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(format!(
            "field `{key}` must be a bool, got {}",
            type_name(v)
        )),
    }
}

pub(super) fn req_array<'v>(
    o: &'v Map<String, Value>,
    key: &str,
) -> Result<&'v Vec<Value>, String> {
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

pub(super) fn chat_role(role: &str) -> Option<&'static str> {
    match role {
        "system" => Some("system"),
        "user" | "human" => Some("user"),
        "assistant" | "gpt" => Some("assistant"),
        _ => None,
    }
}

pub(super) fn parse_messages(
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
pub(super) fn parse_item(v: &Value, format: Format) -> Result<Sample, String> {
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
