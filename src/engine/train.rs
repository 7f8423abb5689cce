//! Supervised fine-tuning on the engine: LoRA (PEFT layout) or full fine-tuning, AdamW with
//! warmup + constant / linear / cosine schedules, gradient accumulation and clipping, a
//! validation split with best-checkpoint keeping and early stopping, atomic checkpoints that a
//! killed run resumes from exactly, and live metrics (events + `metrics.jsonl`).

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor, Var, D};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::data::{self, Sample, SampleBody, DEFAULT_SYSTEM};
use crate::model::adapter::{attach_lora, save_adapter, LoraSpec, LoraVars};
use crate::model::qwen2::{LinearWeight, Mode};
use crate::model::safetensors_io::{save_atomic, SafetensorsFile};
use crate::model::{self, LoadOptions, LoadedModel, Qwen2, TextTokenizer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    Constant,
    Linear,
    Cosine,
}

impl std::str::FromStr for Schedule {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "constant" => Self::Constant,
            "linear" => Self::Linear,
            "cosine" => Self::Cosine,
            _ => bail!("schedule `{s}`: use constant, linear or cosine"),
        })
    }
}

/// A training run. Defaults follow the fraud-dialogue recipe (LoRA r 8, alpha 16, dropout
/// 0.05 on the seven projections, lr 1e-4, 3 epochs, cosine with 10% warmup).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    pub model: String,
    pub data: PathBuf,
    pub val: Option<PathBuf>,
    /// Fraction of `data` held out for validation (stratified by label) when `val` is unset.
    pub val_split: f64,
    /// The run folder: config.json, metrics.jsonl, checkpoints/, adapter/.
    pub out_dir: PathBuf,
    /// Full fine-tuning instead of LoRA.
    pub full: bool,
    pub lora: LoraSpec,
    pub lr: f64,
    pub epochs: usize,
    pub max_steps: Option<usize>,
    pub batch: usize,
    pub grad_accum: usize,
    pub max_len: usize,
    pub schedule: Schedule,
    pub warmup_ratio: f64,
    pub warmup_steps: Option<usize>,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub max_grad_norm: f64,
    pub seed: u64,
    /// Checkpoint every N optimizer steps (0: only at the end).
    pub save_every: usize,
    /// Validation loss every N optimizer steps (0: at the end of each epoch).
    pub eval_every: usize,
    /// Stop after this many evaluations without improvement.
    pub early_stopping: Option<usize>,
    /// Continue from the newest checkpoint in `out_dir`.
    pub resume: bool,
    /// Put `fraud_speaker` and `reason` in the target JSON too.
    pub answer_fields: bool,
    /// Use only the first N training samples.
    pub limit: Option<usize>,
    /// Checkpoints kept besides the best (oldest removed first).
    pub keep_checkpoints: usize,
    /// Shuffle the samples every epoch (seeded); off keeps file order.
    #[serde(default = "yes")]
    pub shuffle: bool,
}

fn yes() -> bool {
    true
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: String::new(),
            data: PathBuf::new(),
            val: None,
            val_split: 0.0,
            out_dir: PathBuf::new(),
            full: false,
            lora: LoraSpec::default(),
            lr: 1e-4,
            epochs: 3,
            max_steps: None,
            batch: 4,
            grad_accum: 4,
            max_len: 512,
            schedule: Schedule::Cosine,
            warmup_ratio: 0.1,
            warmup_steps: None,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            max_grad_norm: 1.0,
            seed: 0,
            save_every: 0,
            eval_every: 0,
            early_stopping: None,
            resume: false,
            answer_fields: false,
            limit: None,
            keep_checkpoints: 2,
            shuffle: true,
        }
    }
}

/// Pause and stop, set from any thread, read between steps.
#[derive(Debug, Default)]
pub struct TrainControl {
    pub pause: AtomicBool,
    pub stop: AtomicBool,
}

