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
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::header::{self, VNET_HDR_LEN};
use super::metrics::{count_and_warn_once, NetMetrics};
use super::tap::Tap;
use super::{NetError, BUDGET, NUM_QUEUES, QUEUE_MAX_SIZE, RXQ, TXQ};
use crate::devices::virtio::{
    check_activation, ActivateError, ActivatedQueue, Interrupt, VirtioDevice, TYPE_NET,
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

/// State that exists once the driver set DRIVER_OK.
pub(crate) struct Active {
    pub mem: GuestMemoryMmap,
    pub interrupt: Arc<dyn Interrupt>,
    /// Indexed by `RXQ`, `TXQ`.
    pub queues: Vec<Queue>,
    pub kicks: Vec<EventFd>,
}

/// A virtio-net device on a tap.
///
/// Shared as `Arc<Mutex<Net>>` between the virtio-mmio transport (vCPU
/// threads: registers, config space, activation, reset) and the device's own
/// `event_manager::EventManager` on its `net-worker` thread, which does all
/// queue and tap work (see the `MutEventSubscriber` impl).
pub struct Net {
    mac: [u8; 6],
    config: [u8; CONFIG_LEN],
    avail_features: u64,
    acked_features: u64,
    queue_max_sizes: [u16; NUM_QUEUES],
    pub(crate) tap: Tap,
    /// Activation and reset happen on a vCPU thread, which cannot touch the
    /// worker's event manager: they change the state and signal this.
    pub(crate) state_evt: EventFd,
    pub(crate) active: Option<Active>,
    /// Kick eventfds of reset activations that are still in the worker's
    /// epoll: it removes them before they are closed.
    pub(crate) retired_kicks: Vec<EventFd>,
    /// Whether the active queues' kick eventfds are in the event manager.
    pub(crate) kicks_registered: bool,
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
            | bit(VIRTIO_NET_F_HOST_TSO6);
        if mtu.is_some() {
            avail_features |= bit(VIRTIO_NET_F_MTU);
        }
        Ok(Net {
            mac,
            config,
            avail_features,
            acked_features: 0,
            queue_max_sizes: [QUEUE_MAX_SIZE; NUM_QUEUES],
            tap,
            state_evt: EventFd::new(EFD_NONBLOCK).map_err(NetError::EventFd)?,
            active: None,
            retired_kicks: Vec::new(),
            kicks_registered: false,
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
        self.active.is_some()
    }

    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Frame counters and what was refused or dropped (see [`NetMetrics`]).
    pub fn metrics(&self) -> NetMetrics {
        self.metrics
    }

    pub(crate) fn name(&self) -> String {
        let m = self.mac;
        format!(
            "net {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }

    /// The tap is gone: no more RX, and the guest is told the link is down.
    pub(crate) fn tap_gone(&mut self) {
        if self.tap_failed {
            return;
        }
        self.tap_failed = true;
        self.config[6..8].copy_from_slice(&0u16.to_le_bytes());
        if let Some(a) = self.active.as_ref() {
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
            active,
            tap,
            metrics,
            broken,
            tap_failed,
            rx_needs_buffers,
            acked_features,
            ..
        } = self;
        let Some(a) = active.as_mut() else {
            return;
        };
        if *broken || *tap_failed {
            return;
        }
        let mem = &a.mem;
        let queue = &mut a.queues[RXQ];
        let mut used = false;
        let mut overflow = [0u8; 1];
        for _ in 0..BUDGET {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                if !*rx_needs_buffers {
                    metrics.rx_no_buffers += 1;
                }
                *rx_needs_buffers = true;
                break;
            };
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
                    Ok(_) if !bufs.fix_header(*acked_features) => {
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
            signal_used(a, RXQ);
        }
    }

    /// Writes TX chains to the tap (after a kick, or once the tap is writable
    /// again). At most [`BUDGET`] chains, then the device kicks its own TX
    /// queue so the worker's loop serves RX in between.
    pub fn process_tx(&mut self) {
        let Self {
            active,
            tap,
            metrics,
            broken,
            tx_blocked,
            acked_features,
            ..
        } = self;
        let Some(a) = active.as_mut() else {
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
        while budget > 0 {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            match header::parse_tx(mem, chain, *acked_features) {
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
            signal_used(a, TXQ);
        }
        if budget == 0 {
            if let Err(e) = a.kicks[TXQ].write(1) {
                log::error!("net: cannot re-kick the TX queue: {e}");
            }
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

fn signal_used(a: &mut Active, q: usize) {
    // Without VIRTIO_RING_F_EVENT_IDX (not offered) this is always true, but
    // it also resets the queue's "added since last check" count.
    if a.queues[q].needs_notification(&a.mem).unwrap_or(true) {
        if let Err(e) = a.interrupt.signal_used_queue() {
            log::error!("net: cannot signal used queue: {e}");
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::devices::virtio::read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The MAC is only writable without VIRTIO_F_VERSION_1 (legacy).
        log::debug!(
            "net: ignoring guest write of {} bytes to read-only config at {offset}",
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
            return Err(ActivateError::Device("net is already active".into()));
        }
        check_activation("net", NUM_QUEUES, &queues, &mem)?;
        let (queues, kicks) = queues.into_iter().map(|q| (q.queue, q.kick)).unzip();
        self.active = Some(Active {
            mem,
            interrupt,
            queues,
            kicks,
        });
        self.kicks_registered = false;
        self.offload_pending = Some(tap_offload_flags(self.acked_features));
        self.rx_needs_buffers = false;
        self.tx_blocked = false;
        self.broken = false;
        // The worker registers the kicks, sets the offloads and starts.
        if let Err(e) = self.state_evt.write(1) {
            self.active = None;
            return Err(ActivateError::Io(e));
        }
        log::info!(
            "{}: activated, features {:#x}",
            self.name(),
            self.acked_features
        );
        Ok(())
    }

    /// Stops queue work; the worker drops the old kicks from its epoll. The
    /// tap stays as it is (frames wait in it until the next activation).
    fn reset(&mut self) -> bool {
        if let Some(a) = self.active.take() {
            if self.kicks_registered {
                self.retired_kicks.extend(a.kicks);
            }
            self.kicks_registered = false;
            if let Err(e) = self.state_evt.write(1) {
                log::error!("net: cannot signal the reset to the worker: {e}");
            }
            log::info!("{}: reset", self.name());
        }
        self.acked_features = 0;
        self.offload_pending = None;
        self.rx_needs_buffers = false;
        self.tx_blocked = false;
        self.broken = false;
        true
    }
}
