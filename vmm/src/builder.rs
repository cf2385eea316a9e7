//! Turns a [`VmConfig`] into a running VM and runs it to the end.
//!
//! Order matters for start time: everything that can fail on bad input (files,
//! sizes) is checked before KVM is touched, and nothing is done twice.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use log::info;
use vm_memory::GuestAddress;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::{cpuid, layout, mptable, regs};
use crate::boot::pvh;
use crate::config::{Console, FsCache, VmConfig};
use crate::devices::legacy::{Capped, IrqTrigger, ResetRequest, Serial, CONSOLE_FILE_LIMIT, I8042};
use crate::devices::virtio::fs::{CacheMode, Fs, FsOptions};
use crate::devices::virtio::mmio::{MmioTransport, MMIO_LEN, NOTIFY_REG_OFFSET};
use crate::devices::virtio::net::{Net, Tap};
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::VirtioDevice;
use crate::devices::Bus;
use crate::memory::GuestMemoryMmap;
use crate::vstate::exit::{ExitSignal, VmExit};
use crate::vstate::vcpu::{Vcpu, VcpuContext};
use crate::vstate::vm::Vm;

/// Always on the command line. `reboot=k` makes the guest reset through the
/// i8042 (our exit path); `panic=1` turns a panic into such a reset;
/// `no_timer_check` skips the IO-APIC timer check (the PIT routing is known).
/// Only parameters the guest kernel knows: anything else is handed to /init.
const BASE_CMDLINE: &str = "reboot=k panic=1 no_timer_check quiet";

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot open {what} {path}: {err}")]
    Open {
        what: &'static str,
        path: String,
        err: std::io::Error,
    },
    #[error("kernel {path}: {err}")]
    Kernel { path: String, err: pvh::BootError },
    #[error("initrd {path}: {err}")]
    Initrd { path: String, err: pvh::BootError },
    #[error(transparent)]
    Boot(#[from] pvh::BootError),
    #[error(transparent)]
    Kvm(#[from] crate::vstate::vm::VmError),
    #[error("cannot allocate {0} MiB of guest memory: {1}")]
    Memory(u32, String),
    // Sources are printed by the caller's error chain (`{:#}`), not repeated here.
    #[error("vCPU setup")]
    Regs(#[from] regs::RegsError),
    #[error("MP table")]
    MpTable(#[from] mptable::MpTableError),
    #[error("device setup: {0}")]
    Device(String),
    #[error("console {0}: {1}")]
    Console(String, std::io::Error),
    #[error("event loop: {0}")]
    EventLoop(String),
    #[error("I/O")]
    Io(#[from] std::io::Error),
}

fn open(what: &'static str, path: &Path) -> Result<(File, u64), BuildError> {
    let err = |err| BuildError::Open {
        what,
        path: path.display().to_string(),
        err,
    };
    let f = File::open(path).map_err(err)?;
    let meta = f.metadata().map_err(err)?;
    if !meta.is_file() {
        return Err(err(std::io::Error::other("not a regular file")));
    }
    Ok((f, meta.len()))
}

pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Stops the event loop when a vCPU reports the end of the VM.
struct ExitWatcher {
    exit: Arc<ExitSignal>,
    done: bool,
}

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, _: Events, _: &mut EventOps) {
        let _ = self.exit.evt.read();
        self.done = true;
    }
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.exit.evt, EventSet::IN)) {
            self.exit
                .signal(VmExit::VmmError(format!("cannot watch exit event: {e}")));
        }
    }
}

/// Places virtio-mmio devices: one 4 KiB window and one IOAPIC pin each.
struct VirtioSlots<'a> {
    vm: &'a Vm,
    mem: &'a GuestMemoryMmap,
    next_irq: u32,
    next_addr: u64,
}

