//! What the engine is told ([`Command`]) and what it reports ([`Event`], [`EngineState`]).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use super::Subject;
use crate::engine::eval::{EvalConfig, EvalResult};
use crate::engine::generate::{Generation, SamplingParams};
use crate::engine::monitor::{Explanation, MonitorConfig, TurnResult};
use crate::engine::train::{TrainConfig, TrainEvent};
use crate::model::LoadOptions;

/// The id of a request (a generation, a scoring, a monitored turn…), chosen by the sender.
pub type RequestId = u64;

/// What a loaded model is, for display.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadedInfo {
    pub key: String,
    pub name: String,
    pub parameters: u64,
    pub layers: usize,
    pub quantized: bool,
    pub adapter: Option<PathBuf>,
    pub load_s: f64,
}

#[derive(Debug, Clone)]
pub enum Command {
    /// Load a model (folder, hub id, .gguf) under `key`, optionally with a LoRA adapter.
    Load {
        key: String,
        spec: String,
        opts: LoadOptions,
        adapter: Option<PathBuf>,
    },
    Unload {
        key: String,
    },
    /// Generate with every model in `keys`, one after the other, streaming tokens.
    Generate {
        request: u64,
        keys: Vec<String>,
        system: Option<String>,
        prompt: String,
        raw: bool,
        params: SamplingParams,
    },
    /// Generate with model `key` after a conversation rendered by its chat template (the
    /// HTTP server's chat completions); the same events as `Generate`.
    Chat {
        request: RequestId,
        key: String,
        messages: Vec<crate::model::ChatMessage>,
        params: SamplingParams,
    },
    /// Fraud probabilities of samples under a loaded model (score mode).
    Score {
        request: u64,
        key: String,
        samples: Vec<crate::data::Sample>,
    },
    /// A training run, on a thread of its own (one run or search at a time; another is
    /// refused). It trains on the loaded model of the same spec when there is one in f32
    /// dense weights, sharing them, and loads its own copy otherwise.
    Train(Box<TrainConfig>),
    /// A recipe search (`fraudlab tune`) over the default grid on the config's settings,
    /// within `budget_s`; its trials report as training runs, one after the other.
    Tune {
        base: Box<TrainConfig>,
        budget_s: f64,
    },
    /// An evaluation, on a thread of its own (one at a time; another is refused), on the
    /// loaded models it names where they were loaded as evaluation loads them.
    Evaluate(Box<EvalConfig>),
    /// Download a model by hub id into the Hugging Face cache.
    Download {
        id: String,
    },
    /// Sets how the model under `key` monitors conversations (forgets the ones it follows).
    /// Without it a model monitors with its adapter's `fraudlab.json`, else the defaults.
    MonitorConfigure {
        key: String,
        cfg: MonitorConfig,
    },
    /// One more turn of a live conversation, scored incrementally.
    MonitorTurn {
        request: RequestId,
        key: String,
        conversation: String,
        speaker: String,
        text: String,
    },
    /// Who the fraudster is and why, asked of the model for a followed conversation.
    MonitorExplain {
        request: RequestId,
        key: String,
        conversation: String,
        max_tokens: usize,
    },
    MonitorEnd {
        key: String,
        conversation: String,
    },
    Shutdown,
}

impl Command {
    /// The request id a command carries, if it has one.
    pub fn request(&self) -> Option<RequestId> {
        match self {
            Self::Generate { request, .. }
            | Self::Chat { request, .. }
            | Self::Score { request, .. }
            | Self::MonitorTurn { request, .. }
            | Self::MonitorExplain { request, .. } => Some(*request),
            _ => None,
        }
    }

    /// Whether someone waits for this command now (a probe, a score, a monitored turn, a
    /// load): background runs wait between their steps while such a command is pending.
    pub fn is_interactive(&self) -> bool {
        matches!(
            self,
            Self::Load { .. }
                | Self::Generate { .. }
                | Self::Chat { .. }
                | Self::Score { .. }
                | Self::MonitorTurn { .. }
                | Self::MonitorExplain { .. }
        )
    }

    /// The background run this command starts, if it starts one.
    pub fn background(&self) -> Option<BackgroundJob> {
        match self {
            Self::Train(_) | Self::Tune { .. } => Some(BackgroundJob::Train),
            Self::Evaluate(_) => Some(BackgroundJob::Eval),
            _ => None,
        }
    }
}

/// What the worker thread (loads, generation, scoring, monitored turns, downloads) does;
/// `Idle` after each of its commands. Background runs report [`Event::Background`] instead.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EngineState {
    Idle,
    Loading,
    Generating,
    Scoring,
    Downloading,
    Monitoring,
    /// The worker thread has ended (it should not: a panic in a command is caught and
    /// reported as that command's error); nothing more will run.
    Stopped,
}

/// A run on a thread of its own, beside the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackgroundJob {
    /// a training run or a recipe search
    Train,
    Eval,
}

/// Why a command was refused before anything of it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// a training run (or a recipe search) is going: one at a time
    TrainingRunning,
    /// an evaluation is going: one at a time
    EvaluationRunning,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::TrainingRunning => {
                "a training run is already going; one at a time (stop it, or wait for its end)"
            }
            Self::EvaluationRunning => {
                "an evaluation is already going; one at a time (cancel it, or wait for its end)"
            }
        })
    }
}

#[derive(Debug, Clone)]
pub enum Event {
    /// What the worker thread does now.
    State(EngineState),
    /// A background run started (`running`), or ended after its last event (its result or
    /// its error), whatever the outcome.
    Background {
        job: BackgroundJob,
        running: bool,
    },
    /// The command of `subject` was refused: nothing of it ran, and what runs goes on.
    Refused {
        subject: Subject,
        reason: Refusal,
    },
    Loaded(LoadedInfo),
    Unloaded {
        key: String,
    },
    /// A piece of streamed text.
    Token {
        request: u64,
        key: String,
        text: String,
    },
    Generated {
        request: u64,
        key: String,
        generation: Generation,
    },
    Scored {
        request: u64,
        key: String,
        probabilities: Vec<(String, f64)>,
    },
    Train(TrainEvent),
    EvalProgress {
        model: String,
        done: usize,
        total: usize,
    },
    EvalDone(Vec<EvalResult>),
    DownloadProgress {
        id: String,
        progress: crate::model::download::DownloadProgress,
    },
    Downloaded {
        id: String,
        path: PathBuf,
    },
    MonitorTurn {
        request: RequestId,
        key: String,
        result: TurnResult,
    },
    Explained {
        request: RequestId,
        key: String,
        explanation: Explanation,
    },
    /// `subject` says what failed, `message` why ("cancelled" when it was cancelled).
    Error {
        subject: Subject,
        message: String,
    },
}

impl Event {
    /// Whether the event may be dropped when the queue is full (a streamed piece of text, a
    /// progress report); results, errors and states never are.
    pub fn droppable(&self) -> bool {
        matches!(
            self,
            Self::Token { .. } | Self::EvalProgress { .. } | Self::DownloadProgress { .. }
        )
    }
}
