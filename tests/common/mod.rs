//! Helpers shared by the integration tests: tiny generated models and the built binary.
#![allow(dead_code)]

pub mod build;
pub mod tmux;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fraudlab::model::tiny::{write_gguf, write_tiny_model, TinySpec};

pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// A tiny random Qwen2 model as a Hugging Face folder.
pub fn tiny_model(dir: &Path, spec: TinySpec) -> PathBuf {
    let p = dir.join("tiny");
    write_tiny_model(&p, &spec).expect("write tiny model");
    p
}

/// The same model as a GGUF file with f32 (exact) or Q8_0 blocks.
pub fn tiny_gguf(model_dir: &Path, q8: bool) -> PathBuf {
    let out = model_dir.with_extension(if q8 { "q8.gguf" } else { "f32.gguf" });
    let dt = if q8 {
        candle_core::quantized::GgmlDType::Q8_0
    } else {
        candle_core::quantized::GgmlDType::F32
    };
    write_gguf(model_dir, &out, dt).expect("write gguf");
    out
}

pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fraudlab"));
    c.env(
        "FRAUDLAB_SESSIONS",
        std::env::temp_dir().join("fraudlab-test-sessions"),
    );
    c
}

pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run fraudlab")
}

/// Asserts a clean failure: exit code 2, a message containing every `needle`, no panic.
pub fn assert_clean_error(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected exit code 2, got {:?}; stderr: {err}",
        out.status.code()
    );
    assert!(!err.contains("panicked"), "panicked: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A small fraud-format JSONL file: alternating fraud / normal dialogues.
pub fn fraud_jsonl(path: &Path, n: usize) {
    fraud_jsonl_by(path, n, "客服", "用户");
}

/// [`fraud_jsonl`] with the fraudster and the victim named: a name such as `诈骗者王强`
/// gives the label away, which anonymisation must hide.
pub fn fraud_jsonl_by(path: &Path, n: usize, fraudster: &str, victim: &str) {
    let mut s = String::new();
    for i in 0..n {
        let fraud = i % 2 == 0;
        let input = if fraud {
            format!("{fraudster}: 您好，您的账户异常，请把验证码{i}告诉我。\n{victim}: 好的。")
        } else {
            format!("张三: 明天{i}点开会。\n李四: 好的，我准时到。")
        };
        let v = serde_json::json!({
            "instruction": fraudlab::data::DEFAULT_INSTRUCTION,
            "input": input,
            "label": fraud,
            "fraud_speaker": if fraud { fraudster } else { "" },
            "reason": "test",
        });
        s.push_str(&serde_json::to_string(&v).unwrap());
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

/// Runs the binary with `FRAUDLAB_SESSIONS` set to `sessions`.
pub fn fl(sessions: &Path, args: &[&str]) -> Output {
    bin()
        .env("FRAUDLAB_SESSIONS", sessions)
        .args(args)
        .output()
        .expect("run fraudlab")
}

/// Standard output of a run that must have succeeded (its standard error otherwise).
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}
