//! The escape suite: attacks from a hostile guest on the host side of the
//! boundary, each one a finding of the security review
//! (`../shared/design/security-review.md`), run in real microVMs.
//!
//! The attacker is root in a privileged container (every capability, no
//! seccomp), which owns the guest side of virtio-fs: it mounts the VM's share
//! itself (`mount -t virtiofs husk /mnt`) and ignores whatever the agent set
//! up in the guest. What must hold is what the host enforces. Each test also
//! has a positive control (the same path *can* write where it may), so it
//! cannot pass because the attack never reached the host.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use husk_tests::bundle::TestBundle;
use husk_tests::containerd::{Containerd, IMAGE, RUNTIME};
use husk_tests::Husk;
use serde_json::json;

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
];

/// `--privileged`: every capability, nothing masked or read-only in /proc.
fn privileged(b: &mut TestBundle) {
    let caps = json!(ALL_CAPS);
    let p = &mut b.config["process"];
    for set in ["bounding", "effective", "permitted"] {
        p["capabilities"][set] = caps.clone();
    }
    p["noNewPrivileges"] = json!(false);
    b.config["linux"]["maskedPaths"] = json!([]);
    b.config["linux"]["readonlyPaths"] = json!([]);
    b.write();
}

fn host_dir(tag: &str) -> PathBuf {
    let d = husk_tests::vm_dir(tag);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// F1, F2 (guest side), F3, F4: root in the guest mounts the share and goes
/// for the host through it. Read-only volumes (`ro`), a read-only rootfs, a
/// read-only bind of the host's /proc (the usual monitoring mount: writing
/// it is host root), the share's own top level (where the shim stages the
/// next container, and which sits on the host's /run), device nodes.
#[test]
fn guest_root_cannot_write_through_the_share() {
    let h = Husk::new("esc-share");
    let ro = host_dir("esc-ro");
    std::fs::write(ro.join("orig"), "host data\n").unwrap();
    let rw = host_dir("esc-rw");
    let domain = std::fs::read_to_string("/proc/sys/kernel/domainname").unwrap();
    let script = r#"
        S=/mnt/s/esc
        mkdir /mnt/s && mount -t virtiofs husk /mnt/s || { echo MOUNTFAIL; exit 3; }
        cat $S/mounts/7/orig >/dev/null && echo SEES-RO
        echo x > $S/mounts/8/via-share && echo WROTE-RW
        echo x > $S/mounts/7/pwned && echo WROTE-RO
        mount -o remount,bind,rw /data && echo x > /data/pwned2 && echo WROTE-RO2
        echo x > $S/rootfs/pwned && echo WROTE-ROOT
        cat $S/mounts/9/sys/kernel/domainname >/dev/null && echo SEES-PROC
        echo pwned > $S/mounts/9/sys/kernel/domainname && echo WROTE-PROC
        mkdir /mnt/s/planted && echo WROTE-SHARE
        mkdir $S/planted && echo WROTE-SHARE2
        ln -s /etc $S/link && echo PLANTED
        dd if=/dev/zero of=/mnt/s/fill bs=1M count=8 && echo FILLED
        mknod $S/mounts/8/sda b 8 0 && echo MKNOD
        echo END
    "#;
    let mut b = TestBundle::busybox("esc-share", &["sh", "-c", script]);
    privileged(&mut b);
    b.config["root"]["readonly"] = json!(true);
    let mounts = b.config["mounts"].as_array_mut().unwrap();
    assert_eq!(mounts.len(), 6, "the indices below assume 6 default mounts");
    mounts.extend([
        json!({"destination": "/mnt", "type": "tmpfs", "source": "tmpfs"}),
        json!({"destination": "/data", "type": "bind", "source": ro, "options": ["rbind", "ro"]}),
        json!({"destination": "/rw", "type": "bind", "source": rw, "options": ["rbind", "rw"]}),
        json!({"destination": "/host/proc", "type": "bind", "source": "/proc", "options": ["rbind", "ro"]}),
    ]);
    b.write();
    let o = h.run(&["run", "--bundle", b.dir.to_str().unwrap(), "esc"]);
    let said = out(&o);
    assert!(
        said.contains("END"),
        "the attack script did not finish: {said}\n{}",
        err(&o)
    );
    // Positive controls: the share is reachable and writes where it may.
    for ok in ["SEES-RO", "WROTE-RW", "SEES-PROC"] {
        assert!(
            said.lines().any(|l| l == ok),
            "{ok} missing: {said}\n{}",
            err(&o)
        );
    }
    assert!(rw.join("via-share").exists());
    for bad in [
        "WROTE-RO",
        "WROTE-RO2",
        "WROTE-ROOT",
        "WROTE-PROC",
        "WROTE-SHARE",
        "WROTE-SHARE2",
        "PLANTED",
        "FILLED",
        "MKNOD",
    ] {
        assert!(
            !said.lines().any(|l| l == bad),
            "{bad}: the guest got through: {said}\n{}",
            err(&o)
        );
    }
    assert!(!ro.join("pwned").exists() && !ro.join("pwned2").exists());
    assert!(!b.rootfs().join("pwned").exists());
    assert!(!rw.join("sda").exists());
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/domainname").unwrap(),
        domain,
        "the host's sysctl was written"
    );
    // `run` deleted the container: its teardown removed nothing of the host's.
    assert!(!h.root.join("esc").exists(), "state left behind");
    assert!(ro.join("orig").exists() && rw.join("via-share").exists());
}

