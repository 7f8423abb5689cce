//! Reading (single or sharded) safetensors files with checks that turn a truncated or corrupt
//! file into a message naming the file and the problem, before any tensor is touched.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// One tensor's entry in a safetensors header.
#[derive(Debug, Clone)]
pub struct Entry {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub begin: usize,
    pub end: usize,
}

/// A safetensors file whose header was checked against its size. Tensors are read with
/// positioned reads (not a memory map), so a loaded model does not also keep the file's pages
/// resident: peak memory stays near the size of the weights.
pub struct SafetensorsFile {
    pub path: PathBuf,
    file: std::fs::File,
    data_start: usize,
    pub entries: BTreeMap<String, Entry>,
}

/// Longest header accepted (the reference implementation's limit): a larger one is corrupt,
/// and reading it would allocate as much.
const MAX_HEADER: u64 = 100_000_000;

fn dtype_of(s: &str) -> Option<DType> {
    Some(match s {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        "I64" => DType::I64,
        "U32" => DType::U32,
        "U8" => DType::U8,
        _ => return None,
    })
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("{}: cannot open weights", path.display()))?;
        let meta = file
            .metadata()
            .with_context(|| format!("{}: cannot open weights", path.display()))?;
        if meta.is_dir() {
            bail!("{}: is a folder, not a safetensors file", path.display());
        }
        let len = meta.len() as usize;
        if len < 8 {
            bail!(
                "{}: truncated safetensors file ({len} bytes, no header)",
                path.display()
            );
        }
        use std::os::unix::fs::FileExt;
        let mut len8 = [0u8; 8];
        file.read_exact_at(&mut len8, 0)
            .with_context(|| format!("{}: cannot read header", path.display()))?;
        let n = u64::from_le_bytes(len8);
        if n > MAX_HEADER {
            bail!(
                "{}: corrupt safetensors file: header length {n} is over the {MAX_HEADER}-byte limit",
                path.display()
            );
        }
        let n = n as usize;
        if n > len - 8 {
            bail!(
                "{}: corrupt or truncated safetensors file: header length {n} reaches beyond the file ({len} bytes)",
                path.display()
            );
        }
        let mut head = vec![0u8; n];
        file.read_exact_at(&mut head, 8)
            .with_context(|| format!("{}: cannot read header", path.display()))?;
        let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&head)
            .with_context(|| {
                format!(
                    "{}: corrupt safetensors file: header is not a JSON object",
                    path.display()
                )
            })?;
        let data_start = 8 + n;
        let data_len = len - data_start;
        let mut entries = BTreeMap::new();
        for (name, v) in header {
            if name == "__metadata__" {
                continue;
            }
            let bad = |why: &str| {
                anyhow::anyhow!(
                    "{}: corrupt safetensors entry `{name}`: {why}",
                    path.display()
                )
            };
            let dt = v
                .get("dtype")
                .and_then(|d| d.as_str())
                .ok_or_else(|| bad("no dtype"))?;
            let dtype = dtype_of(dt).ok_or_else(|| bad(&format!("unsupported dtype {dt}")))?;
            let shape: Vec<usize> = v
                .get("shape")
                .and_then(|s| s.as_array())
                .ok_or_else(|| bad("no shape"))?
                .iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect::<Option<_>>()
                .ok_or_else(|| bad("shape is not a list of sizes"))?;
            let offs = v
                .get("data_offsets")
                .and_then(|s| s.as_array())
                .filter(|a| a.len() == 2)
                .ok_or_else(|| bad("no data_offsets"))?;
            let (begin, end) = match (offs[0].as_u64(), offs[1].as_u64()) {
                (Some(b), Some(e)) if b <= e => (b, e),
                _ => return Err(bad("data_offsets are not an increasing pair")),
            };
            if end > data_len as u64 {
                bail!(
                    "{}: corrupt or truncated safetensors file: tensor `{name}` ends at byte {} but the file has {len} bytes",
                    path.display(),
                    (data_start as u64).saturating_add(end)
                );
            }
            let (begin, end) = (begin as usize, end as usize);
            let want = shape
                .iter()
                .try_fold(dtype.size_in_bytes(), |a, &d| a.checked_mul(d))
                .ok_or_else(|| bad(&format!("shape {shape:?} is too large")))?;
            if want != end - begin {
                return Err(bad(&format!(
                    "shape {shape:?} of {dt} needs {want} bytes, the offsets hold {}",
                    end - begin
                )));
            }
            entries.insert(
                name,
                Entry {
                    dtype,
                    shape,
                    begin,
                    end,
                },
            );
        }
        let mut spans: Vec<(usize, usize, &str)> = entries
            .iter()
            .map(|(k, e)| (e.begin, e.end, k.as_str()))
            .collect();
        spans.sort();
        for w in spans.windows(2) {
            if w[1].0 < w[0].1 {
                bail!(
                    "{}: corrupt safetensors file: tensors `{}` and `{}` overlap",
                    path.display(),
                    w[0].2,
                    w[1].2
                );
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            data_start,
            entries,
        })
    }

    /// Loads a tensor, converted to `dtype`.
    pub fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let e = self
            .entries
            .get(name)
            .with_context(|| format!("{}: no tensor `{name}`", self.path.display()))?;
        use std::os::unix::fs::FileExt;
        let mut bytes = vec![0u8; e.end - e.begin];
        self.file
            .read_exact_at(&mut bytes, (self.data_start + e.begin) as u64)
            .with_context(|| format!("{}: cannot read tensor `{name}`", self.path.display()))?;
        let t = Tensor::from_raw_buffer(&bytes, e.dtype, &e.shape, device)
            .with_context(|| format!("{}: cannot read tensor `{name}`", self.path.display()))?;
        Ok(if t.dtype() == dtype {
            t
        } else {
            t.to_dtype(dtype)?
        })
    }
}

