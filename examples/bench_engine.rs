//! Engine benchmarks on a real model; prints JSON figures. `bench/compare.sh` runs them next
//! to the Python reference and prints ratios.
//!
//!   cargo run --release --example bench_engine -- speed MODEL PROMPT_FILE NEW_TOKENS [--quantized]
//!   cargo run --release --example bench_engine -- train MODEL DATA.jsonl BATCH STEPS
//!   cargo run --release --example bench_engine -- score MODEL DATA.jsonl N [score|generate] [BATCH]
//!
//! `--dtype bf16` (anywhere) loads the dense weights in bf16 (the base weights, for train).
//!   cargo run --release --example bench_engine -- cpu      (the CPU, its features, the kernels)
//!   cargo run --release --example bench_engine -- profile MODEL PROMPT_FILE prefill|decode SECONDS
//!       (after loading, prints "start" on stderr and repeats the workload for SECONDS, for a
//!       profiler attached then: `perf record -p PID`)
//!
//! Every run prints the CPU line on stderr first (unless BENCH_NO_CPU_LINE is set: compare.sh
//! prints it once); the JSON figures name the kernel level.

use anyhow::{bail, Result};
use candle_core::Tensor;
use fraudlab::engine::eval::{evaluate_loaded, EvalConfig, EvalMode};
use fraudlab::engine::generate::{generate, SamplingParams};
use fraudlab::engine::train::{rss_mib, train_loaded, TrainConfig, TrainControl, TrainEvent};
use fraudlab::model::{self, LoadOptions};
use serde_json::json;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

/// Counts live heap bytes, so a run can tell memory it holds from memory the allocator keeps.
struct Counting;
static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static PEAK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        use std::sync::atomic::Ordering::Relaxed;
        let n = LIVE.fetch_add(l.size(), Relaxed) + l.size();
        PEAK.fetch_max(n, Relaxed);
        std::alloc::System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: std::alloc::Layout) -> *mut u8 {
        use std::sync::atomic::Ordering::Relaxed;
        let n = LIVE.fetch_add(l.size(), Relaxed) + l.size();
        PEAK.fetch_max(n, Relaxed);
        std::alloc::System.alloc_zeroed(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        LIVE.fetch_sub(l.size(), std::sync::atomic::Ordering::Relaxed);
        std::alloc::System.dealloc(p, l)
    }
}
#[global_allocator]
static ALLOC: Counting = Counting;
fn heap_mib() -> (f64, f64) {
    use std::sync::atomic::Ordering::Relaxed;
    let m = |x: usize| x as f64 / 1048576.0;
    (m(LIVE.load(Relaxed)), m(PEAK.load(Relaxed)))
}

fn kernels() -> &'static str {
    fraudlab::model::kernels::level().name()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<()> {
    fraudlab::model::kernels::init_threads();
    fraudlab::tune_allocator();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let dtype = match args.iter().position(|a| a == "--dtype") {
        Some(i) => {
            let d = args.get(i + 1).cloned().unwrap_or_default();
            args.drain(i..(i + 2).min(args.len()));
            d
        }
        None => "f32".to_string(),
    };
    let dt = model::loader::parse_dtype(&dtype)?;
    if std::env::var_os("BENCH_NO_CPU_LINE").is_none() {
        eprintln!("{}", fraudlab::model::kernels::cpu_line());
    }
    match args.first().map(String::as_str) {
        Some("cpu") => {
            println!("{}", fraudlab::model::kernels::cpu_line());
            Ok(())
        }
        Some("speed") => speed(
            &args[1],
            &args[2],
            args[3].parse()?,
            args.iter().any(|a| a == "--quantized"),
            dt,
        ),
        Some("profile") => profile(&args[1], &args[2], &args[3], args[4].parse()?, dt),
        Some("train") => train(
            &args[1],
            &args[2],
            args[3].parse()?,
            args[4].parse()?,
            &dtype,
        ),
        Some("score") => score(
            dt,
            &args[1],
            &args[2],
            args[3].parse()?,
            args.get(4).map(String::as_str).unwrap_or("score"),
            args.get(5).map(|b| b.parse()).transpose()?.unwrap_or(8),
        ),
        _ => bail!("usage: bench_engine speed|train|score|cpu …"),
    }
}

