//! GGUF files: every header field (magic, version, counts, key and string lengths, value
//! types, arrays, alignment, tensor dimensions, types and offsets) and the metadata the model
//! is built from (architecture, sizes, tokenizer).

use crate::common::build::{self, ty, Gguf};
use crate::{cli_probe, expect_err, load, Fixture, Tally};

type Edit = Box<dyn Fn(&mut Gguf)>;

fn gguf_cases(base: &Gguf, q8: &Gguf) -> Vec<(&'static str, Vec<u8>, &'static [&'static str])> {
    let e = |f: Edit| {
        let mut g = base.clone();
        f(&mut g);
        g.bytes()
    };
    let full = base.bytes();
    let len = full.len() as u64;
    let header_len = base.header().len();
    let mut nested = build::enc_array(ty::U8, 1, &[7]);
    for _ in 0..10 {
        nested = build::enc_array(ty::ARRAY, 1, &nested);
    }
    let at = |pos: usize, val: u64| {
        let mut b = full.clone();
        b[pos..pos + 8].copy_from_slice(&val.to_le_bytes());
        b
    };
    let mut v: Vec<(&'static str, Vec<u8>, &'static [&'static str])> = vec![
        (
            "magic wrong",
            e(Box::new(|g| g.magic = *b"GGUX")),
            &["not a GGUF file"],
        ),
        (
            "magic byte-swapped",
            e(Box::new(|g| g.magic = *b"FUGG")),
            &["not a GGUF file"],
        ),
        ("version 0", e(Box::new(|g| g.version = 0)), &["version 0"]),
        ("version 4", e(Box::new(|g| g.version = 4)), &["version 4"]),
        (
            "version u32::MAX",
            e(Box::new(|g| g.version = u32::MAX)),
            &["version"],
        ),
        (
            "tensor count 2^40",
            e(Box::new(|g| g.n_tensors = Some(1 << 40))),
            &["claims"],
        ),
        (
            "tensor count u64::MAX",
            e(Box::new(|g| g.n_tensors = Some(u64::MAX))),
            &["claims"],
        ),
        (
            "metadata count 2^60",
            e(Box::new(|g| g.n_kv = Some(1 << 60))),
            &["claims"],
        ),
        (
            "both counts u64::MAX",
            e(Box::new(|g| {
                g.n_kv = Some(u64::MAX);
                g.n_tensors = Some(u64::MAX)
            })),
            &["claims"],
        ),
        (
            "metadata count one too many",
            e(Box::new(|g| g.n_kv = Some(g.kvs.len() as u64 + 1))),
            &[],
        ),
        (
            "tensor count one too many",
            e(Box::new(|g| g.n_tensors = Some(g.tensors.len() as u64 + 1))),
            &[],
        ),
        (
            "tensor count 0",
            e(Box::new(|g| g.n_tensors = Some(0))),
            &["no tensor"],
        ),
        ("key length 2^60", at(24, 1 << 60), &["more than 65536"]),
        ("key length 2^20", at(24, 1 << 20), &["more than 65536"]),
        ("key length u64::MAX", at(24, u64::MAX), &["more than"]),
        (
            "string value 2^60 bytes",
            e(Box::new(|g| {
                g.set("general.name", ty::STRING, build::enc_u64(1 << 60));
            })),
            &["more than"],
        ),
        (
            "string value past the end",
            e(Box::new(move |g| {
                g.set("general.name", ty::STRING, build::enc_u64(len - 40));
            })),
            &["claims", "remain"],
        ),
        (
            "value type 13",
            e(Box::new(|g| g.kv_mut("general.name").ty = 13)),
            &["unknown value type 13"],
        ),
        (
            "value type u32::MAX",
            e(Box::new(|g| g.kv_mut("general.name").ty = u32::MAX)),
            &["unknown value type"],
        ),
        (
            "bool of value 2",
            e(Box::new(|g| {
                g.set("general.flag", ty::BOOL, vec![2]);
            })),
            &["bool of value 2"],
        ),
        (
            "array length 2^40",
            e(Box::new(|g| {
                g.set(
                    "tokenizer.ggml.tokens",
                    ty::ARRAY,
                    build::enc_array(ty::STRING, 1 << 40, &[]),
                );
            })),
            &["claims"],
        ),
        (
            "array length u64::MAX",
            e(Box::new(|g| {
                g.set(
                    "tokenizer.ggml.tokens",
                    ty::ARRAY,
                    build::enc_array(ty::U64, u64::MAX, &[]),
                );
            })),
            &["claims"],
        ),
        (
            "array of an unknown type",
            e(Box::new(|g| {
                g.set(
                    "tokenizer.ggml.tokens",
                    ty::ARRAY,
                    build::enc_array(77, 1, &[0; 8]),
                );
            })),
            &["unknown type 77"],
        ),
        (
            "arrays nested 11 deep",
            e(Box::new(move |g| {
                g.set("general.deep", ty::ARRAY, nested.clone());
            })),
            &["nests arrays"],
        ),
        (
            "more values than allowed",
            e(Box::new(|g| {
                g.set(
                    "general.big",
                    ty::ARRAY,
                    build::enc_array(ty::U8, 1 << 23, &vec![0u8; 1 << 23]),
                );
            })),
            &["more than 4194304 values"],
        ),
        (
            "a key twice",
            e(Box::new(|g| {
                let k = g.kvs[0].clone();
                g.kvs.push(k);
            })),
            &["appears twice"],
        ),
        (
            "alignment 0",
            e(Box::new(|g| {
                g.set("general.alignment", ty::U32, build::enc_u32(0));
            })),
            &["alignment", "is 0"],
        ),
        (
            "alignment 3",
            e(Box::new(|g| {
                g.set("general.alignment", ty::U32, build::enc_u32(3));
            })),
            &["alignment", "power of two"],
        ),
        (
            "alignment 2^31",
            e(Box::new(|g| {
                g.set("general.alignment", ty::U32, build::enc_u32(1 << 31));
            })),
            &["alignment"],
        ),
        (
            "alignment 2^40 (u64)",
            e(Box::new(|g| {
                g.set("general.alignment", ty::U64, build::enc_u64(1 << 40));
            })),
            &["alignment"],
        ),
        (
            "alignment negative",
            e(Box::new(|g| {
                g.set(
                    "general.alignment",
                    ty::I32,
                    build::enc_u32((-32i32) as u32),
                );
            })),
            &["alignment"],
        ),
        (
            "alignment a string",
            e(Box::new(|g| {
                g.set("general.alignment", ty::STRING, build::enc_str(b"32"));
            })),
            &["alignment", "integer"],
        ),
        (
            "alignment a float",
            e(Box::new(|g| {
                g.set("general.alignment", ty::F32, build::enc_f32(32.0));
            })),
            &["alignment", "integer"],
        ),
        (
            "tensor of 0 dimensions",
            e(Box::new(|g| g.tensors[0].n_dims = Some(0))),
            &["0 dimensions"],
        ),
        (
            "tensor of 5 dimensions",
            e(Box::new(|g| g.tensors[0].n_dims = Some(5))),
            &["5 dimensions"],
        ),
        (
            "tensor of u32::MAX dimensions",
            e(Box::new(|g| g.tensors[0].n_dims = Some(u32::MAX))),
            &["dimensions"],
        ),
        (
            "tensor dimension 0",
            e(Box::new(|g| g.tensors[0].dims[0] = 0)),
            &["zero dimension"],
        ),
        (
            "tensor dimensions overflowing",
            e(Box::new(|g| {
                g.tensors[0].dims = vec![1 << 32, 1 << 32, 1 << 32]
            })),
            &["too many elements"],
        ),
        (
            "tensor dimensions overflowing u64",
            e(Box::new(|g| g.tensors[0].dims = vec![1 << 62, 8])),
            &["too many elements"],
        ),
        (
            "tensor dimension huge",
            e(Box::new(|g| g.tensors[0].dims = vec![1 << 40])),
            &["past the end"],
        ),
        (
            "ggml type 4 (removed)",
            e(Box::new(|g| g.tensors[0].ggml_type = 4)),
            &["ggml type 4"],
        ),
        (
            "ggml type 31",
            e(Box::new(|g| g.tensors[0].ggml_type = 31)),
            &["ggml type 31"],
        ),
        (
            "ggml type u32::MAX",
            e(Box::new(|g| g.tensors[0].ggml_type = u32::MAX)),
            &["ggml type"],
        ),
        (
            "offset u64::MAX aligned",
            e(Box::new(|g| g.tensors[0].offset = u64::MAX - 31)),
            &["past the end"],
        ),
        (
            "offset 2^40",
            e(Box::new(|g| g.tensors[0].offset = 1 << 40)),
            &["past the end"],
        ),
        (
            "offset past the end",
            e(Box::new(move |g| {
                g.tensors[0].offset = (len + 64) / 32 * 32
            })),
            &["past the end"],
        ),
        (
            "offset misaligned",
            e(Box::new(|g| g.tensors[0].offset += 1)),
            &["not a multiple of the alignment"],
        ),
        (
            "tensors overlapping",
            e(Box::new(|g| g.tensors[1].offset = g.tensors[0].offset)),
            &["overlap"],
        ),
        (
            "a tensor twice",
            e(Box::new(|g| g.tensors[1].name = g.tensors[0].name.clone())),
            &[],
        ),
        (
            "data truncated",
            full[..full.len() - 64].to_vec(),
            &["truncated GGUF file"],
        ),
        (
            "header cut in the counts",
            full[..20].to_vec(),
            &["truncated GGUF header"],
        ),
        (
            "header cut in the metadata",
            full[..header_len / 2].to_vec(),
            &["truncated GGUF header"],
        ),
        (
            "header cut in the tensor infos",
            full[..header_len - 3].to_vec(),
            &["truncated GGUF header"],
        ),
        ("3 bytes", full[..3].to_vec(), &["truncated GGUF header"]),
        (
            "architecture llama",
            e(Box::new(|g| {
                g.set("general.architecture", ty::STRING, build::enc_str(b"llama"));
            })),
            &["architecture `llama`", "not supported"],
        ),
        (
            "architecture missing",
            e(Box::new(|g| {
                g.remove("general.architecture");
            })),
            &["general.architecture"],
        ),
        (
            "architecture a number",
            e(Box::new(|g| {
                g.set("general.architecture", ty::U32, build::enc_u32(2));
            })),
            &["general.architecture"],
        ),
        (
            "embedding length missing",
            e(Box::new(|g| {
                g.remove("qwen2.embedding_length");
            })),
            &["lacks `qwen2.embedding_length`"],
        ),
        (
            "embedding length a string",
            e(Box::new(|g| {
                g.set("qwen2.embedding_length", ty::STRING, build::enc_str(b"32"));
            })),
            &["qwen2.embedding_length"],
        ),
        (
            "head count 0",
            e(Box::new(|g| {
                g.set("qwen2.attention.head_count", ty::U32, build::enc_u32(0));
            })),
            &["num_attention_heads is 0"],
        ),
        (
            "head count negative",
            e(Box::new(|g| {
                g.set(
                    "qwen2.attention.head_count",
                    ty::I32,
                    build::enc_u32((-4i32) as u32),
                );
            })),
            &["qwen2.attention.head_count"],
        ),
        (
            "head count not dividing",
            e(Box::new(|g| {
                g.set("qwen2.attention.head_count", ty::U32, build::enc_u32(5));
            })),
            &["not a multiple"],
        ),
        (
            "kv head count not dividing",
            e(Box::new(|g| {
                g.set("qwen2.attention.head_count_kv", ty::U32, build::enc_u32(3));
            })),
            &["not a multiple"],
        ),
        (
            "block count 2^40",
            e(Box::new(|g| {
                g.set("qwen2.block_count", ty::U64, build::enc_u64(1 << 40));
            })),
            &["num_hidden_layers"],
        ),
        (
            "context length 2^40",
            e(Box::new(|g| {
                g.set("qwen2.context_length", ty::U64, build::enc_u64(1 << 40));
            })),
            &["max_position_embeddings"],
        ),
        (
            "rope base NaN",
            e(Box::new(|g| {
                g.set("qwen2.rope.freq_base", ty::F32, build::enc_f32(f32::NAN));
            })),
            &["rope_theta"],
        ),
        (
            "rope base negative",
            e(Box::new(|g| {
                g.set("qwen2.rope.freq_base", ty::F32, build::enc_f32(-1.0));
            })),
            &["rope_theta"],
        ),
        (
            "norm epsilon 0",
            e(Box::new(|g| {
                g.set(
                    "qwen2.attention.layer_norm_rms_epsilon",
                    ty::F32,
                    build::enc_f32(0.0),
                );
            })),
            &["rms_norm_eps"],
        ),
        (
            "tokens not an array",
            e(Box::new(|g| {
                g.set("tokenizer.ggml.tokens", ty::U32, build::enc_u32(1));
            })),
            &["tokenizer.ggml.tokens", "not an array"],
        ),
        (
            "tokens of numbers",
            e(Box::new(|g| {
                g.set(
                    "tokenizer.ggml.tokens",
                    ty::ARRAY,
                    build::enc_array(ty::U32, 2, &[0; 8]),
                );
            })),
            &["tokenizer.ggml.tokens`[0] is not a string"],
        ),
        (
            "tokens empty",
            e(Box::new(|g| {
                g.set(
                    "tokenizer.ggml.tokens",
                    ty::ARRAY,
                    build::enc_array(ty::STRING, 0, &[]),
                );
            })),
            &["vocab_size is 0"],
        ),
        (
            "merges missing",
            e(Box::new(|g| {
                g.remove("tokenizer.ggml.merges");
            })),
            &["lacks `tokenizer.ggml.merges`"],
        ),
        (
            "token types of strings",
            e(Box::new(|g| {
                let n = base_vocab(g);
                let mut items = Vec::new();
                for _ in 0..n {
                    items.extend(build::enc_str(b"x"));
                }
                g.set(
                    "tokenizer.ggml.token_type",
                    ty::ARRAY,
                    build::enc_array(ty::STRING, n as u64, &items),
                );
            })),
            &["token_type`[0] is not an integer"],
        ),
        (
            "tokenizer model llama",
            e(Box::new(|g| {
                g.set("tokenizer.ggml.model", ty::STRING, build::enc_str(b"llama"));
            })),
            &["tokenizer model `llama`"],
        ),
        (
            "pre-tokenizer llama-bpe",
            e(Box::new(|g| {
                g.set(
                    "tokenizer.ggml.pre",
                    ty::STRING,
                    build::enc_str(b"llama-bpe"),
                );
            })),
            &["pre-tokenizer `llama-bpe`"],
        ),
    ];
    // quantized rows must hold whole blocks
    let mut g = q8.clone();
    let t = g
        .tensors
        .iter_mut()
        .find(|t| t.ggml_type == 8)
        .expect("a Q8_0 tensor");
    t.dims[0] += 16;
    v.push((
        "Q8_0 rows not a multiple of the block",
        g.bytes(),
        &["block size"],
    ));
    v
}

fn base_vocab(g: &Gguf) -> usize {
    let kv = g
        .kvs
        .iter()
        .find(|k| k.key == "tokenizer.ggml.tokens")
        .unwrap();
    u64::from_le_bytes(kv.val[4..12].try_into().unwrap()) as usize
}

#[test]
fn gguf_files() {
    let fx = Fixture::new();
    let mut t = Tally::new("gguf");
    let base = Gguf::parse(&std::fs::read(&fx.gguf).unwrap());
    let q8 = Gguf::parse(&std::fs::read(&fx.gguf_q8).unwrap());
    // the test's own writer round-trips the valid file
    assert_eq!(base.bytes(), std::fs::read(&fx.gguf).unwrap());
    load(&fx.gguf).unwrap();
    for (i, (case, bytes, needles)) in gguf_cases(&base, &q8).into_iter().enumerate() {
        eprintln!("gguf: {case}");
        let name = format!("g-{i}.gguf");
        let p = fx.file(&name, &bytes);
        expect_err(case, load(&p), &name, needles);
        if i % 6 == 0 {
            cli_probe(&p, &[], &[&name]);
        }
        t.add();
    }
}
