//! `husk check`: can this host run husk, and if not, what to do about it
//! (in the style of `kata-runtime check`). One verdict per check; exit 0
//! only when every required one passes. `info` lines never fail: what
//! engines are configured, what only later features need.
//!
//! Every host path is read under a root (`/` but in unit tests), so the
//! verdicts can be tested against a fake host.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::ValueEnum;
use husk::config::{HuskConfig, DEFAULT_CONFIG_PATH};
use serde::Serialize;

#[derive(clap::Args)]
pub struct CheckArgs {
    #[arg(short, long, value_enum, default_value_t = CheckFormat::Text)]
    pub format: CheckFormat,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum CheckFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Fail,
    Info,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Verdict,
    pub detail: String,
    /// What to do about a failure.
    pub fix: Option<String>,
}

fn ok(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        status: Verdict::Ok,
        detail: detail.into(),
        fix: None,
    }
}

fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name,
        status: Verdict::Fail,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

fn info(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        status: Verdict::Info,
        detail: detail.into(),
        fix: None,
    }
}

/// Where husk's own tests run when this host's KVM cannot boot its guests.
const TEST_HOST_HINT: &str = "husk's own tests and demo run such hosts' guests inside the KVM \
     test host (tests/kvm-test-host/run.sh, through tests/vm-run.sh)";

pub fn check(a: &CheckArgs) -> anyhow::Result<ExitCode> {
    let config = std::env::var_os("HUSK_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    let exe = std::env::current_exe()?;
    let checks = run_checks(Path::new("/"), &config, &exe);
    let mut out = std::io::stdout().lock();
    match a.format {
        CheckFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&checks)?)?,
        CheckFormat::Text => {
            for c in &checks {
                writeln!(out, "{}", text_line(c))?;
            }
            let failed = checks.iter().filter(|c| c.status == Verdict::Fail).count();
            if failed == 0 {
                writeln!(out, "husk can run containers on this host")?;
            } else {
                writeln!(
                    out,
                    "husk cannot run containers on this host: {failed} check(s) failed"
                )?;
            }
        }
    }
    let passed = checks.iter().all(|c| c.status != Verdict::Fail);
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn text_line(c: &Check) -> String {
    let status = match c.status {
        Verdict::Ok => "ok",
        Verdict::Fail => "FAIL",
        Verdict::Info => "info",
    };
    let mut line = format!("{status:<4}  {}: {}", c.name, c.detail);
    if let Some(fix) = &c.fix {
        line.push_str(&format!("; fix: {fix}"));
    }
    line
}

/// Every check, in order, against the host under `root`, with husk's
/// configuration at `config` (resolved as `husk create` resolves it, around
/// the husk binary `exe`).
pub fn run_checks(root: &Path, config: &Path, exe: &Path) -> Vec<Check> {
    let host = Host(root.to_path_buf());
    let mut out = vec![root_user(), host.kernel_release()];
    out.extend(host.kvm());
    out.extend(guest_files(config, exe));
    out.extend(host.cgroups());
    out.push(host.tun());
    out.extend(host.engines(exe));
    out
}

fn root_user() -> Check {
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        ok("root", "running as root")
    } else {
        fail(
            "root",
            format!("running as uid {euid}"),
            "run husk as root (it creates cgroups and mounts, and starts the jailed VMM)",
        )
    }
}

struct Host(PathBuf);

impl Host {
    fn path(&self, p: &str) -> PathBuf {
        self.0.join(p.trim_start_matches('/'))
    }

    fn read(&self, p: &str) -> Option<String> {
        std::fs::read_to_string(self.path(p)).ok()
    }

    fn exists(&self, p: &str) -> bool {
        self.path(p).exists()
    }

