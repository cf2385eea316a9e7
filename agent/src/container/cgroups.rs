//! cgroup v2 inside the guest: `/sys/fs/cgroup/husk/<id>` per container.
//!
//! `linux.cgroupsPath` is ignored: the agent owns the guest's hierarchy.
//! `linux.resources.devices` is ignored too: cgroup v2 device control needs
//! eBPF programs, and a container can only reach the device nodes the agent
//! creates in its /dev anyway.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk_protocol::cpu_shares_to_weight;
use nix::mount::{mount, MsFlags};
use oci_spec::runtime::LinuxResources;

pub const ROOT: &str = "/sys/fs/cgroup";
const PARENT: &str = "husk";
const CONTROLLERS: [&str; 4] = ["cpu", "cpuset", "memory", "pids"];

/// Mounts cgroup2 on /sys/fs/cgroup unless it is there already, and enables
/// the controllers husk uses for the children of the husk cgroup. Idempotent.
pub fn ensure_hierarchy() -> Result<(), String> {
    let is_cgroup2 = nix::sys::statfs::statfs(ROOT)
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false);
    if !is_cgroup2 {
        let _ = fs::create_dir_all(ROOT);
        mount(
            Some("cgroup2"),
            ROOT,
            Some("cgroup2"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|e| format!("mount cgroup2 on {ROOT}: {e}"))?;
    }
    let parent = Path::new(ROOT).join(PARENT);
    match fs::create_dir(&parent) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("create cgroup {}: {e}", parent.display())),
    }
    for dir in [Path::new(ROOT), parent.as_path()] {
        let available = read_words(&dir.join("cgroup.controllers"));
        let enabled = read_words(&dir.join("cgroup.subtree_control"));
        for c in CONTROLLERS {
            if available.iter().any(|a| a == c) && !enabled.iter().any(|e| e == c) {
                // Best effort: a controller that cannot be enabled is
                // reported when a container asks for it.
                let _ = fs::write(dir.join("cgroup.subtree_control"), format!("+{c}"));
            }
        }
    }
    Ok(())
}

fn read_words(p: &Path) -> Vec<String> {
    fs::read_to_string(p)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// OCI `memory.swap` (memory + swap) → v2 `memory.swap.max` (swap only), as
/// runc: 0 = unset, -1 = unlimited.
pub fn swap_to_v2(swap: i64, limit: i64) -> Result<i64, String> {
    if limit == -1 && swap == 0 {
        return Ok(-1);
    }
    if swap == -1 || swap == 0 {
        return Ok(swap);
    }
    if limit == 0 || limit == -1 {
        return Err(
            "linux.resources.memory.swap: cannot set a swap limit without a memory limit".into(),
        );
    }
    if limit < 0 {
        return Err(format!(
            "linux.resources.memory.limit: invalid value {limit}"
        ));
    }
    if swap < limit {
        return Err(format!(
            "linux.resources.memory.swap ({swap}) must be >= memory.limit ({limit}): it is memory+swap"
        ));
    }
    Ok(swap - limit)
}

/// Parses a kernel cpu/memory-node list ("0-3,6,8-9") into the ids it names.
pub fn parse_cpu_list(list: &str) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for part in list.trim().split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!("invalid list {list:?}: empty element"));
        }
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let a: u32 = a
            .parse()
            .map_err(|_| format!("invalid list {list:?}: {part:?} is not a number or range"))?;
        let b: u32 = b
            .parse()
            .map_err(|_| format!("invalid list {list:?}: {part:?} is not a number or range"))?;
        if b < a {
            return Err(format!("invalid list {list:?}: range {part:?} is reversed"));
        }
        if b - a > 65535 {
            return Err(format!(
                "invalid list {list:?}: range {part:?} is too large"
            ));
        }
        out.extend(a..=b);
    }
    Ok(out)
}

fn max_or(v: i64) -> String {
    if v < 0 {
        "max".into()
    } else {
        v.to_string()
    }
}

