//! Few-row products `y = x · Wᵀ (+ bias)`: decode (one row) and short batches.
//!
//! With one to a few rows of x the product reads every weight once and does little with
//! it, so its speed is the speed the weights stream from memory. These kernels read each
//! weight row once for all rows of x (up to `MR` x rows per pass, the rest from cache),
//! four weight rows at a time with one accumulator each (independent chains, four streams
//! for the prefetcher), and split the weight rows over the thread pool. bf16 weights read
//! half the bytes: with AVX512-BF16 they go to `vdpbf16ps` as they are (x rounded to bf16 in
//! registers, f32 accumulation, as the bf16 matmul does); without it they are widened to f32
//! in registers (a 16-bit shift) and x stays f32.

use half::bf16;
use rayon::prelude::*;

use super::Level;

/// A weight matrix (n, k), row-major: the layout of a linear layer's weight.
#[derive(Clone, Copy)]
pub enum Weights<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
}

impl Weights<'_> {
    pub fn len(&self) -> usize {
        match self {
            Weights::F32(w) => w.len(),
            Weights::Bf16(w) => w.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn elem_bytes(&self) -> usize {
        match self {
            Weights::F32(_) => 4,
            Weights::Bf16(_) => 2,
        }
    }
}

/// Weight rows handled together by one kernel call.
const R: usize = 4;

/// A raw pointer to y that worker threads write through, each to its own columns.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: every thread writes a disjoint set of columns of y (see `gemv`).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// `y[i][j] = Σ_c x[i][c] · w[j][c] (+ bias[j])` for x (m, k) row-major, w (n, k), y (m, n).
pub fn gemv(
    level: Level,
    x: &[f32],
    m: usize,
    k: usize,
    w: Weights<'_>,
    n: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    assert!(x.len() >= m * k && w.len() >= n * k && y.len() >= m * n);
    assert!(bias.is_none_or(|b| b.len() >= n));
    if m == 0 || n == 0 {
        return;
    }
    // Chunks of weight rows: several per thread for balance, each worth streaming.
    let threads = rayon::current_num_threads().max(1);
    let min_rows = (16 * 1024 / (k * w.elem_bytes()).max(1)).max(R);
    let chunk = n.div_ceil(threads * 4).max(min_rows).div_ceil(R) * R;
    let out = Out(y.as_mut_ptr());
    let run = |j0: usize| {
        let j1 = (j0 + chunk).min(n);
        // SAFETY: chunks cover disjoint column ranges j0..j1 of y, whose length was checked.
        unsafe { rows(level, x, m, k, w, j0, j1, n, bias, out) };
    };
    if chunk >= n || threads == 1 {
        (0..n).step_by(chunk).for_each(run);
    } else {
        (0..n).into_par_iter().step_by(chunk).for_each(run);
    }
}

/// Columns j0..j1 of y.
///
/// # Safety
/// y (through `out`) must hold m × n elements, and no other thread may write columns j0..j1.
#[allow(clippy::too_many_arguments)]
unsafe fn rows(
    level: Level,
    x: &[f32],
    m: usize,
    k: usize,
    w: Weights<'_>,
    j0: usize,
    j1: usize,
    n: usize,
    bias: Option<&[f32]>,
    out: Out,
) {
    let mut j = j0;
    while j < j1 {
        let r = (j1 - j).min(R);
        let mut i = 0;
        while i < m {
            let mr = (m - i).min(MR);
            let mut acc = [[0f32; R]; MR];
            tile(level, &x[i * k..], mr, k, w, j, r, &mut acc);
            for (ii, a) in acc.iter().enumerate().take(mr) {
                for (jj, v) in a.iter().enumerate().take(r) {
                    let b = bias.map_or(0.0, |b| b[j + jj]);
                    *out.0.add((i + ii) * n + j + jj) = v + b;
                }
            }
            i += mr;
        }
        j += r;
    }
}

/// Rows of x per pass over the weights.
const MR: usize = 4;

/// acc[i][r] = x[i] · w[j + r] for i < mr, r < nr.
#[allow(clippy::too_many_arguments)]
fn tile(
    level: Level,
    x: &[f32],
    mr: usize,
    k: usize,
    w: Weights<'_>,
    j: usize,
    nr: usize,
    acc: &mut [[f32; R]; MR],
) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the level never exceeds what the CPU reported (see `kernels::level`), and
        // the slices hold the rows read (checked in `gemv`).
        unsafe {
            if let (true, Weights::Bf16(w)) = (nr == R && level >= Level::Avx512Bf16, w) {
                return x86::tile_dpbf16(x, mr, k, w.as_ptr() as _, j, acc);
            }
            if nr == R && level >= Level::Avx512 {
                return match w {
                    Weights::F32(w) => x86::tile_avx512::<false>(x, mr, k, w.as_ptr() as _, j, acc),
                    Weights::Bf16(w) => x86::tile_avx512::<true>(x, mr, k, w.as_ptr() as _, j, acc),
                };
            }
            if nr == R && level >= Level::Avx2 {
                return match w {
                    Weights::F32(w) => x86::tile_avx2::<false>(x, mr, k, w.as_ptr() as _, j, acc),
                    Weights::Bf16(w) => x86::tile_avx2::<true>(x, mr, k, w.as_ptr() as _, j, acc),
                };
            }
        }
    }
    // on the bf16 level, bf16 weights always meet x rounded to bf16 (the tail rows too)
    let round_x = level >= Level::Avx512Bf16 && matches!(w, Weights::Bf16(_));
    tile_portable(x, mr, k, w, j, nr, acc, round_x)
}

