//! containerd-shim-husk-v2 under Debian's real containerd, driven with `ctr`:
//! each test starts its own containerd (own config, root, state, socket; the
//! shim found on PATH), imports a busybox image built offline, and runs real
//! microVMs through the shim.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use husk_tests::containerd::{processes_with, Containerd, IMAGE, RUNTIME};
use husk_tests::{output_within, COMMAND_TIMEOUT};

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn setup(tag: &str) -> Containerd {
    let c = Containerd::start(tag);
    c.import_busybox();
    c
}

/// `ctr run --runtime io.containerd.husk.v2 [opts] IMAGE ID ARGS...`
fn run(c: &Containerd, opts: &[&str], id: &str, args: &[&str]) -> Output {
    let mut v = vec!["run", "--runtime", RUNTIME];
    v.extend_from_slice(opts);
    v.push(IMAGE);
    v.push(id);
    v.extend_from_slice(args);
    c.ctr_out(&v)
}

/// The task's (pid, status) from `ctr task ls`.
fn task(c: &Containerd, id: &str) -> Option<(u32, String)> {
    c.ctr_ok(&["task", "ls"]).lines().skip(1).find_map(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        (w.len() == 3 && w[0] == id).then(|| (w[1].parse().unwrap_or(0), w[2].to_string()))
    })
}

fn wait_status(c: &Containerd, id: &str, want: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((pid, st)) = task(c, id) {
            if st == want {
                return pid;
            }
        }
        assert!(
            Instant::now() < deadline,
            "task {id} never became {want}: {:?}\n{}",
            task(c, id),
            c.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Deletes a task and its container; returns `ctr task delete`'s stderr
/// (which names a non-zero exit status).
fn remove(c: &Containerd, id: &str) -> String {
    let o = c.ctr_out(&["task", "delete", id]);
    assert!(o.status.success(), "task delete {id}: {}", err(&o));
    c.ctr_ok(&["container", "rm", id]);
    err(&o)
}

/// husk-vmm processes of this containerd's sandboxes (a jailed VMM is two:
/// the process the shim started, and the VMM it forked into a pid namespace).
fn husk_vmms(c: &Containerd) -> Vec<i32> {
    let mut v: Vec<i32> = processes_with(&c.shim_root.to_string_lossy())
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("husk-vmm"))
        .map(|(p, _)| p)
        .collect();
    v.sort();
    v
}

fn sandbox_dirs(c: &Containerd) -> usize {
    std::fs::read_dir(&c.shim_root)
        .map(|r| r.count())
        .unwrap_or(0)
}

/// Records `ctr events` while alive.
struct Events {
    child: std::process::Child,
    file: std::path::PathBuf,
}

impl Events {
    fn start(c: &Containerd) -> Events {
        let file = c.base.join("events.txt");
        let mut cmd = c.ctr();
        let child = cmd
            .arg("events")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&file).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Let it subscribe before anything happens.
        std::thread::sleep(Duration::from_millis(500));
        Events { child, file }
    }

    /// Lines of topic `topic`, waiting a little for them to arrive.
    fn lines(&self, topic: &str, want: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&self.file).unwrap_or_default();
            let v: Vec<String> = text
                .lines()
                .filter(|l| l.split_whitespace().nth(5) == Some(topic))
                .map(str::to_string)
                .collect();
            if v.len() >= want || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json_of(line: &str) -> serde_json::Value {
    let start = line.find('{').expect("event without JSON");
    serde_json::from_str(&line[start..]).expect("event JSON")
}

#[test]
fn run_rm_echo_hi() {
    let c = setup("echo");
    let o = run(&c, &["--rm"], "echo1", &["echo", "hi"]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", err(&o), c.log_tail(60));
    assert_eq!(out(&o), "hi\n");
    assert_eq!(c.ctr_ok(&["container", "ls", "-q"]), "");
    c.assert_clean();
}

#[test]
fn exit_status_stdio_and_events() {
    let c = setup("exit");
    let ev = Events::start(&c);
    let before = std::time::SystemTime::now();
    let o = run(
        &c,
        &["--rm"],
        "exit7",
        &["sh", "-c", "echo out; echo err >&2; exit 7"],
    );
    assert_eq!(o.status.code(), Some(7), "{}", err(&o));
    assert_eq!(out(&o), "out\n");
    assert!(err(&o).contains("err\n"), "{}", err(&o));

    let create = ev.lines("/tasks/create", 1);
    let start = ev.lines("/tasks/start", 1);
    let exit = ev.lines("/tasks/exit", 1);
    let delete = ev.lines("/tasks/delete", 1);
    assert_eq!(
        (create.len(), start.len(), exit.len(), delete.len()),
        (1, 1, 1, 1),
        "{}",
        std::fs::read_to_string(&ev.file).unwrap()
    );
    let e = json_of(&exit[0]);
    assert_eq!(e["container_id"], "exit7");
    assert_eq!(e["id"], "exit7");
    assert_eq!(e["exit_status"], 7);
    // exited_at: after the run began, not containerd's zero time.
    let at = e["exited_at"].as_str().unwrap().to_string();
    let secs = Command::new("date")
        .args(["-d", &at, "+%s"])
        .output()
        .unwrap();
    let secs: u64 = String::from_utf8_lossy(&secs.stdout)
        .trim()
        .parse()
        .unwrap();
    let began = before
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(secs + 1 >= began && secs < began + 300, "exited_at {at}");
    assert_eq!(json_of(&delete[0])["exit_status"], 7);
    assert_eq!(json_of(&delete[0])["exited_at"], e["exited_at"]);
    // The pid containerd was given is the VM's (husk-vmm).
    let pid = json_of(&create[0])["pid"].as_u64().unwrap();
    assert_eq!(json_of(&start[0])["pid"].as_u64().unwrap(), pid);
    assert!(pid > 0);
    c.assert_clean();
}

#[test]
fn tty() {
    let c = setup("tty");
    // ctr -t needs a terminal of its own: script(1) gives it one.
    let ctr = format!(
        "ctr --address {} --namespace husktest run --rm -t --runtime {RUNTIME} {IMAGE} tty1 sh -c 'test -t 0 && test -t 1 && tty; exit 5'",
        c.socket.display()
    );
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &ctr, "/dev/null"])
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null());
    let o = output_within(cmd, COMMAND_TIMEOUT);
    assert_eq!(o.status.code(), Some(5), "{}{}", out(&o), err(&o));
    // The guest's pty, shown where runc shows it (/dev/console is its slave).
    let o = out(&o);
    assert!(
        o.contains("/dev/console") || o.contains("/dev/pts/"),
        "stdin and stdout are not a terminal: {o:?}"
    );

    // An exec with a terminal of its own (ctr resizes it before the start).
    let o = run(&c, &["-d"], "tty2", &["sleep", "1000"]);
    assert!(o.status.success(), "{}", err(&o));
    wait_status(&c, "tty2", "RUNNING");
    let ctr = format!(
        "ctr --address {} --namespace husktest task exec -t --exec-id t1 tty2 sh -c 'test -t 0 && test -t 1 && echo is-a-tty; exit 4'",
        c.socket.display()
    );
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &ctr, "/dev/null"])
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null());
    let o = output_within(cmd, COMMAND_TIMEOUT);
    assert_eq!(o.status.code(), Some(4), "{}{}", out(&o), err(&o));
    assert!(out(&o).contains("is-a-tty"), "{:?}", out(&o));
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", "tty2"]);
    wait_status(&c, "tty2", "STOPPED");
    remove(&c, "tty2");
    c.assert_clean();
}

