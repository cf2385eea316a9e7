//! The container's cgroup on the host: the one the spec names in
//! `linux.cgroupsPath`, so the engine's accounting (`podman stats`), its
//! limits and ours cover the whole sandbox: the monitor and husk-vmm with
//! all its threads (the VM's memory is the VMM's memory).
//!
//! The monitor joins it first thing ([`enter`]); husk-vmm, its child,
//! inherits it. Two kinds of limits go there:
//! - from the VM size, so a runaway VMM cannot take the host down:
//!   `memory.max` = guest memory + [`VMM_OVERHEAD_MIB`], `pids.max` =
//!   [`PIDS_BASE`] + vCPUs;
//! - from the spec's `linux.resources` ([`HostSettings`]), so the VM as a
//!   whole is held to what the engine asked and tools that read the cgroup
//!   see it: CPU quota/period, weight (runc's conversion from shares),
//!   idle, burst, cpuset; the memory limit plus the VM's fixed overhead
//!   ([`host_memory_bytes`]); blockIO, which only the host can apply (the
//!   VM's block I/O is husk-vmm's: [`crate::block_io`]). `husk update`
//!   changes them ([`prepare_update`]). The agent applies the same
//!   resources, but for cpuset and blockIO, inside the guest.
//!
//! `husk delete` removes it ([`remove`]).
//!
//! Paths: cgroupfs style (`/libpod_parent/libpod-<id>`, or relative) and
//! systemd style (`slice:prefix:name` → `<slice path>/<prefix>-<name>.scope`,
//! e.g. `machine-libpod.slice` → `machine.slice/machine-libpod.slice`),
//! created directly in the cgroup file system: no systemd needed. Without a
//! path: `/husk/<id>`. Layouts: cgroup v2 (unified at `/sys/fs/cgroup`) and
//! v1 (every mounted hierarchy, plus the v2 "unified" one of hybrid hosts).

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use husk_protocol::cpu_shares_to_weight;

use crate::block_io::{io_weight, BlockIo};

use oci_spec::runtime::{LinuxResources, Spec};

use crate::container::sizing::{memory_for_limit, VmSize};

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
    #[error("cgroup {0}: cannot apply {1}: the host's cgroup has no {2} here")]
    Unsupported(PathBuf, &'static str, String),
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

/// The host's `memory.max` for a container whose spec limits it to `limit`
/// bytes, in a VM of `vm` (None: not recorded): the spec's limit plus the
/// VM's fixed overhead, the guest kernel and agent
/// ([`crate::container::sizing::MEMORY_OVERHEAD_MIB`], which the VM is sized
/// with) and husk-vmm ([`VMM_OVERHEAD_MIB`]), the limit rounded up to MiB as
/// the VM size is; for a VM sized from the spec, exactly its VM-size limit.
///
/// Never less than the whole VM needs (guest RAM + [`VMM_OVERHEAD_MIB`]),
/// which is also the limit without a spec limit: the VM cannot shrink, and
/// guest RAM once touched stays with husk-vmm even after the guest freed it
/// (there is no balloon), so a host limit below it would sooner or later
/// OOM-kill the whole VM while its container keeps within its own limit.
/// None: nothing to set (no limit and no VM size known).
pub fn host_memory_bytes(limit: Option<i64>, vm: Option<VmSize>) -> Option<u64> {
    let for_limit = limit.and_then(|l| memory_for_limit(l, None));
    let mib = match (for_limit, vm.map(|v| v.memory_mib)) {
        (Some(l), Some(v)) => l.max(v),
        (Some(m), None) | (None, Some(m)) => m,
        (None, None) => return None,
    };
    Some((u64::from(mib) + VMM_OVERHEAD_MIB) << 20)
}

/// The spec's `linux.resources` as they apply to the host cgroup, which
/// holds the whole VM. The spec's pids limit stays in the guest (the host's
/// follows the VM size); what the guest refuses (realtime, hugepages, rdma,
/// network) is not taken either. blockIO is the host's alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostSettings {
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
    /// `Some(None)`: no quota ("max"); None: leave as it is.
    pub cpu_quota: Option<Option<u64>>,
    pub cpu_period: Option<u64>,
    pub cpu_burst: Option<u64>,
    pub cpu_shares: Option<u64>,
    pub cpu_idle: Option<i64>,
    pub cpus: Option<String>,
    pub mems: Option<String>,
    /// None: nothing asked (Docker's empty blockIO included).
    pub block_io: Option<BlockIo>,
}

impl HostSettings {
    /// What `res` changes on the host, for a VM of `vm` (None: not recorded).
    pub fn from_resources(res: &LinuxResources, vm: Option<VmSize>) -> HostSettings {
        let mut s = HostSettings::default();
        if let Some(limit) = res.memory().as_ref().and_then(|m| m.limit()) {
            s.memory_bytes = host_memory_bytes(Some(limit), vm);
        }
        if let Some(c) = res.cpu() {
            // As runc: quota 0 and period 0 are "unset", a negative quota "max".
            s.cpu_quota = match c.quota() {
                Some(q) if q > 0 => Some(Some(q as u64)),
                Some(q) if q < 0 => Some(None),
                _ => None,
            };
            s.cpu_period = c.period().filter(|p| *p > 0);
            s.cpu_burst = c.burst();
            s.cpu_shares = c.shares().filter(|s| *s > 0);
            s.cpu_idle = c.idle();
            let list = |v: &Option<String>| v.as_ref().filter(|l| !l.trim().is_empty()).cloned();
            s.cpus = list(c.cpus());
            s.mems = list(c.mems());
        }
        s.block_io = res.block_io().as_ref().and_then(BlockIo::from_spec);
        s
    }

