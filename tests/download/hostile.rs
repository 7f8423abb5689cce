//! Hostile hubs: revision ids, file names, ETags and index files that try to leave the
//! cache are refused with a clear error and write nothing outside it.

use super::*;

/// Every file under `dir` (links included, not followed).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn listing(sha: &str, names: &[&str]) -> serde_json::Value {
    let siblings: Vec<_> = names
        .iter()
        .map(|n| serde_json::json!({"rfilename": n, "size": 10}))
        .collect();
    serde_json::json!({"id": ID, "sha": sha, "siblings": siblings})
}

#[test]
fn hostile_listings_are_refused_before_anything_is_written() {
    let m = tmp();
    let (hub, _) = tiny_hub(m.path(), TinySpec::default());
    let normal = [
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "tokenizer_config.json",
    ];
    let with = |extra: &str| {
        let mut v: Vec<&str> = normal.to_vec();
        v.push(extra);
        listing(COMMIT, &v).clone()
    };
    let cases = [
        (
            listing("../../x", &normal),
            vec!["../../x", "not a commit id", "refused"],
        ),
        (listing("main", &normal), vec!["`main`", "not a commit id"]),
        (
            with("../evil"),
            vec!["../evil", "leaves its folder", "refused"],
        ),
        (
            with("/etc/passwd"),
            vec!["/etc/passwd", "absolute path", "refused"],
        ),
        (with("..\\evil.json"), vec!["backslash", "refused"]),
        (
            with("a//config.json"),
            vec!["empty path component", "refused"],
        ),
        (
            serde_json::json!({"sha": COMMIT, "siblings": [{"rfilename": 7}]}),
            vec!["without a name"],
        ),
        (serde_json::json!([1, 2]), vec!["no commit id"]),
    ];
    for (l, needles) in cases {
        let home = tmp();
        hub.knobs().listing = Some(l.clone());
        let o = dl(&hub.url, home.path()).arg(ID).output().unwrap();
        let mut n: Vec<&str> = needles.clone();
        n.push(ID);
        assert_clean_error(&o, &n);
        let written = files_under(home.path());
        assert!(written.is_empty(), "{l}: wrote {written:?}");
    }
}

#[test]
fn hostile_file_headers_are_refused_and_stay_inside_the_cache() {
    let m = tmp();
    let (hub, _) = tiny_hub(m.path(), TinySpec::default());
    let cases = [
        (
            "config.json",
            "ETag",
            "\"../../../evil\"",
            "not a plain hash",
        ),
        (
            "model.safetensors",
            "X-Linked-Etag",
            "\"../x\"",
            "not a plain hash",
        ),
        ("config.json", "X-Repo-Commit", "../../x", "names commit"),
        (
            "model.safetensors",
            "X-Linked-Etag",
            "\"0000000000000000000000000000000000000000000000000000000000000000\"",
            "its listing the sha256",
        ),
    ];
    for (file, header, value, needle) in cases {
        let home = tmp();
        hub.knobs().header_override = vec![(file.into(), header.into(), value.into())];
        let o = dl(&hub.url, home.path()).arg(ID).output().unwrap();
        assert_clean_error(&o, &[ID, file, needle]);
        let repo = home.path().join("hf-cache/models--Org--Tiny-Chat");
        for f in files_under(home.path()) {
            let inside = f.starts_with(repo.join("blobs"))
                || f.starts_with(repo.join("snapshots").join(COMMIT))
                || f.starts_with(home.path().join("hf-cache/.locks/models--Org--Tiny-Chat"));
            assert!(inside, "{header}: {value}: wrote {}", f.display());
            assert!(!f.to_string_lossy().contains("evil"));
        }
    }
}

#[test]
fn an_index_naming_shards_outside_the_folder_is_refused() {
    let m = tmp();
    let model = tiny_model(
        m.path(),
        TinySpec {
            sharded: true,
            ..Default::default()
        },
    );
    let index = model.join("model.safetensors.index.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&index).unwrap()).unwrap();
    let first = v["weight_map"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    v["weight_map"][&first] = "../evil.safetensors".into();
    std::fs::write(&index, v.to_string()).unwrap();

    // the loader refuses it
    let e = format!(
        "{:#}",
        fraudlab::model::load(model.to_str().unwrap(), Default::default())
            .err()
            .unwrap()
    );
    assert!(
        e.contains("model.safetensors.index.json")
            && e.contains("../evil.safetensors")
            && e.contains("refused"),
        "{e}"
    );
    // a shard that is not a string is an error, not a panic
    v["weight_map"][&first] = 3.into();
    std::fs::write(&index, v.to_string()).unwrap();
    let e = format!(
        "{:#}",
        fraudlab::model::load(model.to_str().unwrap(), Default::default())
            .err()
            .unwrap()
    );
    assert!(e.contains("not a file name"), "{e}");

    // and so does the download
    v["weight_map"][&first] = "../evil.safetensors".into();
    std::fs::write(&index, v.to_string()).unwrap();
    let hub = FakeHub::start(vec![Repo::from_folder(ID, COMMIT, &model)]);
    let home = tmp();
    let o = dl(&hub.url, home.path()).arg(ID).output().unwrap();
    assert_clean_error(&o, &[ID, "../evil.safetensors", "refused"]);
    for f in files_under(home.path()) {
        assert!(
            f.starts_with(home.path().join("hf-cache")),
            "{}",
            f.display()
        );
    }
}