fn speed(
    model_spec: &str,
    prompt_file: &str,
    k: usize,
    quantized: bool,
    dtype: candle_core::DType,
) -> Result<()> {
    let lm = model::load(model_spec, LoadOptions { quantized, dtype })?;
    // the bytes of weights one decoded token reads: every linear layer and the output layer
    let mut m = lm.model.clone();
    let mut weight_bytes = 0usize;
    for (_, l) in m.linears_mut() {
        weight_bytes += linear_bytes(l);
    }
    weight_bytes += linear_bytes(&lm.model.lm_head);
    let text = std::fs::read_to_string(prompt_file)?;
    let ids = lm.tokenizer.encode(&text)?;
    let input = Tensor::new(ids.as_slice(), &lm.model.device)?.unsqueeze(0)?;
    let mut pre = Vec::new();
    for _ in 0..3 {
        let mut cache = lm.model.new_cache(1);
        let t = Instant::now();
        lm.model.forward_last(&input, None, Some(&mut cache))?;
        pre.push(t.elapsed().as_secs_f64());
    }
    let cancel = AtomicBool::new(false);
    let params = SamplingParams {
        max_tokens: k,
        ..Default::default()
    };
    // decode: k greedy tokens after the prompt, eos ignored by forcing max tokens via many runs
    let mut dec = Vec::new();
    for _ in 0..2 {
        let g = generate(&lm, &ids, &params, &cancel, &mut |_| {})?;
        if g.generated_tokens > 1 {
            dec.push(g.decode_tok_s);
        }
    }
    let decode = if dec.is_empty() { 0.0 } else { median(dec) };
    println!(
        "{}",
        json!({"prompt_tokens": ids.len(), "load_s": lm.load_s, "prefill_tok_s": ids.len() as f64 / median(pre),
               "decode_tok_s": decode, "quantized": quantized, "dtype": format!("{dtype:?}"),
               "weight_mib_per_token": weight_bytes as f64 / 1048576.0,
               "decode_weight_gbps": decode * weight_bytes as f64 / 1e9, "kernels": kernels()})
    );
    Ok(())
}

fn profile(
    model_spec: &str,
    prompt_file: &str,
    what: &str,
    seconds: f64,
    dtype: candle_core::DType,
) -> Result<()> {
    let lm = model::load(
        model_spec,
        LoadOptions {
            dtype,
            ..Default::default()
        },
    )?;
    let ids = lm
        .tokenizer
        .encode(&std::fs::read_to_string(prompt_file)?)?;
    let input = Tensor::new(ids.as_slice(), &lm.model.device)?.unsqueeze(0)?;
    let mut cache = lm.model.new_cache(1);
    lm.model.forward_last(&input, None, Some(&mut cache))?;
    eprintln!("start {}", std::process::id());
    let t = Instant::now();
    let c0 = cpu_s();
    let mut n = 0usize;
    while t.elapsed().as_secs_f64() < seconds {
        if what == "decode" {
            let tok = Tensor::new(&[ids[n % ids.len()]], &lm.model.device)?.unsqueeze(0)?;
            let mut c = cache.clone();
            lm.model.forward_last(&tok, None, Some(&mut c))?;
        } else {
            lm.model.forward_last(&input, None, None)?;
        }
        n += 1;
    }
    eprintln!(
        "{n} {what} runs in {:.1} s, {:.2} CPU-s each",
        t.elapsed().as_secs_f64(),
        (cpu_s() - c0) / n as f64
    );
    Ok(())
}

