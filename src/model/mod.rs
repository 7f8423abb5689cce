//! Qwen2-family models in Candle: config, weights (safetensors, GGUF), tokenizer, chat template,
//! and writing models out (Hugging Face folders, GGUF export).

pub mod attention;
pub mod config;
pub mod discover;
pub mod gguf;
pub mod gguf_format;
mod gguf_header;
pub mod kernels;
pub mod loader;
pub mod lora_op;
pub mod ops;
pub mod qwen2;
pub mod safe_path;
pub mod safetensors_io;
pub mod tokenizer;

pub use config::Qwen2Config;
pub use loader::{load, load_for_training, LoadOptions, LoadedModel, ModelLocation};
pub use qwen2::{KvCache, Mode, Qwen2};
pub use tokenizer::{ChatMessage, TextTokenizer};

pub use crate::data::fsutil::write_atomic as write_file_atomic;
pub mod adapter;
pub mod convert;
pub mod download;
pub mod export;
pub mod tiny;
