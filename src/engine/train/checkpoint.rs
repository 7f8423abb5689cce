//! Checkpoints written atomically and read back for an exact resume; the adapter's
//! `fraudlab.json`; checkpoint pruning.

#[allow(unused_imports)]
use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct TrainerState {
    pub(super) step: usize,
    pub(super) epoch: usize,
    /// micro-batches of `epoch` already consumed
    pub(super) micro: usize,
    pub(super) best_eval_loss: Option<f64>,
    pub(super) best_step: Option<usize>,
    pub(super) evals_without_improvement: usize,
    pub(super) adam_t: usize,
    pub(super) last_loss: Option<f64>,
    /// a time-budgeted run's schedule, once made
    #[serde(default)]
    pub(super) plan: Option<Plan>,
    /// seconds of training so far (what a time budget counts)
    #[serde(default)]
    pub(super) train_s: f64,
    #[serde(default)]
    pub(super) samples_seen: usize,
}

pub(super) fn write_checkpoint(
    dir: &Path,
    tr: &Trainable,
    opt: &AdamW,
    st: &TrainerState,
    tc: &TrainConfig,
    base: &str,
) -> Result<()> {
    let parent = dir.parent().context("checkpoint folder has no parent")?;
    std::fs::create_dir_all(parent)
        .with_context(|| format!("{}: cannot create", parent.display()))?;
    let tmp = parent.join(format!(
        ".{}.tmp",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("ckpt")
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    if tc.full {
        let w: Vec<(String, Tensor)> = tr
            .names
            .iter()
            .cloned()
            .zip(tr.vars.iter().map(|v| v.as_tensor().clone()))
            .collect();
        save_atomic(&w, &tmp.join("weights.safetensors"))?;
    } else {
        save_adapter(&tmp, &tc.lora, &tr.lora, base)?;
        adapter_meta(tc).write(&tmp)?;
    }
    let mut o = Vec::new();
    for (i, n) in tr.names.iter().enumerate() {
        o.push((format!("m.{n}"), opt.m[i].clone()));
        o.push((format!("v.{n}"), opt.v[i].clone()));
    }
    save_atomic(&o, &tmp.join("optimizer.safetensors"))?;
    data::write_atomic(
        &tmp.join("trainer_state.json"),
        serde_json::to_string_pretty(st)?.as_bytes(),
    )?;
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::rename(&tmp, dir)
        .with_context(|| format!("{}: cannot write checkpoint", dir.display()))?;
    if let Ok(d) = std::fs::File::open(parent) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The newest complete checkpoint (`checkpoints/step-N/` with trainer_state.json).
pub fn latest_checkpoint(run_dir: &Path) -> Option<(usize, PathBuf)> {
    let rd = std::fs::read_dir(run_dir.join("checkpoints")).ok()?;
    rd.flatten()
        .filter_map(|e| {
            let n = e
                .file_name()
                .to_str()?
                .strip_prefix("step-")?
                .parse::<usize>()
                .ok()?;
            e.path()
                .join("trainer_state.json")
                .exists()
                .then(|| (n, e.path()))
        })
        .max_by_key(|(n, _)| *n)
}

pub(super) fn read_checkpoint(
    dir: &Path,
    tr: &Trainable,
    opt: &mut AdamW,
    tc: &TrainConfig,
) -> Result<TrainerState> {
    let st: TrainerState = serde_json::from_str(
        &std::fs::read_to_string(dir.join("trainer_state.json"))
            .with_context(|| format!("{}: cannot read trainer state", dir.display()))?,
    )
    .with_context(|| format!("{}: corrupt trainer_state.json", dir.display()))?;
    let w = if tc.full {
        dir.join("weights.safetensors")
    } else {
        dir.join("adapter_model.safetensors")
    };
    let wf = SafetensorsFile::open(&w)?;
    let dev = candle_core::Device::Cpu;
    if tc.full {
        for (n, v) in tr.names.iter().zip(&tr.vars) {
            v.set(&wf.load(n, v.dtype(), &dev)?)?;
        }
    } else {
        for l in &tr.lora {
            l.a.set(&wf.load(
                &crate::model::adapter::peft_key(&l.module, 'A'),
                l.a.dtype(),
                &dev,
            )?)?;
            l.b.set(&wf.load(
                &crate::model::adapter::peft_key(&l.module, 'B'),
                l.b.dtype(),
                &dev,
            )?)?;
        }
    }
    let of = SafetensorsFile::open(&dir.join("optimizer.safetensors"))?;
    for (i, n) in tr.names.iter().enumerate() {
        let dt = tr.vars[i].dtype();
        opt.m[i] = of.load(&format!("m.{n}"), dt, &dev)?;
        opt.v[i] = of.load(&format!("v.{n}"), dt, &dev)?;
    }
    opt.t = st.adam_t;
    Ok(st)
}

pub(super) fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    let tmp = to.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    for e in std::fs::read_dir(from)?.flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), tmp.join(e.file_name()))?;
        }
    }
    if to.exists() {
        std::fs::remove_dir_all(to)?;
    }
    std::fs::rename(&tmp, to)?;
    Ok(())
}

/// `fraudlab.json` for the run's adapter: the prompt it was trained on (the data's
/// instruction, the recipe's system prompt), so the monitor, the server and evaluation build
/// the same prompt.
pub(super) fn adapter_meta(tc: &TrainConfig) -> crate::model::adapter::AdapterMeta {
    let instruction = data::load(&tc.data).ok().and_then(|r| {
        r.samples.iter().find_map(|s| match &s.body {
            SampleBody::Fraud { instruction, .. } => Some(instruction.clone()),
            _ => None,
        })
    });
    crate::model::adapter::AdapterMeta {
        instruction: instruction.unwrap_or_else(|| data::DEFAULT_INSTRUCTION.to_string()),
        system: DEFAULT_SYSTEM.to_string(),
        anonymize_speakers: tc.anonymize_speakers,
        ..Default::default()
    }
}

pub(super) fn prune_checkpoints(run_dir: &Path, keep: usize) {
    let Ok(rd) = std::fs::read_dir(run_dir.join("checkpoints")) else {
        return;
    };
    let mut steps: Vec<(usize, PathBuf)> = rd
        .flatten()
        .filter_map(|e| {
            Some((
                e.file_name()
                    .to_str()?
                    .strip_prefix("step-")?
                    .parse()
                    .ok()?,
                e.path(),
            ))
        })
        .collect();
    steps.sort();
    let n = steps.len();
    for (_, p) in steps.into_iter().take(n.saturating_sub(keep.max(1))) {
        let _ = std::fs::remove_dir_all(p);
    }
}
