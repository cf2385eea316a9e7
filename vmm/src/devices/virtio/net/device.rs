//! The virtio-net device model: config space, features, activation/reset,
//! and the RX/TX queue work. Guest bytes are parsed in `super::header`;
//! event loop wiring (which fds are watched when) in `super::event_handler`.

use std::io;
use std::sync::Arc;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{QueueOwnedT, QueueT};
use vmm_sys_util::epoll::EventSet;

use super::header::{self, VNET_HDR_LEN};
use super::metrics::{count_and_warn_once, NetMetrics};
use super::tap::Tap;
use super::{NetError, BUDGET, NUM_QUEUES, QUEUE_MAX_SIZE, RXQ, TXQ};
use crate::devices::virtio::{
    ActivateError, ActivatedQueue, DeviceCommon, Interrupt, VirtioDevice, TYPE_NET,
    VIRTIO_F_VERSION_1,
};
use crate::memory::GuestMemoryMmap;

/// Config space: `u8 mac[6]; le16 status; le16 max_virtqueue_pairs; le16 mtu;`.
pub const CONFIG_LEN: usize = 12;

const fn bit(f: u32) -> u64 {
    1 << f
}

/// The offloads the guest can take, as TUNSETOFFLOAD flags (what the tap
/// may then hand us). TSO only with checksum offload, as the tap requires.
pub fn tap_offload_flags(acked: u64) -> u32 {
    let mut flags = 0;
    if acked & bit(VIRTIO_NET_F_GUEST_CSUM) != 0 {
        flags |= libc::TUN_F_CSUM;
        if acked & bit(VIRTIO_NET_F_GUEST_TSO4) != 0 {
            flags |= libc::TUN_F_TSO4;
        }
        if acked & bit(VIRTIO_NET_F_GUEST_TSO6) != 0 {
            flags |= libc::TUN_F_TSO6;
        }
    }
    flags
}

/// A virtio-net device on a tap.
///
/// Shared as `Arc<Mutex<Net>>` between the virtio-mmio transport (vCPU
/// threads: registers, config space, activation, reset) and the device's own
/// `event_manager::EventManager` on its `net-worker` thread, which does all
/// queue and tap work (see the `MutEventSubscriber` impl).
pub struct Net {
    mac: [u8; 6],
    /// Queues indexed by `RXQ`, `TXQ`; config as [`CONFIG_LEN`] says. Activation
    /// and reset (vCPU thread) signal its state eventfd for the worker.
    pub(crate) common: DeviceCommon,
    pub(crate) tap: Tap,
    /// TUNSETOFFLOAD flags to set, on the worker thread (its seccomp filter
    /// allows that ioctl, the vCPUs' does not).
    pub(crate) offload_pending: Option<u32>,
    /// The RX queue ran dry: the tap is not read (nor watched) until the
    /// guest kicks RX.
    pub(crate) rx_needs_buffers: bool,
    /// A TX write got EAGAIN: the chain stays in the queue until the tap is
    /// writable.
    pub(crate) tx_blocked: bool,
    /// The tap reported an error (its device is gone): no more tap I/O.
    pub(crate) tap_failed: bool,
    /// What the worker's epoll watches the tap for (empty: not in it).
    pub(crate) tap_interest: EventSet,
    /// A used ring could not be written: the device stops using its queues.
    pub(crate) broken: bool,
    pub(crate) metrics: NetMetrics,
}

