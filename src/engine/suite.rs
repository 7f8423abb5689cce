//! The capability suite on a loaded model: each case goes through the same generate path
//! as a probe (chat template, greedy decoding) and its answer is graded by `data::suite`.

use anyhow::Result;
use std::sync::atomic::AtomicBool;

use super::generate::{build_prompt, generate, Generation, SamplingParams};
use crate::data::suite::{Case, CaseResult};
use crate::model::LoadedModel;

/// A case's answer from a model, greedy, at most the case's `max_tokens` (else
/// `default_max_tokens`).
pub fn answer(
    lm: &LoadedModel,
    case: &Case,
    default_max_tokens: usize,
    cancel: &AtomicBool,
) -> Result<Generation> {
    let system = case.system_prompt();
    let prompt = build_prompt(&lm.tokenizer, system.as_deref(), &case.user_prompt(), false)?;
    let ids = lm.tokenizer.encode(&prompt)?;
    let params = SamplingParams {
        max_tokens: case.max_tokens_or(default_max_tokens),
        ..SamplingParams::default()
    };
    generate(lm, &ids, &params, cancel, &mut |_| {})
}

/// Runs one case on a model and grades the answer; a model that cannot answer fails the
/// case with the reason.
pub fn run_case(
    lm: &LoadedModel,
    label: &str,
    case: &Case,
    default_max_tokens: usize,
    cancel: &AtomicBool,
) -> CaseResult {
    match answer(lm, case, default_max_tokens, cancel) {
        Ok(g) => CaseResult::graded(case, label, &g.text, g.decode_tok_s, g.generated_tokens),
        Err(e) => CaseResult::failed(case, label, &format!("{e:#}")),
    }
}
