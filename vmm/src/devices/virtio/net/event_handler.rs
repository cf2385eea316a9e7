//! Event loop wiring, on the device's own `net-worker` thread.
//!
//! `init` watches the state eventfd. `activate()`/`reset()` run on a vCPU
//! thread and cannot touch the event manager, so they change the state and
//! signal it; on that event the kick eventfds of a reset activation are
//! removed and those of a new one added, the offloads set, and the queues
//! served. The tap is watched level-triggered, and only for what the device
//! can act on: EPOLLIN while the guest has RX buffers, EPOLLOUT while a TX
//! write waits for room. So a full tap with an empty RX queue, or a tap
//! that cannot take more, never makes the loop spin.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::Net;
use super::{RXQ, TXQ};

impl Net {
    fn wanted_tap_events(&self) -> EventSet {
        let mut want = EventSet::empty();
        if self.active.is_none() || self.tap_failed || self.broken {
            return want;
        }
        if !self.rx_needs_buffers {
            want |= EventSet::IN;
        }
        if self.tx_blocked {
            want |= EventSet::OUT;
        }
        want
    }

    /// Brings the tap's epoll registration in line with the device state.
    pub(crate) fn update_tap_interest(&mut self, ops: &mut EventOps) {
        let want = self.wanted_tap_events();
        if want == self.tap_interest {
            return;
        }
        let fd = self.tap.as_raw_fd();
        let r = if self.tap_interest.is_empty() {
            ops.add(Events::new_raw(fd, want))
        } else if want.is_empty() {
            ops.remove(Events::empty_raw(fd))
        } else {
            ops.modify(Events::new_raw(fd, want))
        };
        match r {
            Ok(()) => self.tap_interest = want,
            Err(e) => {
                log::error!("{}: cannot watch the tap: {e}; link down", self.name());
                self.tap_gone();
            }
        }
    }

    fn handle_state_change(&mut self, ops: &mut EventOps) {
        if let Err(e) = self.state_evt.read() {
            if e.kind() != io::ErrorKind::WouldBlock {
                log::warn!("net: state eventfd read failed: {e}");
            }
        }
        for kick in std::mem::take(&mut self.retired_kicks) {
            if let Err(e) = ops.remove(Events::empty(&kick)) {
                log::error!("net: cannot unwatch an old queue kick eventfd: {e}");
            }
        }
        let Some(active) = self.active.as_ref() else {
            return;
        };
        if self.kicks_registered {
            return;
        }
        for kick in &active.kicks {
            if let Err(e) = ops.add(Events::new(kick, EventSet::IN)) {
                log::error!("net: cannot watch queue kick eventfd: {e}");
            }
        }
        self.kicks_registered = true;
        self.apply_offload();
        // Chains made available before the kicks were watched.
        self.process_rx();
        self.process_tx();
    }

    fn kick_queue(&self, fd: RawFd) -> Option<usize> {
        let active = self.active.as_ref()?;
        if !self.kicks_registered {
            return None;
        }
        active.kicks.iter().position(|k| k.as_raw_fd() == fd)
    }

    fn drain(&self, kick: &vmm_sys_util::eventfd::EventFd, what: &str) {
        if let Err(e) = kick.read() {
            if e.kind() != io::ErrorKind::WouldBlock {
                log::warn!("net: {what} kick read failed: {e}");
            }
        }
    }

    fn handle_tap_event(&mut self, set: EventSet) {
        if set.intersects(EventSet::ERROR | EventSet::HANG_UP) {
            // A detached tap (its device deleted, e.g. with the netns)
            // reports EPOLLERR for good.
            log::error!("{}: the tap reports an error; link down", self.name());
            self.tap_gone();
            return;
        }
        if set.contains(EventSet::OUT) {
            self.tx_blocked = false;
            self.process_tx();
        }
        if set.contains(EventSet::IN) {
            self.process_rx();
        }
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.state_evt, EventSet::IN)) {
            log::error!("net: cannot watch state eventfd: {e}");
        }
        // If activation raced ahead of registration, `state_evt` is still
        // pending and gets handled on the first loop iteration.
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.state_evt.as_raw_fd() {
            self.handle_state_change(ops);
        } else if fd == self.tap.as_raw_fd() {
            self.handle_tap_event(events.event_set());
        } else if let Some(q) = self.kick_queue(fd) {
            if let Some(kick) = self.active.as_ref().map(|a| &a.kicks[q]) {
                self.drain(kick, "queue");
            }
            match q {
                RXQ => {
                    self.rx_needs_buffers = false;
                    self.process_rx();
                }
                TXQ => self.process_tx(),
                _ => {}
            }
        } else if let Some(k) = self.retired_kicks.iter().find(|k| k.as_raw_fd() == fd) {
            // Kicked after a reset, before the state event removed it.
            self.drain(k, "old queue");
        } else {
            log::warn!(
                "net: unexpected event {:#x} on fd {fd}",
                events.epoll_event().events()
            );
        }
        self.update_tap_interest(ops);
    }
}
