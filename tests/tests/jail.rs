//! husk-vmm's jail, seen from the host while real containers run: the
//! kernel's own view of the VMM (`/proc/PID/status`, `/proc/PID/root`,
//! namespaces, cgroup) and a VMM made to attempt forbidden syscalls.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use husk::vm::{jailed_vmm_pid, Vm};
use husk_tests::bundle::TestBundle;
use husk_tests::{spec, vm_dir, Husk};
use serde_json::Value;

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn state(h: &Husk, id: &str) -> Value {
    let o = h.run(&["state", id]);
    assert!(o.status.success(), "state {id}: {}", err(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn wait_status(h: &Husk, id: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while state(h, id)["status"] != want {
        assert!(Instant::now() < deadline, "{id} never became {want}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `Key:\tvalue` from a /proc status file.
fn field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {key} in status"))
        .trim()
        .to_string()
}

fn hex(v: &str) -> u64 {
    u64::from_str_radix(v, 16).unwrap()
}

/// The VMM's threads by name, with their status.
fn threads(pid: u32) -> Vec<(String, String)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .map(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap();
            let status = std::fs::read_to_string(t.path().join("status")).unwrap();
            (comm.trim().to_string(), status)
        })
        .collect()
}

/// The inner (jailed) VMM of container `id`: the only child of the pid
/// `husk state` reports for the VMM.
fn jailed_vmm(h: &Husk, id: &str) -> (u32, u32) {
    let st: Value =
        serde_json::from_slice(&std::fs::read(h.root.join(id).join("state.json")).unwrap())
            .unwrap();
    let outer = st["vmm_pid"].as_u64().expect("vmm_pid in state.json") as u32;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(inner) = jailed_vmm_pid(outer) {
            return (outer, inner);
        }
        assert!(
            Instant::now() < deadline,
            "husk-vmm {outer} has no jailed child"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Capabilities the fs worker keeps (docs/security.md): CHOWN,
/// DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER, FSETID, SETGID, SETUID, MKNOD.
const FS_CAPS: u64 =
    (1 << 0) | (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 6) | (1 << 7) | (1 << 27);

fn cgroup_dir(rel: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'))
}

#[test]
fn running_vmm_is_caged() {
    let h = Husk::new("jail");
    let mut b = TestBundle::busybox("jail", &["sleep", "1000"]);
    let cg = format!("/husk_test_parent/husk-jail-{}", std::process::id());
    b.config["linux"]["cgroupsPath"] = cg.clone().into();
    b.write();
    let o = h.run(&["run", "--detach", "--bundle", b.dir.to_str().unwrap(), "j1"]);
    assert!(o.status.success(), "{}", err(&o));
    let (outer, vmm) = jailed_vmm(&h, "j1");

    // Every thread: no_new_privs, a seccomp filter; only the fs worker has
    // capabilities, and only the ones virtio-fs needs.
    let ts = threads(vmm);
    for kind in ["husk-vmm", "vcpu0", "fs-worker"] {
        assert!(
            ts.iter().any(|(n, _)| n == kind),
            "no {kind} thread in {ts:?}"
        );
    }
    for (name, st) in &ts {
        assert_eq!(field(st, "NoNewPrivs"), "1", "{name}");
        assert_eq!(field(st, "Seccomp"), "2", "{name}");
        assert_eq!(hex(&field(st, "CapBnd")), FS_CAPS, "{name}: bounding set");
        assert_eq!(hex(&field(st, "CapInh")), 0, "{name}");
        assert_eq!(hex(&field(st, "CapAmb")), 0, "{name}");
        let want = if name == "fs-worker" { FS_CAPS } else { 0 };
        assert_eq!(hex(&field(st, "CapEff")), want, "{name}: effective");
        assert_eq!(hex(&field(st, "CapPrm")), want, "{name}: permitted");
    }
    let status = std::fs::read_to_string(format!("/proc/{vmm}/status")).unwrap();
    // PID 1 of its own pid namespace.
    let nspid = field(&status, "NSpid");
    assert_eq!(nspid.split_whitespace().last(), Some("1"), "NSpid {nspid}");
    let limits = std::fs::read_to_string(format!("/proc/{vmm}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert!(core.split_whitespace().nth(4) == Some("0"), "{core}");

    // Its root is the jail: the state directory's vm/ (vsock sockets) and
    // the share, nothing of the host.
    let root = PathBuf::from(format!("/proc/{vmm}/root"));
    for host_path in [
        "etc/passwd",
        "bin",
        "usr",
        "proc/self",
        "proc/sys",
        "proc/sysrq-trigger",
        "dev/kvm",
        "sys/fs",
    ] {
        assert!(
            !root.join(host_path).exists(),
            "{host_path} visible in the jail"
        );
    }
    let state_dir = h.root.join("j1");
    let in_jail = |p: &Path| root.join(p.strip_prefix("/").unwrap());
    assert!(in_jail(&state_dir.join("vm/vsock.sock")).exists());
    assert!(in_jail(&state_dir.join("share/j1/rootfs/bin/busybox")).exists());
    assert!(
        !in_jail(&state_dir.join("state.json")).exists(),
        "only vm/ and share/ are bound"
    );
    assert!(!in_jail(Path::new(env!("CARGO_MANIFEST_DIR"))).exists());
    let mut top: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    let first = state_dir
        .components()
        .nth(1)
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    let mut want = vec![first, "proc".to_string()];
    want.sort();
    assert_eq!(top, want, "jail root");
    // From the host the jail directory is an empty directory.
    assert_eq!(
        std::fs::read_dir(state_dir.join("vm/jail"))
            .unwrap()
            .count(),
        0
    );

    // Own namespaces (the waiter keeps the host's; it is what the runtime tracks).
    for ns in ["pid", "mnt", "net", "ipc", "uts"] {
        let mine = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let its = std::fs::read_link(format!("/proc/{vmm}/ns/{ns}")).unwrap();
        assert_ne!(mine, its, "{ns} namespace shared with the host");
    }
    let outer_ns = std::fs::read_link(format!("/proc/{outer}/ns/pid")).unwrap();
    assert_eq!(outer_ns, std::fs::read_link("/proc/self/ns/pid").unwrap());

    // The monitor and the VMM are in the spec's cgroup, with limits from the
    // VM size (config.toml of the tests: 128 MiB).
    let monitor = state(&h, "j1")["pid"].as_u64().unwrap();
    for pid in [monitor as u32, outer, vmm] {
        let c = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(c.lines().any(|l| l == format!("0::{cg}")), "{pid}: {c}");
    }
    let dir = cgroup_dir(&cg);
    let max = std::fs::read_to_string(dir.join("memory.max")).unwrap();
    assert_eq!(
        max.trim(),
        ((128u64 + husk::cgroups::VMM_OVERHEAD_MIB) << 20).to_string()
    );
    let pids = std::fs::read_to_string(dir.join("pids.max")).unwrap();
    assert_eq!(pids.trim(), (husk::cgroups::PIDS_BASE + 1).to_string());
    let current: u64 = std::fs::read_to_string(dir.join("memory.current"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        current > 8 << 20,
        "memory.current {current}: guest memory not accounted"
    );

    // The container works through the jail (virtio-fs, vsock).
    let o = h.run(&["kill", "j1", "KILL"]);
    assert!(o.status.success(), "{}", err(&o));
    wait_status(&h, "j1", "stopped");
    let o = h.run(&["delete", "j1"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(!dir.exists(), "cgroup {} left after delete", dir.display());
    let _ = std::fs::remove_dir(cgroup_dir("/husk_test_parent"));
}

/// The test hook (husk_vmm::jail::testhook) makes the main thread attempt
/// `open`; the filter kills the VMM, the container is reported stopped and
/// `delete` leaves nothing behind.
#[test]
fn forbidden_open_kills_the_vmm_and_the_container_stops() {
    let h = Husk::new("jail-open");
    let b = TestBundle::busybox("jail-open", &["sleep", "1000"]);
    let mut c = h.cmd();
    c.args(["run", "--detach", "--bundle", b.dir.to_str().unwrap(), "j2"])
        .env(husk::vm::TEST_TRIGGER_ENV, "open")
        .stdin(std::process::Stdio::null());
    let o = husk_tests::output_within(c, husk_tests::COMMAND_TIMEOUT);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(state(&h, "j2")["status"], "running");
    let (outer, vmm) = jailed_vmm(&h, "j2");
    let stderr = h.root.join("j2/vm/vmm.stderr");
    unsafe { libc::kill(outer as i32, libc::SIGUSR2) };
    wait_status(&h, "j2", "stopped");
    let log = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert!(log.contains("attempting forbidden Open"), "{log}");
    assert!(!log.contains("was not stopped"), "{log}");
    assert!(
        !Path::new(&format!("/proc/{vmm}")).exists(),
        "VMM still there"
    );
    let o = h.run(&["delete", "j2"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(!h.root.join("j2").exists());
    assert!(!Path::new(&format!("/proc/{outer}")).exists());
    assert!(!cgroup_dir("/husk/j2").exists());
}

/// The same hook with `execve`, on a bare VM: husk-vmm (the waiter mirrors
/// the jailed VMM) dies by SIGSYS.
#[test]
fn forbidden_execve_is_killed_by_sigsys() {
    use std::os::unix::process::ExitStatusExt;
    std::env::set_var(husk::vm::TEST_TRIGGER_ENV, "execve");
    let launched = Vm::launch(&spec(), &vm_dir("jail-execve"));
    std::env::remove_var(husk::vm::TEST_TRIGGER_ENV);
    let mut vm = launched.expect("VM boots jailed");
    let log = vm.stderr_tail();
    unsafe { libc::kill(vm.pid() as i32, libc::SIGUSR2) };
    let status = vm.wait(Duration::from_secs(60)).expect("VMM ends");
    assert_eq!(
        status.signal(),
        Some(libc::SIGSYS),
        "{status:?}{log}{}",
        vm.stderr_tail()
    );
}

/// `no_jail = true` in config.toml (debugging) runs the VMM as before,
/// loudly: no filter, no namespaces.
#[test]
fn no_jail_option_is_loud_and_unjailed() {
    let h = Husk::new("nojail");
    let cfg = std::fs::read_to_string(&h.config).unwrap();
    std::fs::write(&h.config, format!("{cfg}no_jail = true\n")).unwrap();
    let b = TestBundle::busybox("nojail", &["sleep", "1000"]);
    let o = h.run(&["run", "--detach", "--bundle", b.dir.to_str().unwrap(), "j3"]);
    assert!(o.status.success(), "{}", err(&o));
    let st: Value =
        serde_json::from_slice(&std::fs::read(h.root.join("j3/state.json")).unwrap()).unwrap();
    let vmm = st["vmm_pid"].as_u64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{vmm}/status")).unwrap();
    assert_eq!(field(&status, "Seccomp"), "0");
    assert!(jailed_vmm_pid(vmm as u32).is_none());
    let log = std::fs::read_to_string(h.root.join("j3/vm/vmm.stderr")).unwrap();
    assert!(log.contains("WARNING: --no-jail"), "{log}");
    let o = h.run(&["delete", "--force", "j3"]);
    assert!(o.status.success(), "{}", err(&o));
}

/// Every kind of file work the guest can ask of virtio-fs, as root and as
/// an unprivileged user, through the jailed fs worker: a syscall missing from
/// its filter would kill the VMM (and fail this test) instead of a user's
/// workload later.
#[test]
fn file_work_through_the_jailed_fs_worker() {
    const SCRIPT: &str = r#"
set -e
cd /data
mkdir -p d/e
rmdir d/e
echo hello > f
cat f >/dev/null
echo more >> f
ln f hard
ln -s f soft
readlink soft >/dev/null
mv hard moved
rm moved
chmod 0750 f
chmod g+s f
chown 1000:1000 f
truncate -s 1M f
dd if=/dev/zero of=big bs=64k count=16 2>/dev/null
sync
mkfifo fifo
touch -d '2001-01-01 00:00:00' f
stat f >/dev/null
ls -lnR . >/dev/null
find . >/dev/null
df . >/dev/null
cp -a f copy
rm copy
ls -la /data
echo ROOT_OK
su -s /bin/sh user -c 'set -e; cd /data/u; echo mine > mine; mkdir sub; ln -s mine l; ln mine hl; mv mine m2; rm -r sub; echo USER_OK'
"#;
    let data = vm_dir("jail-fsdata");
    std::fs::create_dir_all(data.join("u")).unwrap();
    std::os::unix::fs::chown(data.join("u"), Some(1000), Some(1000)).unwrap();
    let h = Husk::new("jail-fs");
    let mut b = TestBundle::busybox("jail-fs", &["sh", "-c", SCRIPT]);
    b.config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "destination": "/data", "type": "bind", "source": data, "options": ["rbind", "rw"]
        }));
    // su needs to switch users.
    let caps = serde_json::json!([
        "CAP_SETUID",
        "CAP_SETGID",
        "CAP_CHOWN",
        "CAP_FOWNER",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_MKNOD"
    ]);
    for set in ["bounding", "effective", "permitted"] {
        b.config["process"]["capabilities"][set] = caps.clone();
    }
    b.config["process"]["noNewPrivileges"] = false.into();
    b.write();
    let o = h.run(&["run", "--bundle", b.dir.to_str().unwrap(), "fs1"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let log = std::fs::read_to_string(h.root.join("fs1/vm/vmm.stderr")).unwrap_or_default();
    assert!(
        o.status.success() && out.contains("ROOT_OK") && out.contains("USER_OK"),
        "status {:?}\nstdout {out}\nstderr {}\nvmm {log}",
        o.status,
        err(&o)
    );
    use std::os::unix::fs::MetadataExt;
    let f = std::fs::metadata(data.join("f")).unwrap();
    assert_eq!((f.uid(), f.gid(), f.len()), (1000, 1000, 1 << 20));
    assert_eq!(f.mtime(), 978_307_200);
    let mine = std::fs::symlink_metadata(data.join("u/m2")).unwrap();
    assert_eq!(mine.uid(), 1000, "created with the guest user's uid");
    let listing = || {
        std::fs::read_dir(&data)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
    };
    let soft = std::fs::symlink_metadata(data.join("soft"));
    assert!(
        soft.as_ref().is_ok_and(|m| m.file_type().is_symlink()),
        "{soft:?} in {:?}; guest saw {out}",
        listing()
    );
    let hl = std::fs::metadata(data.join("u/hl")).unwrap();
    assert_eq!(
        (hl.nlink(), hl.uid()),
        (2, 1000),
        "hard link made by the user"
    );
    let _ = h.run(&["delete", "--force", "fs1"]);
}

/// The jailed VMM's mounts, from the host: (mount point, per-mount options,
/// file system type, super options).
fn vmm_mounts(vmm: u32) -> Vec<(String, String, String, String)> {
    std::fs::read_to_string(format!("/proc/{vmm}/mountinfo"))
        .unwrap()
        .lines()
        .map(|l| {
            let (a, b) = l.split_once(" - ").unwrap();
            let a: Vec<_> = a.split(' ').collect();
            let b: Vec<_> = b.split(' ').collect();
            (
                a[4].to_string(),
                a[5].to_string(),
                b[0].to_string(),
                b.get(2).unwrap_or(&"").to_string(),
            )
        })
        .collect()
}

/// Review F3: a compromised fs worker (the test hook's `procfd` probe runs
/// on it, jailed and filtered) finds only a pid-only procfs of the VMM's own
/// pid namespace: `..` from its `/proc/self/fd` fd reaches no
/// `/proc/sys`. The shares are nodev (and nosuid, noexec) on every mount in
/// the VMM's view, their top level and the vsock directory read-only; the
/// container still works through the share.
#[test]
fn fs_worker_reaches_no_host_proc_and_shares_are_nodev() {
    let h = Husk::new("jail-procfd");
    let b = TestBundle::busybox("jail-procfd", &["sleep", "1000"]);
    let mut c = h.cmd();
    c.args(["run", "--detach", "--bundle", b.dir.to_str().unwrap(), "j4"])
        .env(husk::vm::TEST_TRIGGER_ENV, "procfd")
        .stdin(std::process::Stdio::null());
    let o = husk_tests::output_within(c, husk_tests::COMMAND_TIMEOUT);
    assert!(o.status.success(), "{}", err(&o));
    let (_, vmm) = jailed_vmm(&h, "j4");
    let stderr = h.root.join("j4/vm/vmm.stderr");
    let deadline = Instant::now() + Duration::from_secs(60);
    let log = loop {
        let log = std::fs::read_to_string(&stderr).unwrap_or_default();
        if log.contains("descriptor(s) tried") {
            break log;
        }
        assert!(Instant::now() < deadline, "no procfd probe report: {log}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!log.contains("test hook: procfd: REACHED"), "{log}");
    assert!(log.contains("test hook: procfd: refused"), "{log}");
    assert!(
        !log.contains("procfd: 0 procfs"),
        "no procfs fd found: {log}"
    );

    let mounts = vmm_mounts(vmm);
    let proc_mounts: Vec<_> = mounts.iter().filter(|m| m.2 == "proc").collect();
    assert!(!proc_mounts.is_empty(), "{mounts:?}");
    for m in &proc_mounts {
        assert!(m.3.contains("subset=pid"), "{m:?}");
        for opt in ["nosuid", "nodev", "noexec"] {
            assert!(m.1.split(',').any(|o| o == opt), "{opt}: {m:?}");
        }
    }
    let share = std::fs::canonicalize(h.root.join("j4/share")).unwrap();
    let share = share.to_str().unwrap().to_string();
    let below: Vec<_> = mounts
        .iter()
        .filter(|m| m.0 == share || m.0.starts_with(&format!("{share}/")))
        .collect();
    assert!(below.len() >= 2, "share and rootfs mounts: {mounts:?}");
    for m in &below {
        for opt in ["nodev", "nosuid", "noexec"] {
            assert!(m.1.split(',').any(|o| o == opt), "{opt}: {m:?}");
        }
    }
    for m in below.iter().filter(|m| m.0 == share) {
        assert!(m.1.split(',').any(|o| o == "ro"), "share top level: {m:?}");
    }
    let vm_dir = std::fs::canonicalize(h.root.join("j4/vm")).unwrap();
    let vm_dir = vm_dir.to_str().unwrap();
    let vm = mounts.iter().find(|m| m.0 == vm_dir).expect("vm dir bound");
    assert!(vm.1.split(',').any(|o| o == "ro"), "vm dir: {vm:?}");

    // The rootfs (a submount of the share) stays writable for the guest.
    let o = h.run(&["exec", "j4", "sh", "-c", "echo w > /tmp/w && cat /tmp/w"]);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "w",
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        err(&o)
    );
    let o = h.run(&["kill", "j4", "KILL"]);
    assert!(o.status.success(), "{}", err(&o));
    wait_status(&h, "j4", "stopped");
    let o = h.run(&["delete", "j4"]);
    assert!(o.status.success(), "{}", err(&o));
}

/// A static x86-64 program: `setxattr(argv[1], "user.x", "1", 1, 0)`; exit 0
/// on success; if the file system says EOPNOTSUPP, `listxattr(argv[1])` and
/// exit 100 if that worked; else exit with the errno.
const XATTR_PROBE: &[u8] = &[
    0x7f, 0x45, 0x4c, 0x46, 0x02, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x02, 0x00, 0x3e, 0x00, 0x01, 0x00, 0x00, 0x00, 0x78, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xf8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x40, 0x00, 0x38, 0x00, 0x01, 0x00, 0x40, 0x00, 0x03, 0x00, 0x02, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x78, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x78, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0x78, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x6a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x6a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x4c, 0x8b, 0x64, 0x24, 0x10, 0x4c, 0x89, 0xe7,
    0x48, 0x8d, 0x35, 0x53, 0x00, 0x00, 0x00, 0x48, 0x8d, 0x15, 0x53, 0x00, 0x00, 0x00, 0x41, 0xba,
    0x01, 0x00, 0x00, 0x00, 0x45, 0x31, 0xc0, 0xb8, 0xbc, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x85, 0xc0,
    0x74, 0x29, 0x83, 0xf8, 0xa1, 0x75, 0x28, 0x48, 0x81, 0xec, 0x00, 0x01, 0x00, 0x00, 0x4c, 0x89,
    0xe7, 0x48, 0x89, 0xe6, 0xba, 0x00, 0x01, 0x00, 0x00, 0xb8, 0xc2, 0x00, 0x00, 0x00, 0x0f, 0x05,
    0x85, 0xc0, 0x78, 0x0b, 0xbf, 0x64, 0x00, 0x00, 0x00, 0xeb, 0x08, 0x31, 0xff, 0xeb, 0x04, 0x89,
    0xc7, 0xf7, 0xdf, 0xb8, 0x3c, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x75, 0x73, 0x65, 0x72, 0x2e, 0x78,
    0x00, 0x31, 0x00, 0x2e, 0x73, 0x68, 0x73, 0x74, 0x72, 0x74, 0x61, 0x62, 0x00, 0x2e, 0x74, 0x65,
    0x78, 0x74, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0b, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
    0x06, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x78, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x78, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x6a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xe2, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x11, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
];

/// Review F8(b): with `xattr`, fuse-backend-rs does every xattr operation by
/// the path `/proc/self/fd/N`, which the jail's procfs makes resolve (ENOENT
/// before). The runtime has no xattr option, so a wrapper adds `,xattr` to
/// husk-vmm's `--fs` arguments.
#[test]
fn xattrs_work_through_the_jailed_fs_worker() {
    let h = Husk::new("jail-xattr");
    let base = h.config.parent().unwrap().to_path_buf();
    let wrapper = base.join("husk-vmm-xattr");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nx=0\nfor a in \"$@\"; do\n  shift\n  [ \"$x\" = 1 ] && a=\"$a,xattr\"\n  \
             if [ \"$a\" = --fs ]; then x=1; else x=0; fi\n  set -- \"$@\" \"$a\"\ndone\n\
             exec {:?} \"$@\"\n",
            husk_tests::artifact("HUSK_VMM")
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = std::fs::read_to_string(&h.config).unwrap();
    let cfg: String = cfg
        .lines()
        .map(|l| {
            if l.starts_with("vmm = ") {
                format!("vmm = {wrapper:?}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&h.config, cfg).unwrap();

    let data = vm_dir("jail-xattr-data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f"), b"x").unwrap();
    let mut b = TestBundle::busybox("jail-xattr", &["/bin/xattr-probe", "/data/f"]);
    let probe = b.rootfs().join("bin/xattr-probe");
    std::fs::write(&probe, XATTR_PROBE).unwrap();
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o755)).unwrap();
    b.config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "destination": "/data", "type": "bind", "source": data, "options": ["rbind", "rw"]
        }));
    b.write();
    let o = h.run(&["run", "--bundle", b.dir.to_str().unwrap(), "x1"]);
    let log = std::fs::read_to_string(h.root.join("x1/vm/vmm.stderr")).unwrap_or_default();
    let code = o.status.code();
    let host_f = std::ffi::CString::new(data.join("f").to_str().unwrap()).unwrap();
    let mut buf = [0u8; 8];
    // SAFETY: valid C strings and buffer.
    let n = unsafe {
        libc::getxattr(
            host_f.as_ptr(),
            c"user.x".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    match code {
        Some(0) => assert_eq!(n, 1, "user.x not on the host file"),
        Some(100) => {
            // The host's file system has no user xattrs (tmpfs before 6.6):
            // the guest's listxattr went through instead.
            let e = std::io::Error::last_os_error();
            assert_eq!(n, -1);
            assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP), "{e}");
        }
        _ => panic!(
            "xattr probe: {:?} (errno in the guest)\nstdout {}\nstderr {}\nvmm {log}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            err(&o)
        ),
    }
    assert!(!log.contains("seccomp"), "{log}");
    let _ = h.run(&["delete", "--force", "x1"]);
}
