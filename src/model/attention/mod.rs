//! Fused causal attention on the CPU: `softmax(scale · q kᵀ + mask) · v` in one op, for
//! inference and training.
//!
//! Why: the composed form materialises the score matrix several times per layer (scores,
//! scaled, masked, exp, normalised), computes `exp` of every masked entry, and in training
//! keeps all of those for the backward pass (at batch 4 × 512 tokens that is gigabytes).
//! This op keeps nothing: the mask is described by positions and per-token validity, the
//! scores live in one scratch buffer per head while it runs, and the backward pass
//! recomputes them from q and k (as flash attention does).
//!
//! Layout (grouped-query attention folded into rows, as the model passes it):
//! q (b, n_kv, rep·s, d), k and v (b, n_kv, t, d), output like q. Query row `r` of a head is
//! new token `i = r % s`, at absolute key index `past + i`.
//!
//! What a query sees is described by blocks: a block is a run of new tokens and the key
//! ranges they may look at; within them a query sees key `j` when `j <= past + i` and key `j`
//! of its batch row is a real token. Only those ranges are multiplied, so
//! - a long causal prompt is cut into blocks of rows that skip the keys after them;
//! - packed sequences (several samples in one row, no padding) see only their own tokens
//!   and, when they share a cached prompt prefix, that prefix.

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;
use std::sync::Arc;

pub(crate) use super::kernels::sgemm::{mm, parallelism_for};

/// Rows of queries per block of a causal prompt.
pub const QUERY_BLOCK: usize = 128;

/// Query rows `q0..q1` (the first at absolute key index `at`, the next ones after it) and
/// the key ranges they may look at.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub q0: usize,
    pub q1: usize,
    pub at: usize,
    pub keys: Vec<(usize, usize)>,
}

/// Which keys each query may see.
#[derive(Debug, Clone)]
pub struct AttnMask {
    pub batch: usize,
    /// new tokens per row
    pub s: usize,
    /// cached tokens before them
    pub past: usize,
    /// keys: cached and new tokens (past + s, unless only some queries were kept)
    pub t: usize,
    /// (batch, t): true for a real token, false for padding
    pub valid: Arc<Vec<bool>>,
    /// whether any entry of `valid` is false
    pub any_pad: bool,
    /// the same for every batch row and head
    pub blocks: Arc<Vec<Block>>,
}

impl AttnMask {
    /// Causal attention over `past` cached and `s` new tokens, in blocks of `block` queries.
    pub fn causal(batch: usize, s: usize, past: usize, valid: Vec<bool>, block: usize) -> Self {
        let block = block.max(1);
        let blocks = (0..s)
            .step_by(block)
            .map(|q0| {
                let q1 = (q0 + block).min(s);
                Block {
                    q0,
                    q1,
                    at: past + q0,
                    keys: vec![(0, past + q1)],
                }
            })
            .collect();
        Self::with_blocks(batch, s, past, valid, blocks)
    }

    /// One row holding sequences of `lens` tokens back to back, each after the same `past`
    /// cached tokens and `shared` new tokens at the start of the row (a prompt prefix they
    /// all continue; 0 for none), each seeing that prefix and itself.
    pub fn packed(past: usize, shared: usize, lens: &[usize]) -> Self {
        let mut blocks = Vec::with_capacity(lens.len() + 1);
        let pre = past + shared;
        if shared > 0 {
            blocks.push(Block {
                q0: 0,
                q1: shared,
                at: past,
                keys: vec![(0, pre)],
            });
        }
        let mut o = shared;
        for &n in lens.iter().filter(|&&n| n > 0) {
            let mut keys = Vec::with_capacity(2);
            if pre > 0 {
                keys.push((0, pre));
            }
            keys.push((past + o, past + o + n));
            blocks.push(Block {
                q0: o,
                q1: o + n,
                at: past + o,
                keys,
            });
            o += n;
        }
        Self::with_blocks(1, o, past, vec![true; past + o], blocks)
    }

