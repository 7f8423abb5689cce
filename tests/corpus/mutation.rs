//! Fixed-seed mutation: valid tiny files of every kind, each read a few thousand times after
//! random byte flips, overwrites with boundary values, truncations, insertions, deletions and
//! JSON-token splices. Every read must return (Ok or Err); a panic fails the test with the
//! kind, the seed and the mutations, so the case can be replayed.

use crate::{load, Fixture};
use fraudlab::data::{self, journal, Session};
use fraudlab::model::adapter::{self, AdapterMeta, LoraSpec};
use fraudlab::model::gguf::GgufFile;
use fraudlab::model::safetensors_io::{SafetensorsFile, WeightFiles};
use fraudlab::model::tokenizer::{render_chat, TextTokenizer};
use fraudlab::model::{ChatMessage, Qwen2Config};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

const SEED: u64 = 0x5eed_f4a0_d1ab;

/// SplitMix64: small, fixed and the same everywhere.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const BOUNDARY: [u64; 10] = [
    0,
    1,
    0x7f,
    0xff,
    0xffff_ffff,
    1 << 31,
    1 << 32,
    1 << 40,
    1 << 63,
    u64::MAX,
];
const JSON_TOKENS: [&str; 16] = [
    "\"",
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "null",
    "-1",
    "0",
    "1e999",
    "18446744073709551616",
    "\"\\u0000\"",
    "true",
    "\u{fffd}",
    "\\",
];

/// Mutates `b` in place 1 to 4 times; positions fall in `hot` (a header) most of the time.
/// Returns what was done.
pub fn mutate(rng: &mut Rng, b: &mut Vec<u8>, hot: usize, json: bool) -> Vec<String> {
    let mut done = Vec::new();
    for _ in 0..1 + rng.below(4) {
        let len = b.len();
        let pos = if rng.below(100) < 85 && hot > 0 {
            rng.below(hot.min(len.max(1)))
        } else {
            rng.below(len.max(1))
        };
        match rng.below(if json { 7 } else { 6 }) {
            0 if len > 0 => {
                let bit = rng.below(8);
                b[pos] ^= 1 << bit;
                done.push(format!("flip bit {bit} at {pos}"));
            }
            1 if len > 0 => {
                let v = rng.next() as u8;
                b[pos] = v;
                done.push(format!("set byte {pos} to {v:#04x}"));
            }
            2 => {
                let v = BOUNDARY[rng.below(BOUNDARY.len())];
                let w = [1, 2, 4, 8][rng.below(4)];
                let bytes = &v.to_le_bytes()[..w];
                let end = (pos + w).min(len);
                b.splice(pos.min(len)..end, bytes.iter().copied());
                done.push(format!("write {v:#x} as {w} bytes at {pos}"));
            }
            3 => {
                let to = rng.below(len + 1);
                b.truncate(to);
                done.push(format!("truncate to {to}"));
            }
            4 => {
                let n = 1 + rng.below(16);
                let ins: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                b.splice(pos.min(len)..pos.min(len), ins);
                done.push(format!("insert {n} random bytes at {pos}"));
            }
            5 if len > 0 => {
                let n = 1 + rng.below(32);
                let end = (pos + n).min(len);
                b.drain(pos..end);
                done.push(format!("delete {pos}..{end}"));
            }
            6 => {
                let t = JSON_TOKENS[rng.below(JSON_TOKENS.len())];
                b.splice(pos.min(len)..pos.min(len), t.bytes());
                done.push(format!("insert {t:?} at {pos}"));
            }
            _ => {}
        }
    }
    done
}

