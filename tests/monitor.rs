//! Live monitoring on tiny generated models: per-turn P(fraud) equals score mode on every
//! dialogue prefix, interleaved conversations, eviction, window slides, alerts, the
//! `fraudlab monitor` pipe; and, opt-in, incremental tokenization with the real tokenizer.

mod common;
use common::*;

use fraudlab::engine::eval::score_samples;
use fraudlab::engine::monitor::{turns_sample, Monitor, MonitorConfig};
use fraudlab::model::tiny::TinySpec;
use fraudlab::model::{self, LoadOptions};
use std::io::Write;
use std::process::Stdio;
use std::sync::atomic::AtomicBool;

fn turns() -> Vec<(String, String)> {
    [
        ("张三", "你好，请问是李女士吗？我是银行客服。"),
        ("李四", "是的，有什么事？"),
        ("张三", "您的账户存在异常，需要转账到安全账户。"),
        ("李四", "真的吗？"),
        ("张三", "请把验证码告诉我，hello world!"),
        ("李四", "好的…… 123456。"),
        ("张三", "谢谢！！\n稍等"),
        ("李四", "  嗯  "),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect()
}

fn score_prefix(lm: &model::LoadedModel, cfg: &MonitorConfig, t: &[(String, String)]) -> f64 {
    let s = turns_sample(cfg, t);
    score_samples(lm, &[s], 1, &AtomicBool::new(false), &mut |_, _| {}).unwrap()[0]
}

#[test]
fn every_turn_equals_score_mode_on_the_prefix() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let lm = model::load(m.to_str().unwrap(), LoadOptions::default()).unwrap();
    let cfg = MonitorConfig::default();
    let mut mon = Monitor::new(cfg.clone()).unwrap();
    let ts = turns();
    let mut prev_prompt = 0;
    // what follows the dialogue: end of the user turn, the assistant's pre-filled answer
    let suffix = lm
        .tokenizer
        .encode("<|im_end|>\n<|im_start|>assistant\n{\"is_fraud\":")
        .unwrap()
        .len();
    for (i, (sp, tx)) in ts.iter().enumerate() {
        let r = mon.turn(&lm, "c1", sp, tx).unwrap();
        assert_eq!(r.turn, i + 1);
        let kept: Vec<(String, String)> = ts[..=i]
            .iter()
            .map(|(a, b)| (a.trim().to_string(), b.trim().to_string()))
            .collect();
        let want = score_prefix(&lm, &cfg, &kept);
        assert!(
            (r.p_fraud - want).abs() < 1e-4,
            "turn {}: incremental {} vs score mode {want}",
            i + 1,
            r.p_fraud
        );
        assert!(!r.slid && r.window_start == 1);
        if i > 0 {
            // only the new turn, the answer prefix and a changed token or two ran
            assert!(
                r.computed_tokens <= r.prompt_tokens - prev_prompt + suffix + 3,
                "turn {}: {} tokens computed of {}",
                i + 1,
                r.computed_tokens,
                r.prompt_tokens
            );
        }
        prev_prompt = r.prompt_tokens;
    }
}

#[test]
fn interleaved_conversations_and_eviction() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let lm = model::load(m.to_str().unwrap(), LoadOptions::default()).unwrap();
    let cfg = MonitorConfig {
        max_conversations: 2,
        ..Default::default()
    };
    let mut mon = Monitor::new(cfg.clone()).unwrap();
    let ts = turns();
    let ids = ["a", "b", "c"];
    let mut evictions = 0;
    for (i, (sp, tx)) in ts.iter().enumerate().take(6) {
        for (k, c) in ids.iter().enumerate() {
            // each conversation gets the turns in its own rotation
            let (sp2, tx2) = &ts[(i + k) % ts.len()];
            let (sp, tx) = if k == 0 { (sp, tx) } else { (sp2, tx2) };
            let r = mon.turn(&lm, c, sp, tx).unwrap();
            evictions += r.evicted.is_some() as usize;
            let st = mon.state(c).unwrap();
            let want = score_prefix(&lm, &cfg, &st.turns);
            assert!(
                (r.p_fraud - want).abs() < 1e-4,
                "conversation {c} turn {}: {} vs {want}",
                r.turn,
                r.p_fraud
            );
        }
    }
    assert!(
        evictions > 0,
        "three conversations with room for two must evict"
    );
    let cached = ids.iter().filter(|c| mon.state(c).unwrap().cached).count();
    assert_eq!(cached, 2);
    assert!(mon.end("a"));
    assert!(!mon.end("a"));
}

