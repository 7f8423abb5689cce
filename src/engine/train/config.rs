//! What a training run is told (config), what it reports (events, metrics, summary) and
//! how it is steered from another thread (pause, stop).

#[allow(unused_imports)]
use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    Constant,
    Linear,
    Cosine,
}

impl std::str::FromStr for Schedule {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "constant" => Self::Constant,
            "linear" => Self::Linear,
            "cosine" => Self::Cosine,
            _ => bail!("schedule `{s}`: use constant, linear or cosine"),
        })
    }
}

/// A training run. Defaults follow the fraud-dialogue recipe (LoRA r 8, alpha 16, dropout
/// 0.05 on the seven projections, lr 1e-4, 3 epochs, cosine with 10% warmup).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    pub model: String,
    pub data: PathBuf,
    pub val: Option<PathBuf>,
    /// Fraction of `data` held out for validation (stratified by label) when `val` is unset.
    pub val_split: f64,
    /// The run folder: config.json, metrics.jsonl, checkpoints/, adapter/.
    pub out_dir: PathBuf,
    /// Full fine-tuning instead of LoRA.
    pub full: bool,
    pub lora: LoraSpec,
    pub lr: f64,
    pub epochs: usize,
    pub max_steps: Option<usize>,
    pub batch: usize,
    pub grad_accum: usize,
    pub max_len: usize,
    pub schedule: Schedule,
    pub warmup_ratio: f64,
    pub warmup_steps: Option<usize>,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub max_grad_norm: f64,
    pub seed: u64,
    /// Checkpoint every N optimizer steps (0: only at the end).
    pub save_every: usize,
    /// Validation loss every N optimizer steps (0: at the end of each epoch).
    pub eval_every: usize,
    /// Stop after this many evaluations without improvement.
    pub early_stopping: Option<usize>,
    /// Continue from the newest checkpoint in `out_dir`.
    pub resume: bool,
    /// Put `fraud_speaker` and `reason` in the target JSON too.
    pub answer_fields: bool,
    /// Use only the first N training samples.
    pub limit: Option<usize>,
    /// Checkpoints kept besides the best (oldest removed first).
    pub keep_checkpoints: usize,
    /// Shuffle the samples every epoch (seeded); off keeps file order.
    #[serde(default = "yes")]
    pub shuffle: bool,
    /// Build prompts with speakers renamed A, B… (per dialogue), hiding names that give the
    /// label away; the data is not rewritten.
    #[serde(default)]
    pub anonymize_speakers: bool,
    /// Fit the run into this many seconds from its first step (validation included): the
    /// schedule is planned after the first step from its measured cost.
    #[serde(default)]
    pub time_budget_s: Option<f64>,
    /// Memory for the frozen-prefix cache, MiB (past it, a spill file in the run folder);
    /// 0 turns the cache off. Default: a quarter of the available memory, at most 8 GiB.
    #[serde(default)]
    pub frozen_cache_mib: Option<usize>,
    /// The frozen base weights' dtype: `f32`, or `bf16` (LoRA only; LoRA weights, gradients
    /// and optimizer state stay f32).
    #[serde(default = "f32_name")]
    pub dtype: String,
}

impl TrainConfig {
    /// How the run's base model is loaded: dense weights in the run's dtype (an unknown
    /// dtype is an error naming it).
    pub fn load_options(&self) -> Result<crate::model::LoadOptions> {
        Ok(crate::model::LoadOptions {
            dtype: crate::model::loader::parse_dtype(&self.dtype)?,
            ..Default::default()
        })
    }
}

pub(super) fn yes() -> bool {
    true
}

