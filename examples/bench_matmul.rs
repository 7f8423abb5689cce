//! The matmul shapes of a Qwen2-0.5B forward (x · Wᵀ, x: m×k, W: n×k) on our kernels next to
//! `torch.matmul` (through `bench/matmul.py`) in one run, shape by shape, f32 and bf16; and the
//! machine's memory bandwidth (a streaming read of a buffer larger than the caches, on every
//! thread), so the decode shapes (m = 1, memory-bound) read as a fraction of it.
//!
//!   cargo run --release --example bench_matmul [-- --python PY] [--no-bf16] [--quick]
//!   cargo run --release --example bench_matmul -- --rows-sweep   (gemv against gemm by m)
//!   cargo run --release --example bench_matmul -- --shapes 428x896x4864,200x896x128 --only-bf16
//!   … --packed   (bf16 also on weights packed ahead, as an inference model holds them)
//!
//! PY (or `REF_PY`) is a Python with torch; without one, only our side is measured.
//! Decode shapes cycle through enough weight copies (over 256 MiB) that the weights come from
//! memory, as they do in a real decode, not from the last-level cache.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use fraudlab::model::kernels;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

const SHAPES: [(usize, usize, usize); 7] = [
    (1800, 896, 4864),
    (1800, 4864, 896),
    (800, 896, 4864),
    (428, 896, 4864),
    (1, 896, 4864),
    (1, 4864, 896),
    (1, 896, 151936),
];

/// Weight copies cycled for a shape: enough to pass 256 MiB when m is small.
fn copies(m: usize, k: usize, n: usize, bytes: usize) -> usize {
    if m > 16 {
        1
    } else {
        (256usize << 20).div_ceil(n * k * bytes).max(1)
    }
}

/// Median seconds per call over 5 batches of at least 0.1 s.
fn time_it(mut f: impl FnMut(usize)) -> f64 {
    for i in 0..2 {
        f(i);
    }
    let (mut reps, t) = (0, Instant::now());
    while t.elapsed().as_secs_f64() < 0.1 {
        f(reps);
        reps += 1;
    }
    let mut ts: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            (0..reps).for_each(&mut f);
            t.elapsed().as_secs_f64() / reps as f64
        })
        .collect();
    ts.sort_by(|a, b| a.total_cmp(b));
    ts[2]
}

/// GB/s of a streaming read of `bytes` split over the thread pool (median of 5).
fn bandwidth(bytes: usize) -> f64 {
    use rayon::prelude::*;
    let buf: Vec<f32> = (0..bytes / 4).map(|i| (i % 7) as f32).collect();
    let chunk = buf.len().div_ceil(rayon::current_num_threads());
    let read = || {
        buf.par_chunks(chunk)
            .map(|c| {
                let mut acc = [0f32; 32];
                for v in c.chunks_exact(32) {
                    for (a, x) in acc.iter_mut().zip(v) {
                        *a += x;
                    }
                }
                acc.iter().sum::<f32>()
            })
            .sum::<f32>()
    };
    let mut ts: Vec<f64> = (0..6)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(read());
            t.elapsed().as_secs_f64()
        })
        .skip(1)
        .collect();
    ts.sort_by(|a, b| a.total_cmp(b));
    bytes as f64 / ts[2] / 1e9
}

