//! The turn-level CSV format (`case,speaker,content,is_fraud`, RFC 4180 quoting).

#[allow(unused_imports)]
use super::*;

// ---------------------------------------------------------------- CSV ----

/// A minimal RFC 4180 reader: quoted fields may hold commas, doubled quotes
/// and newlines; `\r\n` line ends are accepted; a quote inside an unquoted
/// field, or text after a closing quote, is kept literally (lenient).
pub(super) struct CsvReader<'a, R: BufRead> {
    lines: LineReader<'a, R>,
}

pub(super) enum CsvState {
    FieldStart,
    Unquoted,
    Quoted,
    QuoteInQuoted,
}

/// A CSV record: the line it starts on and its fields, or why it is bad.
type CsvRecord = (usize, Result<Vec<String>, String>);

impl<'a, R: BufRead> CsvReader<'a, R> {
    pub(super) fn next_record(&mut self) -> Result<Option<CsvRecord>> {
        let mut fields: Vec<Vec<u8>> = Vec::new();
        let mut cur: Vec<u8> = Vec::new();
        let mut state = CsvState::FieldStart;
        let mut start = 0;
        // bytes held for this record; past the cap the record is read to its end and dropped
        let mut held = 0usize;
        let mut too_long: Option<String> = None;
        loop {
            let Some((number, bytes)) = self.lines.next_raw()? else {
                if start == 0 {
                    return Ok(None);
                }
                let why = too_long.unwrap_or_else(|| "unterminated quoted field".to_string());
                return Ok(Some((start, Err(why))));
            };
            let bytes = match bytes {
                Ok(b) => b,
                Err(why) => {
                    // a line too long to hold: the record is bad; a quoted field stays open
                    if start == 0 {
                        start = number;
                    }
                    too_long.get_or_insert(why);
                    if matches!(state, CsvState::Quoted) {
                        continue;
                    }
                    return Ok(Some((start, Err(too_long.unwrap_or_default()))));
                }
            };
            if start == 0 {
                if bytes.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                start = number;
            }
            held += bytes.len() + 1;
            if held > MAX_LINE_BYTES && too_long.is_none() {
                too_long = Some(format!(
                    "record is over the limit of {MAX_LINE_BYTES} bytes (an unterminated quote?)"
                ));
            }
            if too_long.is_some() {
                fields.clear();
                cur.clear();
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
            if let Some(why) = too_long {
                return Ok(Some((start, Err(why))));
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

pub(super) fn parse_csv_bool(s: &str) -> Option<bool> {
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
