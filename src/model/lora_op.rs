//! A frozen linear layer with a trainable LoRA adapter as one op, for training:
//! `y = x Wᵀ + bias + scale · ((x ⊙ mask) Aᵀ) Bᵀ`, inputs x, A, B.
//!
//! Composed from Candle ops, this layer leaves five output-sized tensors and, with dropout,
//! two input-sized ones (the mask and the masked input) in the autograd graph, and each is
//! kept until the whole backward pass ends. This op leaves only its output: the backward
//! pass regenerates the dropout mask from its seed and recomputes the rank-r projection
//! (cheap: r is 8 or 16). W and the bias get no gradient (they are frozen).

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

use super::attention::{self, contiguous as slice, parallelism_for, storage_slice, AttnFloat};
use super::kernels;

#[inline(always)]
fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The integer below which an element's hash keeps it (keep probability `keep`).
#[inline]
pub fn keep_threshold(keep: f32) -> u32 {
    ((keep as f64) * 4294967296.0).min(u32::MAX as f64) as u32
}

/// Whether element `e` (row-major over rows × in) of the dropout mask drawn from `seed` keeps
/// its value: a 32-bit hash of the element index and the seed (all 32-bit integer steps, so
/// the mask loops vectorise), compared with `keep_threshold`.
#[inline(always)]
pub fn keeps(seed: u64, e: usize, threshold: u32) -> bool {
    let s = (seed as u32) ^ fmix32((seed >> 32) as u32 ^ 0x9e37_79b9);
    fmix32((e as u32) ^ s).wrapping_add(s) < threshold
}

pub struct LoraLinear {
    /// (out, in), frozen
    pub w: kernels::linear::Frozen,
    /// (out), frozen
    pub bias: Option<Tensor>,
    pub scale: f64,
    /// dropout probability and the seed of this call's mask (None: no dropout)
    pub dropout: Option<(f32, u64)>,
}

/// `x (rows, in) → (rows, out)`; a (r, in), b (out, r).
pub fn lora_linear(
    x: &Tensor,
    a: &Tensor,
    b: &Tensor,
    op: LoraLinear,
) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op3_arc(&a.contiguous()?, &b.contiguous()?, Arc::new(Box::new(op)))
}

/// Runs `f` on the elements of `t` (made contiguous first when it is not).
fn with<T: AttnFloat, R>(
    t: &Tensor,
    f: impl FnOnce(&[T]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (g, l) = t.storage_and_layout();
    f(storage_slice(&g, l)?)
}

/// `dst (m×n) (+)= beta · lhs · rhs` (lhs, rhs given by column and row strides), on the
/// thread pool when large enough.
#[allow(clippy::too_many_arguments)]
fn mm<T: AttnFloat>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    acc: bool,
    lhs: &[T],
    lhs_strides: (usize, usize),
    rhs: &[T],
    rhs_strides: (usize, usize),
    beta: T,
) {
    attention::mm(
        m,
        n,
        k,
        dst,
        n,
        acc,
        lhs,
        lhs_strides,
        rhs,
        rhs_strides,
        beta,
        parallelism_for(m, n, k),
    );
}

/// `src` and `dst` as f32 slices, when T is f32: what a bf16 weight's kernels take.
fn f32_pair<'a, T: AttnFloat>(
    src: &'a [T],
    dst: &'a mut [T],
) -> candle_core::Result<(&'a [f32], &'a mut [f32])> {
    if T::DTYPE != DType::F32 {
        return Err(candle_core::Error::Msg(
            "lora-linear: a bf16 weight takes f32 inputs".into(),
        ));
    }
    // SAFETY: T is f32 (its dtype says so, and only f32 has that dtype): same size, alignment
    // and bits; the lengths are the slices' own.
    unsafe {
        Ok((
            std::slice::from_raw_parts(src.as_ptr() as *const f32, src.len()),
            std::slice::from_raw_parts_mut(dst.as_mut_ptr() as *mut f32, dst.len()),
        ))
    }
}

impl LoraLinear {
    /// The error for a frozen weight the kernels do not take.
    fn unsupported(&self) -> candle_core::Error {
        candle_core::Error::Msg(format!(
            "lora-linear: a {:?} weight is not supported",
            self.w.dtype()
        ))
    }

    /// The frozen weight as a tensor of x's dtype T, when it is one.
    fn same_dtype<T: AttnFloat>(&self) -> Option<&Tensor> {
        match &self.w {
            kernels::linear::Frozen::Tensor(t) if t.dtype() == T::DTYPE => Some(t),
            _ => None,
        }
    }

