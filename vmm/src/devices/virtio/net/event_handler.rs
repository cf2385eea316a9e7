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

use std::os::unix::io::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::Net;
use super::{RXQ, TXQ};
use crate::devices::virtio::Kick;

impl Net {
    fn wanted_tap_events(&self) -> EventSet {
        let mut want = EventSet::empty();
        if self.common.active.is_none() || self.tap_failed || self.broken {
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
        if self.common.handle_state_event(ops) {
            self.apply_offload();
            // Chains made available before the kicks were watched.
            self.process_rx();
            self.process_tx();
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
        self.common.init_events(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.common.state_evt.as_raw_fd() {
            self.handle_state_change(ops);
        } else if fd == self.tap.as_raw_fd() {
            self.handle_tap_event(events.event_set());
        } else if let Some(kick) = self.common.kick_for(fd) {
            match kick {
                Kick::Queue(RXQ) => {
                    self.rx_needs_buffers = false;
                    self.process_rx();
                }
                Kick::Queue(TXQ) => self.process_tx(),
                // Kicked after a reset, before the state event removed it.
                _ => {}
            }
        } else {
            log::warn!(
                "net: unexpected event {:#x} on fd {fd}",
                events.epoll_event().events()
            );
        }
        self.update_tap_interest(ops);
    }
}
