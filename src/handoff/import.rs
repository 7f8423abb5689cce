//! `fraudlab runs import`: an adapter trained elsewhere (LLaMA-Factory's output folder, or
//! any PEFT LoRA folder) becomes a run of the session — `runs/<id>/adapter/` (a copy),
//! `config.json` (the settings, from the hand-off record when there is one, and where the
//! run came from), `metrics.jsonl` (the trainer's logged losses, converted) and
//! `summary.json` — so the Train and Eval panes list it like a run trained here.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

use super::{HandoffRecord, HANDOFF_FILE, OUTPUT_DIR};
use crate::data::{self, Session};
use crate::engine::train::{StepMetrics, TrainConfig, TrainSummary};
use crate::model::adapter::{AdapterMeta, LoraSpec};

/// Files of a PEFT adapter that are copied.
const ADAPTER_FILES: [&str; 3] = [
    "adapter_config.json",
    "adapter_model.safetensors",
    crate::model::adapter::META_FILE,
];

#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Run id (default: a new time stamp).
    pub name: Option<String>,
    /// Base model as fraudlab should load it here (default: the hand-off's, else the
    /// adapter's `base_model_name_or_path`).
    pub model: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    pub run_id: String,
    pub run_dir: PathBuf,
    pub adapter: PathBuf,
    pub model: String,
    /// Whether the base model is found on this machine.
    pub model_found: bool,
    /// Logged training steps converted into metrics.jsonl.
    pub steps: usize,
    /// Where they came from (`trainer_state.json` or `trainer_log.jsonl`), if anywhere.
    pub log: Option<String>,
    pub handoff: Option<PathBuf>,
}

/// The adapter folder in `dir`: `dir` itself, or `dir/output` for a hand-off folder.
fn find_adapter(dir: &Path) -> Result<PathBuf> {
    if !dir.is_dir() {
        bail!("{}: no such folder", dir.display());
    }
    for d in [dir.to_path_buf(), dir.join(OUTPUT_DIR)] {
        if d.join("adapter_config.json").is_file() {
            return Ok(d);
        }
    }
    if dir.join("config.json").is_file() && dir.join("model.safetensors").is_file() {
        bail!(
            "{}: a whole model (full fine-tuning), not a LoRA adapter: load it as a model (Models pane `a`, or --model {})",
            dir.display(),
            dir.display()
        );
    }
    bail!(
        "{}: no adapter_config.json (expected LLaMA-Factory's output folder or a PEFT LoRA adapter)",
        dir.display()
    )
}

/// The hand-off record beside or above the trainer's output folder.
fn find_handoff(adapter_dir: &Path) -> Result<Option<(PathBuf, HandoffRecord)>> {
    for d in adapter_dir.ancestors().take(3) {
        let p = d.join(HANDOFF_FILE);
        if p.is_file() {
            let text = std::fs::read_to_string(&p)
                .with_context(|| format!("{}: cannot read", p.display()))?;
            let r: HandoffRecord = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a fraudlab hand-off record", p.display()))?;
            return Ok(Some((p, r)));
        }
    }
    Ok(None)
}

/// The LoRA settings an `adapter_config.json` states, as fraudlab names them: module names
/// reduced to their projection, a per-layer target list to its layers.
fn lora_spec_of(cfg: &Value, path: &Path) -> Result<LoraSpec> {
    let r = cfg["r"]
        .as_u64()
        .filter(|&r| r > 0)
        .with_context(|| format!("{}: `r` must be a positive whole number", path.display()))?;
    let names: Vec<String> = match &cfg["target_modules"] {
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        Value::String(s) => vec![s.clone()],
        _ => vec![],
    };
    let mut targets: Vec<String> = Vec::new();
    let mut layers: Vec<usize> = Vec::new();
    for n in &names {
        let last = n.rsplit('.').next().unwrap_or(n).to_string();
        if !targets.contains(&last) {
            targets.push(last);
        }
        if let Some(l) = crate::model::adapter::layer_of(n) {
            layers.push(l);
        }
    }
    layers.sort_unstable();
    layers.dedup();
    let stated = match &cfg["layers_to_transform"] {
        Value::Array(a) => Some(
            a.iter()
                .filter_map(|x| x.as_u64().map(|v| v as usize))
                .collect(),
        ),
        Value::Number(n) => n.as_u64().map(|v| vec![v as usize]),
        _ => None,
    };
    Ok(LoraSpec {
        r: r as usize,
        lora_alpha: cfg["lora_alpha"].as_f64().unwrap_or(r as f64),
        lora_dropout: cfg["lora_dropout"].as_f64().unwrap_or(0.0) as f32,
        target_modules: targets,
        use_rslora: cfg["use_rslora"].as_bool().unwrap_or(false),
        layers_to_transform: stated.or((!layers.is_empty()).then_some(layers)),
    })
}

