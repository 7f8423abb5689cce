//! Tokenizer files and chat templates: tokenizer.json, tokenizer_config.json,
//! generation_config.json, chat_template.jinja, and templates that fail, loop or grow.

use crate::common::build::{self, ty, Gguf};
use crate::{cli_probe, expect_err, load, Fixture, Tally};
use fraudlab::engine::{Command, Engine, Event};
use fraudlab::model::ChatMessage;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[test]
fn tokenizer_files() {
    let fx = Fixture::new();
    let mut t = Tally::new("tokenizer.json");
    let good: Value =
        serde_json::from_str(&std::fs::read_to_string(fx.model.join("tokenizer.json")).unwrap())
            .unwrap();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        f(&mut v);
        v.to_string().into_bytes()
    };
    let deep = format!("{{\"model\":{}", "[".repeat(100_000));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not JSON", b"{ not json".to_vec()),
        ("empty", vec![]),
        ("invalid UTF-8", b"{\"version\": \"\xff\"}".to_vec()),
        ("a JSON array", b"[]".to_vec()),
        // found by the mutation test: `tokenizers` panicked on a syntax error inside `decoder`
        (
            "decoder with a control character",
            String::from_utf8(with(&|v| {
                v["decoder"] = json!({"type": "ByteLevel", "x": "PLACEHOLDER"})
            }))
            .unwrap()
            .replace("PLACEHOLDER", "a\u{1}b")
            .into_bytes(),
        ),
        (
            "decoder with a lone surrogate",
            String::from_utf8(with(&|v| {
                v["decoder"] = json!({"type": "ByteLevel", "x": "PLACEHOLDER"})
            }))
            .unwrap()
            .replace("PLACEHOLDER", "\\ud800")
            .into_bytes(),
        ),
        ("no model", b"{}".to_vec()),
        ("nested 100000 deep", deep.into_bytes()),
        (
            "model of an unknown type",
            with(&|v| v["model"]["type"] = json!("Nope")),
        ),
        (
            "vocab a list",
            with(&|v| v["model"]["vocab"] = json!([1, 2])),
        ),
        (
            "vocab ids strings",
            with(&|v| v["model"]["vocab"] = json!({"a": "0"})),
        ),
        (
            "merge of unknown tokens",
            with(&|v| v["model"]["merges"] = json!(["zzqq yyxx"])),
        ),
        (
            "merges a number",
            with(&|v| v["model"]["merges"] = json!(5)),
        ),
        (
            "added tokens a string",
            with(&|v| v["added_tokens"] = json!("x")),
        ),
        (
            "added token id a string",
            with(&|v| v["added_tokens"][0]["id"] = json!("0")),
        ),
        (
            "pre-tokenizer regex invalid",
            with(&|v| v["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = json!("(")),
        ),
        (
            "normalizer of an unknown type",
            with(&|v| v["normalizer"] = json!({"type": "Nope"})),
        ),
    ];
    for (i, (case, bytes)) in cases.into_iter().enumerate() {
        eprintln!("tokenizer.json: {case}");
        let m = fx.variant(&format!("tok-{i}"), |d| {
            std::fs::write(d.join("tokenizer.json"), &bytes).unwrap()
        });
        expect_err(case, load(&m), "tokenizer.json", &["not a valid tokenizer"]);
        if i % 5 == 0 {
            cli_probe(&m, &[], &["tokenizer.json", "not a valid tokenizer"]);
        }
        t.add();
    }
    let m = fx.variant("tok-missing", |d| {
        std::fs::remove_file(d.join("tokenizer.json")).unwrap()
    });
    expect_err(
        "missing",
        load(&m),
        "tokenizer.json",
        &["missing tokenizer"],
    );
    let m = fx.variant("tok-dir", |d| {
        std::fs::remove_file(d.join("tokenizer.json")).unwrap();
        std::fs::create_dir(d.join("tokenizer.json")).unwrap();
    });
    expect_err("a folder", load(&m), "tokenizer.json", &[]);
    t.add();
    t.add();
}

#[test]
fn tokenizer_config_files() {
    let fx = Fixture::new();
    let mut t = Tally::new("tokenizer_config.json / generation_config.json");
    let good: Value = serde_json::from_str(
        &std::fs::read_to_string(fx.model.join("tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    let set = |k: &str, x: Value| {
        let mut v = good.clone();
        v[k] = x;
        v.to_string().into_bytes()
    };
    let cases: Vec<(&str, &str, Vec<u8>, &[&str])> = vec![
        (
            "not JSON",
            "tokenizer_config.json",
            b"{ not".to_vec(),
            &["not valid JSON"],
        ),
        (
            "invalid UTF-8",
            "tokenizer_config.json",
            b"{\"a\":\"\xff\"}".to_vec(),
            &["cannot read"],
        ),
        (
            "a JSON array",
            "tokenizer_config.json",
            b"[1]".to_vec(),
            &["not a JSON object"],
        ),
        (
            "chat_template a number",
            "tokenizer_config.json",
            set("chat_template", json!(5)),
            &["`chat_template` must be a string"],
        ),
        (
            "chat_template an object",
            "tokenizer_config.json",
            set("chat_template", json!({"a": 1})),
            &["`chat_template` must be a string"],
        ),
        (
            "chat_template list without default",
            "tokenizer_config.json",
            set(
                "chat_template",
                json!([{"name": "tool_use", "template": "x"}]),
            ),
            &["without a template named \"default\""],
        ),
        (
            "chat_template default not a string",
            "tokenizer_config.json",
            set("chat_template", json!([{"name": "default", "template": 5}])),
            &["no string `template`"],
        ),
        (
            "eos_token a number",
            "tokenizer_config.json",
            set("eos_token", json!(5)),
            &["`eos_token` must be"],
        ),
        (
            "eos_token an object without content",
            "tokenizer_config.json",
            set("eos_token", json!({"x": 1})),
            &["`eos_token`", "content"],
        ),
        (
            "bos_token a bool",
            "tokenizer_config.json",
            set("bos_token", json!(true)),
            &["`bos_token` must be"],
        ),
        (
            "pad_token a list",
            "tokenizer_config.json",
            set("pad_token", json!([])),
            &["`pad_token` must be"],
        ),
        (
            "generation config not JSON",
            "generation_config.json",
            b"{{".to_vec(),
            &["not valid JSON"],
        ),
        (
            "generation config invalid UTF-8",
            "generation_config.json",
            b"\xff".to_vec(),
            &["cannot read"],
        ),
    ];
    for (i, (case, file, bytes, needles)) in cases.into_iter().enumerate() {
        eprintln!("tokenizer config: {case}");
        let m = fx.variant(&format!("tc-{i}"), |d| {
            std::fs::write(d.join(file), &bytes).unwrap()
        });
        expect_err(case, load(&m), file, needles);
        if i % 4 == 0 {
            cli_probe(&m, &[], &[file, needles[0]]);
        }
        t.add();
    }
}

/// Templates that do not parse, fail, loop, recurse or grow: loading succeeds (the template
/// is only text until used), rendering is an error naming where the template came from.
#[test]
fn chat_templates() {
    let fx = Fixture::new();
    let mut t = Tally::new("chat template");
    let msgs = vec![ChatMessage::new("user", "你好")];
    let big = "x".repeat(8 << 20);
    let cases: Vec<(&str, String, &[&str])> = vec![
        ("syntax error", "{% for %}".into(), &["does not parse"]),
        (
            "unclosed block",
            "{% if true %}x".into(),
            &["does not parse"],
        ),
        (
            "unknown tag",
            "{% frobnicate %}".into(),
            &["does not parse"],
        ),
        ("unknown filter", "{{ messages | frobnicate }}".into(), &[]),
        (
            "raise_exception",
            "{{ raise_exception('no') }}".into(),
            &["failed to render", "no"],
        ),
        (
            "calling a string",
            "{{ 'a'() }}".into(),
            &["failed to render"],
        ),
        (
            "nested loops without end",
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
                .into(),
            &["budget"],
        ),
        (
            "huge output",
            "{% for i in range(100000) %}{{ 'x' * 1000000 }}{% endfor %}".into(),
            &["over its cap"],
        ),
        (
            "recursive loop",
            "{% for x in [1] recursive %}{{ loop([x]) }}{% endfor %}".into(),
            &["recursion"],
        ),
        (
            "range too long",
            "{% for i in range(1000000000) %}{% endfor %}".into(),
            &["failed to render"],
        ),
        (
            "string repeat 10^9",
            "{{ 'x' * 1000000000 }}".into(),
            &["failed to render"],
        ),
        ("template text of 8 MiB", big, &["over its cap"]),
    ];
    for (i, (case, tpl, needles)) in cases.into_iter().enumerate() {
        eprintln!("template: {case}");
        let m = fx.variant(&format!("tpl-{i}"), |d| {
            let p = d.join("tokenizer_config.json");
            let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            v["chat_template"] = json!(tpl);
            std::fs::write(&p, v.to_string()).unwrap();
        });
        let lm = load(&m).unwrap();
        let t0 = Instant::now();
        let r = lm.tokenizer.apply_chat_template(&msgs, true);
        expect_err(case, r, "tokenizer_config.json", needles);
        // a guard against a hang, not a speed claim
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{case}: {:?}",
            t0.elapsed()
        );
        if i % 3 == 0 || needles.contains(&"budget") {
            cli_probe(
                &m,
                &[],
                &["tokenizer_config.json", needles.first().unwrap_or(&"")],
            );
        }
        t.add();
    }
    // a template file beside the model, and one inside a GGUF file
    let m = fx.variant("tpl-jinja", |d| {
        let p = d.join("tokenizer_config.json");
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        v.as_object_mut().unwrap().remove("chat_template");
        std::fs::write(&p, v.to_string()).unwrap();
        std::fs::write(
            d.join("chat_template.jinja"),
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        )
        .unwrap();
    });
    let lm = load(&m).unwrap();
    expect_err(
        "chat_template.jinja loop",
        lm.tokenizer.apply_chat_template(&msgs, true),
        "chat_template.jinja",
        &["budget"],
    );
    let mut g = Gguf::parse(&std::fs::read(&fx.gguf).unwrap());
    g.set(
        "tokenizer.chat_template",
        ty::STRING,
        build::enc_str(
            b"{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        ),
    );
    let p = fx.file("loop.gguf", &g.bytes());
    let lm = load(&p).unwrap();
    expect_err(
        "GGUF template loop",
        lm.tokenizer.apply_chat_template(&msgs, true),
        "loop.gguf (tokenizer.chat_template)",
        &["budget"],
    );
    cli_probe(&p, &[], &["loop.gguf", "budget"]);
    t.add();
    t.add();
}

/// The engine (what the workbench drives) answers a looping template with an error event.
#[test]
fn engine_reports_a_looping_template() {
    let fx = Fixture::new();
    let m = fx.variant("tpl-engine", |d| {
        let p = d.join("tokenizer_config.json");
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        v["chat_template"] = json!(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
        );
        std::fs::write(&p, v.to_string()).unwrap();
    });
    let spec = m.display().to_string();
    let engine = Engine::spawn(256);
    engine.send(Command::Load {
        key: "m".into(),
        spec,
        opts: Default::default(),
        adapter: None,
    });
    engine.send(Command::Generate {
        request: 1,
        keys: vec!["m".into()],
        system: None,
        prompt: "hi".into(),
        raw: false,
        params: Default::default(),
    });
    let t0 = Instant::now();
    let msg = 'wait: loop {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no answer from the engine"
        );
        for e in engine.drain() {
            match e {
                Event::Error { message, .. } => break 'wait message,
                Event::Generated { .. } => panic!("the looping template rendered"),
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        msg.contains("tokenizer_config.json") && msg.contains("budget"),
        "{msg}"
    );
    // the engine still answers afterwards
    engine.send(Command::Generate {
        request: 2,
        keys: vec!["m".into()],
        system: None,
        prompt: "hi".into(),
        raw: true,
        params: fraudlab::engine::generate::SamplingParams {
            max_tokens: 2,
            ..Default::default()
        },
    });
    let t0 = Instant::now();
    'ok: loop {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no answer from the engine"
        );
        for e in engine.drain() {
            match e {
                Event::Generated { request: 2, .. } => break 'ok,
                Event::Error { message, .. } => panic!("{message}"),
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