impl Net {
    /// A device on `tap` (see [`Tap::from_inherited`]) with guest MAC `mac`;
    /// `mtu` is offered to the guest (VIRTIO_NET_F_MTU) when set.
    pub fn new(tap: Tap, mac: [u8; 6], mtu: Option<u16>) -> Result<Net, NetError> {
        let mut config = [0u8; CONFIG_LEN];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        // Only meaningful with VIRTIO_NET_F_MQ (not offered): one pair.
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        config[10..12].copy_from_slice(&mtu.unwrap_or(0).to_le_bytes());
        let mut avail_features = VIRTIO_F_VERSION_1
            | bit(VIRTIO_NET_F_MAC)
            | bit(VIRTIO_NET_F_STATUS)
            | bit(VIRTIO_NET_F_CSUM)
            | bit(VIRTIO_NET_F_GUEST_CSUM)
            | bit(VIRTIO_NET_F_GUEST_TSO4)
            | bit(VIRTIO_NET_F_GUEST_TSO6)
            | bit(VIRTIO_NET_F_HOST_TSO4)
            | bit(VIRTIO_NET_F_HOST_TSO6)
            // Notification suppression: under the emulator every kick and
            // interrupt is an expensive exit.
            | bit(VIRTIO_RING_F_EVENT_IDX);
        if mtu.is_some() {
            avail_features |= bit(VIRTIO_NET_F_MTU);
        }
        let name = format!(
            "net {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
        );
        let common = DeviceCommon::new(
            name,
            TYPE_NET,
            avail_features,
            &[QUEUE_MAX_SIZE; NUM_QUEUES],
            config.to_vec(),
        )
        .map_err(NetError::EventFd)?;
        Ok(Net {
            mac,
            common,
            tap,
            offload_pending: None,
            rx_needs_buffers: false,
            tx_blocked: false,
            tap_failed: false,
            tap_interest: EventSet::empty(),
            broken: false,
            metrics: NetMetrics::default(),
        })
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    pub fn is_activated(&self) -> bool {
        self.common.is_activated()
    }

    pub fn acked_features(&self) -> u64 {
        self.common.acked_features()
    }

    /// Frame counters and what was refused or dropped (see [`NetMetrics`]).
    pub fn metrics(&self) -> NetMetrics {
        self.metrics
    }

    pub(crate) fn name(&self) -> &str {
        self.common.name()
    }

    /// The tap is gone: no more RX, and the guest is told the link is down.
    pub(crate) fn tap_gone(&mut self) {
        if self.tap_failed {
            return;
        }
        self.tap_failed = true;
        self.common.config[6..8].copy_from_slice(&0u16.to_le_bytes());
        if let Some(a) = self.common.active.as_ref() {
            if let Err(e) = a.interrupt.signal_config_change() {
                log::error!("net: cannot signal the link change: {e}");
            }
        }
    }

    /// Sets the acked offloads on the tap, once per activation.
    pub(crate) fn apply_offload(&mut self) {
        if let Some(flags) = self.offload_pending.take() {
            if let Err(e) = self.tap.set_offload(flags) {
                // The tap then hands over plain frames, which every guest takes.
                log::warn!("{}: TUNSETOFFLOAD {flags:#x} failed: {e}", self.name());
            }
        }
    }

    /// Fills RX chains with frames from the tap (after a kick: new buffers;
    /// or the tap is readable). At most [`BUDGET`] chains; stops when the
    /// tap has nothing more (EAGAIN) or the queue is empty (then the tap is
    /// left alone until the guest kicks RX).
    pub fn process_rx(&mut self) {
        let Self {
            common,
            tap,
            metrics,
            broken,
            tap_failed,
            rx_needs_buffers,
            ..
        } = self;
        let acked_features = common.acked_features();
        let Some(a) = common.active.as_mut() else {
            return;
        };
        if *broken || *tap_failed {
            return;
        }
        let mem = &a.mem;
        let queue = &mut a.queues[RXQ];
        let mut used = false;
        let mut overflow = [0u8; 1];
        let mut rechecked = false;
        for _ in 0..BUDGET {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                // Ask for a kick when the guest adds buffers (with EVENT_IDX:
                // avail_event); it may have added some meanwhile.
                match more_after_enable(queue, mem, &mut rechecked, "RX") {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(()) => {
                        *broken = true;
                        break;
                    }
                }
                if !*rx_needs_buffers {
                    metrics.rx_no_buffers += 1;
                }
                *rx_needs_buffers = true;
                break;
            };
            rechecked = false;
            let head = chain.head_index();
            let len = match header::parse_rx(mem, chain) {
                Err(e) => {
                    count_and_warn_once!(
                        metrics.rx_malformed_chains,
                        "net: unusable RX descriptor chain (head {head}): {e}"
                    );
                    0
                }
                Ok(bufs) => match tap.readv(&rx_iovecs(&bufs, &mut overflow)) {
                    Ok(n) if n > bufs.capacity || n < VNET_HDR_LEN => {
                        // Bytes in `overflow`: the frame did not fit and the
                        // tap truncated it (depending on the kernel it
                        // reports the copied or the full length). Dropped;
                        // the chain takes the next frame.
                        count_and_warn_once!(
                            metrics.rx_frames_too_big,
                            "net: dropped a {n}-byte frame: the guest's RX chain holds {}",
                            bufs.capacity
                        );
                        queue.go_to_previous_position();
                        continue;
                    }
                    Ok(_) if !bufs.fix_header(acked_features) => {
                        count_and_warn_once!(
                            metrics.rx_frames_unacked_offload,
                            "net: dropped a frame with an offload the guest did not ack"
                        );
                        queue.go_to_previous_position();
                        continue;
                    }
                    Ok(n) => {
                        metrics.rx_frames += 1;
                        metrics.rx_bytes += (n - VNET_HDR_LEN) as u64;
                        // n <= capacity <= VNET_HDR_LEN + MAX_FRAME_LEN.
                        n as u32
                    }
                    Err(e) => {
                        queue.go_to_previous_position();
                        if e.kind() != io::ErrorKind::WouldBlock {
                            // Not retried: a level-triggered tap that keeps
                            // failing would spin the worker.
                            metrics.rx_tap_errors += 1;
                            log::error!("net: tap read failed: {e}; RX stops");
                            *tap_failed = true;
                        }
                        break;
                    }
                },
            };
            if let Err(e) = queue.add_used(mem, head, len) {
                log::error!("net: cannot update RX used ring: {e}; the device stops");
                *broken = true;
                break;
            }
            used = true;
        }
        if used {
            common.signal_used(&[RXQ]);
        }
    }

