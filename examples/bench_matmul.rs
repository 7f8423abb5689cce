//! GFLOP/s of the f32 matmul shapes a Qwen2-0.5B forward uses (x · Wᵀ), to compare the
//! matmul kernels with other stacks on the same machine.
//!
//!   cargo run --release --example bench_matmul
use candle_core::{Device, Tensor};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    for (m, k, n) in [
        (1800, 896, 4864),
        (1800, 4864, 896),
        (800, 896, 4864),
        (800, 4864, 896),
        (800, 896, 896),
        (428, 896, 4864),
        (1, 896, 4864),
    ] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
        for _ in 0..3 {
            x.matmul(&w.t()?)?;
        }
        let r = 10;
        let t = Instant::now();
        for _ in 0..r {
            x.matmul(&w.t()?)?;
        }
        let dt = t.elapsed().as_secs_f64() / r as f64;
        println!(
            "{m} {k} {n} {:.1} GFLOP/s",
            2.0 * (m * k * n) as f64 / dt / 1e9
        );
    }
    Ok(())
}
