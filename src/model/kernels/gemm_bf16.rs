//! Products with a bf16 weight: `c = a · Wᵀ + bias` (a layer's forward) and `c = a · W`
//! (its input gradient), a in f32, c in f32.
//!
//! With AVX512-BF16, a is rounded to bf16 once and the products run on `vdpbf16ps` (two
//! bf16 products summed into each f32 lane, f32 accumulation), on panels of the weight:
//! - a training model's weights stay row-major (merges, saving and the input gradient read
//!   them so), and each call packs the panels it reads on the way;
//! - an inference model's layer weights are packed once, at load, in that same panel layout
//!   ([`Packed`], in place of the row-major copy): every row count reads them as they lie,
//!   one row (decode) included, streaming each panel from memory in order.
//!
//! A CPU without bf16 dot products widens blocks of the weight to f32 and runs the f32
//! matmul on them (so bf16 still halves the weight's memory there).
//!
//! Blocking: a is rounded and packed once per call, in groups of `MR` rows (one packing
//! serves several weights of the same input: [`matmul_many`]). The columns of c are split
//! over the thread pool in chunks of panels (`NR` = 32 columns); for each block of `KC` rows
//! of B, a thread takes one panel (pairs of rows interleaved as `vdpbf16ps` reads them) and
//! at once runs every group of a over it with an `MR × 32` register tile, while the panel is
//! in L1. The first block starts the tiles from the bias or zero, so c is never cleared.

use half::bf16;
use rayon::prelude::*;
use std::mem::MaybeUninit;

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

/// Columns per packed panel: two 16-lane registers.
const NR: usize = 32;

/// Where B comes from.
#[derive(Clone, Copy)]
pub enum B<'a> {
    /// W as stored, read as the orientation says and packed panel by panel on the way.
    W(&'a [bf16], Orient),
    /// W packed once ahead: `a · Wᵀ` reads it as it lies; `a · W` (a gradient through an
    /// inference model's weight, when training shares it) repacks it panel by panel.
    Packed(&'a Packed, Orient),
}

/// A weight W (n × k) packed once, ahead, in the layout the matmul reads for `a · Wᵀ`
/// (an inference model's layers): panel after panel of [`NR`] rows of W, each ⌈k / 2⌉ words
/// of NR pairs (W(j, 2q) | W(j, 2q + 1) << 16), zero past n and past an odd k. It takes the
/// place of the row-major weight (the same bytes, plus the pad of the last panel), and every
/// product reads it as it lies: many rows skip the per-call packing, one row streams it.
pub struct Packed {
    n: usize,
    k: usize,
    words: Vec<u32>,
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Packed({} × {} bf16)", self.n, self.k)
    }
}

impl Packed {
    /// W (n × k, row-major) packed, where `level` runs the bf16 matmul; None elsewhere
    /// (the widened path reads W as it is stored).
    pub fn new(level: Level, w: &[bf16], n: usize, k: usize) -> Option<Self> {
        assert!(w.len() >= n * k);
        #[cfg(target_arch = "x86_64")]
        if level >= Level::Avx512Bf16 && n > 0 && k > 0 {
            return Some(x86::pack_all(w, n, k));
        }
        let _ = (level, w);
        None
    }

    /// Rows of W (the outputs).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Columns of W (the inputs).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.words.len() * 4
    }

    /// W back in its row-major layout.
    pub fn unpack(&self) -> Vec<bf16> {
        let (n, k) = (self.n, self.k);
        let pairs = k.div_ceil(2);
        let mut w = vec![bf16::ZERO; n * k];
        for (j, row) in w.chunks_mut(k).enumerate() {
            let panel = &self.words[j / NR * pairs * NR..];
            for (r, v) in row.iter_mut().enumerate() {
                let word = panel[r / 2 * NR + j % NR];
                *v = bf16::from_bits((word >> (16 * (r % 2))) as u16);
            }
        }
        w
    }
}

/// One product of a shared `a` in [`matmul_many`]: `c (m × n) = a · B + bias`.
pub struct Job<'a> {
    pub b: B<'a>,
    pub n: usize,
    pub bias: Option<&'a [f32]>,
    /// m × n; every element is written, none read first (so it may start uninitialised)
    pub c: &'a mut [MaybeUninit<f32>],
}