/// "H:MM:SS" (LLaMA-Factory's elapsed and remaining times) in seconds.
fn hms(v: &Value) -> Option<f64> {
    if let Some(x) = v.as_f64() {
        return Some(x);
    }
    let s = v.as_str()?;
    let mut total = 0.0;
    for part in s.split(':') {
        total = total * 60.0 + part.trim().parse::<f64>().ok()?;
    }
    Some(total)
}

/// One logged entry of the trainer.
struct Row {
    step: usize,
    total: usize,
    epoch: f64,
    loss: Option<f64>,
    eval_loss: Option<f64>,
    lr: f64,
    grad_norm: f64,
    elapsed: Option<f64>,
    remaining: Option<f64>,
    tokens_per_s: f64,
}

/// `trainer_log.jsonl`, LLaMA-Factory's live log: `None` when it is not there. A torn last
/// line (the trainer killed mid-write) is skipped.
fn read_trainer_log(p: &Path) -> Result<Option<(Vec<Row>, String)>> {
    if !p.is_file() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()))?;
    let n = text.lines().count();
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Ok(e) = serde_json::from_str::<Value>(line) else {
            if i + 1 == n {
                continue;
            }
            bail!("{}: line {} is not JSON", p.display(), i + 1);
        };
        let Some(step) = e["current_steps"].as_u64() else {
            continue;
        };
        rows.push(Row {
            step: step as usize,
            total: e["total_steps"].as_u64().unwrap_or(0) as usize,
            epoch: e["epoch"].as_f64().unwrap_or(0.0),
            loss: e["loss"].as_f64(),
            eval_loss: e["eval_loss"].as_f64(),
            lr: e["lr"].as_f64().unwrap_or(0.0),
            grad_norm: 0.0,
            elapsed: hms(&e["elapsed_time"]),
            remaining: hms(&e["remaining_time"]),
            tokens_per_s: e["throughput"].as_f64().unwrap_or(0.0),
        });
    }
    Ok(Some((rows, "trainer_log.jsonl".into())))
}

