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
//! q (b, n_kv, rep·s, d), k and v (b, n_kv, t, d), output like q. Query row `r` of a block
//! is new token `r % s`, at absolute index `past + r % s`; it sees key `j` when
//! `j <= past + r % s` and key `j` of its batch row is a real token.

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;
use std::sync::Arc;

/// Which keys each query may see.
#[derive(Debug, Clone)]
pub struct AttnMask {
    pub batch: usize,
    /// new tokens per row
    pub s: usize,
    /// cached tokens before them
    pub past: usize,
    /// (batch, past + s): true for a real token, false for padding
    pub valid: Arc<Vec<bool>>,
    /// whether any entry of `valid` is false
    pub any_pad: bool,
}

impl AttnMask {
    pub fn new(batch: usize, s: usize, past: usize, valid: Vec<bool>) -> Self {
        debug_assert_eq!(valid.len(), batch * (past + s));
        let any_pad = valid.iter().any(|v| !v);
        Self {
            batch,
            s,
            past,
            valid: Arc::new(valid),
            any_pad,
        }
    }

    fn t(&self) -> usize {
        self.past + self.s
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
    let k = k.to_dtype(cdt)?.contiguous()?;
    let v = v.to_dtype(cdt)?.contiguous()?;
    q.apply_op3_arc(&k, &v, Arc::new(Box::new(op)))?
        .to_dtype(dt)
}

/// The float types the kernels run in.
pub trait AttnFloat:
    Copy
    + Send
    + Sync
    + 'static
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + candle_core::WithDType
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INF: Self;
    fn exp_(self) -> Self;
    fn of(x: f64) -> Self;
    fn cpu_slice(s: &CpuStorage) -> candle_core::Result<&[Self]>;
}

impl AttnFloat for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INF: Self = f32::NEG_INFINITY;
    fn exp_(self) -> Self {
        self.exp()
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
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INF: Self = f64::NEG_INFINITY;
    fn exp_(self) -> Self {
        self.exp()
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

/// `dst (m×n) = beta · a (m×k, row stride lda) · bᵀ-or-b`, written (not accumulated) unless
/// `acc`. `b_t`: b is given as (n×k) rows (so the product uses its transpose).
#[allow(clippy::too_many_arguments)]
fn mm<T: AttnFloat>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    acc: bool,
    a: &[T],
    a_trans: bool,
    b: &[T],
    b_trans: bool,
    beta: T,
    par: Parallelism,
) {
    debug_assert!(dst.len() >= m * n);
    // a: (m×k) row-major, or given as (k×m) row-major when a_trans
    let (a_cs, a_rs) = if a_trans {
        (m as isize, 1)
    } else {
        (1, k as isize)
    };
    // b: (k×n) row-major, or given as (n×k) row-major when b_trans
    let (b_cs, b_rs) = if b_trans {
        (k as isize, 1)
    } else {
        (1, n as isize)
    };
    debug_assert!(a.len() >= m * k && b.len() >= k * n);
    // SAFETY: the slices cover every element the strides above reach (checked in debug).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            acc,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            T::ONE,
            beta,
            false,
            false,
            false,
            par,
        )
    }
}

struct Dims {
    b: usize,
    n_kv: usize,
    rep: usize,
    s: usize,
    t: usize,
    d: usize,
}

impl FusedAttention {
    fn dims(&self) -> Dims {
        Dims {
            b: self.mask.batch,
            n_kv: self.n_kv,
            rep: self.rep,
            s: self.mask.s,
            t: self.mask.t(),
            d: self.head_dim,
        }
    }

    /// Keys visible to new token `i` of batch row `bi`: `0..limit`, minus padding.
    fn limit(&self, i: usize) -> usize {
        self.mask.past + i + 1
    }

    /// In place: scores (s×t) of one head → probabilities; masked entries 0.
    /// Rows with no visible key (padding queries) become all zeros.
    fn softmax_rows<T: AttnFloat>(&self, bi: usize, p: &mut [T]) {
        let t = self.mask.t();
        let valid = &self.mask.valid[bi * t..(bi + 1) * t];
        let pad = self.mask.any_pad;
        for (i, row) in p.chunks_mut(t).enumerate() {
            let lim = self.limit(i);
            let mut mx = T::NEG_INF;
            for j in 0..lim {
                if (!pad || valid[j]) && row[j] > mx {
                    mx = row[j];
                }
            }
            if mx == T::NEG_INF {
                row.iter_mut().for_each(|x| *x = T::ZERO);
                continue;
            }
            let mut sum = T::ZERO;
            for j in 0..lim {
                let e = if !pad || valid[j] {
                    (row[j] - mx).exp_()
                } else {
                    T::ZERO
                };
                row[j] = e;
                sum = sum + e;
            }
            let inv = T::ONE / sum;
            row[..lim].iter_mut().for_each(|x| *x = *x * inv);
            row[lim..].iter_mut().for_each(|x| *x = T::ZERO);
        }
    }

