//! Faults: kill -9 of each process a container has (the monitor, husk-vmm's
//! jail waiter and the VMM it forked, the container's init in the guest,
//! the husk command itself, containerd's shim) during create, start, exec
//! and delete. The interrupted command may fail, but it must end (a hang
//! fails the test); afterwards the next `husk delete --force` (containerd:
//! `ctr task delete --force`, `ctr container rm`) must leave nothing
//! behind: no process, mount, cgroup, socket or state directory.
//!
//! "During": the command runs as a child while another thread polls /proc
//! for the victim and SIGKILLs it while the command still runs. Requests
//! that are over in milliseconds (start, delete's agent call) are stretched
//! deterministically: the VMM is SIGSTOPped first, so the command is stuck
//! waiting for the agent when the victim dies.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use husk_tests::bundle::TestBundle;
use husk_tests::containerd::{mounts_below, processes_with, Containerd, IMAGE, NAMESPACE, RUNTIME};
use husk_tests::{artifact, output_within, Husk};
use serde_json::Value;

/// An interrupted command may fail, but must be over within this.
const FAULT_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a victim may take to appear once its command runs.
const APPEAR_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the host may take to be clean once the cleaning command ended
/// (death by PR_SET_PDEATHSIG chains is asynchronous).
const CLEAN_TIMEOUT: Duration = Duration::from_secs(20);
/// A command stuck on a frozen agent has been waiting this long when the
/// victim dies.
const STUCK: Duration = Duration::from_millis(400);

fn show(o: &Output) -> String {
    format!(
        "{} stdout {:?} stderr {:?}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

// ---- processes -------------------------------------------------------------------------

/// Fields of /proc/PID/stat after the command name: (state, ppid).
fn stat(pid: i32) -> Option<(char, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut f = s[s.rfind(')')? + 2..].split(' ');
    let state = f.next()?.chars().next()?;
    Some((state, f.next()?.parse().ok()?))
}

fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|(s, _)| s != 'Z' && s != 'X')
}

fn signal(pid: i32, sig: i32) {
    assert!(pid > 1, "refusing to signal pid {pid}");
    // SAFETY: signalling a process this test's commands started.
    unsafe { libc::kill(pid, sig) };
}

