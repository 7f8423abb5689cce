//! Model files: safetensors, sharded indexes, config.json.

use crate::common::build;
use crate::{cli_probe, expect_err, load, Fixture, Tally};
use fraudlab::model::safetensors_io::SafetensorsFile;
use serde_json::{json, Value};

fn st_entry(name: &str, dtype: &str, shape: Value, offs: Value) -> String {
    json!({ name: {"dtype": dtype, "shape": shape, "data_offsets": offs} }).to_string()
}

#[test]
fn safetensors_files() {
    let fx = Fixture::new();
    let mut t = Tally::new("safetensors");
    let good = std::fs::read(fx.model.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(good[..8].try_into().unwrap());
    let with_len = |len: u64| {
        let mut b = good.clone();
        b[..8].copy_from_slice(&len.to_le_bytes());
        b
    };
    let one = |dtype: &str, shape: Value, offs: Value, data: usize| {
        build::safetensors(
            st_entry("x", dtype, shape, offs).as_bytes(),
            &vec![0u8; data],
        )
    };
    let deep = "[".repeat(100_000);
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("empty file", vec![], &["no header"]),
        ("7 bytes", vec![1; 7], &["no header"]),
        ("header length u64::MAX", with_len(u64::MAX), &["header length"]),
        ("header length 2^62", with_len(1 << 62), &["header length"]),
        ("header length 2^40", with_len(1 << 40), &["header length"]),
        ("header length past the end by one", with_len(good.len() as u64 - 7), &["header length"]),
        ("header length 0", with_len(0), &["not a JSON object"]),
        ("header length short", with_len(n / 2), &["not a JSON object"]),
        ("header length odd (into the data)", with_len(n + 3), &["not a JSON object"]),
        ("header binary", build::safetensors(b"\xff\xfe\x00garbage", b""), &["not a JSON object"]),
        ("header a JSON array", build::safetensors(b"[]", b""), &["not a JSON object"]),
        ("header null", build::safetensors(b"null", b""), &["not a JSON object"]),
        ("header nested 100000 deep", build::safetensors(format!("{{\"x\":{deep}").as_bytes(), b""), &["not a JSON object"]),
        ("entry not an object", build::safetensors(br#"{"x": 5}"#, b""), &["`x`", "no dtype"]),
        ("dtype unknown", one("F8_E4M3", json!([1]), json!([0, 1]), 1), &["`x`", "unsupported dtype F8_E4M3"]),
        ("dtype a number", build::safetensors(br#"{"x":{"dtype":5,"shape":[1],"data_offsets":[0,4]}}"#, &[0; 4]), &["no dtype"]),
        ("shape missing", build::safetensors(br#"{"x":{"dtype":"F32","data_offsets":[0,4]}}"#, &[0; 4]), &["no shape"]),
        ("shape a string", one("F32", json!("4"), json!([0, 4]), 4), &["no shape"]),
        ("shape negative", one("F32", json!([-1]), json!([0, 4]), 4), &["not a list of sizes"]),
        ("shape fractional", one("F32", json!([1.5]), json!([0, 4]), 4), &["not a list of sizes"]),
        ("shape overflowing usize", one("F32", json!([1u64 << 62, 1u64 << 62]), json!([0, 4]), 4), &["too large"]),
        ("shape overflowing with the dtype size", one("F32", json!([1u64 << 62]), json!([0, 4]), 4), &["too large"]),
        ("shape larger than its bytes", one("F32", json!([4]), json!([0, 8]), 8), &["needs 16 bytes", "hold 8"]),
        ("shape smaller than its bytes", one("F32", json!([1]), json!([0, 8]), 8), &["needs 4 bytes"]),
        ("offsets missing", build::safetensors(br#"{"x":{"dtype":"F32","shape":[1]}}"#, &[0; 4]), &["no data_offsets"]),
        ("offsets of three", one("F32", json!([1]), json!([0, 4, 8]), 8), &["no data_offsets"]),
        ("offsets reversed", one("F32", json!([1]), json!([4, 0]), 4), &["increasing pair"]),
        ("offsets negative", one("F32", json!([1]), json!([-4, 0]), 4), &["increasing pair"]),
        ("offsets strings", one("F32", json!([1]), json!(["0", "4"]), 4), &["increasing pair"]),
        ("offsets past the end", one("F32", json!([1]), json!([0, 1u64 << 40]), 4), &["ends at byte"]),
        ("offsets at u64::MAX", one("F32", json!([1]), json!([u64::MAX - 3, u64::MAX]), 4), &["ends at byte"]),
        (
            "offsets overlapping",
            build::safetensors(
                br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                &[0; 12],
            ),
            &["overlap", "`a`", "`b`"],
        ),
        ("data truncated", good[..good.len() - 100].to_vec(), &["truncated"]),
        ("data cut to the header", good[..8 + n as usize].to_vec(), &["truncated"]),
    ];
    for (i, (case, bytes, needles)) in cases.into_iter().enumerate() {
        eprintln!("safetensors: {case}");
        let p = fx.file(&format!("st-{i}.safetensors"), &bytes);
        expect_err(
            case,
            SafetensorsFile::open(&p),
            &format!("st-{i}.safetensors"),
            needles,
        );
        // the whole model load says the same
        let m = fx.variant(&format!("st-{i}"), |d| {
            std::fs::write(d.join("model.safetensors"), &bytes).unwrap()
        });
        expect_err(case, load(&m), "model.safetensors", needles);
        if i % 8 == 0 {
            cli_probe(&m, &[], &["model.safetensors", needles[0]]);
        }
        t.add();
    }
    // a folder without weights, and weights that are a folder
    let m = fx.variant("st-none", |d| {
        std::fs::remove_file(d.join("model.safetensors")).unwrap()
    });
    expect_err("no weights", load(&m), "st-none", &["no weights"]);
    let m = fx.variant("st-dir", |d| {
        std::fs::remove_file(d.join("model.safetensors")).unwrap();
        std::fs::create_dir(d.join("model.safetensors")).unwrap();
    });
    expect_err("weights are a folder", load(&m), "model.safetensors", &[]);
    t.add();
    t.add();
}

#[test]
fn sharded_indexes() {
    let fx = Fixture::new();
    let mut t = Tally::new("sharded index");
    let sd = fx.dir.path().join("sharded-src");
    std::fs::create_dir_all(&sd).unwrap();
    let sharded = common_sharded(&sd);
    let index: Value = serde_json::from_str(
        &std::fs::read_to_string(sharded.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let first = index["weight_map"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    let with_map = |f: &dyn Fn(&mut Value)| {
        let mut v = index.clone();
        f(&mut v);
        v.to_string().into_bytes()
    };
    let set_first = |shard: Value| with_map(&|v| v["weight_map"][&first] = shard.clone());
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("not JSON", b"{ not json".to_vec(), &["not valid JSON"]),
        ("empty", vec![], &["not valid JSON"]),
        ("no weight_map", b"{}".to_vec(), &["no `weight_map`"]),
        (
            "weight_map a list",
            with_map(&|v| v["weight_map"] = json!(["a"])),
            &["no `weight_map`"],
        ),
        (
            "shard a number",
            set_first(json!(5)),
            &["is not a file name"],
        ),
        (
            "shard null",
            set_first(Value::Null),
            &["is not a file name"],
        ),
        (
            "shard escaping with ..",
            set_first(json!("../model-00001-of-00002.safetensors")),
            &["plain file name"],
        ),
        (
            "shard an absolute path",
            set_first(json!("/etc/passwd")),
            &["plain file name"],
        ),
        (
            "shard in a subfolder",
            set_first(json!("sub/x.safetensors")),
            &["plain file name"],
        ),
        (
            "shard hidden",
            set_first(json!(".x.safetensors")),
            &["plain file name"],
        ),
        ("shard empty", set_first(json!("")), &["plain file name"]),
        (
            "shard not safetensors",
            set_first(json!("model.bin")),
            &["not a .safetensors file"],
        ),
        (
            "shard missing",
            set_first(json!("model-00009-of-00009.safetensors")),
            &["missing"],
        ),
        (
            "tensor in the wrong shard",
            {
                let other = index["weight_map"][&first].as_str().unwrap().to_string();
                let swapped = if other.contains("00001") {
                    other.replace("00001", "00002")
                } else {
                    other.replace("00002", "00001")
                };
                set_first(json!(swapped))
            },
            &["no such tensor"],
        ),
    ];
    for (i, (case, bytes, needles)) in cases.into_iter().enumerate() {
        eprintln!("index: {case}");
        let m = fx.dir.path().join(format!("ix-{i}"));
        crate::copy_dir(&sharded, &m);
        std::fs::write(m.join("model.safetensors.index.json"), &bytes).unwrap();
        expect_err(case, load(&m), "model.safetensors.index.json", needles);
        if i % 4 == 0 {
            cli_probe(&m, &[], &["model.safetensors.index.json", needles[0]]);
        }
        t.add();
    }
    // a shard that is a folder, and a shard that is corrupt: the error names the shard
    let m = fx.dir.path().join("ix-dir");
    crate::copy_dir(&sharded, &m);
    std::fs::remove_file(m.join("model-00002-of-00002.safetensors")).unwrap();
    std::fs::create_dir(m.join("model-00002-of-00002.safetensors")).unwrap();
    expect_err(
        "shard a folder",
        load(&m),
        "model-00002-of-00002.safetensors",
        &["missing"],
    );
    let m = fx.dir.path().join("ix-bad");
    crate::copy_dir(&sharded, &m);
    std::fs::write(
        m.join("model-00001-of-00002.safetensors"),
        b"\x02\0\0\0\0\0\0\0{",
    )
    .unwrap();
    expect_err(
        "shard corrupt",
        load(&m),
        "model-00001-of-00002.safetensors",
        &["header length"],
    );
    t.add();
    t.add();
}

fn common_sharded(dir: &std::path::Path) -> std::path::PathBuf {
    crate::common::tiny_model(
        dir,
        fraudlab::model::tiny::TinySpec {
            sharded: true,
            ..Default::default()
        },
    )
}

#[test]
fn config_files() {
    let fx = Fixture::new();
    let mut t = Tally::new("config.json");
    let good: Value =
        serde_json::from_str(&std::fs::read_to_string(fx.model.join("config.json")).unwrap())
            .unwrap();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        f(&mut v);
        v.to_string().into_bytes()
    };
    let set = |k: &str, x: Value| with(&|v| v[k] = x.clone());
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("not JSON", b"{ not json".to_vec(), &["not valid JSON"]),
        ("empty", vec![], &["not valid JSON"]),
        (
            "invalid UTF-8",
            b"{\"a\": \"\xff\"}".to_vec(),
            &["cannot read model config"],
        ),
        ("a JSON array", b"[]".to_vec(), &["unsupported"]),
        ("null", b"null".to_vec(), &["unsupported"]),
        (
            "hidden_size 1e12 (float)",
            set("hidden_size", json!(1e12)),
            &["`hidden_size` must be a non-negative integer, not 1000000000000.0"],
        ),
        (
            "hidden_size 10^12",
            set("hidden_size", json!(1_000_000_000_000u64)),
            &["hidden_size is 1000000000000"],
        ),
        (
            "hidden_size negative",
            set("hidden_size", json!(-32)),
            &["`hidden_size` must be a non-negative integer, not -32"],
        ),
        (
            "hidden_size a string",
            set("hidden_size", json!("32")),
            &["`hidden_size` must be a non-negative integer"],
        ),
        (
            "hidden_size null",
            set("hidden_size", Value::Null),
            &["`hidden_size` must be a non-negative integer, not null"],
        ),
        (
            "hidden_size a string of 1 MB",
            set("hidden_size", json!("9".repeat(1 << 20))),
            &["`hidden_size` must be", "…"],
        ),
        (
            "hidden_size u64::MAX",
            set("hidden_size", json!(u64::MAX)),
            &["hidden_size"],
        ),
        (
            "layers 10^9",
            set("num_hidden_layers", json!(1_000_000_000)),
            &["num_hidden_layers is 1000000000"],
        ),
        (
            "layers 0",
            set("num_hidden_layers", json!(0)),
            &["num_hidden_layers is 0"],
        ),
        (
            "heads 0",
            set("num_attention_heads", json!(0)),
            &["num_attention_heads is 0"],
        ),
        (
            "heads not dividing",
            set("num_attention_heads", json!(5)),
            &["not a multiple"],
        ),
        (
            "kv heads not dividing",
            set("num_key_value_heads", json!(3)),
            &["not a multiple"],
        ),
        (
            "kv heads 0",
            set("num_key_value_heads", json!(0)),
            &["num_key_value_heads 0"],
        ),
        (
            "kv heads above heads",
            set("num_key_value_heads", json!(8)),
            &["not a multiple"],
        ),
        (
            "head dim odd",
            with(&|v| {
                v["hidden_size"] = json!(36);
                v["num_attention_heads"] = json!(4);
                v["num_key_value_heads"] = json!(2);
            }),
            &["odd"],
        ),
        ("vocab 0", set("vocab_size", json!(0)), &["vocab_size is 0"]),
        (
            "vocab 2^40",
            set("vocab_size", json!(1u64 << 40)),
            &["vocab_size"],
        ),
        (
            "vocab missing",
            with(&|v| {
                v.as_object_mut().unwrap().remove("vocab_size");
            }),
            &["missing field `vocab_size`"],
        ),
        (
            "intermediate 0",
            set("intermediate_size", json!(0)),
            &["intermediate_size is 0"],
        ),
        (
            "context 2^40",
            set("max_position_embeddings", json!(1u64 << 40)),
            &["max_position_embeddings"],
        ),
        (
            "rope_theta negative",
            set("rope_theta", json!(-1.0)),
            &["rope_theta is -1"],
        ),
        (
            "rope_theta 0",
            set("rope_theta", json!(0.0)),
            &["rope_theta is 0"],
        ),
        (
            "rope_theta \"NaN\"",
            set("rope_theta", json!("NaN")),
            &["`rope_theta` must be a number"],
        ),
        (
            "rope_theta NaN literal",
            String::from_utf8(set("rope_theta", json!(1.0)))
                .unwrap()
                .replace("\"rope_theta\":1.0", "\"rope_theta\":NaN")
                .into_bytes(),
            &["not valid JSON"],
        ),
        (
            "rope_theta 1e999",
            String::from_utf8(set("rope_theta", json!(1.0)))
                .unwrap()
                .replace("\"rope_theta\":1.0", "\"rope_theta\":1e999")
                .into_bytes(),
            &["not valid JSON"],
        ),
        (
            "rms_norm_eps 2",
            set("rms_norm_eps", json!(2.0)),
            &["rms_norm_eps"],
        ),
        (
            "rms_norm_eps negative",
            set("rms_norm_eps", json!(-1e-6)),
            &["rms_norm_eps"],
        ),
        (
            "architectures a number",
            set("architectures", json!(5)),
            &["`architectures` must be a list of names"],
        ),
        (
            "architectures LlamaForCausalLM",
            set("architectures", json!(["LlamaForCausalLM"])),
            &["unsupported architecture LlamaForCausalLM"],
        ),
        (
            "model_type llama",
            with(&|v| {
                v.as_object_mut().unwrap().remove("architectures");
                v["model_type"] = json!("llama");
            }),
            &["unsupported model_type `llama`"],
        ),
        (
            "rope scaling yarn",
            set("rope_scaling", json!({"type": "yarn", "factor": 4.0})),
            &["rope type `yarn`"],
        ),
        (
            "tie_word_embeddings a string",
            set("tie_word_embeddings", json!("yes")),
            &["must be true or false"],
        ),
        (
            "vocab not matching the weights",
            set("vocab_size", json!(10)),
            &["shape"],
        ),
        (
            "hidden not matching the weights",
            with(&|v| {
                v["hidden_size"] = json!(64);
            }),
            &["shape"],
        ),
    ];
    for (i, (case, bytes, needles)) in cases.into_iter().enumerate() {
        eprintln!("config: {case}");
        let m = fx.variant(&format!("cfg-{i}"), |d| {
            std::fs::write(d.join("config.json"), &bytes).unwrap()
        });
        let file = if needles.contains(&"shape") {
            "model.safetensors"
        } else {
            "config.json"
        };
        expect_err(case, load(&m), file, needles);
        if i % 5 == 0 {
            cli_probe(&m, &[], &[file, needles[0]]);
        }
        t.add();
    }
    // missing, and a folder in its place
    let m = fx.variant("cfg-missing", |d| {
        std::fs::remove_file(d.join("config.json")).unwrap()
    });
    expect_err("missing", load(&m), "cfg-missing", &["config.json"]);
    let m = fx.variant("cfg-dir", |d| {
        std::fs::remove_file(d.join("config.json")).unwrap();
        std::fs::create_dir(d.join("config.json")).unwrap();
    });
    expect_err("a folder", load(&m), "config.json", &[]);
    t.add();
    t.add();
}
