//! Writing GGUF files (version 3, little-endian): the container (header, metadata, tensor
//! table, aligned tensor data), the tensor encodings fraudlab exports (f32, f16, Q8_0), and
//! llama.cpp's names of a file's type (`general.file_type`), which the reader uses too.
//!
//! Reading stays in `gguf.rs`. What goes into the metadata and which tensor gets which
//! encoding is `export.rs`'s business; this file only lays bytes out.

use anyhow::{bail, Context, Result};
use half::f16;
use std::io::Write;

/// Tensor data starts, and every tensor's data begins, at a multiple of this many bytes
/// (the GGUF default, written to `general.alignment` too).
pub const ALIGNMENT: usize = 32;

/// llama.cpp's tensor names are at most 63 bytes (`GGML_MAX_NAME` with its NUL).
const MAX_NAME: usize = 63;

/// The value types of the metadata section.
mod vtype {
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
}

/// A metadata value (the kinds an exported model needs).
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

/// How a tensor's values are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    F32,
    F16,
    /// Blocks of 32 values along a row: an f16 scale `d`, then 32 `i8` with `x ≈ d·q`.
    Q8_0,
}

impl TensorType {
    /// The ggml type id in the tensor table.
    pub fn code(self) -> u32 {
        match self {
            TensorType::F32 => 0,
            TensorType::F16 => 1,
            TensorType::Q8_0 => 8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TensorType::F32 => "F32",
            TensorType::F16 => "F16",
            TensorType::Q8_0 => "Q8_0",
        }
    }

    /// (values, bytes) of one block.
    fn block(self) -> (usize, usize) {
        match self {
            TensorType::F32 => (1, 4),
            TensorType::F16 => (1, 2),
            TensorType::Q8_0 => (32, 34),
        }
    }

    /// Bytes of `n` values (`n` a multiple of the block size).
    pub fn byte_len(self, n: usize) -> usize {
        let (vals, bytes) = self.block();
        n / vals * bytes
    }

    /// Appends the encoding of `x` (whole blocks) to `out`.
    pub fn encode(self, x: &[f32], out: &mut Vec<u8>) {
        out.reserve(self.byte_len(x.len()));
        match self {
            TensorType::F32 => x.iter().for_each(|v| out.extend(v.to_le_bytes())),
            TensorType::F16 => x
                .iter()
                .for_each(|v| out.extend(f16::from_f32(*v).to_le_bytes())),
            TensorType::Q8_0 => {
                for b in x.chunks_exact(32) {
                    // ggml's reference rounding: scale from the block's largest magnitude, the
                    // quotient rounded half away from zero with the f32 scale (not the f16 one
                    // stored), so our bytes equal llama.cpp's for the same input.
                    let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let d = amax / 127.0;
                    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                    out.extend(f16::from_f32(d).to_le_bytes());
                    out.extend(b.iter().map(|v| (v * id).round() as i8 as u8));
                }
            }
        }
    }
}

/// llama.cpp's name of a `general.file_type` value (its `LLAMA_FTYPE_*` table, as the
/// quantize tool and model cards spell them: "Q4_K_M", "Q8_0", "F16"…).
pub fn file_type_name(ftype: u32) -> Option<&'static str> {
    Some(match ftype {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        _ => return None,
    })
}

/// The `general.file_type` of a file whose 2-D weights are `ty`.
pub fn file_type_of(ty: TensorType) -> u32 {
    match ty {
        TensorType::F32 => 0,
        TensorType::F16 => 1,
        TensorType::Q8_0 => 7,
    }
}

/// One tensor of the table: its name, its shape in row-major order (as in safetensors:
/// `[rows, columns]`), and its encoding.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub ty: TensorType,
}

impl TensorSpec {
    fn elems(&self) -> usize {
        self.shape.iter().product()
    }
    fn bytes(&self) -> usize {
        self.ty.byte_len(self.elems())
    }
}

/// A GGUF file being put together: metadata and the tensor table first, then the data is
/// streamed tensor by tensor (only one tensor's bytes are in memory at a time).
#[derive(Debug, Default)]
pub struct GgufBuilder {
    meta: Vec<(String, MetaValue)>,
    tensors: Vec<TensorSpec>,
}

