//! Many-row products with a bf16 weight: `c = a · Wᵀ + bias` (a layer's forward) and
//! `c = a · W` (its input gradient), a in f32, c in f32.
//!
//! With AVX512-BF16, a is rounded to bf16 once and the products run on `vdpbf16ps` (two
//! bf16 products summed into each f32 lane, f32 accumulation), on panels of the weight
//! packed per call: the weight stays in its row-major layout for everything else (gemv,
//! merges, saving). A CPU without bf16 dot products widens blocks of the weight to f32 and
//! runs the f32 matmul on them (so bf16 still halves the weight's memory there).
//!
//! Blocking: the weight's columns of c are split over the thread pool; each thread packs
//! `KC` rows of B for all its columns (`NR` = 32 columns per panel, pairs of rows
//! interleaved as `vdpbf16ps` reads them), then sweeps blocks of `MC` rows of a over the
//! panels with an `MR × 32` register tile.

use half::bf16;
use rayon::prelude::*;

use super::sgemm::{mm, parallelism_for};
use super::Level;

/// How W maps to B in `c = a · B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Orient {
    /// W is (n, k) and B = Wᵀ: a linear layer's forward, `x · Wᵀ`.
    Transposed,
    /// W is (k, n) and B = W: the input gradient of a linear layer, `dy · W`.
    Plain,
}

/// `c (m × n) = a (m × k) · B + bias`, B from `w` as `orient` says; c is overwritten.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    level: Level,
    a: &[f32],
    m: usize,
    k: usize,
    w: &[bf16],
    orient: Orient,
    n: usize,
    bias: Option<&[f32]>,
    c: &mut [f32],
) {
    assert!(a.len() >= m * k && w.len() >= n * k && c.len() >= m * n);
    assert!(bias.is_none_or(|b| b.len() >= n));
    if m == 0 || n == 0 {
        return;
    }
    let c = &mut c[..m * n];
    match bias {
        Some(b) => c.chunks_mut(n).for_each(|r| r.copy_from_slice(&b[..n])),
        None => c.fill(0.0),
    }
    if k == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if level >= Level::Avx512Bf16 {
        return x86::matmul(a, m, k, w, orient, n, c);
    }
    widened(level, a, m, k, w, orient, n, c)
}

