//! Virtio devices and the virtio-mmio transport that exposes them to the guest.
//!
//! The split follows Firecracker: the transport (`mmio`) owns register state and
//! queue configuration; a device (`vsock`, ...) only sees activated queues, guest
//! memory and an [`Interrupt`] handle, and does its queue work on the VMM's event
//! loop (it is an `event_manager::MutEventSubscriber`).

pub mod common;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod vsock;

use std::io;
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemoryMmap;
pub use common::{Active, DeviceCommon, Kick};

/// Feature bit every modern (non-legacy) device offers.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Virtio device ids (virtio spec 5).
pub const TYPE_NET: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_NET;
pub const TYPE_VSOCK: u32 = 19;
pub const TYPE_FS: u32 = 26;

/// How a device tells the guest that something happened.
pub trait Interrupt: Send + Sync {
    /// The device placed buffers in a used ring.
    fn signal_used_queue(&self) -> io::Result<()>;
    /// The device configuration space changed.
    fn signal_config_change(&self) -> io::Result<()>;
}

/// A queue the driver has set up and enabled, with the eventfd that KVM signals
/// (ioeventfd) when the driver writes its index to QueueNotify.
pub struct ActivatedQueue {
    pub queue: Queue,
    pub kick: EventFd,
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("expected {expected} queues, got {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("device activation failed: {0}")]
    Device(String),
    #[error("I/O error during activation: {0}")]
    Io(#[from] io::Error),
}

/// The checks every device makes on activation: the queue count it expects,
/// and each queue set up and inside guest memory.
pub fn check_activation(
    device: &str,
    expected: usize,
    queues: &[ActivatedQueue],
    mem: &GuestMemoryMmap,
) -> Result<(), ActivateError> {
    use virtio_queue::QueueT;
    if queues.len() != expected {
        return Err(ActivateError::QueueCount {
            expected,
            got: queues.len(),
        });
    }
    match queues.iter().position(|q| !q.queue.is_valid(mem)) {
        Some(i) => Err(ActivateError::Device(format!(
            "{device} queue {i} is invalid"
        ))),
        None => Ok(()),
    }
}

/// Reads a device's read-only config space at a guest-chosen `offset`: bytes past the end
/// (or an offset beyond it) are left untouched, as the transport expects.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    let Some(rest) = usize::try_from(offset).ok().and_then(|o| config.get(o..)) else {
        return;
    };
    let n = data.len().min(rest.len());
    data[..n].copy_from_slice(&rest[..n]);
}

/// A virtio device model, independent of the transport.
///
/// Called from vCPU threads (through the transport) and, for queue work, from the
/// event loop; implementors are shared as `Arc<Mutex<_>>`. What all devices keep
/// alike lives in their [`DeviceCommon`], which the defaults below read.
pub trait VirtioDevice: Send {
    fn common(&self) -> &DeviceCommon;
    fn common_mut(&mut self) -> &mut DeviceCommon;
    /// Virtio device id (`TYPE_*`).
    fn device_type(&self) -> u32 {
        self.common().device_type()
    }
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16] {
        self.common().queue_max_sizes()
    }
    /// Feature bits offered to the driver.
    fn avail_features(&self) -> u64 {
        self.common().avail_features()
    }
    /// Features the driver acknowledged (a subset of `avail_features`, enforced by the transport).
    fn set_acked_features(&mut self, features: u64) {
        self.common_mut().set_acked_features(features);
    }
    /// Read device config space at `offset`; out-of-range bytes are left untouched.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.common().read_config(offset, data);
    }
    /// Write device config space. Our devices' config is read-only (a virtio-net MAC
    /// is writable only without VIRTIO_F_VERSION_1): the write is ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "{}: ignoring guest write of {} bytes to read-only config at {offset}",
            self.common().name(),
            data.len()
        );
    }
    /// The driver set DRIVER_OK: start processing queues.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActivatedQueue>,
    ) -> Result<(), ActivateError>;
    /// The driver reset the device. Returns false if the device cannot be reset
    /// (the transport then marks it as needing reset).
    fn reset(&mut self) -> bool {
        false
    }
}
