//! A fake Hugging Face hub and ModelScope on loopback, a small HTTP/1.1 server on std threads
//! (keep-alive, HEAD, Range) that speaks what real clients need:
//! - `GET /api/models/{id}` and `/api/models/{id}/revision/{rev}` (`sha`, `siblings`; sizes,
//!   `blobId` and `lfs` with `?blobs=true`), `GET /api/models/{id}/tree/{rev}` (Python's
//!   `huggingface_hub` lists with it);
//! - `HEAD`/`GET /{id}/resolve/{rev}/{file}`: `ETag` (the git blob id), `X-Repo-Commit`; for
//!   LFS files a 302 to a second listener (a "CDN" on another port, so another origin) with
//!   `X-Linked-Etag` (the sha256) and `X-Linked-Size`;
//! - ModelScope's `GET /api/v1/models/{id}/repo/files?Revision=…` and
//!   `/api/v1/models/{id}/repo?Revision=…&FilePath=…`;
//! - `Range: bytes=N-` (206, or 416 past the end).
//!
//! Knobs make it misbehave: drop the connection after N bytes of a file, send wrong bytes,
//! send bytes slowly or stop sending, replace the listing or a file's headers. Every request is logged.

#![allow(dead_code)]

use sha2::Digest as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub struct RepoFile {
    pub name: String,
    pub data: Vec<u8>,
    pub lfs: bool,
}

impl RepoFile {
    pub fn sha256(&self) -> String {
        hex(&sha2::Sha256::digest(&self.data))
    }

    /// What `git hash-object` gives for the file as stored in git (the LFS pointer for an
    /// LFS file).
    pub fn git_oid(&self) -> String {
        git_oid(&self.stored())
    }

    fn stored(&self) -> Vec<u8> {
        if self.lfs {
            format!(
                "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize {}\n",
                self.sha256(),
                self.data.len()
            )
            .into_bytes()
        } else {
            self.data.clone()
        }
    }

    /// The blob name the cache must use: the sha256 for LFS files, the git blob id else.
    pub fn etag(&self) -> String {
        if self.lfs {
            self.sha256()
        } else {
            self.git_oid()
        }
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn git_oid(data: &[u8]) -> String {
    use sha1::Digest as _;
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", data.len()).as_bytes());
    h.update(data);
    hex(&h.finalize())
}

pub struct Repo {
    pub id: String,
    pub commit: String,
    pub files: Vec<RepoFile>,
}

impl Repo {
    /// The files of a model folder; `.safetensors` and `tokenizer.json` as LFS files, plus a
    /// README fraudlab does not need.
    pub fn from_folder(id: &str, commit: &str, dir: &std::path::Path) -> Self {
        let mut files = vec![RepoFile {
            name: "README.md".into(),
            data: b"# a tiny test model\n".to_vec(),
            lfs: false,
        }];
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        names.sort();
        for name in names {
            let data = std::fs::read(dir.join(&name)).unwrap();
            let lfs = name.ends_with(".safetensors") || name == "tokenizer.json";
            files.push(RepoFile { name, data, lfs });
        }
        Self {
            id: id.into(),
            commit: commit.into(),
            files,
        }
    }

    pub fn file(&self, name: &str) -> &RepoFile {
        self.files.iter().find(|f| f.name == name).unwrap()
    }
}

#[derive(Default)]
pub struct Knobs {
    /// The next GET of this file's bytes sends this many bytes, then drops the connection.
    pub drop_after: Option<(String, usize)>,
    /// Serve this file with one byte changed (same length).
    pub corrupt: Option<String>,
    /// Sleep this long between 8 kB pieces of a file.
    pub piece_delay: Option<Duration>,
    /// Files over 8 kB stop coming: 8 kB (none for a Range request), then silence.
    pub stall: bool,
    /// Answer every listing with this JSON instead.
    pub listing: Option<serde_json::Value>,
    /// Headers that replace those of a file's HEAD/GET answer: (file, name, value).
    pub header_override: Vec<(String, String, String)>,
    /// Refuse (401) requests to the hub without `Authorization: Bearer <this>`.
    pub require_token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Logged {
    /// "hub" or "cdn"
    pub server: &'static str,
    pub method: String,
    pub target: String,
    pub range: Option<String>,
    pub auth: Option<String>,
}

struct State {
    repos: Vec<Repo>,
    knobs: Mutex<Knobs>,
    log: Mutex<Vec<Logged>>,
    hub_url: String,
    cdn_url: String,
}

pub struct FakeHub {
    pub url: String,
    pub cdn_url: String,
    state: Arc<State>,
}

impl FakeHub {
    pub fn start(repos: Vec<Repo>) -> Self {
        let hub = TcpListener::bind("127.0.0.1:0").unwrap();
        let cdn = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", hub.local_addr().unwrap());
        let cdn_url = format!("http://{}", cdn.local_addr().unwrap());
        let state = Arc::new(State {
            repos,
            knobs: Mutex::new(Knobs::default()),
            log: Mutex::new(Vec::new()),
            hub_url: url.clone(),
            cdn_url: cdn_url.clone(),
        });
        for (listener, server) in [(hub, "hub"), (cdn, "cdn")] {
            let state = state.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { return };
                    let state = state.clone();
                    std::thread::spawn(move || serve_connection(conn, server, &state));
                }
            });
        }
        Self {
            url,
            cdn_url,
            state,
        }
    }

