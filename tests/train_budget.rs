//! LoRA on a range of layers, the frozen-prefix cache and time-budgeted runs, on tiny
//! generated models (a simulated clock for the budget).

mod common;
use common::*;

use candle_core::{DType, Tensor};
use fraudlab::engine::train::{
    make_example, mean_loss, mean_loss_cached, Costs, FrozenCache, RunOptions, Schedule, SimClock,
    TrainConfig, TrainControl, TrainEvent, Trainer, PLAN_FILL,
};
use fraudlab::model::adapter::{attach_lora, load_adapter, LoraSpec};
use fraudlab::model::tiny::TinySpec;
use fraudlab::model::{self, LoadOptions, Qwen2Config};
use std::sync::atomic::Ordering;

fn four_layers() -> TinySpec {
    TinySpec {
        config: Some(Qwen2Config {
            num_hidden_layers: 4,
            ..Qwen2Config::tiny(0)
        }),
        ..Default::default()
    }
}

fn load(m: &std::path::Path, dtype: DType) -> model::LoadedModel {
    model::load(
        m.to_str().unwrap(),
        LoadOptions {
            dtype,
            quantized: false,
        },
    )
    .unwrap()
}

fn examples(
    lm: &model::LoadedModel,
    n: usize,
    dir: &std::path::Path,
) -> Vec<fraudlab::engine::train::Example> {
    let f = dir.join("ex.jsonl");
    fraud_jsonl(&f, n);
    fraudlab::data::load(&f)
        .unwrap()
        .samples
        .iter()
        .map(|s| make_example(&lm.tokenizer, s, 512, false).unwrap().unwrap())
        .collect()
}

