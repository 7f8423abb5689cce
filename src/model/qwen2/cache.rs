//! The KV cache: grown by concatenation (cheap to share) or reserved and written in place
//! (conversations extended turn by turn, cut back for free).

#[allow(unused_imports)]
use super::*;

/// Keys and values of past tokens, per layer, plus which cached positions are real tokens.
///
/// Two kinds: the default grows by concatenation (each append copies what is cached; fine
/// for short continuations, and cheap to share), and a *reserved* cache
/// ([`Qwen2::new_reserved_cache`]) that writes new keys and values in place into buffers
/// that grow geometrically, so a long conversation extended turn by turn copies its
/// history only when the buffer doubles, and [`KvCache::truncate`] is free.
#[derive(Debug)]
pub struct KvCache {
    /// per layer (b, n_kv, cap, d); `cap` is the cached length unless reserved
    pub(super) kv: Vec<Option<(Tensor, Tensor)>>,
    /// per row, per cached position: true for a real token, false for padding
    pub(super) valid: Vec<Vec<bool>>,
    pub(super) reserved: bool,
}

impl Clone for KvCache {
    /// A reserved cache is written in place, so its clone gets buffers of its own.
    fn clone(&self) -> Self {
        let kv = if self.reserved {
            self.kv
                .iter()
                .map(|e| {
                    e.as_ref()
                        .map(|(k, v)| (k.copy().expect("copy k"), v.copy().expect("copy v")))
                })
                .collect()
        } else {
            self.kv.clone()
        };
        Self {
            kv,
            valid: self.valid.clone(),
            reserved: self.reserved,
        }
    }
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.valid.first().map(|v| v.len()).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn batch(&self) -> usize {
        self.valid.len()
    }
    /// Whether new keys and values are written in place (see the type's docs).
    pub fn is_reserved(&self) -> bool {
        self.reserved
    }
    /// Positions the buffers hold before they next grow (the length, unless reserved).
    pub fn capacity(&self) -> usize {
        self.kv
            .iter()
            .flatten()
            .next()
            .map(|(k, _)| k.dim(2).unwrap_or(0))
            .unwrap_or(0)
            .max(self.len())
    }
    /// Bytes held by the keys and values.
    pub fn bytes(&self) -> usize {
        self.kv
            .iter()
            .flatten()
            .map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes())
            .sum()
    }
    /// Forgets every cached position from `len` on: the next forward continues after
    /// position `len - 1`. Free for a reserved cache (the buffers stay).
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len >= self.len() {
            return Ok(());
        }
        for v in self.valid.iter_mut() {
            v.truncate(len);
        }
        if !self.reserved {
            for e in self.kv.iter_mut() {
                if let Some((k, v)) = e.take() {
                    if len > 0 {
                        *e = Some((k.narrow(2, 0, len)?, v.narrow(2, 0, len)?));
                    }
                }
            }
        }
        Ok(())
    }
    /// A cache for `batch` rows that all start from this one (batch 1) prefix.
    pub fn expand(&self, batch: usize) -> Result<Self> {
        if self.batch() != 1 {
            bail!("only a single-row cache can be expanded");
        }
        let len = self.len();
        let kv = self
            .kv
            .iter()
            .map(|e| match e {
                Some((k, v)) => {
                    let (k, v) = (k.narrow(2, 0, len)?, v.narrow(2, 0, len)?);
                    let k = k.broadcast_as(rep_dims(&k, batch))?.contiguous()?;
                    let v = v.broadcast_as(rep_dims(&v, batch))?.contiguous()?;
                    Ok(Some((k, v)))
                }
                None => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            kv,
            valid: vec![self.valid[0].clone(); batch],
            reserved: false,
        })
    }

    /// The keys and values of the cached positions only (a reserved cache's buffers cut to
    /// its length), as a concatenating cache that packed forwards can continue.
    pub(super) fn shared_view(&self) -> Result<Vec<Option<(Tensor, Tensor)>>> {
        let len = self.len();
        self.kv
            .iter()
            .map(|e| match e {
                Some((k, v)) if self.reserved => {
                    Ok(Some((k.narrow(2, 0, len)?, v.narrow(2, 0, len)?)))
                }
                other => Ok(other.clone()),
            })
            .collect()
    }
}

/// One layer's cache as the attention sees it: the tensors, the cached length and whether
/// new entries are written in place.
pub(super) struct KvSlot<'a> {
    pub(super) kv: &'a mut Option<(Tensor, Tensor)>,
    pub(super) len: usize,
    pub(super) reserved: bool,
}

impl KvSlot<'_> {
    /// Appends k and v (b, n_kv, s, d); returns every cached position's keys and values.
    pub(super) fn append(self, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        if !self.reserved {
            let (k, v) = match self.kv.take() {
                Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                None => (k, v),
            };
            *self.kv = Some((k.clone(), v.clone()));
            return Ok((k, v));
        }
        let (b, nkv, s, d) = k.dims4()?;
        let need = self.len + s;
        let cap = self
            .kv
            .as_ref()
            .map(|(pk, _)| pk.dim(2))
            .transpose()?
            .unwrap_or(0);
        if cap < need {
            let new_cap = need.max(cap * 2).max(64);
            let nk = Tensor::zeros((b, nkv, new_cap, d), k.dtype(), k.device())?;
            let nv = Tensor::zeros((b, nkv, new_cap, d), v.dtype(), v.device())?;
            if let Some((pk, pv)) = self.kv.take() {
                if self.len > 0 {
                    nk.slice_set(&pk.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                    nv.slice_set(&pv.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                }
            }
            *self.kv = Some((nk, nv));
        }
        let (bk, bv) = self.kv.as_ref().expect("a buffer");
        bk.slice_set(&k.contiguous()?, 2, self.len)?;
        bv.slice_set(&v.contiguous()?, 2, self.len)?;
        Ok((bk.narrow(2, 0, need)?, bv.narrow(2, 0, need)?))
    }
}

pub(super) fn rep_dims(t: &Tensor, batch: usize) -> Vec<usize> {
    let mut d = t.dims().to_vec();
    d[0] = batch;
    d
}
