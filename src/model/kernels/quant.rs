//! GGUF block-quantized weights: few-row products (decode on a quantized model) and the
//! dequantization many-row products use, both split over the thread pool.
//!
//! x is quantized to the weight type's dot-product partner (Q8_0 or Q8_K) once per row, as
//! llama.cpp and Candle do, then every weight row is dotted with it. Q5_0 (most tensors of
//! a Q4_K_M file whose rows are no multiple of 256) has a dot of our own (AVX2 and portable;
//! Candle's is scalar); the other types use Candle's per-type dots. The blocks are read
//! where Candle keeps them, in the file's layout.

use candle_core::quantized::k_quants::{self as kq, GgmlType};
use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;
use rayon::prelude::*;

use super::{level, Level};

/// `y (m × n) = x (m × k) · Wᵀ` for a quantized W (n × k); None for a type not handled here
/// (f32/f16/bf16 tensors, Q8_1, Q8_K).
pub fn gemv(x: &[f32], m: usize, q: &QTensor, y: &mut [f32]) -> candle_core::Result<Option<()>> {
    let (n, k) = q.shape().dims2()?;
    assert!(x.len() >= m * k && y.len() >= m * n);
    let data = q.data()?;
    let lv = level();
    macro_rules! generic {
        ($t:ty) => {
            rows::<$t>(lv, &data, x, m, k, n, y)
        };
    }
    match q.dtype() {
        GgmlDType::Q4_0 => generic!(kq::BlockQ4_0),
        GgmlDType::Q4_1 => generic!(kq::BlockQ4_1),
        GgmlDType::Q5_0 => generic!(kq::BlockQ5_0),
        GgmlDType::Q5_1 => generic!(kq::BlockQ5_1),
        GgmlDType::Q8_0 => generic!(kq::BlockQ8_0),
        GgmlDType::Q2K => generic!(kq::BlockQ2K),
        GgmlDType::Q3K => generic!(kq::BlockQ3K),
        GgmlDType::Q4K => generic!(kq::BlockQ4K),
        GgmlDType::Q5K => generic!(kq::BlockQ5K),
        GgmlDType::Q6K => generic!(kq::BlockQ6K),
        _ => return Ok(None),
    }
    Ok(Some(()))
}

/// The weight as an f32 tensor (n, k), dequantized over the thread pool; None for types not
/// handled here.
pub fn dequantize(q: &QTensor) -> candle_core::Result<Option<candle_core::Tensor>> {
    let (n, k) = q.shape().dims2()?;
    let data = q.data()?;
    let mut out = vec![0f32; n * k];
    macro_rules! go {
        ($t:ty) => {{
            let blocks = as_blocks::<$t>(&data, n * k);
            let per = k / <$t>::BLCK_SIZE;
            // chunks of whole rows, a few per thread
            let rows_per = n.div_ceil(rayon::current_num_threads() * 4).max(1);
            out.par_chunks_mut(rows_per * k)
                .zip(blocks.par_chunks(rows_per * per))
                .for_each(|(o, b)| <$t>::to_float(b, o));
        }};
    }
    match q.dtype() {
        GgmlDType::Q4_0 => go!(kq::BlockQ4_0),
        GgmlDType::Q4_1 => go!(kq::BlockQ4_1),
        GgmlDType::Q5_0 => go!(kq::BlockQ5_0),
        GgmlDType::Q5_1 => go!(kq::BlockQ5_1),
        GgmlDType::Q8_0 => go!(kq::BlockQ8_0),
        GgmlDType::Q2K => go!(kq::BlockQ2K),
        GgmlDType::Q3K => go!(kq::BlockQ3K),
        GgmlDType::Q4K => go!(kq::BlockQ4K),
        GgmlDType::Q5K => go!(kq::BlockQ5K),
        GgmlDType::Q6K => go!(kq::BlockQ6K),
        _ => return Ok(None),
    }
    Ok(Some(candle_core::Tensor::from_vec(
        out,
        (n, k),
        &candle_core::Device::Cpu,
    )?))
}

/// The blocks of `len` weights of type T in Candle's storage bytes.
fn as_blocks<T: GgmlType>(data: &[u8], len: usize) -> &[T] {
    let nb = len / T::BLCK_SIZE;
    assert!(len.is_multiple_of(T::BLCK_SIZE) && data.len() >= nb * std::mem::size_of::<T>());
    assert!((data.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()));
    // SAFETY: Candle stores a tensor of type T as a Vec<T> (its bytes are what `data` lends);
    // the length and alignment were checked; the block types are plain `repr(C)` data.
    unsafe { std::slice::from_raw_parts(data.as_ptr() as *const T, nb) }
}

