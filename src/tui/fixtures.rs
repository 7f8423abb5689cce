//! Realistic workbench content without a model: CJK dialogues, a loss curve, probe outputs,
//! evaluation results. The snapshot tests and the frame-time benchmark draw these.

use anyhow::Result;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::app::{App, AppOptions, Slot, SlotState};
use super::eval::EvalView;
use super::probe::{ModelOutput, ProbeRun, SuiteRun};
use super::train::{LiveRun, RunInfo};
use crate::data::metrics::{self, EvalRow};
use crate::data::suite::{CaseResult, SuiteModel, SuiteResults};
use crate::data::{Sample, Session, DEFAULT_INSTRUCTION};
use crate::engine::eval::{EvalMode, EvalResult, Prediction};
use crate::engine::generate::{Generation, SamplingParams, StopReason};
use crate::engine::train::StepMetrics;
use crate::engine::LoadedInfo;
use crate::model::discover::ModelInfo;

const NAMES: [&str; 8] = [
    "张伟",
    "李娜",
    "王芳",
    "刘洋",
    "陈静",
    "杨磊",
    "赵敏",
    "客服小周",
];

/// The `i`-th synthetic dialogue (fraud when `i` is odd): a few turns, `speaker：text`.
pub fn dialogue(i: usize) -> (String, bool) {
    let a = NAMES[i % NAMES.len()];
    let b = NAMES[(i * 3 + 1) % NAMES.len()];
    let b = if a == b {
        NAMES[(i + 2) % NAMES.len()]
    } else {
        b
    };
    let fraud = i % 2 == 1;
    let mut turns = vec![format!(
        "{a}：您好，请问是{b}吗？我这边是第{}号服务专员。",
        i % 97
    )];
    if fraud {
        turns.push(format!("{b}：是我，有什么事？"));
        turns.push(format!(
            "{a}：您的账户存在异常交易，需要您把资金转到我们提供的安全账户，请告诉我验证码。"
        ));
        turns.push(format!("{b}：这样安全吗？要转多少钱？"));
        turns.push(format!(
            "{a}：全部余额，我们核实后会在24小时内退回，请不要告诉任何人。"
        ));
    } else {
        turns.push(format!(
            "{b}：是的，我上周预约了家电维修，师傅什么时候上门？"
        ));
        turns.push(format!(
            "{a}：师傅明天上午十点到，维修费到付即可，不需要提前转账。"
        ));
    }
    for k in 0..(i % 4) {
        turns.push(format!("{b}：好的，谢谢（补充说明第{k}条）。"));
    }
    (turns.join("\n"), fraud)
}

/// `n` samples; every fifth is unlabelled raw text.
pub fn samples(n: usize) -> Vec<Sample> {
    (0..n)
        .map(|i| {
            let (text, fraud) = dialogue(i);
            if i % 5 == 4 {
                Sample::text(text)
            } else {
                let speaker = fraud.then(|| NAMES[i % NAMES.len()].to_string());
                Sample::fraud(DEFAULT_INSTRUCTION, text, Some(fraud), speaker, None)
            }
        })
        .collect()
}

/// Writes `n` labelled fraud-format samples as JSONL.
pub fn write_dataset(path: &Path, n: usize) -> Result<()> {
    let mut s = String::new();
    for i in 0..n {
        let (text, fraud) = dialogue(i);
        let mut v =
            serde_json::json!({"instruction": DEFAULT_INSTRUCTION, "input": text, "label": fraud});
        if fraud {
            v["fraud_speaker"] = serde_json::json!(NAMES[i % NAMES.len()]);
        }
        s.push_str(&serde_json::to_string(&v)?);
        s.push('\n');
    }
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::write(path, s)?;
    Ok(())
}

/// A model entry as discovery would list it.
pub fn model_info(name: &str, path: &Path, parameters: u64, variant: &str) -> ModelInfo {
    ModelInfo {
        name: name.into(),
        path: path.to_path_buf(),
        source: "folder".into(),
        family: crate::model::discover::family_of(name),
        size: crate::model::config::size_label(parameters),
        variant: variant.into(),
        format: "safetensors (bfloat16)".into(),
        parameters,
        disk_bytes: parameters * 2,
        layers: 24,
        hidden: 896,
        vocab: 151936,
        context: 32768,
        problem: None,
        status: crate::model::discover::STATUS_OK.into(),
    }
}

