//! Dataset tools: statistics, stratified splits, undersampling, k-fold,
//! export to every format, and the sliding window over CSV dialogues.
//!
//! All are pure functions over `&[Sample]`; the random ones take a seed and
//! use [`Rng`] (SplitMix64). Randomised tools first sort each label stratum
//! by sample id, so their result depends on the set of samples and the seed,
//! not on the order of the file.

use anyhow::{bail, Result};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use crate::data::dataset::{
    answer_json, sample_from_turns, Dialogue, Format, Sample, SampleBody, Turn,
    DEFAULT_INSTRUCTION, DEFAULT_SYSTEM,
};
use crate::data::fsutil;

// ---------------------------------------------------------------- PRNG ----

/// SplitMix64: a small, fast, deterministic PRNG.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; 0 when `n == 0`), by rejection (no bias).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

// --------------------------------------------------------------- Stats ----

/// Summary of a list of lengths.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LengthStats {
    pub count: usize,
    pub min: usize,
    pub max: usize,
    pub mean: f64,
    pub median: f64,
}

/// Length statistics (all zero for no values); the median of an even count
/// is the mean of the two middle values.
pub fn length_stats(values: &[usize]) -> LengthStats {
    if values.is_empty() {
        return LengthStats::default();
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2] as f64
    } else {
        (v[n / 2 - 1] as f64 + v[n / 2] as f64) / 2.0
    };
    LengthStats {
        count: n,
        min: v[0],
        max: v[n - 1],
        mean: v.iter().map(|&x| x as f64).sum::<f64>() / n as f64,
        median,
    }
}

/// A histogram bin counting values in `lo..hi`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistBin {
    pub lo: usize,
    pub hi: usize,
    pub count: usize,
}

/// Smallest 1, 2 or 5 × 10^k that is ≥ `x` (≥ 1).
fn nice_width(x: usize) -> usize {
    let mut base = 1usize;
    loop {
        for m in [1, 2, 5] {
            let w = base.saturating_mul(m);
            if w >= x || w == usize::MAX {
                return w;
            }
        }
        base = base.saturating_mul(10);
    }
}

/// Histogram from 0 with equal "nice" bin widths (1, 2, 5 × 10^k) giving
/// about `target_bins` bins up to the maximum; empty for no values.
pub fn histogram(values: &[usize], target_bins: usize) -> Vec<HistBin> {
    let Some(&max) = values.iter().max() else {
        return Vec::new();
    };
    let target = target_bins.max(1);
    let width = nice_width((max + 1).div_ceil(target));
    let nbins = max / width + 1;
    let mut bins: Vec<HistBin> = (0..nbins)
        .map(|i| HistBin {
            lo: i * width,
            hi: (i + 1) * width,
            count: 0,
        })
        .collect();
    for &v in values {
        bins[v / width].count += 1;
    }
    bins
}

/// How often a speaker occurs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpeakerCount {
    pub name: String,
    /// Samples the speaker speaks in.
    pub samples: usize,
    /// Turns spoken.
    pub turns: usize,
    /// Samples where the speaker is (one of) the labelled fraud speaker(s).
    pub as_fraud: usize,
}

/// Dataset statistics.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    pub n: usize,
    pub fraud: usize,
    pub not_fraud: usize,
    pub unlabelled: usize,
    /// Over [`Sample::char_len`] (the dialogue text).
    pub chars: LengthStats,
    pub char_hist: Vec<HistBin>,
    /// Over the caller's token counter applied to [`Sample::prompt_text`].
    pub tokens: Option<LengthStats>,
    pub token_hist: Option<Vec<HistBin>>,
    /// Turns per sample.
    pub turns: LengthStats,
    pub distinct_speakers: usize,
    /// The `top_n` speakers by samples, then turns, then name.
    pub top_speakers: Vec<SpeakerCount>,
    /// Samples with a speaker whose name gives the label away (`诈骗者`, "fraudster"…), a
    /// shortcut no live transcript offers; train and evaluate with `--anonymize-speakers`.
    #[serde(default)]
    pub label_leaks: usize,
    /// Up to five of those speaker names.
    #[serde(default)]
    pub label_leak_names: Vec<String>,
}

