//! Statistics, splits, k-fold, windows and export on small generated datasets.
use super::*;
use crate::data::dataset::{load, Message};

fn samples(n_pos: usize, n_neg: usize, n_unl: usize) -> Vec<Sample> {
    let mut v = Vec::new();
    for i in 0..n_pos {
        v.push(Sample::fraud(
            "i",
            format!("甲: p{i}"),
            Some(true),
            Some("甲".into()),
            None,
        ));
    }
    for i in 0..n_neg {
        v.push(Sample::fraud(
            "i",
            format!("乙: n{i}\n丙: ok"),
            Some(false),
            None,
            None,
        ));
    }
    for i in 0..n_unl {
        v.push(Sample::text(format!("u{i}")));
    }
    v
}

#[test]
fn rng_is_deterministic_and_in_range() {
    let mut a = Rng::new(7);
    let mut b = Rng::new(7);
    for _ in 0..100 {
        assert_eq!(a.next_u64(), b.next_u64());
        assert!(a.below(10) < 10);
        b.below(10);
        let f = a.next_f64();
        b.next_f64();
        assert!((0.0..1.0).contains(&f));
    }
    let mut v: Vec<u32> = (0..50).collect();
    Rng::new(1).shuffle(&mut v);
    let mut s = v.clone();
    s.sort();
    assert_eq!(s, (0..50).collect::<Vec<_>>());
    assert_ne!(v, s);
}

#[test]
fn stats_counts_lengths_and_speakers() {
    let mut v = samples(2, 3, 1);
    v.push(Sample::fraud("i", "", None, None, None));
    let count_chars = |s: &str| s.chars().count();
    let st = stats(&v, 2, Some(&count_chars));
    assert_eq!((st.n, st.fraud, st.not_fraud, st.unlabelled), (7, 2, 3, 2));
    // char lens: "甲: p0"=5 ×2, "乙: n0\n丙: ok"=11 ×3, "u0"=2, ""=0
    assert_eq!(st.chars.min, 0);
    assert_eq!(st.chars.max, 11);
    assert_eq!(st.chars.median, 5.0);
    assert!((st.chars.mean - (10.0 + 33.0 + 2.0) / 7.0).abs() < 1e-12);
    assert_eq!(st.char_hist.iter().map(|b| b.count).sum::<usize>(), 7);
    assert_eq!(st.char_hist[0].lo, 0);
    assert_eq!(st.tokens.as_ref().unwrap().max, 12); // "i" + 11
    assert_eq!(st.distinct_speakers, 3);
    assert_eq!(st.top_speakers.len(), 2);
    assert_eq!(st.top_speakers[0].name, "丙");
    assert_eq!(st.top_speakers[0].samples, 3);
    let jia = stats(&v, 10, None)
        .top_speakers
        .into_iter()
        .find(|s| s.name == "甲")
        .unwrap();
    assert_eq!((jia.samples, jia.turns, jia.as_fraud), (2, 2, 2));
    assert!(stats(&[], 5, None).char_hist.is_empty());
}

#[test]
fn histogram_bins() {
    let h = histogram(&[0, 5, 10, 99, 100], 10);
    assert_eq!(
        h[0],
        HistBin {
            lo: 0,
            hi: 20,
            count: 3
        }
    );
    assert_eq!(h.len(), 6);
    assert_eq!(h.last().unwrap().count, 1);
    assert_eq!(
        histogram(&[0, 0], 10),
        vec![HistBin {
            lo: 0,
            hi: 1,
            count: 2
        }]
    );
    assert_eq!(length_stats(&[4, 1, 3, 2]).median, 2.5);
}

#[test]
fn split_is_stratified_and_deterministic() {
    let v = samples(20, 80, 10);
    let s = split(&v, 0.8, 0.1, 0.1, 42).unwrap();
    assert_eq!((s.train.len(), s.val.len(), s.test.len()), (88, 11, 11));
    let pos = |idx: &[usize]| idx.iter().filter(|&&i| v[i].label == Some(true)).count();
    assert_eq!((pos(&s.train), pos(&s.val), pos(&s.test)), (16, 2, 2));
    let mut all: Vec<usize> = s
        .train
        .iter()
        .chain(&s.val)
        .chain(&s.test)
        .copied()
        .collect();
    all.sort();
    assert_eq!(all, (0..110).collect::<Vec<_>>());
    assert_eq!(split(&v, 0.8, 0.1, 0.1, 42).unwrap(), s);
    assert_ne!(split(&v, 0.8, 0.1, 0.1, 43).unwrap(), s);
    // re-ordering the samples keeps the same split (by id)
    let mut rev = v.clone();
    rev.reverse();
    let s2 = split(&rev, 0.8, 0.1, 0.1, 42).unwrap();
    let ids = |idx: &[usize], vv: &[Sample]| {
        let mut x: Vec<String> = idx.iter().map(|&i| vv[i].id.clone()).collect();
        x.sort();
        x
    };
    assert_eq!(ids(&s2.test, &rev), ids(&s.test, &v));
    assert!(split(&v, -1.0, 0.0, 0.0, 1).is_err());
    assert!(split(&v, 0.0, 0.0, 0.0, 1).is_err());
}

