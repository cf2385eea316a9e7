//! husk-net against the real kernel: scratch network namespaces made with `ip netns`, a veth pair
//! between a "container" netns and an "outer" one standing in for the host bridge, and frames
//! pushed through the tap fd and the outer veth end. Needs root, /dev/net/tun, ip and tc.
//! Each test has its own namespaces (unique names), removed on drop even when the test fails;
//! nothing is done in the test process's own netns.

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use husk_net::{
    attach, connect, disconnect, prepare, scan, IpNet, Link, Neighbor, NetError, Route, Scan,
    MAX_LINKS, VNET_HDR_LEN,
};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

const CTR_MAC: [u8; 6] = [0x02, 0x68, 0x6b, 0, 0, 0x01];
const PEER_MAC: [u8; 6] = [0x02, 0x68, 0x6b, 0, 0, 0x02];

/// A scratch netns `ip netns add`ed under a unique name, deleted on drop.
struct Ns {
    name: String,
    path: PathBuf,
}

impl Ns {
    fn new(tag: &str) -> Ns {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("hknet-{}-{n}-{tag}", std::process::id());
        run("ip", &["netns", "add", &name]);
        Ns {
            path: PathBuf::from("/run/netns").join(&name),
            name,
        }
    }

    /// `ip -n NAME args...`, which must succeed.
    fn ip(&self, args: &str) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend(args.split_whitespace());
        run("ip", &all)
    }

    fn tc(&self, args: &str) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend(args.split_whitespace());
        run("tc", &all)
    }

    fn link_names(&self) -> Vec<String> {
        self.ip("-o link show")
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The container netns as podman's bridge leaves it (eth0: IPv4 + IPv6, default routes via the
/// gateway, a route with an MTU, a permanent neighbour, MTU 1400), its veth peer in `outer`.
struct Fixture {
    ctr: Ns,
    outer: Ns,
}

fn fixture(tag: &str) -> Fixture {
    let ctr = Ns::new(&format!("{tag}-c"));
    let outer = Ns::new(&format!("{tag}-o"));
    outer.ip(&format!(
        "link add peer0 type veth peer name eth0 netns {}",
        ctr.name
    ));
    outer.ip(&format!(
        "link set peer0 address {} mtu 1400 up",
        mac_str(PEER_MAC)
    ));
    ctr.ip(&format!(
        "link set eth0 address {} mtu 1400 up",
        mac_str(CTR_MAC)
    ));
    ctr.ip("addr add 10.200.0.2/24 dev eth0");
    ctr.ip("addr add fd00:200::2/64 dev eth0 nodad");
    ctr.ip("route add default via 10.200.0.1");
    ctr.ip("route add 192.168.77.0/24 via 10.200.0.1 mtu 1300");
    ctr.ip("-6 route add default via fd00:200::1");
    ctr.ip(&format!(
        "neigh add 10.200.0.1 lladdr {} dev eth0 nud permanent",
        mac_str(PEER_MAC)
    ));
    Fixture { ctr, outer }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn expected_scan() -> Scan {
    Scan {
        links: vec![Link {
            name: "eth0".into(),
            mac: CTR_MAC,
            mtu: 1400,
            addrs: vec![
                IpNet {
                    addr: ip("10.200.0.2"),
                    prefix_len: 24,
                },
                IpNet {
                    addr: ip("fd00:200::2"),
                    prefix_len: 64,
                },
            ],
            nic_mac: None,
        }],
        routes: vec![
            Route {
                dst: None,
                gateway: Some(ip("10.200.0.1")),
                dev: "eth0".into(),
                src: None,
                scope: 0,
                mtu: None,
            },
            Route {
                dst: Some(IpNet {
                    addr: ip("192.168.77.0"),
                    prefix_len: 24,
                }),
                gateway: Some(ip("10.200.0.1")),
                dev: "eth0".into(),
                src: None,
                scope: 0,
                mtu: Some(1300),
            },
            Route {
                dst: None,
                gateway: Some(ip("fd00:200::1")),
                dev: "eth0".into(),
                src: None,
                scope: 0,
                mtu: None,
            },
        ],
        neighbors: vec![Neighbor {
            ip: ip("10.200.0.1"),
            mac: PEER_MAC,
            dev: "eth0".into(),
        }],
    }
}

/// Runs `f` on a thread inside `ns` (the test's own thread never moves).
fn in_ns<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = File::open(ns).expect("open netns");
    std::thread::spawn(move || {
        // SAFETY: setns on a valid fd, this thread only.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", io::Error::last_os_error());
        f()
    })
    .join()
    .expect("netns thread")
}

/// An AF_PACKET socket bound to `ifname` in `ns`, 100 ms receive timeout.
fn packet_socket(ns: &Path, ifname: &str) -> OwnedFd {
    let ifname = std::ffi::CString::new(ifname).expect("name");
    in_ns(ns, move || {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: socket/bind/setsockopt with correctly sized arguments; checked.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto));
            assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
            let fd = OwnedFd::from_raw_fd(fd);
            let index = libc::if_nametoindex(ifname.as_ptr());
            assert!(index > 0, "if_nametoindex");
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = index as i32;
            let rc = libc::bind(
                fd.as_raw_fd(),
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(rc, 0, "bind: {}", io::Error::last_os_error());
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 100_000,
            };
            let rc = libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
            assert_eq!(rc, 0);
            fd
        }
    })
}

