//! Every command's arguments (clap derive), in one place.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

use crate::model::{self, LoadOptions};

#[derive(Parser, Debug)]
#[command(
    name = "fraudlab",
    version,
    about = "A terminal workbench for small LLM fraud-dialogue classifiers"
)]
pub struct Cli {
    /// Session to open or record into (sessions/<name>/).
    #[arg(long, global = true, default_value = "default")]
    pub session: String,
    /// Extra folders to search for models (also FRAUDLAB_MODELS, ':'-separated).
    #[arg(long = "models-dir", global = true)]
    pub models_dir: Vec<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List local models (HF cache, ModelScope cache, --models-dir folders and .gguf files).
    Models {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run a prompt through a model and stream the answer.
    Probe(ProbeArgs),
    /// Token ids and top last-position logits of a prompt (for parity checks).
    Logits(LogitsArgs),
    /// Write a GGUF model as a standard Hugging Face folder.
    Convert {
        /// The .gguf file to convert.
        #[arg(long)]
        gguf: PathBuf,
        /// Folder to write the Hugging Face model into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Fine-tune a model (LoRA or full) on a dataset, with checkpoints and live metrics.
    Train(Box<TrainArgs>),
    /// Search LoRA recipes (learning rate, rank, layer range) by successive halving within a
    /// time budget, selecting on validation only; the best adapter with its threshold.
    Tune(Box<TuneArgs>),
    /// Precision / recall / F1 of models (and adapters) on a labelled dataset.
    Eval(EvalArgs),
    /// Write base model + LoRA adapter as one standalone Hugging Face folder.
    Merge {
        #[command(flatten)]
        model: ModelArgs,
        /// LoRA adapter folder (PEFT layout).
        #[arg(long)]
        adapter: PathBuf,
        /// Folder to write the merged model into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a model, an adapter folded in, as one GGUF file for llama.cpp and ollama (or as
    /// a Hugging Face folder, as `merge` does).
    Export(ExportArgs),
    /// Dataset tools: stats, split, balance, window, export, show.
    Data {
        #[command(subcommand)]
        cmd: DataCmd,
    },
    /// Hand-label headlessly: reads `ID fraud|normal|undo [SPEAKER]` lines on stdin and prints
    /// `ok ID` once each label is durable on disk.
    Label {
        /// Dataset whose samples are labelled (its journal is under the session).
        #[arg(long)]
        dataset: PathBuf,
        /// Print the current labels as JSON lines instead.
        #[arg(long)]
        list: bool,
    },
    /// List the sessions and what they hold.
    Sessions {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Download a model by hub id (e.g. Qwen/Qwen2-0.5B-Instruct) into the Hugging Face cache,
    /// or with `ms:` (ms:Qwen/Qwen2-0.5B-Instruct) from ModelScope into the ModelScope cache.
    Download {
        /// Hub id, e.g. Qwen/Qwen2-0.5B-Instruct, or ms:Qwen/Qwen2-0.5B-Instruct for ModelScope.
        id: String,
        /// Branch, tag or commit (default: main on Hugging Face, master on ModelScope).
        #[arg(long)]
        revision: Option<String>,
        /// One JSON object with the result on stdout, no progress bar.
        #[arg(long)]
        json: bool,
    },
    /// Follow live conversations turn by turn from standard input and warn in time: one line
    /// (or JSON object) per turn with P(fraud) and the alert state.
    Monitor(MonitorArgs),
    /// Serve the classifier over HTTP: classify, conversation turns, OpenAI-style chat.
    Serve(ServeArgs),
    /// Hand a run's settings to a multi-GPU trainer: a folder with the dataset in its format,
    /// its training YAML, the commands and what it cannot express (README.md inside).
    Handoff {
        #[command(subcommand)]
        cmd: HandoffCmd,
    },
    /// The session's runs: import an adapter trained elsewhere (LLaMA-Factory, peft).
    Runs {
        #[command(subcommand)]
        cmd: RunsCmd,
    },
    /// Run the capability suite (sessions/<name>/suite.jsonl, or the built-in one) over one or
    /// more models: a pass/fail matrix, saved in the session.
    Suite(SuiteArgs),
    /// Write a tiny random demo model (offline, seconds) to try every pane.
    DemoModel {
        /// Folder to write the tiny model into.
        #[arg(long, default_value = "models/fraudlab-demo-tiny")]
        out: PathBuf,
        /// Also write a GGUF copy beside it.
        #[arg(long)]
        gguf: bool,
    },
}

/// How a live conversation is followed (monitor and serve).
#[derive(Args, Debug, Clone)]
pub struct LiveArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// LoRA adapter folder (its fraudlab.json gives the prompt and thresholds).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Per-turn alert threshold on P(fraud). Default: the adapter's streaming threshold, else
    /// its whole-dialogue threshold, else 0.5.
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Alert once this many turns in a row are at or above the threshold. Default: the
    /// adapter's streaming K, else 1.
    #[arg(long)]
    pub consecutive: Option<usize>,
    /// Most tokens a conversation's prompt holds; past it the oldest turns leave the prompt
    /// (system prompt and instruction stay), re-prefilled once per slide.
    #[arg(long, default_value_t = crate::engine::monitor::DEFAULT_WINDOW)]
    pub window: usize,
    /// File with the instruction put before the dialogue. Default: the adapter's, else the
    /// standard fraud-dialogue instruction.
    #[arg(long = "instruction-file")]
    pub instruction_file: Option<PathBuf>,
    /// Conversations whose caches are kept at once (the least recently used is evicted).
    #[arg(long = "max-conversations", default_value_t = 8)]
    pub max_conversations: usize,
}

impl LiveArgs {
    /// The monitor settings these options and the adapter's metadata give, and where the
    /// threshold came from.
    pub fn monitor_config(
        &self,
    ) -> Result<(
        crate::engine::monitor::MonitorConfig,
        crate::engine::monitor::ThresholdSource,
    )> {
        use crate::engine::monitor::{MonitorConfig, ThresholdSource};
        let meta = crate::model::adapter::AdapterMeta::for_adapter(self.adapter.as_deref())?;
        let mut cfg = MonitorConfig::from_meta(&meta);
        let mut source = MonitorConfig::meta_threshold(&meta).1;
        if let Some(t) = self.threshold {
            cfg.threshold = t;
            source = ThresholdSource::Given;
        }
        if let Some(k) = self.consecutive {
            cfg.consecutive = k;
        }
        cfg.window = self.window;
        cfg.max_conversations = self.max_conversations;
        if let Some(f) = &self.instruction_file {
            cfg.instruction = std::fs::read_to_string(f)
                .with_context(|| format!("{}: cannot read the instruction", f.display()))?;
        }
        cfg.validate().context("monitor settings")?;
        Ok((cfg, source))
    }

    /// Loads the model (and adapter).
    pub fn load(&self) -> Result<crate::model::LoadedModel> {
        let mut lm = model::load(&self.model.model, self.model.options()?)?;
        if let Some(a) = &self.adapter {
            crate::model::adapter::load_adapter(&mut lm.model, a)?;
        }
        Ok(lm)
    }
}

#[derive(Args, Debug, Clone)]
pub struct MonitorArgs {
    #[command(flatten)]
    pub live: LiveArgs,
    /// Once a conversation's alert fires, ask the model who the fraudster is and why.
    #[arg(long)]
    pub explain: bool,
    /// One JSON object per turn instead of a readable line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub live: LiveArgs,
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: String,
    /// Requests waiting for the engine at once; more get 503.
    #[arg(long = "queue", default_value_t = 64)]
    pub queue: usize,
    /// Largest request body accepted, in bytes.
    #[arg(long = "max-body", default_value_t = 1 << 20)]
    pub max_body: usize,
}

#[derive(Args, Debug, Clone)]
pub struct ExportArgs {
    /// Model folder, hub id (looked up in the caches), or .gguf file.
    #[arg(long)]
    pub model: String,
    /// LoRA adapter folder (PEFT layout) to fold into the weights.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// gguf (one file for llama.cpp and ollama) or hf (a Hugging Face folder, f32).
    #[arg(long, default_value = "gguf")]
    pub format: String,
    /// The .gguf file (or, for hf, the folder) to write.
    #[arg(long)]
    pub out: PathBuf,
    /// GGUF weight type: f16 (default), q8_0 or f32. Norms and biases stay f32.
    #[arg(long = "type", value_name = "TYPE")]
    pub ty: Option<String>,
    /// `general.name` in the GGUF metadata (default: the model's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Print JSON instead of a sentence.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model folder, hub id (looked up in the caches), or .gguf file.
    #[arg(long)]
    pub model: String,
    #[command(flatten)]
    pub load: LoadArgs,
}

impl ModelArgs {
    pub fn options(&self) -> Result<LoadOptions> {
        self.load.options()
    }
}

/// How a command loads its model(s) (`--quantized`, `--dtype`).
#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// For GGUF: keep weights quantized (fast path). Default: dequantized f32 (exact path).
    #[arg(long)]
    pub quantized: bool,
    /// Dense weights in f32 or bf16 (half the memory; computed in f32, on bf16 dot products
    /// where the CPU has them).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

impl LoadArgs {
    pub fn options(&self) -> Result<LoadOptions> {
        let dtype = crate::model::loader::parse_dtype(&self.dtype).context("--dtype")?;
        Ok(LoadOptions {
            dtype,
            quantized: self.quantized,
        })
    }
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Base model: folder, hub id (looked up in the caches) or .gguf file.
    #[arg(long)]
    pub model: String,
    /// Frozen base weights in f32 or bf16 (LoRA weights, gradients and optimizer state stay
    /// f32; bf16 needs LoRA, not --full).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Training data (fraud JSONL, Alpaca, chat, ShareGPT, text, turn-level CSV).
    #[arg(long)]
    pub data: PathBuf,
    /// Validation file (validation loss, best checkpoint, the decision threshold).
    #[arg(long, conflicts_with = "val_split")]
    pub val: Option<PathBuf>,
    /// Hold out this share of --data (stratified by label) for validation instead.
    #[arg(long = "val-split", default_value_t = 0.0)]
    pub val_split: f64,
    /// Run folder (default: sessions/<session>/runs/<run-id>/; with --resume: the newest run).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// LoRA rank.
    #[arg(long = "lora-r", default_value_t = 8)]
    pub lora_r: usize,
    /// LoRA alpha (the update is scaled by alpha / r).
    #[arg(long = "lora-alpha", default_value_t = 16.0)]
    pub lora_alpha: f64,
    /// Dropout on the LoRA input during training.
    #[arg(long = "lora-dropout", default_value_t = 0.05)]
    pub lora_dropout: f32,
    /// Comma-separated projections (PEFT names).
    #[arg(
        long,
        default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    )]
    pub target: String,
    /// Decoder layers that get LoRA (e.g. 12-23, or 0-3,20-23; default all). Layers below
    /// the lowest one are frozen: no backward pass there, and their output is cached after
    /// the first pass over each sample.
    #[arg(long, conflicts_with = "full")]
    pub layers: Option<String>,
    /// Full fine-tuning (all weights) instead of LoRA.
    #[arg(long)]
    pub full: bool,
    /// Peak learning rate (AdamW).
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// Passes over the training data.
    #[arg(long, default_value_t = 3, conflicts_with = "max_steps")]
    pub epochs: usize,
    /// Stop after this many optimizer steps instead of --epochs.
    #[arg(long = "max-steps")]
    pub max_steps: Option<usize>,
    /// Samples per micro-batch (packed into one row, no padding).
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Micro-batches per optimizer step (effective batch = batch x grad-accum).
    #[arg(long = "grad-accum", default_value_t = 4)]
    pub grad_accum: usize,
    /// Longest example in tokens; longer prompts lose their middle (the answer is kept).
    #[arg(long = "max-len", default_value_t = 512)]
    pub max_len: usize,
    /// Learning-rate schedule after warmup: constant, linear or cosine.
    #[arg(long, default_value = "cosine")]
    pub schedule: String,
    /// Warmup as a share of the optimizer steps.
    #[arg(long = "warmup-ratio", default_value_t = 0.1)]
    pub warmup_ratio: f64,
    /// Warmup in optimizer steps (overrides --warmup-ratio).
    #[arg(long = "warmup-steps")]
    pub warmup_steps: Option<usize>,
    /// AdamW weight decay.
    #[arg(long = "weight-decay", default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Clip the gradient norm to this (0: no clipping).
    #[arg(long = "max-grad-norm", default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Seed of LoRA initialisation, shuffling, dropout and the validation split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Checkpoint every N optimizer steps (0: at the end, on stop and at each best).
    #[arg(long = "save-every", default_value_t = 0)]
    pub save_every: usize,
    /// Validation loss every N optimizer steps (0: at the end of each epoch).
    #[arg(long = "eval-every", default_value_t = 0)]
    pub eval_every: usize,
    /// Stop after N evaluations without improvement of the validation loss.
    #[arg(long = "early-stopping")]
    pub early_stopping: Option<usize>,
    /// Use only the first N samples of --data.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Also train the model to give fraud_speaker and reason in its JSON answer.
    #[arg(long = "answer-fields")]
    pub answer_fields: bool,
    /// Build prompts with speakers renamed A, B… per dialogue (hides names such as 诈骗者
    /// that give the label away); recorded in the adapter's fraudlab.json.
    #[arg(long = "anonymize-speakers")]
    pub anonymize_speakers: bool,
    /// Fit the run in this time from its first step, validation included (e.g. 15m, 1h):
    /// the step count, warmup and decay are planned from the first step's measured cost
    /// (--epochs is then ignored; --max-steps still caps it).
    #[arg(long = "time-budget", value_parser = parse_budget)]
    pub time_budget: Option<f64>,
    /// Memory for the frozen-prefix cache in MiB (past it, a spill file in the run folder;
    /// 0 turns it off). Default: a quarter of the available memory, at most 8 GiB.
    #[arg(long = "frozen-cache-mib")]
    pub frozen_cache_mib: Option<usize>,
    /// Continue the run in --out (or the session's newest run) from its newest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// One JSON object per step and a summary, for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum HandoffCmd {
    /// A LLaMA-Factory folder: dataset (ShareGPT) + dataset_info.json + train.yaml + README.md.
    #[command(
        mut_arg("model", |a| a.required(false).default_value("").hide_default_value(true)),
        // "-": not given (a path value cannot be empty)
        mut_arg("data", |a| a.required(false).default_value("-").hide_default_value(true)),
        mut_arg("out", |a| a.required(true).help("Folder to write the hand-off into")),
        mut_arg("json", |a| a.help("Print the result as one JSON object"))
    )]
    Llamafactory(HandoffArgs),
}

