//! The bad-input corpus: malformed variants of every file kind fraudlab reads, generated here,
//! each run through the real reader (and a representative subset through the CLI), which must
//! answer with an error naming the file and the problem: never a panic, an abort, an
//! out-of-memory kill or a hang. `mutation` adds a fixed-seed byte-mutation run per kind.
//!
//! Each test prints how many cases of each class it tried (`--nocapture` shows them).

#[path = "../common/mod.rs"]
mod common;

mod data;
mod gguf;
mod mutation;
mod tokenizer;
mod weights;

use std::path::{Path, PathBuf};

use fraudlab::model::tiny::TinySpec;

/// A tiny model written once per test: the Hugging Face folder and its GGUF files, and a place
/// for variants.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub model: PathBuf,
    pub gguf: PathBuf,
    pub gguf_q8: PathBuf,
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = common::tmp();
        let model = common::tiny_model(dir.path(), TinySpec::default());
        let gguf = common::tiny_gguf(&model, false);
        let gguf_q8 = common::tiny_gguf(&model, true);
        Fixture {
            dir,
            model,
            gguf,
            gguf_q8,
        }
    }

    /// A copy of the model folder named `name`, changed by `f`.
    pub fn variant(&self, name: &str, f: impl FnOnce(&Path)) -> PathBuf {
        let to = self.dir.path().join(name);
        copy_dir(&self.model, &to);
        f(&to);
        to
    }

    /// A file `name` in the fixture folder holding `bytes`.
    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Counts the cases of one class of bad input and prints the count when dropped.
pub struct Tally {
    class: &'static str,
    n: usize,
}

impl Tally {
    pub fn new(class: &'static str) -> Tally {
        Tally { class, n: 0 }
    }
    pub fn add(&mut self) {
        self.n += 1;
    }
    pub fn add_n(&mut self, n: usize) {
        self.n += n;
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            eprintln!("corpus: {}: {} cases", self.class, self.n);
            assert!(self.n > 0, "{}: no case ran", self.class);
        }
    }
}

/// Asserts that `r` is an error whose message (with its causes) names `file` and holds every
/// needle; returns the message.
pub fn expect_err<T>(case: &str, r: anyhow::Result<T>, file: &str, needles: &[&str]) -> String {
    let m = match r {
        Ok(_) => panic!("{case}: expected an error, got Ok"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        m.contains(file),
        "{case}: the error does not name {file}: {m}"
    );
    for n in needles {
        assert!(m.contains(n), "{case}: the error lacks {n:?}: {m}");
    }
    m
}

/// Loads a model (folder or GGUF) the way every command does.
pub fn load(p: &Path) -> anyhow::Result<fraudlab::model::LoadedModel> {
    fraudlab::model::load(p.to_str().unwrap(), Default::default())
}

/// `fraudlab probe` on a model: exit code 2, the file and the needles on stderr, no panic.
pub fn cli_probe(model: &Path, extra: &[&str], needles: &[&str]) {
    let mut args = vec![
        "probe",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "hi",
        "--max-tokens",
        "1",
    ];
    args.extend_from_slice(extra);
    let out = common::run(&args);
    common::assert_clean_error(&out, needles);
}
