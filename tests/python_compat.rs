//! Interchange with the Python stack, opt-in: set FRAUDLAB_TEST_PY to a Python with torch,
//! transformers and peft (e.g. REF_PY from ../shared/reference/bench/setup.sh). Checks that
//! transformers loads our converted folder and merged model unchanged, that an adapter made by
//! Python `peft` gives the same logits here, and that our adapters (all layers, and a layer range
//! written as `layers_to_transform`) give the same logits there.

mod common;
use common::*;

use fraudlab::model::tiny::TinySpec;

fn top_logits(json: &[u8]) -> Vec<(u64, f64)> {
    let v: serde_json::Value = serde_json::from_slice(json)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(json)));
    v["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["id"].as_u64().unwrap(), t["logit"].as_f64().unwrap()))
        .collect()
}

fn same(a: &[(u64, f64)], b: &[(u64, f64)], what: &str) {
    assert_eq!(
        a.iter().map(|x| x.0).collect::<Vec<_>>(),
        b.iter().map(|x| x.0).collect::<Vec<_>>(),
        "{what}: top ids"
    );
    for (x, y) in a.iter().zip(b) {
        assert!(
            (x.1 - y.1).abs() < 1e-4 * x.1.abs().max(1.0),
            "{what}: {x:?} vs {y:?}"
        );
    }
}

#[test]
fn transformers_and_peft_interchange() {
    let Ok(py) = std::env::var("FRAUDLAB_TEST_PY") else {
        eprintln!("skipped: set FRAUDLAB_TEST_PY to a python with torch, transformers and peft to check interchange with them");
        return;
    };
    let logits_py = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/reference/bench/logits.py");
    if !logits_py.exists() {
        eprintln!("skipped: ../shared/reference/bench/logits.py is missing");
        return;
    }
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let g = tiny_gguf(&m, true);
    let conv = d.path().join("conv");
    assert!(run(&[
        "convert",
        "--gguf",
        g.to_str().unwrap(),
        "--out",
        conv.to_str().unwrap()
    ])
    .status
    .success());
    let prompt = d.path().join("p.txt");
    std::fs::write(&prompt, "<|im_start|>user\n你好 hello<|im_end|>\n").unwrap();
    let python = |args: &[&str]| {
        let o = std::process::Command::new(&py).args(args).output().unwrap();
        assert!(
            o.status.success(),
            "python {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o.stdout
    };
    let ours = |model: &std::path::Path, adapter: Option<&std::path::Path>| {
        let mut a = vec![
            "logits",
            "--model",
            model.to_str().unwrap(),
            "--prompt-file",
            prompt.to_str().unwrap(),
            "--raw",
            "--json",
        ];
        if let Some(ad) = adapter {
            a.extend(["--adapter", ad.to_str().unwrap()]);
        }
        let o = run(&a);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o.stdout
    };
    let lp = logits_py.to_str().unwrap();
    same(
        &top_logits(&python(&[
            lp,
            conv.to_str().unwrap(),
            prompt.to_str().unwrap(),
        ])),
        &top_logits(&ours(&conv, None)),
        "converted folder",
    );

    // an adapter made by Python peft, with non-zero B
    let pyad = d.path().join("pyadapter");
    let script = format!(
        "import torch\nfrom transformers import AutoModelForCausalLM\nfrom peft import LoraConfig, get_peft_model\ntorch.manual_seed(0)\nm = AutoModelForCausalLM.from_pretrained({:?}, dtype=torch.float32)\nget_peft_model(m, LoraConfig(r=4, lora_alpha=8, target_modules=['q_proj','v_proj','down_proj'], init_lora_weights=False, task_type='CAUSAL_LM')).save_pretrained({:?})\n",
        conv.to_str().unwrap(),
        pyad.to_str().unwrap()
    );
    python(&["-c", &script]);
    same(
        &top_logits(&python(&[
            lp,
            conv.to_str().unwrap(),
            prompt.to_str().unwrap(),
            pyad.to_str().unwrap(),
        ])),
        &top_logits(&ours(&conv, Some(&pyad))),
        "adapter made by peft",
    );

    // our adapter, and our merge, read by Python
    let data = d.path().join("d.jsonl");
    fraud_jsonl(&data, 6);
    // trains 4 steps on the tiny model into DIR (extra options before the common ones)
    let train = |dir: &str, extra: &[&str]| {
        let out = d.path().join(dir);
        let mut a = vec![
            "train",
            "--model",
            conv.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        a.extend(extra);
        a.extend([
            "--max-steps",
            "4",
            "--batch",
            "2",
            "--grad-accum",
            "1",
            "--lr",
            "1e-2",
            "--json",
        ]);
        let o = run(&a);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        out.join("adapter")
    };
    let in_peft = |adapter: &std::path::Path| {
        top_logits(&python(&[
            lp,
            conv.to_str().unwrap(),
            prompt.to_str().unwrap(),
            adapter.to_str().unwrap(),
        ]))
    };
    let ad = train("run", &[]);
    let with = top_logits(&ours(&conv, Some(&ad)));
    same(&in_peft(&ad), &with, "our adapter in peft");
    // an adapter on a layer range only (PEFT's layers_to_transform): the frozen layer below
    // it has no LoRA weights, and peft must still load it and give the same logits
    let ranged = train("run-ranged", &["--layers", "1-1"]);
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ranged.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["layers_to_transform"], serde_json::json!([1]));
    let ranged_ours = top_logits(&ours(&conv, Some(&ranged)));
    assert!(
        ranged_ours != top_logits(&ours(&conv, None)),
        "the layer-range adapter changes nothing"
    );
    same(
        &in_peft(&ranged),
        &ranged_ours,
        "our layer-range adapter in peft",
    );

    let merged = d.path().join("merged");
    let o = run(&[
        "merge",
        "--model",
        conv.to_str().unwrap(),
        "--adapter",
        ad.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    same(
        &top_logits(&python(&[
            lp,
            merged.to_str().unwrap(),
            prompt.to_str().unwrap(),
        ])),
        &with,
        "merged folder in transformers",
    );
}
