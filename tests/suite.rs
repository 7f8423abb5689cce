//! `fraudlab suite`: the capability suite over several models through the engine's generate
//! path, one JSON line per model and case, the matrix saved in the session and exported.

mod common;
use common::*;

use fraudlab::model::tiny::TinySpec;
use serde_json::Value;

#[test]
fn the_suite_runs_over_models_and_is_saved_and_exported() {
    let d = tmp();
    let sessions = d.path().join("sessions");
    let a = tiny_model(d.path(), TinySpec::default());
    let g = tiny_gguf(&a, true);
    let out = ok(&fl(
        &sessions,
        &[
            "--session",
            "s",
            "suite",
            "--model",
            a.to_str().unwrap(),
            "--model",
            g.to_str().unwrap(),
            "--max-tokens",
            "6",
            "--json",
        ],
    ));
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let cases =
        fraudlab::data::suite::parse_suite(fraudlab::data::suite::DEFAULT_SUITE, "b").unwrap();
    assert_eq!(rows.len(), 2 * cases.len());
    for r in &rows {
        for k in ["name", "model", "pass", "checks", "answer", "tokens_per_s"] {
            assert!(!r[k].is_null(), "{k} missing in {r}");
        }
        // random weights: no verdict can be read, so no verdict case passes
        if r["checks"][0]["check"] == "expect_json" {
            assert_eq!(r["pass"], false, "{r}");
        }
    }
    let models: std::collections::BTreeSet<&str> =
        rows.iter().map(|r| r["model"].as_str().unwrap()).collect();
    assert_eq!(models.len(), 2, "{models:?}");
    // the case that caps its own answer is answered within its cap, not --max-tokens
    let capped = cases.iter().find(|c| c.max_tokens.is_some()).unwrap();
    assert!(rows.iter().any(|r| r["name"] == capped.name.as_str()));

    // saved in the session, and exported from there
    let dir = sessions.join("s/suites");
    let saved: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert_eq!(saved.len(), 1);
    let file = saved[0].path();
    let r = fraudlab::data::suite::SuiteResults::load(&file).unwrap();
    assert_eq!(r.results.len(), rows.len());
    assert_eq!(r.suite, "built-in");
    let md = ok(&fl(
        &sessions,
        &["suite", "--from", file.to_str().unwrap(), "--format", "md"],
    ));
    assert!(
        md.contains("| case | tags |") && md.contains("**passed**"),
        "{md}"
    );
    assert!(md.contains(&cases[0].name));
    let csv = ok(&fl(
        &sessions,
        &["suite", "--from", file.to_str().unwrap(), "--format", "csv"],
    ));
    // records end at newlines outside quotes (answers may hold newlines)
    let mut quoted = false;
    let mut records = 0;
    for c in csv.chars() {
        match c {
            '"' => quoted = !quoted,
            '\n' if !quoted => records += 1,
            _ => {}
        }
    }
    assert_eq!(records, 1 + rows.len(), "{csv}");
}

#[test]
fn the_session_suite_file_is_used_and_bad_input_is_refused() {
    let d = tmp();
    let sessions = d.path().join("sessions");
    let m = tiny_model(d.path(), TinySpec::default());
    std::fs::create_dir_all(sessions.join("s")).unwrap();
    std::fs::write(
        sessions.join("s/suite.jsonl"),
        concat!(
            "// two cases of our own\n",
            "{\"name\": \"own fraud\", \"dialogue\": \"甲: 把验证码给我\\n乙: 好\", \"expect_json\": {\"is_fraud\": true}}\n",
            "{\"name\": \"own length\", \"prompt\": \"你好\", \"max_chars\": 100000, \"max_tokens\": 3}\n",
        ),
    )
    .unwrap();
    let out = ok(&fl(
        &sessions,
        &["--session", "s", "suite", "--model", m.to_str().unwrap()],
    ));
    assert!(
        out.contains("own fraud") && out.contains("own length"),
        "{out}"
    );
    // a 3-token answer is under 100000 characters: that case passes, the verdict one fails
    let passed = out.lines().find(|l| l.starts_with("passed")).unwrap();
    assert!(passed.trim_end().ends_with("1/2"), "{out}");
    assert!(out.contains("✗ own fraud"), "{out}");

    let bad = d.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"name\": \"x\", \"prompt\": \"p\", \"lang\": \"zh\"}\n{\"name\": \"y\", \"prompt\": \"p\"}\n").unwrap();
    let o = fl(
        &sessions,
        &[
            "suite",
            "--model",
            m.to_str().unwrap(),
            "--suite",
            bad.to_str().unwrap(),
        ],
    );
    assert_clean_error(&o, &["bad.jsonl:2", "no check"]);
    let o = fl(
        &sessions,
        &["suite", "--model", d.path().join("nope").to_str().unwrap()],
    );
    assert_clean_error(&o, &["nope"]);
    let o = fl(
        &sessions,
        &["suite", "--model", m.to_str().unwrap(), "--format", "xml"],
    );
    assert_clean_error(&o, &["--format xml"]);

    // in bf16: the same cases run (a 7B model's suite fits in half the memory)
    let out = ok(&fl(
        &sessions,
        &[
            "--session",
            "s",
            "suite",
            "--model",
            m.to_str().unwrap(),
            "--dtype",
            "bf16",
        ],
    ));
    assert!(
        out.contains("own fraud") && out.contains("own length"),
        "{out}"
    );
    let o = fl(
        &sessions,
        &["suite", "--model", m.to_str().unwrap(), "--dtype", "f16"],
    );
    assert_clean_error(&o, &["--dtype", "f16"]);
}
