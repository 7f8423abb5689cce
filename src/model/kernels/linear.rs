//! A frozen linear layer's products: which kernel `x · Wᵀ + bias` (forward) and `dy · W`
//! (the input's gradient) go to.
//!
//! x and dy are f32; W is the layer's weight (out, in) in f32 or bf16. Few rows (decode,
//! short batches) go to the streaming gemv; many rows to the bf16 matmul for a bf16 weight,
//! else to `mm` (the `gemm` crate). Anything else (f64 gradient checks, other devices) is
//! left to Candle.

use candle_core::{CpuStorage, DType, Device, Layout, Storage, Tensor};
use half::bf16;

use super::gemm_bf16::{self, Orient, Packed, B};
use super::gemv::{gemv, Weights};
use super::sgemm::{mm, parallelism_for};
use super::{level, Level};
use std::sync::Arc;

/// Up to this many rows of x, the gemv (one pass over the weights) beats a blocked matmul.
pub fn gemv_max_rows(w: DType) -> usize {
    match w {
        DType::BF16 => 16,
        _ => 8,
    }
}

/// Which kernel a product of `rows` rows with a `w`-typed weight runs on, at `level`.
pub fn path_name(rows: usize, w: DType, level: Level) -> String {
    let f32_mm = if level == Level::Portable {
        "portable matmul"
    } else {
        "gemm crate"
    };
    if rows <= gemv_max_rows(w) {
        format!("gemv-{} ({w:?} W)", level.name())
    } else if w == DType::BF16 && level >= Level::Avx512Bf16 {
        "bf16 matmul (vdpbf16ps)".to_string()
    } else if w == DType::BF16 {
        format!("bf16 widened to f32, {f32_mm}")
    } else {
        format!("{f32_mm} ({w:?})")
    }
}

/// `y (rows × n) = x (rows × k) · Wᵀ + bias`, W (n × k), at the current level.
pub fn xwt(
    x: &[f32],
    rows: usize,
    k: usize,
    w: Weights<'_>,
    n: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let lv = level();
    match w {
        Weights::F32(_) if rows <= gemv_max_rows(DType::F32) => gemv(lv, x, rows, k, w, n, bias, y),
        Weights::Bf16(_) if rows <= gemv_max_rows(DType::BF16) => {
            gemv(lv, x, rows, k, w, n, bias, y)
        }
        Weights::Bf16(wb) => {
            gemm_bf16::matmul(lv, x, rows, k, B::W(wb, Orient::Transposed), n, bias, y)
        }
        Weights::F32(wf) => {
            let y = &mut y[..rows * n];
            match bias {
                Some(b) => y.chunks_mut(n).for_each(|r| r.copy_from_slice(&b[..n])),
                None => y.fill(0.0),
            }
            mm(
                rows,
                n,
                k,
                y,
                n,
                true,
                x,
                (1, k),
                wf,
                (k, 1),
                1.0,
                parallelism_for(rows, n, k),
            )
        }
    }
}

/// `dx (rows × k) = dy (rows × n) · W`, W (n × k), at the current level.
pub fn dyw(dy: &[f32], rows: usize, n: usize, w: Weights<'_>, k: usize, dx: &mut [f32]) {
    match w {
        Weights::Bf16(wb) => {
            gemm_bf16::matmul(level(), dy, rows, n, B::W(wb, Orient::Plain), k, None, dx)
        }
        Weights::F32(wf) => mm(
            rows,
            k,
            n,
            dx,
            k,
            false,
            dy,
            (1, n),
            wf,
            (1, k),
            1.0,
            parallelism_for(rows, k, n),
        ),
    }
}

fn slice<'a, T: candle_core::WithDType>(
    s: &'a Storage,
    l: &Layout,
    f: impl Fn(&CpuStorage) -> Option<&[T]>,
) -> Option<&'a [T]> {
    let (a, b) = l.contiguous_offsets()?;
    match s {
        Storage::Cpu(c) => f(c).map(|v| &v[a..b]),
        _ => None,
    }
}

fn f32s<'a>(s: &'a Storage, l: &Layout) -> Option<&'a [f32]> {
    slice(s, l, |c| match c {
        CpuStorage::F32(v) => Some(v.as_slice()),
        _ => None,
    })
}