    /// The same keys, seen only by the queries at absolute indices `at[k]` (one block
    /// each, in this order): the rows a model's last layer needs when only some outputs
    /// are read (the last token of each row or of each packed sequence).
    pub fn only(&self, at: &[usize]) -> Self {
        let blocks = at
            .iter()
            .enumerate()
            .map(|(k, &a)| {
                let old = self
                    .blocks
                    .iter()
                    .find(|b| a >= b.at && a < b.at + (b.q1 - b.q0))
                    .expect("a query of the mask");
                Block {
                    q0: k,
                    q1: k + 1,
                    at: a,
                    keys: old.keys.clone(),
                }
            })
            .collect();
        Self {
            batch: self.batch,
            s: at.len(),
            past: self.past,
            t: self.t,
            valid: self.valid.clone(),
            any_pad: self.any_pad,
            blocks: Arc::new(blocks),
        }
    }

    fn with_blocks(
        batch: usize,
        s: usize,
        past: usize,
        valid: Vec<bool>,
        blocks: Vec<Block>,
    ) -> Self {
        debug_assert_eq!(valid.len(), batch * (past + s));
        let any_pad = valid.iter().any(|v| !v);
        Self {
            batch,
            s,
            past,
            t: past + s,
            valid: Arc::new(valid),
            any_pad,
            blocks: Arc::new(blocks),
        }
    }
}

/// The op: q, k, v as described in the module docs.
pub struct FusedAttention {
    pub mask: AttnMask,
    pub n_kv: usize,
    pub rep: usize,
    pub head_dim: usize,
    pub scale: f64,
}

/// `softmax(scale · q kᵀ + mask) · v`; q (b, n_kv, rep·s, d), k/v (b, n_kv, t, d).
/// f32 and f64 run natively; other dtypes are computed in f32.
pub fn fused_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttnMask,
    rep: usize,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let dt = q.dtype();
    let cdt = if dt == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let (_, n_kv, _, d) = q.dims4()?;
    let op = FusedAttention {
        mask: mask.clone(),
        n_kv,
        rep,
        head_dim: d,
        scale,
    };
    let q = q.to_dtype(cdt)?.contiguous()?;
    let k = head_strided(k.to_dtype(cdt)?)?;
    let v = head_strided(v.to_dtype(cdt)?)?;
    q.apply_op3_arc(&k, &v, Arc::new(Box::new(op)))?
        .to_dtype(dt)
}

/// `t` unchanged when each head's rows are contiguous and heads are evenly spaced (a view of
/// a preallocated KV cache), else a contiguous copy.
fn head_strided(t: Tensor) -> candle_core::Result<Tensor> {
    if kv_rows(t.layout()).is_some() {
        Ok(t)
    } else {
        t.contiguous()
    }
}

/// For k or v (b, n_kv, t, d) whose heads are `tk ≥ t` rows apart and rows contiguous (a
/// contiguous tensor, or the first `t` rows of a preallocated cache): the element range
/// from its first element to the end of its last head, and `tk`.
fn kv_rows(l: &Layout) -> Option<(usize, usize, usize)> {
    let dims = l.dims();
    let st = l.stride();
    if dims.len() != 4 {
        return None;
    }
    let (b, h, t, d) = (dims[0], dims[1], dims[2], dims[3]);
    if st[3] != 1 && d > 1 || st[2] != d && t > 1 {
        return None;
    }
    let hs = st[1];
    if !hs.is_multiple_of(d.max(1)) || hs < t * d || (b > 1 && st[0] != h * hs) {
        return None;
    }
    let tk = if h > 1 || b > 1 { hs / d.max(1) } else { t };
    let start = l.start_offset();
    let end = start + (b * h).saturating_sub(1) * tk * d + t * d;
    Some((start, end, tk))
}

/// The elements of k or v (see [`kv_rows`]) and their head spacing in rows.
fn kv_slice<'a, T: AttnFloat>(
    s: &'a CpuStorage,
    l: &Layout,
) -> candle_core::Result<(&'a [T], usize)> {
    let (a, b, tk) = kv_rows(l).ok_or_else(|| {
        candle_core::Error::Msg("fused-attention: k and v need contiguous rows".into())
    })?;
    Ok((&T::cpu_slice(s)?[a..b], tk))
}

