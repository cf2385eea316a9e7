//! The virtio-mmio transport (virtio 1.2, section 4.2, "version 2" registers).
//!
//! It owns what the driver configures — feature selection, device status and
//! the queues' addresses — and hands the device its queues once the driver sets
//! DRIVER_OK. Queue notifications normally never reach it: KVM turns writes to
//! `QueueNotify` into the queue's ioeventfd; interrupts go out through an irqfd.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use log::{error, warn};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{ActivatedQueue, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::BusDevice;
use crate::memory::GuestMemoryMmap;

/// Size of one device's MMIO window.
pub const MMIO_LEN: u64 = 0x1000;
/// Offset of `QueueNotify`, where KVM ioeventfds are registered.
pub const NOTIFY_REG_OFFSET: u64 = 0x50;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4b53_5548; // "HUSK"
const CONFIG_SPACE_OFFSET: u64 = 0x100;

pub const INT_USED_RING: u32 = 0x1;
pub const INT_CONFIG: u32 = 0x2;

mod status {
    pub const ACKNOWLEDGE: u32 = 0x01;
    pub const DRIVER: u32 = 0x02;
    pub const DRIVER_OK: u32 = 0x04;
    pub const FEATURES_OK: u32 = 0x08;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// The interrupt a device raises: sets a bit in `InterruptStatus` and kicks the irqfd.
pub struct MmioInterrupt {
    status: Arc<AtomicU32>,
    irq: EventFd,
}

impl MmioInterrupt {
    fn raise(&self, bit: u32) -> std::io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irq.write(1)
    }
}

impl Interrupt for MmioInterrupt {
    fn signal_used_queue(&self) -> std::io::Result<()> {
        self.raise(INT_USED_RING)
    }
    fn signal_config_change(&self) -> std::io::Result<()> {
        self.raise(INT_CONFIG)
    }
}

pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    kicks: Vec<EventFd>,
    interrupt: Arc<MmioInterrupt>,
    interrupt_status: Arc<AtomicU32>,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    activated: bool,
    bad_access_logged: bool,
    problems: MmioProblems,
}

/// What a driver got wrong, or what failed because of it. The guest can
/// repeat each at will (reset, negotiate again: four register writes), so
/// each kind is logged once per device and then only counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmioProblems {
    /// FEATURES_OK without VIRTIO_F_VERSION_1 (a legacy driver).
    pub legacy_driver: u64,
    /// DRIVER_OK with a ready queue outside guest memory or malformed.
    pub invalid_queue: u64,
    /// Activations the device (or the transport) could not do.
    pub activation_failed: u64,
}

/// Counts one occurrence; true the first time (the caller logs then).
fn first(counter: &mut u64) -> bool {
    *counter = counter.saturating_add(1);
    *counter == 1
}

#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("cannot create eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("invalid queue size {0}")]
    QueueSize(u16),
}

