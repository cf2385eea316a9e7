//! `husk exec`, `ps`, `pause`/`resume`, `events` and `update` on a running
//! container, through the runc-compatible CLI, with real guests.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use husk_tests::bundle::TestBundle;
use husk_tests::Husk;
use serde_json::Value;

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn status(h: &Husk, id: &str) -> String {
    let o = h.run(&["state", id]);
    assert!(o.status.success(), "state {id}: {}", err(&o));
    serde_json::from_slice::<Value>(&o.stdout).unwrap()["status"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A detached container running `cmd` under sh; deleted (forcibly) on drop.
struct Running<'a> {
    h: &'a Husk,
    id: String,
    bundle: TestBundle,
}

impl<'a> Running<'a> {
    fn start(h: &'a Husk, id: &str, cmd: &str) -> Running<'a> {
        let bundle = TestBundle::busybox(id, &["sh", "-c", cmd]);
        let o = h.run(&[
            "run",
            "--detach",
            "--bundle",
            bundle.dir.to_str().unwrap(),
            id,
        ]);
        assert!(o.status.success(), "run -d {id}: {}", err(&o));
        assert_eq!(status(h, id), "running");
        Running {
            h,
            id: id.to_string(),
            bundle,
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let _ = self.h.run(&["delete", "--force", &self.id]);
    }
}

fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn exec_foreground_stdio_and_status() {
    let h = Husk::new("exec-fg");
    let c = Running::start(&h, "xfg", "exec sleep 1000");
    // stdin in, stdout and stderr apart, exit status out.
    let mut cmd = h.cmd();
    cmd.args([
        "exec",
        &c.id,
        "sh",
        "-c",
        "read l; echo out:$l; echo err:$(hostname) >&2; exit 4",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"ping\n").unwrap();
    let o = husk_tests::wait_output(child, husk_tests::COMMAND_TIMEOUT);
    assert_eq!(o.status.code(), Some(4), "{}", err(&o));
    assert_eq!(out(&o), "out:ping\n");
    assert_eq!(
        err(&o),
        "err:husk-test\n",
        "the exec sees the container's hostname (the spec's)"
    );
    // It runs in the container's pid namespace: its init is `sleep`.
    let o = h.run(&["exec", &c.id, "cat", "/proc/1/cmdline"]);
    assert_eq!(out(&o), "sleep\x001000\x00");
    // --env / --cwd / --user apply.
    let o = h.run(&[
        "exec",
        "--env",
        "X=y",
        "--cwd",
        "/tmp",
        "--user",
        "1000:1000",
        &c.id,
        "sh",
        "-c",
        "echo $X $(pwd) $(id -u):$(id -g)",
    ]);
    assert_eq!(out(&o), "y /tmp 1000:1000\n", "{}", err(&o));
    // Killed by a signal: husk exec dies by it too.
    let o = h.run(&["exec", &c.id, "sh", "-c", "kill -TERM $$"]);
    assert_eq!(o.status.signal(), Some(libc::SIGTERM), "{}", err(&o));
    // A missing binary is an error; the container is unharmed.
    let o = h.run(&["exec", &c.id, "/no/such/thing"]);
    assert!(!o.status.success());
    assert!(err(&o).contains("No such file or directory"), "{}", err(&o));
    assert_eq!(status(&h, &c.id), "running");
}

#[test]
fn exec_detached_pid_file_and_process_json() {
    let h = Husk::new("exec-d");
    let c = Running::start(&h, "xd", "exec sleep 1000");
    let dir = c.bundle.dir.clone();
    std::fs::write(
        dir.join("proc.json"),
        r#"{"args":["sh","-c","echo detached > /tmp/mark; sleep 1; exit 9"],"cwd":"/","env":["PATH=/bin"],"user":{"uid":0,"gid":0}}"#,
    )
    .unwrap();
    let pidf = dir.join("exec.pid");
    let o = h.run(&[
        "exec",
        "--detach",
        "--pid-file",
        pidf.to_str().unwrap(),
        "--process",
        dir.join("proc.json").to_str().unwrap(),
        &c.id,
    ]);
    assert!(o.status.success(), "{}", err(&o));
    let pid: i32 = std::fs::read_to_string(&pidf)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The pid stands for the exec: it goes away when the guest process ends.
    eventually("the exec's host process to end", || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)
    });
    let o = h.run(&["exec", &c.id, "cat", "/tmp/mark"]);
    assert_eq!(out(&o), "detached\n");
    // Refusals, runc's way.
    let o = h.run(&["exec", &c.id]);
    assert!(err(&o).contains("exec args cannot be empty"), "{}", err(&o));
    let o = h.run(&["exec", "--detach", "--tty", &c.id, "true"]);
    assert!(err(&o).contains("console socket"), "{}", err(&o));
    let o = h.run(&["exec", "nosuch", "true"]);
    assert!(err(&o).contains("container does not exist"), "{}", err(&o));
}

#[test]
fn ps_pause_resume_events_update() {
    let h = Husk::new("ops");
    let c = Running::start(
        &h,
        "ops",
        "i=0; while :; do i=$((i+1)); echo $i > /tmp/n; sleep 0.1; done",
    );
    let rootfs = c.bundle.rootfs();
    let n = || std::fs::read_to_string(rootfs.join("tmp/n")).unwrap_or_default();
    eventually("the counter", || !n().is_empty());

    // ps: the guest's processes of this container.
    let o = h.run(&["ps", &c.id]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        out(&o).starts_with("  UID     PID    PPID STAT"),
        "{}",
        out(&o)
    );
    assert!(out(&o).contains("sh -c i=0"), "{}", out(&o));
    let o = h.run(&["ps", "--format", "json", &c.id]);
    let pids: Vec<i32> = serde_json::from_slice(&o.stdout).unwrap();
    assert!(!pids.is_empty());

    // pause freezes it (the counter stops), resume thaws it.
    let o = h.run(&["pause", &c.id]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(status(&h, &c.id), "paused");
    let frozen = n();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(n(), frozen);
    let o = h.run(&["exec", &c.id, "true"]);
    assert!(
        err(&o).contains("cannot exec in a paused container"),
        "{}",
        err(&o)
    );
    let o = h.run(&["pause", &c.id]);
    assert!(err(&o).contains("container not running"), "{}", err(&o));
    let o = h.run(&["resume", &c.id]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(status(&h, &c.id), "running");
    eventually("the counter to move", || n() != frozen);
    let o = h.run(&["resume", &c.id]);
    assert!(err(&o).contains("container not paused"), "{}", err(&o));

    // events --stats: runc's JSON, with the guest cgroup's numbers.
    let o = h.run(&["events", "--stats", &c.id]);
    assert!(o.status.success(), "{}", err(&o));
    let ev: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ev["type"], "stats");
    assert!(ev["data"]["memory"]["usage"]["usage"].as_u64().unwrap() > 0);
    assert!(ev["data"]["pids"]["current"].as_u64().unwrap() >= 1);
    assert!(ev["data"]["cpu"]["usage"]["total"].as_u64().unwrap() > 0);

    // update: a pids limit applied in the guest stops forks beyond it.
    let o = h.run(&["update", "--pids-limit", "3", &c.id]);
    assert!(o.status.success(), "{}", err(&o));
    let o = h.run(&["events", "--stats", &c.id]);
    let ev: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ev["data"]["pids"]["limit"], 3);
    let o = h.run(&[
        "exec",
        &c.id,
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6; do sleep 5 & done 2>/dev/null; wait; echo done",
    ]);
    assert!(
        !o.status.success()
            || err(&o).contains("Resource temporarily unavailable")
            || err(&o).contains("fork"),
        "forks beyond pids.max must fail: {} / {}",
        out(&o),
        err(&o)
    );
}

#[test]
fn oom_kill_is_an_event() {
    use std::io::{BufRead, BufReader};
    let h = Husk::new("oom");
    let c = Running::start(&h, "oom", "exec sleep 1000");
    let mut events = h.cmd();
    events
        .args(["events", "--interval", "1s", &c.id])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut events = events.spawn().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = events.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The first line is a stats event: the stream is up.
    let first = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("a stats event");
    assert!(first.contains("\"type\":\"stats\""), "{first}");
    let o = h.run(&["update", "--memory", "16777216", &c.id]);
    assert!(o.status.success(), "{}", err(&o));
    // dd's 64 MiB buffer does not fit in 16 MiB: the guest's OOM killer takes it.
    let o = h.run(&[
        "exec",
        &c.id,
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=64M",
        "count=1",
    ]);
    assert_eq!(o.status.signal(), Some(libc::SIGKILL), "{}", err(&o));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let got = loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(l) if l.contains("\"type\":\"oom\"") => break true,
            Ok(l) => seen.push(l),
            Err(_) if Instant::now() > deadline => break false,
            Err(_) => {}
        }
    };
    let _ = events.kill();
    let _ = events.wait();
    assert!(got, "no oom event; saw {} other events", seen.len());
}
