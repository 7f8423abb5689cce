//! The Qwen2 decoder (Qwen2 / Qwen2.5 / Qwen1.5, `Qwen2ForCausalLM`) in Candle.
//!
//! One forward serves inference and training: `Mode::Infer` uses Candle's fused CPU kernels
//! (rms-norm, rope, softmax: fast, no backward) and a KV cache; `Mode::Train` uses
//! differentiable compositions of the same maths so autograd reaches LoRA (or all) weights.
//! Every linear layer can carry a LoRA adapter (`y = W x + b + scale · B A x`).
//!
//! Shapes in comments: b batch, s new tokens, t cached + new tokens, h hidden, d head dim.

use anyhow::{bail, Context, Result};
use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Module, Tensor, D};

use super::attention::{fused_attention, AttnMask, QUERY_BLOCK};
use super::config::Qwen2Config;
use super::lora_op::{lora_linear, LoraLinear};

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
const QUANT_DEQUANT_ROWS: usize = 16;

/// A dropout mask (rows, cols) scaled by 1/(1-p), from a seed: the mask the fused LoRA op
/// draws (`lora_op::keeps`).
fn dropout_mask(
    seed: u64,
    rows: usize,
    cols: usize,
    p: f32,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let keep = 1.0 - p;
    let th = super::lora_op::keep_threshold(keep);
    let scale = 1.0 / keep;
    let v: Vec<f32> = (0..rows * cols)
        .map(|e| {
            if super::lora_op::keeps(seed, e, th) {
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

/// The base weight of a linear layer, dense (f32/bf16) or quantized (GGUF blocks).
#[derive(Debug, Clone)]
pub enum LinearWeight {
    /// (out, in)
    Dense(Tensor),
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
        // Training a LoRA adapter over a frozen weight: one op that leaves only its output in
        // the autograd graph (see `lora_op`).
        if let (Some(l), LinearWeight::Dense(w), Mode::Train { dropout_seed }) =
            (&self.lora, &self.weight, mode)
        {
            if !w.is_variable()
                && self.bias.as_ref().is_none_or(|b| !b.is_variable())
                && matches!(x2.dtype(), DType::F32 | DType::F64)
                && w.dtype() == x2.dtype()
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
        let mut y = match &self.weight {
            // Training over a frozen weight: only the input's gradient is needed.
            LinearWeight::Dense(w)
                if mode.is_train()
                    && !w.is_variable()
                    && matches!(x2.dtype(), DType::F32 | DType::F64) =>
            {
                x2.apply_op1_arc(std::sync::Arc::new(Box::new(FrozenMatmul { w: w.clone() })))?
            }
            LinearWeight::Dense(w) => x2.matmul(&w.t()?)?,
            // Many rows (a prefill, a scoring batch): dequantizing this layer's weight once and
            // using the f32 matmul beats the quantized kernels, which shine at one row (decode).
            LinearWeight::Quant(QMatMul::QTensor(q)) if rows >= QUANT_DEQUANT_ROWS => {
                x2.matmul(&q.dequantize(x2.device())?.t()?)?
            }
            LinearWeight::Quant(q) => q.forward(&x2)?,
        };
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        if let Some(l) = &self.lora {
            let xin = match mode {
                Mode::Train { dropout_seed } if l.dropout > 0.0 => {
                    let seed = dropout_seed ^ l.id.wrapping_mul(0x9E3779B97F4A7C15);
                    let m = dropout_mask(
                        seed,
                        rows,
                        self.in_features,
                        l.dropout,
                        x2.dtype(),
                        x2.device(),
                    )?;
                    (x2 * m)?
                }
                _ => x2,
            };
            let delta = xin.matmul(&l.a.t()?)?.matmul(&l.b.t()?)?;
            y = (y + (delta * l.scale)?)?;
        }
        Ok(y.reshape(out_dims)?)
    }

    /// The dtype of a dense weight (None when quantized).
    pub fn dense_dtype(&self) -> Option<DType> {
        match &self.weight {
            LinearWeight::Dense(w) => Some(w.dtype()),
            LinearWeight::Quant(_) => None,
        }
    }

    /// The weight as a dense (out, in) tensor (dequantized when quantized).
    pub fn dense_weight(&self) -> Result<Tensor> {
        Ok(match &self.weight {
            LinearWeight::Dense(w) => w.clone(),
            LinearWeight::Quant(QMatMul::QTensor(q)) => q.dequantize(&q.device())?,
            LinearWeight::Quant(QMatMul::Tensor(t)) => t.clone(),
            LinearWeight::Quant(QMatMul::TensorF16(t)) => t.to_dtype(DType::F32)?,
        })
    }
}

/// `x · Wᵀ` for a weight that is not trained. Candle's own matmul backward also computes the
/// weight's gradient (a second full matmul and a weight-sized buffer per layer); this op
/// returns only the input's gradient, `dy · W`.
struct FrozenMatmul {
    w: Tensor,
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
        let x = match storage {
            candle_core::CpuStorage::F32(v) => {
                Tensor::from_slice(&v[start..end], layout.shape(), &Device::Cpu)?
            }
            candle_core::CpuStorage::F64(v) => {
                Tensor::from_slice(&v[start..end], layout.shape(), &Device::Cpu)?
            }
            _ => {
                return Err(candle_core::Error::Msg(
                    "frozen-matmul: f32 or f64 only".into(),
                ))
            }
        };
        let y = x.matmul(&self.w.t()?)?;
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
        Ok(Some(grad.matmul(&self.w)?))
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

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, mode: Mode) -> Result<Tensor> {
    match mode {
        Mode::Infer => Ok(candle_nn::ops::rms_norm(&x.contiguous()?, w, eps as f32)?),
        Mode::Train { .. } => {
            if let Some(y) = super::ops::rms_norm_trainable(x, w, eps) {
                return Ok(y?);
            }
            let dt = x.dtype();
            let x = x.to_dtype(compute_dtype(dt))?;
            let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
            let y = x.broadcast_div(&(ms + eps)?.sqrt()?)?;
            Ok(y.to_dtype(dt)?.broadcast_mul(w)?)
        }
    }
}

/// Rotary tables, (max_positions, d/2) each.
#[derive(Debug, Clone)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    pub fn new(cfg: &Qwen2Config, dtype: DType, device: &Device) -> Result<Self> {
        let d = cfg.head_dim();
        let n = cfg.max_position_embeddings;
        let inv: Vec<f32> = (0..d / 2)
            .map(|i| 1.0 / (cfg.rope_theta as f32).powf(2.0 * i as f32 / d as f32))
            .collect();
        let inv = Tensor::from_vec(inv, (1, d / 2), device)?;
        let pos = Tensor::arange(0u32, n as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((n, 1))?;
        let freqs = pos.broadcast_mul(&inv)?;
        Ok(Self {
            cos: freqs.cos()?.to_dtype(dtype)?,
            sin: freqs.sin()?.to_dtype(dtype)?,
        })
    }

    /// cos/sin for the positions of a batch: (s, d/2) when shared, else (b, s, d/2).
    fn tables(&self, pos: &Positions) -> Result<(Tensor, Tensor)> {
        match pos {
            Positions::Shared { start, len } => Ok((
                self.cos.narrow(0, *start, *len)?,
                self.sin.narrow(0, *start, *len)?,
            )),
            Positions::PerRow(idx) => {
                let (b, s) = idx.dims2()?;
                let flat = idx.flatten_all()?;
                let c = self.cos.index_select(&flat, 0)?;
                let sn = self.sin.index_select(&flat, 0)?;
                let half = c.dim(1)?;
                Ok((c.reshape((b, s, half))?, sn.reshape((b, s, half))?))
            }
        }
    }
}

/// x: (b, heads, s, d); cos/sin (s, d/2) or (b, s, d/2)
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor, mode: Mode) -> Result<Tensor> {
    match mode {
        Mode::Infer => Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin)?),
        Mode::Train { .. } => {
            let d = x.dim(D::Minus1)?;
            let (cos, sin) = if cos.rank() == 2 {
                (
                    cos.unsqueeze(0)?.unsqueeze(0)?,
                    sin.unsqueeze(0)?.unsqueeze(0)?,
                )
            } else {
                (cos.unsqueeze(1)?, sin.unsqueeze(1)?)
            };
            let x1 = x.narrow(D::Minus1, 0, d / 2)?;
            let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
            let r1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
            let r2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
            Ok(Tensor::cat(&[r1, r2], D::Minus1)?)
        }
    }
}

