//! The frozen-prefix cache. With LoRA on a range of layers, the layers below the lowest
//! adapted one are frozen and dropout-free, so what they hand up for an example never
//! changes. Each example's hidden states entering the cache layer are computed once, always
//! the same way (the prompt prefix every example shares, run once, then the example on its
//! own after it), so a value read back is bit for bit the value a recomputation gives: a
//! resumed run and an uninterrupted one see the same numbers. Entries stay in memory up to a
//! bound, then go to a spill file; later epochs, validation passes and the trials of `tune`
//! start from them.

#[allow(unused_imports)]
use super::*;
use crate::model::KvCache;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Which list of examples an index refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Set {
    Train,
    Val,
}

enum Rows {
    Mem(Tensor),
    Disk { offset: u64, rows: usize },
}

/// What the cache has done, for the run's log and the benchmarks.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CacheStats {
    pub layer: usize,
    pub hits: u64,
    pub misses: u64,
    /// tokens run through the frozen layers (misses only)
    pub computed_tokens: u64,
    pub mem_bytes: u64,
    pub disk_bytes: u64,
}

/// Hidden states entering layer `layer` of each example (see the module docs).
pub struct FrozenCache {
    layer: usize,
    /// tokens every example starts with (all but at least one of each)
    prefix: Vec<u32>,
    /// their hidden states (P, h) and the frozen layers' KV cache
    prefix_rows: Option<Tensor>,
    prefix_kv: Option<KvCache>,
    /// per example: a fingerprint of its ids and the rows after the prefix (len - P, h)
    entries: HashMap<(Set, usize), (u64, Rows)>,
    budget: u64,
    spill_path: PathBuf,
    spill: Option<File>,
    dtype: DType,
    hidden: usize,
    pub stats: CacheStats,
}

fn fingerprint(ids: &[u32]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &i in ids {
        h = (h ^ i as u64).wrapping_mul(0x100000001b3);
    }
    h ^ ids.len() as u64
}

impl FrozenCache {
    /// A cache of the hidden states entering `layer` for examples that all start with
    /// `prefix`, kept in memory up to `budget_bytes`, then in `spill_path` (created when
    /// first needed, removed when the cache is dropped).
    pub fn new(
        model: &Qwen2,
        layer: usize,
        prefix: &[u32],
        budget_bytes: u64,
        spill_path: PathBuf,
    ) -> Result<Self> {
        if layer == 0 || layer > model.layers.len() {
            bail!(
                "frozen-prefix cache at layer {layer} of a {}-layer model",
                model.layers.len()
            );
        }
        let (prefix_rows, prefix_kv) = if prefix.is_empty() {
            (None, None)
        } else {
            let (x, kv) = model.prefix_at(prefix, layer)?;
            (Some(x.squeeze(0)?), Some(kv))
        };
        Ok(Self {
            layer,
            prefix: prefix.to_vec(),
            prefix_rows,
            prefix_kv,
            entries: HashMap::new(),
            budget: budget_bytes,
            spill_path,
            spill: None,
            dtype: model.dtype,
            hidden: model.cfg.hidden_size,
            stats: CacheStats {
                layer,
                ..Default::default()
            },
        })
    }

    pub fn layer(&self) -> usize {
        self.layer
    }

    /// Tokens of the prompt prefix every example shares (run once).
    pub fn prefix_len(&self) -> usize {
        self.prefix.len()
    }

    /// Whether example `i` of `set` is cached.
    pub fn contains(&self, set: Set, i: usize) -> bool {
        self.entries.contains_key(&(set, i))
    }

    /// Whether the cache serves examples starting with `prefix` (its own prefix must be a
    /// prefix of theirs).
    pub fn fits(&self, prefix: &[u32]) -> bool {
        prefix.starts_with(&self.prefix)
    }

    fn bytes_per_row(&self) -> u64 {
        (self.hidden * self.dtype.size_in_bytes()) as u64
    }

