//! Training examples (tokenized samples with their targets), epoch order, and batches
//! packed into one row with their shared prompt prefix; losses.

#[allow(unused_imports)]
use super::*;

/// One tokenized training example: ids and the targets (`None` = no loss) at each position.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub labels: Vec<Option<u32>>,
    /// For a labelled fraud sample: where its answer says true or false, so a validation
    /// pass reads P(fraud) there as score mode does.
    pub verdict: Option<Verdict>,
}

/// The verdict token of a fraud sample's answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// index in `ids` of the token that says true or false
    pub pos: usize,
    /// the tokens of the true and the false answer there
    pub t: u32,
    pub f: u32,
    pub label: bool,
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
    let mut verdict = None;
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
            if let (SampleBody::Fraud { .. }, Some(label)) = (&s.body, s.label) {
                // the same conversation with the other answer parts from this one at the
                // verdict token
                let mut other = s.clone();
                other.label = Some(!label);
                let alt = tok.encode(&tok.apply_chat_template(
                    &other.to_chat_messages(DEFAULT_SYSTEM, true, answer_fields),
                    false,
                )?)?;
                let pos = ids.iter().zip(&alt).take_while(|(a, b)| a == b).count();
                if pos < ids.len() && pos < alt.len() && labels[pos].is_some() {
                    let (t, f) = if label {
                        (ids[pos], alt[pos])
                    } else {
                        (alt[pos], ids[pos])
                    };
                    verdict = Some(Verdict { pos, t, f, label });
                }
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
            let cut = crate::engine::eval::middle_cut(first_target, max_len - answer_len);
            if let Some(v) = verdict.as_mut() {
                v.pos -= cut.len(); // the cut lies in the prompt, before the answer
            }
            ids.drain(cut.clone());
            labels.drain(cut);
        }
    }
    if labels.iter().all(|l| l.is_none()) {
        return Ok(None);
    }
    let verdict = verdict.filter(|v| v.pos < ids.len());
    Ok(Some(Example {
        ids,
        labels,
        verdict,
    }))
}

/// Deterministic order of `n` items for an epoch (Fisher-Yates with SplitMix64).
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng = data::Rng::new(seed ^ (epoch as u64).wrapping_mul(0xA24BAED4963EE407));
    let mut v: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut v);
    v
}

/// A batch packed into one row: the prompt prefix all its examples share (once), then the
/// rest of each example back to back (no padding; each sees the prefix and itself), the
/// lengths of those rests, and the flat positions whose next token is a target, with those
/// targets.
pub(super) struct Batch {
    pub(super) ids: Vec<u32>,
    pub(super) shared: usize,
    pub(super) lens: Vec<usize>,
    pub(super) positions: Vec<u32>,
    pub(super) targets: Vec<u32>,
    /// tokens of the examples (the shared prefix counted for each)
    pub(super) tokens: usize,
    /// per example: the index in `targets` of its verdict token, with the true and false
    /// tokens (fraud samples)
    pub(super) verdicts: Vec<Option<(usize, u32, u32)>>,
}