    /// At create: the spec's settings (if any) and the VM-size limits.
    fn for_create(res: Option<&LinuxResources>, vm: VmSize) -> HostSettings {
        let mut s = res
            .map(|r| HostSettings::from_resources(r, Some(vm)))
            .unwrap_or_default();
        if s.memory_bytes.is_none() {
            s.memory_bytes = Some(limits(vm.memory_mib, vm.vcpus).memory_bytes);
        }
        s.pids = Some(limits(vm.memory_mib, vm.vcpus).pids);
        s
    }

    /// The cgroup file writes, in order. `cur_cpu_max` is the v2 cgroup's
    /// `cpu.max` now: a quota or period the spec leaves out is kept, as
    /// `runc update` keeps it.
    fn settings(&self, cur_cpu_max: &str) -> Vec<Setting> {
        let mut out = Vec::new();
        let mut push =
            |ctrl, v2: Option<(&'static str, String)>, v1: Vec<(&'static str, String)>| {
                out.push(Setting {
                    ctrl,
                    v2,
                    v1,
                    fallback: None,
                })
            };
        let both = |f: &'static str, v: String| (Some((f, v.clone())), vec![(f, v)]);
        if let Some(c) = &self.cpus {
            let (v2, v1) = both("cpuset.cpus", c.clone());
            push("cpuset", v2, v1);
        }
        if let Some(m) = &self.mems {
            let (v2, v1) = both("cpuset.mems", m.clone());
            push("cpuset", v2, v1);
        }
        if let Some(m) = self.memory_bytes {
            let m = m.to_string();
            push(
                "memory",
                Some(("memory.max", m.clone())),
                vec![("memory.limit_in_bytes", m)],
            );
        }
        if let Some(p) = self.pids {
            let (v2, v1) = both("pids.max", p.to_string());
            push("pids", v2, v1);
        }
        if let Some(i) = self.cpu_idle {
            let (v2, v1) = both("cpu.idle", i.to_string());
            push("cpu", v2, v1);
        }
        // As runc: an idle cgroup has no weight to set.
        if let Some(sh) = self.cpu_shares.filter(|_| self.cpu_idle.unwrap_or(0) == 0) {
            push(
                "cpu",
                Some(("cpu.weight", cpu_shares_to_weight(sh).to_string())),
                vec![("cpu.shares", sh.to_string())],
            );
        }
        if self.cpu_quota.is_some() || self.cpu_period.is_some() {
            let mut v1 = Vec::new();
            if let Some(p) = self.cpu_period {
                v1.push(("cpu.cfs_period_us", p.to_string()));
            }
            if let Some(q) = self.cpu_quota {
                v1.push(("cpu.cfs_quota_us", q.map_or("-1".into(), |q| q.to_string())));
            }
            let max = cpu_max(cur_cpu_max, self.cpu_quota, self.cpu_period);
            push("cpu", Some(("cpu.max", max)), v1);
        }
        if let Some(b) = self.cpu_burst {
            push(
                "cpu",
                Some(("cpu.max.burst", b.to_string())),
                vec![("cpu.cfs_burst_us", b.to_string())],
            );
        }
        if let Some(b) = &self.block_io {
            out.extend(io_settings(b));
        }
        out
    }
}

/// blockIO's writes. A weight goes to BFQ's file where the host has BFQ, as
/// is, and else to `io.weight` (the io.cost controller's) converted
/// ([`io_weight`]), as runc's fs2 does; v1 has `blkio.weight`, or BFQ's
/// `blkio.bfq.weight`. A per-device weight goes the same way (runc sets it
/// only through BFQ; io.cost takes it too). Throttles: one `io.max` line per
/// device; v1, one line per device and kind.
fn io_settings(b: &BlockIo) -> Vec<Setting> {
    let setting = |v2: (&'static str, String), v1: (&'static str, String)| Setting {
        ctrl: "io",
        v2: Some(v2),
        v1: vec![v1],
        fallback: None,
    };
    let mut out = Vec::new();
    let weights = b
        .weight
        .map(|w| (None, w))
        .into_iter()
        .chain(b.weight_devices.iter().map(|(dev, w)| (Some(*dev), *w)));
    for (dev, w) in weights {
        let converted = io_weight(w);
        // The cgroup's own weight is "default N" on v2, a device's "MAJ:MIN N".
        let (bfq, cost, v1, v1_bfq) = match dev {
            None => (
                format!("default {w}"),
                format!("default {converted}"),
                ("blkio.weight", w.to_string()),
                ("blkio.bfq.weight", w.to_string()),
            ),
            Some(d) => (
                format!("{d} {w}"),
                format!("{d} {converted}"),
                ("blkio.weight_device", format!("{d} {w}")),
                ("blkio.bfq.weight_device", format!("{d} {w}")),
            ),
        };
        let mut s = setting(("io.bfq.weight", bfq), v1);
        s.fallback = Some(Box::new(setting(("io.weight", cost), v1_bfq)));
        out.push(s);
    }
    for ((dev, th), line) in b.throttles.iter().zip(b.io_max_lines()) {
        out.push(Setting {
            ctrl: "io",
            v2: Some(("io.max", line)),
            v1: b.v1_throttles(*dev, th),
            fallback: None,
        });
    }
    out
}

/// What of `res` the guest gets: all but `cpu.cpus`, `cpu.mems` and
/// `blockIO`. cpus and mems name the host's CPUs and memory nodes: they pin
/// the VM on the host ([`HostSettings`]) and mean nothing in the guest,
/// whose CPUs are its vCPUs (a guest with fewer vCPUs than the highest CPU
/// named would refuse them with EINVAL, and the container would not start).
/// blockIO names host block devices and limits I/O that happens on the
/// host, in husk-vmm; the guest has neither the devices nor an io
/// controller. Stripped here rather than ignored by the agent, so that a
/// guest image of any age takes Docker's specs (every one has a blockIO
/// section), and the agent keeps refusing what it cannot apply.
pub fn for_guest(res: &mut LinuxResources) {
    if let Some(c) = res.cpu_mut() {
        c.set_cpus(None);
        c.set_mems(None);
    }
    res.set_block_io(None);
}

