//! Against the real kernel: each test runs on a thread of its own in a fresh network namespace
//! (unshare(CLONE_NEWNET) applies to the calling thread only), with veth links standing in for
//! the guest's virtio-net NICs, and reads the result back with iproute2's `ip -j`. Needs root
//! and `ip`; run otherwise, a test fails saying so. The host's network is never touched.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;

use serde_json::Value;

use super::*;

const MAC_A: [u8; 6] = [0x02, 0x68, 0x6b, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0x68, 0x6b, 0, 0, 0x0b];
const GW_MAC: [u8; 6] = [0x02, 0x68, 0x6b, 0, 0, 0xfe];

fn in_netns<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "needs root: this test makes a network namespace and veth links (run cargo test as root)"
        );
    }
    let t = std::thread::spawn(move || {
        // SAFETY: plain syscall; only this thread moves to the new namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            panic!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
        }
        f()
    });
    t.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// `ip ARGS` in the calling thread's namespace (children inherit it); must succeed.
fn ip(args: &str) -> String {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .unwrap_or_else(|e| panic!("needs iproute2: cannot run ip: {e}"));
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip_json(args: &str) -> Vec<Value> {
    serde_json::from_str(&ip(&format!("-j {args}"))).expect("ip -j prints JSON")
}

/// A veth (its peer stays down, unconfigured) with the MAC a virtio NIC would have.
fn veth(name: &str, mac: [u8; 6]) {
    ip(&format!(
        "link add {name} address {} type veth peer name p{name}",
        mac_string(&mac)
    ));
}

/// The link named `name`, with its addresses.
fn link(name: &str) -> Value {
    ip_json(&format!("addr show dev {name}")).remove(0)
}

fn is_up(link: &Value) -> bool {
    link["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f == "UP"))
}

/// `local/prefixlen` of every address of the link.
fn addrs(link: &Value) -> Vec<String> {
    link["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
        .collect()
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn net(addr: IpAddr, prefix_len: u8) -> IpNet {
    IpNet { addr, prefix_len }
}

fn route(dst: Option<IpNet>, gateway: Option<IpAddr>, dev: &str) -> Route {
    Route {
        dst,
        gateway,
        dev: dev.into(),
        src: None,
        scope: 0,
        mtu: None,
    }
}

/// Two links as podman with two networks gives them, routes listed in an order that would not
/// work as given (gateways before the routes that reach them), an IPv6 address and route.
fn two_links() -> NetworkConfig {
    let fd00 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2));
    NetworkConfig {
        links: vec![
            Link {
                name: "eth0".into(),
                mac: MAC_A,
                mtu: 1400,
                addrs: vec![net(v4(10, 88, 0, 2), 16), net(fd00, 64)],
                nic_mac: None,
            },
            Link {
                name: "eth1".into(),
                mac: MAC_B,
                mtu: 9000,
                addrs: vec![net(v4(192, 168, 5, 2), 24)],
                nic_mac: None,
            },
        ],
        routes: vec![
            route(None, Some(v4(10, 88, 0, 1)), "eth0"),
            route(
                Some(net(v4(10, 66, 0, 0), 16)),
                Some(v4(10, 77, 0, 1)),
                "eth1",
            ),
            Route {
                mtu: Some(1300),
                src: Some(v4(192, 168, 5, 2)),
                ..route(
                    Some(net(v4(10, 99, 0, 0), 16)),
                    Some(v4(192, 168, 5, 1)),
                    "eth1",
                )
            },
            Route {
                scope: 253,
                ..route(Some(net(v4(10, 77, 0, 1), 32)), None, "eth1")
            },
            route(
                Some(net(
                    IpAddr::V6(Ipv6Addr::new(0xfd01, 0, 0, 0, 0, 0, 0, 0)),
                    64,
                )),
                Some(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1))),
                "eth0",
            ),
        ],
        neighbors: vec![Neighbor {
            ip: v4(10, 88, 0, 1),
            mac: GW_MAC,
            dev: "eth0".into(),
        }],
    }
}

fn find_route<'a>(routes: &'a [Value], dst: &str) -> &'a Value {
    routes
        .iter()
        .find(|r| r["dst"] == dst)
        .unwrap_or_else(|| panic!("no route to {dst} in {routes:?}"))
}

#[test]
fn configures_links_addresses_routes_and_neighbours() {
    in_netns(|| {
        veth("va", MAC_A);
        veth("vb", MAC_B);
        let network = Network::new(Duration::from_millis(500), Some(false));
        network.configure(&two_links()).expect("configure");
        assert_two_links();
        let again = network.configure(&two_links()).unwrap_err();
        assert!(again.contains("once per VM"), "{again}");
    })
}

