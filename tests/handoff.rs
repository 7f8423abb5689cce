//! The hand-off to LLaMA-Factory and the import back: the folder's dataset holds the prompts
//! fraudlab trains on, the YAML the run's settings, the README every setting the trainer
//! cannot express; an adapter in a LLaMA-Factory output folder (with its logged losses)
//! becomes a run the panes list and `eval` evaluates.
//!
//! Opt-in: FRAUDLAB_TEST_PY (a Python with torch, transformers and peft) writes the adapter
//! with Python peft; FRAUDLAB_TEST_LLAMAFACTORY (a Python with llamafactory) loads the folder
//! with LLaMA-Factory's own argument parser and dataset loader, trains two steps on the CPU
//! and imports the result.

mod common;
use common::*;

use fraudlab::data::{Sample, DEFAULT_SYSTEM};
use fraudlab::engine::train::TrainConfig;
use fraudlab::model::tiny::TinySpec;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn yaml_value(yaml: &str, key: &str) -> Option<String> {
    yaml.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .map(|v| v.trim_matches('"').to_string())
}

fn lines(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Fraud dialogues whose speaker names give the label away (anonymisation must hide them).
fn leaky_data(path: &Path, n: usize) {
    fraud_jsonl_by(path, n, "诈骗者王强", "李阿姨");
}

#[test]
fn handoff_writes_the_same_prompts_settings_and_every_gap() {
    let d = tmp();
    let sessions = d.path().join("sessions");
    let model = tiny_model(d.path(), TinySpec::default());
    let data = d.path().join("d.jsonl");
    leaky_data(&data, 20);
    let out = d.path().join("ho");
    let o = fl(
        &sessions,
        &[
            "handoff",
            "llamafactory",
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--val-split",
            "0.2",
            "--lora-r",
            "4",
            "--lora-alpha",
            "8",
            "--lr",
            "2e-4",
            "--layers",
            "1",
            "--target",
            "q_proj,down_proj",
            "--schedule",
            "linear",
            "--max-steps",
            "30",
            "--max-len",
            "1024",
            "--anonymize-speakers",
            "--out",
            out.to_str().unwrap(),
            "--json",
        ],
    );
    let report: Value = serde_json::from_str(ok(&o).trim()).unwrap();
    assert_eq!(report["train_samples"], 16);
    assert_eq!(report["val_samples"], 4);
    assert_eq!(report["over_max_len"], 0);
    for f in [
        "train.jsonl",
        "val.jsonl",
        "dataset_info.json",
        "train.yaml",
        "README.md",
        "fraudlab-handoff.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }

    // the records are the messages fraudlab trains on, speakers renamed
    let samples = fraudlab::data::load(&data).unwrap().samples;
    let train = lines(&out.join("train.jsonl"));
    let val = lines(&out.join("val.jsonl"));
    for r in train.iter().chain(&val) {
        assert_eq!(r["system"], DEFAULT_SYSTEM);
        let conv = r["conversations"].as_array().unwrap();
        assert_eq!(conv.len(), 2);
        assert_eq!(
            (conv[0]["from"].as_str(), conv[1]["from"].as_str()),
            (Some("human"), Some("gpt"))
        );
        let user = conv[0]["value"].as_str().unwrap();
        assert!(!user.contains("诈骗者") && !user.contains("王强"), "{user}");
        let s: &Sample = samples
            .iter()
            .find(|s| {
                s.anonymized()
                    .to_chat_messages(DEFAULT_SYSTEM, false, false)[1]
                    .content
                    == user
            })
            .expect("a record of a sample");
        let want = s.anonymized().to_chat_messages(DEFAULT_SYSTEM, true, false);
        assert_eq!(conv[1]["value"], want[2].content.as_str());
        assert!(
            want[2].content == "{\"is_fraud\": true}" || want[2].content == "{\"is_fraud\": false}"
        );
    }
    // the validation split is the one training draws with the same seed
    let tc = TrainConfig {
        data: data.clone(),
        val_split: 0.2,
        ..TrainConfig::default()
    };
    let (_, val_s, _) = fraudlab::engine::train::load_split(&tc).unwrap();
    let val_users: Vec<String> = val
        .iter()
        .map(|r| r["conversations"][0]["value"].as_str().unwrap().to_string())
        .collect();
    for s in &val_s {
        let u = s
            .anonymized()
            .to_chat_messages(DEFAULT_SYSTEM, false, false)[1]
            .content
            .clone();
        assert!(val_users.contains(&u));
    }

    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("dataset_info.json")).unwrap())
            .unwrap();
    assert_eq!(info["fraudlab_train"]["file_name"], "train.jsonl");
    assert_eq!(info["fraudlab_val"]["formatting"], "sharegpt");
    assert_eq!(info["fraudlab_train"]["columns"]["system"], "system");

    let yaml = std::fs::read_to_string(out.join("train.yaml")).unwrap();
    for (k, v) in [
        ("stage", "sft"),
        ("finetuning_type", "lora"),
        ("lora_rank", "4"),
        ("lora_alpha", "8"),
        ("lora_dropout", "0.05"),
        (
            "lora_target",
            "layers.1.self_attn.q_proj,layers.1.mlp.down_proj",
        ),
        ("learning_rate", "0.0002"),
        ("lr_scheduler_type", "linear"),
        ("max_steps", "30"),
        ("warmup_steps", "3"),
        ("per_device_train_batch_size", "4"),
        ("gradient_accumulation_steps", "4"),
        ("cutoff_len", "1024"),
        ("template", "qwen"),
        ("train_on_prompt", "false"),
        ("seed", "0"),
        ("dataset", "fraudlab_train"),
        ("eval_dataset", "fraudlab_val"),
        ("output_dir", "output"),
        ("bf16", "true"),
    ] {
        assert_eq!(yaml_value(&yaml, k).as_deref(), Some(v), "{k} in\n{yaml}");
    }
    assert_eq!(yaml_value(&yaml, "num_train_epochs"), None);

    let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
    for needle in [
        "llamafactory-cli train train.yaml",
        "FORCE_TORCHRUN=1",
        "torchrun --nproc_per_node",
        "layer range",
        "frozen-prefix cache",
        "time budget",
        "speaker anonymisation",
        "packing with a shared prefix",
        "over-long samples",
        "decision threshold",
        "early stopping",
        "When to move",
        "fraudlab runs import",
    ] {
        assert!(readme.contains(needle), "README lacks {needle:?}");
    }

    // a folder that is not empty is not written over without --force
    let again = fl(
        &sessions,
        &[
            "handoff",
            "llamafactory",
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_clean_error(&again, &["not empty", "--force"]);
}

#[test]
fn handoff_repeats_a_run_and_refuses_what_it_cannot_hand_off() {
    let d = tmp();
    let sessions = d.path().join("sessions");
    let model = tiny_model(d.path(), TinySpec::default());
    let data = d.path().join("d.jsonl");
    fraud_jsonl(&data, 12);
    // a run folder as training writes it
    let run = d.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let tc = TrainConfig {
        model: model.display().to_string(),
        data: data.clone(),
        out_dir: run.clone(),
        lr: 3e-4,
        epochs: 2,
        batch: 2,
        grad_accum: 8,
        early_stopping: Some(2),
        val_split: 0.25,
        ..TrainConfig::default()
    };
    std::fs::write(
        run.join("config.json"),
        serde_json::to_string_pretty(&tc).unwrap(),
    )
    .unwrap();
    let out = d.path().join("ho");
    ok(&fl(
        &sessions,
        &[
            "handoff",
            "llamafactory",
            "--run",
            run.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    ));
    let yaml = std::fs::read_to_string(out.join("train.yaml")).unwrap();
    assert_eq!(
        yaml_value(&yaml, "learning_rate").as_deref(),
        Some("0.0003")
    );
    assert_eq!(
        yaml_value(&yaml, "num_train_epochs").as_deref(),
        Some("2.0")
    );
    assert_eq!(
        yaml_value(&yaml, "per_device_train_batch_size").as_deref(),
        Some("2")
    );
    assert_eq!(
        yaml_value(&yaml, "gradient_accumulation_steps").as_deref(),
        Some("8")
    );
    assert_eq!(
        yaml_value(&yaml, "early_stopping_steps").as_deref(),
        Some("2")
    );
    assert_eq!(
        yaml_value(&yaml, "load_best_model_at_end").as_deref(),
        Some("true")
    );
    assert_eq!(
        yaml_value(&yaml, "lora_target").as_deref(),
        Some("q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    );
    let rec: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("fraudlab-handoff.json")).unwrap())
            .unwrap();
    assert_eq!(rec["config"]["lr"], 3e-4);
    let (tr, va, _) = fraudlab::engine::train::load_split(&tc).unwrap();
    assert_eq!(rec["train_samples"].as_u64(), Some(tr.len() as u64));
    assert_eq!(rec["val_samples"].as_u64(), Some(va.len() as u64));
    assert_eq!(tr.len() + va.len(), 12);
    let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
    // 2 GPUs keep fraudlab's 16-sample step with 4 accumulations
    assert!(readme.contains("| 2 | 4 | 16 |"), "{readme}");

    // a GGUF base model, no settings, a run folder without config.json
    let gguf = tiny_gguf(&model, false);
    let o = fl(
        &sessions,
        &[
            "handoff",
            "llamafactory",
            "--model",
            gguf.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            d.path().join("g").to_str().unwrap(),
        ],
    );
    assert_clean_error(&o, &["GGUF", "fraudlab convert"]);
    let o = fl(
        &sessions,
        &[
            "handoff",
            "llamafactory",
            "--out",
            d.path().join("n").to_str().unwrap(),
        ],
    );
    assert_clean_error(&o, &["--model", "--data", "--run"]);
    let o = fl(
        &sessions,
        &[
            "handoff",
            "llamafactory",
            "--run",
            d.path().to_str().unwrap(),
            "--out",
            d.path().join("n").to_str().unwrap(),
        ],
    );
    assert_clean_error(&o, &["config.json"]);
}

/// A fraudlab adapter trained on the tiny model, and the hand-off folder of the same run.
fn trained_adapter(d: &Path, sessions: &Path, model: &Path, data: &Path) -> PathBuf {
    let run = d.join("run");
    ok(&fl(
        sessions,
        &[
            "train",
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
            "--max-steps",
            "3",
            "--batch",
            "2",
            "--grad-accum",
            "1",
            "--lr",
            "1e-2",
            "--json",
        ],
    ));
    run.join("adapter")
}

fn eval_json(sessions: &Path, model: &Path, adapter: &Path, data: &Path) -> Value {
    let out = ok(&fl(
        sessions,
        &[
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--adapter",
            adapter.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--json",
        ],
    ));
    serde_json::from_str(out.lines().next().unwrap()).unwrap()
}

#[test]
fn an_adapter_in_a_llamafactory_output_folder_imports_as_a_run() {
    let d = tmp();
    let sessions = d.path().join("sessions");
    let model = tiny_model(d.path(), TinySpec::default());
    let data = d.path().join("d.jsonl");
    fraud_jsonl(&data, 8);
    let ours = trained_adapter(d.path(), &sessions, &model, &data);
    // the hand-off folder, and the trainer's output in it: our adapter with a synthetic log
    let ho = d.path().join("ho");
    ok(&fl(
        &sessions,
        &[
            "handoff",
            "llamafactory",
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--lr",
            "5e-4",
            "--out",
            ho.to_str().unwrap(),
        ],
    ));
    let output = ho.join("output");
    std::fs::create_dir_all(&output).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(ours.join(f), output.join(f)).unwrap();
    }
    std::fs::write(
        output.join("trainer_log.jsonl"),
        concat!(
            "{\"current_steps\": 1, \"total_steps\": 3, \"loss\": 2.75, \"lr\": 0.0005, \"epoch\": 0.5, \"percentage\": 33.33, \"elapsed_time\": \"0:00:04\", \"remaining_time\": \"0:00:08\"}\n",
            "{\"current_steps\": 2, \"total_steps\": 3, \"loss\": 1.5, \"lr\": 0.00025, \"epoch\": 1.0, \"percentage\": 66.67, \"elapsed_time\": \"0:00:08\", \"remaining_time\": \"0:00:04\"}\n",
            "{\"current_steps\": 2, \"total_steps\": 3, \"eval_loss\": 1.25, \"epoch\": 1.0, \"percentage\": 66.67, \"elapsed_time\": \"0:00:09\", \"remaining_time\": \"0:00:04\"}\n",
            "{\"current_steps\": 3, \"total_steps\": 3, \"loss\": 0.5, \"lr\": 0.0, \"epoch\": 1.5, \"percentage\": 100.0, \"elapsed_time\": \"0:00:12\", \"remaining_time\": \"0:00:00\"}\n",
        ),
    )
    .unwrap();

    let o = fl(
        &sessions,
        &[
            "--session",
            "t",
            "runs",
            "import",
            output.to_str().unwrap(),
            "--name",
            "from-lf",
            "--json",
        ],
    );
    let r: Value = serde_json::from_str(ok(&o).trim()).unwrap();
    assert_eq!(r["run_id"], "from-lf");
    assert_eq!(r["steps"], 3);
    assert_eq!(r["log"], "trainer_log.jsonl");
    assert_eq!(r["model_found"], true);
    let run = sessions.join("t/runs/from-lf");
    let adapter = run.join("adapter");
    assert_eq!(
        std::fs::read(adapter.join("adapter_model.safetensors")).unwrap(),
        std::fs::read(ours.join("adapter_model.safetensors")).unwrap()
    );
    // the settings come from the hand-off record, the origin is recorded
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["lr"], 5e-4);
    assert_eq!(cfg["model"], model.display().to_string());
    assert_eq!(cfg["imported"]["trainer"], "llamafactory");
    let tc: TrainConfig = serde_json::from_value(cfg).unwrap();
    assert_eq!(tc.out_dir, run);
    // the logged losses, with the evaluation on its step
    let m = lines(&run.join("metrics.jsonl"));
    let steps: Vec<(u64, f64)> = m
        .iter()
        .map(|x| (x["step"].as_u64().unwrap(), x["loss"].as_f64().unwrap()))
        .collect();
    assert_eq!(steps, vec![(1, 2.75), (2, 1.5), (3, 0.5)]);
    assert_eq!(m[1]["eval_loss"], 1.25);
    assert_eq!(m[2]["step_s"], 4.0);

    // the Train and Eval panes list it like a local run
    let app = fraudlab::tui::App::new(
        fraudlab::data::Session::open(&sessions, "t").unwrap(),
        fraudlab::tui::AppOptions {
            sessions_root: sessions.clone(),
            model_dirs: vec![],
        },
    );
    let ri = app.train.runs.iter().find(|r| r.id == "from-lf").unwrap();
    assert!(ri.has_adapter());
    assert_eq!(ri.end(), "imported");
    assert_eq!(ri.loss.len(), 3);
    assert_eq!(ri.eval, vec![(2.0, 1.25)]);
    assert!(app
        .eval_options()
        .iter()
        .any(|(_, a, _)| a.as_deref() == Some(adapter.as_path())));

    // it evaluates exactly as the adapter it is a copy of
    let a = eval_json(&sessions, &model, &adapter, &data);
    let b = eval_json(&sessions, &model, &ours, &data);
    for k in ["n", "tp", "fp", "tn", "fn", "roc_auc", "pr_auc"] {
        assert_eq!(a[k], b[k], "{k}");
    }

    // bad imports: no adapter, a taken name, a whole model
    let o = fl(
        &sessions,
        &["runs", "import", d.path().join("nothing").to_str().unwrap()],
    );
    assert_clean_error(&o, &["no such folder"]);
    let o = fl(
        &sessions,
        &[
            "--session",
            "t",
            "runs",
            "import",
            output.to_str().unwrap(),
            "--name",
            "from-lf",
        ],
    );
    assert_clean_error(&o, &["from-lf"]);
    let o = fl(&sessions, &["runs", "import", model.to_str().unwrap()]);
    assert_clean_error(&o, &["whole model"]);
    let o = fl(
        &sessions,
        &[
            "runs",
            "import",
            data.parent().unwrap().join("run").to_str().unwrap(),
        ],
    );
    assert_clean_error(&o, &["adapter_config.json"]);
}

fn python(py: &str, args: &[&str], cwd: Option<&Path>) -> String {
    let mut c = std::process::Command::new(py);
    c.args(args);
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "python {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn an_adapter_written_by_python_peft_imports_and_evaluates() {
    let Ok(py) = std::env::var("FRAUDLAB_TEST_PY") else {
        eprintln!("skipped: set FRAUDLAB_TEST_PY to a python with torch, transformers and peft to import an adapter written by peft");
        return;
    };
    let d = tmp();
    let sessions = d.path().join("sessions");
    let model = tiny_model(d.path(), TinySpec::default());
    let data = d.path().join("d.jsonl");
    fraud_jsonl(&data, 8);
    // LLaMA-Factory's layout: the adapter saved by peft, per-layer target names as a
    // hand-off of a layer range gives, and the trainer's state
    let output = d.path().join("output");
    let script = format!(
        "import json, torch\nfrom transformers import AutoModelForCausalLM\nfrom peft import LoraConfig, get_peft_model\ntorch.manual_seed(0)\nm = AutoModelForCausalLM.from_pretrained({:?}, dtype=torch.float32)\np = get_peft_model(m, LoraConfig(r=4, lora_alpha=8, target_modules=['layers.1.self_attn.q_proj', 'layers.1.mlp.down_proj'], init_lora_weights=False, task_type='CAUSAL_LM'))\np.save_pretrained({:?})\njson.dump({{'max_steps': 2, 'log_history': [{{'step': 1, 'loss': 3.5, 'learning_rate': 1e-4, 'grad_norm': 2.0, 'epoch': 0.5}}, {{'step': 2, 'loss': 3.0, 'learning_rate': 5e-5, 'grad_norm': 1.5, 'epoch': 1.0}}]}}, open({:?}, 'w'))\n",
        model.to_str().unwrap(),
        output.to_str().unwrap(),
        output.join("trainer_state.json").to_str().unwrap()
    );
    python(&py, &["-c", &script], None);
    let o = fl(
        &sessions,
        &[
            "runs",
            "import",
            output.to_str().unwrap(),
            "--name",
            "peft",
            "--json",
        ],
    );
    let r: Value = serde_json::from_str(ok(&o).trim()).unwrap();
    assert_eq!(
        (r["steps"].as_u64(), r["log"].as_str()),
        (Some(2), Some("trainer_state.json"))
    );
    let run = sessions.join("default/runs/peft");
    let tc: TrainConfig =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    // peft writes its target set in any order
    let mut t = tc.lora.target_modules.clone();
    t.sort();
    assert_eq!(t, vec!["down_proj", "q_proj"]);
    assert_eq!(tc.lora.layers_to_transform, Some(vec![1]));
    assert_eq!(tc.lora.r, 4);
    // it changes the model's answers here, and evaluates
    let adapter = run.join("adapter");
    let e = eval_json(&sessions, &model, &adapter, &data);
    assert_eq!(e["n"], 8);
    let base = ok(&fl(
        &sessions,
        &[
            "logits",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "你好",
            "--json",
        ],
    ));
    let with = ok(&fl(
        &sessions,
        &[
            "logits",
            "--model",
            model.to_str().unwrap(),
            "--adapter",
            adapter.to_str().unwrap(),
            "--prompt",
            "你好",
            "--json",
        ],
    ));
    assert_ne!(base, with, "the imported adapter changes nothing");
}

#[test]
fn llamafactory_reads_the_handoff_and_its_adapter_comes_back() {
    let Ok(py) = std::env::var("FRAUDLAB_TEST_LLAMAFACTORY") else {
        eprintln!("skipped: set FRAUDLAB_TEST_LLAMAFACTORY to a python with llamafactory (and torch, transformers, peft) to load the hand-off with LLaMA-Factory itself");
        return;
    };
    let check = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/llamafactory_check.py");
    let d = tmp();
    let sessions = d.path().join("sessions");
    let model = tiny_model(d.path(), TinySpec::default());
    let data = d.path().join("d.jsonl");
    leaky_data(&data, 10);
    let ho = d.path().join("ho");
    ok(&fl(
        &sessions,
        &[
            "handoff",
            "llamafactory",
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--val-split",
            "0.2",
            "--layers",
            "1",
            "--max-len",
            "2048",
            "--anonymize-speakers",
            "--out",
            ho.to_str().unwrap(),
        ],
    ));
    let out = python(&py, &[check.to_str().unwrap(), ho.to_str().unwrap()], None);
    let v: Value = serde_json::from_str(out.trim().lines().last().unwrap()).unwrap();
    assert_eq!(v["stage"], "sft");
    assert_eq!(v["lora_rank"], 8);
    assert_eq!(v["lora_target"].as_array().unwrap().len(), 7);
    assert_eq!(v["template"], "qwen");
    assert_eq!(v["train_on_prompt"], false);
    assert_eq!(v["cutoff_len"], 2048);
    assert_eq!(
        (v["train_samples"].as_u64(), v["eval_samples"].as_u64()),
        (Some(8), Some(2))
    );
    // LLaMA-Factory's tokens are fraudlab's chat template over the same messages; the loss
    // is on the answer (and the end of the turn) only
    let tok = fraudlab::model::TextTokenizer::from_folder(&model).unwrap();
    let first = lines(&ho.join("train.jsonl")).remove(0);
    let conv = first["conversations"].as_array().unwrap();
    let msgs = vec![
        fraudlab::model::ChatMessage::new("system", first["system"].as_str().unwrap()),
        fraudlab::model::ChatMessage::new("user", conv[0]["value"].as_str().unwrap()),
        fraudlab::model::ChatMessage::new("assistant", conv[1]["value"].as_str().unwrap()),
    ];
    assert_eq!(
        v["text"].as_str().unwrap(),
        tok.apply_chat_template(&msgs, false).unwrap()
    );
    assert_eq!(
        v["target"].as_str().unwrap(),
        format!("{}<|im_end|>\n", conv[1]["value"].as_str().unwrap())
    );

    // two steps on the CPU, and the adapter back as a run that evaluates
    let out = python(
        &py,
        &[
            check.to_str().unwrap(),
            ho.to_str().unwrap(),
            "--train",
            "2",
        ],
        None,
    );
    assert!(out.contains("adapter_model.safetensors"), "{out}");
    let o = fl(
        &sessions,
        &[
            "runs",
            "import",
            ho.to_str().unwrap(),
            "--name",
            "lf",
            "--json",
        ],
    );
    let r: Value = serde_json::from_str(ok(&o).trim()).unwrap();
    assert_eq!(r["steps"], 2);
    let adapter = sessions.join("default/runs/lf/adapter");
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(adapter.join("fraudlab.json")).unwrap())
            .unwrap();
    assert_eq!(meta["anonymize_speakers"], true);
    let e = eval_json(&sessions, &model, &adapter, &data);
    assert_eq!(e["n"], 10);
}
