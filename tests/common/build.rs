//! Byte-level builders for malformed files: a safetensors file from a header and data, and a
//! GGUF file taken apart into its fields (from a valid tiny file) so that each field can be
//! set to a hostile value and the file written back.

/// A safetensors file: the 8-byte header length, the header, the data.
pub fn safetensors(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header);
    v.extend_from_slice(data);
    v
}

/// GGUF value types (the numbers of the format).
pub mod ty {
    pub const U8: u32 = 0;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
}

/// One metadata entry, its value already encoded.
#[derive(Clone, Debug)]
pub struct Kv {
    pub key: String,
    pub ty: u32,
    pub val: Vec<u8>,
}

/// One tensor info.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// Innermost first, as GGUF writes them.
    pub dims: Vec<u64>,
    /// Written instead of `dims.len()` when set.
    pub n_dims: Option<u32>,
    pub ggml_type: u32,
    pub offset: u64,
}

/// A GGUF file taken apart.
#[derive(Clone, Debug)]
pub struct Gguf {
    pub magic: [u8; 4],
    pub version: u32,
    /// Written instead of the real counts when set.
    pub n_tensors: Option<u64>,
    pub n_kv: Option<u64>,
    pub kvs: Vec<Kv>,
    pub tensors: Vec<TensorInfo>,
    /// Alignment used to pad the header (whatever `general.alignment` says).
    pub pad_to: u64,
    pub data: Vec<u8>,
}

pub fn enc_str(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(s);
    v
}
pub fn enc_u32(x: u32) -> Vec<u8> {
    x.to_le_bytes().to_vec()
}
pub fn enc_u64(x: u64) -> Vec<u8> {
    x.to_le_bytes().to_vec()
}
pub fn enc_f32(x: f32) -> Vec<u8> {
    x.to_le_bytes().to_vec()
}
/// An array of `n` elements of type `elem` whose encoded elements are `items`.
pub fn enc_array(elem: u32, n: u64, items: &[u8]) -> Vec<u8> {
    let mut v = elem.to_le_bytes().to_vec();
    v.extend_from_slice(&n.to_le_bytes());
    v.extend_from_slice(items);
    v
}

struct Cur<'a> {
    b: &'a [u8],
    p: usize,
}
impl Cur<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let s = &self.b[self.p..self.p + n];
        self.p += n;
        s
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn string(&mut self) -> String {
        let n = self.u64() as usize;
        String::from_utf8(self.take(n).to_vec()).unwrap()
    }
    /// Skips one value of type `t`, returning its encoding.
    fn value(&mut self, t: u32) -> Vec<u8> {
        let start = self.p;
        match t {
            0 | 1 | 7 => self.p += 1,
            2 | 3 => self.p += 2,
            4..=6 => self.p += 4,
            10..=12 => self.p += 8,
            8 => {
                self.string();
            }
            9 => {
                let et = self.u32();
                let n = self.u64();
                for _ in 0..n {
                    self.value(et);
                }
            }
            t => panic!("test parser: type {t}"),
        }
        self.b[start..self.p].to_vec()
    }
}

impl Gguf {
    /// Takes apart a valid version-2/3 file (as `write_gguf` writes them).
    pub fn parse(b: &[u8]) -> Gguf {
        let mut c = Cur { b, p: 0 };
        let magic: [u8; 4] = c.take(4).try_into().unwrap();
        let version = c.u32();
        let nt = c.u64();
        let nk = c.u64();
        let mut kvs = Vec::new();
        for _ in 0..nk {
            let key = c.string();
            let ty = c.u32();
            let val = c.value(ty);
            kvs.push(Kv { key, ty, val });
        }
        let mut tensors = Vec::new();
        for _ in 0..nt {
            let name = c.string();
            let nd = c.u32();
            let dims = (0..nd).map(|_| c.u64()).collect();
            let ggml_type = c.u32();
            let offset = c.u64();
            tensors.push(TensorInfo {
                name,
                dims,
                n_dims: None,
                ggml_type,
                offset,
            });
        }
        let data_start = c.p.div_ceil(32) * 32;
        Gguf {
            magic,
            version,
            n_tensors: None,
            n_kv: None,
            kvs,
            tensors,
            pad_to: 32,
            data: b[data_start..].to_vec(),
        }
    }

    pub fn header(&self) -> Vec<u8> {
        let mut v = self.magic.to_vec();
        v.extend_from_slice(&self.version.to_le_bytes());
        v.extend(enc_u64(self.n_tensors.unwrap_or(self.tensors.len() as u64)));
        v.extend(enc_u64(self.n_kv.unwrap_or(self.kvs.len() as u64)));
        for kv in &self.kvs {
            v.extend(enc_str(kv.key.as_bytes()));
            v.extend(enc_u32(kv.ty));
            v.extend_from_slice(&kv.val);
        }
        for t in &self.tensors {
            v.extend(enc_str(t.name.as_bytes()));
            v.extend(enc_u32(t.n_dims.unwrap_or(t.dims.len() as u32)));
            for d in &t.dims {
                v.extend(enc_u64(*d));
            }
            v.extend(enc_u32(t.ggml_type));
            v.extend(enc_u64(t.offset));
        }
        v
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut v = self.header();
        let pad = (v.len() as u64).div_ceil(self.pad_to.max(1)) * self.pad_to.max(1);
        v.resize(pad as usize, 0);
        v.extend_from_slice(&self.data);
        v
    }

    pub fn kv_mut(&mut self, key: &str) -> &mut Kv {
        self.kvs
            .iter_mut()
            .find(|k| k.key == key)
            .unwrap_or_else(|| panic!("no metadata {key}"))
    }

    /// Sets (or adds) a metadata entry.
    pub fn set(&mut self, key: &str, ty: u32, val: Vec<u8>) -> &mut Self {
        match self.kvs.iter_mut().find(|k| k.key == key) {
            Some(k) => {
                k.ty = ty;
                k.val = val;
            }
            None => self.kvs.push(Kv {
                key: key.into(),
                ty,
                val,
            }),
        }
        self
    }

    pub fn remove(&mut self, key: &str) -> &mut Self {
        self.kvs.retain(|k| k.key != key);
        self
    }
}
