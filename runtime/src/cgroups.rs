//! The container's cgroup on the host: the one the spec names in
//! `linux.cgroupsPath`, so the engine's accounting (`podman stats`), its
//! limits and ours cover the whole sandbox: the monitor and husk-vmm with
//! all its threads (the VM's memory is the VMM's memory).
//!
//! The monitor joins it first thing ([`enter`]); husk-vmm, its child,
//! inherits it. The limits come from the VM size, so a runaway VMM cannot
//! take the host down: `memory.max` = guest memory + [`VMM_OVERHEAD_MIB`],
//! `pids.max` = [`PIDS_BASE`] + vCPUs. `husk delete` removes it ([`remove`]).
//! The limits the spec itself sets (`linux.resources`) are applied inside
//! the guest by the agent; the VM size already follows them.
//!
//! Paths: cgroupfs style (`/libpod_parent/libpod-<id>`, or relative) and
//! systemd style (`slice:prefix:name` → `<slice path>/<prefix>-<name>.scope`,
//! e.g. `machine-libpod.slice` → `machine.slice/machine-libpod.slice`),
//! created directly in the cgroup file system: no systemd needed. Without a
//! path: `/husk/<id>`. Layouts: cgroup v2 (unified at `/sys/fs/cgroup`) and
//! v1 (every mounted hierarchy, plus the v2 "unified" one of hybrid hosts).

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::Spec;

/// Host memory the sandbox may use beyond the guest's RAM: husk-vmm
/// (code, heap, vsock buffers, virtio-fs inode table), KVM's page tables and
/// structures for the guest, and the monitor. Measured idle total ~15 MiB.
pub const VMM_OVERHEAD_MIB: u64 = 64;
/// Tasks besides the vCPUs: monitor threads (stdio relays, exec sessions),
/// husk-vmm's main thread, fs worker and jail waiter.
pub const PIDS_BASE: u64 = 128;

/// Where `enter` records the cgroup, for `remove`.
const RECORD: &str = "cgroup";
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("invalid cgroupsPath {0:?}: {1}")]
    Path(String, &'static str),
    #[error("cgroup {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("no cgroup file system mounted at /sys/fs/cgroup")]
    NoCgroupFs,
    // runc's wording.
    #[error("container's cgroup is not empty: {1} process(es) found in {0}")]
    NotEmpty(PathBuf, usize),
    #[error("cgroup {0}: cannot set the device policy: {1}")]
    Devices(PathBuf, std::io::Error),
}

/// The limits for a VM of `memory_mib` and `vcpus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub pids: u64,
}

pub fn limits(memory_mib: u32, vcpus: u8) -> Limits {
    Limits {
        memory_bytes: (u64::from(memory_mib) + VMM_OVERHEAD_MIB) << 20,
        pids: PIDS_BASE + u64::from(vcpus),
    }
}

/// The cgroup path relative to the hierarchy root, from `linux.cgroupsPath`.
pub fn relative_path(cgroups_path: Option<&str>, id: &str) -> Result<PathBuf, CgroupError> {
    let raw = match cgroups_path {
        Some(p) if !p.is_empty() => p,
        _ => return Ok(PathBuf::from("husk").join(id)),
    };
    let bad = |why| CgroupError::Path(raw.to_string(), why);
    let rel = if !raw.starts_with('/') && raw.matches(':').count() == 2 {
        let mut parts = raw.splitn(3, ':');
        let (slice, prefix, name) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        if name.is_empty() {
            return Err(bad("systemd path without a unit name"));
        }
        let mut p = expand_slice(slice).ok_or_else(|| bad("invalid slice"))?;
        p.push(if prefix.is_empty() {
            format!("{name}.scope")
        } else {
            format!("{prefix}-{name}.scope")
        });
        p
    } else {
        PathBuf::from(raw.trim_start_matches('/'))
    };
    let mut out = PathBuf::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return Err(bad("must not contain ..")),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(bad("names the root cgroup"));
    }
    Ok(out)
}

/// `a-b.slice` → `a.slice/a-b.slice`; `-.slice` or empty → root.
fn expand_slice(slice: &str) -> Option<PathBuf> {
    if slice.is_empty() || slice == "-.slice" {
        return Some(PathBuf::new());
    }
    let base = slice.strip_suffix(".slice")?;
    if base.is_empty() || base.contains('/') || base.starts_with('-') || base.ends_with('-') {
        return None;
    }
    let mut p = PathBuf::new();
    let mut acc = String::new();
    for part in base.split('-') {
        if part.is_empty() {
            return None;
        }
        if !acc.is_empty() {
            acc.push('-');
        }
        acc.push_str(part);
        p.push(format!("{acc}.slice"));
    }
    Some(p)
}

