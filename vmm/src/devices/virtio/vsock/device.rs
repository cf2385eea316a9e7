//! The virtio-vsock device model: config space, features, activation and the
//! queue work. Everything that talks to the host lives in the backend
//! (`super::unix`); event loop wiring in `super::event_handler`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::defs::*;
use super::metrics::{count_and_warn_once, VsockMetrics};
use super::packet::GuestHeader;
use super::unix::{Muxer, RxFill};
use super::VsockError;
use crate::devices::virtio::{
    check_activation, ActivateError, ActivatedQueue, Interrupt, VirtioDevice, TYPE_VSOCK,
    VIRTIO_F_VERSION_1,
};
use crate::memory::GuestMemoryMmap;

/// State that exists once the driver set DRIVER_OK.
pub(crate) struct Active {
    pub mem: GuestMemoryMmap,
    pub interrupt: Arc<dyn Interrupt>,
    /// Indexed by `RXQ`, `TXQ`, `EVQ`.
    pub queues: Vec<Queue>,
    pub kicks: Vec<EventFd>,
}

/// A virtio-vsock device backed by unix domain sockets.
///
/// Shared as `Arc<Mutex<Vsock>>` between the virtio-mmio transport (which calls
/// the [`VirtioDevice`] methods from vCPU threads) and the VMM's
/// `event_manager::EventManager` (which drives all queue and socket work; see
/// the `MutEventSubscriber` impl).
pub struct Vsock {
    guest_cid: u64,
    acked_features: u64,
    queue_max_sizes: [u16; NUM_QUEUES],
    pub(crate) activate_evt: EventFd,
    pub(crate) active: Option<Active>,
    /// Whether the queue kick eventfds are in the event manager.
    pub(crate) kicks_registered: bool,
    pub(crate) muxer: Muxer,
    metrics: VsockMetrics,
    /// Set when a used ring could not be written: the device stops using it.
    broken: bool,
}

