//! Headless commands (clap). Every command prints JSON with `--json` for scripts.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use crate::engine::generate::{build_prompt, generate, SamplingParams};
use crate::model::{self, discover, LoadOptions};

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
    /// Download a model by hub id (e.g. Qwen/Qwen2-0.5B-Instruct) into the Hugging Face cache.
    Download {
        /// Hub id, e.g. Qwen/Qwen2-0.5B-Instruct.
        id: String,
    },
    /// Follow live conversations turn by turn from standard input and warn in time: one line
    /// (or JSON object) per turn with P(fraud) and the alert state.
    Monitor(MonitorArgs),
    /// Serve the classifier over HTTP: classify, conversation turns, OpenAI-style chat.
    Serve(ServeArgs),
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
pub struct ModelArgs {
    /// Model folder, hub id (looked up in the caches), or .gguf file.
    #[arg(long)]
    pub model: String,
    /// For GGUF: keep weights quantized (fast path). Default: dequantized f32 (exact path).
    #[arg(long)]
    pub quantized: bool,
    /// f32 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

impl ModelArgs {
    pub fn options(&self) -> Result<LoadOptions> {
        let dtype = match self.dtype.as_str() {
            "f32" => DType::F32,
            "bf16" => DType::BF16,
            d => bail!("--dtype {d}: use f32 or bf16"),
        };
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
    /// Continue the run in --out (or the session's newest run) from its newest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// One JSON object per step and a summary, for scripts.
    #[arg(long)]
    pub json: bool,
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

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        None => crate::tui::run(&cli.session, &cli.models_dir),
        Some(Command::Models { json }) => cmd_models(&cli.models_dir, json),
        Some(Command::Probe(a)) => cmd_probe(a, &cli.session),
        Some(Command::Logits(a)) => cmd_logits(a),
        Some(Command::Train(a)) => cmd_train(*a, &cli.session),
        Some(Command::Eval(a)) => cmd_eval(a, &cli.session),
        Some(Command::Merge {
            model,
            adapter,
            out,
        }) => cmd_merge(&model, &adapter, &out),
        Some(Command::Data { cmd }) => crate::cli_data::run(cmd, &cli.session),
        Some(Command::Label { dataset, list }) => {
            crate::cli_data::label(&dataset, list, &cli.session)
        }
        Some(Command::Sessions { json }) => crate::cli_data::sessions(json),
        Some(Command::Convert { gguf, out }) => cmd_convert(&gguf, &out),
        Some(Command::DemoModel { out, gguf }) => cmd_demo(&out, gguf),
        Some(Command::Monitor(a)) => crate::cli_live::monitor(a),
        Some(Command::Serve(a)) => crate::serve::run(a),
        Some(Command::Download { id }) => {
            install_stop_signals();
            let cancel = AtomicBool::new(false);
            let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let path = model::download::download(&id, &cancel, &mut |p| {
                if STOP_SIGNAL.load(std::sync::atomic::Ordering::SeqCst) {
                    cancel.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                if tty {
                    eprint!("\r{}\x1b[K", model::download::bar(p, 30));
                }
            });
            if tty {
                eprintln!();
            }
            println!("downloaded {id} to {}", path?.display());
            Ok(())
        }
    }
}

fn prompt_text(prompt: &Option<String>, file: &Option<PathBuf>) -> Result<String> {
    match (prompt, file) {
        (Some(p), _) => Ok(p.clone()),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("{}: cannot read prompt", f.display())),
        (None, None) => bail!("give --prompt or --prompt-file"),
    }
}

fn human_bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.1} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.0} MB", n / 1e6)
    } else {
        format!("{:.0} kB", n / 1e3)
    }
}

