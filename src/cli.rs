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
#[command(name = "fraudlab", version, about = "A terminal workbench for small LLM fraud-dialogue classifiers")]
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
        #[arg(long)]
        json: bool,
    },
    /// Run a prompt through a model and stream the answer.
    Probe(ProbeArgs),
    /// Token ids and top last-position logits of a prompt (for parity checks).
    Logits(LogitsArgs),
    /// Write a GGUF model as a standard Hugging Face folder.
    Convert {
        #[arg(long)]
        gguf: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a tiny random demo model (offline, seconds) to try every pane.
    DemoModel {
        #[arg(long, default_value = "models/fraudlab-demo-tiny")]
        out: PathBuf,
        /// Also write a GGUF copy beside it.
        #[arg(long)]
        gguf: bool,
    },
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
        Ok(LoadOptions { dtype, quantized: self.quantized })
    }
}

#[derive(Args, Debug)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
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
    #[arg(long = "max-tokens", default_value_t = 256)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long = "top-k")]
    pub top_k: Option<usize>,
    #[arg(long = "top-p")]
    pub top_p: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt text (or use --prompt-file).
    #[arg(long, required_unless_present = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the prompt from a file, exactly as written (trailing newlines kept).
    #[arg(long = "prompt-file", conflicts_with = "prompt")]
    pub prompt_file: Option<PathBuf>,
    #[arg(long)]
    pub raw: bool,
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        None => bail!("the workbench (TUI) is not built yet; see `fraudlab --help` for the headless commands"),
        Some(Command::Models { json }) => cmd_models(&cli.models_dir, json),
        Some(Command::Probe(a)) => cmd_probe(a),
        Some(Command::Logits(a)) => cmd_logits(a),
        Some(Command::Convert { gguf, out }) => cmd_convert(&gguf, &out),
        Some(Command::DemoModel { out, gguf }) => cmd_demo(&out, gguf),
    }
}

fn prompt_text(prompt: &Option<String>, file: &Option<PathBuf>) -> Result<String> {
    match (prompt, file) {
        (Some(p), _) => Ok(p.clone()),
        (None, Some(f)) => std::fs::read_to_string(f).with_context(|| format!("{}: cannot read prompt", f.display())),
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
        println!("  {} (Hugging Face cache)", model::loader::hf_cache_dir().display());
        println!("  {} (ModelScope cache)", model::loader::modelscope_cache_dir().display());
        println!("  --models-dir DIR and FRAUDLAB_MODELS (folders with config.json, .gguf files)");
        println!("Try `fraudlab demo-model` for a tiny offline demo model.");
        return Ok(());
    }
    println!("{:<40} {:<8} {:<6} {:<9} {:<22} {:>12} {:>9}", "name", "family", "size", "variant", "format", "parameters", "disk");
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

fn cmd_probe(a: ProbeArgs) -> Result<()> {
    let lm = model::load(&a.model.model, a.model.options()?)?;
    let prompt = build_prompt(&lm.tokenizer, a.system.as_deref(), &prompt_text(&a.prompt, &a.prompt_file)?, a.raw)?;
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
    let mut v: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &x)| (i as u32, x)).collect();
    v.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
    v.truncate(k);
    v
}

fn cmd_logits(a: LogitsArgs) -> Result<()> {
    let lm = model::load(&a.model.model, a.model.options()?)?;
    let prompt = build_prompt(&lm.tokenizer, None, &prompt_text(&a.prompt, &a.prompt_file)?, a.raw)?;
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
    let logits: Vec<f32> = lm.model.forward_last(&input, None, None)?.squeeze(0)?.to_vec1()?;
    let top = top_k(&logits, a.top);
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = m + logits.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
    let top_json: Vec<_> = top
        .iter()
        .map(|(id, l)| json!({"id": id, "token": lm.tokenizer.token_text(*id), "logit": l}))
        .collect();
    if a.json {
        println!("{}", json!({"token_ids": ids, "top": top_json, "logsumexp": lse}));
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
    println!("wrote a tiny random demo model (not a real model: answers are noise) to {}", out.display());
    if gguf {
        let f = out.with_extension("gguf");
        model::tiny::write_gguf(out, &f, candle_core::quantized::GgmlDType::Q8_0)?;
        println!("wrote {}", f.display());
    }
    Ok(())
}