fn mounted_at(p: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(p.to_str().unwrap()))
}

fn ctr_run(c: &Containerd, opts: &[&str], id: &str, args: &[&str]) {
    let mut v = vec!["run", "--runtime", RUNTIME, "-d"];
    v.extend_from_slice(opts);
    v.push(IMAGE);
    v.push(id);
    v.extend_from_slice(args);
    let o = c.ctr_out(&v);
    assert!(o.status.success(), "ctr run {id}: {}", err(&o));
}

fn wait_running(c: &Containerd, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ls = c.ctr_ok(&["task", "ls"]);
        let running = ls.lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.len() == 3 && w[0] == id && w[2] == "RUNNING"
        });
        if running {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} not running: {ls}\n{}",
            c.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// F2 (attack A, the review's test): the shim stages a pod's next container
/// into the running VM's share while a privileged container in the pod
/// plants symlinks (to a host file and a host directory) wherever the next
/// container's mount points will be. The shim must neither truncate nor
/// mount over what they point at, and the new container must get its own
/// binds. Unstaging it must delete nothing of its volumes.
#[test]
fn shim_staging_ignores_what_the_guest_plants() {
    let c = Containerd::start("esc-stage");
    c.import_busybox();
    let host = host_dir("esc-victims");
    let (victim, victim_dir) = (host.join("victim"), host.join("victim_dir"));
    std::fs::write(&victim, "secret\n").unwrap();
    std::fs::create_dir_all(&victim_dir).unwrap();
    // The next container's id is known in advance (as pod members' names
    // are): its directory is planted first, every mount point a link to the
    // host directory (old husk followed them: deterministic); then, for
    // whatever else appears, the racing loop of the review.
    let planter = format!(
        "mkdir -p /mnt/s && mount -t virtiofs husk /mnt/s || exit 3; \
         mkdir -p /mnt/s/escapp/mounts 2>/dev/null; \
         for i in $(seq 0 40); do ln -s {dir} /mnt/s/escapp/mounts/$i 2>/dev/null; done; \
         while :; do for d in /mnt/s/*/; do mkdir -p $d/mounts 2>/dev/null; \
         for i in 0 1 2 3 4 5 6 7 8 9 10 11 12; do ln -s {file} $d/mounts/$i 2>/dev/null; \
         ln -s {dir} $d/mounts/1$i 2>/dev/null; done; ln -s {dir} $d/rootfs 2>/dev/null; done; done",
        file = victim.display(),
        dir = victim_dir.display(),
    );
    ctr_run(
        &c,
        &[
            "--privileged",
            "--annotation",
            "io.kubernetes.cri.container-type=sandbox",
            "--annotation",
            "io.kubernetes.cri.sandbox-id=escpod",
        ],
        "escpod",
        &["sh", "-c", &planter],
    );
    wait_running(&c, "escpod");
    // Give the planter time to be looping before the next container comes.
    std::thread::sleep(Duration::from_secs(3));
    let vols: Vec<PathBuf> = (0..4).map(|i| host_dir(&format!("esc-vol{i}"))).collect();
    let mut opts = vec![
        "--annotation".to_string(),
        "io.kubernetes.cri.container-type=container".into(),
        "--annotation".into(),
        "io.kubernetes.cri.sandbox-id=escpod".into(),
    ];
    for (i, v) in vols.iter().enumerate() {
        std::fs::write(v.join("keep"), format!("vol{i}\n")).unwrap();
        opts.push("--mount".into());
        opts.push(format!(
            "type=bind,src={},dst=/v{i},options=rbind:rw",
            v.display()
        ));
    }
    let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
    let mut v = vec!["run", "--runtime", RUNTIME, "-d"];
    v.extend_from_slice(&opts);
    v.extend([IMAGE, "escapp", "sleep", "1000"]);
    let run = c.ctr_out(&v);
    // The host first: whether or not the container came up.
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "secret\n");
    assert!(!mounted_at(&victim), "host file mounted over");
    assert!(!mounted_at(&victim_dir), "host directory mounted over");
    assert_eq!(std::fs::read_dir(&victim_dir).unwrap().count(), 0);
    assert!(run.status.success(), "ctr run escapp: {}", err(&run));
    wait_running(&c, "escapp");
    for i in 0..4 {
        let o = c.ctr_out(&[
            "task",
            "exec",
            "--exec-id",
            &format!("x{i}"),
            "escapp",
            "cat",
            &format!("/v{i}/keep"),
        ]);
        assert_eq!(out(&o), format!("vol{i}\n"), "{}", err(&o));
    }
    for id in ["escapp", "escpod"] {
        c.ctr_ok(&["task", "kill", "-s", "SIGKILL", id]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while c
            .ctr_ok(&["task", "ls"])
            .lines()
            .any(|l| l.starts_with(id) && l.contains("RUNNING"))
        {
            assert!(Instant::now() < deadline, "{id} still running");
            std::thread::sleep(Duration::from_millis(200));
        }
        let o = c.ctr_out(&["task", "delete", id]);
        assert!(o.status.success(), "task delete {id}: {}", err(&o));
        c.ctr_ok(&["container", "rm", id]);
    }
    for (i, v) in vols.iter().enumerate() {
        assert_eq!(
            std::fs::read_to_string(v.join("keep")).unwrap(),
            format!("vol{i}\n"),
            "a volume lost its content on unstage"
        );
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "secret\n");
    c.assert_clean();
}
