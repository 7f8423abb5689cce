//! What is trained (LoRA factors or every weight), AdamW and the learning-rate schedule.

#[allow(unused_imports)]
use super::*;

/// The learning rate at optimizer step `step` (0-based), as transformers' schedulers give it.
pub fn lr_at(cfg: &TrainConfig, step: usize, total: usize, warmup: usize) -> f64 {
    if step < warmup {
        return cfg.lr * step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    match cfg.schedule {
        Schedule::Constant => cfg.lr,
        Schedule::Linear => cfg.lr * (1.0 - progress).max(0.0),
        Schedule::Cosine => cfg.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    }
}

/// The trainable tensors of a run under stable names.
pub(super) struct Trainable {
    pub(super) names: Vec<String>,
    pub(super) vars: Vec<Var>,
    pub(super) lora: Vec<LoraVars>,
}

/// Makes every weight of the model a Var (full fine-tuning).
pub(super) fn make_all_trainable(model: &mut Qwen2) -> Result<Trainable> {
    if model.weight_dtype != model.dtype {
        bail!("full fine-tuning trains every weight in f32: load the model in f32, or use LoRA");
    }
    let mut names = Vec::new();
    let mut vars = Vec::new();
    let mut var_of = |name: String, t: &mut Tensor| -> Result<()> {
        let v = Var::from_tensor(t)?;
        *t = v.as_tensor().clone();
        names.push(name);
        vars.push(v);
        Ok(())
    };
    var_of("model.embed_tokens.weight".into(), &mut model.embed_tokens)?;
    let tied = model.tied;
    for (i, l) in model.layers.iter_mut().enumerate() {
        var_of(
            format!("model.layers.{i}.input_layernorm.weight"),
            &mut l.input_layernorm,
        )?;
        var_of(
            format!("model.layers.{i}.post_attention_layernorm.weight"),
            &mut l.post_attention_layernorm,
        )?;
    }
    var_of("model.norm.weight".into(), &mut model.norm)?;
    let embed = model.embed_tokens.clone();
    if tied {
        model.lm_head.weight = LinearWeight::Dense(embed);
    }
    {
        let mut lm = if tied { None } else { Some(&mut model.lm_head) };
        let mut all = model_linears(&mut model.layers);
        if let Some(l) = lm.take() {
            all.push(("lm_head".into(), l));
        }
        for (name, lin) in all {
            match &mut lin.weight {
                LinearWeight::Dense(w) => var_of(format!("{name}.weight"), w)?,
                LinearWeight::Packed(_) => {
                    // an inference model's packed weight: trained as a dense copy
                    let mut w = lin.dense_weight()?;
                    var_of(format!("{name}.weight"), &mut w)?;
                    lin.weight = LinearWeight::Dense(w);
                }
                LinearWeight::Quant(_) => {
                    bail!("full fine-tuning needs dense weights (load without --quantized)")
                }
            }
            if let Some(b) = &mut lin.bias {
                var_of(format!("{name}.bias"), b)?;
            }
        }
    }
    Ok(Trainable {
        names,
        vars,
        lora: vec![],
    })
}

pub(super) fn model_linears(
    layers: &mut [crate::model::qwen2::Layer],
) -> Vec<(String, &mut crate::model::qwen2::Linear)> {
    let mut out = Vec::new();
    for (i, l) in layers.iter_mut().enumerate() {
        let p = format!("model.layers.{i}");
        out.push((format!("{p}.self_attn.q_proj"), &mut l.attn.q_proj));
        out.push((format!("{p}.self_attn.k_proj"), &mut l.attn.k_proj));
        out.push((format!("{p}.self_attn.v_proj"), &mut l.attn.v_proj));
        out.push((format!("{p}.self_attn.o_proj"), &mut l.attn.o_proj));
        out.push((format!("{p}.mlp.gate_proj"), &mut l.mlp.gate_proj));
        out.push((format!("{p}.mlp.up_proj"), &mut l.mlp.up_proj));
        out.push((format!("{p}.mlp.down_proj"), &mut l.mlp.down_proj));
    }
    out
}

/// AdamW (decoupled weight decay, bias-corrected), state kept per trainable tensor.
pub(super) struct AdamW {
    pub(super) m: Vec<Tensor>,
    pub(super) v: Vec<Tensor>,
    pub(super) t: usize,
}

impl AdamW {
    pub(super) fn new(vars: &[Var]) -> Result<Self> {
        let z = |v: &Var| v.as_tensor().zeros_like();
        Ok(Self {
            m: vars.iter().map(z).collect::<candle_core::Result<_>>()?,
            v: vars.iter().map(z).collect::<candle_core::Result<_>>()?,
            t: 0,
        })
    }
    pub(super) fn step(
        &mut self,
        vars: &[Var],
        grads: &[Tensor],
        lr: f64,
        cfg: &TrainConfig,
    ) -> Result<()> {
        self.t += 1;
        let (b1, b2) = (cfg.beta1, cfg.beta2);
        let c1 = 1.0 - b1.powi(self.t as i32);
        let c2 = 1.0 - b2.powi(self.t as i32);
        for i in 0..vars.len() {
            let g = &grads[i];
            self.m[i] = ((&self.m[i] * b1)? + (g * (1.0 - b1))?)?;
            self.v[i] = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let mhat = (&self.m[i] / c1)?;
            let vhat = (&self.v[i] / c2)?;
            let upd = (mhat / (vhat.sqrt()? + cfg.eps)?)?;
            let p = vars[i].as_tensor();
            let decayed = if cfg.weight_decay > 0.0 {
                (p * (1.0 - lr * cfg.weight_decay))?
            } else {
                p.clone()
            };
            vars[i].set(&(decayed - (upd * lr)?)?)?;
        }
        Ok(())
    }
}