/// `weight_map` of a `model.safetensors.index.json`: (tensor name, shard file name), every
/// shard name a relative path that stays inside the model folder.
fn read_weight_map(index_path: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(index_path)
        .with_context(|| format!("{}: cannot read", index_path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", index_path.display()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{}: no `weight_map` object", index_path.display()))?;
    let what = index_path.display().to_string();
    let mut out = Vec::with_capacity(map.len());
    for (name, shard) in map {
        let Some(shard) = shard.as_str() else {
            bail!("{what}: `weight_map` entry `{name}` is not a file name");
        };
        if let Err(e) = super::safe_path::check_relative(shard, &what) {
            bail!("{what}: shard name `{shard}` (for `{name}`) is not a plain file name inside the model folder: {e:#}");
        }
        check_shard_name(shard)
            .map_err(|why| anyhow::anyhow!("{what}: shard name `{shard}` (for `{name}`) {why}"))?;
        out.push((name.clone(), shard.to_string()));
    }
    Ok(out)
}

/// The shard file names a `model.safetensors.index.json` names, checked (sorted, unique).
pub fn index_shards(index_path: &Path) -> Result<Vec<String>> {
    let mut v: Vec<String> = read_weight_map(index_path)?
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    v.sort();
    v.dedup();
    Ok(v)
}

/// The weights of a Hugging Face folder: `model.safetensors`, or the shards named by
/// `model.safetensors.index.json`.
pub struct WeightFiles {
    files: Vec<SafetensorsFile>,
    /// tensor name -> index into `files`
    index: HashMap<String, usize>,
}