fn padded(n: usize) -> usize {
    n.div_ceil(ALIGNMENT) * ALIGNMENT
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &MetaValue) {
    let t = |out: &mut Vec<u8>, code: u32| out.extend(code.to_le_bytes());
    match v {
        MetaValue::U32(x) => {
            t(out, vtype::U32);
            out.extend(x.to_le_bytes());
        }
        MetaValue::I32(x) => {
            t(out, vtype::I32);
            out.extend(x.to_le_bytes());
        }
        MetaValue::F32(x) => {
            t(out, vtype::F32);
            out.extend(x.to_le_bytes());
        }
        MetaValue::Bool(x) => {
            t(out, vtype::BOOL);
            out.push(u8::from(*x));
        }
        MetaValue::Str(s) => {
            t(out, vtype::STRING);
            put_str(out, s);
        }
        MetaValue::Strs(a) => {
            t(out, vtype::ARRAY);
            t(out, vtype::STRING);
            out.extend((a.len() as u64).to_le_bytes());
            a.iter().for_each(|s| put_str(out, s));
        }
        MetaValue::I32s(a) => {
            t(out, vtype::ARRAY);
            t(out, vtype::I32);
            out.extend((a.len() as u64).to_le_bytes());
            a.iter().for_each(|x| out.extend(x.to_le_bytes()));
        }
    }
}