#[test]
fn undersampling() {
    let v = samples(10, 40, 3);
    let keep = undersample(&v, 1.0, 3).unwrap();
    let count = |l| keep.iter().filter(|&&i| v[i].label == l).count();
    assert_eq!(
        (count(Some(true)), count(Some(false)), count(None)),
        (10, 10, 3)
    );
    let keep2 = undersample(&v, 2.0, 3).unwrap();
    assert_eq!(keep2.len(), 10 + 20 + 3);
    assert_eq!(undersample(&v, 1.0, 3).unwrap(), keep);
    assert_eq!(undersample(&samples(0, 5, 0), 1.0, 3).unwrap().len(), 5);
}

#[test]
fn kfold_covers_every_sample_once() {
    let v = samples(7, 23, 2);
    let folds = kfold(&v, 5, 9).unwrap();
    assert_eq!(folds.len(), 5);
    let mut seen = vec![0; v.len()];
    for f in &folds {
        assert_eq!(f.train.len() + f.val.len(), v.len());
        for &i in &f.val {
            seen[i] += 1;
            assert!(!f.train.contains(&i));
        }
        let p = f.val.iter().filter(|&&i| v[i].label == Some(true)).count();
        assert!((1..=2).contains(&p), "stratified: {p}");
        assert!((6..=7).contains(&f.val.len()));
    }
    assert!(seen.iter().all(|&c| c == 1));
    assert!(kfold(&v, 1, 0).is_err());
    assert!(kfold(&v[..3], 4, 0).is_err());
}

fn turn(s: &str, c: &str, f: bool) -> Turn {
    Turn {
        speaker: s.into(),
        content: c.into(),
        is_fraud: f,
    }
}

#[test]
fn window_bounds() {
    // each turn "A: xxxx" is 7 chars
    let t: Vec<Turn> = (0..6)
        .map(|i| turn(if i % 2 == 0 { "A" } else { "B" }, "xxxx", i == 3))
        .collect();
    assert_eq!(window_ranges(&t, 3, 0, 2), vec![0..3, 2..5, 4..6]);
    assert_eq!(window_ranges(&t, 3, 0, 3), vec![0..3, 3..6]);
    assert_eq!(window_ranges(&t, 2, 0, 5), vec![0..2, 2..4, 4..6]);
    // two turns = 7 + 1 + 7 = 15 chars
    assert_eq!(window_ranges(&t, 0, 15, 1).len(), 5);
    assert_eq!(
        window_ranges(&t, 0, 14, 1),
        (0..6).map(|i| i..i + 1).collect::<Vec<_>>()
    );
    assert_eq!(window_ranges(&t, 0, 0, 1), vec![0..6]);
    assert_eq!(window_ranges(&t, 100, 3, 0).len(), 6); // longer turn kept whole
    assert!(window_ranges(&[], 3, 10, 1).is_empty());
    let w = window(&t, 3, 0, 2);
    assert_eq!(w.len(), 3);
    assert_eq!(
        w.iter().map(|s| s.label).collect::<Vec<_>>(),
        vec![Some(false), Some(true), Some(false)]
    );
    assert_eq!(w[1].fraud_speaker.as_deref(), Some("B"));
    assert_eq!(w[0].fraud_speaker, None);
    for (s, r) in w.iter().zip(window_ranges(&t, 3, 0, 2)) {
        assert_eq!(s.turns().len(), r.len());
    }
    let d = Dialogue {
        case: "c".into(),
        turns: t,
    };
    assert_eq!(window_dialogues(&[d.clone(), d], 3, 0, 2).len(), 6);
}

#[test]
fn export_every_format_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = samples(2, 2, 1);
    v[0].reason = Some("理由".into());
    v.push(Sample::chat(vec![
        Message::new("user", "q"),
        Message::new("assistant", "{\"is_fraud\": false}"),
    ]));
    let opts = ExportOptions::default();
    for (fmt, written) in [
        (Format::Fraud, 5),
        (Format::Alpaca, 5),
        (Format::Chat, 5),
        (Format::ShareGpt, 5),
        (Format::Text, 6),
    ] {
        let p = dir.path().join(format!("out.{fmt}.jsonl"));
        let rep = export(&v, fmt, &p, &opts).unwrap();
        assert_eq!(rep.written, written, "{fmt}");
        assert_eq!(rep.written + rep.skipped, v.len());
        let r = load(&p).unwrap();
        assert_eq!(r.format, fmt);
        assert!(r.bad_lines.is_empty());
        assert_eq!(r.samples.len(), written);
        if fmt == Format::Fraud || fmt == Format::Alpaca {
            assert_eq!(r.samples[0].id, v[0].id, "{fmt}");
            assert_eq!(r.samples[0].label, Some(true));
        }
        if fmt == Format::Fraud {
            assert_eq!(r.samples[0].reason.as_deref(), Some("理由"));
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(text.contains("甲"), "non-ASCII written as is");
        }
        if fmt == Format::Chat || fmt == Format::ShareGpt {
            let m = &r.samples[0].to_chat_messages("", true, false);
            assert_eq!(m[0].content, DEFAULT_SYSTEM);
            assert_eq!(m[2].content, "{\"is_fraud\": true}");
        }
    }
    assert!(export(&v, Format::Csv, &dir.path().join("x.csv"), &opts).is_err());
    assert_eq!(
        label_answer(true, None, None, false),
        "{\"is_fraud\": true}"
    );
}
