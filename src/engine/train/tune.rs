//! `fraudlab tune`: a recipe search that fits in a time budget. A small, stated grid
//! (learning rate × LoRA rank × layer range) goes through successive halving: every recipe
//! trains a short time-budgeted run, the best third (by validation ROC-AUC, then validation
//! loss) trains again with three times the time, and so on until one is left; its adapter,
//! with the threshold calibrated on validation, is the result. Selection sees the validation
//! split only. The runs share the loaded base model and one frozen-prefix cache (at the
//! lowest frozen layer of the recipes), so the frozen layers of a sample run once for the
//! whole search.

#[allow(unused_imports)]
use super::*;

/// The recipes a search tries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grid {
    pub lrs: Vec<f64>,
    pub ranks: Vec<usize>,
    /// layer ranges (`None`: every layer); empty: the model's defaults
    /// ([`Grid::default_for`])
    pub layers: Vec<Option<Vec<usize>>>,
}

impl Default for Grid {
    /// lr 1e-4 / 2e-4 / 4e-4, rank 8, the model's default layer ranges.
    fn default() -> Self {
        Self {
            lrs: vec![1e-4, 2e-4, 4e-4],
            ranks: vec![8],
            layers: vec![],
        }
    }
}

impl Grid {
    /// The default grid for a model of `n_layers`: lr 1e-4 / 2e-4 / 4e-4 × rank 8 × every
    /// layer / the upper half / the upper quarter.
    pub fn default_for(n_layers: usize) -> Self {
        let upper = |from: usize| Some((from..n_layers).collect::<Vec<_>>());
        let mut layers = vec![None];
        for from in [n_layers / 2, n_layers - n_layers / 4] {
            if from > 0 && from < n_layers && !layers.contains(&upper(from)) {
                layers.push(upper(from));
            }
        }
        Self {
            lrs: vec![1e-4, 2e-4, 4e-4],
            ranks: vec![8],
            layers,
        }
    }

    /// Every recipe of the grid.
    pub fn recipes(&self) -> Vec<Recipe> {
        let mut out = Vec::new();
        for layers in &self.layers {
            for &r in &self.ranks {
                for &lr in &self.lrs {
                    out.push(Recipe {
                        lr,
                        r,
                        layers: layers.clone(),
                    });
                }
            }
        }
        out
    }
}

/// One point of the grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    pub lr: f64,
    pub r: usize,
    pub layers: Option<Vec<usize>>,
}

impl Recipe {
    pub fn name(&self) -> String {
        format!(
            "lr{:.0e}-r{}-{}",
            self.lr,
            self.r,
            self.layers
                .as_deref()
                .map(crate::model::adapter::format_layers)
                .unwrap_or_else(|| "all".into())
        )
    }

    fn lowest_layer(&self) -> usize {
        self.layers
            .as_ref()
            .and_then(|l| l.iter().min().copied())
            .unwrap_or(0)
    }
}

/// What a trial did and how it scored on validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    pub name: String,
    pub recipe: Recipe,
    pub rung: usize,
    pub budget_s: f64,
    pub run_dir: PathBuf,
    pub end: String,
    pub steps: usize,
    pub samples: usize,
    pub train_s: f64,
    pub eval_loss: Option<f64>,
    pub val_auc: Option<f64>,
    pub val_f1: Option<f64>,
    pub threshold: Option<f64>,
    /// went on to the next rung (or won the last one)
    pub kept: bool,
}

/// The search's result (`tune.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TuneResult {
    pub budget_s: f64,
    pub seconds: f64,
    pub grid: Grid,
    pub trials: Vec<Trial>,
    pub best: Trial,
    /// the winner's adapter, copied to `<out>/adapter`
    pub adapter: PathBuf,
}

/// What a search reports while it runs.
#[derive(Debug, Clone)]
pub enum TuneEvent {
    TrialStarted {
        name: String,
        rung: usize,
        index: usize,
        of: usize,
        budget_s: f64,
    },
    Train(TrainEvent),
    TrialFinished(Trial),
    Finished(Box<TuneResult>),
}