impl GgufBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a metadata key (a key set twice keeps the last value, in its first place).
    pub fn meta(&mut self, key: &str, v: MetaValue) {
        match self.meta.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = v,
            None => self.meta.push((key.to_string(), v)),
        }
    }

    /// Adds a tensor to the table; refuses what llama.cpp could not read back.
    pub fn tensor(&mut self, name: &str, shape: &[usize], ty: TensorType) -> Result<()> {
        if name.len() > MAX_NAME {
            bail!("tensor name `{name}` is longer than {MAX_NAME} bytes");
        }
        if self.tensors.iter().any(|t| t.name == name) {
            bail!("tensor `{name}` is given twice");
        }
        if shape.is_empty() || shape.len() > 4 || shape.contains(&0) {
            bail!("tensor `{name}`: shape {shape:?} cannot be stored (1 to 4 non-zero dimensions)");
        }
        let (block, _) = ty.block();
        let row = *shape.last().unwrap();
        if !row.is_multiple_of(block) {
            bail!(
                "tensor `{name}` of shape {shape:?} cannot be stored as {}: its rows of {row} values are not a whole number of {block}-value blocks",
                ty.name()
            );
        }
        self.tensors.push(TensorSpec {
            name: name.to_string(),
            shape: shape.to_vec(),
            ty,
        });
        Ok(())
    }

    pub fn tensors(&self) -> &[TensorSpec] {
        &self.tensors
    }

    /// Header, metadata, tensor table and the padding before the data.
    fn header(&self) -> Vec<u8> {
        let mut meta = self.meta.clone();
        if !meta.iter().any(|(k, _)| k == "general.alignment") {
            meta.push(("general.alignment".into(), MetaValue::U32(ALIGNMENT as u32)));
        }
        let mut out = Vec::new();
        out.extend(b"GGUF");
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((meta.len() as u64).to_le_bytes());
        for (k, v) in &meta {
            put_str(&mut out, k);
            put_value(&mut out, v);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend((t.shape.len() as u32).to_le_bytes());
            // ggml lists dimensions innermost first: [columns, rows]
            t.shape
                .iter()
                .rev()
                .for_each(|d| out.extend((*d as u64).to_le_bytes()));
            out.extend(t.ty.code().to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset += padded(t.bytes()) as u64;
        }
        out.resize(padded(out.len()), 0);
        out
    }

    /// The size of the file `write` produces, in bytes.
    pub fn file_size(&self) -> u64 {
        let data: usize = self.tensors.iter().map(|t| padded(t.bytes())).sum();
        (self.header().len() + data) as u64
    }

    /// Writes the file. `data(i)` gives tensor `i`'s values in row-major order; they are
    /// encoded as its table entry says. Non-finite values, and values f16 cannot hold in an
    /// f16 tensor, are refused (llama.cpp would compute with infinities).
    pub fn write(
        &self,
        w: &mut dyn Write,
        data: &mut dyn FnMut(usize) -> Result<Vec<f32>>,
    ) -> Result<()> {
        w.write_all(&self.header())?;
        let mut buf = Vec::new();
        for (i, t) in self.tensors.iter().enumerate() {
            let x = data(i).with_context(|| format!("tensor `{}`", t.name))?;
            if x.len() != t.elems() {
                bail!(
                    "tensor `{}`: {} values given for shape {:?}",
                    t.name,
                    x.len(),
                    t.shape
                );
            }
            if let Some(v) = x.iter().find(|v| !v.is_finite()) {
                bail!("tensor `{}` holds a non-finite value ({v})", t.name);
            }
            if t.ty == TensorType::F16 {
                if let Some(v) = x.iter().find(|v| v.abs() > f16::MAX.to_f32()) {
                    bail!(
                        "tensor `{}` holds {v}, beyond the f16 range (±65504): export it as f32",
                        t.name
                    );
                }
            }
            buf.clear();
            t.ty.encode(&x, &mut buf);
            buf.resize(padded(buf.len()), 0);
            w.write_all(&buf)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::{Content, Value};
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut v = crate::model::tiny::randn(seed, n, 1.5);
        // exact ties, zeros, a zero block and a block's largest value at both signs
        v[..32].iter_mut().for_each(|x| *x = 0.0);
        v[32] = 127.0;
        v[33] = 0.5;
        v[34] = -127.0;
        v[35] = 1.5;
        v
    }

    #[test]
    fn q8_0_and_f16_bytes_equal_ggml_reference_quantizers() {
        // candle's quantizers follow ggml's reference code: same bytes, block for block
        let x = values(32 * 40, 7);
        let t = Tensor::from_vec(x.clone(), (40, 32), &Device::Cpu).unwrap();
        for (ty, dt) in [
            (TensorType::Q8_0, GgmlDType::Q8_0),
            (TensorType::F16, GgmlDType::F16),
            (TensorType::F32, GgmlDType::F32),
        ] {
            let mut ours = Vec::new();
            ty.encode(&x, &mut ours);
            let theirs = QTensor::quantize(&t, dt).unwrap().data().unwrap().to_vec();
            assert_eq!(ours, theirs, "{ty:?}");
            assert_eq!(ours.len(), ty.byte_len(x.len()));
        }
    }

    #[test]
    fn q8_0_error_is_within_half_a_step() {
        let x = values(32 * 8, 3);
        let mut b = Vec::new();
        TensorType::Q8_0.encode(&x, &mut b);
        for (blk, xs) in b.chunks(34).zip(x.chunks(32)) {
            let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (q, v) in blk[2..].iter().zip(xs) {
                let back = d * (*q as i8) as f32;
                // half a step, plus the f16 rounding of the scale over up to 127 steps
                assert!((back - v).abs() <= d / 2.0 + amax * 1e-3, "{v} -> {back}");
            }
        }
    }

    #[test]
    fn a_written_file_reads_back_with_candle() {
        let mut g = GgufBuilder::new();
        g.meta("general.architecture", MetaValue::Str("qwen2".into()));
        g.meta("a.u32", MetaValue::U32(7));
        g.meta("a.i32", MetaValue::I32(-3));
        g.meta("a.f32", MetaValue::F32(0.25));
        g.meta("a.bool", MetaValue::Bool(true));
        g.meta(
            "a.strs",
            MetaValue::Strs(vec!["x".into(), "".into(), "中文".into()]),
        );
        g.meta("a.i32s", MetaValue::I32s(vec![1, 3, 4]));
        g.meta("a.u32", MetaValue::U32(8)); // set again: last value wins
        let shapes: [(&str, Vec<usize>, TensorType); 3] = [
            ("w.q8", vec![3, 64], TensorType::Q8_0),
            ("w.f16", vec![5, 3], TensorType::F16),
            ("b.f32", vec![7], TensorType::F32),
        ];
        let data: Vec<Vec<f32>> = shapes
            .iter()
            .enumerate()
            .map(|(i, (_, s, _))| {
                let n: usize = s.iter().product();
                let v = values(n.max(64), i as u64);
                v[v.len() - n..].to_vec()
            })
            .collect();
        for (n, s, t) in &shapes {
            g.tensor(n, s, *t).unwrap();
        }
        let mut bytes = Vec::new();
        let mut data_of = |i: usize| -> Result<Vec<f32>> { Ok(data[i].clone()) };
        g.write(&mut bytes, &mut data_of).unwrap();
        assert_eq!(bytes.len() as u64, g.file_size());
        let mut r = std::io::Cursor::new(&bytes);
        let c = Content::read(&mut r).unwrap();
        assert_eq!(c.metadata["a.u32"].to_u32().unwrap(), 8);
        assert_eq!(c.metadata["a.i32"].to_i32().unwrap(), -3);
        assert_eq!(c.metadata["a.f32"].to_f32().unwrap(), 0.25);
        assert!(c.metadata["a.bool"].to_bool().unwrap());
        assert_eq!(c.metadata["general.alignment"].to_u32().unwrap(), 32);
        let strs: Vec<String> = c.metadata["a.strs"]
            .to_vec()
            .unwrap()
            .iter()
            .map(|v| v.to_string().unwrap().clone())
            .collect();
        assert_eq!(strs, ["x", "", "中文"]);
        assert!(matches!(
            c.metadata["a.i32s"].to_vec().unwrap()[2],
            Value::I32(4)
        ));
        for (i, (n, s, t)) in shapes.iter().enumerate() {
            let info = &c.tensor_infos[*n];
            assert_eq!(info.shape.dims(), s.as_slice());
            assert_eq!(info.offset % ALIGNMENT as u64, 0);
            let q = c.tensor(&mut r, n, &Device::Cpu).unwrap();
            let back: Vec<f32> = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let want = data_of(i).unwrap();
            let tol = match t {
                TensorType::F32 => 0.0,
                TensorType::F16 => 1e-3,
                TensorType::Q8_0 => 1.0,
            };
            for (a, b) in back.iter().zip(&want) {
                assert!((a - b).abs() <= tol * b.abs().max(1.0), "{n}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn shapes_and_values_it_cannot_store_are_refused() {
        let mut g = GgufBuilder::new();
        let e = g.tensor("w", &[4, 48], TensorType::Q8_0).unwrap_err();
        let m = format!("{e:#}");
        assert!(
            m.contains("`w`") && m.contains("Q8_0") && m.contains("48"),
            "{m}"
        );
        assert!(g.tensor("w", &[4, 48], TensorType::F16).is_ok());
        assert!(g.tensor("w", &[4, 48], TensorType::F32).is_err()); // twice
        assert!(g.tensor(&"x".repeat(64), &[4], TensorType::F32).is_err());
        assert!(g.tensor("e", &[0, 4], TensorType::F32).is_err());

        let mut g = GgufBuilder::new();
        g.tensor("h", &[2], TensorType::F16).unwrap();
        let e = g
            .write(&mut Vec::new(), &mut |_| Ok(vec![1.0, 70000.0]))
            .unwrap_err();
        assert!(format!("{e:#}").contains("f16 range"), "{e:#}");
        let e = g
            .write(&mut Vec::new(), &mut |_| Ok(vec![1.0, f32::NAN]))
            .unwrap_err();
        assert!(format!("{e:#}").contains("non-finite"), "{e:#}");
        let e = g
            .write(&mut Vec::new(), &mut |_| Ok(vec![1.0]))
            .unwrap_err();
        assert!(format!("{e:#}").contains("1 values"), "{e:#}");
    }

    #[test]
    fn the_reader_names_a_file_by_general_file_type() {
        let d = tempfile::tempdir().unwrap();
        let write = |ftype: Option<u32>| {
            let mut g = GgufBuilder::new();
            g.meta("general.architecture", MetaValue::Str("qwen2".into()));
            if let Some(t) = ftype {
                g.meta("general.file_type", MetaValue::U32(t));
            }
            g.tensor("w", &[2, 32], TensorType::F16).unwrap();
            g.tensor("b", &[4], TensorType::F32).unwrap();
            let p = d.path().join(format!("{ftype:?}.gguf"));
            let mut bytes = Vec::new();
            g.write(&mut bytes, &mut |i| Ok(vec![0.5; [64, 4][i]]))
                .unwrap();
            std::fs::write(&p, bytes).unwrap();
            crate::model::gguf::GgufFile::open(&p).unwrap().file_type()
        };
        assert_eq!(write(Some(15)), "Q4_K_M");
        // no key, or one llama.cpp does not name: the type most values have
        assert_eq!(write(None), "F16");
        assert_eq!(write(Some(1024)), "F16");
    }

    #[test]
    fn file_type_names_follow_llama_cpp() {
        assert_eq!(file_type_name(15), Some("Q4_K_M"));
        assert_eq!(file_type_name(7), Some("Q8_0"));
        assert_eq!(file_type_name(1), Some("F16"));
        assert_eq!(file_type_name(0), Some("F32"));
        assert_eq!(file_type_name(4), None); // retired
        for t in [TensorType::F32, TensorType::F16, TensorType::Q8_0] {
            assert_eq!(file_type_name(file_type_of(t)), Some(t.name()));
        }
    }
}
