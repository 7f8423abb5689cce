//! Headless data commands: `data stats|split|balance|window|export|show`, `label`,
//! `sessions`, and k-fold evaluation.

use anyhow::{bail, Context, Result};
use serde_json::json;
use std::io::{BufRead, Write};
use std::path::Path;

use super::args::DataCmd;
use super::common::{open_session, sessions_root};
use crate::data::{self, tools, Format, Journal, Sample};

fn load_reporting(file: &Path) -> Result<data::LoadResult> {
    let r = data::load(file)?;
    for b in r.bad_lines.iter().take(20) {
        eprintln!("warning: {b}");
    }
    if r.bad_lines.len() > 20 {
        eprintln!("warning: … and {} more bad lines", r.bad_lines.len() - 20);
    }
    eprintln!("{}", r.summary);
    Ok(r)
}

/// The dataset's samples with the session's hand labels applied over their own labels.
pub fn with_hand_labels(file: &Path, samples: &mut [Sample], session: &str) -> Result<usize> {
    let sess = open_session(session)?;
    let path = sess.labels_path(&data::dataset_id(file));
    if !path.exists() {
        return Ok(0);
    }
    let report = Journal::read(&path)?;
    if let Some(p) = report.problems() {
        eprintln!("warning: {}: {p}", path.display());
    }
    let labels = report.current_labels();
    let mut n = 0;
    for s in samples.iter_mut() {
        if let Some(l) = labels.get(&s.id) {
            s.label = Some(l.label);
            s.fraud_speaker = l.fraud_speaker.clone().or(s.fraud_speaker.take());
            if l.reason.is_some() {
                s.reason = l.reason.clone();
            }
            n += 1;
        }
    }
    Ok(n)
}

pub fn run(cmd: DataCmd, session: &str) -> Result<()> {
    match cmd {
        DataCmd::Stats { file, model, json } => {
            let r = load_reporting(&file)?;
            let tok = match &model {
                Some(m) => Some(crate::model::load(m, Default::default())?.tokenizer),
                None => None,
            };
            let count = |t: &str| {
                tok.as_ref()
                    .and_then(|k| k.encode(t).ok())
                    .map(|v| v.len())
                    .unwrap_or(0)
            };
            let f: Option<&dyn Fn(&str) -> usize> = if tok.is_some() { Some(&count) } else { None };
            let st = tools::stats(&r.samples, 10, f);
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                println!(
                    "samples {}: fraud {}, not fraud {}, unlabelled {}",
                    st.n, st.fraud, st.not_fraud, st.unlabelled
                );
                if st.label_leaks > 0 {
                    println!(
                        "label leaks: {} samples ({:.1}%) name a speaker after the label ({}); train and evaluate with --anonymize-speakers",
                        st.label_leaks,
                        100.0 * st.label_leaks as f64 / st.n.max(1) as f64,
                        st.label_leak_names.join(", ")
                    );
                }
                println!(
                    "characters: min {} median {} mean {:.0} max {}",
                    st.chars.min, st.chars.median, st.chars.mean, st.chars.max
                );
                if let Some(t) = &st.tokens {
                    println!(
                        "tokens: min {} median {} mean {:.0} max {}",
                        t.min, t.median, t.mean, t.max
                    );
                }
                let peak = st
                    .char_hist
                    .iter()
                    .map(|b| b.count)
                    .max()
                    .unwrap_or(1)
                    .max(1);
                for b in &st.char_hist {
                    println!(
                        "{:>6}-{:<6} {:>6} {}",
                        b.lo,
                        b.hi,
                        b.count,
                        "#".repeat(b.count * 40 / peak)
                    );
                }
                println!("speakers: {} distinct; top:", st.distinct_speakers);
                for s in &st.top_speakers {
                    println!(
                        "  {:<16} {:>5} samples {:>6} turns {:>5} as fraudster",
                        s.name, s.samples, s.turns, s.as_fraud
                    );
                }
            }
        }
        DataCmd::Split {
            file,
            out,
            train,
            val,
            test,
            seed,
        } => {
            let r = load_reporting(&file)?;
            let sp = tools::split(&r.samples, train, val, test, seed)?;
            std::fs::create_dir_all(&out)
                .with_context(|| format!("{}: cannot create", out.display()))?;
            let fmt = if r.format == Format::Csv {
                Format::Fraud
            } else {
                r.format
            };
            for (name, idx) in [("train", &sp.train), ("val", &sp.val), ("test", &sp.test)] {
                let p = out.join(format!("{name}.jsonl"));
                let rep =
                    tools::export(&tools::pick(&r.samples, idx), fmt, &p, &Default::default())?;
                println!("{name}: {} samples -> {}", rep.written, p.display());
            }
        }
        DataCmd::Balance {
            file,
            out,
            ratio,
            seed,
        } => {
            let r = load_reporting(&file)?;
            let idx = tools::undersample(&r.samples, ratio, seed)?;
            let fmt = if r.format == Format::Csv {
                Format::Fraud
            } else {
                r.format
            };
            let rep = tools::export(
                &tools::pick(&r.samples, &idx),
                fmt,
                &out,
                &Default::default(),
            )?;
            println!("{}", rep.summary);
        }
        DataCmd::Window {
            file,
            out,
            max_turns,
            max_chars,
            stride,
        } => {
            let r = load_reporting(&file)?;
            if r.dialogues.is_empty() {
                bail!("{}: no turn-level dialogues (window needs a case,speaker,content,is_fraud CSV)", file.display());
            }
            let samples = tools::window_dialogues(&r.dialogues, max_turns, max_chars, stride);
            let rep = tools::export(&samples, Format::Fraud, &out, &Default::default())?;
            println!("{} dialogues -> {}", r.dialogues.len(), rep.summary);
        }
        DataCmd::Export {
            file,
            out,
            format,
            with_labels,
        } => {
            let fmt: Format = format
                .parse()
                .map_err(|e| anyhow::anyhow!("--format {format}: {e}"))?;
            let mut r = load_reporting(&file)?;
            if with_labels {
                let n = with_hand_labels(&file, &mut r.samples, session)?;
                eprintln!("applied {n} hand labels from session `{session}`");
            }
            let rep = tools::export(&r.samples, fmt, &out, &Default::default())?;
            println!("{}", rep.summary);
        }
        DataCmd::Show { file, limit, json } => {
            let r = load_reporting(&file)?;
            let mut out = std::io::stdout().lock();
            for s in r.samples.iter().take(limit.unwrap_or(usize::MAX)) {
                if json {
                    writeln!(out, "{}", serde_json::to_string(s)?)?;
                } else {
                    let label = match s.label {
                        Some(true) => "fraud",
                        Some(false) => "normal",
                        None => "-",
                    };
                    let first = s
                        .first_turn()
                        .map(|(a, b)| format!("{a}: {b}"))
                        .unwrap_or_default();
                    let first: String = first.chars().take(60).collect();
                    writeln!(out, "{} {:<6} {:>5} {}", s.id, label, s.char_len(), first)?;
                }
            }
        }
    }
    Ok(())
}