/// The speaker names in a `fraud_speaker` value (split on `,`, `，`, `、`).
fn fraud_speaker_names(s: &str) -> Vec<&str> {
    s.split([',', '，', '、'])
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .collect()
}

/// Compute [`Stats`]; histograms have about 10 bins.
pub fn stats(samples: &[Sample], top_n: usize, token_len: Option<&dyn Fn(&str) -> usize>) -> Stats {
    let mut st = Stats {
        n: samples.len(),
        label_leaks: samples
            .iter()
            .filter(|s| !s.label_leaks().is_empty())
            .count(),
        label_leak_names: {
            let mut v: Vec<String> = Vec::new();
            for s in samples {
                for n in s.label_leaks() {
                    if v.len() < 5 && !v.contains(&n) {
                        v.push(n);
                    }
                }
            }
            v
        },
        ..Default::default()
    };
    let mut chars = Vec::with_capacity(samples.len());
    let mut turn_counts = Vec::with_capacity(samples.len());
    let mut tokens = Vec::new();
    let mut speakers: HashMap<String, SpeakerCount> = HashMap::new();
    for s in samples {
        match s.label {
            Some(true) => st.fraud += 1,
            Some(false) => st.not_fraud += 1,
            None => st.unlabelled += 1,
        }
        chars.push(s.char_len());
        if let Some(f) = token_len {
            tokens.push(f(&s.prompt_text()));
        }
        let turns = s.turns();
        turn_counts.push(turns.len());
        let mut in_sample: Vec<&str> = Vec::new();
        for (name, _) in &turns {
            if name.is_empty() {
                continue;
            }
            let e = speakers
                .entry(name.clone())
                .or_insert_with(|| SpeakerCount {
                    name: name.clone(),
                    samples: 0,
                    turns: 0,
                    as_fraud: 0,
                });
            e.turns += 1;
            if !in_sample.contains(&name.as_str()) {
                in_sample.push(name);
                e.samples += 1;
            }
        }
        if let (Some(true), Some(fs)) = (s.label, &s.fraud_speaker) {
            for name in fraud_speaker_names(fs) {
                if let Some(e) = speakers.get_mut(name) {
                    e.as_fraud += 1;
                }
            }
        }
    }
    st.chars = length_stats(&chars);
    st.char_hist = histogram(&chars, 10);
    if token_len.is_some() {
        st.tokens = Some(length_stats(&tokens));
        st.token_hist = Some(histogram(&tokens, 10));
    }
    st.turns = length_stats(&turn_counts);
    st.distinct_speakers = speakers.len();
    let mut sp: Vec<SpeakerCount> = speakers.into_values().collect();
    sp.sort_by(|a, b| {
        b.samples
            .cmp(&a.samples)
            .then(b.turns.cmp(&a.turns))
            .then(a.name.cmp(&b.name))
    });
    sp.truncate(top_n);
    st.top_speakers = sp;
    st
}

// -------------------------------------------------------------- Splits ----

/// Indices into the sample slice (each part ascending).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Split {
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub test: Vec<usize>,
}

/// One fold of a k-fold split (indices, ascending).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Fold {
    pub train: Vec<usize>,
    pub val: Vec<usize>,
}

/// Clone the samples at `idx`.
pub fn pick(samples: &[Sample], idx: &[usize]) -> Vec<Sample> {
    idx.iter()
        .filter_map(|&i| samples.get(i).cloned())
        .collect()
}

/// Label strata (fraud, not fraud, unlabelled), each sorted by id then
/// shuffled with a seed derived from `seed` and the stratum.
fn strata(samples: &[Sample], seed: u64) -> [Vec<usize>; 3] {
    let mut out: [Vec<usize>; 3] = Default::default();
    for (i, s) in samples.iter().enumerate() {
        let k = match s.label {
            Some(true) => 0,
            Some(false) => 1,
            None => 2,
        };
        out[k].push(i);
    }
    for (k, v) in out.iter_mut().enumerate() {
        v.sort_by(|&a, &b| samples[a].id.cmp(&samples[b].id).then(a.cmp(&b)));
        let mut rng = Rng::new(seed ^ (0x5851_f42d_4c95_7f2d_u64.wrapping_mul(k as u64 + 1)));
        rng.shuffle(v);
    }
    out
}