/// CPU seconds this process has used (user and system, all threads).
fn cpu_s() -> f64 {
    // SAFETY: getrusage writes into the struct it is given.
    let r = unsafe {
        let mut r: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut r);
        r
    };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 * 1e-6;
    t(r.ru_utime) + t(r.ru_stime)
}

/// Bytes of a linear layer's weight as loaded (dense or quantized blocks).
fn linear_bytes(l: &fraudlab::model::qwen2::Linear) -> usize {
    use fraudlab::model::qwen2::LinearWeight;
    match &l.weight {
        LinearWeight::Dense(w) => w.elem_count() * w.dtype().size_in_bytes(),
        LinearWeight::Quant(candle_core::quantized::QMatMul::QTensor(q)) => {
            q.storage_size_in_bytes()
        }
        LinearWeight::Quant(_) => l.in_features * l.out_features * 4,
    }
}

fn train(model_spec: &str, data: &str, batch: usize, steps: usize, dtype: &str) -> Result<()> {
    let lm = model::load(
        model_spec,
        LoadOptions {
            dtype: model::loader::parse_dtype(dtype)?,
            ..Default::default()
        },
    )?;
    let dir = std::env::temp_dir().join(format!("fraudlab-bench-train-{}", std::process::id()));
    let tc = TrainConfig {
        model: model_spec.into(),
        data: data.into(),
        out_dir: dir.clone(),
        batch,
        grad_accum: 1,
        max_steps: Some(steps + 2),
        limit: Some(batch * (steps + 2)),
        schedule: fraudlab::engine::train::Schedule::Constant,
        warmup_ratio: 0.0,
        shuffle: false,
        dtype: dtype.to_string(),
        ..Default::default()
    };
    let mut times = Vec::new();
    let mut toks = Vec::new();
    let loaded_heap = heap_mib().0;
    let control = TrainControl::default();
    train_loaded(lm, &tc, &control, &mut |e| {
        if let TrainEvent::Step(m) = e {
            if std::env::var_os("BENCH_VERBOSE").is_some() {
                eprintln!(
                    "step {} rss {:.0} heap live {:.0} peak {:.0}",
                    m.step,
                    rss_mib().0,
                    heap_mib().0,
                    heap_mib().1
                );
            }
            if m.step > 2 {
                times.push(m.step_s);
                toks.push(m.tokens_per_s * m.step_s);
            }
        }
    })?;
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{}",
        json!({"step_s": median(times), "rss_mib": rss_mib().1, "tokens_per_step": median(toks),
               "heap_after_load_mib": loaded_heap, "heap_peak_mib": heap_mib().1, "kernels": kernels()})
    );
    Ok(())
}

fn score(
    dtype: candle_core::DType,
    model_spec: &str,
    data: &str,
    n: usize,
    mode: &str,
    batch: usize,
) -> Result<()> {
    let lm = model::load(
        model_spec,
        LoadOptions {
            dtype,
            ..Default::default()
        },
    )?;
    let (samples, _) = fraudlab::engine::eval::load_labelled(data.as_ref(), Some(n))?;
    let cfg = EvalConfig {
        mode: if mode == "generate" {
            EvalMode::Generate
        } else {
            EvalMode::Score
        },
        batch,
        ..Default::default()
    };
    let cancel = AtomicBool::new(false);
    let (m, preds, secs) = evaluate_loaded(&lm, &samples, &cfg, &cancel, &mut |_, _| {})?;
    let probs: Vec<f64> = preds.iter().filter_map(|p| p.probability).collect();
    let answers: Vec<&str> = preds.iter().filter_map(|p| p.answer.as_deref()).collect();
    println!(
        "{}",
        json!({"n": m.n, "precision": m.precision, "recall": m.recall, "f1": m.f1, "unparseable": m.unparseable,
               "samples_per_s": samples.len() as f64 / secs, "kernels": kernels(), "probs": probs, "answers": answers})
    );
    Ok(())
}
