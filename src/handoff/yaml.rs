//! The LLaMA-Factory training YAML equivalent to a [`TrainConfig`]: which key each setting
//! becomes, and the file's text. Only flat `key: value` lines with plain scalars are written,
//! so PyYAML reads every value with the intended type (floats always carry a `.`: PyYAML
//! takes `1e-4` for a string).

use crate::engine::train::{Schedule, TrainConfig};

use super::{OUTPUT_DIR, TRAIN_DATASET, VAL_DATASET};

/// A YAML scalar.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn render(&self) -> String {
        match self {
            // a JSON string is a valid double-quoted YAML scalar
            Scalar::Str(s) => serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(x) => yaml_float(*x),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

/// A float PyYAML reads as a float: Rust's `Display` never writes an exponent, and a `.`
/// is added to whole numbers.
pub fn yaml_float(x: f64) -> String {
    let s = format!("{x}");
    if s.contains('.') || s.contains("inf") || s.contains("NaN") {
        s
    } else {
        format!("{s}.0")
    }
}

/// The YAML's sections and keys, in the order they are written.
#[derive(Debug, Clone)]
pub struct Plan {
    pub sections: Vec<(&'static str, Vec<(&'static str, Scalar)>)>,
    /// The steps the YAML asks for when it uses `max_steps`.
    pub max_steps: Option<usize>,
    /// Optimizer steps of the whole run on one GPU (as fraudlab counts them).
    pub total_steps: usize,
    pub warmup_steps: usize,
    pub with_val: bool,
}

/// LoRA targets for LLaMA-Factory: the projection names, or, for a layer range, each
/// module's name from its layer on (`layers.12.self_attn.q_proj`), which PEFT matches as a
/// suffix of the full module name.
pub fn lora_target(tc: &TrainConfig) -> String {
    let targets = &tc.lora.target_modules;
    match &tc.lora.layers_to_transform {
        None => targets.join(","),
        Some(layers) => {
            let mut names = Vec::new();
            for l in layers {
                for t in targets {
                    let block = if matches!(t.as_str(), "gate_proj" | "up_proj" | "down_proj") {
                        "mlp"
                    } else {
                        "self_attn"
                    };
                    names.push(format!("layers.{l}.{block}.{t}"));
                }
            }
            names.join(",")
        }
    }
}

/// Optimizer steps in one pass over `samples` (a last short batch or accumulation counts).
pub fn steps_per_epoch(samples: usize, tc: &TrainConfig) -> usize {
    samples
        .div_ceil(tc.batch.max(1))
        .div_ceil(tc.grad_accum.max(1))
}

/// The scheduler name Hugging Face's trainer gives fraudlab's schedule (warmup, then…).
pub fn scheduler(s: Schedule) -> &'static str {
    match s {
        Schedule::Constant => "constant_with_warmup",
        Schedule::Linear => "linear",
        Schedule::Cosine => "cosine",
    }
}

