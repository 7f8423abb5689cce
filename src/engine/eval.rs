//! Evaluation on labelled dialogues: `score` mode (one forward per sample, P(true) vs
//! P(false) after the pre-filled `{"is_fraud":`, shared prompt prefix computed once and the
//! rest batched) and `generate` mode (greedy answer, `is_fraud` parsed from its JSON).

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::data::metrics::{self, EvalRow, Metrics};
use crate::data::{self, answer_json, parse_answer, Sample, DEFAULT_SYSTEM};
use crate::model::{self, LoadOptions, LoadedModel, TextTokenizer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalMode {
    Score,
    Generate,
    /// Each dialogue replayed turn by turn through the live monitor (early detection).
    Stream,
}

impl std::str::FromStr for EvalMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "score" => Ok(Self::Score),
            "generate" => Ok(Self::Generate),
            "stream" => Ok(Self::Stream),
            _ => bail!("mode `{s}`: use score, generate or stream"),
        }
    }
}

/// One model (with an optional adapter) to evaluate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalTarget {
    pub model: String,
    pub adapter: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalConfig {
    pub targets: Vec<EvalTarget>,
    pub data: PathBuf,
    pub limit: Option<usize>,
    pub mode: EvalMode,
    pub batch: usize,
    /// P(fraud) at or above this predicts fraud (score mode; per turn in stream mode).
    pub threshold: f64,
    /// Use each adapter's saved threshold (`fraudlab.json`: the whole-dialogue one in score
    /// mode, the streaming rule in stream mode) where it has one, instead of `threshold`.
    #[serde(default)]
    pub adapter_thresholds: bool,
    /// Stream mode: turns in a row at or above the threshold that fire an alert.
    #[serde(default = "one")]
    pub consecutive: usize,
    /// Anonymise speakers in the prompts (None: as each adapter's fraudlab.json says).
    #[serde(default)]
    pub anonymize_speakers: Option<bool>,
    /// Generate mode: answer length cap.
    pub max_tokens: usize,
    pub quantized: bool,
    /// Dense weights: `f32` or `bf16`.
    #[serde(default = "crate::engine::train::f32_name")]
    pub dtype: String,
    /// Where config.json, metrics.json and predictions.jsonl go (a session's evals/<id>/).
    pub out_dir: Option<PathBuf>,
}