/// [`for_guest`] on the spec's `linux.resources`.
pub fn spec_for_guest(spec: &mut Spec) {
    if let Some(r) = spec
        .linux_mut()
        .as_mut()
        .and_then(|l| l.resources_mut().as_mut())
    {
        for_guest(r);
    }
}

/// v2 `cpu.max` ("QUOTA PERIOD", QUOTA a number or "max") from the current
/// one and what changes; a new cgroup's is "max 100000".
pub fn cpu_max(current: &str, quota: Option<Option<u64>>, period: Option<u64>) -> String {
    let mut cur = current.split_whitespace();
    let cur_quota = cur
        .next()
        .filter(|q| *q == "max" || q.parse::<u64>().is_ok())
        .unwrap_or("max");
    let cur_period = cur
        .next()
        .filter(|p| p.parse::<u64>().is_ok())
        .unwrap_or("100000");
    let quota = match quota {
        Some(Some(q)) => q.to_string(),
        Some(None) => "max".to_string(),
        None => cur_quota.to_string(),
    };
    let period = period.map_or(cur_period.to_string(), |p| p.to_string());
    format!("{quota} {period}")
}

/// One value for the host cgroup: its file in a v2 cgroup, or its files in
/// the v1 hierarchy of controller `ctrl` (empty: v1 has no such thing).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Setting {
    /// The v2 controller's name (v1's is [`Setting::v1_ctrl`]).
    ctrl: &'static str,
    v2: Option<(&'static str, String)>,
    v1: Vec<(&'static str, String)>,
    /// What to write where this setting's files are absent (BFQ's weight
    /// files exist only with BFQ loaded: else io.cost's).
    fallback: Option<Box<Setting>>,
}

impl Setting {
    /// The VM-size limits are best effort, as they always were (a host may
    /// keep memory or pids from us); what the spec asks must be applied.
    fn required(&self) -> bool {
        !matches!(self.ctrl, "memory" | "pids")
    }

    /// The file a refusal names: the last resort's, the one every host
    /// with the controller has.
    fn name(&self) -> &'static str {
        if let Some(f) = &self.fallback {
            return f.name();
        }
        self.v2
            .as_ref()
            .map(|(f, _)| *f)
            .or(self.v1.first().map(|(f, _)| *f))
            .unwrap_or(self.ctrl)
    }

    fn v1_ctrl(&self) -> &'static str {
        match self.ctrl {
            "io" => "blkio",
            c => c,
        }
    }

    /// The writes for this setting in hierarchy `h` at `dir`: empty when
    /// `h` does not take it, or when one of its files (and its fallback's)
    /// is absent there.
    fn writes(&self, h: &Hierarchy, dir: &Path) -> Vec<(PathBuf, &str)> {
        let own = self.own_writes(h, dir);
        match &self.fallback {
            Some(f) if own.is_empty() => f.writes(h, dir),
            _ => own,
        }
    }

    fn own_writes(&self, h: &Hierarchy, dir: &Path) -> Vec<(PathBuf, &str)> {
        let (_, v2, ctrls) = h;
        let files: Vec<(PathBuf, &str)> = if *v2 {
            self.v2
                .iter()
                .map(|(f, v)| (dir.join(f), v.as_str()))
                .collect()
        } else if ctrls.iter().any(|c| c == self.v1_ctrl()) {
            self.v1
                .iter()
                .map(|(f, v)| (dir.join(f), v.as_str()))
                .collect()
        } else {
            Vec::new()
        };
        if files.iter().all(|(f, _)| f.exists()) {
            files
        } else {
            Vec::new()
        }
    }
}

/// Fails, before anything is written, if a setting the spec asks for has
/// nowhere to go (no controller for it in any hierarchy).
fn check_available(hs: &[Hierarchy], rel: &Path, settings: &[Setting]) -> Result<(), CgroupError> {
    for s in settings.iter().filter(|s| s.required()) {
        if !hs.iter().any(|h| !s.writes(h, &h.0.join(rel)).is_empty()) {
            let dir = hs.first().map(|h| h.0.join(rel)).unwrap_or_default();
            return Err(CgroupError::Unsupported(
                dir,
                s.name(),
                format!("{} controller", s.ctrl),
            ));
        }
    }
    Ok(())
}

fn apply_settings(h: &Hierarchy, dir: &Path, settings: &[Setting]) -> Result<(), CgroupError> {
    for s in settings {
        for (file, value) in s.writes(h, dir) {
            write(&file, value)?;
        }
    }
    Ok(())
}