    /// Example `i` of `set`: its hidden states entering the cache layer, (len, h); computed
    /// and kept on a miss.
    pub fn rows(&mut self, model: &Qwen2, set: Set, i: usize, ids: &[u32]) -> Result<Tensor> {
        let p = self.prefix.len();
        if ids.len() <= p || !ids.starts_with(&self.prefix) {
            bail!("example {i} does not continue the cached prompt prefix");
        }
        let fp = fingerprint(ids);
        let rest = match self.entries.get(&(set, i)) {
            Some((f, rows)) if *f == fp => {
                self.stats.hits += 1;
                match rows {
                    Rows::Mem(t) => t.clone(),
                    Rows::Disk { offset, rows } => self.read_spill(*offset, *rows)?,
                }
            }
            Some(_) => bail!("example {i} changed under the frozen-prefix cache"),
            None => {
                self.stats.misses += 1;
                self.stats.computed_tokens += (ids.len() - p) as u64;
                let x = model
                    .hidden_at_after(&ids[p..], self.prefix_kv.as_ref(), self.layer)?
                    .squeeze(0)?;
                self.keep(set, i, fp, &x)?;
                x
            }
        };
        Ok(match &self.prefix_rows {
            Some(pr) => Tensor::cat(&[pr, &rest], 0)?,
            None => rest,
        })
    }

    fn keep(&mut self, set: Set, i: usize, fp: u64, x: &Tensor) -> Result<()> {
        let rows = x.dim(0)?;
        let bytes = rows as u64 * self.bytes_per_row();
        let entry = if self.stats.mem_bytes + bytes <= self.budget {
            self.stats.mem_bytes += bytes;
            Rows::Mem(x.clone())
        } else {
            let offset = self.stats.disk_bytes;
            self.write_spill(offset, x)?;
            self.stats.disk_bytes += bytes;
            Rows::Disk { offset, rows }
        };
        self.entries.insert((set, i), (fp, entry));
        Ok(())
    }

    fn write_spill(&mut self, offset: u64, x: &Tensor) -> Result<()> {
        if self.spill.is_none() {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&self.spill_path)
                .with_context(|| {
                    format!(
                        "{}: cannot create the frozen-prefix spill file",
                        self.spill_path.display()
                    )
                })?;
            self.spill = Some(f);
        }
        let bytes: Vec<u8> = match self.dtype {
            DType::F64 => x
                .flatten_all()?
                .to_vec1::<f64>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            _ => x
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        };
        self.spill
            .as_ref()
            .expect("opened above")
            .write_all_at(&bytes, offset)
            .with_context(|| format!("{}: cannot write", self.spill_path.display()))
    }

    fn read_spill(&self, offset: u64, rows: usize) -> Result<Tensor> {
        let f = self
            .spill
            .as_ref()
            .context("frozen-prefix spill file missing")?;
        let mut buf = vec![0u8; rows * self.bytes_per_row() as usize];
        f.read_exact_at(&mut buf, offset)
            .with_context(|| format!("{}: cannot read", self.spill_path.display()))?;
        let dev = candle_core::Device::Cpu;
        let shape = (rows, self.hidden);
        Ok(match self.dtype {
            DType::F64 => {
                let v: Vec<f64> = buf
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect();
                Tensor::from_vec(v, shape, &dev)?
            }
            dt => {
                let v: Vec<f32> = buf
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect();
                Tensor::from_vec(v, shape, &dev)?.to_dtype(dt)?
            }
        })
    }

    /// The input of a packed batch at the cache layer (1, shared + Σ lens, h): the shared
    /// prefix's rows from the first example, then each example's rows after it.
    pub fn batch_input(
        &mut self,
        model: &Qwen2,
        set: Set,
        members: &[(usize, &[u32])],
        shared: usize,
    ) -> Result<Tensor> {
        let mut parts = Vec::with_capacity(members.len() + 1);
        for (k, (i, ids)) in members.iter().enumerate() {
            let rows = self.rows(model, set, *i, ids)?;
            if k == 0 && shared > 0 {
                parts.push(rows.narrow(0, 0, shared)?);
            }
            let n = rows.dim(0)?;
            parts.push(rows.narrow(0, shared, n - shared)?);
        }
        Ok(Tensor::cat(&parts, 0)?.unsqueeze(0)?)
    }
}

impl Drop for FrozenCache {
    fn drop(&mut self) {
        if self.spill.take().is_some() {
            let _ = std::fs::remove_file(&self.spill_path);
        }
    }
}