#[test]
fn exec_in_running_task() {
    let c = setup("exec");
    let ev = Events::start(&c);
    let o = run(&c, &["-d"], "ex1", &["sleep", "1000"]);
    assert!(o.status.success(), "{}", err(&o));
    wait_status(&c, "ex1", "RUNNING");
    let o = c.ctr_out(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "ex1",
        "sh",
        "-c",
        "echo from-exec; echo to-stderr >&2; exit 3",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}\n{}", err(&o), c.log_tail(40));
    assert_eq!(out(&o), "from-exec\n");
    assert!(err(&o).contains("to-stderr"), "{}", err(&o));
    let added = ev.lines("/tasks/exec-added", 1);
    let started = ev.lines("/tasks/exec-started", 1);
    assert_eq!((added.len(), started.len()), (1, 1));
    assert_eq!(json_of(&added[0])["exec_id"], "e1");
    let exits = ev.lines("/tasks/exit", 1);
    let exec_exit = exits
        .iter()
        .map(|l| json_of(l))
        .find(|e| e["id"] == "e1")
        .expect("exit event of the exec");
    assert_eq!(exec_exit["exit_status"], 3);
    // stdin through its FIFO, EOF included (ctr's CloseIO at the end of input).
    let input = c.base.join("stdin.txt");
    std::fs::write(&input, "piped through\n").unwrap();
    let mut cmd = c.ctr();
    cmd.args(["task", "exec", "--exec-id", "e2", "ex1", "cat"])
        .stdin(std::fs::File::open(&input).unwrap());
    let o = output_within(cmd, COMMAND_TIMEOUT);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(out(&o), "piped through\n");
    // The container is unaffected.
    assert_eq!(task(&c, "ex1").unwrap().1, "RUNNING");
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", "ex1"]);
    wait_status(&c, "ex1", "STOPPED");
    let warn = remove(&c, "ex1");
    assert!(warn.contains("exit code 137"), "killed by SIGKILL: {warn}");
    c.assert_clean();
}

