//! Moving a run to a bigger machine and back: [`write_llamafactory`] writes a folder that
//! LLaMA-Factory trains from (the dataset in its ShareGPT format with the prompts fraudlab
//! trains on, `dataset_info.json`, a training YAML equivalent to the run's settings, and a
//! README with the commands and every setting the trainer cannot express), and
//! [`import::import_run`] brings the adapter it produces back into a session as a run.
//!
//! This room owns the translation between a [`TrainConfig`] and LLaMA-Factory's files; it
//! reads datasets through `data` and never runs a model.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

use crate::data::{self, Message, Sample, SampleBody, DEFAULT_SYSTEM};
use crate::engine::train::TrainConfig;

pub mod import;
mod readme;
mod yaml;

pub use import::{import_run, ImportOptions, ImportReport};

/// The file in a hand-off folder that records the fraudlab settings it was written from
/// (`runs import` reads it back).
pub const HANDOFF_FILE: &str = "fraudlab-handoff.json";
/// The training YAML's file name.
pub const YAML_FILE: &str = "train.yaml";
/// Dataset names in `dataset_info.json`.
pub const TRAIN_DATASET: &str = "fraudlab_train";
pub const VAL_DATASET: &str = "fraudlab_val";
/// The trainer's output folder, relative to the hand-off folder (the YAML's `output_dir`).
pub const OUTPUT_DIR: &str = "output";

/// What `fraudlab-handoff.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandoffRecord {
    pub trainer: String,
    pub written: String,
    /// The fraudlab settings the folder was written from.
    pub config: TrainConfig,
    /// The model as the YAML names it.
    pub model_name_or_path: String,
    pub train_samples: usize,
    pub val_samples: usize,
}

/// One fraudlab setting the trainer cannot express as it is, and what the hand-off did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Gap {
    pub setting: String,
    pub note: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct HandoffReport {
    pub out: PathBuf,
    pub files: Vec<String>,
    pub train_samples: usize,
    pub val_samples: usize,
    /// Samples with nothing to learn (no label, no assistant turn), left out as training
    /// leaves them out.
    pub unlabelled: usize,
    /// Samples longer than `max_len` tokens (counted with the model's tokenizer when it
    /// can be read here).
    pub over_max_len: Option<usize>,
    pub model_name_or_path: String,
    pub gaps: Vec<Gap>,
}

/// How the hand-off is written.
#[derive(Debug, Clone, Default)]
pub struct HandoffOptions {
    /// Replace the files of an existing hand-off folder.
    pub force: bool,
    /// Count over-long samples with the model's tokenizer (reads the tokenizer here).
    pub count_tokens: bool,
    /// Optimizer steps a time-budgeted run planned (from its summary), used as `max_steps`.
    pub planned_steps: Option<usize>,
}

/// The model as the trainer on another machine should name it: a hub id for a model in a
/// hub cache (or given as one), else the path as given.
pub fn portable_model_name(spec: &str) -> Result<String> {
    let p = Path::new(spec);
    if p.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        bail!(
            "{spec}: LLaMA-Factory trains Hugging Face folders, not GGUF files; write one with `fraudlab convert --gguf {spec} --out DIR` and hand off with --model DIR"
        );
    }
    if !p.exists() {
        // a hub id (Org/Name), looked up in the caches here and fetched by the trainer there
        return Ok(spec.to_string());
    }
    if let Ok(loc) = crate::model::loader::resolve(spec) {
        if let crate::model::ModelLocation::Gguf(f) = &loc {
            bail!(
                "{}: LLaMA-Factory trains Hugging Face folders, not GGUF files; write one with `fraudlab convert`",
                f.display()
            );
        }
        let name = crate::model::loader::display_name(&loc);
        let in_cache = loc
            .path()
            .ancestors()
            .any(|a| a.file_name().is_some_and(|n| n == "snapshots"));
        if in_cache && name.contains('/') {
            return Ok(name);
        }
    }
    Ok(std::fs::canonicalize(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string())
}

/// The ShareGPT record of one sample: the messages fraudlab trains on (system prompt,
/// user = instruction + dialogue, assistant = the answer JSON), or `None` when the sample has
/// nothing to learn.
pub fn sharegpt_record(s: &Sample, tc: &TrainConfig) -> Result<Option<Value>> {
    if let SampleBody::Text { .. } = s.body {
        bail!(
            "sample {}: raw text (loss on every token) is LLaMA-Factory's `pt` stage, not the supervised run this hand-off writes; hand off the supervised samples alone",
            s.id
        );
    }
    let anon;
    let s = if tc.anonymize_speakers {
        anon = s.anonymized();
        &anon
    } else {
        s
    };
    let msgs: Vec<Message> = s.to_chat_messages(DEFAULT_SYSTEM, true, tc.answer_fields);
    if !msgs.iter().any(|m| m.role == "assistant") {
        return Ok(None);
    }
    let mut system = None;
    let mut conv = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        let from = match m.role.as_str() {
            "system" if i == 0 => {
                system = Some(m.content.clone());
                continue;
            }
            "user" => "human",
            "assistant" => "gpt",
            r => bail!(
                "sample {}: a `{r}` message at position {i}: LLaMA-Factory's ShareGPT format takes one leading system message, then user and assistant turns",
                s.id
            ),
        };
        let want = if conv.len() % 2 == 0 { "human" } else { "gpt" };
        if from != want {
            bail!(
                "sample {}: user and assistant turns do not alternate (LLaMA-Factory would drop the sample)",
                s.id
            );
        }
        conv.push(json!({"from": from, "value": m.content}));
    }
    // the answer is the last turn, as in training (a trailing user turn teaches nothing)
    if conv.len() % 2 == 1 {
        conv.pop();
    }
    let mut rec = json!({ "conversations": conv });
    if let Some(sys) = system {
        rec["system"] = Value::String(sys);
    }
    Ok(Some(rec))
}