/// The v2 `cpu.max` of `rel` now (the first v2 hierarchy's), or a new
/// cgroup's.
fn current_cpu_max(hs: &[Hierarchy], rel: &Path) -> String {
    hs.iter()
        .filter(|h| h.1)
        .find_map(|h| std::fs::read_to_string(h.0.join(rel).join("cpu.max")).ok())
        .unwrap_or_else(|| "max 100000".into())
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

/// Creates the container's cgroup, sets the limits for the VM size, the
/// spec's `linux.resources` when `spec_limits` ([`HostSettings`]) and the
/// device policy ([`crate::devices`]) and moves the calling process (the
/// monitor) into it; records it in `state_dir`. A cgroup that already has
/// processes is refused, as runc does: `cgroupsPath` could name someone
/// else's (`/system.slice/sshd.service`), whose limits we would set and
/// whose processes `delete` would kill. `spec_limits` is false for a CRI
/// pod's VM, which holds every container of the pod: the pod's limits are
/// the kubelet's, on the parent cgroup.
pub fn enter(
    state_dir: &Path,
    spec: &Spec,
    id: &str,
    memory_mib: u32,
    vcpus: u8,
    spec_limits: bool,
) -> Result<(), CgroupError> {
    let vm = VmSize { memory_mib, vcpus };
    enter_in(&hierarchies()?, state_dir, spec, id, vm, spec_limits)
}

type Hierarchy = (PathBuf, bool, Vec<String>);

fn enter_in(
    hierarchies: &[Hierarchy],
    state_dir: &Path,
    spec: &Spec,
    id: &str,
    vm: VmSize,
    spec_limits: bool,
) -> Result<(), CgroupError> {
    let linux = spec.linux().as_ref();
    let cgroups_path = linux.and_then(|l| l.cgroups_path().clone());
    let rel = relative_path(cgroups_path.as_ref().and_then(|p| p.to_str()), id)?;
    let resources = linux
        .and_then(|l| l.resources().as_ref())
        .filter(|_| spec_limits);
    let wanted = HostSettings::for_create(resources, vm);
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
    create_in(hierarchies, &rel)?;
    let settings = wanted.settings(&current_cpu_max(hierarchies, &rel));
    let joined = check_available(hierarchies, &rel, &settings).and_then(|()| {
        for h in hierarchies {
            let (mnt, v2, ctrls) = h;
            let dir = mnt.join(&rel);
            if *v2 && !v1_devices {
                crate::devices::apply_v2(&dir).map_err(|e| CgroupError::Devices(dir.clone(), e))?;
            }
            if !v2 && ctrls.iter().any(|c| c == "devices") {
                crate::devices::apply_v1(&dir).map_err(|e| CgroupError::Devices(dir.clone(), e))?;
            }
            apply_settings(h, &dir, &settings)?;
            write(&dir.join("cgroup.procs"), &pid)?;
        }
        Ok(())
    });
    if let Err(e) = joined {
        // Not recorded, so `delete` would never remove it; it is empty (a
        // hierarchy already joined stays, busy), as runc removes a cgroup it
        // could not set up.
        for (mnt, _, _) in hierarchies {
            let _ = std::fs::remove_dir(mnt.join(&rel));
        }
        return Err(e);
    }
    let record = Record {
        rel,
        vm: Some(vm),
        spec_limits,
    };
    let path = state_dir.join(RECORD);
    std::fs::write(&path, record.to_string()).map_err(|e| CgroupError::Io(path, e))
}

/// Creates cgroup `rel` in every hierarchy, its controllers enabled (v2) or
/// its cpuset filled in (v1).
fn create_in(hierarchies: &[Hierarchy], rel: &Path) -> Result<(), CgroupError> {
    for (mnt, v2, ctrls) in hierarchies {
        let dir = mnt.join(rel);
        if *v2 {
            enable_v2_controllers(mnt, rel);
        }
        std::fs::create_dir_all(&dir).map_err(|e| CgroupError::Io(dir.clone(), e))?;
        if !v2 && ctrls.iter().any(|c| c == "cpuset") {
            inherit_cpuset(mnt, rel);
        }
    }
    Ok(())
}

/// What `enter` records in the state directory: the cgroup, the VM size
/// and whether the spec's limits apply there. Line 1 is the path alone (all
/// an older husk wrote).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    rel: PathBuf,
    vm: Option<VmSize>,
    spec_limits: bool,
}

impl std::fmt::Display for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}", self.rel.display())?;
        if let Some(vm) = self.vm {
            writeln!(
                f,
                "{} {} {}",
                vm.memory_mib,
                vm.vcpus,
                u8::from(self.spec_limits)
            )?;
        }
        Ok(())
    }
}

impl Record {
    /// None: no record, or not one `enter` could have written.
    fn load(state_dir: &Path) -> Result<Option<Record>, CgroupError> {
        let path = state_dir.join(RECORD);
        let text = match std::fs::read(&path) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CgroupError::Io(path, e)),
        };
        Ok(Record::parse(&text))
    }

    fn parse(text: &str) -> Option<Record> {
        let mut lines = text.lines();
        let rel = PathBuf::from(lines.next()?);
        if rel.as_os_str().is_empty()
            || rel.is_absolute()
            || rel.components().any(|c| !matches!(c, Component::Normal(_)))
        {
            return None;
        }
        let nums: Vec<u32> = lines
            .next()
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        let (vm, spec_limits) = match nums[..] {
            [m, v, l] => (
                u8::try_from(v).ok().map(|vcpus| VmSize {
                    memory_mib: m,
                    vcpus,
                }),
                l == 1,
            ),
            // An older husk's: it applied only the VM-size limits.
            _ => (None, false),
        };
        Some(Record {
            rel,
            vm,
            spec_limits,
        })
    }
}

/// A `husk update` (or the shim's Update) of the host cgroup, checked and
/// ready: [`prepare_update`] before the guest is updated, [`Self::apply`]
/// after, so a refusal on either side changes nothing.
#[derive(Debug)]
pub struct Update {
    rel: PathBuf,
    hierarchies: Vec<Hierarchy>,
    settings: Vec<Setting>,
}

/// Checks what updating the host cgroup recorded in `state_dir` to `res`
/// takes. None: there is nothing to do there (no cgroup recorded, or one
/// whose limits are not the spec's: a CRI pod's, an older husk's).
pub fn prepare_update(
    state_dir: &Path,
    res: &LinuxResources,
) -> Result<Option<Update>, CgroupError> {
    let Some(record) = Record::load(state_dir)? else {
        return Ok(None);
    };
    if !record.spec_limits {
        return Ok(None);
    }
    prepare_update_in(hierarchies()?, record, res).map(Some)
}

fn prepare_update_in(
    hierarchies: Vec<Hierarchy>,
    record: Record,
    res: &LinuxResources,
) -> Result<Update, CgroupError> {
    let rel = record.rel;
    let wanted = HostSettings::from_resources(res, record.vm);
    let settings = wanted.settings(&current_cpu_max(&hierarchies, &rel));
    check_available(&hierarchies, &rel, &settings)?;
    Ok(Update {
        rel,
        hierarchies,
        settings,
    })
}