/// `c (m × n) = a (m × k) · B + bias`, B as `b` says; c is overwritten.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    level: Level,
    a: &[f32],
    m: usize,
    k: usize,
    b: B<'_>,
    n: usize,
    bias: Option<&[f32]>,
    c: &mut [f32],
) {
    let c = &mut c[..m * n];
    // SAFETY: f32 and MaybeUninit<f32> share size and layout, and only initialised values
    // are written through the view (see `Job::c`)
    let c = unsafe { &mut *(c as *mut [f32] as *mut [MaybeUninit<f32>]) };
    matmul_many(level, a, m, k, &mut [Job { b, n, bias, c }])
}

/// Several products of the same `a (m × k)` (the query, key and value projections of one
/// input, or the gate and up projections): a is rounded and packed once, and the columns of
/// all the products share one pass over the thread pool.
pub fn matmul_many(level: Level, a: &[f32], m: usize, k: usize, jobs: &mut [Job<'_>]) {
    assert!(a.len() >= m * k);
    for j in jobs.iter() {
        match j.b {
            B::W(w, _) => assert!(w.len() >= j.n * k),
            B::Packed(p, Orient::Transposed) => assert!(p.n == j.n && p.k == k),
            B::Packed(p, Orient::Plain) => assert!(p.k == j.n && p.n == k),
        }
        assert!(j.c.len() >= m * j.n);
        assert!(j.bias.is_none_or(|b| b.len() >= j.n));
    }
    if m == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if level >= Level::Avx512Bf16 && k > 0 {
        return x86::matmul_many(a, m, k, jobs);
    }
    for j in jobs.iter_mut() {
        let (n, c) = (j.n, &mut j.c[..m * j.n]);
        if n == 0 {
            continue;
        }
        match j.bias {
            Some(b) => c.chunks_mut(n).for_each(|r| {
                r.iter_mut().zip(b).for_each(|(d, &v)| {
                    d.write(v);
                })
            }),
            None => c.iter_mut().for_each(|d| {
                d.write(0.0);
            }),
        }
        // SAFETY: every element was just written
        let c = unsafe { &mut *(c as *mut [MaybeUninit<f32>] as *mut [f32]) };
        if k > 0 {
            match j.b {
                B::W(w, orient) => widened(level, a, m, k, w, orient, n, c),
                B::Packed(p, orient) => widened(level, a, m, k, &p.unpack(), orient, n, c),
            }
        }
    }
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

    /// Rows of the register tile: 24 accumulators, two B registers, one broadcast.
    const MR: usize = 12;
    /// Rows of B (the reduction) per packed block; even. A packed panel (KC × NR bf16) fills
    /// the L1 cache; the tile's rows of a stream next to it.
    const KC: usize = 512;

    /// A raw pointer to c that worker threads write through, each to its own columns.
    #[derive(Clone, Copy)]
    struct Out(*mut f32);
    // SAFETY: every thread writes a disjoint set of columns of c (see `matmul_many`).
    unsafe impl Send for Out {}
    unsafe impl Sync for Out {}

    /// What a tile's accumulators start from.
    #[derive(Clone, Copy)]
    enum Init {
        /// c as it is (the blocks of k after the first)
        Load,
        Zero,
        /// the bias of the tile's columns (each row)
        Bias(*const f32),
    }

    /// B as the threads see it: W as bits, its packed words (`a · Wᵀ`), or a packed W
    /// read as B = W (words, W's columns).
    #[derive(Clone, Copy)]
    enum Src<'a> {
        W(&'a [u16], Orient),
        Packed(&'a [u32]),
        PackedPlain(&'a [u32], usize),
    }

    /// A job as the threads see it: c as a raw pointer.
    #[derive(Clone, Copy)]
    struct Target<'a> {
        out: Out,
        src: Src<'a>,
        n: usize,
        bias: Option<&'a [f32]>,
    }

    /// W (n × k) packed whole: every panel over all of k, in parallel.
    pub(super) fn pack_all(w: &[half::bf16], n: usize, k: usize) -> Packed {
        let pairs = k.div_ceil(2);
        let mut words = vec![0u32; n.div_ceil(NR) * pairs * NR];
        let w16 = bytemuck_u16(w);
        words
            .par_chunks_mut(pairs * NR)
            .enumerate()
            .for_each(|(p, dst)| pack(w16, Orient::Transposed, k, n, 0, pairs, p, dst));
        Packed { n, k, words }
    }

    pub(super) fn matmul_many(a: &[f32], m: usize, k: usize, jobs: &mut [Job<'_>]) {
        let ab = pack_a(a, m, k);
        let kp = k + (k & 1);
        let threads = rayon::current_num_threads().max(1);
        let panels: usize = jobs.iter().map(|j| j.n.div_ceil(NR)).sum();
        // many small chunks, so the threads end together; B is packed panel by panel, so
        // a chunk's size does not change how much packing is done
        let per = (panels / (threads * 8)).max(1);
        // the units of work: a job's panels p0..p1
        let mut chunks = Vec::new();
        for j in jobs.iter_mut() {
            let t = Target {
                out: Out(j.c.as_mut_ptr() as *mut f32),
                src: match j.b {
                    B::W(w, orient) => Src::W(bytemuck_u16(w), orient),
                    B::Packed(p, Orient::Transposed) => Src::Packed(&p.words),
                    B::Packed(p, Orient::Plain) => Src::PackedPlain(&p.words, p.k),
                },
                n: j.n,
                bias: j.bias,
            };
            let np = j.n.div_ceil(NR);
            for p0 in (0..np).step_by(per) {
                chunks.push((t, p0, (p0 + per).min(np)));
            }
        }
        let work = |&(t, p0, p1): &(Target<'_>, usize, usize)| {
            // SAFETY: the chunks of a job cover disjoint panels (columns) of its c, which
            // holds m × n; the bias (if any) holds n.
            unsafe { columns(&ab, kp, m, k, t.src, t.n, t.bias, p0, p1, t.out) }
        };
        if chunks.len() == 1 || threads == 1 {
            chunks.iter().for_each(work);
        } else {
            chunks.par_iter().with_max_len(1).for_each(work);
        }
    }

    /// a rounded to bf16, as words of two consecutive elements (the pad past an odd k is
    /// zero), laid out as the tile reads them: groups of MR rows, in each group pair after
    /// pair over all of k, MR words each (rows past m in the last group are zero and never
    /// read).
    fn pack_a(a: &[f32], m: usize, k: usize) -> Vec<u32> {
        let wpr = k.div_ceil(2);
        let groups = m.div_ceil(MR);
        let mut out = vec![0u32; groups * MR * wpr];
        let group = |(g, dst): (usize, &mut [u32])| {
            let rows = MR.min(m - g * MR);
            let mut tmp = [[0u32; 16]; MR];
            for c0 in (0..k).step_by(32) {
                let len = (k - c0).min(32);
                for (rr, t) in tmp.iter_mut().enumerate().take(rows) {
                    let src = &a[(g * MR + rr) * k + c0..][..len];
                    // SAFETY: this module runs only where AVX512-BF16 is present; t holds
                    // 16 words, ⌈len / 2⌉ of them written.
                    unsafe { round_pairs(src, t) };
                }
                let q0 = c0 / 2;
                for q in 0..len.div_ceil(2) {
                    let d = &mut dst[(q0 + q) * MR..][..MR];
                    for (rr, t) in tmp.iter().enumerate().take(rows) {
                        d[rr] = t[q];
                    }
                }
            }
        };
        if m * k < 1 << 16 {
            out.chunks_mut(MR * wpr).enumerate().for_each(group);
        } else {
            out.par_chunks_mut(MR * wpr).enumerate().for_each(group);
        }
        out
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

    /// Packs rows kc0..kc0 + 2·pairs of B, panel p, as words (B(2q, j) | B(2q+1, j) << 16),
    /// pair after pair, NR columns each, into `dst` (pairs · NR words, every one written).
    #[allow(clippy::too_many_arguments)]
    fn pack(
        w: &[u16],
        orient: Orient,
        k: usize,
        n: usize,
        kc0: usize,
        pairs: usize,
        p: usize,
        dst: &mut [u32],
    ) {
        let dst = &mut dst[..pairs * NR];
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

    /// Columns of panels p0..p1 of c = a · B + bias.
    ///
    /// # Safety
    /// c (through `out`) holds m × n elements and bias (if any) n; no other thread writes
    /// these columns.
    #[allow(clippy::too_many_arguments)]
    unsafe fn columns(
        ab: &[u32],
        kp: usize,
        m: usize,
        k: usize,
        src: Src<'_>,
        n: usize,
        bias: Option<&[f32]>,
        p0: usize,
        p1: usize,
        out: Out,
    ) {
        let mut buf = Vec::new();
        // words of packed a per group of MR rows
        let gw = MR * (kp / 2);
        for kc0 in (0..kp).step_by(KC) {
            let pairs = (kp - kc0).min(KC) / 2;
            for p in p0..p1 {
                // one panel at a time, packed just before its rows run over it (still in L1
                // when the tiles read it), or read where it lies when packed ahead
                let bp = match src {
                    Src::Packed(words) => words.as_ptr().add((p * kp + kc0) / 2 * NR),
                    Src::W(w, orient) => {
                        buf.resize(pairs * NR, 0);
                        pack(w, orient, k, n, kc0, pairs, p, &mut buf);
                        buf.as_ptr()
                    }
                    Src::PackedPlain(words, kw) => {
                        buf.resize(pairs * NR, 0);
                        pack_plain_from_packed(words, k, kw, kc0, pairs, p, &mut buf);
                        buf.as_ptr()
                    }
                };
                let j0 = p * NR;
                let cols = (n - j0).min(NR);
                let init = match (kc0, bias) {
                    (0, Some(b)) => Init::Bias(b.as_ptr().add(j0)),
                    (0, None) => Init::Zero,
                    _ => Init::Load,
                };
                for r0 in (0..m).step_by(MR) {
                    let rows = (m - r0).min(MR);
                    let ap = ab.as_ptr().add(r0 / MR * gw + kc0 / 2 * MR);
                    let cp = out.0.add(r0 * n + j0);
                    tile(rows, ap, bp, pairs, cp, n, cols, init);
                }
            }
        }
    }

    /// [`pack`] for B = W when W (nw × kw) is packed: rows kc0..kc0 + 2·pairs of B (rows
    /// of W), panel p (columns of W). Each packed word holds one row of W at two
    /// neighbouring columns, and the 32 rows of a packed panel at one pair of columns are
    /// 32 consecutive words: they are read in order and split into the two output columns.
    /// Into `dst` (pairs · NR words), as [`pack`].
    fn pack_plain_from_packed(
        words: &[u32],
        nw: usize,
        kw: usize,
        kc0: usize,
        pairs: usize,
        p: usize,
        dst: &mut [u32],
    ) {
        // zero where B has no rows (past nw) or columns (past kw)
        let buf = &mut dst[..pairs * NR];
        buf.fill(0);
        let wp = kw.div_ceil(2);
        let jp0 = p * NR / 2;
        let r_end = (kc0 + 2 * pairs).min(nw);
        let mut r0 = kc0;
        while r0 < r_end {
            // the rows of W in one packed panel
            let panel = r0 / NR;
            let r1 = ((panel + 1) * NR).min(r_end);
            for t in 0..(NR / 2).min(wp.saturating_sub(jp0)) {
                let src = &words[(panel * wp + jp0 + t) * NR..][..NR];
                for r in r0..r1 {
                    let w = src[r % NR];
                    let (q, shift) = ((r - kc0) / 2, 16 * ((r - kc0) % 2));
                    // columns 2t (low half) and 2t + 1 (high half, zero past an odd kw)
                    buf[q * NR + 2 * t] |= (w & 0xffff) << shift;
                    buf[q * NR + 2 * t + 1] |= (w >> 16) << shift;
                }
            }
            r0 = r1;
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
        init: Init,
    ) {
        macro_rules! go {
            ($($r:literal)*) => {
                match rows {
                    $($r => kernel::<$r>(a, b, pairs, c, ldc, cols, init),)*
                    _ => unreachable!(),
                }
            };
        }
        go!(1 2 3 4 5 6 7 8 9 10 11 12)
    }

    /// c[0..R, 0..cols] = init + a[0..R] · panel: a group of packed a (MR words a pair, R of
    /// them used), the packed panel of `pairs` pairs.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn kernel<const R: usize>(
        a: *const u32,
        b: *const u32,
        pairs: usize,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        init: Init,
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
        match init {
            Init::Load => {
                for (r, ar) in acc.iter_mut().enumerate() {
                    ar[0] = _mm512_maskz_loadu_ps(m0, c.add(r * ldc));
                    ar[1] = _mm512_maskz_loadu_ps(m1, c.add(r * ldc + 16));
                }
            }
            Init::Zero => {}
            Init::Bias(bias) => {
                let b0 = _mm512_maskz_loadu_ps(m0, bias);
                let b1 = _mm512_maskz_loadu_ps(m1, bias.add(16));
                for ar in acc.iter_mut() {
                    *ar = [b0, b1];
                }
            }
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
                    matmul(level, &a, m, k, B::W(&w, orient), n, Some(&bias), &mut c);
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
    /// A weight packed ahead gives the same bits as the same weight packed on the way, at
    /// every row count (one row, as decode runs it, included) and on ragged shapes (odd k,
    /// n not a multiple of 32, k past one block), on every level (a level without bf16 dot
    /// products reads the packed weight back), and unpacks to itself; read as B = W (an
    /// input gradient), the same bits as the row-major W.
    #[test]
    fn packed_ahead_matches_packed_on_the_way() {
        let levels = super::super::available();
        let top = *levels.iter().max().unwrap();
        for &(k, n) in &[(7usize, 33usize), (513, 97), (1100, 48), (64, 32)] {
            let w: Vec<bf16> = data(n * k, 7).iter().map(|&v| bf16::from_f32(v)).collect();
            let bias = data(n, 8);
            let Some(p) = Packed::new(top, &w, n, k) else {
                assert!(top < Level::Avx512Bf16, "no packing at {top:?}");
                continue;
            };
            assert_eq!((p.n(), p.k()), (n, k));
            assert_eq!(p.unpack(), w, "{n}x{k}");
            for &level in &levels {
                for m in [1, 2, 12, 13, 40] {
                    let a = data(m * k, 9);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    // a (m × k) · Wᵀ, and the input gradient dy (m × n) · W
                    let dy = data(m * n, 11);
                    for (x, orient, kk, nn, bias) in [
                        (&a, Orient::Transposed, k, n, Some(&bias[..])),
                        (&dy, Orient::Plain, n, k, None),
                    ] {
                        let mut want = vec![f32::NAN; m * nn];
                        matmul(level, x, m, kk, B::W(&w, orient), nn, bias, &mut want);
                        let mut got = vec![f32::NAN; m * nn];
                        matmul(level, x, m, kk, B::Packed(&p, orient), nn, bias, &mut got);
                        assert_eq!(
                            bits(&got),
                            bits(&want),
                            "{level:?} {orient:?} {m}x{kk}x{nn}"
                        );
                    }
                }
            }
        }
    }

    /// Several products of one a in one call give exactly what each gives alone (the same
    /// sums in the same order), with and without bias, on every level.
    #[test]
    fn many_products_match_one_by_one() {
        let (m, k) = (29, 530);
        let a = data(m * k, 4);
        let specs = [(33usize, true), (128, false), (7, true)];
        let ws: Vec<Vec<bf16>> = specs
            .iter()
            .enumerate()
            .map(|(i, &(n, _))| {
                let v = data(n * k, 10 + i as u32);
                v.iter().map(|&x| bf16::from_f32(x)).collect()
            })
            .collect();
        let bs: Vec<Vec<f32>> = specs
            .iter()
            .enumerate()
            .map(|(i, &(n, _))| data(n, 20 + i as u32))
            .collect();
        for level in super::super::available() {
            let alone: Vec<Vec<f32>> = specs
                .iter()
                .enumerate()
                .map(|(i, &(n, with_bias))| {
                    let mut c = vec![f32::NAN; m * n];
                    let b = with_bias.then_some(&bs[i][..]);
                    let wb = B::W(&ws[i], Orient::Transposed);
                    matmul(level, &a, m, k, wb, n, b, &mut c);
                    c
                })
                .collect();
            // outputs never initialised, as `linear::forward_many` hands them over
            let mut outs: Vec<Vec<f32>> = specs
                .iter()
                .map(|&(n, _)| Vec::with_capacity(m * n))
                .collect();
            let mut jobs: Vec<Job<'_>> = outs
                .iter_mut()
                .enumerate()
                .map(|(i, c)| Job {
                    b: B::W(&ws[i], Orient::Transposed),
                    n: specs[i].0,
                    bias: specs[i].1.then_some(&bs[i][..]),
                    c: &mut c.spare_capacity_mut()[..m * specs[i].0],
                })
                .collect();
            matmul_many(level, &a, m, k, &mut jobs);
            drop(jobs);
            for (c, &(n, _)) in outs.iter_mut().zip(&specs) {
                // SAFETY: matmul_many writes all m × n elements
                unsafe { c.set_len(m * n) };
            }
            for (got, want) in outs.iter().zip(&alone) {
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(got), bits(want), "{level:?}");
            }
        }
    }
}
