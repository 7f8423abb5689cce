//! Engine benchmarks on a real model; prints JSON figures. `bench/compare.sh` runs them next
//! to the Python reference and prints ratios.
//!
//!   cargo run --release --example bench_engine -- speed MODEL PROMPT_FILE NEW_TOKENS [--quantized]
//!   cargo run --release --example bench_engine -- train MODEL DATA.jsonl BATCH STEPS [--layers 12-23] [--shared]
//!       (every step sees new samples, so frozen layers below a LoRA range run each step: the
//!       first epoch's cost)
//!   cargo run --release --example bench_engine -- score MODEL DATA.jsonl N [score|generate] [BATCH]
//!
//! `--dtype bf16` (anywhere) loads the dense weights in bf16 (the base weights, for train).
//! `train` loads as `fraudlab train` does (row-major weights); `--shared` as the workbench's
//! loaded model that a run shares (bf16 layer weights packed for inference, where the CPU
//! packs).
//!   cargo run --release --example bench_engine -- cpu      (the CPU, its features, the kernels)
//!   cargo run --release --example bench_engine -- profile MODEL PROMPT_FILE prefill|decode SECONDS [--quantized]
//!       (after loading, prints "start" on stderr and repeats the workload for SECONDS, for a
//!       profiler attached then: `perf record -p PID`)
//!
//! Every run prints the CPU line on stderr first (unless BENCH_NO_CPU_LINE is set: compare.sh
//! prints it once); the JSON figures name the kernel level.
//!   cargo run --release --example bench_engine -- memory MODEL DATA.jsonl
//!   cargo run --release --example bench_engine -- beside MODEL DATA.jsonl [STEPS] [PROBE_TOKENS] [GAP_S]
//!
//! `memory` runs the workbench's flow (load, then train) twice, each in a process of its own:
//! the run sharing the engine's loaded weights, and the run loading its own copy (what the
//! engine did before); it prints resident memory and live heap after the load and at the
//! run's peak. `beside` trains through the engine and measures its steps alone, then with
//! probes sent alongside (each PROBE_TOKENS long, GAP_S apart), then the probes alone.

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
    let layers = match args.iter().position(|a| a == "--layers") {
        Some(i) => {
            let l = args.get(i + 1).cloned().unwrap_or_default();
            args.drain(i..(i + 2).min(args.len()));
            Some(fraudlab::model::adapter::parse_layers(&l)?)
        }
        None => None,
    };
    let shared = match args.iter().position(|a| a == "--shared") {
        Some(i) => {
            args.remove(i);
            true
        }
        None => false,
    };
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
        Some("profile") => profile(
            &args[1],
            &args[2],
            &args[3],
            args[4].parse()?,
            args.iter().any(|a| a == "--quantized"),
            dt,
        ),
        Some("train") => train(
            &args[1],
            &args[2],
            args[3].parse()?,
            args[4].parse()?,
            &dtype,
            layers,
            shared,
        ),
        Some("score") => score(
            dt,
            &args[1],
            &args[2],
            args[3].parse()?,
            args.get(4).map(String::as_str).unwrap_or("score"),
            args.get(5).map(|b| b.parse()).transpose()?.unwrap_or(8),
        ),
        Some("memory") => memory(&args[1], &args[2]),
        Some("memory-run") => memory_run(&args[1], &args[2], &args[3]),
        Some("beside") => beside::run(
            &args[1],
            &args[2],
            args.get(3).map(|a| a.parse()).transpose()?.unwrap_or(6),
            args.get(4).map(|a| a.parse()).transpose()?.unwrap_or(16),
            args.get(5).map(|a| a.parse()).transpose()?.unwrap_or(1.0),
        ),
        _ => bail!("usage: bench_engine speed|train|score|cpu|memory|beside …"),
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
    quantized: bool,
    dtype: candle_core::DType,
) -> Result<()> {
    let lm = model::load(model_spec, LoadOptions { quantized, dtype })?;
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
        LinearWeight::Packed(p) => p.bytes(),
        LinearWeight::Quant(candle_core::quantized::QMatMul::QTensor(q)) => {
            q.storage_size_in_bytes()
        }
        LinearWeight::Quant(_) => l.in_features * l.out_features * 4,
    }
}

