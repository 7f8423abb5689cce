//! The HTTP side of downloads: one blocking client with connect and read timeouts, requests a
//! cancel flag interrupts at once (each runs on a helper thread), redirects followed by hand
//! so the token is sent to the hub's own origin only, and the transfer of one file into a
//! partial file that resumes with a Range request and is checked (size, sha256 or git blob
//! id) before the caller moves it into place.

use anyhow::{anyhow, bail, Context, Result};
use sha1::Digest as _;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// How long to wait for a connection and for each read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
}

impl Timeouts {
    /// Seconds from `connect_var` / `read_var` (whole or decimal seconds), else the defaults.
    pub fn from_env(connect_var: &str, read_var: &str, connect: f64, read: f64) -> Self {
        let secs = |var: &str, default: f64| {
            let s = std::env::var(var)
                .ok()
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s > 0.0)
                .unwrap_or(default);
            Duration::from_secs_f64(s.min(3600.0))
        };
        Self {
            connect: secs(connect_var, connect),
            read: secs(read_var, read),
        }
    }
}

/// What a file must be once fetched.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    pub size: Option<u64>,
    /// Lowercase hex sha256 of the content.
    pub sha256: Option<String>,
    /// Lowercase hex git blob id (sha1 of `blob <len>\0` + content).
    pub git_blob: Option<String>,
}

/// One hub's client.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    endpoint: String,
    origin: String,
    token: Option<String>,
    timeouts: Timeouts,
    /// "the model hub", "ModelScope": for messages.
    hub: &'static str,
    /// What to try when the hub cannot be reached.
    advice: &'static str,
}

/// A response: status, headers (names lowercase), the URL it came from, and the body.
pub struct Reply {
    pub status: u16,
    pub url: String,
    headers: ureq::http::HeaderMap,
    body: ureq::Body,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn is_redirect(&self) -> bool {
        matches!(self.status, 301 | 302 | 303 | 307 | 308) && self.header("location").is_some()
    }
}

#[derive(Clone, Copy, PartialEq)]
pub enum Method {
    Head,
    Get,
}

/// `scheme://host[:port]` of a URL, lowercase.
fn origin_of(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    format!("{}://{}", scheme.to_lowercase(), host.to_lowercase())
}

/// A redirect's target, resolved against the URL that sent it.
pub(super) fn join_location(base: &str, loc: &str) -> String {
    if loc.starts_with("http://") || loc.starts_with("https://") {
        loc.to_string()
    } else if let Some(rest) = loc.strip_prefix("//") {
        let scheme = base.split("://").next().unwrap_or("https");
        format!("{scheme}://{rest}")
    } else if loc.starts_with('/') {
        format!("{}{loc}", origin_of(base))
    } else {
        let path_end = base.find(['?', '#']).unwrap_or(base.len());
        let dir = &base[..base[..path_end].rfind('/').map_or(path_end, |i| i + 1)];
        format!("{dir}{loc}")
    }
}