    /// husk needs 5.12 (mount_setattr, procfs subset=pid, openat2).
    fn kernel_release(&self) -> Check {
        let Some(release) = self.read("/proc/sys/kernel/osrelease") else {
            return info("host-kernel", "cannot read /proc/sys/kernel/osrelease");
        };
        let release = release.trim().to_string();
        let mut nums = release
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<u32>().ok());
        let version = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
        if version >= (5, 12) {
            ok("host-kernel", format!("Linux {release}"))
        } else {
            fail(
                "host-kernel",
                format!("Linux {release}"),
                "husk needs Linux 5.12 or later (mount_setattr, procfs subset=pid, openat2)",
            )
        }
    }

    /// /dev/kvm, its API, and what kind of KVM it is.
    fn kvm(&self) -> Vec<Check> {
        let mut out = Vec::new();
        let dev = self.path("/dev/kvm");
        let kvm = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dev)
        {
            Ok(f) => {
                let is_char = f.metadata().is_ok_and(|m| m.file_type().is_char_device());
                if is_char {
                    out.push(ok("kvm-device", "/dev/kvm is present and read/writable"));
                    Some(f)
                } else {
                    out.push(fail(
                        "kvm-device",
                        "/dev/kvm is not a character device",
                        "remove it and load kvm_intel or kvm_amd",
                    ));
                    None
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                out.push(fail(
                    "kvm-device",
                    "no /dev/kvm",
                    "enable VT-x/AMD-V in the firmware (or nested virtualization for this \
                     VM) and load kvm_intel or kvm_amd (modprobe)",
                ));
                None
            }
            Err(e) => {
                out.push(fail(
                    "kvm-device",
                    format!("/dev/kvm cannot be opened read/write: {e}"),
                    "run husk as root, or give its user access to /dev/kvm (the kvm group)",
                ));
                None
            }
        };
        if let Some(f) = kvm {
            out.push(api_version(&f));
        }
        out.push(self.kvm_kind());
        out.extend(self.kvm_nested());
        out
    }

    /// PVM, hardware VT-x/AMD-V, or neither.
    fn kvm_kind(&self) -> Check {
        let flags = self.cpu_flags();
        let has = |f: &str| flags.iter().any(|x| x == f);
        if self.exists("/sys/module/kvm_pvm") {
            return fail(
                "kvm-kind",
                "/dev/kvm is PVM (kvm_pvm loaded): it boots only PVM-enabled guest kernels, and \
                 husk's guest kernel is an ordinary one, so no husk VM can start here",
                format!(
                    "run husk on a host with hardware KVM (VT-x/AMD-V: bare metal, or a VM \
                     with nested virtualization), or boot a PVM guest kernel; {TEST_HOST_HINT}"
                ),
            );
        }
        let (cpu, module) = if has("vmx") {
            ("Intel VT-x (vmx)", "kvm_intel")
        } else if has("svm") {
            ("AMD-V (svm)", "kvm_amd")
        } else {
            return fail(
                "kvm-kind",
                "the CPU has no vmx or svm flag: /dev/kvm (if any) cannot run ordinary guests",
                format!(
                    "enable VT-x/AMD-V in the firmware, or nested virtualization for this VM; \
                     {TEST_HOST_HINT}"
                ),
            );
        };
        if !self.exists(&format!("/sys/module/{module}")) {
            return fail(
                "kvm-kind",
                format!("hardware virtualization: {cpu}, but {module} is not loaded"),
                format!("modprobe {module}"),
            );
        }
        ok(
            "kvm-kind",
            format!("hardware virtualization: {cpu}, {module} loaded"),
        )
    }

    /// Whether this host is a VM itself, and whether its KVM offers nesting.
    fn kvm_nested(&self) -> Option<Check> {
        let under = self.cpu_flags().iter().any(|f| f == "hypervisor");
        let param = ["kvm_intel", "kvm_amd"].iter().find_map(|m| {
            let v = self.read(&format!("/sys/module/{m}/parameters/nested"))?;
            Some(format!("{m} nested={}", v.trim()))
        });
        if !under && param.is_none() {
            return None;
        }
        let mut detail = if under {
            "this host is itself a VM: husk's VMs are nested guests (slower exits)".to_string()
        } else {
            "this host is not a VM".to_string()
        };
        if let Some(p) = param {
            detail.push_str(&format!("; {p}"));
        }
        Some(info("kvm-nested", detail))
    }

    fn cpu_flags(&self) -> Vec<String> {
        let cpuinfo = self.read("/proc/cpuinfo").unwrap_or_default();
        cpuinfo
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == "flags").then(|| v.split_whitespace().map(String::from).collect())
            })
            .unwrap_or_default()
    }

    /// cgroup v2 (or v1) and the controllers `runtime/src/cgroups.rs` uses.
    fn cgroups(&self) -> Vec<Check> {
        // cpuset: `cpu.cpus`/`mems`; io: blockIO; memory and pids: the VM's
        // own limits; cpu: quota, weight.
        const NEEDED: [&str; 5] = ["cpu", "cpuset", "io", "memory", "pids"];
        if let Some(avail) = self.read("/sys/fs/cgroup/cgroup.controllers") {
            let avail: Vec<&str> = avail.split_whitespace().collect();
            let missing: Vec<&str> = NEEDED
                .iter()
                .copied()
                .filter(|c| !avail.contains(c))
                .collect();
            let mut out = vec![ok("cgroup", "cgroup v2 mounted on /sys/fs/cgroup")];
            out.push(if missing.is_empty() {
                ok(
                    "cgroup-controllers",
                    format!("{} available", NEEDED.join(", ")),
                )
            } else {
                fail(
                    "cgroup-controllers",
                    format!(
                        "missing from /sys/fs/cgroup/cgroup.controllers: {}",
                        missing.join(", ")
                    ),
                    "enable them in the kernel (CONFIG_CGROUP_*, CONFIG_BLK_CGROUP) or stop \
                     whatever withholds them (a v1 mount of the same controller)",
                )
            });
            return out;
        }
        // v1: one hierarchy per controller (`cpu` may be a link to `cpu,cpuacct`).
        let v1 = |c: &'static str| {
            let name = if c == "io" { "blkio" } else { c };
            (
                name,
                self.exists(&format!("/sys/fs/cgroup/{name}/cgroup.procs")),
            )
        };
        let found: Vec<(&str, bool)> = NEEDED.iter().map(|c| v1(c)).collect();
        if found.iter().all(|(_, there)| !there) {
            return vec![fail(
                "cgroup",
                "no cgroup file system on /sys/fs/cgroup",
                "mount cgroup2 on /sys/fs/cgroup (mount -t cgroup2 none /sys/fs/cgroup)",
            )];
        }
        let missing: Vec<&str> = found
            .iter()
            .filter(|(_, there)| !there)
            .map(|(n, _)| *n)
            .collect();
        let mut out = vec![ok(
            "cgroup",
            "cgroup v1 hierarchies on /sys/fs/cgroup (husk takes v1; v2 is preferred)",
        )];
        out.push(if missing.is_empty() {
            ok(
                "cgroup-controllers",
                "cpu, cpuset, blkio, memory, pids mounted",
            )
        } else {
            fail(
                "cgroup-controllers",
                format!("v1 hierarchies missing: {}", missing.join(", ")),
                "mount them under /sys/fs/cgroup, or boot with cgroup v2",
            )
        });
        out
    }

    /// Every network carried into a VM goes through a tap (docs/architecture.md, "Networking").
    fn tun(&self) -> Check {
        let tun = self.path("/dev/net/tun");
        match std::fs::metadata(&tun) {
            Ok(m) if m.file_type().is_char_device() => {
                ok("tun", "/dev/net/tun present (guest networking)")
            }
            _ => fail(
                "tun",
                "no /dev/net/tun: containers on an engine's network (podman, Docker, CNI) \
                 cannot be created",
                "modprobe tun",
            ),
        }
    }

    /// Which engines' configurations name husk: never a failure.
    fn engines(&self, exe: &Path) -> Vec<Check> {
        let mut out = Vec::new();
        let podman = self.path("/etc/containers/containers.conf");
        out.push(info(
            "podman",
            match std::fs::read_to_string(&podman) {
                Ok(t) => match podman_runtimes(&t) {
                    Ok(r) if r.is_empty() => format!(
                        "{} names no husk runtime (`podman --runtime {}` works without it; \
                         README \"With podman\")",
                        podman.display(),
                        exe.display()
                    ),
                    Ok(r) => format!("{}: runtime {}", podman.display(), r.join(", ")),
                    Err(e) => format!("{} is not valid TOML: {e}", podman.display()),
                },
                Err(_) => format!(
                    "no {} (`podman --runtime {}` works without it)",
                    podman.display(),
                    exe.display()
                ),
            },
        ));
        let containerd = self.path("/etc/containerd/config.toml");
        let shim = exe.with_file_name("containerd-shim-husk-v2");
        let shim_note = if shim.exists() {
            format!("{} present", shim.display())
        } else {
            format!(
                "no {} next to husk (containerd finds the shim on its PATH)",
                shim.display()
            )
        };
        out.push(info(
            "containerd",
            match std::fs::read_to_string(&containerd) {
                Ok(t) => match containerd_runtimes(&t) {
                    Ok(r) if r.is_empty() => format!(
                        "{} names no io.containerd.husk.v2 runtime (ctr needs none; CRI does); \
                         {shim_note}",
                        containerd.display()
                    ),
                    Ok(r) => format!(
                        "{}: CRI runtime {} is io.containerd.husk.v2; {shim_note}",
                        containerd.display(),
                        r.join(", ")
                    ),
                    Err(e) => format!("{} is not valid TOML: {e}", containerd.display()),
                },
                Err(_) => format!("no {}; {shim_note}", containerd.display()),
            },
        ));
        let docker = self.path("/etc/docker/daemon.json");
        out.push(info(
            "docker",
            match std::fs::read_to_string(&docker) {
                Ok(t) => match docker_runtimes(&t) {
                    Ok(r) if r.is_empty() => {
                        format!("{} names no husk runtime", docker.display())
                    }
                    Ok(r) => format!("{}: runtime {}", docker.display(), r.join(", ")),
                    Err(e) => format!("{} is not valid JSON: {e}", docker.display()),
                },
                Err(_) => format!("no {}", docker.display()),
            },
        ));
        out
    }
}