pub fn loaded_info(key: &str, name: &str, parameters: u64) -> LoadedInfo {
    LoadedInfo {
        key: key.into(),
        name: name.into(),
        parameters,
        layers: 24,
        quantized: false,
        adapter: None,
        load_s: 1.2,
    }
}

/// A loss curve step.
pub fn step_metrics(step: usize, total: usize) -> StepMetrics {
    let x = step as f64;
    StepMetrics {
        step,
        total_steps: total,
        epoch: x / (total as f64 / 3.0),
        loss: 2.5 * (-x / 120.0).exp() + 0.35 + 0.05 * ((x * 0.7).sin()),
        lr: 1e-4 * 0.5 * (1.0 + (std::f64::consts::PI * x / total as f64).cos()),
        grad_norm: 0.8,
        step_s: 1.4,
        tokens_per_s: 2900.0,
        samples_per_s: 11.4,
        elapsed_s: x * 1.4,
        eta_s: (total - step.min(total)) as f64 * 1.4,
        rss_mib: 2400.0,
        eval_loss: step
            .is_multiple_of(50)
            .then(|| 2.2 * (-x / 150.0).exp() + 0.45),
        eval_auc: None,
    }
}

pub fn generation(text: &str) -> Generation {
    Generation {
        text: text.into(),
        token_ids: vec![],
        prompt_tokens: 42,
        generated_tokens: 57,
        ttft_s: 0.21,
        prefill_tok_s: 200.0,
        decode_tok_s: 31.5,
        stop: StopReason::Eos,
    }
}

