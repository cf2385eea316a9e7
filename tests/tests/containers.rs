//! Containers in microVMs through the runc-compatible `husk` CLI, with real
//! guests, real virtio-fs and the real agent.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use husk_tests::bundle::TestBundle;
use husk_tests::Husk;
use serde_json::{json, Value};

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn run(h: &Husk, b: &TestBundle, id: &str) -> Output {
    h.run(&["run", "--bundle", b.dir.to_str().unwrap(), id])
}

fn state(h: &Husk, id: &str) -> Value {
    let o = h.run(&["state", id]);
    assert!(o.status.success(), "state {id}: {}", err(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn wait_status(h: &Husk, id: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Until `create` has written it, the container does not exist yet.
        let o = h.run(&["state", id]);
        if o.status.success()
            && serde_json::from_slice::<Value>(&o.stdout).unwrap()["status"] == want
        {
            return;
        }
        assert!(Instant::now() < deadline, "{id} never became {want}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn echo_hello() {
    let h = Husk::new("echo");
    let b = TestBundle::busybox("echo", &["echo", "hello"]);
    let o = run(&h, &b, "echo");
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(out(&o), "hello\n");
    // `run` deletes the container when it ends.
    assert!(!h.root.join("echo").exists());
}

#[test]
fn exit_code_propagates() {
    let h = Husk::new("exit");
    let b = TestBundle::busybox("exit", &["sh", "-c", "exit 3"]);
    assert_eq!(run(&h, &b, "exit3").status.code(), Some(3));
}

#[test]
fn stdin_stdout_stderr() {
    let h = Husk::new("stdio");
    let b = TestBundle::busybox("stdio", &["sh", "-c", "cat; echo err >&2"]);
    let mut child = h
        .cmd()
        .args(["run", "--bundle", b.dir.to_str().unwrap(), "stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped through\n")
        .unwrap();
    let o = husk_tests::wait_output(child, husk_tests::COMMAND_TIMEOUT);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(out(&o), "piped through\n");
    assert_eq!(err(&o), "err\n");
}

#[test]
fn sigterm_kills_like_runc() {
    let h = Husk::new("term");
    let mut b = TestBundle::busybox("term", &["sleep", "1000"]);
    b.without_pid_ns();
    let child = h
        .cmd()
        .args(["run", "--bundle", b.dir.to_str().unwrap(), "term"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    wait_status(&h, "term", "running");
    let o = h.run(&["kill", "term", "TERM"]);
    assert!(o.status.success(), "{}", err(&o));
    let st = husk_tests::wait_output(child, husk_tests::COMMAND_TIMEOUT).status;
    assert_eq!(st.signal(), Some(libc::SIGTERM), "{st:?}");
}

#[test]
fn process_settings_seen_inside() {
    let h = Husk::new("settings");
    let mut b = TestBundle::busybox(
        "settings",
        &[
            "sh",
            "-c",
            "echo $FOO; pwd; id -u; id -g; id -G; hostname; ulimit -n; grep CapEff /proc/self/status",
        ],
    );
    b.config["process"]["env"]
        .as_array_mut()
        .unwrap()
        .push(json!("FOO=bar"));
    b.config["process"]["cwd"] = json!("/tmp");
    b.config["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [2000]});
    b.write();
    let o = run(&h, &b, "settings");
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(
        out(&o),
        "bar\n/tmp\n1000\n1000\n1000 2000\nhusk-test\n1024\nCapEff:\t0000000000000000\n"
    );
}

#[test]
fn capabilities_for_root() {
    let h = Husk::new("caps");
    let b = TestBundle::busybox("caps", &["grep", "CapEff", "/proc/self/status"]);
    let o = run(&h, &b, "caps");
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    // CAP_KILL (5), CAP_NET_BIND_SERVICE (10), CAP_AUDIT_WRITE (29).
    assert_eq!(out(&o), "CapEff:\t0000000020000420\n");
}

#[test]
fn readonly_rootfs() {
    let h = Husk::new("ro");
    let mut b = TestBundle::busybox("ro", &["touch", "/newfile"]);
    b.config["root"]["readonly"] = json!(true);
    b.write();
    let o = run(&h, &b, "ro");
    assert_ne!(o.status.code(), Some(0));
    assert!(err(&o).contains("Read-only file system"), "{}", err(&o));
    assert!(!b.rootfs().join("newfile").exists());
}

#[test]
fn bind_mount_and_rootfs_writes_reach_the_host() {
    let h = Husk::new("bind");
    let vol = husk_tests::vm_dir("volume");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("in.txt"), "from host\n").unwrap();
    let mut b = TestBundle::busybox(
        "bind",
        &[
            "sh",
            "-c",
            "cat /data/in.txt; echo from guest > /data/out.txt; echo root > /root/written",
        ],
    );
    b.config["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/data", "type": "bind", "source": vol, "options": ["rbind", "rw"]
    }));
    b.write();
    let o = run(&h, &b, "bind");
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(out(&o), "from host\n");
    assert_eq!(
        std::fs::read_to_string(vol.join("out.txt")).unwrap(),
        "from guest\n"
    );
    assert_eq!(
        std::fs::read_to_string(b.rootfs().join("root/written")).unwrap(),
        "root\n"
    );
}

#[test]
fn lifecycle_states() {
    let h = Husk::new("life");
    let b = TestBundle::busybox("life", &["sleep", "1000"]);
    let pid_file = b.dir.join("pid");
    let o = h.run(&[
        "create",
        "--bundle",
        b.dir.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        "life",
    ]);
    assert!(o.status.success(), "{}", err(&o));
    let s = state(&h, "life");
    let pid: i64 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    assert_eq!(s["status"], "created");
    assert_eq!(s["pid"], pid);
    assert_eq!(s["id"], "life");
    assert_eq!(s["ociVersion"], "1.0.2");
    assert_eq!(s["bundle"], b.dir.to_str().unwrap());
    assert_eq!(s["rootfs"], b.rootfs().to_str().unwrap());
    assert!(s["created"].as_str().unwrap().ends_with('Z'));
    assert_eq!(s["owner"], "");
    let o = h.run(&["start", "life"]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(state(&h, "life")["status"], "running");
    let o = h.run(&["start", "life"]);
    assert_eq!(err(&o), "husk: cannot start an already running container\n");
    let o = h.run(&["delete", "life"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        err(&o),
        "husk: cannot delete container life that is not stopped: running\n"
    );
    let o = h.run(&["kill", "life", "KILL"]);
    assert!(o.status.success(), "{}", err(&o));
    wait_status(&h, "life", "stopped");
    assert_eq!(state(&h, "life")["pid"], 0);
    let o = h.run(&["kill", "life", "KILL"]);
    assert_eq!(err(&o), "husk: container not running\n");
    let o = h.run(&["start", "life"]);
    assert_eq!(err(&o), "husk: cannot start a container that has stopped\n");
    let o = h.run(&["delete", "life"]);
    assert!(o.status.success(), "{}", err(&o));
    let o = h.run(&["state", "life"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(err(&o), "husk: container does not exist\n");
}

#[test]
fn eight_in_parallel() {
    let h = Husk::new("par");
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let b = TestBundle::busybox(&format!("par{i}"), &["echo", &format!("container {i}")]);
            let mut c = h.cmd();
            c.args([
                "run",
                "--bundle",
                b.dir.to_str().unwrap(),
                &format!("par{i}"),
            ]);
            c.stdin(Stdio::null());
            std::thread::spawn(move || {
                (i, husk_tests::output_within(c, husk_tests::COMMAND_TIMEOUT))
            })
        })
        .collect();
    for hd in handles {
        let (i, o) = hd.join().unwrap();
        assert_eq!(o.status.code(), Some(0), "par{i}: {}", err(&o));
        assert_eq!(out(&o), format!("container {i}\n"));
    }
}

// ---- bad input: runc-like errors, nothing left behind -----------------------------------

fn leftovers(h: &Husk) -> Vec<String> {
    std::fs::read_dir(&h.root)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn bad_ids_and_bundles() {
    let h = Husk::new("bad");
    let b = TestBundle::busybox("bad", &["true"]);
    let bundle = b.dir.to_str().unwrap();
    for id in ["", "a/b", "..", "x y"] {
        let o = h.run(&["create", "--bundle", bundle, id]);
        assert_eq!(o.status.code(), Some(1), "{id:?}");
        // runc's wordings.
        let want = if id.is_empty() {
            "husk: container id cannot be empty\n"
        } else {
            "husk: invalid container ID format\n"
        };
        assert_eq!(err(&o), want);
    }
    // Invalid config.json: the error names the field.
    let mut bad = TestBundle::busybox("badcfg", &["true"]);
    bad.config["process"]["user"]["uid"] = json!("root");
    bad.write();
    let o = h.run(&["create", "--bundle", bad.dir.to_str().unwrap(), "badcfg"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("invalid type: string \"root\", expected u32"),
        "{}",
        err(&o)
    );
    // Missing rootfs.
    std::fs::remove_dir_all(bad.rootfs()).unwrap();
    bad.config["process"]["user"]["uid"] = json!(0);
    bad.write();
    let o = h.run(&["create", "--bundle", bad.dir.to_str().unwrap(), "norootfs"]);
    assert_eq!(
        err(&o),
        format!("husk: rootfs ({}) does not exist\n", bad.rootfs().display())
    );
    // Unknown container: runc 1.1 looks the container up before the
    // signal, so an unknown signal on it says the same.
    let o = h.run(&["kill", "nope", "TERM"]);
    assert_eq!(err(&o), "husk: container does not exist\n");
    let o = h.run(&["kill", "nope", "FOO"]);
    assert_eq!(err(&o), "husk: container does not exist\n");
    assert!(leftovers(&h).is_empty(), "{:?}", leftovers(&h));
}

#[test]
fn duplicate_id_and_unknown_signal_keep_state() {
    let h = Husk::new("dup");
    let b = TestBundle::busybox("dup", &["sleep", "1000"]);
    let bundle = b.dir.to_str().unwrap();
    let o = h.run(&["create", "--bundle", bundle, "dup"]);
    assert!(o.status.success(), "{}", err(&o));
    let o = h.run(&["create", "--bundle", bundle, "dup"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(err(&o), "husk: container with given ID already exists\n");
    let o = h.run(&["kill", "dup", "NOTASIGNAL"]);
    assert_eq!(err(&o), "husk: unknown signal \"NOTASIGNAL\"\n");
    assert_eq!(state(&h, "dup")["status"], "created");
    let o = h.run(&["delete", "--force", "dup"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(leftovers(&h).is_empty(), "{:?}", leftovers(&h));
}

fn mounts_under(p: &std::path::Path) -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|m| m.starts_with(p.to_str().unwrap()))
        })
        .count()
}

fn processes_mentioning(s: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
        })
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(s))
                .unwrap_or(false)
        })
        .count()
}

#[test]
fn killed_vmm_is_stopped_and_delete_cleans_everything() {
    let h = Husk::new("killvmm");
    let b = TestBundle::busybox("killvmm", &["sleep", "1000"]);
    let root = h.root.to_str().unwrap().to_string();
    let before = (mounts_under(&h.root), processes_mentioning(&root));
    let o = h.run(&["run", "--detach", "--bundle", b.dir.to_str().unwrap(), "kv"]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(state(&h, "kv")["status"], "running");
    assert!(mounts_under(&h.root) > before.0);
    assert!(processes_mentioning(&root) > before.1);
    // Find the VMM by its socket path and SIGKILL it.
    let vmm = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .find(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains("husk-vmm") && c.contains(&root)
                })
                .unwrap_or(false)
        })
        .expect("husk-vmm process");
    let pid: i32 = vmm.file_name().to_string_lossy().parse().unwrap();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_status(&h, "kv", "stopped");
    let o = h.run(&["delete", "kv"]);
    assert!(o.status.success(), "{}", err(&o));
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_mentioning(&root) > before.1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!((mounts_under(&h.root), processes_mentioning(&root)), before);
    assert!(leftovers(&h).is_empty(), "{:?}", leftovers(&h));
}

#[test]
fn debootstrap_debian_runs_bash() {
    let rootfs = std::env::var("HUSK_DEBIAN_ROOTFS").expect(
        "HUSK_DEBIAN_ROOTFS not set: run through `make test` (tests/debian-rootfs.sh builds it)",
    );
    assert!(
        std::path::Path::new(&rootfs).join("bin/bash").exists(),
        "{rootfs} is not a Debian rootfs"
    );
    let h = Husk::new("debian");
    let mut b = TestBundle::busybox("debian", &["/bin/bash", "-c", "cat /etc/os-release"]);
    // The rootfs is shared read-only into the test host: the container must not write it.
    b.config["root"] = json!({"path": rootfs, "readonly": true});
    b.write();
    let o = run(&h, &b, "debian");
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(
        out(&o).contains("PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\""),
        "{}",
        out(&o)
    );
}

/// The pid husk reports is where engines configure a new network namespace
/// (`/proc/<pid>/ns/net` after create): it is a fresh one (only lo and
/// husk's spare tap) whenever the spec asks for a new one, never the host's. Without a network
/// namespace in the spec (runc's host networking) create is refused: the
/// container runs in its own VM, and pretending would hide that it has no
/// network. A spec naming the host's netns by path is refused too.
#[test]
fn reported_pid_is_never_in_the_host_netns() {
    let h = Husk::new("netns");
    let host = std::fs::read_link("/proc/self/ns/net").unwrap();
    let b = TestBundle::busybox("netns", &["sleep", "1000"]);
    let o = h.run(&["create", "--bundle", b.dir.to_str().unwrap(), "nn1"]);
    assert!(o.status.success(), "{}", err(&o));
    let pid = state(&h, "nn1")["pid"].as_i64().unwrap();
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    assert_ne!(theirs, host, "the reported pid is in the host's netns");
    let dev = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap();
    let links: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    // Fresh: only lo, and husk's spare tap for a network the engine may add before start
    // (docs/architecture.md, "Networking"), down and without addresses.
    assert_eq!(links, ["lo", "hk0"], "not a fresh netns");
    // `ip -o WHAT show dev hk0` in the reported pid's netns.
    let hk0 = |what: &str| {
        let o = std::process::Command::new("nsenter")
            .args([
                "-t",
                &pid.to_string(),
                "-n",
                "ip",
                "-o",
                what,
                "show",
                "dev",
                "hk0",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "ip {what}: {}", err(&o));
        out(&o)
    };
    let addr = hk0("addr");
    assert!(
        !addr.contains("inet"),
        "the spare tap has an address: {addr}"
    );
    let link = hk0("link");
    assert!(link.contains("state DOWN"), "{link}");
    let o = h.run(&["delete", "--force", "nn1"]);
    assert!(o.status.success(), "{}", err(&o));

    let me = std::process::id();
    for (id, ns) in [("nn2", None), ("nn3", Some(format!("/proc/{me}/ns/net")))] {
        let mut b = TestBundle::busybox(id, &["true"]);
        let list = b.config["linux"]["namespaces"].as_array_mut().unwrap();
        list.retain(|n| n["type"] != "network");
        if let Some(path) = &ns {
            list.push(serde_json::json!({"type": "network", "path": path}));
        }
        b.write();
        let o = h.run(&["create", "--bundle", b.dir.to_str().unwrap(), id]);
        assert_eq!(o.status.code(), Some(1), "{id}: {}", err(&o));
        let want = if ns.is_some() {
            "is the host's network namespace"
        } else {
            "no network namespace (host networking) is not supported"
        };
        assert!(err(&o).contains(want), "{id}: {}", err(&o));
        // Refused before anything was made.
        assert!(!h.root.join(id).exists(), "{id} left state behind");
    }
}

/// The guest keeps its LAPIC timer running in idle (ARAT, which KVM
/// offers), so it never takes the PIT as its idle broadcast timer: IRQ 0
/// is not even requested. Without ARAT the PIT is the broadcast device and
/// every deep idle entry may reprogram it (port I/O the host's KVM emulates).
#[test]
fn guest_does_not_use_the_pit() {
    let h = Husk::new("pit");
    let b = TestBundle::busybox(
        "pit",
        &[
            "sh",
            "-c",
            "cat /sys/devices/system/clockevents/broadcast/current_device; cat /proc/interrupts",
        ],
    );
    let o = run(&h, &b, "pit");
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let text = out(&o);
    assert!(
        !text.lines().any(|l| l.trim_start().starts_with("0:")),
        "IRQ 0 (the PIT) is in use:\n{text}"
    );
    assert!(text.contains("LOC:"), "{text}");
}