impl Plan {
    pub fn new(
        tc: &TrainConfig,
        model: &str,
        train_samples: usize,
        with_val: bool,
        planned_steps: Option<usize>,
    ) -> Plan {
        use Scalar::*;
        let mut method = vec![
            ("stage", Str("sft".into())),
            ("do_train", Bool(true)),
            (
                "finetuning_type",
                Str(if tc.full { "full" } else { "lora" }.into()),
            ),
        ];
        if !tc.full {
            let t = lora_target(tc);
            let alpha = if tc.lora.lora_alpha.fract() == 0.0 {
                Int(tc.lora.lora_alpha as i64)
            } else {
                Float(tc.lora.lora_alpha)
            };
            method.extend([
                ("lora_rank", Int(tc.lora.r as i64)),
                ("lora_alpha", alpha),
                // through the f32's shortest text: 0.05, not 0.05000000074505806
                (
                    "lora_dropout",
                    Float(
                        tc.lora
                            .lora_dropout
                            .to_string()
                            .parse()
                            .unwrap_or(tc.lora.lora_dropout as f64),
                    ),
                ),
                ("lora_target", Str(t)),
                ("use_rslora", Bool(tc.lora.use_rslora)),
            ]);
        }
        let mut dataset = vec![
            ("dataset_dir", Str(".".into())),
            ("dataset", Str(TRAIN_DATASET.into())),
        ];
        if with_val {
            dataset.push(("eval_dataset", Str(VAL_DATASET.into())));
        }
        dataset.extend([
            ("template", Str("qwen".into())),
            ("cutoff_len", Int(tc.max_len as i64)),
            // loss on the answer only, on every assistant turn (as fraudlab trains)
            ("train_on_prompt", Bool(false)),
            ("mask_history", Bool(false)),
            ("overwrite_cache", Bool(true)),
            ("preprocessing_num_workers", Int(4)),
        ]);
        let max_steps = tc.max_steps.or(if tc.time_budget_s.is_some() {
            planned_steps
        } else {
            None
        });
        let mut train = vec![
            ("per_device_train_batch_size", Int(tc.batch as i64)),
            ("gradient_accumulation_steps", Int(tc.grad_accum as i64)),
            ("learning_rate", Float(tc.lr)),
        ];
        match max_steps {
            Some(n) => train.push(("max_steps", Int(n as i64))),
            None => train.push(("num_train_epochs", Float(tc.epochs as f64))),
        }
        train.push(("lr_scheduler_type", Str(scheduler(tc.schedule).into())));
        // whole steps, as fraudlab counts them: the trainer's `warmup_ratio` is gone from
        // recent transformers, and a fractional `warmup_steps` means a ratio only there
        let total = max_steps.unwrap_or(steps_per_epoch(train_samples, tc) * tc.epochs);
        let warmup = tc
            .warmup_steps
            .unwrap_or((tc.warmup_ratio * total as f64).ceil() as usize);
        train.push(("warmup_steps", Int(warmup as i64)));
        train.extend([
            ("weight_decay", Float(tc.weight_decay)),
            ("max_grad_norm", Float(tc.max_grad_norm)),
            ("adam_beta1", Float(tc.beta1)),
            ("adam_beta2", Float(tc.beta2)),
            ("adam_epsilon", Float(tc.eps)),
            ("seed", Int(tc.seed as i64)),
            ("data_seed", Int(tc.seed as i64)),
            ("bf16", Bool(true)),
            ("ddp_timeout", Int(180_000_000)),
        ]);
        let mut output = vec![
            ("output_dir", Str(OUTPUT_DIR.into())),
            ("logging_steps", Int(1)),
            ("plot_loss", Bool(true)),
            ("overwrite_output_dir", Bool(true)),
            ("save_only_model", Bool(false)),
            ("report_to", Str("none".into())),
            (
                "save_total_limit",
                Int(tc.keep_checkpoints.max(1) as i64 + 1),
            ),
        ];
        let mut eval = Vec::new();
        if with_val {
            // checkpoints follow the evaluations, as fraudlab keeps the best one
            let (strategy, every) = if tc.eval_every > 0 {
                ("steps", Some(tc.eval_every))
            } else {
                ("epoch", None)
            };
            eval.push(("per_device_eval_batch_size", Int(tc.batch as i64)));
            eval.push(("eval_strategy", Str(strategy.into())));
            output.push(("save_strategy", Str(strategy.into())));
            if let Some(n) = every {
                eval.push(("eval_steps", Int(n as i64)));
                output.push(("save_steps", Int(n as i64)));
            }
            if let Some(p) = tc.early_stopping {
                eval.extend([
                    ("early_stopping_steps", Int(p as i64)),
                    ("load_best_model_at_end", Bool(true)),
                    ("metric_for_best_model", Str("eval_loss".into())),
                    ("greater_is_better", Bool(false)),
                ]);
            }
        } else if tc.save_every > 0 {
            output.push(("save_strategy", Str("steps".into())));
            output.push(("save_steps", Int(tc.save_every as i64)));
        } else {
            // fraudlab writes the adapter at the end; so does the trainer's final save
            output.push(("save_strategy", Str("no".into())));
        }
        let mut sections = vec![
            (
                "model",
                vec![
                    ("model_name_or_path", Str(model.to_string())),
                    ("trust_remote_code", Bool(false)),
                ],
            ),
            ("method", method),
            ("dataset", dataset),
            ("train", train),
            ("output", output),
        ];
        if !eval.is_empty() {
            sections.push(("eval", eval));
        }
        Plan {
            sections,
            max_steps,
            total_steps: total,
            warmup_steps: warmup,
            with_val,
        }
    }

