//! Fused element-wise ops with their own backward pass, for inference and training:
//! `silu(g) · u` (the MLP's gate) and RMS norm. Composed from Candle ops in training, each
//! leaves several full-size intermediates in the autograd graph (kept until the backward pass
//! ends); these leave only their output. Their gradients are checked against finite
//! differences in the tests below.

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

use super::attention::{contiguous as slice, tensor_vec as vec_of, AttnFloat};

trait FastExp: AttnFloat {
    fn fast_exp(self) -> Self;
}
impl FastExp for f32 {
    #[inline(always)]
    fn fast_exp(self) -> Self {
        // the attention's branch-free exp: the compiler runs it lane-parallel
        super::attention::exp_f32(self)
    }
}
impl FastExp for f64 {
    #[inline(always)]
    fn fast_exp(self) -> Self {
        self.exp()
    }
}

const CHUNK: usize = 4096;

/// `silu(g) · u`, element-wise; g and u of one shape.
pub struct SiluMul;

impl SiluMul {
    fn fwd<T: FastExp>(g: &[T], u: &[T]) -> Vec<T> {
        let mut y = vec![T::ZERO; g.len()];
        y.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(|(y, (g, u))| {
                for i in 0..y.len() {
                    let s = T::ONE / (T::ONE + (T::ZERO - g[i]).fast_exp());
                    y[i] = g[i] * s * u[i];
                }
            });
        y
    }

    fn bwd_t<T: FastExp>(g: &[T], u: &[T], dy: &[T]) -> (Vec<T>, Vec<T>) {
        let mut dg = vec![T::ZERO; g.len()];
        let mut du = vec![T::ZERO; g.len()];
        dg.par_chunks_mut(CHUNK)
            .zip(du.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(c, (dg, du))| {
                let o = c * CHUNK;
                for i in 0..dg.len() {
                    let (g, u, dy) = (g[o + i], u[o + i], dy[o + i]);
                    let s = T::ONE / (T::ONE + (T::ZERO - g).fast_exp());
                    du[i] = dy * g * s;
                    dg[i] = dy * u * s * (T::ONE + g * (T::ONE - s));
                }
            });
        (dg, du)
    }
}

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            return Err(candle_core::Error::Msg(format!(
                "silu-mul: shapes {:?} and {:?} differ",
                l1.dims(),
                l2.dims()
            )));
        }
        let shape = l1.shape().clone();
        match s1 {
            CpuStorage::F32(_) => Ok((
                CpuStorage::F32(Self::fwd::<f32>(slice(s1, l1)?, slice(s2, l2)?)),
                shape,
            )),
            CpuStorage::F64(_) => Ok((
                CpuStorage::F64(Self::fwd::<f64>(slice(s1, l1)?, slice(s2, l2)?)),
                shape,
            )),
            _ => Err(candle_core::Error::Msg("silu-mul: f32 or f64 only".into())),
        }
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dev = Device::Cpu;
        macro_rules! run {
            ($t:ty) => {{
                let (dg, du) =
                    Self::bwd_t::<$t>(&vec_of::<$t>(g)?, &vec_of::<$t>(u)?, &vec_of::<$t>(dy)?);
                Ok((
                    Some(Tensor::from_vec(dg, g.shape(), &dev)?),
                    Some(Tensor::from_vec(du, u.shape(), &dev)?),
                ))
            }};
        }
        match g.dtype() {
            DType::F32 => run!(f32),
            DType::F64 => run!(f64),
            dt => Err(candle_core::Error::Msg(format!(
                "silu-mul: no backward for {dt:?}"
            ))),
        }
    }
}

/// `silu(g) · u`; f32 and f64 fused, other dtypes composed.
pub fn silu_mul(g: &Tensor, u: &Tensor) -> candle_core::Result<Tensor> {
    if matches!(g.dtype(), DType::F32 | DType::F64) && g.dtype() == u.dtype() && g.device().is_cpu()
    {
        g.contiguous()?
            .apply_op2_arc(&u.contiguous()?, Arc::new(Box::new(SiluMul)))
    } else {
        g.silu()? * u
    }
}

