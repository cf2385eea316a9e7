//! husk-vmm command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use husk_vmm::builder;
use husk_vmm::config::{Console, FsConfig, VmConfig, VsockConfig, DEFAULT_GUEST_CID};
use husk_vmm::vstate::exit::VmExit;

/// Run one husk microVM until the guest shuts down.
///
/// Exit status: 0 when the guest shut down cleanly, 1 on a husk-vmm error or bad
/// input, 2 when the guest crashed (kernel panic, triple fault).
#[derive(Parser, Debug)]
#[command(name = "husk-vmm", version)]
struct Cli {
    /// VM description as JSON (the flags below are then not allowed).
    #[arg(long, conflicts_with_all = ["kernel", "initrd", "memory_mib", "vcpus", "vsock_uds", "console", "cmdline_extra", "fs"])]
    config: Option<PathBuf>,
    /// Uncompressed ELF vmlinux with a PVH entry point.
    #[arg(long, required_unless_present = "config")]
    kernel: Option<PathBuf>,
    /// Initramfs (uncompressed newc cpio).
    #[arg(long)]
    initrd: Option<PathBuf>,
    #[arg(long, default_value_t = 128)]
    memory_mib: u32,
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Host unix socket of the hybrid vsock device.
    #[arg(long)]
    vsock_uds: Option<PathBuf>,
    #[arg(long, default_value_t = DEFAULT_GUEST_CID)]
    guest_cid: u64,
    /// Guest serial console: `-` for stdout or a file. Off by default.
    #[arg(long)]
    console: Option<String>,
    /// Appended to the kernel command line.
    #[arg(long, default_value = "")]
    cmdline_extra: String,
    /// Share a host directory over virtio-fs: TAG=DIR[,cache=never|auto|always][,xattr] (repeatable).
    #[arg(long)]
    fs: Vec<String>,
}

fn config(cli: Cli) -> anyhow::Result<VmConfig> {
    if let Some(path) = cli.config {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        return serde_json::from_str(&text)
            .with_context(|| format!("invalid config {}", path.display()));
    }
    Ok(VmConfig {
        kernel: cli.kernel.context("--kernel is required")?,
        initrd: cli.initrd,
        memory_mib: cli.memory_mib,
        vcpus: cli.vcpus,
        vsock: cli.vsock_uds.map(|uds_path| VsockConfig {
            uds_path,
            guest_cid: cli.guest_cid,
        }),
        console: cli
            .console
            .as_deref()
            .map(Console::parse)
            .unwrap_or_default(),
        fs: cli
            .fs
            .iter()
            .map(|a| FsConfig::parse(a))
            .collect::<Result<_, _>>()?,
        cmdline_extra: cli.cmdline_extra,
    })
}

fn main() -> ExitCode {
    init_log();
    let result = config(Cli::parse()).and_then(|cfg| Ok(builder::build(&cfg)?));
    let machine = match result {
        Ok(m) => m,
        Err(e) => {
            eprintln!("husk-vmm: {e:#}");
            return ExitCode::from(1);
        }
    };
    let why = machine.run();
    match &why {
        VmExit::GuestShutdown => log::info!("guest shut down"),
        VmExit::GuestCrash(m) => eprintln!("husk-vmm: guest crashed: {m}"),
        VmExit::VmmError(m) => eprintln!("husk-vmm: {m}"),
    }
    ExitCode::from(why.status())
}

/// Minimal stderr logger; `HUSK_LOG=debug|info|warn|error` (default warn).
fn init_log() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, m: &log::Metadata) -> bool {
            // These crates log every request a (hostile) guest gets wrong at
            // error level; below debug that is noise a guest controls.
            let chatty =
                m.target().starts_with("fuse_backend_rs") || m.target().starts_with("virtio_queue");
            m.level() <= log::max_level()
                && (!chatty || log::max_level() >= log::LevelFilter::Debug)
        }
        fn log(&self, r: &log::Record) {
            if self.enabled(r.metadata()) {
                eprintln!(
                    "husk-vmm: {}: {}",
                    r.level().as_str().to_lowercase(),
                    r.args()
                );
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    let level = match std::env::var("HUSK_LOG").as_deref() {
        Ok("debug") => log::LevelFilter::Debug,
        Ok("info") => log::LevelFilter::Info,
        Ok("error") => log::LevelFilter::Error,
        _ => log::LevelFilter::Warn,
    };
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