impl Client {
    pub fn new(
        endpoint: &str,
        token: Option<String>,
        timeouts: Timeouts,
        hub: &'static str,
        advice: &'static str,
    ) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_resolve(Some(timeouts.connect))
            .timeout_connect(Some(timeouts.connect))
            .timeout_send_request(Some(timeouts.connect))
            .timeout_recv_response(Some(timeouts.read))
            .timeout_per_read(Some(timeouts.read))
            .user_agent(format!("fraudlab/{}", env!("CARGO_PKG_VERSION")))
            .build();
        let endpoint = endpoint.trim_end_matches('/').to_string();
        Self {
            agent: config.into(),
            origin: origin_of(&endpoint),
            endpoint,
            token,
            timeouts,
            hub,
            advice,
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// One request, no redirects followed, on a helper thread so that `cancel` stops the
    /// wait at once (the thread ends by itself at the next timeout).
    fn send(
        &self,
        method: Method,
        url: &str,
        range_from: u64,
        cancel: &AtomicBool,
    ) -> Result<Reply> {
        let agent = self.agent.clone();
        let auth = self
            .token
            .as_ref()
            .filter(|_| origin_of(url) == self.origin)
            .map(|t| format!("Bearer {t}"));
        let owned_url = url.to_string();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut req = match method {
                Method::Head => agent.head(&owned_url),
                Method::Get => agent.get(&owned_url),
            };
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            if range_from > 0 {
                req = req.header("Range", format!("bytes={range_from}-"));
            }
            let _ = tx.send(req.call());
        });
        let res = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(r) => break r,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if cancel.load(Ordering::SeqCst) {
                        bail!("cancelled");
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("the request to {url} ended without an answer")
                }
            }
        };
        let resp = res.map_err(|e| self.unreachable(&e))?;
        let status = resp.status().as_u16();
        let (parts, body) = resp.into_parts();
        Ok(Reply {
            status,
            url: url.to_string(),
            headers: parts.headers,
            body,
        })
    }

    /// A network failure as the user needs to read it.
    fn unreachable(&self, e: &ureq::Error) -> anyhow::Error {
        let why = match e {
            ureq::Error::Timeout(t) => {
                let limit = match t {
                    ureq::Timeout::Resolve
                    | ureq::Timeout::Connect
                    | ureq::Timeout::SendRequest => self.timeouts.connect,
                    _ => self.timeouts.read,
                };
                format!("no answer within {:.0} s", limit.as_secs_f64())
            }
            ureq::Error::Io(io) => io.to_string(),
            other => other.to_string(),
        };
        anyhow!(
            "cannot reach {} at {}: {why} ({})",
            self.hub,
            self.endpoint,
            self.advice
        )
    }

    /// Sends a request and follows redirects: those that stay on the hub's origin always,
    /// others (a CDN) only when `offsite` (and never with the token). A HEAD that is sent
    /// off-site stops at the redirect, whose headers carry the file's metadata.
    pub fn request(
        &self,
        method: Method,
        url: &str,
        range_from: u64,
        offsite: bool,
        cancel: &AtomicBool,
    ) -> Result<Reply> {
        let mut url = url.to_string();
        for _ in 0..10 {
            let reply = self.send(method, &url, range_from, cancel)?;
            if !reply.is_redirect() {
                return Ok(reply);
            }
            let next = join_location(&url, reply.header("location").unwrap_or_default());
            if origin_of(&next) != self.origin && !offsite {
                return Ok(reply);
            }
            url = next;
        }
        bail!("{}: too many redirects from {url}", self.hub)
    }

    /// GET a JSON document (at most 64 MB).
    pub fn json(&self, url: &str, cancel: &AtomicBool) -> Result<(u16, serde_json::Value)> {
        let mut reply = self.request(Method::Get, url, 0, false, cancel)?;
        if reply.status >= 400 {
            return Ok((reply.status, serde_json::Value::Null));
        }
        let text = reply
            .body
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(|e| self.unreachable(&e))?;
        let v = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: the answer of {} at {url} is not JSON",
                self.hub, self.endpoint
            )
        })?;
        Ok((reply.status, v))
    }

    /// Fetches `url` into `part`, appending to what an earlier try left there (a Range
    /// request), and returns once the file is complete and matches `expect`. A broken
    /// connection is retried from where it stopped while each try brings bytes; a corrupt
    /// file is removed. `on_bytes(len, fresh)` reports the file's length now and how many of
    /// its bytes just came from the hub (not from an earlier partial file).
    pub fn fetch(
        &self,
        url: &str,
        part: &Path,
        expect: &Expect,
        cancel: &AtomicBool,
        on_bytes: &mut dyn FnMut(u64, u64),
    ) -> Result<()> {
        let name = part.display();
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(part)
            .with_context(|| format!("{name}: cannot create"))?;
        let mut have = file.metadata()?.len();
        if expect.size.is_some_and(|s| have > s) {
            file.set_len(0)?;
            have = 0;
        }
        let mut hash = Hashes::new(expect);
        if have > 0 {
            hash.feed_file(&mut file, have, cancel)
                .with_context(|| format!("{name}: cannot read the partial download"))?;
            on_bytes(have, 0);
        }
        file.seek(SeekFrom::Start(have))?;
        let mut tries = 0;
        while expect.size.is_none_or(|s| have < s) {
            tries += 1;
            match self.transfer(url, &mut file, &mut have, &mut hash, cancel, on_bytes) {
                Ok(()) => break,
                Err(e) if e.progressed && tries < 6 && !cancel.load(Ordering::SeqCst) => continue,
                Err(e) => {
                    let _ = file.sync_data();
                    return Err(e.error);
                }
            }
        }
        file.sync_all()
            .with_context(|| format!("{name}: cannot write"))?;
        match expect.size {
            Some(s) if have > s => {
                let _ = std::fs::remove_file(part);
                bail!("{name}: the download has {have} bytes, the hub said {s}; removed it, run the download again");
            }
            Some(s) if have < s => bail!(
                "{name}: the hub ended the transfer after {have} of {s} bytes (run the download again to resume)"
            ),
            _ => {}
        }
        if let Err(e) = hash.check(have) {
            let _ = std::fs::remove_file(part);
            bail!("{name}: {e}: the download is corrupt and was removed; run the download again");
        }
        Ok(())
    }

    /// One GET from `*have` to the end (or to a break in the connection).
    fn transfer(
        &self,
        url: &str,
        file: &mut std::fs::File,
        have: &mut u64,
        hash: &mut Hashes,
        cancel: &AtomicBool,
        on_bytes: &mut dyn FnMut(u64, u64),
    ) -> std::result::Result<(), Broken> {
        let fail = |error: anyhow::Error| Broken {
            error,
            progressed: false,
        };
        let reply = self
            .request(Method::Get, url, *have, true, cancel)
            .map_err(fail)?;
        match reply.status {
            206 if *have > 0 => {
                // `bytes START-END/TOTAL` must start where the partial file ends
                let start = reply
                    .header("content-range")
                    .and_then(|r| r.strip_prefix("bytes "))
                    .and_then(|r| r.split('-').next())
                    .and_then(|s| s.trim().parse::<u64>().ok());
                if start != Some(*have) {
                    return Err(fail(anyhow!(
                        "{}: asked for bytes from {} of {url}, got range {:?}",
                        self.hub,
                        *have,
                        reply.header("content-range")
                    )));
                }
            }
            200 | 206 => {
                if *have > 0 {
                    // the server ignored the Range request: start over
                    file.set_len(0).map_err(|e| fail(e.into()))?;
                    file.seek(SeekFrom::Start(0)).map_err(|e| fail(e.into()))?;
                    *have = 0;
                    on_bytes(0, 0);
                    hash.reset();
                }
            }
            416 => {
                file.set_len(0).map_err(|e| fail(e.into()))?;
                file.seek(SeekFrom::Start(0)).map_err(|e| fail(e.into()))?;
                *have = 0;
                hash.reset();
                on_bytes(0, 0);
                return Err(Broken {
                    error: anyhow!("{}: the hub refused the resume range of {url}", self.hub),
                    progressed: true,
                });
            }
            s => return Err(fail(anyhow!("{} answered HTTP {s} for {url}", self.hub))),
        }
        // read on a helper thread so a stalled connection does not delay a cancel
        let (tx, rx) = mpsc::sync_channel::<std::io::Result<Vec<u8>>>(16);
        let mut reader = reply.body.into_reader();
        std::thread::spawn(move || loop {
            let mut buf = vec![0u8; 256 << 10];
            match reader.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send(Ok(buf)).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        });
        let start = *have;
        loop {
            let chunk = match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(c) => c,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if cancel.load(Ordering::SeqCst) {
                        return Err(fail(anyhow!(
                            "cancelled (what arrived is kept: the next download resumes it)"
                        )));
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            };
            let progressed = *have > start;
            match chunk {
                Ok(buf) => {
                    file.write_all(&buf).map_err(|e| Broken {
                        error: anyhow!("cannot write the download: {e}"),
                        progressed: false,
                    })?;
                    hash.feed(&buf);
                    *have += buf.len() as u64;
                    on_bytes(*have, buf.len() as u64);
                }
                Err(e) => {
                    let why = if e.kind() == std::io::ErrorKind::TimedOut
                        || e.to_string().contains("timeout")
                    {
                        format!("no data for {:.0} s", self.timeouts.read.as_secs_f64())
                    } else {
                        e.to_string()
                    };
                    return Err(Broken {
                        error: anyhow!(
                            "the transfer of {url} broke off after {} bytes: {why} (run the download again to resume)",
                            *have
                        ),
                        progressed,
                    });
                }
            }
            if cancel.load(Ordering::SeqCst) {
                return Err(fail(anyhow!(
                    "cancelled (what arrived is kept: the next download resumes it)"
                )));
            }
        }
    }
}

