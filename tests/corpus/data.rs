//! User files: datasets in each format, label journals, session.json, adapter folders.

use crate::{common, expect_err, load, Fixture, Tally};
use fraudlab::data::{self, Journal, Session};
use fraudlab::model::adapter::{self, AdapterMeta, LoraSpec};
use serde_json::{json, Value};
use std::path::Path;

fn fraud_line(i: usize) -> String {
    json!({"instruction": "判断", "input": format!("甲: 你好{i}\n乙: 好的"), "label": i.is_multiple_of(2)})
        .to_string()
}

/// Loads `bytes` as `name` and checks the bad lines found: each (line, reason part).
fn check_lines(
    fx: &Fixture,
    t: &mut Tally,
    name: &str,
    bytes: &[u8],
    good: usize,
    bad: &[(usize, &str)],
) {
    eprintln!("dataset: {name}");
    let p = fx.file(name, bytes);
    let r = data::load(&p).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    assert_eq!(r.samples.len(), good, "{name}: {:?}", r.bad_lines);
    let got: Vec<(usize, String)> = r
        .bad_lines
        .iter()
        .map(|b| (b.line, b.reason.clone()))
        .collect();
    assert_eq!(got.len(), bad.len(), "{name}: {got:?}");
    for ((line, reason), (want_line, want)) in got.iter().zip(bad) {
        assert_eq!(line, want_line, "{name}: {got:?}");
        assert!(
            reason.contains(want),
            "{name}: line {line}: {reason:?} lacks {want:?}"
        );
    }
    for b in &r.bad_lines {
        assert!(b
            .to_string()
            .starts_with(&format!("{}:{}: ", p.display(), b.line)));
    }
    t.add_n(bad.len());
}

