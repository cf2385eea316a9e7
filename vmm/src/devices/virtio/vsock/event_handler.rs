//! Event loop wiring.
//!
//! `init` (when the device is added to the event manager) watches the
//! state eventfd and the backend's epoll fd. `activate()` runs on a vCPU
//! thread and cannot touch the event manager, so it stores the queues and
//! signals the state eventfd; on that event we start watching the three queue
//! kick eventfds and process whatever was waiting (e.g. host connections that
//! arrived while the guest was booting).

use std::os::unix::io::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::defs::{RXQ, TXQ};
use super::device::Vsock;
use crate::devices::virtio::Kick;

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        self.common.init_events(ops);
        if let Err(e) = ops.add(Events::new_raw(self.muxer.epoll_fd(), EventSet::IN)) {
            log::error!("vsock: cannot watch backend epoll fd: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.common.state_evt.as_raw_fd() {
            self.common.handle_state_event(ops);
            // Deliver what queued up before activation.
            self.process_backend_events();
        } else if fd == self.muxer.epoll_fd() {
            self.process_backend_events();
        } else if let Some(kick) = self.common.kick_for(fd) {
            match kick {
                Kick::Queue(RXQ) => self.process_rx(),
                Kick::Queue(TXQ) => self.process_tx(),
                // EVQ: we never post events; nothing to do.
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