impl MmioTransport {
    /// `irq` is the eventfd the caller registers as an irqfd for this device's GSI.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        irq: EventFd,
    ) -> Result<Self, MmioError> {
        let sizes = lock(&device).queue_max_sizes().to_vec();
        let queues = sizes
            .iter()
            .map(|&s| Queue::new(s).map_err(|_| MmioError::QueueSize(s)))
            .collect::<Result<Vec<_>, _>>()?;
        let kicks = sizes
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(MmioError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        let interrupt_status = Arc::new(AtomicU32::new(0));
        Ok(MmioTransport {
            device,
            mem,
            queues,
            kicks,
            interrupt: Arc::new(MmioInterrupt {
                status: interrupt_status.clone(),
                irq,
            }),
            interrupt_status,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            activated: false,
            bad_access_logged: false,
            problems: MmioProblems::default(),
        })
    }

    /// How often each driver problem happened (each is logged only once).
    pub fn problems(&self) -> MmioProblems {
        self.problems
    }

    /// The eventfds KVM should signal on `QueueNotify` writes, one per queue, in order.
    pub fn queue_kicks(&self) -> &[EventFd] {
        &self.kicks
    }

    /// The device type, for the kernel command line and logs.
    pub fn device_type(&self) -> u32 {
        lock(&self.device).device_type()
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn device_features(&self) -> u64 {
        lock(&self.device).avail_features() | VIRTIO_F_VERSION_1
    }

    /// Queue registers may only change while the driver negotiates (after
    /// FEATURES_OK, before DRIVER_OK).
    fn queue_config_allowed(&self) -> bool {
        self.status & (status::FEATURES_OK | status::DRIVER_OK | status::FAILED)
            == status::FEATURES_OK
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => lock(&self.device).device_type(),
            0x0c => VENDOR_ID,
            0x10 => match self.device_features_sel {
                0 => self.device_features() as u32,
                1 => (self.device_features() >> 32) as u32,
                _ => 0,
            },
            0x34 => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            0x44 => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            0x60 => self.interrupt_status.load(Ordering::SeqCst),
            0x70 => self.status,
            0xfc => self.config_generation,
            _ => {
                self.log_bad_access("read of unknown register", offset);
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        let queue_reg = matches!(offset, 0x38 | 0x44 | 0x80..=0xa4);
        if queue_reg && !self.queue_config_allowed() {
            self.log_bad_access("queue register written outside negotiation", offset);
            return;
        }
        match offset {
            0x14 => self.device_features_sel = v,
            0x20 => self.write_driver_features(v),
            0x24 => self.driver_features_sel = v,
            0x30 => self.queue_sel = v,
            0x38 => self.with_queue(|q| q.set_size(v as u16)),
            0x44 => self.with_queue(|q| q.set_ready(v == 1)),
            0x50 => self.notify(v),
            0x64 => {
                self.interrupt_status.fetch_and(!v, Ordering::SeqCst);
            }
            0x70 => self.write_status(v),
            0x80 => self.with_queue(|q| q.set_desc_table_address(Some(v), None)),
            0x84 => self.with_queue(|q| q.set_desc_table_address(None, Some(v))),
            0x90 => self.with_queue(|q| q.set_avail_ring_address(Some(v), None)),
            0x94 => self.with_queue(|q| q.set_avail_ring_address(None, Some(v))),
            0xa0 => self.with_queue(|q| q.set_used_ring_address(Some(v), None)),
            0xa4 => self.with_queue(|q| q.set_used_ring_address(None, Some(v))),
            _ => self.log_bad_access("write of unknown register", offset),
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        match self.selected_queue() {
            Some(q) => f(q),
            None => self.log_bad_access("access to a queue that does not exist", 0x30),
        }
    }

    fn write_driver_features(&mut self, v: u32) {
        if self.status & (status::DRIVER | status::FEATURES_OK) != status::DRIVER {
            self.log_bad_access("features written outside negotiation", 0x20);
            return;
        }
        // The driver can only accept what was offered.
        let offered = self.device_features();
        let (shift, mask) = match self.driver_features_sel {
            0 => (0, 0xffff_ffffu64),
            1 => (32, 0xffff_ffff_0000_0000),
            _ => return,
        };
        self.acked_features =
            (self.acked_features & !mask) | ((u64::from(v) << shift) & mask & offered);
    }

    /// Fallback for notifications that did not go through the ioeventfd.
    fn notify(&mut self, queue: u32) {
        match self.kicks.get(queue as usize) {
            Some(kick) => {
                if let Err(e) = kick.write(1) {
                    error!("virtio-mmio: queue notify: {e}");
                }
            }
            None => self.log_bad_access("notify of a queue that does not exist", 0x50),
        }
    }

    fn write_status(&mut self, v: u32) {
        use status::*;
        if v == 0 {
            self.reset();
            return;
        }
        // Bits may only be added, one negotiation step at a time (virtio 3.1.1).
        let cur = self.status;
        let ok = v & cur == cur
            && match v & !cur {
                FAILED => true,
                ACKNOWLEDGE => cur == 0,
                DRIVER => cur == ACKNOWLEDGE,
                FEATURES_OK => cur == ACKNOWLEDGE | DRIVER,
                DRIVER_OK => cur == ACKNOWLEDGE | DRIVER | FEATURES_OK,
                _ => false,
            };
        if !ok {
            self.log_bad_access("invalid device status transition", 0x70);
            return;
        }
        match v & !cur {
            FEATURES_OK => {
                if self.acked_features & VIRTIO_F_VERSION_1 == 0 {
                    // Legacy drivers are not supported; leaving FEATURES_OK
                    // unset tells the driver so.
                    if first(&mut self.problems.legacy_driver) {
                        warn!(
                            "virtio-mmio: driver did not accept VIRTIO_F_VERSION_1 (further \
                             occurrences only counted)"
                        );
                    }
                    return;
                }
                lock(&self.device).set_acked_features(self.acked_features);
            }
            DRIVER_OK => {
                self.status = v;
                self.activate();
                return;
            }
            _ => {}
        }
        self.status = v;
    }

    fn activate(&mut self) {
        let mem = &self.mem;
        if let Some(i) = self
            .queues
            .iter()
            .position(|q| q.ready() && !q.is_valid(mem))
        {
            if first(&mut self.problems.invalid_queue) {
                error!(
                    "virtio-mmio: queue {i} is not valid; device needs reset (further \
                     occurrences only counted)"
                );
            }
            self.status |= status::DEVICE_NEEDS_RESET;
            return;
        }
        let acked = self.acked_features;
        let activated: Result<Vec<_>, String> = self
            .queues
            .iter()
            .zip(&self.kicks)
            .map(|(q, kick)| {
                let kick = kick
                    .try_clone()
                    .map_err(|e| format!("cannot clone queue eventfd: {e}"))?;
                let queue = copy_queue(q, acked).ok_or("cannot copy queue state")?;
                Ok(ActivatedQueue { queue, kick })
            })
            .collect();
        let activated = match activated {
            Ok(a) => a,
            Err(why) => return self.activation_failed(&why),
        };
        let interrupt: Arc<dyn Interrupt> = self.interrupt.clone();
        let result = lock(&self.device).activate(self.mem.clone(), interrupt, activated);
        match result {
            Ok(()) => self.activated = true,
            Err(e) => self.activation_failed(&e.to_string()),
        }
    }

    fn activation_failed(&mut self, why: &str) {
        if first(&mut self.problems.activation_failed) {
            error!("virtio-mmio: activation failed: {why} (further failures only counted)");
        }
        self.status |= status::DEVICE_NEEDS_RESET;
    }

    fn reset(&mut self) {
        if self.activated && !lock(&self.device).reset() {
            // The device keeps running on its old queues; the driver must not
            // reuse them until told otherwise.
            self.status |= status::DEVICE_NEEDS_RESET;
            let _ = self.interrupt.signal_config_change();
            return;
        }
        self.activated = false;
        self.status = 0;
        self.acked_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt_status.store(0, Ordering::SeqCst);
        for q in &mut self.queues {
            q.reset();
        }
    }

    fn log_bad_access(&mut self, what: &str, offset: u64) {
        if !self.bad_access_logged {
            self.bad_access_logged = true;
            warn!("virtio-mmio: {what} at offset {offset:#x} (further bad accesses not logged)");
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            data.fill(0);
            lock(&self.device).read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        if data.len() == 4 {
            data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
        } else {
            data.fill(0);
            self.log_bad_access("register read that is not 32 bits wide", offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            lock(&self.device).write_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(word) => self.write_reg(offset, u32::from_le_bytes(word)),
            Err(_) => self.log_bad_access("register write that is not 32 bits wide", offset),
        }
    }
}

/// The device gets its own queue with the configuration the driver wrote; the
/// transport keeps its copy for register read-back and reset.
fn copy_queue(q: &Queue, acked_features: u64) -> Option<Queue> {
    const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
    let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
    let mut n = Queue::new(q.max_size()).ok()?;
    n.set_size(q.size());
    let (lo, hi) = split(q.desc_table());
    n.set_desc_table_address(lo, hi);
    let (lo, hi) = split(q.avail_ring());
    n.set_avail_ring_address(lo, hi);
    let (lo, hi) = split(q.used_ring());
    n.set_used_ring_address(lo, hi);
    n.set_event_idx(acked_features & VIRTIO_RING_F_EVENT_IDX != 0);
    n.set_ready(q.ready());
    Some(n)
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
