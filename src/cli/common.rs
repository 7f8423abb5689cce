//! Helpers every command shares: sessions, model loading, signals, formatting.

use anyhow::Result;
use std::path::PathBuf;

use super::args::{ModelArgs, TrainArgs};
use crate::engine::train::TrainConfig;
use crate::model;

/// Loads a model and applies an adapter if given.
pub fn load_with_adapter(
    m: &ModelArgs,
    adapter: Option<&std::path::Path>,
) -> Result<model::LoadedModel> {
    let mut lm = model::load(&m.model, m.options()?)?;
    if let Some(a) = adapter {
        model::adapter::load_adapter(&mut lm.model, a)?;
    }
    Ok(lm)
}

/// The folder sessions live in: `FRAUDLAB_SESSIONS`, else `./sessions`.
pub fn sessions_root() -> PathBuf {
    std::env::var_os("FRAUDLAB_SESSIONS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("sessions"))
}

pub fn open_session(name: &str) -> Result<crate::data::Session> {
    crate::data::Session::open(&sessions_root(), name)
}

pub use crate::fmt::human_secs as fmt_secs;

pub fn human_bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.1} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.0} MB", n / 1e6)
    } else {
        format!("{:.0} kB", n / 1e3)
    }
}

/// Set by SIGINT / SIGTERM while a long command (training, a download) runs.
pub static STOP_SIGNAL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP_SIGNAL.store(true, std::sync::atomic::Ordering::SeqCst);
}

pub fn install_stop_signals() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_stop_signal as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_stop_signal as *const () as libc::sighandler_t,
        );
    }
}

/// The run `train`'s arguments describe, written to `out`.
pub fn train_config(a: &TrainArgs, out: std::path::PathBuf) -> Result<TrainConfig> {
    let targets: Vec<String> = a
        .target
        .split(',')
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    Ok(TrainConfig {
        model: a.model.clone(),
        data: a.data.clone(),
        val: a.val.clone(),
        val_split: a.val_split,
        out_dir: out,
        full: a.full,
        lora: crate::model::adapter::LoraSpec {
            r: a.lora_r,
            lora_alpha: a.lora_alpha,
            lora_dropout: a.lora_dropout,
            target_modules: targets,
            use_rslora: false,
            layers_to_transform: a
                .layers
                .as_deref()
                .map(crate::model::adapter::parse_layers)
                .transpose()?,
        },
        lr: a.lr,
        epochs: a.epochs,
        max_steps: a.max_steps,
        batch: a.batch,
        grad_accum: a.grad_accum,
        max_len: a.max_len,
        schedule: a.schedule.parse()?,
        warmup_ratio: a.warmup_ratio,
        warmup_steps: a.warmup_steps,
        weight_decay: a.weight_decay,
        max_grad_norm: a.max_grad_norm,
        seed: a.seed,
        save_every: a.save_every,
        eval_every: a.eval_every,
        early_stopping: a.early_stopping,
        resume: a.resume,
        answer_fields: a.answer_fields,
        anonymize_speakers: a.anonymize_speakers,
        limit: a.limit,
        time_budget_s: a.time_budget,
        frozen_cache_mib: a.frozen_cache_mib,
        dtype: a.dtype.clone(),
        ..TrainConfig::default()
    })
}

/// A progress bar on standard error for `unit`s of work (steps, samples): position, rate
/// and ETA, and a message. Hidden with `--json`; indicatif draws nothing when standard error
/// is not a terminal.
pub fn progress_bar(json: bool, unit: &str) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    if json {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    b.set_style(
        ProgressStyle::with_template(&format!(
            "[{{bar:25}}] {{pos}}/{{len}} {unit} ETA {{eta}} {{wide_msg}}"
        ))
        .expect("a valid template")
        .progress_chars("=> "),
    );
    b
}
