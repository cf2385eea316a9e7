//! Guest networking (issue 11) with real guests: the container's network namespace carried
//! into the microVM through a tap and tc redirects, a virtio-net device, and the agent's link
//! setup. First through the `husk` CLI with a netns and veth made here (what podman and CNI
//! hand over), then with Debian's podman and netavark: a bridge network, `-p` published
//! ports, one container reaching another by IP and by name (aardvark-dns), a network's MTU,
//! `--network none`, and the modes husk refuses.
//!
//! All traffic stays inside the test host: its own bridges, veths and a dummy link standing in
//! for the host's address. Addresses are from 10.199.0.0/16 and 192.0.2.0/24 (TEST-NET-1).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use husk_tests::bundle::TestBundle;
use husk_tests::netns::ip;
use husk_tests::podman::{Podman, IMAGE};
use husk_tests::Husk;

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `ip ARGS` whose failure is expected (removing what an earlier run may have left).
fn quiet(args: &[&str]) {
    let _ = Command::new("ip")
        .args(args)
        .stderr(std::process::Stdio::null())
        .status();
}

/// A named netns with a veth whose peer stays in the test host's netns: what an engine
/// hands a runtime. Removed on drop.
struct Netns {
    name: String,
    host_veth: String,
}

impl Netns {
    /// Container side `eth0` with `addr/24`, MAC `mac` and `mtu`, default route via `gw`;
    /// host side `host_veth` with `gw/24`.
    fn new(tag: &str, addr: &str, gw: &str, mac: &str, mtu: u32) -> Netns {
        let name = format!("husk-{tag}-{}", std::process::id());
        let host_veth = format!("hv{tag}");
        quiet(&["netns", "del", &name]);
        quiet(&["link", "del", &host_veth]);
        ip(&format!("netns add {name}"));
        ip(&format!(
            "link add {host_veth} mtu {mtu} type veth peer name eth0 mtu {mtu} netns {name}"
        ));
        ip(&format!("addr add {gw}/24 dev {host_veth}"));
        ip(&format!("link set {host_veth} up"));
        let n = |cmd: &str| ip(&format!("-n {name} {cmd}"));
        n(&format!("link set eth0 address {mac}"));
        n(&format!("addr add {addr}/24 dev eth0"));
        n("link set eth0 up");
        n("link set lo up");
        n(&format!("route add default via {gw}"));
        Netns { name, host_veth }
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    fn ip(&self, args: &str) -> String {
        ip(&format!("-n {} {args}", self.name))
    }

    fn tc(&self, args: &str) -> String {
        let o = Command::new("ip")
            .args(["netns", "exec", &self.name, "tc"])
            .args(args.split_whitespace())
            .output()
            .expect("tc");
        assert!(o.status.success(), "tc {args}: {}", err(&o));
        out(&o)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_veth])
            .status();
    }
}

fn bundle_in(ns: Option<&str>, tag: &str, args: &[&str]) -> TestBundle {
    let mut b = TestBundle::busybox(tag, args);
    // busybox ping needs a raw socket (runc's default set has no CAP_NET_RAW).
    for set in ["bounding", "effective", "permitted"] {
        if let Some(caps) = b.config["process"]["capabilities"][set].as_array_mut() {
            caps.push("CAP_NET_RAW".into());
        }
    }
    let list = b.config["linux"]["namespaces"].as_array_mut().unwrap();
    list.retain(|n| n["type"] != "network");
    match ns {
        Some(path) => list.push(serde_json::json!({"type": "network", "path": path})),
        None => list.push(serde_json::json!({"type": "network"})),
    }
    b.write();
    b
}