enum Positions {
    Shared {
        start: usize,
        len: usize,
    },
    /// (b, s) u32
    PerRow(Tensor),
}

#[derive(Debug, Clone)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    n_heads: usize,
    n_kv: usize,
    head_dim: usize,
}

#[derive(Debug, Clone)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

#[derive(Debug, Clone)]
pub struct Layer {
    pub attn: Attention,
    pub mlp: Mlp,
    pub input_layernorm: Tensor,
    pub post_attention_layernorm: Tensor,
}

/// Keys and values of past tokens, per layer, plus which cached positions are real tokens.
///
/// Two kinds: the default grows by concatenation (each append copies what is cached; fine
/// for short continuations, and cheap to share), and a *reserved* cache
/// ([`Qwen2::new_reserved_cache`]) that writes new keys and values in place into buffers
/// that grow geometrically, so a long conversation extended turn by turn copies its
/// history only when the buffer doubles, and [`KvCache::truncate`] is free.
#[derive(Debug)]
pub struct KvCache {
    /// per layer (b, n_kv, cap, d); `cap` is the cached length unless reserved
    kv: Vec<Option<(Tensor, Tensor)>>,
    /// per row, per cached position: true for a real token, false for padding
    valid: Vec<Vec<bool>>,
    reserved: bool,
}