/// Trials per rung of successive halving with `eta` from `n` recipes: n, ⌈n/η⌉, … 1.
pub fn rungs(n: usize, eta: usize) -> Vec<usize> {
    let mut out = vec![n.max(1)];
    while *out.last().expect("not empty") > 1 {
        let k = out.last().expect("not empty").div_ceil(eta.max(2));
        out.push(k);
    }
    out
}

/// Searches `grid` with successive halving (η = `eta`) within `budget_s` seconds, each trial
/// a run of `base` (its model, data, validation, batch…) with the recipe's lr, rank and
/// layers, under `base.out_dir/trials/`. The winner's adapter goes to `base.out_dir/adapter`
/// and the record of every trial to `base.out_dir/tune.json`.
pub fn tune(
    base: &TrainConfig,
    grid: &Grid,
    budget_s: f64,
    eta: usize,
    control: &TrainControl,
    on_event: &mut dyn FnMut(TuneEvent),
) -> Result<TuneResult> {
    let t0 = Instant::now();
    check(base, budget_s)?;
    let lm = model::load_for_training(&base.model, base.load_options()?)?;
    search(lm, t0, base, grid, budget_s, eta, control, on_event)
}

/// [`tune`] on a model already loaded (the engine's, shared); the budget counts from now.
pub fn tune_loaded(
    lm: LoadedModel,
    base: &TrainConfig,
    grid: &Grid,
    budget_s: f64,
    eta: usize,
    control: &TrainControl,
    on_event: &mut dyn FnMut(TuneEvent),
) -> Result<TuneResult> {
    let t0 = Instant::now();
    check(base, budget_s)?;
    search(lm, t0, base, grid, budget_s, eta, control, on_event)
}

/// Settings a search refuses before loading anything.
fn check(base: &TrainConfig, budget_s: f64) -> Result<()> {
    if !(budget_s > 0.0 && budget_s.is_finite()) {
        bail!("the time budget must be a positive number of seconds");
    }
    if base.val.is_none() && base.val_split <= 0.0 {
        bail!("tune selects on validation: give --val FILE or --val-split (e.g. 0.1)");
    }
    if base.full {
        bail!("tune searches LoRA recipes (not --full)");
    }
    Ok(())
}

