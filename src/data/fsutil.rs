//! Durable file helpers (atomic replace, durable append, folder creation) and
//! small time helpers (unix seconds, RFC 3339, sortable stamps) written by hand.
//!
//! Durability contract:
//! * [`write_atomic`]: the file at `path` is either the old content or the new
//!   content, never a mix: the bytes go to a temporary file in the same folder,
//!   which is fsynced, renamed over `path`, and then the folder is fsynced.
//! * [`append_line_durable`] / [`append_to`]: the line (with its trailing
//!   newline) is written with one `write` call to a file opened with `O_APPEND`
//!   and `fdatasync`ed before `Ok` is returned. When anything fails, the file is
//!   truncated back to its previous length, so a failed append never leaves a
//!   partial line behind.
//!
//! Every byte these helpers write goes through one writer, which is also the seam
//! for testing a full disk: [`simulate_disk_full_after`] (or the environment
//! variable [`ENOSPC_ENV`]) makes it fail with `ENOSPC` after a number of bytes,
//! the way a real full file system does. Unset, it writes straight through.

use anyhow::{anyhow, Context, Result};
use std::cell::Cell;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

// ------------------------------------------------------- simulated full disk

/// Test hook: a byte count after which every write through these helpers fails with
/// `ENOSPC` (each thread of the process gets that budget). For tests of a full disk;
/// unset in normal use.
pub const ENOSPC_ENV: &str = "FRAUDLAB_TEST_ENOSPC_AFTER";

thread_local! {
    static DISK_BUDGET: Cell<Option<u64>> = Cell::new(
        std::env::var(ENOSPC_ENV).ok().and_then(|v| v.trim().parse().ok()),
    );
}

/// Simulates a full disk for the writes of this thread: after `bytes` more bytes, every
/// write through these helpers fails with `ENOSPC` (after a short write, as a file system
/// does). `None` gives the space back. Returns the bytes that were left (`None`: no limit
/// was set), so a test can also count what a piece of work writes.
pub fn simulate_disk_full_after(bytes: Option<u64>) -> Option<u64> {
    DISK_BUDGET.with(|b| b.replace(bytes))
}

/// The writer every helper here writes through (see [`simulate_disk_full_after`]).
struct DiskWriter<'a>(&'a File);

impl Write for DiskWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match DISK_BUDGET.with(Cell::get) {
            None => (&*self.0).write(buf),
            Some(0) if !buf.is_empty() => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
            Some(left) => {
                let n = (&*self.0).write(&buf[..buf.len().min(left as usize)])?;
                DISK_BUDGET.with(|b| b.set(Some(left - n as u64)));
                Ok(n)
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The folder holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// fsync a folder, so that entries created, renamed or removed in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let f = File::open(dir)
        .with_context(|| format!("cannot open folder {} to sync it", dir.display()))?;
    f.sync_all()
        .with_context(|| format!("cannot sync folder {}", dir.display()))?;
    Ok(())
}

/// Create `dir` and any missing parents; the parent of every folder created is
/// fsynced so the new folders survive a crash.
pub fn create_dir_durable(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(p) = cur {
        if p.as_os_str().is_empty() || p.is_dir() {
            break;
        }
        missing.push(p.to_path_buf());
        cur = p.parent();
    }
    for p in missing.iter().rev() {
        match fs::create_dir(p) {
            Ok(()) => sync_dir(&parent_dir(p))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && p.is_dir() => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot create folder {}", p.display()))
            }
        }
    }
    Ok(())
}

fn temp_path_for(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} is not a file path", path.display()))?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp_name = format!(
        ".{}.tmp-{}-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        nanos,
        n
    );
    Ok(parent_dir(path).join(tmp_name))
}

