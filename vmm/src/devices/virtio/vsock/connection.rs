//! One vsock stream connection between a guest socket and a host unix stream:
//! its state machine and both directions of credit accounting.
//!
//! Terminology (device point of view):
//! * guest -> host data arrives in RW packets on the TX queue. We count it in
//!   `rx_cnt`, write it to the unix stream (buffering what the stream cannot take
//!   right now, never more than the `buf_alloc` we advertised) and count what
//!   reached the stream in `fwd_cnt`, which every packet we send carries.
//! * host -> guest data is read from the unix stream straight into the guest's
//!   RX buffers, never more than the guest's credit
//!   (`peer_buf_alloc - (tx_cnt - peer_fwd_cnt)`).
//!
//! The connection knows nothing about queues or epoll: the muxer asks it what it
//! wants (`wanted_events`, `has_pending_ctrl`, `wants_data_rx`) and feeds it events.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice, WriteVolatile};
use vmm_sys_util::epoll::EventSet;

use super::defs::*;
use super::packet::GuestHeader;

/// Identifies a connection: (our port, the guest's port). The CIDs are fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ConnKey {
    pub local_port: u32,
    pub peer_port: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnState {
    /// Host-initiated: a REQUEST is (or will be) in the guest's RX queue; we wait
    /// for RESPONSE or RST. `request_sent` is set once the guest got the REQUEST.
    LocalInit { request_sent: Option<Instant> },
    /// Both sides agreed; data may flow (subject to shutdown flags).
    Established,
}

/// Why a connection has to go (the muxer sends RST to the guest and drops it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResetCause {
    /// Both sides are done: the RST completes the guest's orderly close.
    Closed,
    /// The unix stream failed.
    HostError,
    /// The guest broke the protocol (overran its credit, data after SHUTDOWN,
    /// unexpected op for the state).
    GuestFault,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Keep,
    Reset(ResetCause),
}

/// Result of asking a connection to fill an RX buffer with host data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DataOut {
    /// `len` bytes of host data were written to the buffer: send an RW packet.
    Data(u32),
    /// The host stream reached EOF: send SHUTDOWN(SEND) instead.
    HostEof,
    /// Nothing to send after all (spurious readiness, no credit).
    Nothing,
    Reset(ResetCause),
}

// Pending control packets, in the order they are sent.
const PENDING_REQUEST: u8 = 1 << 0;
const PENDING_RESPONSE: u8 = 1 << 1;
const PENDING_CREDIT_UPDATE: u8 = 1 << 2;
const PENDING_CREDIT_REQUEST: u8 = 1 << 3;
const PENDING_ORDER: [(u8, u16); 4] = [
    (PENDING_REQUEST, OP_REQUEST),
    (PENDING_RESPONSE, OP_RESPONSE),
    (PENDING_CREDIT_UPDATE, OP_CREDIT_UPDATE),
    (PENDING_CREDIT_REQUEST, OP_CREDIT_REQUEST),
];

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

pub(crate) struct Connection {
    key: ConnKey,
    stream: UnixStream,
    state: ConnState,
    host_initiated: bool,

    // guest -> host
    rx_cnt: Wrapping<u32>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    /// Guest data the unix stream could not take yet (<= CONN_BUF_ALLOC bytes).
    tx_buf: VecDeque<u8>,
    /// `OK <port>\n` for a host-initiated connection; written before any guest
    /// data and not counted as guest data.
    hello: Vec<u8>,
    host_write_shut: bool,

    // host -> guest
    tx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    credit_requested: bool,
    /// epoll said the stream is readable and we have not hit EAGAIN since.
    host_readable: bool,
    host_eof: bool,

    /// SHUTDOWN flags received from the guest.
    peer_shutdown: u32,
    pending: u8,

    // Muxer bookkeeping (which of its queues hold our key, what epoll watches).
    pub in_ctrl_q: bool,
    pub in_data_q: bool,
    pub polled: EventSet,
}

impl Connection {
    fn new(key: ConnKey, stream: UnixStream, state: ConnState, pending: u8) -> Self {
        Connection {
            key,
            stream,
            state,
            host_initiated: matches!(state, ConnState::LocalInit { .. }),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            tx_buf: VecDeque::new(),
            hello: Vec::new(),
            host_write_shut: false,
            tx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            credit_requested: false,
            host_readable: false,
            host_eof: false,
            peer_shutdown: 0,
            pending,
            in_ctrl_q: false,
            in_data_q: false,
            polled: EventSet::empty(),
        }
    }