/// One optimizer step's figures.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepMetrics {
    pub step: usize,
    pub total_steps: usize,
    pub epoch: f64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub step_s: f64,
    pub tokens_per_s: f64,
    pub samples_per_s: f64,
    pub elapsed_s: f64,
    pub eta_s: f64,
    pub rss_mib: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum TrainEvent {
    Started {
        run_dir: PathBuf,
        total_steps: usize,
        start_step: usize,
        train_samples: usize,
        val_samples: usize,
        estimate_mib: f64,
    },
    Step(StepMetrics),
    Eval {
        step: usize,
        eval_loss: f64,
        best: bool,
    },
    Checkpoint {
        step: usize,
        path: PathBuf,
    },
    Paused {
        step: usize,
    },
    Resumed {
        step: usize,
    },
    Log(String),
    Finished(TrainSummary),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    /// adapter/ (LoRA, PEFT layout) or model/ (full fine-tuning, HF folder)
    pub output_dir: PathBuf,
    pub steps: usize,
    pub final_loss: Option<f64>,
    pub best_eval_loss: Option<f64>,
    pub best_step: Option<usize>,
    /// "completed", "stopped", "early-stopped"
    pub end: String,
    pub seconds: f64,
}

/// One tokenized training example: ids and the targets (`None` = no loss) at each position.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub labels: Vec<Option<u32>>,
}

impl Example {
    pub fn target_count(&self) -> usize {
        self.labels.iter().filter(|l| l.is_some()).count()
    }
}

/// Turns a sample into a training example. SFT samples put loss on the assistant tokens (and
/// the end-of-turn token) only; raw text on every token. Over `max_len`, the start of the
/// prompt (system + instruction) and the end (dialogue tail + answer) are kept and the middle
/// of the prompt dropped, so the supervised answer is never cut.
pub fn make_example(
    tok: &TextTokenizer,
    s: &Sample,
    max_len: usize,
    answer_fields: bool,
) -> Result<Option<Example>> {
    let (ids, labels) = match &s.body {
        SampleBody::Text { text } => {
            let mut ids = tok.encode(text)?;
            if let Some(e) = tok
                .token_id("<|endoftext|>")
                .or(tok.eos_ids.first().copied())
            {
                ids.push(e);
            }
            let labels = ids.iter().map(|&i| Some(i)).collect();
            (ids, labels)
        }
        _ => {
            let msgs = s.to_chat_messages(DEFAULT_SYSTEM, true, answer_fields);
            if !msgs.iter().any(|m| m.role == "assistant") {
                return Ok(None); // unlabelled: nothing to learn
            }
            let mut ids: Vec<u32> = Vec::new();
            let mut labels: Vec<Option<u32>> = Vec::new();
            let end_turn = tok.token_id("<|im_end|>");
            for k in 0..msgs.len() {
                if msgs[k].role != "assistant" {
                    continue;
                }
                let prompt = tok.encode(&tok.apply_chat_template(&msgs[..k], true)?)?;
                let upto = tok.encode(&tok.apply_chat_template(&msgs[..=k], false)?)?;
                if !upto.starts_with(&prompt) || !prompt.starts_with(&ids) {
                    bail!("sample {}: the chat template does not extend its prompt; cannot mask the answer", s.id);
                }
                labels.extend(std::iter::repeat_n(None, prompt.len() - ids.len()));
                let mut answer = upto[prompt.len()..].to_vec();
                // end the answer at the end-of-turn token (the newline after it is not learnt)
                if let Some(p) = end_turn.and_then(|e| answer.iter().position(|&x| x == e)) {
                    answer.truncate(p + 1);
                }
                labels.extend(answer.iter().map(|&x| Some(x)));
                ids = prompt;
                ids.extend_from_slice(&answer);
            }
            (ids, labels)
        }
    };
    let (mut ids, mut labels) = (ids, labels);
    if ids.len() > max_len {
        let first_target = labels.iter().position(|l| l.is_some()).unwrap_or(ids.len());
        let answer_len = ids.len() - first_target;
        if answer_len >= max_len {
            ids.truncate(max_len);
            labels.truncate(max_len);
        } else {
            // the prompt part loses its middle, by the rule scoring uses too
            let cut = super::eval::middle_cut(first_target, max_len - answer_len);
            ids.drain(cut.clone());
            labels.drain(cut);
        }
    }
    if labels.iter().all(|l| l.is_none()) {
        return Ok(None);
    }
    Ok(Some(Example { ids, labels }))
}

/// Deterministic order of `n` items for an epoch (Fisher-Yates with SplitMix64).
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng = data::Rng::new(seed ^ (epoch as u64).wrapping_mul(0xA24BAED4963EE407));
    let mut v: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut v);
    v
}

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