/// Split `n` into parts proportional to `weights` (largest remainder).
fn apportion(n: usize, weights: &[f64]) -> Vec<usize> {
    let total: f64 = weights.iter().sum();
    let exact: Vec<f64> = weights.iter().map(|w| n as f64 * w / total).collect();
    let mut counts: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let mut left = n - counts.iter().sum::<usize>().min(n);
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| {
        let fa = exact[a] - exact[a].floor();
        let fb = exact[b] - exact[b].floor();
        fb.partial_cmp(&fa)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    for &i in order.iter().cycle() {
        if left == 0 {
            break;
        }
        if weights[i] > 0.0 {
            counts[i] += 1;
            left -= 1;
        }
    }
    counts
}

fn check_fractions(f: &[f64]) -> Result<()> {
    if f.iter().any(|x| !x.is_finite() || *x < 0.0) || f.iter().sum::<f64>() <= 0.0 {
        bail!("split fractions must be finite, non-negative and not all zero, got {f:?}");
    }
    Ok(())
}

/// Stratified train/val/test split by label (fraud, not fraud, unlabelled
/// each split on its own). Fractions are normalised by their sum; counts per
/// stratum use largest-remainder rounding.
pub fn split(samples: &[Sample], train: f64, val: f64, test: f64, seed: u64) -> Result<Split> {
    check_fractions(&[train, val, test])?;
    let mut out = Split::default();
    for stratum in strata(samples, seed) {
        let c = apportion(stratum.len(), &[train, val, test]);
        out.train.extend_from_slice(&stratum[..c[0]]);
        out.val.extend_from_slice(&stratum[c[0]..c[0] + c[1]]);
        out.test.extend_from_slice(&stratum[c[0] + c[1]..]);
    }
    out.train.sort_unstable();
    out.val.sort_unstable();
    out.test.sort_unstable();
    Ok(out)
}

/// Undersample the majority label so it has at most `ratio` × the minority
/// count (`ratio` 1.0 = balanced). Unlabelled samples are kept; when one label
/// is absent nothing is dropped. Returns kept indices, ascending.
pub fn undersample(samples: &[Sample], ratio: f64, seed: u64) -> Result<Vec<usize>> {
    if !ratio.is_finite() || ratio < 0.0 {
        bail!("undersampling ratio must be a finite number ≥ 0, got {ratio}");
    }
    let [pos, neg, unl] = strata(samples, seed);
    let mut keep = unl;
    if pos.is_empty() || neg.is_empty() {
        keep.extend(pos);
        keep.extend(neg);
    } else {
        let (minority, mut majority) = if pos.len() <= neg.len() {
            (pos, neg)
        } else {
            (neg, pos)
        };
        let cap = ((minority.len() as f64 * ratio).ceil() as usize).min(majority.len());
        majority.truncate(cap);
        keep.extend(minority);
        keep.extend(majority);
    }
    keep.sort_unstable();
    Ok(keep)
}

/// Stratified k-fold: every sample is in exactly one fold's `val`, and in the
/// `train` of the other folds. Needs `2 <= k <= samples.len()`.
pub fn kfold(samples: &[Sample], k: usize, seed: u64) -> Result<Vec<Fold>> {
    if k < 2 || k > samples.len() {
        bail!(
            "k-fold needs 2 <= k <= {} (the number of samples), got k = {k}",
            samples.len()
        );
    }
    let mut fold_of = vec![0usize; samples.len()];
    let mut pos = 0usize;
    for stratum in strata(samples, seed) {
        for i in stratum {
            fold_of[i] = pos % k;
            pos += 1;
        }
    }
    let mut folds = vec![Fold::default(); k];
    for (i, &f) in fold_of.iter().enumerate() {
        for (j, fold) in folds.iter_mut().enumerate() {
            if j == f {
                fold.val.push(i);
            } else {
                fold.train.push(i);
            }
        }
    }
    Ok(folds)
}

// -------------------------------------------------------------- Window ----

fn turn_chars(t: &Turn) -> usize {
    t.speaker.chars().count() + 2 + t.content.chars().count()
}

/// Turn ranges of a sliding window over a dialogue. A window starts at a turn
/// and takes following turns while it has fewer than `max_turns` turns and its
/// text (`speaker: content` lines joined by `\n`) stays within `max_chars`;
/// it always holds at least one turn (a single longer turn is kept whole).
/// The next window starts `stride` turns later, but never after the end of
/// the previous window, so no turn is skipped; the last window reaches the
/// end of the dialogue. `0` for `max_turns` / `max_chars` means no limit;
/// `stride` 0 counts as 1.
pub fn window_ranges(
    turns: &[Turn],
    max_turns: usize,
    max_chars: usize,
    stride: usize,
) -> Vec<Range<usize>> {
    let n = turns.len();
    let max_turns = if max_turns == 0 {
        usize::MAX
    } else {
        max_turns
    };
    let max_chars = if max_chars == 0 {
        usize::MAX
    } else {
        max_chars
    };
    let stride = stride.max(1);
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let mut end = start;
        let mut chars = 0usize;
        while end < n && end - start < max_turns {
            let add = turn_chars(&turns[end]) + usize::from(end > start);
            if end > start && chars.saturating_add(add) > max_chars {
                break;
            }
            chars = chars.saturating_add(add);
            end += 1;
        }
        out.push(start..end);
        if end >= n {
            break;
        }
        start = (start + stride).min(end);
    }
    out
}

