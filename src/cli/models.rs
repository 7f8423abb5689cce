//! Model commands: models, probe, logits, convert, merge, export, demo-model, download.

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use super::args::*;
use super::common::*;
use crate::engine::generate::{build_prompt, generate, SamplingParams};
use crate::model::{self, discover};

fn prompt_text(prompt: &Option<String>, file: &Option<PathBuf>) -> Result<String> {
    match (prompt, file) {
        (Some(p), _) => Ok(p.clone()),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("{}: cannot read prompt", f.display())),
        (None, None) => bail!("give --prompt or --prompt-file"),
    }
}

pub(super) fn cmd_models(extra: &[PathBuf], json: bool) -> Result<()> {
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

pub(super) fn cmd_probe(a: ProbeArgs, session: &str) -> Result<()> {
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

pub(super) fn cmd_logits(a: LogitsArgs) -> Result<()> {
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

pub(super) fn cmd_convert(gguf: &std::path::Path, out: &std::path::Path) -> Result<()> {
    let info = model::convert::gguf_to_hf(gguf, out)?;
    println!("{info}");
    Ok(())
}

pub(super) fn cmd_demo(out: &std::path::Path, gguf: bool) -> Result<()> {
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

pub(super) fn cmd_merge(
    m: &ModelArgs,
    adapter: &std::path::Path,
    out: &std::path::Path,
) -> Result<()> {
    if m.load.quantized {
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

/// `fraudlab export`: the model, its adapter folded in, as a GGUF file or an HF folder.
pub(super) fn cmd_export(a: ExportArgs) -> Result<()> {
    let gguf = match a.format.as_str() {
        "gguf" => true,
        "hf" => false,
        f => bail!("--format {f}: use gguf or hf"),
    };
    let ty = match (&a.ty, gguf) {
        (Some(t), true) => model::export::parse_type(t)?,
        (None, true) => model::gguf_format::TensorType::F16,
        (Some(_), false) => bail!("--type is for --format gguf; a Hugging Face folder is f32"),
        (None, false) => model::gguf_format::TensorType::F32,
    };
    if gguf && a.out.is_dir() {
        bail!(
            "{}: is a folder; --out names the .gguf file to write",
            a.out.display()
        );
    }
    let m = ModelArgs {
        model: a.model.clone(),
        load: LoadArgs {
            quantized: false,
            dtype: "f32".into(),
        },
    };
    let mut lm = load_with_adapter(&m, a.adapter.as_deref())?;
    model::adapter::merge_lora(&mut lm.model)?;
    if !gguf {
        model::convert::write_hf_folder(&lm.model, &lm.location, &a.out)?;
        if a.json {
            println!("{}", json!({"path": a.out, "format": "hf"}));
        } else {
            println!(
                "wrote {} as a Hugging Face folder to {}",
                a.model,
                a.out.display()
            );
        }
        return Ok(());
    }
    install_stop_signals();
    let name = a.name.clone().unwrap_or_else(|| lm.name.clone());
    let r = model::export::export_gguf(&lm.model, &lm.tokenizer, ty, &name, &a.out, &STOP_SIGNAL)?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "wrote {} ({}, {} tensors, {}) to {}",
            name,
            r.file_type,
            r.tensors,
            human_bytes(r.bytes),
            r.path.display()
        );
    }
    Ok(())
}

/// `fraudlab download`: the model into the hub's cache, with a progress bar (size, rate,
/// ETA) on a terminal; Ctrl-C stops at once and keeps the partial file for a resume.
pub(super) fn cmd_download(spec: &str, revision: Option<&str>, json: bool) -> Result<()> {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    install_stop_signals();
    let bar = if json {
        ProgressBar::hidden()
    } else {
        // indicatif draws nothing when stderr is not a terminal
        let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        b.set_style(
            ProgressStyle::with_template(
                "[{bar:25}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {wide_msg}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        b
    };
    let mut not_fetched = 0;
    let r = model::download::download(spec, revision, &STOP_SIGNAL, &mut |p| {
        if let Some(t) = p.total {
            bar.set_length(t);
        }
        bar.set_position(p.done);
        // bytes found in the cache or a partial file are not part of the rate
        if p.done - p.fetched.min(p.done) != not_fetched {
            not_fetched = p.done - p.fetched.min(p.done);
            bar.reset_eta();
        }
        bar.set_message(format!("{} ({}/{})", p.file, p.files_done, p.files_total));
    });
    bar.finish_and_clear();
    let d = r?;
    if json {
        println!("{}", serde_json::to_string(&d)?);
    } else {
        println!(
            "downloaded {spec} to {} ({} of {} files fetched, {})",
            d.path.display(),
            d.fetched_files,
            d.files,
            human_bytes(d.fetched_bytes)
        );
    }
    Ok(())
}
