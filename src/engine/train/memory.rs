//! Memory figures: resident set, what is available, and a run's estimate.

#[allow(unused_imports)]
use super::*;
use std::path::Path;

/// Resident memory of this process in MiB (VmRSS) and its peak (VmHWM).
pub fn rss_mib() -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|x| x.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(0.0)
    };
    (get("VmRSS:"), get("VmHWM:"))
}

/// Memory available to a new allocation, in MiB: the smaller of the machine's MemAvailable and
/// the room the process's memory cgroup leaves (a container's limit), when either is known.
pub fn available_mib() -> Option<f64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| mem_available_bytes(&s));
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|s| cgroup_room_bytes(&s, Path::new("/sys/fs/cgroup")));
    [meminfo, cgroup]
        .into_iter()
        .flatten()
        .min()
        .map(|b| b as f64 / 1048576.0)
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
pub fn mem_available_bytes(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|x| x.parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// The process's memory cgroups from a `/proc/self/cgroup` text: the cgroup v2 path (line
/// `0::PATH`) and the cgroup v1 path of the `memory` controller (`N:…memory…:PATH`).
pub fn cgroup_paths(proc_self_cgroup: &str) -> (Option<String>, Option<String>) {
    let (mut v2, mut v1) = (None, None);
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" && ctrls.is_empty() {
            v2 = Some(path.to_string());
        } else if ctrls.split(',').any(|c| c == "memory") {
            v1 = Some(path.to_string());
        }
    }
    (v2, v1)
}

/// Room left under a limit, in bytes: `limit - (usage - inactive file pages)`, since the
/// kernel reclaims inactive page cache before it refuses memory. `None` when unlimited.
fn room(limit: &str, usage: &str, stat: Option<&str>, inactive_key: &str) -> Option<u64> {
    let limit = limit.trim();
    if limit == "max" {
        return None;
    }
    let limit: u64 = limit.parse().ok()?;
    // cgroup v1 writes "no limit" as the largest page-aligned i64
    if limit >= 1 << 62 {
        return None;
    }
    let usage: u64 = usage.trim().parse().ok()?;
    let inactive = stat
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(inactive_key)?.strip_prefix(' '))
                .and_then(|x| x.trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    Some(limit.saturating_sub(usage.saturating_sub(inactive)))
}

/// The least room any memory cgroup of the process leaves (its own and every parent's
/// limit apply), in bytes, with cgroup v2 mounted at `root` or cgroup v1's memory
/// controller at `root/memory`. `None` when no limit is set or none can be read.
pub fn cgroup_room_bytes(proc_self_cgroup: &str, root: &Path) -> Option<u64> {
    let (v2, v1) = cgroup_paths(proc_self_cgroup);
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let mut best: Option<u64> = None;
    let mut walk = |base: &Path, rel: &str, files: [&str; 3], inactive_key: &str| {
        // inside a container the path may name the host's hierarchy, which is not mounted:
        // then the container's own cgroup is the mount's root
        let mut dir = base.join(rel.trim_start_matches('/'));
        if rel.split('/').any(|c| c == "..") || !dir.is_dir() {
            dir = base.to_path_buf();
        }
        loop {
            if let (Some(l), Some(u)) = (read(&dir.join(files[0])), read(&dir.join(files[1]))) {
                let stat = read(&dir.join(files[2]));
                if let Some(r) = room(&l, &u, stat.as_deref(), inactive_key) {
                    best = Some(best.map_or(r, |b| b.min(r)));
                }
            }
            if dir == base || !dir.pop() {
                break;
            }
        }
    };
    if let Some(rel) = v2 {
        walk(
            root,
            &rel,
            ["memory.max", "memory.current", "memory.stat"],
            "inactive_file",
        );
    }
    if let Some(rel) = v1 {
        walk(
            &root.join("memory"),
            &rel,
            [
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
                "memory.stat",
            ],
            "total_inactive_file",
        );
    }
    best
}

