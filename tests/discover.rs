//! Finding models: the Hugging Face hub cache, the ModelScope cache, folders and GGUF files.

mod common;
use common::build;
use common::*;

use fraudlab::model::tiny::TinySpec;

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn hub_and_modelscope_caches_and_folders() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    // hub cache: models--Org--Name/snapshots/<rev>/ with refs/main
    let hf = d.path().join("hf");
    let repo = hf.join("models--Qwen--Qwen2-0.5B-Instruct");
    copy_dir(&m, &repo.join("snapshots/abc123"));
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "abc123").unwrap();
    // ModelScope cache: Org/Name with '.' written as '___'
    let ms = d.path().join("ms");
    copy_dir(&m, &ms.join("Qwen/Qwen1___5-1___8B-Chat"));
    // a folder of GGUF files and a model of another architecture (left out)
    let extra = d.path().join("extra");
    std::fs::create_dir_all(&extra).unwrap();
    std::fs::copy(
        tiny_gguf(&m, true),
        extra.join("qwen2.5-coder-0.5b-instruct-q8_0.gguf"),
    )
    .unwrap();
    let other = extra.join("llama");
    copy_dir(&m, &other);
    std::fs::write(
        other.join("config.json"),
        r#"{"architectures": ["LlamaForCausalLM"]}"#,
    )
    .unwrap();

    let out = bin()
        .env("HF_HUB_CACHE", &hf)
        .env("MODELSCOPE_CACHE", &ms)
        .env("FRAUDLAB_MODELS", &extra)
        .args(["models", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let find = |name: &str| {
        list.iter()
            .find(|x| x["name"].as_str().unwrap().contains(name))
            .unwrap_or_else(|| panic!("{name} not in {list:?}"))
    };
    let a = find("Qwen/Qwen2-0.5B-Instruct");
    assert_eq!(a["source"], "hf-cache");
    assert_eq!(a["family"], "Qwen2");
    assert_eq!(a["variant"], "instruct");
    let b = find("Qwen1.5-1.8B-Chat");
    assert_eq!(b["source"], "modelscope-cache");
    assert_eq!(b["family"], "Qwen1.5");
    let c = find("q8_0");
    assert!(c["format"].as_str().unwrap().starts_with("gguf"));
    assert_eq!(c["family"], "Qwen2.5");
    assert!(c["parameters"].as_u64().unwrap() > 0 && c["disk_bytes"].as_u64().unwrap() > 0);
    let l = find("llama");
    assert_eq!(l["status"], "unsupported", "{l}");
    assert!(l["problem"].as_str().unwrap().contains("LlamaForCausalLM"));
    assert_eq!(a["status"], "ok");
    assert!(a["problem"].is_null());

    // a hub id resolves through either cache
    for id in ["Qwen/Qwen2-0.5B-Instruct", "Qwen/Qwen1.5-1.8B-Chat"] {
        let o = bin()
            .env("HF_HUB_CACHE", &hf)
            .env("MODELSCOPE_CACHE", &ms)
            .args([
                "probe",
                "--model",
                id,
                "--prompt",
                "hi",
                "--max-tokens",
                "2",
                "--json",
            ])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{id}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let o = bin()
        .env("HF_HUB_CACHE", &hf)
        .env("MODELSCOPE_CACHE", &ms)
        .args(["probe", "--model", "Qwen/Nope-7B", "--prompt", "hi"])
        .output()
        .unwrap();
    assert_clean_error(&o, &["Qwen/Nope-7B", "cache"]);
}

/// A folder of good and bad entries: every one is listed, the bad ones with their problem,
/// through the library, the Models pane's rescan and `fraudlab models --json` (exit 0).
#[test]
fn one_bad_entry_never_stops_discovery() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let gguf = std::fs::read(tiny_gguf(&m, true)).unwrap();
    let dir = d.path().join("models");
    std::fs::create_dir_all(&dir).unwrap();
    copy_dir(&m, &dir.join("good-qwen2"));
    std::fs::write(dir.join("good.gguf"), &gguf).unwrap();
    // GGUF files: garbage, empty, truncated, alignment 0 (a division by zero in the old
    // reader), a tensor count of 2^40, another architecture
    std::fs::write(dir.join("garbage.gguf"), b"GGUF\x03\0\0\0 not really").unwrap();
    std::fs::write(dir.join("empty.gguf"), b"").unwrap();
    std::fs::write(dir.join("truncated.gguf"), &gguf[..gguf.len() / 2]).unwrap();
    let mut g = build::Gguf::parse(&gguf);
    g.set("general.alignment", build::ty::U32, build::enc_u32(0));
    std::fs::write(dir.join("align0.gguf"), g.bytes()).unwrap();
    let mut huge = gguf.clone();
    huge[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(dir.join("huge-count.gguf"), huge).unwrap();
    let arch = b"general.architecture";
    let pos = gguf.windows(arch.len()).position(|w| w == arch).unwrap();
    let val = pos + arch.len() + 4 + 8;
    let mut llama = gguf.clone();
    llama[val..val + 5].copy_from_slice(b"llama");
    std::fs::write(dir.join("llama.gguf"), llama).unwrap();
    // folders: config not JSON, no tokenizer, weights without config, another architecture,
    // truncated weights, a link back to its parent
    copy_dir(&m, &dir.join("badjson"));
    std::fs::write(dir.join("badjson/config.json"), "{ nope").unwrap();
    copy_dir(&m, &dir.join("notok"));
    std::fs::remove_file(dir.join("notok/tokenizer.json")).unwrap();
    copy_dir(&m, &dir.join("noconfig"));
    std::fs::remove_file(dir.join("noconfig/config.json")).unwrap();
    copy_dir(&m, &dir.join("llama-folder"));
    std::fs::write(
        dir.join("llama-folder/config.json"),
        r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}"#,
    )
    .unwrap();
    copy_dir(&m, &dir.join("cutweights"));
    let w = std::fs::read(m.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("cutweights/model.safetensors"), &w[..w.len() - 50]).unwrap();
    std::os::unix::fs::symlink(&dir, dir.join("good-qwen2/loop")).unwrap();
    // a hub cache whose only entry never finished downloading
    let hf = d.path().join("hf");
    std::fs::create_dir_all(hf.join("models--Qwen--Half/snapshots/abc")).unwrap();
    std::fs::create_dir_all(d.path().join("ms")).unwrap();

    let expect: &[(&str, &str, &str)] = &[
        ("good-qwen2", "ok", ""),
        ("good.gguf", "ok", ""),
        ("garbage.gguf", "broken", "garbage.gguf"),
        ("empty.gguf", "broken", "truncated GGUF header"),
        ("truncated.gguf", "broken", "truncated"),
        ("align0.gguf", "broken", "alignment"),
        ("huge-count.gguf", "broken", "claims"),
        ("llama.gguf", "unsupported", "`llama`"),
        ("badjson", "broken", "not valid JSON"),
        ("notok", "broken", "missing tokenizer"),
        ("noconfig", "broken", "missing config.json"),
        ("llama-folder", "unsupported", "LlamaForCausalLM"),
        ("cutweights", "broken", "truncated"),
        ("models--Qwen--Half", "broken", "no complete snapshot"),
    ];
    let check = |list: &[(String, String, String)]| {
        for (path_end, status, needle) in expect {
            let e = list
                .iter()
                .find(|(p, _, _)| p.ends_with(path_end))
                .unwrap_or_else(|| panic!("{path_end} not listed: {list:?}"));
            assert_eq!(e.1, *status, "{path_end}: {e:?}");
            assert!(e.2.contains(needle), "{path_end}: {e:?}");
        }
        assert_eq!(list.len(), expect.len(), "{list:?}");
    };

    // the library
    std::env::set_var("HF_HUB_CACHE", &hf);
    std::env::set_var("MODELSCOPE_CACHE", d.path().join("ms"));
    std::env::remove_var("FRAUDLAB_MODELS");
    let lib: Vec<_> = fraudlab::model::discover::discover(std::slice::from_ref(&dir))
        .into_iter()
        .map(|m| {
            (
                m.path.display().to_string(),
                m.status,
                m.problem.unwrap_or_default(),
            )
        })
        .collect();
    check(&lib);

    // the Models pane's rescan, and its view of the list
    let root = d.path().join("sessions");
    let mut app = fraudlab::tui::App::new(
        fraudlab::data::Session::open(&root, "t").unwrap(),
        fraudlab::tui::AppOptions {
            sessions_root: root.clone(),
            model_dirs: vec![dir.clone()],
        },
    );
    app.rescan_models();
    let pane: Vec<_> = app
        .models
        .list
        .iter()
        .map(|m| {
            (
                m.path.display().to_string(),
                m.status.clone(),
                m.problem.clone().unwrap_or_default(),
            )
        })
        .collect();
    check(&pane);
    let shown = fraudlab::tui::render_to_string(&app, 160, 50);
    assert!(
        shown.contains("good-qwen2") && shown.contains("garbage.gguf"),
        "{shown}"
    );

    // the CLI
    let out = bin()
        .env("HF_HUB_CACHE", &hf)
        .env("MODELSCOPE_CACHE", d.path().join("ms"))
        .env_remove("FRAUDLAB_MODELS")
        .args(["models", "--json", "--models-dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let cli: Vec<_> = v
        .iter()
        .map(|m| {
            (
                m["path"].as_str().unwrap().to_string(),
                m["status"].as_str().unwrap().to_string(),
                m["problem"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    check(&cli);
    // and the table
    let out = bin()
        .env("HF_HUB_CACHE", &hf)
        .env("MODELSCOPE_CACHE", d.path().join("ms"))
        .env_remove("FRAUDLAB_MODELS")
        .args(["models", "--models-dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("! ") && text.contains("good-qwen2"), "{text}");
}
