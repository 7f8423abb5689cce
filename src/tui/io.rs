//! The workbench's I/O worker: model discovery and dataset opening (parsing, the label
//! journal, previews and statistics) run on a thread of their own, so a large folder or a
//! dataset of 100k lines never holds up a key or a frame. The panes queue [`IoJob`]s on the
//! [`App`]; the event loop hands them to the [`IoWorker`] and gives its [`IoDone`]s back to
//! the app, which applies them (a result that is no longer wanted, such as a dataset the user
//! has since replaced, is dropped). Tests and headless callers run the same jobs in place with
//! [`App::finish_io`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};

use super::app::App;
use crate::data::{self, Journal, LabelState};
use crate::model::discover::{self, ModelInfo};

/// What to do once a model scan is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterScan {
    /// Keep the selection.
    Nothing,
    /// Say how many models were found (`r`).
    Report,
    /// Select the first model under this path and say so (`a`: a folder was added).
    Select(PathBuf),
}

/// Slow work the UI thread does not do.
#[derive(Debug, Clone)]
pub enum IoJob {
    /// Discover models in these folders (the caches included).
    Discover { dirs: Vec<PathBuf>, then: AfterScan },
    /// Open a dataset and its label journal.
    OpenDataset { path: PathBuf, labels: PathBuf },
}

/// A dataset read off the UI thread, ready to show.
pub struct OpenedDataset {
    pub read: data::LoadResult,
    /// The label journal, or why labels are read-only.
    pub journal: Result<Journal, String>,
    /// The current hand labels.
    pub hand: HashMap<String, LabelState>,
    pub previews: Vec<String>,
    pub lens: Vec<usize>,
    pub stats: data::tools::Stats,
}

/// A finished [`IoJob`].
pub enum IoDone {
    Discovered {
        list: Vec<ModelInfo>,
        then: AfterScan,
    },
    Dataset {
        path: PathBuf,
        result: Result<Box<OpenedDataset>, String>,
    },
}

/// Does a job (on whichever thread calls it).
pub fn run(job: IoJob) -> IoDone {
    match job {
        IoJob::Discover { dirs, then } => IoDone::Discovered {
            list: discover::discover(&dirs),
            then,
        },
        IoJob::OpenDataset { path, labels } => IoDone::Dataset {
            result: open_dataset(&path, &labels)
                .map(Box::new)
                .map_err(|e| format!("cannot open {}: {e:#}", path.display())),
            path,
        },
    }
}

fn open_dataset(path: &std::path::Path, labels: &std::path::Path) -> anyhow::Result<OpenedDataset> {
    let read = data::load(path)?;
    let (journal, hand) = match Journal::open(labels) {
        Ok(j) => {
            let hand = j.current_labels().into_iter().collect();
            (Ok(j), hand)
        }
        Err(e) => {
            let hand = Journal::read(labels)
                .map(|r| r.current_labels().into_iter().collect())
                .unwrap_or_default();
            (Err(format!("{e:#}")), hand)
        }
    };
    Ok(OpenedDataset {
        previews: read.samples.iter().map(super::data::preview).collect(),
        lens: read.samples.iter().map(|s| s.char_len()).collect(),
        stats: data::tools::stats(&read.samples, 8, None),
        read,
        journal,
        hand,
    })
}

/// The thread that does the jobs, one at a time in the order sent.
pub struct IoWorker {
    jobs: Sender<IoJob>,
    done: Receiver<IoDone>,
}

impl IoWorker {
    pub fn spawn() -> std::io::Result<Self> {
        let (jobs, rx) = channel::<IoJob>();
        let (tx, done) = channel();
        std::thread::Builder::new()
            .name("fraudlab-io".into())
            .spawn(move || {
                for job in rx {
                    // a panic in a job is that job's failure, not the worker's end
                    let r =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(job.clone())));
                    let r = match r {
                        Ok(r) => r,
                        Err(_) => match job {
                            IoJob::Discover { then, .. } => IoDone::Discovered {
                                list: Vec::new(),
                                then,
                            },
                            IoJob::OpenDataset { path, .. } => IoDone::Dataset {
                                result: Err(format!(
                                    "cannot open {}: the reader failed (a bug; please report it)",
                                    path.display()
                                )),
                                path,
                            },
                        },
                    };
                    if tx.send(r).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self { jobs, done })
    }

    pub fn send(&self, job: IoJob) {
        let _ = self.jobs.send(job);
    }

    /// The jobs finished since the last call.
    pub fn drain(&self) -> Vec<IoDone> {
        self.done.try_iter().collect()
    }
}

impl App {
    /// Jobs the panes queued since the last call, for the I/O worker.
    pub fn take_io(&mut self) -> Vec<IoJob> {
        std::mem::take(&mut self.io_jobs)
    }

    /// Runs the queued jobs here and applies them (tests, headless use).
    pub fn finish_io(&mut self) {
        while !self.io_jobs.is_empty() {
            for job in self.take_io() {
                let done = run(job);
                self.on_io(done);
            }
        }
    }

    /// Work is queued or on the worker.
    pub fn io_pending(&self) -> bool {
        !self.io_jobs.is_empty() || self.models.scanning > 0 || self.data.loading.is_some()
    }

    /// Applies a finished job.
    pub fn on_io(&mut self, done: IoDone) {
        match done {
            IoDone::Discovered { list, then } => {
                self.models.scanning = self.models.scanning.saturating_sub(1);
                self.models_discovered(list, then);
            }
            IoDone::Dataset { path, result } => {
                if self.data.loading.as_deref() != Some(path.as_path()) {
                    return; // replaced by a later request
                }
                self.data.loading = None;
                match result {
                    Ok(d) => self.dataset_opened(&path, *d),
                    Err(e) => self.error(e),
                }
            }
        }
    }
}