    /// Writes TX chains to the tap (after a kick, or once the tap is writable
    /// again). At most [`BUDGET`] chains, then the device kicks its own TX
    /// queue so the worker's loop serves RX in between.
    pub fn process_tx(&mut self) {
        let Self {
            common,
            tap,
            metrics,
            broken,
            tx_blocked,
            ..
        } = self;
        let acked_features = common.acked_features();
        let Some(a) = common.active.as_mut() else {
            return;
        };
        // With a failed tap the chains are still consumed (the writes fail
        // and the frames are dropped, as on a link that is down): a guest
        // whose TX queue never drains would time out and reset the device.
        if *broken || *tx_blocked {
            return;
        }
        let mem = &a.mem;
        let queue = &mut a.queues[TXQ];
        let mut used = false;
        let mut budget = BUDGET;
        // No kicks while the queue is worked through (a no-op with
        // EVENT_IDX, where avail_event only moves when asked to below); a
        // pass that ends early (budget, EAGAIN) resumes without a kick.
        if let Err(e) = queue.disable_notification(mem) {
            log::warn!("net: cannot disable TX notifications: {e}");
        }
        let mut rechecked = false;
        while budget > 0 {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                // Drained: kicks again; the guest may have added more meanwhile.
                match more_after_enable(queue, mem, &mut rechecked, "TX") {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(()) => {
                        *broken = true;
                        break;
                    }
                }
            };
            rechecked = false;
            let head = chain.head_index();
            match header::parse_tx(mem, chain, acked_features) {
                Err(e) => count_and_warn_once!(
                    metrics.tx_malformed_chains,
                    "net: malformed TX descriptor chain (head {head}): {e}"
                ),
                Ok(f) => match tap.writev(&header::iovecs(Some(&f.hdr), &f.frame)) {
                    Ok(_) => {
                        metrics.tx_frames += 1;
                        metrics.tx_bytes += f.frame_len as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // Keep the chain; EPOLLOUT on the tap resumes.
                        queue.go_to_previous_position();
                        metrics.tx_eagain += 1;
                        *tx_blocked = true;
                        break;
                    }
                    // EIO while the link is down, or a header the tap refuses:
                    // the frame is dropped, as a NIC would.
                    Err(e) => count_and_warn_once!(
                        metrics.tx_tap_errors,
                        "net: tap write of a {}-byte frame failed: {e}",
                        f.frame_len
                    ),
                },
            }
            // The device writes nothing into TX buffers.
            if let Err(e) = queue.add_used(mem, head, 0) {
                log::error!("net: cannot update TX used ring: {e}; the device stops");
                *broken = true;
                break;
            }
            used = true;
            budget -= 1;
        }
        if used {
            common.signal_used(&[TXQ]);
        }
        if budget == 0 {
            common.rekick(TXQ);
        }
    }
}

/// After a pop found the queue empty: turns guest notifications on and says
/// whether chains came in meanwhile (then the caller pops again). If that
/// second pop finds nothing either (`rechecked`), the guest's avail index is
/// one `pop` refuses (more than a ring ahead): the ring is broken, and the
/// device stops rather than spin on it.
fn more_after_enable(
    queue: &mut virtio_queue::Queue,
    mem: &GuestMemoryMmap,
    rechecked: &mut bool,
    what: &str,
) -> Result<bool, ()> {
    match queue.enable_notification(mem) {
        Ok(false) => Ok(false),
        Ok(true) if !*rechecked => {
            *rechecked = true;
            Ok(true)
        }
        Ok(true) => {
            log::error!("net: the {what} avail index is out of range; the device stops");
            Err(())
        }
        Err(e) => {
            log::error!("net: cannot enable {what} notifications: {e}; the device stops");
            Err(())
        }
    }
}

/// The chain's iovecs plus one byte of `overflow` at the end: a read that
/// reaches it was a frame larger than the chain.
fn rx_iovecs(bufs: &header::RxBuffers<'_>, overflow: &mut [u8; 1]) -> Vec<libc::iovec> {
    let mut iov = header::iovecs(None, &bufs.slices);
    iov.push(libc::iovec {
        iov_base: overflow.as_mut_ptr().cast(),
        iov_len: overflow.len(),
    });
    iov
}

impl VirtioDevice for Net {
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
        // The worker (which waits for our lock) then watches the kicks, sets
        // the offloads and starts.
        self.common.activate(mem, interrupt, queues)?;
        let acked = self.common.acked_features();
        self.offload_pending = Some(tap_offload_flags(acked));
        self.rx_needs_buffers = false;
        self.tx_blocked = false;
        self.broken = false;
        log::info!("{}: activated, features {acked:#x}", self.name());
        Ok(())
    }

    /// Stops queue work; the worker drops the old kicks from its epoll. The
    /// tap stays as it is (frames wait in it until the next activation).
    fn reset(&mut self) -> bool {
        if self.common.reset() {
            log::info!("{}: reset", self.name());
        }
        self.offload_pending = None;
        self.rx_needs_buffers = false;
        self.tx_blocked = false;
        self.broken = false;
        true
    }
}
