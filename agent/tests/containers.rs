//! End-to-end container tests: the agent in its `--listen-unix` test mode,
//! driven over the real protocol, running a busybox rootfs.
//!
//! Every test here is `#[ignore]`d by default because it needs root. None of
//! them skips silently: run in an environment that lacks what it needs, a
//! test fails and says what is missing.
//!
//! - `root_*`: root with mount/pid/uts/ipc/net namespaces and /bin/busybox
//!   (Debian's busybox-static); pause/resume also needs the cgroup v2
//!   hierarchy (the agent mounts it in its own mount namespace, controllers
//!   or not); the network test also unshare/nsenter (util-linux) and ip
//!   (iproute2), and runs its agent in a network namespace of its own. They
//!   pass on an ordinary root host:
//!   `cargo test -p husk-agent --test containers -- --ignored --test-threads=1 root_`
//! - `full_root_*`: additionally full capabilities (CAP_SYS_RESOURCE in the
//!   bounding set, a raisable RLIMIT_NOFILE) and cgroup v2 with the memory and
//!   pids controllers at /sys/fs/cgroup. Run them in the KVM test host:
//!   `cargo test -p husk-agent --test containers --no-run` prints the test
//!   binary (target/debug/deps/containers-HASH), then
//!   `tests/vm-run.sh target/debug/deps/containers-HASH --ignored --test-threads=1`
//!   (that runs the whole file, `root_*` included, as full root).
//!
//! Temporary files go under /tmp, created at run time (inside the test host
//! /tmp is a fresh tmpfs and everything else is read-only).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use husk_protocol::network::{IpNet, Link, Neighbor, NetworkConfig, Route};
use husk_protocol::{
    self as proto, ContainerStats, ContainerStatus, CreateContainer, ExecProcess, ExitStatus,
    ProcessInfo, Request, Response, StdioStream,
};
use serde_json::{json, Value};

const AGENT: &str = env!("CARGO_BIN_EXE_husk-agent");
const BUSYBOX: &str = "/bin/busybox";

// ----------------------------------------------------------- environment ----

fn fail_env(what: &str) -> ! {
    panic!(
        "ENVIRONMENT CANNOT RUN THIS TEST: {what}.\n\
         Run root_* tests as root with /bin/busybox (apt-get install busybox-static);\n\
         run full_root_* tests with full root and cgroup v2 via \
         `tests/vm-run.sh target/debug/deps/containers-HASH --ignored --test-threads=1`."
    )
}

fn require_root() {
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } != 0 {
        fail_env("it must run as root (it creates namespaces and mounts)");
    }
    if !Path::new(BUSYBOX).exists() {
        fail_env("/bin/busybox is missing (Debian package busybox-static)");
    }
}

fn cap_bounding() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

fn require_full_root() {
    require_root();
    let want = (1u64 << (last_cap() + 1)) - 1;
    let have = cap_bounding();
    if have & want != want {
        fail_env(&format!(
            "the bounding capability set is incomplete (CapBnd {have:016x}, missing {:016x}; \
             e.g. no CAP_SYS_RESOURCE)",
            want & !have
        ));
    }
    let is_cgroup2 = {
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        let p = std::ffi::CString::new("/sys/fs/cgroup").unwrap();
        // SAFETY: valid path and buffer.
        let rc = unsafe { libc::statfs(p.as_ptr(), &mut st) };
        rc == 0 && st.f_type == 0x6367_7270
    };
    if !is_cgroup2 {
        fail_env("/sys/fs/cgroup is not cgroup v2 (this host uses cgroup v1 controllers)");
    }
    let controllers =
        std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
    for c in ["memory", "pids"] {
        if !controllers.split_whitespace().any(|x| x == c) {
            fail_env(&format!(
                "the cgroup v2 {c} controller is not available at /sys/fs/cgroup"
            ));
        }
    }
}

// ------------------------------------------------------------------ agent ----

static COUNTER: AtomicUsize = AtomicUsize::new(0);

struct Agent {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
}

fn temp_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = PathBuf::from(format!(
        "/tmp/husk-agent-test-{}-{n}-{tag}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir under /tmp");
    dir
}

impl Agent {
    fn start(tag: &str) -> Agent {
        Agent::start_with(tag, Command::new(AGENT))
    }

    /// The agent in a network namespace of its own (`unshare -n` execs it, same pid), where
    /// it may configure the network as in a guest.
    fn start_in_own_netns(tag: &str) -> Agent {
        let mut cmd = Command::new("unshare");
        cmd.arg("--net").arg(AGENT);
        Agent::start_with(tag, cmd)
    }

    fn start_with(tag: &str, mut cmd: Command) -> Agent {
        let dir = temp_dir(tag);
        let sock = dir.join("agent.sock");
        let child = cmd
            .arg("--listen-unix")
            .arg(&sock)
            .stdin(Stdio::null())
            .spawn()
            .expect("start husk-agent --listen-unix");
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&sock).is_err() {
            assert!(
                Instant::now() < deadline,
                "agent did not listen on {}",
                sock.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Agent { child, dir, sock }
    }

    fn conn(&self) -> UnixStream {
        let mut s = UnixStream::connect(&self.sock).expect("connect to agent");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        proto::send(
            &mut s,
            &Request::Hello {
                protocol_version: proto::PROTOCOL_VERSION,
            },
        )
        .unwrap();
        match proto::recv::<Response>(&mut s).unwrap() {
            Response::Hello(_) => s,
            other => panic!("hello: {other:?}"),
        }
    }

    fn req(&self, r: Request) -> Response {
        let mut s = self.conn();
        proto::send(&mut s, &r).unwrap();
        proto::recv(&mut s).unwrap()
    }

    fn ok(&self, r: Request) {
        let what = format!("{r:?}");
        match self.req(r) {
            Response::Ok => {}
            other => panic!("{}: {other:?}", &what[..what.len().min(200)]),
        }
    }

    fn error(&self, r: Request) -> String {
        match self.req(r) {
            Response::Error { message } => message,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    fn create(&self, id: &str, spec: Value, terminal: bool) -> Response {
        let spec = serde_json::from_value(spec).expect("valid OCI spec");
        self.req(Request::CreateContainer(Box::new(CreateContainer {
            id: id.into(),
            spec,
            terminal,
        })))
    }

    fn create_ok(&self, id: &str, spec: Value) {
        match self.create(id, spec, false) {
            Response::Ok => {}
            other => panic!("create {id}: {other:?}"),
        }
    }

    fn start_ctr(&self, id: &str) {
        self.ok(Request::StartContainer { id: id.into() });
    }

    fn wait(&self, id: &str) -> ExitStatus {
        match self.req(Request::WaitProcess {
            id: id.into(),
            exec_id: None,
        }) {
            Response::Exited { status } => status,
            other => panic!("wait {id}: {other:?}"),
        }
    }

    fn state(&self, id: &str) -> (i32, ContainerStatus) {
        match self.req(Request::ContainerState { id: id.into() }) {
            Response::State { pid, status } => (pid, status),
            other => panic!("state {id}: {other:?}"),
        }
    }

    fn signal(&self, id: &str, signal: i32, all: bool) {
        self.ok(Request::Signal {
            id: id.into(),
            exec_id: None,
            signal,
            all,
        });
    }

    fn delete(&self, id: &str, force: bool) {
        self.ok(Request::DeleteContainer {
            id: id.into(),
            force,
        });
    }

    /// Attaches a stream; the returned socket carries raw bytes.
    fn attach(&self, id: &str, stream: StdioStream) -> UnixStream {
        self.attach_to(id, None, stream)
    }

    /// Attaches a stream of the init (`exec_id` None) or of an exec.
    fn attach_to(&self, id: &str, exec_id: Option<&str>, stream: StdioStream) -> UnixStream {
        let mut s = self.conn();
        proto::send(
            &mut s,
            &Request::AttachStdio {
                id: id.into(),
                exec_id: exec_id.map(str::to_string),
                stream,
            },
        )
        .unwrap();
        match proto::recv::<Response>(&mut s).unwrap() {
            Response::Ok => s,
            other => panic!("attach {id} {exec_id:?} {stream:?}: {other:?}"),
        }
    }

    /// Attaches stdin (closed at once unless `input` is given), stdout and stderr.
    fn attach_all(&self, id: &str, input: Option<&[u8]>) -> Io {
        self.attach_all_to(id, None, input)
    }

    fn attach_all_to(&self, id: &str, exec_id: Option<&str>, input: Option<&[u8]>) -> Io {
        let mut stdin = self.attach_to(id, exec_id, StdioStream::Stdin);
        let stdout = collect(self.attach_to(id, exec_id, StdioStream::Stdout));
        let stderr = collect(self.attach_to(id, exec_id, StdioStream::Stderr));
        let data = input.unwrap_or_default().to_vec();
        // The container reads nothing before it starts: feed it from a thread.
        let feeder = std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
            let _ = stdin.shutdown(std::net::Shutdown::Write);
            stdin
        });
        Io {
            _stdin: feeder,
            stdout,
            stderr,
        }
    }

    fn exec(&self, id: &str, exec_id: &str, process: Value, terminal: bool) -> Response {
        self.req(Request::ExecProcess(Box::new(ExecProcess {
            id: id.into(),
            exec_id: exec_id.into(),
            process: serde_json::from_value(process).expect("valid OCI process"),
            terminal,
        })))
    }

    fn exec_ok(&self, id: &str, exec_id: &str, process: Value) {
        match self.exec(id, exec_id, process, false) {
            Response::Ok => {}
            other => panic!("exec {exec_id} in {id}: {other:?}"),
        }
    }

    fn start_exec(&self, id: &str, exec_id: &str) {
        self.ok(Request::StartProcess {
            id: id.into(),
            exec_id: exec_id.into(),
        });
    }

    fn wait_exec(&self, id: &str, exec_id: &str) -> ExitStatus {
        match self.req(Request::WaitProcess {
            id: id.into(),
            exec_id: Some(exec_id.into()),
        }) {
            Response::Exited { status } => status,
            other => panic!("wait {id} {exec_id}: {other:?}"),
        }
    }

    fn delete_exec(&self, id: &str, exec_id: &str) {
        self.ok(Request::DeleteProcess {
            id: id.into(),
            exec_id: exec_id.into(),
        });
    }

    /// exec + attach + start + wait + delete: (exit status, stdout, stderr).
    fn exec_run(&self, id: &str, exec_id: &str, process: Value) -> (ExitStatus, String, String) {
        self.exec_ok(id, exec_id, process);
        let io = self.attach_all_to(id, Some(exec_id), None);
        self.start_exec(id, exec_id);
        let status = self.wait_exec(id, exec_id);
        let (out, err) = io.output();
        self.delete_exec(id, exec_id);
        (status, out, err)
    }

    fn stats(&self, id: &str) -> ContainerStats {
        match self.req(Request::ContainerStats { id: id.into() }) {
            Response::Stats(s) => *s,
            other => panic!("stats {id}: {other:?}"),
        }
    }

    fn processes(&self, id: &str) -> Vec<ProcessInfo> {
        match self.req(Request::ListProcesses { id: id.into() }) {
            Response::Processes { processes } => processes,
            other => panic!("processes {id}: {other:?}"),
        }
    }

    /// create + attach (stdin closed) + start of a long-running container.
    fn run_detached(&self, id: &str, spec: Value) -> Io {
        self.create_ok(id, spec);
        let io = self.attach_all(id, None);
        self.start_ctr(id);
        io
    }

    /// create + attach + start + wait: (exit status, stdout, stderr).
    fn run(&self, id: &str, spec: Value) -> (ExitStatus, String, String) {
        self.create_ok(id, spec);
        let io = self.attach_all(id, None);
        self.start_ctr(id);
        let status = self.wait(id);
        let (out, err) = io.output();
        self.delete(id, false);
        (status, out, err)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(mut s) = UnixStream::connect(&self.sock) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
            let _ = proto::send(
                &mut s,
                &Request::Hello {
                    protocol_version: proto::PROTOCOL_VERSION,
                },
            );
            let _ = proto::recv::<Response>(&mut s);
            let _ = proto::send(&mut s, &Request::Shutdown);
            let _ = proto::recv::<Response>(&mut s);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Io {
    _stdin: JoinHandle<UnixStream>,
    stdout: JoinHandle<Vec<u8>>,
    stderr: JoinHandle<Vec<u8>>,
}

impl Io {
    fn output(self) -> (String, String) {
        let out = self.stdout.join().unwrap();
        let err = self.stderr.join().unwrap();
        (
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        )
    }
}

fn collect(mut s: UnixStream) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = s.read_to_end(&mut v);
        v
    })
}

