//! `husk boot`: checks that this host can run husk microVMs.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use husk::vm::{Vm, VmSpec};

#[derive(clap::Args)]
pub struct BootArgs {
    #[arg(long)]
    kernel: PathBuf,
    #[arg(long)]
    initrd: PathBuf,
    /// husk-vmm binary (default: next to this one).
    #[arg(long)]
    vmm: Option<PathBuf>,
    #[arg(long, default_value_t = 128)]
    memory_mib: u32,
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Ping round trips to time.
    #[arg(long, default_value_t = 100)]
    pings: u32,
    /// Write the guest console to this file.
    #[arg(long)]
    console: Option<PathBuf>,
}

fn default_vmm() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find own executable")?;
    Ok(exe.with_file_name("husk-vmm"))
}

pub fn boot(a: BootArgs) -> anyhow::Result<()> {
    let vmm = match a.vmm {
        Some(v) => v,
        None => default_vmm()?,
    };
    let mut spec = VmSpec::new(vmm, a.kernel, a.initrd);
    spec.memory_mib = a.memory_mib;
    spec.vcpus = a.vcpus;
    spec.console = a.console;
    let dir = std::env::temp_dir().join(format!("husk-boot-{}", std::process::id()));
    let mut vm = Vm::launch(&spec, &dir).context("boot failed")?;
    let h = &vm.hello;
    println!(
        "husk: microVM up in {:.1} ms (husk-vmm launch -> agent hello; {} vCPU, {} MiB)",
        vm.launch_to_hello.as_secs_f64() * 1e3,
        spec.vcpus,
        spec.memory_mib
    );
    println!(
        "agent: husk-agent {} (protocol {}), kernel {}, {} CPU online, {} MiB RAM",
        h.agent_version,
        h.protocol_version,
        h.kernel_version,
        h.online_cpus,
        h.memory_total_kib / 1024
    );
    println!(
        "guest clock: /init started at +{:.1} ms, agent listening at +{:.1} ms",
        h.boot_to_init_us as f64 / 1e3,
        h.boot_to_listen_us as f64 / 1e3
    );
    let mut agent = vm.agent().context("cannot reach the agent")?;
    if a.pings > 0 {
        let mut rtts: Vec<Duration> = Vec::with_capacity(a.pings as usize);
        for seq in 0..u64::from(a.pings) {
            let t = Instant::now();
            agent.ping(seq).context("ping failed")?;
            rtts.push(t.elapsed());
        }
        rtts.sort();
        println!(
            "ping: {} round trips over vsock, median {:.3} ms, max {:.3} ms",
            rtts.len(),
            rtts[rtts.len() / 2].as_secs_f64() * 1e3,
            rtts[rtts.len() - 1].as_secs_f64() * 1e3
        );
    }
    agent.shutdown().context("shutdown request failed")?;
    let status = vm.wait(Duration::from_secs(60))?;
    let _ = std::fs::remove_dir_all(&dir);
    if !status.success() {
        bail!("husk-vmm ended with {status}");
    }
    println!("shutdown: guest reset, husk-vmm exited 0");
    Ok(())
}