/// An Ethernet frame with a local-experimental ethertype and a payload unique to this run,
/// padded to the 60-byte minimum.
fn frame(dst: [u8; 6], src: [u8; 6], what: &str) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&0x88b5u16.to_be_bytes());
    f.extend_from_slice(format!("husk-net {what} {}", std::process::id()).as_bytes());
    f.resize(f.len().max(60), 0);
    f
}

/// Reads datagrams from `fd` (blocking with timeout, or non-blocking polled) for up to 3 s and
/// returns the first one `want` accepts.
fn read_until(fd: &OwnedFd, want: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 100) };
        // SAFETY: reading into our buffer.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        let n = if n < 0 {
            // A tap fd is not a socket: fall back to read(2).
            // SAFETY: as above.
            unsafe {
                libc::read(
                    fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                )
            }
        } else {
            n
        };
        if n > 0 && want(&buf[..n as usize]) {
            return Some(buf[..n as usize].to_vec());
        }
    }
    None
}

fn write_all(fd: &OwnedFd, bytes: &[u8]) {
    // SAFETY: writing our buffer to a valid fd.
    let n = unsafe {
        libc::write(
            fd.as_raw_fd(),
            bytes.as_ptr() as *const libc::c_void,
            bytes.len(),
        )
    };
    assert_eq!(
        n,
        bytes.len() as isize,
        "write: {}",
        io::Error::last_os_error()
    );
}

#[test]
fn scan_reads_the_netns_as_the_engine_left_it() {
    let fx = fixture("scan");
    let got = scan(&fx.ctr.path).expect("scan");
    assert_eq!(got, expected_scan());
}