// ---------------------------------------------------------------- rootfs ----

/// A busybox rootfs: /bin/busybox plus one symlink per applet, /etc/passwd
/// and /etc/group, and the usual empty mount points.
fn busybox_rootfs(agent: &Agent) -> PathBuf {
    let root = agent.dir.join("rootfs");
    for d in [
        "bin", "etc", "proc", "sys", "dev", "tmp", "root", "home/app", "data",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    let list = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if !applet.is_empty() && applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\napp:x:1000:\n").unwrap();
    root
}

fn caps_default() -> Value {
    let caps = json!([
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE"
    ]);
    json!({ "bounding": caps, "effective": caps, "permitted": caps })
}

/// A docker-like spec: all namespaces but user, the usual mounts, default
/// capabilities, masked and read-only paths.
fn spec(rootfs: &Path, args: &[&str]) -> Value {
    json!({
        "ociVersion": "1.0.2",
        "root": { "path": rootfs, "readonly": false },
        "hostname": "husk-test",
        "process": {
            "terminal": false,
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "user": { "uid": 0, "gid": 0 },
            "capabilities": caps_default(),
            "noNewPrivileges": true
        },
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/dev/pts", "type": "devpts", "source": "devpts",
              "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] },
            { "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
              "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
            { "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"] },
            { "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
              "options": ["nosuid", "noexec", "nodev", "relatime", "ro"] }
        ],
        "linux": {
            "namespaces": [
                { "type": "pid" }, { "type": "network" }, { "type": "ipc" },
                { "type": "uts" }, { "type": "mount" }, { "type": "cgroup" }
            ],
            "resources": { "devices": [ { "allow": false, "access": "rwm" } ] },
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// An exec's process: root with the default capabilities, like `spec`'s.
fn process(args: &[&str]) -> Value {
    json!({
        "args": args,
        "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "cwd": "/",
        "user": { "uid": 0, "gid": 0 },
        "capabilities": caps_default(),
        "noNewPrivileges": true
    })
}

fn id(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

// ----------------------------------------------------------------- tests ----

#[test]
#[ignore = "needs root: cargo test -p husk-agent --test containers -- --ignored --test-threads=1"]
fn root_echo_hello_lifecycle() {
    require_root();
    let a = Agent::start("echo");
    let rootfs = busybox_rootfs(&a);
    let c = id("echo");
    a.create_ok(&c, spec(&rootfs, &["echo", "hello"]));
    let (pid, status) = a.state(&c);
    assert_eq!(status, ContainerStatus::Created);
    assert!(pid > 0);
    let io = a.attach_all(&c, None);
    a.start_ctr(&c);
    assert_eq!(a.wait(&c), ExitStatus::Code(0));
    // several waiters, and waiting after the exit, all answer
    assert_eq!(a.wait(&c), ExitStatus::Code(0));
    let (out, err) = io.output();
    assert_eq!(out, "hello\n");
    assert_eq!(err, "");
    assert_eq!(a.state(&c), (0, ContainerStatus::Stopped));
    let e = a.error(Request::StartContainer { id: c.clone() });
    assert!(
        e.contains("cannot start a container that has stopped"),
        "{e}"
    );
    a.delete(&c, false);
    let e = a.error(Request::ContainerState { id: c.clone() });
    assert_eq!(e, format!("container {c} does not exist"));
    // the id is free again
    a.create_ok(&c, spec(&rootfs, &["true"]));
    a.delete(&c, false);
}

#[test]
#[ignore = "needs root: cargo test -p husk-agent --test containers -- --ignored --test-threads=1"]
fn root_exit_code_and_stderr() {
    require_root();
    let a = Agent::start("exit");
    let rootfs = busybox_rootfs(&a);
    let (st, _, _) = a.run(&id("exit3"), spec(&rootfs, &["sh", "-c", "exit 3"]));
    assert_eq!(st, ExitStatus::Code(3));
    let (st, out, err) = a.run(
        &id("err"),
        spec(&rootfs, &["sh", "-c", "echo out; echo err >&2"]),
    );
    assert_eq!(st, ExitStatus::Code(0));
    assert_eq!(out, "out\n");
    assert_eq!(err, "err\n");
}

#[test]
#[ignore = "needs root: cargo test -p husk-agent --test containers -- --ignored --test-threads=1"]
fn root_stdin_cat() {
    require_root();
    let a = Agent::start("cat");
    let rootfs = busybox_rootfs(&a);
    let c = id("cat");
    a.create_ok(&c, spec(&rootfs, &["cat"]));
    let big: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut input = b"line one\n".to_vec();
    input.extend_from_slice(&big);
    let io = a.attach_all(&c, Some(&input));
    a.start_ctr(&c);
    assert_eq!(a.wait(&c), ExitStatus::Code(0));
    let (out, _) = io.output();
    assert_eq!(out.as_bytes(), &input[..]);
    a.delete(&c, false);
}

#[test]
#[ignore = "needs root: cargo test -p husk-agent --test containers -- --ignored --test-threads=1"]
fn root_output_before_attach_is_kept() {
    require_root();
    let a = Agent::start("late");
    let rootfs = busybox_rootfs(&a);
    let c = id("late");
    a.create_ok(
        &c,
        spec(&rootfs, &["sh", "-c", "seq 1 20000; echo done >&2"]),
    );
    let stdin = a.attach(&c, StdioStream::Stdin);
    stdin.shutdown(std::net::Shutdown::Write).unwrap();
    a.start_ctr(&c);
    assert_eq!(a.wait(&c), ExitStatus::Code(0));
    let out = collect(a.attach(&c, StdioStream::Stdout)).join().unwrap();
    let err = collect(a.attach(&c, StdioStream::Stderr)).join().unwrap();
    let expected: String = (1..=20000).map(|i| format!("{i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&out), expected);
    assert_eq!(String::from_utf8_lossy(&err), "done\n");
    a.delete(&c, false);
}

#[test]
#[ignore = "needs root: cargo test -p husk-agent --test containers -- --ignored --test-threads=1"]
fn root_output_beyond_buffer_waits_for_attach() {
    require_root();
    let a = Agent::start("backpressure");
    let rootfs = busybox_rootfs(&a);
    let c = id("big");
    // ~2.3 MB: more than the agent buffers (1 MiB), so the container blocks
    // until the host attaches, and nothing is lost.
    a.create_ok(&c, spec(&rootfs, &["seq", "1", "400000"]));
    let stdin = a.attach(&c, StdioStream::Stdin);
    stdin.shutdown(std::net::Shutdown::Write).unwrap();
    a.start_ctr(&c);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        a.state(&c).1,
        ContainerStatus::Running,
        "seq must be blocked on its full pipe"
    );
    let out = collect(a.attach(&c, StdioStream::Stdout)).join().unwrap();
    assert_eq!(a.wait(&c), ExitStatus::Code(0));
    let expected: String = (1..=400000).map(|i| format!("{i}\n")).collect();
    assert_eq!(out.len(), expected.len());
    assert!(out == expected.as_bytes());
    a.delete(&c, false);
}

#[test]
#[ignore = "needs root: cargo test -p husk-agent --test containers -- --ignored --test-threads=1"]
fn root_signals_and_delete() {
    require_root();
    let a = Agent::start("sig");
    let rootfs = busybox_rootfs(&a);

    // Without a pid namespace `sleep` is not a namespace init, so SIGTERM kills it.
    let c = id("sleep-term");
    let mut s = spec(&rootfs, &["sleep", "100"]);
    s["linux"]["namespaces"] = json!([{ "type": "mount" }, { "type": "uts" }, { "type": "ipc" }]);
    s["mounts"] = json!([{ "destination": "/proc", "type": "proc", "source": "proc" }]);
    a.create_ok(&c, s);
    let _io = a.attach_all(&c, None);
    a.start_ctr(&c);
    assert_eq!(a.state(&c).1, ContainerStatus::Running);
    let e = a.error(Request::DeleteContainer {
        id: c.clone(),
        force: false,
    });
    assert_eq!(
        e,
        format!("cannot delete container {c} that is not stopped: running")
    );
    let e = a.error(Request::StartContainer { id: c.clone() });
    assert_eq!(e, format!("container {c} is not in created state: running"));
    a.signal(&c, libc::SIGTERM, false);
    assert_eq!(a.wait(&c), ExitStatus::Signal(libc::SIGTERM));
    let e = a.error(Request::Signal {
        id: c.clone(),
        exec_id: None,
        signal: 15,
        all: false,
    });
    assert_eq!(e, format!("container {c} is not running"));
    a.delete(&c, false);

    // PID 1 of a pid namespace ignores SIGTERM without a handler; SIGKILL
    // to all processes of the container works.
    let c = id("sleep-kill");
    a.create_ok(&c, spec(&rootfs, &["sh", "-c", "sleep 100 & sleep 100"]));
    let _io = a.attach_all(&c, None);
    a.start_ctr(&c);
    a.signal(&c, libc::SIGKILL, true);
    assert_eq!(a.wait(&c), ExitStatus::Signal(libc::SIGKILL));
    a.delete(&c, false);

    // force-delete a running container, and delete a created one
    let c = id("force");
    a.create_ok(&c, spec(&rootfs, &["sleep", "100"]));
    let _io = a.attach_all(&c, None);
    a.start_ctr(&c);
    a.delete(&c, true);
    assert!(a
        .error(Request::ContainerState { id: c.clone() })
        .contains("does not exist"));
    let c = id("created");
    a.create_ok(&c, spec(&rootfs, &["sleep", "100"]));
    a.delete(&c, false);
    assert!(a
        .error(Request::WaitProcess {
            id: c.clone(),
            exec_id: None
        })
        .contains("does not exist"));
}

#[test]
#[ignore = "needs root: cargo test -p husk-agent --test containers -- --ignored --test-threads=1"]
fn root_errors() {
    require_root();
    let a = Agent::start("errors");
    let rootfs = busybox_rootfs(&a);
    let c = id("missing-exe");
    match a.create(&c, spec(&rootfs, &["no-such-program"]), false) {
        Response::Error { message } => assert!(
            message.contains("exec: \"no-such-program\": executable file not found in $PATH"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
    // the failed id is free
    let c2 = id("dup");
    a.create_ok(&c2, spec(&rootfs, &["true"]));
    match a.create(&c2, spec(&rootfs, &["true"]), false) {
        Response::Error { message } => {
            assert_eq!(message, format!("container {c2} already exists"))
        }
        other => panic!("{other:?}"),
    }
    let e = a.error(Request::WaitProcess {
        id: c2.clone(),
        exec_id: Some("e1".into()),
    });
    assert_eq!(e, format!("process e1 of container {c2} does not exist"));
    let e = a.error(Request::AttachStdio {
        id: c2.clone(),
        exec_id: None,
        stream: StdioStream::Terminal,
    });
    assert!(e.contains("has no terminal"), "{e}");
    a.delete(&c2, false);
    match a.create("bad/id", spec(&rootfs, &["true"]), false) {
        Response::Error { message } => {
            assert!(message.contains("invalid container id"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let mut s = spec(&rootfs, &["true"]);
    s["root"]["path"] = json!("/nonexistent/rootfs");
    match a.create(&id("noroot"), s, false) {
        Response::Error { message } => assert!(
            message.contains("root.path /nonexistent/rootfs"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
    let mut s = spec(&rootfs, &["true"]);
    s["mounts"][0]["destination"] = json!("proc");
    match a.create(&id("badmount"), s, false) {
        Response::Error { message } => {
            assert!(
                message.contains("mounts[0].destination must be an absolute path"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    let e = a.error(Request::StartContainer { id: "nope".into() });
    assert_eq!(e, "container nope does not exist");
}

#[test]
#[ignore = "needs root: cargo test -p husk-agent --test containers -- --ignored --test-threads=1"]
fn root_isolation() {
    require_root();
    let a = Agent::start("iso");
    let rootfs = busybox_rootfs(&a);
    std::fs::write(agent_data(&a).join("hello.txt"), "from the host\n").unwrap();
    let script = "echo pid=$$; echo host=$(hostname); echo home=$HOME; echo cwd=$(pwd); \
                  echo uid=$(id -u) gid=$(id -g) groups=$(id -G); \
                  touch /x 2>/dev/null && echo rootfs=rw || echo rootfs=ro; \
                  cat /data/hello.txt; touch /data/y 2>/dev/null && echo data=rw || echo data=ro; \
                  test -c /dev/null && echo devnull=ok; ls -l /dev/ptmx | grep -q 'pts/ptmx' && echo ptmx=ok; \
                  cat /proc/kcore 2>/dev/null | wc -c; \
                  echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null && echo procsys=rw || echo procsys=ro; \
                  grep NoNewPrivs /proc/self/status; grep CapEff /proc/self/status; umask; \
                  ls /sys/fs/cgroup/cgroup.procs >/dev/null && echo cgroupfs=ok";
    let mut s = spec(&rootfs, &["sh", "-c", script]);
    s["root"]["readonly"] = json!(true);
    s["process"]["user"] =
        json!({ "uid": 1000, "gid": 1000, "additionalGids": [10, 20], "umask": 63 });
    s["process"]["capabilities"] =
        json!({ "bounding": caps_default()["bounding"], "effective": [], "permitted": [] });
    s["process"]["cwd"] = json!("/home/app");
    s["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/data", "type": "bind", "source": agent_data(&a), "options": ["rbind", "ro"]
    }));
    let (st, out, err) = a.run(&id("iso"), s);
    assert_eq!(st, ExitStatus::Code(0), "stdout: {out}\nstderr: {err}");
    for want in [
        "pid=1\n",
        "host=husk-test\n",
        "home=/home/app\n",
        "cwd=/home/app\n",
        "uid=1000 gid=1000 groups=1000 10 20\n",
        "rootfs=ro\n",
        "from the host\n",
        "data=ro\n",
        "devnull=ok\n",
        "ptmx=ok\n",
        "\n0\n",
        "procsys=ro\n",
        "NoNewPrivs:\t1\n",
        // a non-root user without ambient capabilities has none effective
        "CapEff:\t0000000000000000\n",
        "0077\n",
        "cgroupfs=ok\n",
    ] {
        assert!(
            out.contains(want),
            "missing {want:?} in:\n{out}\nstderr: {err}"
        );
    }
}

fn agent_data(a: &Agent) -> PathBuf {
    let d = a.dir.join("hostdata");
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
#[ignore = "needs root: cargo test -p husk-agent --test containers -- --ignored --test-threads=1"]
fn root_root_capabilities_and_seccomp() {
    require_root();
    let a = Agent::start("caps");
    let rootfs = busybox_rootfs(&a);
    // root keeps exactly the spec's capabilities
    let (st, out, _) = a.run(
        &id("caps"),
        spec(
            &rootfs,
            &["sh", "-c", "grep -E 'Cap(Eff|Bnd|Prm)' /proc/self/status"],
        ),
    );
    assert_eq!(st, ExitStatus::Code(0));
    // CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE NET_RAW
    // SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP = 0xa80425fb (docker's default set)
    for set in ["CapEff", "CapBnd", "CapPrm"] {
        assert!(out.contains(&format!("{set}:\t00000000a80425fb")), "{out}");
    }
    // seccomp: mkdir denied with EPERM, everything else allowed; unknown names ignored
    let mut s = spec(
        &rootfs,
        &["sh", "-c", "mkdir /tmp/d && echo made; echo still here"],
    );
    s["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            { "names": ["mkdir", "mkdirat", "not_a_syscall"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1 }
        ]
    });
    let (st, out, err) = a.run(&id("seccomp"), s);
    assert_eq!(st, ExitStatus::Code(0));
    assert_eq!(out, "still here\n");
    assert!(err.contains("Operation not permitted"), "{err}");
    // an allowlist with argument conditions: personality(0xffffffff) allowed, others ERRNO(ENOSYS)
    let mut s = spec(&rootfs, &["sh", "-c", "echo ok"]);
    s["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            { "names": ["uname"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38,
              "args": [ { "index": 0, "value": 0, "op": "SCMP_CMP_EQ" } ] }
        ]
    });
    let (st, out, _) = a.run(&id("seccomp-args"), s);
    assert_eq!((st, out.as_str()), (ExitStatus::Code(0), "ok\n"));
}

#[test]
#[ignore = "needs root: cargo test -p husk-agent --test containers -- --ignored --test-threads=1"]
fn root_terminal() {
    require_root();
    let a = Agent::start("tty");
    let rootfs = busybox_rootfs(&a);
    let c = id("tty");
    let mut s = spec(
        &rootfs,
        &[
            "sh",
            "-c",
            "test -t 0 && test -t 1 && echo is-a-tty; stty size; read x; echo got=$x",
        ],
    );
    s["process"]["terminal"] = json!(true);
    s["process"]["consoleSize"] = json!({ "height": 33, "width": 101 });
    match a.create(&c, s, true) {
        Response::Ok => {}
        other => panic!("{other:?}"),
    }
    let e = a.error(Request::AttachStdio {
        id: c.clone(),
        exec_id: None,
        stream: StdioStream::Stdout,
    });
    assert!(e.contains("has a terminal"), "{e}");
    let mut t = a.attach(&c, StdioStream::Terminal);
    a.start_ctr(&c);
    t.write_all(b"abc\n").unwrap();
    let mut out = Vec::new();
    let _ = t.read_to_end(&mut out);
    assert_eq!(a.wait(&c), ExitStatus::Code(0));
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("is-a-tty"), "{out}");
    assert!(out.contains("33 101"), "{out}");
    assert!(out.contains("got=abc"), "{out}");
    a.delete(&c, false);
}

#[test]
#[ignore = "needs full root and cgroup v2: tests/vm-run.sh target/debug/deps/containers-HASH --ignored --test-threads=1"]
fn full_root_resources_and_rlimits() {
    require_full_root();
    let a = Agent::start("res");
    let rootfs = busybox_rootfs(&a);
    let mut s = spec(
        &rootfs,
        &["sh", "-c", "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max /sys/fs/cgroup/cpu.max; ulimit -n; ulimit -Hn"],
    );
    s["linux"]["resources"] = json!({
        "devices": [ { "allow": false, "access": "rwm" } ],
        "memory": { "limit": 67108864 },
        "pids": { "limit": 42 },
        "cpu": { "quota": 50000, "period": 100000, "shares": 512 }
    });
    s["process"]["rlimits"] = json!([{ "type": "RLIMIT_NOFILE", "soft": 30000, "hard": 40000 }]);
    let mut caps = caps_default();
    for set in ["bounding", "effective", "permitted"] {
        caps[set]
            .as_array_mut()
            .unwrap()
            .push(json!("CAP_SYS_RESOURCE"));
    }
    s["process"]["capabilities"] = caps;
    let (st, out, err) = a.run(&id("res"), s);
    assert_eq!(st, ExitStatus::Code(0), "{out}\n{err}");
    assert_eq!(
        out, "67108864\n42\n50000 100000\n30000\n40000\n",
        "stderr: {err}"
    );
}

#[test]
#[ignore = "needs full root and cgroup v2: tests/vm-run.sh target/debug/deps/containers-HASH --ignored --test-threads=1"]
fn full_root_memory_limit_kills() {
    require_full_root();
    let a = Agent::start("oom");
    let rootfs = busybox_rootfs(&a);
    // 16 MiB limit, no swap; the shell builds a ~64 MiB string
    let mut s = spec(
        &rootfs,
        &[
            "sh",
            "-c",
            "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived ${#x}",
        ],
    );
    s["linux"]["resources"] = json!({ "memory": { "limit": 16777216, "swap": 16777216 } });
    let (st, out, _) = a.run(&id("oom"), s);
    assert_eq!(st, ExitStatus::Signal(libc::SIGKILL), "stdout: {out}");
}

// ------------------------------------------------------------ protocol v3 ----

/// Reads from `t` until `want` has been seen; returns everything read.
fn read_until(t: &mut UnixStream, want: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(&seen).contains(want) {
        assert!(
            Instant::now() < deadline,
            "no {want:?} in {:?}",
            String::from_utf8_lossy(&seen)
        );
        match t.read(&mut buf) {
            Ok(0) => panic!("EOF before {want:?}: {:?}", String::from_utf8_lossy(&seen)),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) => panic!("read: {e}"),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[test]
#[ignore = "needs root: cargo test -p husk-agent --test containers -- --ignored --test-threads=1"]
fn root_exec_joins_the_container() {
    require_root();
    let a = Agent::start("exec");
    let rootfs = busybox_rootfs(&a);
    let c = id("exec");
    // /dev/shm is a tmpfs of the container's own mount namespace.
    let _io = a.run_detached(
        &c,
        spec(
            &rootfs,
            &[
                "sh",
                "-c",
                "echo from-init > /dev/shm/mark; exec sleep 1000",
            ],
        ),
    );
    let script = "while [ ! -f /dev/shm/mark ]; do usleep 20000; done; cat /dev/shm/mark; \
                  echo host=$(hostname); echo pid=$$; \
                  echo init=$(tr '\\0' ' ' < /proc/1/cmdline); \
                  echo err-line >&2; exit 3";
    let (st, out, err) = a.exec_run(&c, "e1", process(&["sh", "-c", script]));
    assert_eq!(st, ExitStatus::Code(3), "stdout: {out}\nstderr: {err}");
    assert_eq!(err, "err-line\n");
    for want in ["from-init\n", "host=husk-test\n", "init=sleep 1000\n"] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    // a pid of the container's pid namespace, not of the agent's
    let pid: i32 = out
        .lines()
        .find_map(|l| l.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {out}"));
    assert!(
        (2..100).contains(&pid),
        "pid {pid} is not in the container's pid namespace"
    );
    assert_eq!(a.state(&c).1, ContainerStatus::Running);

    // the same exec id can be used again once deleted
    let (st, out, _) = a.exec_run(&c, "e1", process(&["echo", "again"]));
    assert_eq!((st, out.as_str()), (ExitStatus::Code(0), "again\n"));

    // errors
    a.exec_ok(&c, "dup", process(&["sleep", "100"]));
    match a.exec(&c, "dup", process(&["true"]), false) {
        Response::Error { message } => {
            assert_eq!(
                message,
                format!("process dup already exists in container {c}")
            )
        }
        other => panic!("{other:?}"),
    }
    for bad in ["a/b", "", "..", "a b"] {
        match a.exec(&c, bad, process(&["true"]), false) {
            Response::Error { message } => {
                assert!(message.starts_with("invalid exec id"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }
    match a.exec("no-such-container", "e", process(&["true"]), false) {
        Response::Error { message } => {
            assert_eq!(message, "container no-such-container does not exist")
        }
        other => panic!("{other:?}"),
    }
    match a.exec(
        &c,
        "bad-cwd",
        json!({ "args": ["true"], "cwd": "tmp", "user": { "uid": 0, "gid": 0 } }),
        false,
    ) {
        Response::Error { message } => {
            assert!(
                message.contains("process.cwd must be an absolute path"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    let e = a.error(Request::WaitProcess {
        id: c.clone(),
        exec_id: Some("nope".into()),
    });
    assert_eq!(e, format!("process nope of container {c} does not exist"));
    // a created exec is deleted without ever running
    a.delete_exec(&c, "dup");
    // a running one is not
    a.exec_ok(&c, "busy", process(&["sleep", "100"]));
    let _busy = a.attach_all_to(&c, Some("busy"), None);
    a.start_exec(&c, "busy");
    let e = a.error(Request::StartProcess {
        id: c.clone(),
        exec_id: "busy".into(),
    });
    assert_eq!(
        e,
        format!("process busy of container {c} has already been started")
    );
    let e = a.error(Request::DeleteProcess {
        id: c.clone(),
        exec_id: "busy".into(),
    });
    assert!(e.contains("that is not stopped: running"), "{e}");

    // exec into a created container, and into a stopped one
    let c2 = id("exec-created");
    a.create_ok(&c2, spec(&rootfs, &["true"]));
    match a.exec(&c2, "e", process(&["true"]), false) {
        Response::Error { message } => {
            assert_eq!(message, format!("container {c2} is not running: created"))
        }
        other => panic!("{other:?}"),
    }
    let _io2 = a.attach_all(&c2, None);
    a.start_ctr(&c2);
    assert_eq!(a.wait(&c2), ExitStatus::Code(0));
    match a.exec(&c2, "e", process(&["true"]), false) {
        Response::Error { message } => {
            assert_eq!(message, format!("container {c2} is not running: stopped"))
        }
        other => panic!("{other:?}"),
    }
    a.delete(&c2, false);

    // deleting the container ends its execs
    a.delete(&c, true);
}

#[test]
#[ignore = "needs root: cargo test -p husk-agent --test containers -- --ignored --test-threads=1"]
fn root_exec_user_env_cwd_and_seccomp() {
    require_root();
    let a = Agent::start("exec-user");
    let rootfs = busybox_rootfs(&a);
    let c = id("exec-user");
    let mut s = spec(&rootfs, &["sleep", "1000"]);
    // the container's seccomp profile applies to execs too
    s["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [ { "names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1 } ]
    });
    let _io = a.run_detached(&c, s);
    let script = "echo uid=$(id -u) gid=$(id -g) groups=$(id -G); echo foo=$FOO; echo cwd=$(pwd); \
                  echo home=$HOME; grep NoNewPrivs /proc/self/status; grep CapEff /proc/self/status; \
                  echo nofile=$(ulimit -n); umask; \
                  mkdir /tmp/d 2>/dev/null && echo mkdir=ok || echo mkdir=denied";
    let mut p = process(&["sh", "-c", script]);
    p["user"] = json!({ "uid": 1000, "gid": 1000, "additionalGids": [10, 20], "umask": 63 });
    p["env"] = json!(["PATH=/bin", "FOO=bar baz"]);
    p["cwd"] = json!("/home/app");
    p["capabilities"] =
        json!({ "bounding": caps_default()["bounding"], "effective": [], "permitted": [] });
    p["rlimits"] = json!([{ "type": "RLIMIT_NOFILE", "soft": 100, "hard": 200 }]);
    let (st, out, err) = a.exec_run(&c, "u", p);
    assert_eq!(st, ExitStatus::Code(0), "stdout: {out}\nstderr: {err}");
    for want in [
        "uid=1000 gid=1000 groups=1000 10 20\n",
        "foo=bar baz\n",
        "cwd=/home/app\n",
        "home=/home/app\n",
        "NoNewPrivs:\t1\n",
        "CapEff:\t0000000000000000\n",
        "nofile=100\n",
        "0077\n",
        "mkdir=denied\n",
    ] {
        assert!(
            out.contains(want),
            "missing {want:?} in:\n{out}\nstderr: {err}"
        );
    }
    // root with the default capabilities, without no_new_privileges
    let mut p = process(&["sh", "-c", "grep -E 'CapEff|NoNewPrivs' /proc/self/status"]);
    p["noNewPrivileges"] = json!(false);
    let (st, out, _) = a.exec_run(&c, "r", p);
    assert_eq!(st, ExitStatus::Code(0));
    assert!(out.contains("CapEff:\t00000000a80425fb"), "{out}");
    assert!(out.contains("NoNewPrivs:\t0"), "{out}");
    a.delete(&c, true);
}

#[test]
#[ignore = "needs root: cargo test -p husk-agent --test containers -- --ignored --test-threads=1"]
fn root_exec_terminal_and_resize() {
    require_root();
    let a = Agent::start("exec-tty");
    let rootfs = busybox_rootfs(&a);
    let c = id("exec-tty");
    let _io = a.run_detached(&c, spec(&rootfs, &["sleep", "1000"]));
    let mut p = process(&[
        "sh",
        "-c",
        "test -t 0 && test -t 1 && echo is-a-tty; stty size; read x; stty size; echo got=$x",
    ]);
    p["consoleSize"] = json!({ "height": 24, "width": 80 });
    match a.exec(&c, "t", p, true) {
        Response::Ok => {}
        other => panic!("{other:?}"),
    }
    let e = a.error(Request::AttachStdio {
        id: c.clone(),
        exec_id: Some("t".into()),
        stream: StdioStream::Stdout,
    });
    assert!(
        e.contains(&format!("process t of container {c} has a terminal")),
        "{e}"
    );
    let mut t = a.attach_to(&c, Some("t"), StdioStream::Terminal);
    a.start_exec(&c, "t");
    let first = read_until(&mut t, "24 80");
    assert!(first.contains("is-a-tty"), "{first}");
    a.ok(Request::ResizeTerminal {
        id: c.clone(),
        exec_id: Some("t".into()),
        rows: 40,
        cols: 120,
    });
    t.write_all(b"abc\n").unwrap();
    let mut rest = Vec::new();
    let _ = t.read_to_end(&mut rest);
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("40 120"), "{rest}");
    assert!(rest.contains("got=abc"), "{rest}");
    assert_eq!(a.wait_exec(&c, "t"), ExitStatus::Code(0));
    // no terminal: no resize
    a.exec_ok(&c, "p", process(&["true"]));
    let e = a.error(Request::ResizeTerminal {
        id: c.clone(),
        exec_id: Some("p".into()),
        rows: 1,
        cols: 1,
    });
    assert_eq!(e, format!("process p of container {c} has no terminal"));
    let e = a.error(Request::ResizeTerminal {
        id: c.clone(),
        exec_id: None,
        rows: 1,
        cols: 1,
    });
    assert_eq!(e, format!("container {c} has no terminal"));
    a.delete(&c, true);
}

#[test]
#[ignore = "needs root: cargo test -p husk-agent --test containers -- --ignored --test-threads=1"]
fn root_exec_failures_and_signals() {
    require_root();
    let a = Agent::start("exec-fail");
    let rootfs = busybox_rootfs(&a);
    let c = id("exec-fail");
    let _io = a.run_detached(&c, spec(&rootfs, &["sleep", "1000"]));
    // a missing binary: the exec is created, its start fails, it exits 127
    a.exec_ok(&c, "missing", process(&["no-such-program"]));
    let _m = a.attach_all_to(&c, Some("missing"), None);
    let e = a.error(Request::StartProcess {
        id: c.clone(),
        exec_id: "missing".into(),
    });
    assert!(
        e.contains("exec failed: exec: \"no-such-program\": executable file not found in $PATH"),
        "{e}"
    );
    assert_eq!(a.wait_exec(&c, "missing"), ExitStatus::Code(127));
    a.delete_exec(&c, "missing");
    // a directory is found but cannot be exec'd
    a.exec_ok(&c, "dir", process(&["/tmp"]));
    let e = a.error(Request::StartProcess {
        id: c.clone(),
        exec_id: "dir".into(),
    });
    assert!(e.contains("exec failed: exec /tmp: EACCES"), "{e}");
    assert_eq!(a.wait_exec(&c, "dir"), ExitStatus::Code(127));

    // signals reach the exec, not the init
    a.exec_ok(&c, "s", process(&["sleep", "1000"]));
    let _s = a.attach_all_to(&c, Some("s"), None);
    a.start_exec(&c, "s");
    a.ok(Request::Signal {
        id: c.clone(),
        exec_id: Some("s".into()),
        signal: libc::SIGTERM,
        all: false,
    });
    assert_eq!(a.wait_exec(&c, "s"), ExitStatus::Signal(libc::SIGTERM));
    assert_eq!(a.state(&c).1, ContainerStatus::Running);
    let e = a.error(Request::Signal {
        id: c.clone(),
        exec_id: Some("s".into()),
        signal: libc::SIGTERM,
        all: false,
    });
    assert_eq!(e, format!("process s of container {c} is not running"));
    a.delete_exec(&c, "s");
    // the init's death ends the execs of its pid namespace
    a.exec_ok(&c, "orphan", process(&["sleep", "1000"]));
    let _o = a.attach_all_to(&c, Some("orphan"), None);
    a.start_exec(&c, "orphan");
    a.signal(&c, libc::SIGKILL, false);
    assert_eq!(a.wait(&c), ExitStatus::Signal(libc::SIGKILL));
    assert_eq!(a.wait_exec(&c, "orphan"), ExitStatus::Signal(libc::SIGKILL));
    a.delete(&c, false);
}

/// The counter the pause test's container advances, as the host sees it.
fn counter(rootfs: &Path) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(n) = std::fs::read_to_string(rootfs.join("tmp/counter"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return n;
        }
        assert!(Instant::now() < deadline, "the container writes no counter");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "needs root: cargo test -p husk-agent --test containers -- --ignored --test-threads=1"]
fn root_pause_resume() {
    require_root();
    let a = Agent::start("pause");
    let rootfs = busybox_rootfs(&a);
    let c = id("pause");
    a.create_ok(
        &c,
        spec(
            &rootfs,
            &[
                "sh",
                "-c",
                "i=0; while true; do i=$((i+1)); echo $i > /tmp/c.new; mv /tmp/c.new /tmp/counter; usleep 20000; done",
            ],
        ),
    );
    // A created container pauses too (runc's behaviour); resumed, it is
    // created again and starts as usual.
    a.ok(Request::PauseContainer { id: c.clone() });
    assert_eq!(a.state(&c).1, ContainerStatus::Paused);
    let e = a.error(Request::StartContainer { id: c.clone() });
    assert_eq!(e, format!("container {c} is not in created state: paused"));
    a.ok(Request::ResumeContainer { id: c.clone() });
    assert_eq!(a.state(&c).1, ContainerStatus::Created);
    let _io = a.attach_all(&c, None);
    a.start_ctr(&c);
    let e = a.error(Request::ResumeContainer { id: c.clone() });
    assert_eq!(e, format!("container {c} is not paused: running"));
    let start = counter(&rootfs);
    while counter(&rootfs) < start + 3 {
        std::thread::sleep(Duration::from_millis(20));
    }
    a.ok(Request::PauseContainer { id: c.clone() });
    let (pid, status) = a.state(&c);
    assert_eq!(status, ContainerStatus::Paused);
    assert!(pid > 0);
    let frozen = counter(&rootfs);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        counter(&rootfs),
        frozen,
        "the counter advanced while paused"
    );
    let e = a.error(Request::PauseContainer { id: c.clone() });
    assert_eq!(e, format!("container {c} is already paused"));
    match a.exec(&c, "e", process(&["true"]), false) {
        Response::Error { message } => {
            assert_eq!(message, format!("container {c} is not running: paused"))
        }
        other => panic!("{other:?}"),
    }
    let e = a.error(Request::DeleteContainer {
        id: c.clone(),
        force: false,
    });
    assert_eq!(
        e,
        format!("cannot delete container {c} that is not stopped: paused")
    );
    a.ok(Request::ResumeContainer { id: c.clone() });
    assert_eq!(a.state(&c).1, ContainerStatus::Running);
    let deadline = Instant::now() + Duration::from_secs(30);
    while counter(&rootfs) <= frozen {
        assert!(
            Instant::now() < deadline,
            "the counter did not advance after resume"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGKILL to all reaches a paused container
    a.ok(Request::PauseContainer { id: c.clone() });
    a.signal(&c, libc::SIGKILL, true);
    assert_eq!(a.wait(&c), ExitStatus::Signal(libc::SIGKILL));
    assert_eq!(a.state(&c), (0, ContainerStatus::Stopped));
    a.delete(&c, false);

    // force-delete of a paused container
    let c = id("pause-delete");
    let _io = a.run_detached(
        &c,
        spec(&rootfs, &["sh", "-c", "sleep 1000 & exec sleep 1001"]),
    );
    a.ok(Request::PauseContainer { id: c.clone() });
    a.delete(&c, true);
    assert!(a
        .error(Request::ContainerState { id: c.clone() })
        .contains("does not exist"));
}

#[test]
#[ignore = "needs root: cargo test -p husk-agent --test containers -- --ignored --test-threads=1"]
fn root_list_processes() {
    require_root();
    let a = Agent::start("ps");
    let rootfs = busybox_rootfs(&a);
    let c = id("ps");
    let _io = a.run_detached(
        &c,
        spec(&rootfs, &["sh", "-c", "sleep 1000 & exec sleep 1001"]),
    );
    let (init_pid, _) = a.state(&c);
    a.exec_ok(&c, "e1", process(&["sleep", "1002"]));
    let _e = a.attach_all_to(&c, Some("e1"), None);
    a.start_exec(&c, "e1");
    let deadline = Instant::now() + Duration::from_secs(30);
    let ps = loop {
        let ps = a.processes(&c);
        let execd = |args: &[&str]| ps.iter().any(|p| p.args == args);
        if execd(&["sleep", "1000"]) && execd(&["sleep", "1001"]) && execd(&["sleep", "1002"]) {
            break ps;
        }
        assert!(Instant::now() < deadline, "processes: {ps:#?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(ps.len(), 3, "{ps:#?}");
    let find = |arg: &str| ps.iter().find(|p| p.args[1] == arg).unwrap();
    let (child, init, exec) = (find("1000"), find("1001"), find("1002"));
    assert_eq!(init.pid, init_pid);
    assert_eq!(init.exec_id, None);
    assert_eq!(child.ppid, init_pid);
    assert_eq!(child.exec_id, None);
    assert_eq!(exec.exec_id.as_deref(), Some("e1"));
    // SAFETY: plain getter.
    let now_us = {
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
    };
    for p in &ps {
        assert_eq!(p.uid, 0);
        assert_eq!(p.state, "S", "{p:?}");
        assert!(p.start_us > 0 && p.start_us <= now_us, "{p:?} now {now_us}");
        assert!(now_us - p.start_us < 120_000_000, "{p:?} started long ago");
    }
    assert!(a
        .error(Request::ListProcesses { id: "nope".into() })
        .contains("does not exist"));
    a.delete(&c, true);
}

#[test]
#[ignore = "needs full root and cgroup v2: tests/vm-run.sh target/debug/deps/containers-HASH --ignored --test-threads=1"]
fn full_root_update_and_stats() {
    require_full_root();
    let a = Agent::start("stats");
    let rootfs = busybox_rootfs(&a);
    let c = id("stats");
    let mut s = spec(&rootfs, &["sleep", "1000"]);
    s["linux"]["resources"] = json!({ "memory": { "limit": 67108864 } });
    let _io = a.run_detached(&c, s);
    let st = a.stats(&c);
    assert!(st.memory_usage_bytes > 0, "{st:?}");
    assert_eq!(st.memory_limit_bytes, Some(67108864));
    assert!(st.pids_current >= 1, "{st:?}");
    assert_eq!(st.pids_limit, None);
    assert!(st.memory_stat.contains_key("anon"), "{st:?}");
    assert!(st.guest_memory_total_bytes >= st.guest_memory_available_bytes);
    assert!(st.guest_memory_available_bytes > 0);
    assert_eq!((st.oom_events, st.oom_kills), (0, 0));

    // pids.max: the fourth process of the container cannot be forked
    let update = |r: Value| Request::UpdateContainer {
        id: c.clone(),
        resources: Box::new(serde_json::from_value(r).unwrap()),
    };
    a.ok(update(json!({ "pids": { "limit": 4 } })));
    assert_eq!(a.stats(&c).pids_limit, Some(4));
    let (st, out, err) = a.exec_run(
        &c,
        "fork",
        process(&[
            "sh",
            "-c",
            "sleep 5 & sleep 5 & sleep 5 & echo forked; kill %1 %2 %3 2>/dev/null; wait",
        ]),
    );
    assert!(
        err.contains("can't fork"),
        "status {st:?}\nstdout: {out}\nstderr: {err}"
    );
    a.ok(update(json!({ "pids": { "limit": -1 } })));
    assert_eq!(a.stats(&c).pids_limit, None);
    let (st, out, _) = a.exec_run(
        &c,
        "fork2",
        process(&["sh", "-c", "sleep 0 & sleep 0 & sleep 0 & wait; echo ok"]),
    );
    assert_eq!((st, out.as_str()), (ExitStatus::Code(0), "ok\n"));

    // memory.max: an exec that exceeds it is OOM-killed, and counted
    a.ok(update(json!({ "memory": { "limit": 16777216 } })));
    assert_eq!(a.stats(&c).memory_limit_bytes, Some(16777216));
    // swap alone is memory+swap against the current limit
    a.ok(update(json!({ "memory": { "swap": 33554432 } })));
    let swap_max = std::fs::read_to_string(format!("/sys/fs/cgroup/husk/{c}/memory.swap.max"));
    assert_eq!(swap_max.ok().as_deref().map(str::trim), Some("16777216"));
    let (st, _, _) = a.exec_run(
        &c,
        "hog",
        process(&[
            "sh",
            "-c",
            "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived ${#x}",
        ]),
    );
    assert_ne!(st, ExitStatus::Code(0));
    let after = a.stats(&c);
    assert!(after.oom_kills >= 1, "{after:?}");
    assert!(after.oom_events >= 1, "{after:?}");
    assert!(after.cpu_usage_usec > 0, "{after:?}");
    assert_eq!(a.state(&c).1, ContainerStatus::Running, "the init survives");

    let e = a.error(update(json!({ "blockIO": { "weight": 10 } })));
    assert!(e.contains("linux.resources.blockIO"), "{e}");
    assert!(a
        .error(Request::ContainerStats { id: "nope".into() })
        .contains("does not exist"));
    a.delete(&c, true);
}

/// A tmpfs mounted for a test, lazily detached when dropped.
struct TmpfsMount(PathBuf);

impl TmpfsMount {
    fn new(p: &Path) -> TmpfsMount {
        std::fs::create_dir_all(p).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(p)
            .status()
            .expect("mount(8)");
        assert!(st.success(), "mount tmpfs on {}", p.display());
        TmpfsMount(p.to_path_buf())
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = nix_umount(&self.0);
    }
}

fn nix_umount(p: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Issue 15, group 3: runc's recursive attributes, rbind + ro leaving
/// submounts as they are (with the submount option the runtime adds),
/// relative readonly/masked paths.
#[test]
#[ignore = "needs root: cargo test -p husk-agent --test containers -- --ignored --test-threads=1"]
fn root_mount_options() {
    require_root();
    let a = Agent::start("mntopts");
    let rootfs = busybox_rootfs(&a);
    let data = agent_data(&a);
    let _sub = TmpfsMount::new(&data.join("sub"));
    std::fs::write(rootfs.join("home/app/secret"), "s").unwrap();
    let script = "w() { touch $1/probe 2>/dev/null && echo $1=rw || echo $1=ro; }; \
                  w /ro; w /ro/sub; w /rro; w /rro/sub; w /etc; w /tmp; \
                  opts() { awk -v m=$1 '$5 == m { print m \"=\" $6 }' /proc/self/mountinfo | tail -1; }; \
                  opts /x; opts /x/sub; opts /t; \
                  ls /home/app | wc -l";
    let mut s = spec(&rootfs, &["sh", "-c", script]);
    let mounts = s["mounts"].as_array_mut().unwrap();
    mounts.push(json!({
        "destination": "/ro", "type": "bind", "source": data,
        "options": ["rbind", "ro", "x-husk-submount=sub"]
    }));
    mounts.push(json!({
        "destination": "/rro", "type": "bind", "source": data, "options": ["rbind", "rro"]
    }));
    mounts.push(json!({
        "destination": "/x", "type": "bind", "source": data,
        "options": ["rbind", "rnoexec", "rnosuid", "rnodev", "x-husk-submount=sub"]
    }));
    mounts.push(json!({
        "destination": "/t", "type": "tmpfs", "source": "tmpfs",
        "options": ["rnoatime", "rnosymfollow", "rro"]
    }));
    s["linux"]["readonlyPaths"] = json!(["etc"]);
    s["linux"]["maskedPaths"] = json!(["home/app"]);
    let (st, out, err) = a.run(&id("mntopts"), s);
    assert_eq!(st, ExitStatus::Code(0), "stdout: {out}\nstderr: {err}");
    for want in [
        "/ro=ro\n",
        "/ro/sub=rw\n",
        "/rro=ro\n",
        "/rro/sub=ro\n",
        "/etc=ro\n",
        "/tmp=rw\n",
    ] {
        assert!(
            out.contains(want),
            "missing {want:?} in:\n{out}\nstderr: {err}"
        );
    }
    let opts = |m: &str| -> Vec<String> {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{m}=")))
            .unwrap_or_else(|| panic!("no mount at {m} in:\n{out}\nstderr: {err}"));
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
    // The masked directory is empty.
    assert!(out.ends_with("0\n"), "{out}");
}

/// Issue 15, group 3: proc and sysfs are refused on a symlink (runc's
/// wording), and the error comes back at once instead of a hang.
#[test]
#[ignore = "needs root: cargo test -p husk-agent --test containers -- --ignored --test-threads=1"]
fn root_proc_on_a_symlink_is_refused() {
    require_root();
    let a = Agent::start("procsym");
    for (dir, typ) in [("proc", "proc"), ("sys", "sysfs")] {
        let rootfs = busybox_rootfs(&a);
        std::fs::remove_dir(rootfs.join(dir)).unwrap();
        std::os::unix::fs::symlink("/symlink", rootfs.join(dir)).unwrap();
        let start = Instant::now();
        match a.create(&id(dir), spec(&rootfs, &["true"]), false) {
            Response::Error { message } => assert!(
                message.contains(&format!(
                    "filesystem \"{typ}\" must be mounted on ordinary directory"
                )),
                "{message}"
            ),
            other => panic!("{dir}: {other:?}"),
        }
        assert!(start.elapsed() < Duration::from_secs(30));
        assert!(
            !rootfs.join("symlink").exists(),
            "{typ} mounted through the link"
        );
        // Reused for the next round.
        std::fs::remove_file(rootfs.join(dir)).unwrap();
        std::fs::create_dir(rootfs.join(dir)).unwrap();
    }
}

/// Sends `AttachFd`; the returned socket carries the passed fd's bytes.
fn attach_fd(a: &Agent, id: &str, exec_id: Option<&str>, fd: i32) -> Result<UnixStream, String> {
    let mut s = a.conn();
    proto::send(
        &mut s,
        &Request::AttachFd {
            id: id.into(),
            exec_id: exec_id.map(str::to_string),
            fd,
        },
    )
    .unwrap();
    match proto::recv::<Response>(&mut s).unwrap() {
        Response::Ok => Ok(s),
        Response::Error { message } => Err(message),
        other => panic!("attach fd {fd}: {other:?}"),
    }
}

/// `--preserve-fds`: each kind of passed descriptor reaches the container's
/// init (and an exec) at fds 3.., and `AttachFd` carries it; nothing else
/// of the agent's is left open in the process.
#[test]
#[ignore = "needs root: cargo test -p husk-agent --test containers -- --ignored --test-threads=1"]
fn root_passed_fds() {
    use proto::PassedFd;
    require_root();
    let a = Agent::start("pfd");
    let rootfs = busybox_rootfs(&a);
    let c = id("pfd");
    let script = "cat <&3 >&4; exec 3<&- 4>&-; read l <&6; echo \"got $l\" >&6; \
                  echo nothing >&7; readlink /proc/$$/fd/5; \
                  test -e /proc/$$/fd/8 && echo leaked || echo clean";
    let fds = vec![
        PassedFd::PipeRead,
        PassedFd::PipeWrite,
        PassedFd::Listener,
        PassedFd::Stream,
        PassedFd::Null,
    ];
    let create = Request::CreateContainerWithFds {
        create: Box::new(CreateContainer {
            id: c.clone(),
            spec: serde_json::from_value(spec(&rootfs, &["sh", "-c", script])).unwrap(),
            terminal: false,
        }),
        fds,
    };
    a.ok(create);
    let mut input = attach_fd(&a, &c, None, 3).unwrap();
    let output = collect(attach_fd(&a, &c, None, 4).unwrap());
    let mut stream = attach_fd(&a, &c, None, 6).unwrap();
    // A connection to the listener waits in its backlog (nobody accepts).
    let _queued = attach_fd(&a, &c, None, 5).unwrap();
    let e = attach_fd(&a, &c, None, 3).unwrap_err();
    assert!(e.contains("already attached"), "{e}");
    let e = attach_fd(&a, &c, None, 7).unwrap_err();
    assert!(e.contains("/dev/null"), "{e}");
    let e = attach_fd(&a, &c, None, 8).unwrap_err();
    assert!(e.contains("no passed fd 8"), "{e}");
    let io = a.attach_all(&c, None);
    a.start_ctr(&c);
    input.write_all(b"through a pipe\n").unwrap();
    input.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(output.join().unwrap(), b"through a pipe\n");
    stream.write_all(b"ping\n").unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "got ping\n");
    assert_eq!(a.wait(&c), ExitStatus::Code(0));
    let (out, err) = io.output();
    assert!(out.starts_with("socket:["), "{out} {err}");
    assert!(out.ends_with("]\nclean\n"), "{out} {err}");
    a.delete(&c, false);

    // An exec gets its own.
    let c = id("pfd-exec");
    let _io = a.run_detached(&c, spec(&rootfs, &["sleep", "1000"]));
    let exec = Request::ExecProcessWithFds {
        exec: Box::new(ExecProcess {
            id: c.clone(),
            exec_id: "e1".into(),
            process: serde_json::from_value(process(&[
                "sh",
                "-c",
                "echo from the exec >&3; test -e /proc/$$/fd/4 && echo leaked || echo clean",
            ]))
            .unwrap(),
            terminal: false,
        }),
        fds: vec![PassedFd::PipeWrite],
    };
    a.ok(exec);
    let output = collect(attach_fd(&a, &c, Some("e1"), 3).unwrap());
    let io = a.attach_all_to(&c, Some("e1"), None);
    a.start_exec(&c, "e1");
    assert_eq!(a.wait_exec(&c, "e1"), ExitStatus::Code(0));
    assert_eq!(output.join().unwrap(), b"from the exec\n");
    assert_eq!(io.output().0, "clean\n");
    a.delete_exec(&c, "e1");
    a.delete(&c, true);
}

/// `ip ARGS` in the network namespace of process `pid`; must succeed.
fn ip_in(pid: u32, args: &str) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .arg("ip")
        .args(args.split_whitespace())
        .output()
        .unwrap_or_else(|e| {
            fail_env(&format!(
                "cannot run nsenter/ip (util-linux, iproute2): {e}"
            ))
        });
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs root: cargo test -p husk-agent --test containers -- --ignored --test-threads=1"]
fn root_new_network_namespace_has_loopback() {
    require_root();
    let a = Agent::start("lo");
    let rootfs = busybox_rootfs(&a);
    // The spec asks for a new network namespace: lo must be up in it, as runc leaves it.
    let (st, out, err) = a.run(&id("lo"), spec(&rootfs, &["ip", "addr", "show", "lo"]));
    assert_eq!(st, ExitStatus::Code(0), "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains(",UP") && out.contains("inet 127.0.0.1/8"),
        "{out}"
    );
    // On an ordinary host the test mode never reconfigures the host's network.
    let e = a.error(Request::ConfigureNetwork(Box::default()));
    assert!(e.contains("unshare -n"), "{e}");
}

#[test]
#[ignore = "needs root: cargo test -p husk-agent --test containers -- --ignored --test-threads=1"]
fn root_configured_network_is_the_containers() {
    require_root();
    let a = Agent::start_in_own_netns("net");
    let rootfs = busybox_rootfs(&a);
    let mac = [0x02, 0x68, 0x6b, 0, 0, 0x0a];
    // The NIC the host would give the VM, as the kernel named it.
    ip_in(
        a.child.id(),
        "link add enp0s1 address 02:68:6b:00:00:0a type veth peer name peer0",
    );
    let gw = "10.88.0.1".parse().unwrap();
    let cfg = NetworkConfig {
        links: vec![Link {
            name: "eth0".into(),
            mac,
            mtu: 1400,
            addrs: vec![IpNet::new("10.88.0.2".parse().unwrap(), 16).unwrap()],
            nic_mac: None,
        }],
        routes: vec![Route {
            dst: None,
            gateway: Some(gw),
            dev: "eth0".into(),
            src: None,
            scope: 0,
            mtu: None,
        }],
        neighbors: vec![Neighbor {
            ip: gw,
            mac: [0x02, 0x68, 0x6b, 0, 0, 0xfe],
            dev: "eth0".into(),
        }],
    };
    a.ok(Request::ConfigureNetwork(Box::new(cfg.clone())));
    let e = a.error(Request::ConfigureNetwork(Box::new(cfg)));
    assert!(e.contains("once per VM"), "{e}");

    // The host leaves the network namespace out of the spec: the container shares the
    // agent's, and net.* sysctls apply to it.
    let mut s = spec(
        &rootfs,
        &[
            "sh",
            "-c",
            "ip addr show eth0; ip route; cat /proc/sys/net/ipv4/ping_group_range; \
             touch /dev/shm/mark; exec sleep 1000",
        ],
    );
    s["linux"]["namespaces"] = json!([
        { "type": "pid" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" }, { "type": "cgroup" }
    ]);
    s["linux"]["sysctl"] = json!({ "net.ipv4.ping_group_range": "0 0" });
    let c = id("net");
    let io = a.run_detached(&c, s);
    // An exec has no network namespace to join, and sees the same network.
    let script = "while [ ! -f /dev/shm/mark ]; do usleep 20000; done; ip route";
    let (st, out, err) = a.exec_run(&c, "e1", process(&["sh", "-c", script]));
    assert_eq!(st, ExitStatus::Code(0), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("default via 10.88.0.1 dev eth0"), "{out}");
    a.signal(&c, 9, false);
    a.wait(&c);
    let (out, err) = io.output();
    for want in [
        ",UP",
        "mtu 1400",
        "inet 10.88.0.2/16",
        "default via 10.88.0.1 dev eth0",
        "0\t0\n",
    ] {
        assert!(
            out.contains(want),
            "missing {want:?} in:\n{out}\nstderr: {err}"
        );
    }
    a.delete(&c, false);
}

#[test]
#[ignore = "needs root: cargo test -p husk-agent --test containers -- --ignored --test-threads=1"]
fn root_network_set_up_after_create_is_the_containers() {
    require_root();
    let a = Agent::start_in_own_netns("cnet");
    let rootfs = busybox_rootfs(&a);
    let spare = proto::network::spare_nic_mac(0);
    let spare_text = proto::network::mac_string(&spare);
    // The spare NIC the host gives the VM at boot, as the kernel named it.
    ip_in(
        a.child.id(),
        &format!("link add enp0s2 address {spare_text} type veth peer name peer0"),
    );
    // The engine's veth, as husk found it in the netns of the pid it reported.
    let mac = [0x02, 0x42, 0xac, 0x11, 0, 2];
    let gw = "172.17.0.1".parse().unwrap();
    let cfg = NetworkConfig {
        links: vec![Link {
            name: "eth0".into(),
            mac,
            mtu: 1400,
            addrs: vec![IpNet::new("172.17.0.2".parse().unwrap(), 16).unwrap()],
            nic_mac: Some(spare),
        }],
        routes: vec![Route {
            dst: None,
            gateway: Some(gw),
            dev: "eth0".into(),
            src: None,
            scope: 0,
            mtu: None,
        }],
        neighbors: vec![Neighbor {
            ip: gw,
            mac: [0x02, 0x42, 0xac, 0x11, 0, 1],
            dev: "eth0".into(),
        }],
    };
    let configure = |id: &str, network: &NetworkConfig| Request::ConfigureContainerNetwork {
        id: id.into(),
        network: Box::new(network.clone()),
    };

    // The spec asks for a new network namespace (`spec` lists one), which the engine fills
    // between create and start.
    let c = id("cnet");
    a.create_ok(
        &c,
        spec(
            &rootfs,
            &[
                "sh",
                "-c",
                "ip addr show eth0; ip route; touch /dev/shm/mark; exec sleep 1000",
            ],
        ),
    );
    let io = a.attach_all(&c, None);
    let e = a.error(configure("nope", &cfg));
    assert!(e.contains("does not exist"), "{e}");
    let mut bad = cfg.clone();
    bad.links[0].nic_mac = None;
    let e = a.error(configure(&c, &bad));
    assert!(e.contains("nic_mac"), "{e}");
    a.ok(configure(&c, &cfg));
    let e = a.error(configure(&c, &cfg));
    assert!(e.contains("once per container"), "{e}");
    // The NIC left the agent's (the guest's initial) network namespace.
    let here = ip_in(a.child.id(), "link show");
    for gone in [spare_text.as_str(), "enp0s2", "02:42:ac:11:00:02"] {
        assert!(!here.contains(gone), "{gone} still in:\n{here}");
    }

    a.start_ctr(&c);
    // An exec joins the container's network namespace and sees the same network.
    let script = "while [ ! -f /dev/shm/mark ]; do usleep 20000; done; ip addr show eth0; ip route";
    let (st, out, err) = a.exec_run(&c, "e1", process(&["sh", "-c", script]));
    assert_eq!(st, ExitStatus::Code(0), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("inet 172.17.0.2/16"), "{out}");
    assert!(out.contains("default via 172.17.0.1 dev eth0"), "{out}");
    a.signal(&c, 9, false);
    a.wait(&c);
    let (out, err) = io.output();
    for want in [
        ",UP",
        "mtu 1400",
        "link/ether 02:42:ac:11:00:02",
        "inet 172.17.0.2/16",
        "default via 172.17.0.1 dev eth0",
    ] {
        assert!(
            out.contains(want),
            "missing {want:?} in:\n{out}\nstderr: {err}"
        );
    }
    let e = a.error(configure(&c, &cfg));
    assert!(e.contains("stopped"), "{e}");
    a.delete(&c, false);

    // A container in the agent's network namespace has none of its own to move a NIC into.
    let mut s = spec(&rootfs, &["true"]);
    s["linux"]["namespaces"] = json!([
        { "type": "pid" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" }, { "type": "cgroup" }
    ]);
    let shared = id("cnet-shared");
    a.create_ok(&shared, s);
    let e = a.error(configure(&shared, &cfg));
    assert!(e.contains("no network namespace of its own"), "{e}");
    a.delete(&shared, true);
}
