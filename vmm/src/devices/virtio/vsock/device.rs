//! The virtio-vsock device model: config space, features, activation and the
//! queue work. Everything that talks to the host lives in the backend
//! (`super::unix`); event loop wiring in `super::event_handler`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_queue::{QueueOwnedT, QueueT};
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};

use super::defs::*;
use super::metrics::{count_and_warn_once, VsockMetrics};
use super::packet::GuestHeader;
use super::unix::{Muxer, RxFill};
use super::VsockError;
use crate::devices::virtio::{
    ActivateError, ActivatedQueue, DeviceCommon, Interrupt, VirtioDevice, TYPE_VSOCK,
    VIRTIO_F_VERSION_1,
};
use crate::memory::GuestMemoryMmap;

/// A virtio-vsock device backed by unix domain sockets.
///
/// Shared as `Arc<Mutex<Vsock>>` between the virtio-mmio transport (which calls
/// the [`VirtioDevice`] methods from vCPU threads) and the VMM's
/// `event_manager::EventManager` (which drives all queue and socket work; see
/// the `MutEventSubscriber` impl).
pub struct Vsock {
    guest_cid: u64,
    /// Queues indexed by `RXQ`, `TXQ`, `EVQ`; config: le64 guest_cid.
    pub(crate) common: DeviceCommon,
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
        let common = DeviceCommon::new(
            "vsock",
            TYPE_VSOCK,
            VIRTIO_F_VERSION_1,
            &[QUEUE_MAX_SIZE; NUM_QUEUES],
            guest_cid.to_le_bytes().to_vec(),
        )
        .map_err(VsockError::Backend)?;
        let muxer = Muxer::new(guest_cid, uds_path.into())?;
        Ok(Vsock {
            guest_cid,
            common,
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
        self.common.is_activated()
    }

    /// Counters of dropped/rejected things (see [`VsockMetrics`]).
    pub fn metrics(&self) -> VsockMetrics {
        self.metrics.merged(&self.muxer.metrics)
    }

    pub fn acked_features(&self) -> u64 {
        self.common.acked_features()
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
            self.common.rekick(TXQ);
        }
    }

    /// Consume TX chains (at most `budget`, which is decreased); returns
    /// whether any were added to the used ring.
    fn run_tx(&mut self, budget: &mut usize) -> bool {
        let Self {
            common,
            muxer,
            metrics,
            broken,
            ..
        } = self;
        let Some(active) = common.active.as_mut() else {
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
            common,
            muxer,
            metrics,
            broken,
            ..
        } = self;
        let Some(active) = common.active.as_mut() else {
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
        self.common.signal_used(&[RXQ, TXQ]);
    }
}

impl VirtioDevice for Vsock {
    fn common(&self) -> &DeviceCommon {
        &self.common
    }

    fn common_mut(&mut self) -> &mut DeviceCommon {
        &mut self.common
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActivatedQueue>,
    ) -> Result<(), ActivateError> {
        // The event loop watches the kicks and starts processing.
        self.common.activate(mem, interrupt, queues)?;
        log::info!("vsock: activated, guest CID {}", self.guest_cid);
        Ok(())
    }
}