impl Clone for KvCache {
    /// A reserved cache is written in place, so its clone gets buffers of its own.
    fn clone(&self) -> Self {
        let kv = if self.reserved {
            self.kv
                .iter()
                .map(|e| {
                    e.as_ref()
                        .map(|(k, v)| (k.copy().expect("copy k"), v.copy().expect("copy v")))
                })
                .collect()
        } else {
            self.kv.clone()
        };
        Self {
            kv,
            valid: self.valid.clone(),
            reserved: self.reserved,
        }
    }
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.valid.first().map(|v| v.len()).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn batch(&self) -> usize {
        self.valid.len()
    }
    /// Whether new keys and values are written in place (see the type's docs).
    pub fn is_reserved(&self) -> bool {
        self.reserved
    }
    /// Positions the buffers hold before they next grow (the length, unless reserved).
    pub fn capacity(&self) -> usize {
        self.kv
            .iter()
            .flatten()
            .next()
            .map(|(k, _)| k.dim(2).unwrap_or(0))
            .unwrap_or(0)
            .max(self.len())
    }
    /// Bytes held by the keys and values.
    pub fn bytes(&self) -> usize {
        self.kv
            .iter()
            .flatten()
            .map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes())
            .sum()
    }
    /// Forgets every cached position from `len` on: the next forward continues after
    /// position `len - 1`. Free for a reserved cache (the buffers stay).
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len >= self.len() {
            return Ok(());
        }
        for v in self.valid.iter_mut() {
            v.truncate(len);
        }
        if !self.reserved {
            for e in self.kv.iter_mut() {
                if let Some((k, v)) = e.take() {
                    if len > 0 {
                        *e = Some((k.narrow(2, 0, len)?, v.narrow(2, 0, len)?));
                    }
                }
            }
        }
        Ok(())
    }
    /// A cache for `batch` rows that all start from this one (batch 1) prefix.
    pub fn expand(&self, batch: usize) -> Result<Self> {
        if self.batch() != 1 {
            bail!("only a single-row cache can be expanded");
        }
        let len = self.len();
        let kv = self
            .kv
            .iter()
            .map(|e| match e {
                Some((k, v)) => {
                    let (k, v) = (k.narrow(2, 0, len)?, v.narrow(2, 0, len)?);
                    let k = k.broadcast_as(rep_dims(&k, batch))?.contiguous()?;
                    let v = v.broadcast_as(rep_dims(&v, batch))?.contiguous()?;
                    Ok(Some((k, v)))
                }
                None => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            kv,
            valid: vec![self.valid[0].clone(); batch],
            reserved: false,
        })
    }

    /// The keys and values of the cached positions only (a reserved cache's buffers cut to
    /// its length), as a concatenating cache that packed forwards can continue.
    fn shared_view(&self) -> Result<Vec<Option<(Tensor, Tensor)>>> {
        let len = self.len();
        self.kv
            .iter()
            .map(|e| match e {
                Some((k, v)) if self.reserved => {
                    Ok(Some((k.narrow(2, 0, len)?, v.narrow(2, 0, len)?)))
                }
                other => Ok(other.clone()),
            })
            .collect()
    }
}