fn bf16s<'a>(s: &'a Storage, l: &Layout) -> Option<&'a [bf16]> {
    slice(s, l, |c| match c {
        CpuStorage::BF16(v) => Some(v.as_slice()),
        _ => None,
    })
}

/// Runs `f` on the elements of a contiguous CPU weight in f32 or bf16; None otherwise.
pub fn with_weights<R>(w: &Tensor, f: impl FnOnce(Weights<'_>) -> R) -> Option<R> {
    let (s, l) = w.storage_and_layout();
    let wv = match w.dtype() {
        DType::F32 => f32s(&s, l).map(Weights::F32),
        DType::BF16 => bf16s(&s, l).map(Weights::Bf16),
        _ => None,
    }?;
    Some(f(wv))
}

/// Whether the kernels here take an x of `x` dtype with a weight of `w` dtype.
pub fn handles(x: DType, w: DType) -> bool {
    x == DType::F32 && matches!(w, DType::F32 | DType::BF16)
}

/// `x (rows, in) · w (out, in)ᵀ + bias`, on the kernel that suits it (see the module docs).
/// An f32 x with a bf16 w gives f32.
pub fn forward(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    if bf16_matmul_takes(x, &[(w, bias)]) {
        let mut y = forward_many(x, &[(w, bias)])?;
        return Ok(y.remove(0));
    }
    let (rows, k) = x.dims2()?;
    let (n, kw) = w.dims2()?;
    if kw == k
        && handles(x.dtype(), w.dtype())
        && matches!(x.device(), Device::Cpu)
        && bias.is_none_or(|b| b.dtype() == DType::F32 && b.dims() == [n])
    {
        let (x, w) = (x.contiguous()?, w.contiguous()?);
        let bias = bias.map(|b| b.contiguous()).transpose()?;
        let (xs, xl) = x.storage_and_layout();
        let bias_g = bias.as_ref().map(|b| b.storage_and_layout());
        let xv = f32s(&xs, xl);
        let bv = bias_g.as_ref().map(|(g, l)| f32s(g, l));
        if let (Some(xv), None | Some(Some(_))) = (xv, &bv) {
            let bv = bv.flatten();
            let mut y = vec![0f32; rows * n];
            if with_weights(&w, |wv| xwt(xv, rows, k, wv, n, bv, &mut y)).is_some() {
                return Tensor::from_vec(y, (rows, n), &Device::Cpu);
            }
        }
    }
    candle_forward(x, w, bias)
}

/// `x · wᵀ + bias` on Candle's own ops.
fn candle_forward(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let y = if x.dtype() == w.dtype() {
        x.matmul(&w.t()?)?
    } else {
        x.to_dtype(w.dtype())?
            .matmul(&w.t()?)?
            .to_dtype(x.dtype())?
    };
    match bias {
        Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?),
        None => Ok(y),
    }
}

/// Whether x (rows, k) and these weights (n, k) with their biases go to the bf16 matmul:
/// an f32 x of more rows than the gemv takes, bf16 weights, f32 biases, all on the CPU.
fn bf16_matmul_takes(x: &Tensor, ws: &[(&Tensor, Option<&Tensor>)]) -> bool {
    let Ok((rows, k)) = x.dims2() else {
        return false;
    };
    x.dtype() == DType::F32
        && matches!(x.device(), Device::Cpu)
        && rows > gemv_max_rows(DType::BF16)
        && ws.iter().all(|(w, b)| {
            w.dtype() == DType::BF16
                && matches!(w.device(), Device::Cpu)
                && w.dims2().is_ok_and(|(n, kw)| {
                    kw == k && b.is_none_or(|b| b.dtype() == DType::F32 && b.dims() == [n])
                })
        })
}