impl Update {
    pub fn apply(&self) -> Result<(), CgroupError> {
        for h in &self.hierarchies {
            apply_settings(h, &h.0.join(&self.rel), &self.settings)?;
        }
        Ok(())
    }
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
/// for its children (runc enables them the same way). Best effort: a parent
/// that has processes of its own (or a host that withholds a controller)
/// refuses; a VM-size limit is then simply not there, and a limit the spec
/// asks for fails with [`CgroupError::Unsupported`].
fn enable_v2_controllers(root: &Path, rel: &Path) {
    let mut dir = root.to_path_buf();
    let parents: Vec<_> = rel.components().collect();
    for (i, c) in parents.iter().enumerate() {
        let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
        for ctrl in ["memory", "pids", "cpu", "cpuset", "io"] {
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
    // Only a path `enter` could have written.
    let Some(Record { rel, .. }) = Record::load(state_dir)? else {
        return Ok(());
    };
    for (mnt, _, _) in hierarchies()? {
        let dir = mnt.join(&rel);
        kill_all(&dir);
        // A killed VMM leaves the cgroup only once its guest memory and KVM state are torn
        // down, which takes seconds on a slow (nested, emulated) host.
        let deadline = Instant::now() + Duration::from_secs(10);
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

    const VM64: VmSize = VmSize {
        memory_mib: 64,
        vcpus: 1,
    };
    const MIB: u64 = 1 << 20;

    fn resources(v: serde_json::Value) -> LinuxResources {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn cpu_max_formatting() {
        let new = "max 100000";
        assert_eq!(cpu_max(new, Some(Some(50_000)), None), "50000 100000");
        assert_eq!(
            cpu_max(new, Some(Some(20_000)), Some(50_000)),
            "20000 50000"
        );
        assert_eq!(cpu_max(new, Some(None), Some(50_000)), "max 50000");
        // What the update leaves out stays (runc update keeps it too).
        assert_eq!(cpu_max("20000 100000\n", None, Some(50_000)), "20000 50000");
        assert_eq!(
            cpu_max("20000 50000", Some(Some(30_000)), None),
            "30000 50000"
        );
        assert_eq!(cpu_max("20000 50000", Some(None), None), "max 50000");
        // An unreadable current value counts as a new cgroup's.
        assert_eq!(cpu_max("", Some(Some(1000)), None), "1000 100000");
        assert_eq!(cpu_max("junk -5", None, Some(7000)), "max 7000");
        // From the spec: quota and period 0 are unset, a negative quota max.
        let s = |q: i64, p: u64| {
            HostSettings::from_resources(
                &resources(serde_json::json!({"cpu": {"quota": q, "period": p}})),
                None,
            )
        };
        assert_eq!((s(0, 0).cpu_quota, s(0, 0).cpu_period), (None, None));
        assert_eq!(s(-1, 0).cpu_quota, Some(None));
        assert_eq!(s(50_000, 0).cpu_quota, Some(Some(50_000)));
        assert_eq!(s(50_000, 25_000).cpu_period, Some(25_000));
    }

    #[test]
    fn host_memory_holds_the_whole_vm() {
        use crate::container::sizing::{vm_size, MEMORY_OVERHEAD_MIB};
        let vm = |m| {
            Some(VmSize {
                memory_mib: m,
                vcpus: 1,
            })
        };
        let over = u64::from(MEMORY_OVERHEAD_MIB) + VMM_OVERHEAD_MIB;
        // The spec's limit + the fixed overhead of guest kernel and VMM.
        assert_eq!(
            host_memory_bytes(Some(128 << 20), vm(192)),
            Some((128 + over) * MIB)
        );
        assert_eq!(
            host_memory_bytes(Some(128 << 20), None),
            Some((128 + over) * MIB)
        );
        // Rounded up to MiB, as the VM size is.
        assert_eq!(
            host_memory_bytes(Some((32 << 20) + 1), None),
            Some((33 + over) * MIB)
        );
        // Above the VM's size (a raise the VM cannot follow): as asked.
        assert_eq!(
            host_memory_bytes(Some(1 << 30), vm(192)),
            Some((1024 + over) * MIB)
        );
        // Never less than the whole VM needs (a bigger VM from the
        // annotations, a lowering update); no limit: what the VM needs.
        assert_eq!(
            host_memory_bytes(Some(32 << 20), vm(1024)),
            Some((1024 + VMM_OVERHEAD_MIB) * MIB)
        );
        for unlimited in [-1, 0, i64::MAX] {
            assert_eq!(
                host_memory_bytes(Some(unlimited), vm(192)),
                Some((192 + VMM_OVERHEAD_MIB) * MIB)
            );
            assert_eq!(host_memory_bytes(Some(unlimited), None), None);
        }
        assert_eq!(host_memory_bytes(None, None), None);
        // A VM sized from the spec gets exactly the VM-size limit: the same
        // number whichever way it is read.
        for limit in [1 << 20, 32 << 20, 100_000_000, 512 << 20] {
            let spec: Spec = serde_json::from_value(serde_json::json!({
                "ociVersion": "1.0.2",
                "linux": {"resources": {"memory": {"limit": limit}}}
            }))
            .unwrap();
            let v = vm_size(&spec, VM64).unwrap();
            assert_eq!(
                host_memory_bytes(Some(limit), Some(v)),
                Some(limits(v.memory_mib, v.vcpus).memory_bytes),
                "{limit}"
            );
        }
    }

    #[test]
    fn settings_for_v2_and_v1() {
        let r = resources(serde_json::json!({
            "memory": {"limit": 134217728, "swap": 134217728},
            "pids": {"limit": 10},
            "cpu": {"quota": 20000, "period": 50000, "shares": 2048, "burst": 1000,
                    "cpus": "0-1", "mems": "0"},
            "blockIO": {"weight": 10}
        }));
        let vm = VmSize {
            memory_mib: 192,
            vcpus: 1,
        };
        let s = HostSettings::for_create(Some(&r), vm);
        assert_eq!(s.memory_bytes, Some(256 * MIB));
        // The host's pids limit is the VM's, not the spec's.
        assert_eq!(s.pids, Some(PIDS_BASE + 1));
        let settings = s.settings("max 100000");
        let v2: Vec<_> = settings
            .iter()
            .filter_map(|s| s.v2.clone())
            .map(|(f, v)| format!("{f}={v}"))
            .collect();
        assert_eq!(
            v2,
            [
                "cpuset.cpus=0-1",
                "cpuset.mems=0",
                "memory.max=268435456",
                "pids.max=129",
                "cpu.weight=174",
                "cpu.max=20000 50000",
                "cpu.max.burst=1000",
                "io.bfq.weight=default 10"
            ]
        );
        let v1: Vec<_> = settings
            .iter()
            .flat_map(|s| s.v1.iter().map(move |(f, v)| format!("{}:{f}={v}", s.ctrl)))
            .collect();
        assert_eq!(
            v1,
            [
                "cpuset:cpuset.cpus=0-1",
                "cpuset:cpuset.mems=0",
                "memory:memory.limit_in_bytes=268435456",
                "pids:pids.max=129",
                "cpu:cpu.shares=2048",
                "cpu:cpu.cfs_period_us=50000",
                "cpu:cpu.cfs_quota_us=20000",
                "cpu:cpu.cfs_burst_us=1000",
                "io:blkio.weight=10"
            ]
        );
        // Idle: no weight, as runc.
        let idle = HostSettings::from_resources(
            &resources(serde_json::json!({"cpu": {"shares": 2048, "idle": 1}})),
            None,
        );
        let files: Vec<_> = idle
            .settings("max 100000")
            .iter()
            .filter_map(|s| s.v2.clone())
            .collect();
        assert_eq!(files, [("cpu.idle", "1".to_string())]);
        // Without the spec's limits (a CRI pod's VM): the VM size only.
        let pod = HostSettings::for_create(None, vm);
        assert_eq!(
            pod,
            HostSettings {
                memory_bytes: Some(256 * MIB),
                pids: Some(PIDS_BASE + 1),
                ..Default::default()
            }
        );
    }

    #[test]
    fn cpuset_and_block_io_stay_on_the_host() {
        let mut spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"resources": {"cpu": {"cpus": "2-3", "mems": "1", "quota": 5000},
                                    "blockIO": {"weight": 500}}}
        }))
        .unwrap();
        spec_for_guest(&mut spec);
        let res = spec.linux().as_ref().unwrap().resources().as_ref().unwrap();
        let cpu = res.cpu().clone().unwrap();
        assert_eq!((cpu.cpus().as_deref(), cpu.mems().as_deref()), (None, None));
        assert_eq!(cpu.quota(), Some(5000));
        assert!(res.block_io().is_none());
        let mut none: Spec =
            serde_json::from_value(serde_json::json!({"ociVersion": "1.0.2"})).unwrap();
        spec_for_guest(&mut none);
        assert!(none
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
            .is_none());
    }

    /// blockIO in a fake v2 cgroup: BFQ's file when it is there, io.cost's
    /// (converted) when not, io.max per device; nothing to write it to
    /// fails before anything is written; Docker's empty one needs nothing.
    #[test]
    fn block_io_on_v2_and_v1() {
        let base = std::env::temp_dir().join(format!("husk-cg-io-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (state, v2) = (base.join("state"), base.join("v2"));
        let dir = v2.join("c");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        // Each enter joins the cgroup: start over from empty ones.
        let fresh = |files: &[&str]| {
            let _ = std::fs::remove_dir_all(base.join("v1"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            for f in ["cgroup.procs", "memory.max", "pids.max", "cpu.max"]
                .iter()
                .chain(files)
            {
                std::fs::write(dir.join(f), "").unwrap();
            }
        };
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        let spec = |io: serde_json::Value| -> Spec {
            serde_json::from_value(serde_json::json!({
                "ociVersion": "1.0.2",
                "linux": {"cgroupsPath": "/c", "resources": {"blockIO": io}}
            }))
            .unwrap()
        };
        // A v1 devices hierarchy takes the device policy (v2's needs BPF).
        let devices = (base.join("v1"), false, vec!["devices".to_string()]);
        let h = vec![(v2.clone(), true, Vec::new()), devices.clone()];
        let asked = spec(serde_json::json!({
            "weight": 500,
            "throttleReadBpsDevice": [{"major": 7, "minor": 0, "rate": 1048576}],
            "throttleWriteIOPSDevice": [{"major": 7, "minor": 0, "rate": 100}]
        }));

        // io.cost only (no BFQ): the converted weight.
        fresh(&["io.weight", "io.max"]);
        enter_in(&h, &state, &asked, "c", VM64, true).unwrap();
        assert_eq!(read("io.weight"), "default 4950");
        assert_eq!(read("io.max"), "7:0 rbps=1048576 wiops=100");
        // BFQ: its own scale, as is.
        fresh(&["io.weight", "io.bfq.weight", "io.max"]);
        enter_in(&h, &state, &asked, "c", VM64, true).unwrap();
        assert_eq!(read("io.bfq.weight"), "default 500");
        assert_eq!(read("io.weight"), "");
        // No io controller: refused, nothing written.
        fresh(&[]);
        let e = enter_in(&h, &state, &asked, "c", VM64, true).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "cgroup {}: cannot apply io.weight: the host's cgroup has no io controller here",
                dir.display()
            )
        );
        assert_eq!(read("memory.max"), "");
        // Docker's blockIO asks for nothing: no io controller needed.
        enter_in(
            &h,
            &state,
            &spec(serde_json::json!({"weight": 0})),
            "c",
            VM64,
            true,
        )
        .unwrap();
        // An update with a weight: to the same file.
        fresh(&["io.weight", "io.max"]);
        let record = Record {
            rel: PathBuf::from("c"),
            vm: Some(VM64),
            spec_limits: true,
        };
        prepare_update_in(
            h.clone(),
            record,
            &resources(serde_json::json!({"blockIO": {"weight": 1000}})),
        )
        .unwrap()
        .apply()
        .unwrap();
        assert_eq!(read("io.weight"), "default 10000");

        // v1: blkio's files.
        let v1 = vec![(v2.clone(), false, vec!["blkio".to_string()]), devices];
        fresh(&[
            "blkio.weight",
            "blkio.weight_device",
            "blkio.throttle.read_bps_device",
            "blkio.throttle.write_iops_device",
        ]);
        let with_dev = spec(serde_json::json!({
            "weight": 500,
            "weightDevice": [{"major": 7, "minor": 1, "weight": 20}],
            "throttleReadBpsDevice": [{"major": 7, "minor": 0, "rate": 1048576}],
            "throttleWriteIOPSDevice": [{"major": 7, "minor": 0, "rate": 100}]
        }));
        enter_in(&v1, &state, &with_dev, "c", VM64, true).unwrap();
        assert_eq!(read("blkio.weight"), "500");
        assert_eq!(read("blkio.weight_device"), "7:1 20");
        assert_eq!(read("blkio.throttle.read_bps_device"), "7:0 1048576");
        assert_eq!(read("blkio.throttle.write_iops_device"), "7:0 100");
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn record_round_trip() {
        let r = Record {
            rel: PathBuf::from("a/b"),
            vm: Some(VmSize {
                memory_mib: 192,
                vcpus: 2,
            }),
            spec_limits: true,
        };
        assert_eq!(Record::parse(&r.to_string()), Some(r));
        // An older husk's record: the path alone, no spec limits on the host.
        let old = Record::parse("husk/c1").unwrap();
        assert_eq!(
            (old.rel.to_str(), old.vm, old.spec_limits),
            (Some("husk/c1"), None, false)
        );
        for bad in ["", "/etc", "a/../../b", "../x"] {
            assert_eq!(Record::parse(bad), None, "{bad:?}");
        }
    }

    /// A fake hybrid layout in a temp dir (a v2 tree whose controller files
    /// exist, and a v1 devices hierarchy that takes the device policy):
    /// what `enter` and an update write, and what they refuse.
    #[test]
    fn enter_and_update_write_the_spec_limits() {
        let base = std::env::temp_dir().join(format!("husk-cg-fake-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (state, v2, v1) = (base.join("state"), base.join("v2"), base.join("v1"));
        let dir = v2.join("pod/c");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir_all(&v1).unwrap();
        let files = [
            ("cgroup.procs", ""),
            ("memory.max", "max"),
            ("pids.max", "max"),
            ("cpu.max", "max 100000"),
            ("cpu.weight", "100"),
            ("cpuset.cpus", ""),
            ("cpuset.mems", ""),
        ];
        for (f, v) in files {
            std::fs::write(dir.join(f), v).unwrap();
        }
        let h = vec![
            (v2.clone(), true, Vec::new()),
            (v1.clone(), false, vec!["devices".to_string()]),
        ];
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"cgroupsPath": "/pod/c", "resources": {
                "memory": {"limit": 134217728},
                "cpu": {"quota": 20000, "period": 100000, "shares": 1024, "cpus": "0", "mems": "0"}
            }}
        }))
        .unwrap();
        let vm = VmSize {
            memory_mib: 192,
            vcpus: 1,
        };
        enter_in(&h, &state, &spec, "c", vm, true).unwrap();
        assert_eq!(read("cpu.max"), "20000 100000");
        assert_eq!(read("cpu.weight"), "100");
        assert_eq!(read("cpuset.cpus"), "0");
        assert_eq!(read("cpuset.mems"), "0");
        assert_eq!(read("memory.max"), (256 * MIB).to_string());
        assert_eq!(read("pids.max"), (PIDS_BASE + 1).to_string());
        assert_eq!(read("cgroup.procs"), std::process::id().to_string());
        let record = Record::load(&state).unwrap().unwrap();
        assert!(record.spec_limits);
        assert_eq!(record.vm, Some(vm));

        // An update: the period alone keeps the quota; memory follows the
        // spec's new limit up, and down to what the VM needs.
        let upd = |v| prepare_update_in(h.clone(), record.clone(), &resources(v));
        upd(serde_json::json!({"memory": {"limit": 1073741824}, "cpu": {"period": 50000}}))
            .unwrap()
            .apply()
            .unwrap();
        assert_eq!(read("cpu.max"), "20000 50000");
        assert_eq!(read("memory.max"), ((1024 + 128) * MIB).to_string());
        upd(serde_json::json!({"memory": {"limit": 33554432}}))
            .unwrap()
            .apply()
            .unwrap();
        assert_eq!(read("memory.max"), (256 * MIB).to_string());
        // Nothing to write cpu.idle to: refused before anything is written.
        let e = upd(serde_json::json!({"cpu": {"idle": 1, "quota": 10000}})).unwrap_err();
        assert!(e.to_string().contains("cpu.idle"), "{e}");
        assert_eq!(read("cpu.max"), "20000 50000");

        // A pod's VM (no spec limits): only the VM size, and updates leave
        // the host alone.
        for d in [&dir, &v1.join("pod/c")] {
            std::fs::write(d.join("cgroup.procs"), "").unwrap();
        }
        std::fs::write(dir.join("cpu.max"), "max 100000").unwrap();
        enter_in(&h, &state, &spec, "c", vm, false).unwrap();
        assert_eq!(read("cpu.max"), "max 100000");
        assert_eq!(
            read("memory.max"),
            ((192 + VMM_OVERHEAD_MIB) * MIB).to_string()
        );
        let r = resources(serde_json::json!({"cpu": {"quota": 1000}}));
        assert!(prepare_update(&state, &r).unwrap().is_none());
        let _ = std::fs::remove_dir_all(&base);
    }

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
        let e = enter_in(
            &h,
            &state,
            &spec("/system.slice/sshd.service"),
            "c",
            VM64,
            true,
        )
        .unwrap_err();
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
            enter_in(&h, &state, &parent, "c", VM64, true),
            Err(CgroupError::NotEmpty(_, 1))
        ));
        // An empty (or new) one is joined and recorded.
        enter_in(&h, &state, &spec("/husk-empty"), "c", VM64, true).unwrap();
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
    /// `cargo test -p husk --lib cgroups -- --ignored`. The spec's limits
    /// in a scratch cgroup of each hierarchy, which no process joins; removed
    /// afterwards.
    #[test]
    #[ignore]
    fn spec_limits_on_this_hosts_cgroups() {
        let hs = hierarchies().unwrap();
        let rel = PathBuf::from(format!("husk-unit-spec-{}", std::process::id()));
        create_in(&hs, &rel).unwrap();
        let vm = VmSize {
            memory_mib: 192,
            vcpus: 1,
        };
        let r = resources(serde_json::json!({
            "memory": {"limit": 134217728},
            "cpu": {"quota": 20000, "period": 100000, "shares": 512, "cpus": "0", "mems": "0"}
        }));
        let settings = HostSettings::for_create(Some(&r), vm).settings(&current_cpu_max(&hs, &rel));
        let applied = check_available(&hs, &rel, &settings).and_then(|()| {
            for h in &hs {
                apply_settings(h, &h.0.join(&rel), &settings)?;
            }
            prepare_update_in(
                hs.clone(),
                Record {
                    rel: rel.clone(),
                    vm: Some(vm),
                    spec_limits: true,
                },
                &resources(
                    serde_json::json!({"memory": {"limit": 67108864}, "cpu": {"period": 50000}}),
                ),
            )?
            .apply()
        });
        let mut seen = Vec::new();
        for (mnt, v2, ctrls) in &hs {
            let d = mnt.join(&rel);
            let read = |f: &str| std::fs::read_to_string(d.join(f)).map(|v| v.trim().to_string());
            if *v2 {
                if let Ok(v) = read("cpu.max") {
                    seen.push(format!("cpu.max={v}"));
                    seen.push(format!("cpu.weight={}", read("cpu.weight").unwrap()));
                }
                if let Ok(v) = read("memory.max") {
                    seen.push(format!("memory={v}"));
                }
                if let Ok(v) = read("cpuset.cpus") {
                    seen.push(format!("cpus={v}"));
                }
            }
            for c in ctrls {
                match c.as_str() {
                    "cpu" => {
                        seen.push(format!("cpu.shares={}", read("cpu.shares").unwrap()));
                        seen.push(format!(
                            "cfs={} {}",
                            read("cpu.cfs_quota_us").unwrap(),
                            read("cpu.cfs_period_us").unwrap()
                        ));
                    }
                    "memory" => {
                        seen.push(format!("memory={}", read("memory.limit_in_bytes").unwrap()))
                    }
                    "cpuset" => seen.push(format!("cpus={}", read("cpuset.cpus").unwrap())),
                    _ => {}
                }
            }
        }
        for (mnt, _, _) in &hs {
            let _ = std::fs::remove_dir(mnt.join(&rel));
        }
        applied.unwrap();
        seen.sort();
        seen.dedup();
        let mem = format!("memory={}", 256 * MIB);
        let want_v2 = ["cpu.max=20000 50000", "cpu.weight=59", "cpus=0", &mem];
        let want_v1 = ["cfs=20000 50000", "cpu.shares=512", "cpus=0", &mem];
        let mut want: Vec<&str> = if hs.iter().any(|h| !h.1) {
            want_v1.to_vec()
        } else {
            want_v2.to_vec()
        };
        want.sort();
        assert_eq!(seen, want);
        for (mnt, _, _) in &hs {
            assert!(!mnt.join(&rel).exists());
        }
    }

