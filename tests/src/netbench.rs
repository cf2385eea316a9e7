//! `make bench`'s network rows. Three iperf3 servers run at once, each behind its own /24 of
//! 10.199.40.0/22, and the test host measures them in turn, interleaved:
//! - crun: a container in a netns with a veth (what podman's bridge gives a container);
//! - husk: the same netns carried into a microVM (tap + tc redirect + virtio-net);
//! - QEMU `-M microvm` with virtio-net on a tap (no vhost), same guest kernel, iperf3 as init.
//!
//! Per round: iperf3 TCP host→guest and guest→host (`-R`), `IPERF_SECS` each, and the mean
//! RTT of `PINGS` pings. Also what networking adds to `husk run /bin/true`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::bundle::{busybox_rootfs, TestBundle};
use crate::{output_within, spec, try_output_within, vm_dir, Husk, COMMAND_TIMEOUT};

const IPERF_SECS: &str = "5";
const PINGS: &str = "5";

/// One side's samples: Mbit/s host→guest, Mbit/s guest→host, mean RTT in ms.
#[derive(Default)]
pub struct Side {
    pub to_guest: Vec<f64>,
    pub from_guest: Vec<f64>,
    pub rtt: Vec<f64>,
    /// Rounds that failed (a guest that stalled under the emulator).
    pub failed: usize,
}

#[derive(Default)]
pub struct Samples {
    pub crun: Side,
    pub husk: Side,
    pub qemu: Side,
    /// `husk run /bin/true` (ms): joining an empty netns (nothing to carry), a new netns
    /// (a spare NIC for a network an engine may add), a netns with a veth (carried NIC).
    pub true_empty_ns: Vec<f64>,
    pub true_new_ns: Vec<f64>,
    pub true_veth: Vec<f64>,
}

/// `c`'s output, or an error if it runs longer than `secs` (then it is killed): a guest
/// that stalls under the emulator costs a sample, not the run.
fn output_for(mut c: Command, secs: u64) -> Result<std::process::Output> {
    c.stdin(Stdio::null());
    try_output_within(c, Duration::from_secs(secs)).map_err(anyhow::Error::msg)
}

fn sh(args: &[&str]) -> Result<String> {
    let mut c = Command::new(args[0]);
    c.args(&args[1..]).stdin(Stdio::null());
    let o = output_within(c, COMMAND_TIMEOUT);
    if !o.status.success() {
        bail!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn ip(args: &str) -> Result<String> {
    let mut v = vec!["ip"];
    v.extend(args.split_whitespace());
    sh(&v)
}

/// A named netns whose `eth0` (`10.199.N.2/24`) is one end of a veth; the other, `nbN`
/// with `10.199.N.1/24`, stays in the test host's netns. Removed on drop.
struct VethNs {
    name: String,
    host: String,
}

impl VethNs {
    fn new(n: u8, with_veth: bool) -> Result<VethNs> {
        let ns = VethNs {
            name: format!("husk-nb{n}-{}", std::process::id()),
            host: format!("nb{n}"),
        };
        let _ = Command::new("ip").args(["netns", "del", &ns.name]).status();
        let _ = Command::new("ip").args(["link", "del", &ns.host]).status();
        ip(&format!("netns add {}", ns.name))?;
        let name = &ns.name;
        ip(&format!("-n {name} link set lo up"))?;
        if with_veth {
            let host = &ns.host;
            ip(&format!(
                "link add {host} type veth peer name eth0 netns {name}"
            ))?;
            ip(&format!("addr add 10.199.{n}.1/24 dev {host}"))?;
            ip(&format!("link set {host} up"))?;
            ip(&format!("-n {name} addr add 10.199.{n}.2/24 dev eth0"))?;
            ip(&format!("-n {name} link set eth0 up"))?;
        }
        Ok(ns)
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for VethNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host])
            .status();
    }
}

/// A busybox root with iperf3 and the libraries `ldd` names, at their host paths.
fn iperf_rootfs(root: &Path) -> Result<()> {
    busybox_rootfs(root);
    let iperf = Path::new("/usr/bin/iperf3");
    if !iperf.exists() {
        bail!("/usr/bin/iperf3 missing: install Debian's iperf3 (make bench does)");
    }
    let ldd = sh(&["ldd", "/usr/bin/iperf3"])?;
    let libs = ldd
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let p = l.split("=>").nth(1).unwrap_or(l).trim();
            p.split(' ').next().filter(|p| p.starts_with('/'))
        })
        .map(PathBuf::from);
    for f in libs.chain([iperf.to_path_buf()]) {
        let dst = root.join(f.strip_prefix("/")?);
        std::fs::create_dir_all(dst.parent().context("lib dir")?)?;
        std::fs::copy(&f, &dst).with_context(|| format!("copy {}", f.display()))?;
    }
    Ok(())
}

