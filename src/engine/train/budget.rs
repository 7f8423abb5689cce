//! Time-budgeted training: the clock the trainer reads, what each kind of work costs, and the
//! plan. After the first optimizer step the trainer knows what a token costs in the frozen
//! layers, in a training step and in a validation pass, and what an optimizer step costs on
//! top; the plan then walks the exact batches the run will take (their order is fixed by the
//! seed) and picks the number of steps whose predicted time fills the budget, so the schedule
//! (warmup, then the decay) ends on time with the learning rate annealed. Once half of the
//! planned steps are done, the run plans once more from what those steps cost (the first
//! estimate rests on a handful of steps and can be off by a quarter either way); the
//! warmup and the number of validation passes on the way stay (spread over the new length),
//! the decay stretches or shrinks to the new end.
//! Each plan is frozen in the trainer state: a resumed run follows it unchanged (and
//! re-plans only if the run had not yet).

#[allow(unused_imports)]
use super::*;

/// Where the trainer reads the time: the wall clock, or a simulated clock (tests) that
/// advances by the cost of the work the trainer reports.
pub trait Clock: Send {
    /// Seconds since the clock started.
    fn now(&self) -> f64;
    /// Work just done (the wall clock ignores it).
    fn charge(&mut self, _work: Work) {}
}

/// A piece of work, as the trainer reports it to its clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Work {
    /// tokens run through the frozen layers (frozen-prefix cache misses)
    Frozen { tokens: usize },
    /// tokens of a micro-batch's training forward and backward
    Step { tokens: usize },
    /// one optimizer update
    Optim,
    /// tokens of a validation forward
    Eval { tokens: usize },
}

pub struct WallClock(Instant);

impl WallClock {
    pub fn new() -> Self {
        Self(Instant::now())
    }
}

impl Default for WallClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for WallClock {
    fn now(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
}

/// A clock that advances only by the cost of the work reported to it.
pub struct SimClock {
    t: f64,
    pub costs: Costs,
    /// from this time on, work costs `later` instead (a machine that speeds up or slows
    /// down, as caches warm or neighbours come and go)
    pub change: Option<(f64, Costs)>,
}

impl SimClock {
    pub fn new(costs: Costs) -> Self {
        Self {
            t: 0.0,
            costs,
            change: None,
        }
    }
}

impl Clock for SimClock {
    fn now(&self) -> f64 {
        self.t
    }
    fn charge(&mut self, w: Work) {
        let c = match &self.change {
            Some((at, later)) if self.t >= *at => later,
            _ => &self.costs,
        };
        self.t += match w {
            Work::Frozen { tokens } => c.frozen_per_token * tokens as f64,
            Work::Step { tokens } => c.step_per_token * tokens as f64,
            Work::Optim => c.optim,
            Work::Eval { tokens } => c.eval_per_token * tokens as f64,
        };
    }
}

/// Seconds per unit of work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Costs {
    pub frozen_per_token: f64,
    pub step_per_token: f64,
    pub optim: f64,
    pub eval_per_token: f64,
}

/// Time spent and work done per kind, as measured by the trainer's clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Meter {
    pub frozen_s: f64,
    pub frozen_tokens: u64,
    pub step_s: f64,
    pub step_tokens: u64,
    pub optim_s: f64,
    pub optim_n: u64,
    pub eval_s: f64,
    pub eval_tokens: u64,
}

impl Meter {
    /// What was measured since `earlier` (a snapshot of the same meter).
    pub fn since(&self, earlier: &Meter) -> Meter {
        Meter {
            frozen_s: self.frozen_s - earlier.frozen_s,
            frozen_tokens: self.frozen_tokens - earlier.frozen_tokens,
            step_s: self.step_s - earlier.step_s,
            step_tokens: self.step_tokens - earlier.step_tokens,
            optim_s: self.optim_s - earlier.optim_s,
            optim_n: self.optim_n - earlier.optim_n,
            eval_s: self.eval_s - earlier.eval_s,
            eval_tokens: self.eval_tokens - earlier.eval_tokens,
        }
    }

