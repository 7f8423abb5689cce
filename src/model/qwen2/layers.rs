//! The decoder's parts: RMS norm, rotary embeddings, attention (with the KV cache) and the
//! gated MLP.

#[allow(unused_imports)]
use super::*;

pub(super) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, mode: Mode) -> Result<Tensor> {
    match mode {
        // Candle's fused kernel has no f64 path (f64 serves gradient checks)
        Mode::Infer if x.dtype() != DType::F64 => {
            Ok(candle_nn::ops::rms_norm(&x.contiguous()?, w, eps as f32)?)
        }
        _ => {
            if let Some(y) = crate::model::ops::rms_norm_trainable(x, w, eps) {
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
    pub(super) cos: Tensor,
    pub(super) sin: Tensor,
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
    pub(super) fn tables(&self, pos: &Positions) -> Result<(Tensor, Tensor)> {
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
pub(super) fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor, mode: Mode) -> Result<Tensor> {
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

pub(super) enum Positions {
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
    pub(super) n_heads: usize,
    pub(super) n_kv: usize,
    pub(super) head_dim: usize,
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

impl Attention {
    /// x: (b, s, h) -> (b, s, h); with `queries`, only those rows (b, s', h) ask (with their
    /// own rotary tables); keys and values still come from all of x.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward(
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
        // the projections of the same input share one pass (x rounded and packed once)
        let (q, k, v) = if queries.is_none() {
            let [q, k, v]: [Tensor; 3] =
                Linear::forward_shared(&[&self.q_proj, &self.k_proj, &self.v_proj], x, mode)?
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("attention: expected three projections"))?;
            (q, k, v)
        } else {
            let [k, v]: [Tensor; 2] =
                Linear::forward_shared(&[&self.k_proj, &self.v_proj], x, mode)?
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("attention: expected two projections"))?;
            (self.q_proj.forward(xq, mode)?, k, v)
        };
        let q = q.reshape((b, sq, nh, d))?.transpose(1, 2)?;
        let k = k.reshape((b, s, nkv, d))?.transpose(1, 2)?;
        let v = v.reshape((b, s, nkv, d))?.transpose(1, 2)?;
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
    pub(super) fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let [g, u]: [Tensor; 2] =
            Linear::forward_shared(&[&self.gate_proj, &self.up_proj], x, mode)?
                .try_into()
                .map_err(|_| anyhow::anyhow!("mlp: expected two projections"))?;
        self.down_proj
            .forward(&crate::model::ops::silu_mul(&g, &u)?, mode)
    }
}