/// The engine's netns is carried: the guest's eth0 has the veth's MAC, address, MTU and
/// default route, the container reaches the host end over it, and what husk made in the netns
/// (tap, ingress qdiscs) is gone after the VM ends and after a delete that follows a SIGKILL.
#[test]
fn cli_carries_the_netns_into_the_guest() {
    let h = Husk::new("net");
    let ns = Netns::new("n1", "10.199.1.2", "10.199.1.1", "02:42:0a:c7:01:02", 1400);
    let script = "ip -o link show eth0; ip -o -4 addr show eth0; ip route; \
                  ping -c 1 -W 20 10.199.1.1 >/dev/null && echo PING-OK";
    let b = bundle_in(Some(&ns.path()), "net1", &["sh", "-c", script]);
    let o = h.run(&["run", "--bundle", b.dir.to_str().unwrap(), "net1"]);
    let text = out(&o);
    assert_eq!(o.status.code(), Some(0), "{text}\n{}", err(&o));
    assert!(text.contains("link/ether 02:42:0a:c7:01:02"), "{text}");
    assert!(text.contains("mtu 1400"), "{text}");
    assert!(text.contains("inet 10.199.1.2/24"), "{text}");
    assert!(text.contains("default via 10.199.1.1 dev eth0"), "{text}");
    assert!(text.contains("PING-OK"), "{text}");
    // The VM ended: no tap, no redirect left on the veth.
    assert!(!ns.ip("-o link").contains("hk0"), "{}", ns.ip("-o link"));
    assert!(!ns.tc("qdisc show dev eth0").contains("ingress"));

    // Killed hard, the monitor cannot clean up: delete does.
    let b = bundle_in(Some(&ns.path()), "net2", &["sleep", "1000"]);
    let o = h.run(&["create", "--bundle", b.dir.to_str().unwrap(), "net2"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(ns.ip("-o link").contains("hk0"), "{}", ns.ip("-o link"));
    assert!(ns.tc("qdisc show dev eth0").contains("ingress"));
    let st: serde_json::Value = serde_json::from_slice(&h.run(&["state", "net2"]).stdout).unwrap();
    let monitor = st["pid"].as_i64().unwrap() as i32;
    // SAFETY: kill(2) on the monitor we just created.
    unsafe { libc::kill(monitor, libc::SIGKILL) };
    let o = h.run(&["delete", "--force", "net2"]);
    assert!(o.status.success(), "{}", err(&o));
    let deadline = Instant::now() + Duration::from_secs(60);
    // The tap goes with the last fd, when the killed VMM's process is reaped.
    while ns.ip("-o link").contains("hk0") {
        assert!(Instant::now() < deadline, "hk0 outlived the VM");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!ns.tc("qdisc show dev eth0").contains("ingress"));
}

/// A netns with nothing to carry (only lo) and a new one (no path) give the container a
/// network namespace of its own in the guest, with a working loopback.
#[test]
fn cli_empty_and_new_netns_have_only_loopback() {
    let h = Husk::new("netlo");
    let name = format!("husk-lo-{}", std::process::id());
    quiet(&["netns", "del", &name]);
    ip(&format!("netns add {name}"));
    let path = format!("/run/netns/{name}");
    let script = "ip -o link | cut -d: -f2; ping -c 1 -W 10 127.0.0.1 >/dev/null && echo LO-OK";
    for (id, ns) in [("lo1", Some(path.as_str())), ("lo2", None)] {
        let b = bundle_in(ns, id, &["sh", "-c", script]);
        let o = h.run(&["run", "--bundle", b.dir.to_str().unwrap(), id]);
        let text = out(&o);
        assert_eq!(o.status.code(), Some(0), "{id}: {text}\n{}", err(&o));
        let links: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && *l != "LO-OK")
            .collect();
        assert_eq!(links, ["lo"], "{id}: {text}");
        assert!(text.contains("LO-OK"), "{id}: {text}");
    }
    let _ = Command::new("ip").args(["netns", "del", &name]).status();
}

/// A network the engine sets up after `create` in the netns of the pid husk reported (Docker's
/// libnetwork hook, podman with --userns): at `start` the container's own network namespace
/// gets it (through the VM's spare NIC), with the engine's MAC, address and route, and reaches
/// the host end; an exec sees it too.
#[test]
fn cli_picks_up_a_network_set_up_after_create() {
    let h = Husk::new("netlate");
    let b = bundle_in(None, "late1", &["sleep", "1000"]);
    let o = h.run(&["create", "--bundle", b.dir.to_str().unwrap(), "late1"]);
    assert!(o.status.success(), "{}", err(&o));
    let st: serde_json::Value = serde_json::from_slice(&h.run(&["state", "late1"]).stdout).unwrap();
    let pid = st["pid"].as_i64().unwrap().to_string();
    // What an engine does with /proc/<pid>/ns/net between create and start.
    let host_veth = format!("hl{}", std::process::id() % 100000);
    quiet(&["link", "del", &host_veth]);
    ip(&format!(
        "link add {host_veth} type veth peer name eth0 netns {pid}"
    ));
    let _veth = LinkGuard(host_veth.clone());
    ip(&format!("addr add 10.199.2.1/24 dev {host_veth}"));
    ip(&format!("link set {host_veth} up"));
    let inside = |args: &str| {
        let o = Command::new("nsenter")
            .args(["-t", &pid, "-n", "ip"])
            .args(args.split_whitespace())
            .output()
            .unwrap();
        assert!(o.status.success(), "ip {args}: {}", err(&o));
    };
    inside("link set eth0 address 02:42:0a:c7:02:02");
    inside("addr add 10.199.2.2/24 dev eth0");
    inside("link set eth0 up");
    inside("route add default via 10.199.2.1");
    let o = h.run(&["start", "late1"]);
    assert!(o.status.success(), "start: {}", err(&o));
    let e = h.run(&[
        "exec",
        "late1",
        "sh",
        "-c",
        "ip -o -4 addr show eth0; ip -o link | cut -d: -f2",
    ]);
    let text = out(&e);
    assert!(e.status.success(), "exec: {}", err(&e));
    assert!(text.contains("inet 10.199.2.2/24"), "{text}");
    let links: Vec<&str> = text.lines().skip(1).map(str::trim).collect();
    assert_eq!(links, ["lo", "eth0"], "{text}");
    let o = h.run(&["exec", "late1", "ping", "-c", "1", "-W", "20", "10.199.2.1"]);
    assert!(o.status.success(), "ping: {}{}", out(&o), err(&o));
    let o = h.run(&["exec", "late1", "ip", "-o", "link", "show", "eth0"]);
    assert!(
        out(&o).contains("link/ether 02:42:0a:c7:02:02"),
        "{}",
        out(&o)
    );
    let o = h.run(&["delete", "--force", "late1"]);
    assert!(o.status.success(), "{}", err(&o));
}

/// Deletes a host link on drop (a test that fails must not leave it for the next).
struct LinkGuard(String);

impl Drop for LinkGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

// ---- podman ------------------------------------------------------------------------------

/// `podman network create` with a subnet of its own (the test host's bridges are ours alone,
/// but each test keeps to its own network); removed on drop.
struct Network<'a> {
    p: &'a Podman,
    name: String,
}