/// Cut a dialogue into fraud samples by [`window_ranges`]: each window has
/// [`DEFAULT_INSTRUCTION`], is fraud when any of its turns is a fraud turn, and
/// names the speaker(s) of its fraud turns.
pub fn window(turns: &[Turn], max_turns: usize, max_chars: usize, stride: usize) -> Vec<Sample> {
    window_ranges(turns, max_turns, max_chars, stride)
        .into_iter()
        .map(|r| sample_from_turns(&turns[r]))
        .collect()
}

/// [`window`] over many dialogues, in order.
pub fn window_dialogues(
    dialogues: &[Dialogue],
    max_turns: usize,
    max_chars: usize,
    stride: usize,
) -> Vec<Sample> {
    dialogues
        .iter()
        .flat_map(|d| window(&d.turns, max_turns, max_chars, stride))
        .collect()
}

// -------------------------------------------------------------- Export ----

/// Export settings.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// System prompt for chat/ShareGPT exports of fraud/Alpaca samples (empty: none).
    pub system: String,
    /// Put `fraud_speaker` and `reason` into generated answers.
    pub answer_fields: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            system: DEFAULT_SYSTEM.to_string(),
            answer_fields: false,
        }
    }
}

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExportReport {
    pub written: usize,
    /// Samples that cannot be expressed in the format (e.g. unlabelled
    /// samples for fraud/chat, text samples for fraud/Alpaca/chat).
    pub skipped: usize,
    pub summary: String,
}

/// (instruction, input) of a chat sample's last user message: split after a
/// leading [`DEFAULT_INSTRUCTION`], else empty instruction.
fn chat_prompt_parts(s: &Sample) -> (String, String) {
    let user = s.prompt_text();
    match user.strip_prefix(DEFAULT_INSTRUCTION) {
        Some(rest) => (DEFAULT_INSTRUCTION.to_string(), rest.to_string()),
        None => (String::new(), user),
    }
}