/// A transfer that failed, and whether it brought bytes (then a retry may finish it).
struct Broken {
    error: anyhow::Error,
    progressed: bool,
}

/// The checksums a file is held to, computed as its bytes arrive.
struct Hashes {
    sha256: Option<(sha2::Sha256, String)>,
    git: Option<(sha1::Sha1, String)>,
    size: Option<u64>,
}

impl Hashes {
    fn new(expect: &Expect) -> Self {
        let mut h = Self {
            sha256: expect
                .sha256
                .as_ref()
                .map(|s| (sha2::Sha256::new(), s.to_lowercase())),
            // the git id hashes a header with the size first, so it needs the size up front
            git: expect
                .git_blob
                .as_ref()
                .filter(|_| expect.size.is_some())
                .map(|s| (sha1::Sha1::new(), s.to_lowercase())),
            size: expect.size,
        };
        h.reset();
        h
    }

    fn reset(&mut self) {
        if let Some((h, _)) = &mut self.sha256 {
            *h = sha2::Sha256::new();
        }
        if let Some((h, _)) = &mut self.git {
            *h = sha1::Sha1::new();
            h.update(format!("blob {}\0", self.size.unwrap_or(0)).as_bytes());
        }
    }

    fn feed(&mut self, buf: &[u8]) {
        if let Some((h, _)) = &mut self.sha256 {
            h.update(buf);
        }
        if let Some((h, _)) = &mut self.git {
            h.update(buf);
        }
    }

