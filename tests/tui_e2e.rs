//! End to end: the real binary in tmux. Opens a fresh session, writes and loads the demo
//! model, runs a probe, labels two samples, starts and stops a two-step training run, quits,
//! reopens and finds the labels and the run. Skipped (with a message) without tmux.

mod common;
use common::tmux::Tmux;

use std::path::{Path, PathBuf};
use std::process::Command;

fn command(dir: &Path, sessions: &Path, home: &Path) -> String {
    let bin = env!("CARGO_BIN_EXE_fraudlab");
    format!(
        "cd '{}' && env -u FRAUDLAB_MODELS -u HF_HOME HOME='{}' HF_HUB_CACHE='{}' MODELSCOPE_CACHE='{}' FRAUDLAB_SESSIONS='{}' '{}' --session e2e; echo FRAUDLAB_EXITED $?; sleep 600",
        dir.display(),
        home.display(),
        home.join("hf").display(),
        home.join("ms").display(),
        sessions.display(),
        bin
    )
}

#[test]
fn workbench_end_to_end_in_tmux() {
    if !Tmux::available() {
        println!("SKIPPED tui_e2e: tmux is not installed (the CI script installs it)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let sessions = dir.join("sessions");
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let data: PathBuf = dir.join("dialogues.jsonl");
    fraudlab::tui::fixtures::write_dataset(&data, 12).unwrap();
    let socket = format!("fraudlab-e2e-{}", std::process::id());
    let cmd = command(&dir, &sessions, &home);

    {
        let t = Tmux::start(&socket, "first", &cmd);
        t.wait_for("1 Models", 30);
        // the demo model: write, list, load
        t.keys(&["1", "d"]);
        t.wait_for("fraudlab-demo-tiny (demo)", 30);
        t.keys(&["Enter"]);
        t.wait_for(" 1 loaded ", 60);

        // open the dataset and label two samples
        t.keys(&["4", "o", "C-u"]);
        t.literal(&data.display().to_string());
        t.keys(&["Enter"]);
        t.wait_for("dialogues.jsonl · all · 12 of 12", 30);
        t.keys(&["f", "n"]);
        t.wait_for("hand-labelled 2", 30);

        // a probe on the loaded model
        t.keys(&["2", "F5"]);
        t.wait("a finished probe", 120, |s| {
            s.contains("TTFT") && s.contains(" tok · ")
        });

        // a two-step training run, stopped right after it starts
        t.keys(&["3"]);
        t.wait_for("Run settings", 30);
        let f = fraudlab::tui::train::field_index("max steps").unwrap();
        for _ in 0..f {
            t.keys(&["j"]);
        }
        t.keys(&["Enter", "C-u"]);
        t.literal("2");
        t.keys(&["Enter"]);
        t.wait("max steps 2", 30, |s| {
            s.lines()
                .any(|l| l.contains("max steps") && l.contains(" 2 "))
        });
        t.keys(&["s"]);
        t.wait_for("Live run", 30);
        t.keys(&["x"]);
        t.wait("the run to end", 300, |s| {
            s.contains("training stopped") || s.contains("training completed")
        });

        t.keys(&["q"]);
        t.wait_for("FRAUDLAB_EXITED 0", 60);
    }

    // on disk: two labels, one run, a probe
    let sess = sessions.join("e2e");
    let journal = sess
        .join("labels")
        .join(format!("{}.jsonl", fraudlab::data::dataset_id(&data)));
    let labels = fraudlab::data::Journal::read(&journal)
        .unwrap()
        .current_labels();
    assert_eq!(labels.len(), 2, "two hand labels in {}", journal.display());
    let runs: Vec<String> = std::fs::read_dir(sess.join("runs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(runs.len(), 1, "one run: {runs:?}");
    assert!(sess
        .join("runs")
        .join(&runs[0])
        .join("config.json")
        .exists());
    let probes = std::fs::read_to_string(sess.join("probes.jsonl")).unwrap();
    assert!(probes.lines().count() >= 1);

    // reopen: the dataset with its labels, the loaded model, the run
    {
        let t = Tmux::start(&socket, "second", &cmd);
        t.wait_for("Run settings", 30); // the pane that was open
        t.wait_for(" 1 loaded ", 60);
        t.keys(&["v"]);
        t.wait_for(&runs[0], 30);
        t.keys(&["4"]);
        t.wait_for("hand-labelled 2", 30);
        t.keys(&["q"]);
        t.wait_for("FRAUDLAB_EXITED 0", 60);
    }
}

#[test]
fn refuses_without_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fraudlab"))
        .env("FRAUDLAB_SESSIONS", tmp.path())
        .env("HOME", tmp.path())
        .stdout(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs a terminal"), "{err}");
}
