//! Train pane, key handling: the `impl App` methods behind the pane's keys in the form and
//! the runs view, and the actions they trigger — editing or toggling a field, starting a
//! run (with the session's hand labels applied to a copy of the data), pausing / resuming
//! it, loading a past run's adapter.

use crossterm::event::{KeyCode, KeyEvent};
use std::path::{Path, PathBuf};

use super::{LiveRun, TrainView, FIELDS, LABELLED_COPY};
use crate::engine::train::TrainConfig;
use crate::engine::Command;
use crate::tui::app::{spec_name, Action, App, InputPurpose, PickPurpose};
use crate::tui::keys::{self, plain, strings};

impl App {
    pub(in crate::tui) fn train_key(&mut self, key: &KeyEvent, out: &mut Vec<Action>) -> bool {
        if self.train.view == TrainView::Runs {
            let n = self.train.runs.len();
            match key.code {
                KeyCode::Char(' ') => {
                    if let Some(r) = self.train.runs.get(self.train.run_sel) {
                        let id = r.id.clone();
                        if self.train.shown.is_empty() {
                            self.train.shown = self
                                .train
                                .shown_runs()
                                .iter()
                                .map(|r| r.id.clone())
                                .collect();
                        }
                        if !self.train.shown.remove(&id) {
                            self.train.shown.insert(id);
                        }
                    }
                    return true;
                }
                KeyCode::Enter => {
                    self.train_load_run_adapter(out);
                    return true;
                }
                _ if keys::is_down(key) => {
                    self.train.run_sel = (self.train.run_sel + 1).min(n.saturating_sub(1));
                    return true;
                }
                _ if keys::is_up(key) => {
                    self.train.run_sel = self.train.run_sel.saturating_sub(1);
                    return true;
                }
                _ => {}
            }
        } else {
            let f = self.train.field;
            match key.code {
                KeyCode::Enter | KeyCode::Char(' ') => {
                    self.train_edit_field(f);
                    return true;
                }
                _ if keys::is_down(key) => {
                    self.train.field = (f + 1).min(FIELDS.len() - 1);
                    return true;
                }
                _ if keys::is_up(key) => {
                    self.train.field = f.saturating_sub(1);
                    return true;
                }
                KeyCode::PageDown => {
                    self.train.field = (f + 8).min(FIELDS.len() - 1);
                    return true;
                }
                KeyCode::PageUp => {
                    self.train.field = f.saturating_sub(8);
                    return true;
                }
                _ => {}
            }
        }
        match plain(key) {
            Some('s') => self.train_start(out, false),
            Some('T') => self.train_start(out, true),
            Some('p') => self.train_pause_resume(out),
            Some('x') if self.train.live.active => {
                out.push(Action::StopTraining);
                self.train.stop_requested = true;
                self.warn("stopping after this step (a checkpoint and the adapter are written)…");
            }
            Some('v') => {
                self.train.view = match self.train.view {
                    TrainView::Live => TrainView::Runs,
                    TrainView::Runs => TrainView::Live,
                };
                if self.train.view == TrainView::Runs {
                    self.train_load_runs();
                }
            }
            Some('D') => {
                self.train.cfg = TrainConfig::default();
                self.train.apply_labels = true;
                self.info("settings reset to the recipe defaults");
                self.save_session();
            }
            _ => return false,
        }
        true
    }

    fn train_edit_field(&mut self, f: usize) {
        if self.train.toggle(f) {
            self.save_session();
            return;
        }
        if f == 0 {
            let mut values: Vec<String> = self
                .slots
                .iter()
                .filter(|s| s.adapter.is_none())
                .map(|s| s.spec.clone())
                .collect();
            for m in &self.models.list {
                let p = m.path.display().to_string();
                if m.problem.is_none() && !values.contains(&p) {
                    values.push(p);
                }
            }
            if values.is_empty() {
                self.warn(strings::TRAIN_NEEDS_MODEL);
                return;
            }
            let items = values
                .iter()
                .map(|v| {
                    let loaded = self.slots.iter().any(|s| &s.spec == v);
                    format!("{}{}", spec_name(v), if loaded { "  (loaded)" } else { "" })
                })
                .collect();
            self.open_picker(
                "Model to fine-tune",
                items,
                values,
                None,
                PickPurpose::TrainModel,
            );
            return;
        }
        let cur = match f {
            1 => self.train.cfg.data.display().to_string(),
            7 => format!("{}", self.train.cfg.lr),
            24 => self
                .train
                .cfg
                .time_budget_s
                .map(crate::fmt::human_secs)
                .unwrap_or_default(),
            25 => self
                .train
                .cfg
                .lora
                .layers_to_transform
                .as_deref()
                .map(crate::model::adapter::format_layers)
                .unwrap_or_default(),
            _ => {
                let t = self.train.field_text(f, None, None);
                if t == "none" || t == "each epoch" || t == "at the end" {
                    String::new()
                } else {
                    t
                }
            }
        };
        let title = match f {
            1 => "Training data file (empty: the Data pane's dataset)".to_string(),
            9 | 20 | 22 => format!("{} (empty: none)", FIELDS[f]),
            24 => "time budget, e.g. 15m or 1h (empty: none; epochs then count)".into(),
            25 => "LoRA layers, e.g. 12-23 or 0-3,20-23 (empty: all)".into(),
            18 | 19 => format!(
                "{} (0: {})",
                FIELDS[f],
                if f == 18 { "each epoch" } else { "at the end" }
            ),
            13 => "schedule: constant, linear or cosine".into(),
            _ => FIELDS[f].to_string(),
        };
        self.open_input(title, &cur, InputPurpose::TrainField(f));
    }