    /// A host client asked (via `CONNECT`) for the guest's `key.peer_port`.
    /// `stream` must be non-blocking.
    pub fn new_local(key: ConnKey, stream: UnixStream) -> Self {
        Self::new(
            key,
            stream,
            ConnState::LocalInit { request_sent: None },
            PENDING_REQUEST,
        )
    }

    /// The guest's REQUEST `hdr` was accepted by a host listener on `stream`
    /// (non-blocking). The RESPONSE is pending.
    pub fn new_peer(key: ConnKey, stream: UnixStream, hdr: &GuestHeader) -> Self {
        let mut conn = Self::new(key, stream, ConnState::Established, PENDING_RESPONSE);
        conn.update_peer_credit(hdr);
        conn
    }

    pub fn key(&self) -> ConnKey {
        self.key
    }

    /// Whether the host side started it (its local port was allocated by us).
    pub fn is_host_initiated(&self) -> bool {
        self.host_initiated
    }

    #[cfg(test)]
    pub fn state(&self) -> ConnState {
        self.state
    }

    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Credit the guest currently gives us for host -> guest data.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        // A guest claiming to have consumed more than we sent only starves itself.
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// The `(buf_alloc, fwd_cnt)` pair for a packet about to be sent; the guest
    /// is now up to date with our forwarded count.
    pub fn credit_for_send(&mut self) -> (u32, u32) {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        (CONN_BUF_ALLOC, self.fwd_cnt.0)
    }

    pub fn handshake_deadline(&self) -> Option<Instant> {
        match self.state {
            ConnState::LocalInit {
                request_sent: Some(t),
            } => Some(t + HANDSHAKE_TIMEOUT),
            _ => None,
        }
    }

    fn update_peer_credit(&mut self, hdr: &GuestHeader) {
        let fwd = Wrapping(hdr.fwd_cnt);
        if hdr.buf_alloc != self.peer_buf_alloc || fwd != self.peer_fwd_cnt {
            self.credit_requested = false;
        }
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = fwd;
    }

    fn may_read_host(&self) -> bool {
        self.state == ConnState::Established
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
    }

    fn has_output(&self) -> bool {
        !self.hello.is_empty() || !self.tx_buf.is_empty()
    }

    /// A packet from the guest for this connection (anything but RST, which the
    /// muxer handles). `data` is the payload slice of an RW packet.
    pub fn handle_guest(
        &mut self,
        hdr: &GuestHeader,
        data: Option<&VolatileSlice<'_, ()>>,
    ) -> Verdict {
        self.update_peer_credit(hdr);
        match self.state {
            ConnState::LocalInit { .. } => match hdr.op {
                OP_RESPONSE => {
                    self.state = ConnState::Established;
                    self.hello = format!("OK {}\n", self.key.local_port).into_bytes();
                    self.flush()
                }
                _ => Verdict::Reset(ResetCause::GuestFault),
            },
            ConnState::Established => match hdr.op {
                OP_RW => self.recv_guest_data(data),
                OP_CREDIT_UPDATE => Verdict::Keep,
                OP_CREDIT_REQUEST => {
                    self.pending |= PENDING_CREDIT_UPDATE;
                    Verdict::Keep
                }
                OP_SHUTDOWN => self.recv_shutdown(hdr.flags),
                _ => Verdict::Reset(ResetCause::GuestFault),
            },
        }
    }