/// The float types the kernels run in.
/// e^x in f32 without a branch or a table, so a loop of it vectorises: x = n·ln 2 + r with
/// |r| ≤ ln 2 / 2 (n rounded by adding 1.5·2²³, ln 2 split in two so n·ln 2 subtracts
/// exactly), e^r by its Taylor polynomial to r⁷ (relative error below 1e-8 there), 2ⁿ put
/// straight into the exponent bits. Above 88.3 x is clamped (2ⁿ stays a normal number); below
/// -87.3 the result is 0 (a select, not a branch), so a masked -inf score weighs nothing.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2²³
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let under = x < -87.3;
    let x = x.clamp(-87.3, 88.3);
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.0 / 5040.0;
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p * r + c;
    }
    let ni = t.to_bits().wrapping_sub(MAGIC.to_bits()) as i32;
    let y = p * f32::from_bits(((ni + 127) as u32) << 23);
    if under {
        0.0
    } else {
        y
    }
}

pub trait AttnFloat:
    Copy
    + Send
    + Sync
    + 'static
    + PartialOrd
    + super::kernels::sgemm::Float
    + std::ops::Sub<Output = Self>
    + std::ops::Div<Output = Self>
    + candle_core::WithDType
{
    const NEG_INF: Self;
    /// `x = exp(x - shift)` for every x; returns their sum.
    fn exp_shifted(xs: &mut [Self], shift: Self) -> Self;
    fn of(x: f64) -> Self;
    fn cpu_slice(s: &CpuStorage) -> candle_core::Result<&[Self]>;
}

impl AttnFloat for f32 {
    const NEG_INF: Self = f32::NEG_INFINITY;
    fn exp_shifted(xs: &mut [Self], shift: Self) -> Self {
        // branch-free, so the compiler runs it lane-parallel; then a 16-lane sum
        for x in xs.iter_mut() {
            *x = exp_f32(*x - shift);
        }
        let mut acc = [0f32; 16];
        let mut chunks = xs.chunks_exact(16);
        for c in &mut chunks {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a += v;
            }
        }
        acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
    }
    fn of(x: f64) -> Self {
        x as f32
    }
    fn cpu_slice(s: &CpuStorage) -> candle_core::Result<&[Self]> {
        match s {
            CpuStorage::F32(v) => Ok(v),
            _ => Err(candle_core::Error::Msg(
                "fused-attention: expected f32".into(),
            )),
        }
    }
}

impl AttnFloat for f64 {
    const NEG_INF: Self = f64::NEG_INFINITY;
    fn exp_shifted(xs: &mut [Self], shift: Self) -> Self {
        let mut sum = 0.0;
        for x in xs.iter_mut() {
            *x = (*x - shift).exp();
            sum += *x;
        }
        sum
    }
    fn of(x: f64) -> Self {
        x
    }
    fn cpu_slice(s: &CpuStorage) -> candle_core::Result<&[Self]> {
        match s {
            CpuStorage::F64(v) => Ok(v),
            _ => Err(candle_core::Error::Msg(
                "fused-attention: expected f64".into(),
            )),
        }
    }
}

struct Dims {
    b: usize,
    n_kv: usize,
    rep: usize,
    s: usize,
    t: usize,
    d: usize,
    /// key rows between two heads of k and v (`t`, or a preallocated cache's capacity)
    tk: usize,
}

impl FusedAttention {
    fn dims(&self) -> Dims {
        Dims {
            b: self.mask.batch,
            n_kv: self.n_kv,
            rep: self.rep,
            s: self.mask.s,
            t: self.mask.t,
            d: self.head_dim,
            tk: self.mask.t,
        }
    }