/// The search itself, its budget counted from `t0`.
#[allow(clippy::too_many_arguments)]
fn search(
    lm: LoadedModel,
    t0: Instant,
    base: &TrainConfig,
    grid: &Grid,
    budget_s: f64,
    eta: usize,
    control: &TrainControl,
    on_event: &mut dyn FnMut(TuneEvent),
) -> Result<TuneResult> {
    let n_layers = lm.model.layers.len();
    let mut grid = grid.clone();
    if grid.layers.is_empty() {
        grid.layers = Grid::default_for(n_layers).layers;
    }
    let grid = &grid;
    let recipes = grid.recipes();
    if recipes.is_empty() {
        bail!("the search grid is empty");
    }
    for r in &recipes {
        if let Some(bad) = r.layers.iter().flatten().find(|&&l| l >= n_layers) {
            bail!(
                "recipe {}: layer {bad} does not exist (the model has layers 0-{})",
                r.name(),
                n_layers - 1
            );
        }
    }
    let out = base.out_dir.clone();
    std::fs::create_dir_all(&out).with_context(|| format!("{}: cannot create", out.display()))?;
    let counts = rungs(recipes.len(), eta);
    let factor = eta.max(2) as f64;
    // weight of every trial still to run: a rung-i trial gets η^i units of time
    let weights: Vec<f64> = counts
        .iter()
        .enumerate()
        .map(|(i, &n)| n as f64 * factor.powi(i as i32))
        .collect();
    let cache = shared_cache(&lm, base, &recipes, &out)?;
    let mut alive: Vec<Recipe> = recipes;
    let mut trials: Vec<Trial> = Vec::new();
    let total_trials: usize = counts.iter().sum();
    let mut index = 0;
    for (rung, _) in counts.iter().enumerate() {
        let mut rung_trials = Vec::new();
        for recipe in &alive {
            if control.stop.load(Ordering::SeqCst) {
                bail!("tune stopped");
            }
            // what is left of the budget, shared by the trials still to come by weight
            let left: f64 = weights[rung..].iter().sum::<f64>()
                - rung_trials.len() as f64 * factor.powi(rung as i32);
            let remaining = budget_s - t0.elapsed().as_secs_f64();
            let trial_budget =
                (remaining * factor.powi(rung as i32) / left.max(1e-9)).max(budget_s / 100.0);
            index += 1;
            let name = recipe.name();
            on_event(TuneEvent::TrialStarted {
                name: name.clone(),
                rung,
                index,
                of: total_trials,
                budget_s: trial_budget,
            });
            let tc = TrainConfig {
                lr: recipe.lr,
                lora: LoraSpec {
                    r: recipe.r,
                    lora_alpha: base.lora.lora_alpha / base.lora.r as f64 * recipe.r as f64,
                    layers_to_transform: recipe.layers.clone(),
                    ..base.lora.clone()
                },
                time_budget_s: Some(trial_budget),
                out_dir: out.join("trials").join(format!("{rung}-{name}")),
                resume: false,
                save_every: 0,
                ..base.clone()
            };
            let trial_cache = cache.as_ref().filter(|c| {
                c.lock()
                    .map(|c| c.layer() <= recipe.lowest_layer())
                    .unwrap_or(false)
            });
            let opts = RunOptions {
                clock: None,
                frozen: trial_cache.cloned(),
            };
            let summary = Trainer::start(lm.clone(), &tc, opts, &mut |e| {
                on_event(TuneEvent::Train(e))
            })?
            .run(control, &mut |e| on_event(TuneEvent::Train(e)))?;
            let trial = Trial {
                name,
                recipe: recipe.clone(),
                rung,
                budget_s: trial_budget,
                run_dir: summary.run_dir.clone(),
                end: summary.end.clone(),
                steps: summary.steps,
                samples: summary.samples_seen,
                train_s: summary.train_s,
                eval_loss: summary.best_eval_loss,
                val_auc: summary.calibration.as_ref().and_then(|c| c.roc_auc),
                val_f1: summary.calibration.as_ref().map(|c| c.f1),
                threshold: summary.calibration.as_ref().map(|c| c.threshold),
                kept: false,
            };
            on_event(TuneEvent::TrialFinished(trial.clone()));
            if summary.end == "stopped" {
                trials.push(trial);
                bail!("tune stopped");
            }
            rung_trials.push(trial);
        }
        let keep = counts.get(rung + 1).copied().unwrap_or(1);
        let mut ranked: Vec<usize> = (0..rung_trials.len()).collect();
        ranked.sort_by(|&a, &b| better(&rung_trials[a], &rung_trials[b]));
        for &k in ranked.iter().take(keep) {
            rung_trials[k].kept = true;
        }
        alive = ranked
            .iter()
            .take(keep)
            .map(|&k| rung_trials[k].recipe.clone())
            .collect();
        trials.extend(rung_trials);
    }
    let best = trials
        .iter()
        .rev()
        .find(|t| t.kept)
        .cloned()
        .context("no trial finished")?;
    let adapter = out.join("adapter");
    let src = best.run_dir.join("adapter");
    let _ = std::fs::remove_dir_all(&adapter);
    std::fs::create_dir_all(&adapter)?;
    for e in std::fs::read_dir(&src)
        .with_context(|| format!("{}: cannot read", src.display()))?
        .flatten()
    {
        if e.path().is_file() {
            std::fs::copy(e.path(), adapter.join(e.file_name()))?;
        }
    }
    let result = TuneResult {
        budget_s,
        seconds: t0.elapsed().as_secs_f64(),
        grid: grid.clone(),
        trials,
        best,
        adapter,
    };
    data::write_atomic(
        &out.join("tune.json"),
        serde_json::to_string_pretty(&result)?.as_bytes(),
    )?;
    on_event(TuneEvent::Finished(Box::new(result.clone())));
    Ok(result)
}