fn adapter_values(dir: &std::path::Path) -> Vec<(String, Vec<f32>)> {
    let f = fraudlab::model::safetensors_io::SafetensorsFile::open(
        &dir.join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut keys: Vec<&String> = f.entries.keys().collect();
    keys.sort();
    keys.into_iter()
        .map(|k| {
            let v = f
                .load(k, DType::F32, &candle_core::Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            (k.clone(), v)
        })
        .collect()
}

#[test]
fn a_layer_range_adapter_holds_only_its_layers_and_loads_back() {
    let d = tmp();
    let m = tiny_model(d.path(), four_layers());
    let data = d.path().join("train.jsonl");
    fraud_jsonl(&data, 6);
    let tc = TrainConfig {
        model: m.to_str().unwrap().into(),
        data: data.clone(),
        out_dir: d.path().join("run"),
        batch: 2,
        grad_accum: 1,
        max_steps: Some(6),
        lr: 1e-2,
        lora: LoraSpec {
            layers_to_transform: Some(vec![2, 3]),
            ..Default::default()
        },
        ..TrainConfig::default()
    };
    let s = fraudlab::engine::train::train(&tc, &TrainControl::default(), &mut |_| {}).unwrap();
    let keys: Vec<String> = adapter_values(&s.output_dir)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        keys.len(),
        2 * 7 * 2,
        "A and B of 7 projections in 2 layers"
    );
    assert!(keys
        .iter()
        .all(|k| k.contains("layers.2.") || k.contains("layers.3.")));
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(s.output_dir.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["layers_to_transform"], serde_json::json!([2, 3]));
    // the frozen layers were cached once each, then read back
    let fc = s.frozen_cache.expect("layers 0-1 are frozen: a cache");
    assert_eq!(fc.layer, 2);
    assert_eq!(fc.misses, 6, "each example computed once");
    assert!(fc.hits > 0, "the second epoch reads the cache");
    // loads back with its layer list
    let mut lm = load(&m, DType::F32);
    let spec = load_adapter(&mut lm.model, &s.output_dir).unwrap();
    assert_eq!(spec.layers_to_transform, Some(vec![2, 3]));
    assert!(lm.model.layers[0].attn.q_proj.lora.is_none());
    assert!(lm.model.layers[3].mlp.down_proj.lora.is_some());
    // a layer the model lacks is refused
    let mut lm = load(&m, DType::F32);
    let bad = LoraSpec {
        layers_to_transform: Some(vec![4]),
        ..Default::default()
    };
    let e = attach_lora(&mut lm.model, &bad, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("layer 4") && e.contains("0-3"), "{e}");
    assert_eq!(
        fraudlab::model::adapter::parse_layers("20-23,0,2-3").unwrap(),
        vec![0, 2, 3, 20, 21, 22, 23]
    );
    assert!(fraudlab::model::adapter::parse_layers("5-2").is_err());
    assert!(fraudlab::model::adapter::parse_layers("x").is_err());
}

/// Gradients of every LoRA factor for a loss tensor.
fn grads_of(loss: &Tensor, vars: &[fraudlab::model::adapter::LoraVars]) -> Vec<Vec<f64>> {
    let g = loss.backward().unwrap();
    vars.iter()
        .flat_map(|v| [&v.a, &v.b])
        .map(|t| {
            g.get(t.as_tensor())
                .map(|x| x.flatten_all().unwrap().to_vec1::<f64>().unwrap())
                .unwrap_or_default()
        })
        .collect()
}

#[test]
fn the_frozen_prefix_cache_gives_the_losses_and_gradients_of_recomputing() {
    let d = tmp();
    let m = tiny_model(d.path(), four_layers());
    let mut lm = load(&m, DType::F64);
    let ex = examples(&lm, 4, d.path());
    let spec = LoraSpec {
        lora_dropout: 0.1,
        layers_to_transform: Some(vec![2, 3]),
        ..Default::default()
    };
    let vars = attach_lora(&mut lm.model, &spec, 5).unwrap();
    for (i, v) in vars.iter().enumerate() {
        let vals = fraudlab::model::tiny::randn(70 + i as u64, v.b.elem_count(), 0.05);
        let t = Tensor::from_vec(vals, v.b.shape(), &lm.model.device).unwrap();
        v.b.set(&t.to_dtype(DType::F64).unwrap()).unwrap();
    }
    assert_eq!(lm.model.frozen_below(), 2);
    let mode = fraudlab::model::Mode::Train { dropout_seed: 11 };
    let plain = mean_loss(&lm.model, &ex, mode).unwrap();
    let plain_g = grads_of(&plain, &vars);
    let ids: Vec<&[u32]> = ex.iter().map(|e| e.ids.as_slice()).collect();
    let p = ids
        .iter()
        .map(|x| x.iter().zip(ids[0]).take_while(|(a, b)| a == b).count())
        .min()
        .unwrap();
    assert!(p >= 8, "the examples share a prompt prefix");
    for budget in [u64::MAX, 0] {
        // in memory, then everything through the spill file
        let spill = d.path().join(format!("spill-{budget}.bin"));
        let mut cache =
            FrozenCache::new(&lm.model, 2, &ids[0][..p], budget, spill.clone()).unwrap();
        let cold = mean_loss_cached(&lm.model, &ex, &mut cache, mode).unwrap();
        assert_eq!(cache.stats.misses, 4);
        let warm = mean_loss_cached(&lm.model, &ex, &mut cache, mode).unwrap();
        assert_eq!(cache.stats.hits, 4);
        if budget == 0 {
            assert!(spill.exists() && cache.stats.disk_bytes > 0 && cache.stats.mem_bytes == 0);
        }
        let (c, w) = (
            cold.to_scalar::<f64>().unwrap(),
            warm.to_scalar::<f64>().unwrap(),
        );
        assert_eq!(
            c.to_bits(),
            w.to_bits(),
            "a cached value is the computed one, bit for bit"
        );
        let pl = plain.to_scalar::<f64>().unwrap();
        assert!((c - pl).abs() < 1e-10 * pl.abs().max(1.0), "{c} vs {pl}");
        let (gc, gw) = (grads_of(&cold, &vars), grads_of(&warm, &vars));
        assert_eq!(gc, gw);
        let mut checked = 0;
        for (a, b) in gc.iter().zip(&plain_g) {
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() < 1e-9 * y.abs().max(1e-3), "{x} vs {y}");
                checked += 1;
            }
        }
        assert!(checked > 1000);
        // the frozen layers' factors would get nothing: only layers 2 and 3 carry LoRA
        drop(cache);
        assert!(!spill.exists(), "the spill file goes with the cache");
    }
}

