//! A full disk while fraudlab writes labels, checkpoints, metrics, the session and evaluation
//! files: a clear error naming the file, nothing written before lost, and the work goes on
//! once space is back. Checked through the simulated full disk of `data::fsutil` (always) and
//! on a real tiny tmpfs that the test mounts when it may (root with mount rights; skipped
//! with a message otherwise). Training under a full disk is also covered, down to identical
//! adapter bytes after the resume, in `train_faults.rs`.

mod common;
use common::*;

use fraudlab::data::fsutil::{simulate_disk_full_after, ENOSPC_ENV};
use fraudlab::data::{Journal, Session, SessionConfig};
use fraudlab::engine::train::{train, TrainConfig, TrainControl};
use fraudlab::model::tiny::TinySpec;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

fn label(sessions: &Path, data: &Path, input: &str, env: &[(&str, &str)]) -> Output {
    let mut c = bin();
    c.env("FRAUDLAB_SESSIONS", sessions)
        .args(["label", "--dataset", data.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut c = c.spawn().unwrap();
    c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    c.wait_with_output().unwrap()
}

fn eval(sessions: &Path, model: &Path, data: &Path, env: &[(&str, &str)]) -> Output {
    let mut c = bin();
    c.env("FRAUDLAB_SESSIONS", sessions).args([
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
    ]);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// The session's evaluations that are complete (metrics.json is written last).
fn complete_evals(sessions: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(sessions.join("default/evals")) else {
        return 0;
    };
    rd.flatten()
        .filter(|e| e.path().join("metrics.json").is_file())
        .count()
}

fn assert_full_disk_error(o: &Output, file: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("No space left"), "{err}");
    assert!(err.contains(file), "names {file}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn session_and_evaluation_files_on_a_simulated_full_disk() {
    let d = tmp();
    let sessions = d.path().join("sessions");
    // session.json: the old content stays
    let s = Session::open(&sessions, "default").unwrap();
    let mut cfg = SessionConfig::default();
    cfg.datasets.push("first.jsonl".into());
    s.save_config(&cfg).unwrap();
    cfg.datasets.push("second.jsonl".into());
    simulate_disk_full_after(Some(20));
    let e = s.save_config(&cfg).unwrap_err();
    simulate_disk_full_after(None);
    let msg = format!("{e:#}");
    assert!(
        msg.contains("session.json") && msg.contains("No space left"),
        "{msg}"
    );
    assert_eq!(s.load_config().unwrap().datasets, vec!["first.jsonl"]);
    s.save_config(&cfg).unwrap();
    assert_eq!(s.load_config().unwrap().datasets.len(), 2);

    // evaluation files: a clear error, no complete-looking evaluation, then it goes through
    let m = tiny_model(d.path(), TinySpec::default());
    let data = d.path().join("eval.jsonl");
    fraud_jsonl(&data, 6);
    for budget in ["0", "100", "400"] {
        let o = eval(&sessions, &m, &data, &[(ENOSPC_ENV, budget)]);
        assert_full_disk_error(&o, "evals");
        assert_eq!(complete_evals(&sessions), 0);
    }
    let o = eval(&sessions, &m, &data, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(complete_evals(&sessions), 1);
}

// ------------------------------------------------------------------ a real tmpfs

/// A tmpfs mounted on a temporary folder, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// `None` (with the reason) when this process may not mount one.
    fn mount(dir: PathBuf, size: &str) -> Result<Tmpfs, String> {
        use std::ffi::CString;
        std::fs::create_dir_all(&dir).unwrap();
        let target = CString::new(dir.to_str().unwrap()).unwrap();
        let opts = CString::new(format!("size={size},mode=0700")).unwrap();
        // SAFETY: valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        Ok(Tmpfs { dir })
    }

    /// Fills the file system with `filler` but for about `free` bytes.
    fn fill(&self, free: u64) -> PathBuf {
        let filler = self.dir.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        let len = f.metadata().unwrap().len();
        f.set_len(len.saturating_sub(free)).unwrap();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = std::ffi::CString::new(self.dir.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

#[test]
fn labels_training_session_and_evaluation_on_a_real_tiny_tmpfs() {
    let d = tmp();
    let fs = match Tmpfs::mount(d.path().join("mnt"), "4m") {
        Ok(fs) => fs,
        Err(why) => {
            println!("SKIPPED the tmpfs part of disk_full: cannot mount a tmpfs here ({why}); the simulated full disk still ran");
            return;
        }
    };
    let m = tiny_model(d.path(), TinySpec::default());
    let data = d.path().join("dialogues.jsonl");
    fraud_jsonl(&data, 12);
    let ids: Vec<String> = fraudlab::data::load(&data)
        .unwrap()
        .samples
        .into_iter()
        .map(|s| s.id)
        .collect();
    let sessions = fs.dir.join("sessions");

    // labels: some, then a full disk, then space back
    let first: String = ids[..4].iter().map(|id| format!("{id} fraud\n")).collect();
    assert!(label(&sessions, &data, &first, &[]).status.success());
    let s = Session::open(&sessions, "default").unwrap();
    let mut cfg = SessionConfig::default();
    cfg.datasets.push(data.display().to_string());
    s.save_config(&cfg).unwrap();
    let filler = fs.fill(0);
    // enough lines to need the journal's next page, which the full tmpfs refuses
    let rest: String = (0..60)
        .map(|k| format!("{} normal\n", ids[4 + k % (ids.len() - 4)]))
        .collect();
    let o = label(&sessions, &data, &rest, &[]);
    assert_full_disk_error(&o, ".jsonl");
    let acked = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.starts_with("ok "))
        .count();
    assert!(acked < 60);
    let jp = sessions
        .join("default/labels")
        .join(format!("{}.jsonl", fraudlab::data::dataset_id(&data)));
    let r = Journal::read(&jp).unwrap();
    assert!(r.torn_tail.is_none() && r.bad_lines.is_empty());
    assert_eq!(
        r.entries.len(),
        4 + acked,
        "the labels from before and every acknowledged one, nothing else"
    );
    // session.json and an evaluation on the full disk
    cfg.datasets.push("other.jsonl".into());
    let e = format!("{:#}", s.save_config(&cfg).unwrap_err());
    assert!(
        e.contains("session.json") && e.contains("No space left"),
        "{e}"
    );
    assert_eq!(s.load_config().unwrap().datasets.len(), 1);
    let o = eval(&sessions, &m, &data, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("No space left"));
    assert_eq!(complete_evals(&sessions), 0);

    // space is back: everything goes on
    std::fs::remove_file(&filler).unwrap();
    assert!(label(&sessions, &data, &rest, &[]).status.success());
    assert_eq!(
        Journal::read(&jp).unwrap().current_labels().len(),
        ids.len()
    );
    s.save_config(&cfg).unwrap();
    assert!(eval(&sessions, &m, &data, &[]).status.success());
    assert_eq!(complete_evals(&sessions), 1);

    // training (checkpoints, metrics) with little room left, then resumed with room
    let reference = d.path().join("reference");
    let tc = |out: &Path| TrainConfig {
        model: m.to_str().unwrap().into(),
        data: data.clone(),
        out_dir: out.into(),
        batch: 2,
        grad_accum: 1,
        max_steps: Some(5),
        save_every: 1,
        seed: 5,
        ..TrainConfig::default()
    };
    train(&tc(&reference), &TrainControl::default(), &mut |_| {}).unwrap();
    let run = sessions.join("default/runs/full");
    let filler = fs.fill(48 * 1024);
    let e = format!(
        "{:#}",
        train(&tc(&run), &TrainControl::default(), &mut |_| {}).unwrap_err()
    );
    assert!(e.contains("No space left") && e.contains("full"), "{e}");
    if let Ok(rd) = std::fs::read_dir(run.join("checkpoints")) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            assert!(!n.starts_with('.'), "left behind: {n}");
        }
    }
    std::fs::remove_file(&filler).unwrap();
    let resumed = TrainConfig {
        resume: true,
        ..tc(&run)
    };
    train(&resumed, &TrainControl::default(), &mut |_| {}).unwrap();
    let bytes = |p: &Path| std::fs::read(p.join("adapter/adapter_model.safetensors")).unwrap();
    assert!(
        bytes(&run) == bytes(&reference),
        "resumed after a full disk: adapter bytes differ"
    );
}
