//! Live monitoring: conversations scored turn by turn.
//!
//! A conversation is a growing prompt: the chat template over the system prompt and the
//! instruction followed by the turns so far (one `speaker: utterance` line a turn), then the
//! assistant's answer pre-filled up to where `{"is_fraud": true}` and `{"is_fraud": false}`
//! part, exactly as score mode builds it ([`super::eval::score_prompt`]). After each turn:
//! - the prompt is re-tokenized only from the start of the line before the change (a line
//!   start is a token boundary for byte-level BPE pre-tokenizers: a newline never merges
//!   with the character after it), so the ids equal those of the whole prompt;
//! - the conversation's KV cache (a reserved, in-place cache: [`crate::model::KvCache`]) is
//!   cut back to the longest prefix it shares with the new ids (which drops the previous
//!   turn's throw-away answer prefix and any token the new turn changed) and extended with
//!   the rest only, so a turn costs its own tokens plus attention over the history;
//! - P(fraud) is read from the last position, as in score mode.
//!
//! Window policy (`window` tokens): when a prompt would pass the window, the oldest turns
//! leave the prompt until it fits in three quarters of the window (system prompt and
//! instruction always stay), and that prompt is prefilled once; the next turns extend it
//! again until the next slide. After a slide P(fraud) is score mode's on the windowed
//! prompt. A single turn longer than the window loses its middle, as score mode trims.
//!
//! Alerts latch: once `consecutive` turns in a row score at or above `threshold`, the
//! conversation is alerted from that turn on.

use anyhow::{bail, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use super::eval::trim_middle;
use super::generate::{generate_with_cache, SamplingParams};
use crate::data::{answer_json, parse_answer, Sample};
use crate::model::adapter::{AdapterMeta, StreamRule};
use crate::model::{ChatMessage, KvCache, LoadedModel, TextTokenizer};

/// How prompts are built and alerts decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorConfig {
    pub system: String,
    pub instruction: String,
    /// A turn at or above this P(fraud) counts towards an alert.
    pub threshold: f64,
    /// Turns in a row at or above the threshold that fire the alert (at least 1).
    pub consecutive: usize,
    /// Most tokens a conversation's prompt may hold (clamped below the model's context).
    pub window: usize,
    /// Conversations whose caches are kept; the least recently used beyond it is evicted
    /// (its turns are kept, and it is prefilled again if it returns).
    pub max_conversations: usize,
    /// Speakers renamed A, B… in the prompt (as the adapter was trained); results keep the
    /// real names.
    #[serde(default)]
    pub anonymize_speakers: bool,
}

/// The default window: long enough for the dialogues the datasets hold, small enough that
/// eight conversations' caches stay in a few hundred MB on a 0.5B model.
pub const DEFAULT_WINDOW: usize = 4096;

impl Default for MonitorConfig {
    fn default() -> Self {
        Self::from_meta(&AdapterMeta::default())
    }
}

/// Where a threshold came from, for messages ("threshold 0.62 from the adapter's stream
/// calibration").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdSource {
    Given,
    AdapterStream,
    AdapterDialogue,
    Default,
}

impl std::fmt::Display for ThresholdSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Given => "given",
            Self::AdapterStream => "the adapter's streaming threshold",
            Self::AdapterDialogue => "the adapter's whole-dialogue threshold",
            Self::Default => "the default",
        })
    }
}

impl MonitorConfig {
    /// Prompt and alert rule from an adapter's metadata: its streaming threshold, else its
    /// whole-dialogue threshold, else 0.5; its streaming K, else 1.
    pub fn from_meta(m: &AdapterMeta) -> Self {
        Self {
            system: m.system.clone(),
            instruction: m.instruction.clone(),
            threshold: Self::meta_threshold(m).0,
            consecutive: m.stream.map(|s| s.consecutive).unwrap_or(1),
            window: DEFAULT_WINDOW,
            max_conversations: 8,
            anonymize_speakers: m.anonymize_speakers,
        }
    }