/// KVM_GET_API_VERSION (`_IO(KVMIO, 0x00)`): 12 on every KVM since 2.6.22.
fn api_version(f: &std::fs::File) -> Check {
    const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
    // SAFETY: an argument-less ioctl on an fd we own.
    let v = unsafe { libc::ioctl(f.as_raw_fd(), KVM_GET_API_VERSION as _, 0) };
    if v == 12 {
        ok("kvm-api", "KVM_GET_API_VERSION is 12")
    } else {
        let why = if v < 0 {
            std::io::Error::last_os_error().to_string()
        } else {
            format!("it says {v}")
        };
        fail(
            "kvm-api",
            format!("KVM_GET_API_VERSION is not 12: {why}"),
            "/dev/kvm is not a working KVM device: reload kvm and kvm_intel/kvm_amd",
        )
    }
}

/// The guest kernel, initrd and husk-vmm as `husk create` finds them.
fn guest_files(config: &Path, exe: &Path) -> Vec<Check> {
    let cfg = match HuskConfig::load(config) {
        Ok(c) => c,
        Err(e) => {
            return vec![fail(
                "config",
                e.to_string(),
                format!("fix or remove {}", config.display()),
            )]
        }
    };
    let source = if config.exists() {
        format!("from {}", config.display())
    } else {
        format!(
            "no {}: defaults next to {}",
            config.display(),
            exe.display()
        )
    };
    let r = cfg.resolve(exe);
    let mut out = vec![ok("config", source)];
    let fix_for = |key: &str| {
        format!(
            "`make install` puts it where husk looks by default, or set `{key} = \"/path\"` in {}",
            config.display()
        )
    };
    for f in [
        GuestFile {
            name: "guest-kernel",
            what: "guest kernel",
            path: &r.kernel,
            key: "kernel",
            magic: b"\x7fELF",
            exec: false,
        },
        GuestFile {
            name: "guest-initrd",
            what: "guest initrd",
            path: &r.initrd,
            key: "initrd",
            magic: b"070701",
            exec: false,
        },
        GuestFile {
            name: "vmm",
            what: "husk-vmm",
            path: &r.vmm,
            key: "vmm",
            magic: b"\x7fELF",
            exec: true,
        },
    ] {
        let path = f.path.display();
        out.push(match file_check(f.path, f.magic, f.exec) {
            Ok(()) => ok(f.name, format!("{} {path}", f.what)),
            Err(why) => fail(f.name, format!("{} {path}: {why}", f.what), fix_for(f.key)),
        });
    }
    out
}