/// Mounted cgroup hierarchies: (mount point, is v2, v1 controllers).
fn hierarchies() -> Result<Vec<(PathBuf, bool, Vec<String>)>, CgroupError> {
    let root = Path::new("/sys/fs/cgroup");
    if statfs_type(root) == Some(CGROUP2_SUPER_MAGIC) {
        return Ok(vec![(root.to_path_buf(), true, Vec::new())]);
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| CgroupError::Io("/proc/self/mountinfo".into(), e))?;
    let mut out = Vec::new();
    for line in info.lines() {
        // ... mount point (field 5) ... " - " fstype source super-options
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mnt = left.split_whitespace().nth(4).unwrap_or("");
        let mut r = right.split_whitespace();
        let fstype = r.next().unwrap_or("");
        let opts = r.nth(1).unwrap_or("");
        if !mnt.starts_with("/sys/fs/cgroup") {
            continue;
        }
        match fstype {
            "cgroup2" => out.push((PathBuf::from(mnt), true, Vec::new())),
            "cgroup" => {
                let ctrls = opts
                    .split(',')
                    .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains('='))
                    .map(String::from)
                    .collect();
                out.push((PathBuf::from(mnt), false, ctrls));
            }
            _ => {}
        }
    }
    if out.is_empty() {
        return Err(CgroupError::NoCgroupFs);
    }
    Ok(out)
}

fn statfs_type(p: &Path) -> Option<i64> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: valid path and a zeroed statfs buffer.
    unsafe {
        let mut s: libc::statfs = std::mem::zeroed();
        (libc::statfs(c.as_ptr(), &mut s) == 0).then_some(s.f_type)
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|e| CgroupError::Io(path.into(), e))
}

/// Creates the container's cgroup, sets the limits for the VM size and the
/// device policy ([`crate::devices`]) and moves the calling process (the
/// monitor) into it; records it in `state_dir`. A cgroup that already has
/// processes is refused, as runc does: `cgroupsPath` could name someone
/// else's (`/system.slice/sshd.service`), whose limits we would set and
/// whose processes `delete` would kill.
pub fn enter(
    state_dir: &Path,
    spec: &Spec,
    id: &str,
    memory_mib: u32,
    vcpus: u8,
) -> Result<(), CgroupError> {
    enter_in(&hierarchies()?, state_dir, spec, id, memory_mib, vcpus)
}

type Hierarchy = (PathBuf, bool, Vec<String>);

fn enter_in(
    hierarchies: &[Hierarchy],
    state_dir: &Path,
    spec: &Spec,
    id: &str,
    memory_mib: u32,
    vcpus: u8,
) -> Result<(), CgroupError> {
    let cgroups_path = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
    let rel = relative_path(cgroups_path.as_ref().and_then(|p| p.to_str()), id)?;
    let lim = limits(memory_mib, vcpus);
    let pid = std::process::id().to_string();
    // Checked everywhere before anything is written anywhere.
    for (mnt, _, _) in hierarchies {
        let dir = mnt.join(&rel);
        let n = processes_below(&dir, 8);
        if n > 0 {
            return Err(CgroupError::NotEmpty(dir, n));
        }
    }
    // v1 has a devices controller; only without one does v2 need the
    // BPF program (pure v2, or a hybrid host without v1 devices).
    let v1_devices = hierarchies
        .iter()
        .any(|(_, v2, c)| !v2 && c.iter().any(|x| x == "devices"));
    for (mnt, v2, ctrls) in hierarchies {
        let (mnt, v2) = (mnt.as_path(), *v2);
        let dir = mnt.join(&rel);
        if v2 {
            enable_v2_controllers(mnt, &rel);
        }
        std::fs::create_dir_all(&dir).map_err(|e| CgroupError::Io(dir.clone(), e))?;
        if v2 && !v1_devices {
            crate::devices::apply_v2(&dir).map_err(|e| CgroupError::Devices(dir.clone(), e))?;
        }
        if !v2 && ctrls.iter().any(|c| c == "devices") {
            crate::devices::apply_v1(&dir).map_err(|e| CgroupError::Devices(dir.clone(), e))?;
        }
        if v2 {
            // Absent when the controller is not enabled here: v2 hosts that
            // keep memory/pids from us, the "unified" tree of hybrid hosts.
            let mem = dir.join("memory.max");
            if mem.exists() {
                write(&mem, &lim.memory_bytes.to_string())?;
            }
            let pids = dir.join("pids.max");
            if pids.exists() {
                write(&pids, &lim.pids.to_string())?;
            }
        } else {
            let has = |c: &str| ctrls.iter().any(|x| x == c);
            if has("cpuset") {
                inherit_cpuset(mnt, &rel);
            }
            if has("memory") {
                write(
                    &dir.join("memory.limit_in_bytes"),
                    &lim.memory_bytes.to_string(),
                )?;
            }
            if has("pids") {
                write(&dir.join("pids.max"), &lim.pids.to_string())?;
            }
        }
        write(&dir.join("cgroup.procs"), &pid)?;
    }
    let record = state_dir.join(RECORD);
    std::fs::write(&record, rel.as_os_str().as_encoded_bytes())
        .map_err(|e| CgroupError::Io(record, e))
}

