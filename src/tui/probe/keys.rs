//! Probe pane, key handling: the `impl App` methods behind the pane's keys, the prompt
//! editors and pastes, editing a sampling setting, recalling a history entry, and the
//! runs they start — one probe on every loaded model, or the built-in suite.

use crossterm::event::{KeyCode, KeyEvent};

use super::{ModelOutput, ProbeRun, ProbeView, SuiteRun, FIELDS, F_PROMPT, F_SYSTEM};
use crate::data::suite::{self, SuiteModel, SuiteResults};
use crate::engine::generate::SamplingParams;
use crate::engine::Command;
use crate::tui::app::{Action, App, InputPurpose};
use crate::tui::keys::{self, plain, strings};

impl App {
    pub(in crate::tui) fn probe_paste(&mut self, s: &str) {
        if self.probe.field <= F_PROMPT {
            self.probe.editing = true;
            self.probe.editor_mut().insert_str(s);
        }
    }

    pub(in crate::tui) fn probe_edit_key(&mut self, key: &KeyEvent, out: &mut Vec<Action>) {
        if keys::is_run(key) {
            self.probe_run(out);
            return;
        }
        match key.code {
            KeyCode::Esc => {
                self.probe.editing = false;
                self.save_session();
            }
            KeyCode::Tab | KeyCode::BackTab => {
                self.probe.field = if self.probe.field == F_SYSTEM {
                    F_PROMPT
                } else {
                    F_SYSTEM
                }
            }
            _ => {
                self.probe.editor_mut().handle_key(key);
            }
        }
    }

    pub(in crate::tui) fn probe_key(&mut self, key: &KeyEvent, out: &mut Vec<Action>) -> bool {
        if keys::is_run(key) {
            self.probe_run(out);
            return true;
        }
        let f = self.probe.field;
        match key.code {
            KeyCode::Enter => {
                self.probe_edit_field(f);
                return true;
            }
            KeyCode::Left if f > F_PROMPT => self.probe.adjust(f, -1),
            KeyCode::Right if f > F_PROMPT => self.probe.adjust(f, 1),
            _ if keys::is_down(key) => self.probe.field = (f + 1).min(FIELDS.len() - 1),
            _ if keys::is_up(key) => self.probe.field = f.saturating_sub(1),
            _ => match plain(key) {
                Some('i') => self.probe_edit_field(f),
                Some('e') => self.probe_edit_field(F_PROMPT),
                Some('+') | Some('=') if f > F_PROMPT => self.probe.adjust(f, 1),
                Some('-') if f > F_PROMPT => self.probe.adjust(f, -1),
                Some('b') => self.probe_run_suite(out),
                Some('E') => self.probe_export_suite(),
                Some('v') => {
                    self.probe.view = match self.probe.view {
                        ProbeView::Outputs => ProbeView::History,
                        ProbeView::History => ProbeView::Suite,
                        ProbeView::Suite => ProbeView::Outputs,
                    }
                }
                Some('[') => {
                    self.probe.view = ProbeView::History;
                    let n = self.probe.history.len();
                    self.probe.history_sel = (self.probe.history_sel + 1).min(n.saturating_sub(1));
                }
                Some(']') => {
                    self.probe.view = ProbeView::History;
                    self.probe.history_sel = self.probe.history_sel.saturating_sub(1);
                }
                Some('r') if self.probe.view == ProbeView::History => self.probe_recall(),
                Some('c') => {
                    self.probe.run = None;
                    self.probe.suite = None;
                }
                _ => return false,
            },
        }
        true
    }

    fn probe_edit_field(&mut self, f: usize) {
        self.probe.field = f;
        if f <= F_PROMPT {
            self.probe.editing = true;
        } else {
            let cur = match f {
                3 => self
                    .probe
                    .params
                    .top_k
                    .map(|k| k.to_string())
                    .unwrap_or_default(),
                4 => self
                    .probe
                    .params
                    .top_p
                    .map(|k| k.to_string())
                    .unwrap_or_default(),
                _ => self.probe.setting_text(f),
            };
            let title = format!("{} (empty: off for top-k / top-p)", FIELDS[f]);
            self.open_input(title, &cur, InputPurpose::ProbeSetting(f));
        }
    }

    pub(in crate::tui) fn probe_set_setting(&mut self, f: usize, text: &str) {
        let p = &mut self.probe.params;
        let bad = |what: &str| format!("{}: {what}", FIELDS.get(f).copied().unwrap_or("setting"));
        let r: Result<(), String> = match f {
            2 => text
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .map(|x| p.temperature = x)
                .ok_or_else(|| bad("a number ≥ 0")),
            3 if text.is_empty() || text == "off" || text == "0" => {
                p.top_k = None;
                Ok(())
            }
            3 => text
                .parse::<usize>()
                .map(|k| p.top_k = Some(k))
                .map_err(|_| bad("a whole number, or empty for off")),
            4 if text.is_empty() || text == "off" => {
                p.top_p = None;
                Ok(())
            }
            4 => text
                .parse::<f64>()
                .ok()
                .filter(|x| *x > 0.0 && *x <= 1.0)
                .map(|x| p.top_p = if x >= 1.0 { None } else { Some(x) })
                .ok_or_else(|| bad("a number in (0, 1]")),
            5 => text
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .map(|n| p.max_tokens = n)
                .ok_or_else(|| bad("a whole number > 0")),
            6 => text
                .parse::<u64>()
                .map(|n| p.seed = n)
                .map_err(|_| bad("a whole number")),
            _ => Ok(()),
        };
        match r {
            Ok(()) => self.save_session(),
            Err(e) => self.error(e),
        }
    }