/// The plain-Rust tile: the reference the SIMD tiles are tested against.
#[allow(clippy::too_many_arguments)]
fn tile_portable(
    x: &[f32],
    mr: usize,
    k: usize,
    w: Weights<'_>,
    j: usize,
    nr: usize,
    acc: &mut [[f32; R]; MR],
    round_x: bool,
) {
    let rx = |v: f32| {
        if round_x {
            bf16::from_f32(v).to_f32()
        } else {
            v
        }
    };
    for r in 0..nr {
        let row = (j + r) * k;
        for (i, a) in acc.iter_mut().enumerate().take(mr) {
            let xi = &x[i * k..(i + 1) * k];
            a[r] = match w {
                Weights::F32(w) => xi.iter().zip(&w[row..row + k]).map(|(a, b)| a * b).sum(),
                Weights::Bf16(w) => xi
                    .iter()
                    .zip(&w[row..row + k])
                    .map(|(a, b)| rx(*a) * b.to_f32())
                    .sum(),
            };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{MR, R};
    use crate::model::kernels::mask16;
    use std::arch::x86_64::*;

    /// 16 weights from `p` (f32, or bf16 widened) as f32; `mask` selects the lanes read.
    #[inline(always)]
    unsafe fn load16<const BF16: bool>(p: *const u8, c: usize, mask: __mmask16) -> __m512 {
        if BF16 {
            let h = _mm256_maskz_loadu_epi16(mask, (p as *const u16).add(c) as *const i16);
            _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
        } else {
            _mm512_maskz_loadu_ps(mask, (p as *const f32).add(c))
        }
    }

    /// See `tile`: four weight rows from `w` (f32 or bf16 elements, rows of k) at row j.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn tile_avx512<const BF16: bool>(
        x: &[f32],
        mr: usize,
        k: usize,
        w: *const u8,
        j: usize,
        acc: &mut [[f32; R]; MR],
    ) {
        let esz = if BF16 { 2 } else { 4 };
        let rows: [*const u8; R] = std::array::from_fn(|r| w.add((j + r) * k * esz));
        let mut a = [[_mm512_setzero_ps(); R]; MR];
        let full = k / 16 * 16;
        let mut c = 0;
        while c < k {
            let mask: __mmask16 = if c < full {
                0xffff
            } else {
                (1u32 << (k - c)) as u16 - 1
            };
            let wv: [__m512; R] = std::array::from_fn(|r| load16::<BF16>(rows[r], c, mask));
            for (i, ai) in a.iter_mut().enumerate().take(mr) {
                let xv = _mm512_maskz_loadu_ps(mask, x.as_ptr().add(i * k + c));
                for r in 0..R {
                    ai[r] = _mm512_fmadd_ps(xv, wv[r], ai[r]);
                }
            }
            c += 16;
        }
        for i in 0..mr {
            for r in 0..R {
                acc[i][r] = _mm512_reduce_add_ps(a[i][r]);
            }
        }
    }

    /// See `tile`: four bf16 weight rows on `vdpbf16ps`. Each 32 elements of x are rounded
    /// to bf16 in registers (as the bf16 matmul rounds its input), so a weight is loaded
    /// once and used as it is: two products per lane per instruction, no widening.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn tile_dpbf16(
        x: &[f32],
        mr: usize,
        k: usize,
        w: *const u16,
        j: usize,
        acc: &mut [[f32; R]; MR],
    ) {
        let rows: [*const u16; R] = [
            w.add(j * k),
            w.add((j + 1) * k),
            w.add((j + 2) * k),
            w.add((j + 3) * k),
        ];
        let mut a = [[_mm512_setzero_ps(); R]; MR];
        let mut c = 0;
        while c < k {
            let left = k - c;
            let m32: __mmask32 = if left >= 32 {
                !0
            } else {
                ((1u64 << left) - 1) as u32
            };
            let (m_lo, m_hi) = (mask16(left), mask16(left.saturating_sub(16)));
            let mut wv = [_mm512_setzero_si512(); R];
            for (v, row) in wv.iter_mut().zip(&rows) {
                *v = _mm512_maskz_loadu_epi16(m32, row.add(c) as *const i16);
            }
            for (i, ai) in a.iter_mut().enumerate().take(mr) {
                // lanes past k are masked: never read, zero in both operands
                let xp = x.as_ptr().wrapping_add(i * k + c);
                let lo = _mm512_maskz_loadu_ps(m_lo, xp);
                let hi = _mm512_maskz_loadu_ps(m_hi, xp.wrapping_add(16));
                let xb = _mm512_cvtne2ps_pbh(hi, lo);
                for r in 0..R {
                    ai[r] = _mm512_dpbf16_ps(
                        ai[r],
                        xb,
                        std::mem::transmute::<__m512i, __m512bh>(wv[r]),
                    );
                }
            }
            c += 32;
        }
        for i in 0..mr {
            for r in 0..R {
                acc[i][r] = _mm512_reduce_add_ps(a[i][r]);
            }
        }
    }

    #[inline(always)]
    unsafe fn hsum256(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// The AVX2 tile: two x rows per pass (16 registers), the tail of k in plain code.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile_avx2<const BF16: bool>(
        x: &[f32],
        mr: usize,
        k: usize,
        w: *const u8,
        j: usize,
        acc: &mut [[f32; R]; MR],
    ) {
        let esz = if BF16 { 2 } else { 4 };
        let rows: [*const u8; R] = std::array::from_fn(|r| w.add((j + r) * k * esz));
        let load8 = |p: *const u8, c: usize| -> __m256 {
            if BF16 {
                let h = _mm_loadu_si128((p as *const u16).add(c) as *const __m128i);
                _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
            } else {
                _mm256_loadu_ps((p as *const f32).add(c))
            }
        };
        let scalar = |p: *const u8, c: usize| -> f32 {
            if BF16 {
                f32::from_bits((*(p as *const u16).add(c) as u32) << 16)
            } else {
                *(p as *const f32).add(c)
            }
        };
        let full = k / 8 * 8;
        let mut i0 = 0;
        while i0 < mr {
            let pair = (mr - i0).min(2);
            let mut a = [[_mm256_setzero_ps(); R]; 2];
            let mut c = 0;
            while c < full {
                let wv: [__m256; R] = std::array::from_fn(|r| load8(rows[r], c));
                for (i, ai) in a.iter_mut().enumerate().take(pair) {
                    let xv = _mm256_loadu_ps(x.as_ptr().add((i0 + i) * k + c));
                    for r in 0..R {
                        ai[r] = _mm256_fmadd_ps(xv, wv[r], ai[r]);
                    }
                }
                c += 8;
            }
            for i in 0..pair {
                for r in 0..R {
                    let mut s = hsum256(a[i][r]);
                    for cc in full..k {
                        s += x[(i0 + i) * k + cc] * scalar(rows[r], cc);
                    }
                    acc[i0 + i][r] = s;
                }
            }
            i0 += pair;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// y in f64 from the same inputs: the plain reference.
    fn reference(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, bias: &[f32]) -> Vec<f64> {
        let mut y = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] = bias[j] as f64
                    + (0..k)
                        .map(|c| x[i * k + c] as f64 * w[j * k + c] as f64)
                        .sum::<f64>();
            }
        }
        y
    }

    fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let h = (i as u32 ^ seed).wrapping_mul(0x9E37_79B9).rotate_left(13);
                (h % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Every level this CPU runs, f32 and bf16 weights, shapes with ragged edges (k not a
    /// multiple of 16 or 8, n not a multiple of 4, m past one pass), against an f64 sum of
    /// the same (bf16-rounded) values. The bound: f32 accumulation over k terms of size ≤ 1
    /// errs by at most about k · 2⁻²⁴ · Σ|terms|; 1e-5 · k covers it with room.
    #[test]
    fn every_level_matches_the_reference() {
        for &(m, k, n) in &[
            (1, 1, 1),
            (1, 37, 5),
            (3, 64, 9),
            (5, 129, 33),
            (9, 200, 70),
            (1, 896, 130),
            (2, 61, 8),
        ] {
            let x = data(m * k, 1);
            let w32 = data(n * k, 2);
            let wb: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
            let wb32: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
            let bias = data(n, 3);
            // on the bf16 level, bf16 weights meet x rounded to bf16
            let xb: Vec<f32> = x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
            for level in super::super::available() {
                for (w, wref) in [(Weights::F32(&w32), &w32), (Weights::Bf16(&wb), &wb32)] {
                    let rounds = level >= Level::Avx512Bf16 && w.elem_bytes() == 2;
                    let want = reference(if rounds { &xb } else { &x }, m, k, wref, n, &bias);
                    let mut y = vec![f32::NAN; m * n];
                    gemv(level, &x, m, k, w, n, Some(&bias), &mut y);
                    for (a, b) in y.iter().zip(&want) {
                        assert!(
                            (*a as f64 - b).abs() <= 1e-5 * k as f64,
                            "{level:?} {m}x{k}x{n} bf16={}: {a} vs {b}",
                            w.elem_bytes() == 2
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn no_bias_and_many_threads_cover_every_column() {
        let (m, k, n) = (2, 300, 1001);
        let x = data(m * k, 4);
        let w = data(n * k, 5);
        let want = reference(&x, m, k, &w, n, &vec![0.0; n]);
        let mut y = vec![f32::NAN; m * n];
        gemv(
            super::super::level(),
            &x,
            m,
            k,
            Weights::F32(&w),
            n,
            None,
            &mut y,
        );
        for (a, b) in y.iter().zip(&want) {
            assert!((*a as f64 - b).abs() <= 1e-5 * k as f64, "{a} vs {b}");
        }
    }
}