    /// The costs these figures show (a kind never seen costs what `fallback` says).
    pub fn costs(&self, fallback: &Costs) -> Costs {
        let per = |s: f64, n: u64, f: f64| if n > 0 { s / n as f64 } else { f };
        Costs {
            frozen_per_token: per(self.frozen_s, self.frozen_tokens, fallback.frozen_per_token),
            step_per_token: per(self.step_s, self.step_tokens, fallback.step_per_token),
            optim: per(self.optim_s, self.optim_n, fallback.optim),
            eval_per_token: per(self.eval_s, self.eval_tokens, fallback.eval_per_token),
        }
    }
}

/// A time-budgeted run's schedule, fixed after its first optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// the budget, from the first step to the end of the last validation
    pub budget_s: f64,
    pub total_steps: usize,
    pub warmup_steps: usize,
    /// validation every this many optimizer steps (and at the last)
    pub eval_every: usize,
    pub costs: Costs,
    /// the time the plan expects the run to take
    pub predicted_s: f64,
    /// samples the planned steps take (an epoch is the training set once)
    pub samples: usize,
    pub epochs: f64,
    /// made halfway through the first plan, from what its steps cost (the last plan a run
    /// makes)
    #[serde(default)]
    pub replanned: bool,
}

/// What one future optimizer step holds, for the plan.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepLoad {
    /// tokens the training forward/backward runs (packed rows)
    pub step_tokens: usize,
    /// tokens the frozen layers run (examples not cached yet; every token without a cache)
    pub frozen_tokens: usize,
    pub samples: usize,
}

/// What a validation pass costs in tokens: the first pass (frozen layers included) and the
/// later ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalLoad {
    pub first_frozen_tokens: usize,
    pub frozen_tokens: usize,
    pub eval_tokens: usize,
}

/// The share of the remaining budget a plan fills (the rest absorbs noise).
pub const PLAN_FILL: f64 = 0.97;

/// The most of the budget validation passes on the way may take: past it the plan
/// validates less often (the last pass, at the end, where the threshold is chosen, is the
/// final evaluation and counts apart).
pub const EVAL_SHARE: f64 = 0.12;

/// The largest number of steps (counting the `done` already taken) whose predicted time,
/// validation passes included, fits in `remaining_s`, with its schedule. `steps` lists the
/// loads of the steps after the `done` ones, as far as the budget could reach; `evals` is
/// how many validation passes the run makes on the way at most (spread evenly; fewer when
/// they would take more than [`EVAL_SHARE`] of the budget). The pass at the last step is the
/// final evaluation: outside the budget. With `again` (the re-plan), `evals` is the number of
/// passes on the way the first plan chose: they are spread over the new length, and only
/// those still to come (from the step just taken on) are counted, at the later passes' cost.
#[allow(clippy::too_many_arguments)]
pub fn plan(
    budget_s: f64,
    spent_s: f64,
    done: usize,
    steps: &[StepLoad],
    eval: Option<EvalLoad>,
    evals: usize,
    again: bool,
    costs: Costs,
    warmup_ratio: f64,
    warmup_steps: Option<usize>,
    samples_done: usize,
    epoch_samples: usize,
) -> Plan {
    let remaining = (budget_s - spent_s).max(0.0) * PLAN_FILL;
    let step_cost = |l: &StepLoad| {
        l.step_tokens as f64 * costs.step_per_token
            + l.frozen_tokens as f64 * costs.frozen_per_token
            + costs.optim
    };
    let eval_cost = |first: bool| match eval {
        Some(e) => {
            let frozen = if first {
                e.first_frozen_tokens
            } else {
                e.frozen_tokens
            };
            frozen as f64 * costs.frozen_per_token + e.eval_tokens as f64 * costs.eval_per_token
        }
        None => 0.0,
    };
    let evals_cost = |n: usize| -> f64 {
        if eval.is_none() || n == 0 {
            return 0.0;
        }
        if again {
            n as f64 * eval_cost(false)
        } else {
            eval_cost(true) + (n - 1) as f64 * eval_cost(false)
        }
    };
    // validation passes on the way that fit in their share of the budget
    let share = remaining * EVAL_SHARE;
    let affordable = if eval.is_none() || eval_cost(true) > share {
        0
    } else {
        let later = eval_cost(false).max(1e-9);
        (1 + ((share - eval_cost(true)) / later) as usize).min(evals)
    };
    // the interval that spreads `n` passes on the way over `total` steps
    let interval = |total: usize, n: usize| total.div_ceil(n + 1).max(1);
    // passes on the way in a run of `total` steps (for the re-plan: those still to come, at
    // steps done..total-1; the one at `done`, the step just taken, runs after the plan)
    let n_evals_for = |total: usize| {
        if !again {
            return affordable.min(total.saturating_sub(1));
        }
        if eval.is_none() || evals == 0 {
            return 0;
        }
        let (e, last) = (interval(total, evals), total.saturating_sub(1));
        (last / e).saturating_sub(done.saturating_sub(1).min(last) / e)
    };
    let mut acc = 0.0;
    let mut best = (done.max(1), 0.0, 0usize);
    let mut samples = 0;
    for (k, l) in steps.iter().enumerate() {
        acc += step_cost(l);
        samples += l.samples;
        let total = done + k + 1;
        let t = acc + evals_cost(n_evals_for(total));
        if t > remaining {
            break;
        }
        best = (total, t, samples);
    }
    let (total, predicted, new_samples) = best;
    let n_evals = n_evals_for(total);
    // passes every `eval_every` steps before the last, then the final one
    let eval_every = if eval.is_none() {
        0
    } else if again {
        interval(total, evals)
    } else {
        interval(total, n_evals)
    };
    let warmup = warmup_steps.unwrap_or((warmup_ratio * total as f64).ceil() as usize);
    let seen = samples_done + new_samples;
    Plan {
        budget_s,
        total_steps: total,
        warmup_steps: warmup,
        eval_every,
        costs,
        predicted_s: spent_s + predicted,
        samples: seen,
        epochs: seen as f64 / epoch_samples.max(1) as f64,
        replanned: again,
    }
}

