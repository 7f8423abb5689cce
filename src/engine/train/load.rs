//! Loading the training and validation examples a config asks for.

#[allow(unused_imports)]
use super::*;

/// Loads training (and validation) examples as the config says.
pub fn load_examples(
    tc: &TrainConfig,
    tok: &TextTokenizer,
) -> Result<(Vec<Example>, Vec<Example>, String)> {
    let (train_s, val_s, summary) = load_split(tc)?;
    let (train, val) = examples_of(tc, tok, &train_s, &val_s)?;
    Ok((train, val, summary))
}

/// The training and validation samples as the config says (a validation file, a stratified
/// split of the data, or none).
pub fn load_split(tc: &TrainConfig) -> Result<(Vec<Sample>, Vec<Sample>, String)> {
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
    Ok((train_s, val_s, summary))
}

/// The training and validation examples of samples.
pub(super) fn examples_of(
    tc: &TrainConfig,
    tok: &TextTokenizer,
    train_s: &[Sample],
    val_s: &[Sample],
) -> Result<(Vec<Example>, Vec<Example>)> {
    let conv = |v: &[Sample]| -> Result<Vec<Example>> {
        let mut out = Vec::new();
        for s in v {
            let anon;
            let s = if tc.anonymize_speakers {
                anon = s.anonymized();
                &anon
            } else {
                s
            };
            if let Some(e) = make_example(tok, s, tc.max_len, tc.answer_fields)? {
                out.push(e);
            }
        }
        Ok(out)
    };
    let train = conv(train_s)?;
    let val = conv(val_s)?;
    if train.is_empty() {
        bail!(
            "{}: no trainable samples (fraud samples need a label; chat samples an assistant turn)",
            tc.data.display()
        );
    }
    Ok((train, val))
}