fn budget_config(
    m: &std::path::Path,
    data: &std::path::Path,
    out: &std::path::Path,
) -> TrainConfig {
    TrainConfig {
        model: m.to_str().unwrap().into(),
        data: data.into(),
        val_split: 0.25,
        out_dir: out.into(),
        batch: 2,
        grad_accum: 2,
        lr: 1e-2,
        schedule: Schedule::Cosine,
        warmup_ratio: 0.1,
        seed: 4,
        time_budget_s: Some(120.0),
        lora: LoraSpec {
            layers_to_transform: Some(vec![1, 2, 3]),
            ..Default::default()
        },
        ..TrainConfig::default()
    }
}

fn sim_costs() -> Costs {
    Costs {
        frozen_per_token: 0.001,
        step_per_token: 0.004,
        optim: 0.05,
        eval_per_token: 0.0015,
    }
}

/// A run of `tc` to its end on a simulated clock: its summary and every event it reported.
fn run_on(
    tc: &TrainConfig,
    m: &std::path::Path,
    clock: SimClock,
) -> (fraudlab::engine::train::TrainSummary, Vec<TrainEvent>) {
    let opts = RunOptions {
        clock: Some(Box::new(clock)),
        frozen: None,
    };
    let mut events = vec![];
    let mut on = |e: TrainEvent| events.push(e);
    let s = Trainer::start(load(m, DType::F32), tc, opts, &mut on)
        .unwrap()
        .run(&TrainControl::default(), &mut on)
        .unwrap();
    (s, events)
}

/// The machine turns twice as fast right after the first plan (measured on the slow first
/// steps): the re-plan halfway sees it and stretches the run to fill the budget, where the
/// first plan alone would have ended near half of it.
#[test]
fn the_re_plan_halfway_fills_a_budget_the_first_plan_misjudged() {
    let d = tmp();
    let m = tiny_model(d.path(), four_layers());
    let data = d.path().join("train.jsonl");
    fraud_jsonl(&data, 16);
    let tc = budget_config(&m, &data, &d.path().join("run"));
    let slow = sim_costs();
    let fast = Costs {
        frozen_per_token: slow.frozen_per_token / 2.0,
        step_per_token: slow.step_per_token / 2.0,
        optim: slow.optim / 2.0,
        eval_per_token: slow.eval_per_token / 2.0,
    };
    let mut clock = SimClock::new(slow);
    clock.change = Some((4.0, fast));
    let (s, events) = run_on(&tc, &m, clock);
    let plans: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Planned(p) => Some(p.clone()),
            _ => None,
        })
        .collect();
    let logs: Vec<&String> = events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Log(l) => Some(l),
            _ => None,
        })
        .collect();
    assert_eq!(plans.len(), 2, "{plans:?}");
    let (first, second) = (&plans[0], &plans[1]);
    assert!(first.predicted_s > 0.85 * 120.0, "{first:?}");
    assert!(
        second.total_steps as f64 > 1.5 * first.total_steps as f64,
        "{first:?} then {second:?}"
    );
    assert!(logs.iter().any(|l| l.starts_with("re-planned at step")));
    assert_eq!(s.end, "completed");
    assert_eq!(s.steps, second.total_steps);
    assert!(s.train_s <= 120.0, "{}", s.train_s);
    assert!(s.train_s <= second.predicted_s + 1e-6);
    assert!(s.train_s >= 0.85 * 120.0, "used the budget: {}", s.train_s);
    // the first plan's share of the budget was kept by the first plan
    assert!(first.predicted_s <= 120.0 * PLAN_FILL + 1e-9);
    assert_eq!(s.plan.as_ref(), Some(second));
}

