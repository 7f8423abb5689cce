//! Live-monitor benchmark: per-turn latency (median, p99) and turns/s when following 1 and 8
//! interleaved conversations, next to the same workload done by re-scoring each dialogue
//! prefix from scratch (score mode on the prefix, what a tool without an incremental cache
//! does), and the flatness of per-turn latency over a 20-turn dialogue. Prints JSON lines.
//!
//!   cargo run --release --example bench_monitor -- MODEL DATA.jsonl [TURNS=20] [CONVS=8]
//!
//! DATA is a fraud-dialogue JSONL (e.g. ../shared/data/fraud-dialogues/dialogues-dev.jsonl):
//! the dialogues with the most turns are replayed, cut to TURNS turns.

use anyhow::{bail, Result};
use fraudlab::engine::eval::score_samples;
use fraudlab::engine::monitor::{turns_sample, Monitor, MonitorConfig};
use fraudlab::model::{self, LoadOptions};
use serde_json::json;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    let i = ((s.len() - 1) as f64 * p).round() as usize;
    s[i]
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn cpu_line() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let name = info
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let flags = info
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| {
            ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]
                .iter()
                .filter(|f| l.split_whitespace().any(|w| w == **f))
                .copied()
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    format!("{name} [{flags}], {} threads", rayon::current_num_threads())
}

fn main() -> Result<()> {
    fraudlab::model::kernels::init_threads();
    fraudlab::tune_allocator();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        bail!("usage: bench_monitor MODEL DATA.jsonl [TURNS] [CONVS]");
    }
    let turns_n: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(20);
    let convs_n: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(8);
    println!("{}", json!({"cpu": cpu_line()}));
    let lm = model::load(&args[0], LoadOptions::default())?;
    let data = fraudlab::data::load(args[1].as_ref())?;
    let mut dialogues: Vec<Vec<(String, String)>> =
        data.samples.iter().map(|s| s.turns()).collect();
    dialogues.sort_by_key(|t| std::cmp::Reverse(t.len()));
    dialogues.truncate(convs_n.max(1));
    for d in dialogues.iter_mut() {
        d.truncate(turns_n);
    }
    if dialogues[0].len() < turns_n {
        eprintln!(
            "note: the longest dialogue has {} turns (asked {turns_n})",
            dialogues[0].len()
        );
    }
    let cfg = MonitorConfig::default();
    let cancel = AtomicBool::new(false);

    // 1. one conversation: per-turn latency, incremental vs re-scoring each prefix
    let d0 = &dialogues[0];
    let mut mon = Monitor::new(cfg.clone())?;
    let mut inc = Vec::new();
    let mut computed = Vec::new();
    let mut p_inc = Vec::new();
    let t0 = Instant::now();
    for (s, t) in d0 {
        let r = mon.turn(&lm, "c0", s, t)?;
        inc.push(r.latency_ms);
        computed.push(r.computed_tokens);
        p_inc.push(r.p_fraud);
    }
    let inc_total = t0.elapsed().as_secs_f64();
    let mut full = Vec::new();
    let mut max_diff = 0f64;
    let t1 = Instant::now();
    for n in 1..=d0.len() {
        let s = turns_sample(&cfg, &d0[..n]);
        let t = Instant::now();
        let p = score_samples(&lm, &[s], 1, &cancel, &mut |_, _| {})?[0];
        full.push(t.elapsed().as_secs_f64() * 1e3);
        max_diff = max_diff.max((p - p_inc[n - 1]).abs());
    }
    let full_total = t1.elapsed().as_secs_f64();
    let n = inc.len();
    let early = mean(&inc[1..n.min(6)]);
    let late = mean(&inc[n.saturating_sub(5)..]);
    println!(
        "{}",
        json!({
            "workload": "1 conversation",
            "turns": n,
            "incremental_ms_per_turn": inc,
            "incremental_tokens_per_turn": computed,
            "rescore_ms_per_turn": full,
            "incremental_median_ms": pct(&inc, 0.5),
            "incremental_p99_ms": pct(&inc, 0.99),
            "rescore_median_ms": pct(&full, 0.5),
            "rescore_p99_ms": pct(&full, 0.99),
            "incremental_turns_per_s": n as f64 / inc_total,
            "rescore_turns_per_s": n as f64 / full_total,
            "speedup": full_total / inc_total,
            "late_over_early": late / early,
            "max_abs_diff_p_fraud": max_diff,
        })
    );

    // 2. interleaved conversations: round robin over CONVS dialogues
    let k = dialogues.len();
    let mut mon = Monitor::new(MonitorConfig {
        max_conversations: k,
        ..cfg.clone()
    })?;
    let mut lat = Vec::new();
    let t2 = Instant::now();
    let longest = dialogues.iter().map(|d| d.len()).max().unwrap_or(0);
    for turn in 0..longest {
        for (c, d) in dialogues.iter().enumerate() {
            if let Some((s, t)) = d.get(turn) {
                lat.push(mon.turn(&lm, &format!("c{c}"), s, t)?.latency_ms);
            }
        }
    }
    let inter_total = t2.elapsed().as_secs_f64();
    let mut full_lat = Vec::new();
    let t3 = Instant::now();
    for turn in 0..longest {
        for d in &dialogues {
            if turn < d.len() {
                let s = turns_sample(&cfg, &d[..=turn]);
                let t = Instant::now();
                score_samples(&lm, &[s], 1, &cancel, &mut |_, _| {})?;
                full_lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    let full_inter = t3.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({
            "workload": format!("{k} interleaved conversations"),
            "turns": lat.len(),
            "incremental_median_ms": pct(&lat, 0.5),
            "incremental_p99_ms": pct(&lat, 0.99),
            "incremental_turns_per_s": lat.len() as f64 / inter_total,
            "rescore_median_ms": pct(&full_lat, 0.5),
            "rescore_p99_ms": pct(&full_lat, 0.99),
            "rescore_turns_per_s": full_lat.len() as f64 / full_inter,
            "speedup": full_inter / inter_total,
            "cache_mib": mon.conversations().iter().filter_map(|c| mon.state(c)).map(|s| s.cache_bytes).sum::<usize>() as f64 / (1 << 20) as f64,
        })
    );
    Ok(())
}