    fn recv_guest_data(&mut self, data: Option<&VolatileSlice<'_, ()>>) -> Verdict {
        if self.peer_shutdown & SHUTDOWN_SEND != 0 {
            return Verdict::Reset(ResetCause::GuestFault);
        }
        let Some(data) = data else {
            return Verdict::Keep; // len 0
        };
        let len = data.len();
        let mut written = 0;
        if !self.has_output() {
            loop {
                match self.stream.write_volatile(data) {
                    Ok(n) => written = n,
                    Err(VolatileMemoryError::IOError(e)) if would_block(&e) => {}
                    Err(VolatileMemoryError::IOError(e))
                        if e.kind() == io::ErrorKind::Interrupted =>
                    {
                        continue
                    }
                    Err(e) => {
                        log::debug!("vsock {:?}: host write failed: {e}", self.key);
                        return Verdict::Reset(ResetCause::HostError);
                    }
                }
                break;
            }
        }
        let rest = len - written.min(len);
        if self.tx_buf.len() + rest > CONN_BUF_ALLOC as usize {
            log::debug!(
                "vsock {:?}: guest overran its credit ({} buffered + {rest})",
                self.key,
                self.tx_buf.len()
            );
            return Verdict::Reset(ResetCause::GuestFault);
        }
        if rest > 0 {
            let mut tmp = vec![0u8; rest];
            match data.offset(len - rest) {
                Ok(tail) => {
                    tail.copy_to(&mut tmp[..]);
                }
                Err(_) => return Verdict::Reset(ResetCause::GuestFault),
            }
            self.tx_buf.extend(tmp);
        }
        // `len` <= MAX_PKT_DATA, so these fit u32.
        self.rx_cnt += Wrapping(len as u32);
        self.fwd_cnt += Wrapping(written as u32);
        Verdict::Keep
    }

    fn recv_shutdown(&mut self, flags: u32) -> Verdict {
        let new = flags & SHUTDOWN_BOTH & !self.peer_shutdown;
        self.peer_shutdown |= new;
        if new & SHUTDOWN_RCV != 0 {
            // The guest will not read any more: stop reading, and let host
            // writers see that nobody listens.
            let _ = self.stream.shutdown(Shutdown::Read);
        }
        self.flush()
    }