    /// The value of a key, if the plan sets it.
    #[cfg(test)]
    pub fn get(&self, key: &str) -> Option<&Scalar> {
        self.sections
            .iter()
            .flat_map(|(_, kv)| kv.iter())
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    pub fn render(&self) -> String {
        let mut s = String::from(
            "# Written by `fraudlab handoff llamafactory`: the fraudlab run's settings as\n\
             # LLaMA-Factory takes them. Run from this folder: llamafactory-cli train train.yaml\n\
             # (README.md: multi-GPU, what differs, and how to bring the adapter back).\n",
        );
        for (name, kv) in &self.sections {
            s.push_str(&format!("\n### {name}\n"));
            for (k, v) in kv {
                s.push_str(&format!("{k}: {}\n", v.render()));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_always_read_as_floats() {
        assert_eq!(yaml_float(1e-4), "0.0001");
        assert_eq!(yaml_float(3.0), "3.0");
        assert_eq!(yaml_float(1e-8), "0.00000001");
        assert_eq!(yaml_float(0.05000000074505806), "0.05000000074505806");
    }

    #[test]
    fn layer_ranges_become_module_names() {
        let mut tc = TrainConfig::default();
        tc.lora.target_modules = vec!["q_proj".into(), "down_proj".into()];
        assert_eq!(lora_target(&tc), "q_proj,down_proj");
        tc.lora.layers_to_transform = Some(vec![2, 3]);
        assert_eq!(
            lora_target(&tc),
            "layers.2.self_attn.q_proj,layers.2.mlp.down_proj,layers.3.self_attn.q_proj,layers.3.mlp.down_proj"
        );
    }

    #[test]
    fn settings_map_to_keys() {
        let tc = TrainConfig {
            lr: 2e-4,
            max_steps: Some(40),
            schedule: Schedule::Constant,
            eval_every: 5,
            early_stopping: Some(3),
            ..TrainConfig::default()
        };
        let p = Plan::new(&tc, "Qwen/Qwen2.5-0.5B-Instruct", 100, true, None);
        assert_eq!(p.get("learning_rate"), Some(&Scalar::Float(2e-4)));
        assert_eq!(p.get("max_steps"), Some(&Scalar::Int(40)));
        assert_eq!(p.get("num_train_epochs"), None);
        assert_eq!(
            p.get("lr_scheduler_type"),
            Some(&Scalar::Str("constant_with_warmup".into()))
        );
        assert_eq!(p.get("eval_steps"), Some(&Scalar::Int(5)));
        assert_eq!(p.get("save_steps"), Some(&Scalar::Int(5)));
        assert_eq!(p.get("early_stopping_steps"), Some(&Scalar::Int(3)));
        // 10% of the 40 steps
        assert_eq!(p.get("warmup_steps"), Some(&Scalar::Int(4)));
        assert_eq!(p.get("lora_alpha"), Some(&Scalar::Int(16)));
        let text = p.render();
        assert!(text.contains("\nlearning_rate: 0.0002\n"), "{text}");
        assert!(text.contains("\nmodel_name_or_path: \"Qwen/Qwen2.5-0.5B-Instruct\"\n"));
        // without validation: no evaluation keys, the adapter only at the end
        // 100 samples, batch 4 x 4: 7 steps an epoch, 21 in all, warmup ceil(2.1)
        let p = Plan::new(&TrainConfig::default(), "m", 100, false, None);
        assert_eq!((p.total_steps, p.warmup_steps), (21, 3));
        assert_eq!(p.get("eval_strategy"), None);
        assert_eq!(p.get("save_strategy"), Some(&Scalar::Str("no".into())));
        assert_eq!(p.get("num_train_epochs"), Some(&Scalar::Float(3.0)));
    }
}
