//! Finding models: the Hugging Face hub cache, the ModelScope cache, folders and GGUF files.

mod common;
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
    assert!(
        !list
            .iter()
            .any(|x| x["path"].as_str().unwrap().ends_with("llama")),
        "other architectures are left out"
    );

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
