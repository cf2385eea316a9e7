//! husk-vmm command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use std::sync::{Arc, Mutex};

use husk_vmm::builder::{self, ThreadHook, ThreadKind};
use husk_vmm::config::{Console, FsConfig, NetConfig, VmConfig, VsockConfig, DEFAULT_GUEST_CID};
use husk_vmm::jail::{self, mount::Jail, seccomp, testhook::Forbidden, testhook::Trigger};
use husk_vmm::vstate::exit::VmExit;

/// Run one husk microVM until the guest shuts down.
///
/// Exit status: 0 when the guest shut down cleanly, 1 on a husk-vmm error or bad
/// input, 2 when the guest crashed (kernel panic, triple fault). Runs jailed
/// (see `husk_vmm::jail` and docs/security.md) unless --no-jail.
#[derive(Parser, Debug)]
#[command(name = "husk-vmm", version)]
struct Cli {
    /// VM description as JSON (the flags below are then not allowed).
    #[arg(long, conflicts_with_all = ["kernel", "initrd", "memory_mib", "vcpus", "vsock_uds", "console", "cmdline_extra", "fs", "net"])]
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
    /// A virtio-net device on an inherited tap fd (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR):
    /// fd=N,mac=XX:XX:XX:XX:XX:XX[,mtu=M] (repeatable).
    #[arg(long)]
    net: Vec<String>,
    /// DEBUGGING ONLY: run without the jail (namespaces, pivot_root, seccomp,
    /// capability and rlimit limits). The guest is then one VMM bug away from the host.
    #[arg(long)]
    no_jail: bool,
    /// Directory the jail root is mounted on (default: `jail` next to the
    /// --vsock-uds socket). Seen empty from the host.
    #[arg(long)]
    jail_dir: Option<PathBuf>,
    /// Test hook (see husk_vmm::jail::testhook): on SIGUSR2, attempt a
    /// forbidden syscall (execve|open); procfd: the fs worker probes for the
    /// host's procfs at its start. Passed only by the runtime, only when
    /// its environment has HUSK_VMM_TEST_TRIGGER.
    #[arg(long, hide = true)]
    test_forbidden_syscall: Option<Forbidden>,
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
        net: cli
            .net
            .iter()
            .map(|a| NetConfig::parse(a))
            .collect::<Result<_, _>>()?,
        cmdline_extra: cli.cmdline_extra,
    })
}

fn main() -> ExitCode {
    init_log();
    match run(Cli::parse()) {
        Ok(why) => {
            match &why {
                VmExit::GuestShutdown => log::info!("guest shut down"),
                VmExit::GuestCrash(m) => eprintln!("husk-vmm: guest crashed: {m}"),
                VmExit::VmmError(m) => eprintln!("husk-vmm: {m}"),
            }
            ExitCode::from(why.status())
        }
        Err(e) => {
            eprintln!("husk-vmm: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<VmExit> {
    let (no_jail, jail_dir, trigger) = (
        cli.no_jail,
        cli.jail_dir.clone(),
        cli.test_forbidden_syscall,
    );
    let mut cfg = config(cli)?;
    if no_jail {
        for _ in 0..3 {
            eprintln!(
                "husk-vmm: WARNING: --no-jail: running WITHOUT the jail (no namespaces, no \
                 pivot_root, no seccomp, all capabilities). Debugging only: a guest that escapes \
                 its kernel owns this host."
            );
        }
        return Ok(builder::build(&cfg)?.run());
    }
    let started = std::time::Instant::now();
    // Before anything is opened: no inherited descriptor but the taps named
    // by --net (checked first: which fds to keep depends on it), no environment.
    cfg.validate()?;
    let taps: Vec<i32> = cfg.net.iter().map(|n| n.tap_fd).collect();
    jail::fds::close_inherited(&taps)?;
    jail::clear_env();
    // The vsock socket directory is bound into the jail at its host path;
    // the socket path must be absolute, since the cwd changes.
    let mut binds = Vec::new();
    if let Some(v) = cfg.vsock.as_mut() {
        let name = v
            .uds_path
            .file_name()
            .context("--vsock-uds has no file name")?
            .to_owned();
        let parent = match v.uds_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let dir = std::fs::canonicalize(&parent)
            .with_context(|| format!("vsock socket directory {}", parent.display()))?;
        v.uds_path = dir.join(name);
        binds.push(dir);
    }
    // Without a socket directory or --jail-dir: a directory of our own in
    // /tmp, which the waiter removes at the end.
    let own_dir = (jail_dir.is_none() && binds.is_empty())
        .then(|| PathBuf::from(format!("/tmp/husk-vmm-jail.{}", std::process::id())));
    let jail_dir = jail_dir
        .or_else(|| binds.first().map(|d| d.join("jail")))
        .or_else(|| own_dir.clone())
        .context("no jail directory")?;
    // The waiter removes the socket: in the jail its directory is read-only.
    let cleanup = cfg
        .vsock
        .iter()
        .map(|v| v.uds_path.clone())
        .chain(own_dir)
        .collect();
    // From here on we are PID 1 of a new pid namespace (the waiter stays behind).
    jail::pidns::split(trigger.map(|_| jail::testhook::TRIGGER_SIGNAL), cleanup)?;
    cfg.validate()?;
    let jail = Jail::prepare(&mut cfg, &jail_dir, &binds)?;
    let probe_procfd = trigger == Some(Forbidden::Procfd);
    let trigger = trigger
        .filter(|t| *t != Forbidden::Procfd)
        .map(Trigger::new)
        .transpose()?;
    let mut machine = builder::build(&cfg)?;
    machine.keep_vsock_socket();
    // Namespaces and capabilities are per thread: nothing may run yet.
    let threads = jail::thread_count().context("cannot count threads")?;
    anyhow::ensure!(
        threads == 1,
        "jail: {threads} threads before the jail, expected 1"
    );
    let filters = seccomp::Filters::new(&cfg)?;
    let keep = if cfg.fs.is_empty() {
        caps::CapsHashSet::new()
    } else {
        jail::caps::fs_caps(cfg.fs.iter().any(|f| f.xattr))
    };
    jail.enter()?;
    let vmm_threads = 1 + u64::from(cfg.vcpus) + machine.worker_threads() as u64;
    jail::rlimits::apply(jail::rlimits::Limits::for_vmm(vmm_threads))?;
    jail::no_new_privs()?;
    jail::not_dumpable()?;
    jail::caps::keep_only(&keep)?;
    if let Some(t) = trigger {
        machine.add_subscriber(Arc::new(Mutex::new(t)));
    }
    log::info!(
        "jailed in {:?}: pid namespace, mount/ipc/uts/net namespaces, pivot_root {}, \
         capabilities {:#x}, seccomp per thread",
        started.elapsed(),
        jail_dir.display(),
        jail::caps::mask(&keep)
    );
    let hook: ThreadHook = Arc::new(move |kind| {
        filters.install(kind)?;
        if probe_procfd && kind == ThreadKind::FsWorker {
            jail::testhook::probe_procfd();
        }
        Ok(())
    });
    Ok(machine.run_with(Some(hook)))
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
