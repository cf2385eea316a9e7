//! runc conformance (issue 15) with real guests: runc 1.1's lifecycle
//! errors and exit codes on containers in every state, the mount options
//! runc accepts (recursive attributes, rbind + ro over host submounts,
//! relative readonly/masked paths), and specs that must fail at once
//! instead of hanging. The cases that need no VM are in runtime/tests/cli.rs.

use std::path::{Path, PathBuf};
use std::process::Output;
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

fn status(h: &Husk, id: &str) -> String {
    let o = h.run(&["state", id]);
    assert!(o.status.success(), "state {id}: {}", err(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["status"].as_str().unwrap().to_string()
}

fn wait_status(h: &Husk, id: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(h, id) != want {
        assert!(Instant::now() < deadline, "{id} never became {want}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `husk ARGS` must fail with runc's exit code and message.
#[track_caller]
fn expect(h: &Husk, args: &[&str], code: i32, msg: &str) {
    let o = h.run(args);
    assert_eq!(o.status.code(), Some(code), "{args:?}: {}", err(&o));
    assert_eq!(err(&o), format!("husk: {msg}\n"), "{args:?}");
}

#[track_caller]
fn expect_ok(h: &Husk, args: &[&str]) {
    let o = h.run(args);
    assert!(o.status.success(), "{args:?}: {}", err(&o));
}

fn create(h: &Husk, b: &TestBundle, id: &str) {
    expect_ok(h, &["create", "--bundle", b.dir.to_str().unwrap(), id]);
}

/// Every verb on a created, running, paused and stopped container, against
/// what runc 1.1 says and exits with.
#[test]
fn lifecycle_errors_match_runc() {
    let h = Husk::new("conf-life");
    let b = TestBundle::busybox("conf-life", &["sleep", "1000"]);

    // created
    let c = "conf-created";
    create(&h, &b, c);
    assert_eq!(status(&h, c), "created");
    expect(&h, &["resume", c], 1, "container not paused");
    // runc freezes a created container too; resumed, it is created again
    // and starts as usual.
    expect_ok(&h, &["pause", c]);
    assert_eq!(status(&h, c), "paused");
    expect(
        &h,
        &["start", c],
        1,
        "cannot start a container in the paused state",
    );
    expect_ok(&h, &["resume", c]);
    assert_eq!(status(&h, c), "created");
    // runc 1.1 deletes a created container without --force.
    expect_ok(&h, &["delete", c]);
    // Paused and resumed before its start, it still starts.
    let c = "conf-created-paused";
    create(&h, &b, c);
    expect_ok(&h, &["pause", c]);
    expect_ok(&h, &["resume", c]);
    expect_ok(&h, &["start", c]);
    assert_eq!(status(&h, c), "running");
    expect_ok(&h, &["delete", "--force", c]);
    expect(&h, &["state", c], 1, "container does not exist");

    // running
    let c = "conf-running";
    create(&h, &b, c);
    expect_ok(&h, &["start", c]);
    assert_eq!(status(&h, c), "running");
    expect(
        &h,
        &["start", c],
        1,
        "cannot start an already running container",
    );
    expect(&h, &["resume", c], 1, "container not paused");
    expect(
        &h,
        &["delete", c],
        1,
        &format!("cannot delete container {c} that is not stopped: running"),
    );

    // paused
    expect_ok(&h, &["pause", c]);
    assert_eq!(status(&h, c), "paused");
    expect(&h, &["pause", c], 1, "container not running");
    expect(
        &h,
        &["start", c],
        1,
        "cannot start a container in the paused state",
    );
    expect(
        &h,
        &["delete", c],
        1,
        &format!("cannot delete container {c} that is not stopped: paused"),
    );
    expect(
        &h,
        &["exec", c, "true"],
        255,
        "exec failed: cannot exec in a paused container (use --ignore-paused to override)",
    );
    expect_ok(&h, &["resume", c]);
    assert_eq!(status(&h, c), "running");

    // stopped
    expect_ok(&h, &["kill", c, "KILL"]);
    wait_status(&h, c, "stopped");
    expect(&h, &["kill", c], 1, "container not running");
    expect(&h, &["kill", c, "KILL"], 1, "container not running");
    expect(
        &h,
        &["start", c],
        1,
        "cannot start a container that has stopped",
    );
    expect(&h, &["pause", c], 1, "container not running");
    expect(&h, &["resume", c], 1, "container not paused");
    expect(
        &h,
        &["exec", c, "true"],
        255,
        "exec failed: cannot exec in a stopped container",
    );
    expect(
        &h,
        &["events", c],
        1,
        &format!("container with id {c} is not running"),
    );
    // ps of a stopped container: runc lists its empty cgroup.
    let o = h.run(&["ps", "--format", "json", c]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "[]\n");
    expect(
        &h,
        &["update", "--memory", "100000000", c],
        1,
        "container not running",
    );
    expect_ok(&h, &["delete", c]);

    // gone
    expect(&h, &["state", c], 1, "container does not exist");
    expect(&h, &["delete", c], 1, "container does not exist");
    expect(&h, &["kill", c], 1, "container does not exist");
    expect_ok(&h, &["delete", "--force", c]);
    expect(&h, &["kill", "", "KILL"], 1, "container id cannot be empty");
}

/// A tmpfs mounted for a test, detached when dropped.
struct TmpfsMount(PathBuf);

impl TmpfsMount {
    fn new(p: &Path) -> TmpfsMount {
        std::fs::create_dir_all(p).unwrap();
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid C strings; a plain mount(2).
        let r = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                c.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(
            r,
            0,
            "mount tmpfs on {}: {}",
            p.display(),
            std::io::Error::last_os_error()
        );
        TmpfsMount(p.to_path_buf())
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let c = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Mount options as runc applies them, through the share and virtio-fs:
/// rbind + ro leaves a host submount writable, rro does not; the recursive
/// attributes reach every mount; relative readonly/masked paths are taken
/// from the container's root.
#[test]
fn mount_options_match_runc() {
    let h = Husk::new("conf-mnt");
    let vol = husk_tests::vm_dir("conf-vol");
    std::fs::create_dir_all(&vol).unwrap();
    let _sub = TmpfsMount::new(&vol.join("sub"));
    let script = "w() { touch $1/probe 2>/dev/null && echo $1=rw || echo $1=ro; }; \
                  w /ro; w /ro/sub; w /rro; w /rro/sub; w /etc; w /tmp; \
                  opts() { awk -v m=$1 '$5 == m { print m \"=\" $6 }' /proc/self/mountinfo | tail -1; }; \
                  opts /x; opts /x/sub; opts /t; \
                  echo masked=$(ls /home/user | wc -l)";
    let mut b = TestBundle::busybox("conf-mnt", &["sh", "-c", script]);
    std::fs::write(b.rootfs().join("home/user/secret"), "s").unwrap();
    let mounts = b.config["mounts"].as_array_mut().unwrap();
    for (dest, opts) in [
        ("/ro", json!(["rbind", "ro"])),
        ("/rro", json!(["rbind", "rro"])),
        ("/x", json!(["rbind", "rnoexec", "rnosuid", "rnodev"])),
    ] {
        mounts.push(json!({"destination": dest, "type": "bind", "source": vol, "options": opts}));
    }
    mounts.push(json!({
        "destination": "/t", "type": "tmpfs", "source": "tmpfs",
        "options": ["rnoatime", "rnosymfollow", "rro"]
    }));
    b.config["linux"]["readonlyPaths"] = json!(["etc", "/proc/sys"]);
    b.config["linux"]["maskedPaths"] = json!(["home/user", "/proc/kcore"]);
    b.write();
    let o = h.run(&["run", "--bundle", b.dir.to_str().unwrap(), "conf-mnt"]);
    let (stdout, stderr) = (out(&o), err(&o));
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    for want in [
        "/ro=ro\n",
        "/ro/sub=rw\n",
        "/rro=ro\n",
        "/rro/sub=ro\n",
        "/etc=ro\n",
        "/tmp=rw\n",
        "masked=0\n",
    ] {
        assert!(
            stdout.contains(want),
            "missing {want:?} in:\n{stdout}\nstderr: {stderr}"
        );
    }
    // The write through the read-only bind's submount reached the host.
    assert!(vol.join("sub/probe").exists());
    assert!(!vol.join("probe").exists());
    let opts = |m: &str| -> Vec<String> {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{m}=")))
            .unwrap_or_else(|| panic!("no mount at {m} in:\n{stdout}\nstderr: {stderr}"));
        line[m.len() + 1..].split(',').map(str::to_string).collect()
    };
    for m in ["/x", "/x/sub"] {
        let o = opts(m);
        for f in ["noexec", "nosuid", "nodev"] {
            assert!(o.iter().any(|x| x == f), "{m} not {f}: {o:?}");
        }
    }
    let o = opts("/t");
    for f in ["ro", "noatime", "nosymfollow"] {
        assert!(o.iter().any(|x| x == f), "/t not {f}: {o:?}");
    }
}

/// Specs runc refuses, or husk cannot run, fail `create` and `run` at once
/// with a clear error and leave nothing behind: never a hang.
#[test]
fn bad_specs_fail_fast() {
    let h = Husk::new("conf-bad");
    let quick = Duration::from_secs(90);
    let fails = |args: &[&str], want: &str| {
        let start = Instant::now();
        let o = h.run(args);
        let took = start.elapsed();
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", err(&o));
        assert!(err(&o).contains(want), "{args:?}: {}", err(&o));
        assert!(took < quick, "{args:?} took {took:?}");
    };

    // Refused on the host, before a VM is booted.
    for (dir, typ) in [("proc", "proc"), ("sys", "sysfs")] {
        let b = TestBundle::busybox(&format!("conf-{dir}"), &["true"]);
        std::fs::remove_dir(b.rootfs().join(dir)).unwrap();
        std::os::unix::fs::symlink("/symlink", b.rootfs().join(dir)).unwrap();
        let bundle = b.dir.to_str().unwrap();
        let want = format!("filesystem \"{typ}\" must be mounted on ordinary directory");
        fails(
            &["create", "--bundle", bundle, &format!("conf-{dir}")],
            &want,
        );
        fails(
            &["run", "--bundle", bundle, &format!("conf-{dir}-run")],
            &want,
        );
    }
    let mut b = TestBundle::busybox("conf-notify", &["true"]);
    b.config["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "listenerPath": "/run/seccomp-agent.sock",
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]
    });
    b.write();
    fails(
        &["run", "--bundle", b.dir.to_str().unwrap(), "conf-notify"],
        "linux.seccomp: SCMP_ACT_NOTIFY and listenerPath are not supported",
    );

    // Refused in the guest (the host's check does not follow the rootfs's
    // symlinks): the agent's error comes back through the whole stack.
    let b = TestBundle::busybox("conf-guest", &["true"]);
    let r = b.rootfs();
    std::fs::create_dir_all(r.join("b")).unwrap();
    std::os::unix::fs::symlink("/b", r.join("a")).unwrap();
    std::os::unix::fs::symlink("/symlink", r.join("b/proc")).unwrap();
    let mut b = b;
    b.config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/a/proc", "type": "proc", "source": "proc"}));
    b.write();
    let bundle = b.dir.to_str().unwrap();
    let want = "filesystem \"proc\" must be mounted on ordinary directory";
    fails(&["create", "--bundle", bundle, "conf-guest"], want);
    fails(&["run", "--bundle", bundle, "conf-guest-run"], want);
    assert!(!r.join("symlink").exists(), "proc mounted through the link");

    // Nothing is left of any of them.
    let left: Vec<_> = std::fs::read_dir(&h.root)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// `out=$(husk run -d --console-socket S ID)` returns while the container
/// runs, as with runc: the monitor does not keep the caller's pipes once
/// the terminal went to the console socket (with them held, a caller
/// reading to EOF waited until the container ended: issue 15's "hang").
#[test]
fn detached_terminal_releases_the_callers_pipes() {
    use std::io::Read;
    use std::os::unix::net::UnixListener;
    let h = Husk::new("conf-tty");
    let mut b = TestBundle::busybox("conf-tty", &["sleep", "1000"]);
    b.config["process"]["terminal"] = json!(true);
    b.write();
    let sock = husk_tests::vm_dir("conf-tty-sock");
    std::fs::create_dir_all(&sock).unwrap();
    let sock = sock.join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    // Holds the connection (and the pty master sent over it) until the end.
    let holder = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let mut cmd = h.cmd();
    cmd.args([
        "run",
        "-d",
        "--console-socket",
        sock.to_str().unwrap(),
        "--bundle",
        b.dir.to_str().unwrap(),
        "conf-tty",
    ])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut o, mut e) = (String::new(), String::new());
        let _ = stdout.read_to_string(&mut o);
        let _ = stderr.read_to_string(&mut e);
        let _ = tx.send((o, e));
    });
    let got = rx.recv_timeout(Duration::from_secs(90));
    let exit = husk_tests::wait_output(child, Duration::from_secs(30)).status;
    let (_, e) = got.expect("husk run -d kept its output pipes open while the container runs");
    assert!(exit.success(), "{e}");
    assert_eq!(status(&h, "conf-tty"), "running");
    let _holder = holder.join().unwrap().expect("the pty was never sent");
    expect_ok(&h, &["delete", "--force", "conf-tty"]);
}

/// `linux.memoryPolicy` is applied in the guest as runc applies it
/// (set_mempolicy in the init before exec): the container's mappings carry
/// the policy. The VM has one NUMA node, so a policy on node 1 fails at
/// create as runc's does on a host without that node, and leaves nothing.
#[test]
fn memory_policy_is_applied_in_the_guest() {
    let h = Husk::new("conf-mpol");
    for (mode, nodes, want) in [
        ("MPOL_BIND", Some("0"), "bind:0"),
        ("MPOL_INTERLEAVE", Some("0"), "interleave:0"),
        ("MPOL_LOCAL", None, "local"),
    ] {
        let id = format!("mpol-{}", mode.to_lowercase().replace('_', "-"));
        let mut b = TestBundle::busybox(&id, &["head", "-n1", "/proc/self/numa_maps"]);
        b.config["linux"]["memoryPolicy"] = json!({ "mode": mode });
        if let Some(n) = nodes {
            b.config["linux"]["memoryPolicy"]["nodes"] = json!(n);
        }
        b.write();
        let o = h.run(&["run", "--bundle", b.dir.to_str().unwrap(), &id]);
        assert!(o.status.success(), "{mode}: {}", err(&o));
        // "<address> <policy> file=... mapped=..."
        let line = out(&o);
        assert_eq!(line.split_whitespace().nth(1), Some(want), "{mode}: {line}");
    }
    // Without a policy: the default.
    let b = TestBundle::busybox("mpol-none", &["head", "-n1", "/proc/self/numa_maps"]);
    let o = h.run(&["run", "--bundle", b.dir.to_str().unwrap(), "mpol-none"]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o).split_whitespace().nth(1), Some("default"));

    for (policy, want) in [
        (
            json!({"mode": "MPOL_BIND", "nodes": "1"}),
            "linux.memoryPolicy: set_mempolicy: Invalid argument",
        ),
        (
            json!({"mode": "MPOL_BIND"}),
            "linux.memoryPolicy: mode MPOL_BIND needs nodes",
        ),
    ] {
        let mut b = TestBundle::busybox("mpol-bad", &["true"]);
        b.config["linux"]["memoryPolicy"] = policy;
        b.write();
        let o = h.run(&["create", "--bundle", b.dir.to_str().unwrap(), "mpol-bad"]);
        assert_eq!(o.status.code(), Some(1), "{}", err(&o));
        assert!(err(&o).contains(want), "{}", err(&o));
        let o = h.run(&["state", "mpol-bad"]);
        assert_eq!(o.status.code(), Some(1), "mpol-bad left behind");
    }
}
