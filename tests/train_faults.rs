//! Training under faults: `fraudlab train` SIGKILLed at many moments of a tiny run (during
//! checkpoint writes among them) and resumed each time, and a run that meets a full disk
//! (simulated through the write seam of `data::fsutil`) and resumes once space is back. Both
//! must end with an adapter whose bytes equal an uninterrupted run's (same seed, same
//! machine), with every checkpoint on disk readable and every step's metrics line once.

mod common;
use common::*;

use fraudlab::data::fsutil::simulate_disk_full_after;
use fraudlab::engine::train::{latest_checkpoint, train, Schedule, TrainConfig, TrainControl};
use fraudlab::model::tiny::TinySpec;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const STEPS: usize = 6;

fn config(model: &Path, data: &Path, out: &Path) -> TrainConfig {
    TrainConfig {
        model: model.to_str().unwrap().into(),
        data: data.into(),
        out_dir: out.into(),
        batch: 2,
        grad_accum: 1,
        lr: 1e-2,
        max_steps: Some(STEPS),
        schedule: Schedule::Cosine,
        warmup_ratio: 0.2,
        seed: 7,
        save_every: 1,
        ..TrainConfig::default()
    }
}

fn adapter_bytes(run: &Path) -> Vec<u8> {
    std::fs::read(run.join("adapter/adapter_model.safetensors")).unwrap()
}

/// Every `step-N/` checkpoint holds all its files, and its trainer state says step N.
fn assert_checkpoints_whole(run: &Path) {
    let Ok(rd) = std::fs::read_dir(run.join("checkpoints")) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(n) = name.strip_prefix("step-") else {
            continue;
        };
        let p = e.path();
        for f in [
            "adapter_model.safetensors",
            "adapter_config.json",
            "optimizer.safetensors",
            "trainer_state.json",
        ] {
            assert!(p.join(f).is_file(), "{} lacks {f}", p.display());
        }
        let st: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p.join("trainer_state.json")).unwrap())
                .unwrap();
        assert_eq!(st["step"].to_string(), n, "{}", p.display());
        for f in ["adapter_model.safetensors", "optimizer.safetensors"] {
            fraudlab::model::safetensors_io::SafetensorsFile::open(&p.join(f))
                .unwrap_or_else(|e| panic!("{}: {e:#}", p.join(f).display()));
        }
    }
}

/// metrics.jsonl holds steps 1..=STEPS, each once.
fn assert_metrics_once(run: &Path) {
    let steps: Vec<u64> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, (1..=STEPS as u64).collect::<Vec<_>>());
}

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

fn train_args(model: &Path, data: &Path, out: &Path) -> Vec<String> {
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let mut v: Vec<String> = vec![
        "train".into(),
        "--model".into(),
        s(model),
        "--data".into(),
        s(data),
        "--out".into(),
        s(out),
    ];
    for (k, val) in [
        ("--max-steps", STEPS.to_string()),
        ("--batch", "2".into()),
        ("--grad-accum", "1".into()),
        ("--lr", "1e-2".into()),
        ("--warmup-ratio", "0.2".into()),
        ("--seed", "7".into()),
        ("--save-every", "1".into()),
    ] {
        v.push(k.into());
        v.push(val);
    }
    v.push("--resume".into());
    v
}