#[test]
fn window_slides_and_then_equals_score_mode_on_the_window() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let lm = model::load(m.to_str().unwrap(), LoadOptions::default()).unwrap();
    // find the prompt size of three turns, and use a window a little larger
    let base = MonitorConfig::default();
    let ts = turns();
    let mut probe = Monitor::new(base.clone()).unwrap();
    let mut sizes = vec![];
    for (sp, tx) in &ts {
        sizes.push(probe.turn(&lm, "x", sp, tx).unwrap().prompt_tokens);
    }
    let window = sizes[3];
    let cfg = MonitorConfig {
        window,
        ..base.clone()
    };
    let mut mon = Monitor::new(cfg.clone()).unwrap();
    let mut slides = 0;
    for _round in 0..3 {
        for (sp, tx) in &ts {
            let r = mon.turn(&lm, "long", sp, tx).unwrap();
            assert!(
                r.prompt_tokens <= window,
                "{} > window {window}",
                r.prompt_tokens
            );
            slides += r.slid as usize;
            let st = mon.state("long").unwrap();
            let kept = &st.turns[st.window_start - 1..];
            let want = score_prefix(&lm, &cfg, kept);
            assert!(
                (r.p_fraud - want).abs() < 1e-4,
                "turn {} (window from {}): {} vs {want}",
                r.turn,
                st.window_start,
                r.p_fraud
            );
        }
    }
    assert!(
        slides >= 2,
        "24 turns in a 4-turn window slide several times"
    );
    // a slide keeps room: not once per turn
    assert!(slides < 12, "{slides} slides in 24 turns");
}

#[test]
fn alerts_latch_after_k_turns_in_a_row() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let lm = model::load(m.to_str().unwrap(), LoadOptions::default()).unwrap();
    let ts = turns();
    // the probabilities this model gives, then a threshold between them
    let mut m0 = Monitor::new(MonitorConfig::default()).unwrap();
    let ps: Vec<f64> = ts
        .iter()
        .map(|(s, t)| m0.turn(&lm, "p", s, t).unwrap().p_fraud)
        .collect();
    for k in 1..=3 {
        let thr = {
            let mut v = ps.clone();
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            v[v.len() / 2]
        };
        let mut mon = Monitor::new(MonitorConfig {
            threshold: thr,
            consecutive: k,
            ..Default::default()
        })
        .unwrap();
        // expected firing turn
        let mut run = 0;
        let mut want = None;
        for (i, p) in ps.iter().enumerate() {
            run = if *p >= thr { run + 1 } else { 0 };
            if want.is_none() && run >= k {
                want = Some(i + 1);
            }
        }
        for (i, (s, t)) in ts.iter().enumerate() {
            let r = mon.turn(&lm, "c", s, t).unwrap();
            assert_eq!(
                r.alert_turn,
                want.filter(|&w| w <= i + 1),
                "k {k} turn {}",
                i + 1
            );
            assert_eq!(r.alert, r.alert_turn.is_some());
        }
    }
    assert!(Monitor::new(MonitorConfig {
        consecutive: 0,
        ..Default::default()
    })
    .is_err());
}