/// One layer's cache as the attention sees it: the tensors, the cached length and whether
/// new entries are written in place.
struct KvSlot<'a> {
    kv: &'a mut Option<(Tensor, Tensor)>,
    len: usize,
    reserved: bool,
}

impl KvSlot<'_> {
    /// Appends k and v (b, n_kv, s, d); returns every cached position's keys and values.
    fn append(self, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        if !self.reserved {
            let (k, v) = match self.kv.take() {
                Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                None => (k, v),
            };
            *self.kv = Some((k.clone(), v.clone()));
            return Ok((k, v));
        }
        let (b, nkv, s, d) = k.dims4()?;
        let need = self.len + s;
        let cap = self
            .kv
            .as_ref()
            .map(|(pk, _)| pk.dim(2))
            .transpose()?
            .unwrap_or(0);
        if cap < need {
            let new_cap = need.max(cap * 2).max(64);
            let nk = Tensor::zeros((b, nkv, new_cap, d), k.dtype(), k.device())?;
            let nv = Tensor::zeros((b, nkv, new_cap, d), v.dtype(), v.device())?;
            if let Some((pk, pv)) = self.kv.take() {
                if self.len > 0 {
                    nk.slice_set(&pk.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                    nv.slice_set(&pv.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                }
            }
            *self.kv = Some((nk, nv));
        }
        let (bk, bv) = self.kv.as_ref().expect("a buffer");
        bk.slice_set(&k.contiguous()?, 2, self.len)?;
        bv.slice_set(&v.contiguous()?, 2, self.len)?;
        Ok((bk.narrow(2, 0, need)?, bv.narrow(2, 0, need)?))
    }
}

fn rep_dims(t: &Tensor, batch: usize) -> Vec<usize> {
    let mut d = t.dims().to_vec();
    d[0] = batch;
    d
}

impl Attention {
    /// x: (b, s, h) -> (b, s, h); with `queries`, only those rows (b, s', h) ask (with their
    /// own rotary tables); keys and values still come from all of x.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &AttnMask,
        cache: Option<KvSlot<'_>>,
        mode: Mode,
        queries: Option<(&Tensor, &Tensor, &Tensor)>,
    ) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let (nh, nkv, d) = (self.n_heads, self.n_kv, self.head_dim);
        let (xq, cos_q, sin_q) = queries.unwrap_or((x, cos, sin));
        let sq = xq.dim(1)?;
        let q = self
            .q_proj
            .forward(xq, mode)?
            .reshape((b, sq, nh, d))?
            .transpose(1, 2)?;
        let k = self
            .k_proj
            .forward(x, mode)?
            .reshape((b, s, nkv, d))?
            .transpose(1, 2)?;
        let v = self
            .v_proj
            .forward(x, mode)?
            .reshape((b, s, nkv, d))?
            .transpose(1, 2)?;
        let q = apply_rope(&q.contiguous()?, cos_q, sin_q, mode)?;
        let k = apply_rope(&k.contiguous()?, cos, sin, mode)?;
        let v = v.contiguous()?;
        let (k, v) = match cache {
            Some(slot) => slot.append(k, v)?,
            None => (k, v),
        };
        let rep = nh / nkv;
        // Grouped-query attention without copying K/V: fold the query heads that share a
        // KV head into the row dimension. q: (b, nkv, rep*s, d), k/v: (b, nkv, t, d).
        let q = q.reshape((b, nkv, rep * sq, d))?;
        let y = fused_attention(&q, &k, &v, mask, rep, 1.0 / (d as f64).sqrt())?;
        let y = y
            .reshape((b, nh, sq, d))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, sq, nh * d))?;
        self.o_proj.forward(&y, mode)
    }
}

impl Mlp {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let g = self.gate_proj.forward(x, mode)?;
        let u = self.up_proj.forward(x, mode)?;
        self.down_proj.forward(&super::ops::silu_mul(&g, &u)?, mode)
    }
}

