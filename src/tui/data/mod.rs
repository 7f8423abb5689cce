//! Data pane: a dataset's samples with their labels, hand labels and model probabilities;
//! filters and search; the dialogue turn by turn; statistics; hand-labelling with single
//! keys, every label written durably to the session's journal before the selection moves.

use crossterm::event::{KeyCode, KeyEvent};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Bar, BarChart, BarGroup, Cell, Paragraph, Row, Table, Wrap};
use ratatui::Frame;
use std::cell::Cell as StdCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::app::{Action, App, InputPurpose, PickPurpose};
use super::io::{IoJob, OpenedDataset};
use super::keys::{self, plain, strings};
use super::theme;
use super::widgets::{display_width, one_line, truncate, wrap};
use crate::data::{self, Journal, LabelState, Sample, Stats};
use crate::engine::Command;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Filter {
    #[default]
    All,
    Unlabelled,
    Fraud,
    Normal,
    Disagree,
}

impl Filter {
    pub fn name(self) -> &'static str {
        match self {
            Filter::All => "all",
            Filter::Unlabelled => "unlabelled",
            Filter::Fraud => "fraud",
            Filter::Normal => "normal",
            Filter::Disagree => "model disagrees",
        }
    }

    pub fn next(self) -> Filter {
        match self {
            Filter::All => Filter::Unlabelled,
            Filter::Unlabelled => Filter::Fraud,
            Filter::Fraud => Filter::Normal,
            Filter::Normal => Filter::Disagree,
            Filter::Disagree => Filter::All,
        }
    }
}

/// Label counts of the open dataset (hand labels win over the file's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: usize,
    pub labelled: usize,
    pub fraud: usize,
    pub normal: usize,
    pub hand: usize,
}

#[derive(Debug, Default)]
pub struct DataPane {
    pub path: Option<PathBuf>,
    /// A dataset being opened on the I/O worker (the one shown stays until it is in).
    pub loading: Option<PathBuf>,
    pub dataset_id: String,
    pub samples: Vec<Sample>,
    /// First turn of each sample on one line (cut), for the table.
    pub previews: Vec<String>,
    pub lens: Vec<usize>,
    pub summary: String,
    pub journal: Option<Journal>,
    /// Why labels are read-only (journal unreadable, or locked by another writer for too long).
    pub journal_error: Option<String>,
    pub hand: HashMap<String, LabelState>,
    pub probs: HashMap<String, f64>,
    pub prob_model: Option<String>,
    pub filter: Filter,
    pub search: String,
    /// Indices into `samples` that pass the filter and search.
    pub visible: Vec<usize>,
    /// Index into `visible`.
    pub selected: usize,
    pub detail: bool,
    pub stats_view: bool,
    pub stats: Option<Stats>,
    pub detail_scroll: usize,
    pub scoring: Option<u64>,
    pub counts: Counts,
    pub offset: StdCell<usize>,
}

impl DataPane {
    /// The label that counts: the hand label, else the file's.
    pub fn effective(&self, i: usize) -> Option<bool> {
        let s = &self.samples[i];
        self.hand.get(&s.id).map(|h| h.label).or(s.label)
    }

    pub fn selected_index(&self) -> Option<usize> {
        self.visible.get(self.selected).copied()
    }

    pub fn selected_sample(&self) -> Option<&Sample> {
        self.selected_index().map(|i| &self.samples[i])
    }

    fn passes(&self, i: usize, needle: &str) -> bool {
        let s = &self.samples[i];
        let eff = self.effective(i);
        let ok = match self.filter {
            Filter::All => true,
            Filter::Unlabelled => eff.is_none(),
            Filter::Fraud => eff == Some(true),
            Filter::Normal => eff == Some(false),
            Filter::Disagree => match (self.probs.get(&s.id), eff) {
                (Some(&p), Some(l)) => (p >= 0.5) != l,
                _ => false,
            },
        };
        ok && (needle.is_empty()
            || s.dialogue_text().to_lowercase().contains(needle)
            || s.id.starts_with(needle))
    }