/// A file a VM is made from, and the config key that names it.
struct GuestFile<'a> {
    name: &'static str,
    what: &'static str,
    path: &'a Path,
    key: &'static str,
    /// Its first bytes.
    magic: &'static [u8],
    exec: bool,
}

/// A regular file we can read, starting with `magic` (an ELF vmlinux for
/// PVH boot, a newc cpio), executable if `exec`.
fn file_check(path: &Path, magic: &[u8], exec: bool) -> Result<(), String> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if exec && meta.permissions().mode() & 0o111 == 0 {
        return Err("not executable".into());
    }
    let mut head = vec![0u8; magic.len()];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(|e| format!("cannot read it: {e}"))?;
    if head != magic {
        let kind = if magic == b"070701" {
            "an uncompressed newc cpio (guest-image/build-initrd.sh)"
        } else {
            "an ELF file (vmlinux, not bzImage)"
        };
        return Err(format!("not {kind}"));
    }
    Ok(())
}

/// Is this runtime path husk?
fn names_husk(path: &str) -> bool {
    Path::new(path)
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("husk"))
}

/// containers.conf's `[engine.runtimes]` entries that run husk, as
/// `name (path)`.
fn podman_runtimes(text: &str) -> Result<Vec<String>, toml::de::Error> {
    let v: toml::Value = toml::from_str(text)?;
    let mut out = Vec::new();
    let runtimes = v
        .get("engine")
        .and_then(|e| e.get("runtimes"))
        .and_then(|r| r.as_table());
    for (name, paths) in runtimes.into_iter().flatten() {
        let paths: Vec<&str> = paths
            .as_array()
            .map(|a| a.iter().filter_map(|p| p.as_str()).collect())
            .unwrap_or_default();
        if let Some(p) = paths.iter().find(|p| names_husk(p)) {
            out.push(format!("{name} ({p})"));
        }
    }
    let default = v
        .get("engine")
        .and_then(|e| e.get("runtime"))
        .and_then(|r| r.as_str());
    if let Some(d) = default.filter(|d| out.iter().any(|r| r.starts_with(&format!("{d} (")))) {
        out.push(format!("default runtime {d}"));
    }
    Ok(out)
}

