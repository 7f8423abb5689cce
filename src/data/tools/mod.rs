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
mod tests {
    use super::*;
    use crate::data::dataset::{load, Message};

    fn samples(n_pos: usize, n_neg: usize, n_unl: usize) -> Vec<Sample> {
        let mut v = Vec::new();
        for i in 0..n_pos {
            v.push(Sample::fraud(
                "i",
                format!("甲: p{i}"),
                Some(true),
                Some("甲".into()),
                None,
            ));
        }
        for i in 0..n_neg {
            v.push(Sample::fraud(
                "i",
                format!("乙: n{i}\n丙: ok"),
                Some(false),
                None,
                None,
            ));
        }
        for i in 0..n_unl {
            v.push(Sample::text(format!("u{i}")));
        }
        v
    }

    #[test]
    fn rng_is_deterministic_and_in_range() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
            assert!(a.below(10) < 10);
            b.below(10);
            let f = a.next_f64();
            b.next_f64();
            assert!((0.0..1.0).contains(&f));
        }
        let mut v: Vec<u32> = (0..50).collect();
        Rng::new(1).shuffle(&mut v);
        let mut s = v.clone();
        s.sort();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
        assert_ne!(v, s);
    }

    #[test]
    fn stats_counts_lengths_and_speakers() {
        let mut v = samples(2, 3, 1);
        v.push(Sample::fraud("i", "", None, None, None));
        let count_chars = |s: &str| s.chars().count();
        let st = stats(&v, 2, Some(&count_chars));
        assert_eq!((st.n, st.fraud, st.not_fraud, st.unlabelled), (7, 2, 3, 2));
        // char lens: "甲: p0"=5 ×2, "乙: n0\n丙: ok"=11 ×3, "u0"=2, ""=0
        assert_eq!(st.chars.min, 0);
        assert_eq!(st.chars.max, 11);
        assert_eq!(st.chars.median, 5.0);
        assert!((st.chars.mean - (10.0 + 33.0 + 2.0) / 7.0).abs() < 1e-12);
        assert_eq!(st.char_hist.iter().map(|b| b.count).sum::<usize>(), 7);
        assert_eq!(st.char_hist[0].lo, 0);
        assert_eq!(st.tokens.as_ref().unwrap().max, 12); // "i" + 11
        assert_eq!(st.distinct_speakers, 3);
        assert_eq!(st.top_speakers.len(), 2);
        assert_eq!(st.top_speakers[0].name, "丙");
        assert_eq!(st.top_speakers[0].samples, 3);
        let jia = stats(&v, 10, None)
            .top_speakers
            .into_iter()
            .find(|s| s.name == "甲")
            .unwrap();
        assert_eq!((jia.samples, jia.turns, jia.as_fraud), (2, 2, 2));
        assert!(stats(&[], 5, None).char_hist.is_empty());
    }

    #[test]
    fn histogram_bins() {
        let h = histogram(&[0, 5, 10, 99, 100], 10);
        assert_eq!(
            h[0],
            HistBin {
                lo: 0,
                hi: 20,
                count: 3
            }
        );
        assert_eq!(h.len(), 6);
        assert_eq!(h.last().unwrap().count, 1);
        assert_eq!(
            histogram(&[0, 0], 10),
            vec![HistBin {
                lo: 0,
                hi: 1,
                count: 2
            }]
        );
        assert_eq!(length_stats(&[4, 1, 3, 2]).median, 2.5);
    }

    #[test]
    fn split_is_stratified_and_deterministic() {
        let v = samples(20, 80, 10);
        let s = split(&v, 0.8, 0.1, 0.1, 42).unwrap();
        assert_eq!((s.train.len(), s.val.len(), s.test.len()), (88, 11, 11));
        let pos = |idx: &[usize]| idx.iter().filter(|&&i| v[i].label == Some(true)).count();
        assert_eq!((pos(&s.train), pos(&s.val), pos(&s.test)), (16, 2, 2));
        let mut all: Vec<usize> = s
            .train
            .iter()
            .chain(&s.val)
            .chain(&s.test)
            .copied()
            .collect();
        all.sort();
        assert_eq!(all, (0..110).collect::<Vec<_>>());
        assert_eq!(split(&v, 0.8, 0.1, 0.1, 42).unwrap(), s);
        assert_ne!(split(&v, 0.8, 0.1, 0.1, 43).unwrap(), s);
        // re-ordering the samples keeps the same split (by id)
        let mut rev = v.clone();
        rev.reverse();
        let s2 = split(&rev, 0.8, 0.1, 0.1, 42).unwrap();
        let ids = |idx: &[usize], vv: &[Sample]| {
            let mut x: Vec<String> = idx.iter().map(|&i| vv[i].id.clone()).collect();
            x.sort();
            x
        };
        assert_eq!(ids(&s2.test, &rev), ids(&s.test, &v));
        assert!(split(&v, -1.0, 0.0, 0.0, 1).is_err());
        assert!(split(&v, 0.0, 0.0, 0.0, 1).is_err());
    }

    #[test]
    fn undersampling() {
        let v = samples(10, 40, 3);
        let keep = undersample(&v, 1.0, 3).unwrap();
        let count = |l| keep.iter().filter(|&&i| v[i].label == l).count();
        assert_eq!(
            (count(Some(true)), count(Some(false)), count(None)),
            (10, 10, 3)
        );
        let keep2 = undersample(&v, 2.0, 3).unwrap();
        assert_eq!(keep2.len(), 10 + 20 + 3);
        assert_eq!(undersample(&v, 1.0, 3).unwrap(), keep);
        assert_eq!(undersample(&samples(0, 5, 0), 1.0, 3).unwrap().len(), 5);
    }

    #[test]
    fn kfold_covers_every_sample_once() {
        let v = samples(7, 23, 2);
        let folds = kfold(&v, 5, 9).unwrap();
        assert_eq!(folds.len(), 5);
        let mut seen = vec![0; v.len()];
        for f in &folds {
            assert_eq!(f.train.len() + f.val.len(), v.len());
            for &i in &f.val {
                seen[i] += 1;
                assert!(!f.train.contains(&i));
            }
            let p = f.val.iter().filter(|&&i| v[i].label == Some(true)).count();
            assert!((1..=2).contains(&p), "stratified: {p}");
            assert!((6..=7).contains(&f.val.len()));
        }
        assert!(seen.iter().all(|&c| c == 1));
        assert!(kfold(&v, 1, 0).is_err());
        assert!(kfold(&v[..3], 4, 0).is_err());
    }

    fn turn(s: &str, c: &str, f: bool) -> Turn {
        Turn {
            speaker: s.into(),
            content: c.into(),
            is_fraud: f,
        }
    }

    #[test]
    fn window_bounds() {
        // each turn "A: xxxx" is 7 chars
        let t: Vec<Turn> = (0..6)
            .map(|i| turn(if i % 2 == 0 { "A" } else { "B" }, "xxxx", i == 3))
            .collect();
        assert_eq!(window_ranges(&t, 3, 0, 2), vec![0..3, 2..5, 4..6]);
        assert_eq!(window_ranges(&t, 3, 0, 3), vec![0..3, 3..6]);
        assert_eq!(window_ranges(&t, 2, 0, 5), vec![0..2, 2..4, 4..6]);
        // two turns = 7 + 1 + 7 = 15 chars
        assert_eq!(window_ranges(&t, 0, 15, 1).len(), 5);
        assert_eq!(
            window_ranges(&t, 0, 14, 1),
            (0..6).map(|i| i..i + 1).collect::<Vec<_>>()
        );
        assert_eq!(window_ranges(&t, 0, 0, 1), vec![0..6]);
        assert_eq!(window_ranges(&t, 100, 3, 0).len(), 6); // longer turn kept whole
        assert!(window_ranges(&[], 3, 10, 1).is_empty());
        let w = window(&t, 3, 0, 2);
        assert_eq!(w.len(), 3);
        assert_eq!(
            w.iter().map(|s| s.label).collect::<Vec<_>>(),
            vec![Some(false), Some(true), Some(false)]
        );
        assert_eq!(w[1].fraud_speaker.as_deref(), Some("B"));
        assert_eq!(w[0].fraud_speaker, None);
        for (s, r) in w.iter().zip(window_ranges(&t, 3, 0, 2)) {
            assert_eq!(s.turns().len(), r.len());
        }
        let d = Dialogue {
            case: "c".into(),
            turns: t,
        };
        assert_eq!(window_dialogues(&[d.clone(), d], 3, 0, 2).len(), 6);
    }

    #[test]
    fn export_every_format_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let mut v = samples(2, 2, 1);
        v[0].reason = Some("理由".into());
        v.push(Sample::chat(vec![
            Message::new("user", "q"),
            Message::new("assistant", "{\"is_fraud\": false}"),
        ]));
        let opts = ExportOptions::default();
        for (fmt, written) in [
            (Format::Fraud, 5),
            (Format::Alpaca, 5),
            (Format::Chat, 5),
            (Format::ShareGpt, 5),
            (Format::Text, 6),
        ] {
            let p = dir.path().join(format!("out.{fmt}.jsonl"));
            let rep = export(&v, fmt, &p, &opts).unwrap();
            assert_eq!(rep.written, written, "{fmt}");
            assert_eq!(rep.written + rep.skipped, v.len());
            let r = load(&p).unwrap();
            assert_eq!(r.format, fmt);
            assert!(r.bad_lines.is_empty());
            assert_eq!(r.samples.len(), written);
            if fmt == Format::Fraud || fmt == Format::Alpaca {
                assert_eq!(r.samples[0].id, v[0].id, "{fmt}");
                assert_eq!(r.samples[0].label, Some(true));
            }
            if fmt == Format::Fraud {
                assert_eq!(r.samples[0].reason.as_deref(), Some("理由"));
                let text = std::fs::read_to_string(&p).unwrap();
                assert!(text.contains("甲"), "non-ASCII written as is");
            }
            if fmt == Format::Chat || fmt == Format::ShareGpt {
                let m = &r.samples[0].to_chat_messages("", true, false);
                assert_eq!(m[0].content, DEFAULT_SYSTEM);
                assert_eq!(m[2].content, "{\"is_fraud\": true}");
            }
        }
        assert!(export(&v, Format::Csv, &dir.path().join("x.csv"), &opts).is_err());
        assert_eq!(
            label_answer(true, None, None, false),
            "{\"is_fraud\": true}"
        );
    }
}
