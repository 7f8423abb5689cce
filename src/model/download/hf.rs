//! The Hugging Face hub: the listing (`/api/models/{id}/revision/{rev}?blobs=true`), each
//! file's metadata (`HEAD /{id}/resolve/{commit}/{file}`: `X-Repo-Commit`, `ETag`,
//! `X-Linked-Etag` / `X-Linked-Size` for LFS files, a redirect to a CDN), and the cache layout
//! `huggingface_hub` writes and reads: `models--Org--Name/blobs/<etag>` (the sha256 for LFS
//! files, the git blob id for the others), `snapshots/<commit>/<file>` as relative links to
//! the blobs, `refs/<branch>` holding the commit, partial blobs as `<etag>.incomplete` and
//! locks under `.locks/`.

use anyhow::{anyhow, bail, Context, Result};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use super::http::{lock, Client, Expect, Method};
use super::{check_complete, check_folder, wanted, DownloadProgress, Downloaded, HubConfig, Meter};
use crate::model::safe_path::{check_blob_name, check_relative, is_commit_hash};

const ADVICE: &str = "offline? set HF_ENDPOINT for a mirror, HF_HUB_OFFLINE=1 to use only the cache, or copy the model into a folder and use --models-dir";

/// Characters left as they are in a URL path component.
const PATH_SAFE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn encode_path(p: &str) -> String {
    p.split('/')
        .map(|c| utf8_percent_encode(c, PATH_SAFE).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// One file of the listing.
struct Listed {
    name: String,
    size: Option<u64>,
    blob_id: Option<String>,
    lfs_sha256: Option<String>,
}

pub(super) fn download(
    cfg: &HubConfig,
    id: &str,
    revision: Option<&str>,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(&DownloadProgress),
) -> Result<Downloaded> {
    let (org, name) = id.split_once('/').expect("checked id");
    let folder = format!("models--{org}--{name}");
    let repo = cfg.cache.join(&folder);
    let rev = revision.unwrap_or("main");
    if cfg.offline {
        return cached(cfg, id, &repo, rev);
    }
    let client = Client::new(
        &cfg.endpoint,
        cfg.token.clone(),
        cfg.timeouts,
        "the model hub",
        ADVICE,
    );
    let (commit, listed) = listing(&client, id, rev, cancel)?;
    let names: Vec<String> = listed.iter().map(|l| l.name.clone()).collect();
    let files = wanted(&names);
    check_complete(id, &files)?;
    let info = |f: &str| listed.iter().find(|l| l.name == f).expect("listed");
    let sizes: Option<Vec<u64>> = files.iter().map(|f| info(f).size).collect();
    let mut meter = Meter::new(progress, files.len(), sizes.map(|s| s.iter().sum()));
    let snap = repo.join("snapshots").join(&commit);
    let mut fetched_files = 0;
    for f in &files {
        let l = info(f);
        meter.start_file(f);
        let pointer = snap.join(f);
        if let Ok(m) = std::fs::metadata(&pointer) {
            if m.is_file() && l.size.is_none_or(|s| s == m.len()) {
                meter.end_file(m.len());
                continue;
            }
        }
        let fetched = fetch_file(
            &client, cfg, id, &repo, &folder, &commit, l, cancel, &mut meter,
        )?;
        fetched_files += usize::from(fetched.1);
        link(&repo.join("blobs").join(&fetched.0), &pointer, f)?;
        let len = std::fs::metadata(&pointer).map(|m| m.len()).unwrap_or(0);
        meter.end_file(len);
    }
    if rev != commit {
        let refs = repo.join("refs").join(rev);
        crate::data::write_atomic(&refs, commit.as_bytes())
            .with_context(|| format!("{}: cannot write", refs.display()))?;
    }
    check_folder(&snap, &files)
        .with_context(|| format!("{id}: the download is not a usable model"))?;
    Ok(Downloaded {
        source: cfg.source,
        id: id.to_string(),
        path: snap,
        revision: commit,
        files: files.len(),
        fetched_files,
        fetched_bytes: meter.p.fetched,
    })
}

/// `HF_HUB_OFFLINE`: the snapshot in the cache, or a clear refusal. No network at all.
fn cached(cfg: &HubConfig, id: &str, repo: &Path, rev: &str) -> Result<Downloaded> {
    let commit = if is_commit_hash(rev) {
        Some(rev.to_string())
    } else {
        std::fs::read_to_string(repo.join("refs").join(rev))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| is_commit_hash(s))
    };
    let snap = commit.as_ref().map(|c| repo.join("snapshots").join(c));
    match (commit, snap) {
        (Some(c), Some(s)) if s.join("config.json").is_file() => Ok(Downloaded {
            source: cfg.source,
            id: id.to_string(),
            path: s,
            revision: c,
            files: 0,
            fetched_files: 0,
            fetched_bytes: 0,
        }),
        _ => bail!(
            "{id}: HF_HUB_OFFLINE is set, so fraudlab does not reach the hub, and {id} ({rev}) is not in the cache at {} (unset HF_HUB_OFFLINE to download it)",
            cfg.cache.display()
        ),
    }
}

/// The commit `rev` points at and the files there, every name checked.
fn listing(
    client: &Client,
    id: &str,
    rev: &str,
    cancel: &AtomicBool,
) -> Result<(String, Vec<Listed>)> {
    let url = format!(
        "{}/api/models/{id}/revision/{}?blobs=true",
        client.endpoint(),
        utf8_percent_encode(rev, PATH_SAFE)
    );
    let (status, v) = client
        .json(&url, cancel)
        .with_context(|| format!("{id}: cannot list the repository"))?;
    status_ok(status, id, rev, client)?;
    let what = format!("{id}: the hub's listing");
    let commit = v["sha"]
        .as_str()
        .with_context(|| format!("{what} has no commit id (`sha`)"))?;
    if !is_commit_hash(commit) {
        bail!(
            "{what} gives the revision `{}`, which is not a commit id; refused",
            commit.escape_debug()
        );
    }
    let siblings = v["siblings"]
        .as_array()
        .with_context(|| format!("{what} has no file list (`siblings`)"))?;
    let mut listed = Vec::with_capacity(siblings.len());
    for s in siblings {
        let name = s["rfilename"]
            .as_str()
            .with_context(|| format!("{what} has a file without a name (`rfilename`)"))?;
        check_relative(name, &what)?;
        let lfs_sha256 = s["lfs"]["sha256"].as_str().map(str::to_lowercase);
        if let Some(h) = &lfs_sha256 {
            check_blob_name(h, &what)?;
        }
        listed.push(Listed {
            name: name.to_string(),
            size: s["lfs"]["size"].as_u64().or(s["size"].as_u64()),
            blob_id: s["blobId"].as_str().map(str::to_lowercase),
            lfs_sha256,
        });
    }
    Ok((commit.to_string(), listed))
}

fn status_ok(status: u16, id: &str, rev: &str, client: &Client) -> Result<()> {
    match status {
        200..=299 => Ok(()),
        401 | 403 => bail!(
            "{id}: the hub refuses access (HTTP {status}): a gated or private model needs a token with access (set HF_TOKEN, or log in with `huggingface-cli login`)"
        ),
        404 => bail!(
            "{id}: no such model (or revision `{rev}`) on the hub at {}",
            client.endpoint()
        ),
        s => bail!("{id}: the hub at {} answered HTTP {s}", client.endpoint()),
    }
}

/// Makes sure the blob of `l` is in the cache; returns its name and whether it was fetched.
#[allow(clippy::too_many_arguments)]
fn fetch_file(
    client: &Client,
    cfg: &HubConfig,
    id: &str,
    repo: &Path,
    folder: &str,
    commit: &str,
    l: &Listed,
    cancel: &AtomicBool,
    meter: &mut Meter,
) -> Result<(String, bool)> {
    let f = &l.name;
    let url = format!(
        "{}/{id}/resolve/{commit}/{}",
        client.endpoint(),
        encode_path(f)
    );
    let head = client
        .request(Method::Head, &url, 0, false, cancel)
        .with_context(|| format!("{id}: cannot fetch {f}"))?;
    if !(200..400).contains(&head.status) {
        status_ok(head.status, id, commit, client).with_context(|| format!("{id}: {f}"))?;
    }
    let what = format!("{id}: the hub's answer for {f}");
    if let Some(c) = head.header("x-repo-commit") {
        if c != commit {
            bail!(
                "{what} names commit `{}`, not the listed {commit}; refused",
                c.escape_debug()
            );
        }
    }
    let linked = head.header("x-linked-etag");
    let etag = linked
        .or(head.header("etag"))
        .map(|e| {
            e.trim()
                .trim_start_matches("W/")
                .trim_matches('"')
                .to_lowercase()
        })
        .ok_or_else(|| anyhow!("{what} has no ETag"))?;
    check_blob_name(&etag, &what)?;
    let redirected = (300..400).contains(&head.status);
    let size = head
        .header("x-linked-size")
        .or(if redirected {
            None
        } else {
            head.header("content-length")
        })
        .and_then(|s| s.trim().parse::<u64>().ok())
        .or(l.size);
    let source = match head.header("location").filter(|_| redirected) {
        Some(loc) => super::http::join_location(&head.url, loc),
        None => head.url.clone(),
    };
    let is_sha256 = etag.len() == 64 && etag.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(want) = &l.lfs_sha256 {
        if *want != etag {
            bail!("{what} gives the id {etag}, its listing the sha256 {want}; refused");
        }
    }
    let expect = Expect {
        size,
        sha256: (linked.is_some() && is_sha256).then(|| etag.clone()),
        git_blob: (linked.is_none()
            && l.blob_id.as_deref() == Some(etag.as_str())
            && etag.len() == 40)
            .then(|| etag.clone()),
    };
    let blobs = repo.join("blobs");
    let blob = blobs.join(&etag);
    let complete = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && size.is_none_or(|s| s == m.len()))
    };
    if complete(&blob) {
        return Ok((etag, false));
    }
    std::fs::create_dir_all(&blobs)
        .with_context(|| format!("{}: cannot create", blobs.display()))?;
    let lock_path = cfg
        .cache
        .join(".locks")
        .join(folder)
        .join(format!("{etag}.lock"));
    let _guard = lock(&lock_path, cancel)?;
    if complete(&blob) {
        return Ok((etag, false)); // another process fetched it meanwhile
    }
    let part = blobs.join(format!("{etag}.incomplete"));
    client
        .fetch(&source, &part, &expect, cancel, &mut |file_bytes, fresh| {
            meter.file_bytes(file_bytes, fresh)
        })
        .with_context(|| format!("{id}: downloading {f} failed"))?;
    std::fs::rename(&part, &blob).with_context(|| format!("{}: cannot write", blob.display()))?;
    Ok((etag, true))
}