    /// Write buffered output to the unix stream; finish a guest shutdown once
    /// everything went out.
    pub fn flush(&mut self) -> Verdict {
        while !self.hello.is_empty() {
            match self.stream.write(&self.hello) {
                Ok(n) => {
                    self.hello.drain(..n);
                }
                Err(e) if would_block(&e) => return Verdict::Keep,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("vsock {:?}: host write failed: {e}", self.key);
                    return Verdict::Reset(ResetCause::HostError);
                }
            }
        }
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match self.stream.write(front) {
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if would_block(&e) => return Verdict::Keep,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("vsock {:?}: host write failed: {e}", self.key);
                    return Verdict::Reset(ResetCause::HostError);
                }
            }
        }
        if self.peer_shutdown & SHUTDOWN_SEND != 0 && !self.host_write_shut {
            let _ = self.stream.shutdown(Shutdown::Write);
            self.host_write_shut = true;
        }
        if self.peer_shutdown == SHUTDOWN_BOTH {
            return Verdict::Reset(ResetCause::Closed);
        }
        Verdict::Keep
    }

    /// epoll reported `events` on the unix stream.
    pub fn handle_host_event(&mut self, events: EventSet) -> Verdict {
        let hup_or_err = events.intersects(EventSet::HANG_UP | EventSet::ERROR);
        if (events.contains(EventSet::IN) || hup_or_err) && self.may_read_host() {
            self.host_readable = true;
        }
        if (events.contains(EventSet::OUT) || hup_or_err) && self.has_output() {
            return self.flush();
        }
        Verdict::Keep
    }

    /// Decide on credit-related control packets; called after every change.
    pub fn refresh(&mut self) {
        if self.state != ConnState::Established {
            return;
        }
        // Host data is waiting but the guest gave us no credit: ask once.
        if self.host_readable
            && self.may_read_host()
            && self.peer_credit() == 0
            && !self.credit_requested
        {
            self.credit_requested = true;
            self.pending |= PENDING_CREDIT_REQUEST;
        }
        // Tell the guest about forwarded data before it believes we are full.
        if self.fwd_cnt != self.last_fwd_cnt_sent {
            let believed_used = (self.rx_cnt - self.last_fwd_cnt_sent).0;
            let believed_free = CONN_BUF_ALLOC.saturating_sub(believed_used);
            if believed_free < CREDIT_UPDATE_THRESHOLD {
                self.pending |= PENDING_CREDIT_UPDATE;
            }
        }
    }

    pub fn has_pending_ctrl(&self) -> bool {
        self.pending != 0
    }

    /// Take the next control packet to send: `(op, flags)`.
    pub fn take_ctrl(&mut self, now: Instant) -> Option<(u16, u32)> {
        let (bit, op) = PENDING_ORDER
            .iter()
            .copied()
            .find(|(bit, _)| self.pending & bit != 0)?;
        self.pending &= !bit;
        if op == OP_REQUEST {
            self.state = ConnState::LocalInit {
                request_sent: Some(now),
            };
        }
        Some((op, 0))
    }

    /// Whether host data is ready to go to the guest (it has credit for it).
    pub fn wants_data_rx(&self) -> bool {
        self.host_readable && self.may_read_host() && self.peer_credit() > 0
    }

    /// What epoll should watch on the unix stream.
    pub fn wanted_events(&self) -> EventSet {
        let mut ev = EventSet::empty();
        if self.state != ConnState::Established {
            return ev;
        }
        if !self.host_readable && self.may_read_host() && self.peer_credit() > 0 {
            ev |= EventSet::IN;
        }
        if self.has_output() {
            ev |= EventSet::OUT;
        }
        ev
    }

    /// Read host data straight into the guest buffer `buf`, within the guest's
    /// credit and the packet size limit.
    pub fn read_data(&mut self, buf: &VolatileSlice<'_, ()>) -> DataOut {
        if !self.wants_data_rx() {
            return DataOut::Nothing;
        }
        let cap = buf
            .len()
            .min(MAX_PKT_DATA as usize)
            .min(self.peer_credit() as usize);
        if cap == 0 {
            return DataOut::Nothing;
        }
        let Ok(mut window) = buf.subslice(0, cap) else {
            return DataOut::Nothing;
        };
        loop {
            match self.stream.read_volatile(&mut window) {
                Ok(0) => {
                    self.host_eof = true;
                    self.host_readable = false;
                    return DataOut::HostEof;
                }
                Ok(n) => {
                    // n <= cap <= MAX_PKT_DATA
                    self.tx_cnt += Wrapping(n as u32);
                    return DataOut::Data(n as u32);
                }
                Err(VolatileMemoryError::IOError(e)) if would_block(&e) => {
                    self.host_readable = false;
                    return DataOut::Nothing;
                }
                Err(VolatileMemoryError::IOError(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("vsock {:?}: host read failed: {e}", self.key);
                    return DataOut::Reset(ResetCause::HostError);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    const KEY: ConnKey = ConnKey {
        local_port: 1234,
        peer_port: 5678,
    };

    fn hdr(op: u16, buf_alloc: u32, fwd_cnt: u32) -> GuestHeader {
        GuestHeader {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: KEY.peer_port,
            dst_port: KEY.local_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc,
            fwd_cnt,
            ..Default::default()
        }
    }

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (a, b)
    }

    fn rw(conn: &mut Connection, bytes: &mut [u8]) -> Verdict {
        // SAFETY: `bytes` outlives the slice, which is only used in this call.
        let slice = unsafe { VolatileSlice::new(bytes.as_mut_ptr(), bytes.len()) };
        let mut h = hdr(OP_RW, 4096, 0);
        h.len = bytes.len() as u32;
        conn.handle_guest(&h, Some(&slice))
    }

    #[test]
    fn peer_credit_math() {
        let (a, _b) = pair();
        let mut c = Connection::new_peer(KEY, a, &hdr(OP_REQUEST, 100, 0));
        assert_eq!(c.peer_credit(), 100);
        c.tx_cnt = Wrapping(60);
        assert_eq!(c.peer_credit(), 40);
        c.update_peer_credit(&hdr(OP_CREDIT_UPDATE, 100, 50));
        assert_eq!(c.peer_credit(), 90);
        // Counters wrap.
        c.tx_cnt = Wrapping(5);
        c.update_peer_credit(&hdr(OP_CREDIT_UPDATE, 100, u32::MAX - 4));
        assert_eq!(c.peer_credit(), 90);
        // A lying guest (fwd_cnt ahead of what we sent) gets no credit, no panic.
        c.update_peer_credit(&hdr(OP_CREDIT_UPDATE, 100, 1000));
        assert_eq!(c.peer_credit(), 0);
    }

    #[test]
    fn guest_data_is_forwarded_and_counted() {
        let (a, mut b) = pair();
        let mut c = Connection::new_peer(KEY, a, &hdr(OP_REQUEST, 100, 0));
        assert_eq!(rw(&mut c, &mut b"hello".to_vec()), Verdict::Keep);
        let mut got = [0u8; 5];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        assert_eq!(c.fwd_cnt.0, 5);
        assert_eq!(c.credit_for_send(), (CONN_BUF_ALLOC, 5));
    }

    #[test]
    fn guest_data_buffered_when_host_slow_and_bounded() {
        let (a, mut b) = pair();
        let mut c = Connection::new_peer(KEY, a, &hdr(OP_REQUEST, 100, 0));
        let mut chunk = vec![7u8; MAX_PKT_DATA as usize];
        let mut total = 0usize;
        // Fill the socket buffer and then our own buffer, up to buf_alloc.
        loop {
            match rw(&mut c, &mut chunk) {
                Verdict::Keep => total += chunk.len(),
                Verdict::Reset(cause) => {
                    assert_eq!(cause, ResetCause::GuestFault);
                    break;
                }
            }
            assert!(c.tx_buf.len() <= CONN_BUF_ALLOC as usize);
            assert!(total < 64 * 1024 * 1024, "never overran");
        }
        assert!(!c.tx_buf.is_empty());
        assert!(c.wanted_events().contains(EventSet::OUT));
        // Host drains: everything buffered gets forwarded, in order, counted.
        let buffered = c.tx_buf.len();
        let fwd_before = c.fwd_cnt.0;
        let mut sink = vec![0u8; 1 << 20];
        let mut drained = 0usize;
        b.set_nonblocking(true).unwrap();
        loop {
            match b.read(&mut sink) {
                Ok(n) => drained += n,
                Err(e) if would_block(&e) => {}
                Err(e) => panic!("{e}"),
            }
            assert_eq!(c.flush(), Verdict::Keep);
            if c.tx_buf.is_empty() {
                break;
            }
        }
        assert_eq!(c.fwd_cnt.0 - fwd_before, buffered as u32);
        assert!(drained > 0);
        assert!(!c.wanted_events().contains(EventSet::OUT));
    }

    #[test]
    fn credit_update_sent_when_guest_believes_we_are_nearly_full() {
        let (a, mut b) = pair();
        let mut c = Connection::new_peer(KEY, a, &hdr(OP_REQUEST, 100, 0));
        c.take_ctrl(Instant::now()); // RESPONSE
        let mut sink = vec![0u8; 1 << 20];
        let mut chunk = vec![1u8; 32 * 1024];
        let mut sent = 0u32;
        while sent + 32 * 1024 <= CONN_BUF_ALLOC - CREDIT_UPDATE_THRESHOLD {
            assert_eq!(rw(&mut c, &mut chunk), Verdict::Keep);
            let _ = b.read(&mut sink).unwrap();
            sent += 32 * 1024;
            c.refresh();
            assert!(!c.has_pending_ctrl(), "no update needed yet at {sent}");
        }
        assert_eq!(rw(&mut c, &mut chunk), Verdict::Keep);
        c.refresh();
        assert_eq!(c.take_ctrl(Instant::now()), Some((OP_CREDIT_UPDATE, 0)));
        assert_eq!(c.credit_for_send().1, c.fwd_cnt.0);
        c.refresh();
        assert!(!c.has_pending_ctrl());
    }

    #[test]
    fn shutdown_from_guest_then_close() {
        let (a, mut b) = pair();
        let mut c = Connection::new_peer(KEY, a, &hdr(OP_REQUEST, 100, 0));
        let mut sd = hdr(OP_SHUTDOWN, 100, 0);
        sd.flags = SHUTDOWN_SEND;
        assert_eq!(c.handle_guest(&sd, None), Verdict::Keep);
        // Host sees EOF.
        let mut buf = [0u8; 4];
        assert_eq!(b.read(&mut buf).unwrap(), 0);
        // Data after SHUTDOWN(SEND) is a protocol error.
        assert_eq!(
            rw(&mut c.clone_for_test(), &mut b"x".to_vec()),
            Verdict::Reset(ResetCause::GuestFault)
        );
        sd.flags = SHUTDOWN_RCV;
        assert_eq!(
            c.handle_guest(&sd, None),
            Verdict::Reset(ResetCause::Closed)
        );
    }

    #[test]
    fn host_eof_and_credit_request() {
        let (a, mut b) = pair();
        let mut c = Connection::new_peer(KEY, a, &hdr(OP_REQUEST, 4, 0));
        c.take_ctrl(Instant::now());
        assert!(c.wanted_events().contains(EventSet::IN));
        b.write_all(b"abcdefgh").unwrap();
        assert_eq!(c.handle_host_event(EventSet::IN), Verdict::Keep);
        assert!(c.wants_data_rx());
        let mut mem = [0u8; 64];
        // SAFETY: `mem` outlives the slice.
        let slice = unsafe { VolatileSlice::new(mem.as_mut_ptr(), mem.len()) };
        assert_eq!(c.read_data(&slice), DataOut::Data(4));
        assert_eq!(&mem[..4], b"abcd");
        // Out of credit: no more reads, IN not polled, one CREDIT_REQUEST.
        assert!(!c.wants_data_rx());
        assert_eq!(c.read_data(&slice), DataOut::Nothing);
        assert!(!c.wanted_events().contains(EventSet::IN));
        c.refresh();
        assert_eq!(c.take_ctrl(Instant::now()), Some((OP_CREDIT_REQUEST, 0)));
        c.refresh();
        assert!(!c.has_pending_ctrl(), "asked only once");
        // Credit update from the guest re-opens the flow.
        assert_eq!(
            c.handle_guest(&hdr(OP_CREDIT_UPDATE, 4, 4), None),
            Verdict::Keep
        );
        assert_eq!(c.read_data(&slice), DataOut::Data(4));
        assert_eq!(&mem[..4], b"efgh");
        c.update_peer_credit(&hdr(OP_CREDIT_UPDATE, 100, 8));
        drop(b);
        assert_eq!(c.read_data(&slice), DataOut::HostEof);
        assert_eq!(c.wanted_events(), EventSet::empty());
    }

    #[test]
    fn local_init_handshake() {
        let (a, mut b) = pair();
        let key = ConnKey {
            local_port: HOST_PORT_BASE,
            peer_port: 52,
        };
        let mut c = Connection::new_local(key, a);
        assert_eq!(c.wanted_events(), EventSet::empty());
        assert_eq!(c.handshake_deadline(), None);
        let now = Instant::now();
        assert_eq!(c.take_ctrl(now), Some((OP_REQUEST, 0)));
        assert_eq!(c.handshake_deadline(), Some(now + HANDSHAKE_TIMEOUT));
        // Anything but RESPONSE/RST during the handshake is a protocol error.
        assert_eq!(
            c.clone_for_test().handle_guest(&hdr(OP_RW, 0, 0), None),
            Verdict::Reset(ResetCause::GuestFault)
        );
        assert_eq!(
            c.handle_guest(&hdr(OP_RESPONSE, 10, 0), None),
            Verdict::Keep
        );
        assert_eq!(c.state(), ConnState::Established);
        let mut line = [0u8; 16];
        let n = b.read(&mut line).unwrap();
        assert_eq!(&line[..n], format!("OK {}\n", HOST_PORT_BASE).as_bytes());
        // The OK line is not guest data.
        assert_eq!(c.fwd_cnt.0, 0);
    }

    impl Connection {
        /// Same state, cloned stream fd (for "what if" checks).
        fn clone_for_test(&self) -> Connection {
            Connection {
                key: self.key,
                stream: self.stream.try_clone().unwrap(),
                state: self.state,
                host_initiated: self.host_initiated,
                rx_cnt: self.rx_cnt,
                fwd_cnt: self.fwd_cnt,
                last_fwd_cnt_sent: self.last_fwd_cnt_sent,
                tx_buf: self.tx_buf.clone(),
                hello: self.hello.clone(),
                host_write_shut: self.host_write_shut,
                tx_cnt: self.tx_cnt,
                peer_buf_alloc: self.peer_buf_alloc,
                peer_fwd_cnt: self.peer_fwd_cnt,
                credit_requested: self.credit_requested,
                host_readable: self.host_readable,
                host_eof: self.host_eof,
                peer_shutdown: self.peer_shutdown,
                pending: self.pending,
                in_ctrl_q: false,
                in_data_q: false,
                polled: EventSet::empty(),
            }
        }
    }
}