#[test]
fn kill_ls_pause_resume_metrics() {
    let c = setup("kill");
    let ev = Events::start(&c);
    let o = run(
        &c,
        &["-d"],
        "k1",
        &[
            "sh",
            "-c",
            // A child that stays (ps and pids.current count it); `wait` is
            // interrupted by the trapped SIGTERM.
            "trap 'exit 42' TERM; sleep 1000 & wait",
        ],
    );
    assert!(o.status.success(), "{}", err(&o));
    let pid = wait_status(&c, "k1", "RUNNING");
    // The task's pid is its VM's.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("husk-vmm"),
        "pid {pid} is not husk-vmm"
    );

    // The sandbox (shim and VMM) sits in the spec's cgroupsPath (ctr: /<namespace>/<id>).
    let cg = std::path::Path::new("/sys/fs/cgroup/husktest/k1");
    let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
    assert!(
        procs.lines().any(|l| l.trim() == pid.to_string()),
        "husk-vmm {pid} not in {}: {procs:?}",
        cg.display()
    );
    let max = std::fs::read_to_string(cg.join("memory.max")).unwrap_or_default();
    assert!(max.trim().parse::<u64>().is_ok(), "memory.max {max:?}");
    // Room for the shim's own threads beside the VMM's.
    let pids = std::fs::read_to_string(cg.join("pids.max")).unwrap_or_default();
    assert!(
        pids.trim() == "max" || pids.trim().parse::<u64>().is_ok_and(|n| n >= 1024),
        "pids.max {pids:?}"
    );

    c.ctr_ok(&["task", "pause", "k1"]);
    wait_status(&c, "k1", "PAUSED");
    c.ctr_ok(&["task", "resume", "k1"]);
    wait_status(&c, "k1", "RUNNING");
    assert_eq!(ev.lines("/tasks/paused", 1).len(), 1);
    assert_eq!(ev.lines("/tasks/resumed", 1).len(), 1);

    let m = c.ctr_ok(&["task", "metrics", "k1"]);
    let value = |name: &str| -> u64 {
        m.lines()
            .find_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                (w.len() == 2 && w[0] == name).then(|| w[1].parse().unwrap_or(0))
            })
            .unwrap_or_else(|| panic!("no {name} in metrics:\n{m}"))
    };
    assert!(value("memory.usage") > 0, "{m}");
    assert!(value("pids.current") >= 2, "{m}");
    assert!(value("cpu.usage_usec") > 0, "{m}");

    let ps = c.ctr_ok(&["task", "ps", "k1"]);
    assert!(ps.lines().count() >= 3, "{ps}");

    // SIGTERM by default; the trap makes it exit 42.
    c.ctr_ok(&["task", "kill", "k1"]);
    wait_status(&c, "k1", "STOPPED");
    let o = c.ctr_out(&["task", "kill", "k1"]);
    assert!(!o.status.success(), "kill of a stopped task succeeded");
    let warn = remove(&c, "k1");
    assert!(warn.contains("exit code 42"), "{warn}");
    c.assert_clean();
    assert!(!cg.exists(), "{} left behind", cg.display());
}

#[test]
fn killed_vmm_is_an_exit() {
    let c = setup("vmmkill");
    let o = run(&c, &["-d"], "v1", &["sleep", "1000"]);
    assert!(o.status.success(), "{}", err(&o));
    let pid = wait_status(&c, "v1", "RUNNING");
    let vmms = husk_vmms(&c);
    assert!(vmms.contains(&(pid as i32)), "{pid} not in {vmms:?}");
    // The VMM itself (the jailed one when there are two) dies.
    let victim = *vmms.iter().max().unwrap();
    // SAFETY: killing the husk-vmm this test's shim started.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    wait_status(&c, "v1", "STOPPED");
    let warn = remove(&c, "v1");
    assert!(warn.contains("exit code 137"), "{warn}");
    assert!(
        c.log().contains("husk-vmm exited"),
        "the shim's log does not say the VM went away:\n{}",
        c.log_tail(40)
    );
    c.assert_clean();
}

