//! `fraudlab suite`: the capability suite over several models, a pass/fail matrix saved in
//! the session, and its export as Markdown or CSV.

use anyhow::{bail, Result};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use super::args::*;
use super::common::*;
use crate::data::suite::{self, SuiteModel, SuiteResults};

/// The column label of a model (and adapter): its file or hub name, made unique.
fn labels(pairs: &[(String, Option<PathBuf>)]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (m, a) in pairs {
        let p = std::path::Path::new(m);
        let mut name = if p.exists() {
            crate::model::loader::resolve(m)
                .map(|l| crate::model::loader::display_name(&l))
                .unwrap_or_else(|_| m.clone())
        } else {
            m.clone()
        };
        if let Some(a) = a {
            let an = a
                .file_name()
                .filter(|n| *n != "adapter")
                .or_else(|| a.parent().and_then(|p| p.file_name()))
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| a.display().to_string());
            name = format!("{name} + {an}");
        }
        let base = name.clone();
        let mut k = 2;
        while out.contains(&name) {
            name = format!("{base} #{k}");
            k += 1;
        }
        out.push(name);
    }
    out
}

fn print_as(r: &SuiteResults, format: Option<&str>) -> Result<()> {
    match format {
        Some("md") => print!("{}", r.to_markdown()),
        Some("csv") => print!("{}", r.to_csv()),
        Some(f) => bail!("--format {f}: use md or csv"),
        None => print!("{}", table(r)),
    }
    Ok(())
}

/// The matrix for a terminal: a row per case, a column per model, ✓ / ✗, then the scores
/// and every failure.
fn table(r: &SuiteResults) -> String {
    use unicode_width::UnicodeWidthStr;
    let pad = |s: &str, w: usize| format!("{s}{}", " ".repeat(w.saturating_sub(s.width())));
    let w0 = r
        .cases
        .iter()
        .map(|c| c.name.width())
        .max()
        .unwrap_or(4)
        .max(4);
    let ws: Vec<usize> = r.models.iter().map(|m| m.label.width().max(6)).collect();
    let mut s = pad("case", w0);
    for (m, w) in r.models.iter().zip(&ws) {
        s.push_str("  ");
        s.push_str(&pad(&m.label, *w));
    }
    s.push('\n');
    for c in &r.cases {
        s.push_str(&pad(&c.name, w0));
        for (m, w) in r.models.iter().zip(&ws) {
            let v = match r.get(&c.name, &m.label) {
                Some(x) if x.pass => format!("✓ {:.0} tok/s", x.tokens_per_s),
                Some(_) => "✗".to_string(),
                None => "–".to_string(),
            };
            s.push_str("  ");
            s.push_str(&pad(&v, *w));
        }
        s.push('\n');
    }
    s.push_str(&pad("passed", w0));
    for (m, w) in r.models.iter().zip(&ws) {
        let (p, n) = r.score(&m.label);
        s.push_str("  ");
        s.push_str(&pad(&format!("{p}/{n}"), *w));
    }
    s.push('\n');
    for x in r.results.iter().filter(|x| !x.pass) {
        s.push_str(&format!("✗ {} × {}: {}\n", x.name, x.model, x.failures()));
    }
    s
}

pub(super) fn cmd_suite(a: SuiteArgs, session: &str) -> Result<()> {
    if let Some(f) = &a.format {
        if f != "md" && f != "csv" {
            bail!("--format {f}: use md or csv");
        }
    }
    if let Some(from) = &a.from {
        let r = SuiteResults::load(from)?;
        return print_as(&r, a.format.as_deref());
    }
    let opts = a.load.options()?;
    let sess = open_session(session)?;
    let (cases, origin) = match &a.suite {
        Some(p) => (suite::load_suite(p)?, p.display().to_string()),
        None => suite::session_suite(&sess)?,
    };
    if a.adapter.len() > a.model.len() {
        bail!(
            "--adapter: more adapters ({}) than models ({})",
            a.adapter.len(),
            a.model.len()
        );
    }
    let pairs: Vec<(String, Option<PathBuf>)> = a
        .model
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let ad = a
                .adapter
                .get(i)
                .filter(|s| s.as_str() != "-")
                .map(PathBuf::from);
            (m.clone(), ad)
        })
        .collect();
    // every model is found before any runs: a typo is an error now, not after an hour
    for (m, ad) in &pairs {
        crate::model::loader::resolve(m)?;
        if let Some(ad) = ad {
            if !ad.join("adapter_config.json").is_file() {
                bail!(
                    "{}: not an adapter folder (no adapter_config.json)",
                    ad.display()
                );
            }
        }
    }
    let names = labels(&pairs);
    let models: Vec<SuiteModel> = pairs
        .iter()
        .zip(&names)
        .map(|((m, ad), l)| SuiteModel {
            label: l.clone(),
            spec: m.clone(),
            adapter: ad.clone(),
        })
        .collect();
    let mut results = SuiteResults::new(&origin, cases.clone(), models);
    let cancel = AtomicBool::new(false);
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    for ((m, ad), label) in pairs.iter().zip(&names) {
        let lm = crate::model::load(m, opts).and_then(|mut lm| {
            if let Some(ad) = ad {
                crate::model::adapter::load_adapter(&mut lm.model, ad)?;
            }
            Ok(lm)
        });
        for (i, c) in cases.iter().enumerate() {
            if !a.json && tty {
                eprint!("\r{label}: case {}/{} {}\x1b[K", i + 1, cases.len(), c.name);
            }
            let r = match &lm {
                Ok(lm) => crate::engine::suite::run_case(lm, label, c, a.max_tokens, &cancel),
                Err(e) => suite::CaseResult::failed(c, label, &format!("cannot load: {e:#}")),
            };
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            }
            results.results.push(r);
        }
        if !a.json && tty {
            eprint!("\r\x1b[K");
        }
    }
    let path = results.save(&sess)?;
    if !a.json {
        print_as(&results, a.format.as_deref())?;
    }
    eprintln!("saved in {}", path.display());
    Ok(())
}