impl<'a> VirtioSlots<'a> {
    fn new(vm: &'a Vm, mem: &'a GuestMemoryMmap) -> Self {
        VirtioSlots {
            vm,
            mem,
            next_irq: layout::VIRTIO_IRQ_FIRST,
            next_addr: layout::VIRTIO_MMIO_START,
        }
    }

    /// Wires `device` to an irqfd, one ioeventfd per queue and the MMIO bus;
    /// returns the kernel command-line argument that announces it.
    fn attach(
        &mut self,
        device: Arc<Mutex<dyn VirtioDevice>>,
        bus: &mut Bus,
    ) -> Result<String, BuildError> {
        if self.next_irq > layout::IRQ_MAX {
            return Err(BuildError::Device("too many virtio devices".into()));
        }
        let (irq, addr) = (self.next_irq, self.next_addr);
        let dev_err = |e: &dyn std::fmt::Display| BuildError::Device(e.to_string());
        let irq_evt = EventFd::new(EFD_NONBLOCK)?;
        self.vm.register_irqfd(&irq_evt, irq)?;
        let transport =
            MmioTransport::new(device, self.mem.clone(), irq_evt).map_err(|e| dev_err(&e))?;
        for (i, kick) in transport.queue_kicks().iter().enumerate() {
            self.vm
                .register_mmio_notify(kick, addr + NOTIFY_REG_OFFSET, i as u32)?;
        }
        bus.insert(Arc::new(Mutex::new(transport)), addr, MMIO_LEN)
            .map_err(|e| dev_err(&e))?;
        self.next_irq += 1;
        self.next_addr += MMIO_LEN;
        Ok(format!("virtio_mmio.device=4K@{addr:#x}:{irq}"))
    }
}

/// The kinds of husk-vmm threads; each gets its own seccomp filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: event loop (vsock device and exit watcher).
    Vmm,
    /// One per vCPU: `KVM_RUN` and the device emulation it dispatches.
    Vcpu,
    /// One per virtio-fs device: all FUSE work.
    FsWorker,
    /// One per virtio-net device: its own event loop (queues and tap).
    NetWorker,
}

/// A virtio-net device's event loop, run on its own thread.
type NetLoop = EventManager<Arc<Mutex<Net>>>;

/// Run by each thread before it does any work (the jail installs the
/// thread's seccomp filter here). An error stops the VM before the guest runs.
pub type ThreadHook = Arc<dyn Fn(ThreadKind) -> std::io::Result<()> + Send + Sync>;

/// A built VM, ready to run.
pub struct Machine {
    event_manager: EventManager<Subscriber>,
    exit: Arc<ExitSignal>,
    watcher: Arc<Mutex<ExitWatcher>>,
    vcpus: Vec<Vcpu>,
    fs_devices: Vec<Arc<Mutex<Fs>>>,
    net_loops: Vec<NetLoop>,
    vsock_path: Option<std::path::PathBuf>,
}