/// `pointer` as a relative link to `blob` (`../../blobs/<etag>` for a top-level file), as
/// `huggingface_hub` makes it; a copy where links cannot be made.
fn link(blob: &Path, pointer: &Path, name: &str) -> Result<()> {
    let dir = pointer.parent().expect("pointer in a snapshot");
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    if std::fs::symlink_metadata(pointer).is_ok() {
        std::fs::remove_file(pointer)
            .with_context(|| format!("{}: cannot replace", pointer.display()))?;
    }
    // up from the file's own folders and the commit folder, to the repository folder
    let depth = name.split('/').count() + 1;
    let mut target = PathBuf::new();
    for _ in 0..depth {
        target.push("..");
    }
    target.push("blobs");
    target.push(blob.file_name().expect("blob name"));
    #[cfg(unix)]
    if std::os::unix::fs::symlink(&target, pointer).is_ok() {
        return Ok(());
    }
    std::fs::copy(blob, pointer).with_context(|| format!("{}: cannot write", pointer.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_encoded_per_component() {
        assert_eq!(encode_path("a b/c#d.json"), "a%20b/c%23d.json");
        assert_eq!(
            encode_path("model-00001.safetensors"),
            "model-00001.safetensors"
        );
    }

    #[test]
    fn links_are_relative_to_the_blob() {
        let d = tempfile::tempdir().unwrap();
        let blob = d.path().join("blobs/abc");
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::write(&blob, b"x").unwrap();
        let p = d.path().join("snapshots/c0/config.json");
        link(&blob, &p, "config.json").unwrap();
        assert_eq!(
            std::fs::read_link(&p).unwrap(),
            Path::new("../../blobs/abc")
        );
        let p = d.path().join("snapshots/c0/sub/x.json");
        link(&blob, &p, "sub/x.json").unwrap();
        assert_eq!(
            std::fs::read_link(&p).unwrap(),
            Path::new("../../../blobs/abc")
        );
        assert_eq!(std::fs::read(&p).unwrap(), b"x");
    }
}
