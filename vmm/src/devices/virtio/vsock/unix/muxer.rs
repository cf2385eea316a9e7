//! The hybrid unix-socket backend: one listening socket for host-initiated
//! connections (`CONNECT <port>\n` / `OK <hostport>\n`), `<uds_path>_<port>`
//! sockets for guest-initiated ones, and the multiplexing of all connections
//! onto the device's queues.
//!
//! The muxer owns a private epoll instance holding the listener, a timer and
//! every unix stream; the device registers only that epoll fd with the VMM's
//! event manager. This lets the muxer change what it watches from anywhere
//! (also while handling TX packets), and keeps the event manager's view static.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

use virtio_vsock::packet::VsockPacket;
use vm_memory::VolatileSlice;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::handshake::{LineStatus, PendingClient};
use super::sys::{connect_nonblocking, set_nonblocking};
use crate::devices::virtio::vsock::connection::{
    ConnKey, Connection, DataOut, ResetCause, Verdict,
};
use crate::devices::virtio::vsock::defs::*;
use crate::devices::virtio::vsock::metrics::{count_and_warn_once, VsockMetrics};
use crate::devices::virtio::vsock::packet::{clear_header, write_header, GuestHeader, RxHeader};
use crate::devices::virtio::vsock::VsockError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FdOwner {
    Listener,
    Timer,
    Pending,
    Conn(ConnKey),
}

/// What `fill_rx` put in an RX buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RxFill {
    /// A packet with this many payload bytes (after the header).
    Packet(u32),
    /// Nothing to send: the buffer was not touched beyond its header.
    Nothing,
}

pub(crate) struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    listener_paused: bool,
    epoll: Epoll,
    timer: TimerFd,
    timer_armed: bool,
    fds: HashMap<RawFd, FdOwner>,
    pending: HashMap<RawFd, PendingClient>,
    conns: HashMap<ConnKey, Connection>,
    host_ports: HashSet<u32>,
    next_host_port: u32,
    /// RSTs to send, for connections that no longer exist (or never did).
    rst_q: VecDeque<ConnKey>,
    /// Connections with a pending control packet.
    ctrl_q: VecDeque<ConnKey>,
    /// Connections with host data ready for the guest.
    data_q: VecDeque<ConnKey>,
    pub metrics: VsockMetrics,
}

impl Muxer {
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> Result<Self, VsockError> {
        let epoll = Epoll::new().map_err(VsockError::Backend)?;
        let timer = TimerFd::new().map_err(|e| VsockError::Backend(e.into()))?;
        set_nonblocking(timer.as_raw_fd()).map_err(VsockError::Backend)?;
        // Last fallible step that leaves something behind (the socket file).
        let listener = UnixListener::bind(&uds_path).map_err(|source| VsockError::Bind {
            path: uds_path.clone(),
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(VsockError::Backend)?;

        let mut muxer = Muxer {
            guest_cid,
            uds_path,
            listener,
            listener_paused: false,
            epoll,
            timer,
            timer_armed: false,
            fds: HashMap::new(),
            pending: HashMap::new(),
            conns: HashMap::new(),
            host_ports: HashSet::new(),
            next_host_port: HOST_PORT_BASE,
            rst_q: VecDeque::new(),
            ctrl_q: VecDeque::new(),
            data_q: VecDeque::new(),
            metrics: VsockMetrics::default(),
        };
        let lfd = muxer.listener.as_raw_fd();
        let tfd = muxer.timer.as_raw_fd();
        muxer
            .epoll_add(lfd, EventSet::IN, FdOwner::Listener)
            .map_err(VsockError::Backend)?;
        muxer
            .epoll_add(tfd, EventSet::IN, FdOwner::Timer)
            .map_err(VsockError::Backend)?;
        Ok(muxer)
    }

    /// The fd to register with the event manager (readable when the backend has work).
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    #[cfg(test)]
    pub fn num_connections(&self) -> usize {
        self.conns.len()
    }

    #[cfg(test)]
    pub fn num_pending_clients(&self) -> usize {
        self.pending.len()
    }

    /// Entries in the RX work queues (for boundedness checks).
    #[cfg(test)]
    pub fn rx_backlog(&self) -> usize {
        self.rst_q.len() + self.ctrl_q.len() + self.data_q.len()
    }

    #[cfg(test)]
    pub fn has_rx_work_for_test(&self) -> bool {
        self.has_rx_work()
    }

    fn epoll_add(&mut self, fd: RawFd, events: EventSet, owner: FdOwner) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(events, fd as u64),
        )?;
        self.fds.insert(fd, owner);
        Ok(())
    }