/// `fraudlab label`: durable hand labels from stdin lines `ID fraud|normal|undo [SPEAKER]`.
pub fn label(dataset: &Path, list: bool, session: &str) -> Result<()> {
    let sess = open_session(session)?;
    let path = sess.labels_path(&data::dataset_id(dataset));
    if list {
        if !path.exists() {
            return Ok(());
        }
        let report = Journal::read(&path)?;
        if let Some(p) = report.problems() {
            eprintln!("warning: {}: {p}", path.display());
        }
        let mut out = std::io::stdout().lock();
        for (id, l) in report.current_labels() {
            writeln!(
                out,
                "{}",
                json!({"id": id, "label": l.label, "fraud_speaker": l.fraud_speaker, "reason": l.reason, "time": l.time})
            )?;
        }
        return Ok(());
    }
    let r = data::load(dataset)?;
    let ids: std::collections::HashSet<&str> = r.samples.iter().map(|s| s.id.as_str()).collect();
    let mut journal = Journal::open(&path)?;
    if let Some(p) = journal.report().problems() {
        eprintln!("warning: {}: {p}", path.display());
    }
    if let Some((before, after)) = journal.compacted_at_open() {
        eprintln!(
            "compacted {}: {before} lines to {after} (one per labelled sample)",
            path.display()
        );
    }
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    let mut errors = 0;
    for line in stdin.lock().lines() {
        let line = line.context("reading stdin")?;
        let mut parts = line.split_whitespace();
        let (Some(id), Some(action)) = (parts.next(), parts.next()) else {
            if !line.trim().is_empty() {
                writeln!(
                    out,
                    "error {}: expected `ID fraud|normal|undo [SPEAKER]`",
                    line.trim()
                )?;
                errors += 1;
            }
            continue;
        };
        let speaker: Vec<&str> = parts.collect();
        let speaker = (!speaker.is_empty()).then(|| speaker.join(" "));
        if !ids.contains(id) {
            writeln!(
                out,
                "error {id}: no sample with this id in {}",
                dataset.display()
            )?;
            out.flush()?;
            errors += 1;
            continue;
        }
        let res = match action {
            "fraud" => journal.label(id, true, speaker.clone(), None).map(|_| true),
            "normal" | "not-fraud" => journal.label(id, false, None, None).map(|_| true),
            "undo" => journal.undo(id),
            other => {
                writeln!(
                    out,
                    "error {id}: unknown action `{other}` (fraud, normal, undo)"
                )?;
                errors += 1;
                continue;
            }
        };
        match res {
            Ok(true) => writeln!(out, "ok {id}")?,
            Ok(false) => writeln!(out, "ok {id} (nothing to undo)")?,
            Err(e) => {
                writeln!(out, "error {id}: {e:#}")?;
                out.flush()?;
                return Err(e);
            }
        }
        out.flush()?;
    }
    if errors > 0 {
        bail!("{errors} input lines were not applied");
    }
    Ok(())
}

pub fn sessions(json: bool) -> Result<()> {
    let list = data::list_sessions(&sessions_root())?;
    if json {
        let v: Vec<_> = list
            .iter()
            .map(|s| {
                json!({"name": s.name, "probes": s.probes, "runs": s.runs, "evals": s.evals,
                       "labels": s.labels.iter().map(|l| json!({"dataset_id": l.dataset_id, "labelled": l.labelled, "fraud": l.fraud})).collect::<Vec<_>>()})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if list.is_empty() {
        println!("no sessions under {}", sessions_root().display());
    }
    for s in list {
        let labelled: usize = s.labels.iter().map(|l| l.labelled).sum();
        println!(
            "{:<20} {:>4} probes {:>4} runs {:>4} evals {:>6} labels in {} datasets",
            s.name,
            s.probes,
            s.runs,
            s.evals,
            labelled,
            s.labels.len()
        );
    }
    Ok(())
}