    fn feed_file(&mut self, f: &mut std::fs::File, len: u64, cancel: &AtomicBool) -> Result<()> {
        if self.sha256.is_none() && self.git.is_none() {
            return Ok(());
        }
        f.seek(SeekFrom::Start(0))?;
        let mut left = len;
        let mut buf = vec![0u8; 1 << 20];
        while left > 0 {
            if cancel.load(Ordering::SeqCst) {
                bail!("cancelled");
            }
            let n = buf.len().min(left as usize);
            f.read_exact(&mut buf[..n])?;
            self.feed(&buf[..n]);
            left -= n as u64;
        }
        Ok(())
    }

    fn check(&mut self, len: u64) -> Result<()> {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        if let Some((h, want)) = self.sha256.take() {
            let got = hex(&h.finalize());
            if got != want {
                bail!("its sha256 is {got}, the hub says {want}");
            }
        }
        if let Some((h, want)) = self.git.take() {
            if self.size == Some(len) {
                let got = hex(&h.finalize());
                if got != want {
                    bail!("its git blob id is {got}, the hub says {want}");
                }
            }
        }
        Ok(())
    }
}

/// Waits for an exclusive lock on `path` (created if needed), so that two downloads of one
/// file (two fraudlab processes, or fraudlab and Python, which locks the same files) never
/// write it at once. Filesystems without locks are used without one.
pub fn lock(path: &Path, cancel: &AtomicBool) -> Result<Option<std::fs::File>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("{}: cannot create", path.display()))?;
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(Some(f)),
            Err(std::fs::TryLockError::WouldBlock) => {
                if cancel.load(Ordering::SeqCst) {
                    bail!("cancelled");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(std::fs::TryLockError::Error(_)) => return Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_and_redirect_targets() {
        assert_eq!(
            origin_of("https://Hub.example:8080/a/b?x=1"),
            "https://hub.example:8080"
        );
        assert_eq!(origin_of("http://127.0.0.1:9/x"), "http://127.0.0.1:9");
        let base = "http://127.0.0.1:9/Org/M/resolve/main/config.json";
        assert_eq!(
            join_location(base, "/Org/N/resolve/main/c"),
            "http://127.0.0.1:9/Org/N/resolve/main/c"
        );
        assert_eq!(
            join_location(base, "https://cdn.example/blob"),
            "https://cdn.example/blob"
        );
        assert_eq!(
            join_location(base, "//cdn.example/b"),
            "http://cdn.example/b"
        );
        assert_eq!(
            join_location(base, "other.json"),
            "http://127.0.0.1:9/Org/M/resolve/main/other.json"
        );
    }

    #[test]
    fn git_blob_id_of_known_content() {
        // `printf 'hello\n' | git hash-object --stdin`
        let expect = Expect {
            size: Some(6),
            sha256: None,
            git_blob: Some("ce013625030ba8dba906f756967f9e9ca394464a".into()),
        };
        let mut h = Hashes::new(&expect);
        h.feed(b"hello\n");
        h.check(6).unwrap();
        let mut h = Hashes::new(&expect);
        h.feed(b"hellO\n");
        assert!(h.check(6).unwrap_err().to_string().contains("git blob id"));
    }

    #[test]
    fn timeouts_from_env_fall_back_on_bad_values() {
        let t = Timeouts::from_env(
            "FRAUDLAB_TEST_NO_SUCH_VAR_1",
            "FRAUDLAB_TEST_NO_SUCH_VAR_2",
            3.0,
            4.5,
        );
        assert_eq!(t.connect, Duration::from_secs(3));
        assert_eq!(t.read, Duration::from_millis(4500));
    }
}