/// A bundle on an iperf3 rootfs running `args`, in the netns at `netns` (or a new one).
fn bundle(tag: &str, rootfs: &Path, netns: Option<&str>, args: &[&str]) -> Result<TestBundle> {
    let mut b = TestBundle::busybox(tag, args);
    std::fs::remove_dir_all(b.rootfs())?;
    std::os::unix::fs::symlink(rootfs, b.rootfs())?;
    let list = b.config["linux"]["namespaces"]
        .as_array_mut()
        .context("namespaces")?;
    list.retain(|n| n["type"] != "network");
    list.push(match netns {
        Some(p) => serde_json::json!({"type": "network", "path": p}),
        None => serde_json::json!({"type": "network"}),
    });
    b.write();
    Ok(b)
}

/// `iperf3 -c ADDR` (`reverse`: the guest sends): Mbit/s received. Retried while the server
/// is not up yet.
fn iperf(addr: &str, reverse: bool) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut c = Command::new("iperf3");
        c.args([
            "-c",
            addr,
            "-t",
            IPERF_SECS,
            "-J",
            "--connect-timeout",
            "3000",
        ]);
        if reverse {
            c.arg("-R");
        }
        let o = output_for(c, 60)?;
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
            return Ok(bps / 1e6);
        }
        if Instant::now() > deadline {
            bail!(
                "iperf3 -c {addr}: {} {}",
                v["error"],
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Mean RTT (ms) of busybox `ping`'s "round-trip min/avg/max = a/b/c ms".
fn ping(addr: &str) -> Result<f64> {
    let mut c = Command::new("busybox");
    c.args(["ping", "-q", "-c", PINGS, addr]);
    let out = String::from_utf8_lossy(&output_for(c, 60)?.stdout).into_owned();
    out.lines()
        .find_map(|l| l.split(" = ").nth(1)?.split('/').nth(1)?.parse().ok())
        .with_context(|| format!("no round-trip line from ping {addr}: {out}"))
}

/// One round against `addr`; what fails is counted in `side.failed` and left out.
fn measure(side: &mut Side, addr: &str) -> Result<()> {
    let mut r = || -> Result<()> {
        side.to_guest.push(iperf(addr, false)?);
        side.from_guest.push(iperf(addr, true)?);
        side.rtt.push(ping(addr)?);
        Ok(())
    };
    let res = r();
    if res.is_err() {
        side.failed += 1;
    }
    res
}

/// QEMU microvm with virtio-net on tap `nbq` (no vhost); the guest's init configures eth0
/// and runs the iperf3 server.
struct Qemu(Child, PathBuf);

impl Qemu {
    fn start(rootfs: &Path, dir: &Path) -> Result<Qemu> {
        let init = "#!/bin/busybox sh\n\
            export PATH=/bin:/usr/bin\n\
            busybox mount -t proc proc /proc; busybox mount -t devtmpfs dev /dev\n\
            ip link set lo up; ip addr add 10.199.42.2/24 dev eth0; ip link set eth0 up\n\
            echo husk-netbench-ready\n\
            exec iperf3 -s\n";
        std::fs::write(rootfs.join("init"), init)?;
        std::fs::set_permissions(
            rootfs.join("init"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let initrd = dir.join("netbench.cpio");
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cd {} && find . | cpio -o -H newc --quiet > {}",
                rootfs.display(),
                initrd.display()
            ))
            .status()?;
        if !st.success() {
            bail!("cpio of the QEMU guest's initramfs failed: {st}");
        }
        let s = spec();
        let _ = Command::new("ip").args(["link", "del", "nbq"]).status();
        let mut child = Command::new("qemu-system-x86_64")
            .args([
                "-M",
                // No ACPI: QEMU then names the virtio-mmio NIC on the kernel command line.
                "microvm,x-option-roms=off,pit=off,pic=off,rtc=off,isa-serial=on,acpi=off",
            ])
            .args(["-enable-kvm", "-cpu", "host", "-smp", "1", "-m", "256"])
            .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
            .args(["-serial", "stdio"])
            .args([
                "-netdev",
                "tap,id=n0,ifname=nbq,script=no,downscript=no,vhost=off",
            ])
            .args(["-device", "virtio-net-device,netdev=n0"])
            .arg("-kernel")
            .arg(&s.kernel)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", "console=ttyS0 reboot=k panic=1 pci=off"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start qemu-system-x86_64")?;
        let out = child.stdout.take().context("qemu stdout")?;
        let console = dir.join("qemu-console.log");
        let q = Qemu(child, console.clone());
        // The console goes to a file (read on errors) until the guest ends.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::{BufRead, Write};
            let Ok(mut log) = std::fs::File::create(console) else {
                return;
            };
            for line in std::io::BufReader::new(out).lines().map_while(|l| l.ok()) {
                let _ = writeln!(log, "{line}");
                if line.contains("husk-netbench-ready") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(120)).is_err() {
            bail!("the QEMU guest never said it was ready:\n{}", q.console());
        }
        ip("addr add 10.199.42.1/24 dev nbq")?;
        ip("link set nbq up")?;
        Ok(q)
    }

    fn console(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A crun container in the foreground (`crun run`), killed and deleted on drop.
struct Crun {
    id: String,
    child: Child,
}

const CRUN_ROOT: &str = "/tmp/crun-netbench";

impl Crun {
    fn run(b: &TestBundle, id: &str) -> Result<Crun> {
        let child = Command::new("crun")
            .args(["--root", CRUN_ROOT, "run", "--bundle"])
            .arg(&b.dir)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("crun")?;
        Ok(Crun {
            id: id.into(),
            child,
        })
    }
}

impl Drop for Crun {
    fn drop(&mut self) {
        let _ = Command::new("crun")
            .args(["--root", CRUN_ROOT, "kill", &self.id, "KILL"])
            .status();
        // `crun run` ends with its container; if the kill missed it, `delete -f` ends it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("crun")
            .args(["--root", CRUN_ROOT, "delete", "-f", &self.id])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `husk run --detach`, `delete --force` on drop.
struct HuskCtr<'a> {
    h: &'a Husk,
    id: String,
}

impl<'a> HuskCtr<'a> {
    fn run(h: &'a Husk, b: &TestBundle, id: &str) -> Result<HuskCtr<'a>> {
        let dir = b.dir.to_str().context("bundle path")?;
        let o = h.run(&["run", "--detach", "--bundle", dir, id]);
        if !o.status.success() {
            bail!("husk run -d: {}", String::from_utf8_lossy(&o.stderr));
        }
        Ok(HuskCtr { h, id: id.into() })
    }
}

impl Drop for HuskCtr<'_> {
    fn drop(&mut self) {
        let _ = self.h.run(&["delete", "--force", &self.id]);
    }
}

fn timed_true(h: &Husk, b: &TestBundle, id: &str) -> Result<f64> {
    let dir = b.dir.to_str().context("bundle path")?;
    let t = Instant::now();
    let o = h.run(&["run", "--bundle", dir, id]);
    if !o.status.success() {
        bail!("husk run /bin/true: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

pub fn bench(runs: usize) -> Result<Samples> {
    let dir = vm_dir("netbench");
    let rootfs = dir.join("rootfs");
    iperf_rootfs(&rootfs)?;
    let mut s = Samples::default();
    let h = Husk::new("netbench");

    // What networking adds to a start.
    let empty = VethNs::new(43, false)?;
    let veth = VethNs::new(44, true)?;
    let b_empty = bundle("nb-empty", &rootfs, Some(&empty.path()), &["true"])?;
    let b_new = bundle("nb-new", &rootfs, None, &["true"])?;
    let b_veth = bundle("nb-veth", &rootfs, Some(&veth.path()), &["true"])?;
    for i in 0..runs {
        let mut order = [
            (&b_empty, &mut s.true_empty_ns, "e"),
            (&b_new, &mut s.true_new_ns, "n"),
            (&b_veth, &mut s.true_veth, "v"),
        ];
        order.rotate_left(i % 3);
        for (b, row, tag) in order {
            row.push(timed_true(&h, b, &format!("nbt{tag}{i}"))?);
        }
        eprintln!("netbench: husk run /bin/true {}/{runs} done", i + 1);
    }
    drop((empty, veth));

    let crun_ns = VethNs::new(40, true)?;
    let husk_ns = VethNs::new(41, true)?;
    let serve = ["iperf3", "-s"];
    let b_crun = bundle("nb-crun", &rootfs, Some(&crun_ns.path()), &serve)?;
    let b_husk = bundle("nb-husk", &rootfs, Some(&husk_ns.path()), &serve)?;
    let _crun = Crun::run(&b_crun, &format!("nbc{}", std::process::id()))?;
    let _husk = HuskCtr::run(&h, &b_husk, "nbh")?;
    let qemu_root = dir.join("qemu-root");
    iperf_rootfs(&qemu_root)?;
    let qemu = Qemu::start(&qemu_root, &dir)?;
    for i in 0..runs {
        let mut order = [
            (&mut s.crun, "10.199.40.2"),
            (&mut s.husk, "10.199.41.2"),
            (&mut s.qemu, "10.199.42.2"),
        ];
        order.rotate_left(i % 3);
        for (side, addr) in order {
            if let Err(e) = measure(side, addr) {
                eprintln!("netbench: round {} against {addr} failed: {e:#}", i + 1);
                if side.failed > runs / 2 {
                    bail!(
                        "{addr} failed {} rounds; QEMU console:\n{}",
                        side.failed,
                        qemu.console()
                    );
                }
            }
        }
        eprintln!("netbench: round {}/{runs} done", i + 1);
    }
    Ok(s)
}
