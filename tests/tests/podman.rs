//! Debian's real podman and conmon driving `husk` (`--runtime`), each container
//! in its own microVM. The image is busybox, imported offline; podman runs with
//! its own configuration, storage and run directories, cgroupfs manager, and no
//! network (see tests/src/podman.rs).

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use husk_tests::podman::{Podman, IMAGE};

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn status(p: &Podman, name: &str) -> String {
    p.ok(&["inspect", "--format", "{{.State.Status}}", name])
        .trim()
        .to_string()
}

/// Waits until `cond` holds (TCG is slow; a deadline keeps a hang a failure).
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until `get` returns `want`; a timeout says what it returned last.
fn eventually_eq(what: &str, want: &str, mut get: impl FnMut() -> String) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = get();
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what} to be {want:?}; last {got:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// What a lost log line leaves behind: podman's view, conmon's log file and
/// the runtime's state directory (monitor.log says why a monitor ended).
fn log_diagnostics(p: &Podman, name: &str) -> String {
    let mut d = String::new();
    let logs = p.run(&["logs", name]);
    d += &format!("podman logs: {:?} / {:?}\n", out(&logs), err(&logs));
    let fmt = "{{.State.Status}} pid {{.State.Pid}} log {{.HostConfig.LogConfig.Path}} id {{.Id}}";
    let info = out(&p.run(&["inspect", "--format", fmt, name]));
    d += &format!("inspect: {info}");
    if let Some(path) = info.split_whitespace().skip_while(|w| *w != "log").nth(1) {
        d += &format!("log file: {:?}\n", std::fs::read_to_string(path));
    }
    if let Some(pid) = info.split_whitespace().skip_while(|w| *w != "pid").nth(1) {
        for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            d += &format!(
                "monitor fd {:?} -> {:?}\n",
                e.file_name(),
                std::fs::read_link(e.path())
            );
        }
        for e in std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let wchan = std::fs::read_to_string(e.path().join("wchan")).unwrap_or_default();
            d += &format!("monitor task {stat:.60} wchan {wchan}\n");
        }
    }
    let inside = p.run(&["exec", name, "ls", "-l", "/proc/1/fd"]);
    d += &format!("init fds: {:?} {:?}\n", out(&inside), err(&inside));
    if let Some(id) = info.split_whitespace().skip_while(|w| *w != "id").nth(1) {
        let dir = p.husk_root.join(id);
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            d += &format!("state dir: {}\n", e.path().display());
        }
        d += &format!(
            "monitor.log: {:?}\n",
            std::fs::read_to_string(dir.join("monitor.log"))
        );
    }
    d
}

/// A detached container running `sleep` until removed.
struct Detached<'a> {
    p: &'a Podman,
    name: String,
}

impl<'a> Detached<'a> {
    fn start(p: &'a Podman, name: &str, extra: &[&str], cmd: &str) -> Detached<'a> {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[IMAGE, "sh", "-c", cmd]);
        p.ok(&args);
        Detached {
            p,
            name: name.to_string(),
        }
    }
}

impl Drop for Detached<'_> {
    fn drop(&mut self) {
        let _ = self.p.run(&["rm", "-f", "-t", "0", &self.name]);
    }
}