#[test]
fn connect_carries_frames_both_ways_and_disconnect_removes_everything() {
    let fx = fixture("flow");
    let s = scan(&fx.ctr.path).expect("scan");
    let taps = connect(&fx.ctr.path, &s).expect("connect");
    assert_eq!(taps.len(), 1);
    assert_eq!(
        (taps[0].link.as_str(), taps[0].name.as_str()),
        ("eth0", "hk0")
    );
    let tap = &taps[0].fd;

    // The tap as virtio-net needs it.
    let mut hdr: libc::c_int = 0;
    // SAFETY: TUNGETVNETHDRSZ writes an int.
    assert_eq!(
        unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNGETVNETHDRSZ, &mut hdr) },
        0
    );
    assert_eq!(hdr as usize, VNET_HDR_LEN);
    assert_eq!(hdr, 12);
    let mut ifr = [0u8; 40];
    // SAFETY: TUNGETIFF fills a struct ifreq (40 bytes).
    assert_eq!(
        unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNGETIFF, ifr.as_mut_ptr()) },
        0
    );
    assert_eq!(&ifr[..4], b"hk0\0");
    let flags = i32::from(i16::from_ne_bytes([ifr[16], ifr[17]]));
    assert_eq!(flags & libc::IFF_TAP, libc::IFF_TAP);
    assert_eq!(flags & libc::IFF_NO_PI, libc::IFF_NO_PI);
    assert_eq!(flags & libc::IFF_VNET_HDR, libc::IFF_VNET_HDR);
    assert_eq!(flags & libc::IFF_MULTI_QUEUE, 0);

    let link = fx.ctr.ip("-d link show hk0");
    assert!(link.contains("mtu 1400"), "{link}");
    assert!(link.contains(",UP") || link.contains("<UP"), "{link}");
    assert!(link.contains("tun type tap pi off vnet_hdr on"), "{link}");
    let addrs = fx.ctr.ip("addr show dev hk0");
    assert!(
        !addrs.contains("inet"),
        "the tap must have no address: {addrs}"
    );

    for dev in ["eth0", "hk0"] {
        let q = fx.ctr.tc(&format!("qdisc show dev {dev}"));
        assert!(q.contains("qdisc ingress ffff:"), "{dev}: {q}");
    }
    let f = fx.ctr.tc("filter show dev eth0 parent ffff:");
    assert!(
        f.contains("u32") && f.contains("Egress Redirect to device hk0) stolen"),
        "{f}"
    );
    let f = fx.ctr.tc("filter show dev hk0 parent ffff:");
    assert!(
        f.contains("u32") && f.contains("Egress Redirect to device eth0) stolen"),
        "{f}"
    );

    // The veth keeps its addresses, and a re-scan (start, after a late CNI) sees the same.
    assert_eq!(scan(&fx.ctr.path).expect("rescan"), expected_scan());

    // Guest -> bridge: a vnet header (all zero: no offload) and a frame written to the tap fd
    // leave the veth on the outer side. The test thread is in its own netns: the fd works anywhere.
    let peer = packet_socket(&fx.outer.path, "peer0");
    let out = frame(PEER_MAC, CTR_MAC, "tap->peer");
    let mut packet = vec![0u8; VNET_HDR_LEN];
    packet.extend_from_slice(&out);
    write_all(tap, &packet);
    let got = read_until(&peer, |b| b == out.as_slice());
    assert!(
        got.is_some(),
        "the frame written to the tap did not reach the veth peer"
    );

    // Bridge -> guest: a frame sent into the peer arrives on the tap fd behind a 12-byte header.
    let inbound = frame(CTR_MAC, PEER_MAC, "peer->tap");
    write_all(&peer, &inbound);
    let got = read_until(tap, |b| {
        b.len() > VNET_HDR_LEN && b[VNET_HDR_LEN..] == inbound[..]
    })
    .expect("the frame sent into the peer did not reach the tap fd");
    assert_eq!(got.len(), VNET_HDR_LEN + inbound.len());
    // virtio_net_hdr: flags may only say DATA_VALID (2); no GSO; no checksum offsets.
    assert_eq!(got[0] & !2, 0, "flags {:#x}", got[0]);
    assert_eq!(
        &got[1..10],
        &[0u8; 9],
        "gso_type/hdr_len/gso_size/csum_start/csum_offset"
    );

    disconnect(&fx.ctr.path).expect("disconnect");
    assert!(
        !fx.ctr.link_names().iter().any(|n| n == "hk0"),
        "{:?}",
        fx.ctr.link_names()
    );
    let q = fx.ctr.tc("qdisc show dev eth0");
    assert!(!q.contains("ingress"), "{q}");
    // The link is as the engine left it.
    assert_eq!(scan(&fx.ctr.path).expect("scan after"), expected_scan());
    drop(taps);
    disconnect(&fx.ctr.path).expect("disconnect twice");
}

#[test]
fn disconnect_after_the_vmm_closed_the_tap_removes_the_dangling_redirect() {
    let fx = fixture("closed");
    let s = scan(&fx.ctr.path).expect("scan");
    let taps = connect(&fx.ctr.path, &s).expect("connect");
    drop(taps); // the non-persistent tap goes with its last fd
    assert!(!fx.ctr.link_names().iter().any(|n| n == "hk0"));
    assert!(fx.ctr.tc("qdisc show dev eth0").contains("ingress"));
    disconnect(&fx.ctr.path).expect("disconnect");
    let q = fx.ctr.tc("qdisc show dev eth0");
    assert!(!q.contains("ingress"), "{q}");
}

#[test]
fn disconnect_of_a_deleted_netns_is_ok() {
    let fx = fixture("gone");
    let s = scan(&fx.ctr.path).expect("scan");
    let taps = connect(&fx.ctr.path, &s).expect("connect");
    run("ip", &["netns", "del", &fx.ctr.name]);
    assert!(!fx.ctr.path.exists());
    disconnect(&fx.ctr.path).expect("disconnect of a deleted netns");
    drop(taps);
}