/// `x · wᵢᵀ + biasᵢ` for several weights of the same input (the query, key and value
/// projections, or the gate and up projections). Many rows with bf16 weights go to one
/// bf16 matmul that rounds and packs x once for all of them, writing outputs that are
/// never cleared first; anything else is [`forward`] weight by weight.
pub fn forward_many(
    x: &Tensor,
    ws: &[(&Tensor, Option<&Tensor>)],
) -> candle_core::Result<Vec<Tensor>> {
    if !bf16_matmul_takes(x, ws) {
        return ws.iter().map(|(w, b)| forward(x, w, *b)).collect();
    }
    let (rows, k) = x.dims2()?;
    let x = x.contiguous()?;
    let ws: Vec<(Tensor, Option<Tensor>)> = ws
        .iter()
        .map(|(w, b)| Ok((w.contiguous()?, b.map(|b| b.contiguous()).transpose()?)))
        .collect::<candle_core::Result<_>>()?;
    let on_candle = |x: &Tensor, ws: &[(Tensor, Option<Tensor>)]| {
        ws.iter()
            .map(|(w, b)| candle_forward(x, w, b.as_ref()))
            .collect()
    };
    let (xs, xl) = x.storage_and_layout();
    let Some(xv) = f32s(&xs, xl) else {
        drop(xs);
        return on_candle(&x, &ws);
    };
    let guards: Vec<_> = ws
        .iter()
        .map(|(w, b)| {
            (
                w.storage_and_layout(),
                b.as_ref().map(|b| b.storage_and_layout()),
            )
        })
        .collect();
    // (W, bias, n) of each weight; None if a storage is not the CPU slice it should be
    type View<'a> = (&'a [bf16], Option<&'a [f32]>, usize);
    let views: Option<Vec<View<'_>>> = guards
        .iter()
        .zip(&ws)
        .map(|(((wg, wl), bg), (wt, _))| {
            let b = match bg {
                Some((g, l)) => Some(f32s(g, l)?),
                None => None,
            };
            Some((bf16s(wg, wl)?, b, wt.dims()[0]))
        })
        .collect();
    let Some(views) = views else {
        drop(guards);
        drop(xs);
        return on_candle(&x, &ws);
    };
    let specs = views
        .iter()
        .map(|&(w, b, n)| (B::W(w, Orient::Transposed), b, n))
        .collect();
    Ok(run_jobs(xv, rows, k, specs))
}

