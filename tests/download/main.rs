//! Downloading by hub id against a fake hub on loopback (`fake_hub`): the Hugging Face cache
//! layout checked file by file, nothing fetched twice, resume after a dropped connection, a
//! corrupt file refused, offline and hung hubs, `HF_HUB_OFFLINE`, the token as a header,
//! hostile listings, cancel, the engine's download for the workbench, and ModelScope.
//! `interchange` checks the cache against Python's `huggingface_hub` (opt-in).

#[path = "../common/mod.rs"]
mod common;
mod engine;
mod fake_hub;
mod hostile;
mod interchange;
mod modelscope;

use common::*;
use fake_hub::{FakeHub, Repo};
use fraudlab::model::tiny::TinySpec;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const COMMIT: &str = "4f3c2b1a0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b";
pub const ID: &str = "Org/Tiny-Chat";

/// Tests that set this process's environment (the loader reads the caches from it).
pub static ENV_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A tiny model served as `ID` at `COMMIT`.
pub fn tiny_hub(dir: &Path, spec: TinySpec) -> (FakeHub, PathBuf) {
    let m = tiny_model(dir, spec);
    (FakeHub::start(vec![Repo::from_folder(ID, COMMIT, &m)]), m)
}

/// `fraudlab download` with a clean environment pointing at `endpoint` and `cache`.
pub fn dl(endpoint: &str, home: &Path) -> Command {
    let mut c = bin();
    for v in [
        "HF_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_HUB_ETAG_TIMEOUT",
        "HF_HUB_DOWNLOAD_TIMEOUT",
        "MODELSCOPE_API_TOKEN",
    ] {
        c.env_remove(v);
    }
    c.env("HF_HOME", home.join("hf-home"))
        .env("HF_HUB_CACHE", home.join("hf-cache"))
        .env("HF_ENDPOINT", endpoint)
        .env("MODELSCOPE_CACHE", home.join("ms-cache"))
        .env("MODELSCOPE_DOMAIN", endpoint)
        .arg("download");
    c
}

pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The snapshot of a download: every file fraudlab needs is a relative link to its blob,
/// named by the sha256 (LFS) or the git blob id, with the served bytes.
pub fn assert_layout(cache: &Path, repo: &Repo, commit: &str) {
    let dir = cache.join("models--Org--Tiny-Chat");
    let snap = dir.join("snapshots").join(commit);
    let mut checked = 0;
    for f in &repo.files {
        let pointer = snap.join(&f.name);
        if f.name == "README.md" {
            assert!(
                std::fs::symlink_metadata(&pointer).is_err(),
                "only what fraudlab loads is fetched"
            );
            continue;
        }
        let target = std::fs::read_link(&pointer)
            .unwrap_or_else(|e| panic!("{}: not a link: {e}", pointer.display()));
        assert_eq!(
            target,
            Path::new("../../blobs").join(f.etag()),
            "{}: a relative link to its blob",
            f.name
        );
        let blob = dir.join("blobs").join(f.etag());
        assert_eq!(std::fs::read(&blob).unwrap(), f.data, "{}", f.name);
        if f.lfs {
            assert_eq!(f.etag().len(), 64, "LFS blobs are named by their sha256");
        } else {
            assert_eq!(f.etag().len(), 40, "other blobs by their git id");
        }
        checked += 1;
    }
    assert!(
        checked >= 4,
        "config, tokenizer files and weights: {checked}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("refs/main")).unwrap(),
        commit
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".incomplete"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn fresh_download_then_nothing_fetched_twice_then_loads_by_id() {
    let d = tmp();
    let (hub, m) = tiny_hub(d.path(), TinySpec::default());
    let repo = Repo::from_folder(ID, COMMIT, &m);
    let out = ok(&dl(&hub.url, d.path()).arg(ID).output().unwrap());
    let cache = d.path().join("hf-cache");
    assert!(out.contains("downloaded Org/Tiny-Chat"), "{out}");
    assert_layout(&cache, &repo, COMMIT);
    // the weights came from the "CDN" (another origin) after a redirect
    assert!(hub.log().iter().any(|l| l.server == "cdn"
        && l.method == "GET"
        && l.target.contains(&repo.file("model.safetensors").sha256())));

    // again: one listing, no file fetched or even asked about
    hub.clear_log();
    let out = ok(&dl(&hub.url, d.path())
        .args([ID, "--json"])
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["fetched_files"], 0, "{v}");
    assert_eq!(v["fetched_bytes"], 0, "{v}");
    assert_eq!(v["revision"], COMMIT);
    assert!(hub.file_requests().is_empty(), "{:?}", hub.file_requests());
    assert_eq!(hub.log().len(), 1, "only the listing: {:?}", hub.log());

    // a lost link is made again from the blob, without a transfer
    let snap = cache.join(format!("models--Org--Tiny-Chat/snapshots/{COMMIT}"));
    std::fs::remove_file(snap.join("model.safetensors")).unwrap();
    hub.clear_log();
    ok(&dl(&hub.url, d.path()).arg(ID).output().unwrap());
    assert!(
        hub.log()
            .iter()
            .all(|l| l.method != "GET" || l.target.starts_with("/api/")),
        "{:?}",
        hub.log()
    );
    assert_layout(&cache, &repo, COMMIT);

    // fraudlab finds and loads it by hub id
    let _env = ENV_LOCK.lock().unwrap();
    std::env::set_var("HF_HUB_CACHE", &cache);
    let lm = fraudlab::model::load(ID, Default::default());
    std::env::remove_var("HF_HUB_CACHE");
    let lm = lm.unwrap();
    assert_eq!(lm.name, ID);
    assert_eq!(lm.location.path(), snap);
}

#[test]
fn a_dropped_connection_resumes_with_a_range_request() {
    let d = tmp();
    let (hub, m) = tiny_hub(d.path(), TinySpec::default());
    let repo = Repo::from_folder(ID, COMMIT, &m);
    let weights = repo.file("model.safetensors");
    let cut = weights.data.len() / 3;
    assert!(
        cut > 10_000,
        "a file worth resuming: {}",
        weights.data.len()
    );
    hub.knobs().drop_after = Some(("model.safetensors".into(), cut));
    ok(&dl(&hub.url, d.path()).arg(ID).output().unwrap());
    let gets: Vec<_> = hub
        .log()
        .into_iter()
        .filter(|l| l.server == "cdn" && l.target.contains(&weights.sha256()))
        .collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0].range, None);
    assert_eq!(
        gets[1].range.as_deref(),
        Some(format!("bytes={cut}-").as_str())
    );
    assert_layout(&d.path().join("hf-cache"), &repo, COMMIT);

    // a partial file left by a killed process is resumed, not fetched again
    let d = tmp();
    let tok = repo.file("tokenizer.json");
    let blobs = d.path().join("hf-cache/models--Org--Tiny-Chat/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let half = tok.data.len() / 2;
    std::fs::write(
        blobs.join(format!("{}.incomplete", tok.sha256())),
        &tok.data[..half],
    )
    .unwrap();
    hub.clear_log();
    ok(&dl(&hub.url, d.path()).arg(ID).output().unwrap());
    let gets: Vec<_> = hub
        .log()
        .into_iter()
        .filter(|l| l.server == "cdn" && l.target.contains(&tok.sha256()))
        .collect();
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert_eq!(
        gets[0].range.as_deref(),
        Some(format!("bytes={half}-").as_str())
    );
    assert_layout(&d.path().join("hf-cache"), &repo, COMMIT);
}

#[test]
fn a_corrupt_file_is_refused_and_removed() {
    for (file, check) in [
        ("model.safetensors", "sha256"),
        ("config.json", "git blob id"),
    ] {
        let d = tmp();
        let (hub, m) = tiny_hub(d.path(), TinySpec::default());
        let repo = Repo::from_folder(ID, COMMIT, &m);
        hub.knobs().corrupt = Some(file.into());
        let o = dl(&hub.url, d.path()).arg(ID).output().unwrap();
        assert_clean_error(&o, &[ID, file, check, "corrupt"]);
        let blobs = d.path().join("hf-cache/models--Org--Tiny-Chat/blobs");
        let etag = repo.file(file).etag();
        assert!(
            !blobs.join(&etag).exists(),
            "{file}: the corrupt blob is not kept"
        );
        assert!(!blobs.join(format!("{etag}.incomplete")).exists());
        let pointer = d.path().join(format!(
            "hf-cache/models--Org--Tiny-Chat/snapshots/{COMMIT}/{file}"
        ));
        assert!(std::fs::symlink_metadata(pointer).is_err());
        // once the hub serves the right bytes, the download completes
        hub.knobs().corrupt = None;
        ok(&dl(&hub.url, d.path()).arg(ID).output().unwrap());
        assert_layout(&d.path().join("hf-cache"), &repo, COMMIT);
    }
}

#[test]
fn an_unreachable_or_silent_hub_is_a_clear_error_never_a_hang() {
    let d = tmp();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let t0 = Instant::now();
    let o = dl(&closed, d.path()).arg("Org/Other").output().unwrap();
    assert_clean_error(
        &o,
        &["Org/Other", "cannot reach the model hub", "HF_HUB_OFFLINE"],
    );
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());

    let (silent, _h) = fake_hub::silent_server();
    let t0 = Instant::now();
    let o = dl(&silent, d.path())
        .env("HF_HUB_ETAG_TIMEOUT", "1")
        .env("HF_HUB_DOWNLOAD_TIMEOUT", "1")
        .arg("Org/Other")
        .output()
        .unwrap();
    assert_clean_error(
        &o,
        &[
            "Org/Other",
            "cannot reach the model hub",
            "no answer within 1 s",
        ],
    );
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());

    // a hub that stops sending in the middle of a file: one retry from where it stopped
    let (hub, _) = tiny_hub(d.path(), TinySpec::default());
    hub.knobs().stall = true;
    let t0 = Instant::now();
    let o = dl(&hub.url, d.path())
        .env("HF_HUB_DOWNLOAD_TIMEOUT", "1")
        .arg(ID)
        .output()
        .unwrap();
    assert_clean_error(&o, &[ID, "broke off", "no data for 1 s"]);
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
    let ranges: Vec<_> = hub
        .file_requests()
        .into_iter()
        .filter(|l| l.server == "cdn" && l.method == "GET")
        .map(|l| l.range)
        .collect();
    assert_eq!(ranges, [None, Some("bytes=8192-".to_string())]);

    let o = dl(&closed, d.path()).arg("not-an-id").output().unwrap();
    assert_clean_error(&o, &["not a model id"]);
}