/// Order of trials, best first: higher validation ROC-AUC, then lower validation loss.
fn better(a: &Trial, b: &Trial) -> std::cmp::Ordering {
    let auc = |t: &Trial| t.val_auc.unwrap_or(f64::NEG_INFINITY);
    let loss = |t: &Trial| t.eval_loss.unwrap_or(f64::INFINITY);
    auc(b).total_cmp(&auc(a)).then(loss(a).total_cmp(&loss(b)))
}

/// One frozen-prefix cache for every recipe that freezes layers, at the lowest layer any of
/// them trains (recipes training layer 0 have nothing frozen and go without).
fn shared_cache(
    lm: &LoadedModel,
    base: &TrainConfig,
    recipes: &[Recipe],
    out: &Path,
) -> Result<Option<SharedCache>> {
    let Some(layer) = recipes
        .iter()
        .map(Recipe::lowest_layer)
        .filter(|&l| l > 0)
        .min()
    else {
        return Ok(None);
    };
    if base.frozen_cache_mib == Some(0) {
        return Ok(None);
    }
    let (train_ex, val_ex, _) = load_examples(base, &lm.tokenizer)?;
    let ids: Vec<&[u32]> = train_ex
        .iter()
        .chain(&val_ex)
        .map(|e| e.ids.as_slice())
        .collect();
    let p = crate::engine::eval::common_prefix(&ids);
    let budget = base
        .frozen_cache_mib
        .map(|m| m as u64 * 1048576)
        .unwrap_or_else(default_cache_bytes);
    let c = FrozenCache::new(
        &lm.model,
        layer,
        &ids[0][..p],
        budget,
        out.join("frozen-cache.bin"),
    )?;
    Ok(Some(Arc::new(Mutex::new(c))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successive_halving_rungs() {
        assert_eq!(rungs(9, 3), vec![9, 3, 1]);
        assert_eq!(rungs(6, 3), vec![6, 2, 1]);
        assert_eq!(rungs(1, 3), vec![1]);
        assert_eq!(rungs(4, 2), vec![4, 2, 1]);
    }

    #[test]
    fn the_default_grid_and_recipe_names() {
        let g = Grid::default_for(24);
        assert_eq!(g.recipes().len(), 9);
        assert_eq!(g.layers[1], Some((12..24).collect()));
        assert_eq!(g.layers[2], Some((18..24).collect()));
        let r = &g.recipes()[4];
        assert_eq!(r.name(), "lr2e-4-r8-12-23");
        // a 2-layer model: every layer, and the upper one
        assert_eq!(Grid::default_for(2).layers, vec![None, Some(vec![1])]);
    }

    #[test]
    fn trials_rank_by_auc_then_loss() {
        let t = |auc: Option<f64>, loss: f64| Trial {
            name: String::new(),
            recipe: Recipe {
                lr: 1e-4,
                r: 8,
                layers: None,
            },
            rung: 0,
            budget_s: 1.0,
            run_dir: PathBuf::new(),
            end: "completed".into(),
            steps: 1,
            samples: 1,
            train_s: 1.0,
            eval_loss: Some(loss),
            val_auc: auc,
            val_f1: None,
            threshold: None,
            kept: false,
        };
        let mut v = [
            t(Some(0.8), 0.5),
            t(Some(0.9), 0.7),
            t(None, 0.1),
            t(Some(0.9), 0.6),
        ];
        v.sort_by(better);
        assert_eq!(
            v.iter()
                .map(|x| (x.val_auc, x.eval_loss))
                .collect::<Vec<_>>(),
            vec![
                (Some(0.9), Some(0.6)),
                (Some(0.9), Some(0.7)),
                (Some(0.8), Some(0.5)),
                (None, Some(0.1))
            ]
        );
    }
}
