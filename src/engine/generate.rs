//! Text generation: greedy or sampled (temperature, top-k, top-p, seed), streaming, cancellable
//! between tokens, with timings.

use anyhow::{bail, Result};
use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::model::{ChatMessage, KvCache, LoadedModel, TextTokenizer};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub seed: u64,
    pub max_tokens: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
            max_tokens: 256,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Eos,
    MaxTokens,
    Cancelled,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Generation {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Seconds to the first generated token (prefill included).
    pub ttft_s: f64,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    pub stop: StopReason,
}

/// The prompt text: the chat template applied to an optional system message and the user
/// prompt (with the assistant turn opened), or, with `raw`, the prompt as given.
pub fn build_prompt(
    tok: &TextTokenizer,
    system: Option<&str>,
    prompt: &str,
    raw: bool,
) -> Result<String> {
    if raw {
        return Ok(prompt.to_string());
    }
    let mut msgs = Vec::new();
    if let Some(s) = system {
        msgs.push(ChatMessage::new("system", s));
    }
    msgs.push(ChatMessage::new("user", prompt));
    tok.apply_chat_template(&msgs, true)
}

/// Picks the next token from last-position logits.
pub struct Sampler {
    params: SamplingParams,
    rng: rand::rngs::StdRng,
}

impl Sampler {
    pub fn new(params: &SamplingParams) -> Self {
        Self {
            params: params.clone(),
            rng: rand::rngs::StdRng::seed_from_u64(params.seed),
        }
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        if p.temperature <= 0.0 {
            return argmax(logits);
        }
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l / p.temperature as f32))
            .collect();
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        if let Some(k) = p.top_k.filter(|&k| k > 0) {
            cand.truncate(k);
        }
        let max = cand[0].1;
        let mut probs: Vec<f64> = cand.iter().map(|(_, l)| ((l - max) as f64).exp()).collect();
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= sum);
        if let Some(tp) = p.top_p.filter(|&t| t > 0.0 && t < 1.0) {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, q) in probs.iter().enumerate() {
                acc += q;
                if acc >= tp {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            let s: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|x| *x /= s);
        }
        let r: f64 = self.rng.random();
        let mut acc = 0.0;
        for (i, q) in probs.iter().enumerate() {
            acc += q;
            if r < acc {
                return cand[i].0;
            }
        }
        cand[probs.len() - 1].0
    }
}

pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Streams text as tokens arrive, holding back an incomplete UTF-8 sequence.
pub struct TextStream {
    ids: Vec<u32>,
    emitted: usize,
}

impl TextStream {
    pub fn new() -> Self {
        Self {
            ids: vec![],
            emitted: 0,
        }
    }
    /// Adds a token and returns the newly completed text.
    pub fn push(&mut self, tok: &TextTokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = tok.decode(&self.ids, true)?;
        if text.ends_with('\u{FFFD}') || text.len() < self.emitted {
            return Ok(String::new());
        }
        let new = text[self.emitted..].to_string();
        self.emitted = text.len();
        Ok(new)
    }
}

impl Default for TextStream {
    fn default() -> Self {
        Self::new()
    }
}

/// Generates from prompt token ids. `on_text` receives each new piece of text; `cancel`
/// is checked between tokens.
pub fn generate(
    lm: &LoadedModel,
    prompt_ids: &[u32],
    params: &SamplingParams,
    cancel: &AtomicBool,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation> {
    let mut cache = lm.model.new_cache(1);
    generate_with_cache(lm, &mut cache, prompt_ids, params, cancel, on_text)
}

/// Generates after a (batch-1) cache that already holds a prefix of the prompt; `new_ids` are
/// the rest of the prompt. Timings and `prompt_tokens` count only `new_ids` as prefill.
pub fn generate_with_cache(
    lm: &LoadedModel,
    cache: &mut KvCache,
    new_ids: &[u32],
    params: &SamplingParams,
    cancel: &AtomicBool,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation> {
    let model = &lm.model;
    let tok = &lm.tokenizer;
    if new_ids.is_empty() {
        bail!("the prompt is empty");
    }
    let ctx = model.cfg.max_position_embeddings;
    let total = cache.len() + new_ids.len();
    if total >= ctx {
        bail!("the prompt has {total} tokens, longer than the model's context of {ctx} tokens");
    }
    let max_new = params.max_tokens.min(ctx - total);
    let mut sampler = Sampler::new(params);
    let mut stream = TextStream::new();
    let t0 = Instant::now();
    let input = Tensor::new(new_ids, &model.device)?.unsqueeze(0)?;
    let logits = model.forward_last(&input, None, Some(&mut *cache))?;
    let mut logits: Vec<f32> = logits.squeeze(0)?.to_vec1()?;
    let prefill_s = t0.elapsed().as_secs_f64();
    let mut out = Vec::new();
    let mut text = String::new();
    let mut stop = StopReason::MaxTokens;
    let t1 = Instant::now();
    let mut ttft = prefill_s;
    for i in 0..max_new {
        if cancel.load(Ordering::Relaxed) {
            stop = StopReason::Cancelled;
            break;
        }
        let next = sampler.sample(&logits);
        if i == 0 {
            ttft = t0.elapsed().as_secs_f64();
        }
        if tok.eos_ids.contains(&next) {
            stop = StopReason::Eos;
            break;
        }
        out.push(next);
        let piece = stream.push(tok, next)?;
        if !piece.is_empty() {
            on_text(&piece);
            text.push_str(&piece);
        }
        if i + 1 == max_new {
            break;
        }
        let input = Tensor::new(&[next], &model.device)?.unsqueeze(0)?;
        logits = model
            .forward_last(&input, None, Some(&mut *cache))?
            .squeeze(0)?
            .to_vec1()?;
    }
    let decode_s = t1.elapsed().as_secs_f64();
    // Text that was held back (a dangling partial character) is flushed at the end.
    let full = tok.decode(&out, true)?;
    if full.len() > text.len() && full.starts_with(&text) {
        on_text(&full[text.len()..]);
        text = full;
    }
    let n = out.len();
    Ok(Generation {
        text,
        prompt_tokens: new_ids.len(),
        generated_tokens: n,
        ttft_s: ttft,
        prefill_tok_s: new_ids.len() as f64 / prefill_s.max(1e-9),
        // the first token comes from the prefill's logits; decode steps are n - 1
        decode_tok_s: if n > 1 {
            (n - 1) as f64 / decode_s.max(1e-9)
        } else {
            0.0
        },
        token_ids: out,
        stop,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(&SamplingParams::default());
        assert_eq!(s.sample(&[0.1, 3.0, -1.0]), 1);
    }
    #[test]
    fn seeded_sampling_repeats_and_respects_top_k() {
        let p = SamplingParams {
            temperature: 1.0,
            top_k: Some(2),
            seed: 7,
            ..Default::default()
        };
        let logits = [1.0, 0.9, 0.8, 5.0, -2.0];
        let a: Vec<u32> = {
            let mut s = Sampler::new(&p);
            (0..50).map(|_| s.sample(&logits)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(&p);
            (0..50).map(|_| s.sample(&logits)).collect()
        };
        assert_eq!(a, b);
        assert!(a.iter().all(|&x| x == 3 || x == 0));
    }
    #[test]
    fn top_p_keeps_the_head() {
        let p = SamplingParams {
            temperature: 1.0,
            top_p: Some(0.5),
            seed: 1,
            ..Default::default()
        };
        let mut s = Sampler::new(&p);
        for _ in 0..20 {
            assert_eq!(s.sample(&[0.0, 10.0, 0.0]), 1);
        }
    }
}
