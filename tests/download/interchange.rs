//! Opt-in: Python's `huggingface_hub` and fraudlab share one cache. Python downloads a
//! model from the fake hub that fraudlab then finds and loads (and does not fetch again), and
//! Python sees fraudlab's download as cached. Set `FRAUDLAB_TEST_PY` to a python that has
//! `huggingface_hub`.

use super::*;

const PY_ID: &str = "Org/Py-Tiny";
const PY_COMMIT: &str = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d";

fn python(py: &str, hub: &FakeHub, home: &Path, script: &str) -> String {
    let o = Command::new(py)
        .arg("-c")
        .arg(script)
        .env("HF_ENDPOINT", &hub.url)
        .env("HF_HUB_CACHE", home.join("hf-cache"))
        .env("HF_HOME", home.join("hf-home"))
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn python_huggingface_hub_and_fraudlab_share_the_cache() {
    let Some(py) = std::env::var("FRAUDLAB_TEST_PY")
        .ok()
        .filter(|s| !s.is_empty())
    else {
        eprintln!("skipped: set FRAUDLAB_TEST_PY to a python with huggingface_hub to run the cache interchange test");
        return;
    };
    let d = tmp();
    let ours = tiny_model(&d.path().join("a"), TinySpec::default());
    let theirs = tiny_model(
        &d.path().join("b"),
        TinySpec {
            seed: 7,
            ..Default::default()
        },
    );
    let hub = FakeHub::start(vec![
        Repo::from_folder(ID, COMMIT, &ours),
        Repo::from_folder(PY_ID, PY_COMMIT, &theirs),
    ]);
    let home = d.path().join("home");
    let cache = home.join("hf-cache");

    // Python downloads; fraudlab finds the model, loads it, and has nothing to fetch
    let out = python(
        &py,
        &hub,
        &home,
        &format!("import huggingface_hub as h; print(h.snapshot_download('{PY_ID}'))"),
    );
    assert!(
        out.trim().ends_with(&format!("snapshots/{PY_COMMIT}")),
        "{out}"
    );
    let o = bin()
        .env("HF_HUB_CACHE", &cache)
        .args(["models", "--json"])
        .output()
        .unwrap();
    let models: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    let found = models
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == PY_ID)
        .unwrap_or_else(|| panic!("discovery misses {PY_ID}: {models}"));
    assert_eq!(found["source"], "hf-cache");
    assert!(found["problem"].is_null(), "{found}");
    ok(&bin()
        .env("HF_HUB_CACHE", &cache)
        .args([
            "probe",
            "--model",
            PY_ID,
            "--prompt",
            "hi",
            "--max-tokens",
            "2",
            "--json",
        ])
        .output()
        .unwrap());
    hub.clear_log();
    let v: serde_json::Value = serde_json::from_str(&ok(&dl(&hub.url, &home)
        .args([PY_ID, "--json"])
        .output()
        .unwrap()))
    .unwrap();
    assert_eq!(v["fetched_files"], 0, "{v}");
    assert!(hub.file_requests().is_empty(), "{:?}", hub.file_requests());

    // fraudlab downloads; Python sees it cached, file by file, and fetches none of it again
    ok(&dl(&hub.url, &home).arg(ID).output().unwrap());
    hub.clear_log();
    let script = format!(
        r#"
import json, huggingface_hub as h
info = h.scan_cache_dir()
assert not info.warnings, info.warnings
repo = [r for r in info.repos if r.repo_id == "{ID}"][0]
revs = [r.commit_hash for r in repo.revisions]
files = sorted(f.file_name for r in repo.revisions for f in r.files)
cfg = h.try_to_load_from_cache("{ID}", "config.json")
local = h.snapshot_download("{ID}", local_files_only=True)
online = h.snapshot_download("{ID}", allow_patterns=["*.json", "*.safetensors"])
print(json.dumps({{"revs": revs, "refs": sorted(repo.refs), "files": files, "config": cfg, "local": local, "online": online}}))
"#
    );
    let out = python(&py, &hub, &home, &script);
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let snap = cache.join(format!("models--Org--Tiny-Chat/snapshots/{COMMIT}"));
    assert_eq!(v["revs"], serde_json::json!([COMMIT]), "{v}");
    assert_eq!(v["refs"], serde_json::json!(["main"]), "{v}");
    assert!(
        v["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "model.safetensors"),
        "{v}"
    );
    assert_eq!(
        v["config"],
        snap.join("config.json").to_str().unwrap(),
        "{v}"
    );
    assert_eq!(v["local"], snap.to_str().unwrap(), "{v}");
    assert_eq!(v["online"], snap.to_str().unwrap(), "{v}");
    let fetched: Vec<_> = hub
        .log()
        .into_iter()
        .filter(|l| l.method == "GET" && !l.target.starts_with("/api/"))
        .collect();
    assert!(fetched.is_empty(), "Python fetched again: {fetched:?}");
}
