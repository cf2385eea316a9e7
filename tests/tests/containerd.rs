//! containerd-shim-husk-v2 under Debian's real containerd, driven with `ctr`:
//! each test starts its own containerd (own config, root, state, socket; the
//! shim found on PATH), imports a busybox image built offline, and runs real
//! microVMs through the shim.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use husk_tests::containerd::{Containerd, IMAGE, RUNTIME};
use husk_tests::netns::{ns_inode, Netns};
use husk_tests::{output_within, COMMAND_TIMEOUT};

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
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
    let c = Containerd::with_busybox("echo");
    let o = c.run_image(&["--rm"], "echo1", &["echo", "hi"]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", err(&o), c.log_tail(60));
    assert_eq!(out(&o), "hi\n");
    assert_eq!(c.ctr_ok(&["container", "ls", "-q"]), "");
    c.assert_clean();
}

#[test]
fn exit_status_stdio_and_events() {
    let c = Containerd::with_busybox("exit");
    let ev = Events::start(&c);
    let before = std::time::SystemTime::now();
    let o = c.run_image(
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
    let c = Containerd::with_busybox("tty");
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
    let o = c.run_image(&["-d"], "tty2", &["sleep", "1000"]);
    assert!(o.status.success(), "{}", err(&o));
    c.wait_status("tty2", "RUNNING");
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
    c.kill_remove("tty2");
    c.assert_clean();
}

#[test]
fn exec_in_running_task() {
    let c = Containerd::with_busybox("exec");
    let ev = Events::start(&c);
    let o = c.run_image(&["-d"], "ex1", &["sleep", "1000"]);
    assert!(o.status.success(), "{}", err(&o));
    c.wait_status("ex1", "RUNNING");
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
    assert_eq!(c.task("ex1").unwrap().1, "RUNNING");
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", "ex1"]);
    c.wait_status("ex1", "STOPPED");
    let warn = c.remove("ex1");
    assert!(warn.contains("exit code 137"), "killed by SIGKILL: {warn}");
    c.assert_clean();
}

#[test]
fn kill_ls_pause_resume_metrics() {
    let c = Containerd::with_busybox("kill");
    let ev = Events::start(&c);
    let o = c.run_image(
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
    let pid = c.wait_status("k1", "RUNNING");
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
    c.wait_status("k1", "PAUSED");
    c.ctr_ok(&["task", "resume", "k1"]);
    c.wait_status("k1", "RUNNING");
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
    c.wait_status("k1", "STOPPED");
    let o = c.ctr_out(&["task", "kill", "k1"]);
    assert!(!o.status.success(), "kill of a stopped task succeeded");
    let warn = c.remove("k1");
    assert!(warn.contains("exit code 42"), "{warn}");
    c.assert_clean();
    assert!(!cg.exists(), "{} left behind", cg.display());
}

#[test]
fn killed_vmm_is_an_exit() {
    let c = Containerd::with_busybox("vmmkill");
    let o = c.run_image(&["-d"], "v1", &["sleep", "1000"]);
    assert!(o.status.success(), "{}", err(&o));
    let pid = c.wait_status("v1", "RUNNING");
    let vmms = c.husk_vmms();
    assert!(vmms.contains(&(pid as i32)), "{pid} not in {vmms:?}");
    // The VMM itself (the jailed one when there are two) dies.
    let victim = *vmms.iter().max().unwrap();
    // SAFETY: killing the husk-vmm this test's shim started.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    c.wait_status("v1", "STOPPED");
    let warn = c.remove("v1");
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
    let c = Containerd::with_busybox("pod");
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
    let o = c.run_image(&opts, "pod1", &["sleep", "1000"]);
    assert!(o.status.success(), "{}", err(&o));
    let pid1 = c.wait_status("pod1", "RUNNING");
    assert_eq!(
        ns_inode(&format!("/proc/{pid1}/ns/net")),
        ns_inode(&netns.path()),
        "the task pid is not in the pod's netns"
    );
    let vmms = c.husk_vmms();
    assert!(vmms.contains(&(pid1 as i32)), "{pid1} not in {vmms:?}");
    // ... and its containers the sandbox's namespaces, named by the task pid.
    let ipc = format!("ipc:/proc/{pid1}/ns/ipc");
    let mut opts = member.to_vec();
    opts.extend(["--with-ns", ipc.as_str()]);
    let o = c.run_image(&opts, "app1", &["sleep", "1000"]);
    assert!(o.status.success(), "{}", err(&o));
    let pid2 = c.wait_status("app1", "RUNNING");
    assert_eq!(pid1, pid2, "both tasks must run in the one VM");
    assert_eq!(c.husk_vmms(), vmms, "no second VM");
    assert_eq!(c.sandbox_dirs(), 1);
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
    c.kill_remove("app1");
    assert_eq!(c.task("pod1").map(|t| t.1), Some("RUNNING".into()));
    assert_eq!(c.husk_vmms(), vmms);

    // The last container takes the VM with it.
    c.kill_remove("pod1");
    c.assert_clean();
}

#[test]
fn log_uri_file() {
    let c = Containerd::with_busybox("logfile");
    let log = c.base.join("task.log");
    let uri = format!("file://{}", log.display());
    let o = c.run_image(
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
    let c = Containerd::with_busybox("oom");
    let ev = Events::start(&c);
    // 32 MiB for the container (the VM gets that + 64 MiB): tail buffers
    // /dev/zero's endless line until the guest's OOM killer takes it.
    let o = c.run_image(
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
    let c = Containerd::with_busybox("hooks");
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
    let o = c.run_spec(spec, "hk1");
    assert!(o.status.success(), "{}\n{}", err(&o), c.log_tail(40));
    let pid = c.wait_status("hk1", "RUNNING");
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
    c.kill_remove("hk1");
    assert_eq!(
        order(),
        "createRuntime\nstartContainer\npoststart\npoststop\n"
    );
    assert_eq!(state("poststop")["status"], "stopped");
    c.assert_clean();
}
