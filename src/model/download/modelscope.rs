//! ModelScope: the listing (`/api/v1/models/{org}/{name}/repo/files?Revision=…&Recursive=True`,
//! with each file's `Size` and `Sha256`), the file route
//! (`/api/v1/models/{org}/{name}/repo?Revision=…&FilePath=…`, Range requests), and the cache
//! layout the `modelscope` Python package writes: `<cache>/models/<org>/<name>/` with the
//! dots of the name written `___` (and a link under the plain name), partial files under
//! `<cache>/._____temp/<org>/<name>/`, where that package also resumes them.

use anyhow::{bail, Context, Result};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::path::Path;
use std::sync::atomic::AtomicBool;

use super::http::{lock, Client, Expect};
use super::{check_complete, check_folder, wanted, DownloadProgress, Downloaded, HubConfig, Meter};
use crate::model::safe_path::{check_blob_name, check_relative};

const ADVICE: &str = "offline? set MODELSCOPE_DOMAIN for a mirror, or copy the model into a folder and use --models-dir";

/// `MODELSCOPE_DOMAIN` (a host, or an address with its scheme), as the Python package
/// reads it; else the public site.
pub(super) fn endpoint_from_env() -> String {
    match super::env_nonempty("MODELSCOPE_DOMAIN") {
        Some(d) if d.starts_with("http://") || d.starts_with("https://") => d,
        Some(d) => format!("https://{d}"),
        None => "https://www.modelscope.cn".into(),
    }
}

/// A query value as the Python package quotes it (letters, digits and `-_.~` kept).
fn q(s: &str) -> String {
    const KEEP: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    utf8_percent_encode(s, KEEP).to_string()
}

struct Listed {
    path: String,
    size: Option<u64>,
    sha256: Option<String>,
}

pub(super) fn download(
    cfg: &HubConfig,
    id: &str,
    revision: Option<&str>,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(&DownloadProgress),
) -> Result<Downloaded> {
    let (org, name) = id.split_once('/').expect("checked id");
    let rev = revision.unwrap_or("master");
    let client = Client::new(
        &cfg.endpoint,
        cfg.token.clone(),
        cfg.timeouts,
        "ModelScope",
        ADVICE,
    );
    let listed = listing(&client, id, rev, cancel)?;
    let names: Vec<String> = listed.iter().map(|l| l.path.clone()).collect();
    let files = wanted(&names);
    check_complete(id, &files)?;
    let info = |f: &str| listed.iter().find(|l| l.path == f).expect("listed");
    let sizes: Option<Vec<u64>> = files.iter().map(|f| info(f).size).collect();
    let mut meter = Meter::new(progress, files.len(), sizes.map(|s| s.iter().sum()));
    let models = cfg.cache.join("models").join(org);
    let masked = name.replace('.', "___");
    let dest = models.join(&masked);
    let temp = cfg.cache.join("._____temp").join(org).join(name);
    let mut fetched_files = 0;
    // the lock the Python package takes for the same repository
    let _guard = lock(
        &cfg.cache.join(".lock").join(format!("{org}___{name}")),
        cancel,
    )?;
    for f in &files {
        let l = info(f);
        meter.start_file(f);
        let target = dest.join(f);
        if in_place(&target, l, cancel)? {
            meter.end_file(l.size.unwrap_or(0));
            continue;
        }
        let url = format!(
            "{}/api/v1/models/{org}/{name}/repo?Revision={}&FilePath={}",
            client.endpoint(),
            q(rev),
            q(f)
        );
        let part = temp.join(f);
        let dir = part.parent().expect("in temp");
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        let expect = Expect {
            size: l.size,
            sha256: l.sha256.clone(),
            git_blob: None,
        };
        client
            .fetch(&url, &part, &expect, cancel, &mut |file_bytes, fresh| {
                meter.file_bytes(file_bytes, fresh)
            })
            .with_context(|| format!("{id}: downloading {f} from ModelScope failed"))?;
        let tdir = target.parent().expect("in dest");
        std::fs::create_dir_all(tdir)
            .with_context(|| format!("{}: cannot create", tdir.display()))?;
        std::fs::rename(&part, &target)
            .with_context(|| format!("{}: cannot write", target.display()))?;
        fetched_files += 1;
        meter.end_file(std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0));
    }
    if masked != name {
        // the Python package links the plain name to the folder; a relative link here
        let plain = models.join(name);
        if std::fs::symlink_metadata(&plain).is_err() {
            #[cfg(unix)]
            let _ = std::os::unix::fs::symlink(&masked, &plain);
        }
    }
    check_folder(&dest, &files)
        .with_context(|| format!("{id}: the download is not a usable model"))?;
    Ok(Downloaded {
        source: cfg.source,
        id: id.to_string(),
        path: dest,
        revision: rev.to_string(),
        files: files.len(),
        fetched_files,
        fetched_bytes: meter.p.fetched,
    })
}

/// Whether `target` already holds the listed file: same size and, when listed, same sha256
/// (hashing a local file is far cheaper than fetching it again).
fn in_place(target: &Path, l: &Listed, cancel: &AtomicBool) -> Result<bool> {
    let Ok(m) = std::fs::metadata(target) else {
        return Ok(false);
    };
    if !m.is_file() || l.size.is_some_and(|s| s != m.len()) {
        return Ok(false);
    }
    let Some(want) = &l.sha256 else {
        return Ok(true);
    };
    use sha2::Digest as _;
    use std::io::Read as _;
    let mut f = std::fs::File::open(target)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        if cancel.load(std::sync::atomic::Ordering::SeqCst) {
            bail!("cancelled");
        }
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(got == *want)
}

fn listing(client: &Client, id: &str, rev: &str, cancel: &AtomicBool) -> Result<Vec<Listed>> {
    let url = format!(
        "{}/api/v1/models/{id}/repo/files?Revision={}&Recursive=True",
        client.endpoint(),
        q(rev)
    );
    let (status, v) = client
        .json(&url, cancel)
        .with_context(|| format!("{id}: cannot list the repository on ModelScope"))?;
    match status {
        200..=299 => {}
        401 | 403 => bail!(
            "{id}: ModelScope refuses access (HTTP {status}): a private model needs a token (set MODELSCOPE_API_TOKEN)"
        ),
        404 => bail!(
            "{id}: no such model (or revision `{rev}`) on ModelScope at {}",
            client.endpoint()
        ),
        s => bail!("{id}: ModelScope at {} answered HTTP {s}", client.endpoint()),
    }
    let what = format!("{id}: ModelScope's listing");
    if v["Success"].as_bool() == Some(false) || v["Code"].as_u64().is_some_and(|c| c != 200) {
        bail!(
            "{what} reports an error: {}",
            v["Message"].as_str().unwrap_or("(no message)")
        );
    }
    let entries = v["Data"]["Files"]
        .as_array()
        .with_context(|| format!("{what} has no file list (`Data.Files`)"))?;
    let mut listed = Vec::new();
    for e in entries {
        if e["Type"].as_str().is_some_and(|t| t != "blob") {
            continue; // folders
        }
        let path = e["Path"]
            .as_str()
            .or(e["Name"].as_str())
            .with_context(|| format!("{what} has a file without a `Path`"))?;
        check_relative(path, &what)?;
        let sha256 = e["Sha256"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_lowercase);
        if let Some(h) = &sha256 {
            check_blob_name(h, &what)?;
        }
        listed.push(Listed {
            path: path.to_string(),
            size: e["Size"].as_u64(),
            sha256,
        });
    }
    Ok(listed)
}
