//! The journal's unit tests: replay, torn tails, corrupt lines, two writers, compaction,
//! a full disk.

use super::*;
use serde_json::Value;
use std::io::Write;

fn jpath(dir: &Path) -> PathBuf {
    dir.join("labels").join("ds-0123abcd.jsonl")
}

#[test]
fn append_undo_replay() {
    let dir = tempfile::tempdir().unwrap();
    let p = jpath(dir.path());
    {
        let mut j = Journal::open(&p).unwrap();
        j.label("a", true, Some("甲".into()), Some("转账".into()))
            .unwrap();
        j.label("b", false, None, None).unwrap();
        j.label("a", false, None, None).unwrap();
        assert!(!j.get("a").unwrap().label);
        assert!(j.undo("a").unwrap());
        assert!(j.get("a").unwrap().label);
        assert_eq!(j.get("a").unwrap().fraud_speaker.as_deref(), Some("甲"));
        assert_eq!(j.counts(), (2, 1, 1));
        assert_eq!(j.undo_last().unwrap().as_deref(), Some("b"));
        assert_eq!(j.undo_last().unwrap().as_deref(), Some("a"));
        assert_eq!(j.undo_last().unwrap(), None);
        assert!(!j.undo("a").unwrap());
        j.label("c", true, None, None).unwrap();
    }
    let text = std::fs::read_to_string(&p).unwrap();
    assert_eq!(text.lines().count(), 7);
    assert!(text.ends_with('\n'));
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["action"], "label");
    assert_eq!(first["fraud_speaker"], "甲");
    assert!(first["time"].as_f64().unwrap() > 1.6e9);
    let j = Journal::open(&p).unwrap();
    let cur = j.current_labels();
    assert_eq!(cur.keys().collect::<Vec<_>>(), vec!["c"]);
    assert_eq!(Journal::read(&p).unwrap().current_labels(), cur);
}

#[test]
fn torn_tail_is_ignored_and_truncated_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let p = jpath(dir.path());
    {
        let mut j = Journal::open(&p).unwrap();
        j.label("a", true, None, None).unwrap();
        j.label("b", false, None, None).unwrap();
    }
    let good = std::fs::read(&p).unwrap();
    for tail in [
        &b"{\"id\":\"c\",\"action\":\"la"[..],
        b"{\"id\":\"c\",\"action\":\"label\",\"label\":true}", // complete but unacknowledged
        b"\0\0\0\0",
        b"garbage\n",
    ] {
        let mut bytes = good.clone();
        bytes.extend_from_slice(tail);
        std::fs::write(&p, &bytes).unwrap();
        let r = Journal::read(&p).unwrap();
        assert!(r.torn_tail.is_some(), "{tail:?}");
        assert!(r.bad_lines.is_empty());
        assert_eq!(r.entries.len(), 2);
        assert_eq!(r.valid_len, good.len() as u64);
        assert_eq!(std::fs::read(&p).unwrap(), bytes, "read does not repair");
        let mut j = Journal::open(&p).unwrap();
        assert!(j.report().torn_tail.is_some());
        assert!(j.report().problems().unwrap().contains("torn"));
        assert_eq!(std::fs::read(&p).unwrap(), good);
        j.label("d", true, None, None).unwrap();
        drop(j);
        let r = Journal::read(&p).unwrap();
        assert_eq!(r.torn_tail, None);
        assert_eq!(r.current_labels().len(), 3);
        std::fs::write(&p, &good).unwrap();
    }
}

