//! The time-budget plan of a run (see `budget` for the clock, the costs and the planning
//! itself): made after the first optimizer step from what the run measured, and made again
//! once, halfway through, from what the steps since cost.

use super::*;

impl Trainer<'_> {
    /// The time-budget plan, made once the first optimizer step has shown what a token
    /// costs: a first validation batch is timed too, then the run's own batches, in their
    /// seeded order, are walked until the budget is full.
    ///
    /// Made again (when the run already has a plan: halfway through it), the costs are
    /// those measured since the first plan, and the warmup and the number of validation
    /// passes on the way stay as planned (spread over the new length).
    pub(super) fn make_plan(
        &mut self,
        control: &TrainControl,
        on_event: &mut dyn FnMut(TrainEvent),
    ) -> Result<()> {
        let tc = self.tc;
        let budget = tc.time_budget_s.context("no time budget")?;
        let before = self.st.plan.clone();
        let again = before.is_some();
        if !again && !self.val_ex.is_empty() {
            let first: Vec<usize> = (0..self.val_ex.len().min(tc.batch)).collect();
            self.val_loss(&first, control)?;
        }
        let mut costs = self.meter.costs(&Costs::default());
        if let Some(old) = &before {
            // what the steps since the first plan cost (all this process measured, for a
            // run resumed in between); a kind of work not seen since keeps its old cost
            let since = match self.plan_meter {
                Some(at) => self.meter.since(&at),
                None => self.meter,
            };
            costs = since.costs(&old.costs);
        } else if let Some(first) = self.first_micro {
            // the first micro-batch pays for cold caches and allocations: measure training
            // on the ones after it where the step had more
            let warm = self.meter.since(&first).costs(&costs);
            costs.step_per_token = warm.step_per_token;
            costs.frozen_per_token = warm.frozen_per_token;
        }
        let cached = |set: Set, i: usize| -> bool {
            self.frozen
                .as_ref()
                .is_some_and(|c| c.lock().map(|c| c.contains(set, i)).unwrap_or(false))
        };
        let prefix = self
            .frozen
            .as_ref()
            .and_then(|c| c.lock().ok().map(|c| c.prefix_len()))
            .unwrap_or(0);
        let frozen_on = self.frozen.is_some();
        let row_tokens = |e: &Example| e.ids.len().saturating_sub(prefix);
        // the steps after this one, in the order the run will take them, as far as the
        // budget could reach
        let remaining = (budget - self.now()).max(0.0);
        let mut seen: std::collections::HashSet<usize> = std::collections::HashSet::new();
        let mut loads = Vec::new();
        let mut acc = 0.0;
        let (mut epoch, mut micro) = (self.st.epoch, self.st.micro);
        if micro >= self.micro_per_epoch {
            epoch += 1;
            micro = 0;
        }
        let mut order = self.order(epoch);
        while acc <= remaining && loads.len() < 1_000_000 {
            let members = self.step_members(&order, micro);
            let mut load = StepLoad {
                step_tokens: 0,
                frozen_tokens: 0,
                samples: 0,
            };
            for idx in &members {
                let refs: Vec<&Example> = idx.iter().map(|&i| &self.train_ex[i]).collect();
                load.step_tokens += make_batch(&refs)?.ids.len();
                load.samples += idx.len();
                if frozen_on {
                    for &i in idx {
                        if !cached(Set::Train, i) && seen.insert(i) {
                            load.frozen_tokens += row_tokens(&self.train_ex[i]);
                        }
                    }
                }
            }
            acc += load.step_tokens as f64 * costs.step_per_token
                + load.frozen_tokens as f64 * costs.frozen_per_token
                + costs.optim;
            loads.push(load);
            micro += members.len();
            if micro >= self.micro_per_epoch {
                epoch += 1;
                micro = 0;
                order = self.order(epoch);
            }
        }
        let eval = (!self.val_ex.is_empty()).then(|| {
            let mut e = EvalLoad {
                first_frozen_tokens: 0,
                frozen_tokens: 0,
                eval_tokens: 0,
            };
            for (k, chunk) in self.val_ex.chunks(tc.batch.max(1)).enumerate() {
                let refs: Vec<&Example> = chunk.iter().collect();
                e.eval_tokens += make_batch(&refs).map(|b| b.ids.len()).unwrap_or(0);
                for (j, ex) in chunk.iter().enumerate() {
                    let i = k * tc.batch.max(1) + j;
                    if frozen_on && !cached(Set::Val, i) {
                        e.first_frozen_tokens += row_tokens(ex);
                    }
                }
            }
            e
        });
        let evals = if let Some(old) = &before {
            // the passes on the way the first plan chose, spread over the new length
            match old.eval_every {
                0 => 0,
                e => old.total_steps.saturating_sub(1) / e,
            }
        } else if tc.eval_every > 0 {
            // what a fixed interval gives over a run of about the reachable length
            (self.st.step + loads.len()).div_ceil(tc.eval_every) - 1
        } else {
            BUDGET_EVALS
        };
        let mut p = plan(
            budget,
            self.now(),
            self.st.step,
            &loads,
            eval,
            evals,
            again,
            costs,
            tc.warmup_ratio,
            if again {
                Some(self.warmup)
            } else {
                tc.warmup_steps
            },
            self.st.samples_seen,
            self.train_ex.len(),
        );
        if let Some(m) = tc.max_steps {
            p.total_steps = p.total_steps.min(m.max(self.st.step));
        }
        if tc.eval_every > 0 {
            p.eval_every = tc.eval_every;
        }
        self.total = p.total_steps;
        self.warmup = p.warmup_steps;
        self.eval_every = p.eval_every;
        // the next step's tokens, and its seconds at the given costs
        let step_tokens = loads.first().map(|l| l.step_tokens).unwrap_or(0);
        let step_s = |c: &Costs| step_tokens as f64 * c.step_per_token + c.optim;
        if let Some(old) = &before {
            on_event(TrainEvent::Log(format!(
                "re-planned at step {} from the steps since the first plan: {} steps instead of {} ({:.2}s a step of {} tokens, planned {:.2}s)",
                self.st.step,
                p.total_steps,
                old.total_steps,
                step_s(&costs),
                step_tokens,
                step_s(&old.costs),
            )));
        }
        on_event(TrainEvent::Log(format!(
            "time budget {}: {} steps ({} samples, {:.2} epochs), warmup {}, validation every {} steps; predicted {} (a step of {} tokens: {:.2}s)",
            crate::fmt::human_secs(budget),
            p.total_steps,
            p.samples,
            p.epochs,
            p.warmup_steps,
            p.eval_every,
            crate::fmt::human_secs(p.predicted_s),
            step_tokens,
            step_s(&costs)
        )));
        on_event(TrainEvent::Planned(p.clone()));
        self.st.plan = Some(p);
        if !again {
            self.plan_meter = Some(self.meter);
        }
        Ok(())
    }
}