/// Our side of one shape: (GFLOP/s, weight GB/s, the path that ran). `packed`: a bf16
/// weight packed ahead, as an inference model holds it.
fn ours(dt: DType, m: usize, k: usize, n: usize, packed: bool) -> Result<(f64, f64, String)> {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
    let ws = (0..copies(m, k, n, dt.size_in_bytes()))
        .map(|_| Tensor::randn(0f32, 1.0, (n, k), &dev)?.to_dtype(dt))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let lv = kernels::level();
    let pw: Vec<kernels::gemm_bf16::Packed> = if packed {
        ws.iter()
            .filter_map(|w| {
                let v = w.flatten_all().ok()?.to_vec1::<half::bf16>().ok()?;
                kernels::gemm_bf16::Packed::new(lv, &v, n, k)
            })
            .collect()
    } else {
        Vec::new()
    };
    if packed && pw.is_empty() {
        anyhow::bail!("--packed: this CPU has no bf16 matmul to pack for");
    }
    let s = time_it(|i| {
        if packed {
            let p = &pw[i % pw.len()];
            std::hint::black_box(kernels::linear::forward_packed(&x, &[(p, None)]).unwrap());
        } else {
            std::hint::black_box(kernels::linear::forward(&x, &ws[i % ws.len()], None).unwrap());
        }
    });
    let path = if packed {
        "bf16 matmul on a weight packed ahead".to_string()
    } else {
        kernels::linear::path_name(m, dt, lv)
    };
    Ok((
        2.0 * (m * k * n) as f64 / s / 1e9,
        (n * k * dt.size_in_bytes()) as f64 / s / 1e9,
        path,
    ))
}

/// The gemv next to the blocked matmul for m = 1..32 (k, n) = (896, 4864): where the
/// linear layer should switch from one to the other.
fn rows_sweep() -> Result<()> {
    use kernels::gemv::{gemv, Weights};
    let (k, n) = (896, 4864);
    let dev = Device::Cpu;
    println!("rows sweep (k {k}, n {n}), GFLOP/s: m  gemv-f32  gemm-f32  gemv-bf16  bf16-other");
    for m in [1, 2, 4, 8, 12, 16, 24, 32] {
        let c = copies(1, k, n, 4);
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        let ws = (0..c)
            .map(|_| Tensor::randn(0f32, 1.0, (n, k), &dev))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let wb = ws
            .iter()
            .map(|w| w.to_dtype(DType::BF16))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let xv = x.flatten_all()?.to_vec1::<f32>()?;
        let wv: Vec<Vec<f32>> = ws
            .iter()
            .map(|w| w.flatten_all().unwrap().to_vec1().unwrap())
            .collect();
        let wbv: Vec<Vec<half::bf16>> = wb
            .iter()
            .map(|w| w.flatten_all().unwrap().to_vec1().unwrap())
            .collect();
        let mut y = vec![0f32; m * n];
        let lv = kernels::level();
        let g = |s: f64| 2.0 * (m * k * n) as f64 / s / 1e9;
        let a = time_it(|i| gemv(lv, &xv, m, k, Weights::F32(&wv[i % c]), n, None, &mut y));
        let b = time_it(|i| {
            std::hint::black_box(x.matmul(&ws[i % c].t().unwrap()).unwrap());
        });
        let mut y = vec![0f32; m * n];
        let d = time_it(|i| gemv(lv, &xv, m, k, Weights::Bf16(&wbv[i % c]), n, None, &mut y));
        let e = if m > kernels::linear::gemv_max_rows(DType::BF16) {
            g(time_it(|i| {
                std::hint::black_box(kernels::linear::forward(&x, &wb[i % c], None).unwrap());
            }))
        } else {
            f64::NAN
        };
        println!("  {m:<3} {:8.1} {:8.1} {:9.1} {:9.1}", g(a), g(b), g(d), e);
    }
    Ok(())
}

struct Torch {
    stdin: std::process::ChildStdin,
    out: BufReader<std::process::ChildStdout>,
    child: std::process::Child,
}

impl Torch {
    fn start(py: &str) -> Result<(Self, String)> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/matmul.py");
        let mut child = Command::new(py)
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {py} {script}"))?;
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let stdin = child.stdin.take().unwrap();
        let mut hello = String::new();
        out.read_line(&mut hello)?;
        Ok((Self { stdin, out, child }, hello.trim().to_string()))
    }

    fn run(&mut self, dt: &str, m: usize, k: usize, n: usize, copies: usize) -> Result<(f64, f64)> {
        writeln!(self.stdin, "{dt} {m} {k} {n} {copies}")?;
        let mut line = String::new();
        self.out.read_line(&mut line)?;
        let v: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("torch answered {line:?}"))?;
        Ok((
            v["gflops"].as_f64().unwrap_or(0.0),
            v["gbps"].as_f64().unwrap_or(0.0),
        ))
    }
}