    /// The threshold metadata gives, and which one it is.
    pub fn meta_threshold(m: &AdapterMeta) -> (f64, ThresholdSource) {
        match (m.stream, m.threshold) {
            (Some(StreamRule { threshold, .. }), _) => (threshold, ThresholdSource::AdapterStream),
            (None, Some(t)) => (t, ThresholdSource::AdapterDialogue),
            (None, None) => (0.5, ThresholdSource::Default),
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.threshold) {
            bail!("threshold {} is not a probability", self.threshold);
        }
        if self.consecutive == 0 {
            bail!("consecutive must be at least 1");
        }
        if self.window < 64 {
            bail!("window {} is too small (at least 64 tokens)", self.window);
        }
        if self.max_conversations == 0 {
            bail!("at least one conversation must be kept");
        }
        Ok(())
    }
}

/// What one turn did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnResult {
    pub conversation: String,
    /// 1-based.
    pub turn: usize,
    pub speaker: String,
    pub p_fraud: f64,
    /// True from the turn that fired the alert on.
    pub alert: bool,
    pub alert_turn: Option<usize>,
    pub latency_ms: f64,
    /// Tokens of the scored prompt.
    pub prompt_tokens: usize,
    /// Tokens run through the model for this turn (the rest came from the cache).
    pub computed_tokens: usize,
    /// First turn (1-based) still in the prompt: above 1 once the window has slid.
    pub window_start: usize,
    /// The window slid at this turn (the prompt was prefilled again).
    pub slid: bool,
    /// A conversation whose cache was evicted to make room for this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evicted: Option<String>,
}

/// Who the model says the fraudster is and why (asked once an alert fires).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    pub conversation: String,
    pub fraud_speaker: Option<String>,
    pub reason: Option<String>,
    /// The answer as generated (after the pre-filled part).
    pub raw: String,
}

/// Token ids of a text and their byte ranges.
#[derive(Debug, Clone, Default)]
struct Tokens {
    text: String,
    ids: Vec<u32>,
    offsets: Vec<(usize, usize)>,
}

/// Tokenizes `text`, reusing the tokens `prev` has for the lines the two texts share: only
/// the text from the start of the line before the first difference is tokenized again.
/// Equal to tokenizing `text` whole for tokenizers whose pre-tokenizer never joins a newline
/// to the character after it (Qwen2's, GPT-2's), which the tests check on real data.
fn encode_incremental(tok: &TextTokenizer, prev: Option<&Tokens>, text: &str) -> Result<Tokens> {
    if let Some(p) = prev {
        let mut l = p
            .text
            .bytes()
            .zip(text.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        while !text.is_char_boundary(l) {
            l -= 1;
        }
        let mut cut = l;
        while let Some(nl) = text[..cut].rfind('\n') {
            let ls = nl + 1;
            let next_ok = text[ls..]
                .chars()
                .next()
                .is_some_and(|c| !c.is_whitespace());
            if ls < l && next_ok {
                if let Ok(k) = p.offsets.binary_search_by_key(&ls, |o| o.0) {
                    // the first token starting there, and nothing before it reaching past
                    let k = (0..=k)
                        .rev()
                        .take_while(|&i| p.offsets[i].0 == ls)
                        .last()
                        .unwrap_or(k);
                    if k == 0 || p.offsets[k - 1].1 <= ls {
                        let (ids, offs) = tok.encode_with_offsets(&text[ls..])?;
                        let mut out = Tokens {
                            text: text.to_string(),
                            ids: p.ids[..k].to_vec(),
                            offsets: p.offsets[..k].to_vec(),
                        };
                        out.ids.extend(ids);
                        out.offsets
                            .extend(offs.into_iter().map(|(a, b)| (a + ls, b + ls)));
                        return Ok(out);
                    }
                }
            }
            if nl == 0 {
                break;
            }
            cut = nl;
        }
    }
    let (ids, offsets) = tok.encode_with_offsets(text)?;
    Ok(Tokens {
        text: text.to_string(),
        ids,
        offsets,
    })
}

/// The turns as the datasets' `input` field writes them.
pub fn dialogue_text(turns: &[(String, String)]) -> String {
    let mut s = String::new();
    for (i, (sp, u)) in turns.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        if sp.is_empty() {
            s.push_str(u);
        } else {
            s.push_str(sp);
            s.push_str(": ");
            s.push_str(u);
        }
    }
    s
}

/// The fraud sample score mode scores for these turns under `cfg`'s instruction.
pub fn turns_sample(cfg: &MonitorConfig, turns: &[(String, String)]) -> Sample {
    let s = Sample::fraud(
        cfg.instruction.clone(),
        dialogue_text(turns),
        None,
        None,
        None,
    );
    if cfg.anonymize_speakers {
        s.anonymized()
    } else {
        s
    }
}

