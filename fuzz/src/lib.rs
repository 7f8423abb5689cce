//! Helpers the fuzz targets share: a scratch folder per process (in memory where the system
//! has one), files written into it, and a tiny model with an adapter, built once.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// This process's scratch folder.
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        // folders left by earlier runs whose process is gone (libFuzzer exits without
        // unwinding, so a run cannot remove its own)
        if let Ok(rd) = std::fs::read_dir(&base) {
            for e in rd.flatten() {
                let name = e.file_name();
                let pid = name.to_str().and_then(|n| n.strip_prefix("fraudlab-fuzz-"));
                if pid.is_some_and(|p| !Path::new("/proc").join(p).exists()) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let d = base.join(format!("fraudlab-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch folder");
        d
    })
}

/// Writes `bytes` to `dir/name` as a fresh file and returns its path.
pub fn put_in(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    std::fs::write(&p, bytes).expect("write scratch file");
    p
}

/// Writes `bytes` to the scratch folder as `name`.
pub fn put(name: &str, bytes: &[u8]) -> PathBuf {
    put_in(scratch(), name, bytes)
}

/// A folder `name` in the scratch folder.
pub fn folder(name: &str) -> PathBuf {
    let d = scratch().join(name);
    std::fs::create_dir_all(&d).expect("scratch folder");
    d
}

/// The tiny model (Hugging Face folder) and a LoRA adapter for it, written once.
pub struct Tiny {
    pub model: PathBuf,
    pub adapter: PathBuf,
}

pub fn tiny() -> &'static Tiny {
    static T: OnceLock<Tiny> = OnceLock::new();
    T.get_or_init(|| {
        use fraudlab::model::adapter;
        let model = scratch().join("tiny");
        fraudlab::model::tiny::write_tiny_model(&model, &Default::default()).expect("tiny model");
        let adapter = scratch().join("tiny-adapter");
        let mut lm = fraudlab::model::load(model.to_str().unwrap(), Default::default())
            .expect("load the tiny model");
        let spec = adapter::LoraSpec::default();
        let vars = adapter::attach_lora(&mut lm.model, &spec, 1).expect("attach LoRA");
        adapter::save_adapter(&adapter, &spec, &vars, "tiny").expect("save adapter");
        adapter::AdapterMeta::default()
            .write(&adapter)
            .expect("fraudlab.json");
        Tiny { model, adapter }
    })
}

/// A tokenizer.json small enough to parse in microseconds (no pre-tokenizer regex), for the
/// targets that fuzz the files beside it.
pub const SMALL_TOKENIZER: &str = r#"{"version":"1.0","truncation":null,"padding":null,
"added_tokens":[{"id":3,"content":"<|im_end|>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
"normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,
"model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,"end_of_word_suffix":null,
"fuse_unk":false,"byte_fallback":false,"ignore_merges":false,
"vocab":{"a":0,"b":1,"ab":2,"<|im_end|>":3},"merges":["a b"]}}"#;