/// `two_links()` as configured, IPv6 skipped, in the calling thread's network namespace.
fn assert_two_links() {
    {
        assert!(is_up(&link("lo")), "lo is up");
        let eth0 = link("eth0");
        assert_eq!(eth0["address"], mac_string(&MAC_A));
        assert_eq!(eth0["mtu"], 1400);
        assert!(is_up(&eth0));
        let a = addrs(&eth0);
        assert!(a.contains(&"10.88.0.2/16".to_string()), "{a:?}");
        // The IPv6 address is skipped as on a guest kernel without IPv6.
        assert!(!a.iter().any(|a| a.starts_with("fd00")), "{a:?}");
        let brd = eth0["addr_info"][0]["broadcast"].clone();
        assert_eq!(brd, "10.88.255.255");
        let eth1 = link("eth1");
        assert_eq!(eth1["address"], mac_string(&MAC_B));
        assert_eq!(eth1["mtu"], 9000);
        assert!(addrs(&eth1).contains(&"192.168.5.2/24".to_string()));

        let routes = ip_json("-4 route show table main");
        let default = find_route(&routes, "default");
        assert_eq!(default["gateway"], "10.88.0.1");
        assert_eq!(default["dev"], "eth0");
        assert_eq!(find_route(&routes, "10.66.0.0/16")["gateway"], "10.77.0.1");
        let r99 = find_route(&routes, "10.99.0.0/16");
        assert_eq!(r99["gateway"], "192.168.5.1");
        assert_eq!(r99["prefsrc"], "192.168.5.2");
        assert_eq!(r99["metrics"][0]["mtu"], 1300, "{r99}");
        let r77 = find_route(&routes, "10.77.0.1");
        assert_eq!(r77["scope"], "link");
        assert_eq!(r77["dev"], "eth1");
        let v6 = ip_json("-6 route show table main");
        assert!(!v6.iter().any(|r| r["dst"] == "fd01::/64"), "{v6:?}");

        let neigh = ip_json("neigh show dev eth0");
        let gw = neigh
            .iter()
            .find(|n| n["dst"] == "10.88.0.1")
            .unwrap_or_else(|| panic!("no neighbour 10.88.0.1 in {neigh:?}"));
        assert_eq!(gw["lladdr"], mac_string(&GW_MAC));
        assert!(gw["state"].to_string().contains("PERMANENT"), "{gw}");
    }
}

#[test]
fn ipv6_is_configured_when_the_kernel_has_it() {
    in_netns(|| {
        assert!(
            kernel_has_ipv6(),
            "needs a kernel with IPv6 (this test checks the IPv6 path)"
        );
        veth("va", MAC_A);
        veth("vb", MAC_B);
        Network::new(Duration::from_millis(500), None)
            .configure(&two_links())
            .expect("configure");
        let a = addrs(&link("eth0"));
        assert!(a.contains(&"fd00::2/64".to_string()), "{a:?}");
        let v6 = ip_json("-6 route show table main");
        assert_eq!(find_route(&v6, "fd01::/64")["gateway"], "fd00::1");
    })
}

#[test]
fn a_link_holding_the_name_is_moved_aside() {
    in_netns(|| {
        // The kernel named the NICs the other way round.
        veth("eth0", MAC_B);
        veth("eth1", MAC_A);
        let cfg = NetworkConfig {
            routes: vec![],
            neighbors: vec![],
            ..two_links()
        };
        Network::new(Duration::from_millis(500), Some(false))
            .configure(&cfg)
            .expect("configure");
        assert_eq!(link("eth0")["address"], mac_string(&MAC_A));
        assert_eq!(link("eth1")["address"], mac_string(&MAC_B));
    })
}

#[test]
fn a_missing_nic_fails_after_the_wait_naming_its_mac() {
    in_netns(|| {
        veth("vb", MAC_B);
        let wait = Duration::from_millis(300);
        let network = Network::new(wait, Some(false));
        let start = Instant::now();
        let e = network.configure(&two_links()).unwrap_err();
        assert!(
            start.elapsed() >= wait,
            "gave up after {:?}",
            start.elapsed()
        );
        assert!(e.contains(&mac_string(&MAC_A)), "{e}");
        assert!(e.contains("no network device"), "{e}");
        // Something was changed (lo): no second attempt.
        let again = network.configure(&two_links()).unwrap_err();
        assert!(again.contains("once per VM"), "{again}");
    })
}