/// Where a model's weights come from; shapes are checked against the config by the source.
pub trait WeightSource {
    /// A dense tensor in the model's dtype.
    fn dense(&self, name: &str, shape: &[usize]) -> Result<Tensor>;
    /// A linear layer's weight: dense, or kept quantized when the source allows it.
    fn linear(&self, name: &str, shape: &[usize]) -> Result<LinearWeight>;
    fn has(&self, name: &str) -> bool;
    /// Where the weights live, for messages.
    fn describe(&self) -> String;
}

#[derive(Debug, Clone)]
pub struct Qwen2 {
    pub cfg: Qwen2Config,
    pub embed_tokens: Tensor,
    pub layers: Vec<Layer>,
    pub norm: Tensor,
    pub lm_head: Linear,
    /// lm_head shares its weight with embed_tokens
    pub tied: bool,
    rope: Rope,
    pub dtype: DType,
    pub device: Device,
}

/// The names of the seven projections every decoder layer has, as PEFT names them.
pub const PROJECTIONS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

impl Qwen2 {
    pub fn load(
        cfg: &Qwen2Config,
        src: &dyn WeightSource,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        cfg.validate()?;
        let h = cfg.hidden_size;
        let kvd = cfg.kv_heads() * cfg.head_dim();
        let im = cfg.intermediate_size;
        let linear = |name: &str, out: usize, inp: usize, bias: bool| -> Result<Linear> {
            let w = src.linear(&format!("{name}.weight"), &[out, inp])?;
            let b = if bias {
                Some(src.dense(&format!("{name}.bias"), &[out])?)
            } else {
                None
            };
            Ok(Linear::new(w, b, out, inp))
        };
        let embed_tokens = src.dense("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let attn = Attention {
                q_proj: linear(&format!("{p}.self_attn.q_proj"), h, h, true)?,
                k_proj: linear(&format!("{p}.self_attn.k_proj"), kvd, h, true)?,
                v_proj: linear(&format!("{p}.self_attn.v_proj"), kvd, h, true)?,
                o_proj: linear(&format!("{p}.self_attn.o_proj"), h, h, false)?,
                n_heads: cfg.num_attention_heads,
                n_kv: cfg.kv_heads(),
                head_dim: cfg.head_dim(),
            };
            let mlp = Mlp {
                gate_proj: linear(&format!("{p}.mlp.gate_proj"), im, h, false)?,
                up_proj: linear(&format!("{p}.mlp.up_proj"), im, h, false)?,
                down_proj: linear(&format!("{p}.mlp.down_proj"), h, im, false)?,
            };
            layers.push(Layer {
                attn,
                mlp,
                input_layernorm: src.dense(&format!("{p}.input_layernorm.weight"), &[h])?,
                post_attention_layernorm: src
                    .dense(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
            });
        }
        let norm = src.dense("model.norm.weight", &[h])?;
        let tied = cfg.tie_word_embeddings || !src.has("lm_head.weight");
        let lm_head = if tied {
            Linear::new(
                LinearWeight::Dense(embed_tokens.clone()),
                None,
                cfg.vocab_size,
                h,
            )
        } else {
            linear("lm_head", cfg.vocab_size, h, false)?
        };
        let rope = Rope::new(cfg, dtype, device)?;
        Ok(Self {
            cfg: cfg.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            tied,
            rope,
            dtype,
            device: device.clone(),
        })
    }

    pub fn new_cache(&self, batch: usize) -> KvCache {
        KvCache {
            kv: vec![None; self.layers.len()],
            valid: vec![Vec::new(); batch],
            reserved: false,
        }
    }

    /// A one-row cache written in place (see [`KvCache`]): for conversations that grow
    /// turn by turn and are cut back to a common prefix.
    pub fn new_reserved_cache(&self) -> KvCache {
        KvCache {
            kv: vec![None; self.layers.len()],
            valid: vec![Vec::new()],
            reserved: true,
        }
    }