    /// x ⊙ mask (values kept are scaled by 1/keep), or a copy of x without dropout.
    fn masked<T: AttnFloat>(&self, x: &[T], cols: usize) -> Vec<T> {
        let mut out = x.to_vec();
        if let Some((p, seed)) = self.dropout {
            let keep = 1.0 - p;
            let th = keep_threshold(keep);
            let s = T::of(1.0 / keep as f64);
            out.par_chunks_mut(cols).enumerate().for_each(|(r, row)| {
                let base = r * cols;
                for (c, v) in row.iter_mut().enumerate() {
                    *v = if keeps(seed, base + c, th) {
                        *v * s
                    } else {
                        T::ZERO
                    };
                }
            });
        }
        out
    }

    fn forward<T: AttnFloat>(
        &self,
        x: &[T],
        a: &[T],
        b: &[T],
        rows: usize,
        inf: usize,
        outf: usize,
        r: usize,
    ) -> candle_core::Result<Vec<T>> {
        let mut y = vec![T::ZERO; rows * outf];
        // y = x Wᵀ
        if let Some(wt) = self.same_dtype::<T>() {
            with::<T, _>(wt, |w| {
                mm(
                    rows,
                    outf,
                    inf,
                    &mut y,
                    false,
                    x,
                    (1, inf),
                    w,
                    (inf, 1),
                    T::ONE,
                );
                Ok(())
            })?;
        } else {
            let (x, y) = f32_pair(x, &mut y)?;
            self.w
                .xwt(x, rows, inf, outf, None, y)
                .ok_or_else(|| self.unsupported())?;
        }
        if let Some(bias) = &self.bias {
            with::<T, _>(bias, |bias| {
                y.par_chunks_mut(outf).for_each(|row| {
                    row.iter_mut().zip(bias).for_each(|(v, b)| *v += *b);
                });
                Ok(())
            })?;
        }
        // h = (x ⊙ m) Aᵀ ; y += scale · h Bᵀ
        let h = self.projection(x, a, rows, inf, r);
        mm(
            rows,
            outf,
            r,
            &mut y,
            true,
            &h,
            (1, r),
            b,
            (r, 1),
            T::of(self.scale),
        );
        Ok(y)
    }

    /// (x ⊙ m) Aᵀ: (rows × r)
    fn projection<T: AttnFloat>(
        &self,
        x: &[T],
        a: &[T],
        rows: usize,
        inf: usize,
        r: usize,
    ) -> Vec<T> {
        let mut h = vec![T::ZERO; rows * r];
        let masked;
        let src = if self.dropout.is_some() {
            masked = self.masked(x, inf);
            &masked[..]
        } else {
            x
        };
        mm(
            rows,
            r,
            inf,
            &mut h,
            false,
            src,
            (1, inf),
            a,
            (inf, 1),
            T::ONE,
        );
        h
    }