    /// Probabilities (s×t) of head `h` of batch row `bi`.
    fn probs<T: AttnFloat>(
        &self,
        dm: &Dims,
        q: &[T],
        k: &[T],
        bi: usize,
        h: usize,
        par: Parallelism,
    ) -> Vec<T> {
        let g = h / dm.rep;
        let qh = &q[(bi * dm.n_kv * dm.rep + h) * dm.s * dm.d..][..dm.s * dm.d];
        let kg = &k[(bi * dm.n_kv + g) * dm.t * dm.d..][..dm.t * dm.d];
        let mut p = vec![T::ZERO; dm.s * dm.t];
        mm(
            dm.s,
            dm.t,
            dm.d,
            &mut p,
            false,
            qh,
            false,
            kg,
            true,
            T::of(self.scale),
            par,
        );
        self.softmax_rows(bi, &mut p);
        p
    }

    fn forward<T: AttnFloat>(&self, q: &[T], k: &[T], v: &[T]) -> Vec<T> {
        let dm = self.dims();
        let heads = dm.b * dm.n_kv * dm.rep;
        let mut out = vec![T::ZERO; heads * dm.s * dm.d];
        let par = inner_parallelism(heads);
        let run = |(bh, o): (usize, &mut [T])| {
            let (bi, h) = (bh / (dm.n_kv * dm.rep), bh % (dm.n_kv * dm.rep));
            let p = self.probs(&dm, q, k, bi, h, par);
            let vg = &v[(bi * dm.n_kv + h / dm.rep) * dm.t * dm.d..][..dm.t * dm.d];
            mm(
                dm.s,
                dm.d,
                dm.t,
                o,
                false,
                &p,
                false,
                vg,
                false,
                T::ONE,
                par,
            );
        };
        if matches!(par, Parallelism::None) {
            out.par_chunks_mut(dm.s * dm.d).enumerate().for_each(run);
        } else {
            out.chunks_mut(dm.s * dm.d).enumerate().for_each(run);
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
        let groups = dm.b * dm.n_kv;
        let qn = dm.rep * dm.s * dm.d;
        let kn = dm.t * dm.d;
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
                let off = r * dm.s * dm.d;
                let qh = &q[bg * qn + off..][..dm.s * dm.d];
                let oh = &o[bg * qn + off..][..dm.s * dm.d];
                let doh = &dout[bg * qn + off..][..dm.s * dm.d];
                let p = self.probs(&dm, q, k, bi, h, par);
                // dP = dO · vᵀ  (s×t)
                let mut ds = vec![T::ZERO; dm.s * dm.t];
                mm(
                    dm.s,
                    dm.t,
                    dm.d,
                    &mut ds,
                    false,
                    doh,
                    false,
                    vg,
                    true,
                    T::ONE,
                    par,
                );
                // dS = P ⊙ (dP − rowsum(dO ⊙ O))
                for i in 0..dm.s {
                    let mut dsum = T::ZERO;
                    for c in 0..dm.d {
                        dsum = dsum + doh[i * dm.d + c] * oh[i * dm.d + c];
                    }
                    let (pr, dr) = (&p[i * dm.t..][..dm.t], &mut ds[i * dm.t..][..dm.t]);
                    for j in 0..dm.t {
                        dr[j] = pr[j] * (dr[j] - dsum);
                    }
                }
                // dq = scale · dS · k ; dk += scale · dSᵀ · q ; dv += Pᵀ · dO
                mm(
                    dm.s,
                    dm.d,
                    dm.t,
                    &mut dqg[off..off + dm.s * dm.d],
                    false,
                    &ds,
                    false,
                    kg,
                    false,
                    scale,
                    par,
                );
                mm(
                    dm.t, dm.d, dm.s, dkg, true, &ds, true, qh, false, scale, par,
                );
                mm(
                    dm.t,
                    dm.d,
                    dm.s,
                    dvg,
                    true,
                    &p,
                    true,
                    doh,
                    false,
                    T::ONE,
                    par,
                );
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

fn contiguous<'a, T: AttnFloat>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [T]> {
    let (a, b) = l.contiguous_offsets().ok_or_else(|| {
        candle_core::Error::Msg("fused-attention: inputs must be contiguous".into())
    })?;
    Ok(&T::cpu_slice(s)?[a..b])
}

fn tensor_vec<T: AttnFloat>(t: &Tensor) -> candle_core::Result<Vec<T>> {
    t.contiguous()?.flatten_all()?.to_vec1::<T>()
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
                let o = self.forward::<f32>(
                    contiguous(s1, l1)?,
                    contiguous(s2, l2)?,
                    contiguous(s3, l3)?,
                );
                Ok((CpuStorage::F32(o), shape))
            }
            CpuStorage::F64(_) => {
                let o = self.forward::<f64>(
                    contiguous(s1, l1)?,
                    contiguous(s2, l2)?,
                    contiguous(s3, l3)?,
                );
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
mod tests {
    use super::*;
    use candle_core::{Var, D};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let v: Vec<f64> = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    // b 2, n_kv 2, rep 2, 3 new tokens after 2 cached; row 1 has three padding tokens in
    // front, so its first new token sees no real key
    fn setup() -> (AttnMask, usize, usize, usize, usize) {
        let (b, s, past) = (2, 3, 2);
        let mut valid = vec![true; b * (past + s)];
        valid[5] = false;
        valid[6] = false;
        valid[7] = false;
        (AttnMask::new(b, s, past, valid), 2, 2, 4, past + s)
    }

    /// The composed form: scores + additive mask, softmax, times v.
    fn naive(q: &Tensor, k: &Tensor, v: &Tensor, m: &AttnMask, rep: usize, scale: f64) -> Tensor {
        let (b, nkv, _, _) = q.dims4().unwrap();
        let (s, t) = (m.s, m.t());
        let mut add = vec![0f64; b * s * t];
        for r in 0..b {
            for i in 0..s {
                for j in 0..t {
                    if j > m.past + i || !m.valid[r * t + j] {
                        add[(r * s + i) * t + j] = -1e30;
                    }
                }
            }
        }
        let add = Tensor::from_vec(add, (b, 1, 1, s, t), &Device::Cpu).unwrap();
        let att = (q.matmul(&k.t().unwrap()).unwrap() * scale)
            .unwrap()
            .reshape((b, nkv, rep, s, t))
            .unwrap()
            .broadcast_add(&add)
            .unwrap()
            .reshape((b, nkv, rep * s, t))
            .unwrap();
        let mx = att.max_keepdim(D::Minus1).unwrap();
        let e = att.broadcast_sub(&mx).unwrap().exp().unwrap();
        let p = e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap();
        p.matmul(v).unwrap()
    }

    #[test]
    fn fused_equals_composed_attention_on_real_queries() {
        let (m, nkv, rep, d, t) = setup();
        let q = rand(&[m.batch, nkv, rep * m.s, d], 1);
        let k = rand(&[m.batch, nkv, t, d], 2);
        let v = rand(&[m.batch, nkv, t, d], 3);
        let got = fused_attention(&q, &k, &v, &m, rep, 0.5).unwrap();
        let want = naive(&q, &k, &v, &m, rep, 0.5);
        let w = got.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let wv = want.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        // row 1's first new token is padding (no visible key): skip its query rows
        let mut compared = 0;
        for (idx, (a, b)) in w.iter().zip(&wv).enumerate() {
            let row = idx / d;
            let (bi, i) = (row / (nkv * rep * m.s), row % m.s);
            if bi == 1 && i == 0 {
                assert_eq!(*a, 0.0, "a query with no visible key gives zeros");
                continue;
            }
            assert!((a - b).abs() < 1e-12, "element {idx}: {a} vs {b}");
            compared += 1;
        }
        assert!(compared > 50);
    }

    #[test]
    fn fused_attention_gradients_match_finite_differences() {
        let (m, nkv, rep, d, t) = setup();
        let qs = [m.batch, nkv, rep * m.s, d];
        let ks = [m.batch, nkv, t, d];
        let (q0, k0, v0) = (rand(&qs, 4), rand(&ks, 5), rand(&ks, 6));
        let w = rand(&qs, 7);
        let loss = |q: &Tensor, k: &Tensor, v: &Tensor| -> Tensor {
            (fused_attention(q, k, v, &m, rep, 0.7).unwrap() * &w)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let (q, k, v) = (
            Var::from_tensor(&q0).unwrap(),
            Var::from_tensor(&k0).unwrap(),
            Var::from_tensor(&v0).unwrap(),
        );
        let grads = loss(q.as_tensor(), k.as_tensor(), v.as_tensor())
            .backward()
            .unwrap();
        let eps = 1e-6;
        for (which, base) in [(0, &q0), (1, &k0), (2, &v0)] {
            let g = grads
                .get([q.as_tensor(), k.as_tensor(), v.as_tensor()][which])
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let flat = base.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let mut nonzero = 0;
            for idx in (0..flat.len()).step_by(3) {
                let bump = |dx: f64| {
                    let mut f = flat.clone();
                    f[idx] += dx;
                    let t = Tensor::from_vec(f, base.shape(), &Device::Cpu).unwrap();
                    let args = match which {
                        0 => (t, k0.clone(), v0.clone()),
                        1 => (q0.clone(), t, v0.clone()),
                        _ => (q0.clone(), k0.clone(), t),
                    };
                    loss(&args.0, &args.1, &args.2).to_scalar::<f64>().unwrap()
                };
                let fd = (bump(eps) - bump(-eps)) / (2.0 * eps);
                assert!(
                    (fd - g[idx]).abs() < 1e-6 * (1.0 + fd.abs()),
                    "input {which} element {idx}: autograd {} vs finite difference {fd}",
                    g[idx]
                );
                if fd.abs() > 1e-4 {
                    nonzero += 1;
                }
            }
            assert!(
                nonzero > 5,
                "input {which}: too few non-zero gradients to check"
            );
        }
    }
}
