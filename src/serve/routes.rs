//! The routes: health, whole-dialogue classification, live conversations turn by turn, and
//! OpenAI-style chat completions ([`super::chat`]). Every error is `{"error": "…"}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use serde_json::json;

use super::bridge::{Bridge, Busy, Ticket};
use super::request::{self, json_response, ApiError};
use crate::data::Sample;
use crate::engine::monitor::MonitorConfig;
use crate::engine::worker::{Command, Event, RequestId};

/// What every handler shares.
pub struct AppState {
    pub bridge: Bridge,
    /// the engine's key for the model
    pub key: String,
    /// the model's display name
    pub model: String,
    pub cfg: MonitorConfig,
    /// whole-dialogue decision threshold of `/v1/classify` (`cfg.threshold` is per turn)
    pub classify_threshold: f64,
    pub max_body: usize,
    /// unix seconds at start (`created` of the model in `/v1/models`)
    pub started: u64,
    /// conversations followed: turns sent to the engine for each
    conversations: Mutex<HashMap<String, usize>>,
}

impl AppState {
    pub fn new(
        bridge: Bridge,
        key: String,
        model: String,
        cfg: MonitorConfig,
        max_body: usize,
    ) -> Self {
        Self {
            bridge,
            key,
            model,
            classify_threshold: cfg.threshold,
            cfg,
            max_body,
            started: unix_now(),
            conversations: Mutex::new(HashMap::new()),
        }
    }

    fn conversations(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        self.conversations.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a request to the engine, or the 503 for a full queue.
    pub fn submit(&self, make: impl FnOnce(RequestId) -> Command) -> Result<Ticket, ApiError> {
        self.bridge.submit(make).map_err(busy)
    }
}

pub type Shared = Arc<AppState>;

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn busy(b: Busy) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "the server is busy: {} request(s) are waiting for the model (at most {}, --queue); retry later",
            b.pending, b.capacity
        ),
    )
}

pub fn router(state: Shared) -> Router {
    let max_body = state.max_body;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/models", get(models))
        .route("/v1/classify", post(classify))
        .route("/v1/conversations/{id}/turns", post(turn))
        .route("/v1/conversations/{id}", delete(end_conversation))
        .route("/v1/chat/completions", post(super::chat::completions))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// The raw body, or the error (JSON) for one over the limit or cut short.
pub fn body(state: &AppState, b: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    b.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is larger than {} bytes (--max-body)",
                    state.max_body
                ),
            )
        } else {
            ApiError::new(
                r.status(),
                format!("cannot read the request body: {}", r.body_text()),
            )
        }
    })
}

fn path_id(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) =
        p.map_err(|r| ApiError::bad_request(format!("bad conversation id: {}", r.body_text())))?;
    request::conversation_id(&id)?;
    Ok(id)
}

/// The engine's error for a request: 500, with its message.
pub fn engine_error(message: String) -> ApiError {
    ApiError::internal(format!("the model failed: {message}"))
}

fn unexpected(e: &Event) -> ApiError {
    ApiError::internal(format!("unexpected engine event {e:?}"))
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!(
        "no route {}; routes: GET /healthz, GET /v1/models, POST /v1/classify, POST /v1/conversations/ID/turns, DELETE /v1/conversations/ID, POST /v1/chat/completions",
        uri.path()
    ))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

async fn healthz(State(s): State<Shared>) -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "status": "ok",
            "model": s.model,
            "threshold": s.cfg.threshold,
            "consecutive": s.cfg.consecutive,
            "pending": s.bridge.pending(),
            "queue": s.bridge.capacity(),
        }),
    )
}

async fn models(State(s): State<Shared>) -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "object": "list",
            "data": [{"id": s.model, "object": "model", "created": s.started, "owned_by": "fraudlab"}],
        }),
    )
}

async fn classify(
    State(s): State<Shared>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let r = request::classify_request(&body(&s, b)?)?;
    let instruction = r.instruction.unwrap_or_else(|| s.cfg.instruction.clone());
    let sample = Sample::fraud(instruction, r.dialogue, None, None, None);
    let mut t = s.submit(|request| Command::Score {
        request,
        key: s.key.clone(),
        samples: vec![sample],
    })?;
    match t.result().await.map_err(engine_error)? {
        Event::Scored { probabilities, .. } => {
            let p = probabilities
                .first()
                .map(|x| x.1)
                .ok_or_else(|| ApiError::internal("the engine scored nothing"))?;
            Ok(json_response(
                StatusCode::OK,
                &json!({"p_fraud": p, "is_fraud": p >= s.classify_threshold, "threshold": s.classify_threshold}),
            ))
        }
        e => Err(unexpected(&e)),
    }
}

async fn turn(
    State(s): State<Shared>,
    p: Result<Path<String>, PathRejection>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let id = path_id(p)?;
    let r = request::turn_request(&body(&s, b)?)?;
    let mut t = {
        let mut convs = s.conversations();
        let sent = convs.get(&id).copied().unwrap_or(0);
        if let Some(ins) = &r.instruction {
            if sent > 0 {
                return Err(ApiError::bad_request(format!(
                    "field `instruction` is only accepted on a conversation's first turn; conversation `{id}` already has {sent} turn(s)"
                )));
            }
            if *ins != s.cfg.instruction {
                return Err(ApiError::bad_request(
                    "field `instruction` differs from the server's instruction: every conversation is scored under the instruction `serve` was started with (--instruction-file, else the adapter's, else the default); leave `instruction` out, or use POST /v1/classify for another instruction",
                ));
            }
        }
        let t = s.submit(|request| Command::MonitorTurn {
            request,
            key: s.key.clone(),
            conversation: id.clone(),
            speaker: r.speaker,
            text: r.text,
        })?;
        *convs.entry(id.clone()).or_insert(0) += 1;
        t
    };
    let e = match t.result().await {
        Ok(e) => e,
        Err(message) => {
            // the engine did not keep the turn
            if let Some(n) = s.conversations().get_mut(&id) {
                *n = n.saturating_sub(1);
            }
            return Err(engine_error(message));
        }
    };
    match e {
        Event::MonitorTurn { result: r, .. } => Ok(json_response(
            StatusCode::OK,
            &json!({
                "conversation": r.conversation,
                "turn": r.turn,
                "speaker": r.speaker,
                "p_fraud": r.p_fraud,
                "alert": r.alert,
                "alert_turn": r.alert_turn,
                "latency_ms": r.latency_ms,
            }),
        )),
        e => Err(unexpected(&e)),
    }
}

async fn end_conversation(
    State(s): State<Shared>,
    p: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = path_id(p)?;
    let mut convs = s.conversations();
    if convs.remove(&id).is_none() {
        return Err(ApiError::not_found(format!(
            "conversation `{id}` is not followed"
        )));
    }
    // in the engine's order, so a later turn starts the conversation afresh
    s.bridge.send(Command::MonitorEnd {
        key: s.key.clone(),
        conversation: id,
    });
    Ok((StatusCode::NO_CONTENT, [(header::CONTENT_LENGTH, "0")]).into_response())
}
