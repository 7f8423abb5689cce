//! Linear layers: dense or quantized weights, an optional LoRA, the dropout mask, and the
//! frozen-weight matmul whose backward pass skips the weight's gradient.

#[allow(unused_imports)]
use super::*;
use crate::model::kernels;
use crate::model::kernels::linear::Frozen;
use std::sync::Arc;

/// Which kernels the forward uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Fused kernels, no autograd.
    Infer,
    /// Differentiable ops only; LoRA dropout active, its masks drawn from `dropout_seed`
    /// (so a step can be replayed exactly, e.g. after resuming).
    Train { dropout_seed: u64 },
}

impl Mode {
    pub fn is_train(self) -> bool {
        matches!(self, Mode::Train { .. })
    }
}

/// From this many input rows on, a quantized layer is dequantized for the matmul.
pub(super) const QUANT_DEQUANT_ROWS: usize = 16;

/// A dropout mask (rows, cols) scaled by 1/(1-p), from a seed: the mask the fused LoRA op
/// draws (`lora_op::keeps`).
pub(super) fn dropout_mask(
    seed: u64,
    rows: usize,
    cols: usize,
    p: f32,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let keep = 1.0 - p;
    let th = crate::model::lora_op::keep_threshold(keep);
    let scale = 1.0 / keep;
    let v: Vec<f32> = (0..rows * cols)
        .map(|e| {
            if crate::model::lora_op::keeps(seed, e, th) {
                scale
            } else {
                0.0
            }
        })
        .collect();
    Ok(Tensor::from_vec(v, (rows, cols), device)?.to_dtype(dtype)?)
}

/// A LoRA adapter on one linear layer: `scale · B (A x)`, A: (r, in), B: (out, r).
#[derive(Debug, Clone)]
pub struct Lora {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    pub dropout: f32,
    /// Distinguishes this layer's dropout masks from the others'.
    pub id: u64,
}

/// The base weight of a linear layer, dense (f32/bf16), bf16 packed ahead for the bf16
/// matmul (an inference model's layers, see [`Qwen2::pack_weights`]), or quantized (GGUF
/// blocks).
#[derive(Debug, Clone)]
pub enum LinearWeight {
    /// (out, in)
    Dense(Tensor),
    /// (out, in), bf16, frozen
    Packed(Arc<kernels::gemm_bf16::Packed>),
    Quant(QMatMul),
}

#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: LinearWeight,
    pub bias: Option<Tensor>,
    pub lora: Option<Lora>,
    pub in_features: usize,
    pub out_features: usize,
}

impl Linear {
    pub fn new(
        weight: LinearWeight,
        bias: Option<Tensor>,
        out_features: usize,
        in_features: usize,
    ) -> Self {
        Self {
            weight,
            bias,
            lora: None,
            in_features,
            out_features,
        }
    }