/// Processes in cgroup `dir` and its descendants (`depth` levels down).
fn processes_below(dir: &Path, depth: u32) -> usize {
    let here = std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|p| p.lines().filter(|l| !l.trim().is_empty()).count())
        .unwrap_or(0);
    if depth == 0 {
        return here;
    }
    let below: usize = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| processes_below(&e.path(), depth - 1))
        .sum();
    here + below
}

/// v2: a controller works in a cgroup only if every ancestor enables it
/// for its children. Best effort: a parent that has processes of its own
/// (or a host that withholds a controller) refuses, and the limit is then
/// simply not there.
fn enable_v2_controllers(root: &Path, rel: &Path) {
    let mut dir = root.to_path_buf();
    let parents: Vec<_> = rel.components().collect();
    for (i, c) in parents.iter().enumerate() {
        let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
        for ctrl in ["memory", "pids", "cpu", "io"] {
            if available.split_whitespace().any(|a| a == ctrl) {
                let _ = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{ctrl}"));
            }
        }
        if i + 1 == parents.len() {
            break;
        }
        dir.push(c);
        let _ = std::fs::create_dir(&dir);
    }
}

/// v1 cpuset: a new cgroup has no CPUs or memory nodes, and joining it
/// fails until they are set; copy them down from the parent.
fn inherit_cpuset(root: &Path, rel: &Path) {
    let mut dir = root.to_path_buf();
    for c in rel.components() {
        let parent = dir.clone();
        dir.push(c);
        let _ = std::fs::create_dir(&dir);
        for f in ["cpuset.cpus", "cpuset.mems"] {
            let mine = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
            if mine.trim().is_empty() {
                if let Ok(v) = std::fs::read_to_string(parent.join(f)) {
                    let _ = std::fs::write(dir.join(f), v.trim());
                }
            }
        }
    }
}

/// Removes the cgroup recorded in `state_dir` (if any) from every
/// hierarchy. Its processes are gone by then; the kernel may need a moment
/// to notice, so an EBUSY is retried for up to a second.
pub fn remove(state_dir: &Path) -> Result<(), CgroupError> {
    let record = state_dir.join(RECORD);
    let rel = match std::fs::read(&record) {
        Ok(b) => PathBuf::from(String::from_utf8_lossy(&b).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(CgroupError::Io(record, e)),
    };
    // Only a path `enter` could have written.
    if rel.is_absolute() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Ok(());
    }
    for (mnt, _, _) in hierarchies()? {
        let dir = mnt.join(&rel);
        kill_all(&dir);
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match std::fs::remove_dir(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(CgroupError::Io(dir, e)),
            }
        }
    }
    let _ = std::fs::remove_file(record);
    Ok(())
}

