//! The hand-label journal under faults: a labelling process killed at random moments, 500
//! times, loses no acknowledged label and leaves a readable journal; two `fraudlab label`
//! processes write one journal at once (no lost or interleaved line), also while one of them
//! compacts it; a full disk is a clear error that loses nothing.

mod common;
use common::*;

use std::io::{Read, Write};
use std::process::Stdio;

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

#[test]
fn killed_labelling_process_keeps_every_acknowledged_label() {
    let d = tmp();
    let data = d.path().join("dialogues.jsonl");
    fraud_jsonl(&data, 24);
    let ids: Vec<String> = fraudlab::data::load(&data)
        .unwrap()
        .samples
        .into_iter()
        .map(|s| s.id)
        .collect();
    let sessions = d.path().join("sessions");
    let mut rng = Lcg(42);
    // per id: every action sent, in order, with whether it was acknowledged
    let mut sent: Vec<Vec<(bool, bool)>> = vec![vec![]; ids.len()];
    let rounds = 500;
    let mut acked_total = 0;
    for round in 0..rounds {
        let mut child = bin()
            .env("FRAUDLAB_SESSIONS", &sessions)
            .args(["label", "--dataset", data.to_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let n = 1 + rng.next() as usize % 6;
        let mut batch = vec![];
        let mut input = String::new();
        for _ in 0..n {
            let i = rng.next() as usize % ids.len();
            let fraud = rng.next().is_multiple_of(2);
            input.push_str(&format!(
                "{} {}\n",
                ids[i],
                if fraud { "fraud" } else { "normal" }
            ));
            batch.push((i, fraud));
        }
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(input.as_bytes());
        let _ = stdin.flush();
        // half the kills fall anywhere from the start (opening, repairing a torn tail…),
        // half in the labelling itself: after the first acknowledgement
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut out = String::new();
        if round % 2 == 1 {
            use std::io::BufRead;
            stdout.read_line(&mut out).unwrap();
            std::thread::sleep(std::time::Duration::from_micros(rng.next() % 3000));
        } else {
            std::thread::sleep(std::time::Duration::from_micros(rng.next() % 6000));
        }
        let _ = child.kill(); // SIGKILL
        drop(stdin);
        stdout.read_to_string(&mut out).unwrap();
        let _ = child.wait();
        let acks: Vec<&str> = out.lines().filter(|l| l.starts_with("ok ")).collect();
        for (k, (i, fraud)) in batch.iter().enumerate() {
            let acked = k < acks.len();
            if acked {
                assert_eq!(acks[k], format!("ok {}", ids[*i]), "acks come in order");
                acked_total += 1;
            }
            sent[*i].push((*fraud, acked));
        }
    }
    assert!(
        acked_total >= rounds / 2,
        "the test must acknowledge many labels ({acked_total})"
    );
    // a readable journal: current labels as JSON lines
    let o = bin()
        .env("FRAUDLAB_SESSIONS", &sessions)
        .args(["label", "--dataset", data.to_str().unwrap(), "--list"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let current: std::collections::HashMap<String, bool> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["id"].as_str().unwrap().to_string(),
                v["label"].as_bool().unwrap(),
            )
        })
        .collect();
    for (i, actions) in sent.iter().enumerate() {
        let Some(last_ack) = actions.iter().rposition(|a| a.1) else {
            continue;
        };
        // the acknowledged label, or one sent after it that reached the disk before the kill
        let allowed: Vec<bool> = actions[last_ack..].iter().map(|a| a.0).collect();
        let got = current.get(&ids[i]).copied();
        assert!(
            got.is_some_and(|g| allowed.contains(&g)),
            "id {}: acknowledged {:?}, journal has {got:?}",
            ids[i],
            actions[last_ack]
        );
    }
    // no corrupt line in the middle: at most a torn tail, which the next open repairs
    let journal = std::fs::read_dir(sessions.join("default/labels"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let report = fraudlab::data::Journal::read(&journal).unwrap();
    assert!(report.bad_lines.is_empty(), "{:?}", report.bad_lines);
}

#[test]
fn label_cli_rejects_unknown_ids_and_supports_undo() {
    let d = tmp();
    let data = d.path().join("dialogues.jsonl");
    fraud_jsonl(&data, 4);
    let ids: Vec<String> = fraudlab::data::load(&data)
        .unwrap()
        .samples
        .into_iter()
        .map(|s| s.id)
        .collect();
    let sessions = d.path().join("sessions");
    let mut child = bin()
        .env("FRAUDLAB_SESSIONS", &sessions)
        .args([
            "--session",
            "lab",
            "label",
            "--dataset",
            data.to_str().unwrap(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = format!(
        "{a} fraud 客服\n{b} normal\n{b} undo\nffffffffffffffff fraud\n",
        a = ids[0],
        b = ids[1]
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(2),
        "an unknown id makes the run fail: {out}"
    );
    assert!(
        out.contains(&format!("ok {}", ids[0])) && out.contains("error ffffffffffffffff"),
        "{out}"
    );
    let o = bin()
        .env("FRAUDLAB_SESSIONS", &sessions)
        .args([
            "--session",
            "lab",
            "label",
            "--dataset",
            data.to_str().unwrap(),
            "--list",
        ])
        .output()
        .unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "the undone label is gone");
    assert_eq!(lines[0]["id"], ids[0].as_str());
    assert_eq!(lines[0]["fraud_speaker"], "客服");
    // export --with-labels applies the session's labels
    let out = d.path().join("labelled.jsonl");
    let o = bin()
        .env("FRAUDLAB_SESSIONS", &sessions)
        .args([
            "--session",
            "lab",
            "data",
            "export",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--with-labels",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let back = fraudlab::data::load(&out).unwrap();
    assert_eq!(
        back.samples.iter().map(|s| &s.id).collect::<Vec<_>>(),
        ids.iter().collect::<Vec<_>>(),
        "ids survive relabelling"
    );
    let s = run(&["sessions", "--json"]);
    assert!(s.status.success());
}

fn sample_ids(data: &std::path::Path) -> Vec<String> {
    fraudlab::data::load(data)
        .unwrap()
        .samples
        .into_iter()
        .map(|s| s.id)
        .collect()
}

fn label_process(sessions: &std::path::Path, data: &std::path::Path) -> std::process::Child {
    bin()
        .env("FRAUDLAB_SESSIONS", sessions)
        .args(["label", "--dataset", data.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn journal_path(sessions: &std::path::Path, data: &std::path::Path) -> std::path::PathBuf {
    sessions
        .join("default/labels")
        .join(format!("{}.jsonl", fraudlab::data::dataset_id(data)))
}

#[test]
fn two_label_processes_write_one_journal_at_once() {
    let d = tmp();
    let data = d.path().join("dialogues.jsonl");
    fraud_jsonl(&data, 16);
    let ids = sample_ids(&data);
    let sessions = d.path().join("sessions");
    let n = 150;
    // each writer tags its labels with its name and a sequence number (the speaker field)
    let mut kids: Vec<_> = ["wa", "wb"]
        .iter()
        .map(|w| {
            let mut c = label_process(&sessions, &data);
            let input: String = (0..n)
                .map(|k| format!("{} fraud {w}-{k}\n", ids[(k * 7 + w.len()) % ids.len()]))
                .collect();
            let mut stdin = c.stdin.take().unwrap();
            std::thread::spawn(move || stdin.write_all(input.as_bytes()).unwrap());
            c
        })
        .collect();
    let outs: Vec<_> = kids
        .drain(..)
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for o in &outs {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let acks = String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.starts_with("ok "))
            .count();
        assert_eq!(acks, n);
    }
    let text = std::fs::read_to_string(journal_path(&sessions, &data)).unwrap();
    let report = fraudlab::data::journal::parse_journal(text.as_bytes());
    assert!(report.bad_lines.is_empty() && report.torn_tail.is_none());
    assert_eq!(
        report.entries.len(),
        2 * n,
        "one line per acknowledged label"
    );
    for w in ["wa", "wb"] {
        let seq: Vec<usize> = report
            .entries
            .iter()
            .filter_map(|e| e.fraud_speaker.as_deref()?.strip_prefix(&format!("{w}-")))
            .map(|k| k.parse().unwrap())
            .collect();
        assert_eq!(seq, (0..n).collect::<Vec<_>>(), "{w}'s lines, in its order");
    }
}

#[test]
fn compaction_by_one_process_while_another_has_the_old_file_open() {
    use std::io::BufRead;
    use std::os::unix::fs::MetadataExt;
    let d = tmp();
    let data = d.path().join("dialogues.jsonl");
    fraud_jsonl(&data, 8);
    let ids = sample_ids(&data);
    let sessions = d.path().join("sessions");
    let jp = journal_path(&sessions, &data);

    // A opens the journal and labels once: it holds the file as it is now
    let mut a = label_process(&sessions, &data);
    let mut a_in = a.stdin.take().unwrap();
    let mut a_out = std::io::BufReader::new(a.stdout.take().unwrap()).lines();
    writeln!(a_in, "{} fraud", ids[0]).unwrap();
    assert_eq!(a_out.next().unwrap().unwrap(), format!("ok {}", ids[0]));
    let old_inode = std::fs::metadata(&jp).unwrap().ino();

    // many superseded lines (relabels), then B opens: it compacts
    {
        let mut j = fraudlab::data::Journal::open(&jp).unwrap();
        for k in 0..fraudlab::data::journal::COMPACT_MIN_SUPERSEDED + 10 {
            j.label(&ids[1 + k % 3], k % 2 == 0, None, None).unwrap();
        }
    }
    let mut b = label_process(&sessions, &data);
    writeln!(b.stdin.take().unwrap(), "{} normal", ids[5]).unwrap();
    let ob = b.wait_with_output().unwrap();
    assert!(ob.status.success());
    assert!(
        String::from_utf8_lossy(&ob.stderr).contains("compacted"),
        "{}",
        String::from_utf8_lossy(&ob.stderr)
    );
    assert_ne!(std::fs::metadata(&jp).unwrap().ino(), old_inode);
    let lines = std::fs::read_to_string(&jp).unwrap().lines().count();
    assert!(lines <= 5, "compacted to one line per sample: {lines}");

    // A writes again: its label must land in the new file, not the replaced one
    writeln!(a_in, "{} fraud", ids[6]).unwrap();
    assert_eq!(a_out.next().unwrap().unwrap(), format!("ok {}", ids[6]));
    drop(a_in);
    assert!(a.wait().unwrap().success());
    let cur = fraudlab::data::Journal::read(&jp).unwrap().current_labels();
    assert_eq!(cur.get(&ids[0]).map(|l| l.label), Some(true));
    assert_eq!(cur.get(&ids[5]).map(|l| l.label), Some(false));
    assert_eq!(
        cur.get(&ids[6]).map(|l| l.label),
        Some(true),
        "the label A wrote after the compaction is on disk"
    );
    assert_eq!(cur.len(), 6);
}

#[test]
fn a_full_disk_while_labelling_is_a_clear_error_and_loses_nothing() {
    let d = tmp();
    let data = d.path().join("dialogues.jsonl");
    fraud_jsonl(&data, 20);
    let ids = sample_ids(&data);
    let sessions = d.path().join("sessions");
    let input: String = ids.iter().map(|id| format!("{id} fraud\n")).collect();
    // the disk fills after about five lines
    let mut c = bin()
        .env("FRAUDLAB_SESSIONS", &sessions)
        .env(fraudlab::data::fsutil::ENOSPC_ENV, "600")
        .args(["label", "--dataset", data.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{out}{err}");
    assert!(
        err.contains("No space left") && err.contains(".jsonl"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let acked: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("ok ")).collect();
    assert!((2..ids.len()).contains(&acked.len()), "{out}");
    let jp = journal_path(&sessions, &data);
    let r = fraudlab::data::Journal::read(&jp).unwrap();
    assert!(r.torn_tail.is_none() && r.bad_lines.is_empty(), "{r:?}");
    let on_disk: Vec<&str> = r.entries.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        on_disk, acked,
        "exactly the acknowledged labels are on disk"
    );
    // space is back: labelling goes on
    let mut c = label_process(&sessions, &data);
    c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    assert!(c.wait_with_output().unwrap().status.success());
    let r = fraudlab::data::Journal::read(&jp).unwrap();
    assert_eq!(r.current_labels().len(), ids.len());
}