fn train(
    model_spec: &str,
    data: &str,
    batch: usize,
    steps: usize,
    dtype: &str,
    layers: Option<Vec<usize>>,
    shared: bool,
) -> Result<()> {
    let opts = LoadOptions {
        dtype: model::loader::parse_dtype(dtype)?,
        ..Default::default()
    };
    let lm = if shared {
        model::load(model_spec, opts)?
    } else {
        model::load_for_training(model_spec, opts)?
    };
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
    let layers_json = json!(layers);
    let tc = TrainConfig {
        lora: fraudlab::model::adapter::LoraSpec {
            layers_to_transform: layers,
            ..tc.lora.clone()
        },
        ..tc
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
               "heap_after_load_mib": loaded_heap, "heap_peak_mib": heap_mib().1, "kernels": kernels(),
               "layers": layers_json})
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

/// A short training config for the memory and step benchmarks.
fn short_run(model: &str, data: &str, dir: &std::path::Path, steps: usize) -> TrainConfig {
    TrainConfig {
        model: model.into(),
        data: data.into(),
        out_dir: dir.into(),
        batch: 1,
        grad_accum: 1,
        max_len: 256,
        max_steps: Some(steps),
        limit: Some(64),
        schedule: fraudlab::engine::train::Schedule::Constant,
        warmup_ratio: 0.0,
        shuffle: false,
        ..Default::default()
    }
}