/// The chat prompt (assistant turn opened) for these turns.
fn chat_prompt(
    tok: &TextTokenizer,
    cfg: &MonitorConfig,
    turns: &[(String, String)],
) -> Result<String> {
    let mut msgs = Vec::with_capacity(2);
    if !cfg.system.is_empty() {
        msgs.push(ChatMessage::new("system", cfg.system.as_str()));
    }
    let text = if cfg.anonymize_speakers {
        dialogue_text(&crate::data::anonymize_turns(turns))
    } else {
        dialogue_text(turns)
    };
    msgs.push(ChatMessage::new(
        "user",
        format!("{}{}", cfg.instruction, text),
    ));
    tok.apply_chat_template(&msgs, true)
}

/// The scoring ids of a prompt and the tokens that begin the true and false answers, from
/// the true answer's tokens (incremental) and the false answer's (incremental on those).
struct Scoring {
    ids: Vec<u32>,
    t: u32,
    f: u32,
    /// the true answer's full tokens, the base of the next turn's tokenization
    base: Tokens,
}

fn scoring_ids(tok: &TextTokenizer, prev: Option<&Tokens>, prompt: &str) -> Result<Scoring> {
    let t = encode_incremental(
        tok,
        prev,
        &format!("{prompt}{}", answer_json(true, None, None, false)),
    )?;
    let f = encode_incremental(
        tok,
        Some(&t),
        &format!("{prompt}{}", answer_json(false, None, None, false)),
    )?;
    let p = t.ids.iter().zip(&f.ids).take_while(|(a, b)| a == b).count();
    if p >= t.ids.len() || p >= f.ids.len() {
        bail!("the true and false answers tokenize alike");
    }
    Ok(Scoring {
        ids: t.ids[..p].to_vec(),
        t: t.ids[p],
        f: f.ids[p],
        base: t,
    })
}

/// The scoring prompt (ids, true token, false token) after each turn, tokenized the way the
/// monitor does (incrementally, turn by turn): for checking it against whole tokenization.
pub fn incremental_prompt_ids(
    tok: &TextTokenizer,
    cfg: &MonitorConfig,
    turns: &[(String, String)],
) -> Result<Vec<(Vec<u32>, u32, u32)>> {
    let mut base: Option<Tokens> = None;
    let mut out = Vec::with_capacity(turns.len());
    for n in 1..=turns.len() {
        let prompt = chat_prompt(tok, cfg, &turns[..n])?;
        let sc = scoring_ids(tok, base.as_ref(), &prompt)?;
        out.push((sc.ids, sc.t, sc.f));
        base = Some(sc.base);
    }
    Ok(out)
}

struct Conversation {
    turns: Vec<(String, String)>,
    /// index of the first turn in the prompt
    start: usize,
    cache: Option<KvCache>,
    /// the ids the cache holds
    cached: Vec<u32>,
    base: Option<Tokens>,
    above: usize,
    alert_turn: Option<usize>,
    risks: Vec<f64>,
    last_used: u64,
}

/// A conversation as the monitor holds it (for views and tests).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationState {
    pub turns: Vec<(String, String)>,
    pub risks: Vec<f64>,
    pub alert_turn: Option<usize>,
    pub window_start: usize,
    pub cached: bool,
    pub cache_bytes: usize,
}

/// Follows any number of conversations with one model.
pub struct Monitor {
    pub cfg: MonitorConfig,
    convs: HashMap<String, Conversation>,
    clock: u64,
}