    /// Recomputes the visible rows and counts, keeping the selected sample when it stays
    /// visible (else the same position).
    pub fn refresh(&mut self) {
        let keep = self.selected_index();
        let needle = self.search.to_lowercase();
        self.visible = (0..self.samples.len())
            .filter(|&i| self.passes(i, &needle))
            .collect();
        self.selected = match keep.and_then(|k| self.visible.iter().position(|&i| i == k)) {
            Some(p) => p,
            None => self.selected.min(self.visible.len().saturating_sub(1)),
        };
        let mut c = Counts {
            total: self.samples.len(),
            ..Default::default()
        };
        for i in 0..self.samples.len() {
            match self.effective(i) {
                Some(true) => c.fraud += 1,
                Some(false) => c.normal += 1,
                None => {}
            }
            if self.hand.contains_key(&self.samples[i].id) {
                c.hand += 1;
            }
        }
        c.labelled = c.fraud + c.normal;
        self.counts = c;
    }

    /// Selects a sample by id, clearing filter and search if they hide it.
    pub fn select_id(&mut self, id: &str) -> bool {
        let Some(i) = self.samples.iter().position(|s| s.id == id) else {
            return false;
        };
        if !self.visible.contains(&i) {
            self.filter = Filter::All;
            self.search.clear();
            self.refresh();
        }
        if let Some(p) = self.visible.iter().position(|&v| v == i) {
            self.selected = p;
            self.detail_scroll = 0;
            return true;
        }
        false
    }

    fn move_by(&mut self, d: isize) {
        let n = self.visible.len();
        if n == 0 {
            return;
        }
        self.selected = (self.selected as isize + d).clamp(0, n as isize - 1) as usize;
        self.detail_scroll = 0;
    }
}

/// The first turn as `speaker: text` on one line.
pub(super) fn preview(s: &Sample) -> String {
    let text = s.dialogue_text();
    // the first non-empty line is the first turn; no need to parse the whole dialogue
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    truncate(&one_line(first), 160)
}

/// Applies hand labels (label, speaker, reason) to the samples they name. A labelled raw-text
/// sample becomes a fraud sample with the default instruction, so training and evaluation
/// (which read fraud JSONL) can use it. Returns how many samples got a hand label.
pub fn apply_hand_labels(samples: &mut [Sample], labels: &HashMap<String, LabelState>) -> usize {
    let mut n = 0;
    for s in samples.iter_mut() {
        let Some(st) = labels.get(&s.id) else {
            continue;
        };
        if let data::SampleBody::Text { text } = &s.body {
            *s = Sample::fraud(data::DEFAULT_INSTRUCTION, text.clone(), None, None, None);
        }
        s.label = Some(st.label);
        s.fraud_speaker = st.fraud_speaker.clone();
        s.reason = st.reason.clone();
        n += 1;
    }
    n
}

impl App {
    /// The session's hand labels for a dataset file.
    pub fn hand_labels_for(&self, data_path: &Path) -> anyhow::Result<HashMap<String, LabelState>> {
        if self.data.path.as_deref() == Some(data_path) {
            return Ok(self.data.hand.clone());
        }
        let p = self.session.labels_path(&data::dataset_id(data_path));
        Ok(Journal::read(&p)?.current_labels().into_iter().collect())
    }

    /// With hand labels for `data_path` in the session: the dataset with them applied,
    /// written as fraud JSONL to `out`; returns how many were applied (None: no labels).
    pub fn write_labelled_copy(
        &self,
        data_path: &Path,
        out: &Path,
    ) -> anyhow::Result<Option<usize>> {
        let labels = self.hand_labels_for(data_path)?;
        if labels.is_empty() {
            return Ok(None);
        }
        let mut samples = if self.data.path.as_deref() == Some(data_path) {
            self.data.samples.clone()
        } else {
            data::load(data_path)?.samples
        };
        let n = apply_hand_labels(&mut samples, &labels);
        if n == 0 {
            return Ok(None);
        }
        data::tools::export(
            &samples,
            data::Format::Fraud,
            out,
            &data::ExportOptions::default(),
        )?;
        Ok(Some(n))
    }

    /// Opens a dataset and its label journal now, on this thread (tests, and a jump to a
    /// sample that needs its dataset at once); the workbench uses [`Self::request_dataset`].
    pub fn open_dataset(&mut self, path: &Path) {
        self.data.loading = Some(path.to_path_buf());
        self.io_jobs.push(IoJob::OpenDataset {
            path: path.to_path_buf(),
            labels: self.session.labels_path(&data::dataset_id(path)),
        });
        self.finish_io();
    }

