//! `fraudlab serve` end to end on a tiny generated model: the real binary on a port the
//! system picks (read back from its listening line), spoken to over plain HTTP/1.1 on
//! 127.0.0.1. Health, classification against per-turn scores, live conversations (turns,
//! latched alerts, DELETE), chat completions (whole and streamed), JSON errors, the queue
//! limit (503), cancellation when a client leaves, graceful shutdown on SIGTERM.

mod common;
use common::*;

use fraudlab::model::tiny::TinySpec;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

/// A running server, killed when dropped (a failing assertion included).
struct Server {
    child: Child,
    addr: String,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(model: &std::path::Path, extra: &[&str]) -> Server {
        let mut child = bin()
            .args([
                "serve",
                "--model",
                model.to_str().unwrap(),
                "--addr",
                "127.0.0.1:0",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start fraudlab serve");
        let err = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let keep = lines.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines() {
                let Ok(l) = l else { break };
                keep.lock().unwrap().push(l.clone());
                let _ = tx.send(l);
            }
        });
        let mut server = Server {
            child,
            addr: String::new(),
            stderr: lines,
        };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(30) {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => {
                    if let Some(rest) = l.strip_prefix("serve: listening on http://") {
                        server.addr = rest.split_whitespace().next().unwrap().to_string();
                        assert!(l.contains("(model tiny)"), "{l}");
                        assert!(server.addr.starts_with("127.0.0.1:"), "{l}");
                        return server;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!(
            "no listening line; stderr: {:?}",
            server.stderr.lock().unwrap()
        );
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    fn get(&self, path: &str) -> Resp {
        http(&self.addr, "GET", path, None)
    }

    fn post(&self, path: &str, body: &Value) -> Resp {
        http(&self.addr, "POST", path, Some(&body.to_string()))
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// An error answer: this status and a JSON `error` that contains every needle.
    fn assert_error(&self, status: u16, needles: &[&str]) {
        assert_eq!(self.status, status, "{self:?}");
        assert!(
            self.header("content-type")
                .unwrap_or("")
                .starts_with("application/json"),
            "{self:?}"
        );
        let msg = self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error: {self:?}"))
            .to_string();
        for n in needles {
            assert!(msg.contains(n), "error {msg:?} lacks {n:?}");
        }
    }
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn write_request(s: &mut TcpStream, addr: &str, method: &str, path: &str, body: Option<&str>) {
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write request");
}

/// One request on its own connection (`Connection: close`), the whole answer read.
fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> Resp {
    let mut s = connect(addr);
    write_request(&mut s, addr, method, path, body);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Resp {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end: {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Resp {
        status,
        headers,
        body: String::from_utf8(body).expect("UTF-8 body"),
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&b[..eol]).unwrap();
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
    out
}

/// A greedy chat request. The tiny model answers `hello` (no system message) with 4000
/// tokens before any end-of-turn token: several seconds of generation.
fn chat(prompt: &str, max_tokens: usize, stream: bool) -> Value {
    json!({
        "model": "tiny",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    })
}

fn turn(s: &Server, conv: &str, speaker: &str, text: &str) -> Value {
    let r = s.post(
        &format!("/v1/conversations/{conv}/turns"),
        &json!({"speaker": speaker, "text": text}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

#[test]
fn serve_answers_every_route() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let s = Server::start(&m, &["--threshold", "0", "--max-body", "1000"]);

    let h = s.get("/healthz");
    assert_eq!(h.status, 200, "{h:?}");
    let h = h.json();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["model"], "tiny");
    assert_eq!(h["threshold"], 0.0);
    assert_eq!(h["consecutive"], 1);

    // classify a dialogue = the per-turn score at its last turn (both score mode)
    let c = s.post("/v1/classify", &json!({"dialogue": "A: x\nB: y"}));
    assert_eq!(c.status, 200, "{c:?}");
    let c = c.json();
    let p = c["p_fraud"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p), "{c}");
    assert_eq!(c["is_fraud"], true);
    assert_eq!(c["threshold"], 0.0);
    let t1 = turn(&s, "c1", "A", "x");
    assert_eq!(t1["conversation"], "c1");
    assert_eq!(t1["turn"], 1);
    assert_eq!(t1["speaker"], "A");
    // threshold 0: every turn is at or above it, the alert fires at turn 1 and stays
    assert_eq!(t1["alert"], true);
    assert_eq!(t1["alert_turn"], 1);
    assert!(t1["latency_ms"].as_f64().unwrap() >= 0.0);
    let t2 = turn(&s, "c1", "B", "y");
    assert_eq!(t2["turn"], 2);
    assert_eq!(t2["alert_turn"], 1);
    let p2 = t2["p_fraud"].as_f64().unwrap();
    assert!((p - p2).abs() < 1e-4, "classify {p} vs turn 2 {p2}");
    // a custom instruction changes the classification prompt
    let ci = s.post(
        "/v1/classify",
        &json!({"dialogue": "A: x\nB: y", "instruction": "Is this a scam?\n"}),
    );
    assert_eq!(ci.status, 200, "{ci:?}");

    // the instruction: only on a first turn, only the server's own
    s.post(
        "/v1/conversations/c1/turns",
        &json!({"speaker": "A", "text": "z", "instruction": fraudlab::data::DEFAULT_INSTRUCTION}),
    )
    .assert_error(400, &["`instruction`", "first turn"]);
    s.post(
        "/v1/conversations/c2/turns",
        &json!({"speaker": "A", "text": "z", "instruction": "something else"}),
    )
    .assert_error(400, &["`instruction`", "differs"]);
    let same = s.post(
        "/v1/conversations/c3/turns",
        &json!({"speaker": "A", "text": "z", "instruction": fraudlab::data::DEFAULT_INSTRUCTION}),
    );
    assert_eq!(same.status, 200, "{same:?}");
    assert_eq!(same.json()["turn"], 1);

    // DELETE forgets: the next turn starts again at 1; unknown conversations are 404
    let del = http(&s.addr, "DELETE", "/v1/conversations/c1", None);
    assert_eq!(del.status, 204, "{del:?}");
    assert_eq!(turn(&s, "c1", "A", "x")["turn"], 1);
    http(&s.addr, "DELETE", "/v1/conversations/never", None).assert_error(404, &["never"]);

    // chat completions, whole
    let mut ask = chat("hello", 8, false);
    ask["messages"] = json!([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hello"}]);
    let r = s.post("/v1/chat/completions", &ask);
    assert_eq!(r.status, 200, "{r:?}");
    let r = r.json();
    assert_eq!(r["object"], "chat.completion");
    assert!(r["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(r["model"], "tiny");
    assert!(r["created"].as_u64().unwrap() > 0);
    let choice = &r["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    let content = choice["message"]["content"].as_str().unwrap().to_string();
    let finish = choice["finish_reason"].as_str().unwrap().to_string();
    assert!(finish == "stop" || finish == "length", "{r}");
    let u = &r["usage"];
    let (pt, ct) = (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
    );
    assert!(pt > 0 && ct > 0 && ct <= 8, "{r}");
    assert_eq!(u["total_tokens"].as_u64().unwrap(), pt + ct);
    assert!(!content.is_empty() || finish == "stop", "{r}");

    // streamed: the same greedy text in chunks, a finish_reason, then [DONE]
    ask["stream"] = json!(true);
    let st = s.post("/v1/chat/completions", &ask);
    assert_eq!(st.status, 200, "{st:?}");
    assert!(
        st.header("content-type")
            .unwrap()
            .starts_with("text/event-stream"),
        "{st:?}"
    );
    let data: Vec<&str> = st
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{}", st.body);
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(chunks.len() >= 2, "{}", st.body);
    let mut streamed = String::new();
    for ch in &chunks {
        assert_eq!(ch["object"], "chat.completion.chunk", "{ch}");
        if let Some(t) = ch["choices"][0]["delta"]["content"].as_str() {
            streamed.push_str(t);
        }
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        finish.as_str()
    );
    assert_eq!(streamed, content);

    // errors: JSON bodies that name the field and the problem
    http(&s.addr, "POST", "/v1/classify", Some("{\"dialogue\": "))
        .assert_error(400, &["not valid JSON"]);
    s.post("/v1/classify", &json!({}))
        .assert_error(400, &["`dialogue`", "missing"]);
    s.post("/v1/classify", &json!({"dialogue": 5}))
        .assert_error(400, &["`dialogue`", "must be a string"]);
    s.post("/v1/classify", &json!({"dialogue": "  "}))
        .assert_error(400, &["`dialogue`", "empty"]);
    s.post("/v1/conversations/c9/turns", &json!({"speaker": "A"}))
        .assert_error(400, &["`text`", "missing"]);
    s.post(
        "/v1/conversations/c9/turns",
        &json!({"speaker": "A", "text": ""}),
    )
    .assert_error(400, &["`text`", "empty"]);
    s.post("/v1/chat/completions", &json!({"messages": "hi"}))
        .assert_error(400, &["`messages`", "array"]);
    s.post(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}),
    )
    .assert_error(400, &["`max_tokens`"]);
    let big = json!({"dialogue": format!("A: {}", "x".repeat(2000))});
    s.post("/v1/classify", &big)
        .assert_error(413, &["--max-body"]);
    s.get("/v1/nothing-here")
        .assert_error(404, &["/v1/nothing-here"]);
    s.get("/v1/classify").assert_error(405, &["GET"]);
    // a conversation that failed validation was never started
    http(&s.addr, "DELETE", "/v1/conversations/c9", None).assert_error(404, &["c9"]);

    assert_eq!(s.get("/healthz").status, 200);
    assert!(!s.stderr().contains("panicked"), "{}", s.stderr());
}

/// Polls `/healthz` until no request waits or runs.
fn wait_idle(s: &Server, within: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if s.get("/healthz").json()["pending"] == 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn serve_limits_the_queue_cancels_and_shuts_down() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let mut s = Server::start(&m, &["--queue", "1"]);

    // several chats at once with room for one: the rest are refused with 503
    let n = 6;
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (addr, b) = (s.addr.clone(), barrier.clone());
            let body = chat("hello", 200, false).to_string();
            std::thread::spawn(move || {
                let mut c = connect(&addr);
                b.wait();
                write_request(&mut c, &addr, "POST", "/v1/chat/completions", Some(&body));
                let mut raw = Vec::new();
                c.read_to_end(&mut raw).expect("read");
                parse_response(&raw)
            })
        })
        .collect();
    let answers: Vec<Resp> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = answers.iter().filter(|r| r.status == 200).count();
    let busy: Vec<&Resp> = answers.iter().filter(|r| r.status == 503).collect();
    assert_eq!(ok + busy.len(), n, "{answers:?}");
    assert!(ok >= 1 && !busy.is_empty(), "{answers:?}");
    busy[0].assert_error(503, &["busy", "--queue"]);
    assert!(wait_idle(&s, Duration::from_secs(10)));

    // a streaming client that leaves cancels its generation (4000 greedy tokens take
    // seconds on the tiny model; the place in the queue is free at once)
    let mut c = connect(&s.addr);
    let body = chat("hello", 4000, true).to_string();
    write_request(&mut c, &s.addr, "POST", "/v1/chat/completions", Some(&body));
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("data: ") {
        let k = c.read(&mut buf).expect("read stream");
        assert!(
            k > 0,
            "stream ended early: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..k]);
    }
    assert_eq!(s.get("/healthz").json()["pending"], 1);
    drop(c);
    assert!(
        wait_idle(&s, Duration::from_secs(2)),
        "the generation went on after its client left"
    );
    let after = s.post("/v1/chat/completions", &chat("hi", 4, false));
    assert_eq!(after.status, 200, "{after:?}");

    // the place is free as soon as the answer came: the next request is not refused
    let again = s.post("/v1/chat/completions", &chat("hi", 4, false));
    assert_eq!(again.status, 200, "{again:?}");
    assert!(wait_idle(&s, Duration::from_secs(5)));

    // SIGTERM: the request in flight finishes, then the server exits cleanly
    let addr = s.addr.clone();
    let inflight = std::thread::spawn(move || {
        http(
            &addr,
            "POST",
            "/v1/chat/completions",
            Some(&chat("hello", 1000, false).to_string()),
        )
    });
    let t0 = Instant::now();
    while s.get("/healthz").json()["pending"] != 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the request never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = s.child.id() as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let r = inflight.join().unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["object"], "chat.completion");
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}: {}", s.stderr());
    // the reader thread may lag the exit by a moment
    let t0 = Instant::now();
    while !s.stderr().contains("serve: stopped") && t0.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let err = s.stderr();
    assert!(
        err.contains("shutting down") && err.contains("serve: stopped"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn serve_stops_at_a_second_signal() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let mut s = Server::start(&m, &[]);
    // a generation of seconds in flight
    let addr = s.addr.clone();
    let _client = std::thread::spawn(move || {
        let mut c = connect(&addr);
        write_request(
            &mut c,
            &addr,
            "POST",
            "/v1/chat/completions",
            Some(&chat("hello", 4000, false).to_string()),
        );
        let mut raw = Vec::new();
        let _ = c.read_to_end(&mut raw);
    });
    let t0 = Instant::now();
    while s.get("/healthz").json()["pending"] != 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the request never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = s.child.id() as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let t0 = Instant::now();
    while !s.stderr().contains("shutting down") {
        assert!(t0.elapsed() < Duration::from_secs(5), "{}", s.stderr());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    // the generation is cancelled rather than waited for
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "still running after a second SIGINT"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status:?}: {}", s.stderr());
}

#[test]
fn serve_names_a_model_it_cannot_load() {
    let d = tmp();
    let missing = d.path().join("no-such-model");
    let out = run(&[
        "serve",
        "--model",
        missing.to_str().unwrap(),
        "--addr",
        "127.0.0.1:0",
    ]);
    assert_clean_error(&out, &["cannot load the model", "no-such-model"]);
}
