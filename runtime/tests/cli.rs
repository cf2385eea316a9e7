//! The `husk` command line against fake state (no VM): what it must do
//! whatever the guest does (review F5) and whatever ids it is given (F9).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use husk::container::state::process_start_time;
use husk::container::{State, Store};

fn husk(root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_husk"));
    c.arg("--root").arg(root).args(args);
    c
}

/// Runs `cmd`, killing it after `limit` (the `timeout 60` of the brief).
fn run_within(mut cmd: Command, limit: Duration) -> (Output, Duration) {
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    loop {
        if child.try_wait().unwrap().is_some() {
            return (child.wait_with_output().unwrap(), start.elapsed());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("{cmd:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct TempRoot(PathBuf);

impl TempRoot {
    fn new(tag: &str) -> TempRoot {
        // Short: the vsock socket path must fit in sun_path.
        let p = std::env::temp_dir().join(format!("hk-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempRoot(p)
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A VMM socket whose "agent" accepts, then answers anything with a 1 MiB
/// length and one byte every 3 s: a slow-loris guest.
fn slow_loris_agent(path: &Path) {
    let l = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { return };
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                let _ = r.read_line(&mut line);
                let _ = s.write_all(b"OK 1\n");
                let _ = s.write_all(&(1u32 << 20).to_be_bytes());
                for _ in 0..100 {
                    if s.write_all(b"{").is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_secs(3));
                }
            });
        }
    });
}

/// State for container `id` whose "monitor" is a `sleep` we started, with a
/// stuck agent behind its vsock socket.
fn fake_running_container(root: &Path, id: &str) -> Child {
    let sleep = Command::new("sleep").arg("1000").spawn().unwrap();
    let pid = sleep.id() as i32;
    let store = Store::new(root);
    let dir = store.claim(id).unwrap();
    let st = State {
        id: id.into(),
        oci_version: "1.0.2".into(),
        bundle: "/nonexistent".into(),
        rootfs: "/nonexistent/rootfs".into(),
        created: State::now_rfc3339(),
        owner: String::new(),
        annotations: Default::default(),
        pid,
        pid_start: process_start_time(pid).unwrap(),
        vmm_pid: 0,
        vmm_pid_start: 0,
        started: true,
        paused: false,
    };
    store.save(&st).unwrap();
    let sock = husk::monitor::vsock_path(&dir);
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    slow_loris_agent(&sock);
    sleep
}

fn assert_killed(mut sleep: Child) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = sleep.try_wait().unwrap() {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
            return;
        }
        if Instant::now() > deadline {
            let _ = sleep.kill();
            panic!("the container's monitor survived");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn delete_force_does_not_wait_on_a_stuck_agent() {
    let root = TempRoot::new("del");
    let sleep = fake_running_container(&root.0, "c1");
    let (out, took) = run_within(
        husk(&root.0, &["delete", "--force", "c1"]),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert_killed(sleep);
    assert!(!root.0.join("c1").exists());
}

#[test]
fn sigkill_does_not_wait_on_a_stuck_agent() {
    let root = TempRoot::new("kill");
    let sleep = fake_running_container(&root.0, "c2");
    let (out, took) = run_within(
        husk(&root.0, &["kill", "c2", "KILL"]),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_killed(sleep);
}

#[test]
fn other_signals_fail_with_a_timeout() {
    let root = TempRoot::new("term");
    let mut sleep = fake_running_container(&root.0, "c3");
    let (out, took) = run_within(
        husk(&root.0, &["kill", "c3", "TERM"]),
        Duration::from_secs(60),
    );
    let _ = sleep.kill();
    let _ = sleep.wait();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no reply within"), "{err}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[test]
fn invalid_ids_are_refused_by_every_command() {
    let root = TempRoot::new("ids");
    // Something an unvalidated id could reach.
    std::fs::create_dir_all(root.0.join("etc")).unwrap();
    let sub = root.0.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    let cases: &[&[&str]] = &[
        &["state", "../etc"],
        &["start", "/abs/x"],
        &["kill", "../etc", "KILL"],
        &["delete", "../etc"],
        &["exec", "../etc", "true"],
        &["ps", "a/b"],
        &["pause", ".."],
        &["resume", "."],
        &["events", "--stats", "../etc"],
        &["update", "--memory", "1", "../etc"],
        &["create", "--bundle", "/nonexistent", "../etc"],
        &["run", "--bundle", "/nonexistent", "../etc"],
    ];
    for args in cases {
        let (out, _) = run_within(husk(&sub, args), Duration::from_secs(30));
        let err = String::from_utf8_lossy(&out.stderr);
        // runc: exec failures exit 255, everything else 1.
        let code = if args[0] == "exec" { 255 } else { 1 };
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(
            err.contains("invalid container ID format"),
            "{args:?}: {err}"
        );
    }
    assert!(root.0.join("etc").exists());
}

// ---- runc 1.1's lifecycle errors (issue 15, group 1) --------------------
// Each expectation is what `runc` 1.1 prints (after its log prefix) and
// its exit code.

/// Runs `husk ARGS` under `root`; returns (exit code, stderr).
fn husk_err(root: &Path, args: &[&str]) -> (Option<i32>, String) {
    let (out, _) = run_within(husk(root, args), Duration::from_secs(30));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn husk_out(root: &Path, args: &[&str]) -> std::process::Output {
    run_within(husk(root, args), Duration::from_secs(30)).0
}

#[track_caller]
fn expect(root: &Path, args: &[&str], code: i32, msg: &str) {
    let (c, err) = husk_err(root, args);
    assert_eq!(c, Some(code), "{args:?}: {err}");
    assert_eq!(err, format!("husk: {msg}\n"), "{args:?}");
}

#[test]
fn empty_ids_are_refused_like_runc() {
    let root = TempRoot::new("empty");
    let cases: &[&[&str]] = &[
        &["state", ""],
        &["start", ""],
        &["kill", ""],
        &["kill", "", "KILL"],
        &["delete", ""],
        &["delete", "--force", ""],
        &["ps", ""],
        &["pause", ""],
        &["resume", ""],
        &["events", "--stats", ""],
        &["update", "--memory", "10000000", ""],
        &["create", "--bundle", "/nonexistent", ""],
        &["run", "--bundle", "/nonexistent", ""],
    ];
    for args in cases {
        expect(&root.0, args, 1, "container id cannot be empty");
    }
    expect(
        &root.0,
        &["exec", "", "true"],
        255,
        "exec failed: container id cannot be empty",
    );
}

#[test]
fn unknown_ids_are_refused_like_runc() {
    let root = TempRoot::new("unknown");
    let cases: &[&[&str]] = &[
        &["state", "nope"],
        &["start", "nope"],
        &["kill", "nope"],
        &["kill", "nope", "KILL"],
        // The container is looked up before the signal, as in runc.
        &["kill", "nope", "NOSUCHSIGNAL"],
        &["delete", "nope"],
        &["ps", "nope"],
        &["pause", "nope"],
        &["resume", "nope"],
        &["events", "--stats", "nope"],
        &["update", "--memory", "10000000", "nope"],
    ];
    for args in cases {
        expect(&root.0, args, 1, "container does not exist");
    }
    expect(
        &root.0,
        &["exec", "nope", "true"],
        255,
        "exec failed: container does not exist",
    );
    // Only --force is quiet about it.
    let (c, err) = husk_err(&root.0, &["delete", "--force", "nope"]);
    assert_eq!(c, Some(0), "{err}");
    assert_eq!(err, "");
}

#[test]
fn usage_errors_exit_like_runc() {
    let root = TempRoot::new("usage");
    for args in [
        &["state"][..],
        &["state", "a", "b"],
        &["start", "a", "b"],
        &["kill", "a", "KILL", "c"],
        &["delete"],
        &["state", "--bogus", "x"],
    ] {
        let (c, err) = husk_err(&root.0, args);
        assert_eq!(c, Some(1), "{args:?}: {err}");
    }
    let (c, err) = husk_err(&root.0, &["bogusverb"]);
    assert_eq!(c, Some(3), "{err}");
}

/// State for `id` in `status` (created, running, paused or stopped), with
/// a `sleep` as its monitor (dead for stopped) and no VM: enough for every
/// check the CLI makes before it talks to the guest.
fn fake_container(root: &Path, id: &str, status: &str) -> Child {
    let mut sleep = Command::new("sleep").arg("1000").spawn().unwrap();
    let pid = sleep.id() as i32;
    let pid_start = process_start_time(pid).unwrap();
    if status == "stopped" {
        sleep.kill().unwrap();
        sleep.wait().unwrap();
    }
    let store = Store::new(root);
    store.claim(id).unwrap();
    let st = State {
        id: id.into(),
        oci_version: "1.0.2".into(),
        bundle: "/nonexistent".into(),
        rootfs: "/nonexistent/rootfs".into(),
        created: State::now_rfc3339(),
        owner: String::new(),
        annotations: Default::default(),
        pid,
        pid_start,
        vmm_pid: 0,
        vmm_pid_start: 0,
        started: status == "running" || status == "paused",
        paused: status == "paused",
    };
    store.save(&st).unwrap();
    sleep
}

#[test]
fn state_errors_match_runc() {
    let root = TempRoot::new("states");
    let mut monitors = Vec::new();
    for s in ["created", "running", "paused", "stopped"] {
        monitors.push(fake_container(&root.0, s, s));
    }
    let r = &root.0;
    expect(
        r,
        &["start", "running"],
        1,
        "cannot start an already running container",
    );
    expect(
        r,
        &["start", "paused"],
        1,
        "cannot start a container in the paused state",
    );
    expect(
        r,
        &["start", "stopped"],
        1,
        "cannot start a container that has stopped",
    );
    expect(r, &["kill", "stopped"], 1, "container not running");
    expect(r, &["kill", "stopped", "KILL"], 1, "container not running");
    expect(r, &["pause", "paused"], 1, "container not running");
    expect(r, &["pause", "stopped"], 1, "container not running");
    expect(
        r,
        &["events", "stopped"],
        1,
        "container with id stopped is not running",
    );
    // runc lists an empty cgroup: the header (or `[]`) and success.
    let o = husk_out(r, &["ps", "stopped"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "  UID     PID    PPID STAT     TIME CMD\n"
    );
    let o = husk_out(r, &["ps", "--format", "json", "stopped"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "[]\n");
    expect(r, &["resume", "running"], 1, "container not paused");
    expect(r, &["resume", "created"], 1, "container not paused");
    expect(r, &["resume", "stopped"], 1, "container not paused");
    expect(
        r,
        &["update", "--memory", "10000000", "stopped"],
        1,
        "container not running",
    );
    expect(
        r,
        &["exec", "stopped", "true"],
        255,
        "exec failed: cannot exec in a stopped container",
    );
    expect(
        r,
        &["exec", "paused", "true"],
        255,
        "exec failed: cannot exec in a paused container (use --ignore-paused to override)",
    );
    for s in ["running", "paused"] {
        expect(
            r,
            &["delete", s],
            1,
            &format!("cannot delete container {s} that is not stopped: {s}"),
        );
        assert!(r.join(s).join("state.json").exists(), "{s} was deleted");
    }
    // A stopped one goes without --force.
    let (c, err) = husk_err(r, &["delete", "stopped"]);
    assert_eq!(c, Some(0), "{err}");
    assert!(!r.join("stopped").exists());
    // runc 1.1 deletes a created container without --force: its init is killed.
    let (c, err) = husk_err(r, &["delete", "created"]);
    assert_eq!(c, Some(0), "{err}");
    assert!(!r.join("created").exists());
    assert_killed(monitors.remove(0));
    for mut m in monitors {
        let _ = m.kill();
        let _ = m.wait();
    }
}

/// Issue 15: whatever hangs behind the monitor (here a "VMM" that never
/// boots), `create` gives up with an error at its deadline, and leaves no
/// process or state behind.
#[test]
fn create_has_a_deadline() {
    let root = TempRoot::new("deadline");
    let d = &root.0;
    let bundle = d.join("bundle");
    std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
    std::fs::write(
        bundle.join("config.json"),
        r#"{"ociVersion": "1.0.2", "root": {"path": "rootfs"},
            "process": {"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "linux": {"namespaces": [{"type": "mount"}, {"type": "network"}]}}"#,
    )
    .unwrap();
    for f in ["kernel", "initrd"] {
        std::fs::write(d.join(f), "").unwrap();
    }
    let vmm = d.join("vmm");
    let pid_file = d.join("vmm.pid");
    std::fs::write(
        &vmm,
        format!(
            "#!/bin/sh\necho $$ > {}\nexec sleep 1000\n",
            pid_file.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&vmm, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = d.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "kernel = {:?}\ninitrd = {:?}\nvmm = {:?}\n",
            d.join("kernel"),
            d.join("initrd"),
            vmm
        ),
    )
    .unwrap();
    let state = d.join("state");
    let mut cmd = husk(
        &state,
        &["create", "--bundle", bundle.to_str().unwrap(), "dl1"],
    );
    cmd.env("HUSK_CONFIG", &config)
        .env("HUSK_CREATE_TIMEOUT", "3")
        .stdin(Stdio::null());
    let (out, took) = run_within(cmd, Duration::from_secs(60));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err,
        "husk: the container was not created within 3s (its monitor or guest did not answer)\n"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(!state.join("dl1").exists(), "state left behind");
    // The "VMM" went with its monitor (PR_SET_PDEATHSIG).
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("the fake VMM never ran")
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_start_time(pid).is_some() {
        assert!(Instant::now() < deadline, "the VMM survived create");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `features` lists the mount options husk applies: runc's, the recursive
/// attributes included (issue 15).
#[test]
fn features_list_runc_mount_options() {
    let root = TempRoot::new("features");
    let (out, _) = run_within(husk(&root.0, &["features"]), Duration::from_secs(30));
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let opts: Vec<&str> = v["mountOptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap())
        .collect();
    for o in [
        "rro",
        "rrw",
        "rnosuid",
        "rnodev",
        "rnoexec",
        "rnoatime",
        "rnosymfollow",
        "rbind",
    ] {
        assert!(opts.contains(&o), "{o} missing from {opts:?}");
    }
}

/// Runs husk with `fds` as its fds 3, 4, ... and nothing else above 2.
fn husk_err_with_fds(
    root: &Path,
    args: &[&str],
    fds: &[&dyn std::os::fd::AsRawFd],
) -> (Option<i32>, String) {
    use std::os::unix::process::CommandExt;
    assert!(fds.len() <= 4);
    let mut raw = [-1i32; 4];
    for (r, f) in raw.iter_mut().zip(fds) {
        *r = f.as_raw_fd();
    }
    let n = fds.len();
    let mut cmd = husk(root, args);
    // SAFETY: only dup2/fcntl/close_range between fork and exec, on data
    // prepared before (no allocation).
    unsafe {
        cmd.pre_exec(move || {
            // Above every target first, so no dup2 clobbers a source.
            let mut high = [-1i32; 4];
            for i in 0..n {
                high[i] = libc::fcntl(raw[i], libc::F_DUPFD_CLOEXEC, 100);
            }
            for (i, h) in high.iter().take(n).enumerate() {
                libc::dup2(*h, 3 + i as i32);
            }
            libc::syscall(
                libc::SYS_close_range,
                3 + n as u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            Ok(())
        });
    }
    let (out, _) = run_within(cmd, Duration::from_secs(30));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `--preserve-fds N`: what cannot be carried into the VM (a regular file,
/// a datagram socket, a descriptor that is not open) is refused before
/// anything is created, never silently dropped (issue 15, group 5).
#[test]
fn preserved_fds_that_cannot_cross_are_refused() {
    let root = TempRoot::new("pfds");
    let (pipe_r, _pipe_w) = nix::unistd::pipe().unwrap();
    let file = std::fs::File::create(root.0.join("regular")).unwrap();
    let msg = "--preserve-fds: fd 4 is a regular file; only pipes, FIFOs, stream sockets \
               (listening or connected) and /dev/null can be passed into the VM";
    for cmd in ["create", "run"] {
        let (c, err) = husk_err_with_fds(
            &root.0,
            &[
                cmd,
                "--preserve-fds",
                "2",
                "--bundle",
                "/nonexistent",
                "pf1",
            ],
            &[&pipe_r, &file],
        );
        assert_eq!(c, Some(1), "{cmd}: {err}");
        assert_eq!(err, format!("husk: {msg}\n"), "{cmd}");
    }
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (c, err) = husk_err_with_fds(
        &root.0,
        &[
            "create",
            "--preserve-fds",
            "1",
            "--bundle",
            "/nonexistent",
            "pf1",
        ],
        &[&udp],
    );
    assert_eq!(c, Some(1), "{err}");
    assert!(err.contains("fd 3 is a datagram socket"), "{err}");
    let (c, err) = husk_err_with_fds(
        &root.0,
        &[
            "run",
            "--preserve-fds",
            "2",
            "--bundle",
            "/nonexistent",
            "pf1",
        ],
        &[&pipe_r],
    );
    assert_eq!(c, Some(1), "{err}");
    assert_eq!(err, "husk: --preserve-fds: fd 4 is not open\n");
    let (c, err) = husk_err_with_fds(
        &root.0,
        &[
            "run",
            "--preserve-fds",
            "33",
            "--bundle",
            "/nonexistent",
            "pf1",
        ],
        &[],
    );
    assert_eq!(c, Some(1), "{err}");
    assert!(err.contains("at most 32"), "{err}");
    assert!(!root.0.join("pf1").exists());
    // exec: the container is looked up first, as runc does.
    let mut sleep = fake_container(&root.0, "pf2", "running");
    let (c, err) = husk_err_with_fds(
        &root.0,
        &["exec", "--preserve-fds", "2", "pf2", "true"],
        &[&pipe_r, &file],
    );
    let _ = sleep.kill();
    let _ = sleep.wait();
    assert_eq!(c, Some(255), "{err}");
    assert_eq!(err, format!("husk: exec failed: {msg}\n"));
    assert!(!std::fs::read_dir(root.0.join("pf2"))
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("exec-")));
}

/// `husk check --format json`, parsed, and its exit code.
fn check_json(root: &Path, extra: &[&str]) -> (Option<i32>, Vec<serde_json::Value>) {
    let mut args = extra.to_vec();
    args.extend(["check", "--format", "json"]);
    let (o, _) = run_within(husk(root, &args), Duration::from_secs(30));
    let v: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)));
    (o.status.code(), v)
}

#[test]
fn check_says_what_this_host_lacks() {
    let root = TempRoot::new("check");
    let cfg = root.0.join("config.toml");
    std::fs::write(
        &cfg,
        "kernel = \"/nonexistent/vmlinux\"\ninitrd = \"/nonexistent/initrd.img\"\n",
    )
    .unwrap();
    let cfg_arg = format!("--config={}", cfg.display());
    let (code, checks) = check_json(&root.0, &[&cfg_arg]);
    for c in &checks {
        assert!(c["name"].is_string() && c["detail"].is_string(), "{c}");
        let status = c["status"].as_str().unwrap();
        assert!(["ok", "fail", "info"].contains(&status), "{c}");
        // Every failure says what to do; nothing else has a fix.
        assert_eq!(status == "fail", c["fix"].is_string(), "{c}");
    }
    let by_name = |n: &str| {
        checks
            .iter()
            .find(|c| c["name"] == n)
            .unwrap_or_else(|| panic!("no {n} check"))
    };
    // The configuration is the one create would use, through --config too.
    let kernel = by_name("guest-kernel");
    assert_eq!(kernel["status"], "fail");
    assert!(kernel["detail"]
        .as_str()
        .unwrap()
        .contains("/nonexistent/vmlinux"));
    assert!(kernel["fix"].as_str().unwrap().contains("kernel = "));
    assert_eq!(code, Some(1), "a failed check must fail the command");
    for n in ["kvm-kind", "cgroup", "podman", "containerd", "docker"] {
        by_name(n);
    }

    // Text: one line per check and a verdict.
    let (o, _) = run_within(husk(&root.0, &[&cfg_arg, "check"]), Duration::from_secs(30));
    assert_eq!(o.status.code(), Some(1));
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(text.lines().count(), checks.len() + 1, "{text}");
    assert!(text.contains("FAIL  guest-kernel: "), "{text}");
    assert!(text
        .lines()
        .last()
        .unwrap()
        .starts_with("husk cannot run containers on this host"));

    // This development host's /dev/kvm is PVM: no husk VM can start, and
    // check says so and where husk's tests run instead.
    if Path::new("/sys/module/kvm_pvm").exists() {
        let kind = by_name("kvm-kind");
        assert_eq!(kind["status"], "fail");
        assert!(kind["detail"].as_str().unwrap().contains("PVM"), "{kind}");
        assert!(
            kind["fix"].as_str().unwrap().contains("KVM test host")
                && kind["fix"]
                    .as_str()
                    .unwrap()
                    .contains("tests/kvm-test-host"),
            "{kind}"
        );
        let (code, _) = check_json(&root.0, &[]);
        assert_eq!(code, Some(1));
    }
}