    /// Queues a dataset (and its label journal) for the I/O worker; the pane says
    /// "loading…" and keeps showing the current one until it is in.
    pub fn request_dataset(&mut self, path: &Path) {
        self.data.loading = Some(path.to_path_buf());
        self.io_jobs.push(IoJob::OpenDataset {
            path: path.to_path_buf(),
            labels: self.session.labels_path(&data::dataset_id(path)),
        });
        self.info(format!("opening {}…", path.display()));
    }

    /// A dataset read on the I/O worker becomes the pane's (shown read-only when its label
    /// journal cannot be opened).
    pub(super) fn dataset_opened(&mut self, path: &Path, o: OpenedDataset) {
        let OpenedDataset {
            read: r,
            journal,
            hand,
            previews,
            lens,
            stats,
        } = o;
        let id = data::dataset_id(path);
        let d = &mut self.data;
        let mut compacted = None;
        d.hand = hand;
        match journal {
            Ok(j) => {
                compacted = j.compacted_at_open();
                d.journal = Some(j);
                d.journal_error = None;
            }
            Err(e) => {
                d.journal = None;
                d.journal_error = Some(e);
            }
        }
        d.path = Some(path.to_path_buf());
        d.dataset_id = id;
        d.previews = previews;
        d.lens = lens;
        d.stats = Some(stats);
        d.samples = r.samples;
        d.summary = r.summary.clone();
        d.probs.clear();
        d.prob_model = None;
        d.filter = Filter::All;
        d.search.clear();
        d.selected = 0;
        d.detail_scroll = 0;
        d.offset.set(0);
        d.refresh();
        let mut msg = format!("opened {}: {}", path.display(), r.summary);
        if let Some((before, after)) = compacted {
            msg.push_str(&format!(
                " (label journal compacted: {before} lines to {after})"
            ));
        }
        match &self.data.journal_error {
            Some(e) => self.warn(format!("{msg} — labels are read-only: {e}")),
            None if !r.bad_lines.is_empty() => self.warn(format!(
                "{msg} ({} unreadable line(s) skipped)",
                r.bad_lines.len()
            )),
            None => self.ok(msg),
        }
        self.save_session();
    }

    pub(super) fn data_key(&mut self, key: &KeyEvent, out: &mut Vec<Action>) -> bool {
        let page = 10;
        match key.code {
            KeyCode::PageDown => self.data.move_by(page),
            KeyCode::PageUp => self.data.move_by(-page),
            KeyCode::Home => self.data.move_by(isize::MIN / 2),
            KeyCode::End => self.data.move_by(isize::MAX / 2),
            KeyCode::Enter => {
                self.data.detail = !self.data.detail;
                self.data.stats_view = false;
            }
            KeyCode::Esc => {
                if self.data.detail || self.data.stats_view {
                    self.data.detail = false;
                    self.data.stats_view = false;
                } else if !self.data.search.is_empty() {
                    self.data.search.clear();
                    self.data.refresh();
                } else {
                    return false;
                }
            }
            _ if keys::is_down(key) => self.data.move_by(1),
            _ if keys::is_up(key) => self.data.move_by(-1),
            _ => match plain(key) {
                Some('g') => self.data.move_by(isize::MIN / 2),
                Some('G') => self.data.move_by(isize::MAX / 2),
                Some('f') => self.data_label(true),
                Some('n') => self.data_label(false),
                Some('s') => self.data_pick_speaker(),
                Some('r') => {
                    if let Some(s) = self.data.selected_sample() {
                        let cur = self
                            .data
                            .hand
                            .get(&s.id)
                            .and_then(|h| h.reason.clone())
                            .or(s.reason.clone())
                            .unwrap_or_default();
                        self.open_input(strings::REASON_TITLE, &cur, InputPurpose::Reason);
                    }
                }
                Some('u') => self.data_undo(),
                Some('N') => self.data_next_unlabelled(),
                Some('U') => self.data_most_uncertain(),
                Some('S') => self.data_score(out),
                Some('/') => {
                    let cur = self.data.search.clone();
                    self.open_input(strings::SEARCH_TITLE, &cur, InputPurpose::Search);
                }
                Some('v') => {
                    self.data.filter = self.data.filter.next();
                    self.data.refresh();
                }
                Some('J') => self.data.detail_scroll += 3,
                Some('K') => self.data.detail_scroll = self.data.detail_scroll.saturating_sub(3),
                Some('t') => {
                    self.data.stats_view = !self.data.stats_view;
                    self.data.detail = false;
                }
                Some('o') => {
                    let cur = self
                        .data
                        .path
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default();
                    self.open_input(strings::OPEN_TITLE, &cur, InputPurpose::OpenDataset);
                }
                _ => return false,
            },
        }
        true
    }