/// The bf16 matmul of x (rows × k) with each (B, bias, n), into fresh (rows, n) tensors.
fn run_jobs(
    xv: &[f32],
    rows: usize,
    k: usize,
    specs: Vec<(B<'_>, Option<&[f32]>, usize)>,
) -> Vec<Tensor> {
    let mut outs: Vec<Vec<f32>> = specs
        .iter()
        .map(|&(_, _, n)| Vec::with_capacity(rows * n))
        .collect();
    let mut jobs: Vec<gemm_bf16::Job<'_>> = specs
        .iter()
        .zip(outs.iter_mut())
        .map(|(&(b, bias, n), c)| gemm_bf16::Job {
            b,
            n,
            bias,
            c: &mut c.spare_capacity_mut()[..rows * n],
        })
        .collect();
    gemm_bf16::matmul_many(level(), xv, rows, k, &mut jobs);
    drop(jobs);
    outs.into_iter()
        .zip(&specs)
        .map(|(mut y, &(_, _, n))| {
            // SAFETY: `matmul_many` wrote every one of the rows × n elements (its contract)
            unsafe { y.set_len(rows * n) };
            Tensor::from_vec(y, (rows, n), &Device::Cpu).expect("rows × n elements")
        })
        .collect()
}

/// `x · Wᵢᵀ + biasᵢ` for weights packed ahead ([`gemm_bf16::Packed`], all of x's width), at
/// any number of rows: one pass of the bf16 matmul rounds and packs x once for all of them
/// (one row streams each weight once, as decode's gemv does). x is taken in f32 and the
/// outputs are f32.
pub fn forward_packed(
    x: &Tensor,
    ws: &[(&Packed, Option<&Tensor>)],
) -> candle_core::Result<Vec<Tensor>> {
    let (rows, k) = x.dims2()?;
    if let Some((p, _)) = ws.iter().find(|(p, _)| p.k() != k) {
        candle_core::bail!("packed weight {p:?} takes {} inputs, x has {k}", p.k());
    }
    let x = x
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .contiguous()?;
    let biases: Vec<Option<Tensor>> = ws
        .iter()
        .map(|(_, b)| {
            b.map(|b| {
                b.to_device(&Device::Cpu)?
                    .to_dtype(DType::F32)?
                    .contiguous()
            })
            .transpose()
        })
        .collect::<candle_core::Result<_>>()?;
    for ((p, _), b) in ws.iter().zip(&biases) {
        if let Some(b) = b {
            if b.dims() != [p.n()] {
                candle_core::bail!("bias of shape {:?} for packed weight {p:?}", b.dims());
            }
        }
    }
    let (xs, xl) = x.storage_and_layout();
    let xv = f32s(&xs, xl).expect("a contiguous f32 CPU tensor");
    let guards: Vec<_> = biases
        .iter()
        .map(|b| b.as_ref().map(|b| b.storage_and_layout()))
        .collect();
    let specs = ws
        .iter()
        .zip(&guards)
        .map(|((p, _), g)| {
            let bias = g
                .as_ref()
                .map(|(s, l)| f32s(s, l).expect("a contiguous f32 CPU tensor"));
            (B::Packed(p, Orient::Transposed), bias, p.n())
        })
        .collect();
    Ok(run_jobs(xv, rows, k, specs))
}

/// `dy (rows, out) · w (out, in)`: the input's gradient through a frozen weight, in dy's
/// dtype.
pub fn backward_input(dy: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let (rows, n) = dy.dims2()?;
    let (nw, k) = w.dims2()?;
    if nw == n && handles(dy.dtype(), w.dtype()) && matches!(dy.device(), Device::Cpu) {
        let (dy, w) = (dy.contiguous()?, w.contiguous()?);
        let (ds, dl) = dy.storage_and_layout();
        if let Some(dv) = f32s(&ds, dl) {
            let mut dx = vec![0f32; rows * k];
            if with_weights(&w, |wv| dyw(dv, rows, n, wv, k, &mut dx)).is_some() {
                return Tensor::from_vec(dx, (rows, k), &Device::Cpu);
            }
        }
    }
    if dy.dtype() == w.dtype() {
        dy.matmul(w)
    } else {
        dy.matmul(&w.to_dtype(dy.dtype())?)
    }
}

/// A frozen weight (out, in) as the products here take it: a tensor (f32 or bf16), or bf16
/// packed ahead (an inference model's layers; training may share them).
#[derive(Debug, Clone)]
pub enum Frozen {
    Tensor(Tensor),
    Packed(Arc<Packed>),
}

impl Frozen {
    pub fn dims2(&self) -> candle_core::Result<(usize, usize)> {
        match self {
            Frozen::Tensor(t) => t.dims2(),
            Frozen::Packed(p) => Ok((p.n(), p.k())),
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            Frozen::Tensor(t) => t.dtype(),
            Frozen::Packed(_) => DType::BF16,
        }
    }

    /// The weight as an (out, in) tensor (a packed one read back).
    pub fn tensor(&self) -> candle_core::Result<Tensor> {
        match self {
            Frozen::Tensor(t) => Ok(t.clone()),
            Frozen::Packed(p) => Tensor::from_vec(p.unpack(), (p.n(), p.k()), &Device::Cpu),
        }
    }

    /// [`xwt`] on this weight; None for a tensor the kernels do not take.
    pub fn xwt(
        &self,
        x: &[f32],
        rows: usize,
        k: usize,
        n: usize,
        bias: Option<&[f32]>,
        y: &mut [f32],
    ) -> Option<()> {
        match self {
            Frozen::Tensor(t) => {
                with_weights(&t.contiguous().ok()?, |wv| xwt(x, rows, k, wv, n, bias, y))
            }
            Frozen::Packed(p) => {
                let b = B::Packed(p, Orient::Transposed);
                gemm_bf16::matmul(level(), x, rows, k, b, n, bias, y);
                Some(())
            }
        }
    }

    /// [`dyw`] on this weight; None for a tensor the kernels do not take.
    pub fn dyw(&self, dy: &[f32], rows: usize, n: usize, k: usize, dx: &mut [f32]) -> Option<()> {
        match self {
            Frozen::Tensor(t) => {
                with_weights(&t.contiguous().ok()?, |wv| dyw(dy, rows, n, wv, k, dx))
            }
            Frozen::Packed(p) => {
                let b = B::Packed(p, Orient::Plain);
                gemm_bf16::matmul(level(), dy, rows, n, b, k, None, dx);
                Some(())
            }
        }
    }
}

/// [`forward`] on a frozen weight.
pub fn forward_frozen(
    x: &Tensor,
    w: &Frozen,
    bias: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    match w {
        Frozen::Tensor(t) => forward(x, t, bias),
        Frozen::Packed(p) => Ok(forward_packed(x, &[(p, bias)])?.remove(0)),
    }
}

/// [`backward_input`] on a frozen weight.
pub fn backward_input_frozen(dy: &Tensor, w: &Frozen) -> candle_core::Result<Tensor> {
    let p = match w {
        Frozen::Tensor(t) => return backward_input(dy, t),
        Frozen::Packed(p) => p,
    };
    let (rows, n) = dy.dims2()?;
    if dy.dtype() != DType::F32 || n != p.n() {
        return backward_input(dy, &w.tensor()?);
    }
    let dy = dy.to_device(&Device::Cpu)?.contiguous()?;
    let (ds, dl) = dy.storage_and_layout();
    let dv = f32s(&ds, dl).expect("a contiguous f32 CPU tensor");
    let mut dx = vec![0f32; rows * p.k()];
    w.dyw(dv, rows, n, p.k(), &mut dx);
    Tensor::from_vec(dx, (rows, p.k()), &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::super::{available, with_level};
    use super::*;

    /// The tensor entry points on every level, both weight dtypes, rows on both sides of the
    /// gemv threshold, against Candle's f64 matmul of the same values. The bound covers
    /// the bf16 matmul rounding x to bf16 (relative 2⁻⁸ per term, ~0.4% of Σ|x·w|) on the
    /// levels that have it, and f32 accumulation elsewhere.
    #[test]
    fn forward_and_backward_match_candle_on_every_level() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let (k, n) = (70, 45);
        for rows in [1, 5, 16, 17, 40] {
            let x = Tensor::randn(0f32, 1.0, (rows, k), &dev)?;
            let dy = Tensor::randn(0f32, 1.0, (rows, n), &dev)?;
            let bias = Tensor::randn(0f32, 1.0, n, &dev)?;
            for wdt in [DType::F32, DType::BF16] {
                let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?.to_dtype(wdt)?;
                let w64 = w.to_dtype(DType::F64)?;
                let want_y = x
                    .to_dtype(DType::F64)?
                    .matmul(&w64.t()?)?
                    .broadcast_add(&bias.to_dtype(DType::F64)?)?;
                let want_dx = dy.to_dtype(DType::F64)?.matmul(&w64)?;
                // Σ|x·w| per output: the scale of the rounding error
                let mag_y = x.abs()?.to_dtype(DType::F64)?.matmul(&w64.abs()?.t()?)?;
                let mag_dx = dy.abs()?.to_dtype(DType::F64)?.matmul(&w64.abs()?)?;
                for l in available() {
                    let (y, dx) = with_level(l, || -> candle_core::Result<_> {
                        Ok((forward(&x, &w, Some(&bias))?, backward_input(&dy, &w)?))
                    })?;
                    // on the bf16 level, the bf16 matmul and gemv round x or dy to bf16
                    let bf = wdt == DType::BF16 && l >= Level::Avx512Bf16;
                    let r = if bf { 1.0 / 128.0 } else { 1e-5 };
                    for (got, want, mag, r) in
                        [(&y, &want_y, &mag_y, r), (&dx, &want_dx, &mag_dx, r)]
                    {
                        assert_eq!(got.dtype(), DType::F32);
                        let err = (got.to_dtype(DType::F64)? - want)?.abs()?;
                        let bound = ((mag * r)? + 1e-5)?;
                        let over = err.gt(&bound)?.to_dtype(DType::F64)?.sum_all()?;
                        let over = over.to_scalar::<f64>()?;
                        assert_eq!(over, 0.0, "{l:?} {wdt:?} rows {rows}");
                    }
                }
            }
        }
        Ok(())
    }
}