pub fn build(cfg: &VmConfig) -> Result<Machine, BuildError> {
    cfg.validate()?;
    // First, before anything is opened: a tap fd number the runtime did not
    // pass must not name one of our own files.
    let taps = cfg
        .net
        .iter()
        .map(|n| Tap::from_inherited(n.tap_fd))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BuildError::Device(format!("virtio-net: {e}")))?;
    let (mut kernel, _) = open("kernel", &cfg.kernel)?;
    let mut initrd = cfg
        .initrd
        .as_deref()
        .map(|p| open("initrd", p).map(|f| (p, f)))
        .transpose()?;
    let console_out: Option<Box<dyn Write + Send>> = match &cfg.console {
        Console::Off => None,
        Console::Stdout => Some(Box::new(std::io::stdout())),
        Console::File(p) => {
            let f = File::create(p).map_err(|e| BuildError::Console(p.display().to_string(), e))?;
            Some(Box::new(Capped::new(f, CONSOLE_FILE_LIMIT)))
        }
    };

    let mem_size = u64::from(cfg.memory_mib) << 20;
    let ranges: Vec<(GuestAddress, usize)> = layout::ram_ranges(mem_size)
        .into_iter()
        .map(|(a, s)| (GuestAddress(a), s as usize))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges)
        .map_err(|e| BuildError::Memory(cfg.memory_mib, e.to_string()))?;

    let loaded = pvh::load_kernel(&mem, &mut kernel).map_err(|err| BuildError::Kernel {
        path: cfg.kernel.display().to_string(),
        err,
    })?;
    let initrd = match initrd.as_mut() {
        Some((path, (file, size))) => Some((
            pvh::load_initrd(&mem, file, *size, loaded.end).map_err(|err| BuildError::Initrd {
                path: path.display().to_string(),
                err,
            })?,
            *size,
        )),
        None => None,
    };

    let vm = Vm::new()?;
    vm.register_memory(&mem)?;

    let exit = Arc::new(ExitSignal::new()?);
    let reset = ResetRequest::default();
    let mut io_bus = Bus::new();
    let mut mmio_bus = Bus::new();
    let mut cmdline = pvh::new_cmdline(BASE_CMDLINE)?;
    let cmd_err = |e: linux_loader::cmdline::Error| pvh::BootError::Cmdline(e.to_string());
    let dev_err = |e: &dyn std::fmt::Display| BuildError::Device(e.to_string());

    io_bus
        .insert(
            Arc::new(Mutex::new(I8042::new(reset.clone()))),
            I8042::PORT,
            I8042::LEN,
        )
        .map_err(|e| dev_err(&e))?;
    match console_out {
        Some(out) => {
            let irq = EventFd::new(EFD_NONBLOCK)?;
            vm.register_irqfd(&irq, Serial::IRQ)?;
            let serial = Serial::new(IrqTrigger(irq), out);
            io_bus
                .insert(Arc::new(Mutex::new(serial)), Serial::PORT, Serial::LEN)
                .map_err(|e| dev_err(&e))?;
            cmdline.insert_str("console=ttyS0").map_err(cmd_err)?;
        }
        // Without a UART the kernel would still probe the legacy ports.
        None => cmdline.insert_str("8250.nr_uarts=0").map_err(cmd_err)?,
    }

    let mut event_manager =
        EventManager::<Subscriber>::new().map_err(|e| BuildError::EventLoop(e.to_string()))?;
    let mut virtio = VirtioSlots::new(&vm, &mem);
    let mut vsock_path = None;
    if let Some(vcfg) = &cfg.vsock {
        let vsock = Vsock::new(vcfg.guest_cid, vcfg.uds_path.clone()).map_err(|e| dev_err(&e))?;
        let vsock = Arc::new(Mutex::new(vsock));
        vsock_path = Some(vcfg.uds_path.clone());
        let arg = virtio.attach(vsock.clone(), &mut mmio_bus)?;
        cmdline.insert_str(arg).map_err(cmd_err)?;
        event_manager.add_subscriber(vsock);
    }
    // virtio-fs does its FUSE work on its own worker thread: nothing for the event loop.
    let mut fs_devices = Vec::new();
    for f in &cfg.fs {
        let opts = FsOptions {
            cache: match f.cache {
                FsCache::Never => CacheMode::Never,
                FsCache::Auto => CacheMode::Auto,
                FsCache::Always => CacheMode::Always,
            },
            xattr: f.xattr,
            ..FsOptions::default()
        };
        let budget = crate::devices::virtio::fs::fd_budget(cfg.fs.len());
        let fs = Fs::with_fd_budget(&f.tag, f.shared_dir.clone(), opts, budget).map_err(|e| {
            BuildError::Device(format!(
                "virtio-fs {} ({}): {e}",
                f.tag,
                f.shared_dir.display()
            ))
        })?;
        let fs = Arc::new(Mutex::new(fs));
        fs_devices.push(fs.clone());
        let arg = virtio.attach(fs, &mut mmio_bus)?;
        cmdline.insert_str(arg).map_err(cmd_err)?;
    }
    // The guest finds each NIC by its MAC: the order does not matter.
    let mut net_loops = Vec::new();
    for (n, tap) in cfg.net.iter().zip(taps) {
        let net = Net::new(tap, n.mac, n.mtu).map_err(|e| dev_err(&e))?;
        let net = Arc::new(Mutex::new(net));
        let arg = virtio.attach(net.clone(), &mut mmio_bus)?;
        cmdline.insert_str(arg).map_err(cmd_err)?;
        let mut lp = NetLoop::new().map_err(|e| BuildError::EventLoop(e.to_string()))?;
        lp.add_subscriber(net);
        net_loops.push(lp);
    }
    if !cfg.cmdline_extra.trim().is_empty() {
        cmdline
            .insert_str(cfg.cmdline_extra.trim())
            .map_err(cmd_err)?;
    }

    pvh::write_boot_params(&mem, &cmdline, initrd)?;
    mptable::setup(&mem, cfg.vcpus)?;
    regs::write_boot_tables(&mem)?;

    let ctx = VcpuContext {
        io_bus: Arc::new(io_bus),
        mmio_bus: Arc::new(mmio_bus),
        reset,
        exit: exit.clone(),
    };
    let supported = vm
        .kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| crate::vstate::vm::VmError::Ioctl("KVM_GET_SUPPORTED_CPUID", e))?;
    let caps = cpuid::HostCaps {
        tsc_deadline: vm.kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer),
    };
    let mut vcpus = Vec::with_capacity(cfg.vcpus.into());
    for id in 0..cfg.vcpus {
        let fd = vm
            .fd
            .create_vcpu(u64::from(id))
            .map_err(|e| crate::vstate::vm::VmError::Ioctl("KVM_CREATE_VCPU", e))?;
        let mut c = supported.clone();
        cpuid::filter(&mut c, id, cfg.vcpus, caps);
        fd.set_cpuid2(&c)
            .map_err(|e| crate::vstate::vm::VmError::Ioctl("KVM_SET_CPUID2", e))?;
        regs::setup_common(&fd)?;
        if id == 0 {
            regs::setup_boot_vcpu(&fd, loaded.entry.0)?;
        }
        vcpus.push(Vcpu::new(id, fd, ctx.clone()));
    }

    let watcher = Arc::new(Mutex::new(ExitWatcher {
        exit: exit.clone(),
        done: false,
    }));
    event_manager.add_subscriber(watcher.clone());
    info!(
        "VM built: {} vCPUs, {} MiB, cmdline {:?}",
        cfg.vcpus,
        cfg.memory_mib,
        cmdline
            .as_cstring()
            .map(|c| c.into_string().unwrap_or_default())
            .unwrap_or_default()
    );
    // The VM object (and with it every KVM fd) must live as long as the vCPUs:
    // it is leaked on purpose, the process ends with the VM.
    std::mem::forget(vm);
    std::mem::forget(mem);
    Ok(Machine {
        event_manager,
        exit,
        watcher,
        vcpus,
        fs_devices,
        net_loops,
        vsock_path,
    })
}