    /// Probabilities (m×w, w = the block's key count) of one block of head `h` of batch row
    /// `bi`; masked entries and rows with no visible key are 0.
    #[allow(clippy::too_many_arguments)]
    fn block_probs<T: AttnFloat>(
        &self,
        dm: &Dims,
        blk: &Block,
        q: &[T],
        k: &[T],
        bi: usize,
        h: usize,
        par: Parallelism,
    ) -> (Vec<T>, usize) {
        let (m, d) = (blk.q1 - blk.q0, dm.d);
        let w: usize = blk.keys.iter().map(|(a, b)| b - a).sum();
        let qb = &q[((bi * dm.n_kv * dm.rep + h) * dm.s + blk.q0) * d..];
        let kg = &k[(bi * dm.n_kv + h / dm.rep) * dm.tk * d..][..dm.t * d];
        let mut p = vec![T::ZERO; m * w];
        let mut col = 0;
        for &(k0, k1) in &blk.keys {
            mm(
                m,
                k1 - k0,
                d,
                &mut p[col..],
                w,
                false,
                qb,
                (1, d),
                &kg[k0 * d..],
                (d, 1),
                T::of(self.scale),
                par,
            );
            col += k1 - k0;
        }
        let valid = &self.mask.valid[bi * dm.t..(bi + 1) * dm.t];
        let pad = self.mask.any_pad;
        for (r, row) in p.chunks_mut(w).enumerate() {
            let lim = blk.at + r + 1; // keys j < lim are not in the future
                                      // keys past lim are in the future; with padding, invalid ones are masked as well
                                      // (-inf, so their exp is 0)
            let vis = |k0: usize, k1: usize| lim.clamp(k0, k1) - k0;
            let mut mx = T::NEG_INF;
            let mut col = 0;
            for &(k0, k1) in &blk.keys {
                let seen = &mut row[col..col + vis(k0, k1)];
                if pad {
                    for (x, &ok) in seen.iter_mut().zip(&valid[k0..]) {
                        if !ok {
                            *x = T::NEG_INF;
                        }
                    }
                }
                for &x in seen.iter() {
                    if x > mx {
                        mx = x;
                    }
                }
                col += k1 - k0;
            }
            if mx == T::NEG_INF {
                row.iter_mut().for_each(|x| *x = T::ZERO);
                continue;
            }
            let mut sum = T::ZERO;
            let mut col = 0;
            for &(k0, k1) in &blk.keys {
                let v = vis(k0, k1);
                sum += T::exp_shifted(&mut row[col..col + v], mx);
                row[col + v..col + (k1 - k0)]
                    .iter_mut()
                    .for_each(|x| *x = T::ZERO);
                col += k1 - k0;
            }
            let inv = T::ONE / sum;
            row.iter_mut().for_each(|x| *x *= inv);
        }
        (p, w)
    }

    /// `tk`: key rows between two heads of `k` and `v` (at least `t`).
    fn forward<T: AttnFloat>(&self, q: &[T], k: &[T], v: &[T], tk: usize) -> Vec<T> {
        let mut dm = self.dims();
        dm.tk = tk;
        let d = dm.d;
        let heads = dm.b * dm.n_kv * dm.rep;
        let mut out = vec![T::ZERO; heads * dm.s * d];
        let par = inner_parallelism(heads);
        let run = |(bh, o): (usize, &mut [T])| {
            let (bi, h) = (bh / (dm.n_kv * dm.rep), bh % (dm.n_kv * dm.rep));
            let vg = &v[(bi * dm.n_kv + h / dm.rep) * dm.tk * d..][..dm.t * d];
            for blk in self.mask.blocks.iter() {
                let (p, w) = self.block_probs(&dm, blk, q, k, bi, h, par);
                let m = blk.q1 - blk.q0;
                let mut col = 0;
                for (i, &(k0, k1)) in blk.keys.iter().enumerate() {
                    mm(
                        m,
                        d,
                        k1 - k0,
                        &mut o[blk.q0 * d..],
                        d,
                        i > 0,
                        &p[col..],
                        (1, w),
                        &vg[k0 * d..],
                        (1, d),
                        T::ONE,
                        par,
                    );
                    col += k1 - k0;
                }
            }
        };
        if matches!(par, Parallelism::None) {
            out.par_chunks_mut(dm.s * d).enumerate().for_each(run);
        } else {
            out.chunks_mut(dm.s * d).enumerate().for_each(run);
        }
        out
    }

