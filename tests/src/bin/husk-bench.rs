//! `make bench`: boots husk microVMs and, side by side in the same host,
//! QEMU's microvm with the same kernel and initramfs; prints a table.
//!
//! Each row is the median/min/max of `HUSK_BENCH_RUNS` (default 5) runs.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use husk::vm::Vm;
use husk_tests::bundle::TestBundle;
use husk_tests::{guest_regions, rss, spec, vm_dir, Husk};

struct Row {
    name: String,
    unit: &'static str,
    samples: Vec<f64>,
}

impl Row {
    fn new(name: impl Into<String>, unit: &'static str) -> Self {
        Row {
            name: name.into(),
            unit,
            samples: Vec::new(),
        }
    }
    fn print(&self) {
        let mut s = self.samples.clone();
        s.sort_by(|a, b| a.total_cmp(b));
        if s.is_empty() {
            println!(
                "| {:<52} | {:>9} | {:>9} | {:>9} | {:<4} |",
                self.name, "-", "-", "-", self.unit
            );
            return;
        }
        println!(
            "| {:<52} | {:>9.1} | {:>9.1} | {:>9.1} | {:<4} |",
            self.name,
            s[s.len() / 2],
            s[0],
            s[s.len() - 1],
            self.unit
        );
    }
}

const QEMU_APPEND: &str = "console=ttyS0 reboot=k panic=1 pci=off nomodule no_timer_check quiet";

/// Launch of `qemu-system-x86_64 -M microvm` until the agent's console line.
fn qemu_boot(memory_mib: u32) -> anyhow::Result<(f64, f64)> {
    let s = spec();
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm,x-option-roms=off,pit=off,pic=off,rtc=off,isa-serial=on",
        ])
        .args(["-enable-kvm", "-cpu", "host", "-smp", "1", "-m"])
        .arg(memory_mib.to_string())
        .args([
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(&s.kernel)
        .arg("-initrd")
        .arg(&s.initrd)
        .args(["-append", QEMU_APPEND])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start qemu-system-x86_64")?;
    let out = child.stdout.take().context("no qemu stdout")?;
    let mut lines = BufReader::new(out).lines();
    let mut took = None;
    while let Some(Ok(line)) = lines.next() {
        if line.contains("husk-agent") && line.contains("listening") {
            took = Some(start.elapsed());
            break;
        }
    }
    let rss_kib = husk_tests::rss(child.id(), &[])
        .map(|r| r.other_kib as f64)
        .unwrap_or(0.0);
    let _ = child.kill();
    let _ = child.wait();
    match took {
        Some(t) => Ok((t.as_secs_f64() * 1e3, rss_kib / 1024.0)),
        None => bail!("qemu never printed the agent's listening line"),
    }
}

fn print_header() {
    println!(
        "| {:<52} | {:>9} | {:>9} | {:>9} | {:<4} |",
        "metric", "median", "min", "max", "unit"
    );
    println!(
        "|{:-<54}|{:-<11}|{:-<11}|{:-<11}|{:-<6}|",
        "", "", "", "", ""
    );
}

fn median(r: &Row) -> f64 {
    let mut s = r.samples.clone();
    s.sort_by(|x, y| x.total_cmp(y));
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Seconds from busybox `time`'s "real\t0m 1.23s" lines, in order.
fn real_times(stderr: &str) -> Vec<f64> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("real"))
        .filter_map(|t| {
            let t = t.trim().trim_end_matches('s');
            let (m, s) = t.split_once('m')?;
            Some(m.trim().parse::<f64>().ok()? * 60.0 + s.trim().parse::<f64>().ok()?)
        })
        .collect()
}

// `busybox time` on both sides, so the same tool measures the guest and the host.
const FS_SCRIPT: &str = "cd $0 && \
    busybox time busybox sh -c 'dd if=/dev/zero of=w bs=1M count=256 2>/dev/null' && \
    busybox time busybox sh -c 'dd if=r of=/dev/null bs=1M 2>/dev/null' && \
    busybox time busybox sh -c 'find tree -type f | wc -l >/dev/null' && \
    busybox time busybox sh -c 'ls -lnR tree >/dev/null'";

