//! A vCPU thread: runs the guest and routes its port/MMIO exits to the buses.

use std::sync::{mpsc, Arc, Barrier};
use std::thread::JoinHandle;

use kvm_ioctls::{VcpuExit, VcpuFd};
use log::{error, warn};

use super::exit::{ExitSignal, VmExit};
use crate::arch::regs;
use crate::builder::{ThreadHook, ThreadKind};
use crate::devices::legacy::ResetRequest;
use crate::devices::Bus;

/// Everything a vCPU thread shares with the rest of the VM.
#[derive(Clone)]
pub struct VcpuContext {
    pub io_bus: Arc<Bus>,
    pub mmio_bus: Arc<Bus>,
    pub reset: ResetRequest,
    pub exit: Arc<ExitSignal>,
}

pub struct Vcpu {
    pub id: u8,
    pub fd: VcpuFd,
    ctx: VcpuContext,
    unhandled_logged: bool,
}

impl Vcpu {
    pub fn new(id: u8, fd: VcpuFd, ctx: VcpuContext) -> Self {
        Vcpu {
            id,
            fd,
            ctx,
            unhandled_logged: false,
        }
    }

    /// Starts the vCPU thread. It runs `hook` (its seccomp filter) first,
    /// reports the result on `ready`, then waits on `go` before it enters
    /// the guest, so no guest instruction runs before every thread is caged.
    pub fn spawn(
        mut self,
        hook: Option<ThreadHook>,
        ready: mpsc::Sender<std::io::Result<()>>,
        go: Arc<Barrier>,
    ) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("vcpu{}", self.id))
            .spawn(move || {
                let started = hook.map_or(Ok(()), |h| h(ThreadKind::Vcpu));
                let ok = started.is_ok();
                let _ = ready.send(started);
                drop(ready);
                if !ok {
                    return;
                }
                go.wait();
                let why = self.run();
                self.ctx.exit.signal(why);
            })
    }

    fn run(&mut self) -> VmExit {
        loop {
            let exit = match self.fd.run() {
                Ok(exit) => exit,
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) => return VmExit::VmmError(format!("vcpu{}: KVM_RUN: {e}", self.id)),
            };
            let ctx = &self.ctx;
            let mut what = None;
            let unhandled = match exit {
                VcpuExit::IoIn(port, data) => {
                    what = Some(("port read", u64::from(port)));
                    if !ctx.io_bus.read(u64::from(port), data) {
                        // Nothing there: floating bus.
                        data.fill(0xff);
                    }
                    false
                }
                VcpuExit::IoOut(port, data) => {
                    what = Some(("port write", u64::from(port)));
                    let handled = ctx.io_bus.write(u64::from(port), data);
                    if ctx.reset.take() {
                        return self.reset_exit();
                    }
                    // Port 0x80 is the POST/delay port: writes there are expected.
                    !handled && port != 0x80
                }
                VcpuExit::MmioRead(addr, data) => {
                    what = Some(("MMIO read", addr));
                    if !ctx.mmio_bus.read(addr, data) {
                        data.fill(0xff);
                        true
                    } else {
                        false
                    }
                }
                VcpuExit::MmioWrite(addr, data) => {
                    what = Some(("MMIO write", addr));
                    !ctx.mmio_bus.write(addr, data)
                }
                VcpuExit::Shutdown => {
                    return VmExit::GuestCrash(format!(
                        "vcpu{}: triple fault ({})",
                        self.id,
                        self.fault_state()
                    ))
                }
                VcpuExit::Hlt => return VmExit::GuestCrash(format!("vcpu{}: halted", self.id)),
                VcpuExit::FailEntry(reason, cpu) => {
                    return VmExit::GuestCrash(format!(
                        "vcpu{}: KVM entry failed, reason {reason:#x} on host cpu {cpu}",
                        self.id
                    ))
                }
                VcpuExit::InternalError => {
                    return VmExit::GuestCrash(format!("vcpu{}: KVM internal error", self.id))
                }
                VcpuExit::SystemEvent(kind, _) => {
                    return VmExit::GuestCrash(format!("vcpu{}: system event {kind}", self.id))
                }
                other => {
                    if !self.unhandled_logged {
                        warn!("vcpu{}: unexpected exit {other:?}", self.id);
                    }
                    true
                }
            };
            if unhandled {
                let (kind, addr) = what.unwrap_or(("access", 0));
                // Probing for absent legacy hardware is normal; say so once,
                // and each address at debug level.
                log::debug!("vcpu{}: {kind} at {addr:#x}: no device", self.id);
                if !self.unhandled_logged {
                    self.unhandled_logged = true;
                    log::info!(
                        "vcpu{}: {kind} at {addr:#x}: no device there (further ones at debug level)",
                        self.id
                    );
                }
            }
        }
    }

    /// Where the vCPU was when it died, for the crash message: enough to tell
    /// an early-boot fault (no IDT yet) from a broken kernel later on.
    fn fault_state(&self) -> String {
        match (self.fd.get_regs(), self.fd.get_sregs()) {
            // On AMD, KVM INITs the vCPU when it intercepts a shutdown (the VMCB is
            // undefined after one), so what is left is the reset state, not the fault's.
            (Ok(r), Ok(s)) if r.rip == 0xfff0 && s.cs.selector == 0xf000 => {
                "registers not kept: KVM reset the vCPU on the shutdown (AMD); \
                 the kvm:kvm_exit trace event has the faulting rip"
                    .to_string()
            }
            (Ok(r), Ok(s)) => format!(
                "rip {:#x} rsp {:#x} cs {:#x} cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x} idt {:#x}/{:#x}",
                r.rip, r.rsp, s.cs.selector, s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.idt.base, s.idt.limit
            ),
            _ => "registers unreadable".to_string(),
        }
    }

    /// The guest reset through the keyboard controller. Whether it shut down
    /// cleanly first is read off this vCPU's local APIC (see
    /// [`regs::lapic_was_shut_down`]).
    fn reset_exit(&self) -> VmExit {
        match regs::lapic_was_shut_down(&self.fd) {
            Some(true) => VmExit::GuestShutdown,
            Some(false) => {
                VmExit::GuestCrash("guest reset without shutting down (kernel panic?)".to_string())
            }
            None => {
                error!("vcpu{}: cannot read local APIC after reset", self.id);
                VmExit::GuestCrash("guest reset; shutdown state unknown".to_string())
            }
        }
    }
}