/// SIGKILLs whatever is still in cgroup `dir` (a VMM that outlived its
/// waiter, say): only the sandbox's own processes are ever in there.
fn kill_all(dir: &Path) {
    let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
        return;
    };
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        if pid > 1 && pid != std::process::id() as i32 {
            // SAFETY: kill with a pid read from the container's own cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroupfs_and_systemd_paths() {
        let p = |s| relative_path(Some(s), "c1");
        assert_eq!(
            p("/libpod_parent/libpod-abc").unwrap(),
            PathBuf::from("libpod_parent/libpod-abc")
        );
        assert_eq!(p("rel/x").unwrap(), PathBuf::from("rel/x"));
        assert_eq!(
            p("machine-libpod.slice:libpod:abc").unwrap(),
            PathBuf::from("machine.slice/machine-libpod.slice/libpod-abc.scope")
        );
        assert_eq!(
            p("system.slice:docker:1").unwrap(),
            PathBuf::from("system.slice/docker-1.scope")
        );
        assert_eq!(p("-.slice:husk:1").unwrap(), PathBuf::from("husk-1.scope"));
        assert_eq!(p(":husk:1").unwrap(), PathBuf::from("husk-1.scope"));
        assert_eq!(relative_path(None, "c1").unwrap(), PathBuf::from("husk/c1"));
        assert_eq!(
            relative_path(Some(""), "c1").unwrap(),
            PathBuf::from("husk/c1")
        );
        assert!(p("/a/../../etc").is_err());
        assert!(p("/").is_err());
        assert!(p("bad:husk:").is_err());
        assert!(p("nota-slice:husk:1").is_err());
        assert!(p("a--b.slice:x:1").is_err());
    }

    /// A fake v1 hierarchy (no controllers) in a temp dir: `enter` must not
    /// join, limit or record a cgroup that has processes (review F14).
    #[test]
    fn refuses_a_cgroup_that_has_processes() {
        let base = std::env::temp_dir().join(format!("husk-cg-busy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let state = base.join("state");
        let mnt = base.join("cgroup");
        let busy = mnt.join("system.slice/sshd.service");
        std::fs::create_dir_all(&busy).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(busy.join("cgroup.procs"), "1234\n").unwrap();
        let spec = |p: &str| -> Spec {
            serde_json::from_value(serde_json::json!({
                "ociVersion": "1.0.2", "linux": {"cgroupsPath": p}
            }))
            .unwrap()
        };
        let h = vec![(mnt.clone(), false, Vec::new())];
        let e = enter_in(&h, &state, &spec("/system.slice/sshd.service"), "c", 64, 1).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("container's cgroup is not empty: 1 process(es)"),
            "{e}"
        );
        assert_eq!(
            std::fs::read_to_string(busy.join("cgroup.procs")).unwrap(),
            "1234\n"
        );
        assert!(!state.join(RECORD).exists());
        // Processes in a child cgroup count too.
        let parent = spec("/system.slice");
        assert!(matches!(
            enter_in(&h, &state, &parent, "c", 64, 1),
            Err(CgroupError::NotEmpty(_, 1))
        ));
        // An empty (or new) one is joined and recorded.
        enter_in(&h, &state, &spec("/husk-empty"), "c", 64, 1).unwrap();
        assert_eq!(
            std::fs::read_to_string(mnt.join("husk-empty/cgroup.procs")).unwrap(),
            std::process::id().to_string()
        );
        assert!(state.join(RECORD).exists());
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn limits_follow_the_vm_size() {
        assert_eq!(
            limits(256, 2),
            Limits {
                memory_bytes: (256 + VMM_OVERHEAD_MIB) << 20,
                pids: PIDS_BASE + 2
            }
        );
    }

    /// Needs root and a writable cgroup file system (v1, hybrid or v2):
    /// `cargo test -p husk --lib cgroups -- --ignored`. Moves the test
    /// process into a new cgroup and back.
    #[test]
    #[ignore]
    fn enter_and_remove_on_this_host() {
        let before = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let dir = std::env::temp_dir().join(format!("husk-cg-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rel = format!("/husk-unit-{}", std::process::id());
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"cgroupsPath": rel}
        }))
        .unwrap();
        enter(&dir, &spec, "x", 64, 2).unwrap();
        let now = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let lim = limits(64, 2);
        for (mnt, v2, ctrls) in hierarchies().unwrap() {
            let d = mnt.join(rel.trim_start_matches('/'));
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap();
            assert!(
                procs.lines().any(|p| p == std::process::id().to_string()),
                "{d:?}"
            );
            let read = |f: &str| {
                std::fs::read_to_string(d.join(f))
                    .unwrap()
                    .trim()
                    .to_string()
            };
            if v2 && d.join("memory.max").exists() {
                assert_eq!(read("memory.max"), lim.memory_bytes.to_string());
                assert_eq!(read("pids.max"), lim.pids.to_string());
            }
            if ctrls.iter().any(|c| c == "memory") {
                assert_eq!(read("memory.limit_in_bytes"), lim.memory_bytes.to_string());
            }
            if ctrls.iter().any(|c| c == "pids") {
                assert_eq!(read("pids.max"), lim.pids.to_string());
            }
        }
        assert!(now.contains(&rel), "{now}");
        // Back where we were, so the cgroup can go.
        for line in before.lines() {
            let mut f = line.splitn(3, ':');
            let (_, ctrls, path) = (f.next(), f.next().unwrap(), f.next().unwrap());
            for (mnt, v2, c) in hierarchies().unwrap() {
                let same = if ctrls.is_empty() {
                    v2
                } else {
                    let name = ctrls.trim_start_matches("name=");
                    c.iter().any(|x| ctrls.split(',').any(|y| y == x))
                        || c.iter().any(|x| x == name)
                        || (!v2 && mnt.ends_with(name))
                };
                if same {
                    let back = mnt.join(path.trim_start_matches('/')).join("cgroup.procs");
                    let _ = std::fs::write(back, std::process::id().to_string());
                }
            }
        }
        remove(&dir).unwrap();
        for (mnt, _, _) in hierarchies().unwrap() {
            assert!(!mnt.join(rel.trim_start_matches('/')).exists(), "{mnt:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
