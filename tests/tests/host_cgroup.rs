//! The sandbox cgroup on the host (`linux.cgroupsPath`, holding the monitor
//! and husk-vmm) carries the spec's own limits, and `husk update` changes
//! them there as well as in the guest (issue 15, group 4; docs/architecture.md,
//! "Resource limits"). Real guests: the files are read on the host at the
//! spec's path and in the guest through a cgroup2 mount in the container.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use husk_tests::bundle::TestBundle;
use husk_tests::Husk;
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn cgroup_dir(rel: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'))
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
        .trim()
        .to_string()
}

fn wait_running(h: &Husk, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let o = h.run(&["state", id]);
        assert!(o.status.success(), "state {id}: {}", err(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        if v["status"] == "running" {
            return;
        }
        assert!(Instant::now() < deadline, "{id} never ran: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn husk_ok(h: &Husk, args: &[&str]) -> String {
    let o = h.run(args);
    assert!(o.status.success(), "husk {args:?}: {}", err(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The container's cgroup files as the guest has them: the agent mounts the
/// container's own cgroup on /sys/fs/cgroup (the guest's root cgroup has no
/// such files to mistake them for).
fn guest_files(h: &Husk, id: &str, files: &[&str]) -> Vec<String> {
    let script = files
        .iter()
        .map(|f| format!("cat /sys/fs/cgroup/{f}"))
        .collect::<Vec<_>>()
        .join(" && ");
    let out = husk_ok(h, &["exec", id, "sh", "-c", &script]);
    let lines: Vec<String> = out.lines().map(|l| l.trim().to_string()).collect();
    assert_eq!(lines.len(), files.len(), "{files:?}: {out:?}");
    lines
}

/// A read-only cgroup2 mount at /sys/fs/cgroup in the container.
fn mount_guest_cgroups(b: &mut TestBundle) {
    b.config["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/sys/fs/cgroup", "type": "cgroup2", "source": "cgroup2",
        "options": ["nosuid", "noexec", "nodev", "ro"]
    }));
}

#[test]
fn spec_limits_reach_the_host_cgroup_and_update_changes_both() {
    let h = Husk::new("hostcg");
    let mut b = TestBundle::busybox("hostcg", &["sleep", "1000"]);
    let cg = format!("/husk_hostcg_{}", std::process::id());
    b.config["linux"]["cgroupsPath"] = cg.clone().into();
    b.config["linux"]["resources"] = json!({
        "memory": {"limit": 128 * MIB},
        "cpu": {"quota": 50000, "period": 100000, "shares": 512, "cpus": "0", "mems": "0"},
        "pids": {"limit": 50}
    });
    mount_guest_cgroups(&mut b);
    b.write();
    let id = "hc1";
    husk_ok(
        &h,
        &["run", "--detach", "--bundle", b.dir.to_str().unwrap(), id],
    );
    wait_running(&h, id);
    let dir = cgroup_dir(&cg);
    let host = |f: &str| read(&dir, f);

    // The VM: 128 MiB + 64 MiB of RAM, ⌈0.5⌉ = 1 vCPU.
    assert_eq!(host("cpu.max"), "50000 100000");
    // runc's current conversion: 512 shares → 59.
    assert_eq!(host("cpu.weight"), "59");
    assert_eq!(host("cpuset.cpus"), "0");
    assert_eq!(host("cpuset.mems"), "0");
    // The spec's limit + 128 MiB (guest kernel and agent, husk-vmm).
    assert_eq!(host("memory.max"), (256 * MIB).to_string());
    // The host's pids limit is the VM's (128 + vCPUs), the spec's is the guest's.
    assert_eq!(host("pids.max"), (husk::cgroups::PIDS_BASE + 1).to_string());
    let files = [
        "memory.max",
        "cpu.max",
        "cpu.weight",
        "pids.max",
        "cpuset.cpus",
    ];
    assert_eq!(
        guest_files(&h, id, &files),
        [&(128 * MIB).to_string(), "50000 100000", "59", "50", ""],
        "the guest's view"
    );

    // A raise beyond the VM's size, a new quota, period, weight and cpuset.
    husk_ok(
        &h,
        &[
            "update",
            "--memory",
            &(256 * MIB).to_string(),
            "--cpu-quota",
            "20000",
            "--cpu-period",
            "50000",
            "--cpu-shares",
            "2048",
            "--cpuset-cpus",
            "0-1",
            "--pids-limit",
            "20",
            id,
        ],
    );
    assert_eq!(host("memory.max"), ((256 + 128) * MIB).to_string());
    assert_eq!(host("cpu.max"), "20000 50000");
    assert_eq!(host("cpu.weight"), "174");
    assert_eq!(host("cpuset.cpus"), "0-1");
    assert_eq!(host("pids.max"), (husk::cgroups::PIDS_BASE + 1).to_string());
    assert_eq!(
        guest_files(&h, id, &files),
        [&(256 * MIB).to_string(), "20000 50000", "174", "20", ""],
        "the guest's view after the update"
    );

    // A lowering: the container at once in the guest; the host limit only
    // down to what the VM needs (its 192 MiB of RAM + 64 MiB).
    husk_ok(&h, &["update", "--memory", &(64 * MIB).to_string(), id]);
    assert_eq!(host("memory.max"), (256 * MIB).to_string());
    assert_eq!(
        guest_files(&h, id, &["memory.max"]),
        [(64 * MIB).to_string()]
    );
    // What the update leaves out stays; a period alone keeps the quota, on
    // both sides (runc update's semantics).
    assert_eq!(host("cpu.max"), "20000 50000");
    husk_ok(&h, &["update", "--cpu-period", "100000", id]);
    assert_eq!(host("cpu.max"), "20000 100000");
    assert_eq!(guest_files(&h, id, &["cpu.max"]), ["20000 100000"]);

    // A value the host's kernel refuses fails the update, and says where.
    let o = h.run(&["update", "--cpuset-cpus", "4096", id]);
    assert!(
        !o.status.success(),
        "a cpuset beyond the host's CPUs was taken"
    );
    assert!(err(&o).contains("cpuset.cpus"), "{}", err(&o));
    assert_eq!(host("cpuset.cpus"), "0-1");

    husk_ok(&h, &["delete", "--force", id]);
    assert!(!dir.exists(), "cgroup left after delete");
}

/// One sample of the host cgroup's `cpu.stat`.
struct CpuStat {
    at: Instant,
    usage_usec: u64,
    nr_periods: u64,
    nr_throttled: u64,
}

fn cpu_stat(dir: &Path) -> CpuStat {
    let text = read(dir, "cpu.stat");
    let get = |k: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {k} in cpu.stat: {text}"))
    };
    CpuStat {
        at: Instant::now(),
        usage_usec: get("usage_usec"),
        nr_periods: get("nr_periods"),
        nr_throttled: get("nr_throttled"),
    }
}

/// CPUs the cgroup used over `window` of wall time, and the share of its
/// quota periods in which it was throttled.
fn measure(dir: &Path, window: Duration) -> (f64, f64) {
    let a = cpu_stat(dir);
    std::thread::sleep(window);
    let b = cpu_stat(dir);
    let wall = (b.at - a.at).as_micros() as f64;
    let cpus = (b.usage_usec - a.usage_usec) as f64 / wall;
    let periods = (b.nr_periods - a.nr_periods).max(1) as f64;
    let throttled = (b.nr_throttled - a.nr_throttled) as f64 / periods;
    (cpus, throttled)
}

/// Root in a privileged container leaves its guest cgroup (and so the
/// guest's CPU limit) and spins: the host cgroup's quota still holds the
/// whole VM to 0.2 CPUs. Margins are wide (the test host is an emulator on
/// a shared machine); the control is the same loop with the quota lifted.
#[test]
fn the_host_quota_holds_a_vm_whose_container_left_its_guest_cgroup() {
    let h = Husk::new("hostcg-busy");
    let mut b = TestBundle::busybox(
        "hostcg-busy",
        &[
            "sh",
            "-c",
            "mkdir -p /tmp/cg && mount -t cgroup2 none /tmp/cg && echo $$ > /tmp/cg/cgroup.procs \
             && cat /proc/self/cgroup > /escaped.tmp && mv /escaped.tmp /escaped; \
             while :; do :; done",
        ],
    );
    let caps = json!(["CAP_SYS_ADMIN", "CAP_KILL", "CAP_AUDIT_WRITE"]);
    for set in ["bounding", "effective", "permitted"] {
        b.config["process"]["capabilities"][set] = caps.clone();
    }
    let cg = format!("/husk_hostcg_busy_{}", std::process::id());
    b.config["linux"]["cgroupsPath"] = cg.clone().into();
    b.config["linux"]["resources"] = json!({"cpu": {"quota": 20000, "period": 100000}});
    b.write();
    let id = "hc2";
    husk_ok(
        &h,
        &["run", "--detach", "--bundle", b.dir.to_str().unwrap(), id],
    );
    wait_running(&h, id);
    let dir = cgroup_dir(&cg);
    assert_eq!(read(&dir, "cpu.max"), "20000 100000");

    // The loop runs in the guest's root cgroup, out of the container's.
    let marker = b.rootfs().join("escaped");
    let deadline = Instant::now() + Duration::from_secs(120);
    let where_ = loop {
        // Written through virtio-fs: the rename may show before the data.
        match std::fs::read_to_string(&marker) {
            Ok(t) if !t.trim().is_empty() => break t,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "the container never left its guest cgroup"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(where_.trim(), "0::/", "still in a guest cgroup");

    std::thread::sleep(Duration::from_secs(1));
    let (held, throttled) = measure(&dir, Duration::from_secs(6));
    husk_ok(&h, &["update", "--cpu-quota=-1", id]);
    assert_eq!(read(&dir, "cpu.max"), "max 100000");
    std::thread::sleep(Duration::from_secs(1));
    let (free, _) = measure(&dir, Duration::from_secs(6));
    eprintln!(
        "host cgroup CPU use: {held:.3} CPUs with quota 0.2 (throttled in {:.0}% of periods), \
         {free:.3} CPUs without",
        throttled * 100.0
    );
    husk_ok(&h, &["delete", "--force", id]);

    // 0.2 CPUs allowed: well below a full one however noisy the host.
    assert!(held < 0.5, "the VM used {held:.3} CPUs under a 0.2 quota");
    // The quota is what held it: the VM wanted more in most periods...
    assert!(
        throttled > 0.5,
        "throttled in only {:.0}% of the periods: the loop was not held by the host quota",
        throttled * 100.0
    );
    // ...and took more once it was lifted.
    assert!(
        free > 2.0 * held && free > 0.4,
        "without the quota the VM used {free:.3} CPUs (with it: {held:.3})"
    );
}

/// containerd's shim: a sandbox of one (`ctr run`) gets its spec's limits on
/// the host cgroup it sits in, as `husk create` does. (ctr 1.6 has no task
/// update; the shim's Update takes the same path as `husk update`.)
#[test]
fn a_ctr_sandbox_of_one_gets_its_limits_on_the_host() {
    use husk_tests::containerd::{Containerd, IMAGE, NAMESPACE, RUNTIME};
    let c = Containerd::start("hostcg");
    c.import_busybox();
    let id = "hcg1";
    let mem = (128 * MIB).to_string();
    let o = c.ctr_out(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--cpus",
        "0.5",
        "--cpu-shares",
        "512",
        "--memory-limit",
        &mem,
        IMAGE,
        id,
        "sleep",
        "1000",
    ]);
    assert!(o.status.success(), "{}\n{}", err(&o), c.log_tail(40));
    // ctr's cgroupsPath: /<namespace>/<id>.
    let dir = Path::new("/sys/fs/cgroup").join(NAMESPACE).join(id);
    let got: Vec<String> = ["cpu.max", "cpu.weight", "memory.max"]
        .iter()
        .map(|f| read(&dir, f))
        .collect();
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", id]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !c.ctr_ok(&["task", "ls"]).contains("STOPPED") {
        assert!(Instant::now() < deadline, "{id} never stopped");
        std::thread::sleep(Duration::from_millis(100));
    }
    c.ctr_ok(&["task", "delete", id]);
    c.ctr_ok(&["container", "rm", id]);
    c.assert_clean();
    assert_eq!(
        got,
        ["50000 100000", "59", &(256 * MIB).to_string()],
        "cpu.max, cpu.weight, memory.max"
    );
    assert!(!dir.exists(), "cgroup left after delete");
}

/// The first block device of this host (the KVM test host has none: its
/// root is 9p and its kernel has no disk drivers loaded).
fn a_block_device() -> Option<String> {
    let mut disks: Vec<String> = std::fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    disks.sort();
    let disk = disks.first()?;
    let dev = std::fs::read_to_string(format!("/sys/block/{disk}/dev")).ok()?;
    Some(dev.trim().to_string())
}

/// blockIO (issue 14): the VM's block I/O is husk-vmm's, so the weight and
/// the throttles go to the sandbox cgroup on the host, never to the guest
/// (which has no io controller and refuses them). Docker writes a blockIO
/// section with nothing in it for every container: that runs.
#[test]
fn block_io_goes_to_the_host_cgroup() {
    let h = Husk::new("hostcg-io");

    // Docker's: every list empty, weight 0.
    let mut b = TestBundle::busybox("hostcg-io-docker", &["echo", "docker-shaped"]);
    b.config["linux"]["resources"] = json!({"blockIO": {
        "weight": 0, "leafWeight": 0, "weightDevice": [], "throttleReadBpsDevice": [],
        "throttleWriteBpsDevice": [], "throttleReadIOPSDevice": [], "throttleWriteIOPSDevice": []
    }});
    b.write();
    let out = husk_ok(&h, &["run", "--bundle", b.dir.to_str().unwrap(), "hio0"]);
    assert_eq!(out.trim(), "docker-shaped");

    // A weight of 500 (runc's io.weight 4950, or BFQ's own 500) and, with a
    // block device here, a read throttle on it.
    let dev = a_block_device();
    let mut b = TestBundle::busybox("hostcg-io", &["sleep", "1000"]);
    let cg = format!("/husk_hostcg_io_{}", std::process::id());
    b.config["linux"]["cgroupsPath"] = cg.clone().into();
    let mut io = json!({"weight": 500});
    if let Some((major, minor)) = dev.as_deref().and_then(|d| d.split_once(':')) {
        io["throttleReadBpsDevice"] = json!([{
            "major": major.parse::<i64>().unwrap(), "minor": minor.parse::<i64>().unwrap(),
            "rate": 1048576
        }]);
    }
    b.config["linux"]["resources"] = json!({"blockIO": io});
    b.write();
    let id = "hio1";
    husk_ok(
        &h,
        &["run", "--detach", "--bundle", b.dir.to_str().unwrap(), id],
    );
    wait_running(&h, id);
    let dir = cgroup_dir(&cg);
    let weight = |dir: &Path| {
        if dir.join("io.bfq.weight").exists() {
            (read(dir, "io.bfq.weight"), "default 500", "default 1000")
        } else {
            (read(dir, "io.weight"), "default 4950", "default 10000")
        }
    };
    let (got, want, after_update) = weight(&dir);
    assert_eq!(got, want);
    if let Some(dev) = &dev {
        assert_eq!(
            read(&dir, "io.max"),
            format!("{dev} rbps=1048576 wbps=max riops=max wiops=max")
        );
    }
    // `husk update --blkio-weight`, as runc's.
    husk_ok(&h, &["update", "--blkio-weight", "1000", id]);
    assert_eq!(weight(&dir).0, after_update);
    husk_ok(&h, &["delete", "--force", id]);
    assert!(!dir.exists(), "cgroup left after delete");

    // A throttle on a device this host does not have: the kernel refuses
    // the io.max line, create fails and says so, and nothing is left.
    let mut b = TestBundle::busybox("hostcg-io-nodev", &["true"]);
    let cg = format!("/husk_hostcg_io_nodev_{}", std::process::id());
    b.config["linux"]["cgroupsPath"] = cg.clone().into();
    b.config["linux"]["resources"] = json!({"blockIO": {
        "throttleWriteIOPSDevice": [{"major": 4095, "minor": 4095, "rate": 10}]
    }});
    b.write();
    let o = h.run(&["create", "--bundle", b.dir.to_str().unwrap(), "hio2"]);
    assert!(!o.status.success(), "a throttle on no device was taken");
    assert!(err(&o).contains("io.max"), "{}", err(&o));
    assert!(
        !cgroup_dir(&cg).exists(),
        "cgroup left after a failed create"
    );
    let o = h.run(&["state", "hio2"]);
    assert!(!o.status.success(), "hio2 exists after a failed create");
}
