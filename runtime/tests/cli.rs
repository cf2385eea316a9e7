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
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("invalid container ID format"),
            "{args:?}: {err}"
        );
    }
    assert!(root.0.join("etc").exists());
}
