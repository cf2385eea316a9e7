//! What every virtio device keeps the same way: its features, queue sizes and read-only
//! config space; once the driver set DRIVER_OK, the activated queues with their kick
//! eventfds; and the hand-over between the vCPU thread that activates or resets the device
//! and the event loop that serves its queues (which the vCPU thread cannot touch).
//!
//! A device holds one [`DeviceCommon`] and returns it from [`VirtioDevice::common`]; the
//! transport-facing methods then come from the trait's defaults, and the device adds only
//! what is its own (its queue work, and what activation and reset mean for its backend).

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{check_activation, read_config_bytes, ActivateError, ActivatedQueue, Interrupt};
use crate::memory::GuestMemoryMmap;

/// A device's queues once the driver set DRIVER_OK.
pub struct Active {
    pub mem: GuestMemoryMmap,
    pub interrupt: Arc<dyn Interrupt>,
    /// In the device's queue order.
    pub queues: Vec<Queue>,
    /// `kicks[i]` is signalled (ioeventfd) when the driver notifies queue `i`.
    pub kicks: Vec<EventFd>,
}

/// The state every device model shares (see the module docs).
pub struct DeviceCommon {
    name: String,
    device_type: u32,
    avail_features: u64,
    acked_features: u64,
    queue_max_sizes: Vec<u16>,
    /// The read-only config space; a device may change it (then it signals a config
    /// change itself).
    pub config: Vec<u8>,
    pub active: Option<Active>,
    /// Signalled by activation and reset (vCPU thread) for the event loop.
    pub state_evt: EventFd,
    /// Whether the active queues' kick eventfds are in the event loop.
    kicks_registered: bool,
    /// Kick eventfds of reset activations that are still in the event loop's epoll:
    /// it removes them before they are closed.
    retired_kicks: Vec<EventFd>,
}