/// A workbench full of content: models (two loaded), a dataset of `n_samples` with some
/// hand labels and model scores, probe outputs, a training run of `loss_points` steps, past
/// runs, and evaluation results. The session lives under `root`.
pub fn demo_app(root: &Path, n_samples: usize, loss_points: usize) -> Result<App> {
    let session = Session::open(root, "demo")?;
    let mut app = App::new(
        session,
        AppOptions {
            sessions_root: root.to_path_buf(),
            model_dirs: vec![],
        },
    );
    let m1 = root.join("models/Qwen2.5-0.5B-Instruct");
    let m2 = root.join("models/Qwen2.5-1.5B");
    app.models.list = vec![
        model_info("Qwen2.5-0.5B-Instruct", &m1, 494_032_768, "instruct"),
        model_info("Qwen2.5-1.5B", &m2, 1_543_714_304, "base"),
        model_info(
            "Qwen2.5-72B-Instruct",
            &root.join("models/Qwen2.5-72B-Instruct"),
            72_700_000_000,
            "instruct",
        ),
    ];
    for (p, name, params) in [
        (&m1, "Qwen2.5-0.5B-Instruct", 494_032_768u64),
        (&m2, "Qwen2.5-1.5B", 1_543_714_304),
    ] {
        let spec = p.display().to_string();
        app.slots.push(Slot {
            key: spec.clone(),
            spec: spec.clone(),
            adapter: None,
            name: name.into(),
            state: SlotState::Ready(loaded_info(&spec, name, params)),
        });
    }
    // dataset
    let data_path = root.join("data/dialogues.jsonl");
    write_dataset(&data_path, n_samples)?;
    app.open_dataset(&data_path);
    for k in 0..3.min(n_samples) {
        app.data.selected = k * 2;
        app.data_label(k % 2 == 0);
    }
    app.data.selected = 0;
    let probs: Vec<(String, f64)> = app
        .data
        .samples
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.clone(), ((i * 37) % 100) as f64 / 100.0))
        .collect();
    app.data.probs.extend(probs);
    app.data.prob_model = Some("Qwen2.5-0.5B-Instruct".into());
    app.data.refresh();
    // probe
    let keys: Vec<(String, String)> = app
        .slots
        .iter()
        .map(|s| (s.key.clone(), s.label()))
        .collect();
    let mut outputs: Vec<ModelOutput> = keys.iter().map(|(k, l)| ModelOutput::new(k, l)).collect();
    outputs[0].text = "大语言模型（Large Language Model）是一种基于深度学习的自然语言处理模型，它通过在海量文本上训练来学习语言的规律。".repeat(3);
    outputs[0].done = Some(generation(&outputs[0].text.clone()));
    outputs[1].text = "{\"is_fraud\": true, \"fraud_speaker\": \"张伟\", \"reason\": \"要求转账到安全账户并索要验证码\"}".into();
    outputs[1].first_at = Some(Instant::now());
    outputs[1].pieces = 30;
    app.probe.run = Some(ProbeRun {
        request: 1,
        system: Some("You are a helpful assistant.".into()),
        prompt: app.probe.user.text(),
        params: SamplingParams::default(),
        outputs,
    });
    // the built-in suite: the first model gives every verdict as fraud, the others as honest
    let cases = crate::data::suite::parse_suite(crate::data::suite::DEFAULT_SUITE, "built-in")
        .unwrap_or_default();
    let models = keys
        .iter()
        .map(|(k, l)| SuiteModel {
            label: l.clone(),
            spec: k.clone(),
            adapter: None,
        })
        .collect();
    let mut run = SuiteRun::new(
        SuiteResults::new("built-in", cases.clone(), models),
        keys.iter().map(|k| k.0.clone()).collect(),
        (10..10 + cases.len() as u64).collect(),
    );
    for (i, c) in cases.iter().enumerate() {
        for (j, (_, l)) in keys.iter().enumerate() {
            let answer = if j == 0 {
                "{\"is_fraud\": true}"
            } else {
                "{\"is_fraud\": false}"
            };
            let o = &mut run.cells[i][j];
            o.text = answer.into();
            o.done = Some(generation(answer));
            run.results
                .results
                .push(CaseResult::graded(c, l, answer, 21.5, 6));
        }
    }
    app.probe.suite = Some(run);
    for i in 0..20 {
        app.probe.history.push(super::probe::HistoryItem {
            time: format!("2025-01-{:02}T10:{:02}:00Z", 1 + i % 28, i % 60),
            model: keys[i % keys.len()].1.clone(),
            system: "You are a helpful assistant.".into(),
            prompt: format!("{}（第{i}次）", super::keys::strings::DEFAULT_PROMPT),
            output: "大语言模型是一种……".into(),
            ttft_s: Some(0.2),
            tok_s: Some(30.0 + i as f64),
            suite: None,
        });
    }
    // training
    let total = loss_points.max(1) * 2;
    let mut live = LiveRun {
        active: true,
        id: Some("20250101-120000".into()),
        total_steps: total,
        ..Default::default()
    };
    for s in 1..=loss_points {
        live.push_step(step_metrics(s, total));
    }
    for k in 0..30 {
        live.log(format!(
            "step {}: checkpoint sessions/demo/runs/20250101-120000/checkpoints/step-{}",
            k * 10,
            k * 10
        ));
    }
    app.train.live = live;
    for r in 0..3 {
        let id = format!("2024123{r}-090000");
        let loss: Vec<(f64, f64)> = (1..=loss_points / (r + 1))
            .map(|s| (s as f64, step_metrics(s, total).loss + 0.1 * r as f64))
            .collect();
        app.train.runs.push(RunInfo {
            id: id.clone(),
            dir: root.join("runs").join(&id),
            config: None,
            loss,
            eval: vec![],
            total,
            summary: None,
        });
    }
    // evaluation
    let preds: Vec<Prediction> = app
        .data
        .samples
        .iter()
        .enumerate()
        .filter(|(_, s)| s.label.is_some())
        .map(|(i, s)| {
            let p = (((i * 7919) % 1000) as f64 / 1000.0
                + if s.label == Some(true) { 0.3 } else { -0.1 })
            .clamp(0.0, 1.0);
            Prediction {
                id: s.id.clone(),
                label: s.label.unwrap_or(false),
                probability: Some(p),
                answer: None,
                predicted: Some(p >= 0.5),
            }
        })
        .collect();
    let rows: Vec<EvalRow> = preds.iter().map(Prediction::row).collect();
    let result = |model: &PathBuf, adapter: Option<PathBuf>| EvalResult {
        model: model.display().to_string(),
        adapter,
        mode: EvalMode::Score,
        metrics: metrics::compute(&rows),
        samples_per_s: 14.2,
        seconds: 10.0,
        stream: None,
        rule: None,
        predictions: preds.clone(),
    };
    app.eval.results = vec![
        EvalView::new(result(&m1, None), 0.5),
        EvalView::new(
            result(&m1, Some(root.join("runs/20241230-090000/adapter"))),
            0.5,
        ),
    ];
    app.eval.results_data = Some(data_path.clone());
    app.eval.source_data = Some(data_path);
    for (s, pr) in app.data.samples.iter().zip(&app.data.previews) {
        app.eval.previews.insert(s.id.clone(), pr.clone());
    }
    app.message = None;
    Ok(app)
}