    /// Runs `ids` (b, s) through the decoder and returns the final-normed hidden states
    /// (b, s, h). `valid` marks real tokens (false = padding; None = all real). With a
    /// cache, the new tokens attend to the cached ones and are appended to it.
    pub fn forward_hidden(
        &self,
        ids: &Tensor,
        valid: Option<&[Vec<bool>]>,
        cache: Option<&mut KvCache>,
        mode: Mode,
    ) -> Result<Tensor> {
        self.forward_rows(ids, valid, cache, mode, false)
    }

    /// `forward_hidden`, or with `last_only` the last position of each row only (b, 1, h).
    fn forward_rows(
        &self,
        ids: &Tensor,
        valid: Option<&[Vec<bool>]>,
        mut cache: Option<&mut KvCache>,
        mode: Mode,
        last_only: bool,
    ) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let past_valid: Vec<Vec<bool>> = match &cache {
            Some(c) if !c.is_empty() => {
                if c.batch() != b {
                    bail!("cache holds {} rows, the input {b}", c.batch());
                }
                c.valid.clone()
            }
            _ => vec![Vec::new(); b],
        };
        let past = past_valid[0].len();
        if past + s > self.cfg.max_position_embeddings {
            bail!(
                "{} tokens exceed the model's context of {} tokens",
                past + s,
                self.cfg.max_position_embeddings
            );
        }
        let new_valid: Vec<Vec<bool>> = match valid {
            Some(v) => {
                if v.len() != b || v.iter().any(|r| r.len() != s) {
                    bail!("attention mask shape does not match the input ({b}x{s})");
                }
                v.to_vec()
            }
            None => vec![vec![true; s]; b],
        };
        // Positions: each row counts its own real tokens, so left padding shifts nothing.
        let mut pos = vec![0u32; b * s];
        let mut shared = true;
        let first_start = past_valid[0].iter().filter(|&&x| x).count();
        for r in 0..b {
            let mut c = past_valid[r].iter().filter(|&&x| x).count() as u32;
            for j in 0..s {
                if new_valid[r][j] {
                    pos[r * s + j] = c;
                    c += 1;
                }
                if pos[r * s + j] as usize != first_start + j {
                    shared = false;
                }
            }
        }
        let positions = if shared {
            Positions::Shared {
                start: first_start,
                len: s,
            }
        } else {
            Positions::PerRow(Tensor::from_vec(pos, (b, s), &self.device)?)
        };
        let (cos, sin) = self.rope.tables(&positions)?;
        let all: Vec<Vec<bool>> = past_valid
            .iter()
            .zip(&new_valid)
            .map(|(p, n)| [p.as_slice(), n].concat())
            .collect();
        let mask = AttnMask::causal(b, s, past, all.concat(), QUERY_BLOCK);
        let hidden = self.run_layers(
            ids,
            &cos,
            &sin,
            &mask,
            cache.as_deref_mut().map(|c| {
                let reserved = c.reserved;
                (c.kv.as_mut_slice(), past, reserved)
            }),
            mode,
            last_only.then_some((&[s as u32 - 1][..], &[past + s - 1][..])),
        )?;
        if let Some(c) = cache {
            c.valid = all;
        }
        Ok(hidden)
    }

    /// The decoder layers and the final norm over ids (b, s). With `only` (column indices
    /// into each row, the same for every row, and the absolute key index of each), the last
    /// layer computes just those rows (b, s', h): the keys and values of every token still
    /// go into the cache, but queries, the output projection and the MLP of the tokens
    /// nobody reads are skipped.
    #[allow(clippy::too_many_arguments)]
    fn run_layers(
        &self,
        ids: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &AttnMask,
        mut kv: Option<(&mut [Option<(Tensor, Tensor)>], usize, bool)>,
        mode: Mode,
        only: Option<(&[u32], &[usize])>,
    ) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let mut x = self
            .embed_tokens
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, s, ()))?;
        let n = self.layers.len();
        for (li, layer) in self.layers.iter().enumerate() {
            let slot = kv.as_mut().map(|(k, len, reserved)| KvSlot {
                kv: &mut k[li],
                len: *len,
                reserved: *reserved,
            });
            let hn = rms_norm(&x, &layer.input_layernorm, self.cfg.rms_norm_eps, mode)?;
            let a = match only {
                Some((cols, at)) if li + 1 == n && cols.len() < s => {
                    let idx = Tensor::new(cols, &self.device)?;
                    let pick = |t: &Tensor| -> Result<Tensor> { Ok(t.index_select(&idx, 1)?) };
                    let (cq, sq) = if cos.rank() == 2 {
                        (cos.index_select(&idx, 0)?, sin.index_select(&idx, 0)?)
                    } else {
                        (pick(cos)?, pick(sin)?)
                    };
                    let hq = pick(&hn)?;
                    x = pick(&x)?;
                    let m = mask.only(at);
                    layer
                        .attn
                        .forward(&hn, cos, sin, &m, slot, mode, Some((&hq, &cq, &sq)))?
                }
                _ => layer.attn.forward(&hn, cos, sin, mask, slot, mode, None)?,
            };
            x = (x + a)?;
            let hn = rms_norm(
                &x,
                &layer.post_attention_layernorm,
                self.cfg.rms_norm_eps,
                mode,
            )?;
            x = (&x + layer.mlp.forward(&hn, mode)?)?;
        }
        rms_norm(&x, &self.norm, self.cfg.rms_norm_eps, mode)
    }

    /// Sequences of `lens` tokens packed back to back in one row (`ids` holds them all, no
    /// padding), each seeing only itself and, when given, the tokens of `prefix` (a batch-1
    /// cache of real tokens they all continue; left unchanged). Returns the final-normed
    /// hidden states (1, Σ lens, h). Equal to running each sequence on its own, without the
    /// compute that padding a batch would waste.
    pub fn forward_packed(
        &self,
        ids: &[u32],
        lens: &[usize],
        prefix: Option<&KvCache>,
        mode: Mode,
    ) -> Result<Tensor> {
        self.packed(ids, 0, lens, prefix, mode, false)
    }

    /// `forward_packed` where the first `shared` ids are a prefix every sequence continues
    /// (computed once; the sequences' `lens` follow it). Equal to running prefix + sequence
    /// for each sequence on its own; returns (1, shared + Σ lens, h).
    pub fn forward_packed_shared(
        &self,
        ids: &[u32],
        shared: usize,
        lens: &[usize],
        mode: Mode,
    ) -> Result<Tensor> {
        self.packed(ids, shared, lens, None, mode, false)
    }

    /// `forward_packed` returning only the last token of each sequence (1, sequences, h).
    pub fn forward_packed_ends(
        &self,
        ids: &[u32],
        lens: &[usize],
        prefix: Option<&KvCache>,
        mode: Mode,
    ) -> Result<Tensor> {
        self.packed(ids, 0, lens, prefix, mode, true)
    }

    fn packed(
        &self,
        ids: &[u32],
        shared: usize,
        lens: &[usize],
        prefix: Option<&KvCache>,
        mode: Mode,
        ends_only: bool,
    ) -> Result<Tensor> {
        let total: usize = shared + lens.iter().sum::<usize>();
        if total != ids.len() || total == 0 {
            bail!(
                "packed lengths add up to {total}, the ids are {}",
                ids.len()
            );
        }
        let (past, mut kv) = match prefix {
            Some(c) if !c.is_empty() => {
                if c.batch() != 1 || c.valid[0].iter().any(|v| !v) {
                    bail!("a packed forward continues a one-row prefix of real tokens");
                }
                (c.len(), c.shared_view()?)
            }
            _ => (0, vec![None; self.layers.len()]),
        };
        let longest = shared + lens.iter().copied().max().unwrap_or(0);
        if past + longest > self.cfg.max_position_embeddings {
            bail!(
                "{} tokens exceed the model's context of {} tokens",
                past + longest,
                self.cfg.max_position_embeddings
            );
        }
        let pre = past + shared;
        let pos: Vec<u32> = (past..pre)
            .chain(lens.iter().flat_map(|&n| pre..pre + n))
            .map(|p| p as u32)
            .collect();
        let positions = Positions::PerRow(Tensor::from_vec(pos, (1, total), &self.device)?);
        let (cos, sin) = self.rope.tables(&positions)?;
        let mask = AttnMask::packed(past, shared, lens);
        let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let use_kv = past > 0;
        let ends = ends_only.then(|| {
            let mut cols = Vec::new();
            let mut end = shared;
            for &n in lens.iter().filter(|&&n| n > 0) {
                end += n;
                cols.push(end as u32 - 1);
            }
            let at: Vec<usize> = cols.iter().map(|&c| past + c as usize).collect();
            (cols, at)
        });
        self.run_layers(
            &input,
            &cos,
            &sin,
            &mask,
            use_kv.then_some((kv.as_mut_slice(), past, false)),
            mode,
            ends.as_ref().map(|(c, a)| (c.as_slice(), a.as_slice())),
        )
    }

    /// Vocabulary logits for hidden states (..., h): f32 (f64 for an f64 model).
    pub fn logits(&self, hidden: &Tensor, mode: Mode) -> Result<Tensor> {
        let l = self.lm_head.forward(hidden, mode)?;
        Ok(l.to_dtype(compute_dtype(l.dtype()))?)
    }

    /// Logits (b, vocab) of the last position of each row.
    pub fn forward_last(
        &self,
        ids: &Tensor,
        valid: Option<&[Vec<bool>]>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let hidden = self.forward_rows(ids, valid, cache, Mode::Infer, true)?;
        let last = hidden.squeeze(1)?;
        self.logits(&last, Mode::Infer)
    }

    /// Every linear layer with its PEFT-style module name (`model.layers.0.self_attn.q_proj`).
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            let a = &mut l.attn;
            out.push((format!("{p}.self_attn.q_proj"), &mut a.q_proj));
            out.push((format!("{p}.self_attn.k_proj"), &mut a.k_proj));
            out.push((format!("{p}.self_attn.v_proj"), &mut a.v_proj));
            out.push((format!("{p}.self_attn.o_proj"), &mut a.o_proj));
            let m = &mut l.mlp;
            out.push((format!("{p}.mlp.gate_proj"), &mut m.gate_proj));
            out.push((format!("{p}.mlp.up_proj"), &mut m.up_proj));
            out.push((format!("{p}.mlp.down_proj"), &mut m.down_proj));
        }
        out
    }

    /// Every weight under its Hugging Face name, dense (for convert and merge).
    pub fn named_weights(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            self.embed_tokens.clone(),
        )];
        let mut me = self.clone();
        let h_norms: Vec<(Tensor, Tensor)> = self
            .layers
            .iter()
            .map(|l| {
                (
                    l.input_layernorm.clone(),
                    l.post_attention_layernorm.clone(),
                )
            })
            .collect();
        for (name, lin) in me.linears_mut() {
            out.push((format!("{name}.weight"), lin.dense_weight()?));
            if let Some(b) = &lin.bias {
                out.push((format!("{name}.bias"), b.clone()));
            }
        }
        for (i, (a, b)) in h_norms.into_iter().enumerate() {
            out.push((format!("model.layers.{i}.input_layernorm.weight"), a));
            out.push((
                format!("model.layers.{i}.post_attention_layernorm.weight"),
                b,
            ));
        }
        out.push(("model.norm.weight".into(), self.norm.clone()));
        if !self.tied {
            out.push(("lm_head.weight".into(), self.lm_head.dense_weight()?));
        }
        Ok(out)
    }
}

/// Shape check shared by the weight sources.
pub fn check_shape(name: &str, got: &[usize], want: &[usize], file: &str) -> Result<()> {
    if got != want {
        bail!("{file}: tensor `{name}` has shape {got:?}, but config.json implies {want:?}");
    }
    Ok(())
}

/// A weight source over Hugging Face safetensors (single or sharded).
pub struct SafetensorsSource {
    pub files: super::safetensors_io::WeightFiles,
    pub dtype: DType,
    pub device: Device,
}

impl WeightSource for SafetensorsSource {
    fn dense(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let (path, e) = self
            .files
            .entry(name)
            .with_context(|| format!("the weights have no tensor `{name}`"))?;
        check_shape(name, &e.shape, shape, &path.display().to_string())?;
        self.files.load(name, self.dtype, &self.device)
    }
    fn linear(&self, name: &str, shape: &[usize]) -> Result<LinearWeight> {
        Ok(LinearWeight::Dense(self.dense(name, shape)?))
    }
    fn has(&self, name: &str) -> bool {
        self.files.contains(name)
    }
    fn describe(&self) -> String {
        "safetensors".into()
    }
}
