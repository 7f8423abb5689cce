//! The hand-off folder's README: the commands (one GPU, several with torchrun), every
//! fraudlab setting LLaMA-Factory cannot express and what was done about it, when to move a
//! run and how to bring the adapter back.

use std::fmt::Write;

use super::yaml::{scheduler, steps_per_epoch, Plan};
use super::{Gap, HandoffReport, OUTPUT_DIR, YAML_FILE};
use crate::engine::train::TrainConfig;
use crate::model::adapter::format_layers;

/// Every fraudlab setting the trainer does not take as it is, with what the hand-off did
/// about it for this run. None is left out: a setting this run does not use says so.
pub fn gaps(tc: &TrainConfig, plan: &Plan, over_max_len: Option<usize>) -> Vec<Gap> {
    let mut g = Vec::new();
    let mut add = |setting: &str, note: String| {
        g.push(Gap {
            setting: setting.into(),
            note,
        })
    };
    add(
        "layer range (--layers)",
        match &tc.lora.layers_to_transform {
            Some(l) => format!(
                "LLaMA-Factory has no layer option; `lora_target` names each adapted module from layer {} on (`layers.N.self_attn.q_proj`…), which PEFT matches as a suffix: the same modules get LoRA",
                format_layers(l)
            ),
            None => "not used by this run (every layer is adapted)".into(),
        },
    );
    add(
        "frozen-prefix cache (--frozen-cache-mib)",
        if tc.lora.layers_to_transform.is_some() {
            "not expressible: fraudlab computes the frozen layers below the lowest adapted one once per sample and caches their output; LLaMA-Factory recomputes them every step (the same result, more compute)".into()
        } else {
            "not expressible, and not used by this run (it adapts every layer)".into()
        },
    );
    add(
        "time budget (--time-budget)",
        match (tc.time_budget_s, plan.max_steps) {
            (Some(b), Some(n)) if tc.max_steps.is_none() => format!(
                "not expressible ({:.0} s here); the YAML asks for the {n} steps the fraudlab run planned for it",
                b
            ),
            (Some(b), _) => format!(
                "not expressible ({b:.0} s here); the YAML keeps the step count or the epochs: stop the run by hand if it must end by a time"
            ),
            (None, _) => "not used by this run".into(),
        },
    );
    add(
        "speaker anonymisation (--anonymize-speakers)",
        if tc.anonymize_speakers {
            "fraudlab renames speakers when it builds each prompt; here the renaming is written into train.jsonl / val.jsonl (the files hold A, B… and no original names), and `runs import` records it in the adapter's fraudlab.json so evaluation and the monitor rename again".into()
        } else {
            "not used by this run (the files hold the speakers' names as in the data)".into()
        },
    );
    add(
        "packing with a shared prefix",
        "not expressible: fraudlab packs each batch into one row and runs the prompt prefix the examples share once; LLaMA-Factory pads each example (`packing` off for supervised runs). The loss is a token average in both; only speed and memory differ".into(),
    );
    add(
        "over-long samples (--max-len)",
        format!(
            "fraudlab drops the middle of a prompt and never cuts the answer; LLaMA-Factory's `cutoff_len` keeps the start of the prompt and cuts its end (the last turns of the dialogue){}",
            match over_max_len {
                Some(0) => format!(": no sample here is longer than {} tokens", tc.max_len),
                Some(n) => format!(
                    ": {n} sample(s) here are longer than {} tokens and will be cut differently; raise cutoff_len to keep them whole",
                    tc.max_len
                ),
                None => ": the samples were not counted (the model's tokenizer is not on this machine)".into(),
            }
        ),
    );
    add(
        "end-of-turn token",
        "fraudlab learns the answer and `<|im_end|>`; LLaMA-Factory's qwen template also learns the newline after it (one token more per sample)".into(),
    );
    add(
        "decision threshold and ROC-AUC at the end of the run",
        "not computed by LLaMA-Factory: an imported adapter decides at 0.5 until you measure it with `fraudlab eval` on the validation file".into(),
    );
    add(
        "sample order and LoRA initialisation",
        format!(
            "both seeded with {} but drawn by different generators: the run is equivalent, not bit-identical",
            tc.seed
        ),
    );
    add(
        "schedule",
        format!(
            "{} after warmup → `{}` (the same curve). Warmup is written as whole steps, `warmup_steps: {}` of the run's {} ({}), as fraudlab counts them: recent transformers versions dropped `warmup_ratio`",
            format!("{:?}", tc.schedule).to_lowercase(),
            scheduler(tc.schedule),
            plan.warmup_steps,
            plan.total_steps,
            match tc.warmup_steps {
                Some(_) => "given as steps".to_string(),
                None => format!("ratio {}", tc.warmup_ratio),
            }
        ),
    );
    add(
        "early stopping (--early-stopping)",
        match tc.early_stopping {
            Some(p) if plan.with_val => format!(
                "`early_stopping_steps: {p}` needs `load_best_model_at_end`, so the trainer's final adapter is the best one; fraudlab's `adapter/` is the last one (the best is in checkpoints/best/)"
            ),
            Some(_) => "ignored: early stopping needs a validation set, and this run has none".into(),
            None => "not used by this run".into(),
        },
    );
    add(
        "checkpoints (--save-every)",
        if plan.with_val && tc.save_every > 0 {
            format!(
                "with a validation set the trainer saves at each evaluation (so it can keep the best); fraudlab's every-{} steps is not kept",
                tc.save_every
            )
        } else if tc.save_every > 0 {
            format!("`save_steps: {}`", tc.save_every)
        } else {
            "at the end (and, with validation, at each evaluation)".into()
        },
    );
    add(
        "precision",
        format!(
            "this run's base weights are {} in fraudlab (LoRA and the optimizer state in f32); the YAML asks for `bf16: true` mixed precision (GPUs from Ampere on). Use `fp16: true` instead on older GPUs, neither on a CPU",
            tc.dtype
        ),
    );
    add(
        "hand labels, --limit, --val-split, --answer-fields",
        "applied when the files were written: train.jsonl holds the (limited, relabelled) training samples, val.jsonl the same validation split fraudlab draws with this seed, and the answers carry the fields asked for".into(),
    );
    g
}

