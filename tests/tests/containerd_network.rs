//! containerd-shim-husk-v2's networking under Debian's real containerd, driven with `ctr`
//! (apart from `containerd.rs`, so each runs in its own test-host boot: fewer guests per
//! boot, and a lost test host costs a shorter rerun).
//!
//! The task pid containerd is given is husk-vmm's, and husk-vmm lives in the sandbox's network
//! namespace: the one the spec names (CRI's CNI netns; `--with-ns network:PATH` here), whose
//! links the VM carries, or a fresh one of its own (`ctr run`), where an engine may set a
//! network up between Create and Start (`ctr run --cni`, a prestart hook) for the sandbox
//! container to get at Start. Addresses are from 10.199.20.0/22, apart from tests/network.rs's.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use husk_tests::containerd::Containerd;
use husk_tests::netns::{link_names, ns_inode, Netns};

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
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

/// Waits up to 60 s for `cond`.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(100));
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
    let c = Containerd::with_busybox("netjoin");
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
    let o = c.run_image(&["--rm", "--with-ns", &with], "nj1", &["sh", "-c", script]);
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
    let o = c.run_image(&["-d", "--with-ns", &with], "nj2", &["sleep", "1000"]);
    assert!(o.status.success(), "{}", err(&o));
    let pid = c.wait_status("nj2", "RUNNING");
    assert_eq!(
        ns_inode(&format!("/proc/{pid}/ns/net")),
        ns_inode(&ns.path()),
        "the task pid {pid} is not in {}",
        ns.path()
    );
    assert!(ns.has_tap(), "{}", ns.ip("-o link"));
    assert!(ns.redirected());
    // A second VM cannot carry the same netns; the first one's network is left alone.
    let o = c.run_image(&["--rm", "--with-ns", &with], "nj3", &["true"]);
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
    c.kill_remove("nj2");
    c.assert_clean();
    eventually("our tap outlived the VM", || !ns.has_tap());
    assert!(!ns.redirected(), "the redirect outlived the delete");
}

/// A CRI-like pod whose sandbox names a netns with a veth: the pod's other container names
/// the sandbox's netns by the task pid (`/proc/<pid>/ns/net`, as CRI does) and shares the
/// carried network (the guest's own netns) with the sandbox container.
#[test]
fn pod_containers_share_the_carried_network() {
    let c = Containerd::with_busybox("podnet");
    let ns = Netns::with_veth(
        "c22",
        "10.199.22.2",
        "10.199.22.1",
        "02:42:0a:c7:16:02",
        1500,
    );
    let with = format!("network:{}", ns.path());
    let o = c.run_image(
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
    let pid = c.wait_status("pod2", "RUNNING");
    assert_eq!(
        ns_inode(&format!("/proc/{pid}/ns/net")),
        ns_inode(&ns.path())
    );
    let sandbox_net = format!("network:/proc/{pid}/ns/net");
    let o = c.run_image(
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
    assert_eq!(c.wait_status("app2", "RUNNING"), pid, "one VM");
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
        c.kill_remove(id);
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
    let c = Containerd::with_busybox("netnew");
    let o = c.run_image(&["-d"], "nn1", &["sleep", "1000"]);
    assert!(o.status.success(), "{}", err(&o));
    let pid = c.wait_status("nn1", "RUNNING");
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
    c.kill_remove("nn1");
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
    let c = Containerd::with_busybox("netlate");
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
    let o = c.run_spec(spec, "ln1");
    assert!(o.status.success(), "{}\n{}", err(&o), c.log_tail(40));
    let pid = c.wait_status("ln1", "RUNNING");
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
    c.kill_remove("ln1");
    c.assert_clean();
}

/// What the spec's network asks that husk cannot do is refused at Create with the runtime's
/// message, leaving no shim, VM, sandbox directory or mount: a netns path that does not
/// exist, and host networking.
#[test]
fn network_errors_at_create_leave_nothing() {
    let c = Containerd::with_busybox("neterr");
    let missing = format!("/run/netns/husk-ctrd-no-such-{}", std::process::id());
    let with = format!("network:{missing}");
    let o = c.run_image(&["--rm", "--with-ns", &with], "ne1", &["true"]);
    assert!(!o.status.success(), "ran in a netns that does not exist");
    assert!(
        err(&o).contains(&format!(
            "linux.namespaces[network].path {missing}: No such file or directory"
        )),
        "{}",
        err(&o)
    );
    c.assert_clean();
    let o = c.run_image(&["--rm", "--net-host"], "ne2", &["true"]);
    assert!(!o.status.success(), "ran with host networking");
    assert!(
        err(&o).contains("host networking) is not supported"),
        "{}",
        err(&o)
    );
    c.assert_clean();
}
