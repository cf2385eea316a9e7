//! How the VM ended, reported by whichever thread saw it first.

use std::sync::{Mutex, PoisonError};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset itself after an orderly shutdown (`reboot`).
    GuestShutdown,
    /// The guest reset without shutting down (kernel panic with `panic=N`),
    /// triple-faulted, or KVM could not run it.
    GuestCrash(String),
    /// husk-vmm itself failed while the VM ran.
    VmmError(String),
}

impl VmExit {
    /// Process exit status of husk-vmm for this end.
    pub fn status(&self) -> u8 {
        match self {
            VmExit::GuestShutdown => 0,
            VmExit::VmmError(_) => 1,
            VmExit::GuestCrash(_) => 2,
        }
    }
}

/// First reason wins; the event loop waits on `evt`.
pub struct ExitSignal {
    pub evt: EventFd,
    reason: Mutex<Option<VmExit>>,
}

impl ExitSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitSignal {
            evt: EventFd::new(EFD_NONBLOCK)?,
            reason: Mutex::new(None),
        })
    }

    pub fn signal(&self, why: VmExit) {
        let mut r = self.reason.lock().unwrap_or_else(PoisonError::into_inner);
        if r.is_none() {
            *r = Some(why);
        }
        // If the eventfd cannot be written the counter is saturated: already signalled.
        let _ = self.evt.write(1);
    }

    pub fn reason(&self) -> Option<VmExit> {
        self.reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