#[test]
fn two_containers_share_one_vm() {
    let c = setup("pod");
    let sandbox = [
        "-d",
        "--annotation",
        "io.kubernetes.cri.container-type=sandbox",
        "--annotation",
        "io.kubernetes.cri.sandbox-id=pod1",
    ];
    let member = [
        "-d",
        "--annotation",
        "io.kubernetes.cri.container-type=container",
        "--annotation",
        "io.kubernetes.cri.sandbox-id=pod1",
    ];
    // CRI gives the sandbox a network namespace file (CNI's): husk-vmm, the
    // task pid, runs in it; with nothing to carry (only lo) the sandbox
    // container gets a netns of its own in the guest.
    let netns = Netns::empty("pod");
    let with = format!("network:{}", netns.path());
    let mut opts = sandbox.to_vec();
    opts.extend(["--with-ns", with.as_str()]);
    let o = run(&c, &opts, "pod1", &["sleep", "1000"]);
    assert!(o.status.success(), "{}", err(&o));
    let pid1 = wait_status(&c, "pod1", "RUNNING");
    assert_eq!(
        ns_inode(&format!("/proc/{pid1}/ns/net")),
        ns_inode(&netns.path()),
        "the task pid is not in the pod's netns"
    );
    let vmms = husk_vmms(&c);
    assert!(vmms.contains(&(pid1 as i32)), "{pid1} not in {vmms:?}");
    // ... and its containers the sandbox's namespaces, named by the task pid.
    let ipc = format!("ipc:/proc/{pid1}/ns/ipc");
    let mut opts = member.to_vec();
    opts.extend(["--with-ns", ipc.as_str()]);
    let o = run(&c, &opts, "app1", &["sleep", "1000"]);
    assert!(o.status.success(), "{}", err(&o));
    let pid2 = wait_status(&c, "app1", "RUNNING");
    assert_eq!(pid1, pid2, "both tasks must run in the one VM");
    assert_eq!(husk_vmms(&c), vmms, "no second VM");
    assert_eq!(sandbox_dirs(&c), 1);
    // The member really runs in there, in its own rootfs.
    let o = c.ctr_out(&[
        "task",
        "exec",
        "--exec-id",
        "x1",
        "app1",
        "cat",
        "/etc/passwd",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(out(&o).starts_with("root:"), "{}", out(&o));
    let ns = |id: &str, exec: &str, which: &str| {
        let link = format!("/proc/1/ns/{which}");
        let o = c.ctr_out(&["task", "exec", "--exec-id", exec, id, "readlink", &link]);
        assert_eq!(o.status.code(), Some(0), "{}", err(&o));
        out(&o).trim().to_string()
    };
    assert_eq!(
        ns("pod1", "n1", "ipc"),
        ns("app1", "n2", "ipc"),
        "IPC shared"
    );
    assert_ne!(
        ns("pod1", "n3", "uts"),
        ns("app1", "n4", "uts"),
        "UTS not shared"
    );
    let shims = c.shims();
    assert_eq!(shims.len(), 1, "one shim per sandbox: {shims:?}");

    // The member goes; the sandbox and its VM stay.
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", "app1"]);
    wait_status(&c, "app1", "STOPPED");
    remove(&c, "app1");
    assert_eq!(task(&c, "pod1").map(|t| t.1), Some("RUNNING".into()));
    assert_eq!(husk_vmms(&c), vmms);

    // The last container takes the VM with it.
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", "pod1"]);
    wait_status(&c, "pod1", "STOPPED");
    remove(&c, "pod1");
    c.assert_clean();
}

#[test]
fn log_uri_file() {
    let c = setup("logfile");
    let log = c.base.join("task.log");
    let uri = format!("file://{}", log.display());
    let o = run(
        &c,
        &["--rm", "--log-uri", &uri],
        "log1",
        &["sh", "-c", "echo to-out; echo to-err >&2"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("to-out\n") && text.contains("to-err\n"),
        "{text:?}"
    );
    c.assert_clean();
}

#[test]
fn oom_kill_is_reported() {
    let c = setup("oom");
    let ev = Events::start(&c);
    // 32 MiB for the container (the VM gets that + 64 MiB): tail buffers
    // /dev/zero's endless line until the guest's OOM killer takes it.
    let o = run(
        &c,
        &["--rm", "--memory-limit", "33554432"],
        "oom1",
        &["tail", "/dev/zero"],
    );
    assert_eq!(
        o.status.code(),
        Some(137),
        "{}\n{}",
        err(&o),
        c.log_tail(40)
    );
    let oom = ev.lines("/tasks/oom", 1);
    assert_eq!(
        oom.len(),
        1,
        "{}",
        std::fs::read_to_string(&ev.file).unwrap()
    );
    assert_eq!(json_of(&oom[0])["container_id"], "oom1");
    c.assert_clean();
}

/// The spec's hooks run through the shim too, on the host, with the task's
/// state on stdin (a spec from `ctr oci spec` given with `--config`).
#[test]
fn oci_hooks_run_in_the_shim() {
    let c = setup("hooks");
    let d = c.base.join("hooks");
    std::fs::create_dir_all(&d).unwrap();
    let o = c.ctr_out(&["oci", "spec"]);
    assert!(o.status.success(), "{}", err(&o));
    let mut spec: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    spec["process"]["args"] = serde_json::json!(["sleep", "1000"]);
    spec["process"]["terminal"] = false.into();
    spec["linux"]["cgroupsPath"] = format!("/husk-hooks-{}/hk1", std::process::id()).into();
    let rec = |kind: &str| {
        serde_json::json!({
            "path": "/bin/sh",
            "args": ["sh", "-c", format!("cat > {d}/{kind}.json && echo {kind} >> {d}/order", d = d.display())],
        })
    };
    spec["hooks"] = serde_json::json!({
        "createRuntime": [rec("createRuntime")],
        "startContainer": [rec("startContainer")],
        "poststart": [rec("poststart")],
        "poststop": [rec("poststop")],
    });
    // With --config, ctr takes no image: the spec names its own rootfs.
    let rootfs = c.base.join("hooks-rootfs");
    husk_tests::bundle::busybox_rootfs(&rootfs);
    spec["root"] = serde_json::json!({"path": rootfs, "readonly": false});
    let file = c.base.join("hooks-spec.json");
    std::fs::write(&file, serde_json::to_vec(&spec).unwrap()).unwrap();
    let o = c.ctr_out(&[
        "run",
        "--runtime",
        RUNTIME,
        "-d",
        "--config",
        file.to_str().unwrap(),
        "hk1",
    ]);
    assert!(o.status.success(), "{}\n{}", err(&o), c.log_tail(40));
    let pid = wait_status(&c, "hk1", "RUNNING");
    let order = || std::fs::read_to_string(d.join("order")).unwrap_or_default();
    assert_eq!(order(), "createRuntime\nstartContainer\npoststart\n");
    let state = |k: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(d.join(format!("{k}.json"))).unwrap()).unwrap()
    };
    let s = state("createRuntime");
    assert_eq!(
        (s["id"].clone(), s["status"].clone()),
        ("hk1".into(), "creating".into())
    );
    assert_eq!(s["pid"], pid, "{s}");
    assert!(s["bundle"].as_str().unwrap().ends_with("/hk1"), "{s}");
    assert_eq!(state("startContainer")["status"], "created");
    assert_eq!(state("poststart")["status"], "running");
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", "hk1"]);
    wait_status(&c, "hk1", "STOPPED");
    remove(&c, "hk1");
    assert_eq!(
        order(),
        "createRuntime\nstartContainer\npoststart\npoststop\n"
    );
    assert_eq!(state("poststop")["status"], "stopped");
    c.assert_clean();
}

// ---- networking (issue 11) ----------------------------------------------------------------
//
// The task pid containerd is given is husk-vmm's, and husk-vmm lives in the sandbox's network
// namespace: the one the spec names (CRI's CNI netns; `--with-ns network:PATH` here), whose
// links the VM carries, or a fresh one of its own (`ctr run`), where an engine may set a
// network up between Create and Start (`ctr run --cni`, a prestart hook) for the sandbox
// container to get at Start. Addresses are from 10.199.20.0/22, apart from tests/network.rs's.

/// `ip ARGS` on the test host; panics on failure.
fn ip(args: &str) -> String {
    let o = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("ip (iproute2) must be installed");
    assert!(o.status.success(), "ip {args}: {}", err(&o));
    out(&o)
}

/// `ip ARGS` in the network namespace of `pid`.
fn ip_in(pid: u32, args: &str) -> String {
    let o = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "ip"])
        .args(args.split_whitespace())
        .output()
        .expect("nsenter (util-linux) must be installed");
    assert!(
        o.status.success(),
        "nsenter -t {pid} -n ip {args}: {}",
        err(&o)
    );
    out(&o)
}