fn containers(runs: usize) -> anyhow::Result<()> {
    let h = Husk::new("bench");
    let bundle = TestBundle::busybox("bench-true", &["true"]);
    let bdir = bundle.dir.to_str().context("bundle path")?.to_string();
    // The same, with husk-vmm's jail switched off (config.toml `no_jail`).
    let unjailed = Husk::new("bench-nojail");
    let cfg = std::fs::read_to_string(&unjailed.config)?;
    std::fs::write(&unjailed.config, format!("{cfg}no_jail = true\n"))?;
    let mut husk_true = Row::new("husk run /bin/true, end to end", "ms");
    let mut husk_nojail = Row::new("  same, husk-vmm unjailed (no_jail)", "ms");
    let mut crun_true = Row::new("crun run /bin/true, same bundle", "ms");
    for i in 0..runs {
        // Alternate which goes first, so neither always gets the warm caches.
        let order: [(&Husk, &mut Row); 2] = if i % 2 == 0 {
            [(&h, &mut husk_true), (&unjailed, &mut husk_nojail)]
        } else {
            [(&unjailed, &mut husk_nojail), (&h, &mut husk_true)]
        };
        for (hh, row) in order {
            let t = Instant::now();
            let o = hh.run(&["run", "--bundle", &bdir, &format!("t{i}")]);
            if !o.status.success() {
                bail!("husk run failed: {}", String::from_utf8_lossy(&o.stderr));
            }
            row.samples.push(ms_since(t));
        }
        let t = Instant::now();
        let st = Command::new("crun")
            .args([
                "--root",
                "/tmp/crun-bench",
                "run",
                "--bundle",
                &bdir,
                &format!("c{i}"),
            ])
            .stdin(Stdio::null())
            .status()
            .context("crun")?;
        if !st.success() {
            bail!("crun run failed: {st}");
        }
        crun_true.samples.push(ms_since(t));
    }

    // One idle container: what it costs the host.
    let idle = TestBundle::busybox("bench-idle", &["sleep", "1000"]);
    let o = h.run(&[
        "run",
        "--detach",
        "--bundle",
        idle.dir.to_str().context("path")?,
        "idle",
    ]);
    if !o.status.success() {
        bail!("husk run -d failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    std::thread::sleep(Duration::from_secs(2));
    let st: serde_json::Value = serde_json::from_slice(&h.run(&["state", "idle"]).stdout)?;
    let monitor_pid = st["pid"].as_u64().context("pid")? as u32;
    let vmm_pid = std::fs::read_dir("/proc")?
        .flatten()
        .find(|e| {
            std::fs::read_to_string(e.path().join("stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit(')')
                        .next()
                        .map(|r| r.split(' ').nth(2) == Some(&monitor_pid.to_string()))
                })
                .unwrap_or(false)
                && std::fs::read(e.path().join("cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains("husk-vmm"))
                    .unwrap_or(false)
        })
        .and_then(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .context("husk-vmm of the idle container")?;
    // Jailed: the VM runs in the waiter's child; count both.
    let jailed = husk::vm::jailed_vmm_pid(vmm_pid).unwrap_or(vmm_pid);
    let mut vr = rss(jailed, &guest_regions(128))?;
    if jailed != vmm_pid {
        vr.other_kib += rss(vmm_pid, &[])?.other_kib;
    }
    let mr = rss(monitor_pid, &[])?;
    let _ = h.run(&["delete", "--force", "idle"]);

    // virtio-fs inside the guest vs the same directory on the host.
    let data = vm_dir("fsbench");
    std::fs::create_dir_all(data.join("tree"))?;
    std::fs::write(data.join("r"), vec![0x5au8; 256 << 20])?;
    for d in 0..100 {
        let dir = data.join("tree").join(d.to_string());
        std::fs::create_dir_all(&dir)?;
        for f in 0..100 {
            std::fs::write(dir.join(f.to_string()), b"x")?;
        }
    }
    let mut fsb = TestBundle::busybox("bench-fs", &["sh", "-c", FS_SCRIPT, "/data"]);
    fsb.config["mounts"]
        .as_array_mut()
        .context("mounts")?
        .push(serde_json::json!({
            "destination": "/data", "type": "bind", "source": data, "options": ["rbind", "rw"]
        }));
    // The host cgroup caps the sandbox at VM size + 64 MiB, and /data is a
    // tmpfs in the test host: the 256 MiB written there is charged to the
    // sandbox on top of the guest's own page cache of both files.
    fsb.config["annotations"] = serde_json::json!({"io.husk.vm.memory_mib": "1024"});
    fsb.write();
    let names = [
        "seq write 256 MiB",
        "seq read 256 MiB",
        "find 10,000 files",
        "ls -lnR (stat) 10,000 files",
    ];
    let mut guest: Vec<Row> = names.iter().map(|_| Row::new("", "s")).collect();
    let mut host: Vec<Row> = names.iter().map(|_| Row::new("", "s")).collect();
    for i in 0..runs {
        let o = h.run(&[
            "run",
            "--bundle",
            fsb.dir.to_str().context("path")?,
            &format!("fs{i}"),
        ]);
        let t = real_times(&String::from_utf8_lossy(&o.stderr));
        if t.len() != 4 {
            bail!("fs bench in guest: {}", String::from_utf8_lossy(&o.stderr));
        }
        let o = Command::new("/bin/busybox")
            .args(["sh", "-c", FS_SCRIPT, data.to_str().context("path")?])
            .output()?;
        let th = real_times(&String::from_utf8_lossy(&o.stderr));
        // Progress on stderr: the test host counts 600 s of silence as a stall.
        eprintln!("virtio-fs run {}/{runs} done", i + 1);
        if th.len() != 4 {
            bail!("fs bench on host: {}", String::from_utf8_lossy(&o.stderr));
        }
        for k in 0..4 {
            guest[k].samples.push(t[k]);
            host[k].samples.push(th[k]);
        }
    }

    println!();
    println!("containers: {runs} runs each, same host; busybox bundle");
    print_header();
    husk_true.print();
    husk_nojail.print();
    crun_true.print();
    let mut r = Row::new("idle container: husk-vmm RSS excl. guest RAM", "MiB");
    r.samples.push(vr.other_kib as f64 / 1024.0);
    r.print();
    let mut r = Row::new("idle container: guest RAM touched (of 128 MiB)", "MiB");
    r.samples.push(vr.guest_kib as f64 / 1024.0);
    r.print();
    let mut r = Row::new("idle container: monitor (husk) RSS", "MiB");
    r.samples.push(mr.other_kib as f64 / 1024.0);
    r.print();
    println!(
        "husk/crun start ratio (median): {:.1}; jail cost (median, jailed - unjailed): {:+.1} ms",
        median(&husk_true) / median(&crun_true),
        median(&husk_true) - median(&husk_nojail)
    );
    println!();
    println!(
        "| {:<28} | {:>12} | {:>12} | {:>7} |",
        "virtio-fs vs host (median)", "guest (s)", "host (s)", "ratio"
    );
    println!("|{:-<30}|{:-<14}|{:-<14}|{:-<9}|", "", "", "", "");
    for k in 0..4 {
        let (g, hh) = (median(&guest[k]), median(&host[k]));
        println!(
            "| {:<28} | {:>12.3} | {:>12.3} | {:>7.1} |",
            names[k],
            g,
            hh,
            g / hh.max(1e-6)
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::var("HUSK_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(5);
    // HUSK_BENCH_ONLY=network,podman: only those tables (boot, containers, network,
    // podman, containerd); all by default.
    let only = std::env::var("HUSK_BENCH_ONLY").unwrap_or_default();
    let want = |t: &str| only.is_empty() || only.split(',').any(|o| o.trim() == t);
    if want("boot") {
        boot(runs)?;
    }
    if want("containers") {
        containers(runs)?;
    }
    if want("network") {
        network(runs)?;
    }
    if want("podman") {
        podman(runs)?;
    }
    if want("containerd") {
        containerd(runs)?;
    }
    Ok(())
}

/// husk-vmm against QEMU's microvm: boot to the agent, RSS, shutdown.
fn boot(runs: usize) -> anyhow::Result<()> {
    let memory_mib = 128;
    let mut launch = Row::new("husk-vmm launch -> agent hello (vsock)", "ms");
    let mut guest_listen = Row::new("  guest clock at agent listen", "ms");
    let mut vmm_rss = Row::new("husk-vmm RSS excl. guest RAM (idle, after hello)", "MiB");
    let mut guest_rss = Row::new("guest RAM touched (of 128 MiB)", "MiB");
    let mut shutdown = Row::new("shutdown request -> husk-vmm exit", "ms");
    let mut qemu = Row::new("qemu -M microvm launch -> agent listening (serial)", "ms");
    let mut qemu_rss = Row::new("qemu -M microvm total RSS at that point", "MiB");

    for i in 0..runs {
        let mut s = spec();
        s.memory_mib = memory_mib;
        let mut vm = Vm::launch(&s, &vm_dir("bench")).context("husk boot")?;
        launch.samples.push(vm.launch_to_hello.as_secs_f64() * 1e3);
        guest_listen
            .samples
            .push(vm.hello.boot_to_listen_us as f64 / 1e3);
        let mut agent = vm.agent()?;
        agent.ping(0)?;
        // Jailed: the VM is the waiter's child; the waiter counts too.
        let mut r = rss(vm.vmm_pid(), &guest_regions(memory_mib))?;
        if vm.vmm_pid() != vm.pid() {
            r.other_kib += rss(vm.pid(), &[])?.other_kib;
        }
        vmm_rss.samples.push(r.other_kib as f64 / 1024.0);
        guest_rss.samples.push(r.guest_kib as f64 / 1024.0);
        let t = Instant::now();
        agent.shutdown()?;
        let st = vm.wait(Duration::from_secs(60))?;
        if !st.success() {
            bail!("husk-vmm exited with {st}");
        }
        shutdown.samples.push(t.elapsed().as_secs_f64() * 1e3);

        let (ms, mib) = qemu_boot(memory_mib)?;
        qemu.samples.push(ms);
        qemu_rss.samples.push(mib);
        eprintln!("run {}/{runs} done", i + 1);
    }

    let ratio = |a: &Row, b: &Row| median(a) / median(b);
    println!();
    println!(
        "husk boot benchmark: {runs} runs each, interleaved, same host, 1 vCPU, {memory_mib} MiB"
    );
    print_header();
    for row in [
        &launch,
        &guest_listen,
        &vmm_rss,
        &guest_rss,
        &shutdown,
        &qemu,
        &qemu_rss,
    ] {
        row.print();
    }
    println!(
        "husk/qemu-microvm start-time ratio (median): {:.2}; RSS ratio (husk excl. guest / qemu total): {:.2}",
        ratio(&launch, &qemu),
        ratio(&vmm_rss, &qemu_rss)
    );
    Ok(())
}

/// iperf3 and ping: crun on a veth, husk carrying that netns, QEMU microvm on a tap.
fn network(runs: usize) -> anyhow::Result<()> {
    let s = husk_tests::netbench::bench(runs)?;
    let row = |name: String, unit, samples: &Vec<f64>| {
        let mut r = Row::new(name, unit);
        r.samples = samples.clone();
        r
    };
    let sides = [
        ("crun (veth)", &s.crun),
        ("husk", &s.husk),
        ("qemu microvm (tap)", &s.qemu),
    ];
    let mut rows = Vec::new();
    for (what, metric, unit) in [
        ("to_guest", "iperf3 TCP host -> guest, {}", "Mb/s"),
        ("from_guest", "iperf3 TCP guest -> host, {}", "Mb/s"),
        ("rtt", "ping RTT host <-> guest, {}", "ms"),
    ] {
        for (side, samples) in sides {
            let v = match what {
                "to_guest" => &samples.to_guest,
                "from_guest" => &samples.from_guest,
                _ => &samples.rtt,
            };
            rows.push(row(metric.replace("{}", side), unit, v));
        }
    }
    let t_empty = row(
        "husk run /bin/true, joins an empty netns".into(),
        "ms",
        &s.true_empty_ns,
    );
    let t_new = row(
        "husk run /bin/true, new netns (spare NIC)".into(),
        "ms",
        &s.true_new_ns,
    );
    let t_veth = row(
        "husk run /bin/true, netns with a veth (NIC)".into(),
        "ms",
        &s.true_veth,
    );
    println!();
    println!("network: {runs} rounds, interleaved, same host; iperf3 5 s each way, 5 pings");
    for (side, samples) in sides {
        if samples.failed > 0 {
            println!(
                "({side}: {} round(s) failed and are left out)",
                samples.failed
            );
        }
    }
    print_header();
    for r in rows.iter().chain([&t_empty, &t_new, &t_veth]) {
        r.print();
    }
    let m = |i: usize| median(&rows[i]);
    println!(
        "husk/qemu (median): host->guest {:.2}, guest->host {:.2}, RTT {:.2}; husk/crun: {:.2}, {:.2}, {:.2}",
        m(1) / m(2),
        m(4) / m(5),
        m(7) / m(8),
        m(1) / m(0),
        m(4) / m(3),
        m(7) / m(6)
    );
    println!(
        "start cost over an empty netns (median): spare NIC {:+.0} ms, carried veth {:+.0} ms",
        median(&t_new) - median(&t_empty),
        median(&t_veth) - median(&t_empty)
    );
    Ok(())
}

/// containerd + ctr with husk's shim vs with runc's, same image, same run.
fn containerd(runs: usize) -> anyhow::Result<()> {
    let s = husk_tests::containerd::bench(runs)
        .map_err(|e| anyhow::anyhow!("containerd bench: {e}"))?;
    let row = |name, samples: Vec<f64>| {
        let mut r = Row::new(name, "ms");
        r.samples = samples;
        r
    };
    let husk = row("ctr run --rm IMG true, husk shim", s.run_husk);
    let runc = row("ctr run --rm IMG true, runc shim", s.run_runc);
    println!();
    println!("containerd 1.6: {runs} runs each, interleaved, same host; busybox image");
    print_header();
    for r in [&husk, &runc] {
        r.print();
    }
    println!(
        "ctr run husk/runc ratio (median): {:.1}",
        median(&husk) / median(&runc)
    );
    Ok(())
}

/// podman + conmon with husk vs with crun, same storage, same image, same run.
fn podman(runs: usize) -> anyhow::Result<()> {
    let s = husk_tests::podman::bench(runs).map_err(|e| anyhow::anyhow!("podman bench: {e}"))?;
    let row = |name, samples: Vec<f64>| {
        let mut r = Row::new(name, "ms");
        r.samples = samples;
        r
    };
    let husk = row("podman run --rm IMG true, husk", s.run_husk);
    let crun = row("podman run --rm IMG true, crun", s.run_crun);
    let exec = row(
        "podman exec CTR true, husk (container running)",
        s.exec_husk,
    );
    println!();
    println!("podman: {runs} runs each, interleaved, same host; busybox image");
    print_header();
    for r in [&husk, &crun, &exec] {
        r.print();
    }
    println!(
        "podman run husk/crun ratio (median): {:.1}",
        median(&husk) / median(&crun)
    );
    Ok(())
}