fn one() -> usize {
    1
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            targets: vec![],
            data: PathBuf::new(),
            limit: None,
            mode: EvalMode::Score,
            batch: 8,
            threshold: 0.5,
            adapter_thresholds: false,
            consecutive: 1,
            anonymize_speakers: None,
            max_tokens: 64,
            quantized: false,
            dtype: crate::engine::train::f32_name(),
            out_dir: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prediction {
    pub id: String,
    pub label: bool,
    pub probability: Option<f64>,
    pub answer: Option<String>,
    pub predicted: Option<bool>,
}

impl Prediction {
    /// The row the metrics are computed from.
    pub fn row(&self) -> EvalRow {
        EvalRow {
            label: self.label,
            predicted: self.predicted,
            probability: self.probability,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalResult {
    pub model: String,
    pub adapter: Option<PathBuf>,
    pub mode: EvalMode,
    #[serde(flatten)]
    pub metrics: Metrics,
    pub samples_per_s: f64,
    pub seconds: f64,
    /// Stream mode: early-detection figures and the per-turn risks behind them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<Box<StreamOutcome>>,
    /// The decision rule the predictions used, and where it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<DecisionRule>,
    #[serde(skip)]
    pub predictions: Vec<Prediction>,
}

/// The threshold (and, in stream mode, the consecutive turns) a result was decided at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRule {
    pub threshold: f64,
    pub consecutive: usize,
    /// "given", "the adapter's calibrated threshold", "the adapter's streaming rule"…
    pub source: String,
}

/// What stream mode adds to a result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamOutcome {
    #[serde(flatten)]
    pub report: super::stream_eval::StreamReport,
    /// Where the threshold came from (given, the adapter's saved rule, the default).
    pub threshold_source: String,
    pub turns_scored: usize,
    pub turns_per_s: f64,
    #[serde(skip)]
    pub risks: Vec<super::stream_eval::DialogueRisks>,
}

/// The scoring prompt of a sample: the chat prompt with the assistant turn pre-filled up to
/// where the answers `{"is_fraud": true}` and `{"is_fraud": false}` part, tokenized exactly
/// as the training target is; and the two tokens that begin the continuations.
/// Drops the middle of a prompt longer than `max` tokens, keeping its first quarter (system
/// prompt, instruction) and the rest from its end (the dialogue's last turns), as training
/// does with samples over `max_len`.
pub fn trim_middle(ids: &mut Vec<u32>, max: usize) {
    ids.drain(middle_cut(ids.len(), max));
}

/// The range `trim_middle` removes from `len` tokens to keep `max` (empty when they fit).
pub fn middle_cut(len: usize, max: usize) -> std::ops::Range<usize> {
    if len <= max {
        return 0..0;
    }
    let head = max / 4;
    head..len - (max - head)
}

pub fn score_prompt(tok: &TextTokenizer, s: &Sample) -> Result<(Vec<u32>, u32, u32)> {
    let msgs = s.to_chat_messages(DEFAULT_SYSTEM, false, false);
    let prompt = tok.apply_chat_template(&msgs, true)?;
    let t = tok.encode(&format!("{prompt}{}", answer_json(true, None, None, false)))?;
    let f = tok.encode(&format!(
        "{prompt}{}",
        answer_json(false, None, None, false)
    ))?;
    let p = t.iter().zip(&f).take_while(|(a, b)| a == b).count();
    if p >= t.len() || p >= f.len() {
        bail!("the true and false answers tokenize alike");
    }
    Ok((t[..p].to_vec(), t[p], f[p]))
}

/// Tokens every sequence starts with, leaving each at least one token of its own.
pub(crate) fn common_prefix<S: AsRef<[u32]>>(seqs: &[S]) -> usize {
    let Some(first) = seqs.first().map(|s| s.as_ref()) else {
        return 0;
    };
    let mut n = first.len();
    for s in &seqs[1..] {
        n = n.min(
            s.as_ref()
                .iter()
                .zip(first)
                .take_while(|(a, b)| a == b)
                .count(),
        );
    }
    // every row keeps at least one token of its own
    n.min(
        seqs.iter()
            .map(|s| s.as_ref().len())
            .min()
            .unwrap_or(1)
            .saturating_sub(1),
    )
}

/// Runs the token prefix every prompt shares once; returns its length and its (batch-1) cache.
fn shared_prefix_cache(
    model: &crate::model::Qwen2,
    ids: &[Vec<u32>],
) -> Result<(usize, crate::model::KvCache)> {
    let lcp = common_prefix(ids);
    let mut cache = model.new_cache(1);
    if lcp > 0 {
        let input = Tensor::new(&ids[0][..lcp], &model.device)?.unsqueeze(0)?;
        model.forward_hidden(&input, None, Some(&mut cache), crate::model::Mode::Infer)?;
    }
    Ok((lcp, cache))
}

/// P(fraud) of each sample. The prefix every prompt shares runs once; the rest goes in
/// batches packed into one row (no padding), each sample seeing that prefix's KV cache and
/// itself.
pub fn score_samples(
    lm: &LoadedModel,
    samples: &[Sample],
    batch: usize,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<f64>> {
    score_with(&lm.model, &lm.tokenizer, samples, batch, cancel, progress)
}

/// [`score_samples`] with a model and tokenizer held apart (a model being trained).
pub fn score_with(
    model: &crate::model::Qwen2,
    tokenizer: &TextTokenizer,
    samples: &[Sample],
    batch: usize,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<f64>> {
    let prompts: Vec<(Vec<u32>, u32, u32)> = samples
        .iter()
        .map(|s| score_prompt(tokenizer, s))
        .collect::<Result<_>>()?;
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| p.0.clone()).collect();
    // prompts longer than the context lose the middle of their dialogue
    let ctx = model.cfg.max_position_embeddings;
    let mut ids = ids;
    for p in ids.iter_mut() {
        trim_middle(p, ctx - 1);
    }
    let (lcp, prefix_cache) = shared_prefix_cache(model, &ids)?;
    let mut order: Vec<usize> = (0..samples.len()).collect();
    order.sort_by_key(|&i| ids[i].len());
    let mut probs = vec![f64::NAN; samples.len()];
    let mut done = 0;
    for chunk in order.chunks(batch.max(1)) {
        if cancel.load(Ordering::Relaxed) {
            bail!("cancelled");
        }
        let b = chunk.len();
        // packed back to back in one row (no padding), each after the shared prefix
        let mut flat = Vec::new();
        let mut lens = Vec::with_capacity(b);
        for &i in chunk {
            let rest = &ids[i][lcp..];
            flat.extend_from_slice(rest);
            lens.push(rest.len());
        }
        let hidden = model.forward_packed_ends(
            &flat,
            &lens,
            (lcp > 0).then_some(&prefix_cache),
            crate::model::Mode::Infer,
        )?;
        let sel = hidden.squeeze(0)?;
        let logits = model.logits(&sel, crate::model::Mode::Infer)?;
        let logits: Vec<Vec<f32>> = logits.to_vec2()?;
        for (row, &i) in chunk.iter().enumerate() {
            let (_, t, f) = prompts[i];
            let d = (logits[row][t as usize] - logits[row][f as usize]) as f64;
            probs[i] = 1.0 / (1.0 + (-d).exp());
        }
        done += b;
        progress(done, samples.len());
    }
    Ok(probs)
}

/// Greedy answers, the shared prompt prefix computed once, `batch` samples decoded together
/// (sorted by length, left-padded on copies of the prefix cache; a row that has finished
/// rides along masked out until the last one stops).
pub fn generate_answers(
    lm: &LoadedModel,
    samples: &[Sample],
    max_tokens: usize,
    batch: usize,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<String>> {
    let model = &lm.model;
    let ids: Vec<Vec<u32>> = samples
        .iter()
        .map(|s| {
            let msgs = s.to_chat_messages(DEFAULT_SYSTEM, false, false);
            let mut ids = lm
                .tokenizer
                .encode(&lm.tokenizer.apply_chat_template(&msgs, true)?)?;
            trim_middle(
                &mut ids,
                model
                    .cfg
                    .max_position_embeddings
                    .saturating_sub(max_tokens + 1)
                    .max(16),
            );
            Ok(ids)
        })
        .collect::<Result<_>>()?;
    let (lcp, prefix_cache) = shared_prefix_cache(model, &ids)?;
    let mut order: Vec<usize> = (0..samples.len()).collect();
    order.sort_by_key(|&i| ids[i].len());
    let pad = lm.tokenizer.pad_id.unwrap_or(0);
    let mut out = vec![String::new(); samples.len()];
    let mut done = 0;
    for chunk in order.chunks(batch.max(1)) {
        let rows: Vec<&[u32]> = chunk.iter().map(|&i| &ids[i][lcp..]).collect();
        let cache = if lcp > 0 {
            prefix_cache.expand(rows.len())?
        } else {
            model.new_cache(rows.len())
        };
        let answers = greedy_batch(lm, cache, &rows, pad, max_tokens, cancel)?;
        for (&i, a) in chunk.iter().zip(answers) {
            out[i] = a;
        }
        done += chunk.len();
        progress(done, samples.len());
    }
    Ok(out)
}

/// Greedy continuations of `rows` (each continuing `cache`, one cache row per prompt row),
/// decoded together until every row has met an end-of-sequence token or `max_tokens`.
fn greedy_batch(
    lm: &LoadedModel,
    mut cache: crate::model::KvCache,
    rows: &[&[u32]],
    pad: u32,
    max_tokens: usize,
    cancel: &AtomicBool,
) -> Result<Vec<String>> {
    let model = &lm.model;
    let b = rows.len();
    let max = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    if max == 0 {
        bail!("an empty prompt");
    }
    let mut flat = Vec::with_capacity(b * max);
    let mut valid = Vec::with_capacity(b);
    for r in rows {
        let padn = max - r.len();
        flat.extend(std::iter::repeat_n(pad, padn));
        flat.extend_from_slice(r);
        valid.push([vec![false; padn], vec![true; r.len()]].concat());
    }
    let input = Tensor::from_vec(flat, (b, max), &model.device)?;
    let any_pad = valid.iter().any(|v| v.iter().any(|x| !x));
    let mut logits = model.forward_last(
        &input,
        if any_pad { Some(&valid) } else { None },
        Some(&mut cache),
    )?;
    let ctx = model.cfg.max_position_embeddings;
    let steps = max_tokens.min(ctx.saturating_sub(cache.len()));
    let mut outs: Vec<Vec<u32>> = vec![Vec::new(); b];
    let mut running = vec![true; b];
    for step in 0..steps {
        if cancel.load(Ordering::Relaxed) {
            bail!("cancelled");
        }
        let next: Vec<u32> = logits.argmax(candle_core::D::Minus1)?.to_vec1()?;
        for r in 0..b {
            if running[r] {
                if lm.tokenizer.eos_ids.contains(&next[r]) {
                    running[r] = false;
                } else {
                    outs[r].push(next[r]);
                }
            }
        }
        if step + 1 == steps || !running.iter().any(|&x| x) {
            break;
        }
        let feed: Vec<u32> = (0..b)
            .map(|r| if running[r] { next[r] } else { pad })
            .collect();
        let input = Tensor::from_vec(feed, (b, 1), &model.device)?;
        let all_run = running.iter().all(|&x| x);
        let v: Vec<Vec<bool>> = running.iter().map(|&x| vec![x]).collect();
        logits = model.forward_last(
            &input,
            if all_run { None } else { Some(&v) },
            Some(&mut cache),
        )?;
    }
    outs.iter().map(|o| lm.tokenizer.decode(o, true)).collect()
}

/// Loads the labelled samples of a dataset (unlabelled ones are left out).
pub fn load_labelled(
    path: &std::path::Path,
    limit: Option<usize>,
) -> Result<(Vec<Sample>, String)> {
    let (s, _, summary) = load_labelled_dialogues(path, limit)?;
    Ok((s, summary))
}

/// `load_labelled`, with the turn-level dialogue behind each sample where the file has one
/// (turn-level CSV: per-turn labels), aligned with the samples.
pub fn load_labelled_dialogues(
    path: &std::path::Path,
    limit: Option<usize>,
) -> Result<(Vec<Sample>, Option<Vec<data::Dialogue>>, String)> {
    let r = data::load(path)?;
    let has_dialogues = r.dialogues.len() == r.samples.len() && !r.dialogues.is_empty();
    let mut dialogues = Vec::new();
    let mut samples = Vec::new();
    for (i, s) in r.samples.into_iter().enumerate() {
        if s.label.is_some() {
            if has_dialogues {
                dialogues.push(r.dialogues[i].clone());
            }
            samples.push(s);
        }
    }
    if let Some(n) = limit {
        samples.truncate(n);
        dialogues.truncate(n);
    }
    if samples.is_empty() {
        bail!("{}: no labelled samples to evaluate", path.display());
    }
    Ok((samples, has_dialogues.then_some(dialogues), r.summary))
}

/// Evaluates one loaded model on samples.
pub fn evaluate_loaded(
    lm: &LoadedModel,
    samples: &[Sample],
    cfg: &EvalConfig,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Metrics, Vec<Prediction>, f64)> {
    let t0 = Instant::now();
    let preds: Vec<Prediction> = match cfg.mode {
        EvalMode::Score => {
            let p = score_samples(lm, samples, cfg.batch, cancel, progress)?;
            samples
                .iter()
                .zip(p)
                .map(|(s, p)| Prediction {
                    id: s.id.clone(),
                    label: s.label.unwrap_or(false),
                    probability: Some(p),
                    answer: None,
                    predicted: Some(p >= cfg.threshold),
                })
                .collect()
        }
        EvalMode::Stream => {
            let mcfg = super::monitor::MonitorConfig {
                threshold: cfg.threshold,
                consecutive: cfg.consecutive,
                anonymize_speakers: cfg.anonymize_speakers.unwrap_or(false),
                ..Default::default()
            };
            evaluate_stream(lm, samples, None, &mcfg, "given", cancel, progress)?.0
        }
        EvalMode::Generate => {
            let answers =
                generate_answers(lm, samples, cfg.max_tokens, cfg.batch, cancel, progress)?;
            samples
                .iter()
                .zip(answers)
                .map(|(s, a)| Prediction {
                    id: s.id.clone(),
                    label: s.label.unwrap_or(false),
                    probability: None,
                    predicted: parse_answer(&a).map(|x| x.is_fraud),
                    answer: Some(a),
                })
                .collect()
        }
    };
    let secs = t0.elapsed().as_secs_f64();
    let rows: Vec<EvalRow> = preds.iter().map(Prediction::row).collect();
    Ok((metrics::compute(&rows), preds, secs))
}

/// Stream mode on one loaded model: every dialogue replayed turn by turn under `mcfg`; the
/// dialogue-level predictions and the early-detection figures.
pub fn evaluate_stream(
    lm: &LoadedModel,
    samples: &[Sample],
    dialogues: Option<&[data::Dialogue]>,
    mcfg: &super::monitor::MonitorConfig,
    source: &str,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Vec<Prediction>, StreamOutcome)> {
    let t0 = Instant::now();
    let risks = super::stream_eval::replay(lm, samples, dialogues, mcfg, cancel, progress)?;
    let secs = t0.elapsed().as_secs_f64();
    let (threshold, k) = (mcfg.threshold, mcfg.consecutive);
    let preds = stream_predictions(&risks, threshold, k);
    let turns: usize = risks.iter().map(|d| d.risks.len()).sum();
    let outcome = StreamOutcome {
        report: super::stream_eval::report(&risks, threshold, k),
        threshold_source: source.to_string(),
        turns_scored: turns,
        turns_per_s: turns as f64 / secs.max(1e-9),
        risks,
    };
    Ok((preds, outcome))
}

/// Dialogue-level predictions of stream mode: fraud when the alert fired at some turn, with
/// the highest per-turn risk as the probability.
fn stream_predictions(
    risks: &[super::stream_eval::DialogueRisks],
    threshold: f64,
    k: usize,
) -> Vec<Prediction> {
    risks
        .iter()
        .map(|d| Prediction {
            id: d.id.clone(),
            label: d.label,
            probability: d.risks.iter().copied().reduce(f64::max),
            answer: None,
            predicted: Some(d.alert_turn(threshold, k).is_some()),
        })
        .collect()
}

/// The threshold (and K) a target is evaluated at, and where it came from.
fn target_rule(
    cfg: &EvalConfig,
    meta: Option<&crate::model::adapter::AdapterMeta>,
) -> (f64, usize, String) {
    if !cfg.adapter_thresholds {
        return (cfg.threshold, cfg.consecutive, "given".into());
    }
    let saved = meta.and_then(|m| match cfg.mode {
        EvalMode::Stream => m
            .stream
            .map(|r| (r.threshold, r.consecutive, "the adapter's streaming rule"))
            .or(m
                .threshold
                .map(|t| (t, cfg.consecutive, "the adapter's whole-dialogue threshold"))),
        _ => m
            .threshold
            .map(|t| (t, cfg.consecutive, "the adapter's calibrated threshold")),
    });
    let (t, k, source) = saved.unwrap_or((cfg.threshold, cfg.consecutive, "the default"));
    (t, k, source.to_string())
}

/// Evaluates every target on the same samples; writes config.json, metrics.json and
/// predictions.jsonl to `out_dir` when given.
pub fn evaluate(
    cfg: &EvalConfig,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Vec<EvalResult>> {
    evaluate_with(cfg, cancel, progress, &mut |t| {
        let lm = model::load(&t.model, target_load_options(cfg)?)?;
        with_adapter(lm, t)
    })
}

/// How [`evaluate`] loads its models (an unknown `dtype` is an error naming it).
pub fn target_load_options(cfg: &EvalConfig) -> Result<LoadOptions> {
    Ok(LoadOptions {
        quantized: cfg.quantized,
        dtype: model::loader::parse_dtype(&cfg.dtype)?,
    })
}

/// A loaded base model with the target's adapter attached (when it names one).
pub fn with_adapter(mut lm: LoadedModel, t: &EvalTarget) -> Result<LoadedModel> {
    if let Some(a) = &t.adapter {
        crate::model::adapter::load_adapter(&mut lm.model, a)?;
    }
    Ok(lm)
}

/// [`evaluate`] on the models `model` gives for each target (with its adapter): the
/// engine hands out the ones it has loaded, sharing their weights.
pub fn evaluate_with(
    cfg: &EvalConfig,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(&str, usize, usize),
    model: &mut dyn FnMut(&EvalTarget) -> Result<LoadedModel>,
) -> Result<Vec<EvalResult>> {
    if cfg.targets.is_empty() {
        bail!("no model to evaluate");
    }
    let (samples, dialogues, _) = load_labelled_dialogues(&cfg.data, cfg.limit)?;
    let mut results = Vec::new();
    for t in &cfg.targets {
        let lm = model(t)?;
        let name = lm.name.clone();
        let saved = match &t.adapter {
            Some(a) => crate::model::adapter::AdapterMeta::read(a)?,
            None => None,
        };
        let meta = saved.clone().unwrap_or_default();
        let (threshold, k, source) = target_rule(cfg, saved.as_ref());
        let rule_source = source.clone();
        let tcfg = EvalConfig {
            threshold,
            consecutive: k,
            ..cfg.clone()
        };
        let mut stream = None;
        let anonymize = cfg.anonymize_speakers.unwrap_or(meta.anonymize_speakers);
        let anon_samples: Vec<Sample>;
        let samples: &[Sample] = if anonymize && cfg.mode != EvalMode::Stream {
            anon_samples = samples.iter().map(Sample::anonymized).collect();
            &anon_samples
        } else {
            &samples
        };
        let (m, preds, secs) = if cfg.mode == EvalMode::Stream {
            let mcfg = super::monitor::MonitorConfig {
                threshold,
                consecutive: k,
                anonymize_speakers: anonymize,
                ..super::monitor::MonitorConfig::from_meta(&meta)
            };
            let t0 = Instant::now();
            let (preds, outcome) = evaluate_stream(
                &lm,
                samples,
                dialogues.as_deref(),
                &mcfg,
                &source,
                cancel,
                &mut |d, n| progress(&name, d, n),
            )?;
            let secs = t0.elapsed().as_secs_f64();
            stream = Some(Box::new(outcome));
            let rows: Vec<EvalRow> = preds.iter().map(Prediction::row).collect();
            (metrics::compute(&rows), preds, secs)
        } else {
            evaluate_loaded(&lm, samples, &tcfg, cancel, &mut |d, n| {
                progress(&name, d, n)
            })?
        };
        results.push(EvalResult {
            model: t.model.clone(),
            adapter: t.adapter.clone(),
            mode: cfg.mode,
            metrics: m,
            samples_per_s: samples.len() as f64 / secs.max(1e-9),
            seconds: secs,
            rule: (cfg.mode != EvalMode::Generate).then(|| DecisionRule {
                threshold,
                consecutive: k,
                source: rule_source.clone(),
            }),
            stream,
            predictions: preds,
        });
    }
    if let Some(dir) = &cfg.out_dir {
        write_results(dir, cfg, &results)?;
    }
    Ok(results)
}

pub fn write_results(
    dir: &std::path::Path,
    cfg: &EvalConfig,
    results: &[EvalResult],
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    // metrics.json last: a folder with it is complete (what readers of past evaluations
    // check), so a full disk half way leaves an evaluation that is not listed
    let mut lines = String::new();
    for r in results {
        for p in &r.predictions {
            let mut v = serde_json::to_value(p)?;
            v["model"] = serde_json::json!(r.model);
            v["adapter"] = serde_json::json!(r.adapter);
            lines.push_str(&serde_json::to_string(&v)?);
            lines.push('\n');
        }
    }
    data::write_atomic(&dir.join("predictions.jsonl"), lines.as_bytes())?;
    data::write_atomic(
        &dir.join("config.json"),
        serde_json::to_string_pretty(cfg)?.as_bytes(),
    )?;
    data::write_atomic(
        &dir.join("metrics.json"),
        serde_json::to_string_pretty(results)?.as_bytes(),
    )
}