    fn epoll_del(&mut self, fd: RawFd) {
        self.fds.remove(&fd);
        if let Err(e) = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
        {
            log::debug!("vsock: epoll delete of fd {fd} failed: {e}");
        }
    }

    fn arm_timer(&mut self) {
        if self.timer_armed {
            return;
        }
        match self.timer.reset(TIMER_TICK, Some(TIMER_TICK)) {
            Ok(()) => self.timer_armed = true,
            Err(e) => log::error!("vsock: cannot arm handshake timer: {e}"),
        }
    }

    // ---------------------------------------------------------------- host side

    /// Handle whatever is ready on the backend's fds (never blocks).
    pub fn process_events(&mut self) {
        let mut events = [EpollEvent::default(); 32];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            Err(e) => {
                log::error!("vsock: backend epoll_wait failed: {e}");
                return;
            }
        };
        for ev in &events[..n] {
            let fd = ev.fd();
            let set = EventSet::from_bits_truncate(ev.events());
            // The owner may have gone away while handling an earlier event of
            // this batch; such events are skipped (or hit a reused fd, which is
            // harmless: all I/O is non-blocking).
            match self.fds.get(&fd).copied() {
                Some(FdOwner::Listener) => self.accept_clients(),
                Some(FdOwner::Timer) => self.handle_timer(),
                Some(FdOwner::Pending) => self.handle_pending(fd),
                Some(FdOwner::Conn(key)) => {
                    if let Some(conn) = self.conns.get_mut(&key) {
                        let verdict = conn.handle_host_event(set);
                        self.apply(key, verdict);
                    }
                }
                None => {}
            }
        }
    }

    fn accept_clients(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.add_pending_client(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // E.g. EMFILE: the connection stays in the backlog and the
                    // listener would stay readable; pause it for a timer tick
                    // instead of spinning.
                    log::warn!("vsock: accept on {:?} failed: {e}", self.uds_path);
                    let fd = self.listener.as_raw_fd();
                    self.epoll_del(fd);
                    self.listener_paused = true;
                    self.arm_timer();
                    return;
                }
            }
        }
    }

    fn add_pending_client(&mut self, stream: UnixStream) {
        if self.pending.len() >= MAX_PENDING_CLIENTS
            || self.pending.len() + self.conns.len() >= MAX_CONNECTIONS
        {
            count_and_warn_once!(
                self.metrics.host_clients_rejected,
                "vsock: too many host connections, rejecting a client"
            );
            return;
        }
        if let Err(e) = stream.set_nonblocking(true) {
            log::warn!("vsock: cannot make client non-blocking: {e}");
            return;
        }
        let fd = stream.as_raw_fd();
        if let Err(e) = self.epoll_add(fd, EventSet::IN, FdOwner::Pending) {
            log::warn!("vsock: cannot watch client: {e}");
            return;
        }
        self.pending
            .insert(fd, PendingClient::new(stream, Instant::now()));
        self.arm_timer();
        // The line is often there already; don't wait for another epoll round.
        self.handle_pending(fd);
    }

    fn handle_pending(&mut self, fd: RawFd) {
        let Some(client) = self.pending.get_mut(&fd) else {
            return;
        };
        let status = client.read_line();
        if status == LineStatus::Incomplete {
            return;
        }
        self.epoll_del(fd);
        let Some(client) = self.pending.remove(&fd) else {
            return;
        };
        match status {
            LineStatus::Connect(port) => self.host_connect(client.stream, port),
            LineStatus::Rejected(why) => {
                log::debug!("vsock: dropping host client: {why}");
                self.metrics.host_clients_rejected += 1;
            }
            LineStatus::Incomplete => {}
        }
    }

    fn alloc_host_port(&mut self, peer_port: u32) -> Option<u32> {
        // At most MAX_CONNECTIONS ports are in use, so this finds one.
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_host_port;
            self.next_host_port = port.checked_add(1).unwrap_or(HOST_PORT_BASE);
            let key = ConnKey {
                local_port: port,
                peer_port,
            };
            if !self.host_ports.contains(&port) && !self.conns.contains_key(&key) {
                self.host_ports.insert(port);
                return Some(port);
            }
        }
        None
    }

    fn host_connect(&mut self, stream: UnixStream, peer_port: u32) {
        if self.conns.len() >= MAX_CONNECTIONS {
            count_and_warn_once!(
                self.metrics.host_clients_rejected,
                "vsock: connection table full, rejecting host client"
            );
            return;
        }
        let Some(local_port) = self.alloc_host_port(peer_port) else {
            self.metrics.host_clients_rejected += 1;
            return;
        };
        let key = ConnKey {
            local_port,
            peer_port,
        };
        log::debug!("vsock: host connection {key:?} waiting for the guest");
        let conn = Connection::new_local(key, stream);
        self.fds.insert(conn.fd(), FdOwner::Conn(key));
        self.conns.insert(key, conn);
        self.sync(key);
    }

    fn handle_timer(&mut self) {
        // Non-blocking read; EAGAIN just means a tick was already consumed.
        let _ = self.timer.wait();
        let now = Instant::now();

        let expired: Vec<RawFd> = self
            .pending
            .iter()
            .filter(|(_, c)| now >= c.accepted_at + HANDSHAKE_TIMEOUT)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in expired {
            self.epoll_del(fd);
            self.pending.remove(&fd);
            self.metrics.host_clients_rejected += 1;
            log::debug!("vsock: host client did not send CONNECT in time");
        }

        let expired: Vec<ConnKey> = self
            .conns
            .values()
            .filter(|c| c.handshake_deadline().is_some_and(|d| now >= d))
            .map(|c| c.key())
            .collect();
        for key in expired {
            log::debug!("vsock: guest did not answer connection request {key:?}");
            self.metrics.handshake_timeouts += 1;
            self.kill(key, true);
        }

        if self.listener_paused {
            let fd = self.listener.as_raw_fd();
            match self.epoll_add(fd, EventSet::IN, FdOwner::Listener) {
                Ok(()) => self.listener_paused = false,
                Err(e) => log::error!("vsock: cannot re-arm listener: {e}"),
            }
        }

        let more = self.listener_paused
            || !self.pending.is_empty()
            || self
                .conns
                .values()
                .any(|c| c.handshake_deadline().is_some());
        if !more && self.timer_armed {
            let _ = self.timer.clear();
            self.timer_armed = false;
        }
    }

    // --------------------------------------------------------------- guest side

    /// Whether taking more TX packets could overflow the RST queue.
    pub fn tx_stalled(&self) -> bool {
        self.rst_q.len() >= RST_QUEUE_SOFT_CAP
    }

    /// A packet the guest put in its TX queue.
    pub fn handle_tx(&mut self, hdr: &GuestHeader, data: Option<&VolatileSlice<'_, ()>>) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            count_and_warn_once!(
                self.metrics.tx_bad_address,
                "vsock: dropping guest packet with bad address {}:{} -> {}:{}",
                hdr.src_cid,
                hdr.src_port,
                hdr.dst_cid,
                hdr.dst_port
            );
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if hdr.op == OP_RST {
            // Never answer a RST; just forget the connection.
            if self.conns.contains_key(&key) {
                log::debug!("vsock: guest reset {key:?}");
                self.kill(key, false);
            }
            return;
        }
        if hdr.type_ != TYPE_STREAM {
            self.reply_rst(key);
            return;
        }
        if let Some(conn) = self.conns.get_mut(&key) {
            let verdict = conn.handle_guest(hdr, data);
            self.apply(key, verdict);
            return;
        }
        if hdr.op == OP_REQUEST {
            self.guest_connect(key, hdr);
        } else {
            self.reply_rst(key);
        }
    }

    fn reply_rst(&mut self, key: ConnKey) {
        self.metrics.tx_rst_replies += 1;
        self.push_rst(key);
    }

    fn guest_connect(&mut self, key: ConnKey, hdr: &GuestHeader) {
        if self.conns.len() >= MAX_CONNECTIONS {
            count_and_warn_once!(
                self.metrics.conn_limit_hits,
                "vsock: connection table full ({MAX_CONNECTIONS}), refusing guest connection"
            );
            self.push_rst(key);
            return;
        }
        let mut path = OsString::from(self.uds_path.as_os_str());
        path.push(format!("_{}", key.local_port));
        let path = PathBuf::from(path);
        match connect_nonblocking(&path) {
            Ok(stream) => {
                log::debug!("vsock: guest connected {key:?} to {path:?}");
                let conn = Connection::new_peer(key, stream, hdr);
                self.fds.insert(conn.fd(), FdOwner::Conn(key));
                self.conns.insert(key, conn);
                self.sync(key);
            }
            Err(e) => {
                log::debug!("vsock: guest connection {key:?} to {path:?} refused: {e}");
                self.push_rst(key);
            }
        }
    }

    fn push_rst(&mut self, key: ConnKey) {
        if self.rst_q.len() >= RST_QUEUE_HARD_CAP {
            count_and_warn_once!(
                self.metrics.rst_dropped,
                "vsock: RST queue full, dropping RST for {key:?}"
            );
            return;
        }
        self.rst_q.push_back(key);
    }

    /// Act on what a connection said after it handled an event.
    fn apply(&mut self, key: ConnKey, verdict: Verdict) {
        match verdict {
            Verdict::Keep => self.sync(key),
            Verdict::Reset(cause) => {
                if cause == ResetCause::GuestFault {
                    count_and_warn_once!(
                        self.metrics.guest_protocol_errors,
                        "vsock: guest broke the protocol on {key:?}, resetting it"
                    );
                }
                self.kill(key, true);
            }
        }
    }

    /// Remove a connection (closing its unix stream), optionally telling the guest.
    fn kill(&mut self, key: ConnKey, send_rst: bool) {
        let Some(conn) = self.conns.remove(&key) else {
            return;
        };
        if conn.polled.is_empty() {
            self.fds.remove(&conn.fd());
        } else {
            self.epoll_del(conn.fd());
        }
        // Keep the RX work queues free of dead keys, so they stay bounded by
        // the number of live connections however fast the guest churns them.
        if conn.in_ctrl_q {
            self.ctrl_q.retain(|k| *k != key);
        }
        if conn.in_data_q {
            self.data_q.retain(|k| *k != key);
        }
        if conn.is_host_initiated() {
            self.host_ports.remove(&key.local_port);
        }
        if send_rst {
            self.push_rst(key);
        }
    }

    /// Bring the queues and the epoll interest of a connection in line with its state.
    fn sync(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        conn.refresh();
        if conn.has_pending_ctrl() && !conn.in_ctrl_q {
            conn.in_ctrl_q = true;
            self.ctrl_q.push_back(key);
        }
        if conn.wants_data_rx() && !conn.in_data_q {
            conn.in_data_q = true;
            self.data_q.push_back(key);
        }
        let want = conn.wanted_events();
        let needs_timer = conn.handshake_deadline().is_some();
        if want != conn.polled {
            let fd = conn.fd();
            let res = if want.is_empty() {
                // Not merely an empty mask: epoll reports HUP regardless, and
                // a hung-up stream we do not want to read would spin.
                self.epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default())
            } else {
                let op = if conn.polled.is_empty() {
                    ControlOperation::Add
                } else {
                    ControlOperation::Modify
                };
                self.epoll.ctl(op, fd, EpollEvent::new(want, fd as u64))
            };
            match res {
                Ok(()) => conn.polled = want,
                Err(e) => {
                    log::error!("vsock: epoll update for {key:?} failed: {e}");
                    self.kill(key, true);
                    return;
                }
            }
        }
        if needs_timer {
            self.arm_timer();
        }
    }

    /// Whether `fill_rx` may have something to put in an RX buffer.
    pub fn has_rx_work(&self) -> bool {
        !self.rst_q.is_empty() || !self.ctrl_q.is_empty() || !self.data_q.is_empty()
    }

    /// Put the next packet for the guest into `pkt` (an RX buffer): RSTs first,
    /// then other control packets, then data, round-robin over connections.
    pub fn fill_rx(
        &mut self,
        pkt: &mut VsockPacket<'_, ()>,
    ) -> Result<RxFill, virtio_vsock::packet::Error> {
        clear_header(pkt)?;
        let guest_cid = self.guest_cid;

        loop {
            if let Some(key) = self.rst_q.pop_front() {
                let hdr = RxHeader {
                    src_port: key.local_port,
                    dst_port: key.peer_port,
                    op: OP_RST,
                    ..Default::default()
                };
                write_header(pkt, guest_cid, &hdr);
                return Ok(RxFill::Packet(0));
            }

            if let Some(key) = self.ctrl_q.pop_front() {
                let Some(conn) = self.conns.get_mut(&key) else {
                    continue;
                };
                conn.in_ctrl_q = false;
                let Some((op, flags)) = conn.take_ctrl(Instant::now()) else {
                    self.sync(key);
                    continue;
                };
                let (buf_alloc, fwd_cnt) = conn.credit_for_send();
                let hdr = RxHeader {
                    src_port: key.local_port,
                    dst_port: key.peer_port,
                    op,
                    flags,
                    len: 0,
                    buf_alloc,
                    fwd_cnt,
                };
                write_header(pkt, guest_cid, &hdr);
                self.sync(key);
                return Ok(RxFill::Packet(0));
            }

            // Data: try each connection queued right now at most once, so a
            // connection that cannot use this buffer does not make us spin.
            let Some(buf) = pkt.data_slice().copied() else {
                return Ok(RxFill::Nothing);
            };
            let mut tries = self.data_q.len();
            let mut reset = false;
            while tries > 0 && !reset {
                tries -= 1;
                let Some(key) = self.data_q.pop_front() else {
                    break;
                };
                let Some(conn) = self.conns.get_mut(&key) else {
                    continue;
                };
                conn.in_data_q = false;
                let (op, flags, len) = match conn.read_data(&buf) {
                    DataOut::Data(len) => (OP_RW, 0, len),
                    DataOut::HostEof => (OP_SHUTDOWN, SHUTDOWN_SEND, 0),
                    DataOut::Nothing => {
                        self.sync(key);
                        continue;
                    }
                    DataOut::Reset(cause) => {
                        self.apply(key, Verdict::Reset(cause));
                        // The RST is queued; send it in this buffer.
                        reset = true;
                        continue;
                    }
                };
                let (buf_alloc, fwd_cnt) = conn.credit_for_send();
                let hdr = RxHeader {
                    src_port: key.local_port,
                    dst_port: key.peer_port,
                    op,
                    flags,
                    len,
                    buf_alloc,
                    fwd_cnt,
                };
                write_header(pkt, guest_cid, &hdr);
                self.sync(key);
                return Ok(RxFill::Packet(len));
            }
            if !reset && self.rst_q.is_empty() && self.ctrl_q.is_empty() {
                return Ok(RxFill::Nothing);
            }
        }
    }
}