/// containerd's runtimes whose `runtime_type` is husk's shim, by name.
fn containerd_runtimes(text: &str) -> Result<Vec<String>, toml::de::Error> {
    fn walk(name: &str, v: &toml::Value, out: &mut Vec<String>) {
        let Some(t) = v.as_table() else { return };
        if t.get("runtime_type").and_then(|r| r.as_str()) == Some("io.containerd.husk.v2") {
            out.push(name.to_string());
        }
        for (k, child) in t {
            walk(k, child, out);
        }
    }
    let v: toml::Value = toml::from_str(text)?;
    let mut out = Vec::new();
    walk("", &v, &mut out);
    Ok(out)
}

/// daemon.json's `runtimes` that run husk (by path, or husk's shim by
/// `runtimeType`), as `name (path)`.
fn docker_runtimes(text: &str) -> Result<Vec<String>, serde_json::Error> {
    let v: serde_json::Value = serde_json::from_str(text)?;
    let mut out = Vec::new();
    for (name, r) in v["runtimes"].as_object().into_iter().flatten() {
        let path = r["path"].as_str().unwrap_or("");
        let ty = r["runtimeType"].as_str().unwrap_or("");
        if names_husk(path) {
            out.push(format!("{name} ({path})"));
        } else if ty == "io.containerd.husk.v2" || names_husk(ty) {
            out.push(format!("{name} ({ty})"));
        }
    }
    if let Some(d) = v["default-runtime"]
        .as_str()
        .filter(|d| out.iter().any(|r| r.starts_with(&format!("{d} ("))))
    {
        out.push(format!("default runtime {d}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake host root with the given files.
    fn fake(tag: &str, files: &[(&str, &str)]) -> PathBuf {
        let root = std::env::temp_dir().join(format!("husk-check-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (p, text) in files {
            let p = root.join(p.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        root
    }

    fn find<'a>(checks: &'a [Check], name: &str) -> &'a Check {
        checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no {name} in {checks:?}"))
    }

    #[test]
    fn pvm_hardware_and_nested_kvm() {
        let pvm = fake(
            "pvm",
            &[
                ("/sys/module/kvm_pvm/refcnt", "0"),
                ("/proc/cpuinfo", "flags\t: fpu hypervisor\n"),
            ],
        );
        let k = Host(pvm.clone()).kvm();
        // A fake root has no /dev/kvm.
        assert_eq!(find(&k, "kvm-device").status, Verdict::Fail);
        let kind = find(&k, "kvm-kind");
        assert_eq!(kind.status, Verdict::Fail);
        assert!(kind.detail.contains("PVM"), "{}", kind.detail);
        assert!(kind.fix.as_ref().unwrap().contains("tests/kvm-test-host"));

        let amd = fake(
            "amd",
            &[
                ("/sys/module/kvm_amd/parameters/nested", "1\n"),
                ("/proc/cpuinfo", "flags\t: fpu svm hypervisor\nflags\t: x\n"),
            ],
        );
        let k = Host(amd.clone()).kvm();
        let kind = find(&k, "kvm-kind");
        assert_eq!(kind.status, Verdict::Ok, "{kind:?}");
        assert!(kind.detail.contains("AMD-V"));
        let nested = find(&k, "kvm-nested");
        assert_eq!(nested.status, Verdict::Info);
        assert!(nested.detail.contains("itself a VM") && nested.detail.contains("nested=1"));

        let none = fake("none", &[("/proc/cpuinfo", "flags\t: fpu sse\n")]);
        assert_eq!(
            find(&Host(none.clone()).kvm(), "kvm-kind").status,
            Verdict::Fail
        );
        let intel_unloaded = fake("intel", &[("/proc/cpuinfo", "flags\t: vmx\n")]);
        let kind = Host(intel_unloaded.clone()).kvm_kind();
        assert_eq!(kind.status, Verdict::Fail);
        assert_eq!(kind.fix.as_deref(), Some("modprobe kvm_intel"));
        for r in [pvm, amd, none, intel_unloaded] {
            let _ = std::fs::remove_dir_all(r);
        }
    }

    #[test]
    fn cgroup_controllers() {
        let v2 = fake(
            "cg2",
            &[(
                "/sys/fs/cgroup/cgroup.controllers",
                "cpuset cpu io memory hugetlb pids rdma misc\n",
            )],
        );
        let c = Host(v2.clone()).cgroups();
        assert!(c.iter().all(|c| c.status == Verdict::Ok), "{c:?}");
        let no_io = fake(
            "cg2-noio",
            &[(
                "/sys/fs/cgroup/cgroup.controllers",
                "cpuset cpu memory pids\n",
            )],
        );
        let c = Host(no_io.clone()).cgroups();
        let ctl = find(&c, "cgroup-controllers");
        assert_eq!(ctl.status, Verdict::Fail);
        assert!(ctl.detail.ends_with(": io"), "{}", ctl.detail);
        let v1 = fake(
            "cg1",
            &[
                ("/sys/fs/cgroup/cpu/cgroup.procs", ""),
                ("/sys/fs/cgroup/memory/cgroup.procs", ""),
            ],
        );
        let c = Host(v1.clone()).cgroups();
        assert_eq!(find(&c, "cgroup").status, Verdict::Ok);
        let ctl = find(&c, "cgroup-controllers");
        assert_eq!(ctl.status, Verdict::Fail);
        assert!(ctl.detail.contains("cpuset, blkio, pids"), "{}", ctl.detail);
        let empty = fake("cg0", &[]);
        assert_eq!(
            find(&Host(empty.clone()).cgroups(), "cgroup").status,
            Verdict::Fail
        );
        for r in [v2, no_io, v1, empty] {
            let _ = std::fs::remove_dir_all(r);
        }
    }

    #[test]
    fn guest_files_resolve_like_create() {
        let dir = fake(
            "files",
            &[
                ("/share/husk/vmlinux", "\x7fELF..."),
                ("/share/husk/initrd.img", "070701..."),
                ("/bin/husk-vmm", "\x7fELF..."),
                ("/etc/bad.toml", "kernel = 3"),
            ],
        );
        let vmm = dir.join("bin/husk-vmm");
        std::fs::set_permissions(&vmm, std::fs::Permissions::from_mode(0o755)).unwrap();
        let exe = dir.join("bin/husk");
        let c = guest_files(&dir.join("etc/none.toml"), &exe);
        assert!(c.iter().all(|c| c.status == Verdict::Ok), "{c:?}");
        assert!(find(&c, "config").detail.starts_with("no "));
        // A bzImage where a vmlinux belongs, a vmm that cannot run.
        std::fs::write(dir.join("share/husk/vmlinux"), "MZ\0\0").unwrap();
        std::fs::set_permissions(&vmm, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = guest_files(&dir.join("etc/none.toml"), &exe);
        assert!(find(&c, "guest-kernel").detail.contains("not an ELF file"));
        assert!(find(&c, "vmm").detail.ends_with("not executable"));
        assert_eq!(find(&c, "guest-initrd").status, Verdict::Ok);
        // Config keys move them; a missing one says which key.
        let cfg = dir.join("etc/husk.toml");
        std::fs::write(&cfg, "initrd = \"/nowhere/initrd.img\"\n").unwrap();
        let c = guest_files(&cfg, &exe);
        let initrd = find(&c, "guest-initrd");
        assert_eq!(initrd.status, Verdict::Fail);
        assert!(initrd.detail.contains("/nowhere/initrd.img"));
        assert!(initrd.fix.as_ref().unwrap().contains("`initrd = "));
        let c = guest_files(&dir.join("etc/bad.toml"), &exe);
        assert_eq!(find(&c, "config").status, Verdict::Fail);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn engine_configs_naming_husk() {
        let podman = "[engine]\nruntime = \"husk\"\n[engine.runtimes]\n\
                      husk = [\"/usr/local/bin/husk\"]\ncrun = [\"/usr/bin/crun\"]\n";
        assert_eq!(
            podman_runtimes(podman).unwrap(),
            ["husk (/usr/local/bin/husk)", "default runtime husk"]
        );
        assert!(podman_runtimes("[engine]\n").unwrap().is_empty());
        assert!(podman_runtimes("[engine").is_err());
        let containerd = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.\
                          runtimes.husk]\n  runtime_type = \"io.containerd.husk.v2\"\n\
                          [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n\
                          runtime_type = \"io.containerd.runc.v2\"\n";
        assert_eq!(containerd_runtimes(containerd).unwrap(), ["husk"]);
        let docker = r#"{"runtimes": {"husk": {"path": "/usr/local/bin/husk"},
                         "kata": {"path": "/usr/bin/kata-runtime"},
                         "husk-shim": {"runtimeType": "io.containerd.husk.v2"}},
                         "default-runtime": "husk"}"#;
        assert_eq!(
            docker_runtimes(docker).unwrap(),
            [
                "husk (/usr/local/bin/husk)",
                "husk-shim (io.containerd.husk.v2)",
                "default runtime husk"
            ]
        );
        assert!(docker_runtimes("{}").unwrap().is_empty());
    }

    #[test]
    fn text_lines_carry_the_fix() {
        let c = fail("kvm-kind", "PVM", "use the test host");
        assert_eq!(text_line(&c), "FAIL  kvm-kind: PVM; fix: use the test host");
        assert_eq!(text_line(&ok("tun", "there")), "ok    tun: there");
    }
}
