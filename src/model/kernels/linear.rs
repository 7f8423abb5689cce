//! `x · Wᵀ + bias` on tensors: which kernel a linear layer's product goes to.
//!
//! x is f32 (rows, in); W is the layer's frozen weight (out, in) in f32 or bf16. Few rows
//! (decode, short batches) go to the streaming gemv; many rows of an f32 weight to `mm` (the
//! `gemm` crate). Anything else (many rows of a bf16 weight, f64 gradient checks, other
//! devices) is left to Candle.

use candle_core::{CpuStorage, DType, Device, Layout, Storage, Tensor};
use half::bf16;

use super::gemv::{gemv, Weights};
use super::sgemm::{mm, parallelism_for};
use super::{level, Level};

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
    } else if w == DType::BF16 {
        "candle matmul (bf16)".to_string()
    } else {
        format!("{f32_mm} ({w:?})")
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

/// `x (rows, in) · w (out, in)ᵀ + bias`, on the kernel that suits it (see the module docs).
/// An f32 x with a bf16 w gives f32.
pub fn forward(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    if let Some(y) = fast(x, w, bias)? {
        return Ok(y);
    }
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

/// [`forward`] when a kernel here takes it; None to leave it to Candle (many rows of a bf16
/// weight, f64, non-CPU tensors).
fn fast(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Option<Tensor>> {
    let (rows, k) = x.dims2()?;
    let (n, kw) = w.dims2()?;
    if kw != k
        || x.dtype() != DType::F32
        || !matches!(w.dtype(), DType::F32 | DType::BF16)
        || !matches!(x.device(), Device::Cpu)
        || (w.dtype() == DType::BF16 && rows > gemv_max_rows(DType::BF16))
        || bias.is_some_and(|b| b.dtype() != DType::F32 || b.dims() != [n])
    {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = w.storage_and_layout();
    let bias_t = bias.map(|b| b.contiguous()).transpose()?;
    let bias_g = bias_t.as_ref().map(|b| b.storage_and_layout());
    let Some(xv) = slice(&xs, xl, |c| match c {
        CpuStorage::F32(v) => Some(v.as_slice()),
        _ => None,
    }) else {
        return Ok(None);
    };
    let wv = match w.dtype() {
        DType::F32 => slice(&ws, wl, |c| match c {
            CpuStorage::F32(v) => Some(v.as_slice()),
            _ => None,
        })
        .map(Weights::F32),
        _ => slice::<bf16>(&ws, wl, |c| match c {
            CpuStorage::BF16(v) => Some(v.as_slice()),
            _ => None,
        })
        .map(Weights::Bf16),
    };
    let Some(wv) = wv else {
        return Ok(None);
    };
    let bv = match &bias_g {
        Some((g, l)) => match slice(g, l, |c| match c {
            CpuStorage::F32(v) => Some(v.as_slice()),
            _ => None,
        }) {
            Some(b) => Some(b),
            None => return Ok(None),
        },
        None => None,
    };
    let mut y = vec![0f32; rows * n];
    let lv = level();
    match wv {
        _ if rows <= gemv_max_rows(w.dtype()) => gemv(lv, xv, rows, k, wv, n, bv, &mut y),
        Weights::Bf16(_) => unreachable!("many rows of a bf16 weight are left to Candle"),
        Weights::F32(wf) => {
            if let Some(b) = bv {
                y.chunks_mut(n).for_each(|r| r.copy_from_slice(b));
            }
            mm(
                rows,
                n,
                k,
                &mut y,
                n,
                bv.is_some(),
                xv,
                (1, k),
                wf,
                (k, 1),
                1.0,
                parallelism_for(rows, n, k),
            )
        }
    }
    Ok(Some(Tensor::from_vec(y, (rows, n), &Device::Cpu)?))
}