#[test]
fn datasets() {
    let fx = Fixture::new();
    let mut t = Tally::new("dataset lines");
    let huge = format!(
        "{{\"text\": \"{}\"}}",
        "a".repeat(data::dataset::MAX_LINE_BYTES + 10)
    );
    let mut fraud = Vec::new();
    for l in [
        fraud_line(0),
        "{ not json".into(),
        r#"{"instruction": "i", "input": 5, "label": true}"#.into(),
        r#"{"instruction": "i", "input": "a: b", "label": "yes"}"#.into(),
        "[1, 2]".into(),
        "\"a string\"".into(),
        r#"{"instruction": "i", "label": true}"#.into(),
        r#"{"instruction": "i", "input": "a: b", "label": true, "fraud_speaker": 5}"#.into(),
        "[".repeat(10_000),
        huge.clone(),
    ] {
        fraud.extend_from_slice(l.as_bytes());
        fraud.push(b'\n');
    }
    fraud.extend_from_slice(b"{\"instruction\": \"\xff\xfe\", \"input\": \"a: b\"}\n");
    fraud.extend_from_slice(fraud_line(1).as_bytes());
    fraud.extend_from_slice(b"\r\n\n   \n");
    check_lines(
        &fx,
        &mut t,
        "fraud.jsonl",
        &fraud,
        2,
        &[
            (2, "not JSON"),
            (3, "field `input` must be a string"),
            (4, "field `label` must be a bool"),
            (5, "expected a JSON object"),
            (6, "expected a JSON object"),
            (7, "missing field `input`"),
            (8, "field `fraud_speaker` must be a string or null"),
            (9, "not JSON"),
            (10, "over the limit"),
            (11, "invalid UTF-8"),
        ],
    );
    let alpaca = json!([
        {"instruction": "a", "input": "b", "output": "c"},
        5,
        {"instruction": "x"},
        {"instruction": 1, "output": "y"},
        {"instruction": "a", "input": [], "output": "c"},
    ]);
    check_lines(
        &fx,
        &mut t,
        "alpaca.json",
        alpaca.to_string().as_bytes(),
        1,
        &[
            (2, "expected a JSON object"),
            (3, "missing field `output`"),
            (4, "field `instruction` must be a string"),
            (5, "field `input` must be a string or null"),
        ],
    );
    let chat = [
        r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}"#,
        r#"{"messages": []}"#,
        r#"{"messages": "hi"}"#,
        r#"{"messages": [{"role": "wizard", "content": "x"}]}"#,
        r#"{"messages": [{"role": "user", "content": 5}]}"#,
        r#"{"messages": [5]}"#,
    ]
    .join("\n");
    check_lines(
        &fx,
        &mut t,
        "chat.jsonl",
        chat.as_bytes(),
        1,
        &[
            (2, "field `messages` is empty"),
            (3, "field `messages` must be an array"),
            (4, "unknown role"),
            (5, "must be a string"),
            (6, "must be an object"),
        ],
    );
    let sharegpt = [
        r#"{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "ok"}]}"#,
        r#"{"conversations": [{"from": "alien", "value": "x"}]}"#,
        r#"{"conversations": [{"from": "human"}]}"#,
        r#"{"conversations": {"from": "human"}}"#,
    ]
    .join("\n");
    check_lines(
        &fx,
        &mut t,
        "sharegpt.jsonl",
        sharegpt.as_bytes(),
        1,
        &[
            (2, "unknown from"),
            (3, "missing field `value`"),
            (4, "must be an array"),
        ],
    );
    let text = format!("{{\"text\": \"ok\"}}\n{{\"text\": 5}}\n{{\"text\": null}}\n{huge}\n");
    check_lines(
        &fx,
        &mut t,
        "text.jsonl",
        text.as_bytes(),
        1,
        &[
            (2, "field `text` must be a string"),
            (3, "field `text` must be a string"),
            (4, "over the limit"),
        ],
    );
    check_lines(
        &fx,
        &mut t,
        "bad.txt",
        b"line one\nline \xff two\n",
        0,
        &[(2, "invalid UTF-8")],
    );
    let mut csv =
        b"case,speaker,content,is_fraud\n1,A,hello,False\n1,B,\"quoted, with comma\",True\n"
            .to_vec();
    csv.extend_from_slice(
        b"2,A,hi,maybe\n3,A\n4,A,\"bad \xff utf8\",False\n5,A,\"text\" after,True\n",
    );
    csv.extend_from_slice(b"6,A,\"never closed,False\n7,A,x,False\n");
    check_lines(
        &fx,
        &mut t,
        "turns.csv",
        &csv,
        2,
        &[
            (4, "is_fraud must be"),
            (5, "expected 4 fields, found 2"),
            (6, "invalid UTF-8 in field 3"),
            (8, "unterminated quoted field"),
        ],
    );
    let mut csv = b"case,speaker,content,is_fraud\n1,A,ok,False\n2,A,\"".to_vec();
    csv.extend(std::iter::repeat_n(b'x', data::dataset::MAX_LINE_BYTES / 2));
    csv.push(b'\n');
    csv.extend(std::iter::repeat_n(
        b'y',
        data::dataset::MAX_LINE_BYTES / 2 + 10,
    ));
    csv.extend_from_slice(b"\n3,A,ok,True\n");
    check_lines(&fx, &mut t, "huge.csv", &csv, 1, &[(3, "over the limit")]);

    // whole-file problems: an error naming the file
    let mut te = Tally::new("dataset files");
    let cases: Vec<(&str, &[u8], &str)> = vec![
        (
            "cut.json",
            b"[{\"instruction\": \"a\", ",
            "not a valid JSON array",
        ),
        ("deep.json", &[b'['; 100_000], "not a valid JSON array"),
        (
            "nocol.csv",
            b"case,speaker,content\n1,A,x\n",
            "lacks column `is_fraud`",
        ),
        ("badhead.csv", b"case,\"speaker\n", "bad CSV header"),
    ];
    for (name, bytes, needle) in cases {
        eprintln!("dataset: {name}");
        let p = fx.file(name, bytes);
        expect_err(name, data::load(&p), name, &[needle]);
        common::assert_clean_error(
            &common::run(&["data", "stats", p.to_str().unwrap()]),
            &[name, needle],
        );
        te.add();
    }
    let dir = fx.dir.path().join("folder.jsonl");
    std::fs::create_dir(&dir).unwrap();
    expect_err(
        "folder",
        data::load(&dir),
        "folder.jsonl",
        &["it is a folder"],
    );
    expect_err(
        "missing",
        data::load(&fx.dir.path().join("nope.jsonl")),
        "nope.jsonl",
        &["cannot open"],
    );
    te.add();
    te.add();
    // bad lines through the CLI: warnings naming file and line, the rest loads, exit 0
    let p = fx.dir.path().join("fraud.jsonl");
    let out = common::run(&["data", "stats", p.to_str().unwrap(), "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("{}:2: not JSON", p.display())),
        "{err}"
    );
    assert!(err.contains(":10: line is"), "{err}");
    assert!(!err.contains("panicked"));
}