#[test]
fn an_invalid_config_changes_nothing() {
    in_netns(|| {
        veth("va", MAC_A);
        let network = Network::new(Duration::from_millis(100), Some(false));
        let mut cfg = NetworkConfig {
            links: two_links().links[..1].to_vec(),
            routes: vec![route(None, Some(v4(10, 88, 0, 1)), "eth9")],
            neighbors: vec![],
        };
        let e = network.configure(&cfg).unwrap_err();
        assert!(e.contains("refused") && e.contains("eth9"), "{e}");
        cfg.routes.clear();
        cfg.links[0].name = "lo".into();
        let e = network.configure(&cfg).unwrap_err();
        assert!(e.contains("loopback"), "{e}");

        assert!(!is_up(&link("lo")), "lo untouched");
        let va = link("va");
        assert_eq!(va["mtu"], 1500);
        assert!(addrs(&va).is_empty());
        // Refusals do not use up the one configuration.
        cfg.links[0].name = "eth0".into();
        network.configure(&cfg).expect("configure after refusals");
        assert_eq!(link("eth0")["address"], mac_string(&MAC_A));
    })
}

#[test]
fn loopback_comes_up_in_a_new_namespace() {
    in_netns(|| {
        assert!(!is_up(&link("lo")));
        loopback_up().expect("lo up");
        let lo = link("lo");
        assert!(is_up(&lo));
        assert!(addrs(&lo).contains(&"127.0.0.1/8".to_string()), "{lo}");
    })
}

#[test]
fn routes_without_gateway_first_default_last() {
    let cfg = two_links();
    let order: Vec<String> = route_order(&cfg.routes)
        .into_iter()
        .map(route_text)
        .collect();
    assert_eq!(
        order,
        [
            "10.77.0.1/32 dev eth1",
            "10.66.0.0/16 via 10.77.0.1 dev eth1",
            "10.99.0.0/16 via 192.168.5.1 dev eth1",
            "fd01::/64 via fd00::1 dev eth0",
            "default via 10.88.0.1 dev eth0",
        ]
    );
}

#[test]
fn a_kernel_refusal_names_the_step_and_the_reason() {
    in_netns(|| {
        veth("va", MAC_A);
        let cfg = NetworkConfig {
            links: two_links().links[..1].to_vec(),
            // A source address the guest does not have.
            routes: vec![Route {
                src: Some(v4(10, 1, 2, 3)),
                ..route(Some(net(v4(10, 99, 0, 0), 16)), None, "eth0")
            }],
            neighbors: vec![],
        };
        let e = Network::new(Duration::from_millis(100), Some(false))
            .configure(&cfg)
            .unwrap_err();
        assert!(e.contains("add route 10.99.0.0/16 dev eth0"), "{e}");
        // The kernel's extended-ack text.
        assert!(e.contains("prefsrc"), "{e}");
    })
}

// ------------------------------------------------- a container's network ----

/// The spare NICs the host gives the VM (tests use two, to move more than one link).
fn spare(n: u8) -> [u8; 6] {
    husk_protocol::network::spare_nic_mac(n)
}

/// `two_links()` on spare NICs: the NICs carry the spare MACs, the links the engine's.
fn two_links_on_spares() -> NetworkConfig {
    let mut cfg = two_links();
    for (n, l) in cfg.links.iter_mut().enumerate() {
        l.nic_mac = Some(spare(n as u8));
    }
    cfg
}