#[derive(Args, Debug)]
pub struct HandoffArgs {
    /// The run's settings, as `train` takes them (--model and --data are required unless
    /// --run gives them).
    #[command(flatten)]
    pub train: TrainArgs,
    /// Repeat this run's settings (its config.json); --model, --data and --val override them.
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Write over the files of an existing hand-off folder.
    #[arg(long)]
    pub force: bool,
}

#[derive(Subcommand, Debug)]
pub enum RunsCmd {
    /// Import an adapter trained elsewhere (LLaMA-Factory's output folder, a hand-off folder,
    /// or a PEFT LoRA folder) as a run of the session, with the trainer's logged losses.
    Import {
        /// The folder holding adapter_config.json (or a hand-off folder with output/).
        dir: PathBuf,
        /// Run id (default: a time stamp).
        #[arg(long)]
        name: Option<String>,
        /// The base model as it is found here (default: the hand-off's model, else the
        /// adapter's base_model_name_or_path).
        #[arg(long)]
        model: Option<String>,
        /// Print the result as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct SuiteArgs {
    /// Model(s) to run the suite on; repeat for a matrix (sizes, base vs instruct).
    #[arg(long, required_unless_present = "from")]
    pub model: Vec<String>,
    /// Adapter(s), paired with --model in order ("-" for none).
    #[arg(long)]
    pub adapter: Vec<String>,
    /// Answer length cap for cases that do not set `max_tokens`.
    #[arg(long = "max-tokens", default_value_t = crate::data::suite::DEFAULT_MAX_TOKENS)]
    pub max_tokens: usize,
    /// Suite file (JSONL, one case a line). Default: the session's suite.jsonl, else the
    /// built-in suite.
    #[arg(long)]
    pub suite: Option<PathBuf>,
    /// One JSON line per model and case instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Print the matrix as `md` or `csv` instead of the table (with --from: a saved one).
    #[arg(long)]
    pub format: Option<String>,
    /// Export a saved result (sessions/<name>/suites/<id>.json) instead of running.
    #[arg(long, conflicts_with = "suite")]
    pub from: Option<PathBuf>,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Args, Debug)]