/// The namespace a namespace file (`/proc/PID/ns/net`, a bind mount under /run/netns) is.
fn ns_inode(path: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .ino()
}

/// Link names of `ip -o link` output.
fn link_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        .filter(|n| !n.is_empty())
        .collect()
}

/// Waits up to 60 s for `cond`.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A named netns, as CNI or an engine hands one over: empty, or with a veth whose container
/// side `eth0` is inside (address, MAC, MTU, default route) and whose peer stays in the test
/// host's netns with the gateway address. Removed on drop.
struct Netns {
    name: String,
    host_veth: Option<String>,
}

impl Netns {
    fn empty(tag: &str) -> Netns {
        let name = format!("husk-ctrd-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        ip(&format!("netns add {name}"));
        Netns {
            name,
            host_veth: None,
        }
    }

    /// `eth0` with `addr/24`, `mac` and `mtu`, default route via `gw`; host side `hv<tag>`
    /// with `gw/24`.
    fn with_veth(tag: &str, addr: &str, gw: &str, mac: &str, mtu: u32) -> Netns {
        let mut ns = Netns::empty(tag);
        let host_veth = format!("hv{tag}");
        let _ = Command::new("ip")
            .args(["link", "del", &host_veth])
            .status();
        ip(&format!(
            "link add {host_veth} mtu {mtu} type veth peer name eth0 mtu {mtu} netns {}",
            ns.name
        ));
        ns.host_veth = Some(host_veth.clone());
        ip(&format!("addr add {gw}/24 dev {host_veth}"));
        ip(&format!("link set {host_veth} up"));
        ns.ip(&format!("link set eth0 address {mac}"));
        ns.ip(&format!("addr add {addr}/24 dev eth0"));
        ns.ip("link set eth0 up");
        ns.ip("link set lo up");
        ns.ip(&format!("route add default via {gw}"));
        ns
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    fn ip(&self, args: &str) -> String {
        ip(&format!("-n {} {args}", self.name))
    }

    /// Our tap (the VM's NIC) is in the netns.
    fn has_tap(&self) -> bool {
        link_names(&self.ip("-o link")).iter().any(|l| l == "hk0")
    }

    /// The veth has our ingress qdisc (the redirect to the tap).
    fn redirected(&self) -> bool {
        let o = Command::new("ip")
            .args([
                "netns", "exec", &self.name, "tc", "qdisc", "show", "dev", "eth0",
            ])
            .output()
            .expect("tc");
        assert!(o.status.success(), "tc qdisc show: {}", err(&o));
        out(&o).contains("ingress")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        if let Some(v) = &self.host_veth {
            let _ = Command::new("ip").args(["link", "del", v]).status();
        }
    }
}

/// A host link removed on drop.
struct HostLink(String);

impl Drop for HostLink {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

/// `ctr run --with-ns network:PATH` (what CRI does with CNI's netns): the task pid (husk-vmm)
/// lives in that netns, the VM carries its veth (our tap and redirect are there while it
/// runs), the guest's eth0 has the veth's MAC, address and MTU and the default route, the
/// container reaches the host end, and what we made in the netns is gone with the task.
#[test]
fn netns_of_the_spec_is_carried_into_the_vm() {
    let c = setup("netjoin");
    let ns = Netns::with_veth(
        "c21",
        "10.199.21.2",
        "10.199.21.1",
        "02:42:0a:c7:15:02",
        1400,
    );
    let with = format!("network:{}", ns.path());
    let script = "ip -o link show eth0; ip -o -4 addr show eth0; ip route; \
                  ping -c 1 -W 20 10.199.21.1 >/dev/null && echo PING-OK";
    let o = run(
        &c,
        &["--rm", "--with-ns", &with],
        "nj1",
        &["sh", "-c", script],
    );
    let text = out(&o);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{text}\n{}\n{}",
        err(&o),
        c.log_tail(40)
    );
    assert!(text.contains("link/ether 02:42:0a:c7:15:02"), "{text}");
    assert!(text.contains("mtu 1400"), "{text}");
    assert!(text.contains("inet 10.199.21.2/24"), "{text}");
    assert!(text.contains("default via 10.199.21.1 dev eth0"), "{text}");
    assert!(text.contains("PING-OK"), "{text}");
    c.assert_clean();
    eventually("our tap outlived the VM", || !ns.has_tap());
    assert!(!ns.redirected(), "the redirect outlived the VM");

    // While it runs: the task pid is in the netns, our tap and redirect are there.
    let o = run(&c, &["-d", "--with-ns", &with], "nj2", &["sleep", "1000"]);
    assert!(o.status.success(), "{}", err(&o));
    let pid = wait_status(&c, "nj2", "RUNNING");
    assert_eq!(
        ns_inode(&format!("/proc/{pid}/ns/net")),
        ns_inode(&ns.path()),
        "the task pid {pid} is not in {}",
        ns.path()
    );
    assert!(ns.has_tap(), "{}", ns.ip("-o link"));
    assert!(ns.redirected());
    // A second VM cannot carry the same netns; the first one's network is left alone.
    let o = run(&c, &["--rm", "--with-ns", &with], "nj3", &["true"]);
    assert!(!o.status.success(), "a second VM carried the same netns");
    assert!(
        err(&o).contains("is already carried into another husk VM"),
        "{}",
        err(&o)
    );
    assert!(
        ns.has_tap() && ns.redirected(),
        "the first VM's network was undone"
    );
    let o = c.ctr_out(&[
        "task",
        "exec",
        "--exec-id",
        "p1",
        "nj2",
        "ping",
        "-c",
        "1",
        "-W",
        "20",
        "10.199.21.1",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}{}", out(&o), err(&o));
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", "nj2"]);
    wait_status(&c, "nj2", "STOPPED");
    remove(&c, "nj2");
    c.assert_clean();
    eventually("our tap outlived the VM", || !ns.has_tap());
    assert!(!ns.redirected(), "the redirect outlived the delete");
}

/// A CRI-like pod whose sandbox names a netns with a veth: the pod's other container names
/// the sandbox's netns by the task pid (`/proc/<pid>/ns/net`, as CRI does) and shares the
/// carried network (the guest's own netns) with the sandbox container.
#[test]
fn pod_containers_share_the_carried_network() {
    let c = setup("podnet");
    let ns = Netns::with_veth(
        "c22",
        "10.199.22.2",
        "10.199.22.1",
        "02:42:0a:c7:16:02",
        1500,
    );
    let with = format!("network:{}", ns.path());
    let o = run(
        &c,
        &[
            "-d",
            "--annotation",
            "io.kubernetes.cri.container-type=sandbox",
            "--annotation",
            "io.kubernetes.cri.sandbox-id=pod2",
            "--with-ns",
            &with,
        ],
        "pod2",
        &["sleep", "1000"],
    );
    assert!(o.status.success(), "{}\n{}", err(&o), c.log_tail(40));
    let pid = wait_status(&c, "pod2", "RUNNING");
    assert_eq!(
        ns_inode(&format!("/proc/{pid}/ns/net")),
        ns_inode(&ns.path())
    );
    let sandbox_net = format!("network:/proc/{pid}/ns/net");
    let o = run(
        &c,
        &[
            "-d",
            "--annotation",
            "io.kubernetes.cri.container-type=container",
            "--annotation",
            "io.kubernetes.cri.sandbox-id=pod2",
            "--with-ns",
            &sandbox_net,
        ],
        "app2",
        &["sleep", "1000"],
    );
    assert!(o.status.success(), "{}\n{}", err(&o), c.log_tail(40));
    assert_eq!(wait_status(&c, "app2", "RUNNING"), pid, "one VM");
    let exec = |id: &str, exec_id: &str, args: &[&str]| {
        let mut v = vec!["task", "exec", "--exec-id", exec_id, id];
        v.extend_from_slice(args);
        let o = c.ctr_out(&v);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}{}", out(&o), err(&o));
        out(&o)
    };
    for (id, e) in [("pod2", "a1"), ("app2", "a2")] {
        let addr = exec(id, e, &["ip", "-o", "-4", "addr", "show", "eth0"]);
        assert!(addr.contains("inet 10.199.22.2/24"), "{id}: {addr}");
    }
    assert_eq!(
        exec("pod2", "n1", &["readlink", "/proc/1/ns/net"]),
        exec("app2", "n2", &["readlink", "/proc/1/ns/net"]),
        "the pod's containers are not in one netns"
    );
    exec(
        "app2",
        "p1",
        &["ping", "-c", "1", "-W", "20", "10.199.22.1"],
    );
    for id in ["app2", "pod2"] {
        c.ctr_ok(&["task", "kill", "-s", "SIGKILL", id]);
        wait_status(&c, id, "STOPPED");
        remove(&c, id);
    }
    c.assert_clean();
    eventually("our tap outlived the pod", || !ns.has_tap());
    assert!(!ns.redirected(), "the redirect outlived the pod");
}

/// `ctr run` (a new netns): the task pid is not in the host's netns but in a fresh one holding
/// only `lo` and the VM's spare tap `hk0` (where `ctr run --cni` would put its network), and
/// the container sees only `lo`.
#[test]
fn new_netns_task_pid_is_not_the_hosts() {
    let c = setup("netnew");
    let o = run(&c, &["-d"], "nn1", &["sleep", "1000"]);
    assert!(o.status.success(), "{}", err(&o));
    let pid = wait_status(&c, "nn1", "RUNNING");
    assert_ne!(
        ns_inode(&format!("/proc/{pid}/ns/net")),
        ns_inode("/proc/self/ns/net"),
        "the task pid {pid} is in the host's netns: CNI would configure the host"
    );
    let mut links = link_names(&ip_in(pid, "-o link"));
    links.sort();
    assert_eq!(links, ["hk0", "lo"]);
    let o = c.ctr_out(&[
        "task",
        "exec",
        "--exec-id",
        "l1",
        "nn1",
        "sh",
        "-c",
        "ip -o link",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(link_names(&out(&o)), ["lo"], "{}", out(&o));
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", "nn1"]);
    wait_status(&c, "nn1", "STOPPED");
    remove(&c, "nn1");
    c.assert_clean();
}

/// A network set up in the task pid's netns between Create and Start, as `ctr run --cni`
/// (CNI on /proc/<task pid>/ns/net) and Docker's prestart hook do. ctr 1.6 cannot stop
/// between the two (`ctr task start` creates and starts at once), so a createRuntime hook
/// (run by the shim on the host during Create, with the task pid in its state) makes it: at
/// Start the shim joins it to the VM's spare NIC and the container gets it, with the MAC and
/// address, and reaches the host end.
#[test]
fn network_set_up_after_create_reaches_the_container() {
    let c = setup("netlate");
    let d = c.base.join("late");
    std::fs::create_dir_all(&d).unwrap();
    let host_veth = HostLink(format!("hc{}", std::process::id() % 100000));
    let o = c.ctr_out(&["oci", "spec"]);
    assert!(o.status.success(), "{}", err(&o));
    let mut spec: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    spec["process"]["args"] = serde_json::json!(["sleep", "1000"]);
    spec["process"]["terminal"] = false.into();
    spec["linux"]["cgroupsPath"] = format!("/husk-late-{}/ln1", std::process::id()).into();
    let setup_net = format!(
        r#"set -e
pid=$(sed -n 's/.*"pid": *\([0-9][0-9]*\).*/\1/p')
echo "$pid" > {d}/pid
ip link add {v} type veth peer name eth0 netns "$pid"
ip addr add 10.199.23.1/24 dev {v}
ip link set {v} up
nsenter -t "$pid" -n sh -c 'ip link set eth0 address 02:42:0a:c7:17:02 && ip addr add 10.199.23.2/24 dev eth0 && ip link set eth0 up && ip route add default via 10.199.23.1'
"#,
        d = d.display(),
        v = host_veth.0
    );
    spec["hooks"] = serde_json::json!({
        "createRuntime": [{
            "path": "/bin/sh",
            "args": ["sh", "-c", setup_net],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        }],
    });
    let rootfs = c.base.join("late-rootfs");
    husk_tests::bundle::busybox_rootfs(&rootfs);
    spec["root"] = serde_json::json!({"path": rootfs, "readonly": false});
    let file = c.base.join("late-spec.json");
    std::fs::write(&file, serde_json::to_vec(&spec).unwrap()).unwrap();
    let o = c.ctr_out(&[
        "run",
        "--runtime",
        RUNTIME,
        "-d",
        "--config",
        file.to_str().unwrap(),
        "ln1",
    ]);
    assert!(o.status.success(), "{}\n{}", err(&o), c.log_tail(40));
    let pid = wait_status(&c, "ln1", "RUNNING");
    let hooked = std::fs::read_to_string(d.join("pid")).unwrap_or_default();
    assert_eq!(hooked.trim(), pid.to_string(), "the hook saw another pid");
    let exec = |exec_id: &str, args: &[&str]| {
        let mut v = vec!["task", "exec", "--exec-id", exec_id, "ln1"];
        v.extend_from_slice(args);
        let o = c.ctr_out(&v);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}{}", out(&o), err(&o));
        out(&o)
    };
    let addr = exec("e1", &["ip", "-o", "-4", "addr", "show", "eth0"]);
    assert!(addr.contains("inet 10.199.23.2/24"), "{addr}");
    let link = exec("e2", &["ip", "-o", "link", "show", "eth0"]);
    assert!(link.contains("link/ether 02:42:0a:c7:17:02"), "{link}");
    let links = exec("e3", &["ip", "-o", "link"]);
    assert_eq!(link_names(&links), ["lo", "eth0"], "{links}");
    exec("e4", &["ping", "-c", "1", "-W", "20", "10.199.23.1"]);
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", "ln1"]);
    wait_status(&c, "ln1", "STOPPED");
    remove(&c, "ln1");
    c.assert_clean();
}

/// What the spec's network asks that husk cannot do is refused at Create with the runtime's
/// message, leaving no shim, VM, sandbox directory or mount: a netns path that does not
/// exist, and host networking.
#[test]
fn network_errors_at_create_leave_nothing() {
    let c = setup("neterr");
    let missing = format!("/run/netns/husk-ctrd-no-such-{}", std::process::id());
    let with = format!("network:{missing}");
    let o = run(&c, &["--rm", "--with-ns", &with], "ne1", &["true"]);
    assert!(!o.status.success(), "ran in a netns that does not exist");
    assert!(
        err(&o).contains(&format!(
            "linux.namespaces[network].path {missing}: No such file or directory"
        )),
        "{}",
        err(&o)
    );
    c.assert_clean();
    let o = run(&c, &["--rm", "--net-host"], "ne2", &["true"]);
    assert!(!o.status.success(), "ran with host networking");
    assert!(
        err(&o).contains("host networking) is not supported"),
        "{}",
        err(&o)
    );
    c.assert_clean();
}