/// Estimated peak memory of a run in MiB: weights, activations kept for the backward pass at
/// batch x max_len, gradients and AdamW state of the trainable parameters.
pub fn estimate_mib(
    cfg_m: &crate::model::Qwen2Config,
    tc: &TrainConfig,
    trainable_params: u64,
) -> f64 {
    let p = cfg_m.parameter_count() as f64;
    let (b, s) = (tc.batch as f64, tc.max_len as f64);
    let h = cfg_m.hidden_size as f64;
    let im = cfg_m.intermediate_size as f64;
    // per token and layer, what the autograd graph keeps: about 22 hidden-sized and 5
    // MLP-sized tensors (the fused attention, LoRA, norm and gate ops keep no score matrices
    // or dropout masks; measured on the 0.5B model: ~36k floats per token and layer, under
    // this bound)
    let per_layer = b * s * (h * 22.0 + im * 5.0);
    let acts = per_layer * cfg_m.num_hidden_layers as f64;
    let weight_bytes = if tc.dtype == "bf16" { 2.0 } else { 4.0 };
    let bytes =
        p * weight_bytes + trainable_params as f64 * 4.0 * 4.0 + acts * 4.0 + 600.0 * 1048576.0;
    bytes / 1048576.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, files: &[(&str, &str)]) {
        std::fs::create_dir_all(dir).unwrap();
        for (f, text) in files {
            std::fs::write(dir.join(f), text).unwrap();
        }
    }

    #[test]
    fn meminfo_and_cgroup_lines() {
        let mi = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(mem_available_bytes(mi), Some(2048 * 1024));
        assert_eq!(mem_available_bytes("MemTotal: 1 kB\n"), None);
        let hybrid = "9:name=systemd:/\n4:memory:/docker/abc\n1:cpu,cpuacct:/\n0::/user.slice\n";
        assert_eq!(
            cgroup_paths(hybrid),
            (Some("/user.slice".into()), Some("/docker/abc".into()))
        );
        assert_eq!(
            cgroup_paths("3:cpuacct,memory,cpu:/a/b\n"),
            (None, Some("/a/b".into()))
        );
        assert_eq!(cgroup_paths("0::/\n"), (Some("/".into()), None));
        assert_eq!(cgroup_paths("garbage\n::\n"), (None, None));
    }

    #[test]
    fn cgroup_v2_limit_minus_usage_with_parents() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        // the parent allows 8 GiB with 1 GiB used; the process's own cgroup 4 GiB with 3 GiB
        // used, of which 512 MiB is inactive page cache
        write(root, &[("cgroup.controllers", "memory")]);
        write(
            &root.join("box"),
            &[
                ("memory.max", "8589934592\n"),
                ("memory.current", "1073741824\n"),
            ],
        );
        write(
            &root.join("box/run"),
            &[
                ("memory.max", "4294967296\n"),
                ("memory.current", "3221225472\n"),
                (
                    "memory.stat",
                    "anon 1\ninactive_file 536870912\nactive_file 9\n",
                ),
            ],
        );
        let me = "0::/box/run\n";
        assert_eq!(cgroup_room_bytes(me, root), Some((4096 - 3072 + 512) << 20));
        // a tighter parent wins
        write(&root.join("box"), &[("memory.current", "8000000000\n")]);
        assert_eq!(cgroup_room_bytes(me, root), Some(8589934592 - 8000000000));
        // no limit anywhere
        write(&root.join("box"), &[("memory.max", "max\n")]);
        write(&root.join("box/run"), &[("memory.max", "max\n")]);
        assert_eq!(cgroup_room_bytes(me, root), None);
        // usage past the limit leaves no room rather than wrapping around
        write(
            &root.join("box/run"),
            &[
                ("memory.max", "100\n"),
                ("memory.current", "200\n"),
                ("memory.stat", ""),
            ],
        );
        assert_eq!(cgroup_room_bytes(me, root), Some(0));
    }

    #[test]
    fn cgroup_v1_limit_and_container_paths() {
        let d = tempfile::tempdir().unwrap();
        let mem = d.path().join("memory");
        // inside a container the host's path is not mounted: the mount's root is the cgroup
        write(
            &mem,
            &[
                ("memory.limit_in_bytes", "2147483648\n"),
                ("memory.usage_in_bytes", "1073741824\n"),
                ("memory.stat", "cache 5\ntotal_inactive_file 268435456\n"),
            ],
        );
        let me = "4:memory:/docker/0123abcd\n0::/\n";
        assert_eq!(
            cgroup_room_bytes(me, d.path()),
            Some((2048 - 1024 + 256) << 20)
        );
        // "no limit" in v1 is a huge number
        write(&mem, &[("memory.limit_in_bytes", "9223372036854771712\n")]);
        assert_eq!(cgroup_room_bytes(me, d.path()), None);
        // a path that tries to leave the hierarchy reads the root instead
        write(
            &mem,
            &[("memory.limit_in_bytes", "3000\n"), ("memory.stat", "")],
        );
        write(&mem, &[("memory.usage_in_bytes", "1000\n")]);
        assert_eq!(
            cgroup_room_bytes("4:memory:/../../etc\n", d.path()),
            Some(2000)
        );
        // unreadable files: nothing known
        assert_eq!(cgroup_room_bytes(me, &d.path().join("nope")), None);
    }
}