/// A duration as `--time-budget` takes it: `90s`, `15m`, `1h`, `1h30m` or plain seconds.
pub fn parse_duration(s: &str) -> Result<f64> {
    let t = s.trim();
    if let Ok(v) = t.parse::<f64>() {
        if v > 0.0 && v.is_finite() {
            return Ok(v);
        }
    }
    let mut total = 0.0;
    let mut num = String::new();
    let mut any = false;
    for c in t.chars() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600.0,
            'm' => 60.0,
            's' => 1.0,
            _ => bail!("duration `{s}`: use e.g. 90s, 15m, 1h or 1h30m"),
        };
        let v: f64 = num
            .parse()
            .map_err(|_| anyhow::anyhow!("duration `{s}`: a number must come before `{c}`"))?;
        total += v * unit;
        num.clear();
        any = true;
    }
    if !num.is_empty() || !any || total <= 0.0 || !total.is_finite() {
        bail!("duration `{s}`: use e.g. 90s, 15m, 1h or 1h30m");
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), 90.0);
        assert_eq!(parse_duration("15m").unwrap(), 900.0);
        assert_eq!(parse_duration("1h30m").unwrap(), 5400.0);
        assert_eq!(parse_duration("120").unwrap(), 120.0);
        assert_eq!(parse_duration("0.5h").unwrap(), 1800.0);
        for bad in ["", "m", "10x", "-5", "0", "5m3"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    /// `n` steps of `tokens` training tokens and 4 samples each, nothing through the frozen
    /// layers; steps at 0.01 s a token, validation at 0.01 s a token.
    fn even_steps(n: usize, tokens: usize) -> (Vec<StepLoad>, Costs) {
        let step = StepLoad {
            step_tokens: tokens,
            frozen_tokens: 0,
            samples: 4,
        };
        let costs = Costs {
            step_per_token: 0.01,
            eval_per_token: 0.01,
            ..Default::default()
        };
        (vec![step; n], costs)
    }

    #[test]
    fn a_plan_fills_the_budget_with_its_evaluations() {
        let costs = Costs {
            frozen_per_token: 0.001,
            step_per_token: 0.01,
            optim: 0.5,
            eval_per_token: 0.002,
        };
        // the first 10 steps see new samples (frozen layers run), the rest hit the cache
        let steps: Vec<StepLoad> = (0..1000)
            .map(|k| StepLoad {
                step_tokens: 400,
                frozen_tokens: if k < 10 { 300 } else { 0 },
                samples: 4,
            })
            .collect();
        let eval = EvalLoad {
            first_frozen_tokens: 1000,
            frozen_tokens: 0,
            eval_tokens: 1000,
        };
        let p = plan(
            200.0,
            10.0,
            1,
            &steps,
            Some(eval),
            3,
            false,
            costs,
            0.1,
            None,
            4,
            44,
        );
        // each later step costs 4.5 s (4.8 s while new samples come), a pass on the way 2 s
        // (3 s the first time): 184.3 s available, three passes before the final one
        let step = |k: usize| if k < 10 { 4.8 } else { 4.5 };
        let predicted: f64 = (0..p.total_steps - 1).map(step).sum::<f64>() + 3.0 + 2.0 * 2.0 + 10.0;
        assert!((p.predicted_s - predicted).abs() < 1e-9);
        assert!(p.predicted_s <= 10.0 + 190.0 * PLAN_FILL);
        assert!(
            p.predicted_s + 4.5 > 10.0 + 190.0 * PLAN_FILL,
            "one more step would not fit"
        );
        assert_eq!(p.eval_every, p.total_steps.div_ceil(4));
        assert_eq!(p.warmup_steps, (0.1 * p.total_steps as f64).ceil() as usize);
        assert_eq!(p.samples, 4 * p.total_steps);
    }

    #[test]
    fn costly_validation_is_made_rarer_not_the_training_shorter() {
        let (steps, costs) = even_steps(1000, 100);
        // a first plan of a 100 s budget, validation passes of `tokens` (0.01 s a token)
        let plan_with = |tokens: usize| {
            let eval = EvalLoad {
                first_frozen_tokens: 0,
                frozen_tokens: 0,
                eval_tokens: tokens,
            };
            plan(
                100.0,
                0.0,
                0,
                &steps,
                Some(eval),
                3,
                false,
                costs,
                0.1,
                None,
                0,
                40,
            )
        };
        // a pass costs 15 s, a step 1 s: 12% of a 100 s budget buys no pass on the way,
        // and the final pass counts apart
        let p = plan_with(1500);
        assert_eq!(p.total_steps, 97);
        assert_eq!(p.eval_every, p.total_steps, "only the final pass");
        // at 10 s a pass, one on the way (halfway) fits
        let p = plan_with(1000);
        assert_eq!(p.total_steps, 87);
        assert_eq!(p.eval_every, 44);
    }

    /// The first plan chose only the final pass (its interval was its length): the re-plan
    /// keeps it that way whatever the new length, rather than reading the old interval as a
    /// pass on the way (which would cost a whole pass and keep the run short).
    #[test]
    fn a_re_plan_keeps_the_number_of_passes_not_the_interval() {
        let (steps, costs) = even_steps(1000, 100);
        let eval = EvalLoad {
            first_frozen_tokens: 0,
            frozen_tokens: 0,
            eval_tokens: 5000,
        };
        // `done` steps taken in 100 s of 200: 97 s left to fill, a step 1 s, a pass 50 s
        let re_plan = |done: usize, evals: usize| {
            plan(
                200.0,
                100.0,
                done,
                &steps,
                Some(eval),
                evals,
                true,
                costs,
                0.1,
                Some(6),
                200,
                400,
            )
        };
        let p = re_plan(50, 0);
        assert!(p.replanned);
        assert_eq!(p.total_steps, 50 + 97);
        assert_eq!(p.eval_every, p.total_steps, "only the final pass");
        assert_eq!(p.warmup_steps, 6);
        // 20 steps done: one pass on the way, which falls past step 20, is paid for
        let p = re_plan(20, 1);
        assert_eq!(p.total_steps, 20 + 47);
        assert_eq!(p.eval_every, 34);
    }

    #[test]
    fn a_budget_too_small_for_a_second_step_plans_one() {
        let steps = [StepLoad {
            step_tokens: 100,
            frozen_tokens: 0,
            samples: 1,
        }];
        let costs = Costs {
            step_per_token: 1.0,
            ..Default::default()
        };
        let p = plan(5.0, 4.0, 1, &steps, None, 0, false, costs, 0.1, None, 1, 10);
        assert_eq!(p.total_steps, 1);
        assert_eq!(p.eval_every, 0);
    }
}