/// Both ways of the workbench's load-then-train flow, each in a fresh process; a table.
fn memory(model_spec: &str, data: &str) -> Result<()> {
    println!("{}", fraudlab::model::kernels::cpu_line());
    let exe = std::env::current_exe()?;
    let mut rows = Vec::new();
    for mode in ["copy", "shared"] {
        let out = std::process::Command::new(&exe)
            .args(["memory-run", model_spec, data, mode])
            .output()?;
        if !out.status.success() {
            bail!("{mode}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        rows.push((mode, v));
    }
    println!(
        "{:<8} {:>14} {:>14} {:>16} {:>16} {:>14}",
        "run", "rss_load_MiB", "rss_peak_MiB", "heap_load_MiB", "heap_peak_MiB", "peak-load_MiB"
    );
    for (mode, v) in &rows {
        let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "{:<8} {:>14.0} {:>14.0} {:>16.0} {:>16.0} {:>14.0}",
            mode,
            f("rss_after_load_mib"),
            f("rss_peak_mib"),
            f("heap_after_load_mib"),
            f("heap_peak_mib"),
            f("rss_peak_mib") - f("rss_after_load_mib")
        );
    }
    println!(
        "weights (f32): {:.0} MiB; shared/copy peak RSS: {:.2}",
        rows[0].1["weights_mib"].as_f64().unwrap_or(0.0),
        rows[1].1["rss_peak_mib"].as_f64().unwrap_or(0.0)
            / rows[0].1["rss_peak_mib"].as_f64().unwrap_or(1.0)
    );
    Ok(())
}

/// One way of the flow: the engine loads the model, then a 3-step run trains, either through
/// the engine (`shared`: it reuses the loaded weights) or on a thread beside it calling
/// `train`, which loads its own copy (`copy`: the engine's old path). Peaks are reset after the
/// load (`/proc/self/clear_refs`), so they are the run's.
fn memory_run(model_spec: &str, data: &str, mode: &str) -> Result<()> {
    use fraudlab::engine::{Command, Engine, Event};
    use std::sync::atomic::Ordering::Relaxed;
    let engine = Engine::spawn(4096);
    engine.send(Command::Load {
        key: "m".into(),
        spec: model_spec.into(),
        opts: LoadOptions::default(),
        adapter: None,
    });
    let params = loop {
        match engine.events.recv()? {
            Event::Loaded(info) => break info.parameters,
            Event::Error { message, .. } => bail!("load: {message}"),
            _ => {}
        }
    };
    let rss_load = rss_mib().0;
    let heap_load = heap_mib().0;
    std::fs::write("/proc/self/clear_refs", "5")?;
    PEAK.store(LIVE.load(Relaxed), Relaxed);
    let dir = std::env::temp_dir().join(format!("fraudlab-bench-mem-{}", std::process::id()));
    let tc = short_run(model_spec, data, &dir, 3);
    match mode {
        "shared" => {
            engine.send(Command::Train(Box::new(tc)));
            loop {
                match engine.events.recv()? {
                    Event::Train(TrainEvent::Finished(_)) => break,
                    Event::Error { message, .. } => bail!("train: {message}"),
                    _ => {}
                }
            }
        }
        "copy" => {
            let control = TrainControl::default();
            fraudlab::engine::train::train(&tc, &control, &mut |_| {})?;
        }
        m => bail!("mode {m}: shared or copy"),
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{}",
        json!({"mode": mode, "rss_after_load_mib": rss_load, "rss_peak_mib": rss_mib().1,
               "heap_after_load_mib": heap_load, "heap_peak_mib": heap_mib().1,
               "weights_mib": params as f64 * 4.0 / 1048576.0})
    );
    Ok(())
}

/// Training steps through the engine, alone and with probes alongside.
mod beside {
    use super::*;
    use fraudlab::engine::{Command, Engine, Event};
    use std::time::Duration;

    /// What one phase saw.
    #[derive(Default)]
    struct Phase {
        /// the steps' own time (gate waits excluded)
        step_s: Vec<f64>,
        /// wall time between step reports
        wall_s: Vec<f64>,
        /// send-to-answer time of each probe
        probe_s: Vec<f64>,
        probe_tokens: usize,
        /// time some probe was pending
        busy_s: f64,
        total_s: f64,
    }

    fn med(v: &[f64]) -> f64 {
        if v.is_empty() {
            f64::NAN
        } else {
            median(v.to_vec())
        }
    }

    /// Runs until `steps` steps were seen (or `probes` probes answered when `steps` is 0),
    /// sending a probe `gap` after each answer when `probe_tokens` > 0.
    fn phase(
        engine: &Engine,
        steps: usize,
        probes: usize,
        probe_tokens: usize,
        gap: f64,
        next_request: &mut u64,
    ) -> Result<Phase> {
        let mut p = Phase::default();
        let t0 = Instant::now();
        let mut last_step = None::<Instant>;
        let mut pending: Option<(u64, Instant)> = None;
        let mut next_at = Some(Instant::now());
        let send = |engine: &Engine, request: u64| {
            engine.send(Command::Generate {
                request,
                keys: vec!["m".into()],
                system: None,
                prompt: "请简短介绍下大语言模型。".into(),
                raw: false,
                params: SamplingParams {
                    max_tokens: probe_tokens,
                    ..Default::default()
                },
            })
        };
        loop {
            let done_steps = p.step_s.len() >= steps;
            let done_probes = steps == 0 && p.probe_s.len() >= probes;
            if (steps > 0 && done_steps) || done_probes {
                break;
            }
            if probe_tokens > 0 && pending.is_none() && next_at.is_some_and(|t| Instant::now() >= t)
            {
                *next_request += 1;
                send(engine, *next_request);
                pending = Some((*next_request, Instant::now()));
                next_at = None;
            }
            let e = match engine.events.recv_timeout(Duration::from_millis(20)) {
                Ok(e) => e,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                Err(e) => bail!("engine: {e}"),
            };
            match e {
                Event::Train(TrainEvent::Step(m)) => {
                    let now = Instant::now();
                    if let Some(t) = last_step {
                        p.step_s.push(m.step_s);
                        p.wall_s.push(now.duration_since(t).as_secs_f64());
                    }
                    last_step = Some(now);
                }
                Event::Generated {
                    request,
                    generation,
                    ..
                } if pending.is_some_and(|(r, _)| r == request) => {
                    let (_, sent) = pending.take().unwrap();
                    let dt = sent.elapsed().as_secs_f64();
                    p.probe_s.push(dt);
                    p.busy_s += dt;
                    p.probe_tokens += generation.generated_tokens;
                    next_at = Some(Instant::now() + Duration::from_secs_f64(gap));
                }
                Event::Error { subject, message } => bail!("{subject}: {message}"),
                _ => {}
            }
        }
        // an unanswered probe is waited for, so the next phase starts clean
        if let Some((r, sent)) = pending {
            loop {
                if let Event::Generated { request, .. } = engine.events.recv()? {
                    if request == r {
                        p.busy_s += sent.elapsed().as_secs_f64();
                        break;
                    }
                }
            }
        }
        p.total_s = t0.elapsed().as_secs_f64();
        Ok(p)
    }

    pub fn run(model: &str, data: &str, steps: usize, probe_tokens: usize, gap: f64) -> Result<()> {
        println!("{}", fraudlab::model::kernels::cpu_line());
        let engine = Engine::spawn(4096);
        engine.send(Command::Load {
            key: "m".into(),
            spec: model.into(),
            opts: LoadOptions::default(),
            adapter: None,
        });
        loop {
            match engine.events.recv()? {
                Event::Loaded(_) => break,
                Event::Error { message, .. } => bail!("load: {message}"),
                _ => {}
            }
        }
        let dir =
            std::env::temp_dir().join(format!("fraudlab-bench-beside-{}", std::process::id()));
        let mut tc = short_run(model, data, &dir, 1_000_000);
        tc.limit = None;
        engine.send(Command::Train(Box::new(tc)));
        let mut req = 0;
        // warm-up: the first steps (allocations, caches) are not counted
        phase(&engine, 2, 0, 0, 0.0, &mut req)?;
        let alone = phase(&engine, steps, 0, 0, 0.0, &mut req)?;
        let with = phase(&engine, steps, 0, probe_tokens, gap, &mut req)?;
        engine.stop_training();
        loop {
            match engine.events.recv()? {
                Event::Train(TrainEvent::Finished(_)) => break,
                Event::Error { message, .. } => bail!("train: {message}"),
                _ => {}
            }
        }
        let probes_alone = phase(
            &engine,
            0,
            with.probe_s.len().clamp(2, 6),
            probe_tokens,
            gap,
            &mut req,
        )?;
        let _ = std::fs::remove_dir_all(&dir);
        let per_step = |p: &Phase| p.wall_s.iter().sum::<f64>() / p.wall_s.len().max(1) as f64;
        println!(
            "training steps (batch 1, up to 256 tokens), {steps} per phase; probes of {probe_tokens} tokens, {gap}s apart"
        );
        println!(
            "{:<22} {:>12} {:>12} {:>14} {:>10} {:>12} {:>10}",
            "phase", "step_s med", "wall/step", "steps/min", "probes", "probe_s med", "probe tok/s"
        );
        for (name, p) in [
            ("training alone", &alone),
            ("training + probes", &with),
            ("probes alone", &probes_alone),
        ] {
            let tok_s = p.probe_tokens as f64 / p.probe_s.iter().sum::<f64>().max(1e-9);
            println!(
                "{:<22} {:>12.3} {:>12.3} {:>14.2} {:>10} {:>12.3} {:>10.1}",
                name,
                med(&p.step_s),
                if p.step_s.is_empty() {
                    f64::NAN
                } else {
                    per_step(p)
                },
                if p.step_s.is_empty() {
                    f64::NAN
                } else {
                    60.0 / per_step(p)
                },
                p.probe_s.len(),
                med(&p.probe_s),
                if p.probe_s.is_empty() {
                    f64::NAN
                } else {
                    tok_s
                },
            );
        }
        println!(
            "with probes / alone: step_s {:.2}x, wall per step {:.2}x; probes pending {:.0}% of the phase; probe latency during training / alone {:.2}x",
            med(&with.step_s) / med(&alone.step_s),
            per_step(&with) / per_step(&alone),
            100.0 * with.busy_s / with.total_s,
            med(&with.probe_s) / med(&probes_alone.probe_s)
        );
        Ok(())
    }
}