pub struct TuneArgs {
    /// The run settings every trial shares (--model, --data, --val or --val-split, --batch,
    /// --max-len…); --time-budget is the whole search's; --lr, --lora-r and --layers come
    /// from the grid.
    #[command(flatten)]
    pub train: TrainArgs,
    /// Learning rates to try (comma-separated).
    #[arg(long = "grid-lr", default_value = "1e-4,2e-4,4e-4")]
    pub grid_lr: String,
    /// LoRA ranks to try (comma-separated).
    #[arg(long = "grid-r", default_value = "8")]
    pub grid_r: String,
    /// Layer ranges to try, separated by `;` (`all` for every layer). Default: every layer,
    /// the upper half and the upper quarter of the model.
    #[arg(long = "grid-layers")]
    pub grid_layers: Option<String>,
    /// Successive halving keeps the best 1/eta of each rung and gives it eta times the time.
    #[arg(long, default_value_t = 3)]
    pub eta: usize,
}

fn parse_budget(s: &str) -> std::result::Result<f64, String> {
    crate::engine::train::parse_duration(s).map_err(|e| e.to_string())
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Model(s); repeat for a side-by-side table.
    #[arg(long, required = true)]
    pub model: Vec<String>,
    /// Adapter(s), paired with --model in order ("-" for none). One model with several
    /// adapters is evaluated with each.
    #[arg(long)]
    pub adapter: Vec<String>,
    /// Labelled dialogues to evaluate on (fraud JSONL or turn-level CSV, or any labelled format).
    #[arg(long)]
    pub data: PathBuf,
    /// Use only the first N labelled samples.
    #[arg(long)]
    pub limit: Option<usize>,
    /// score (P(fraud) of each dialogue), generate (parse a generated answer) or stream
    /// (replay each dialogue turn by turn: how early a fraud is caught, false alarms).
    #[arg(long, default_value = "score")]
    pub mode: String,
    /// Samples per batch (score and generate modes).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// P(fraud) at or above this predicts fraud (per turn in stream mode). Default: each
    /// adapter's saved threshold (fraudlab.json), else 0.5.
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Stream mode: turns in a row at or above the threshold that fire an alert. Default:
    /// the adapter's saved streaming rule, else 1.
    #[arg(long)]
    pub consecutive: Option<usize>,
    /// Stream mode: choose the threshold and K that keep false alarms per honest dialogue
    /// at or under this share (e.g. 0.05), and save them in the adapter's fraudlab.json.
    /// Use a validation split, never a test split.
    #[arg(long, num_args = 0..=1, default_missing_value = "0.05")]
    pub calibrate: Option<f64>,
    /// Generate mode: answer length cap.
    #[arg(long = "max-tokens", default_value_t = 64)]
    pub max_tokens: usize,
    /// Anonymise speakers in the prompts: true or false. Default: as each adapter's
    /// fraudlab.json says (false without an adapter).
    #[arg(long = "anonymize-speakers")]
    pub anonymize_speakers: Option<bool>,
    /// For GGUF: keep weights quantized.
    #[arg(long)]
    pub quantized: bool,
    /// Dense weights in f32 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// k-fold cross-validation: train on k-1 folds, evaluate on the held-out one.
    #[arg(long)]
    pub folds: Option<usize>,
    /// With --folds: train each fold with this training config (a run's config.json: LoRA
    /// settings, lr, epochs, batch…); default: the recipe defaults.
    #[arg(long, requires = "folds")]
    pub recipe: Option<PathBuf>,
    /// One JSON object per model / adapter.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum DataCmd {
    /// Counts per label, length histogram, speakers.
    Stats {
        /// Dataset file.
        file: PathBuf,
        /// Also count tokens with this model's tokenizer.
        #[arg(long)]
        model: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stratified train/val/test split.
    Split {
        /// Dataset file.
        file: PathBuf,
        /// Folder for train.jsonl, val.jsonl and test.jsonl.
        #[arg(long)]
        out: PathBuf,
        /// Share of samples for training.
        #[arg(long, default_value_t = 0.8)]
        train: f64,
        /// Share of samples for validation.
        #[arg(long, default_value_t = 0.1)]
        val: f64,
        /// Share of samples for testing.
        #[arg(long, default_value_t = 0.1)]
        test: f64,
        /// Shuffle seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Rebalance by undersampling the majority label.
    Balance {
        /// Dataset file.
        file: PathBuf,
        /// File to write the balanced samples to.
        #[arg(long)]
        out: PathBuf,
        /// majority : minority ratio to keep
        #[arg(long, default_value_t = 1.0)]
        ratio: f64,
        /// Sampling seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Cut turn-level CSV dialogues into samples by a sliding window of turns.
    Window {
        /// Turn-level CSV file.
        file: PathBuf,
        /// File to write the windows to (fraud JSONL).
        #[arg(long)]
        out: PathBuf,
        /// Most turns per window.
        #[arg(long = "max-turns", default_value_t = 8)]
        max_turns: usize,
        /// Most characters per window.
        #[arg(long = "max-chars", default_value_t = 500)]
        max_chars: usize,
        /// Turns between the starts of two windows.
        #[arg(long, default_value_t = 4)]
        stride: usize,
    },
    /// Write the samples in another format.
    Export {
        /// Dataset file.
        file: PathBuf,
        /// File to write (in --format).
        #[arg(long)]
        out: PathBuf,
        /// fraud, alpaca, chat, sharegpt, text
        #[arg(long, default_value = "fraud")]
        format: String,
        /// Apply the session's hand labels over the dataset's own.
        #[arg(long = "with-labels")]
        with_labels: bool,
    },
    /// Print the samples (with their ids).
    Show {
        /// Dataset file.
        file: PathBuf,
        /// How many samples to show.
        #[arg(long)]
        limit: Option<usize>,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A LoRA adapter (ours or PEFT's) applied to the model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// System prompt (default: none; the chat template may add its own).
    #[arg(long)]
    pub system: Option<String>,
    /// The prompt text (or use --prompt-file).
    #[arg(long, required_unless_present = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the prompt from a file, exactly as written (trailing newlines kept).
    #[arg(long = "prompt-file", conflicts_with = "prompt")]
    pub prompt_file: Option<PathBuf>,
    /// Tokenize the prompt as given (special tokens recognised), no chat template.
    #[arg(long)]
    pub raw: bool,
    /// Most tokens to generate.
    #[arg(long = "max-tokens", default_value_t = 256)]
    pub max_tokens: usize,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Sample from the K most likely tokens only.
    #[arg(long = "top-k")]
    pub top_k: Option<usize>,
    /// Sample from the smallest set of tokens whose probability reaches P.
    #[arg(long = "top-p")]
    pub top_p: Option<f64>,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the answer and timings as JSON instead of streaming text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// LoRA adapter folder to apply.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// The prompt text (or use --prompt-file).
    #[arg(long, required_unless_present = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the prompt from a file, exactly as written (trailing newlines kept).
    #[arg(long = "prompt-file", conflicts_with = "prompt")]
    pub prompt_file: Option<PathBuf>,
    /// Use the prompt as given, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// How many of the top last-position logits to print.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Print JSON (the only output form).
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every subcommand and every flag has a line of `--help`.
    #[test]
    fn every_flag_has_help() {
        fn walk(c: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in c.get_arguments() {
                let id = a.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} --{id}"));
                }
            }
            for s in c.get_subcommands() {
                if s.get_about().is_none() && s.get_long_about().is_none() && s.get_name() != "help"
                {
                    missing.push(format!("{path} {} (no about)", s.get_name()));
                }
                walk(s, &format!("{path} {}", s.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "fraudlab", &mut missing);
        assert!(missing.is_empty(), "flags without help: {missing:#?}");
    }
}