    #[allow(clippy::too_many_arguments)]
    fn backward<T: AttnFloat>(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        dy: &Tensor,
        rows: usize,
        inf: usize,
        outf: usize,
        r: usize,
    ) -> candle_core::Result<(Vec<T>, Vec<T>, Vec<T>)> {
        let (x, a, b, dy) = (
            x.contiguous()?,
            a.contiguous()?,
            b.contiguous()?,
            dy.contiguous()?,
        );
        let guards = [&x, &a, &b, &dy].map(|t| t.storage_and_layout());
        let [x, a, b, dy] = [0, 1, 2, 3].map(|i| storage_slice::<T>(&guards[i].0, guards[i].1));
        let (x, a, b, dy) = (x?, a?, b?, dy?);
        let scale = T::of(self.scale);
        let xm = self.masked(x, inf);
        // h = xm Aᵀ (rows × r)
        let mut h = vec![T::ZERO; rows * r];
        mm(
            rows,
            r,
            inf,
            &mut h,
            false,
            &xm,
            (1, inf),
            a,
            (inf, 1),
            T::ONE,
        );
        // dB = scale · dyᵀ h (out × r)
        let mut db = vec![T::ZERO; outf * r];
        mm(
            outf,
            r,
            rows,
            &mut db,
            false,
            dy,
            (outf, 1),
            &h,
            (1, r),
            scale,
        );
        // g = dy B (rows × r)
        let mut g = vec![T::ZERO; rows * r];
        mm(
            rows,
            r,
            outf,
            &mut g,
            false,
            dy,
            (1, outf),
            b,
            (1, r),
            T::ONE,
        );
        // dA = scale · gᵀ xm (r × in)
        let mut da = vec![T::ZERO; r * inf];
        mm(
            r,
            inf,
            rows,
            &mut da,
            false,
            &g,
            (r, 1),
            &xm,
            (1, inf),
            scale,
        );
        // dx = dy W + (scale · g A) ⊙ m
        let mut dx = vec![T::ZERO; rows * inf];
        if let Some(wt) = self.same_dtype::<T>() {
            with::<T, _>(wt, |w| {
                mm(
                    rows,
                    inf,
                    outf,
                    &mut dx,
                    false,
                    dy,
                    (1, outf),
                    w,
                    (1, inf),
                    T::ONE,
                );
                Ok(())
            })?;
        } else {
            let (dy, dx) = f32_pair(dy, &mut dx)?;
            self.w
                .dyw(dy, rows, outf, inf, dx)
                .ok_or_else(|| self.unsupported())?;
        }
        let mut t = xm; // reuse the buffer
        mm(rows, inf, r, &mut t, false, &g, (1, r), a, (1, inf), scale);
        match self.dropout {
            Some((p, seed)) => {
                let keep = 1.0 - p;
                let th = keep_threshold(keep);
                let s = T::of(1.0 / keep as f64);
                dx.par_chunks_mut(inf)
                    .zip(t.par_chunks(inf))
                    .enumerate()
                    .for_each(|(ri, (d, tv))| {
                        let base = ri * inf;
                        for c in 0..inf {
                            let m = if keeps(seed, base + c, th) {
                                s
                            } else {
                                T::ZERO
                            };
                            d[c] += tv[c] * m;
                        }
                    });
            }
            None => dx
                .par_chunks_mut(inf)
                .zip(t.par_chunks(inf))
                .for_each(|(d, tv)| d.iter_mut().zip(tv).for_each(|(d, t)| *d += *t)),
        }
        Ok((dx, da, db))
    }