    /// x: (..., in) -> (..., out)
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.reshape((rows, self.in_features))?;
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = self.out_features;
        let frozen = match &self.weight {
            LinearWeight::Dense(w) if !w.is_variable() => Some(Frozen::Tensor(w.clone())),
            LinearWeight::Packed(p) => Some(Frozen::Packed(p.clone())),
            _ => None,
        };
        // Training a LoRA adapter over a frozen weight: one op that leaves only its output in
        // the autograd graph (see `lora_op`).
        if let (Some(l), Some(w), Mode::Train { dropout_seed }) = (&self.lora, &frozen, mode) {
            if self.bias.as_ref().is_none_or(|b| !b.is_variable())
                && (matches!(x2.dtype(), DType::F32 | DType::F64) && w.dtype() == x2.dtype()
                    || kernels::linear::handles(x2.dtype(), w.dtype()))
            {
                let op = LoraLinear {
                    w: w.clone(),
                    bias: self.bias.clone(),
                    scale: l.scale,
                    dropout: (l.dropout > 0.0).then(|| {
                        (
                            l.dropout,
                            dropout_seed ^ l.id.wrapping_mul(0x9E3779B97F4A7C15),
                        )
                    }),
                };
                return Ok(lora_linear(&x2, &l.a, &l.b, op)?.reshape(out_dims)?);
            }
        }
        let mut bias = self.bias.as_ref();
        let mut y = match (&self.weight, frozen) {
            // Training over a frozen weight: only the input's gradient is needed.
            (_, Some(w)) if mode.is_train() && matches!(x2.dtype(), DType::F32 | DType::F64) => {
                x2.apply_op1_arc(Arc::new(Box::new(FrozenMatmul { w })))?
            }
            // Inference (the kernels add the bias themselves), or a dtype the frozen op
            // does not take
            (LinearWeight::Packed(p), _) => {
                kernels::linear::forward_packed(&x2, &[(p, bias.take())])?.remove(0)
            }
            (LinearWeight::Dense(w), _) if !mode.is_train() => {
                kernels::linear::forward(&x2, w, bias.take())?
            }
            (LinearWeight::Dense(w), _) => x2.matmul(&w.t()?)?,
            // Many rows (a prefill, a scoring batch): dequantizing this layer's weight once and
            // using the f32 matmul beats the quantized kernels, which shine at one row (decode).
            (LinearWeight::Quant(QMatMul::QTensor(q)), _) if rows >= QUANT_DEQUANT_ROWS => {
                let w = match kernels::quant::dequantize(q)? {
                    Some(w) => w,
                    None => q.dequantize(x2.device())?,
                };
                kernels::linear::forward(&x2.to_dtype(DType::F32)?, &w, None)?
                    .to_dtype(x2.dtype())?
            }
            (LinearWeight::Quant(QMatMul::QTensor(q)), _) if x2.dtype() == DType::F32 => {
                let xs = x2.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
                let mut y = vec![0f32; rows * self.out_features];
                match kernels::quant::gemv(&xs, rows, q, &mut y)? {
                    Some(()) => Tensor::from_vec(y, (rows, self.out_features), x2.device())?,
                    None => QMatMul::QTensor(q.clone()).forward(&x2)?,
                }
            }
            (LinearWeight::Quant(q), _) => q.forward(&x2)?,
        };
        if let Some(b) = bias {
            y = y.broadcast_add(b)?;
        }
        Ok(self.add_lora(y, &x2, mode)?.reshape(out_dims)?)
    }

    /// y plus the LoRA's `scale · x B A` (x under its dropout mask in training), if any.
    fn add_lora(&self, y: Tensor, x2: &Tensor, mode: Mode) -> Result<Tensor> {
        let Some(l) = &self.lora else {
            return Ok(y);
        };
        let xin = match mode {
            Mode::Train { dropout_seed } if l.dropout > 0.0 => {
                let seed = dropout_seed ^ l.id.wrapping_mul(0x9E3779B97F4A7C15);
                let m = dropout_mask(
                    seed,
                    x2.dim(0)?,
                    self.in_features,
                    l.dropout,
                    x2.dtype(),
                    x2.device(),
                )?;
                (x2 * m)?
            }
            _ => x2.clone(),
        };
        let delta = xin.matmul(&l.a.t()?)?.matmul(&l.b.t()?)?;
        Ok((y + (delta * l.scale)?)?)
    }

    /// The outputs of several linears of the same x (..., in): in inference over dense
    /// weights, one bf16 matmul rounds and packs x once for all of them (see
    /// `kernels::linear::forward_many`); otherwise each runs its own [`Self::forward`].
    pub fn forward_shared(ls: &[&Linear], x: &Tensor, mode: Mode) -> Result<Vec<Tensor>> {
        let dense: Option<Vec<(&Tensor, Option<&Tensor>)>> = ls
            .iter()
            .map(|l| match &l.weight {
                LinearWeight::Dense(w) if !mode.is_train() => Some((w, l.bias.as_ref())),
                _ => None,
            })
            .collect();
        let packed: Option<Vec<(&kernels::gemm_bf16::Packed, Option<&Tensor>)>> = ls
            .iter()
            .map(|l| match &l.weight {
                LinearWeight::Packed(p) if !mode.is_train() && x.dtype() == DType::F32 => {
                    Some((&**p, l.bias.as_ref()))
                }
                _ => None,
            })
            .collect();
        let same_in = ls.iter().all(|l| l.in_features == ls[0].in_features);
        if !same_in || ls.len() < 2 || dense.is_none() && packed.is_none() {
            return ls.iter().map(|l| l.forward(x, mode)).collect();
        }
        let dims = x.dims().to_vec();
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.reshape((rows, ls[0].in_features))?;
        let ys = match (dense, packed) {
            (Some(ws), _) => kernels::linear::forward_many(&x2, &ws)?,
            (None, Some(ws)) => kernels::linear::forward_packed(&x2, &ws)?,
            (None, None) => unreachable!("checked above"),
        };
        ls.iter()
            .zip(ys)
            .map(|(l, y)| {
                let y = l.add_lora(y, &x2, mode)?;
                let mut out_dims = dims.clone();
                *out_dims.last_mut().unwrap() = l.out_features;
                Ok(y.reshape(out_dims)?)
            })
            .collect()
    }

    /// The dtype of a dense weight (None when quantized).
    pub fn dense_dtype(&self) -> Option<DType> {
        match &self.weight {
            LinearWeight::Dense(w) => Some(w.dtype()),
            LinearWeight::Packed(_) => Some(DType::BF16),
            LinearWeight::Quant(_) => None,
        }
    }

    /// The weight as a dense (out, in) tensor (dequantized when quantized).
    pub fn dense_weight(&self) -> Result<Tensor> {
        Ok(match &self.weight {
            LinearWeight::Dense(w) => w.clone(),
            LinearWeight::Packed(p) => Frozen::Packed(p.clone()).tensor()?,
            LinearWeight::Quant(QMatMul::QTensor(q)) => q.dequantize(&q.device())?,
            LinearWeight::Quant(QMatMul::Tensor(t)) => t.clone(),
            LinearWeight::Quant(QMatMul::TensorF16(t)) => t.to_dtype(DType::F32)?,
        })
    }
}