/// One exported JSON line (no newline) of `sample` in `format`, or `None`
/// when the sample cannot be expressed in it. Text export: fraud → `input`;
/// Alpaca → instruction+input, `\n`, output; chat → contents joined by `\n`.
pub fn export_line(sample: &Sample, format: Format, opts: &ExportOptions) -> Option<String> {
    let v: Value = match format {
        Format::Fraud => {
            // unlabelled samples keep `"label": null` (e.g. a set to hand-label)
            let label = sample.label;
            let (instruction, input) = match &sample.body {
                SampleBody::Fraud { instruction, input }
                | SampleBody::Alpaca {
                    instruction, input, ..
                } => (instruction.clone(), input.clone()),
                SampleBody::Chat { .. } => chat_prompt_parts(sample),
                SampleBody::Text { .. } => return None,
            };
            let mut o = json!({"instruction": instruction, "input": input, "label": label});
            if let Some(fs) = &sample.fraud_speaker {
                o["fraud_speaker"] = json!(fs);
            }
            if let Some(r) = &sample.reason {
                o["reason"] = json!(r);
            }
            o
        }
        Format::Alpaca => {
            let (instruction, input) = match &sample.body {
                SampleBody::Fraud { instruction, input }
                | SampleBody::Alpaca {
                    instruction, input, ..
                } => (instruction.clone(), input.clone()),
                SampleBody::Chat { .. } => chat_prompt_parts(sample),
                SampleBody::Text { .. } => return None,
            };
            let output = sample.expected_answer(opts.answer_fields)?;
            json!({"instruction": instruction, "input": input, "output": output})
        }
        Format::Chat | Format::ShareGpt => {
            if matches!(sample.body, SampleBody::Text { .. }) {
                return None;
            }
            let msgs = sample.to_chat_messages(&opts.system, true, opts.answer_fields);
            if !msgs.iter().any(|m| m.role == "assistant") {
                return None;
            }
            if format == Format::Chat {
                json!({"messages": msgs})
            } else {
                let conv: Vec<Value> = msgs
                    .iter()
                    .map(|m| {
                        let from = match m.role.as_str() {
                            "user" => "human",
                            "assistant" => "gpt",
                            other => other,
                        };
                        json!({"from": from, "value": m.content})
                    })
                    .collect();
                json!({"conversations": conv})
            }
        }
        Format::Text => {
            let text = match &sample.body {
                SampleBody::Fraud { input, .. } => input.clone(),
                SampleBody::Alpaca { output, .. } => {
                    format!("{}\n{}", sample.prompt_text(), output)
                }
                SampleBody::Chat { messages } => messages
                    .iter()
                    .map(|m| m.content.as_str())
                    .collect::<Vec<_>>()
                    .join("\n"),
                SampleBody::Text { text } => text.clone(),
            };
            json!({ "text": text })
        }
        Format::Csv => return None,
    };
    serde_json::to_string(&v).ok()
}

/// Write `samples` to `path` as JSONL in `format` (UTF-8, non-ASCII written
/// as is), atomically. CSV export is not supported.
pub fn export(
    samples: &[Sample],
    format: Format,
    path: &Path,
    opts: &ExportOptions,
) -> Result<ExportReport> {
    if format == Format::Csv {
        bail!(
            "cannot export {}: CSV export is not supported",
            path.display()
        );
    }
    let mut buf = String::new();
    let mut rep = ExportReport::default();
    for s in samples {
        match export_line(s, format, opts) {
            Some(line) => {
                buf.push_str(&line);
                buf.push('\n');
                rep.written += 1;
            }
            None => rep.skipped += 1,
        }
    }
    fsutil::write_atomic(path, buf.as_bytes())?;
    rep.summary = format!(
        "wrote {} samples to {} ({format})",
        rep.written,
        path.display()
    );
    if rep.skipped > 0 {
        rep.summary.push_str(&format!(
            ", skipped {} that {format} cannot hold",
            rep.skipped
        ));
    }
    Ok(rep)
}

/// Convenience: the answer JSON of a fraud label (see [`answer_json`]).
pub fn label_answer(
    label: bool,
    fraud_speaker: Option<&str>,
    reason: Option<&str>,
    fields: bool,
) -> String {
    answer_json(label, fraud_speaker, reason, fields)
}

#[cfg(test)]
mod tests;