impl Drop for Torch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `MxKxN,MxKxN,…` as given to `--shapes`.
fn parse_shapes(s: &str) -> Result<Vec<(usize, usize, usize)>> {
    s.split(',')
        .map(|t| {
            let d: Vec<usize> = t
                .split('x')
                .map(|v| v.trim().parse::<usize>())
                .collect::<Result<_, _>>()
                .with_context(|| format!("--shapes: `{t}` is not MxKxN"))?;
            match d[..] {
                [m, k, n] if m > 0 && k > 0 && n > 0 => Ok((m, k, n)),
                _ => anyhow::bail!("--shapes: `{t}` is not MxKxN (three positive sizes)"),
            }
        })
        .collect()
}

fn main() -> Result<()> {
    fraudlab::model::kernels::init_threads();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let py = args
        .iter()
        .position(|a| a == "--python")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var("REF_PY").ok());
    println!("{}", kernels::cpu_line());
    let bw = bandwidth(1 << 30);
    println!(
        "memory bandwidth: {bw:.1} GB/s (streaming read of 1 GiB, {} threads, median of 5)",
        rayon::current_num_threads()
    );
    if flag("--rows-sweep") {
        return rows_sweep();
    }
    let mut torch = match &py {
        Some(p) => {
            let (t, hello) = Torch::start(p)?;
            println!("torch: {hello}");
            Some(t)
        }
        None => {
            println!("torch: not measured (pass --python PY or set REF_PY)");
            None
        }
    };
    let dtypes: &[(DType, &str)] = if flag("--no-bf16") {
        &[(DType::F32, "f32")]
    } else if flag("--only-bf16") {
        &[(DType::BF16, "bf16")]
    } else {
        &[(DType::F32, "f32"), (DType::BF16, "bf16")]
    };
    let given: Vec<(usize, usize, usize)> = match args.iter().position(|a| a == "--shapes") {
        Some(i) => parse_shapes(args.get(i + 1).map(String::as_str).unwrap_or(""))?,
        None => Vec::new(),
    };
    let shapes = if !given.is_empty() {
        &given[..]
    } else if flag("--quick") {
        &SHAPES[3..]
    } else {
        &SHAPES[..]
    };
    println!("dtype  m     k     n       ours GFLOP/s  torch GFLOP/s  ratio   ours GB/s (of bw)  torch GB/s (of bw)  our path");
    for &(dt, name) in dtypes {
        for &(m, k, n) in shapes {
            let (g, gb, path) = ours(dt, m, k, n, false)?;
            let (tg, tgb) = match torch.as_mut() {
                Some(t) => t.run(name, m, k, n, copies(m, k, n, dt.size_in_bytes()))?,
                None => (f64::NAN, f64::NAN),
            };
            let mem = |x: f64| {
                if m <= 16 {
                    format!("{x:7.1} ({:3.0}%)", 100.0 * x / bw)
                } else {
                    format!("{:>13}", "-")
                }
            };
            println!(
                "{name:<5} {m:<5} {k:<5} {n:<7} {g:>13.1} {tg:>14.1} {:>6.2}x   {:>17}  {:>18}  {path}",
                g / tg,
                mem(gb),
                mem(tgb),
            );
            if dt == DType::BF16 && flag("--packed") {
                let (g, gb, path) = ours(dt, m, k, n, true)?;
                println!(
                    "{:<5} {m:<5} {k:<5} {n:<7} {g:>13.1} {:>14} {:>7}   {:>17}  {:>18}  {path}",
                    "bf16p",
                    "-",
                    "-",
                    mem(gb),
                    "-",
                );
            }
        }
    }
    Ok(())
}
