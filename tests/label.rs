//! The hand-label journal under SIGKILL: a labelling process killed at random moments, many
//! times, loses no acknowledged label and leaves a readable journal.

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
    let rounds = 200;
    let mut acked_total = 0;
    for _ in 0..rounds {
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
            let fraud = rng.next() % 2 == 0;
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
        std::thread::sleep(std::time::Duration::from_micros(rng.next() % 6000));
        let _ = child.kill(); // SIGKILL
        drop(stdin);
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
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
        acked_total > 50,
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
