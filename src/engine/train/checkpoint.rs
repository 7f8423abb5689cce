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

/// Writes checkpoint `dir` (`checkpoints/step-N/`) so that a kill or a full disk at any
/// moment leaves either no `step-N/` or a complete one: its files go to a hidden
/// `.step-N.tmp/` (each written atomically and fsynced), which is renamed into place and the
/// folder fsynced. A failed write removes the temporary folder and names the file.
pub(super) fn write_checkpoint(
    dir: &Path,
    tr: &Trainable,
    opt: &AdamW,
    st: &TrainerState,
    tc: &TrainConfig,
    base: &str,
) -> Result<()> {
    let parent = dir.parent().context("checkpoint folder has no parent")?;
    data::fsutil::create_dir_durable(parent)?;
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("ckpt");
    let tmp = parent.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    let written = (|| -> Result<()> {
        std::fs::create_dir(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
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
        // written last: a checkpoint folder with it is complete
        data::write_atomic(
            &tmp.join("trainer_state.json"),
            serde_json::to_string_pretty(st)?.as_bytes(),
        )
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e.context(format!("cannot write checkpoint {}", dir.display())));
    }
    replace_dir(&tmp, dir)
}

/// Renames the complete folder `tmp` to `to`. An old `to` is first renamed aside (and then
/// removed), so `to` is never a half-removed folder.
fn replace_dir(tmp: &Path, to: &Path) -> Result<()> {
    let parent = data::fsutil::parent_dir(to);
    let name = to.file_name().and_then(|n| n.to_str()).unwrap_or("dir");
    let old = parent.join(format!(".{name}.old"));
    let _ = std::fs::remove_dir_all(&old);
    if to.exists() {
        std::fs::rename(to, &old)
            .with_context(|| format!("{}: cannot move the old folder aside", to.display()))?;
    }
    std::fs::rename(tmp, to).with_context(|| format!("{}: cannot write", to.display()))?;
    data::fsutil::sync_dir(&parent)?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// The files every complete checkpoint holds.
fn checkpoint_files(dir: &Path) -> [PathBuf; 3] {
    let weights = if dir.join("weights.safetensors").exists() {
        "weights.safetensors"
    } else {
        "adapter_model.safetensors"
    };
    [
        dir.join(weights),
        dir.join("optimizer.safetensors"),
        dir.join("trainer_state.json"),
    ]
}

/// The complete checkpoints (`checkpoints/step-N/` with all their files), newest first.
pub fn complete_checkpoints(run_dir: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(run_dir.join("checkpoints")) else {
        return Vec::new();
    };
    let mut v: Vec<(usize, PathBuf)> = rd
        .flatten()
        .filter_map(|e| {
            let n = e
                .file_name()
                .to_str()?
                .strip_prefix("step-")?
                .parse::<usize>()
                .ok()?;
            let p = e.path();
            checkpoint_files(&p)
                .iter()
                .all(|f| f.is_file())
                .then_some((n, p))
        })
        .collect();
    v.sort_by_key(|b| std::cmp::Reverse(b.0));
    v
}

/// The newest complete checkpoint.
pub fn latest_checkpoint(run_dir: &Path) -> Option<(usize, PathBuf)> {
    complete_checkpoints(run_dir).into_iter().next()
}

/// `--resume`: restores the newest checkpoint that reads back whole, newest first; one that
/// does not (a damaged file) is reported through `log` and the next older one is tried.
/// An error when none is usable.
pub(super) fn read_newest_checkpoint(
    run_dir: &Path,
    tr: &Trainable,
    opt: &mut AdamW,
    tc: &TrainConfig,
    log: &mut dyn FnMut(String),
) -> Result<(PathBuf, TrainerState)> {
    let mut problems = Vec::new();
    for (_, dir) in complete_checkpoints(run_dir) {
        match read_checkpoint(&dir, tr, opt, tc) {
            Ok(st) => return Ok((dir, st)),
            Err(e) => {
                log(format!("skipping checkpoint {}: {e:#}", dir.display()));
                problems.push(format!("{e:#}"));
            }
        }
    }
    bail!(
        "{}: no usable checkpoint to resume from ({})",
        run_dir.join("checkpoints").display(),
        problems.join("; ")
    )
}

/// Reads checkpoint `dir` into the trainable tensors and the optimizer. Everything is read
/// and checked first, so a damaged checkpoint leaves them untouched.
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
    let check = |t: Tensor, like: &Tensor, name: &str, file: &Path| -> Result<Tensor> {
        if t.dims() != like.dims() {
            bail!(
                "{}: tensor {name} has shape {:?}, the run needs {:?}",
                file.display(),
                t.dims(),
                like.dims()
            );
        }
        Ok(t)
    };
    let mut values: Vec<(&Var, Tensor)> = Vec::new();
    if tc.full {
        for (n, v) in tr.names.iter().zip(&tr.vars) {
            values.push((v, check(wf.load(n, v.dtype(), &dev)?, v, n, &w)?));
        }
    } else {
        for l in &tr.lora {
            for (var, which) in [(&l.a, 'A'), (&l.b, 'B')] {
                let key = crate::model::adapter::peft_key(&l.module, which);
                values.push((
                    var,
                    check(wf.load(&key, var.dtype(), &dev)?, var, &key, &w)?,
                ));
            }
        }
    }
    let op = dir.join("optimizer.safetensors");
    let of = SafetensorsFile::open(&op)?;
    let mut moments = Vec::with_capacity(tr.names.len());
    for (i, n) in tr.names.iter().enumerate() {
        let dt = tr.vars[i].dtype();
        let like = tr.vars[i].as_tensor();
        let m = check(of.load(&format!("m.{n}"), dt, &dev)?, like, n, &op)?;
        let v = check(of.load(&format!("v.{n}"), dt, &dev)?, like, n, &op)?;
        moments.push((m, v));
    }
    for (var, t) in values {
        var.set(&t)?;
    }
    for (i, (m, v)) in moments.into_iter().enumerate() {
        opt.m[i] = m;
        opt.v[i] = v;
    }
    opt.t = st.adam_t;
    Ok(st)
}

/// Copies the files of `from` into folder `to`, replacing it whole (see [`replace_dir`]).
pub(super) fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    let name = to.file_name().and_then(|n| n.to_str()).unwrap_or("dir");
    let tmp = data::fsutil::parent_dir(to).join(format!(".{name}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    let copied = (|| -> Result<()> {
        std::fs::create_dir(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
        for e in std::fs::read_dir(from)?.flatten() {
            if e.path().is_file() {
                let mut src = std::fs::File::open(e.path())
                    .with_context(|| format!("{}: cannot read", e.path().display()))?;
                data::fsutil::write_atomic_with(&tmp.join(e.file_name()), |w| {
                    std::io::copy(&mut src, w)?;
                    Ok(())
                })?;
            }
        }
        Ok(())
    })();
    if let Err(e) = copied {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    replace_dir(&tmp, to)
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

/// Keeps the newest `keep` checkpoints (at least one). An old one is renamed aside before
/// it is removed, so a kill never leaves a half-removed `step-N/`; leftovers of killed
/// writes (hidden `.step-N.tmp/`, `.step-N.old/`) are removed too.
pub(super) fn prune_checkpoints(run_dir: &Path, keep: usize) {
    let ckpts = run_dir.join("checkpoints");
    let Ok(rd) = std::fs::read_dir(&ckpts) else {
        return;
    };
    let mut steps: Vec<(usize, PathBuf)> = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && (name.ends_with(".tmp") || name.ends_with(".old")) {
            let _ = std::fs::remove_dir_all(e.path());
        } else if let Some(n) = name.strip_prefix("step-").and_then(|n| n.parse().ok()) {
            steps.push((n, e.path()));
        }
    }
    steps.sort();
    let n = steps.len();
    for (step, p) in steps.into_iter().take(n.saturating_sub(keep.max(1))) {
        let aside = ckpts.join(format!(".step-{step}.old"));
        if std::fs::rename(&p, &aside).is_ok() {
            let _ = std::fs::remove_dir_all(aside);
        }
    }
}
