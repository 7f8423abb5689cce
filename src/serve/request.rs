//! Request bodies: parsed from JSON and checked field by field, so that every rejection names
//! the field and the problem. Pure functions (no engine, no sockets), tested below.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use crate::engine::generate::SamplingParams;
use crate::model::ChatMessage;

/// An error answered as `{"error": message}` with `status`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(self.status, &json!({ "error": self.message }))
    }
}

/// A JSON body with `status`.
pub fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The body as a JSON object.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the request body is empty; expected a JSON object",
        ));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    match v {
        Value::Object(o) => Ok(o),
        other => Err(ApiError::bad_request(format!(
            "the request body must be a JSON object, not {}",
            type_name(&other)
        ))),
    }
}

/// Rejects fields other than `known` (for this server's own endpoints, where a misspelt
/// optional field would otherwise be ignored silently).
fn only_known(o: &Map<String, Value>, known: &[&str]) -> Result<(), ApiError> {
    if let Some(k) = o.keys().find(|k| !known.contains(&k.as_str())) {
        let list: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
        return Err(ApiError::bad_request(format!(
            "unknown field `{k}` (expected {})",
            list.join(", ")
        )));
    }
    Ok(())
}

/// A field that is absent or null.
fn absent(o: &Map<String, Value>, k: &str) -> bool {
    matches!(o.get(k), None | Some(Value::Null))
}

fn opt_string(o: &Map<String, Value>, k: &str) -> Result<Option<String>, ApiError> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(ApiError::bad_request(format!(
            "field `{k}` must be a string, not {}",
            type_name(v)
        ))),
    }
}

fn req_string(o: &Map<String, Value>, k: &str) -> Result<String, ApiError> {
    opt_string(o, k)?.ok_or_else(|| ApiError::bad_request(format!("field `{k}` is missing")))
}

/// A string field that must hold more than whitespace.
fn req_text(o: &Map<String, Value>, k: &str) -> Result<String, ApiError> {
    let s = req_string(o, k)?;
    if s.trim().is_empty() {
        return Err(ApiError::bad_request(format!("field `{k}` is empty")));
    }
    Ok(s)
}

fn opt_f64(o: &Map<String, Value>, k: &str) -> Result<Option<f64>, ApiError> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(v) => Err(ApiError::bad_request(format!(
            "field `{k}` must be a number, not {}",
            type_name(v)
        ))),
    }
}

fn opt_u64(o: &Map<String, Value>, k: &str) -> Result<Option<u64>, ApiError> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
            ApiError::bad_request(format!(
                "field `{k}` must be a non-negative integer, not {n}"
            ))
        }),
        Some(v) => Err(ApiError::bad_request(format!(
            "field `{k}` must be a non-negative integer, not {}",
            type_name(v)
        ))),
    }
}

fn opt_bool(o: &Map<String, Value>, k: &str) -> Result<Option<bool>, ApiError> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(ApiError::bad_request(format!(
            "field `{k}` must be a boolean, not {}",
            type_name(v)
        ))),
    }
}

/// `POST /v1/classify`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifyRequest {
    /// `speaker: utterance` lines, scored as given.
    pub dialogue: String,
    pub instruction: Option<String>,
}

pub fn classify_request(body: &[u8]) -> Result<ClassifyRequest, ApiError> {
    let o = parse_object(body)?;
    only_known(&o, &["dialogue", "instruction"])?;
    Ok(ClassifyRequest {
        dialogue: req_text(&o, "dialogue")?,
        instruction: opt_string(&o, "instruction")?,
    })
}

/// `POST /v1/conversations/{id}/turns`.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnRequest {
    pub speaker: String,
    pub text: String,
    pub instruction: Option<String>,
}

pub fn turn_request(body: &[u8]) -> Result<TurnRequest, ApiError> {
    let o = parse_object(body)?;
    only_known(&o, &["speaker", "text", "instruction"])?;
    let speaker = opt_string(&o, "speaker")?.unwrap_or_default();
    if speaker.contains(['\n', '\r']) {
        return Err(ApiError::bad_request(
            "field `speaker` must be one line (a turn is written `speaker: text`)",
        ));
    }
    Ok(TurnRequest {
        speaker,
        text: req_text(&o, "text")?,
        instruction: opt_string(&o, "instruction")?,
    })
}

/// Longest conversation id accepted in a path.
pub const MAX_CONVERSATION_ID: usize = 256;