#[test]
fn hf_hub_offline_uses_the_cache_and_never_the_network() {
    let d = tmp();
    let (hub, _) = tiny_hub(d.path(), TinySpec::default());
    let o = dl(&hub.url, d.path())
        .env("HF_HUB_OFFLINE", "1")
        .arg(ID)
        .output()
        .unwrap();
    assert_clean_error(&o, &[ID, "HF_HUB_OFFLINE", "not in the cache"]);
    assert!(hub.log().is_empty(), "{:?}", hub.log());
    ok(&dl(&hub.url, d.path()).arg(ID).output().unwrap());
    hub.clear_log();
    let out = ok(&dl(&hub.url, d.path())
        .env("HF_HUB_OFFLINE", "true")
        .arg(ID)
        .output()
        .unwrap());
    assert!(out.contains(COMMIT), "{out}");
    assert!(hub.log().is_empty(), "{:?}", hub.log());
}

#[test]
fn the_token_is_a_header_sent_to_the_hub_only() {
    let d = tmp();
    let (hub, _) = tiny_hub(d.path(), TinySpec::default());
    let secret = "hf_SeCrEt0123456789";
    hub.knobs().require_token = Some(secret.into());
    let o = dl(&hub.url, d.path()).arg(ID).output().unwrap();
    assert_clean_error(&o, &[ID, "refuses access", "HF_TOKEN"]);
    hub.clear_log();
    let o = dl(&hub.url, d.path())
        .env("HF_TOKEN", secret)
        .arg(ID)
        .output()
        .unwrap();
    ok(&o);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!all.contains(secret), "the token is never printed");
    let log = hub.log();
    let bearer = format!("Bearer {secret}");
    assert!(log
        .iter()
        .filter(|l| l.server == "hub")
        .all(|l| l.auth.as_deref() == Some(bearer.as_str())));
    let cdn: Vec<_> = log.iter().filter(|l| l.server == "cdn").collect();
    assert!(!cdn.is_empty());
    assert!(
        cdn.iter().all(|l| l.auth.is_none()),
        "no token off the hub: {cdn:?}"
    );

    // the file `huggingface-cli login` writes works too
    let d2 = tmp();
    std::fs::create_dir_all(d2.path().join("hf-home")).unwrap();
    std::fs::write(d2.path().join("hf-home/token"), format!("{secret}\n")).unwrap();
    ok(&dl(&hub.url, d2.path()).arg(ID).output().unwrap());
}