    /// Writes a journal entry for the selected sample. The entry is on disk when this
    /// returns Ok (the journal fsyncs); on error nothing in the UI changes.
    fn data_write_label(
        &mut self,
        id: &str,
        label: bool,
        speaker: Option<String>,
        reason: Option<String>,
    ) -> bool {
        let Some(j) = self.data.journal.as_mut() else {
            let why = self
                .data
                .journal_error
                .clone()
                .unwrap_or_else(|| "no journal".into());
            self.error(format!("labels are read-only: {why}"));
            return false;
        };
        match j.label(id, label, speaker, reason) {
            Ok(()) => {
                // whole: the labels another writer (`fraudlab label`) added arrive with it
                self.data.hand = j.current_labels().into_iter().collect();
                true
            }
            Err(e) => {
                self.error(format!(
                    "the label was NOT saved ({e:#}); the selection stays"
                ));
                false
            }
        }
    }

    /// `f` / `n`: label the selected sample, then move to the next.
    pub fn data_label(&mut self, value: bool) {
        let Some(i) = self.data.selected_index() else {
            self.info("no sample selected");
            return;
        };
        let s = &self.data.samples[i];
        let id = s.id.clone();
        let prev = self.data.hand.get(&id).cloned();
        let speaker = if value {
            prev.as_ref()
                .and_then(|p| p.fraud_speaker.clone())
                .or(s.fraud_speaker.clone())
        } else {
            None
        };
        let reason = prev.as_ref().and_then(|p| p.reason.clone());
        let pos = self.data.selected;
        if !self.data_write_label(&id, value, speaker, reason) {
            return;
        }
        self.data.refresh();
        // next: the row after this one if it is still listed, else the row that took its place
        let still = self.data.visible.get(pos) == Some(&i);
        let n = self.data.visible.len();
        self.data.selected = if still {
            (pos + 1).min(n.saturating_sub(1))
        } else {
            pos.min(n.saturating_sub(1))
        };
        self.data.detail_scroll = 0;
        let c = self.data.counts;
        self.ok(format!(
            "{} {} · labelled {}/{} · remaining {}",
            if value { "fraud" } else { "not fraud" },
            &id[..id.len().min(8)],
            c.labelled,
            c.total,
            c.total - c.labelled
        ));
    }

    fn data_pick_speaker(&mut self) {
        let Some(s) = self.data.selected_sample() else {
            return;
        };
        let speakers = s.speakers();
        if speakers.is_empty() {
            self.info("no speakers found in this dialogue (lines look like `name: text`)");
            return;
        }
        let mut items: Vec<String> = speakers.clone();
        let mut values = speakers;
        items.push("(no fraud speaker)".into());
        values.push(String::new());
        self.open_picker(
            strings::SPEAKER_TITLE,
            items,
            values,
            None,
            PickPurpose::Speaker,
        );
    }

    /// Sets the fraud speaker (which makes the sample fraud); empty: none.
    pub fn data_set_speaker(&mut self, speaker: &str) {
        let Some(i) = self.data.selected_index() else {
            return;
        };
        let id = self.data.samples[i].id.clone();
        let prev = self.data.hand.get(&id).cloned();
        let reason = prev.as_ref().and_then(|p| p.reason.clone());
        let (label, sp) = if speaker.is_empty() {
            (
                prev.map(|p| p.label)
                    .or(self.data.samples[i].label)
                    .unwrap_or(false),
                None,
            )
        } else {
            (true, Some(speaker.to_string()))
        };
        if self.data_write_label(&id, label, sp, reason) {
            self.data.refresh();
            self.ok(if speaker.is_empty() {
                "fraud speaker cleared".to_string()
            } else {
                format!("fraud speaker: {speaker}")
            });
        }
    }