/// SIGSTOPs `pid` and waits until it is stopped.
fn freeze(pid: i32) {
    signal(pid, libc::SIGSTOP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat(pid).map(|s| s.0) != Some('T') {
        assert!(Instant::now() < deadline, "{pid} did not stop");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Processes whose command line contains every needle, except forks of one
/// of them that have not exec'd yet (their parent matches too).
fn find(needles: &[&str]) -> Vec<i32> {
    let all: Vec<i32> = processes_with(needles[0])
        .into_iter()
        .filter(|(p, c)| alive(*p) && needles[1..].iter().all(|n| c.contains(n)))
        .map(|(p, _)| p)
        .collect();
    all.iter()
        .copied()
        .filter(|p| !stat(*p).is_some_and(|(_, pp)| all.contains(&pp)))
        .collect()
}

/// husk-vmm's two processes, found by a needle of their command line (the
/// vsock socket path): the waiter the runtime started and the VMM it forked
/// into a pid namespace (each, once it exists).
fn vmm_processes(needle: &str) -> (Option<i32>, Option<i32>) {
    let all: Vec<(i32, i32)> = processes_with(needle)
        .into_iter()
        .filter(|(p, c)| c.contains("husk-vmm") && alive(*p))
        .filter_map(|(p, _)| Some((p, stat(p)?.1)))
        .collect();
    let waiter = all
        .iter()
        .find(|(_, pp)| !all.iter().any(|(p, _)| p == pp))
        .map(|(p, _)| *p);
    let vmm = waiter.and_then(|w| all.iter().find(|(_, pp)| *pp == w).map(|(p, _)| *p));
    (waiter, vmm)
}

/// Polls `f` until it yields a pid; fails once the command ended (`done`)
/// or after [`APPEAR_TIMEOUT`].
fn wait_for(what: &str, done: &AtomicBool, f: impl Fn() -> Option<i32>) -> Result<i32, String> {
    let deadline = Instant::now() + APPEAR_TIMEOUT;
    loop {
        if let Some(p) = f() {
            return Ok(p);
        }
        if done.load(Ordering::SeqCst) {
            return Err(format!("the command ended before {what} appeared"));
        }
        if Instant::now() > deadline {
            return Err(format!("{what} did not appear within {APPEAR_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// SIGKILLs `pid` (`what`) if the command still runs.
fn kill_now(what: &str, pid: i32, done: &AtomicBool) -> Result<String, String> {
    if done.load(Ordering::SeqCst) {
        return Err(format!(
            "the command ended before {what} ({pid}) was killed"
        ));
    }
    signal(pid, libc::SIGKILL);
    Ok(format!("{what} ({pid}) killed"))
}

/// Runs `cmd` while `fault` (on a thread of its own) waits for its moment and
/// kills; `fault` sees a flag set once the command has ended. Returns the
/// command's output and what the fault did (an error if it did not get to
/// kill while the command ran), which also says when the fault struck and
/// how long the command ran.
fn during(
    cmd: Command,
    fault: impl FnOnce(&AtomicBool) -> Result<String, String> + Send + 'static,
) -> (Output, Result<String, String>) {
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let start = Instant::now();
    let t = std::thread::spawn(move || {
        fault(&d).map(|m| format!("{m} at {:.1}s", start.elapsed().as_secs_f64()))
    });
    let o = output_within(cmd, FAULT_TIMEOUT);
    let ran = start.elapsed().as_secs_f64();
    done.store(true, Ordering::SeqCst);
    let fault = t.join().expect("fault thread panicked");
    (o, fault.map(|m| format!("{m} (the command ran {ran:.1}s)")))
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

// ---- husk --------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    /// `husk __monitor`, the pid husk reports.
    Monitor,
    /// husk-vmm as the monitor started it (the jail's waiter).
    Waiter,
    /// The VMM, PID 1 of its own pid namespace.
    Vmm,
    /// The container's init, in the guest.
    Init,
    /// The husk command being run.
    Client,
}

/// One container of a [`Husk`] root, by the names its processes carry.
#[derive(Clone)]
struct Target {
    root: PathBuf,
    config: PathBuf,
    id: String,
}

impl Target {
    fn new(h: &Husk, id: &str) -> Target {
        Target {
            root: h.root.clone(),
            config: h.config.clone(),
            id: id.to_string(),
        }
    }

    fn husk(&self, args: &[&str]) -> Command {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new(artifact("HUSK_BIN_DIR").join("husk"));
        c.arg("--root")
            .arg(&self.root)
            .env("HUSK_CONFIG", &self.config)
            .args(args)
            .stdin(Stdio::null());
        // A session of its own: a VMM this test SIGSTOPs must not be in the
        // test's process group, whose orphaning would SIGHUP (and SIGCONT)
        // the whole group, this test included.
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            c.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        output_within(self.husk(args), FAULT_TIMEOUT)
    }

    fn ok(&self, args: &[&str]) -> Output {
        let o = self.run(args);
        assert!(o.status.success(), "husk {args:?}: {}", show(&o));
        o
    }

    fn monitor(&self) -> Option<i32> {
        let needle = format!("{} __monitor {} ", self.root.display(), self.id);
        find(&[&needle]).first().copied()
    }

    fn vmm(&self) -> (Option<i32>, Option<i32>) {
        vmm_processes(&format!(
            "{}/vm/vsock.sock",
            self.root.join(&self.id).display()
        ))
    }

    /// The running `husk SUBCOMMAND ... ID` for this container.
    fn client(&self, sub: &str) -> Option<i32> {
        let needle = format!("{} {sub} ", self.root.display());
        find(&[&needle, &format!(" {} ", self.id)]).first().copied()
    }

    fn pid_of(&self, v: Victim, sub: &str) -> Option<i32> {
        match v {
            Victim::Monitor => self.monitor(),
            Victim::Waiter => self.vmm().0,
            Victim::Vmm => self.vmm().1,
            Victim::Client => self.client(sub),
            Victim::Init => unreachable!("the init is killed in the guest"),
        }
    }

    fn status(&self) -> Option<String> {
        let o = self.run(&["state", &self.id]);
        if !o.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&o.stdout).ok()?;
        v["status"].as_str().map(str::to_string)
    }

    fn wait_status(&self, want: &str, why: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.status();
            if s.as_deref() == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {why}: status {s:?}, expected {want}",
                self.id
            );
            sleep_ms(50);
        }
    }

    /// The guest pid of the container process running `cmd` (`husk ps`).
    fn guest_pid(&self, cmd: &str) -> Result<i32, String> {
        let o = self.run(&["ps", &self.id]);
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        text.lines()
            .skip(1)
            .find(|l| l.ends_with(cmd))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .ok_or_else(|| format!("no {cmd:?} in husk ps: {}", show(&o)))
    }

    /// Everything this container may have left on the host.
    fn leftovers(&self) -> Vec<String> {
        let root = self.root.to_string_lossy().into_owned();
        let mut v: Vec<String> = processes_with(&root)
            .into_iter()
            .map(|(p, c)| format!("process {p} ({:?}): {c}", stat(p).map(|s| s.0)))
            .collect();
        v.extend(
            mounts_below(&self.root)
                .into_iter()
                .map(|m| format!("mount {m}")),
        );
        if let Ok(rd) = std::fs::read_dir(&self.root) {
            v.extend(
                rd.flatten()
                    .map(|e| format!("state {}", e.path().display())),
            );
        }
        v.extend(
            cgroup_dirs(&format!("husk/{}", self.id))
                .into_iter()
                .map(|c| format!("cgroup {}", c.display())),
        );
        v.extend(
            unix_sockets(&root)
                .into_iter()
                .map(|s| format!("socket {s}")),
        );
        v
    }

    /// Waits for [`leftovers`](Self::leftovers) to be empty; fails with the list.
    fn assert_clean(&self, what: &str) {
        let t = Instant::now();
        loop {
            let left = self.leftovers();
            if left.is_empty() {
                eprintln!(
                    "  {}: clean {:.1}s after {what}",
                    self.id,
                    t.elapsed().as_secs_f64()
                );
                return;
            }
            assert!(
                t.elapsed() < CLEAN_TIMEOUT,
                "{}: left behind after {what}:\n  {}",
                self.id,
                left.join("\n  ")
            );
            sleep_ms(50);
        }
    }

    /// `husk delete --force` must succeed and leave nothing behind.
    fn delete_and_check(&self, context: &str) {
        let o = self.run(&["delete", "--force", &self.id]);
        assert!(
            o.status.success(),
            "{}: delete --force after {context}: {}\nleft: {:?}",
            self.id,
            show(&o),
            self.leftovers()
        );
        self.assert_clean(&format!("delete --force ({context})"));
    }

    fn create(&self, b: &TestBundle) {
        self.ok(&["create", "--bundle", b.dir.to_str().unwrap(), &self.id]);
    }

    fn create_and_start(&self, b: &TestBundle) {
        self.create(b);
        self.ok(&["start", &self.id]);
    }

    /// SIGSTOPs the VMM: every agent request hangs until it is killed.
    fn freeze_vmm(&self) -> i32 {
        let vmm = self.vmm().1.expect("the VMM of a created container");
        freeze(vmm);
        vmm
    }
}

/// Cgroup directories named `rel` in any hierarchy.
fn cgroup_dirs(rel: &str) -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![base.join(rel)];
    if let Ok(rd) = std::fs::read_dir(base) {
        dirs.extend(rd.flatten().map(|e| e.path().join(rel)));
    }
    dirs.into_iter().filter(|d| d.is_dir()).collect()
}

/// Bound unix sockets whose path contains `needle` (/proc/net/unix).
fn unix_sockets(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/net/unix")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(7))
        .filter(|p| p.contains(needle))
        .map(str::to_string)
        .collect()
}

fn bundle(tag: &str, args: &[&str]) -> TestBundle {
    let mut b = TestBundle::busybox(tag, args);
    // Not a pid-namespace init: `kill -9` from inside the container reaches it.
    b.without_pid_ns();
    b
}

#[test]
fn kill_9_during_create() {
    let h = Husk::new("fcreate");
    let b = bundle("fcreate", &["sleep", "1001"]);
    // Each dies mid-boot: once husk-vmm has forked the VMM, after `delay` ms.
    for (victim, delay) in [
        (Victim::Waiter, 0),
        (Victim::Vmm, 300),
        (Victim::Monitor, 200),
        (Victim::Client, 200),
    ] {
        let t = Target::new(&h, &format!("create-{victim:?}").to_lowercase());
        let cmd = t.husk(&["create", "--bundle", b.dir.to_str().unwrap(), &t.id]);
        let tf = t.clone();
        let (o, fault) = during(cmd, move |done| {
            wait_for("the VMM", done, || tf.vmm().1)?;
            sleep_ms(delay);
            let pid = wait_for(&format!("{victim:?}"), done, || tf.pid_of(victim, "create"))?;
            kill_now(&format!("{victim:?}"), pid, done)
        });
        let fault = fault.unwrap_or_else(|e| panic!("{}: {e}; create: {}", t.id, show(&o)));
        eprintln!("create × {victim:?}: {fault}; create: {}", show(&o));
        assert!(!o.status.success(), "{fault}, yet create succeeded");
        if victim != Victim::Client {
            // A create that fails cleans up after itself.
            t.assert_clean(&format!("the failed create ({fault})"));
        }
        t.delete_and_check(&format!("{fault} during create"));
    }
}

#[test]
fn kill_9_during_start() {
    let h = Husk::new("fstart");
    let b = bundle("fstart", &["sleep", "1001"]);
    // start waits for a frozen agent when the victim dies.
    for victim in [Victim::Monitor, Victim::Waiter, Victim::Vmm] {
        let t = Target::new(&h, &format!("start-{victim:?}").to_lowercase());
        t.create(&b);
        t.freeze_vmm();
        let tf = t.clone();
        let (o, fault) = during(t.husk(&["start", &t.id]), move |done| {
            std::thread::sleep(STUCK);
            let pid = tf
                .pid_of(victim, "start")
                .ok_or(format!("no {victim:?} after create"))?;
            kill_now(&format!("{victim:?}"), pid, done)
        });
        let fault = fault.unwrap_or_else(|e| panic!("{}: {e}; start: {}", t.id, show(&o)));
        eprintln!("start × {victim:?}: {fault}; start: {}", show(&o));
        assert!(!o.status.success(), "{fault}, yet start succeeded");
        t.wait_status("stopped", &fault);
        t.delete_and_check(&format!("{fault} during start"));
    }
    // The init: SIGKILLed by itself as soon as start lets it run.
    let b = bundle("fstart-init", &["sh", "-c", "kill -9 $$"]);
    let t = Target::new(&h, "start-init");
    t.create(&b);
    let o = t.run(&["start", &t.id]);
    eprintln!("start × Init (kill -9 $$): start: {}", show(&o));
    t.wait_status("stopped", "the init killed itself");
    t.delete_and_check("the init killed during start");
}

#[test]
fn kill_9_during_exec() {
    let h = Husk::new("fexec");
    let b = bundle("fexec", &["sleep", "1001"]);
    for victim in [
        Victim::Client,
        Victim::Monitor,
        Victim::Waiter,
        Victim::Vmm,
        Victim::Init,
    ] {
        let t = Target::new(&h, &format!("exec-{victim:?}").to_lowercase());
        t.create_and_start(&b);
        // The exec's process says it runs with a file in the rootfs (a host
        // directory, shared over virtio-fs).
        let marker = b.rootfs().join(format!("started-{}", t.id));
        let script = format!("touch /started-{}; exec sleep 1002", t.id);
        let tf = t.clone();
        let (o, fault) = during(t.husk(&["exec", &t.id, "sh", "-c", &script]), move |done| {
            wait_for("the exec'd process", done, || marker.exists().then_some(0))?;
            if victim == Victim::Init {
                let pid = tf.guest_pid("sleep 1001")?;
                let k = tf.run(&["exec", &tf.id, "kill", "-9", &pid.to_string()]);
                if !k.status.success() {
                    return Err(format!("husk exec kill -9 {pid}: {}", show(&k)));
                }
                return Ok(format!("the init (guest pid {pid}) killed"));
            }
            let pid = wait_for(&format!("{victim:?}"), done, || tf.pid_of(victim, "exec"))?;
            kill_now(&format!("{victim:?}"), pid, done)
        });
        let fault = fault.unwrap_or_else(|e| panic!("{}: {e}; exec: {}", t.id, show(&o)));
        eprintln!("exec × {victim:?}: {fault}; exec: {}", show(&o));
        assert!(!o.status.success(), "{fault}, yet exec succeeded");
        if victim == Victim::Client {
            assert_eq!(t.status().as_deref(), Some("running"), "{fault}");
        } else {
            t.wait_status("stopped", &fault);
        }
        t.delete_and_check(&format!("{fault} during exec"));
    }
}

#[test]
fn kill_9_during_delete() {
    let h = Husk::new("fdelete");
    let b = bundle("fdelete", &["sleep", "1001"]);

    // The delete command, while it waits for a frozen agent: nothing is
    // removed yet, and the next delete finds everything.
    let t = Target::new(&h, "delete-client-early");
    t.create_and_start(&b);
    t.freeze_vmm();
    let tf = t.clone();
    let (o, fault) = during(t.husk(&["delete", "--force", &t.id]), move |done| {
        std::thread::sleep(STUCK);
        let pid = tf.client("delete").ok_or("no husk delete")?;
        kill_now("husk delete", pid, done)
    });
    let fault = fault.unwrap_or_else(|e| panic!("{}: {e}; delete: {}", t.id, show(&o)));
    eprintln!(
        "delete × Client (agent frozen): {fault}; delete: {}",
        show(&o)
    );
    assert!(!o.status.success(), "{fault}, yet delete succeeded");
    assert!(h.root.join(&t.id).join("state.json").exists(), "{fault}");
    t.delete_and_check(&format!("{fault} during delete"));

    // The delete command, once the monitor it killed is gone: mid-cleanup.
    let t = Target::new(&h, "delete-client-late");
    t.create_and_start(&b);
    let monitor = t.monitor().expect("monitor");
    let tf = t.clone();
    let (o, fault) = during(t.husk(&["delete", "--force", &t.id]), move |done| {
        let pid = wait_for("husk delete", done, || tf.client("delete"))?;
        wait_for("the monitor's end", done, || (!alive(monitor)).then_some(0))?;
        kill_now("husk delete", pid, done)
    });
    // The delete may have been quicker than the poll: then this case only
    // shows that a second delete is harmless.
    let fault = fault.unwrap_or_else(|e| e);
    eprintln!(
        "delete × Client (mid-cleanup): {fault}; delete: {}",
        show(&o)
    );
    t.delete_and_check(&format!("{fault} during delete"));

    // The monitor, while the delete waits for a frozen agent: the delete
    // itself cleans up.
    let t = Target::new(&h, "delete-monitor");
    t.create_and_start(&b);
    t.freeze_vmm();
    let tf = t.clone();
    let (o, fault) = during(t.husk(&["delete", "--force", &t.id]), move |done| {
        std::thread::sleep(STUCK);
        let pid = tf.monitor().ok_or("no monitor")?;
        kill_now("the monitor", pid, done)
    });
    let fault = fault.unwrap_or_else(|e| panic!("{}: {e}; delete: {}", t.id, show(&o)));
    eprintln!(
        "delete × Monitor (agent frozen): {fault}; delete: {}",
        show(&o)
    );
    assert!(o.status.success(), "{fault}: delete failed: {}", show(&o));
    t.assert_clean(&format!("the delete during which {fault}"));
    t.delete_and_check(&format!("{fault} during delete"));
}

// ---- containerd --------------------------------------------------------------------------

/// The shim's task socket (containerd_shim::socket_address).
fn shim_socket(c: &Containerd, id: &str) -> PathBuf {
    use std::io::Write;
    let key = format!("{}/{NAMESPACE}/{id}", c.socket.display());
    let mut sha = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    sha.stdin.take().unwrap().write_all(key.as_bytes()).unwrap();
    let o = sha.wait_with_output().unwrap();
    let hex = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    Path::new("/run/containerd/s").join(hex)
}

fn ctr_jailed_vmm(c: &Containerd) -> Option<i32> {
    vmm_processes(&c.shim_root.to_string_lossy()).1
}

fn ctr_task(c: &Containerd, id: &str) -> Option<String> {
    let o = c.ctr_out(&["task", "ls"]);
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .skip(1)
        .find_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() == 3 && w[0] == id).then(|| w[2].to_string())
        })
}

fn ctr_wait_running(c: &Containerd, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while ctr_task(c, id).as_deref() != Some("RUNNING") {
        assert!(
            Instant::now() < deadline,
            "{id} never ran\n{}",
            c.log_tail(40)
        );
        sleep_ms(100);
    }
}

/// The bundle rootfs containerd mounted for task `id` (a host view of the
/// container's root).
fn ctr_rootfs(c: &Containerd, id: &str) -> PathBuf {
    c.base
        .join("state/io.containerd.runtime.v2.task")
        .join(NAMESPACE)
        .join(id)
        .join("rootfs")
}

/// `ctr task delete --force` (it may fail: the task may be gone with its
/// shim), then `ctr container rm`; then nothing of `id` may be left.
fn ctr_remove_and_check(c: &Containerd, id: &str, context: &str) {
    let td = c.ctr_out(&["task", "delete", "--force", id]);
    let listed = |what: &str| {
        String::from_utf8_lossy(&c.ctr_out(&[what, "ls", "-q"]).stdout)
            .lines()
            .any(|l| l == id)
    };
    if listed("container") {
        let o = c.ctr_out(&["container", "rm", id]);
        assert!(
            o.status.success(),
            "{id}: container rm after {context} (task delete: {}): {}\n{}",
            show(&td),
            show(&o),
            c.log_tail(60)
        );
    }
    assert!(!listed("container"), "{id}: container still listed");
    assert!(ctr_task(c, id).is_none(), "{id}: task still listed");
    let t = Instant::now();
    c.assert_clean();
    let cg = cgroup_dirs(&format!("{NAMESPACE}/{id}"));
    let sock = shim_socket(c, id);
    while !cg.iter().all(|d| !d.exists()) || sock.exists() {
        assert!(
            t.elapsed() < CLEAN_TIMEOUT,
            "{id}: left behind after {context}: cgroups {:?}, shim socket {} exists: {}",
            cg.iter().filter(|d| d.exists()).collect::<Vec<_>>(),
            sock.display(),
            sock.exists()
        );
        sleep_ms(100);
    }
    eprintln!(
        "  {id}: clean {:.1}s after removal ({context})",
        t.elapsed().as_secs_f64()
    );
}

#[test]
fn kill_9_under_containerd() {
    let c = Containerd::start("faults");
    c.import_busybox();
    let run_d = |id: &str| {
        let o = c.ctr_out(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            IMAGE,
            id,
            "sleep",
            "1001",
        ]);
        assert!(o.status.success(), "ctr run {id}: {}", show(&o));
        ctr_wait_running(&c, id);
    };
    let shims = |c: &Containerd| c.shims().into_iter().map(|(p, _)| p).collect::<Vec<_>>();

    // The shim while it boots the VM (NewTask, ctr run's create).
    let id = "shim-create";
    let mut cmd = c.ctr();
    cmd.args([
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        id,
        "sleep",
        "1001",
    ])
    .stdin(Stdio::null());
    let (root, sock) = (c.shim_root.clone(), c.socket.clone());
    let (o, fault) = during(cmd, move |done| {
        wait_for("the VMM", done, || vmm_processes(&root.to_string_lossy()).1)?;
        let needle = format!(" -address {} ", sock.display());
        let shims = find(&[&needle, husk_tests::containerd::SHIM]);
        let mut msg = Vec::new();
        for s in shims {
            msg.push(kill_now("the shim", s, done)?);
        }
        Ok(msg.join(", "))
    });
    let fault = fault.unwrap_or_else(|e| panic!("{id}: {e}; ctr run: {}", show(&o)));
    eprintln!("ctr create × shim: {fault}; ctr run: {}", show(&o));
    assert!(!fault.is_empty(), "no shim to kill");
    assert!(!o.status.success(), "{fault}, yet ctr run succeeded");
    ctr_remove_and_check(&c, id, &format!("{fault} during create"));

    // The shim, then the VMM, during an exec.
    for victim in ["shim", "vmm"] {
        let id = format!("{victim}-exec");
        run_d(&id);
        let marker = ctr_rootfs(&c, &id).join("exec-started");
        let shim_pids = shims(&c);
        let mut cmd = c.ctr();
        cmd.args(["task", "exec", "--exec-id", "e1", &id, "sh", "-c"])
            .arg("touch /exec-started; exec sleep 1002")
            .stdin(Stdio::null());
        let root = c.shim_root.clone();
        let (o, fault) = during(cmd, move |done| {
            wait_for("the exec'd process", done, || marker.exists().then_some(0))?;
            if victim == "shim" {
                let mut msg = Vec::new();
                for s in shim_pids {
                    msg.push(kill_now("the shim", s, done)?);
                }
                Ok(msg.join(", "))
            } else {
                let vmm = vmm_processes(&root.to_string_lossy()).1.ok_or("no VMM")?;
                kill_now("the VMM", vmm, done)
            }
        });
        let fault = fault.unwrap_or_else(|e| panic!("{id}: {e}; ctr task exec: {}", show(&o)));
        eprintln!("ctr exec × {victim}: {fault}; ctr task exec: {}", show(&o));
        assert!(!o.status.success(), "{fault}, yet the exec succeeded");
        if victim == "vmm" {
            // The shim lives on and reports the task as stopped.
            let deadline = Instant::now() + Duration::from_secs(30);
            while ctr_task(&c, &id).as_deref() != Some("STOPPED") {
                assert!(Instant::now() < deadline, "{id}: {:?}", ctr_task(&c, &id));
                sleep_ms(100);
            }
        }
        ctr_remove_and_check(&c, &id, &format!("{fault} during exec"));
    }

    // The shim while `ctr task delete --force` waits for a frozen agent.
    let id = "shim-delete";
    run_d(id);
    freeze(ctr_jailed_vmm(&c).expect("VMM"));
    let shim_pids = shims(&c);
    let mut cmd = c.ctr();
    cmd.args(["task", "delete", "--force", id])
        .stdin(Stdio::null());
    let (o, fault) = during(cmd, move |done| {
        std::thread::sleep(STUCK);
        let mut msg = Vec::new();
        for s in shim_pids {
            msg.push(kill_now("the shim", s, done)?);
        }
        Ok(msg.join(", "))
    });
    let fault = fault.unwrap_or_else(|e| panic!("{id}: {e}; ctr task delete: {}", show(&o)));
    eprintln!(
        "ctr delete × shim (agent frozen): {fault}; ctr task delete: {}",
        show(&o)
    );
    ctr_remove_and_check(&c, id, &format!("{fault} during delete"));
}
