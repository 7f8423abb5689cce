//! `fraudlab download ms:Org/Name`: ModelScope's listing and file routes, its cache layout
//! (`models/<org>/<name with ___ for dots>/`), checks, resume, and the loader finding it.

use super::*;

const MS_ID: &str = "Org/Tiny-0.5B";

#[test]
fn modelscope_download_into_its_cache_layout() {
    let d = tmp();
    let m = tiny_model(
        d.path(),
        TinySpec {
            sharded: true,
            ..Default::default()
        },
    );
    let repo = Repo::from_folder(MS_ID, COMMIT, &m);
    let hub = FakeHub::start(vec![Repo::from_folder(MS_ID, COMMIT, &m)]);
    let shard = repo
        .files
        .iter()
        .find(|f| f.name.ends_with(".safetensors"))
        .unwrap();
    let cut = shard.data.len() / 2;
    hub.knobs().drop_after = Some((shard.name.clone(), cut));
    let home = tmp();
    let out = ok(&dl(&hub.url, home.path())
        .arg(format!("ms:{MS_ID}"))
        .output()
        .unwrap());
    let cache = home.path().join("ms-cache");
    let dir = cache.join("models/Org/Tiny-0___5B");
    assert!(out.contains(&dir.display().to_string()), "{out}");
    let mut n = 0;
    for f in &repo.files {
        let p = dir.join(&f.name);
        if f.name == "README.md" {
            assert!(!p.exists(), "only what fraudlab loads");
            continue;
        }
        assert_eq!(std::fs::read(&p).unwrap(), f.data, "{}", f.name);
        n += 1;
    }
    assert!(n >= 5, "{n}");
    assert_eq!(
        std::fs::read_link(cache.join("models/Org/Tiny-0.5B")).unwrap(),
        Path::new("Tiny-0___5B")
    );
    // the dropped shard was resumed where it broke off
    let gets: Vec<_> = hub
        .log()
        .into_iter()
        .filter(|l| l.target.contains("FilePath=") && l.target.contains(&shard.name))
        .collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(
        gets[1].range.as_deref(),
        Some(format!("bytes={cut}-").as_str())
    );
    let temp = cache.join("._____temp");
    assert!(
        std::fs::read_dir(temp.join("Org/Tiny-0.5B"))
            .unwrap()
            .next()
            .is_none(),
        "no partial file is left"
    );

    // again: only the listing
    hub.clear_log();
    ok(&dl(&hub.url, home.path())
        .arg(format!("ms:{MS_ID}"))
        .output()
        .unwrap());
    assert!(hub.file_requests().is_empty(), "{:?}", hub.file_requests());

    // the loader finds it by id in the ModelScope cache
    let o = bin()
        .env("MODELSCOPE_CACHE", &cache)
        .env("HF_HUB_CACHE", home.path().join("empty"))
        .args([
            "probe",
            "--model",
            MS_ID,
            "--prompt",
            "hi",
            "--max-tokens",
            "2",
            "--json",
        ])
        .output()
        .unwrap();
    ok(&o);
}

#[test]
fn modelscope_refuses_corrupt_files_and_hostile_listings() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let hub = FakeHub::start(vec![Repo::from_folder(MS_ID, COMMIT, &m)]);
    hub.knobs().corrupt = Some("config.json".into());
    let home = tmp();
    let o = dl(&hub.url, home.path())
        .arg(format!("ms:{MS_ID}"))
        .output()
        .unwrap();
    assert_clean_error(&o, &[MS_ID, "config.json", "sha256", "corrupt"]);
    assert!(!home
        .path()
        .join("ms-cache/models/Org/Tiny-0___5B/config.json")
        .exists());
    hub.knobs().corrupt = None;

    for (path, needle) in [
        ("../evil", "leaves its folder"),
        ("/etc/passwd", "absolute path"),
    ] {
        hub.knobs().listing = Some(serde_json::json!({
            "Code": 200, "Success": true,
            "Data": {"Files": [
                {"Path": "config.json", "Type": "blob", "Size": 3},
                {"Path": path, "Type": "blob", "Size": 3},
            ]},
        }));
        let home = tmp();
        let o = dl(&hub.url, home.path())
            .arg(format!("ms:{MS_ID}"))
            .output()
            .unwrap();
        assert_clean_error(&o, &[MS_ID, path, needle, "refused"]);
        assert!(!home.path().join("ms-cache/models").exists());
    }
    hub.knobs().listing =
        Some(serde_json::json!({"Code": 10010, "Success": false, "Message": "model not found"}));
    let o = dl(&hub.url, tmp().path())
        .arg(format!("ms:{MS_ID}"))
        .output()
        .unwrap();
    assert_clean_error(&o, &[MS_ID, "model not found"]);
}