pub fn f32_name() -> String {
    "f32".into()
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: String::new(),
            data: PathBuf::new(),
            val: None,
            val_split: 0.0,
            out_dir: PathBuf::new(),
            full: false,
            lora: LoraSpec::default(),
            lr: 1e-4,
            epochs: 3,
            max_steps: None,
            batch: 4,
            grad_accum: 4,
            max_len: 512,
            schedule: Schedule::Cosine,
            warmup_ratio: 0.1,
            warmup_steps: None,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            max_grad_norm: 1.0,
            seed: 0,
            save_every: 0,
            eval_every: 0,
            early_stopping: None,
            resume: false,
            answer_fields: false,
            limit: None,
            keep_checkpoints: 2,
            shuffle: true,
            anonymize_speakers: false,
            time_budget_s: None,
            frozen_cache_mib: None,
            dtype: f32_name(),
        }
    }
}

/// Validation passes a time-budgeted run makes on the way (before the final one) unless
/// `eval_every` says otherwise or they would take too much of the budget.
pub const BUDGET_EVALS: usize = 3;

/// Pause and stop, set from any thread, read between steps; and the engine's priority gate,
/// waited on before every micro-batch and validation batch (interactive work first).
#[derive(Debug, Default)]
pub struct TrainControl {
    pub pause: AtomicBool,
    pub stop: AtomicBool,
    pub gate: std::sync::Arc<crate::engine::gate::PriorityGate>,
}

/// One optimizer step's figures.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepMetrics {
    pub step: usize,
    pub total_steps: usize,
    pub epoch: f64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub step_s: f64,
    pub tokens_per_s: f64,
    pub samples_per_s: f64,
    pub elapsed_s: f64,
    pub eta_s: f64,
    pub rss_mib: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    /// ROC-AUC of P(fraud) on the validation dialogues, where validation ran
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_auc: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum TrainEvent {
    Started {
        run_dir: PathBuf,
        total_steps: usize,
        start_step: usize,
        train_samples: usize,
        val_samples: usize,
        estimate_mib: f64,
    },
    Step(StepMetrics),
    Eval {
        step: usize,
        eval_loss: f64,
        best: bool,
    },
    Checkpoint {
        step: usize,
        path: PathBuf,
    },
    Paused {
        step: usize,
    },
    Resumed {
        step: usize,
    },
    /// A time-budgeted run's schedule, fixed after its first step.
    Planned(Plan),
    Log(String),
    Finished(TrainSummary),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    /// adapter/ (LoRA, PEFT layout) or model/ (full fine-tuning, HF folder)
    pub output_dir: PathBuf,
    pub steps: usize,
    pub final_loss: Option<f64>,
    pub best_eval_loss: Option<f64>,
    pub best_step: Option<usize>,
    /// "completed", "stopped", "early-stopped"
    pub end: String,
    pub seconds: f64,
    /// The decision threshold chosen on validation (also saved in the adapter's
    /// fraudlab.json).
    #[serde(default)]
    pub calibration: Option<Calibration>,
    /// training samples the run took (an example seen twice counts twice)
    #[serde(default)]
    pub samples_seen: usize,
    /// seconds from the first step to the end of the last step and validation (what a
    /// time budget counts)
    #[serde(default)]
    pub train_s: f64,
    /// seconds before the first step (examples, caches, resume) and for the final
    /// calibration, reported apart from `train_s`
    #[serde(default)]
    pub setup_s: f64,
    #[serde(default)]
    pub calibrate_s: f64,
    #[serde(default)]
    pub plan: Option<Plan>,
    #[serde(default)]
    pub frozen_cache: Option<CacheStats>,
    /// where the training time went
    #[serde(default)]
    pub meter: Meter,
}

/// The whole-dialogue decision threshold a run chose on its validation dialogues.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Calibration {
    /// F1-best threshold.
    pub threshold: f64,
    /// validation dialogues scored
    pub n: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// F1 at the fixed threshold 0.5, for comparison
    pub f1_at_half: f64,
    /// highest threshold keeping recall at 0.95 or more
    pub threshold_for_recall_95: Option<f64>,
    #[serde(default)]
    pub roc_auc: Option<f64>,
}