    pub fn knobs(&self) -> MutexGuard<'_, Knobs> {
        self.state.knobs.lock().unwrap()
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.log.lock().unwrap().clone()
    }

    pub fn clear_log(&self) {
        self.state.log.lock().unwrap().clear();
    }

    /// Requests for file contents or metadata (not listings).
    pub fn file_requests(&self) -> Vec<Logged> {
        self.log()
            .into_iter()
            .filter(|l| !l.target.starts_with("/api/") || l.target.contains("/repo?"))
            .collect()
    }
}

/// A listener that accepts connections and never answers.
pub fn silent_server() -> (String, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let h = std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming().flatten() {
            held.push(c);
            if held.len() > 64 {
                return;
            }
        }
    });
    (url, h)
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Some(Request {
        method,
        target,
        headers,
    })
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// send only this many body bytes, then close
    cut: Option<usize>,
    corrupt: bool,
    delay: Option<Duration>,
    /// send this many body bytes, then hold the connection silent
    stall_after: Option<usize>,
}

impl Answer {
    fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            cut: None,
            corrupt: false,
            delay: None,
            stall_after: None,
        }
    }

    fn json(v: serde_json::Value) -> Self {
        let mut a = Self::new(200);
        a.headers
            .push(("Content-Type".into(), "application/json".into()));
        a.body = v.to_string().into_bytes();
        a
    }

    fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(k));
        self.headers.push((k.into(), v.into()));
        self
    }
}