impl Vsock {
    /// Create the device for guest CID `guest_cid` (3 ..= u32::MAX - 1; the
    /// upper 32 bits of the le64 config field are reserved) and bind the host
    /// listening socket at `uds_path`.
    ///
    /// Fails if `uds_path` already exists (this function never removes files;
    /// whoever owns the path cleans it up, also after the device is gone).
    pub fn new(guest_cid: u64, uds_path: impl Into<PathBuf>) -> Result<Vsock, VsockError> {
        if !(MIN_GUEST_CID..u64::from(u32::MAX)).contains(&guest_cid) {
            return Err(VsockError::InvalidGuestCid(guest_cid));
        }
        let activate_evt = EventFd::new(EFD_NONBLOCK).map_err(VsockError::Backend)?;
        let muxer = Muxer::new(guest_cid, uds_path.into())?;
        Ok(Vsock {
            guest_cid,
            acked_features: 0,
            queue_max_sizes: [QUEUE_MAX_SIZE; NUM_QUEUES],
            activate_evt,
            active: None,
            kicks_registered: false,
            muxer,
            metrics: VsockMetrics::default(),
            broken: false,
        })
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Path of the host listening socket.
    pub fn uds_path(&self) -> &Path {
        self.muxer.uds_path()
    }

    pub fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    /// Counters of dropped/rejected things (see [`VsockMetrics`]).
    pub fn metrics(&self) -> VsockMetrics {
        self.metrics.merged(&self.muxer.metrics)
    }

    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Handle the guest's TX queue (after a kick), then deliver what that produced.
    pub fn process_tx(&mut self) {
        self.pump();
    }

    /// Fill the guest's RX queue (after a kick: new buffers).
    pub fn process_rx(&mut self) {
        self.pump();
    }

    /// Handle ready host sockets / timers, then deliver what that produced.
    pub fn process_backend_events(&mut self) {
        self.muxer.process_events();
        self.pump();
    }

    /// Alternate TX and RX until neither makes progress: RX drains the RST
    /// queue, which may un-stall TX; TX may produce more RX packets. At most
    /// [`PUMP_BUDGET`] chains per call: if that runs out, the device kicks its
    /// own TX queue so the event loop serves other sources first and then
    /// comes back.
    fn pump(&mut self) {
        let mut signal = false;
        let mut budget = PUMP_BUDGET;
        loop {
            let tx = self.run_tx(&mut budget);
            let rx = self.run_rx(&mut budget);
            signal |= tx | rx;
            if !(tx || rx) || budget == 0 {
                break;
            }
        }
        if signal {
            self.signal_used();
        }
        if budget == 0 {
            if let Some(active) = self.active.as_ref() {
                if let Err(e) = active.kicks[TXQ].write(1) {
                    log::error!("vsock: cannot re-kick the TX queue: {e}");
                }
            }
        }
    }

    /// Consume TX chains (at most `budget`, which is decreased); returns
    /// whether any were added to the used ring.
    fn run_tx(&mut self, budget: &mut usize) -> bool {
        let Self {
            active,
            muxer,
            metrics,
            broken,
            ..
        } = self;
        let Some(active) = active.as_mut() else {
            return false;
        };
        if *broken {
            return false;
        }
        let mem = &active.mem;
        let queue = &mut active.queues[TXQ];
        let mut used = false;
        while *budget > 0 && !muxer.tx_stalled() {
            let Some(mut chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            match VsockPacket::from_tx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                Ok(pkt) => {
                    let hdr = GuestHeader::from_packet(&pkt);
                    muxer.handle_tx(&hdr, pkt.data_slice());
                }
                Err(e) => count_and_warn_once!(
                    metrics.tx_malformed_chains,
                    "vsock: malformed TX descriptor chain (head {head}): {e}"
                ),
            }
            // The device writes nothing into TX buffers.
            if let Err(e) = queue.add_used(mem, head, 0) {
                log::error!("vsock: cannot update TX used ring: {e}; device stops");
                *broken = true;
                break;
            }
            *budget -= 1;
            used = true;
        }
        used
    }

    /// Fill RX chains (at most `budget`, which is decreased); returns
    /// whether any were added to the used ring.
    fn run_rx(&mut self, budget: &mut usize) -> bool {
        let Self {
            active,
            muxer,
            metrics,
            broken,
            ..
        } = self;
        let Some(active) = active.as_mut() else {
            return false;
        };
        if *broken {
            return false;
        }
        let mem = &active.mem;
        let queue = &mut active.queues[RXQ];
        let mut used = false;
        while *budget > 0 && muxer.has_rx_work() {
            let Some(mut chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let len = match VsockPacket::from_rx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                Ok(mut pkt) => match muxer.fill_rx(&mut pkt) {
                    // PKT_HEADER_SIZE + at most MAX_PKT_DATA: fits.
                    Ok(RxFill::Packet(n)) => PKT_HEADER_SIZE as u32 + n,
                    Ok(RxFill::Nothing) => {
                        // Keep the buffer for later.
                        queue.go_to_previous_position();
                        break;
                    }
                    Err(e) => {
                        count_and_warn_once!(
                            metrics.rx_malformed_chains,
                            "vsock: unusable RX descriptor chain (head {head}): {e}"
                        );
                        0
                    }
                },
                Err(e) => {
                    count_and_warn_once!(
                        metrics.rx_malformed_chains,
                        "vsock: malformed RX descriptor chain (head {head}): {e}"
                    );
                    0
                }
            };
            if let Err(e) = queue.add_used(mem, head, len) {
                log::error!("vsock: cannot update RX used ring: {e}; device stops");
                *broken = true;
                break;
            }
            *budget -= 1;
            used = true;
        }
        used
    }

    fn signal_used(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut needed = false;
        for q in [RXQ, TXQ] {
            // Without VIRTIO_RING_F_EVENT_IDX (not offered) this is always true,
            // but it also resets the queue's "added since last check" count.
            needed |= active.queues[q]
                .needs_notification(&active.mem)
                .unwrap_or(true);
        }
        if needed {
            if let Err(e) = active.interrupt.signal_used_queue() {
                log::error!("vsock: failed to signal used queue: {e}");
            }
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.guest_cid.to_le_bytes();
        crate::devices::virtio::read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "vsock: ignoring guest write of {} bytes to read-only config at {offset}",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActivatedQueue>,
    ) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::Device("vsock is already active".into()));
        }
        check_activation("vsock", NUM_QUEUES, &queues, &mem)?;
        let (queues, kicks) = queues.into_iter().map(|q| (q.queue, q.kick)).unzip();
        self.active = Some(Active {
            mem,
            interrupt,
            queues,
            kicks,
        });
        // The event loop registers the kick fds and starts processing.
        if let Err(e) = self.activate_evt.write(1) {
            self.active = None;
            return Err(ActivateError::Io(e));
        }
        log::info!("vsock: activated, guest CID {}", self.guest_cid);
        Ok(())
    }
}
