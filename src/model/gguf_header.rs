//! The GGUF header, read with every count, length, size and offset checked against the bytes
//! the file actually holds before anything is allocated, so a small hostile file is refused
//! with a message naming the field instead of aborting the process. The result is Candle's
//! `Content`, which then reads tensor data.

use anyhow::{bail, Result};
use candle_core::quantized::gguf_file::{Content, TensorInfo, Value, VersionedMagic};
use candle_core::quantized::GgmlDType;
use std::collections::HashMap;
use std::io::{BufReader, Read};

/// Arrays of arrays deeper than this are refused (real files use none).
const MAX_DEPTH: usize = 4;
/// Metadata values (array elements included) one file may hold: a large vocabulary with its
/// merges and token types is about a million.
const MAX_VALUES: u64 = 1 << 22;
/// Dimensions of a tensor (GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;
/// Longest metadata key or tensor name.
const MAX_NAME: u64 = 1 << 16;
const DEFAULT_ALIGNMENT: u64 = 32;

/// A reader that knows how many bytes are left and says which field it was reading.
struct Reader<R: Read> {
    r: R,
    pos: u64,
    len: u64,
    wide: bool,
    values: u64,
}

impl<R: Read> Reader<R> {
    fn left(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }
    fn bytes<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        if self.left() < N as u64 {
            bail!(
                "truncated GGUF header: {} at byte {} runs past the end of the file ({} bytes)",
                what(),
                self.pos,
                self.len
            );
        }
        let mut b = [0u8; N];
        self.r
            .read_exact(&mut b)
            .map_err(|e| anyhow::anyhow!("cannot read {} at byte {}: {e}", what(), self.pos))?;
        self.pos += N as u64;
        Ok(b)
    }
    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(what)?))
    }
    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes(what)?))
    }
    /// A count or string length: u32 in version 1, u64 after.
    fn length(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        if self.wide {
            self.u64(what)
        } else {
            Ok(u64::from(self.u32(what)?))
        }
    }
    fn prefix(&self) -> u64 {
        if self.wide {
            8
        } else {
            4
        }
    }
    fn string(&mut self, max: u64, what: &dyn Fn() -> String) -> Result<String> {
        let n = self.length(&|| format!("the length of {}", what()))?;
        if n > max {
            bail!("{} is {n} bytes long, more than {max}", what());
        }
        if n > self.left() {
            bail!(
                "truncated GGUF header: {} claims {n} bytes at byte {}, but only {} remain",
                what(),
                self.pos,
                self.left()
            );
        }
        let mut v = vec![0u8; n as usize];
        self.r
            .read_exact(&mut v)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", what()))?;
        self.pos += n;
        // Some writers end strings with NULs; GGUF strings are not NUL-terminated.
        while v.last() == Some(&0) {
            v.pop();
        }
        Ok(String::from_utf8_lossy(&v).into_owned())
    }
    fn count_values(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<()> {
        self.values = self.values.saturating_add(n);
        if self.values > MAX_VALUES {
            bail!(
                "{}: the metadata holds more than {MAX_VALUES} values",
                what()
            );
        }
        Ok(())
    }

    /// Smallest encoding of a value of type `t`, to refuse counts the file cannot hold.
    fn min_size(&self, t: u32) -> u64 {
        match t {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => self.prefix(),
            _ => 4 + self.prefix(),
        }
    }

    fn value(&mut self, t: u32, depth: usize, what: &dyn Fn() -> String) -> Result<Value> {
        self.count_values(1, what)?;
        Ok(match t {
            0 => Value::U8(self.bytes::<1>(what)?[0]),
            1 => Value::I8(self.bytes::<1>(what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.bytes(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.bytes(what)?)),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(self.u32(what)? as i32),
            6 => Value::F32(f32::from_le_bytes(self.bytes(what)?)),
            7 => match self.bytes::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => bail!("{} is a bool of value {b} (expected 0 or 1)", what()),
            },
            8 => Value::String(self.string(self.len, what)?),
            9 => {
                if depth >= MAX_DEPTH {
                    bail!("{} nests arrays deeper than {MAX_DEPTH}", what());
                }
                let et = self.u32(&|| format!("the element type of {}", what()))?;
                if et > 12 {
                    bail!("{} is an array of unknown type {et}", what());
                }
                let n = self.length(&|| format!("the length of {}", what()))?;
                let need = n.saturating_mul(self.min_size(et));
                if need > self.left() {
                    bail!(
                        "truncated GGUF header: {} claims {n} elements ({need} bytes at least) at byte {}, but only {} bytes remain",
                        what(),
                        self.pos,
                        self.left()
                    );
                }
                self.count_values(n, what)?;
                let mut v = Vec::with_capacity(n as usize);
                for i in 0..n {
                    v.push(self.value(et, depth + 1, &|| format!("{}[{i}]", what()))?);
                }
                self.values -= n; // each element counted itself
                Value::Array(v)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(self.u64(what)? as i64),
            12 => Value::F64(f64::from_le_bytes(self.bytes(what)?)),
            t => bail!("{} has unknown value type {t}", what()),
        })
    }
}

/// The block type of a ggml type number (the numbers of `ggml.h`), for the types Candle reads.
fn dtype_of(t: u32) -> Result<GgmlDType> {
    use GgmlDType::*;
    Ok(match t {
        0 => F32,
        1 => F16,
        2 => Q4_0,
        3 => Q4_1,
        6 => Q5_0,
        7 => Q5_1,
        8 => Q8_0,
        9 => Q8_1,
        10 => Q2K,
        11 => Q3K,
        12 => Q4K,
        13 => Q5K,
        14 => Q6K,
        15 => Q8K,
        30 => BF16,
        _ => bail!("ggml type {t} is unknown or not supported"),
    })
}

/// Reads and checks a GGUF header from `r`, a file of `len` bytes positioned at its start.
/// The error says what is wrong; the caller adds the file's name.
pub fn read_header<R: Read>(r: R, len: u64) -> Result<Content> {
    let mut rd = Reader {
        r: BufReader::with_capacity(1 << 16, r),
        pos: 0,
        len,
        wide: true,
        values: 0,
    };
    let magic: [u8; 4] = rd.bytes(&|| "the magic number".into())?;
    if &magic != b"GGUF" {
        bail!("not a GGUF file (it starts with {magic:02x?}, not \"GGUF\")");
    }
    let version = rd.u32(&|| "the version".into())?;
    let magic = match version {
        1 => VersionedMagic::GgufV1,
        2 => VersionedMagic::GgufV2,
        3 => VersionedMagic::GgufV3,
        v => bail!("GGUF version {v} is not supported (1 to 3)"),
    };
    rd.wide = version > 1;
    let n_tensors = rd.length(&|| "the tensor count".into())?;
    let n_kv = rd.length(&|| "the metadata count".into())?;
    // each entry takes at least a name length, a type and one byte (kv) or dims, type, offset
    let need = n_kv
        .saturating_mul(rd.prefix() + 5)
        .saturating_add(n_tensors.saturating_mul(rd.prefix() + 16));
    if need > rd.left() {
        bail!(
            "the header claims {n_tensors} tensors and {n_kv} metadata entries, which need at least {need} bytes; the file has {} after the counts",
            rd.left()
        );
    }
    let mut metadata = HashMap::new();
    for i in 0..n_kv {
        let key = rd.string(MAX_NAME, &|| format!("the key of metadata entry {i}"))?;
        let what = || format!("metadata `{key}`");
        let t = rd.u32(&|| format!("the type of {}", what()))?;
        let v = rd.value(t, 0, &what)?;
        if metadata.insert(key.clone(), v).is_some() {
            bail!("metadata `{key}` appears twice");
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => {
            let a = match v {
                Value::U8(x) => u64::from(*x),
                Value::U16(x) => u64::from(*x),
                Value::U32(x) => u64::from(*x),
                Value::U64(x) => *x,
                Value::I8(x) => *x as u64,
                Value::I16(x) => *x as u64,
                Value::I32(x) => *x as u64,
                Value::I64(x) => *x as u64,
                other => bail!("metadata `general.alignment` must be an integer, not {other:?}"),
            };
            if a == 0 || !a.is_power_of_two() || a > 1 << 30 {
                bail!("metadata `general.alignment` is {a}; it must be a power of two up to 2^30");
            }
            a
        }
    };
    let mut infos: Vec<(String, TensorInfo, u64)> = Vec::new();
    for i in 0..n_tensors {
        let name = rd.string(MAX_NAME, &|| format!("the name of tensor {i}"))?;
        let what = || format!("tensor `{name}`");
        let nd = rd.u32(&|| format!("the dimension count of {}", what()))?;
        if nd == 0 || nd > MAX_DIMS {
            bail!("{} has {nd} dimensions (1 to {MAX_DIMS} allowed)", what());
        }
        let mut dims = Vec::with_capacity(nd as usize);
        for d in 0..nd {
            let x = rd.length(&|| format!("dimension {d} of {}", what()))?;
            if x == 0 {
                bail!("{} has a zero dimension", what());
            }
            dims.push(x);
        }
        let t = rd.u32(&|| format!("the type of {}", what()))?;
        let dtype = dtype_of(t).map_err(|e| anyhow::anyhow!("{}: {e}", what()))?;
        let offset = rd.u64(&|| format!("the data offset of {}", what()))?;
        let elems = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|&n| n <= 1 << 48)
            .ok_or_else(|| {
                anyhow::anyhow!("{} has dimensions {dims:?}, too many elements", what())
            })?;
        let bs = dtype.block_size() as u64;
        if dims[0] % bs != 0 {
            bail!(
                "{}: its rows of {} elements are not a multiple of the {dtype:?} block size {bs}",
                what(),
                dims[0]
            );
        }
        let bytes = elems / bs * dtype.type_size() as u64;
        if offset % alignment != 0 {
            bail!(
                "{}: data offset {offset} is not a multiple of the alignment {alignment}",
                what()
            );
        }
        // GGUF lists dimensions innermost first; Candle wants them outermost first.
        let shape: Vec<usize> = dims.iter().rev().map(|&d| d as usize).collect();
        infos.push((
            name.clone(),
            TensorInfo {
                ggml_dtype: dtype,
                shape: candle_core::Shape::from(shape),
                offset,
            },
            bytes,
        ));
    }
    let data = rd
        .pos
        .checked_next_multiple_of(alignment)
        .filter(|&d| d <= len)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the tensor data would start past the end of the file (header ends at byte {}, alignment {alignment})",
                rd.pos
            )
        })?;
    let mut spans: Vec<(u64, u64, &str)> = Vec::with_capacity(infos.len());
    for (name, info, bytes) in &infos {
        let end = data
            .checked_add(info.offset)
            .and_then(|s| s.checked_add(*bytes))
            .filter(|&e| e <= len)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "truncated GGUF file: tensor `{name}` ({bytes} bytes at data offset {}) ends past the end of the file ({len} bytes)",
                    info.offset
                )
            })?;
        spans.push((data + info.offset, end, name));
    }
    spans.sort();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            bail!("tensors `{}` and `{}` overlap in the file", w[0].2, w[1].2);
        }
    }
    let mut tensor_infos = HashMap::with_capacity(infos.len());
    for (name, info, _) in infos {
        if tensor_infos.contains_key(&name) {
            bail!("tensor `{name}` appears twice");
        }
        tensor_infos.insert(name, info);
    }
    Ok(Content {
        magic,
        metadata,
        tensor_infos,
        tensor_data_offset: data,
    })
}