impl<'a> Network<'a> {
    fn new(p: &'a Podman, name: &str, subnet: &str, opts: &[&str]) -> Network<'a> {
        let _ = p.run(&["network", "rm", "-f", name]);
        let mut args = vec!["network", "create", "--subnet", subnet];
        args.extend_from_slice(opts);
        args.push(name);
        p.ok(&args);
        Network {
            p,
            name: name.to_string(),
        }
    }

    /// `{{.NetworkSettings.Networks.<name>.FIELD}}` of container `c`.
    fn inspect(&self, c: &str, field: &str) -> String {
        let fmt = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").{field}}}}}",
            self.name
        );
        self.p
            .ok(&["inspect", "--format", &fmt, c])
            .trim()
            .to_string()
    }
}

impl Drop for Network<'_> {
    fn drop(&mut self) {
        let _ = self.p.run(&["network", "rm", "-f", &self.name]);
    }
}

/// The containers husk has state for under podman's runtime root (another test's may be
/// there: each test compares with what it found).
/// What is left of husk's state for containers not in `before`, and what `husk delete --force`
/// says about each (for the failure message).
fn leftover_report(p: &Podman, before: &[String]) -> String {
    let mut r = String::new();
    for id in husk_state(p).iter().filter(|i| !before.contains(i)) {
        let dir = p.husk_root.join(id);
        let files: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let o = Command::new(husk_tests::artifact("HUSK_BIN_DIR").join("husk"))
            .arg("--root")
            .arg(&p.husk_root)
            .args(["delete", "--force", id])
            .output()
            .unwrap();
        let ps = p.run(&[
            "ps",
            "-a",
            "--no-trunc",
            "--format",
            "{{.ID}} {{.Names}} {{.Status}}",
        ]);
        r += &format!("\npodman ps -a: {}", out(&ps).trim());
        r += &format!(
            "\n{id}: files {files:?}; husk delete --force: {} {}",
            o.status,
            err(&o).trim()
        );
    }
    r
}