    pub(in crate::tui) fn train_set_field(&mut self, f: usize, text: &str) {
        match self.train.set_field(f, text) {
            Ok(()) => self.save_session(),
            Err(e) => self.error(e),
        }
    }

    fn train_pause_resume(&mut self, out: &mut Vec<Action>) {
        if !self.train.live.active {
            self.info("no run is going");
            return;
        }
        if self.train.live.paused || self.train.pause_requested {
            out.push(Action::ResumeTraining);
            self.train.pause_requested = false;
            self.info("resuming…");
        } else {
            out.push(Action::PauseTraining);
            self.train.pause_requested = true;
            self.info("pausing after this step…");
        }
    }

    /// Starts a run with the form's settings in a new `runs/<id>/` of the session; with
    /// `tune`, a recipe search within the form's time budget in `runs/tune-<id>/` instead
    /// (its trials show as runs, one after the other).
    pub fn train_start(&mut self, out: &mut Vec<Action>, tune: bool) {
        if self.train.live.active || self.engine_training {
            self.warn(strings::TRAIN_ALREADY);
            return;
        }
        let mut cfg = self.train.cfg.clone();
        let budget = cfg.time_budget_s;
        if tune && budget.is_none() {
            self.warn(strings::TUNE_NEEDS_BUDGET);
            return;
        }
        if tune && cfg.full {
            self.warn("tune searches LoRA recipes: set the method to LoRA");
            return;
        }
        if cfg.model.is_empty() {
            match self.train_default_model() {
                Some(m) => cfg.model = m,
                None => {
                    self.warn(strings::TRAIN_NEEDS_MODEL);
                    return;
                }
            }
        }
        if cfg.data.as_os_str().is_empty() {
            match &self.data.path {
                Some(p) => cfg.data = p.clone(),
                None => {
                    self.warn(strings::TRAIN_NEEDS_DATA);
                    return;
                }
            }
        }
        if !cfg.data.exists() {
            self.error(format!("{}: no such file", cfg.data.display()));
            return;
        }
        let id = match if tune {
            self.session.new_tune_id()
        } else {
            self.session.new_run_id()
        } {
            Ok(id) => id,
            Err(e) => {
                self.error(format!("cannot create the run folder: {e:#}"));
                return;
            }
        };
        let dir = self.session.run_dir(&id);
        cfg.out_dir = dir.clone();
        cfg.resume = false;
        let mut live = LiveRun {
            active: true,
            id: Some(id.clone()),
            run_dir: Some(dir.clone()),
            ..Default::default()
        };
        if self.train.apply_labels {
            match self.labelled_copy(&cfg.data, &dir) {
                Ok(Some((p, n))) => {
                    live.log(format!(
                        "applied {n} hand label(s): training on {}",
                        p.display()
                    ));
                    cfg.data = p;
                }
                Ok(None) => {}
                Err(e) => {
                    self.error(format!("cannot apply the hand labels: {e:#}"));
                    let _ = std::fs::remove_dir(&dir);
                    return;
                }
            }
        }
        live.log(format!(
            "run {id}: {} on {}",
            spec_name(&cfg.model),
            cfg.data.display()
        ));
        self.train.live = live;
        self.train.stop_requested = false;
        self.train.pause_requested = false;
        self.train.view = TrainView::Live;
        if tune {
            if cfg.val.is_none() && cfg.val_split <= 0.0 {
                cfg.val_split = 0.1;
            }
            out.push(Action::Engine(Command::Tune {
                base: Box::new(cfg),
                budget_s: budget.unwrap_or_default(),
            }));
        } else {
            out.push(Action::Engine(Command::Train(Box::new(cfg))));
        }
        if self.engine_busy() {
            self.warn(strings::ENGINE_BUSY_QUEUED);
        } else if tune {
            self.info(format!("recipe search {id} starting…"));
        } else {
            self.info(format!("training run {id} starting…"));
        }
        self.save_session();
    }

    /// With hand labels in the session's journal for `data`: the dataset with those labels
    /// applied, written to `<run>/data-with-labels.jsonl` (fraud format).
    fn labelled_copy(
        &self,
        data: &Path,
        run_dir: &Path,
    ) -> anyhow::Result<Option<(PathBuf, usize)>> {
        let out = run_dir.join(LABELLED_COPY);
        Ok(self.write_labelled_copy(data, &out)?.map(|n| (out, n)))
    }

    fn train_load_run_adapter(&mut self, out: &mut Vec<Action>) {
        let Some(r) = self.train.runs.get(self.train.run_sel) else {
            return;
        };
        if !r.has_adapter() {
            self.info("this run has no adapter (still running, stopped before writing it, or full fine-tuning)");
            return;
        }
        let Some(cfg) = &r.config else {
            self.error("the run has no readable config.json");
            return;
        };
        let (spec, adapter) = (cfg.model.clone(), r.dir.join("adapter"));
        self.load_model(spec, Some(adapter), out);
    }
}