/// `dataset_info.json` for the written files.
fn dataset_info(with_val: bool) -> Value {
    let entry = |file: &str| {
        json!({
            "file_name": file,
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "system": "system"},
            "tags": {
                "role_tag": "from",
                "content_tag": "value",
                "user_tag": "human",
                "assistant_tag": "gpt"
            }
        })
    };
    let mut v = json!({ TRAIN_DATASET: entry("train.jsonl") });
    if with_val {
        v[VAL_DATASET] = entry("val.jsonl");
    }
    v
}

fn jsonl(records: &[Value]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for r in records {
        serde_json::to_writer(&mut out, r)?;
        out.push(b'\n');
    }
    Ok(out)
}

/// Writes the LLaMA-Factory hand-off of a run's settings into `out`.
pub fn write_llamafactory(
    tc: &TrainConfig,
    out: &Path,
    opts: &HandoffOptions,
) -> Result<HandoffReport> {
    if tc.data.as_os_str().is_empty() {
        bail!("no training data: give --data");
    }
    if tc.model.is_empty() {
        bail!("no model: give --model");
    }
    if !tc.full {
        tc.lora
            .validate()
            .context("the LoRA settings cannot be handed off")?;
    }
    let model_name = portable_model_name(&tc.model)?;
    if out.exists() {
        let busy = std::fs::read_dir(out)
            .with_context(|| format!("{}: cannot read the folder", out.display()))?
            .next()
            .is_some();
        if busy && !opts.force {
            bail!(
                "{}: the folder is not empty (give --force to write the hand-off over it)",
                out.display()
            );
        }
    }
    let (train_s, val_s, _) = crate::engine::train::load_split(tc)?;
    let mut unlabelled = 0;
    let mut convert = |v: &[Sample]| -> Result<Vec<Value>> {
        let mut recs = Vec::new();
        for s in v {
            match sharegpt_record(s, tc)? {
                Some(r) => recs.push(r),
                None => unlabelled += 1,
            }
        }
        Ok(recs)
    };
    let train = convert(&train_s)?;
    let val = convert(&val_s)?;
    if train.is_empty() {
        bail!(
            "{}: no trainable samples (fraud samples need a label; chat samples an assistant turn)",
            tc.data.display()
        );
    }
    let over_max_len = if opts.count_tokens {
        count_over_len(tc, &train_s, &val_s).ok()
    } else {
        None
    };
    let plan = yaml::Plan::new(
        tc,
        &model_name,
        train.len(),
        !val.is_empty(),
        opts.planned_steps,
    );
    let gaps = readme::gaps(tc, &plan, over_max_len);
    data::fsutil::create_dir_durable(out)?;
    let mut files = Vec::new();
    let mut put = |name: &str, bytes: &[u8]| -> Result<()> {
        data::write_atomic(&out.join(name), bytes)?;
        files.push(name.to_string());
        Ok(())
    };
    put("train.jsonl", &jsonl(&train)?)?;
    if !val.is_empty() {
        put("val.jsonl", &jsonl(&val)?)?;
    } else {
        let _ = std::fs::remove_file(out.join("val.jsonl"));
    }
    put(
        "dataset_info.json",
        serde_json::to_string_pretty(&dataset_info(!val.is_empty()))?.as_bytes(),
    )?;
    put(YAML_FILE, plan.render().as_bytes())?;
    let record = HandoffRecord {
        trainer: "llamafactory".into(),
        written: data::fsutil::rfc3339(data::fsutil::now_unix()),
        config: tc.clone(),
        model_name_or_path: model_name.clone(),
        train_samples: train.len(),
        val_samples: val.len(),
    };
    put(
        HANDOFF_FILE,
        serde_json::to_string_pretty(&record)?.as_bytes(),
    )?;
    let report = HandoffReport {
        out: out.to_path_buf(),
        files: files.clone(),
        train_samples: train.len(),
        val_samples: val.len(),
        unlabelled,
        over_max_len,
        model_name_or_path: model_name,
        gaps,
    };
    let text = readme::render(tc, &plan, &report);
    data::write_atomic(&out.join("README.md"), text.as_bytes())?;
    let mut report = report;
    report.files.push("README.md".into());
    Ok(report)
}

/// Samples (training and validation) whose prompt and answer pass `max_len` tokens with the
/// model's tokenizer.
fn count_over_len(tc: &TrainConfig, train: &[Sample], val: &[Sample]) -> Result<usize> {
    let loc = crate::model::loader::resolve(&tc.model)?;
    let tok = match &loc {
        crate::model::ModelLocation::Folder(d) => crate::model::TextTokenizer::from_folder(d)?,
        crate::model::ModelLocation::Gguf(_) => bail!("GGUF"),
    };
    let mut n = 0;
    for s in train.iter().chain(val) {
        let anon;
        let s = if tc.anonymize_speakers {
            anon = s.anonymized();
            &anon
        } else {
            s
        };
        let msgs = s.to_chat_messages(DEFAULT_SYSTEM, true, tc.answer_fields);
        if !msgs.iter().any(|m| m.role == "assistant") {
            continue;
        }
        let text = tok.apply_chat_template(&msgs, false)?;
        if tok.encode(&text)?.len() > tc.max_len {
            n += 1;
        }
    }
    Ok(n)
}