/// Without bf16 dot products: blocks of W widened to f32 (about 4 MiB each, so they stay in
/// cache while the f32 matmul reads them), accumulated into c.
#[allow(clippy::too_many_arguments)]
fn widened(
    level: Level,
    a: &[f32],
    m: usize,
    k: usize,
    w: &[bf16],
    orient: Orient,
    n: usize,
    c: &mut [f32],
) {
    let _ = level; // `mm` reads the same level itself
    let widen = |src: &[bf16], dst: &mut Vec<f32>| {
        dst.clear();
        dst.extend(src.iter().map(|v| v.to_f32()));
    };
    let mut buf = Vec::new();
    match orient {
        Orient::Transposed => {
            // rows j0..j1 of W give columns j0..j1 of c
            let nb = (1usize << 20).div_ceil(k).clamp(16, n.max(16));
            for j0 in (0..n).step_by(nb) {
                let j1 = (j0 + nb).min(n);
                widen(&w[j0 * k..j1 * k], &mut buf);
                mm(
                    m,
                    j1 - j0,
                    k,
                    &mut c[j0..],
                    n,
                    true,
                    a,
                    (1, k),
                    &buf,
                    (k, 1),
                    1.0,
                    parallelism_for(m, j1 - j0, k),
                );
            }
        }
        Orient::Plain => {
            // rows r0..r1 of W (the reduction index) add a[:, r0..r1] · W[r0..r1, :]
            let kb = (1usize << 20).div_ceil(n).clamp(16, k.max(16));
            for r0 in (0..k).step_by(kb) {
                let r1 = (r0 + kb).min(k);
                widen(&w[r0 * n..r1 * n], &mut buf);
                mm(
                    m,
                    n,
                    r1 - r0,
                    c,
                    n,
                    true,
                    &a[r0..],
                    (1, k),
                    &buf,
                    (1, n),
                    1.0,
                    parallelism_for(m, n, r1 - r0),
                );
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use crate::model::kernels::mask16;
    use std::arch::x86_64::*;

    /// Columns per panel: two 16-lane registers.
    const NR: usize = 32;
    /// Rows of the register tile: 24 accumulators, two B registers, one broadcast.
    const MR: usize = 12;
    /// Rows of B (the reduction) per packed block; even. A packed panel (KC × NR bf16) fills
    /// the L1 cache; the tile's rows of a stream next to it.
    const KC: usize = 512;
    /// Rows of a swept over the packed panels at a time (a multiple of MR; MC × KC bf16 of a
    /// stay in L2).
    const MC: usize = 480;

    /// A raw pointer to c that worker threads write through, each to its own columns.
    #[derive(Clone, Copy)]
    struct Out(*mut f32);
    // SAFETY: every thread writes a disjoint set of columns of c (see `matmul`).
    unsafe impl Send for Out {}
    unsafe impl Sync for Out {}

    pub(super) fn matmul(
        a: &[f32],
        m: usize,
        k: usize,
        w: &[half::bf16],
        orient: Orient,
        n: usize,
        c: &mut [f32],
    ) {
        let (ab, kp) = pack_a(a, m, k);
        let w16: &[u16] = bytemuck_u16(w);
        let panels = n.div_ceil(NR);
        let threads = rayon::current_num_threads().max(1);
        // a few chunks per thread for balance, at least two panels each
        let per = panels.div_ceil(threads * 2).max(2);
        let out = Out(c.as_mut_ptr());
        let work = |p0: usize| {
            let p1 = (p0 + per).min(panels);
            // SAFETY: panels p0..p1 are columns no other chunk writes; c holds m × n.
            unsafe { columns(&ab, kp, m, k, w16, orient, n, p0, p1, out) }
        };
        if per >= panels || threads == 1 {
            (0..panels).step_by(per).for_each(work);
        } else {
            (0..panels)
                .into_par_iter()
                .step_by(per)
                .for_each(|p| work(p));
        }
    }

    /// a rounded to bf16, as words of two consecutive elements (the pad past an odd k is
    /// zero), laid out as the tile reads them: blocks of KC columns, in each block groups of
    /// MR rows (the last group padded with zero rows), in each group pair after pair, MR
    /// words each. Returns the words and k rounded up to even.
    fn pack_a(a: &[f32], m: usize, k: usize) -> (Vec<u32>, usize) {
        let kp = k + (k & 1);
        let mp = m.div_ceil(MR) * MR;
        let wpr = kp / 2;
        // a rounded to bf16 row by row in registers: rows of wpr words
        let mut rounded = vec![0u32; m * wpr];
        rounded
            .par_chunks_mut(wpr)
            .zip(a[..m * k].par_chunks(k))
            // SAFETY: this module runs only where AVX512-BF16 is present; each row of
            // `rounded` holds ⌈k / 2⌉ words for its k elements.
            .for_each(|(dst, src)| unsafe { round_pairs(src, dst) });
        let mut out = vec![0u32; mp * wpr];
        // one block of KC columns for all groups is (KC/2) · mp words; split it by group
        let mut rest = &mut out[..];
        for kc0 in (0..kp).step_by(KC) {
            let pairs = (kp - kc0).min(KC) / 2;
            let (block, tail) = rest.split_at_mut(pairs * mp);
            rest = tail;
            let rounded = &rounded;
            block
                .par_chunks_mut(MR * pairs)
                .enumerate()
                .for_each(|(g, dst)| {
                    for rr in 0..MR.min(m - g * MR) {
                        let row = &rounded[(g * MR + rr) * wpr + kc0 / 2..][..pairs];
                        for (q, &v) in row.iter().enumerate() {
                            dst[q * MR + rr] = v;
                        }
                    }
                });
        }
        (out, kp)
    }

    /// dst[q] = bf16(src[2q]) | bf16(src[2q + 1]) << 16 (round to nearest even; the pad
    /// past an odd length is zero).
    ///
    /// # Safety
    /// AVX-512F/BW and AVX512-BF16 must be present; dst holds ⌈src.len() / 2⌉ words.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn round_pairs(src: &[f32], dst: &mut [u32]) {
        let k = src.len();
        debug_assert!(dst.len() >= k.div_ceil(2));
        let mut c = 0;
        while c < k {
            let left = k - c;
            let p = src.as_ptr().wrapping_add(c);
            // lanes past the end are masked: never read, zero
            let lo = _mm512_maskz_loadu_ps(mask16(left), p);
            let hi = _mm512_maskz_loadu_ps(mask16(left.saturating_sub(16)), p.wrapping_add(16));
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_mask_storeu_epi32(
                dst.as_mut_ptr().add(c / 2) as *mut _,
                mask16(left.div_ceil(2)),
                v,
            );
            c += 32;
        }
    }

    fn bytemuck_u16(w: &[half::bf16]) -> &[u16] {
        // SAFETY: bf16 is a transparent wrapper of u16 (same size, alignment and bits).
        unsafe { std::slice::from_raw_parts(w.as_ptr() as *const u16, w.len()) }
    }

    /// B(r, j): row r (the reduction index), column j of B, as bits; 0 outside.
    #[inline(always)]
    fn b_at(w: &[u16], orient: Orient, k: usize, n: usize, r: usize, j: usize) -> u32 {
        if r >= k || j >= n {
            return 0;
        }
        (match orient {
            Orient::Transposed => w[j * k + r],
            Orient::Plain => w[r * n + j],
        }) as u32
    }

    /// Packs rows kc0..kc0 + 2·pairs of B, panels p0..p1, as words (B(2q, j) | B(2q+1, j) << 16),
    /// panel after panel, pair after pair, NR columns each.
    #[allow(clippy::too_many_arguments)]
    fn pack(
        w: &[u16],
        orient: Orient,
        k: usize,
        n: usize,
        kc0: usize,
        pairs: usize,
        p0: usize,
        p1: usize,
        buf: &mut Vec<u32>,
    ) {
        buf.clear();
        buf.resize((p1 - p0) * pairs * NR, 0);
        for (pi, p) in (p0..p1).enumerate() {
            let dst = &mut buf[pi * pairs * NR..(pi + 1) * pairs * NR];
            let j0 = p * NR;
            let full = j0 + NR <= n && kc0 + 2 * pairs <= k;
            match orient {
                Orient::Transposed if full => {
                    // column j of B is row j of W: its pairs are consecutive words, so a
                    // panel is a transpose of 32 rows of words (16 × 16 blocks in registers)
                    let q16 = pairs / 16 * 16;
                    for half in 0..2 {
                        let c0 = 16 * half;
                        for q0 in (0..q16).step_by(16) {
                            let rows: [&[u16]; 16] = std::array::from_fn(|i| {
                                let r = (j0 + c0 + i) * k + kc0 + 2 * q0;
                                &w[r..r + 32]
                            });
                            // SAFETY: this module runs only where AVX-512 is present (the
                            // bf16 level implies it); every row holds 32 u16 and dst holds
                            // rows q0..q0 + 16 of NR words from column c0 + 16 ≤ NR.
                            unsafe { transpose16(&rows, &mut dst[q0 * NR + c0..], NR) };
                        }
                    }
                    for c in 0..NR {
                        let row = &w[(j0 + c) * k + kc0..(j0 + c) * k + kc0 + 2 * pairs];
                        for (q, pr) in row.chunks_exact(2).enumerate().skip(q16) {
                            dst[q * NR + c] = pr[0] as u32 | (pr[1] as u32) << 16;
                        }
                    }
                }
                Orient::Plain if full => {
                    for q in 0..pairs {
                        let r0 = &w[(kc0 + 2 * q) * n + j0..][..NR];
                        let r1 = &w[(kc0 + 2 * q + 1) * n + j0..][..NR];
                        // SAFETY: as above; both rows hold NR u16, dst NR words from q · NR.
                        unsafe { interleave32(r0, r1, &mut dst[q * NR..q * NR + NR]) };
                    }
                }
                _ => {
                    for q in 0..pairs {
                        for c in 0..NR {
                            let r = kc0 + 2 * q;
                            dst[q * NR + c] = b_at(w, orient, k, n, r, j0 + c)
                                | b_at(w, orient, k, n, r + 1, j0 + c) << 16;
                        }
                    }
                }
            }
        }
    }

    /// out[q · ld + i] = word q (u16 pair 2q, 2q+1) of rows[i], for 16 rows of 16 words: a
    /// 16 × 16 transpose of 32-bit words (pairs, then quads, then 128-bit lanes twice).
    ///
    /// # Safety
    /// AVX-512F must be present; every row holds 32 u16; out holds 15 · ld + 16 words.
    #[target_feature(enable = "avx512f")]
    unsafe fn transpose16(rows: &[&[u16]; 16], out: &mut [u32], ld: usize) {
        debug_assert!(rows.iter().all(|r| r.len() >= 32) && out.len() >= 15 * ld + 16);
        let mut r = [_mm512_setzero_si512(); 16];
        for (v, row) in r.iter_mut().zip(rows) {
            *v = _mm512_loadu_si512(row.as_ptr() as *const _);
        }
        // t[2p] / t[2p+1]: rows 2p and 2p+1 interleaved word by word (low / high halves of
        // each 128-bit lane)
        let mut t = [_mm512_setzero_si512(); 16];
        for p in 0..8 {
            t[2 * p] = _mm512_unpacklo_epi32(r[2 * p], r[2 * p + 1]);
            t[2 * p + 1] = _mm512_unpackhi_epi32(r[2 * p], r[2 * p + 1]);
        }
        // u[4g + s]: in each 128-bit lane L, word 4L + s of rows 4g..4g+4
        let mut u = [_mm512_setzero_si512(); 16];
        for g in 0..4 {
            let b = 4 * g;
            u[b] = _mm512_unpacklo_epi64(t[b], t[b + 2]);
            u[b + 1] = _mm512_unpackhi_epi64(t[b], t[b + 2]);
            u[b + 2] = _mm512_unpacklo_epi64(t[b + 1], t[b + 3]);
            u[b + 3] = _mm512_unpackhi_epi64(t[b + 1], t[b + 3]);
        }
        for s in 0..4 {
            // lanes 0, 2 (v) and 1, 3 (x) of rows 0-7, then of rows 8-15
            let v0 = _mm512_shuffle_i32x4::<0b10_00_10_00>(u[s], u[4 + s]);
            let x0 = _mm512_shuffle_i32x4::<0b11_01_11_01>(u[s], u[4 + s]);
            let v1 = _mm512_shuffle_i32x4::<0b10_00_10_00>(u[8 + s], u[12 + s]);
            let x1 = _mm512_shuffle_i32x4::<0b11_01_11_01>(u[8 + s], u[12 + s]);
            let cols = [
                (s, _mm512_shuffle_i32x4::<0b10_00_10_00>(v0, v1)),
                (4 + s, _mm512_shuffle_i32x4::<0b10_00_10_00>(x0, x1)),
                (8 + s, _mm512_shuffle_i32x4::<0b11_01_11_01>(v0, v1)),
                (12 + s, _mm512_shuffle_i32x4::<0b11_01_11_01>(x0, x1)),
            ];
            for (q, v) in cols {
                _mm512_storeu_si512(out.as_mut_ptr().add(q * ld) as *mut _, v);
            }
        }
    }

    /// out[c] = r0[c] | r1[c] << 16 for 32 columns.
    ///
    /// # Safety
    /// AVX-512F/BW must be present; r0 and r1 hold 32 u16, out 32 words.
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn interleave32(r0: &[u16], r1: &[u16], out: &mut [u32]) {
        debug_assert!(r0.len() >= 32 && r1.len() >= 32 && out.len() >= 32);
        let a = _mm512_loadu_si512(r0.as_ptr() as *const _);
        let b = _mm512_loadu_si512(r1.as_ptr() as *const _);
        // per 128-bit lane L: lo = columns 8L..8L+4 interleaved, hi = 8L+4..8L+8
        let lo = _mm512_unpacklo_epi16(a, b);
        let hi = _mm512_unpackhi_epi16(a, b);
        let p = _mm512_shuffle_i32x4::<0b01_00_01_00>(lo, hi); // lo.0 lo.1 hi.0 hi.1
        let q = _mm512_shuffle_i32x4::<0b11_10_11_10>(lo, hi); // lo.2 lo.3 hi.2 hi.3
        let o0 = _mm512_shuffle_i32x4::<0b11_01_10_00>(p, p); // lo.0 hi.0 lo.1 hi.1
        let o1 = _mm512_shuffle_i32x4::<0b11_01_10_00>(q, q);
        _mm512_storeu_si512(out.as_mut_ptr() as *mut _, o0);
        _mm512_storeu_si512(out.as_mut_ptr().add(16) as *mut _, o1);
    }

    /// Columns of panels p0..p1 of c += a · B.
    ///
    /// # Safety
    /// c (through `out`) holds m × n elements; no other thread writes these columns.
    #[allow(clippy::too_many_arguments)]
    unsafe fn columns(
        ab: &[u32],
        kp: usize,
        m: usize,
        k: usize,
        w: &[u16],
        orient: Orient,
        n: usize,
        p0: usize,
        p1: usize,
        out: Out,
    ) {
        let mut buf = Vec::new();
        let mp = m.div_ceil(MR) * MR;
        for kc0 in (0..kp).step_by(KC) {
            let pairs = (kp - kc0).min(KC) / 2;
            pack(w, orient, k, n, kc0, pairs, p0, p1, &mut buf);
            for mc0 in (0..m).step_by(MC) {
                let mc1 = (mc0 + MC).min(m);
                for (pi, p) in (p0..p1).enumerate() {
                    let bp = buf.as_ptr().add(pi * pairs * NR);
                    let j0 = p * NR;
                    let cols = (n - j0).min(NR);
                    let mut r0 = mc0;
                    while r0 < mc1 {
                        let rows = (mc1 - r0).min(MR);
                        // r0 is a multiple of MR: the start of its group
                        let ap = ab.as_ptr().add(kc0 / 2 * mp + r0 * pairs);
                        let cp = out.0.add(r0 * n + j0);
                        tile(rows, ap, bp, pairs, cp, n, cols);
                        r0 += rows;
                    }
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        rows: usize,
        a: *const u32,
        b: *const u32,
        pairs: usize,
        c: *mut f32,
        ldc: usize,
        cols: usize,
    ) {
        macro_rules! go {
            ($($r:literal)*) => {
                match rows {
                    $($r => kernel::<$r>(a, b, pairs, c, ldc, cols),)*
                    _ => unreachable!(),
                }
            };
        }
        go!(1 2 3 4 5 6 7 8 9 10 11 12)
    }

    /// c[0..R, 0..cols] += a[0..R] · panel: a group of packed a (MR words a pair, R of them
    /// used), the packed panel of `pairs` pairs.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn kernel<const R: usize>(
        a: *const u32,
        b: *const u32,
        pairs: usize,
        c: *mut f32,
        ldc: usize,
        cols: usize,
    ) {
        let m0: __mmask16 = if cols >= 16 {
            0xffff
        } else {
            ((1u32 << cols) - 1) as u16
        };
        let m1: __mmask16 = if cols >= 32 {
            0xffff
        } else if cols > 16 {
            ((1u32 << (cols - 16)) - 1) as u16
        } else {
            0
        };
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for (r, ar) in acc.iter_mut().enumerate() {
            ar[0] = _mm512_maskz_loadu_ps(m0, c.add(r * ldc));
            ar[1] = _mm512_maskz_loadu_ps(m1, c.add(r * ldc + 16));
        }
        for q in 0..pairs {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(q * NR) as _));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(q * NR + 16) as _));
            for (r, ar) in acc.iter_mut().enumerate() {
                let av: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*a.add(q * MR + r) as i32));
                ar[0] = _mm512_dpbf16_ps(ar[0], av, b0);
                ar[1] = _mm512_dpbf16_ps(ar[1], av, b1);
            }
        }
        for (r, ar) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(c.add(r * ldc), m0, ar[0]);
            _mm512_mask_storeu_ps(c.add(r * ldc + 16), m1, ar[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let h = (i as u32 ^ seed).wrapping_mul(0x9E37_79B9).rotate_left(11);
                (h % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Both orientations, every level the CPU runs, ragged shapes (odd k, n not a multiple
    /// of 32, m not a multiple of the tile, k past one packed block), against an f64 sum.
    /// The weights are bf16 values; on the bf16 levels a is rounded to bf16 too, so the
    /// reference rounds it the same way there, and the bound is f32 accumulation error
    /// (k · 2⁻²⁴ per unit term, 1e-5 · k with room). Without rounding a, the widened path
    /// must match the exact products.
    #[test]
    fn every_level_and_orientation_match_the_reference() {
        for &(m, k, n) in &[
            (1, 1, 1),
            (13, 7, 33),
            (25, 300, 70),
            (40, 513, 97),
            (3, 64, 32),
            (5, 90, 64),
            (17, 1100, 48),
        ] {
            let a = data(m * k, 1);
            let w: Vec<bf16> = data(n * k, 2).iter().map(|&v| bf16::from_f32(v)).collect();
            let bias = data(n, 3);
            for level in super::super::available() {
                let rounds = level >= Level::Avx512Bf16;
                let av: Vec<f64> = a
                    .iter()
                    .map(|&v| {
                        if rounds {
                            bf16::from_f32(v).to_f64()
                        } else {
                            v as f64
                        }
                    })
                    .collect();
                for orient in [Orient::Transposed, Orient::Plain] {
                    let bw = |r: usize, j: usize| match orient {
                        Orient::Transposed => w[j * k + r].to_f64(),
                        Orient::Plain => w[r * n + j].to_f64(),
                    };
                    let mut c = vec![f32::NAN; m * n];
                    matmul(level, &a, m, k, &w, orient, n, Some(&bias), &mut c);
                    for i in 0..m {
                        for j in 0..n {
                            let want = bias[j] as f64
                                + (0..k).map(|r| av[i * k + r] * bw(r, j)).sum::<f64>();
                            let got = c[i * n + j] as f64;
                            assert!(
                                (got - want).abs() <= 1e-5 * k as f64,
                                "{level:?} {orient:?} {m}x{k}x{n} ({i},{j}): {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