#[test]
fn connect_undoes_its_partial_work() {
    let fx = fixture("undo");
    // A second link whose ingress qdisc belongs to someone else: connect fails on it after
    // having fully set up eth0.
    fx.outer.ip(&format!(
        "link add peer1 type veth peer name eth1 netns {}",
        fx.ctr.name
    ));
    fx.outer.ip("link set peer1 up");
    fx.ctr.ip("link set eth1 up");
    fx.ctr.ip("addr add 10.201.0.2/24 dev eth1");
    fx.ctr.tc("qdisc add dev eth1 ingress");
    let s = scan(&fx.ctr.path).expect("scan");
    assert_eq!(s.links.len(), 2);

    let err = connect(&fx.ctr.path, &s).expect_err("connect must fail on eth1");
    assert!(
        matches!(err.cause(), NetError::Link { link, .. } if link == "eth1"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("eth1: already has an ingress qdisc"),
        "{err}"
    );
    let names = fx.ctr.link_names();
    assert!(!names.iter().any(|n| n.starts_with("hk")), "{names:?}");
    assert!(!fx.ctr.tc("qdisc show dev eth0").contains("ingress"));
    // Not ours: untouched by the undo and by disconnect.
    assert!(fx.ctr.tc("qdisc show dev eth1").contains("ingress"));
    disconnect(&fx.ctr.path).expect("disconnect");
    assert!(fx.ctr.tc("qdisc show dev eth1").contains("ingress"));
}

#[test]
fn a_kernel_refusal_is_explained_and_undone() {
    let fx = fixture("mtu");
    let mut s = scan(&fx.ctr.path).expect("scan");
    // An MTU the protocol allows and a tap does not (its maximum is 65535 less the Ethernet
    // header): the tap exists by the time the kernel refuses it.
    s.links[0].mtu = 65535;
    let err = connect(&fx.ctr.path, &s).expect_err("mtu 65535");
    let msg = err.to_string();
    assert!(msg.contains("set mtu 65535 on tap"), "{msg}");
    // The kernel's extended-ack text, not only the errno.
    assert!(msg.contains("(mtu greater than device maximum)"), "{msg}");
    assert!(!fx.ctr.link_names().iter().any(|n| n.starts_with("hk")));
    assert!(!fx.ctr.tc("qdisc show dev eth0").contains("ingress"));
}

#[test]
fn connect_refuses_a_tap_name_in_use() {
    let fx = fixture("busy");
    fx.ctr.ip("link add hk0 type bridge"); // no dummy module on every kernel
    let s = scan(&fx.ctr.path).expect("scan");
    let err = connect(&fx.ctr.path, &s).expect_err("hk0 exists");
    assert!(
        matches!(err.cause(), NetError::Tap { name, .. } if name == "hk0"),
        "{err}"
    );
    assert!(!fx.ctr.tc("qdisc show dev eth0").contains("ingress"));
    // The bridge is not ours: disconnect leaves it.
    disconnect(&fx.ctr.path).expect("disconnect");
    assert!(fx.ctr.link_names().iter().any(|n| n == "hk0"));
}

#[test]
fn connect_refuses_a_stale_scan() {
    let fx = fixture("stale");
    let mut s = scan(&fx.ctr.path).expect("scan");
    s.links[0].mac = [2, 0, 0, 0, 0, 0x99];
    let err = connect(&fx.ctr.path, &s).expect_err("mac differs");
    assert!(
        err.to_string().contains("hardware address changed"),
        "{err}"
    );
    s.links[0].name = "eth9".into();
    s.routes.clear();
    s.neighbors.clear();
    let err = connect(&fx.ctr.path, &s).expect_err("no such link");
    assert!(err.to_string().contains("eth9: no such link"), "{err}");
    assert!(!fx.ctr.link_names().iter().any(|n| n.starts_with("hk")));
}

#[test]
fn scan_refuses_more_links_than_the_limit() {
    let ctr = Ns::new("many-c");
    let outer = Ns::new("many-o");
    for i in 0..=MAX_LINKS {
        outer.ip(&format!(
            "link add p{i} type veth peer name eth{i} netns {}",
            ctr.name
        ));
        ctr.ip(&format!("addr add 10.210.{i}.2/24 dev eth{i}"));
    }
    let err = scan(&ctr.path).expect_err("9 links");
    assert!(
        matches!(err.cause(), NetError::TooMany { count, limit, .. } if *count == MAX_LINKS + 1 && *limit == MAX_LINKS),
        "{err}"
    );
    assert!(
        err.to_string().starts_with(&format!(
            "network namespace {}: 9 links",
            ctr.path.display()
        )),
        "{err}"
    );
    // At the limit it is fine.
    ctr.ip(&format!("link del eth{MAX_LINKS}"));
    assert_eq!(scan(&ctr.path).expect("8 links").links.len(), MAX_LINKS);
}

#[test]
fn scan_refuses_a_link_it_cannot_carry() {
    let ctr = Ns::new("kind");
    ctr.ip("link add br0 type bridge");
    ctr.ip("addr add 10.220.0.1/24 dev br0");
    let err = scan(&ctr.path).expect_err("bridge");
    assert!(
        err.to_string()
            .contains("br0: a link of kind bridge cannot be carried"),
        "{err}"
    );
    // Without addresses it is simply not carried.
    ctr.ip("addr flush dev br0");
    assert_eq!(scan(&ctr.path).expect("scan"), Scan::default());
}

#[test]
fn bad_paths_are_clear_errors() {
    let missing = Path::new("/run/netns/hknet-does-not-exist");
    let err = scan(missing).expect_err("missing");
    assert!(
        matches!(err, NetError::Open { ref source, .. } if source.kind() == io::ErrorKind::NotFound),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with("network namespace /run/netns/hknet-does-not-exist: "),
        "{err}"
    );
    assert!(connect(missing, &expected_scan()).is_err());
    disconnect(missing).expect("a missing netns is gone: fine");

    // A regular file, and a namespace of another type.
    let file = std::env::temp_dir().join(format!("hknet-file-{}", std::process::id()));
    std::fs::write(&file, b"not a netns").expect("write");
    for path in [file.as_path(), Path::new("/proc/self/ns/uts")] {
        let err = scan(path).expect_err("not a netns");
        assert!(matches!(err, NetError::NotNetns { .. }), "{path:?}: {err}");
        assert!(
            err.to_string().ends_with("not a network namespace"),
            "{err}"
        );
        assert!(matches!(
            connect(path, &expected_scan()),
            Err(NetError::NotNetns { .. })
        ));
        assert!(
            matches!(disconnect(path), Err(NetError::NotNetns { .. })),
            "{path:?}"
        );
    }
    // What an unmounted netns bind mount leaves: an empty file. Gone for disconnect, an error
    // for scan.
    std::fs::write(&file, b"").expect("truncate");
    assert!(matches!(scan(&file), Err(NetError::NotNetns { .. })));
    disconnect(&file).expect("an unmounted netns is gone: fine");
    let _ = std::fs::remove_file(&file);
}

/// A network set up after the VM booted: a spare tap made before the engine's link exists
/// stays down and joined to nothing, and `attach` later joins it to the link (frames both
/// ways), as `connect` would have.
#[test]
fn prepare_then_attach_carries_frames_both_ways() {
    let fx = fixture("late");
    let taps = prepare(&fx.ctr.path, 1).expect("prepare");
    assert_eq!(taps.len(), 1);
    assert_eq!(taps[0].name, "hk0");
    let tap = &taps[0].fd;
    let link = fx.ctr.ip("-d link show hk0");
    assert!(!link.contains(",UP") && !link.contains("<UP"), "{link}");
    assert!(!fx.ctr.tc("qdisc show dev eth0").contains("ingress"));
    // A second prepare would share hk0: refused.
    assert!(prepare(&fx.ctr.path, 1).is_err());

    let s = scan(&fx.ctr.path).expect("scan");
    assert_eq!(s, expected_scan(), "the spare tap is not carried");
    attach(&fx.ctr.path, &s).expect("attach");
    let link = fx.ctr.ip("-d link show hk0");
    assert!(link.contains("mtu 1400"), "{link}");
    assert!(link.contains(",UP") || link.contains("<UP"), "{link}");
    let f = fx.ctr.tc("filter show dev eth0 parent ffff:");
    assert!(f.contains("Egress Redirect to device hk0) stolen"), "{f}");

    let peer = packet_socket(&fx.outer.path, "peer0");
    let out = frame(PEER_MAC, CTR_MAC, "spare->peer");
    let mut packet = vec![0u8; VNET_HDR_LEN];
    packet.extend_from_slice(&out);
    write_all(tap, &packet);
    assert!(read_until(&peer, |b| b == out.as_slice()).is_some());
    let inbound = frame(CTR_MAC, PEER_MAC, "peer->spare");
    write_all(&peer, &inbound);
    assert!(read_until(tap, |b| b.len() > VNET_HDR_LEN
        && b[VNET_HDR_LEN..] == inbound[..])
    .is_some());

    // Attaching twice would stack redirects: the kernel refuses the second ingress qdisc.
    assert!(attach(&fx.ctr.path, &s).is_err());
    disconnect(&fx.ctr.path).expect("disconnect");
    assert!(!fx.ctr.tc("qdisc show dev eth0").contains("ingress"));
    assert!(!fx.ctr.link_names().iter().any(|n| n.starts_with("hk")));
}

/// `attach` without a spare tap (the VM has fewer spare NICs than the netns has links) fails
/// clearly and leaves nothing.
#[test]
fn attach_without_a_spare_tap_fails_clearly() {
    let fx = fixture("nospare");
    let s = scan(&fx.ctr.path).expect("scan");
    let err = attach(&fx.ctr.path, &s).expect_err("no hk0");
    assert!(err.to_string().contains("no spare tap"), "{err}");
    assert!(!fx.ctr.tc("qdisc show dev eth0").contains("ingress"));
}