/// A batch packed into one row: the prompt prefix all its examples share (once), then the
/// rest of each example back to back (no padding; each sees the prefix and itself), the
/// lengths of those rests, and the flat positions whose next token is a target, with those
/// targets.
struct Batch {
    ids: Vec<u32>,
    shared: usize,
    lens: Vec<usize>,
    positions: Vec<u32>,
    targets: Vec<u32>,
    /// tokens of the examples (the shared prefix counted for each)
    tokens: usize,
}

/// How many leading tokens every example of a batch can share: their common prefix, leaving
/// each at least one token and no target inside it (a target there would be counted once
/// instead of once per example; the prefix's last position may predict, as each example
/// reads its own target from it).
fn shared_prefix(examples: &[&Example]) -> usize {
    if examples.len() < 2 {
        return 0;
    }
    let ids: Vec<&[u32]> = examples.iter().map(|e| e.ids.as_slice()).collect();
    let mut n = super::eval::common_prefix(&ids);
    for e in examples {
        // position t predicts token t + 1: keep every target-predicting position at or
        // after the prefix's last one
        if let Some(t) = (0..e.ids.len().saturating_sub(1)).find(|&t| e.labels[t + 1].is_some()) {
            n = n.min(t + 1);
        }
    }
    if n < 8 {
        0
    } else {
        n
    }
}

fn make_batch(examples: &[&Example]) -> Result<Batch> {
    let shared = shared_prefix(examples);
    let mut ids = examples
        .first()
        .map(|e| e.ids[..shared].to_vec())
        .unwrap_or_default();
    let mut lens = Vec::with_capacity(examples.len());
    let mut positions = Vec::new();
    let mut targets = Vec::new();
    let mut tokens = 0;
    for e in examples {
        let o = ids.len();
        ids.extend_from_slice(&e.ids[shared..]);
        lens.push(e.ids.len() - shared);
        tokens += e.ids.len();
        // position t predicts token t+1; positions in the prefix are its shared rows
        for t in 0..e.ids.len().saturating_sub(1) {
            if let Some(y) = e.labels[t + 1] {
                let row = if t < shared { t } else { o + t - shared };
                positions.push(row as u32);
                targets.push(y);
            }
        }
    }
    Ok(Batch {
        ids,
        shared,
        lens,
        positions,
        targets,
        tokens,
    })
}