impl DeviceCommon {
    /// `name` prefixes log lines; `queue_max_sizes.len()` is the number of queues.
    pub fn new(
        name: impl Into<String>,
        device_type: u32,
        avail_features: u64,
        queue_max_sizes: &[u16],
        config: Vec<u8>,
    ) -> io::Result<DeviceCommon> {
        Ok(DeviceCommon {
            name: name.into(),
            device_type,
            avail_features,
            acked_features: 0,
            queue_max_sizes: queue_max_sizes.to_vec(),
            config,
            active: None,
            state_evt: EventFd::new(EFD_NONBLOCK)?,
            kicks_registered: false,
            retired_kicks: Vec::new(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn device_type(&self) -> u32 {
        self.device_type
    }

    pub fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    pub fn avail_features(&self) -> u64 {
        self.avail_features
    }

    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Keeps only what was offered.
    pub fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    pub fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    /// Interrupts the guest (once) for the used rings of `queues`. Without
    /// VIRTIO_RING_F_EVENT_IDX (not offered) a notification is always needed, but
    /// asking also resets each queue's "added since last check" count.
    pub fn signal_used(&mut self, queues: &[usize]) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut needed = false;
        for &q in queues {
            if let Some(queue) = a.queues.get_mut(q) {
                needed |= queue.needs_notification(&a.mem).unwrap_or(true);
            }
        }
        if needed {
            if let Err(e) = a.interrupt.signal_used_queue() {
                log::error!("{}: cannot signal the used queue: {e}", self.name);
            }
        }
    }

    /// Kicks queue `q` from the device side: after a budget ran out, the event loop
    /// serves its other sources first and then comes back to the queue.
    pub fn rekick(&self, q: usize) {
        let kick = self.active.as_ref().and_then(|a| a.kicks.get(q));
        if let Some(Err(e)) = kick.map(|k| k.write(1)) {
            log::error!("{}: cannot re-kick queue {q}: {e}", self.name);
        }
    }

    /// Whether the active queues' kicks are watched by the event loop.
    pub fn kicks_registered(&self) -> bool {
        self.kicks_registered
    }

    /// The retired kicks not yet removed from the event loop.
    pub fn retired_kicks(&self) -> &[EventFd] {
        &self.retired_kicks
    }

    /// Checks `queues` (see [`check_activation`]) and splits them into queues and kicks,
    /// for a device that hands them to its own worker.
    pub fn take_queues(
        &self,
        mem: &GuestMemoryMmap,
        queues: Vec<ActivatedQueue>,
    ) -> Result<(Vec<Queue>, Vec<EventFd>), ActivateError> {
        check_activation(&self.name, self.queue_max_sizes.len(), &queues, mem)?;
        Ok(queues.into_iter().map(|q| (q.queue, q.kick)).unzip())
    }

    /// Keeps the checked queues as [`DeviceCommon::active`] and tells the event loop,
    /// which then watches the kicks (see [`DeviceCommon::handle_state_event`]).
    pub fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActivatedQueue>,
    ) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::Device(format!(
                "{} is already active",
                self.name
            )));
        }
        let (mut queues, kicks) = self.take_queues(&mem, queues)?;
        let event_idx = self.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        for q in &mut queues {
            q.set_event_idx(event_idx);
        }
        self.active = Some(Active {
            mem,
            interrupt,
            queues,
            kicks,
        });
        self.kicks_registered = false;
        if let Err(e) = self.state_evt.write(1) {
            self.active = None;
            return Err(ActivateError::Io(e));
        }
        Ok(())
    }

    /// Drops the active queues (their kicks stay open until the event loop removed
    /// them) and the acked features. Returns whether the device was active.
    pub fn reset(&mut self) -> bool {
        self.acked_features = 0;
        let Some(a) = self.active.take() else {
            return false;
        };
        if self.kicks_registered {
            self.retired_kicks.extend(a.kicks);
        }
        self.kicks_registered = false;
        if let Err(e) = self.state_evt.write(1) {
            log::error!(
                "{}: cannot signal the reset to the event loop: {e}",
                self.name
            );
        }
        true
    }

    /// Watches `state_evt` (from the device's `MutEventSubscriber::init`). If activation
    /// raced ahead, the event is pending and handled on the first loop iteration.
    pub fn init_events(&self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.state_evt, EventSet::IN)) {
            log::error!("{}: cannot watch the state eventfd: {e}", self.name);
        }
    }

    /// On `state_evt`: unwatches retired kicks and watches the active ones. Returns true
    /// when a new activation's kicks were just added (the device then serves what the
    /// driver made available before they were watched).
    pub fn handle_state_event(&mut self, ops: &mut EventOps) -> bool {
        if let Err(e) = self.state_evt.read() {
            if e.kind() != io::ErrorKind::WouldBlock {
                log::warn!("{}: state eventfd read failed: {e}", self.name);
            }
        }
        for kick in std::mem::take(&mut self.retired_kicks) {
            if let Err(e) = ops.remove(Events::empty(&kick)) {
                log::error!("{}: cannot unwatch an old queue kick: {e}", self.name);
            }
        }
        let Some(active) = self.active.as_ref() else {
            return false;
        };
        if self.kicks_registered {
            return false;
        }
        for kick in &active.kicks {
            if let Err(e) = ops.add(Events::new(kick, EventSet::IN)) {
                log::error!("{}: cannot watch a queue kick eventfd: {e}", self.name);
            }
        }
        self.kicks_registered = true;
        true
    }

    /// Which of our kick eventfds `fd` is: `Some(Kick::Queue(i))` (drained) for queue
    /// `i` of the active queues, `Some(Kick::Retired)` (drained) for one of a reset
    /// activation that was kicked before the state event removed it.
    pub fn kick_for(&self, fd: RawFd) -> Option<Kick> {
        let drain = |k: &EventFd| {
            if let Err(e) = k.read() {
                if e.kind() != io::ErrorKind::WouldBlock {
                    log::warn!("{}: queue kick read failed: {e}", self.name);
                }
            }
        };
        if let Some(active) = self.active.as_ref().filter(|_| self.kicks_registered) {
            if let Some(i) = active.kicks.iter().position(|k| k.as_raw_fd() == fd) {
                drain(&active.kicks[i]);
                return Some(Kick::Queue(i));
            }
        }
        let old = self.retired_kicks.iter().find(|k| k.as_raw_fd() == fd)?;
        drain(old);
        Some(Kick::Retired)
    }
}

/// What an event on a kick eventfd was (see [`DeviceCommon::kick_for`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Kick {
    Queue(usize),
    Retired,
}
