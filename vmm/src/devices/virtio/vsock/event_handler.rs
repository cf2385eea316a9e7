//! Event loop wiring.
//!
//! `init` (when the device is added to the event manager) watches the
//! activation eventfd and the backend's epoll fd. `activate()` runs on a vCPU
//! thread and cannot touch the event manager, so it stores the queues and
//! signals `activate_evt`; on that event we start watching the three queue
//! kick eventfds and process whatever was waiting (e.g. host connections that
//! arrived while the guest was booting).

use std::os::unix::io::{AsRawFd, RawFd};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::defs::{EVQ, RXQ, TXQ};
use super::device::Vsock;

impl Vsock {
    fn register_kicks(&mut self, ops: &mut EventOps) {
        let Some(active) = self.active.as_ref() else {
            return;
        };
        if self.kicks_registered {
            return;
        }
        for kick in &active.kicks {
            if let Err(e) = ops.add(Events::new(kick, EventSet::IN)) {
                log::error!("vsock: cannot watch queue kick eventfd: {e}");
            }
        }
        self.kicks_registered = true;
    }

    fn handle_activate_event(&mut self, ops: &mut EventOps) {
        if let Err(e) = self.activate_evt.read() {
            log::warn!("vsock: activate eventfd read failed: {e}");
        }
        self.register_kicks(ops);
        // Deliver what queued up before activation.
        self.process_backend_events();
    }

    fn kick_queue(&self, fd: RawFd) -> Option<usize> {
        let active = self.active.as_ref()?;
        if !self.kicks_registered {
            return None;
        }
        active.kicks.iter().position(|k| k.as_raw_fd() == fd)
    }

    fn drain_kick(&self, idx: usize) {
        if let Some(active) = self.active.as_ref() {
            if let Err(e) = active.kicks[idx].read() {
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    log::warn!("vsock: queue {idx} kick read failed: {e}");
                }
            }
        }
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.activate_evt, EventSet::IN)) {
            log::error!("vsock: cannot watch activate eventfd: {e}");
        }
        if let Err(e) = ops.add(Events::new_raw(self.muxer.epoll_fd(), EventSet::IN)) {
            log::error!("vsock: cannot watch backend epoll fd: {e}");
        }
        // If activation raced ahead of registration, `activate_evt` is still
        // pending and gets handled on the first loop iteration.
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.activate_evt.as_raw_fd() {
            self.handle_activate_event(ops);
        } else if fd == self.muxer.epoll_fd() {
            self.process_backend_events();
        } else if let Some(idx) = self.kick_queue(fd) {
            self.drain_kick(idx);
            match idx {
                RXQ => self.process_rx(),
                TXQ => self.process_tx(),
                EVQ => {} // We never post events; nothing to do.
                _ => {}
            }
        } else {
            log::warn!(
                "vsock: unexpected event {:#x} on fd {fd}",
                events.epoll_event().events()
            );
        }
    }
}