impl WeightFiles {
    pub fn open_folder(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        if index_path.exists() {
            let map = read_weight_map(&index_path)?;
            let mut shard_names: Vec<String> = map.iter().map(|(_, s)| s.clone()).collect();
            shard_names.sort();
            shard_names.dedup();
            let mut files = Vec::new();
            let mut pos = HashMap::new();
            for s in &shard_names {
                let p = dir.join(s);
                if !p.is_file() {
                    bail!(
                        "{}: names shard `{s}`, which is missing ({})",
                        index_path.display(),
                        p.display()
                    );
                }
                pos.insert(s.clone(), files.len());
                files.push(SafetensorsFile::open(&p)?);
            }
            let mut index = HashMap::new();
            for (name, shard) in &map {
                let i = pos[shard.as_str()];
                if !files[i].entries.contains_key(name) {
                    bail!(
                        "{}: says `{name}` is in `{shard}`, but that shard has no such tensor",
                        index_path.display()
                    );
                }
                index.insert(name.clone(), i);
            }
            Ok(Self { files, index })
        } else if single.exists() {
            let f = SafetensorsFile::open(&single)?;
            let index = f.entries.keys().map(|k| (k.clone(), 0)).collect();
            Ok(Self {
                files: vec![f],
                index,
            })
        } else {
            bail!(
                "{}: no weights (expected model.safetensors or model.safetensors.index.json)",
                dir.display()
            )
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.index.keys()
    }
    pub fn entry(&self, name: &str) -> Option<(&Path, &Entry)> {
        self.index
            .get(name)
            .map(|&i| (self.files[i].path.as_path(), &self.files[i].entries[name]))
    }
    pub fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        match self.index.get(name) {
            Some(&i) => self.files[i].load(name, dtype, device),
            None => bail!("the weights have no tensor `{name}`"),
        }
    }
}

/// A shard named by an index must be a plain file name in the model folder: no separators,
/// no `..`, nothing hidden, and a `.safetensors` file.
fn check_shard_name(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.contains(['/', '\\', '\0']) || s.starts_with('.') {
        return Err("is not a plain file name inside the model folder");
    }
    if !s.ends_with(".safetensors") {
        return Err("is not a .safetensors file");
    }
    Ok(())
}

/// Writes tensors to a safetensors file atomically, streamed through the project's durable
/// writer (temp file in the same folder, fsync, rename, fsync of the folder): the file is the
/// old one or the complete new one, and a full disk is a clear error.
pub fn save_atomic(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    use safetensors::tensor::{Metadata, TensorInfo, View};
    // the layout `safetensors::serialize` uses: by dtype alignment (largest first), then name
    let mut order: Vec<&(String, Tensor)> = tensors.iter().collect();
    order.sort_by(|(ln, lt), (rn, rt)| {
        View::dtype(rt)
            .cmp(&View::dtype(lt))
            .then_with(|| ln.cmp(rn))
    });
    let mut infos = Vec::with_capacity(order.len());
    let mut offset = 0;
    for (name, t) in &order {
        let n = View::data_len(t);
        infos.push((
            name.clone(),
            TensorInfo {
                dtype: View::dtype(t),
                shape: t.dims().to_vec(),
                data_offsets: (offset, offset + n),
            },
        ));
        offset += n;
    }
    let meta = Metadata::new(None, infos)
        .map_err(|e| anyhow::anyhow!("{}: cannot describe the tensors: {e}", path.display()))?;
    let mut header = serde_json::to_vec(&meta)?;
    header.resize(header.len().next_multiple_of(8), b' ');
    crate::data::fsutil::write_atomic_with(path, |w| {
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        for (_, t) in &order {
            w.write_all(&View::data(t))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_shard_names_stay_inside_the_folder() {
        let d = tempfile::tempdir().unwrap();
        let index = d.path().join("model.safetensors.index.json");
        for (shard, needle) in [
            (
                serde_json::json!("../evil.safetensors"),
                "leaves its folder",
            ),
            (serde_json::json!("/etc/passwd"), "absolute path"),
            (serde_json::json!("a\\b.safetensors"), "backslash"),
            (serde_json::json!(7), "not a file name"),
        ] {
            let v = serde_json::json!({"weight_map": {"w": "model-1.safetensors", "x": shard}});
            std::fs::write(&index, v.to_string()).unwrap();
            let e = format!("{:#}", WeightFiles::open_folder(d.path()).err().unwrap());
            assert!(
                e.contains("model.safetensors.index.json") && e.contains(needle),
                "{e}"
            );
            assert!(index_shards(&index).is_err());
        }
        std::fs::write(
            &index,
            r#"{"weight_map": {"a": "m-2.safetensors", "b": "m-1.safetensors", "c": "m-2.safetensors"}}"#,
        )
        .unwrap();
        assert_eq!(
            index_shards(&index).unwrap(),
            ["m-1.safetensors", "m-2.safetensors"]
        );
    }
}