/// The cgroup files to write for `linux.resources`, in order. Errors name the
/// unsupported or invalid field.
pub fn resource_writes(r: &LinuxResources) -> Result<Vec<(String, String)>, String> {
    let mut w: Vec<(String, String)> = Vec::new();
    if let Some(m) = r.memory() {
        if let Some(limit) = m.limit() {
            w.push(("memory.max".into(), max_or(limit)));
        }
        if let Some(res) = m.reservation() {
            w.push(("memory.low".into(), max_or(res)));
        }
        if let Some(swap) = m.swap() {
            let v = swap_to_v2(swap, m.limit().unwrap_or(0))?;
            if v != 0 {
                w.push(("memory.swap.max".into(), max_or(v)));
            }
        }
        // kernel / kernelTCP are deprecated by OCI, swappiness does not exist in v2.
    }
    if let Some(c) = r.cpu() {
        if let Some(shares) = c.shares().filter(|s| *s != 0) {
            w.push((
                "cpu.weight".into(),
                cpu_shares_to_weight(shares).to_string(),
            ));
        }
        if c.quota().is_some() || c.period().is_some() {
            let quota = match c.quota() {
                Some(q) if q > 0 => q.to_string(),
                _ => "max".into(),
            };
            let period = c.period().filter(|p| *p > 0).unwrap_or(100_000);
            w.push(("cpu.max".into(), format!("{quota} {period}")));
        }
        if let Some(burst) = c.burst() {
            w.push(("cpu.max.burst".into(), burst.to_string()));
        }
        if let Some(idle) = c.idle() {
            w.push(("cpu.idle".into(), idle.to_string()));
        }
        if c.realtime_runtime().is_some_and(|v| v != 0)
            || c.realtime_period().is_some_and(|v| v != 0)
        {
            return Err(
                "linux.resources.cpu.realtimeRuntime/realtimePeriod: not supported with cgroup v2"
                    .into(),
            );
        }
        if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
            parse_cpu_list(cpus).map_err(|e| format!("linux.resources.cpu.cpus: {e}"))?;
            w.push(("cpuset.cpus".into(), cpus.to_string()));
        }
        if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
            parse_cpu_list(mems).map_err(|e| format!("linux.resources.cpu.mems: {e}"))?;
            w.push(("cpuset.mems".into(), mems.to_string()));
        }
    }
    if let Some(p) = r.pids() {
        w.push((
            "pids.max".into(),
            if p.limit() > 0 {
                p.limit().to_string()
            } else {
                "max".into()
            },
        ));
    }
    if let Some(b) = r.block_io() {
        fn non_empty<T>(v: &Option<Vec<T>>) -> bool {
            v.as_ref().is_some_and(|v| !v.is_empty())
        }
        let set = b.weight().is_some()
            || b.leaf_weight().is_some()
            || non_empty(b.weight_device())
            || non_empty(b.throttle_read_bps_device())
            || non_empty(b.throttle_write_bps_device())
            || non_empty(b.throttle_read_iops_device())
            || non_empty(b.throttle_write_iops_device());
        if set {
            return Err(
                "linux.resources.blockIO: not supported (the guest has no io controller)".into(),
            );
        }
    }
    if r.hugepage_limits().as_ref().is_some_and(|v| !v.is_empty()) {
        return Err("linux.resources.hugepageLimits: not supported".into());
    }
    if r.network().is_some() {
        return Err("linux.resources.network: not supported with cgroup v2".into());
    }
    if r.rdma().as_ref().is_some_and(|v| !v.is_empty()) {
        return Err("linux.resources.rdma: not supported".into());
    }
    if let Some(u) = r.unified() {
        let mut keys: Vec<&String> = u.keys().collect();
        keys.sort();
        for k in keys {
            if k.is_empty() || k.contains('/') || k.starts_with('.') || !k.contains('.') {
                return Err(format!(
                    "linux.resources.unified: invalid cgroup file name {k:?}"
                ));
            }
            w.push((k.clone(), u[k].clone()));
        }
    }
    Ok(w)
}