#[test]
fn monitor_pipe_json_lines_and_bad_lines() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let mut child = bin()
        .args([
            "monitor",
            "--model",
            m.to_str().unwrap(),
            "--json",
            "--threshold",
            "0",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "张三: 你好").unwrap();
        writeln!(
            stdin,
            r#"{{"conversation": "c2", "speaker": "A", "text": "hi"}}"#
        )
        .unwrap();
        writeln!(stdin, "{{broken").unwrap();
        writeln!(stdin, "李四: 请转账").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad line makes exit 2: {stderr}"
    );
    assert!(stderr.contains("line 3"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(lines[0]["conversation"], "default");
    assert_eq!(lines[0]["turn"], 1);
    assert_eq!(lines[1]["conversation"], "c2");
    assert_eq!(lines[1]["turn"], 1);
    assert_eq!(lines[2]["turn"], 2);
    assert_eq!(lines[2]["speaker"], "李四");
    // threshold 0: every turn is at or above it, the alert fires on turn 1 and latches
    assert_eq!(lines[0]["alert"], true);
    assert_eq!(lines[2]["alert_turn"], 1);
    for l in &lines {
        let p = l["p_fraud"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&p));
        assert!(l["latency_ms"].as_f64().unwrap() >= 0.0);
    }
}

/// Opt-in: the real tokenizer (FRAUDLAB_TEST_HF or FRAUDLAB_TEST_GGUF) and the real data
/// (../shared/data/fraud-dialogues): the incremental ids equal tokenizing each prefix whole,
/// checked through the monitor's prompt tokens against score mode's, on 200 dialogues.
#[test]
fn real_tokenizer_incremental_ids() {
    let Some(spec) = std::env::var("FRAUDLAB_TEST_HF")
        .ok()
        .or_else(|| std::env::var("FRAUDLAB_TEST_GGUF").ok())
    else {
        eprintln!("skipped: set FRAUDLAB_TEST_HF or FRAUDLAB_TEST_GGUF to the real model");
        return;
    };
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/fraud-dialogues/dialogues-dev.jsonl");
    if !data.exists() {
        eprintln!("skipped: {} is absent", data.display());
        return;
    }
    let lm = model::load(&spec, LoadOptions::default()).unwrap();
    let cfg = MonitorConfig::default();
    let r = fraudlab::data::load(&data).unwrap();
    let mut checked = 0;
    for s in r.samples.iter().take(200) {
        let turns = s.turns();
        let inc =
            fraudlab::engine::monitor::incremental_prompt_ids(&lm.tokenizer, &cfg, &turns).unwrap();
        for n in 1..=turns.len() {
            let whole = fraudlab::engine::eval::score_prompt(
                &lm.tokenizer,
                &turns_sample(&cfg, &turns[..n]),
            )
            .unwrap();
            assert_eq!(inc[n - 1], whole, "dialogue {} after turn {n}", s.id);
            checked += 1;
        }
    }
    eprintln!("{checked} dialogue prefixes tokenized incrementally, all equal");
}

/// Opt-in, real model (f32 path: FRAUDLAB_TEST_HF, or FRAUDLAB_TEST_GGUF dequantized): per-turn
/// P(fraud) equals score mode on each dialogue prefix within 1e-4, on real dialogues.
#[test]
fn real_model_turns_equal_score_mode() {
    let Some(spec) = std::env::var("FRAUDLAB_TEST_HF")
        .ok()
        .or_else(|| std::env::var("FRAUDLAB_TEST_GGUF").ok())
    else {
        eprintln!("skipped: set FRAUDLAB_TEST_HF or FRAUDLAB_TEST_GGUF to the real model");
        return;
    };
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/fraud-dialogues/dialogues-dev.jsonl");
    if !data.exists() {
        eprintln!("skipped: {} is absent", data.display());
        return;
    }
    let lm = model::load(&spec, LoadOptions::default()).unwrap();
    let cfg = MonitorConfig::default();
    let r = fraudlab::data::load(&data).unwrap();
    let mut mon = Monitor::new(cfg.clone()).unwrap();
    let mut worst = 0f64;
    let mut n = 0;
    for s in r.samples.iter().filter(|s| s.turns().len() >= 4).take(6) {
        let turns = s.turns();
        for (i, (sp, tx)) in turns.iter().enumerate() {
            let got = mon.turn(&lm, &s.id, sp, tx).unwrap().p_fraud;
            let want = score_prefix(&lm, &cfg, &mon.state(&s.id).unwrap().turns);
            worst = worst.max((got - want).abs());
            assert!(
                (got - want).abs() < 1e-4,
                "{} turn {}: {got} vs {want}",
                s.id,
                i + 1
            );
            n += 1;
        }
        mon.end(&s.id);
    }
    eprintln!("{n} turns on the real model; largest |incremental - score mode| = {worst:.2e}");
}