#[test]
fn run_rm_echo() {
    let p = Podman::shared();
    let o = p.run(&["run", "--rm", IMAGE, "echo", "hi"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(out(&o), "hi\n");
}

#[test]
fn exit_code_propagates() {
    let p = Podman::shared();
    let o = p.run(&["run", "--rm", IMAGE, "sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7), "{}", err(&o));
}

#[test]
fn env_workdir_user_network_none() {
    let p = Podman::shared();
    let o = p.run(&[
        "run",
        "--rm",
        "--network=none",
        "-e",
        "FOO=bar baz",
        "-w",
        "/tmp",
        "--user",
        "1000:1000",
        IMAGE,
        "sh",
        "-c",
        "echo \"$FOO|$(pwd)|$(id -u):$(id -g)|$(ls /sys/class/net)\"",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(out(&o), "bar baz|/tmp|1000:1000|lo\n");
}

#[test]
fn volume_read_and_written() {
    let p = Podman::shared();
    let vol = p.base.join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("in"), "from the host\n").unwrap();
    let spec = format!("{}:/data", vol.display());
    let o = p.run(&[
        "run",
        "--rm",
        "-v",
        &spec,
        IMAGE,
        "sh",
        "-c",
        "cat /data/in && echo from the container > /data/out",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(out(&o), "from the host\n");
    assert_eq!(
        std::fs::read_to_string(vol.join("out")).unwrap(),
        "from the container\n"
    );
}

#[test]
fn read_only_rootfs() {
    let p = Podman::shared();
    let o = p.run(&["run", "--rm", "--read-only", IMAGE, "touch", "/newfile"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(err(&o).contains("Read-only file system"), "{}", err(&o));
    // podman's --read-only keeps /tmp writable (a tmpfs).
    let o = p.run(&["run", "--rm", "--read-only", IMAGE, "touch", "/tmp/ok"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
}

#[test]
fn detached_exec_logs_inspect_ps() {
    let p = Podman::shared();
    let c = Detached::start(p, "husk-life", &[], "echo started; exec sleep 1000");
    eventually_eq("the status", "running", || status(p, &c.name));
    let ps = p.ok(&["ps", "--format", "{{.Names}} {{.Status}}"]);
    assert!(ps.lines().any(|l| l.starts_with("husk-life Up")), "{ps}");
    // exec: output, exit status, and it runs in the container (sees its init).
    let o = p.run(&[
        "exec",
        &c.name,
        "sh",
        "-c",
        "cat /proc/1/cmdline | tr '\\0' ' '; echo; exit 3",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", err(&o));
    assert_eq!(out(&o), "sleep 1000 \n");
    let o = p.run(&[
        "exec",
        "-e",
        "X=1",
        "-w",
        "/etc",
        "-u",
        "1000",
        &c.name,
        "sh",
        "-c",
        "echo $X $(pwd) $(id -u)",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(out(&o), "1 /etc 1000\n");
    let o = p.run(&["exec", &c.name, "/no/such/binary"]);
    assert_eq!(o.status.code(), Some(127), "{}", err(&o));
    let deadline = Instant::now() + Duration::from_secs(120);
    while p.ok(&["logs", &c.name]) != "started\n" {
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for the logs:\n{}",
                log_diagnostics(p, &c.name)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let pid: i32 = p
        .ok(&["inspect", "--format", "{{.State.Pid}}", &c.name])
        .trim()
        .parse()
        .unwrap();
    assert!(pid > 0 && std::path::Path::new(&format!("/proc/{pid}")).exists());
    // top with ps(1) options runs ps in the guest (through exec): the
    // container's own processes, not the host's.
    let top = p.ok(&["top", &c.name, "-ef"]);
    assert!(top.contains("sleep 1000"), "{top}");
    assert!(!top.contains("conmon"), "{top}");
}

#[test]
fn pause_unpause() {
    let p = Podman::shared();
    // The counter lives in a volume, so the host reads it without touching the container.
    let vol = p.base.join("pause-vol");
    std::fs::create_dir_all(&vol).unwrap();
    let spec = format!("{}:/v", vol.display());
    let c = Detached::start(
        p,
        "husk-pause",
        &["-v", &spec],
        "i=0; while :; do i=$((i+1)); echo $i > /v/n.tmp; mv /v/n.tmp /v/n; sleep 0.1; done",
    );
    let n = || std::fs::read_to_string(vol.join("n")).unwrap_or_default();
    eventually("the counter", || !n().is_empty());
    p.ok(&["pause", &c.name]);
    assert_eq!(status(p, &c.name), "paused");
    let frozen = n();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(n(), frozen, "the counter advanced while paused");
    p.ok(&["unpause", &c.name]);
    assert_eq!(status(p, &c.name), "running");
    eventually("the counter to advance", || n() != frozen);
}

#[test]
fn stats_no_stream() {
    let p = Podman::shared();
    let c = Detached::start(p, "husk-stats", &[], "exec sleep 1000");
    eventually_eq("the status", "running", || status(p, &c.name));
    let s = p.ok(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.Name}} {{.MemUsage}} {{.PIDs}}",
        &c.name,
    ]);
    let line = s.lines().next().unwrap_or_default().to_string();
    assert!(line.starts_with("husk-stats "), "{s}");
    // The VM's memory is accounted to the container: not zero.
    assert!(!line.contains(" 0B /"), "{s}");
}

#[test]
fn stop_sigterm_then_sigkill() {
    let p = Podman::shared();
    // Dies on SIGTERM: stop is quick and the exit status is 143.
    let c = Detached::start(
        p,
        "husk-stop1",
        &[],
        "trap 'exit 143' TERM; while :; do sleep 0.1; done",
    );
    eventually_eq("the status", "running", || status(p, &c.name));
    p.ok(&["stop", "-t", "30", &c.name]);
    assert_eq!(
        p.ok(&["inspect", "--format", "{{.State.ExitCode}}", &c.name])
            .trim(),
        "143"
    );
    // Ignores SIGTERM: killed after the timeout.
    let c2 = Detached::start(
        p,
        "husk-stop2",
        &[],
        "trap '' TERM; while :; do sleep 0.1; done",
    );
    eventually_eq("the status", "running", || status(p, &c2.name));
    let t = Instant::now();
    p.ok(&["stop", "-t", "2", &c2.name]);
    assert!(t.elapsed() >= Duration::from_secs(2));
    assert_eq!(
        p.ok(&["inspect", "--format", "{{.State.ExitCode}}", &c2.name])
            .trim(),
        "137"
    );
    // kill sends SIGKILL by default.
    let c3 = Detached::start(p, "husk-kill", &[], "exec sleep 1000");
    eventually_eq("the status", "running", || status(p, &c3.name));
    p.ok(&["kill", &c3.name]);
    eventually_eq("the status", "exited", || status(p, &c3.name));
    drop((c, c2, c3));
}

/// `run --rm` of a container that exits by itself: podman's cleanup process
/// (conmon's exit command) deletes it from husk's state too. It runs the
/// runtime without the `--runtime-flag`s of the `run`; with husk's state under
/// a `root=` flag it used to leave every such container's state behind.
#[test]
fn run_rm_leaves_no_husk_state() {
    let p = Podman::shared();
    let state = || -> Vec<String> {
        std::fs::read_dir(&p.husk_root)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let before = state();
    for i in 0..3 {
        let name = format!("husk-rm-{i}");
        p.ok(&["run", "--rm", "--name", &name, IMAGE, "true"]);
    }
    // The cleanup process may still be running when `run` returns.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut left: Vec<String>;
    loop {
        left = state()
            .into_iter()
            .filter(|i| !before.contains(i))
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(left.is_empty(), "husk state left by run --rm: {left:?}");
}

#[test]
fn rm_f_running_leaves_nothing() {
    let p = Podman::shared();
    let c = Detached::start(p, "husk-rmf", &[], "exec sleep 1000");
    eventually_eq("the status", "running", || status(p, &c.name));
    let id = p
        .ok(&["inspect", "--format", "{{.Id}}", &c.name])
        .trim()
        .to_string();
    assert!(p.husk_root.join(&id).exists());
    p.ok(&["rm", "-f", &c.name]);
    assert!(!p.husk_root.join(&id).exists(), "husk state left behind");
    let leftovers = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&id) && l.contains("husk"))
        .count();
    assert_eq!(leftovers, 0, "mounts left behind");
}

/// Runs `cmd` under script(1) (a pty for podman -it) with `input` as keystrokes.
fn with_pty(p: &Podman, cmd: &str, input: &str) -> Output {
    let mut c = std::process::Command::new("script");
    c.args(["-qefc", cmd, "/dev/null"]);
    for (k, v) in p.cmd().get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    c.stdin(Stdio::piped());
    let mut c = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = c.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
        // script ends the session when its stdin closes: keep it open until
        // the shell is done (it exits on its own).
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(170));
            drop(stdin);
        });
    }
    husk_tests::wait_output(c, husk_tests::COMMAND_TIMEOUT)
}

fn podman_cmdline(p: &Podman, args: &str) -> String {
    let c = p.cmd();
    let mut s = String::from("podman");
    for a in c.get_args() {
        s.push_str(&format!(" '{}'", a.to_string_lossy()));
    }
    format!("{s} {args}")
}

#[test]
fn interactive_run_it() {
    let p = Podman::shared();
    let cmd = podman_cmdline(p, &format!("run -it --rm {IMAGE} sh"));
    let o = with_pty(p, &cmd, "tty; echo sum=$((40+2)); exit 5\n");
    let s = out(&o);
    assert!(s.contains("sum=42"), "{s}\n{}", err(&o));
    assert!(
        s.contains("/dev/pts/0") || s.contains("/dev/console"),
        "{s}"
    );
    assert_eq!(o.status.code(), Some(5), "{s}");
}

#[test]
fn exec_it_and_resize() {
    let p = Podman::shared();
    let c = Detached::start(p, "husk-execit", &[], "exec sleep 1000");
    eventually_eq("the status", "running", || status(p, &c.name));
    // tmux gives a terminal we can resize.
    let sock = p.base.join("tmux.sock");
    let tmux = |args: &[&str]| {
        let o = std::process::Command::new("tmux")
            .arg("-S")
            .arg(&sock)
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "tmux {args:?}: {}", err(&o));
        out(&o)
    };
    let cmd = podman_cmdline(p, &format!("exec -it {} sh", c.name));
    let mut env_cmd = String::new();
    for (k, v) in p.cmd().get_envs() {
        if let Some(v) = v {
            env_cmd.push_str(&format!(
                "{}='{}' ",
                k.to_string_lossy(),
                v.to_string_lossy()
            ));
        }
    }
    tmux(&[
        "new-session",
        "-d",
        "-x",
        "100",
        "-y",
        "30",
        "-s",
        "t",
        &format!("env {env_cmd} {cmd}"),
    ]);
    let screen_has = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let s = tmux(&["capture-pane", "-p", "-t", "t"]);
            if s.contains(needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "screen never showed {needle:?}:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    tmux(&[
        "send-keys",
        "-t",
        "t",
        "echo size-$(stty size | tr ' ' x)",
        "Enter",
    ]);
    screen_has("size-30x100");
    tmux(&["resize-window", "-t", "t", "-x", "120", "-y", "40"]);
    std::thread::sleep(Duration::from_secs(1));
    tmux(&[
        "send-keys",
        "-t",
        "t",
        "echo size-$(stty size | tr ' ' x)",
        "Enter",
    ]);
    screen_has("size-40x120");
    tmux(&["send-keys", "-t", "t", "exit", "Enter"]);
    let _ = std::process::Command::new("tmux")
        .arg("-S")
        .arg(&sock)
        .args(["kill-server"])
        .output();
}

#[test]
fn five_at_once() {
    let p = Podman::shared();
    let hs: Vec<_> = (0..5)
        .map(|i| {
            let mut c = p.cmd();
            c.args(["run", "--rm", IMAGE, "echo", &format!("container {i}")])
                .stdin(Stdio::null());
            std::thread::spawn(move || {
                (i, husk_tests::output_within(c, husk_tests::COMMAND_TIMEOUT))
            })
        })
        .collect();
    for h in hs {
        let (i, o) = h.join().unwrap();
        assert_eq!(o.status.code(), Some(0), "container {i}: {}", err(&o));
        assert_eq!(out(&o), format!("container {i}\n"));
    }
}