#[test]
fn sigkill_at_many_moments_then_resume_gives_the_same_adapter_bytes() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let data = d.path().join("train.jsonl");
    fraud_jsonl(&data, 10);

    // the uninterrupted run, timed
    let reference = d.path().join("reference");
    let t = Instant::now();
    let o = bin()
        .args(train_args(&m, &data, &reference))
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let whole = t.elapsed();
    let want = adapter_bytes(&reference);

    // the same run, killed at random moments until it gets through; again from scratch
    // until there were KILLS kills
    const KILLS: usize = 40;
    let mut rng = Lcg(2024);
    let mut kills = 0;
    let mut during_checkpoint = 0;
    let mut newest_seen = std::collections::BTreeSet::new();
    let mut rounds = 0;
    let t = Instant::now();
    while kills < KILLS {
        rounds += 1;
        let run = d.path().join(format!("killed-{rounds}"));
        let mut attempts = 0;
        loop {
            attempts += 1;
            assert!(attempts < 200, "the killed run never finished");
            let mut child = bin()
                .args(train_args(&m, &data, &run))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let span = (whole.as_micros() as u64 * 7 / 10).max(1);
            let wait = Duration::from_micros(rng.next() % span);
            let start = Instant::now();
            let mut finished = None;
            while start.elapsed() < wait {
                if let Some(st) = child.try_wait().unwrap() {
                    finished = Some(st);
                    break;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            if finished.is_none() {
                let _ = child.kill(); // SIGKILL
                let st = child.wait().unwrap();
                if st.success() {
                    finished = Some(st); // it ended just before the kill
                } else {
                    kills += 1;
                }
            }
            if let Some(st) = finished {
                let mut err = String::new();
                use std::io::Read;
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                assert!(st.success(), "{err}");
                break;
            }
            // killed: what is on disk is whole; a write in progress is only a hidden folder
            assert_checkpoints_whole(&run);
            let hidden = std::fs::read_dir(run.join("checkpoints"))
                .map(|rd| {
                    rd.flatten()
                        .any(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
                })
                .unwrap_or(false);
            if hidden {
                during_checkpoint += 1;
            }
            newest_seen.insert(latest_checkpoint(&run).map(|(n, _)| n));
        }
        assert!(
            adapter_bytes(&run) == want,
            "round {rounds}: after kills and resumes the adapter bytes differ from the uninterrupted run's"
        );
        assert_metrics_once(&run);
        assert_checkpoints_whole(&run);
        std::fs::remove_dir_all(&run).unwrap();
    }
    println!(
        "{kills} kills in {rounds} rounds ({during_checkpoint} during a checkpoint write) in {:.1}s; newest checkpoint at the kills: {newest_seen:?}; uninterrupted run {whole:?}",
        t.elapsed().as_secs_f64()
    );
    assert!(
        newest_seen.len() >= 4,
        "the kills fell at too few points of the run: {newest_seen:?}"
    );
    assert!(
        during_checkpoint > 0,
        "no kill fell during a checkpoint write"
    );
}

/// Gives the space back when dropped (even when the test fails).
struct FullDisk;
impl FullDisk {
    fn after(bytes: u64) -> FullDisk {
        simulate_disk_full_after(Some(bytes));
        FullDisk
    }
}
impl Drop for FullDisk {
    fn drop(&mut self) {
        simulate_disk_full_after(None);
    }
}

#[test]
fn a_full_disk_stops_training_cleanly_and_resume_ends_identically() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let data = d.path().join("train.jsonl");
    fraud_jsonl(&data, 10);
    // the uninterrupted run, counting the bytes it writes
    let reference = d.path().join("reference");
    let budget = u64::MAX / 2;
    let full = FullDisk::after(budget);
    train(
        &config(&m, &data, &reference),
        &TrainControl::default(),
        &mut |_| {},
    )
    .unwrap();
    let left = simulate_disk_full_after(None).unwrap();
    drop(full);
    let written = budget - left;
    let want = adapter_bytes(&reference);

    for (i, frac) in [0.02, 0.3, 0.55, 0.8, 0.97].into_iter().enumerate() {
        let out = d.path().join(format!("run{i}"));
        let tc = config(&m, &data, &out);
        {
            let _full = FullDisk::after((written as f64 * frac) as u64);
            let e = train(&tc, &TrainControl::default(), &mut |_| {}).unwrap_err();
            let msg = format!("{e:#}");
            assert!(msg.contains("No space left"), "{msg}");
            assert!(msg.contains(out.to_str().unwrap()), "names the file: {msg}");
        }
        // nothing half-written: checkpoints whole, no hidden leftovers, metrics lines whole
        assert_checkpoints_whole(&out);
        if let Ok(rd) = std::fs::read_dir(out.join("checkpoints")) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                assert!(!n.starts_with('.'), "left behind: {n}");
            }
        }
        if let Ok(text) = std::fs::read_to_string(out.join("metrics.jsonl")) {
            assert!(text.is_empty() || text.ends_with('\n'));
            for l in text.lines() {
                serde_json::from_str::<serde_json::Value>(l).unwrap();
            }
        }
        // space is back: the run resumes and ends as the uninterrupted one
        let resumed = TrainConfig { resume: true, ..tc };
        train(&resumed, &TrainControl::default(), &mut |_| {}).unwrap();
        assert!(
            adapter_bytes(&out) == want,
            "run {i} (disk full after {:.0}% of the bytes): adapter bytes differ",
            frac * 100.0
        );
        assert_metrics_once(&out);
    }
}