    fn probe_recall(&mut self) {
        let n = self.probe.history.len();
        if n == 0 {
            return;
        }
        let item = self.probe.history[n - 1 - self.probe.history_sel.min(n - 1)].clone();
        self.probe.system.set_text(&item.system);
        self.probe.user.set_text(&item.prompt);
        self.info("the entry's prompts are in the editors (F5 runs them)");
    }

    /// The loaded models as (key, label).
    fn probe_targets(&self) -> Vec<(String, String)> {
        self.ready_slots()
            .map(|s| (s.key.clone(), s.label()))
            .collect()
    }

    pub fn probe_run(&mut self, out: &mut Vec<Action>) {
        let targets = self.probe_targets();
        if targets.is_empty() {
            self.warn(strings::NO_LOADED);
            return;
        }
        let prompt = self.probe.user.text();
        if prompt.trim().is_empty() {
            self.warn("write a prompt first (Enter edits it)");
            return;
        }
        let system = self.probe.system.text();
        let system = (!system.trim().is_empty()).then_some(system);
        let request = self.request_id();
        let params = self.probe.params.clone();
        self.probe.run = Some(ProbeRun {
            request,
            system: system.clone(),
            prompt: prompt.clone(),
            params: params.clone(),
            outputs: targets
                .iter()
                .map(|(k, l)| ModelOutput::new(k, l))
                .collect(),
        });
        self.probe.view = ProbeView::Outputs;
        out.push(Action::Engine(Command::Generate {
            request,
            keys: targets.into_iter().map(|t| t.0).collect(),
            system,
            prompt,
            raw: false,
            params,
        }));
        if self.engine_busy() {
            self.warn(strings::ENGINE_BUSY_QUEUED);
        }
        self.save_session();
    }

    /// Runs the session's suite (`suite.jsonl`, else the built-in one) on every loaded
    /// model: one request per case, greedy, through the engine's generate path.
    pub fn probe_run_suite(&mut self, out: &mut Vec<Action>) {
        let slots: Vec<SuiteModel> = self
            .ready_slots()
            .map(|s| SuiteModel {
                label: s.label(),
                spec: s.spec.clone(),
                adapter: s.adapter.clone(),
            })
            .collect();
        let keys: Vec<String> = self.ready_slots().map(|s| s.key.clone()).collect();
        if keys.is_empty() {
            self.warn(strings::NO_LOADED);
            return;
        }
        let (cases, origin) = match suite::session_suite(&self.session) {
            Ok(x) => x,
            Err(e) => {
                self.error(format!("{e:#}"));
                return;
            }
        };
        let mut requests = Vec::new();
        for c in &cases {
            let request = self.request_id();
            requests.push(request);
            out.push(Action::Engine(Command::Generate {
                request,
                keys: keys.clone(),
                system: c.system_prompt(),
                prompt: c.user_prompt(),
                raw: false,
                params: SamplingParams {
                    max_tokens: c.max_tokens_or(suite::DEFAULT_MAX_TOKENS),
                    ..Default::default()
                },
            }));
        }
        let n = cases.len();
        let results = SuiteResults::new(&origin, cases, slots);
        self.probe.suite = Some(SuiteRun::new(results, keys.clone(), requests));
        self.probe.view = ProbeView::Suite;
        self.info(format!(
            "running the capability suite ({n} cases, {origin}) on {} model(s)…",
            keys.len()
        ));
    }

    /// Writes the suite matrix beside its saved results: `suites/<id>.md` and `.csv`.
    fn probe_export_suite(&mut self) {
        let Some(s) = &mut self.probe.suite else {
            self.warn(strings::NO_SUITE);
            return;
        };
        if s.results.results.is_empty() {
            self.warn("no suite results yet: press b and wait for the answers");
            return;
        }
        let r = (|| -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
            if s.saved.is_none() {
                s.saved = Some(s.results.save(&self.session)?);
            }
            let dir = suite::results_dir(&self.session);
            let md = dir.join(format!("{}.md", s.results.id));
            let csv = dir.join(format!("{}.csv", s.results.id));
            crate::data::write_atomic(&md, s.results.to_markdown().as_bytes())?;
            crate::data::write_atomic(&csv, s.results.to_csv().as_bytes())?;
            Ok((md, csv))
        })();
        match r {
            Ok((md, csv)) => self.ok(format!(
                "suite matrix exported: {} and {}",
                md.display(),
                csv.display()
            )),
            Err(e) => self.error(format!("cannot export the suite: {e:#}")),
        }
    }
}