#[test]
fn corrupt_middle_line_is_reported_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let p = jpath(dir.path());
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let mut f = File::create(&p).unwrap();
    writeln!(
        f,
        r#"{{"id":"a","action":"label","label":true,"time":"2026-11-23T14:55:01Z"}}"#
    )
    .unwrap();
    f.write_all(b"\xff\xfe not json\n").unwrap();
    writeln!(f, r#"{{"id":"b","action":"label","label":"yes"}}"#).unwrap();
    writeln!(f).unwrap();
    writeln!(f, r#"{{"id":"b","action":"label","label":false,"time":5}}"#).unwrap();
    drop(f);
    let mut j = Journal::open(&p).unwrap();
    let r = j.report();
    assert_eq!(r.torn_tail, None);
    assert_eq!(
        r.bad_lines.iter().map(|b| b.line).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert!(r.bad_lines[0].reason.contains("UTF-8"));
    assert!(r.bad_lines[1].reason.contains("bool"));
    assert_eq!(j.get("a").unwrap().time, 1_795_445_701.0);
    assert!(!j.get("b").unwrap().label);
    // bad middle lines are kept on disk (no repair) and appending works
    j.label("c", true, None, None).unwrap();
    assert_eq!(Journal::read(&p).unwrap().bad_lines.len(), 2);
}

#[test]
fn compaction_preserves_the_current_view() {
    let dir = tempfile::tempdir().unwrap();
    let p = jpath(dir.path());
    let mut j = Journal::open(&p).unwrap();
    for i in 0..20 {
        j.label(
            &format!("s{}", i % 5),
            i % 2 == 0,
            Some(format!("sp{i}")),
            None,
        )
        .unwrap();
    }
    j.undo("s1").unwrap();
    j.undo("s2").unwrap();
    j.undo("s2").unwrap();
    j.undo("s2").unwrap();
    j.undo("s2").unwrap();
    let before = j.current_labels();
    assert!(!before.contains_key("s2"));
    j.compact().unwrap();
    assert_eq!(j.current_labels(), before);
    assert_eq!(
        std::fs::read_to_string(&p).unwrap().lines().count(),
        before.len()
    );
    assert_eq!(Journal::read(&p).unwrap().current_labels(), before);
    // appending after compaction goes to the new file
    j.label("s9", true, None, None).unwrap();
    assert_eq!(
        Journal::read(&p).unwrap().current_labels().len(),
        before.len() + 1
    );
    let names: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().collect();
    assert_eq!(names.len(), 1, "no temp files left");
}

#[test]
fn two_writers_share_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let p = jpath(dir.path());
    let mut a = Journal::open(&p).unwrap();
    let mut b = Journal::open(&p).unwrap();
    a.label("s1", true, None, None).unwrap();
    b.label("s2", false, None, None).unwrap();
    // b's undo sees a's label; a's undo_last leaves b's label alone
    assert!(b.undo("s1").unwrap());
    assert_eq!(
        a.undo_last().unwrap(),
        None,
        "a's only label was undone by b"
    );
    a.refresh().unwrap();
    assert_eq!(a.current_labels(), b.current_labels());
    assert_eq!(a.current_labels().keys().collect::<Vec<_>>(), vec!["s2"]);
    a.label("s3", true, None, None).unwrap();
    assert_eq!(a.undo_last().unwrap().as_deref(), Some("s3"));
    let text = std::fs::read_to_string(&p).unwrap();
    assert_eq!(text.lines().count(), 5);
    assert!(Journal::read(&p).unwrap().bad_lines.is_empty());
}

#[test]
fn a_writer_follows_a_compaction_by_another() {
    let dir = tempfile::tempdir().unwrap();
    let p = jpath(dir.path());
    let mut old = Journal::open(&p).unwrap();
    let mut c = Journal::open(&p).unwrap();
    for i in 0..30 {
        c.label(&format!("s{}", i % 3), i % 2 == 0, None, None)
            .unwrap();
    }
    c.compact().unwrap();
    assert_eq!(std::fs::read_to_string(&p).unwrap().lines().count(), 3);
    // `old` still holds the replaced file: its next line must reach the new one
    old.label("late", true, None, None).unwrap();
    let on_disk = Journal::read(&p).unwrap().current_labels();
    assert_eq!(on_disk.len(), 4);
    assert!(on_disk["late"].label);
    assert_eq!(old.current_labels(), on_disk);
    c.refresh().unwrap();
    assert_eq!(c.current_labels(), on_disk);
}

#[test]
fn open_compacts_a_journal_of_mostly_superseded_lines() {
    let dir = tempfile::tempdir().unwrap();
    let p = jpath(dir.path());
    {
        let mut j = Journal::open(&p).unwrap();
        for i in 0..(COMPACT_MIN_SUPERSEDED + 20) {
            j.label(&format!("s{}", i % 10), i % 3 == 0, None, None)
                .unwrap();
        }
        assert_eq!(j.compacted_at_open(), None);
    }
    let before = Journal::read(&p).unwrap().current_labels();
    let j = Journal::open(&p).unwrap();
    assert_eq!(
        j.compacted_at_open(),
        Some((COMPACT_MIN_SUPERSEDED + 20, 10))
    );
    assert_eq!(j.current_labels(), before);
    assert_eq!(Journal::read(&p).unwrap().current_labels(), before);
    assert_eq!(std::fs::read_to_string(&p).unwrap().lines().count(), 10);
    // a few superseded lines, or a corrupt line, are left alone
    drop(j);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes.extend_from_slice(b"not json\n");
    for _ in 0..COMPACT_MIN_SUPERSEDED {
        bytes.extend_from_slice(br#"{"id":"s1","action":"label","label":true,"time":1}"#);
        bytes.push(b'\n');
    }
    std::fs::write(&p, &bytes).unwrap();
    let j = Journal::open(&p).unwrap();
    assert_eq!(
        j.compacted_at_open(),
        None,
        "a corrupt line stops compaction"
    );
    assert_eq!(j.report().bad_lines.len(), 1);
}

#[test]
fn a_full_disk_loses_no_label_and_labelling_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let p = jpath(dir.path());
    let mut j = Journal::open(&p).unwrap();
    j.label("a", true, None, None).unwrap();
    let before = std::fs::read(&p).unwrap();
    fsutil::simulate_disk_full_after(Some(10));
    let err = j.label("b", false, None, None).unwrap_err();
    fsutil::simulate_disk_full_after(None);
    let msg = format!("{err:#}");
    assert!(
        msg.contains("ds-0123abcd.jsonl") && msg.contains("No space left"),
        "{msg}"
    );
    assert_eq!(std::fs::read(&p).unwrap(), before, "no partial line");
    assert_eq!(j.get("b"), None, "a failed label is not applied");
    j.label("b", false, None, None).unwrap();
    let on_disk = Journal::read(&p).unwrap();
    assert_eq!(on_disk.current_labels().len(), 2);
    assert!(on_disk.torn_tail.is_none() && on_disk.bad_lines.is_empty());
}

#[test]
fn entry_lines_round_trip() {
    let e = JournalEntry {
        id: "x".into(),
        action: Action::Label,
        label: Some(true),
        fraud_speaker: None,
        reason: Some("r".into()),
        time: 12.5,
    };
    assert_eq!(
        e.to_line(),
        r#"{"id":"x","action":"label","label":true,"fraud_speaker":null,"reason":"r","time":12.5}"#
    );
    assert_eq!(JournalEntry::parse(&e.to_line()).unwrap(), e);
    assert!(JournalEntry::parse(r#"{"id":"x","action":"relabel"}"#).is_err());
    assert!(JournalEntry::parse(r#"{"action":"undo"}"#).is_err());
    assert_eq!(
        Journal::read(Path::new("/nonexistent/j.jsonl")).unwrap(),
        JournalReport::default()
    );
}