/// Atomically replace `path` with what `fill` writes and return the new file, opened for
/// reading and appending (`O_APPEND`). `prepare` runs on the temporary file before anything
/// is written (e.g. to lock it). The temporary file is removed on failure.
pub(crate) fn replace_file_with(
    path: &Path,
    prepare: impl FnOnce(&File) -> Result<()>,
    fill: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<File> {
    let tmp = temp_path_for(path)?;
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("cannot create temporary file {}", tmp.display()))?;
    let result = (|| -> Result<()> {
        prepare(&file)?;
        let mut w = BufWriter::with_capacity(1 << 20, DiskWriter(&file));
        fill(&mut w)
            .and_then(|()| w.flush().map_err(Into::into))
            .with_context(|| format!("cannot write {}", path.display()))?;
        drop(w);
        file.sync_all()
            .with_context(|| format!("cannot sync {}", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(&parent_dir(path))?;
    Ok(file)
}

/// [`replace_file_with`] for bytes in memory.
pub(crate) fn replace_file(
    path: &Path,
    bytes: &[u8],
    prepare: impl FnOnce(&File) -> Result<()>,
) -> Result<File> {
    replace_file_with(path, prepare, |w| Ok(w.write_all(bytes)?))
}

/// Atomically write `bytes` to `path` (temporary file in the same folder,
/// fsync, rename, fsync of the folder). Missing parent folders are created.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| Ok(w.write_all(bytes)?))
}

/// [`write_atomic`] for content written piece by piece (large files: nothing is gathered
/// in memory). `path` keeps its old content unless `fill` and every write succeed.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<()> {
    create_dir_durable(&parent_dir(path))?;
    replace_file_with(path, |_| Ok(()), fill).map(drop)
}

/// Open `path` for appending (`O_APPEND`, also readable), creating it (and its
/// folder) when missing. Returns the file and whether it was created; when it
/// was, the parent folder has been fsynced.
pub fn open_append(path: &Path) -> Result<(File, bool)> {
    create_dir_durable(&parent_dir(path))?;
    match OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(true)
        .open(path)
    {
        Ok(f) => {
            sync_dir(&parent_dir(path))?;
            Ok((f, true))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let f = OpenOptions::new()
                .read(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open {} for appending", path.display()))?;
            Ok((f, false))
        }
        Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
}

/// Append one line durably to `path` (created when missing). See [`append_to`].
pub fn append_line_durable(path: &Path, line: &[u8]) -> Result<()> {
    let (mut file, _) = open_append(path)?;
    append_to(&mut file, path, line)
}

/// Append one line to an `O_APPEND` file: the line plus `\n` is built in one
/// buffer and handed to a single `write` call (only a short write, which
/// regular files practically never do, continues with a second call), then
/// `fdatasync`. On any error the file is truncated back to its previous length
/// and the error names `path`. `line` must not contain a newline except an
/// optional trailing one.
pub fn append_to(file: &mut File, path: &Path, line: &[u8]) -> Result<()> {
    append_with(file, path, line, |f, b| DiskWriter(f).write(b))
}

pub(crate) fn append_with(
    file: &mut File,
    path: &Path,
    line: &[u8],
    mut write: impl FnMut(&mut File, &[u8]) -> io::Result<usize>,
) -> Result<()> {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    if body.contains(&b'\n') {
        return Err(anyhow!(
            "cannot append to {}: the record contains a newline",
            path.display()
        ));
    }
    let mut buf = Vec::with_capacity(body.len() + 1);
    buf.extend_from_slice(body);
    buf.push(b'\n');
    let before = file
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?
        .len();
    let res = (|| -> io::Result<()> {
        let mut off = 0;
        while off < buf.len() {
            match write(file, &buf[off..]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the write call wrote nothing",
                    ))
                }
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        file.sync_data()
    })();
    if let Err(e) = res {
        let rollback = file.set_len(before).and_then(|_| file.sync_data());
        return Err(match rollback {
            Ok(()) => anyhow!("cannot append to {}: {}", path.display(), e),
            Err(r) => anyhow!(
                "cannot append to {}: {} (and truncating it back to {} bytes failed: {}; \
                 the last line may be partial and will be ignored when read)",
                path.display(),
                e,
                before,
                r
            ),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------- time ----

/// Seconds since the unix epoch, as a float (millisecond precision).
pub fn now_unix() -> f64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_millis() as f64) / 1000.0
}

/// Days since 1970-01-01 to a (year, month, day) civil date (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A civil date to days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn split_secs(secs: f64) -> (i64, u32, u32, u32, u32, u32, u32) {
    let whole = if secs.is_finite() {
        secs.floor() as i64
    } else {
        0
    };
    let millis = if secs.is_finite() {
        (((secs - secs.floor()) * 1000.0).round() as u32).min(999)
    } else {
        0
    };
    let days = whole.div_euclid(86_400);
    let rem = whole.rem_euclid(86_400) as u32;
    let (y, mo, d) = civil_from_days(days);
    (y, mo, d, rem / 3600, rem / 60 % 60, rem % 60, millis)
}

/// RFC 3339 UTC timestamp, e.g. `2026-11-23T14:55:01Z` (`.123` added when the
/// time has a fractional part).
pub fn rfc3339(secs: f64) -> String {
    let (y, mo, d, h, mi, s, ms) = split_secs(secs);
    if ms == 0 {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
    } else {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
    }
}

/// Sortable compact UTC stamp, e.g. `20261123-145501`.
pub fn compact_stamp(secs: f64) -> String {
    let (y, mo, d, h, mi, s, _) = split_secs(secs);
    format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}")
}

/// Parse an RFC 3339 timestamp (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`, `T`
/// may be a space or `t`) to unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<f64> {
    let b = s.trim().as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut frac = 0.0;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        frac = format!("0.{}", std::str::from_utf8(&b[start..i]).ok()?)
            .parse()
            .ok()?;
    }
    let offset = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            let o = oh * 3600 + om * 60;
            if *sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo as u32, d as u32);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
    Some(secs as f64 + frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub").join("config.json");
        write_atomic(&p, b"one").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one");
        write_atomic(&p, b"two, longer").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two, longer");
        assert_eq!(names(&dir.path().join("sub")), vec!["config.json"]);
    }

    #[test]
    fn write_atomic_failure_removes_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        // renaming a file over a non-empty folder fails
        let target = dir.path().join("taken");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("x"), b"x").unwrap();
        let err = write_atomic(&target, b"data").unwrap_err();
        assert!(format!("{err:#}").contains("taken"), "{err:#}");
        assert_eq!(names(dir.path()), vec!["taken"]);
    }

    #[test]
    fn append_lines_and_rollback_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl");
        append_line_durable(&p, b"{\"a\":1}").unwrap();
        append_line_durable(&p, b"{\"a\":2}\n").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "{\"a\":1}\n{\"a\":2}\n");
        assert!(append_line_durable(&p, b"x\ny").is_err());

        // a write that stores half the bytes and then fails (as ENOSPC would)
        let (mut f, created) = open_append(&p).unwrap();
        assert!(!created);
        let err = append_with(&mut f, &p, b"{\"a\":3}", |f, b| {
            let n = f.write(&b[..b.len() / 2])?;
            assert!(n > 0);
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        })
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("a.jsonl") && msg.contains("No space"), "{msg}");
        assert_eq!(fs::read_to_string(&p).unwrap(), "{\"a\":1}\n{\"a\":2}\n");
    }

    /// Gives the space back when dropped (even when the test fails).
    struct FullDisk;
    impl FullDisk {
        fn after(bytes: u64) -> FullDisk {
            simulate_disk_full_after(Some(bytes));
            FullDisk
        }
    }
    impl Drop for FullDisk {
        fn drop(&mut self) {
            simulate_disk_full_after(None);
        }
    }

    #[test]
    fn simulated_full_disk_keeps_the_old_file_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("session.json");
        write_atomic(&p, b"old content").unwrap();
        for budget in [0, 1, 50, 4095] {
            let full = FullDisk::after(budget);
            let big = vec![b'x'; 4096];
            let err = write_atomic(&p, &big).unwrap_err();
            let msg = format!("{err:#}");
            assert!(
                msg.contains("session.json") && msg.contains("No space left"),
                "{msg}"
            );
            drop(full);
            assert_eq!(fs::read(&p).unwrap(), b"old content");
            assert_eq!(names(dir.path()), vec!["session.json"], "no temp file left");
        }
        // streamed content: the same guarantee
        let _full = FullDisk::after(100);
        let err = write_atomic_with(&p, |w| {
            for _ in 0..10 {
                w.write_all(&[b'y'; 64])?;
            }
            Ok(())
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("No space left"));
        simulate_disk_full_after(None);
        write_atomic(&p, b"new").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
    }

    #[test]
    fn simulated_full_disk_rolls_back_appends() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        append_line_durable(&p, b"{\"step\":1}").unwrap();
        {
            let _full = FullDisk::after(5);
            let err = append_line_durable(&p, b"{\"step\":2}").unwrap_err();
            let msg = format!("{err:#}");
            assert!(
                msg.contains("metrics.jsonl") && msg.contains("No space left"),
                "{msg}"
            );
            assert_eq!(fs::read_to_string(&p).unwrap(), "{\"step\":1}\n");
        }
        append_line_durable(&p, b"{\"step\":2}").unwrap();
        assert_eq!(
            fs::read_to_string(&p).unwrap(),
            "{\"step\":1}\n{\"step\":2}\n"
        );
    }

    #[test]
    fn append_to_full_device_is_a_clear_error() {
        let p = Path::new("/dev/full");
        if !p.exists() {
            return;
        }
        let Ok(mut f) = OpenOptions::new().append(true).open(p) else {
            return;
        };
        let err = append_to(&mut f, p, b"x").unwrap_err();
        assert!(format!("{err:#}").contains("/dev/full"));
    }

    #[test]
    fn time_formatting() {
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400.0), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_445_701.5), "2026-11-23T14:55:01.500Z");
        assert_eq!(compact_stamp(1_795_445_701.0), "20261123-145501");
        assert_eq!(parse_rfc3339("2026-11-23T14:55:01Z"), Some(1_795_445_701.0));
        assert_eq!(
            parse_rfc3339("2026-11-23T15:55:01.25+01:00"),
            Some(1_795_445_701.25)
        );
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Some(-1.0));
        assert_eq!(parse_rfc3339("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
        for t in [0.0, 86_399.0, 1e9, 4_102_444_800.0, -86_400.0 * 400.0] {
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        }
    }
}
