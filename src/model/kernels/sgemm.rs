//! The one strided f32/f64 matmul every fused op calls (`mm`): the `gemm` crate on SIMD
//! levels (it picks its AVX2 or AVX-512 kernels at run time), a plain loop at the portable
//! level, so the portable path of the whole model uses no SIMD kernel of any crate.

use gemm::Parallelism;
use rayon::prelude::*;

use super::{level, Level};

/// The float types the matmuls run in (f32; f64 for gradient checks).
pub trait Float:
    Copy + Send + Sync + 'static + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self>
{
    const ZERO: Self;
    const ONE: Self;
}

impl Float for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

impl Float for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

/// `dst (m×n, row stride dst_rs) (+)= beta · lhs · rhs`, lhs (m×k) and rhs (k×n) given by
/// their column and row strides; written unless `acc`.
#[allow(clippy::too_many_arguments)]
pub fn mm<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    dst_rs: usize,
    acc: bool,
    lhs: &[T],
    (lhs_cs, lhs_rs): (usize, usize),
    rhs: &[T],
    (rhs_cs, rhs_rs): (usize, usize),
    beta: T,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    let end = |cs: usize, rs: usize, r: usize, c: usize| (r - 1) * rs + (c - 1) * cs + 1;
    assert!(dst.len() >= end(1, dst_rs, m, n));
    if k > 0 {
        assert!(lhs.len() >= end(lhs_cs, lhs_rs, m, k) && rhs.len() >= end(rhs_cs, rhs_rs, k, n));
    }
    if k == 0 {
        if !acc {
            dst.chunks_mut(dst_rs)
                .take(m)
                .for_each(|r| r[..n].iter_mut().for_each(|x| *x = T::ZERO));
        }
        return;
    }
    if level() == Level::Portable {
        let dst = &mut dst[..end(1, dst_rs, m, n)];
        return mm_portable(
            n,
            k,
            dst,
            dst_rs,
            acc,
            lhs,
            (lhs_cs, lhs_rs),
            rhs,
            (rhs_cs, rhs_rs),
            beta,
        );
    }
    // SAFETY: the asserts above check that every element the strides reach is in the slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            acc,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            T::ONE,
            beta,
            false,
            false,
            false,
            par,
        )
    }
}

/// The plain loop: row by row, terms added in k order. `dst` ends at the last element of
/// row m - 1 (its rows are `dst_rs` apart).
#[allow(clippy::too_many_arguments)]
fn mm_portable<T: Float>(
    n: usize,
    k: usize,
    dst: &mut [T],
    dst_rs: usize,
    acc: bool,
    lhs: &[T],
    (lhs_cs, lhs_rs): (usize, usize),
    rhs: &[T],
    (rhs_cs, rhs_rs): (usize, usize),
    beta: T,
) {
    dst.par_chunks_mut(dst_rs).enumerate().for_each(|(i, d)| {
        let mut t = vec![T::ZERO; n];
        for c in 0..k {
            let a = lhs[i * lhs_rs + c * lhs_cs];
            let r = &rhs[c * rhs_rs..];
            for (j, tj) in t.iter_mut().enumerate() {
                *tj = *tj + a * r[j * rhs_cs];
            }
        }
        for (dj, tj) in d[..n].iter_mut().zip(t) {
            *dj = if acc { *dj + beta * tj } else { beta * tj };
        }
    });
}

/// Splits a matmul over the thread pool unless it is too small to be worth it.
pub fn parallelism_for(m: usize, n: usize, k: usize) -> Parallelism {
    if m * n * k < 32 * 1024 {
        Parallelism::None
    } else {
        Parallelism::Rayon(rayon::current_num_threads())
    }
}

#[cfg(test)]
mod tests {
    use super::super::with_level;
    use super::*;

    /// Every level against an f64 sum, with transposed and strided operands and both
    /// write modes.
    #[test]
    fn levels_agree_with_a_plain_sum() {
        let (m, n, k) = (7, 45, 33);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7) % 13) as f32 / 13.0 - 0.5)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 5) % 11) as f32 / 11.0 - 0.5)
            .collect();
        for l in super::super::available() {
            // lhs as given (row-major m×k); rhs transposed: stored n×k
            let mut bt = vec![0f32; n * k];
            for c in 0..k {
                for j in 0..n {
                    bt[j * k + c] = b[c * n + j];
                }
            }
            for (rhs, strides) in [(&b, (1, n)), (&bt, (k, 1))] {
                let dst_rs = n + 3;
                let mut d = vec![1f32; (m - 1) * dst_rs + n];
                with_level(l, || {
                    mm(
                        m,
                        n,
                        k,
                        &mut d,
                        dst_rs,
                        true,
                        &a,
                        (1, k),
                        rhs,
                        strides,
                        2.0,
                        parallelism_for(m, n, k),
                    )
                });
                for i in 0..m {
                    for j in 0..n {
                        let s: f64 = (0..k)
                            .map(|c| a[i * k + c] as f64 * b[c * n + j] as f64)
                            .sum();
                        let want = 1.0 + 2.0 * s;
                        let got = d[i * dst_rs + j] as f64;
                        assert!(
                            (got - want).abs() < 1e-5,
                            "{l:?} ({i},{j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