    /// Gradients of q, k, v from the output's gradient `dout` (and the output `o`).
    fn backward<T: AttnFloat>(
        &self,
        q: &[T],
        k: &[T],
        v: &[T],
        o: &[T],
        dout: &[T],
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let dm = self.dims();
        let d = dm.d;
        let groups = dm.b * dm.n_kv;
        let qn = dm.rep * dm.s * d;
        let kn = dm.t * d;
        let mut dq = vec![T::ZERO; groups * qn];
        let mut dk = vec![T::ZERO; groups * kn];
        let mut dv = vec![T::ZERO; groups * kn];
        let par = inner_parallelism(groups);
        let scale = T::of(self.scale);
        // one task per (batch row, kv head): the query heads sharing it add into its dk, dv
        let run = |(bg, ((dqg, dkg), dvg)): (usize, ((&mut [T], &mut [T]), &mut [T]))| {
            let bi = bg / dm.n_kv;
            let kg = &k[bg * kn..][..kn];
            let vg = &v[bg * kn..][..kn];
            for r in 0..dm.rep {
                let h = (bg % dm.n_kv) * dm.rep + r;
                for blk in self.mask.blocks.iter() {
                    let m = blk.q1 - blk.q0;
                    let off = (r * dm.s + blk.q0) * d;
                    let (qb, ob, dob) = (
                        &q[bg * qn + off..],
                        &o[bg * qn + off..],
                        &dout[bg * qn + off..],
                    );
                    let (p, w) = self.block_probs(&dm, blk, q, k, bi, h, par);
                    // dP = dO · vᵀ over the block's keys (m×w)
                    let mut ds = vec![T::ZERO; m * w];
                    let mut col = 0;
                    for &(k0, k1) in &blk.keys {
                        mm(
                            m,
                            k1 - k0,
                            d,
                            &mut ds[col..],
                            w,
                            false,
                            dob,
                            (1, d),
                            &vg[k0 * d..],
                            (d, 1),
                            T::ONE,
                            par,
                        );
                        col += k1 - k0;
                    }
                    // dS = P ⊙ (dP − rowsum(dO ⊙ O))
                    for i in 0..m {
                        let mut dsum = T::ZERO;
                        for c in 0..d {
                            dsum += dob[i * d + c] * ob[i * d + c];
                        }
                        let (pr, dr) = (&p[i * w..][..w], &mut ds[i * w..][..w]);
                        for j in 0..w {
                            dr[j] = pr[j] * (dr[j] - dsum);
                        }
                    }
                    // dq = scale · dS · k ; dk += scale · dSᵀ · q ; dv += Pᵀ · dO
                    let mut col = 0;
                    for (i, &(k0, k1)) in blk.keys.iter().enumerate() {
                        let n = k1 - k0;
                        mm(
                            m,
                            d,
                            n,
                            &mut dqg[off..],
                            d,
                            i > 0,
                            &ds[col..],
                            (1, w),
                            &kg[k0 * d..],
                            (1, d),
                            scale,
                            par,
                        );
                        mm(
                            n,
                            d,
                            m,
                            &mut dkg[k0 * d..],
                            d,
                            true,
                            &ds[col..],
                            (w, 1),
                            qb,
                            (1, d),
                            scale,
                            par,
                        );
                        mm(
                            n,
                            d,
                            m,
                            &mut dvg[k0 * d..],
                            d,
                            true,
                            &p[col..],
                            (w, 1),
                            dob,
                            (1, d),
                            T::ONE,
                            par,
                        );
                        col += n;
                    }
                }
            }
        };
        let it = dq
            .chunks_mut(qn)
            .zip(dk.chunks_mut(kn))
            .zip(dv.chunks_mut(kn))
            .enumerate();
        if matches!(par, Parallelism::None) {
            it.collect::<Vec<_>>().into_par_iter().for_each(run);
        } else {
            it.for_each(run);
        }
        (dq, dk, dv)
    }
}