/// A fresh network namespace, standing for a container's: made by a thread that ends at once;
/// the returned nsfs file keeps it.
fn new_netns() -> std::fs::File {
    std::thread::spawn(|| {
        // SAFETY: plain syscall; only this thread moves to the new namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            panic!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
        }
        std::fs::File::open("/proc/thread-self/ns/net").expect("open /proc/thread-self/ns/net")
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// `f` on a thread in the namespace `ns` (for `ip` there).
fn in_ns<R: Send>(ns: &std::fs::File, f: impl FnOnce() -> R + Send) -> R {
    use std::os::fd::AsRawFd;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: plain syscall; only this thread enters the namespace.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                panic!("setns: {}", std::io::Error::last_os_error());
            }
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// The MACs of the links in the calling thread's namespace.
fn macs() -> Vec<String> {
    ip_json("link show")
        .iter()
        .filter_map(|l| l["address"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn a_container_network_moves_the_spare_nics_in() {
    use std::os::fd::AsFd;
    in_netns(|| {
        // The guest's initial namespace, where the kernel named the spare NICs eth0 and eth1:
        // the names must not be in the way in either namespace.
        veth("eth0", spare(0));
        veth("eth1", spare(1));
        let container = new_netns();
        let settings = Network::new(Duration::from_millis(500), Some(false));
        let network = ContainerNetwork::default();
        network
            .configure_with(&settings, container.as_fd(), &two_links_on_spares())
            .expect("configure");

        // Gone from the guest's namespace, nothing else changed there.
        let here = macs();
        for gone in [spare(0), spare(1), MAC_A, MAC_B] {
            assert!(!here.contains(&mac_string(&gone)), "{here:?}");
        }
        assert!(!is_up(&link("lo")), "the guest's lo untouched");
        in_ns(&container, || {
            assert_two_links();
            let there = macs();
            assert!(!there.contains(&mac_string(&spare(0))), "{there:?}");
        });

        let again = network
            .configure_with(&settings, container.as_fd(), &two_links_on_spares())
            .unwrap_err();
        assert!(again.contains("once per container"), "{again}");
        // Another container has its own flag (and here finds no spare NIC left).
        let other = new_netns();
        let e = ContainerNetwork::default()
            .configure_with(
                &Network::new(Duration::from_millis(100), Some(false)),
                other.as_fd(),
                &two_links_on_spares(),
            )
            .unwrap_err();
        assert!(e.contains("no network device"), "{e}");
    })
}

#[test]
fn a_missing_spare_nic_fails_after_the_wait_and_changes_nothing() {
    use std::os::fd::AsFd;
    in_netns(|| {
        // Only the second link's spare is there.
        veth("vb", spare(1));
        let container = new_netns();
        let wait = Duration::from_millis(300);
        let settings = Network::new(wait, Some(false));
        let network = ContainerNetwork::default();
        let start = Instant::now();
        let e = network
            .configure_with(&settings, container.as_fd(), &two_links_on_spares())
            .unwrap_err();
        assert!(
            start.elapsed() >= wait,
            "gave up after {:?}",
            start.elapsed()
        );
        assert!(e.contains(&mac_string(&spare(0))), "{e}");
        assert!(e.contains("link eth0") && e.contains("spare NIC"), "{e}");
        assert!(e.contains("no network device"), "{e}");
        assert_eq!(link("vb")["address"], mac_string(&spare(1)));
        in_ns(&container, || {
            let there = ip_json("link show");
            assert_eq!(there.len(), 1, "only lo: {there:?}");
        });
        // Nothing was changed: the one configuration is still to be had.
        veth("va", spare(0));
        network
            .configure_with(&settings, container.as_fd(), &two_links_on_spares())
            .expect("configure once the NIC is there");
        in_ns(&container, assert_two_links);
    })
}

#[test]
fn an_invalid_container_network_changes_nothing() {
    use std::os::fd::AsFd;
    in_netns(|| {
        veth("va", spare(0));
        let container = new_netns();
        let settings = Network::new(Duration::from_millis(100), Some(false));
        let network = ContainerNetwork::default();
        let mut cfg = NetworkConfig {
            links: two_links_on_spares().links[..1].to_vec(),
            routes: vec![],
            neighbors: vec![],
        };
        let configure = |cfg: &NetworkConfig| {
            network
                .configure_with(&settings, container.as_fd(), cfg)
                .unwrap_err()
        };
        cfg.links[0].nic_mac = None;
        let e = configure(&cfg);
        assert!(e.contains("refused") && e.contains("nic_mac"), "{e}");
        cfg.links[0].nic_mac = Some(spare(0));
        cfg.routes = vec![route(None, Some(v4(10, 88, 0, 1)), "eth9")];
        let e = configure(&cfg);
        assert!(e.contains("refused") && e.contains("eth9"), "{e}");
        cfg.routes.clear();
        cfg.links[0].name = "lo".into();
        let e = configure(&cfg);
        assert!(e.contains("loopback"), "{e}");
        // The guest's own namespace is not a container's.
        cfg.links[0].name = "eth0".into();
        let mine = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
        let e = network
            .configure_with(&settings, mine.as_fd(), &cfg)
            .unwrap_err();
        assert!(e.contains("no network namespace of its own"), "{e}");

        let va = link("va");
        assert_eq!(va["address"], mac_string(&spare(0)));
        assert_eq!(va["mtu"], 1500);
        assert!(!is_up(&link("lo")));
        in_ns(&container, || {
            assert_eq!(ip_json("link show").len(), 1, "only lo");
        });
        // Refusals do not use up the one configuration.
        network
            .configure_with(&settings, container.as_fd(), &cfg)
            .expect("configure after refusals");
        in_ns(&container, || {
            let eth0 = link("eth0");
            assert_eq!(eth0["address"], mac_string(&MAC_A));
            assert!(is_up(&eth0));
        });
    })
}