pub fn conversation_id(id: &str) -> Result<(), ApiError> {
    if id.trim().is_empty() {
        return Err(ApiError::bad_request("the conversation id is empty"));
    }
    if id.len() > MAX_CONVERSATION_ID {
        return Err(ApiError::bad_request(format!(
            "the conversation id is longer than {MAX_CONVERSATION_ID} bytes"
        )));
    }
    Ok(())
}

/// `POST /v1/chat/completions` (the OpenAI shape; fields this server does not use are
/// ignored, those it cannot honour are refused).
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub params: SamplingParams,
    /// false: the seed was chosen by the server.
    pub seeded: bool,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with the token counts.
    pub include_usage: bool,
}

/// Tokens generated when the request gives no `max_tokens`.
pub const DEFAULT_MAX_TOKENS: usize = 256;

pub fn chat_request(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let o = parse_object(body)?;
    opt_string(&o, "model")?;
    let msgs = match o.get("messages") {
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request("field `messages` is missing"))
        }
        Some(Value::Array(a)) => a,
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "field `messages` must be an array, not {}",
                type_name(v)
            )))
        }
    };
    if msgs.is_empty() {
        return Err(ApiError::bad_request("field `messages` is empty"));
    }
    let mut messages = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(ApiError::bad_request(format!(
                "`messages[{i}]` must be an object with `role` and `content`, not {}",
                type_name(m)
            )));
        };
        let role = match m.get("role") {
            Some(Value::String(r)) => r.as_str(),
            None | Some(Value::Null) => {
                return Err(ApiError::bad_request(format!(
                    "field `messages[{i}].role` is missing"
                )))
            }
            Some(v) => {
                return Err(ApiError::bad_request(format!(
                    "field `messages[{i}].role` must be a string, not {}",
                    type_name(v)
                )))
            }
        };
        let role = match role {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            r => {
                return Err(ApiError::bad_request(format!(
                    "field `messages[{i}].role` is `{r}`; expected `system`, `developer`, `user` or `assistant`"
                )))
            }
        };
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            // content parts: only text ones
            Some(Value::Array(parts)) => {
                let mut s = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (p.get("type").and_then(Value::as_str), p.get("text")) {
                        (Some("text"), Some(Value::String(t))) => s.push_str(t),
                        _ => {
                            return Err(ApiError::bad_request(format!(
                                "`messages[{i}].content[{j}]` is not a text part (`{{\"type\": \"text\", \"text\": …}}`); only text is supported"
                            )))
                        }
                    }
                }
                s
            }
            None | Some(Value::Null) => {
                return Err(ApiError::bad_request(format!(
                    "field `messages[{i}].content` is missing"
                )))
            }
            Some(v) => {
                return Err(ApiError::bad_request(format!(
                "field `messages[{i}].content` must be a string or an array of text parts, not {}",
                type_name(v)
            )))
            }
        };
        messages.push(ChatMessage::new(role, content));
    }
    let max_tokens = match opt_u64(&o, "max_completion_tokens")? {
        Some(n) => Some(n),
        None => opt_u64(&o, "max_tokens")?,
    };
    let max_tokens = match max_tokens {
        Some(0) => {
            return Err(ApiError::bad_request(
                "field `max_tokens` must be at least 1",
            ))
        }
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        None => DEFAULT_MAX_TOKENS,
    };
    let temperature = opt_f64(&o, "temperature")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad_request(format!(
            "field `temperature` is {temperature}; expected 0 to 2"
        )));
    }
    let top_p = opt_f64(&o, "top_p")?;
    if let Some(p) = top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(ApiError::bad_request(format!(
                "field `top_p` is {p}; expected above 0 and at most 1"
            )));
        }
    }
    let top_k = opt_u64(&o, "top_k")?.map(|k| usize::try_from(k).unwrap_or(usize::MAX));
    let seed = opt_u64(&o, "seed")?;
    match opt_u64(&o, "n")? {
        None | Some(1) => {}
        Some(n) => {
            return Err(ApiError::bad_request(format!(
                "field `n` is {n}; only one choice (n = 1) is supported"
            )))
        }
    }
    if !absent(&o, "stop") {
        return Err(ApiError::bad_request(
            "field `stop` is not supported (generation stops at the model's end-of-turn token or `max_tokens`)",
        ));
    }
    let stream = opt_bool(&o, "stream")?.unwrap_or(false);
    let include_usage = match o.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(so)) => opt_bool(so, "include_usage")
            .map_err(|e| {
                ApiError::bad_request(e.message.replace("field `", "field `stream_options."))
            })?
            .unwrap_or(false),
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "field `stream_options` must be an object, not {}",
                type_name(v)
            )))
        }
    };
    Ok(ChatRequest {
        messages,
        params: SamplingParams {
            temperature,
            top_k,
            top_p,
            seed: seed.unwrap_or(0),
            max_tokens,
        },
        seeded: seed.is_some(),
        stream,
        include_usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: Result<impl std::fmt::Debug, ApiError>) -> String {
        let e = r.expect_err("expected a rejection");
        assert!(e.status.is_client_error(), "{e:?}");
        e.message
    }

    #[test]
    fn bodies_that_are_not_objects() {
        assert!(err(classify_request(b"{\"dialogue\": ")).contains("not valid JSON"));
        assert!(err(classify_request(b"")).contains("empty"));
        assert!(err(classify_request(b"[1]")).contains("not an array"));
    }

    #[test]
    fn classify_fields() {
        let r = classify_request(br#"{"dialogue": "A: x\nB: y"}"#).unwrap();
        assert_eq!(r.dialogue, "A: x\nB: y");
        assert_eq!(r.instruction, None);
        assert!(err(classify_request(b"{}")).contains("field `dialogue` is missing"));
        assert!(err(classify_request(br#"{"dialogue": 3}"#))
            .contains("`dialogue` must be a string, not a number"));
        assert!(err(classify_request(br#"{"dialogue": "  "}"#)).contains("`dialogue` is empty"));
        assert!(err(classify_request(
            br#"{"dialogue": "x", "instructions": "y"}"#
        ))
        .contains("unknown field `instructions`"));
    }

    #[test]
    fn turn_fields() {
        let r = turn_request(br#"{"speaker": "A", "text": "hi"}"#).unwrap();
        assert_eq!((r.speaker.as_str(), r.text.as_str()), ("A", "hi"));
        assert!(err(turn_request(br#"{"speaker": "A"}"#)).contains("field `text` is missing"));
        assert!(err(turn_request(br#"{"speaker": "A\nB", "text": "x"}"#)).contains("one line"));
        assert!(err(turn_request(br#"{"text": ""}"#)).contains("`text` is empty"));
    }

    #[test]
    fn chat_fields() {
        let r = chat_request(
            br#"{"model": "m", "messages": [{"role": "system", "content": "S"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
                "max_tokens": 5, "temperature": 0, "seed": 3, "stream": true,
                "stream_options": {"include_usage": true}, "presence_penalty": 0}"#,
        )
        .unwrap();
        assert_eq!(r.messages[1], ChatMessage::new("user", "ab"));
        assert_eq!(r.params.max_tokens, 5);
        assert_eq!(r.params.seed, 3);
        assert!(r.seeded && r.stream && r.include_usage);
        let d = chat_request(br#"{"messages": [{"role": "user", "content": "x"}]}"#).unwrap();
        assert_eq!(d.params.max_tokens, DEFAULT_MAX_TOKENS);
        assert!(!d.seeded && !d.stream);
        assert!(err(chat_request(b"{}")).contains("field `messages` is missing"));
        assert!(err(chat_request(br#"{"messages": []}"#)).contains("`messages` is empty"));
        assert!(err(chat_request(br#"{"messages": [{"content": "x"}]}"#))
            .contains("`messages[0].role` is missing"));
        assert!(err(chat_request(
            br#"{"messages": [{"role": "robot", "content": "x"}]}"#
        ))
        .contains("`robot`"));
        assert!(err(chat_request(
            br#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}"#
        ))
        .contains("`max_tokens` must be a non-negative integer"));
        assert!(err(chat_request(
            br#"{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}"#
        ))
        .contains("`temperature` must be a number"));
        assert!(err(chat_request(
            br#"{"messages": [{"role": "user", "content": "x"}], "n": 2}"#
        ))
        .contains("n = 1"));
        assert!(err(chat_request(
            br#"{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}"#
        ))
        .contains("`stream` must be a boolean"));
        assert!(err(chat_request(br#"{"messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": 1}}"#))
            .contains("`stream_options.include_usage`"));
    }
}