#[test]
fn a_time_budget_plans_a_schedule_that_ends_on_time() {
    let d = tmp();
    let m = tiny_model(d.path(), four_layers());
    let data = d.path().join("train.jsonl");
    fraud_jsonl(&data, 16);
    let tc = budget_config(&m, &data, &d.path().join("run"));
    let lm = load(&m, DType::F32);
    let mut lrs = vec![];
    let mut plans = vec![];
    let mut evals = 0;
    let opts = RunOptions {
        clock: Some(Box::new(SimClock::new(sim_costs()))),
        frozen: None,
    };
    let mut on = |e: TrainEvent| match e {
        TrainEvent::Step(s) => lrs.push((s.lr, s.total_steps)),
        TrainEvent::Planned(p) => plans.push(p),
        TrainEvent::Eval { .. } => evals += 1,
        _ => {}
    };
    let s = Trainer::start(lm, &tc, opts, &mut on)
        .unwrap()
        .run(&TrainControl::default(), &mut on)
        .unwrap();
    // the first plan, then the re-plan halfway: on a clock whose costs never change, the
    // first one was right and the second keeps it within a step
    assert_eq!(plans.len(), 2, "{plans:?}");
    assert!(!plans[0].replanned && plans[1].replanned);
    assert!(plans[1].total_steps.abs_diff(plans[0].total_steps) <= 1);
    assert_eq!(plans[1].warmup_steps, plans[0].warmup_steps);
    let on_the_way = |p: &fraudlab::engine::train::Plan| (p.total_steps - 1) / p.eval_every;
    assert_eq!(on_the_way(&plans[1]), on_the_way(&plans[0]));
    let p = &plans[1];
    assert_eq!(s.end, "completed");
    assert_eq!(s.steps, p.total_steps);
    assert!(p.total_steps > 8, "the budget holds several epochs ({p:?})");
    assert!(p.epochs > 2.0);
    // on time: within the share of the budget the plan fills, and not far under it
    // on time: within the budget, as predicted, and not far under it (the re-plan fills
    // its share of what remained, so it may pass the first plan's share of the whole)
    assert!(s.train_s <= 120.0, "{}", s.train_s);
    assert!(s.train_s >= 0.85 * 120.0, "{}", s.train_s);
    assert!(
        s.train_s <= p.predicted_s + 1e-6,
        "{} vs {}",
        s.train_s,
        p.predicted_s
    );
    // the learning rate warmed up, peaked and annealed
    let peak = lrs.iter().map(|x| x.0).fold(0.0, f64::max);
    assert!((peak - 1e-2).abs() < 1e-3);
    let last = lrs.last().unwrap().0;
    assert!(last < 0.02 * peak, "annealed: {last}");
    assert!(lrs[1..]
        .iter()
        .all(|x| x.1 == p.total_steps || x.1 == plans[0].total_steps));
    assert_eq!(lrs.last().unwrap().1, p.total_steps);
    // passes on the way, then the final one (outside the budget)
    assert!((2..=fraudlab::engine::train::BUDGET_EVALS + 1).contains(&evals));
    assert_eq!(s.samples_seen, p.samples);
    assert!(s.plan.is_some());
    let fc = s.frozen_cache.unwrap();
    assert_eq!(
        fc.misses, 16,
        "12 training and 4 validation examples computed once"
    );
    // a budget too small for more than the first step still ends cleanly
    let small = TrainConfig {
        time_budget_s: Some(0.5),
        out_dir: d.path().join("small"),
        ..tc.clone()
    };
    let lm = load(&m, DType::F32);
    let opts = RunOptions {
        clock: Some(Box::new(SimClock::new(sim_costs()))),
        frozen: None,
    };
    let s = Trainer::start(lm, &small, opts, &mut |_| {})
        .unwrap()
        .run(&TrainControl::default(), &mut |_| {})
        .unwrap();
    assert_eq!(s.steps, 1);
}