    pub(super) fn data_set_reason(&mut self, text: &str) {
        let Some(i) = self.data.selected_index() else {
            return;
        };
        let Some(label) = self.data.effective(i) else {
            self.warn(strings::LABEL_FIRST);
            return;
        };
        let s = &self.data.samples[i];
        let id = s.id.clone();
        let speaker = self
            .data
            .hand
            .get(&id)
            .and_then(|p| p.fraud_speaker.clone())
            .or(s.fraud_speaker.clone());
        let reason = (!text.is_empty()).then(|| text.to_string());
        if self.data_write_label(&id, label, speaker, reason) {
            self.data.refresh();
            self.ok("reason saved");
        }
    }

    /// `u`: undo the most recent label of the journal and select that sample.
    pub fn data_undo(&mut self) {
        let Some(j) = self.data.journal.as_mut() else {
            self.error("labels are read-only");
            return;
        };
        match j.undo_last() {
            Ok(Some(id)) => {
                self.data.hand = j.current_labels().into_iter().collect();
                self.data.refresh();
                self.data.select_id(&id);
                self.ok(format!("undid the label of {}", &id[..id.len().min(8)]));
            }
            Ok(None) => self.info(strings::NOTHING_TO_UNDO),
            Err(e) => self.error(format!("undo was NOT saved: {e:#}")),
        }
    }

    fn data_next_unlabelled(&mut self) {
        let n = self.data.visible.len();
        let start = self.data.selected;
        for k in 1..=n {
            let p = (start + k) % n;
            if self.data.effective(self.data.visible[p]).is_none() {
                self.data.selected = p;
                self.data.detail_scroll = 0;
                return;
            }
        }
        self.info(strings::NO_UNLABELLED);
    }

    fn data_most_uncertain(&mut self) {
        let d = &self.data;
        let best = d
            .visible
            .iter()
            .enumerate()
            .filter_map(|(p, &i)| {
                let s = &d.samples[i];
                d.probs.get(&s.id).map(|&pr| {
                    (
                        p,
                        (pr - 0.5).abs() + if d.hand.contains_key(&s.id) { 1.0 } else { 0.0 },
                    )
                })
            })
            .min_by(|a, b| a.1.total_cmp(&b.1));
        match best {
            Some((p, _)) => {
                self.data.selected = p;
                self.data.detail_scroll = 0;
            }
            None => self.warn(strings::NO_SCORES),
        }
    }

    fn data_score(&mut self, out: &mut Vec<Action>) {
        let Some(slot) = self.first_ready() else {
            self.warn(strings::NO_LOADED);
            return;
        };
        let (key, name) = (slot.key.clone(), slot.label());
        let samples: Vec<Sample> = self
            .data
            .visible
            .iter()
            .map(|&i| self.data.samples[i].clone())
            .collect();
        if samples.is_empty() {
            self.info("no samples in view");
            return;
        }
        let request = self.request_id();
        self.data.scoring = Some(request);
        self.data.prob_model = Some(name.clone());
        let n = samples.len();
        out.push(Action::Engine(Command::Score {
            request,
            key,
            samples,
        }));
        self.info(format!("scoring {n} samples with {name}… (Esc cancels)"));
    }

    pub(super) fn data_on_scored(
        &mut self,
        request: u64,
        key: &str,
        probabilities: Vec<(String, f64)>,
    ) {
        if self.data.scoring == Some(request) {
            self.data.scoring = None;
        }
        let n = probabilities.len();
        self.data
            .probs
            .extend(probabilities.into_iter().filter(|(_, p)| p.is_finite()));
        if let Some(s) = self.slots.iter().find(|s| s.key == key) {
            self.data.prob_model = Some(s.label());
        }
        self.data.refresh();
        self.ok(format!(
            "scored {n} samples (U jumps to the most uncertain, v filters disagreements)"
        ));
    }

    pub(super) fn data_search(&mut self, text: &str) {
        self.data.search = text.to_string();
        self.data.refresh();
        if !text.is_empty() {
            let n = self.data.visible.len();
            self.info(format!("{n} sample(s) match “{text}” (Esc clears)"));
        }
    }
}

// ---------------------------------------------------------------- drawing

mod view;
pub use view::draw;