/// A raw pointer to y that worker threads write through, each to its own columns.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: every thread writes a disjoint set of columns of y (see `rows`).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// Element `i` (a method, so closures capture the whole `Out`, not its raw pointer).
    fn at(self, i: usize) -> *mut f32 {
        // SAFETY: callers stay within y, whose length `rows` checked.
        unsafe { self.0.add(i) }
    }
}

fn rows<T: GgmlType + 'static>(
    lv: Level,
    data: &[u8],
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
    y: &mut [f32],
) {
    let w = as_blocks::<T>(data, n * k);
    let per = k / T::BLCK_SIZE;
    let xq: Vec<Vec<T::VecDotType>> = (0..m)
        .map(|i| {
            let mut b = vec![T::VecDotType::zeros(); k / T::VecDotType::BLCK_SIZE];
            T::VecDotType::from_float(&x[i * k..(i + 1) * k], &mut b);
            b
        })
        .collect();
    let q5 = std::any::TypeId::of::<T>() == std::any::TypeId::of::<kq::BlockQ5_0>();
    let q8 = std::any::TypeId::of::<T>() == std::any::TypeId::of::<kq::BlockQ8_0>();
    // the VNNI dots' x: Σ of each 4 values times the weight's offset (16 for Q5_0, whose
    // values are stored + 16; 128 for Q8_0, whose signed values are shifted into u8)
    let shift = match (q5, q8) {
        _ if !vnni(lv) => None,
        (true, _) => Some(4),
        (_, true) => Some(7),
        _ => None,
    };
    let prepared: Vec<Prepared> = match shift {
        Some(sh) => xq
            .iter()
            // SAFETY: T is Q5_0 or Q8_0, whose partner is BlockQ8_0 (TypeId above)
            .map(|xr| unsafe {
                Prepared::new(
                    std::slice::from_raw_parts(xr.as_ptr() as *const kq::BlockQ8_0, per),
                    sh,
                )
            })
            .collect(),
        None => Vec::new(),
    };
    let out = Out(y.as_mut_ptr());
    let chunk = n
        .div_ceil(rayon::current_num_threads() * 4)
        .max(64 * 1024 / (per * std::mem::size_of::<T>()).max(1))
        .max(1);
    let work = |j0: usize| {
        for j in j0..(j0 + chunk).min(n) {
            let wr = &w[j * per..(j + 1) * per];
            for (i, xr) in xq.iter().enumerate() {
                let v = if let Some(px) = prepared.get(i) {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `prepared` is filled only at a VNNI-capable level (the CPU has
                    // AVX-512 F/BW/VNNI and F16C), for T = Q5_0 or Q8_0 (TypeId above)
                    unsafe {
                        if q5 {
                            x86::dot_q5_0_vnni(
                                std::slice::from_raw_parts(
                                    wr.as_ptr() as *const kq::BlockQ5_0,
                                    per,
                                ),
                                px,
                            )
                        } else {
                            x86::dot_q8_0_vnni(
                                std::slice::from_raw_parts(
                                    wr.as_ptr() as *const kq::BlockQ8_0,
                                    per,
                                ),
                                px,
                            )
                        }
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    unreachable!("no VNNI level off x86 ({px:p})")
                } else if q5 {
                    // SAFETY: T is BlockQ5_0 and so its partner BlockQ8_0 (TypeId above)
                    let (wr, xr) = unsafe {
                        (
                            std::slice::from_raw_parts(wr.as_ptr() as *const kq::BlockQ5_0, per),
                            std::slice::from_raw_parts(xr.as_ptr() as *const kq::BlockQ8_0, per),
                        )
                    };
                    dot_q5_0(lv, wr, xr)
                } else {
                    T::vec_dot(k, wr, xr)
                };
                // SAFETY: column j of row i is written by this chunk only; y holds m × n.
                unsafe { *out.at(i * n + j) = v };
            }
        }
    };
    (0..n).into_par_iter().step_by(chunk).for_each(work);
}

/// Whether the quantized dots take the VNNI path at level `lv`.
fn vnni(lv: Level) -> bool {
    let f = super::features();
    cfg!(target_arch = "x86_64") && lv >= Level::Avx512 && f.avx512vnni && f.avx512bw
}

/// One row of x (already rounded to Q8_0 blocks) as the VNNI dots read it: the values back
/// to back, each block's scale once per 32-bit lane, and per lane (4 values) the correction
/// for the weights' unsigned offset, `-(Σ x) << shift`, which `vpdpbusd` starts from.
pub struct Prepared {
    /// the last Q8_0 block (an odd last block is dotted by the plain code)
    last: Option<kq::BlockQ8_0>,
    xs: Vec<i8>,
    neg: Vec<i32>,
    dx: Vec<f32>,
}

impl Prepared {
    pub fn new(x: &[kq::BlockQ8_0], shift: u32) -> Self {
        let mut p = Prepared {
            last: x.last().cloned(),
            xs: Vec::with_capacity(x.len() * 32),
            neg: Vec::with_capacity(x.len() * 8),
            dx: Vec::with_capacity(x.len() * 8),
        };
        for b in x {
            let (d, q) = q8_fields(b);
            p.xs.extend_from_slice(q);
            p.neg.extend(
                q.chunks(4)
                    .map(|c| -(c.iter().map(|&v| v as i32).sum::<i32>() << shift)),
            );
            p.dx.extend([d; 8]);
        }
        p
    }
}

/// Raw fields of a Q5_0 block (22 bytes: f16 scale, 32 high bits, 16 bytes of nibbles) and a
/// Q8_0 block (34 bytes: f16 scale, 32 signed bytes), read from their `repr(C)` layout.
#[inline(always)]
fn q5_fields(b: &kq::BlockQ5_0) -> (f32, u32, &[u8; 16]) {
    // SAFETY: BlockQ5_0 is repr(C) { d: f16, qh: [u8; 4], qs: [u8; 16] }, 22 bytes.
    let p = b as *const kq::BlockQ5_0 as *const u8;
    unsafe {
        let d = f16::from_bits(u16::from_le_bytes([*p, *p.add(1)])).to_f32();
        let qh = u32::from_le_bytes([*p.add(2), *p.add(3), *p.add(4), *p.add(5)]);
        (d, qh, &*(p.add(6) as *const [u8; 16]))
    }
}

#[inline(always)]
fn q8_fields(b: &kq::BlockQ8_0) -> (f32, &[i8; 32]) {
    // SAFETY: BlockQ8_0 is repr(C) { d: f16, qs: [i8; 32] }, 34 bytes.
    let p = b as *const kq::BlockQ8_0 as *const u8;
    unsafe {
        let d = f16::from_bits(u16::from_le_bytes([*p, *p.add(1)])).to_f32();
        (d, &*(p.add(2) as *const [i8; 32]))
    }
}

/// Σ over blocks of d_w · d_x · Σ (q5 - 16) · q8.
pub fn dot_q5_0(lv: Level, w: &[kq::BlockQ5_0], x: &[kq::BlockQ8_0]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if lv >= Level::Avx2 {
        // SAFETY: the level never exceeds what the CPU reported (AVX2 and FMA).
        return unsafe { x86::dot_q5_0(w, x) };
    }
    let _ = lv;
    dot_q5_0_portable(w, x)
}

/// The plain dot: the reference the SIMD one is tested against.
pub fn dot_q5_0_portable(w: &[kq::BlockQ5_0], x: &[kq::BlockQ8_0]) -> f32 {
    let mut s = 0f32;
    for (wb, xb) in w.iter().zip(x) {
        let (dw, qh, qs) = q5_fields(wb);
        let (dx, xq) = q8_fields(xb);
        let mut si = 0i32;
        for j in 0..16 {
            let lo = (qs[j] & 0x0F) as i32 | (((qh >> j) & 1) << 4) as i32;
            let hi = (qs[j] >> 4) as i32 | (((qh >> (j + 16)) & 1) << 4) as i32;
            si += (lo - 16) * xq[j] as i32 + (hi - 16) * xq[j + 16] as i32;
        }
        s += dw * dx * si as f32;
    }
    s
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// The 32 high bits of a block as bytes: 0x10 where the bit is set, else 0.
    #[inline(always)]
    unsafe fn high_bits(qh: u32) -> __m256i {
        // byte j takes byte j/8 of qh, then keeps bit j%8
        let v = _mm256_set1_epi32(qh as i32);
        let shuf = _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3,
            3, 3, 3,
        );
        let bytes = _mm256_shuffle_epi8(v, shuf);
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
        _mm256_and_si256(set, _mm256_set1_epi8(0x10))
    }

    /// Both scales of a pair of blocks (f16 at `a` and `b`) spread over 16 lanes: the first
    /// block's in lanes 0-7, the second's in 8-15.
    #[inline(always)]
    unsafe fn pair_scales(a: *const u8, b: *const u8, spread: __m512i) -> __m512 {
        let da = (a as *const u16).read_unaligned() as u32;
        let db = (b as *const u16).read_unaligned() as u32;
        let d = _mm_cvtph_ps(_mm_cvtsi32_si128((da | db << 16) as i32));
        _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(d))
    }

    /// acc + the pair i of blocks (weights `wu` as unsigned bytes, scales at `a` and `b`)
    /// · x's pair i: one `vpdpbusd` from x's correction, then both blocks' scales.
    #[inline(always)]
    unsafe fn pair_dot(
        acc: __m512,
        wu: __m512i,
        x: &Prepared,
        i: usize,
        a: *const u8,
        b: *const u8,
    ) -> __m512 {
        let spread = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        let xv = _mm512_loadu_si512(x.xs.as_ptr().add(64 * i) as *const _);
        let c = _mm512_loadu_si512(x.neg.as_ptr().add(16 * i) as *const _);
        let s = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(c, wu, xv));
        let dx = _mm512_loadu_ps(x.dx.as_ptr().add(16 * i));
        _mm512_fmadd_ps(_mm512_mul_ps(s, pair_scales(a, b, spread)), dx, acc)
    }

    /// Q5_0 weights · prepared x, two blocks an iteration: the 5-bit values (+16, so
    /// unsigned) against x's signed bytes in one `vpdpbusd` that starts from the -16·Σx
    /// correction, then each block's scales.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    pub(super) unsafe fn dot_q5_0_vnni(w: &[kq::BlockQ5_0], x: &Prepared) -> f32 {
        const B: usize = std::mem::size_of::<kq::BlockQ5_0>();
        let nb = w.len();
        debug_assert!(B == 22 && x.xs.len() == nb * 32);
        let p = w.as_ptr() as *const u8;
        let low = _mm512_set1_epi8(0x0F);
        let sixteen = _mm512_set1_epi8(0x10);
        // 128-bit lanes 1 and 3 hold the high nibbles
        let shifts = _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0);
        let mut acc = _mm512_setzero_ps();
        for i in 0..nb / 2 {
            let a = p.add(2 * i * B);
            let b = a.add(B);
            let qa = _mm_loadu_si128(a.add(6) as *const __m128i);
            let qb = _mm_loadu_si128(b.add(6) as *const __m128i);
            let v = _mm512_inserti32x4::<1>(_mm512_castsi128_si512(qa), qa);
            let v = _mm512_inserti32x4::<3>(_mm512_inserti32x4::<2>(v, qb), qb);
            let nib = _mm512_and_si512(_mm512_srlv_epi64(v, shifts), low);
            let qha = (a.add(2) as *const u32).read_unaligned() as u64;
            let qhb = (b.add(2) as *const u32).read_unaligned() as u64;
            let wq = _mm512_or_si512(nib, _mm512_maskz_mov_epi8(qha | qhb << 32, sixteen));
            acc = pair_dot(acc, wq, x, i, a, b);
        }
        let mut sum = _mm512_reduce_add_ps(acc);
        if nb % 2 == 1 {
            sum += dot_q5_0_portable(&w[nb - 1..], x.last.as_slice());
        }
        sum
    }

    /// Q8_0 weights · prepared x, two blocks an iteration: the signed weights moved to
    /// unsigned (+128, an xor of the sign bit) in one `vpdpbusd` that starts from the
    /// -128·Σx correction, then each block's scales.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    pub(super) unsafe fn dot_q8_0_vnni(w: &[kq::BlockQ8_0], x: &Prepared) -> f32 {
        const B: usize = std::mem::size_of::<kq::BlockQ8_0>();
        let nb = w.len();
        debug_assert!(B == 34 && x.xs.len() == nb * 32);
        let p = w.as_ptr() as *const u8;
        let sign = _mm512_set1_epi8(-128);
        let mut acc = _mm512_setzero_ps();
        for i in 0..nb / 2 {
            let a = p.add(2 * i * B);
            let b = a.add(B);
            let wa = _mm256_loadu_si256(a.add(2) as *const __m256i);
            let wb = _mm256_loadu_si256(b.add(2) as *const __m256i);
            let wv = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(wa), wb);
            acc = pair_dot(acc, _mm512_xor_si512(wv, sign), x, i, a, b);
        }
        let mut sum = _mm512_reduce_add_ps(acc);
        if nb % 2 == 1 {
            sum += kq::BlockQ8_0::vec_dot(32, &w[nb - 1..], x.last.as_slice());
        }
        sum
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_q5_0(w: &[kq::BlockQ5_0], x: &[kq::BlockQ8_0]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let low = _mm_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let sixteen = _mm256_set1_epi8(16);
        for (wb, xb) in w.iter().zip(x) {
            let (dw, qh, qs) = q5_fields(wb);
            let (dx, xq) = q8_fields(xb);
            let q = _mm_loadu_si128(qs.as_ptr() as *const __m128i);
            // weights 0..15 are the low nibbles, 16..31 the high ones
            let nib = _mm256_set_m128i(
                _mm_and_si128(_mm_srli_epi16(q, 4), low),
                _mm_and_si128(q, low),
            );
            let wq = _mm256_or_si256(nib, high_bits(qh)); // 0..31, the value + 16
            let xv = _mm256_loadu_si256(xq.as_ptr() as *const __m256i);
            // Σ (w - 16)·x = Σ w·x - 16 Σ x; both in i16 pairs (|·| ≤ 2·31·128), then i32
            let wx = _mm256_maddubs_epi16(wq, xv);
            let sx = _mm256_maddubs_epi16(sixteen, xv);
            let s = _mm256_madd_epi16(_mm256_sub_epi16(wx, sx), ones);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(dw * dx), _mm256_cvtepi32_ps(s), acc);
        }
        let h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{available, with_level};
    use super::*;
    use candle_core::{Device, Tensor};

    fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let h = (i as u32 ^ seed).wrapping_mul(0x9E37_79B9).rotate_left(7);
                (h % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Every quantized type a GGUF model here uses, at every level (so the VNNI dots as well
    /// where the CPU has them), few rows: against the
    /// dequantized weights times the Q8-rounded x in f64 (what the dots compute exactly, up to
    /// f32 accumulation: 1e-4 of Σ|w·x|), and the dequantization against Candle's own.
    #[test]
    fn gemv_and_dequantize_match_candle() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        for dt in [
            GgmlDType::Q5_0,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
            GgmlDType::Q4_0,
        ] {
            // 544 = 17 blocks of 32: the odd block the paired dots leave to the plain code
            let ks: &[usize] = match dt {
                GgmlDType::Q4K | GgmlDType::Q6K => &[512],
                _ => &[512, 544],
            };
            for &k in ks {
                let n = 37;
                let w = Tensor::from_vec(data(n * k, 1), (n, k), &dev)?;
                let q = QTensor::quantize(&w, dt)?;
                let wd = q.dequantize(&dev)?;
                let ours = dequantize(&q)?.expect("a type handled here");
                assert_eq!(
                    ours.to_vec2::<f32>()?,
                    wd.to_vec2::<f32>()?,
                    "{dt:?} dequantize"
                );
                let wd: Vec<f32> = wd.flatten_all()?.to_vec1()?;
                for m in [1, 3] {
                    let x = data(m * k, 2);
                    // x as the dots see it: rounded to the partner type
                    let xr = Tensor::from_vec(x.clone(), (m, k), &dev)?;
                    let partner = if matches!(dt, GgmlDType::Q4K | GgmlDType::Q6K) {
                        GgmlDType::Q8K
                    } else {
                        GgmlDType::Q8_0
                    };
                    let xr: Vec<f32> = QTensor::quantize(&xr, partner)?
                        .dequantize(&dev)?
                        .flatten_all()?
                        .to_vec1()?;
                    for l in available() {
                        let mut y = vec![f32::NAN; m * n];
                        with_level(l, || gemv(&x, m, &q, &mut y))?.expect("handled");
                        for i in 0..m {
                            for j in 0..n {
                                let (mut s, mut mag) = (0f64, 0f64);
                                for c in 0..k {
                                    let p = xr[i * k + c] as f64 * wd[j * k + c] as f64;
                                    s += p;
                                    mag += p.abs();
                                }
                                let got = y[i * n + j] as f64;
                                assert!(
                                    (got - s).abs() <= 1e-4 * mag + 1e-6,
                                    "{dt:?} k {k} {l:?} ({i},{j}): {got} vs {s}"
                                );
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