impl Monitor {
    pub fn new(cfg: MonitorConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            convs: HashMap::new(),
            clock: 0,
        })
    }

    /// The conversation ids followed now.
    pub fn conversations(&self) -> Vec<String> {
        let mut v: Vec<String> = self.convs.keys().cloned().collect();
        v.sort();
        v
    }

    pub fn state(&self, id: &str) -> Option<ConversationState> {
        let c = self.convs.get(id)?;
        Some(ConversationState {
            turns: c.turns.clone(),
            risks: c.risks.clone(),
            alert_turn: c.alert_turn,
            window_start: c.start + 1,
            cached: c.cache.is_some(),
            cache_bytes: c.cache.as_ref().map(|c| c.bytes()).unwrap_or(0),
        })
    }

    /// Forgets a conversation; false when it was not followed.
    pub fn end(&mut self, id: &str) -> bool {
        self.convs.remove(id).is_some()
    }

    fn window(&self, lm: &LoadedModel) -> usize {
        self.cfg
            .window
            .min(lm.model.cfg.max_position_embeddings.saturating_sub(1))
    }

    /// Adds a turn to conversation `id` (started on its first turn) and scores it.
    pub fn turn(
        &mut self,
        lm: &LoadedModel,
        id: &str,
        speaker: &str,
        text: &str,
    ) -> Result<TurnResult> {
        let t0 = Instant::now();
        if text.trim().is_empty() && speaker.trim().is_empty() {
            bail!("an empty turn");
        }
        self.clock += 1;
        let clock = self.clock;
        let mut evicted = None;
        let cached_now = self.convs.values().filter(|c| c.cache.is_some()).count();
        let needs_cache = self.convs.get(id).is_none_or(|c| c.cache.is_none());
        if needs_cache && cached_now >= self.cfg.max_conversations {
            if let Some((victim, _)) = self
                .convs
                .iter()
                .filter(|(k, c)| c.cache.is_some() && k.as_str() != id)
                .min_by_key(|(_, c)| c.last_used)
            {
                let victim = victim.clone();
                let c = self.convs.get_mut(&victim).expect("victim");
                c.cache = None;
                c.cached.clear();
                c.base = None;
                evicted = Some(victim);
            }
        }
        let window = self.window(lm);
        // borrow the settings and the conversations apart: no copy of the settings per turn
        let cfg = &self.cfg;
        let conv = self
            .convs
            .entry(id.to_string())
            .or_insert_with(|| Conversation {
                turns: Vec::new(),
                start: 0,
                cache: None,
                cached: Vec::new(),
                base: None,
                above: 0,
                alert_turn: None,
                risks: Vec::new(),
                last_used: clock,
            });
        conv.last_used = clock;
        conv.turns
            .push((speaker.trim().to_string(), text.trim().to_string()));
        let r = score_turn(lm, cfg, window, conv);
        let (sc, slid) = match r {
            Ok(x) => x,
            Err(e) => {
                // the turn is not part of the conversation; the cache may be mid-update
                conv.turns.pop();
                conv.cache = None;
                conv.cached.clear();
                conv.base = None;
                return Err(e);
            }
        };
        let (p, computed) = sc;
        conv.risks.push(p);
        if p >= cfg.threshold {
            conv.above += 1;
        } else {
            conv.above = 0;
        }
        let turn = conv.turns.len();
        if conv.alert_turn.is_none() && conv.above >= cfg.consecutive {
            conv.alert_turn = Some(turn);
        }
        Ok(TurnResult {
            conversation: id.to_string(),
            turn,
            speaker: speaker.trim().to_string(),
            p_fraud: p,
            alert: conv.alert_turn.is_some(),
            alert_turn: conv.alert_turn,
            latency_ms: t0.elapsed().as_secs_f64() * 1e3,
            prompt_tokens: conv.cached.len(),
            computed_tokens: computed,
            window_start: conv.start + 1,
            slid,
            evicted,
        })
    }

    /// Asks the model who the fraudster is and why: the answer is pre-filled up to
    /// `"fraud_speaker": "` (and then up to `"reason": "`), since adapters trained on
    /// `is_fraud` alone do not write those fields unprompted; greedy, at most `max_tokens`
    /// tokens for each field.
    pub fn explain(
        &mut self,
        lm: &LoadedModel,
        id: &str,
        max_tokens: usize,
        cancel: &AtomicBool,
    ) -> Result<Explanation> {
        let cfg = self.cfg.clone();
        let window = self.window(lm);
        let Some(conv) = self.convs.get_mut(id) else {
            bail!("conversation `{id}` is not followed");
        };
        let prompt = chat_prompt(&lm.tokenizer, &cfg, &conv.turns[conv.start..])?;
        let params = SamplingParams {
            max_tokens,
            ..Default::default()
        };
        let ask = |prefill: &str, conv: &mut Conversation| -> Result<String> {
            let mut ids = lm.tokenizer.encode(&format!("{prompt}{prefill}"))?;
            trim_middle(&mut ids, window.saturating_sub(max_tokens).max(16));
            // continue from a copy of the conversation's cache where it agrees
            let (mut cache, lcp) = match &conv.cache {
                Some(c) => {
                    let lcp = conv
                        .cached
                        .iter()
                        .zip(&ids)
                        .take_while(|(a, b)| a == b)
                        .count()
                        .min(ids.len() - 1);
                    let mut c = c.clone();
                    c.truncate(lcp)?;
                    (c, lcp)
                }
                None => (lm.model.new_reserved_cache(), 0),
            };
            let g = generate_with_cache(lm, &mut cache, &ids[lcp..], &params, cancel, &mut |_| {})?;
            Ok(g.text)
        };
        let head = "{\"is_fraud\": true, \"fraud_speaker\": \"";
        let first = ask(head, conv)?;
        let mut answer = parse_answer(&format!("{head}{first}"));
        let mut raw = first.clone();
        let speaker = answer.as_ref().and_then(|a| a.fraud_speaker.clone());
        if answer.as_ref().is_none_or(|a| a.reason.is_none()) {
            let sp = serde_json::to_string(speaker.as_deref().unwrap_or("")).unwrap_or_default();
            let head2 = format!("{{\"is_fraud\": true, \"fraud_speaker\": {sp}, \"reason\": \"");
            let second = ask(&head2, conv)?;
            raw = format!("{first}\n{second}");
            answer = parse_answer(&format!("{head2}{second}"));
        }
        let a = answer.unwrap_or(crate::data::Answer {
            is_fraud: true,
            fraud_speaker: speaker.clone(),
            reason: None,
        });
        let clean = |s: Option<String>| s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        Ok(Explanation {
            conversation: id.to_string(),
            fraud_speaker: clean(a.fraud_speaker.or(speaker)),
            reason: clean(a.reason),
            raw,
        })
    }
}