    /// Needs root, a writable cgroup file system with an io (v2) or blkio
    /// (v1) controller and a block device: `cargo test -p husk --lib cgroups
    /// -- --ignored`. A throttle on this host's first disk in a scratch
    /// cgroup, read back as the kernel has it; removed afterwards.
    #[test]
    #[ignore]
    fn block_io_on_this_hosts_cgroups() {
        let mut disks: Vec<String> = std::fs::read_dir("/sys/block")
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        disks.sort_by_key(|d| (d.starts_with("loop") || d.starts_with("zram"), d.clone()));
        let disk = disks.first().expect("no block device in /sys/block");
        let dev = std::fs::read_to_string(format!("/sys/block/{disk}/dev")).unwrap();
        let dev = dev.trim();
        let (major, minor) = dev.split_once(':').unwrap();
        let hs = hierarchies().unwrap();
        let rel = PathBuf::from(format!("husk-unit-io-{}", std::process::id()));
        create_in(&hs, &rel).unwrap();
        let r = resources(serde_json::json!({"blockIO": {
            "throttleReadBpsDevice": [{"major": major.parse::<i64>().unwrap(),
                                       "minor": minor.parse::<i64>().unwrap(), "rate": 1048576}]
        }}));
        let settings = HostSettings::from_resources(&r, None).settings("max 100000");
        let applied = check_available(&hs, &rel, &settings).and_then(|()| {
            for h in &hs {
                apply_settings(h, &h.0.join(&rel), &settings)?;
            }
            Ok(())
        });
        let mut seen = Vec::new();
        for (mnt, _, _) in &hs {
            for f in ["io.max", "blkio.throttle.read_bps_device"] {
                if let Ok(v) = std::fs::read_to_string(mnt.join(&rel).join(f)) {
                    seen.extend(v.lines().map(|l| format!("{f}={l}")));
                }
            }
        }
        for (mnt, _, _) in &hs {
            let _ = std::fs::remove_dir(mnt.join(&rel));
        }
        applied.unwrap();
        let v2 = format!("io.max={dev} rbps=1048576 wbps=max riops=max wiops=max");
        let v1 = format!("blkio.throttle.read_bps_device={dev} 1048576");
        assert!(seen == [v2] || seen == [v1], "{disk}: {seen:?}");
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
        enter(&dir, &spec, "x", 64, 2, true).unwrap();
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
