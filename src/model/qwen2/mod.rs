//! The Qwen2 decoder (Qwen2 / Qwen2.5 / Qwen1.5, `Qwen2ForCausalLM`) in Candle.
//!
//! One forward serves inference and training: `Mode::Infer` uses Candle's fused CPU kernels
//! (rms-norm, rope, softmax: fast, no backward) and a KV cache; `Mode::Train` uses
//! differentiable compositions of the same maths so autograd reaches LoRA (or all) weights.
//! Every linear layer can carry a LoRA adapter (`y = W x + b + scale · B A x`).
//!
//! Shapes in comments: b batch, s new tokens, t cached + new tokens, h hidden, d head dim.
//!
//! Rooms: `linear` (dense / quantized weights, LoRA, frozen matmul), `layers` (norm, rope,
//! attention, MLP), `cache` (the KV cache), `weights` (weight sources); here the model itself.

use anyhow::{bail, Context, Result};
use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Module, Tensor, D};

use super::attention::{fused_attention, AttnMask, QUERY_BLOCK};
use super::config::Qwen2Config;
use super::lora_op::{lora_linear, LoraLinear};

mod cache;
mod layers;
mod linear;
mod weights;

pub use cache::*;
pub use layers::*;
pub use linear::*;
pub use weights::*;
#[allow(unused_imports)]
use {cache::*, layers::*, linear::*, weights::*};

