//! `POST /v1/chat/completions`, in the OpenAI shape: one `chat.completion` object, or with
//! `"stream": true` server-sent events of `chat.completion.chunk` objects ending with
//! `data: [DONE]`. The engine renders the messages with the model's chat template.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::bridge::Ticket;
use super::request::{self, json_response, ApiError};
use super::routes::{body, engine_error, unix_now, Shared};
use crate::engine::generate::{Generation, StopReason};
use crate::engine::worker::{Command, Event};

fn finish_reason(g: &Generation) -> &'static str {
    match g.stop {
        StopReason::MaxTokens => "length",
        StopReason::Eos | StopReason::Cancelled => "stop",
    }
}

fn usage(g: &Generation) -> Value {
    json!({
        "prompt_tokens": g.prompt_tokens,
        "completion_tokens": g.generated_tokens,
        "total_tokens": g.prompt_tokens + g.generated_tokens,
    })
}

/// What every object of one completion repeats.
struct Meta {
    id: String,
    created: u64,
    model: String,
}

impl Meta {
    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        })
    }
}

pub async fn completions(
    State(s): State<Shared>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let mut r = request::chat_request(&body(&s, b)?)?;
    let mut t = s.submit(|request| {
        if !r.seeded {
            // fresh randomness for each request that names no seed
            r.params.seed = unix_now() ^ (request << 32) ^ request;
        }
        Command::Chat {
            request,
            key: s.key.clone(),
            messages: r.messages,
            params: r.params,
        }
    })?;
    let meta = Meta {
        id: format!("chatcmpl-{:x}{:06x}", s.started, t.id),
        created: unix_now(),
        model: s.model.clone(),
    };
    if !r.stream {
        return match t.result().await.map_err(engine_error)? {
            Event::Generated { generation: g, .. } => Ok(json_response(
                StatusCode::OK,
                &json!({
                    "id": meta.id,
                    "object": "chat.completion",
                    "created": meta.created,
                    "model": meta.model,
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": g.text},
                        "logprobs": null,
                        "finish_reason": finish_reason(&g),
                    }],
                    "usage": usage(&g),
                }),
            )),
            e => Err(ApiError::internal(format!("unexpected engine event {e:?}"))),
        };
    }
    // The first event decides the status: an error before any text is a plain 500.
    let first = loop {
        match t.next().await {
            Some(Event::Error { message, .. }) => {
                t.finish();
                return Err(engine_error(message));
            }
            None => {
                t.finish();
                return Err(ApiError::internal(
                    "the engine ended the request without a result",
                ));
            }
            Some(e @ (Event::Token { .. } | Event::Generated { .. })) => break e,
            Some(_) => continue,
        }
    };
    let mut st = ChatStream {
        ticket: t,
        first: Some(first),
        streamed: String::new(),
        out: VecDeque::new(),
        finished: false,
        include_usage: r.include_usage,
        meta,
    };
    st.out.push_back(
        st.meta
            .chunk(json!({"role": "assistant", "content": ""}), None)
            .to_string(),
    );
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        let data = st.next_data().await?;
        Some((Ok::<_, Infallible>(SseEvent::default().data(data)), st))
    });
    Ok(Sse::new(stream).into_response())
}

/// The stream's state: the request's events turned into `data:` payloads. Dropped before
/// the end (the client went away), its ticket cancels the generation.
struct ChatStream {
    ticket: Ticket,
    /// the event already read before the response started
    first: Option<Event>,
    /// the text sent so far
    streamed: String,
    out: VecDeque<String>,
    finished: bool,
    include_usage: bool,
    meta: Meta,
}

impl ChatStream {
    async fn next_data(&mut self) -> Option<String> {
        loop {
            if let Some(d) = self.out.pop_front() {
                return Some(d);
            }
            if self.finished {
                return None;
            }
            let e = match self.first.take() {
                Some(e) => Some(e),
                None => self.ticket.next().await,
            };
            match e {
                Some(Event::Token { text, .. }) => {
                    if !text.is_empty() {
                        self.streamed.push_str(&text);
                        self.out
                            .push_back(self.meta.chunk(json!({"content": text}), None).to_string());
                    }
                }
                Some(Event::Generated { generation: g, .. }) => {
                    self.ticket.finish();
                    self.finished = true;
                    // pieces the engine coalesced and never sent as tokens
                    if let Some(rest) = g.text.strip_prefix(self.streamed.as_str()) {
                        if !rest.is_empty() {
                            self.out.push_back(
                                self.meta.chunk(json!({"content": rest}), None).to_string(),
                            );
                        }
                    }
                    self.out.push_back(
                        self.meta
                            .chunk(json!({}), Some(finish_reason(&g)))
                            .to_string(),
                    );
                    if self.include_usage {
                        self.out.push_back(
                            json!({
                                "id": self.meta.id,
                                "object": "chat.completion.chunk",
                                "created": self.meta.created,
                                "model": self.meta.model,
                                "choices": [],
                                "usage": usage(&g),
                            })
                            .to_string(),
                        );
                    }
                    self.out.push_back("[DONE]".into());
                }
                Some(Event::Error { message, .. }) => {
                    self.ticket.finish();
                    self.finished = true;
                    self.out.push_back(
                        json!({"error": {"message": format!("the model failed: {message}"), "type": "server_error"}})
                            .to_string(),
                    );
                }
                None => {
                    self.ticket.finish();
                    self.finished = true;
                    self.out.push_back(
                        json!({"error": {"message": "the engine ended the request without a result", "type": "server_error"}})
                            .to_string(),
                    );
                }
                Some(_) => {}
            }
        }
    }
}
