//! The answer JSON: writing it as the training target, and the one tolerant parser of
//! what models answer.

#[allow(unused_imports)]
use super::*;

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

pub(super) fn json_decision(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// A field value read from possibly cut-off JSON: a bool, or a string and whether it was
/// closed.
pub(super) enum Partial {
    Bool(bool),
    Str(String, bool),
}

/// The value of `"key": …` in JSON text that may end anywhere.
pub(super) fn partial_field(body: &str, key: &str) -> Option<Partial> {
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
