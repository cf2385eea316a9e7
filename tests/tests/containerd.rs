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
    // CRI gives the sandbox a host network namespace file: not joinable
    // from a VM, so the container gets its own in the guest.
    let mut opts = sandbox.to_vec();
    opts.extend(["--with-ns", "network:/var/run/netns/cni-husk-test"]);
    let o = run(&c, &opts, "pod1", &["sleep", "1000"]);
    assert!(o.status.success(), "{}", err(&o));
    let pid1 = wait_status(&c, "pod1", "RUNNING");
    assert!(
        c.log().contains("cannot be joined from the VM"),
        "{}",
        c.log_tail(30)
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