fn cmd_models(extra: &[PathBuf], json: bool) -> Result<()> {
    let models = discover::discover(extra);
    if json {
        println!("{}", serde_json::to_string_pretty(&models)?);
        return Ok(());
    }
    if models.is_empty() {
        println!("No models found. fraudlab looks in:");
        println!(
            "  {} (Hugging Face cache)",
            model::loader::hf_cache_dir().display()
        );
        println!(
            "  {} (ModelScope cache)",
            model::loader::modelscope_cache_dir().display()
        );
        println!("  --models-dir DIR and FRAUDLAB_MODELS (folders with config.json, .gguf files)");
        println!("Try `fraudlab demo-model` for a tiny offline demo model.");
        return Ok(());
    }
    println!(
        "{:<40} {:<8} {:<6} {:<9} {:<22} {:>12} {:>9}",
        "name", "family", "size", "variant", "format", "parameters", "disk"
    );
    for m in models {
        println!(
            "{:<40} {:<8} {:<6} {:<9} {:<22} {:>12} {:>9}{}",
            m.name,
            m.family,
            m.size,
            m.variant,
            m.format,
            m.parameters,
            human_bytes(m.disk_bytes),
            m.problem.map(|p| format!("  ! {p}")).unwrap_or_default()
        );
        println!("    {}", m.path.display());
    }
    Ok(())
}

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

fn cmd_probe(a: ProbeArgs, session: &str) -> Result<()> {
    let lm = load_with_adapter(&a.model, a.adapter.as_deref())?;
    let prompt = build_prompt(
        &lm.tokenizer,
        a.system.as_deref(),
        &prompt_text(&a.prompt, &a.prompt_file)?,
        a.raw,
    )?;
    let ids = lm.tokenizer.encode(&prompt)?;
    let params = SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
        max_tokens: a.max_tokens,
    };
    let cancel = AtomicBool::new(false);
    let json = a.json;
    let mut stdout = std::io::stdout();
    let g = generate(&lm, &ids, &params, &cancel, &mut |piece| {
        if !json {
            let _ = write!(stdout, "{piece}");
            let _ = stdout.flush();
        }
    })?;
    let record = json!({
        "time": crate::data::fsutil::rfc3339(crate::data::fsutil::now_unix()),
        "model": a.model.model,
        "adapter": a.adapter,
        "system": a.system,
        "prompt": prompt_text(&a.prompt, &a.prompt_file)?,
        "raw": a.raw,
        "params": params,
        "output": g.text,
        "prompt_tokens": g.prompt_tokens,
        "generated_tokens": g.generated_tokens,
        "ttft_s": g.ttft_s,
        "decode_tok_s": g.decode_tok_s,
    });
    if let Err(e) = open_session(session).and_then(|s| s.append_probe(&record)) {
        eprintln!("warning: the probe was not saved to the session: {e:#}");
    }
    if json {
        println!(
            "{}",
            json!({
                "text": g.text,
                "prompt_tokens": g.prompt_tokens,
                "generated_tokens": g.generated_tokens,
                "load_s": lm.load_s,
                "ttft_s": g.ttft_s,
                "prefill_tok_s": g.prefill_tok_s,
                "decode_tok_s": g.decode_tok_s,
                "stop": g.stop,
            })
        );
    } else {
        println!();
        eprintln!(
            "[{} prompt tokens, {} generated; load {:.2}s, prefill {:.1} tok/s, decode {:.1} tok/s]",
            g.prompt_tokens, g.generated_tokens, lm.load_s, g.prefill_tok_s, g.decode_tok_s
        );
    }
    Ok(())
}

/// Top-k (id, logit) of a logits vector, highest first.
pub fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut v: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| (i as u32, x))
        .collect();
    v.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
    v.truncate(k);
    v
}

fn cmd_logits(a: LogitsArgs) -> Result<()> {
    let lm = load_with_adapter(&a.model, a.adapter.as_deref())?;
    let prompt = build_prompt(
        &lm.tokenizer,
        None,
        &prompt_text(&a.prompt, &a.prompt_file)?,
        a.raw,
    )?;
    let ids = lm.tokenizer.encode(&prompt)?;
    if ids.is_empty() {
        bail!("the prompt is empty");
    }
    if ids.len() > lm.model.cfg.max_position_embeddings {
        bail!(
            "the prompt has {} tokens, longer than the model's context of {} tokens",
            ids.len(),
            lm.model.cfg.max_position_embeddings
        );
    }
    let input = Tensor::new(ids.as_slice(), &lm.model.device)?.unsqueeze(0)?;
    let logits: Vec<f32> = lm
        .model
        .forward_last(&input, None, None)?
        .squeeze(0)?
        .to_vec1()?;
    let top = top_k(&logits, a.top);
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = m + logits
        .iter()
        .map(|&x| (x as f64 - m).exp())
        .sum::<f64>()
        .ln();
    let top_json: Vec<_> = top
        .iter()
        .map(|(id, l)| json!({"id": id, "token": lm.tokenizer.token_text(*id), "logit": l}))
        .collect();
    if a.json {
        println!(
            "{}",
            json!({"token_ids": ids, "top": top_json, "logsumexp": lse})
        );
    } else {
        println!("token ids ({}): {:?}", ids.len(), ids);
        for (id, l) in top {
            println!("{:>8} {:>10.4}  {:?}", id, l, lm.tokenizer.token_text(id));
        }
    }
    Ok(())
}