#[test]
fn label_journals() {
    let fx = Fixture::new();
    let mut t = Tally::new("journal lines");
    let ds = fx.dir.path().join("d.jsonl");
    common::fraud_jsonl(&ds, 4);
    let id = data::load(&ds).unwrap().samples[0].id.clone();
    let mut j = Vec::new();
    for l in [
        json!({"id": id, "action": "label", "label": true, "time": 1.0}).to_string(),
        "not json".into(),
        r#"{"id": 5, "action": "label", "label": true}"#.into(),
        r#"{"id": "a", "action": "delete"}"#.into(),
        r#"{"id": "a", "action": "label", "label": "yes"}"#.into(),
        r#"{"id": "a", "action": "label", "label": true, "time": "yesterday"}"#.into(),
        r#"{"id": "a", "action": "label", "label": true, "fraud_speaker": 5}"#.into(),
        "[]".into(),
        r#"{"id": "", "action": "undo"}"#.into(),
        r#"{"action": "undo"}"#.into(),
        r#"{"id": "a", "action": "label", "label": true, "time": [1]}"#.into(),
    ] {
        j.extend_from_slice(l.as_bytes());
        j.push(b'\n');
    }
    j.extend_from_slice(b"{\"id\": \"\xff\", \"action\": \"undo\"}\n");
    j.extend_from_slice(b"{\"id\": \"b\", \"act");
    let want: &[(usize, &str)] = &[
        (2, "not JSON"),
        (3, "field `id` must be a non-empty string"),
        (4, "unknown action"),
        (5, "needs a bool `label`"),
        (6, "not RFC 3339"),
        (7, "field `fraud_speaker` must be a string or null"),
        (8, "not a JSON object"),
        (9, "non-empty string"),
        (10, "missing field `id`"),
        (11, "field `time` must be"),
        (12, "invalid UTF-8"),
    ];
    let root = fx.dir.path().join("sessions");
    let s = Session::open(&root, "s").unwrap();
    let jp = s.labels_path(&data::dataset_id(&ds));
    std::fs::write(&jp, &j).unwrap();
    let rep = Journal::read(&jp).unwrap();
    assert_eq!(rep.entries.len(), 1);
    assert!(rep.torn_tail.is_some());
    let got: Vec<(usize, &str)> = rep
        .bad_lines
        .iter()
        .map(|b| (b.line, b.reason.as_str()))
        .collect();
    assert_eq!(got.len(), want.len(), "{got:?}");
    for ((l, r), (wl, w)) in got.iter().zip(want) {
        assert_eq!(l, wl, "{got:?}");
        assert!(r.contains(w), "line {l}: {r:?} lacks {w:?}");
    }
    t.add_n(want.len() + 1);
    // the CLI lists the one good label and warns, naming the journal and the lines
    let out = common::bin()
        .env("FRAUDLAB_SESSIONS", &root)
        .args([
            "--session",
            "s",
            "label",
            "--dataset",
            ds.to_str().unwrap(),
            "--list",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&jp.display().to_string()) && err.contains("2, 3, 4"),
        "{err}"
    );
    assert!(err.contains("torn last line"), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
}

#[test]
fn session_files() {
    let fx = Fixture::new();
    let mut t = Tally::new("session.json");
    let root = fx.dir.path().join("sessions");
    let cases: Vec<(&str, &[u8])> = vec![
        ("not JSON", b"{ not"),
        ("empty", b""),
        ("a JSON array", b"[]"),
        ("models a number", br#"{"models": 5}"#),
        ("models of numbers", br#"{"models": [1]}"#),
        ("settings a list", br#"{"settings": []}"#),
        ("active_model a number", br#"{"active_model": 5}"#),
        ("invalid UTF-8", b"{\"created\": \"\xff\"}"),
        ("nested 100000 deep", &[b'['; 100_000]),
    ];
    for (i, (case, bytes)) in cases.into_iter().enumerate() {
        eprintln!("session.json: {case}");
        let name = format!("s{i}");
        let s = Session::open(&root, &name).unwrap();
        std::fs::write(s.config_path(), bytes).unwrap();
        expect_err(
            case,
            s.load_config(),
            "session.json",
            &["not a valid session file"],
        );
        // the workbench opens anyway, says so, and leaves the file alone
        let app = fraudlab::tui::App::new(
            s.clone(),
            fraudlab::tui::AppOptions {
                sessions_root: root.clone(),
                model_dirs: vec![],
            },
        );
        let msg = app
            .message
            .as_ref()
            .map(|m| m.text.clone())
            .unwrap_or_default();
        assert!(msg.contains("session.json"), "{case}: {msg}");
        assert_eq!(std::fs::read(s.config_path()).unwrap(), bytes);
        t.add();
    }
}

/// A valid adapter for the tiny model, with its fraudlab.json.
fn good_adapter(fx: &Fixture, dir: &Path) {
    let mut lm = load(&fx.model).unwrap();
    let spec = LoraSpec::default();
    let vars = adapter::attach_lora(&mut lm.model, &spec, 1).unwrap();
    adapter::save_adapter(dir, &spec, &vars, "tiny").unwrap();
    AdapterMeta::default().write(dir).unwrap();
}

fn lora_tensors(dir: &Path) -> Vec<(String, candle_core::Tensor)> {
    let f = fraudlab::model::safetensors_io::SafetensorsFile::open(
        &dir.join("adapter_model.safetensors"),
    )
    .unwrap();
    f.entries
        .keys()
        .map(|k| {
            (
                k.clone(),
                f.load(k, candle_core::DType::F32, &candle_core::Device::Cpu)
                    .unwrap(),
            )
        })
        .collect()
}

#[test]
fn adapter_folders() {
    let fx = Fixture::new();
    let mut t = Tally::new("adapter folder");
    let base = fx.dir.path().join("adapter");
    good_adapter(&fx, &base);
    let mut lm = load(&fx.model).unwrap();
    adapter::load_adapter(&mut lm.model, &base).unwrap();
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("adapter_config.json")).unwrap())
            .unwrap();
    let set = |k: &str, x: Value| {
        let mut v = cfg.clone();
        v[k] = x;
        v.to_string().into_bytes()
    };
    type Tensors = Vec<(String, candle_core::Tensor)>;
    type Change<'a> = Box<dyn Fn(&Path) + 'a>;
    let tensors = lora_tensors(&base);
    let tensors = &tensors;
    let save = |edit: fn(&mut Tensors)| -> Change<'_> {
        Box::new(move |d: &Path| {
            let mut ts = tensors.clone();
            edit(&mut ts);
            fraudlab::model::safetensors_io::save_atomic(&ts, &d.join("adapter_model.safetensors"))
                .unwrap();
        })
    };
    let write = |file: &'static str, bytes: Vec<u8>| -> Change<'static> {
        Box::new(move |d: &Path| std::fs::write(d.join(file), &bytes).unwrap())
    };
    let cases: Vec<(&str, Change<'_>, &str, &[&str])> = vec![
        (
            "config missing",
            Box::new(|d: &Path| std::fs::remove_file(d.join("adapter_config.json")).unwrap()),
            "adapter_config.json",
            &["cannot read adapter config"],
        ),
        (
            "config not JSON",
            write("adapter_config.json", b"{ not".to_vec()),
            "adapter_config.json",
            &["not a PEFT adapter config"],
        ),
        (
            "r 0",
            write("adapter_config.json", set("r", json!(0))),
            "adapter_config.json",
            &["rank r is 0"],
        ),
        (
            "r 2^40",
            write("adapter_config.json", set("r", json!(1u64 << 40))),
            "adapter_config.json",
            &["between 1 and 65536"],
        ),
        (
            "r a string",
            write("adapter_config.json", set("r", json!("8"))),
            "adapter_config.json",
            &["invalid type"],
        ),
        (
            "r missing",
            write("adapter_config.json", {
                let mut v = cfg.clone();
                v.as_object_mut().unwrap().remove("r");
                v.to_string().into_bytes()
            }),
            "adapter_config.json",
            &["missing field `r`"],
        ),
        (
            "lora_alpha a string",
            write("adapter_config.json", set("lora_alpha", json!("x"))),
            "adapter_config.json",
            &["invalid type"],
        ),
        (
            "target_modules a number",
            write("adapter_config.json", set("target_modules", json!(5))),
            "adapter_config.json",
            &["target_modules must be"],
        ),
        (
            "target_modules of numbers",
            write("adapter_config.json", set("target_modules", json!([1]))),
            "adapter_config.json",
            &["list of names"],
        ),
        (
            "peft_type IA3",
            write("adapter_config.json", set("peft_type", json!("IA3"))),
            "adapter_config.json",
            &["not supported"],
        ),
        (
            "DoRA",
            write("adapter_config.json", set("use_dora", json!(true))),
            "adapter_config.json",
            &["DoRA"],
        ),
        (
            "r not matching the weights",
            write("adapter_config.json", set("r", json!(4))),
            "adapter_model.safetensors",
            &["do not fit"],
        ),
        (
            "weights missing",
            Box::new(|d: &Path| std::fs::remove_file(d.join("adapter_model.safetensors")).unwrap()),
            "adapter_model.safetensors",
            &["missing adapter weights"],
        ),
        (
            "weights pickled",
            Box::new(|d: &Path| {
                std::fs::rename(
                    d.join("adapter_model.safetensors"),
                    d.join("adapter_model.bin"),
                )
                .unwrap()
            }),
            "adapter_model.bin",
            &["pickled"],
        ),
        (
            "weights truncated",
            Box::new(|d: &Path| {
                let p = d.join("adapter_model.safetensors");
                let b = std::fs::read(&p).unwrap();
                std::fs::write(&p, &b[..b.len() - 10]).unwrap();
            }),
            "adapter_model.safetensors",
            &["truncated"],
        ),
        (
            "A of one dimension",
            save(|ts| {
                for (k, v) in ts.iter_mut() {
                    if k.contains("lora_A") {
                        *v = v.flatten_all().unwrap();
                    }
                }
            }),
            "adapter_model.safetensors",
            &["is not a matrix"],
        ),
        (
            "A transposed",
            save(|ts| {
                for (k, v) in ts.iter_mut() {
                    if k.contains("lora_A") {
                        *v = v.t().unwrap().contiguous().unwrap();
                    }
                }
            }),
            "adapter_model.safetensors",
            &["do not fit"],
        ),
        (
            "B missing",
            save(|ts| ts.retain(|(k, _)| !k.contains("lora_B"))),
            "adapter_model.safetensors",
            &["no matching B"],
        ),
        (
            "keys of no layer",
            save(|ts| {
                for (k, _) in ts.iter_mut() {
                    *k = k.replace("model.layers", "model.blocks");
                }
            }),
            "adapter_model.safetensors",
            &["no LoRA weights match"],
        ),
    ];
    for (i, (case, change, file, needles)) in cases.into_iter().enumerate() {
        eprintln!("adapter: {case}");
        let d = fx.dir.path().join(format!("ad-{i}"));
        crate::copy_dir(&base, &d);
        change(&d);
        let mut lm = load(&fx.model).unwrap();
        expect_err(
            case,
            adapter::load_adapter(&mut lm.model, &d),
            file,
            needles,
        );
        if i % 4 == 0 {
            crate::cli_probe(
                &fx.model,
                &["--adapter", d.to_str().unwrap()],
                &[file, needles[0]],
            );
        }
        t.add();
    }

    let mut tm = Tally::new("fraudlab.json");
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("fraudlab.json")).unwrap())
            .unwrap();
    let mset = |k: &str, x: Value| {
        let mut v = meta.clone();
        v[k] = x;
        v.to_string().into_bytes()
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not JSON", b"{ not".to_vec(), "not a valid fraudlab.json"),
        (
            "invalid UTF-8",
            b"{\"system\": \"\xff\"}".to_vec(),
            "cannot read",
        ),
        (
            "threshold 1.5",
            mset("threshold", json!(1.5)),
            "not a probability",
        ),
        (
            "threshold negative",
            mset("threshold", json!(-0.1)),
            "not a probability",
        ),
        (
            "threshold a string",
            mset("threshold", json!("x")),
            "invalid type",
        ),
        (
            "stream of 0 turns",
            mset("stream", json!({"threshold": 0.5, "consecutive": 0})),
            "at least 1",
        ),
        (
            "stream threshold 2",
            mset("stream", json!({"threshold": 2.0, "consecutive": 1})),
            "not a probability",
        ),
        (
            "recall threshold 2",
            mset("threshold_for_recall", json!({"0.95": 2.0})),
            "not a probability",
        ),
        (
            "instruction missing",
            {
                let mut v = meta.clone();
                v.as_object_mut().unwrap().remove("instruction");
                v.to_string().into_bytes()
            },
            "missing field `instruction`",
        ),
        (
            "instruction a number",
            mset("instruction", json!(5)),
            "invalid type",
        ),
    ];
    let evald = fx.dir.path().join("eval.jsonl");
    common::fraud_jsonl(&evald, 2);
    for (i, (case, bytes, needle)) in cases.into_iter().enumerate() {
        eprintln!("fraudlab.json: {case}");
        let d = fx.dir.path().join(format!("meta-{i}"));
        crate::copy_dir(&base, &d);
        std::fs::write(d.join("fraudlab.json"), &bytes).unwrap();
        expect_err(case, AdapterMeta::read(&d), "fraudlab.json", &[needle]);
        if i % 4 == 0 {
            let out = common::run(&[
                "eval",
                "--model",
                fx.model.to_str().unwrap(),
                "--adapter",
                d.to_str().unwrap(),
                "--data",
                evald.to_str().unwrap(),
                "--limit",
                "1",
            ]);
            common::assert_clean_error(&out, &["fraudlab.json", needle]);
        }
        tm.add();
    }
}