fn husk_state(p: &Podman) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(&p.husk_root)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `GET /` through busybox nc from inside a container (busybox-static's wget crashes without
/// the NSS setup a full image has; nc resolves names through /etc/hosts and DNS).
fn nc_get(target: &str) -> String {
    format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 30 {target} 80")
}

/// GET / from `addr` with a deadline; the body.
fn http_get(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(20))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: husk\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// Retries `http_get` until the server in the (slowly booting) VM answers.
fn http_get_eventually(addr: SocketAddr) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match http_get(addr) {
            Ok(b) if b.contains("200 OK") => return b,
            r if Instant::now() > deadline => panic!("GET http://{addr}/: {r:?}"),
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// busybox httpd serving `word` as /index.html on port 80.
const HTTPD: &str =
    "mkdir -p /www && echo \"$WORD\" > /www/index.html && exec httpd -f -p 80 -h /www";

/// podman on a netavark bridge network: the guest's eth0 is what `podman inspect` reports
/// (MAC, address, gateway), the network's MTU reaches the guest, a published port answers on
/// 127.0.0.1 and on the host's own address, another container reaches the server by IP and by
/// name (aardvark-dns), and `podman rm` (netavark's teardown) succeeds with nothing of husk's
/// left.
#[test]
fn podman_bridge_network() {
    let p = Podman::shared();
    let net = Network::new(p, "husknet1", "10.199.10.0/24", &["--opt", "mtu=1400"]);
    let web = "husk-web";
    let _ = p.run(&["rm", "-f", "-t", "0", web]);
    p.ok(&[
        "run",
        "-d",
        "--name",
        web,
        "--network",
        &net.name,
        "-p",
        "18080:80",
        "-e",
        "WORD=hello-from-husk",
        IMAGE,
        "sh",
        "-c",
        HTTPD,
    ]);
    let mac = net.inspect(web, "MacAddress");
    let addr = net.inspect(web, "IPAddress");
    let gw = net.inspect(web, "Gateway");
    assert_eq!(gw, "10.199.10.1");
    let link = p.ok(&["exec", web, "ip", "-o", "link", "show", "eth0"]);
    assert!(link.contains(&format!("link/ether {mac}")), "{mac}: {link}");
    assert!(link.contains("mtu 1400"), "{link}");
    let addrs = p.ok(&["exec", web, "ip", "-o", "-4", "addr", "show", "eth0"]);
    assert!(
        addrs.contains(&format!("inet {addr}/24")),
        "{addr}: {addrs}"
    );
    let routes = p.ok(&["exec", web, "ip", "route"]);
    assert!(
        routes.contains(&format!("default via {gw} dev eth0")),
        "{routes}"
    );
    let ping = p.run(&[
        "exec",
        "--privileged",
        web,
        "ping",
        "-c",
        "1",
        "-W",
        "20",
        &gw,
    ]);
    assert!(
        ping.status.success(),
        "ping {gw}: {}{}",
        out(&ping),
        err(&ping)
    );

    // -p 18080:80, from the host: loopback and the host's own address (a dummy link here).
    let body = http_get_eventually("127.0.0.1:18080".parse().unwrap());
    assert!(body.contains("hello-from-husk"), "{body}");
    let dummy = format!("hd{}", std::process::id() % 100000);
    ip(&format!("link add {dummy} type dummy"));
    let dummy_link = LinkGuard(dummy.clone());
    ip(&format!("addr add 192.0.2.7/24 dev {dummy}"));
    ip(&format!("link set {dummy} up"));
    let body = http_get("192.0.2.7:18080".parse().unwrap());
    drop(dummy_link);
    assert!(
        body.as_ref().is_ok_and(|b| b.contains("hello-from-husk")),
        "{body:?}"
    );

    // Another container (another VM) on the same bridge: by IP, and by name through aardvark-dns.
    for target in [addr.as_str(), web] {
        let o = p.run(&[
            "run",
            "--rm",
            "--network",
            &net.name,
            IMAGE,
            "sh",
            "-c",
            &nc_get(target),
        ]);
        assert!(
            o.status.success() && out(&o).contains("hello-from-husk"),
            "GET from {target}: {:?} {}{}",
            o.status,
            out(&o),
            err(&o)
        );
    }

    let sandbox = p
        .ok(&[
            "inspect",
            "--format",
            "{{.NetworkSettings.SandboxKey}}",
            web,
        ])
        .trim()
        .to_string();
    let id = p
        .ok(&["inspect", "--format", "{{.Id}}", web])
        .trim()
        .to_string();
    p.ok(&["rm", "-f", "-t", "0", web]);
    assert!(
        !std::path::Path::new(&sandbox).exists(),
        "netavark's teardown left the netns {sandbox}"
    );
    assert!(
        !p.husk_root.join(&id).exists(),
        "husk state left{}",
        leftover_report(p, &[])
    );
}

/// `--network none` leaves only lo; host networking and another container's netns are
/// refused with an error that says why, and leave nothing behind.
#[test]
fn podman_network_modes() {
    let p = Podman::shared();
    let links = p.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "ip -o link | cut -d: -f2",
    ]);
    let links: Vec<&str> = links.lines().map(str::trim).collect();
    assert_eq!(links, ["lo"]);

    let o = p.run(&["run", "--rm", "--network", "host", IMAGE, "true"]);
    assert!(!o.status.success(), "--network host ran");
    assert!(
        err(&o).contains("host networking) is not supported"),
        "{}",
        err(&o)
    );

    let net = Network::new(p, "husknet2", "10.199.11.0/24", &[]);
    let first = "husk-first";
    let _ = p.run(&["rm", "-f", "-t", "0", first]);
    p.ok(&[
        "run",
        "-d",
        "--name",
        first,
        "--network",
        &net.name,
        IMAGE,
        "sleep",
        "1000",
    ]);
    let o = p.run(&[
        "run",
        "--rm",
        "--network",
        &format!("container:{first}"),
        IMAGE,
        "true",
    ]);
    assert!(!o.status.success(), "--network container: ran");
    let e = err(&o);
    assert!(
        e.contains("not supported") && e.contains("linux.namespaces[network].path"),
        "{e}"
    );
    let id = p
        .ok(&["inspect", "--format", "{{.Id}}", first])
        .trim()
        .to_string();
    p.ok(&["rm", "-f", "-t", "0", first]);
    assert!(
        !p.husk_root.join(&id).exists(),
        "husk state left{}",
        leftover_report(p, &[])
    );
}