fn cmd_convert(gguf: &std::path::Path, out: &std::path::Path) -> Result<()> {
    let info = model::convert::gguf_to_hf(gguf, out)?;
    println!("{info}");
    Ok(())
}

fn cmd_demo(out: &std::path::Path, gguf: bool) -> Result<()> {
    model::tiny::write_tiny_model(out, &model::tiny::TinySpec::default())
        .with_context(|| format!("{}: cannot write the demo model", out.display()))?;
    println!(
        "wrote a tiny random demo model (not a real model: answers are noise) to {}",
        out.display()
    );
    if gguf {
        let f = out.with_extension("gguf");
        model::tiny::write_gguf(out, &f, candle_core::quantized::GgmlDType::Q8_0)?;
        println!("wrote {}", f.display());
    }
    Ok(())
}

fn cmd_train(a: TrainArgs, session: &str) -> Result<()> {
    use crate::engine::train::{train, TrainConfig, TrainControl, TrainEvent};
    let targets: Vec<String> = a
        .target
        .split(',')
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    let sess = open_session(session)?;
    let out = match (&a.out, a.resume) {
        (Some(o), _) => o.clone(),
        (None, true) => {
            let runs = sess.list_runs()?;
            let last = runs
                .last()
                .with_context(|| format!("session `{session}` has no run to resume"))?;
            sess.run_dir(last)
        }
        (None, false) => sess.run_dir(&sess.new_run_id()?),
    };
    let tc = TrainConfig {
        model: a.model.clone(),
        data: a.data.clone(),
        val: a.val.clone(),
        val_split: a.val_split,
        out_dir: out,
        full: a.full,
        lora: model::adapter::LoraSpec {
            r: a.lora_r,
            lora_alpha: a.lora_alpha,
            lora_dropout: a.lora_dropout,
            target_modules: targets,
            use_rslora: false,
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
        ..TrainConfig::default()
    };
    let control = TrainControl::default();
    // Ctrl-C (SIGINT) or SIGTERM stops after the current step with a checkpoint and the adapter.
    install_stop_signals();
    let json = a.json;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let summary = train(&tc, &control, &mut |e| {
        if STOP_SIGNAL.load(std::sync::atomic::Ordering::SeqCst) {
            control
                .stop
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        match e {
            TrainEvent::Step(m) => {
                if json {
                    println!("{}", serde_json::to_string(&m).unwrap_or_default());
                } else {
                    let w = 30;
                    let done = (m.step * w / m.total_steps.max(1)).min(w);
                    let line = format!(
                        "[{}{}] step {}/{} loss {:.4}{} lr {:.2e} {:.1}s/step {:.0} tok/s ETA {}",
                        "#".repeat(done),
                        ".".repeat(w - done),
                        m.step,
                        m.total_steps,
                        m.loss,
                        m.eval_loss
                            .map(|e| format!(" eval {e:.4}"))
                            .unwrap_or_default(),
                        m.lr,
                        m.step_s,
                        m.tokens_per_s,
                        fmt_secs(m.eta_s)
                    );
                    if tty {
                        eprint!("\r{line}\x1b[K");
                    } else {
                        eprintln!("{line}");
                    }
                }
            }
            TrainEvent::Started {
                run_dir,
                total_steps,
                start_step,
                train_samples,
                val_samples,
                estimate_mib,
            } => {
                if !json {
                    eprintln!(
                    "training in {} : {train_samples} train / {val_samples} val samples, steps {start_step}..{total_steps}, ~{:.1} GiB",
                    run_dir.display(),
                    estimate_mib / 1024.0
                );
                }
            }
            TrainEvent::Log(l) => {
                if !json {
                    eprintln!("{l}");
                }
            }
            TrainEvent::Checkpoint { .. }
            | TrainEvent::Eval { .. }
            | TrainEvent::Paused { .. }
            | TrainEvent::Resumed { .. } => {}
            TrainEvent::Finished(_) => {
                if tty && !json {
                    eprintln!();
                }
            }
        }
    })?;
    if json {
        println!("{}", json!({"finished": summary}));
    } else {
        eprintln!(
            "{} after {} steps; output in {}",
            summary.end,
            summary.steps,
            summary.output_dir.display()
        );
    }
    Ok(())
}

static STOP_SIGNAL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP_SIGNAL.store(true, std::sync::atomic::Ordering::SeqCst);
}

fn install_stop_signals() {
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

pub fn fmt_secs(s: f64) -> String {
    if !s.is_finite() {
        return "?".into();
    }
    let s = s as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn eval_targets(models: &[String], adapters: &[String]) -> Vec<crate::engine::eval::EvalTarget> {
    use crate::engine::eval::EvalTarget;
    let adapter = |a: &str| {
        if a == "-" || a.is_empty() {
            None
        } else {
            Some(PathBuf::from(a))
        }
    };
    if models.len() == 1 && adapters.len() > 1 {
        return adapters
            .iter()
            .map(|a| EvalTarget {
                model: models[0].clone(),
                adapter: adapter(a),
            })
            .collect();
    }
    models
        .iter()
        .enumerate()
        .map(|(i, m)| EvalTarget {
            model: m.clone(),
            adapter: adapters.get(i).and_then(|a| adapter(a)),
        })
        .collect()
}

fn cmd_eval(a: EvalArgs, session: &str) -> Result<()> {
    use crate::engine::eval::{evaluate, EvalConfig};
    let sess = open_session(session)?;
    let cfg = EvalConfig {
        targets: eval_targets(&a.model, &a.adapter),
        data: a.data.clone(),
        limit: a.limit,
        mode: a.mode.parse()?,
        batch: a.batch,
        threshold: a.threshold.unwrap_or(0.5),
        adapter_thresholds: a.threshold.is_none(),
        consecutive: a.consecutive.unwrap_or(1),
        anonymize_speakers: a.anonymize_speakers,
        max_tokens: a.max_tokens,
        quantized: a.quantized,
        out_dir: Some(sess.eval_dir(&sess.new_eval_id()?)),
    };
    if let Some(k) = a.folds {
        let recipe = match &a.recipe {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("{}: cannot read the recipe", p.display()))?;
                Some(
                    serde_json::from_str::<crate::engine::train::TrainConfig>(&text).with_context(
                        || format!("{}: not a training config (a run's config.json)", p.display()),
                    )?,
                )
            }
            None => None,
        };
        return crate::cli_data::kfold_eval(&cfg, k, recipe.as_ref(), a.json);
    }
    let cancel = AtomicBool::new(false);
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let results = evaluate(&cfg, &cancel, &mut |m, d, n| {
        if tty && !a.json {
            eprint!("\r{m}: {d}/{n}\x1b[K");
        }
    })?;
    if tty && !a.json {
        eprintln!();
    }
    if a.json {
        for r in &results {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        println!(
            "{:<44} {:>6} {:>9} {:>7} {:>6} {:>8} {:>7} {:>7} {:>5} {:>5} {:>5} {:>5} {:>6} {:>9}",
            "model / adapter",
            "n",
            "precision",
            "recall",
            "f1",
            "accuracy",
            "roc_auc",
            "pr_auc",
            "tp",
            "fp",
            "tn",
            "fn",
            "unpars",
            "samples/s"
        );
        for r in &results {
            let m = &r.metrics;
            let name = match &r.adapter {
                Some(ad) => format!("{} + {}", r.model, ad.display()),
                None => r.model.clone(),
            };
            let opt = |x: Option<f64>| x.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into());
            println!(
                "{:<44} {:>6} {:>9.3} {:>7.3} {:>6.3} {:>8.3} {:>7} {:>7} {:>5} {:>5} {:>5} {:>5} {:>6} {:>9.2}",
                name, m.n, m.precision, m.recall, m.f1, m.accuracy, opt(m.roc_auc), opt(m.pr_auc), m.tp, m.fp, m.tn, m.fn_, m.unparseable, r.samples_per_s
            );
        }
        for r in &results {
            if let Some(rule) = &r.rule {
                if r.stream.is_none() {
                    println!(
                        "{}: threshold {:.4} ({})",
                        r.adapter.as_ref().map(|a| a.display().to_string()).unwrap_or_else(|| r.model.clone()),
                        rule.threshold,
                        rule.source
                    );
                }
            }
            if let Some(st) = &r.stream {
                print_stream(r, st);
            }
        }
        if let Some(d) = &cfg.out_dir {
            println!("predictions in {}", d.display());
        }
    }
    if let Some(target) = a.calibrate {
        calibrate_stream(&results, target, a.json)?;
    }
    Ok(())
}

fn print_stream(r: &crate::engine::eval::EvalResult, st: &crate::engine::eval::StreamOutcome) {
    let s = &st.report;
    let opt = |x: Option<f64>| x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
    let name = match &r.adapter {
        Some(ad) => format!("{} + {}", r.model, ad.display()),
        None => r.model.clone(),
    };
    println!(
        "\nstream: {name}\n  rule: alert once {} turn(s) in a row have P(fraud) >= {:.3} ({})",
        s.consecutive, s.threshold, st.threshold_source
    );
    println!(
        "  detection rate {:.3} ({} of {} fraud dialogues); false alarms {:.3} ({} of {} honest dialogues)",
        s.detection_rate, s.detected, s.fraud_dialogues, s.false_alarm_rate, s.false_alarms, s.normal_dialogues
    );
    println!(
        "  turns to the alert: mean {} median {}; share of the dialogue: {}; from the fraudster's first turn: {}",
        opt(s.mean_turns_to_alert),
        opt(s.median_turns_to_alert),
        opt(s.mean_share_to_alert),
        opt(s.mean_turns_from_fraudster)
    );
    println!("  {} turns scored, {:.1} turns/s; detection rate by turn:", st.turns_scored, st.turns_per_s);
    print!("{}", crate::engine::stream_eval::detection_chart(s, 40));
}

/// `eval --mode stream --calibrate T`: the rule that keeps false alarms under T, saved in
/// each evaluated adapter's fraudlab.json.
fn calibrate_stream(results: &[crate::engine::eval::EvalResult], target: f64, json: bool) -> Result<()> {
    use crate::model::adapter::{AdapterMeta, StreamRule};
    if !(0.0..=1.0).contains(&target) {
        bail!("--calibrate {target}: the false-alarm target is a share between 0 and 1");
    }
    for r in results {
        let Some(st) = &r.stream else {
            bail!("--calibrate needs --mode stream");
        };
        let Some(best) = crate::engine::stream_eval::calibrate(&st.risks, target, 4) else {
            bail!("--calibrate needs honest (label false) dialogues in the data");
        };
        let saved = match &r.adapter {
            Some(dir) => {
                let mut meta = AdapterMeta::read(dir)?.unwrap_or_default();
                meta.stream = Some(StreamRule {
                    threshold: best.threshold,
                    consecutive: best.consecutive,
                });
                meta.write(dir)?;
                Some(dir.join(crate::model::adapter::META_FILE))
            }
            None => None,
        };
        if json {
            println!(
                "{}",
                json!({"calibrated": best, "target_false_alarm_rate": target, "saved": saved})
            );
        } else {
            println!(
                "\ncalibrated (false alarms <= {:.1}%): threshold {:.4}, {} turn(s) in a row -> detection {:.3}, false alarms {:.3}, mean turns to alert {}",
                target * 100.0,
                best.threshold,
                best.consecutive,
                best.detection_rate,
                best.false_alarm_rate,
                best.mean_turns_to_alert.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into())
            );
            match saved {
                Some(p) => println!("saved in {}", p.display()),
                None => println!("no adapter: nothing saved (pass --adapter to store the rule with it)"),
            }
        }
    }
    Ok(())
}

fn cmd_merge(m: &ModelArgs, adapter: &std::path::Path, out: &std::path::Path) -> Result<()> {
    if m.quantized {
        bail!("merge writes dense weights; load the model without --quantized");
    }
    let mut lm = load_with_adapter(m, Some(adapter))?;
    model::adapter::merge_lora(&mut lm.model)?;
    model::convert::write_hf_folder(&lm.model, &lm.location, out)?;
    println!(
        "merged {} + {} into {}",
        m.model,
        adapter.display(),
        out.display()
    );
    Ok(())
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
                if s.get_about().is_none() && s.get_long_about().is_none() && s.get_name() != "help" {
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