/// Runs `read` on `n` mutations of `valid` written to `path`; fails on the first panic.
fn run_kind(
    kind: &str,
    valid: &[u8],
    hot: usize,
    json: bool,
    n: usize,
    path: &Path,
    read: &mut dyn FnMut(&Path),
) {
    let t0 = std::time::Instant::now();
    let mut rng = Rng::new(SEED ^ fxhash(kind));
    for i in 0..n {
        let seed = rng.next();
        let mut r = Rng::new(seed);
        let mut b = valid.to_vec();
        let what = mutate(&mut r, &mut b, hot, json);
        // a fresh file each time: rewriting one in place makes ext4 flush it on close
        let _ = std::fs::remove_file(path);
        std::fs::write(path, &b).unwrap();
        if catch_unwind(AssertUnwindSafe(|| read(path))).is_err() {
            panic!(
                "{kind}: reading mutation {i} (seed {seed:#x}: {}) panicked",
                what.join("; ")
            );
        }
    }
    eprintln!("mutation: {kind}: {n} mutations in {:.1?}", t0.elapsed());
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn header_len_safetensors(b: &[u8]) -> usize {
    8 + u64::from_le_bytes(b[..8].try_into().unwrap()) as usize
}

#[test]
fn mutated_model_files() {
    let fx = Fixture::new();
    let work = fx.dir.path().join("mut");
    std::fs::create_dir_all(&work).unwrap();

    let st = std::fs::read(fx.model.join("model.safetensors")).unwrap();
    run_kind(
        "safetensors",
        &st,
        header_len_safetensors(&st),
        true,
        3000,
        &work.join("m.safetensors"),
        &mut |p| {
            if let Ok(f) = SafetensorsFile::open(p) {
                for k in f.entries.keys() {
                    let _ = f.load(k, candle_core::DType::F32, &candle_core::Device::Cpu);
                }
            }
        },
    );

    for (kind, file) in [("gguf f32", &fx.gguf), ("gguf q8_0", &fx.gguf_q8)] {
        let g = std::fs::read(file).unwrap();
        let hot = crate::common::build::Gguf::parse(&g).header().len();
        let mut i = 0usize;
        run_kind(kind, &g, hot, false, 1500, &work.join("m.gguf"), &mut |p| {
            i += 1;
            if i.is_multiple_of(10) {
                let _ = load(p);
                return;
            }
            if let Ok(g) = GgufFile::open(p) {
                let _ = g.config();
                let _ = g.tokenizer_json();
                let _ = g.quant_summary();
            }
        });
    }

    let cfg = std::fs::read(fx.model.join("config.json")).unwrap();
    run_kind(
        "config.json",
        &cfg,
        cfg.len(),
        true,
        3000,
        &work.join("config.json"),
        &mut |p| {
            let _ = Qwen2Config::from_file(p).map(|c| c.parameter_count());
        },
    );

    let sd = fx.dir.path().join("sharded");
    let sharded = crate::common::tiny_model(
        &sd,
        fraudlab::model::tiny::TinySpec {
            sharded: true,
            ..Default::default()
        },
    );
    let idx = std::fs::read(sharded.join("model.safetensors.index.json")).unwrap();
    run_kind(
        "sharded index",
        &idx,
        idx.len(),
        true,
        2000,
        &sharded.join("model.safetensors.index.json"),
        &mut |p| {
            let _ = WeightFiles::open_folder(p.parent().unwrap());
        },
    );
}

const SMALL_TOKENIZER: &str = r#"{"version": "1.0", "truncation": null, "padding": null,
"added_tokens": [{"id": 3, "content": "<|im_end|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
"normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
"model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
"fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
"vocab": {"a": 0, "b": 1, "ab": 2, "<|im_end|>": 3}, "merges": ["a b"]}}"#;

fn model_copy(fx: &Fixture, name: &str) -> PathBuf {
    let d = fx.dir.path().join(name);
    crate::copy_dir(&fx.model, &d);
    d
}

#[test]
fn mutated_tokenizer_files_and_templates() {
    let fx = Fixture::new();
    let msgs = vec![
        ChatMessage::new("system", "S"),
        ChatMessage::new("user", "你好 hello"),
    ];
    let use_tok = |d: &Path| {
        if let Ok(t) = TextTokenizer::from_folder(d) {
            if let Ok(ids) = t.encode("你好 hello <|im_end|>") {
                let _ = t.decode(&ids, false);
            }
            let _ = t.apply_chat_template(&msgs, true);
        }
    };
    let d = model_copy(&fx, "tokj");
    let tj = std::fs::read(d.join("tokenizer.json")).unwrap();
    run_kind(
        "tokenizer.json",
        &tj,
        tj.len(),
        true,
        2000,
        &d.join("tokenizer.json"),
        &mut |p| use_tok(p.parent().unwrap()),
    );
    // beside the mutated tokenizer_config.json, a tokenizer.json without a pre-tokenizer
    // regex, which parses in microseconds instead of milliseconds
    let d = model_copy(&fx, "tokc");
    std::fs::write(d.join("tokenizer.json"), SMALL_TOKENIZER).unwrap();
    let tc = std::fs::read(d.join("tokenizer_config.json")).unwrap();
    run_kind(
        "tokenizer_config.json",
        &tc,
        tc.len(),
        true,
        3000,
        &d.join("tokenizer_config.json"),
        &mut |p| use_tok(p.parent().unwrap()),
    );
    // a template shaped like Qwen2.5's, mutated as text
    let tpl = "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'].strip() + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are Qwen.<|im_end|>\\n' }}{%- endif %}{%- for message in messages %}{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";
    let work = fx.dir.path().join("tpl.jinja");
    run_kind(
        "chat template",
        tpl.as_bytes(),
        tpl.len(),
        true,
        3000,
        &work,
        &mut |p| {
            let text = String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned();
            let _ = render_chat(&text, "t", &msgs, true, Some("<s>"), Some("</s>"));
        },
    );
}

#[test]
fn mutated_user_files() {
    let fx = Fixture::new();
    let work = fx.dir.path().join("mut");
    std::fs::create_dir_all(&work).unwrap();
    let ds = fx.dir.path().join("d.jsonl");
    crate::common::fraud_jsonl(&ds, 6);
    let fraud = std::fs::read(&ds).unwrap();
    let alpaca = serde_json::json!([
        {"instruction": "a", "input": "b", "output": "{\"is_fraud\": true}"},
        {"instruction": "c", "output": "d"}
    ])
    .to_string();
    let chat = "{\"messages\": [{\"role\": \"system\", \"content\": \"S\"}, {\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"{\\\"is_fraud\\\": false}\"}]}\n{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}\n";
    let sharegpt = "{\"conversations\": [{\"from\": \"human\", \"value\": \"hi\"}, {\"from\": \"gpt\", \"value\": \"ok\"}]}\n";
    let text = "{\"text\": \"hello\"}\n{\"text\": \"world\"}\n";
    let csv = "case,speaker,content,is_fraud\n1,客服,\"您好, 请转账\",True\n1,用户,\"好的\"\"嗯\"\"\",False\n2,A,hi,0\n";
    for (kind, name, bytes) in [
        ("dataset fraud jsonl", "m.jsonl", fraud.as_slice()),
        ("dataset alpaca json", "m.json", alpaca.as_bytes()),
        ("dataset chat jsonl", "c.jsonl", chat.as_bytes()),
        ("dataset sharegpt jsonl", "s.jsonl", sharegpt.as_bytes()),
        ("dataset text jsonl", "t.jsonl", text.as_bytes()),
        ("dataset text txt", "t.txt", "第一行\n第二行\n".as_bytes()),
        ("dataset csv", "m.csv", csv.as_bytes()),
    ] {
        run_kind(
            kind,
            bytes,
            bytes.len(),
            true,
            1000,
            &work.join(name),
            &mut |p| {
                if let Ok(r) = data::load(p) {
                    for s in &r.samples {
                        let _ = (
                            s.turns(),
                            s.prompt_text(),
                            s.expected_answer(true),
                            s.anonymized(),
                        );
                    }
                }
            },
        );
    }

    let id = data::load(&ds).unwrap().samples[0].id.clone();
    let mut j = String::new();
    for (k, action) in ["label", "label", "undo", "label"].iter().enumerate() {
        let v = if *action == "undo" {
            serde_json::json!({"id": id, "action": "undo", "time": k as f64})
        } else {
            serde_json::json!({"id": id, "action": "label", "label": k % 2 == 0, "fraud_speaker": "甲", "reason": null, "time": "2026-12-01T10:00:00Z"})
        };
        j.push_str(&v.to_string());
        j.push('\n');
    }
    run_kind(
        "label journal",
        j.as_bytes(),
        j.len(),
        true,
        3000,
        &work.join("j.jsonl"),
        &mut |p| {
            if let Ok(r) = fraudlab::data::Journal::read(p) {
                let _ = r.current_labels();
                let _ = r.problems();
            }
            let _ = journal::parse_journal(&std::fs::read(p).unwrap());
        },
    );

    let root = fx.dir.path().join("sessions");
    let s = Session::open(&root, "m").unwrap();
    let cfg = serde_json::json!({"created": "2026-12-01T10:00:00Z", "models": ["a", "b"], "datasets": ["d.jsonl"], "active_model": "a", "active_dataset": null, "settings": {"pane": "probe", "threshold": 0.5}, "other": [1, 2]}).to_string();
    run_kind(
        "session.json",
        cfg.as_bytes(),
        cfg.len(),
        true,
        2000,
        &s.config_path(),
        &mut |_| {
            let _ = s.load_config();
        },
    );
}

#[test]
fn mutated_adapter_files() {
    let fx = Fixture::new();
    let dir = fx.dir.path().join("adapter");
    let mut lm = load(&fx.model).unwrap();
    let spec = LoraSpec::default();
    let vars = adapter::attach_lora(&mut lm.model, &spec, 1).unwrap();
    adapter::save_adapter(&dir, &spec, &vars, "tiny").unwrap();
    AdapterMeta::default().write(&dir).unwrap();
    let mut meta = AdapterMeta {
        threshold: Some(0.4),
        stream: Some(adapter::StreamRule {
            threshold: 0.6,
            consecutive: 2,
        }),
        ..Default::default()
    };
    meta.threshold_for_recall.insert("0.95".into(), 0.2);
    meta.write(&dir).unwrap();
    let mut lm = load(&fx.model).unwrap();
    for (kind, file, json) in [
        ("adapter_config.json", "adapter_config.json", true),
        (
            "adapter_model.safetensors",
            "adapter_model.safetensors",
            false,
        ),
        ("fraudlab.json", "fraudlab.json", true),
    ] {
        let valid = std::fs::read(dir.join(file)).unwrap();
        let hot = if json {
            valid.len()
        } else {
            header_len_safetensors(&valid)
        };
        run_kind(kind, &valid, hot, json, 2000, &dir.join(file), &mut |p| {
            let d = p.parent().unwrap();
            let _ = adapter::load_adapter(&mut lm.model, d);
            let _ = AdapterMeta::read(d);
        });
        std::fs::write(dir.join(file), &valid).unwrap();
    }
}