/// RMS norm over the last dimension: `x / sqrt(mean(x²) + eps) · w`.
pub struct RmsNorm {
    pub eps: f64,
}

impl RmsNorm {
    fn fwd<T: AttnFloat>(&self, x: &[T], w: &[T]) -> Vec<T> {
        let h = w.len();
        let mut y = vec![T::ZERO; x.len()];
        let eps = T::of(self.eps);
        let inv_h = T::of(1.0 / h as f64);
        y.par_chunks_mut(h).zip(x.par_chunks(h)).for_each(|(y, x)| {
            let mut ss = T::ZERO;
            for v in x {
                ss += *v * *v;
            }
            let r = T::ONE / T::of((ss * inv_h + eps).to_f64().sqrt());
            for i in 0..h {
                y[i] = x[i] * r * w[i];
            }
        });
        y
    }

    fn bwd_t<T: AttnFloat>(&self, x: &[T], w: &[T], dy: &[T]) -> (Vec<T>, Vec<T>) {
        let h = w.len();
        let eps = T::of(self.eps);
        let inv_h = T::of(1.0 / h as f64);
        let mut dx = vec![T::ZERO; x.len()];
        // dw per chunk of rows, summed after
        let rows_per = (CHUNK / h).max(1);
        let dws: Vec<Vec<T>> = dx
            .par_chunks_mut(h * rows_per)
            .zip(x.par_chunks(h * rows_per).zip(dy.par_chunks(h * rows_per)))
            .map(|(dx, (x, dy))| {
                let mut dw = vec![T::ZERO; h];
                for ((dx, x), dy) in dx.chunks_mut(h).zip(x.chunks(h)).zip(dy.chunks(h)) {
                    let mut ss = T::ZERO;
                    for v in x {
                        ss += *v * *v;
                    }
                    let r = T::ONE / T::of((ss * inv_h + eps).to_f64().sqrt());
                    // g = dy ⊙ w ; dx = r g − r³/h · x · Σ g ⊙ x
                    let mut gx = T::ZERO;
                    for i in 0..h {
                        gx += dy[i] * w[i] * x[i];
                        dw[i] += dy[i] * x[i] * r;
                    }
                    let c = r * r * r * inv_h * gx;
                    for i in 0..h {
                        dx[i] = r * dy[i] * w[i] - c * x[i];
                    }
                }
                dw
            })
            .collect();
        let mut dw = vec![T::ZERO; h];
        for p in dws {
            for i in 0..h {
                dw[i] += p[i];
            }
        }
        (dx, dw)
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let h = *l1.dims().last().unwrap_or(&0);
        if l2.dims() != [h] {
            return Err(candle_core::Error::Msg(format!(
                "rms-norm: weight {:?} for input {:?}",
                l2.dims(),
                l1.dims()
            )));
        }
        let shape = l1.shape().clone();
        match s1 {
            CpuStorage::F32(_) => Ok((
                CpuStorage::F32(self.fwd::<f32>(slice(s1, l1)?, slice(s2, l2)?)),
                shape,
            )),
            CpuStorage::F64(_) => Ok((
                CpuStorage::F64(self.fwd::<f64>(slice(s1, l1)?, slice(s2, l2)?)),
                shape,
            )),
            _ => Err(candle_core::Error::Msg("rms-norm: f32 or f64 only".into())),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dev = Device::Cpu;
        macro_rules! run {
            ($t:ty) => {{
                let (dx, dw) =
                    self.bwd_t::<$t>(&vec_of::<$t>(x)?, &vec_of::<$t>(w)?, &vec_of::<$t>(dy)?);
                Ok((
                    Some(Tensor::from_vec(dx, x.shape(), &dev)?),
                    Some(Tensor::from_vec(dw, w.shape(), &dev)?),
                ))
            }};
        }
        match x.dtype() {
            DType::F32 => run!(f32),
            DType::F64 => run!(f64),
            dt => Err(candle_core::Error::Msg(format!(
                "rms-norm: no backward for {dt:?}"
            ))),
        }
    }
}

/// RMS norm with a backward pass (f32 and f64; None for other dtypes).
pub fn rms_norm_trainable(x: &Tensor, w: &Tensor, eps: f64) -> Option<candle_core::Result<Tensor>> {
    if !matches!(x.dtype(), DType::F32 | DType::F64)
        || x.dtype() != w.dtype()
        || !x.device().is_cpu()
    {
        return None;
    }
    Some((|| {
        x.contiguous()?
            .apply_op2_arc(&w.contiguous()?, Arc::new(Box::new(RmsNorm { eps })))
    })())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn rand(shape: &[usize], seed: u64, std: f32) -> Tensor {
        let v = crate::model::tiny::randn(seed, shape.iter().product(), std);
        Tensor::from_vec(v, shape, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
    }

    /// Finite differences of sum(op(a, b) ⊙ w) against autograd, for both inputs.
    fn check2(op: &dyn Fn(&Tensor, &Tensor) -> Tensor, a0: &Tensor, b0: &Tensor) {
        let wy = rand(op(a0, b0).dims(), 99, 1.0);
        let loss = |a: &Tensor, b: &Tensor| (op(a, b) * &wy).unwrap().sum_all().unwrap();
        let (a, b) = (Var::from_tensor(a0).unwrap(), Var::from_tensor(b0).unwrap());
        let grads = loss(a.as_tensor(), b.as_tensor()).backward().unwrap();
        for (which, (var, base)) in [(&a, a0), (&b, b0)].into_iter().enumerate() {
            let g = grads.get(var.as_tensor()).unwrap();
            let g = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let flat = base.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            for idx in 0..flat.len() {
                let at = |dx: f64| {
                    let mut f = flat.clone();
                    f[idx] += dx;
                    let t = Tensor::from_vec(f, base.shape(), &Device::Cpu).unwrap();
                    let v = if which == 0 {
                        loss(&t, b0)
                    } else {
                        loss(a0, &t)
                    };
                    v.to_scalar::<f64>().unwrap()
                };
                let fd = (at(1e-6) - at(-1e-6)) / 2e-6;
                assert!(
                    (fd - g[idx]).abs() < 1e-6 * (1.0 + fd.abs()),
                    "input {which} element {idx}: autograd {} vs finite difference {fd}",
                    g[idx]
                );
            }
        }
    }

    #[test]
    fn silu_mul_matches_composition_and_finite_differences() {
        let (g, u) = (rand(&[3, 5], 1, 2.0), rand(&[3, 5], 2, 1.0));
        let want = (g.silu().unwrap() * &u).unwrap();
        let got = silu_mul(&g, &u).unwrap();
        let d = (got - want).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f64>().unwrap() < 1e-12);
        // f32 with the fast exp
        let (g32, u32_) = (
            g.to_dtype(DType::F32).unwrap(),
            u.to_dtype(DType::F32).unwrap(),
        );
        let want = (g32.silu().unwrap() * &u32_).unwrap();
        let d = (silu_mul(&g32, &u32_).unwrap() - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
        check2(&|a, b| silu_mul(a, b).unwrap(), &g, &u);
    }

    #[test]
    fn rms_norm_matches_composition_and_finite_differences() {
        let (x, w) = (rand(&[4, 6], 3, 1.0), rand(&[6], 4, 1.0));
        let eps = 1e-6;
        let ms = x.sqr().unwrap().mean_keepdim(1).unwrap();
        let want = x
            .broadcast_div(&(ms + eps).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&w)
            .unwrap();
        let got = rms_norm_trainable(&x, &w, eps).unwrap().unwrap();
        let d = (got - want).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f64>().unwrap() < 1e-12);
        check2(
            &|a, b| rms_norm_trainable(a, b, eps).unwrap().unwrap(),
            &x,
            &w,
        );
    }
}