/// Tasks run on the thread pool one per thread when there are enough of them; otherwise
/// each matmul uses the pool.
fn inner_parallelism(tasks: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    if tasks >= threads {
        Parallelism::None
    } else {
        Parallelism::Rayon(threads)
    }
}

/// The elements of a contiguous CPU storage (the custom ops' inputs).
pub(crate) fn contiguous<'a, T: AttnFloat>(
    s: &'a CpuStorage,
    l: &Layout,
) -> candle_core::Result<&'a [T]> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("fused op: inputs must be contiguous".into()))?;
    Ok(&T::cpu_slice(s)?[a..b])
}

/// The elements of a tensor, copied out (for backward passes).
pub(crate) fn tensor_vec<T: AttnFloat>(t: &Tensor) -> candle_core::Result<Vec<T>> {
    t.contiguous()?.flatten_all()?.to_vec1::<T>()
}

/// The elements of a contiguous CPU tensor, borrowed from its storage guard.
pub(crate) fn storage_slice<'a, T: AttnFloat>(
    g: &'a candle_core::Storage,
    l: &Layout,
) -> candle_core::Result<&'a [T]> {
    match g {
        candle_core::Storage::Cpu(c) => contiguous(c, l),
        _ => Err(candle_core::Error::Msg("fused op: CPU tensors only".into())),
    }
}

impl FusedAttention {
    fn check(&self, q: &Layout, k: &Layout, v: &Layout) -> candle_core::Result<()> {
        let dm = self.dims();
        let want_q = [dm.b, dm.n_kv, dm.rep * dm.s, dm.d];
        let want_kv = [dm.b, dm.n_kv, dm.t, dm.d];
        if q.dims() != want_q || k.dims() != want_kv || v.dims() != want_kv {
            return Err(candle_core::Error::Msg(format!(
                "fused-attention: shapes q {:?} k {:?} v {:?}, expected {want_q:?} and {want_kv:?}",
                q.dims(),
                k.dims(),
                v.dims()
            )));
        }
        Ok(())
    }

    fn bwd_typed<T: AttnFloat>(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dq, dk, dv) = self.backward(
            &tensor_vec::<T>(q)?,
            &tensor_vec::<T>(k)?,
            &tensor_vec::<T>(v)?,
            &tensor_vec::<T>(res)?,
            &tensor_vec::<T>(grad)?,
        );
        let dev = Device::Cpu;
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), &dev)?),
            Some(Tensor::from_vec(dk, k.shape(), &dev)?),
            Some(Tensor::from_vec(dv, v.shape(), &dev)?),
        ))
    }
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.check(l1, l2, l3)?;
        let shape = l1.shape().clone();
        match s1 {
            CpuStorage::F32(_) => {
                let (k, tk) = kv_slice::<f32>(s2, l2)?;
                let (v, tv) = kv_slice::<f32>(s3, l3)?;
                if tk != tv {
                    return Err(candle_core::Error::Msg(
                        "fused-attention: k and v laid out differently".into(),
                    ));
                }
                let o = self.forward::<f32>(contiguous(s1, l1)?, k, v, tk);
                Ok((CpuStorage::F32(o), shape))
            }
            CpuStorage::F64(_) => {
                let (k, tk) = kv_slice::<f64>(s2, l2)?;
                let (v, tv) = kv_slice::<f64>(s3, l3)?;
                if tk != tv {
                    return Err(candle_core::Error::Msg(
                        "fused-attention: k and v laid out differently".into(),
                    ));
                }
                let o = self.forward::<f64>(contiguous(s1, l1)?, k, v, tk);
                Ok((CpuStorage::F64(o), shape))
            }
            _ => Err(candle_core::Error::Msg(
                "fused-attention: f32 or f64 only".into(),
            )),
        }
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        match q.dtype() {
            DType::F32 => self.bwd_typed::<f32>(q, k, v, res, grad),
            DType::F64 => self.bwd_typed::<f64>(q, k, v, res, grad),
            dt => Err(candle_core::Error::Msg(format!(
                "fused-attention: no backward for {dt:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests;