    fn dims(
        &self,
        x: &Layout,
        a: &Layout,
        b: &Layout,
    ) -> candle_core::Result<(usize, usize, usize, usize)> {
        let (outf, inf) = self.w.dims2()?;
        let xd = x.dims();
        let (ad, bd) = (a.dims(), b.dims());
        if xd.len() != 2 || xd[1] != inf || ad.len() != 2 || ad[1] != inf || bd != [outf, ad[0]] {
            return Err(candle_core::Error::Msg(format!(
                "lora-linear: shapes x {xd:?} A {ad:?} B {bd:?} do not fit W ({outf}, {inf})"
            )));
        }
        Ok((xd[0], inf, outf, ad[0]))
    }
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
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
        let (rows, inf, outf, r) = self.dims(l1, l2, l3)?;
        let shape = Shape::from((rows, outf));
        match s1 {
            CpuStorage::F32(_) => Ok((
                CpuStorage::F32(self.forward::<f32>(
                    slice(s1, l1)?,
                    slice(s2, l2)?,
                    slice(s3, l3)?,
                    rows,
                    inf,
                    outf,
                    r,
                )?),
                shape,
            )),
            CpuStorage::F64(_) => Ok((
                CpuStorage::F64(self.forward::<f64>(
                    slice(s1, l1)?,
                    slice(s2, l2)?,
                    slice(s3, l3)?,
                    rows,
                    inf,
                    outf,
                    r,
                )?),
                shape,
            )),
            _ => Err(candle_core::Error::Msg(
                "lora-linear: f32 or f64 only".into(),
            )),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, inf, outf, r) = self.dims(x.layout(), a.layout(), b.layout())?;
        let dev = Device::Cpu;
        macro_rules! run {
            ($t:ty) => {{
                let (dx, da, db) = self.backward::<$t>(x, a, b, dy, rows, inf, outf, r)?;
                Ok((
                    Some(Tensor::from_vec(dx, (rows, inf), &dev)?),
                    Some(Tensor::from_vec(da, (r, inf), &dev)?),
                    Some(Tensor::from_vec(db, (outf, r), &dev)?),
                ))
            }};
        }
        match x.dtype() {
            DType::F32 => run!(f32),
            DType::F64 => run!(f64),
            dt => Err(candle_core::Error::Msg(format!(
                "lora-linear: no backward for {dt:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let v = crate::model::tiny::randn(seed, shape.iter().product(), 0.5);
        Tensor::from_vec(v, shape, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
    }

    fn op(w: &Tensor, bias: &Tensor) -> LoraLinear {
        LoraLinear {
            w: kernels::linear::Frozen::Tensor(w.clone()),
            bias: Some(bias.clone()),
            scale: 1.5,
            dropout: Some((0.3, 42)),
        }
    }

    #[test]
    fn dropout_masks_keep_the_right_share_and_differ_by_seed() {
        let th = keep_threshold(0.95);
        let n = 200_000;
        for seed in [0u64, 1, 0xdead_beef_0000_0001] {
            let kept = (0..n).filter(|&e| keeps(seed, e, th)).count() as f64 / n as f64;
            assert!((kept - 0.95).abs() < 0.003, "seed {seed}: kept {kept}");
        }
        let same = (0..n)
            .filter(|&e| keeps(1, e, keep_threshold(0.5)) == keeps(2, e, keep_threshold(0.5)))
            .count() as f64
            / n as f64;
        assert!(
            (same - 0.5).abs() < 0.01,
            "masks of two seeds agree on {same}"
        );
    }

    #[test]
    fn fused_lora_linear_equals_the_composed_layer_with_dropout() {
        let (rows, inf, outf, r) = (5, 7, 6, 3);
        let (x, w, bias) = (
            rand(&[rows, inf], 1),
            rand(&[outf, inf], 2),
            rand(&[outf], 3),
        );
        let (a, b) = (rand(&[r, inf], 4), rand(&[outf, r], 5));
        let got = lora_linear(&x, &a, &b, op(&w, &bias)).unwrap();
        let mask: Vec<f64> = (0..rows * inf)
            .map(|e| {
                if keeps(42, e, keep_threshold(0.7)) {
                    1.0 / 0.7f32 as f64
                } else {
                    0.0
                }
            })
            .collect();
        let dropped = mask.iter().filter(|m| **m == 0.0).count();
        assert!(
            dropped > 3 && dropped < rows * inf - 3,
            "the mask drops some, keeps most"
        );
        let mask = Tensor::from_vec(mask, (rows, inf), &Device::Cpu).unwrap();
        let want = (x
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&bias)
            .unwrap()
            + ((x * mask)
                .unwrap()
                .matmul(&a.t().unwrap())
                .unwrap()
                .matmul(&b.t().unwrap())
                .unwrap()
                * 1.5)
                .unwrap())
        .unwrap();
        let diff = (got - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(diff < 1e-12, "max difference {diff}");
    }

    #[test]
    fn fused_lora_linear_gradients_match_finite_differences() {
        let (rows, inf, outf, r) = (4, 6, 5, 2);
        let (x0, w, bias) = (
            rand(&[rows, inf], 11),
            rand(&[outf, inf], 12),
            rand(&[outf], 13),
        );
        let (a0, b0) = (rand(&[r, inf], 14), rand(&[outf, r], 15));
        let wy = rand(&[rows, outf], 16);
        let loss = |x: &Tensor, a: &Tensor, b: &Tensor| {
            (lora_linear(x, a, b, op(&w, &bias)).unwrap() * &wy)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let vars = [&x0, &a0, &b0].map(|t| Var::from_tensor(t).unwrap());
        let grads = loss(
            vars[0].as_tensor(),
            vars[1].as_tensor(),
            vars[2].as_tensor(),
        )
        .backward()
        .unwrap();
        let eps = 1e-6;
        for (which, base) in [&x0, &a0, &b0].into_iter().enumerate() {
            let g = grads.get(vars[which].as_tensor()).unwrap();
            let g = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let flat = base.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let mut nonzero = 0;
            for idx in 0..flat.len() {
                let at = |dx: f64| {
                    let mut f = flat.clone();
                    f[idx] += dx;
                    let t = Tensor::from_vec(f, base.shape(), &Device::Cpu).unwrap();
                    let mut args = [x0.clone(), a0.clone(), b0.clone()];
                    args[which] = t;
                    loss(&args[0], &args[1], &args[2])
                        .to_scalar::<f64>()
                        .unwrap()
                };
                let fd = (at(eps) - at(-eps)) / (2.0 * eps);
                assert!(
                    (fd - g[idx]).abs() < 1e-6 * (1.0 + fd.abs()),
                    "input {which} element {idx}: autograd {} vs finite difference {fd}",
                    g[idx]
                );
                nonzero += (fd.abs() > 1e-6) as usize;
            }
            assert!(
                nonzero > flat.len() / 3,
                "input {which}: too few non-zero gradients"
            );
        }
    }
}