#[test]
fn cancel_stops_a_transfer_and_a_silent_hub_at_once() {
    use fraudlab::model::download::{download_with, HubConfig, Source, Timeouts};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let d = tmp();
    let (hub, m) = tiny_hub(d.path(), TinySpec::default());
    let repo = Repo::from_folder(ID, COMMIT, &m);
    hub.knobs().piece_delay = Some(Duration::from_millis(200));
    let cfg = |endpoint: &str| HubConfig {
        source: Source::HuggingFace,
        endpoint: endpoint.into(),
        cache: d.path().join("cache"),
        token: None,
        offline: false,
        timeouts: Timeouts {
            connect: Duration::from_secs(30),
            read: Duration::from_secs(30),
        },
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let c2 = cancel.clone();
    let c = cfg(&hub.url);
    let t = std::thread::spawn(move || {
        let mut asked_at = None;
        let r = download_with(&c, ID, None, &c2, &mut |p| {
            if p.fetched > 0 && asked_at.is_none() {
                asked_at = Some(Instant::now());
                c2.store(true, Ordering::SeqCst);
            }
        });
        (r, asked_at.map(|t| t.elapsed()))
    });
    let (r, after) = t.join().unwrap();
    let e = format!("{:#}", r.unwrap_err());
    assert!(e.contains("cancelled"), "{e}");
    // well under the 30 s read timeout: the cancel, not a timeout, ended it
    assert!(after.unwrap() < Duration::from_secs(5), "{after:?}");
    // what arrived stays for a resume
    let blobs = d.path().join("cache/models--Org--Tiny-Chat/blobs");
    let parts: Vec<_> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "incomplete"))
        .collect();
    assert_eq!(parts.len(), 1, "{parts:?}");
    hub.knobs().piece_delay = None;
    let done = download_with(
        &cfg(&hub.url),
        ID,
        None,
        &AtomicBool::new(false),
        &mut |_| {},
    )
    .unwrap();
    assert_layout(&d.path().join("cache"), &repo, COMMIT);
    assert!(done.fetched_bytes < repo.files.iter().map(|f| f.data.len() as u64).sum::<u64>());

    // a hub that never answers: only the cancel ends the wait, at once
    let (silent, _h) = fake_hub::silent_server();
    let cancel = Arc::new(AtomicBool::new(false));
    let c2 = cancel.clone();
    let c = cfg(&silent);
    let t = std::thread::spawn(move || download_with(&c, "Org/Other", None, &c2, &mut |_| {}));
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    cancel.store(true, Ordering::SeqCst);
    let r = t.join().unwrap();
    // far under the 30 s timeouts: the cancel ended it (loose: shared CI machines stall)
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(format!("{:#}", r.unwrap_err()).contains("cancelled"));
}

#[test]
fn a_revision_by_commit_and_bad_revisions() {
    let d = tmp();
    let (hub, _) = tiny_hub(d.path(), TinySpec::default());
    ok(&dl(&hub.url, d.path())
        .args([ID, "--revision", COMMIT])
        .output()
        .unwrap());
    let repo = d.path().join("hf-cache/models--Org--Tiny-Chat");
    assert!(repo
        .join("snapshots")
        .join(COMMIT)
        .join("config.json")
        .is_file());
    assert!(!repo.join("refs/main").exists(), "a commit names no branch");
    let o = dl(&hub.url, d.path())
        .args([ID, "--revision", "v9"])
        .output()
        .unwrap();
    assert_clean_error(&o, &[ID, "no such model (or revision `v9`)"]);
    hub.clear_log();
    let o = dl(&hub.url, d.path())
        .args([ID, "--revision", "../../x"])
        .output()
        .unwrap();
    assert_clean_error(&o, &["--revision", "../../x", "refused"]);
    assert!(hub.log().is_empty(), "{:?}", hub.log());
}