impl Machine {
    /// Starts the vCPUs and serves devices until the guest ends.
    pub fn run(self) -> VmExit {
        self.run_with(None)
    }

    /// Leave the vsock socket in place at the end: jailed, its directory is
    /// read-only and the waiter outside the jail removes it.
    pub fn keep_vsock_socket(&mut self) {
        self.vsock_path = None;
    }

    /// Adds an event-loop subscriber (e.g. a test hook) before the VM runs.
    pub fn add_subscriber(&mut self, s: Subscriber) {
        self.event_manager.add_subscriber(s);
    }

    /// Like [`Machine::run`], with `hook` run first on every thread. Every
    /// thread the VMM will ever have is started here, before the guest runs:
    /// the fs workers (parked until their device is activated), the net
    /// workers (their loops wait for activation), then the vCPUs, which wait until every thread's hook succeeded; the main
    /// thread's hook runs last, so it may forbid creating threads.
    pub fn run_with(mut self, hook: Option<ThreadHook>) -> VmExit {
        for fs in &self.fs_devices {
            let on_start = hook.clone().map(|h| {
                Box::new(move || h(ThreadKind::FsWorker)) as crate::devices::virtio::fs::ThreadStart
            });
            let started = fs
                .lock()
                .map_err(|_| std::io::Error::other("virtio-fs device lock poisoned"))
                .and_then(|mut f| f.start_worker_thread(on_start));
            if let Err(e) = started {
                return self.finish(VmExit::VmmError(format!("cannot start fs-worker: {e}")));
            }
        }
        for (i, lp) in std::mem::take(&mut self.net_loops).into_iter().enumerate() {
            if let Err(e) = spawn_net_worker(i, lp, hook.clone(), self.exit.clone()) {
                return self.finish(VmExit::VmmError(format!("cannot start net-worker: {e}")));
            }
        }
        let vcpus = std::mem::take(&mut self.vcpus);
        let go = Arc::new(std::sync::Barrier::new(vcpus.len() + 1));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let count = vcpus.len();
        for vcpu in vcpus {
            if let Err(e) = vcpu.spawn(hook.clone(), ready_tx.clone(), go.clone()) {
                return self.finish(VmExit::VmmError(format!("cannot start vCPU thread: {e}")));
            }
        }
        for _ in 0..count {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                // The vCPUs wait on `go` forever; the process ends with the VM.
                Ok(Err(e)) => return self.finish(VmExit::VmmError(format!("vCPU thread: {e}"))),
                Err(_) => return self.finish(VmExit::VmmError("vCPU thread died".into())),
            }
        }
        if let Some(h) = &hook {
            if let Err(e) = h(ThreadKind::Vmm) {
                return self.finish(VmExit::VmmError(format!("main thread: {e}")));
            }
        }
        go.wait();
        loop {
            if let Err(e) = self.event_manager.run() {
                return self.finish(VmExit::VmmError(format!("event loop: {e}")));
            }
            let done = self.watcher.lock().map(|w| w.done).unwrap_or(true);
            if done {
                let why = self
                    .exit
                    .reason()
                    .unwrap_or(VmExit::VmmError("VM ended for no recorded reason".into()));
                return self.finish(why);
            }
        }
    }

    /// Number of threads [`Machine::run_with`] starts besides the main thread
    /// and the vCPUs (fs and net workers).
    pub fn worker_threads(&self) -> usize {
        self.fs_devices.len() + self.net_loops.len()
    }

    fn finish(&self, why: VmExit) -> VmExit {
        if let Some(p) = &self.vsock_path {
            let _ = std::fs::remove_file(p);
        }
        why
    }
}

/// Starts the `net-worker` thread of one virtio-net device; returns once
/// `hook` ran there, with its error. The loop runs until the process ends;
/// if it fails, the VM ends.
fn spawn_net_worker(
    index: usize,
    mut lp: NetLoop,
    hook: Option<ThreadHook>,
    exit: Arc<ExitSignal>,
) -> std::io::Result<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    std::thread::Builder::new()
        .name(format!("net-worker{index}"))
        .spawn(move || {
            let started = hook.map_or(Ok(()), |h| h(ThreadKind::NetWorker));
            let ok = started.is_ok();
            let _ = ready_tx.send(started);
            if !ok {
                return;
            }
            loop {
                if let Err(e) = lp.run() {
                    exit.signal(VmExit::VmmError(format!(
                        "net-worker{index} event loop: {e}"
                    )));
                    return;
                }
            }
        })?;
    ready_rx
        .recv()
        .map_err(|_| std::io::Error::other("net-worker thread ended while starting"))?
}