/// The README's text.
pub fn render(tc: &TrainConfig, plan: &Plan, r: &HandoffReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# LLaMA-Factory hand-off\n");
    let _ = writeln!(
        s,
        "Written by `fraudlab handoff llamafactory` from a fraudlab run's settings: {} training and {} validation dialogues, the same prompts fraudlab trains on (system `{}`, user = instruction + dialogue, assistant = `{{\"is_fraud\": true}}` / `{{\"is_fraud\": false}}`), and a training YAML equivalent to the settings.\n",
        r.train_samples,
        r.val_samples,
        crate::data::DEFAULT_SYSTEM
    );
    let _ = writeln!(s, "## Files\n");
    let _ = writeln!(
        s,
        "- `train.jsonl`{}: one sample a line in LLaMA-Factory's ShareGPT format (`conversations` with `human` / `gpt` turns, and `system`)",
        if r.val_samples > 0 { ", `val.jsonl`" } else { "" }
    );
    let _ = writeln!(
        s,
        "- `dataset_info.json`: registers them as `{}`{}",
        super::TRAIN_DATASET,
        if r.val_samples > 0 {
            format!(" and `{}`", super::VAL_DATASET)
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        s,
        "- `{YAML_FILE}`: the run (paths relative to this folder)"
    );
    let _ = writeln!(
        s,
        "- `{}`: the fraudlab settings it came from (`fraudlab runs import` reads it)\n",
        super::HANDOFF_FILE
    );

    let _ = writeln!(s, "## Run it\n");
    let _ = writeln!(
        s,
        "On the machine with the GPUs, with LLaMA-Factory installed (`pip install llamafactory`, or from its repository) and this folder copied over:\n"
    );
    let _ = writeln!(s, "```");
    let _ = writeln!(s, "cd THIS_FOLDER");
    let _ = writeln!(s, "# one GPU");
    let _ = writeln!(s, "llamafactory-cli train {YAML_FILE}");
    let _ = writeln!(s, "# every GPU of the machine (LLaMA-Factory starts torchrun itself when it sees more than one)");
    let _ = writeln!(
        s,
        "FORCE_TORCHRUN=1 NPROC_PER_NODE=4 llamafactory-cli train {YAML_FILE}"
    );
    let _ = writeln!(s, "# or torchrun by hand");
    let _ = writeln!(
        s,
        "torchrun --nproc_per_node 4 \"$(python -c 'import llamafactory.launcher as l; print(l.__file__)')\" {YAML_FILE}"
    );
    let _ = writeln!(s, "# two machines of 8 GPUs: on each, NODE_RANK 0 and 1");
    let _ = writeln!(
        s,
        "FORCE_TORCHRUN=1 NNODES=2 NODE_RANK=0 NPROC_PER_NODE=8 MASTER_ADDR=HOST0 MASTER_PORT=29500 llamafactory-cli train {YAML_FILE}"
    );
    let _ = writeln!(s, "```\n");
    let _ = writeln!(
        s,
        "`model_name_or_path` is `{}`{}.\n",
        r.model_name_or_path,
        if std::path::Path::new(&r.model_name_or_path).is_absolute() {
            ": a path on the machine that wrote this folder; change it to the model's hub id or to where the model is on the GPU machine"
        } else {
            " (a hub id: downloaded there, or found in its Hugging Face cache)"
        }
    );
    let eff = tc.batch * tc.grad_accum;
    let _ = writeln!(
        s,
        "Batch: fraudlab's step takes {} samples ({} × {} accumulated). Each GPU adds its own batch, so keep the same step with more GPUs by dividing `gradient_accumulation_steps`:\n",
        eff, tc.batch, tc.grad_accum
    );
    let _ = writeln!(
        s,
        "| GPUs | gradient_accumulation_steps | samples per step |"
    );
    let _ = writeln!(s, "|---|---|---|");
    for n in [1usize, 2, 4, 8] {
        let ga = (tc.grad_accum / n).max(1);
        let per = tc.batch * ga * n;
        let _ = writeln!(
            s,
            "| {n} | {ga} | {per}{} |",
            if per == eff {
                ""
            } else {
                " (not the same step: change per_device_train_batch_size too)"
            }
        );
    }
    let _ = writeln!(s);

    let _ = writeln!(s, "## Bring the adapter back\n");
    let _ = writeln!(
        s,
        "The trainer writes the adapter (PEFT layout: `adapter_config.json`, `adapter_model.safetensors`) and its logs (`trainer_log.jsonl`, `trainer_state.json`) into `{OUTPUT_DIR}/`. Copy that folder back, then:\n"
    );
    let _ = writeln!(s, "```");
    let _ = writeln!(
        s,
        "fraudlab runs import THIS_FOLDER/{OUTPUT_DIR} --name NAME      # --model M if the base model is elsewhere here"
    );
    let _ = writeln!(
        s,
        "fraudlab eval --model {} --adapter sessions/SESSION/runs/NAME/adapter --data TEST.jsonl",
        tc.model
    );
    let _ = writeln!(s, "```\n");
    let _ = writeln!(
        s,
        "The run then shows in the Train pane's past runs (with the trainer's losses) and in the Eval pane's models like a run trained here.\n"
    );

    let _ = writeln!(s, "## Settings LLaMA-Factory does not take as they are\n");
    let _ = writeln!(s, "| fraudlab setting | here |");
    let _ = writeln!(s, "|---|---|");
    for g in &r.gaps {
        let _ = writeln!(s, "| {} | {} |", g.setting, g.note.replace('|', "\\|"));
    }
    let _ = writeln!(
        s,
        "\nEverything else maps one to one: LoRA r / alpha / dropout / targets (`lora_rank`, `lora_alpha`, `lora_dropout`, `lora_target`), learning rate, schedule and warmup, epochs or max steps, batch and accumulation, max length (`cutoff_len`), weight decay, gradient clipping, AdamW betas and epsilon, seed, the `qwen` chat template, and the loss on the assistant's answer only (`train_on_prompt: false`).\n"
    );

    let _ = writeln!(s, "## When to move a run, and how\n");
    let spe = steps_per_epoch(r.train_samples, tc);
    let total = plan.total_steps;
    let _ = writeln!(
        s,
        "This run: {} training samples, {spe} optimizer steps per epoch, {total} steps in all.\n",
        r.train_samples
    );
    let _ = writeln!(
        s,
        "- **Model size.** LoRA on a 0.5B model trains on a laptop CPU; 1.5B takes several times longer a step, and 3B–7B take minutes a step: move those. Full fine-tuning needs about 16 bytes a parameter (weights, gradients, AdamW state): past 0.5B, move it (and add DeepSpeed ZeRO to the YAML for 7B)."
    );
    let _ = writeln!(
        s,
        "- **Data size.** Steps grow with the dialogues and their length: a few thousand dialogues of a few hundred tokens for three epochs is an afternoon on the CPU for 0.5B; tens of thousands is a GPU job."
    );
    let _ = writeln!(
        s,
        "- **Time.** fraudlab's Train pane and `train --json` show the seconds a step and the ETA after the first steps: when the ETA passes the time you have (or `--time-budget` would cut the run to too few steps), move it."
    );
    let _ = writeln!(
        s,
        "- **How.** Copy this folder, run the command above, copy `{OUTPUT_DIR}/` back and import it. Probe, evaluate and monitor stay here: the adapter is small (a few MB for r {}), and inference on the CPU is what fraudlab is built for.",
        tc.lora.r
    );
    s
}