/// One container's cgroup.
#[derive(Debug, Clone)]
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn path_for(id: &str) -> PathBuf {
        Path::new(ROOT).join(PARENT).join(id)
    }

    /// Creates the cgroup and applies the resources. A leftover empty cgroup
    /// of the same name (an earlier container whose removal failed) is reused.
    pub fn create(id: &str, resources: Option<&LinuxResources>) -> Result<Cgroup, String> {
        let writes = match resources {
            Some(r) => resource_writes(r)?,
            None => Vec::new(),
        };
        ensure_hierarchy()?;
        let path = Self::path_for(id);
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("create cgroup {}: {e}", path.display())),
        }
        let cg = Cgroup { path };
        if let Err(e) = cg.apply(&writes) {
            let _ = cg.remove(Duration::ZERO);
            return Err(e);
        }
        Ok(cg)
    }

    /// Writes `(file, value)` pairs from [`resource_writes`], in order.
    pub fn apply(&self, writes: &[(String, String)]) -> Result<(), String> {
        let available = read_words(&self.path.join("cgroup.controllers"));
        for (file, value) in writes {
            let controller = file.split('.').next().unwrap_or("");
            if CONTROLLERS.contains(&controller) && !available.iter().any(|a| a == controller) {
                return Err(format!(
                    "linux.resources: the {controller} cgroup controller is not available in the guest (needed for {file})"
                ));
            }
            fs::write(self.path.join(file), value)
                .map_err(|e| format!("linux.resources: write {value:?} to {file}: {e}"))?;
        }
        Ok(())
    }

    /// Pids in the cgroup (empty if it is gone).
    pub fn procs(&self) -> Vec<i32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Sends `sig` to every process in the cgroup; SIGKILL through
    /// cgroup.kill when the kernel has it (no race with forking processes).
    pub fn signal_all(&self, sig: i32) -> Result<(), String> {
        if sig == libc::SIGKILL && fs::write(self.path.join("cgroup.kill"), "1").is_ok() {
            return Ok(());
        }
        for pid in self.procs() {
            // SAFETY: plain syscall.
            if unsafe { libc::kill(pid, sig) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ESRCH) {
                    return Err(format!("kill {pid}: {e}"));
                }
            }
        }
        Ok(())
    }

    /// Removes the cgroup, retrying for up to `patience` while its last
    /// processes finish exiting.
    pub fn remove(&self, patience: Duration) -> Result<(), String> {
        let deadline = Instant::now() + patience;
        loop {
            match fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                Err(e) => {
                    if Instant::now() >= deadline {
                        return Err(format!("remove cgroup {}: {e}", self.path.display()));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn swap() {
        assert_eq!(swap_to_v2(0, 0), Ok(0));
        assert_eq!(swap_to_v2(-1, 100), Ok(-1));
        assert_eq!(swap_to_v2(0, -1), Ok(-1));
        assert_eq!(swap_to_v2(300, 100), Ok(200));
        assert_eq!(swap_to_v2(100, 100), Ok(0));
        assert!(swap_to_v2(50, 100)
            .unwrap_err()
            .contains("must be >= memory.limit"));
        assert!(swap_to_v2(50, 0)
            .unwrap_err()
            .contains("without a memory limit"));
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0").unwrap(), vec![0]);
        assert_eq!(
            parse_cpu_list("0-3,6,8-9").unwrap(),
            vec![0, 1, 2, 3, 6, 8, 9]
        );
        assert_eq!(parse_cpu_list(" 1 - 2 \n").unwrap(), vec![1, 2]);
        assert!(parse_cpu_list("3-1").unwrap_err().contains("reversed"));
        assert!(parse_cpu_list("a").is_err());
        assert!(parse_cpu_list("1,,2")
            .unwrap_err()
            .contains("empty element"));
        assert!(parse_cpu_list("").is_err());
    }

    fn res(v: serde_json::Value) -> LinuxResources {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn writes() {
        let r = res(json!({
            "devices": [{ "allow": false, "access": "rwm" }],
            "memory": { "limit": 67108864, "reservation": 33554432, "swap": 134217728 },
            "cpu": { "shares": 1024, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0" },
            "pids": { "limit": 64 },
            "unified": { "memory.high": "50000000" }
        }));
        let w = resource_writes(&r).unwrap();
        let get = |f: &str| w.iter().find(|(k, _)| k == f).map(|(_, v)| v.as_str());
        assert_eq!(get("memory.max"), Some("67108864"));
        assert_eq!(get("memory.low"), Some("33554432"));
        assert_eq!(get("memory.swap.max"), Some("67108864"));
        assert_eq!(get("cpu.weight"), Some("100"));
        assert_eq!(get("cpu.max"), Some("50000 100000"));
        assert_eq!(get("cpuset.cpus"), Some("0-1"));
        assert_eq!(get("cpuset.mems"), Some("0"));
        assert_eq!(get("pids.max"), Some("64"));
        assert_eq!(get("memory.high"), Some("50000000"));

        let w = resource_writes(&res(json!({
            "memory": { "limit": -1 }, "cpu": { "quota": -1 }, "pids": { "limit": 0 }
        })))
        .unwrap();
        assert_eq!(
            w,
            vec![
                ("memory.max".to_string(), "max".to_string()),
                ("memory.swap.max".to_string(), "max".to_string()),
                ("cpu.max".to_string(), "max 100000".to_string()),
                ("pids.max".to_string(), "max".to_string()),
            ]
            .into_iter()
            .filter(|(k, _)| k != "memory.swap.max")
            .collect::<Vec<_>>()
        );
    }

    #[test]
    fn write_errors() {
        let e = resource_writes(&res(json!({ "cpu": { "cpus": "0-x" } }))).unwrap_err();
        assert!(
            e.starts_with("linux.resources.cpu.cpus: invalid list"),
            "{e}"
        );
        let e = resource_writes(&res(json!({ "blockIO": { "weight": 10 } }))).unwrap_err();
        assert!(e.starts_with("linux.resources.blockIO"), "{e}");
        let e = resource_writes(&res(
            json!({ "hugepageLimits": [{ "pageSize": "2MB", "limit": 1 }] }),
        ))
        .unwrap_err();
        assert!(e.starts_with("linux.resources.hugepageLimits"), "{e}");
        let e = resource_writes(&res(json!({ "unified": { "../x": "1" } }))).unwrap_err();
        assert!(e.contains("invalid cgroup file name"), "{e}");
        let e = resource_writes(&res(json!({ "memory": { "swap": 10 } }))).unwrap_err();
        assert!(e.contains("without a memory limit"), "{e}");
    }
}