#[test]
fn a_budgeted_run_resumes_on_its_plan_bit_for_bit() {
    let d = tmp();
    let m = tiny_model(d.path(), four_layers());
    let data = d.path().join("train.jsonl");
    fraud_jsonl(&data, 12);
    let run = |tc: &TrainConfig, stop_at: Option<usize>| {
        let control = TrainControl::default();
        let opts = RunOptions {
            clock: Some(Box::new(SimClock::new(sim_costs()))),
            frozen: None,
        };
        let mut on = |e: TrainEvent| {
            if let TrainEvent::Step(s) = e {
                if Some(s.step) == stop_at {
                    control.stop.store(true, Ordering::SeqCst);
                }
            }
        };
        Trainer::start(load(&m, DType::F32), tc, opts, &mut on)
            .unwrap()
            .run(&control, &mut on)
            .unwrap()
    };
    let a = run(&budget_config(&m, &data, &d.path().join("a")), None);
    let planned = a.plan.clone().unwrap();
    assert!(planned.replanned);
    // stopped after the re-plan (made halfway through the first plan)
    let stop = planned.total_steps * 3 / 4;
    let cut = budget_config(&m, &data, &d.path().join("b"));
    let b = run(&cut, Some(stop));
    assert_eq!(b.end, "stopped");
    assert_eq!(b.steps, stop);
    assert!(b.plan.as_ref().is_some_and(|p| p.replanned));
    let c = run(
        &TrainConfig {
            resume: true,
            ..cut
        },
        None,
    );
    assert_eq!(c.end, "completed");
    assert_eq!(c.plan, a.plan, "the resumed run follows the plan it made");
    assert_eq!(c.steps, a.steps);
    // the resumed run recomputed the frozen layers of the samples seen before the stop
    assert!(c.train_s >= a.train_s);
    let (x, y) = (adapter_values(&a.output_dir), adapter_values(&c.output_dir));
    assert_eq!(x.len(), y.len());
    for ((ka, va), (kc, vc)) in x.iter().zip(&y) {
        assert_eq!(ka, kc);
        let same = va.iter().zip(vc).all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same, "{ka} differs after resuming");
    }
    assert!(x.iter().any(|(_, v)| v.iter().any(|&f| f != 0.0)));
    // stopped before the re-plan: the resumed run keeps the first plan until halfway, then
    // re-plans from what it measured itself (its recomputed frozen layers cost time the
    // uninterrupted run did not spend), and still ends within the budget
    let cut = budget_config(&m, &data, &d.path().join("e"));
    let e = run(&cut, Some(5));
    assert_eq!(e.steps, 5);
    assert!(e.plan.as_ref().is_some_and(|p| !p.replanned));
    let f = run(
        &TrainConfig {
            resume: true,
            ..cut
        },
        None,
    );
    assert_eq!(f.end, "completed");
    let fp = f.plan.unwrap();
    assert!(fp.replanned);
    assert!(f.train_s <= 120.0 && f.train_s <= fp.predicted_s + 1e-6);
    assert!(fp.total_steps.abs_diff(planned.total_steps) <= 2, "{fp:?}");
}

#[test]
fn cli_train_with_a_layer_range_and_a_time_budget() {
    let d = tmp();
    let m = tiny_model(d.path(), four_layers());
    let data = d.path().join("train.jsonl");
    fraud_jsonl(&data, 8);
    let out = d.path().join("run");
    let o = run(&[
        "train",
        "--model",
        m.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--val-split",
        "0.25",
        "--layers",
        "2-3",
        "--time-budget",
        "3s",
        "--batch",
        "2",
        "--grad-accum",
        "1",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let plan = stdout
        .lines()
        .find_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .filter(|v| v.get("plan").is_some())
        })
        .expect("a plan line");
    assert!(plan["plan"]["total_steps"].as_u64().unwrap() >= 1);
    let fin = stdout
        .lines()
        .find_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .filter(|v| v.get("finished").is_some())
        })
        .unwrap();
    assert!(fin["finished"]["train_s"].as_f64().unwrap() < 5.0);
    let cfg = std::fs::read_to_string(out.join("adapter/adapter_config.json")).unwrap();
    assert!(cfg.contains("\"layers_to_transform\""));
    for bad in [["--layers", "9"], ["--time-budget", "soon"]] {
        let mut args = vec![
            "train",
            "--model",
            m.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(bad);
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{bad:?}");
    }
}