/// `x · Wᵀ` for a weight that is not trained. Candle's own matmul backward also computes the
/// weight's gradient (a second full matmul and a weight-sized buffer per layer); this op
/// returns only the input's gradient, `dy · W`.
pub(super) struct FrozenMatmul {
    pub(super) w: Frozen,
}

impl candle_core::CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (start, end) = layout.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("frozen-matmul: input must be contiguous".into())
        })?;
        let y = match storage {
            candle_core::CpuStorage::F32(v) => kernels::linear::forward_frozen(
                &Tensor::from_slice(&v[start..end], layout.shape(), &Device::Cpu)?,
                &self.w,
                None,
            )?,
            candle_core::CpuStorage::F64(v) => {
                Tensor::from_slice(&v[start..end], layout.shape(), &Device::Cpu)?
                    .matmul(&self.w.tensor()?.to_dtype(DType::F64)?.t()?)?
            }
            _ => {
                return Err(candle_core::Error::Msg(
                    "frozen-matmul: f32 or f64 only".into(),
                ))
            }
        };
        let shape = y.shape().clone();
        let (st, l) = y.storage_and_layout();
        match (&*st, l.contiguous_offsets()) {
            (candle_core::Storage::Cpu(c), Some((0, _))) => Ok((c.clone(), shape)),
            _ => Err(candle_core::Error::Msg(
                "frozen-matmul: unexpected result layout".into(),
            )),
        }
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(kernels::linear::backward_input_frozen(grad, &self.w)?))
    }
}

/// The dtype norms, softmax and logits are computed in: f32, or f64 for an f64 model.
pub fn compute_dtype(dt: DType) -> DType {
    if dt == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}