/// The trainer's logged steps as fraudlab's per-step metrics: from `trainer_state.json`'s
/// `log_history` (exact learning rate and gradient norm), else `trainer_log.jsonl`.
/// Figures the trainer does not log (memory, samples/s) are 0.
pub fn trainer_metrics(dir: &Path) -> Result<Option<(Vec<StepMetrics>, String)>> {
    let mut rows: Vec<Row> = Vec::new();
    let mut source = None;
    let state_p = dir.join("trainer_state.json");
    let log_p = dir.join("trainer_log.jsonl");
    if state_p.is_file() {
        let text = std::fs::read_to_string(&state_p)
            .with_context(|| format!("{}: cannot read", state_p.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", state_p.display()))?;
        let total = v["max_steps"].as_u64().unwrap_or(0) as usize;
        for e in v["log_history"].as_array().into_iter().flatten() {
            let Some(step) = e["step"].as_u64() else {
                continue;
            };
            rows.push(Row {
                step: step as usize,
                total,
                epoch: e["epoch"].as_f64().unwrap_or(0.0),
                loss: e["loss"].as_f64(),
                eval_loss: e["eval_loss"].as_f64(),
                lr: e["learning_rate"].as_f64().unwrap_or(0.0),
                grad_norm: e["grad_norm"].as_f64().unwrap_or(0.0),
                elapsed: None,
                remaining: None,
                tokens_per_s: 0.0,
            });
        }
        source = Some("trainer_state.json".to_string());
        // the live log has the times the state lacks
        if let Ok(Some((log, _))) = read_trainer_log(&log_p) {
            for r in rows.iter_mut() {
                if let Some(l) = log.iter().find(|l| l.step == r.step && l.loss.is_some()) {
                    r.elapsed = l.elapsed;
                    r.remaining = l.remaining;
                    r.tokens_per_s = l.tokens_per_s;
                }
            }
        }
    } else if let Some((log, src)) = read_trainer_log(&log_p)? {
        rows = log;
        source = Some(src);
    }
    let Some(source) = source else {
        return Ok(None);
    };
    let total = rows.iter().map(|r| r.total.max(r.step)).max().unwrap_or(0);
    let mut out: Vec<StepMetrics> = Vec::new();
    let mut prev_elapsed: Option<(usize, f64)> = None;
    for r in &rows {
        if let Some(loss) = r.loss {
            let step_s = match (prev_elapsed, r.elapsed) {
                (Some((ps, pe)), Some(e)) if r.step > ps => (e - pe) / (r.step - ps) as f64,
                (None, Some(e)) if r.step > 0 => e / r.step as f64,
                _ => 0.0,
            };
            if let Some(e) = r.elapsed {
                prev_elapsed = Some((r.step, e));
            }
            out.push(StepMetrics {
                step: r.step,
                total_steps: total,
                epoch: r.epoch,
                loss,
                lr: r.lr,
                grad_norm: r.grad_norm,
                step_s,
                tokens_per_s: r.tokens_per_s,
                samples_per_s: 0.0,
                elapsed_s: r.elapsed.unwrap_or(0.0),
                eta_s: r.remaining.unwrap_or(0.0),
                rss_mib: 0.0,
                eval_loss: r.eval_loss,
                eval_auc: None,
            });
        }
    }
    // evaluations are logged as entries of their own: put each on the step it followed
    for r in rows.iter().filter(|r| r.loss.is_none()) {
        if let Some(e) = r.eval_loss {
            if let Some(m) = out.iter_mut().rev().find(|m| m.step <= r.step) {
                m.eval_loss = Some(e);
            }
        }
    }
    Ok(Some((out, source)))
}

/// Copies the adapter files of `from` into a new `to` (written aside, then renamed).
fn copy_adapter(from: &Path, to: &Path) -> Result<()> {
    let parent = data::fsutil::parent_dir(to);
    let tmp = parent.join(".adapter.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    data::fsutil::create_dir_durable(&tmp)?;
    for f in ADAPTER_FILES {
        let src = from.join(f);
        if !src.is_file() {
            continue;
        }
        let bytes =
            std::fs::read(&src).with_context(|| format!("{}: cannot read", src.display()))?;
        data::write_atomic(&tmp.join(f), &bytes)?;
    }
    std::fs::rename(&tmp, to).with_context(|| format!("{}: cannot write", to.display()))?;
    data::fsutil::sync_dir(&parent)
}

/// Imports the adapter in `dir` as a run of `session`.
pub fn import_run(session: &Session, dir: &Path, opts: &ImportOptions) -> Result<ImportReport> {
    let adapter_src = find_adapter(dir)?;
    let cfg_p = adapter_src.join("adapter_config.json");
    let cfg: Value = serde_json::from_str(
        &std::fs::read_to_string(&cfg_p)
            .with_context(|| format!("{}: cannot read", cfg_p.display()))?,
    )
    .with_context(|| format!("{}: not valid JSON", cfg_p.display()))?;
    if let Some(t) = cfg["peft_type"].as_str().filter(|t| *t != "LORA") {
        bail!(
            "{}: a {t} adapter; fraudlab reads LoRA adapters",
            cfg_p.display()
        );
    }
    if cfg["use_dora"].as_bool() == Some(true) {
        bail!("{}: DoRA adapters are not supported", cfg_p.display());
    }
    let weights = adapter_src.join("adapter_model.safetensors");
    if !weights.is_file() {
        bail!(
            "{}: missing (fraudlab reads safetensors adapters; save with safe_serialization)",
            weights.display()
        );
    }
    let lora = lora_spec_of(&cfg, &cfg_p)?;
    let handoff = find_handoff(&adapter_src)?;
    let base = cfg["base_model_name_or_path"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let model = opts
        .model
        .clone()
        .or_else(|| handoff.as_ref().map(|(_, h)| h.config.model.clone()))
        .filter(|m| !m.is_empty())
        .unwrap_or(base.clone());
    if model.is_empty() {
        bail!(
            "{}: no base_model_name_or_path; give --model",
            cfg_p.display()
        );
    }
    let model_found = crate::model::loader::resolve(&model).is_ok();

    let run_id = match &opts.name {
        Some(n) => {
            data::session::validate_session_name(n).context("--name")?;
            let d = session.run_dir(n);
            std::fs::create_dir(&d).with_context(|| {
                format!(
                    "{}: cannot create the run (a run of that name exists?)",
                    d.display()
                )
            })?;
            n.clone()
        }
        None => session.new_run_id()?,
    };
    let run_dir = session.run_dir(&run_id);
    let adapter = run_dir.join("adapter");
    let result = (|| -> Result<(usize, Option<String>)> {
        copy_adapter(&adapter_src, &adapter)?;
        let mut tc = match &handoff {
            Some((_, h)) => h.config.clone(),
            None => TrainConfig::default(),
        };
        tc.model = model.clone();
        tc.out_dir = run_dir.clone();
        tc.resume = false;
        tc.lora = lora.clone();
        if AdapterMeta::read(&adapter)?.is_none() {
            let meta = AdapterMeta {
                anonymize_speakers: tc.anonymize_speakers,
                ..AdapterMeta::default()
            };
            meta.write(&adapter)?;
        }
        let mut cv = serde_json::to_value(&tc)?;
        cv["imported"] = serde_json::json!({
            "from": std::fs::canonicalize(&adapter_src).unwrap_or(adapter_src.clone()),
            "trainer": if handoff.is_some() { "llamafactory" } else { "peft" },
            "base_model_name_or_path": base,
            "handoff": handoff.as_ref().map(|(p, _)| p.clone()),
            "time": data::fsutil::rfc3339(data::fsutil::now_unix()),
        });
        data::write_atomic(
            &run_dir.join("config.json"),
            serde_json::to_string_pretty(&cv)?.as_bytes(),
        )?;
        let metrics = trainer_metrics(&adapter_src)?;
        let (steps, final_loss, seconds, log) = match &metrics {
            Some((m, src)) => {
                let mut text = String::new();
                for s in m {
                    text.push_str(&serde_json::to_string(s)?);
                    text.push('\n');
                }
                data::write_atomic(&run_dir.join("metrics.jsonl"), text.as_bytes())?;
                (
                    m.last().map(|s| s.step).unwrap_or(0),
                    m.last().map(|s| s.loss),
                    m.last().map(|s| s.elapsed_s).unwrap_or(0.0),
                    Some(src.clone()),
                )
            }
            None => (0, None, 0.0, None),
        };
        let best = metrics.as_ref().and_then(|(m, _)| {
            m.iter()
                .filter_map(|s| s.eval_loss.map(|e| (s.step, e)))
                .min_by(|a, b| a.1.total_cmp(&b.1))
        });
        let summary = TrainSummary {
            run_dir: run_dir.clone(),
            output_dir: adapter.clone(),
            steps,
            final_loss,
            best_eval_loss: best.map(|b| b.1),
            best_step: best.map(|b| b.0),
            end: "imported".into(),
            seconds,
            calibration: None,
            samples_seen: 0,
            train_s: seconds,
            setup_s: 0.0,
            calibrate_s: 0.0,
            plan: None,
            frozen_cache: None,
            meter: Default::default(),
        };
        data::write_atomic(
            &run_dir.join("summary.json"),
            serde_json::to_string_pretty(&summary)?.as_bytes(),
        )?;
        Ok((steps, log))
    })();
    let (steps, log) = match result {
        Ok(x) => x,
        Err(e) => {
            // no half-imported run is left for the panes to list
            let _ = std::fs::remove_dir_all(&run_dir);
            return Err(e);
        }
    };
    Ok(ImportReport {
        run_id,
        run_dir,
        adapter,
        model,
        model_found,
        steps,
        log,
        handoff: handoff.map(|(p, _)| p),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trainer_state_and_log_convert() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("trainer_log.jsonl"),
            concat!(
                "{\"current_steps\": 1, \"total_steps\": 4, \"loss\": 2.5, \"lr\": 5e-05, \"epoch\": 0.5, \"elapsed_time\": \"0:00:10\", \"remaining_time\": \"0:00:30\"}\n",
                "{\"current_steps\": 2, \"total_steps\": 4, \"loss\": 2.0, \"lr\": 0.0001, \"epoch\": 1.0, \"elapsed_time\": \"0:00:16\", \"remaining_time\": \"0:00:16\"}\n",
                "{\"current_steps\": 2, \"total_steps\": 4, \"eval_loss\": 1.9, \"epoch\": 1.0}\n",
                "{\"current_steps\": 3, \"total_ste"
            ),
        )
        .unwrap();
        let (m, src) = trainer_metrics(d.path()).unwrap().unwrap();
        assert_eq!(src, "trainer_log.jsonl");
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].step, m[0].total_steps, m[0].loss), (1, 4, 2.5));
        assert_eq!(m[0].step_s, 10.0);
        assert_eq!(m[1].step_s, 6.0);
        assert_eq!(m[1].eval_loss, Some(1.9));
        assert_eq!(m[1].eta_s, 16.0);

        // trainer_state.json wins when both are there
        std::fs::write(
            d.path().join("trainer_state.json"),
            r#"{"max_steps": 3, "log_history": [
                {"epoch": 0.3, "grad_norm": 1.5, "learning_rate": 1e-4, "loss": 3.0, "step": 1},
                {"epoch": 0.6, "grad_norm": 1.2, "learning_rate": 9e-5, "loss": 2.0, "step": 2},
                {"epoch": 0.6, "eval_loss": 2.2, "step": 2},
                {"epoch": 1.0, "train_runtime": 12.0, "step": 3}
            ]}"#,
        )
        .unwrap();
        let (m, src) = trainer_metrics(d.path()).unwrap().unwrap();
        assert_eq!(src, "trainer_state.json");
        assert_eq!(m.len(), 2);
        assert_eq!(
            (m[1].grad_norm, m[1].lr, m[1].eval_loss),
            (1.2, 9e-5, Some(2.2))
        );
        assert_eq!(m[0].total_steps, 3);
        assert!(trainer_metrics(&d.path().join("none")).unwrap().is_none());
    }

    #[test]
    fn lora_spec_from_per_layer_targets() {
        let cfg = serde_json::json!({
            "r": 4, "lora_alpha": 8, "lora_dropout": 0.1,
            "target_modules": ["layers.1.self_attn.q_proj", "layers.0.mlp.down_proj", "layers.1.mlp.down_proj"]
        });
        let s = lora_spec_of(&cfg, Path::new("a.json")).unwrap();
        assert_eq!(s.target_modules, vec!["q_proj", "down_proj"]);
        assert_eq!(s.layers_to_transform, Some(vec![0, 1]));
        assert_eq!((s.r, s.lora_alpha), (4, 8.0));
        let plain = serde_json::json!({"r": 8, "target_modules": ["v_proj", "q_proj"]});
        let s = lora_spec_of(&plain, Path::new("a.json")).unwrap();
        assert_eq!(s.layers_to_transform, None);
        assert!(lora_spec_of(&serde_json::json!({"r": 0}), Path::new("a.json")).is_err());
    }
}