#[test]
fn a_validation_pass_reads_p_fraud_as_score_mode_does() {
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    let lm = load(&m, DType::F32);
    let f = d.path().join("ex.jsonl");
    fraud_jsonl(&f, 6);
    let samples = fraudlab::data::load(&f).unwrap().samples;
    let ex: Vec<_> = samples
        .iter()
        .map(|s| make_example(&lm.tokenizer, s, 512, false).unwrap().unwrap())
        .collect();
    for (e, s) in ex.iter().zip(&samples) {
        let v = e.verdict.expect("a labelled fraud sample has a verdict");
        assert_eq!(v.label, s.label.unwrap());
        assert_eq!(e.ids[v.pos], if v.label { v.t } else { v.f });
        assert!(e.labels[v.pos].is_some());
    }
    let got = fraudlab::engine::train::val_probabilities(&lm.model, &ex, 4).unwrap();
    let want = fraudlab::engine::eval::score_with(
        &lm.model,
        &lm.tokenizer,
        &samples,
        3,
        &std::sync::atomic::AtomicBool::new(false),
        &mut |_, _| {},
    )
    .unwrap();
    for (g, w) in got.iter().zip(&want) {
        let g = g.unwrap();
        assert!((g - w).abs() < 1e-5, "{g} vs {w}");
    }
}

#[test]
fn tune_halves_its_grid_within_the_budget_and_keeps_the_best_adapter() {
    let d = tmp();
    let m = tiny_model(d.path(), four_layers());
    let data = d.path().join("train.jsonl");
    fraud_jsonl(&data, 16);
    let out = d.path().join("tune");
    let t0 = std::time::Instant::now();
    let o = run(&[
        "tune",
        "--model",
        m.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--time-budget",
        "10s",
        "--grid-lr",
        "1e-3,1e-2",
        "--grid-layers",
        "all;2-3",
        "--eta",
        "2",
        "--batch",
        "2",
        "--grad-accum",
        "1",
        "--json",
    ]);
    let took = t0.elapsed().as_secs_f64();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("tune.json")).unwrap()).unwrap();
    let trials = r["trials"].as_array().unwrap();
    // 4 recipes, then the best 2, then the best 1
    let per_rung: Vec<usize> = (0..3)
        .map(|k| trials.iter().filter(|t| t["rung"] == k).count())
        .collect();
    assert_eq!(per_rung, vec![4, 2, 1]);
    let kept: Vec<&serde_json::Value> = trials.iter().filter(|t| t["kept"] == true).collect();
    assert_eq!(kept.len(), 2 + 1 + 1);
    // a rung's survivors are the ones with the best validation ROC-AUC
    for rung in 0..2 {
        let rt: Vec<&serde_json::Value> = trials.iter().filter(|t| t["rung"] == rung).collect();
        let worst_kept = rt
            .iter()
            .filter(|t| t["kept"] == true)
            .map(|t| t["val_auc"].as_f64().unwrap_or(-1.0))
            .fold(f64::INFINITY, f64::min);
        let best_dropped = rt
            .iter()
            .filter(|t| t["kept"] != true)
            .map(|t| t["val_auc"].as_f64().unwrap_or(-1.0))
            .fold(f64::NEG_INFINITY, f64::max);
        assert!(worst_kept >= best_dropped);
    }
    // later rungs get more time per trial
    let budget_of = |k: usize| {
        trials.iter().find(|t| t["rung"] == k).unwrap()["budget_s"]
            .as_f64()
            .unwrap()
    };
    assert!(
        budget_of(2) > budget_of(0),
        "{} {} {}",
        budget_of(0),
        budget_of(1),
        budget_of(2)
    );
    assert!(
        took < 10.0 + 8.0,
        "the search kept to its budget ({took:.1}s)"
    );
    // the winner's adapter, with its threshold, is the result
    let best = &r["best"];
    assert_eq!(best["rung"], 2);
    let meta = fraudlab::model::adapter::AdapterMeta::read(&out.join("adapter"))
        .unwrap()
        .unwrap();
    assert_eq!(meta.threshold, best["threshold"].as_f64());
    assert!(out.join("adapter/adapter_model.safetensors").exists());
    // a search needs a budget
    let o = run(&[
        "tune",
        "--model",
        m.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
}