/// Where a forward through the layers begins.
enum Start<'a> {
    /// token ids (b, s)
    Ids(&'a Tensor),
    /// the hidden states (b, s, h) entering `layer`
    Hidden { x: &'a Tensor, layer: usize },
}

/// The input of a packed row: its ids, or the hidden states entering a layer.
enum PackedInput<'a> {
    Ids(&'a [u32]),
    Hidden { x: &'a Tensor, layer: usize },
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
    /// The activations' dtype: f32 (f64 in gradient checks), also for a bf16 model.
    pub dtype: DType,
    /// The dtype of the frozen weights (linear layers, embeddings): f32, bf16 or f64.
    pub weight_dtype: DType,
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
        // A bf16 model keeps its big weights in bf16 and computes in f32: norms and biases
        // (small) are kept in the activations' dtype.
        let act = compute_dtype(dtype);
        let small = |name: &str, shape: &[usize]| -> Result<Tensor> {
            Ok(src.dense(name, shape)?.to_dtype(act)?)
        };
        let linear = |name: &str, out: usize, inp: usize, bias: bool| -> Result<Linear> {
            let w = src.linear(&format!("{name}.weight"), &[out, inp])?;
            let b = if bias {
                Some(small(&format!("{name}.bias"), &[out])?)
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
                input_layernorm: small(&format!("{p}.input_layernorm.weight"), &[h])?,
                post_attention_layernorm: small(
                    &format!("{p}.post_attention_layernorm.weight"),
                    &[h],
                )?,
            });
        }
        let norm = small("model.norm.weight", &[h])?;
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
        let rope = Rope::new(cfg, act, device)?;
        Ok(Self {
            cfg: cfg.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            tied,
            rope,
            dtype: act,
            weight_dtype: dtype,
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
        self.forward_rows(ids, valid, cache, mode, false, self.layers.len())
    }

    /// The hidden states entering `layer` (1, s, h) of `ids` run from the start with the
    /// inference kernels, and the KV cache of the layers below `layer` (a prefix that
    /// [`Self::hidden_at_after`] continues).
    pub fn prefix_at(&self, ids: &[u32], layer: usize) -> Result<(Tensor, KvCache)> {
        let mut cache = self.new_cache(1);
        let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let x = self.forward_rows(&input, None, Some(&mut cache), Mode::Infer, false, layer)?;
        Ok((x, cache))
    }

    /// The hidden states entering `layer` (1, s, h) of `ids` continuing `prefix` (a cache
    /// [`Self::prefix_at`] made for the same layer, or none), with the inference kernels.
    pub fn hidden_at_after(
        &self,
        ids: &[u32],
        prefix: Option<&KvCache>,
        layer: usize,
    ) -> Result<Tensor> {
        self.packed_at(
            PackedInput::Ids(ids),
            layer,
            0,
            &[ids.len()],
            prefix,
            Mode::Infer,
            false,
        )
    }

    /// `forward_hidden`, or with `last_only` the last position of each row only (b, 1, h);
    /// short of the last layer (`end`), the hidden states entering layer `end`.
    fn forward_rows(
        &self,
        ids: &Tensor,
        valid: Option<&[Vec<bool>]>,
        cache: Option<&mut KvCache>,
        mode: Mode,
        last_only: bool,
        end: usize,
    ) -> Result<Tensor> {
        crate::model::kernels::on_pool(|| {
            self.forward_rows_here(ids, valid, cache, mode, last_only, end)
        })
    }

    /// [`Self::forward_rows`] on the calling thread.
    fn forward_rows_here(
        &self,
        ids: &Tensor,
        valid: Option<&[Vec<bool>]>,
        mut cache: Option<&mut KvCache>,
        mode: Mode,
        last_only: bool,
        end: usize,
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
            Start::Ids(ids),
            end,
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
    ///
    /// `start` is where the forward begins (token ids, or the hidden states entering a layer)
    /// and `end` the layer it stops before: short of the last layer it returns the hidden
    /// states entering `end`, without the final norm. In training, the layers below the
    /// lowest one holding a trainable tensor run the inference kernels: nothing below it
    /// needs a gradient.
    #[allow(clippy::too_many_arguments)]
    fn run_layers(
        &self,
        start: Start<'_>,
        end: usize,
        cos: &Tensor,
        sin: &Tensor,
        mask: &AttnMask,
        mut kv: Option<(&mut [Option<(Tensor, Tensor)>], usize, bool)>,
        mode: Mode,
        only: Option<(&[u32], &[usize])>,
    ) -> Result<Tensor> {
        let (mut x, from) = match start {
            Start::Ids(ids) => {
                let (b, s) = ids.dims2()?;
                let x = self
                    .embed_tokens
                    .index_select(&ids.flatten_all()?, 0)?
                    .reshape((b, s, ()))?
                    .to_dtype(self.dtype)?;
                (x, 0)
            }
            Start::Hidden { x, layer } => (x.clone(), layer),
        };
        let (_, s, _) = x.dims3()?;
        let n = self.layers.len();
        if from > end || end > n {
            bail!("layers {from}..{end} of a {n}-layer model");
        }
        let frozen_below = if mode.is_train() {
            self.frozen_below()
        } else {
            0
        };
        for (li, layer) in self.layers.iter().enumerate().take(end).skip(from) {
            let mode = if li < frozen_below { Mode::Infer } else { mode };
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
        if end < n {
            return Ok(x);
        }
        rms_norm(&x, &self.norm, self.cfg.rms_norm_eps, mode)
    }

    /// The lowest layer holding a trainable tensor (a LoRA factor or a weight being trained):
    /// no gradient flows below it. `layers.len()` when nothing is trained, 0 when the
    /// embeddings are.
    pub fn frozen_below(&self) -> usize {
        if self.embed_tokens.is_variable() {
            return 0;
        }
        let var = |t: &Tensor| t.is_variable();
        let lin = |l: &Linear| {
            matches!(&l.weight, LinearWeight::Dense(w) if var(w))
                || l.bias.as_ref().is_some_and(var)
                || l.lora.as_ref().is_some_and(|r| var(&r.a) || var(&r.b))
        };
        self.layers
            .iter()
            .position(|l| {
                var(&l.input_layernorm)
                    || var(&l.post_attention_layernorm)
                    || [
                        &l.attn.q_proj,
                        &l.attn.k_proj,
                        &l.attn.v_proj,
                        &l.attn.o_proj,
                        &l.mlp.gate_proj,
                        &l.mlp.up_proj,
                        &l.mlp.down_proj,
                    ]
                    .into_iter()
                    .any(lin)
            })
            .unwrap_or(self.layers.len())
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

    /// The hidden states entering `layer` (1, shared + Σ lens, h) of a packed row (see
    /// [`Self::forward_packed_shared`]), computed with the inference kernels: what a
    /// frozen-prefix cache keeps of layers that are not trained.
    pub fn packed_hidden_at(
        &self,
        ids: &[u32],
        shared: usize,
        lens: &[usize],
        layer: usize,
    ) -> Result<Tensor> {
        self.packed_at(
            PackedInput::Ids(ids),
            layer,
            shared,
            lens,
            None,
            Mode::Infer,
            false,
        )
    }

    /// [`Self::forward_packed_shared`] continued from `x`, the hidden states entering
    /// `layer` (as [`Self::packed_hidden_at`] gives them): the same result as running the
    /// ids from the start.
    pub fn forward_packed_shared_from(
        &self,
        x: &Tensor,
        layer: usize,
        shared: usize,
        lens: &[usize],
        mode: Mode,
    ) -> Result<Tensor> {
        self.packed_at(
            PackedInput::Hidden { x, layer },
            self.layers.len(),
            shared,
            lens,
            None,
            mode,
            false,
        )
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
        self.packed_at(
            PackedInput::Ids(ids),
            self.layers.len(),
            shared,
            lens,
            prefix,
            mode,
            ends_only,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn packed_at(
        &self,
        input: PackedInput<'_>,
        end: usize,
        shared: usize,
        lens: &[usize],
        prefix: Option<&KvCache>,
        mode: Mode,
        ends_only: bool,
    ) -> Result<Tensor> {
        let total: usize = shared + lens.iter().sum::<usize>();
        let given = match &input {
            PackedInput::Ids(ids) => ids.len(),
            PackedInput::Hidden { x, .. } => x.dim(1)?,
        };
        if total != given || total == 0 {
            bail!("packed lengths add up to {total}, the input holds {given}");
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
        let ids_t;
        let start = match input {
            PackedInput::Ids(ids) => {
                ids_t = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
                Start::Ids(&ids_t)
            }
            PackedInput::Hidden { x, layer } => Start::Hidden { x, layer },
        };
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
            start,
            end,
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
        crate::model::kernels::on_pool(|| {
            let hidden =
                self.forward_rows(ids, valid, cache, Mode::Infer, true, self.layers.len())?;
            let last = hidden.squeeze(1)?;
            self.logits(&last, Mode::Infer)
        })
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

    /// Packs every layer's dense bf16 weight for the bf16 matmul, in place of its row-major
    /// copy (the same bytes), where the CPU runs that matmul: an inference model's products
    /// then never pack a weight per call, and one row streams the packed weight as the gemv
    /// would. LoRA factors, biases and the output head (tied to the embedding) stay as they
    /// are, and so does a weight being trained.
    pub fn pack_weights(&mut self) -> Result<()> {
        use crate::model::kernels::{gemm_bf16::Packed, gemv::Weights, linear::with_weights};
        let level = crate::model::kernels::level();
        for (_, lin) in self.linears_mut() {
            let LinearWeight::Dense(w) = &lin.weight else {
                continue;
            };
            if w.is_variable() {
                continue;
            }
            let (n, k) = w.dims2()?;
            // only a bf16 weight in CPU memory is taken
            let p = with_weights(w, |wv| match wv {
                Weights::Bf16(v) => Packed::new(level, v, n, k),
                Weights::F32(_) => None,
            });
            if let Some(p) = p.flatten() {
                lin.weight = LinearWeight::Packed(std::sync::Arc::new(p));
            }
        }
        Ok(())
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