/// How many leading tokens every example of a batch can share: their common prefix, leaving
/// each at least one token and no target inside it (a target there would be counted once
/// instead of once per example; the prefix's last position may predict, as each example
/// reads its own target from it).
pub(super) fn shared_prefix(examples: &[&Example]) -> usize {
    if examples.len() < 2 {
        return 0;
    }
    let ids: Vec<&[u32]> = examples.iter().map(|e| e.ids.as_slice()).collect();
    let mut n = crate::engine::eval::common_prefix(&ids);
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

pub(super) fn make_batch(examples: &[&Example]) -> Result<Batch> {
    let shared = shared_prefix(examples);
    let mut ids = examples
        .first()
        .map(|e| e.ids[..shared].to_vec())
        .unwrap_or_default();
    let mut lens = Vec::with_capacity(examples.len());
    let mut positions = Vec::new();
    let mut targets = Vec::new();
    let mut tokens = 0;
    let mut verdicts = Vec::with_capacity(examples.len());
    for e in examples {
        let o = ids.len();
        ids.extend_from_slice(&e.ids[shared..]);
        lens.push(e.ids.len() - shared);
        tokens += e.ids.len();
        let mut verdict = None;
        // position t predicts token t+1; positions in the prefix are its shared rows
        for t in 0..e.ids.len().saturating_sub(1) {
            if let Some(y) = e.labels[t + 1] {
                let row = if t < shared { t } else { o + t - shared };
                if let Some(v) = e.verdict.filter(|v| v.pos == t + 1) {
                    verdict = Some((targets.len(), v.t, v.f));
                }
                positions.push(row as u32);
                targets.push(y);
            }
        }
        verdicts.push(verdict);
    }
    Ok(Batch {
        ids,
        shared,
        lens,
        positions,
        targets,
        tokens,
        verdicts,
    })
}

/// Summed negative log-likelihood of a batch's targets (logits computed only where needed).
pub(super) fn batch_nll(model: &Qwen2, batch: &Batch, mode: Mode) -> Result<Tensor> {
    batch_nll_at(model, batch, None, mode)
}

/// A validation forward of a batch (from a frozen-prefix cache's hidden states when given):
/// its summed negative log-likelihood and, per example with a verdict, P(fraud) read where
/// score mode reads it (the true against the false token).
pub(super) fn batch_eval(
    model: &Qwen2,
    batch: &Batch,
    start: Option<&(Tensor, usize)>,
) -> Result<(f64, Vec<Option<f64>>)> {
    let logits = batch_logits(model, batch, start, Mode::Infer)?;
    let nll = scalar(&nll_of(&logits, batch)?)?;
    let rows: Vec<usize> = batch.verdicts.iter().flatten().map(|v| v.0).collect();
    let mut probs = vec![None; batch.verdicts.len()];
    if !rows.is_empty() {
        let idx = Tensor::new(
            rows.iter()
                .map(|&r| r as u32)
                .collect::<Vec<u32>>()
                .as_slice(),
            logits.device(),
        )?;
        let sel: Vec<Vec<f64>> = logits
            .index_select(&idx, 0)?
            .to_dtype(DType::F64)?
            .to_vec2()?;
        let mut k = 0;
        for (p, v) in probs.iter_mut().zip(&batch.verdicts) {
            if let Some((_, t, f)) = v {
                let d = sel[k][*t as usize] - sel[k][*f as usize];
                *p = Some(1.0 / (1.0 + (-d).exp()));
                k += 1;
            }
        }
    }
    Ok((nll, probs))
}

/// Logits at a batch's target positions (n, vocab).
fn batch_logits(
    model: &Qwen2,
    batch: &Batch,
    start: Option<&(Tensor, usize)>,
    mode: Mode,
) -> Result<Tensor> {
    let hidden = match start {
        Some((x, layer)) => {
            model.forward_packed_shared_from(x, *layer, batch.shared, &batch.lens, mode)?
        }
        None => model.forward_packed_shared(&batch.ids, batch.shared, &batch.lens, mode)?,
    };
    let (b, s, h) = hidden.dims3()?;
    let dev = hidden.device();
    let pos = Tensor::new(batch.positions.as_slice(), dev)?;
    let sel = hidden.reshape((b * s, h))?.index_select(&pos, 0)?;
    model.logits(&sel, mode) // (n, vocab) f32
}

fn nll_of(logits: &Tensor, batch: &Batch) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let tg = Tensor::new(batch.targets.as_slice(), logits.device())?.unsqueeze(1)?;
    Ok(logp.gather(&tg, 1)?.sum_all()?.neg()?)
}

/// [`batch_nll`] from the batch's hidden states entering a layer when given (a frozen-prefix
/// cache's), else from its ids.
pub(super) fn batch_nll_at(
    model: &Qwen2,
    batch: &Batch,
    start: Option<&(Tensor, usize)>,
    mode: Mode,
) -> Result<Tensor> {
    nll_of(&batch_logits(model, batch, start, mode)?, batch)
}

pub(super) fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// Mean loss over the targets of examples, as one tensor (for gradient checks and tools).
pub fn mean_loss(model: &Qwen2, examples: &[Example], mode: Mode) -> Result<Tensor> {
    let refs: Vec<&Example> = examples.iter().collect();
    let b = make_batch(&refs)?;
    let n = b.targets.len().max(1);
    Ok((batch_nll(model, &b, mode)? / n as f64)?)
}

/// [`mean_loss`] starting from a frozen-prefix cache's hidden states (the examples are
/// the cache's training examples 0..n), for checks and tools.
pub fn mean_loss_cached(
    model: &Qwen2,
    examples: &[Example],
    cache: &mut super::FrozenCache,
    mode: Mode,
) -> Result<Tensor> {
    let refs: Vec<&Example> = examples.iter().collect();
    let b = make_batch(&refs)?;
    let members: Vec<(usize, &[u32])> = examples
        .iter()
        .enumerate()
        .map(|(i, e)| (i, e.ids.as_slice()))
        .collect();
    let x = cache.batch_input(model, super::Set::Train, &members, b.shared)?;
    let n = b.targets.len().max(1);
    Ok((batch_nll_at(model, &b, Some(&(x, cache.layer())), mode)? / n as f64)?)
}

/// P(fraud) of each example with a verdict, as a validation pass reads it (batches of
/// `batch` packed examples).
pub fn val_probabilities(
    model: &Qwen2,
    examples: &[Example],
    batch: usize,
) -> Result<Vec<Option<f64>>> {
    let mut out = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(batch.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        out.extend(batch_eval(model, &make_batch(&refs)?, None)?.1);
    }
    Ok(out)
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