/// Scores the conversation's turns in its window: (P(fraud), tokens computed), and whether
/// the window slid.
fn score_turn(
    lm: &LoadedModel,
    cfg: &MonitorConfig,
    window: usize,
    conv: &mut Conversation,
) -> Result<((f64, usize), bool)> {
    let tok = &lm.tokenizer;
    let prompt = chat_prompt(tok, cfg, &conv.turns[conv.start..])?;
    let mut sc = scoring_ids(tok, conv.base.as_ref(), &prompt)?;
    let mut slid = false;
    if sc.ids.len() > window {
        // slide: the most recent turns that fit in three quarters of the window
        slid = true;
        let n = conv.turns.len();
        let fits = |start: usize| -> Result<Option<Scoring>> {
            let p = chat_prompt(tok, cfg, &conv.turns[start..])?;
            let s = scoring_ids(tok, None, &p)?;
            Ok((s.ids.len() <= window * 3 / 4).then_some(s))
        };
        // the smallest start that fits (binary search: fewer turns never need more tokens)
        let (mut lo, mut hi) = (conv.start + 1, n - 1);
        let mut best = None;
        while lo <= hi {
            let mid = (lo + hi) / 2;
            match fits(mid)? {
                Some(s) => {
                    best = Some((mid, s));
                    hi = mid - 1;
                }
                None => lo = mid + 1,
            }
        }
        match best {
            Some((start, s)) => {
                conv.start = start;
                sc = s;
            }
            None => {
                // the last turn alone passes the window: its middle goes, as score mode trims
                conv.start = n - 1;
                let p = chat_prompt(tok, cfg, &conv.turns[conv.start..])?;
                sc = scoring_ids(tok, None, &p)?;
                trim_middle(&mut sc.ids, window);
            }
        }
    }
    let cache = conv
        .cache
        .get_or_insert_with(|| lm.model.new_reserved_cache());
    let lcp = conv
        .cached
        .iter()
        .zip(&sc.ids)
        .take_while(|(a, b)| a == b)
        .count()
        .min(sc.ids.len() - 1);
    cache.truncate(lcp)?;
    let new = &sc.ids[lcp..];
    let input = Tensor::new(new, &lm.model.device)?.unsqueeze(0)?;
    let logits = lm.model.forward_last(&input, None, Some(cache))?;
    let l: Vec<f32> = logits.squeeze(0)?.to_vec1()?;
    let d = (l[sc.t as usize] - l[sc.f as usize]) as f64;
    let p = 1.0 / (1.0 + (-d).exp());
    let computed = new.len();
    conv.cached = sc.ids;
    // the untrimmed text's tokens: the base of the next turn's tokenization
    conv.base = Some(sc.base);
    Ok(((p, computed), slid))
}
