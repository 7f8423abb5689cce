//! Validation in a run: the loss and P(fraud) of each validation dialogue (from the
//! frozen-prefix cache where there is one), the ROC-AUC on the way, and at the end the
//! calibrated decision threshold written into `fraudlab.json`.

use super::*;

impl Trainer<'_> {
    /// Mean validation loss, from the frozen-prefix cache where there is one. A pass over
    /// every validation example also keeps their P(fraud) (`last_val`).
    pub(super) fn val_loss(&mut self, idx: &[usize], control: &TrainControl) -> Result<f64> {
        let mut sum = 0.0;
        let mut n = 0usize;
        let mut scored = Vec::new();
        for chunk in idx.chunks(self.tc.batch.max(1)) {
            self.yield_to_interactive(control);
            let refs: Vec<&Example> = chunk.iter().map(|&i| &self.val_ex[i]).collect();
            let b = make_batch(&refs)?;
            if b.targets.is_empty() {
                continue;
            }
            let start = self.frozen_input(Set::Val, &b, chunk)?;
            let t0 = self.clock.now();
            let (nll, probs) = batch_eval(&self.model, &b, start.as_ref())?;
            sum += nll;
            for (&i, p) in chunk.iter().zip(probs) {
                if let (Some(p), Some(v)) = (p, self.val_ex[i].verdict) {
                    scored.push((v.label, p));
                }
            }
            self.clock.charge(Work::Eval {
                tokens: b.ids.len(),
            });
            self.meter.eval_s += self.clock.now() - t0;
            self.meter.eval_tokens += b.ids.len() as u64;
            n += b.targets.len();
        }
        if idx.len() == self.val_ex.len() {
            self.last_val = Some(scored);
        }
        Ok(if n == 0 { f64::NAN } else { sum / n as f64 })
    }

    /// ROC-AUC of the last full validation pass.
    pub(super) fn val_auc(&self) -> Option<f64> {
        let rows: Vec<data::EvalRow> = self
            .last_val
            .as_ref()?
            .iter()
            .map(|&(label, p)| data::EvalRow {
                label,
                predicted: Some(p >= 0.5),
                probability: Some(p),
            })
            .collect();
        data::metrics::roc_auc(&rows)
    }
}

impl Trainer<'_> {
    /// The F1-best decision threshold on the labelled validation dialogues, from the last
    /// validation pass (on the final weights: a run always validates at its last step),
    /// whose P(fraud) is read where score mode reads it; with its precision and recall, the
    /// threshold that keeps recall at 0.95, and the ROC-AUC. `None` without a validation set
    /// holding both labels.
    pub(super) fn calibrate(
        &self,
        on_event: &mut dyn FnMut(TrainEvent),
    ) -> Result<Option<Calibration>> {
        let Some(v) = &self.last_val else {
            return Ok(None);
        };
        let pos = v.iter().filter(|x| x.0).count();
        if pos == 0 || pos == v.len() {
            return Ok(None);
        }
        let rows: Vec<data::EvalRow> = v
            .iter()
            .map(|&(label, p)| data::EvalRow {
                label,
                predicted: Some(p >= 0.5),
                probability: Some(p),
            })
            .collect();
        let Some((threshold, m)) = data::metrics::best_f1_threshold(&rows) else {
            return Ok(None);
        };
        let at_half = data::metrics::at_threshold(&rows, 0.5);
        let c = Calibration {
            threshold,
            n: v.len(),
            precision: m.precision,
            recall: m.recall,
            f1: m.f1,
            f1_at_half: at_half.f1,
            threshold_for_recall_95: threshold_for_recall(&rows, 0.95),
            roc_auc: data::metrics::roc_auc(&rows),
        };
        on_event(TrainEvent::Log(format!(
            "decision threshold {:.4} (F1-best on {} validation dialogues): precision {:.3} recall {:.3} F1 {:.3} (F1 {:.3} at 0.5), ROC-AUC {}",
            c.threshold,
            c.n,
            c.precision,
            c.recall,
            c.f1,
            c.f1_at_half,
            c.roc_auc.map(|a| format!("{a:.3}")).unwrap_or_else(|| "–".into())
        )));
        Ok(Some(c))
    }
}

/// The highest threshold whose recall on `rows` is at least `recall`.
pub fn threshold_for_recall(rows: &[data::EvalRow], recall: f64) -> Option<f64> {
    let mut pos: Vec<f64> = rows
        .iter()
        .filter(|r| r.label)
        .filter_map(|r| r.probability)
        .collect();
    if pos.is_empty() {
        return None;
    }
    pos.sort_by(|a, b| b.total_cmp(a));
    let need = ((recall * pos.len() as f64).ceil() as usize).clamp(1, pos.len());
    Some(pos[need - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_for_a_recall_on_known_scores() {
        let rows: Vec<data::EvalRow> = [
            (true, 0.9),
            (true, 0.8),
            (true, 0.3),
            (true, 0.6),
            (false, 0.7),
        ]
        .iter()
        .map(|&(label, p)| data::EvalRow {
            label,
            predicted: Some(p >= 0.5),
            probability: Some(p),
        })
        .collect();
        // 4 fraud scores 0.9 0.8 0.6 0.3: recall 0.95 needs all four, 0.75 three, 0.5 two
        assert_eq!(threshold_for_recall(&rows, 0.95), Some(0.3));
        assert_eq!(threshold_for_recall(&rows, 0.75), Some(0.6));
        assert_eq!(threshold_for_recall(&rows, 0.5), Some(0.8));
        assert_eq!(threshold_for_recall(&rows[4..], 0.95), None);
        let (t, m) = data::metrics::best_f1_threshold(&rows).unwrap();
        assert_eq!(t, 0.3);
        assert!((m.f1 - 8.0 / 9.0).abs() < 1e-9);
    }
}