#[test]
fn eval_stream_mode_and_calibration_save_the_rule() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    // a labelled set in the fraud JSONL format, several turns each
    let data = d.path().join("dev.jsonl");
    let mut lines = String::new();
    for i in 0..8 {
        let input = (0..3 + i % 3)
            .map(|t| {
                format!(
                    "{}: 第{t}句，编号{i}。",
                    if t % 2 == 0 { "甲" } else { "乙" }
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        lines.push_str(
            &serde_json::json!({"instruction": "判断是否诈骗。", "input": input, "label": i % 2 == 0})
                .to_string(),
        );
        lines.push('\n');
    }
    std::fs::write(&data, lines).unwrap();
    // an adapter folder to store the calibrated rule in: train one step
    let run = d.path().join("run");
    let out = run_ok(&[
        "train",
        "--model",
        m.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--max-steps",
        "1",
        "--batch",
        "2",
        "--grad-accum",
        "1",
    ]);
    let adapter = run.join("adapter");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(adapter.join("fraudlab.json")).unwrap())
            .unwrap();
    assert_eq!(meta["instruction"], "判断是否诈骗。", "{out}");
    assert!(meta["stream"].is_null());
    let out = run_ok(&[
        "eval",
        "--model",
        m.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--mode",
        "stream",
        "--calibrate",
        "0.25",
        "--json",
    ]);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let res = &lines[0];
    assert_eq!(res["mode"], "stream");
    let st = &res["stream"];
    assert_eq!(st["fraud_dialogues"], 4);
    assert_eq!(st["normal_dialogues"], 4);
    assert!(st["detection_by_turn"].as_array().unwrap().len() >= 3);
    let cal = &lines[1]["calibrated"];
    assert!(cal["false_alarm_rate"].as_f64().unwrap() <= 0.25);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(adapter.join("fraudlab.json")).unwrap())
            .unwrap();
    assert_eq!(meta["stream"]["threshold"], cal["threshold"]);
    assert_eq!(meta["stream"]["consecutive"], cal["consecutive"]);
    // the saved rule is used by default afterwards, and said so
    let out = run_ok(&[
        "eval",
        "--model",
        m.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--mode",
        "stream",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(v["stream"]["threshold"], cal["threshold"]);
    assert_eq!(
        v["stream"]["threshold_source"],
        "the adapter's streaming rule"
    );
}

fn run_ok(args: &[&str]) -> String {
    let o = run(args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "fraudlab {args:?} failed: {err}");
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn anonymised_prompts_equal_score_mode_on_the_anonymised_prefix() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let lm = model::load(m.to_str().unwrap(), LoadOptions::default()).unwrap();
    let cfg = MonitorConfig {
        anonymize_speakers: true,
        ..Default::default()
    };
    let plain = MonitorConfig::default();
    let mut mon = Monitor::new(cfg.clone()).unwrap();
    let ts = turns();
    let mut differs = false;
    for (i, (sp, tx)) in ts.iter().enumerate() {
        let r = mon.turn(&lm, "c", sp, tx).unwrap();
        assert_eq!(&r.speaker, sp.trim(), "results keep the real speaker");
        let kept = mon.state("c").unwrap().turns;
        let want = score_prefix(&lm, &cfg, &kept);
        assert!(
            (r.p_fraud - want).abs() < 1e-4,
            "turn {}: {} vs {want}",
            i + 1,
            r.p_fraud
        );
        differs |= (want - score_prefix(&lm, &plain, &kept)).abs() > 1e-9;
    }
    assert!(differs, "anonymised prompts are different prompts");
    // the sample score mode sees has A/B speakers, the same id
    let s = turns_sample(&cfg, &ts[..2]);
    assert!(s.dialogue_text().starts_with("A: "));
    assert_eq!(s.id, turns_sample(&plain, &ts[..2]).id);
}
