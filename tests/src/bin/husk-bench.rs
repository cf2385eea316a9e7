//! `make bench`: boots husk microVMs and, side by side in the same host,
//! QEMU's microvm with the same kernel and initramfs; prints a table.
//!
//! Each row is the median/min/max of `HUSK_BENCH_RUNS` (default 5) runs.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use husk::vm::Vm;
use husk_tests::{guest_regions, rss, spec, vm_dir};

struct Row {
    name: &'static str,
    unit: &'static str,
    samples: Vec<f64>,
}

impl Row {
    fn new(name: &'static str, unit: &'static str) -> Self {
        Row {
            name,
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

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::var("HUSK_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(5);
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
        let r = rss(vm.pid(), &guest_regions(memory_mib))?;
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

    let ratio = |a: &Row, b: &Row| {
        let med = |r: &Row| {
            let mut s = r.samples.clone();
            s.sort_by(|x, y| x.total_cmp(y));
            s[s.len() / 2]
        };
        med(a) / med(b)
    };
    println!();
    println!(
        "husk boot benchmark: {runs} runs each, interleaved, same host, 1 vCPU, {memory_mib} MiB"
    );
    println!(
        "| {:<52} | {:>9} | {:>9} | {:>9} | {:<4} |",
        "metric", "median", "min", "max", "unit"
    );
    println!(
        "|{:-<54}|{:-<11}|{:-<11}|{:-<11}|{:-<6}|",
        "", "", "", "", ""
    );
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