/// Summed negative log-likelihood of a batch's targets (logits computed only where needed).
fn batch_nll(model: &Qwen2, batch: &Batch, mode: Mode) -> Result<Tensor> {
    let hidden = model.forward_packed_shared(&batch.ids, batch.shared, &batch.lens, mode)?;
    let (b, s, h) = hidden.dims3()?;
    let dev = hidden.device();
    let pos = Tensor::new(batch.positions.as_slice(), dev)?;
    let sel = hidden.reshape((b * s, h))?.index_select(&pos, 0)?;
    let logits = model.logits(&sel, mode)?; // (n, vocab) f32
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let tg = Tensor::new(batch.targets.as_slice(), dev)?.unsqueeze(1)?;
    Ok(logp.gather(&tg, 1)?.sum_all()?.neg()?)
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// Mean loss over the targets of examples, as one tensor (for gradient checks and tools).
pub fn mean_loss(model: &Qwen2, examples: &[Example], mode: Mode) -> Result<Tensor> {
    let refs: Vec<&Example> = examples.iter().collect();
    let b = make_batch(&refs)?;
    let n = b.targets.len().max(1);
    Ok((batch_nll(model, &b, mode)? / n as f64)?)
}

/// Mean loss of examples without gradients (validation).
pub fn eval_loss(model: &Qwen2, examples: &[Example], batch: usize) -> Result<f64> {
    let mut sum = 0.0;
    let mut n = 0usize;
    for chunk in examples.chunks(batch.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let b = make_batch(&refs)?;
        if b.targets.is_empty() {
            continue;
        }
        sum += scalar(&batch_nll(model, &b, Mode::Infer)?)?;
        n += b.targets.len();
    }
    Ok(if n == 0 { f64::NAN } else { sum / n as f64 })
}

/// The trainable tensors of a run under stable names.
struct Trainable {
    names: Vec<String>,
    vars: Vec<Var>,
    lora: Vec<LoraVars>,
}

/// Makes every weight of the model a Var (full fine-tuning).
fn make_all_trainable(model: &mut Qwen2) -> Result<Trainable> {
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

fn model_linears(
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
struct AdamW {
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: usize,
}

impl AdamW {
    fn new(vars: &[Var]) -> Result<Self> {
        let z = |v: &Var| v.as_tensor().zeros_like();
        Ok(Self {
            m: vars.iter().map(z).collect::<candle_core::Result<_>>()?,
            v: vars.iter().map(z).collect::<candle_core::Result<_>>()?,
            t: 0,
        })
    }
    fn step(&mut self, vars: &[Var], grads: &[Tensor], lr: f64, cfg: &TrainConfig) -> Result<()> {
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

/// Resident memory of this process in MiB (VmRSS) and its peak (VmHWM).
pub fn rss_mib() -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|x| x.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(0.0)
    };
    (get("VmRSS:"), get("VmHWM:"))
}

/// Memory available to a new allocation, in MiB (MemAvailable).
pub fn available_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    s.lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|x| x.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
}

/// Estimated peak memory of a run in MiB: weights, activations kept for the backward pass at
/// batch x max_len, gradients and AdamW state of the trainable parameters.
pub fn estimate_mib(
    cfg_m: &crate::model::Qwen2Config,
    tc: &TrainConfig,
    trainable_params: u64,
) -> f64 {
    let p = cfg_m.parameter_count() as f64;
    let (b, s) = (tc.batch as f64, tc.max_len as f64);
    let h = cfg_m.hidden_size as f64;
    let im = cfg_m.intermediate_size as f64;
    // per token and layer, what the autograd graph keeps: about 22 hidden-sized and 5
    // MLP-sized tensors (the fused attention, LoRA, norm and gate ops keep no score matrices
    // or dropout masks; measured on the 0.5B model: ~36k floats per token and layer, under
    // this bound)
    let per_layer = b * s * (h * 22.0 + im * 5.0);
    let acts = per_layer * cfg_m.num_hidden_layers as f64;
    let bytes = p * 4.0 + trainable_params as f64 * 4.0 * 4.0 + acts * 4.0 + 600.0 * 1048576.0;
    bytes / 1048576.0
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainerState {
    step: usize,
    epoch: usize,
    /// micro-batches of `epoch` already consumed
    micro: usize,
    best_eval_loss: Option<f64>,
    best_step: Option<usize>,
    evals_without_improvement: usize,
    adam_t: usize,
    last_loss: Option<f64>,
}

fn write_checkpoint(
    dir: &Path,
    tr: &Trainable,
    opt: &AdamW,
    st: &TrainerState,
    tc: &TrainConfig,
    base: &str,
) -> Result<()> {
    let parent = dir.parent().context("checkpoint folder has no parent")?;
    std::fs::create_dir_all(parent)
        .with_context(|| format!("{}: cannot create", parent.display()))?;
    let tmp = parent.join(format!(
        ".{}.tmp",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("ckpt")
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    if tc.full {
        let w: Vec<(String, Tensor)> = tr
            .names
            .iter()
            .cloned()
            .zip(tr.vars.iter().map(|v| v.as_tensor().clone()))
            .collect();
        save_atomic(&w, &tmp.join("weights.safetensors"))?;
    } else {
        save_adapter(&tmp, &tc.lora, &tr.lora, base)?;
        adapter_meta(tc).write(&tmp)?;
    }
    let mut o = Vec::new();
    for (i, n) in tr.names.iter().enumerate() {
        o.push((format!("m.{n}"), opt.m[i].clone()));
        o.push((format!("v.{n}"), opt.v[i].clone()));
    }
    save_atomic(&o, &tmp.join("optimizer.safetensors"))?;
    data::write_atomic(
        &tmp.join("trainer_state.json"),
        serde_json::to_string_pretty(st)?.as_bytes(),
    )?;
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::rename(&tmp, dir)
        .with_context(|| format!("{}: cannot write checkpoint", dir.display()))?;
    if let Ok(d) = std::fs::File::open(parent) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The newest complete checkpoint (`checkpoints/step-N/` with trainer_state.json).
pub fn latest_checkpoint(run_dir: &Path) -> Option<(usize, PathBuf)> {
    let rd = std::fs::read_dir(run_dir.join("checkpoints")).ok()?;
    rd.flatten()
        .filter_map(|e| {
            let n = e
                .file_name()
                .to_str()?
                .strip_prefix("step-")?
                .parse::<usize>()
                .ok()?;
            e.path()
                .join("trainer_state.json")
                .exists()
                .then(|| (n, e.path()))
        })
        .max_by_key(|(n, _)| *n)
}

fn read_checkpoint(
    dir: &Path,
    tr: &Trainable,
    opt: &mut AdamW,
    tc: &TrainConfig,
) -> Result<TrainerState> {
    let st: TrainerState = serde_json::from_str(
        &std::fs::read_to_string(dir.join("trainer_state.json"))
            .with_context(|| format!("{}: cannot read trainer state", dir.display()))?,
    )
    .with_context(|| format!("{}: corrupt trainer_state.json", dir.display()))?;
    let w = if tc.full {
        dir.join("weights.safetensors")
    } else {
        dir.join("adapter_model.safetensors")
    };
    let wf = SafetensorsFile::open(&w)?;
    let dev = candle_core::Device::Cpu;
    if tc.full {
        for (n, v) in tr.names.iter().zip(&tr.vars) {
            v.set(&wf.load(n, v.dtype(), &dev)?)?;
        }
    } else {
        for l in &tr.lora {
            l.a.set(&wf.load(
                &crate::model::adapter::peft_key(&l.module, 'A'),
                l.a.dtype(),
                &dev,
            )?)?;
            l.b.set(&wf.load(
                &crate::model::adapter::peft_key(&l.module, 'B'),
                l.b.dtype(),
                &dev,
            )?)?;
        }
    }
    let of = SafetensorsFile::open(&dir.join("optimizer.safetensors"))?;
    for (i, n) in tr.names.iter().enumerate() {
        let dt = tr.vars[i].dtype();
        opt.m[i] = of.load(&format!("m.{n}"), dt, &dev)?;
        opt.v[i] = of.load(&format!("v.{n}"), dt, &dev)?;
    }
    opt.t = st.adam_t;
    Ok(st)
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    let tmp = to.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    for e in std::fs::read_dir(from)?.flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), tmp.join(e.file_name()))?;
        }
    }
    if to.exists() {
        std::fs::remove_dir_all(to)?;
    }
    std::fs::rename(&tmp, to)?;
    Ok(())
}

/// `fraudlab.json` for the run's adapter: the prompt it was trained on (the data's
/// instruction, the recipe's system prompt), so the monitor, the server and evaluation build
/// the same prompt.
fn adapter_meta(tc: &TrainConfig) -> crate::model::adapter::AdapterMeta {
    let instruction = data::load(&tc.data).ok().and_then(|r| {
        r.samples.iter().find_map(|s| match &s.body {
            SampleBody::Fraud { instruction, .. } => Some(instruction.clone()),
            _ => None,
        })
    });
    crate::model::adapter::AdapterMeta {
        instruction: instruction.unwrap_or_else(|| data::DEFAULT_INSTRUCTION.to_string()),
        system: DEFAULT_SYSTEM.to_string(),
        ..Default::default()
    }
}

/// Loads training (and validation) examples as the config says.
pub fn load_examples(
    tc: &TrainConfig,
    tok: &TextTokenizer,
) -> Result<(Vec<Example>, Vec<Example>, String)> {
    let r = data::load(&tc.data)?;
    let mut summary = r.summary.clone();
    let mut samples = r.samples;
    if let Some(n) = tc.limit {
        samples.truncate(n);
    }
    let (train_s, val_s): (Vec<Sample>, Vec<Sample>) = if let Some(v) = &tc.val {
        let rv = data::load(v)?;
        summary.push_str(&format!("; {}", rv.summary));
        (samples, rv.samples)
    } else if tc.val_split > 0.0 {
        let sp = data::tools::split(&samples, 1.0 - tc.val_split, tc.val_split, 0.0, tc.seed)?;
        (
            data::tools::pick(&samples, &sp.train),
            data::tools::pick(&samples, &sp.val),
        )
    } else {
        (samples, vec![])
    };
    let conv = |v: &[Sample]| -> Result<Vec<Example>> {
        let mut out = Vec::new();
        for s in v {
            if let Some(e) = make_example(tok, s, tc.max_len, tc.answer_fields)? {
                out.push(e);
            }
        }
        Ok(out)
    };
    let train = conv(&train_s)?;
    let val = conv(&val_s)?;
    if train.is_empty() {
        bail!(
            "{}: no trainable samples (fraud samples need a label; chat samples an assistant turn)",
            tc.data.display()
        );
    }
    Ok((train, val, summary))
}

/// Runs (or resumes) a training run to the end, a stop, or early stopping.
pub fn train(
    tc: &TrainConfig,
    control: &TrainControl,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<TrainSummary> {
    let lm = model::load(&tc.model, LoadOptions::default())?;
    train_loaded(lm, tc, control, on_event)
}

pub fn train_loaded(
    lm: LoadedModel,
    tc: &TrainConfig,
    control: &TrainControl,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<TrainSummary> {
    let t_start = Instant::now();
    if tc.batch == 0 || tc.grad_accum == 0 || tc.max_len < 8 {
        bail!("batch and grad-accum must be positive and max-len at least 8");
    }
    if lm.quantized {
        bail!("training needs the dense model (load without --quantized)");
    }
    let run_dir = tc.out_dir.clone();
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("{}: cannot create run folder", run_dir.display()))?;
    let LoadedModel {
        mut model,
        tokenizer: tok,
        ..
    } = lm;
    let (train_ex, val_ex, summary) = load_examples(tc, &tok)?;
    on_event(TrainEvent::Log(summary));
    let tr = if tc.full {
        make_all_trainable(&mut model)?
    } else {
        let lora = attach_lora(&mut model, &tc.lora, tc.seed)?;
        let mut names = Vec::new();
        let mut vars = Vec::new();
        for l in &lora {
            names.push(format!("{}.lora_A", l.module));
            vars.push(l.a.clone());
            names.push(format!("{}.lora_B", l.module));
            vars.push(l.b.clone());
        }
        Trainable { names, vars, lora }
    };
    let trainable: u64 = tr.vars.iter().map(|v| v.elem_count() as u64).sum();
    let est = estimate_mib(&model.cfg, tc, trainable);
    if let Some(avail) = available_mib() {
        if est > avail {
            bail!(
                "this run needs about {:.1} GiB but {:.1} GiB is available: {}",
                est / 1024.0,
                avail / 1024.0,
                if tc.full {
                    "use LoRA instead of full fine-tuning, or a smaller --batch / --max-len"
                } else {
                    "use a smaller --batch or --max-len"
                }
            );
        }
    }
    let micro_per_epoch = train_ex.len().div_ceil(tc.batch);
    let steps_per_epoch = micro_per_epoch.div_ceil(tc.grad_accum);
    let total = tc.max_steps.unwrap_or(steps_per_epoch * tc.epochs).max(1);
    let warmup = tc
        .warmup_steps
        .unwrap_or((tc.warmup_ratio * total as f64).ceil() as usize);
    let base_name = tc.model.clone();
    let mut opt = AdamW::new(&tr.vars)?;
    let mut st = TrainerState {
        step: 0,
        epoch: 0,
        micro: 0,
        best_eval_loss: None,
        best_step: None,
        evals_without_improvement: 0,
        adam_t: 0,
        last_loss: None,
    };
    let metrics_path = run_dir.join("metrics.jsonl");
    if tc.resume {
        match latest_checkpoint(&run_dir) {
            Some((_, dir)) => {
                let prev: Option<TrainConfig> =
                    std::fs::read_to_string(run_dir.join("config.json"))
                        .ok()
                        .and_then(|s| serde_json::from_str(&s).ok());
                if let Some(p) = prev {
                    let mut a = p.clone();
                    let mut b = tc.clone();
                    a.resume = false;
                    b.resume = false;
                    if a != b {
                        bail!(
                            "{}: --resume with settings other than the run's own config.json",
                            run_dir.display()
                        );
                    }
                }
                st = read_checkpoint(&dir, &tr, &mut opt, tc)?;
                // metrics past the checkpoint are redone
                if let Ok(text) = std::fs::read_to_string(&metrics_path) {
                    let kept: String = text
                        .lines()
                        .filter(|l| {
                            serde_json::from_str::<serde_json::Value>(l)
                                .ok()
                                .and_then(|v| v["step"].as_u64())
                                .is_some_and(|s| s as usize <= st.step)
                        })
                        .map(|l| format!("{l}\n"))
                        .collect();
                    data::write_atomic(&metrics_path, kept.as_bytes())?;
                }
                on_event(TrainEvent::Log(format!(
                    "resumed from {} (step {})",
                    dir.display(),
                    st.step
                )));
            }
            None => on_event(TrainEvent::Log(
                "no checkpoint to resume from; starting fresh".into(),
            )),
        }
    } else if metrics_path.exists() {
        std::fs::remove_file(&metrics_path)?;
    }
    data::write_atomic(
        &run_dir.join("config.json"),
        serde_json::to_string_pretty(tc)?.as_bytes(),
    )?;
    on_event(TrainEvent::Started {
        run_dir: run_dir.clone(),
        total_steps: total,
        start_step: st.step,
        train_samples: train_ex.len(),
        val_samples: val_ex.len(),
        estimate_mib: est,
    });
    let start_step = st.step;
    let mut end = "completed".to_string();
    let mut step_t = Instant::now();
    let mut window_loss = 0.0;
    let mut window_tokens = 0usize;
    let mut window_samples = 0usize;
    let mut accum: Option<Vec<Tensor>> = None;
    let mut window_targets = 0usize;
    let mut window_batches: Vec<Batch> = Vec::new();
    'outer: while st.step < total {
        let order = if tc.shuffle {
            epoch_order(train_ex.len(), tc.seed, st.epoch)
        } else {
            (0..train_ex.len()).collect()
        };
        let micro_total = micro_per_epoch;
        while st.micro < micro_total && st.step < total {
            // gather the micro-batches of one optimizer step first, to normalise by their targets
            if window_batches.is_empty() {
                let upto = (st.micro + tc.grad_accum).min(micro_total);
                for m in st.micro..upto {
                    let idx = &order[m * tc.batch..((m + 1) * tc.batch).min(order.len())];
                    let refs: Vec<&Example> = idx.iter().map(|&i| &train_ex[i]).collect();
                    window_batches.push(make_batch(&refs)?);
                }
                window_targets = window_batches
                    .iter()
                    .map(|b| b.targets.len())
                    .sum::<usize>()
                    .max(1);
            }
            let batch = window_batches.remove(0);
            let seed = tc.seed.wrapping_mul(0x2545F4914F6CDD1D)
                ^ ((st.epoch * micro_total + st.micro) as u64).wrapping_mul(0x9E3779B97F4A7C15);
            let nll = batch_nll(&model, &batch, Mode::Train { dropout_seed: seed })?;
            let loss = (nll / window_targets as f64)?;
            let grads = loss.backward()?;
            let g: Vec<Tensor> = tr
                .vars
                .iter()
                .map(|v| {
                    grads
                        .get(v.as_tensor())
                        .cloned()
                        .map(Ok)
                        .unwrap_or_else(|| v.as_tensor().zeros_like())
                })
                .collect::<candle_core::Result<_>>()?;
            accum = Some(match accum.take() {
                None => g,
                Some(a) => a
                    .iter()
                    .zip(&g)
                    .map(|(x, y)| x + y)
                    .collect::<candle_core::Result<_>>()?,
            });
            window_loss += scalar(&loss)?;
            window_tokens += batch.tokens;
            window_samples += batch.lens.len();
            st.micro += 1;
            if !window_batches.is_empty() {
                continue;
            }
            // optimizer step
            let mut g = accum.take().unwrap_or_default();
            let sq: f64 = g
                .iter()
                .map(|t| scalar(&t.sqr()?.sum_all()?))
                .sum::<Result<f64>>()?;
            let norm = sq.sqrt();
            if !window_loss.is_finite() || !norm.is_finite() {
                bail!(
                    "loss became {} at step {}; stopped. The last good checkpoint in {} is kept (try a lower --lr)",
                    if window_loss.is_finite() { "finite but the gradient is not" } else { "NaN or infinite" },
                    st.step + 1,
                    run_dir.join("checkpoints").display()
                );
            }
            if tc.max_grad_norm > 0.0 && norm > tc.max_grad_norm {
                let c = tc.max_grad_norm / (norm + 1e-6);
                g = g
                    .iter()
                    .map(|t| t * c)
                    .collect::<candle_core::Result<_>>()?;
            }
            let lr = lr_at(tc, st.step, total, warmup);
            opt.step(&tr.vars, &g, lr, tc)?;
            st.step += 1;
            st.adam_t = opt.t;
            st.last_loss = Some(window_loss);
            let step_s = step_t.elapsed().as_secs_f64();
            step_t = Instant::now();
            let elapsed = t_start.elapsed().as_secs_f64();
            let done = st.step - start_step;
            let eta = elapsed / done as f64 * (total - st.step) as f64;
            let mut m = StepMetrics {
                step: st.step,
                total_steps: total,
                epoch: st.epoch as f64 + st.micro as f64 / micro_total as f64,
                loss: window_loss,
                lr,
                grad_norm: norm,
                step_s,
                tokens_per_s: window_tokens as f64 / step_s.max(1e-9),
                samples_per_s: window_samples as f64 / step_s.max(1e-9),
                elapsed_s: elapsed,
                eta_s: eta,
                rss_mib: rss_mib().0,
                eval_loss: None,
            };
            window_loss = 0.0;
            window_tokens = 0;
            window_samples = 0;
            let epoch_end = st.micro >= micro_total;
            let want_eval = !val_ex.is_empty()
                && ((tc.eval_every > 0 && st.step % tc.eval_every == 0)
                    || (tc.eval_every == 0 && epoch_end)
                    || st.step == total);
            let mut improved = false;
            if want_eval {
                let el = eval_loss(&model, &val_ex, tc.batch)?;
                m.eval_loss = Some(el);
                improved = st.best_eval_loss.is_none_or(|b| el < b);
                if improved {
                    st.best_eval_loss = Some(el);
                    st.best_step = Some(st.step);
                    st.evals_without_improvement = 0;
                } else {
                    st.evals_without_improvement += 1;
                }
                on_event(TrainEvent::Eval {
                    step: st.step,
                    eval_loss: el,
                    best: improved,
                });
            }
            data::append_line_durable(
                &metrics_path,
                format!("{}\n", serde_json::to_string(&m)?).as_bytes(),
            )?;
            on_event(TrainEvent::Step(m));
            if epoch_end {
                st.epoch += 1;
                st.micro = 0;
            }
            let stop = control.stop.load(Ordering::SeqCst);
            let early = tc
                .early_stopping
                .is_some_and(|p| st.evals_without_improvement >= p);
            let save = (tc.save_every > 0 && st.step % tc.save_every == 0)
                || st.step == total
                || stop
                || early
                || improved;
            if save {
                let dir = run_dir
                    .join("checkpoints")
                    .join(format!("step-{}", st.step));
                write_checkpoint(&dir, &tr, &opt, &st, tc, &base_name)?;
                on_event(TrainEvent::Checkpoint {
                    step: st.step,
                    path: dir.clone(),
                });
                if improved {
                    copy_dir(&dir, &run_dir.join("checkpoints").join("best"))?;
                }
                prune_checkpoints(&run_dir, tc.keep_checkpoints);
            }
            if stop {
                end = "stopped".into();
                break 'outer;
            }
            if early {
                end = "early-stopped".into();
                break 'outer;
            }
            if control.pause.load(Ordering::SeqCst) {
                on_event(TrainEvent::Paused { step: st.step });
                while control.pause.load(Ordering::SeqCst) && !control.stop.load(Ordering::SeqCst) {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                on_event(TrainEvent::Resumed { step: st.step });
                step_t = Instant::now();
            }
            if epoch_end {
                continue 'outer; // a new epoch: a new order
            }
        }
    }
    // final output: the adapter (PEFT layout) or the full model folder
    let output_dir = if tc.full {
        let out = run_dir.join("model");
        crate::model::convert::write_hf_folder(
            &model,
            &crate::model::loader::resolve(&tc.model)?,
            &out,
        )?;
        out
    } else {
        let out = run_dir.join("adapter");
        save_adapter(&out, &tc.lora, &tr.lora, &base_name)?;
        adapter_meta(tc).write(&out)?;
        out
    };
    let summary = TrainSummary {
        run_dir: run_dir.clone(),
        output_dir,
        steps: st.step,
        final_loss: st.last_loss,
        best_eval_loss: st.best_eval_loss,
        best_step: st.best_step,
        end,
        seconds: t_start.elapsed().as_secs_f64(),
    };
    data::write_atomic(
        &run_dir.join("summary.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    on_event(TrainEvent::Finished(summary.clone()));
    Ok(summary)
}

fn prune_checkpoints(run_dir: &Path, keep: usize) {
    let Ok(rd) = std::fs::read_dir(run_dir.join("checkpoints")) else {
        return;
    };
    let mut steps: Vec<(usize, PathBuf)> = rd
        .flatten()
        .filter_map(|e| {
            Some((
                e.file_name()
                    .to_str()?
                    .strip_prefix("step-")?
                    .parse()
                    .ok()?,
                e.path(),
            ))
        })
        .collect();
    steps.sort();
    let n = steps.len();
    for (_, p) in steps.into_iter().take(n.saturating_sub(keep.max(1))) {
        let _ = std::fs::remove_dir_all(p);
    }
}