fn serve_connection(conn: TcpStream, server: &'static str, state: &State) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut w = conn;
    while let Some(req) = read_request(&mut reader) {
        state.log.lock().unwrap().push(Logged {
            server,
            method: req.method.clone(),
            target: req.target.clone(),
            range: req.header("range").map(String::from),
            auth: req.header("authorization").map(String::from),
        });
        let a = if server == "hub" {
            route_hub(&req, state)
        } else {
            route_cdn(&req, state)
        };
        let head = req.method == "HEAD";
        let mut out = format!("HTTP/1.1 {} X\r\n", a.status);
        let mut has_len = false;
        for (k, v) in &a.headers {
            has_len |= k.eq_ignore_ascii_case("content-length");
            out += &format!("{k}: {v}\r\n");
        }
        if !has_len {
            out += &format!("Content-Length: {}\r\n", a.body.len());
        }
        out += "\r\n";
        if w.write_all(out.as_bytes()).is_err() {
            return;
        }
        if head {
            continue;
        }
        let mut body = a.body;
        if a.corrupt && !body.is_empty() {
            let mid = body.len() / 2;
            body[mid] ^= 0x55;
        }
        let send = a
            .cut
            .or(a.stall_after)
            .unwrap_or(body.len())
            .min(body.len());
        for (i, piece) in body[..send].chunks(8192).enumerate() {
            if let Some(d) = a.delay.filter(|_| i > 0) {
                let _ = w.flush();
                std::thread::sleep(d);
            }
            if w.write_all(piece).is_err() {
                return;
            }
        }
        let _ = w.flush();
        if a.stall_after.is_some() {
            std::thread::sleep(Duration::from_secs(30));
            return;
        }
        if a.cut.is_some() {
            let _ = w.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}

fn query_param<'a>(target: &'a str, key: &str) -> Option<&'a str> {
    let q = target.split_once('?')?.1;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then_some(v)
    })
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(x) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(x);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The file's bytes, honouring a `Range: bytes=N-` request and the knobs.
fn file_answer(req: &Request, state: &State, f: &RepoFile) -> Answer {
    let len = f.data.len();
    let mut a = Answer::new(200);
    let start = req
        .header("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.parse::<usize>().ok());
    let start = match start {
        Some(s) if s >= len => {
            return Answer::new(416).header("Content-Range", format!("bytes */{len}"));
        }
        Some(s) => {
            a.status = 206;
            a = a.header("Content-Range", format!("bytes {s}-{}/{len}", len - 1));
            s
        }
        None => 0,
    };
    a.body = f.data[start..].to_vec();
    a = a.header("Accept-Ranges", "bytes");
    let mut k = state.knobs.lock().unwrap();
    if req.method == "GET" {
        if let Some((name, n)) = k.drop_after.clone() {
            if name == f.name {
                a.cut = Some(n);
                k.drop_after = None;
            }
        }
    }
    a.corrupt = k.corrupt.as_deref() == Some(f.name.as_str());
    if k.stall && start > 0 {
        a.stall_after = Some(0);
    } else if k.stall && a.body.len() > 8192 {
        a.stall_after = Some(8192);
    }
    a.delay = k.piece_delay;
    a
}

fn overrides(a: Answer, state: &State, file: &str) -> Answer {
    let k = state.knobs.lock().unwrap();
    let mut a = a;
    for (f, name, value) in &k.header_override {
        if f == file {
            a = a.header(name, value.clone());
        }
    }
    a
}

fn route_hub(req: &Request, state: &State) -> Answer {
    if let Some(t) = &state.knobs.lock().unwrap().require_token {
        if req.header("authorization") != Some(&format!("Bearer {t}")) {
            return Answer::new(401);
        }
    }
    let path = req.target.split('?').next().unwrap_or("");
    let parts: Vec<String> = path.split('/').skip(1).map(unescape).collect();
    let p: Vec<&str> = parts.iter().map(String::as_str).collect();
    let repo = |org: &str, name: &str| {
        let id = format!("{org}/{name}");
        state.repos.iter().find(|r| r.id == id)
    };
    let rev_ok = |r: &Repo, rev: &str| rev == "main" || rev == "master" || rev == r.commit;
    match p.as_slice() {
        // ModelScope
        ["api", "v1", "models", org, name, "repo", "files"] => {
            let Some(r) = repo(org, name) else {
                return Answer::new(404);
            };
            if let Some(l) = state.knobs.lock().unwrap().listing.clone() {
                return Answer::json(l);
            }
            let files: Vec<_> = r
                .files
                .iter()
                .map(|f| {
                    serde_json::json!({
                        "Name": f.name.rsplit('/').next(), "Path": f.name, "Type": "blob",
                        "Size": f.data.len(), "Sha256": f.sha256(), "Revision": r.commit,
                    })
                })
                .collect();
            Answer::json(serde_json::json!({
                "Code": 200, "Success": true, "Message": "success",
                "Data": {"Files": files},
            }))
        }
        ["api", "v1", "models", org, name, "repo"] => {
            let Some(r) = repo(org, name) else {
                return Answer::new(404);
            };
            let fp = query_param(&req.target, "FilePath").map(unescape);
            match fp.and_then(|fp| r.files.iter().find(|f| f.name == fp)) {
                Some(f) => file_answer(req, state, f),
                None => Answer::new(404),
            }
        }
        // Hugging Face listings
        ["api", "models", org, name, rest @ ..] => {
            let Some(r) = repo(org, name) else {
                return Answer::new(404);
            };
            let (kind, rev) = match rest {
                [] => ("info", "main"),
                ["revision", rev] => ("info", *rev),
                ["tree", rev, ..] => ("tree", *rev),
                _ => return Answer::new(404),
            };
            if !rev_ok(r, rev) {
                return Answer::new(404);
            }
            if let Some(l) = state.knobs.lock().unwrap().listing.clone() {
                return Answer::json(l);
            }
            if kind == "tree" {
                let entries: Vec<_> = r
                    .files
                    .iter()
                    .map(|f| {
                        let mut e = serde_json::json!({
                            "type": "file", "path": f.name,
                            "size": f.stored().len(), "oid": f.git_oid(),
                        });
                        if f.lfs {
                            e["size"] = f.data.len().into();
                            e["lfs"] = serde_json::json!({
                                "oid": f.sha256(), "size": f.data.len(),
                                "pointerSize": f.stored().len(),
                            });
                        }
                        e
                    })
                    .collect();
                return Answer::json(serde_json::Value::Array(entries));
            }
            let blobs = query_param(&req.target, "blobs") == Some("true");
            let siblings: Vec<_> = r
                .files
                .iter()
                .map(|f| {
                    let mut s = serde_json::json!({"rfilename": f.name});
                    if blobs {
                        s["size"] = f.data.len().into();
                        s["blobId"] = f.git_oid().into();
                        if f.lfs {
                            s["lfs"] = serde_json::json!({
                                "sha256": f.sha256(), "size": f.data.len(),
                                "pointerSize": f.stored().len(),
                            });
                        }
                    }
                    s
                })
                .collect();
            Answer::json(serde_json::json!({
                "_id": "x", "id": r.id, "modelId": r.id, "sha": r.commit,
                "private": false, "gated": false, "disabled": false,
                "siblings": siblings,
            }))
        }
        // Hugging Face files
        [org, name, "resolve", rev, file @ ..] if !file.is_empty() => {
            let Some(r) = repo(org, name) else {
                return Answer::new(404);
            };
            let file = file.join("/");
            let Some(f) = r.files.iter().find(|f| f.name == file) else {
                return Answer::new(404);
            };
            if !rev_ok(r, rev) {
                return Answer::new(404);
            }
            let a = if f.lfs {
                Answer::new(302)
                    .header(
                        "Location",
                        format!("{}/blobs/{}", state.cdn_url, f.sha256()),
                    )
                    .header("X-Linked-Etag", format!("\"{}\"", f.sha256()))
                    .header("X-Linked-Size", f.data.len().to_string())
                    .header("ETag", format!("\"{}\"", f.git_oid()))
            } else {
                file_answer(req, state, f).header("ETag", format!("\"{}\"", f.git_oid()))
            };
            let a = a.header("X-Repo-Commit", r.commit.clone());
            overrides(a, state, &file)
        }
        _ => Answer::new(404),
    }
}

fn route_cdn(req: &Request, state: &State) -> Answer {
    let path = req.target.split('?').next().unwrap_or("");
    let Some(sha) = path.strip_prefix("/blobs/") else {
        return Answer::new(404);
    };
    for r in &state.repos {
        if let Some(f) = r.files.iter().find(|f| f.lfs && f.sha256() == sha) {
            return file_answer(req, state, f);
        }
    }
    Answer::new(404)
}
