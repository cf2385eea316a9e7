//! Device-level tests: a fake driver (split rings in real guest memory, built
//! with virtio_queue's descriptor types) on one side, real unix sockets on the
//! other.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::{Descriptor as SplitDescriptor, VirtqUsedElem};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::defs::*;
use super::{Vsock, VsockError};
use crate::devices::virtio::{
    ActivateError, ActivatedQueue, Interrupt, VirtioDevice, TYPE_VSOCK, VIRTIO_F_VERSION_1,
};
use crate::memory::GuestMemoryMmap;

const GUEST_CID: u64 = 3;
const QSIZE: u16 = 256;
const QUEUE_ADDR: [u64; NUM_QUEUES] = [0x0, 0x1_0000, 0x2_0000];
const BUF_BASE: u64 = 0x10_0000;
const MEM_SIZE: u64 = 0x100_0000;
const RX_DATA_LEN: u32 = 4096;
const GUEST_BUF_ALLOC: u32 = 64 * 1024;

// ------------------------------------------------------------------ fixtures

#[derive(Default)]
struct TestInterrupt {
    used: AtomicUsize,
}

impl Interrupt for TestInterrupt {
    fn signal_used_queue(&self) -> io::Result<()> {
        self.used.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn signal_config_change(&self) -> io::Result<()> {
        Ok(())
    }
}

/// A unique socket path in the temp dir; removes it and `<path>_*` siblings we
/// created when dropped.
struct TempPath {
    path: PathBuf,
    extra: Mutex<Vec<PathBuf>>,
}

impl TempPath {
    fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("husk-vsock-{}-{tag}-{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        TempPath {
            path,
            extra: Mutex::new(Vec::new()),
        }
    }

    /// Bind the listener the device connects to for guest port `port`.
    fn listen_port(&self, port: u32) -> UnixListener {
        let p = PathBuf::from(format!("{}_{port}", self.path.display()));
        let _ = std::fs::remove_file(&p);
        let l = UnixListener::bind(&p).unwrap();
        self.extra.lock().unwrap().push(p);
        l
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        for p in self.extra.lock().unwrap().iter() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Packet header as the test driver writes/reads it in guest memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Hdr {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    type_: u16,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

impl Hdr {
    /// A guest -> host packet.
    fn g2h(op: u16, src_port: u32, dst_port: u32) -> Hdr {
        Hdr {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc: GUEST_BUF_ALLOC,
            ..Default::default()
        }
    }

    fn to_bytes(self) -> [u8; 44] {
        let mut b = [0u8; 44];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    fn from_bytes(b: &[u8; 44]) -> Hdr {
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap());
        Hdr {
            src_cid: u64::from_le_bytes(b[0..8].try_into().unwrap()),
            dst_cid: u64::from_le_bytes(b[8..16].try_into().unwrap()),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }
}

#[derive(Debug)]
struct RxPkt {
    hdr: Hdr,
    data: Vec<u8>,
    used_len: u32,
}

/// The fake guest driver plus the device under test.
/// Split-ring layout (virtio spec 2.7). `virtio_queue::mock::MockSplitQueue`
/// 0.17 is not used for this: its `SplitQueueRing::end()` counts elements, not
/// bytes, so with 256 entries its used ring overlaps the second half of its
/// avail ring (and creating one zeroes the rings, so it cannot be re-created
/// per call either). The rings start zeroed because guest memory does.
#[derive(Clone, Copy)]
struct Rings {
    desc: u64,
    avail: u64,
    used: u64,
}

impl Rings {
    fn layout(base: u64) -> Rings {
        let q = u64::from(QSIZE);
        let avail = base + 16 * q;
        // flags, idx, ring[q], used_event
        let used = (avail + 4 + 2 * q + 2 + 3) & !3;
        assert!(used + 4 + 8 * q + 2 <= base + 0x1_0000);
        Rings {
            desc: base,
            avail,
            used,
        }
    }
}

struct Harness {
    mem: GuestMemoryMmap,
    rings: [Rings; NUM_QUEUES],
    dev: Arc<Mutex<Vsock>>,
    irq: Arc<TestInterrupt>,
    kicks: Vec<EventFd>,
    path: TempPath,
    next_desc: [u16; NUM_QUEUES],
    next_buf: u64,
    used_seen: [u16; NUM_QUEUES],
    rx_bufs: HashMap<u16, (u64, u64)>,
    /// Skip used RX entries for chains we did not build.
    lenient: bool,
}

impl Harness {
    fn new(tag: &str) -> Harness {
        let mut h = Self::new_inactive(tag);
        h.activate();
        h
    }

    fn new_inactive(tag: &str) -> Harness {
        let path = TempPath::new(tag);
        let dev = Vsock::new(GUEST_CID, &path.path).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
        let rings = QUEUE_ADDR.map(Rings::layout);
        Harness {
            mem,
            rings,
            dev: Arc::new(Mutex::new(dev)),
            irq: Arc::new(TestInterrupt::default()),
            kicks: Vec::new(),
            path,
            next_desc: [0; NUM_QUEUES],
            next_buf: BUF_BASE,
            used_seen: [0; NUM_QUEUES],
            rx_bufs: HashMap::new(),
            lenient: false,
        }
    }

    fn activate(&mut self) {
        let mut queues = Vec::new();
        for q in 0..NUM_QUEUES {
            let kick = EventFd::new(EFD_NONBLOCK).unwrap();
            self.kicks.push(kick.try_clone().unwrap());
            queues.push(ActivatedQueue {
                queue: self.queue(q),
                kick,
            });
        }
        self.dev()
            .activate(self.mem.clone(), self.irq.clone(), queues)
            .unwrap();
    }

    fn dev(&self) -> MutexGuard<'_, Vsock> {
        self.dev.lock().unwrap()
    }

    /// A device-side queue over the rings the harness drives.
    fn queue(&self, q: usize) -> Queue {
        let r = self.rings[q];
        let mut queue = Queue::new(QSIZE).unwrap();
        queue.set_size(QSIZE);
        queue.set_desc_table_address(Some(r.desc as u32), Some((r.desc >> 32) as u32));
        queue.set_avail_ring_address(Some(r.avail as u32), Some((r.avail >> 32) as u32));
        queue.set_used_ring_address(Some(r.used as u32), Some((r.used >> 32) as u32));
        queue.set_ready(true);
        queue
    }

    fn read_u16(&self, addr: u64) -> u16 {
        u16::from_le(self.mem.read_obj(GuestAddress(addr)).unwrap())
    }

    fn write_u16(&self, addr: u64, v: u16) {
        self.mem.write_obj(v.to_le(), GuestAddress(addr)).unwrap();
    }

    /// (id, len) of used ring entry `i` of queue `q`.
    fn used_elem(&self, q: usize, i: u16) -> (u32, u32) {
        let addr = self.rings[q].used + 4 + 8 * u64::from(i % QSIZE);
        let e: VirtqUsedElem = self.mem.read_obj(GuestAddress(addr)).unwrap();
        (e.id(), e.len())
    }

    fn alloc(&mut self, len: u64) -> u64 {
        if self.next_buf + len > MEM_SIZE {
            self.next_buf = BUF_BASE;
        }
        let addr = self.next_buf;
        self.next_buf = (addr + len + 15) & !15;
        addr
    }

    /// Make a descriptor chain available on queue `q`: (addr, len, device-writable).
    fn add_chain(&mut self, q: usize, descs: &[(u64, u32, bool)]) -> u16 {
        let n = descs.len() as u16;
        let mut start = self.next_desc[q];
        if start + n > QSIZE {
            start = 0;
        }
        self.next_desc[q] = start + n;
        let r = self.rings[q];
        for (i, &(addr, len, write)) in descs.iter().enumerate() {
            let i = i as u16;
            let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
            if i + 1 < n {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let d = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, start + i + 1));
            let daddr = r.desc + 16 * u64::from(start + i);
            self.mem.write_obj(d, GuestAddress(daddr)).unwrap();
        }
        let idx = self.read_u16(r.avail + 2);
        self.write_u16(r.avail + 4 + 2 * u64::from(idx % QSIZE), start);
        self.write_u16(r.avail + 2, idx.wrapping_add(1));
        start
    }

    /// RX chains offered but not used yet.
    fn rx_outstanding(&self) -> usize {
        let avail = self.read_u16(self.rings[RXQ].avail + 2);
        usize::from(avail.wrapping_sub(self.used_idx(RXQ)))
    }

    fn used_idx(&self, q: usize) -> u16 {
        self.read_u16(self.rings[q].used + 2)
    }

    /// Queue a guest packet on TX without telling the device.
    fn push_tx(&mut self, hdr: Hdr, data: &[u8]) {
        let hdr = Hdr {
            len: data.len() as u32,
            ..hdr
        };
        let ha = self.alloc(44);
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(ha))
            .unwrap();
        if data.is_empty() {
            self.add_chain(TXQ, &[(ha, 44, false)]);
        } else {
            let da = self.alloc(data.len() as u64);
            self.mem.write_slice(data, GuestAddress(da)).unwrap();
            self.add_chain(TXQ, &[(ha, 44, false), (da, data.len() as u32, false)]);
        }
    }

    /// What the event loop does when the device kicked its own TX queue
    /// (its work per turn is bounded): process TX again, until it stops.
    fn follow_self_kicks(&mut self) {
        while self.kicks[TXQ].read().is_ok() {
            self.dev().process_tx();
        }
    }

    /// Send a guest packet and let the device process TX.
    fn guest_tx(&mut self, hdr: Hdr, data: &[u8]) {
        self.push_tx(hdr, data);
        self.dev().process_tx();
    }

    fn push_rx(&mut self, n: usize) {
        for _ in 0..n {
            let ha = self.alloc(44);
            let da = self.alloc(RX_DATA_LEN as u64);
            let head = self.add_chain(RXQ, &[(ha, 44, true), (da, RX_DATA_LEN, true)]);
            self.rx_bufs.insert(head, (ha, da));
        }
    }

    /// Give the device `n` RX buffers.
    fn give_rx(&mut self, n: usize) {
        self.push_rx(n);
        self.dev().process_rx();
    }

    /// Next packet the device put in the RX used ring.
    fn recv(&mut self) -> Option<RxPkt> {
        let (len, ha, da) = loop {
            if self.used_idx(RXQ) == self.used_seen[RXQ] {
                return None;
            }
            let (id, len) = self.used_elem(RXQ, self.used_seen[RXQ]);
            self.used_seen[RXQ] = self.used_seen[RXQ].wrapping_add(1);
            match self.rx_bufs.remove(&(id as u16)) {
                Some((ha, da)) => break (len, ha, da),
                // A chain the test did not build with `push_rx` (garbage test).
                None if self.lenient => continue,
                None => panic!("used RX head {id} is not a buffer we gave"),
            }
        };
        let mut hb = [0u8; 44];
        self.mem.read_slice(&mut hb, GuestAddress(ha)).unwrap();
        let hdr = Hdr::from_bytes(&hb);
        let mut data = vec![0u8; len.saturating_sub(44) as usize];
        self.mem.read_slice(&mut data, GuestAddress(da)).unwrap();
        Some(RxPkt {
            hdr,
            data,
            used_len: len,
        })
    }

    fn recv_all(&mut self) -> Vec<RxPkt> {
        std::iter::from_fn(|| self.recv()).collect()
    }

    /// Receive exactly one packet (giving a buffer) and return it.
    fn expect_one(&mut self) -> RxPkt {
        self.give_rx(1);
        let p = self.recv().expect("a packet");
        assert!(self.recv().is_none());
        p
    }

    fn expect_silence(&mut self) {
        self.give_rx(1);
        let pkts = self.recv_all();
        assert!(pkts.is_empty(), "unexpected packets: {pkts:?}");
    }

    fn client(&self) -> UnixStream {
        let c = UnixStream::connect(&self.path.path).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c
    }

    /// Guest-initiated connection from guest port `gport` to host port `hport`.
    fn guest_connect(&mut self, gport: u32, hport: u32) -> (UnixListener, UnixStream) {
        let listener = self.path.listen_port(hport);
        self.guest_tx(Hdr::g2h(OP_REQUEST, gport, hport), &[]);
        let (host, _) = listener.accept().unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let p = self.expect_one();
        assert_eq!(p.hdr.op, OP_RESPONSE, "{p:?}");
        assert_eq!((p.hdr.src_port, p.hdr.dst_port), (hport, gport));
        (listener, host)
    }

    /// Host-initiated connection to guest port `gport`; returns the client and our port.
    fn host_connect(&mut self, gport: u32) -> (UnixStream, u32) {
        let mut c = self.client();
        c.write_all(format!("CONNECT {gport}\n").as_bytes())
            .unwrap();
        self.dev().process_backend_events();
        let req = self.expect_one();
        assert_eq!(req.hdr.op, OP_REQUEST, "{req:?}");
        assert_eq!(req.hdr.dst_port, gport);
        let hport = req.hdr.src_port;
        self.guest_tx(Hdr::g2h(OP_RESPONSE, gport, hport), &[]);
        assert_eq!(read_line(&mut c), format!("OK {hport}\n"));
        (c, hport)
    }
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 {
        line.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    String::from_utf8(line).unwrap()
}

fn assert_closed(s: &mut UnixStream) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 16];
    match s.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("expected closed stream, got {other:?}"),
    }
}

fn assert_from_host(p: &RxPkt) {
    assert_eq!(p.hdr.src_cid, HOST_CID);
    assert_eq!(p.hdr.dst_cid, GUEST_CID);
    assert_eq!(p.hdr.type_, TYPE_STREAM);
    assert_eq!(p.used_len, 44 + p.hdr.len);
}

// --------------------------------------------------------------------- tests

#[test]
fn config_space_and_features() {
    let h = Harness::new_inactive("config");
    let mut dev = h.dev();
    assert_eq!(dev.device_type(), TYPE_VSOCK);
    assert_eq!(dev.queue_max_sizes(), &[256, 256, 256]);
    assert_eq!(dev.avail_features(), VIRTIO_F_VERSION_1);

    let mut cid = [0xaau8; 8];
    dev.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), GUEST_CID);
    // Drivers may read the le64 as two le32 halves.
    let mut lo = [0xaau8; 4];
    let mut hi = [0xaau8; 4];
    dev.read_config(0, &mut lo);
    dev.read_config(4, &mut hi);
    assert_eq!(u32::from_le_bytes(lo), GUEST_CID as u32);
    assert_eq!(u32::from_le_bytes(hi), 0);
    // Past the end: untouched; straddling: only the in-range part.
    let mut out = [0xaau8; 4];
    dev.read_config(8, &mut out);
    assert_eq!(out, [0xaa; 4]);
    dev.read_config(u64::MAX, &mut out);
    assert_eq!(out, [0xaa; 4]);
    let mut out = [0xaau8; 4];
    dev.read_config(6, &mut out);
    assert_eq!(out, [0, 0, 0xaa, 0xaa]);
    // Read-only.
    dev.write_config(0, &[9; 8]);
    let mut cid = [0u8; 8];
    dev.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), GUEST_CID);

    dev.set_acked_features(VIRTIO_F_VERSION_1 | 1 << 29 | 1);
    assert_eq!(dev.acked_features(), VIRTIO_F_VERSION_1);
}

#[test]
fn constructor_checks() {
    let p = TempPath::new("ctor");
    for cid in [0, 1, 2, u64::from(u32::MAX), 1 << 32] {
        assert!(matches!(
            Vsock::new(cid, &p.path),
            Err(VsockError::InvalidGuestCid(c)) if c == cid
        ));
    }
    // An existing file is neither reused nor removed.
    std::fs::write(&p.path, b"not a socket").unwrap();
    let err = Vsock::new(3, &p.path).err().expect("bind must fail");
    assert!(matches!(err, VsockError::Bind { .. }), "{err}");
    assert_eq!(std::fs::read(&p.path).unwrap(), b"not a socket");
    std::fs::remove_file(&p.path).unwrap();

    let dev = Vsock::new(u64::from(u32::MAX) - 1, &p.path).unwrap();
    assert_eq!(dev.uds_path(), Path::new(&p.path));
    assert!(p.path.exists());
}

#[test]
fn activate_checks_queue_count() {
    let h = Harness::new_inactive("qcount");
    let q = ActivatedQueue {
        queue: h.queue(0),
        kick: EventFd::new(EFD_NONBLOCK).unwrap(),
    };
    let err = h
        .dev()
        .activate(h.mem.clone(), h.irq.clone(), vec![q])
        .unwrap_err();
    assert!(matches!(
        err,
        ActivateError::QueueCount {
            expected: 3,
            got: 1
        }
    ));
    assert!(!h.dev().is_activated());
}

#[test]
fn guest_rw_reaches_host_stream() {
    let mut h = Harness::new("rw");
    let (_l, mut host) = h.guest_connect(1025, 5000);
    h.guest_tx(Hdr::g2h(OP_RW, 1025, 5000), b"hello world");
    let mut buf = [0u8; 11];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello world");
    assert_eq!(h.used_idx(TXQ), 2, "REQUEST and RW chains consumed");
    assert!(h.irq.used.load(Ordering::SeqCst) > 0);
    // Nothing comes back for plain data (no credit update needed yet).
    h.expect_silence();
}

#[test]
fn guest_request_response_fields() {
    let mut h = Harness::new("resp");
    let _l = h.path.listen_port(6000);
    h.guest_tx(Hdr::g2h(OP_REQUEST, 1026, 6000), &[]);
    let p = h.expect_one();
    assert_from_host(&p);
    assert_eq!(p.hdr.op, OP_RESPONSE);
    assert_eq!((p.hdr.src_port, p.hdr.dst_port), (6000, 1026));
    assert_eq!(p.hdr.buf_alloc, CONN_BUF_ALLOC);
    assert_eq!(p.hdr.fwd_cnt, 0);
    assert_eq!(p.hdr.len, 0);
}

#[test]
fn guest_request_without_listener_gets_rst() {
    let mut h = Harness::new("norst");
    h.guest_tx(Hdr::g2h(OP_REQUEST, 1027, 9999), &[]);
    let p = h.expect_one();
    assert_from_host(&p);
    assert_eq!(p.hdr.op, OP_RST);
    assert_eq!((p.hdr.src_port, p.hdr.dst_port), (9999, 1027));
}

#[test]
fn host_connect_handshake_and_data() {
    let mut h = Harness::new("hconn");
    let mut c = h.client();
    c.write_all(b"CONNECT 1024\n").unwrap();
    h.dev().process_backend_events();
    let req = h.expect_one();
    assert_from_host(&req);
    assert_eq!(req.hdr.op, OP_REQUEST);
    assert_eq!(req.hdr.dst_port, 1024);
    assert!(req.hdr.src_port >= HOST_PORT_BASE);
    assert_eq!(req.hdr.buf_alloc, CONN_BUF_ALLOC);
    let hport = req.hdr.src_port;

    h.guest_tx(Hdr::g2h(OP_RESPONSE, 1024, hport), &[]);
    assert_eq!(read_line(&mut c), format!("OK {hport}\n"));

    // host -> guest
    c.write_all(b"ping").unwrap();
    h.dev().process_backend_events();
    let p = h.expect_one();
    assert_from_host(&p);
    assert_eq!(p.hdr.op, OP_RW);
    assert_eq!((p.hdr.src_port, p.hdr.dst_port), (hport, 1024));
    assert_eq!(p.data, b"ping");
    // guest -> host
    h.guest_tx(Hdr::g2h(OP_RW, 1024, hport), b"pong");
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");

    // A second client gets a different host port.
    let (_c2, hport2) = h.host_connect(1024);
    assert_ne!(hport, hport2);
}

#[test]
fn host_connect_data_sent_with_connect_line_is_kept() {
    let mut h = Harness::new("early");
    let mut c = h.client();
    c.write_all(b"CONNECT 77\nearly bytes").unwrap();
    h.dev().process_backend_events();
    let req = h.expect_one();
    assert_eq!(req.hdr.op, OP_REQUEST);
    h.guest_tx(Hdr::g2h(OP_RESPONSE, 77, req.hdr.src_port), &[]);
    assert_eq!(read_line(&mut c), format!("OK {}\n", req.hdr.src_port));
    h.dev().process_backend_events();
    let p = h.expect_one();
    assert_eq!(p.hdr.op, OP_RW);
    assert_eq!(p.data, b"early bytes");
}

#[test]
fn host_connect_refused_by_guest_closes_client() {
    let mut h = Harness::new("hrst");
    let mut c = h.client();
    c.write_all(b"CONNECT 1024\n").unwrap();
    h.dev().process_backend_events();
    let req = h.expect_one();
    assert_eq!(req.hdr.op, OP_REQUEST);
    h.guest_tx(Hdr::g2h(OP_RST, 1024, req.hdr.src_port), &[]);
    assert_closed(&mut c);
    // No RST is sent back for a RST.
    h.expect_silence();
    assert_eq!(h.dev().muxer.num_connections(), 0);
}

#[test]
fn bad_connect_lines_close_client() {
    let mut h = Harness::new("badline");
    let long = format!("CONNECT {}", "1".repeat(40));
    let lines: [&[u8]; 7] = [
        b"HELLO 1024\n",
        b"CONNECT abc\n",
        b"CONNECT 99999999999\n",
        b"CONNECT -1\n",
        b"CONNECT\n",
        b"\n",
        long.as_bytes(),
    ];
    for line in lines {
        let mut c = h.client();
        c.write_all(line).unwrap();
        h.dev().process_backend_events();
        assert_closed(&mut c);
    }
    h.expect_silence();
    let dev = h.dev();
    assert_eq!(dev.muxer.num_pending_clients(), 0);
    assert_eq!(dev.muxer.num_connections(), 0);
    assert_eq!(dev.metrics().host_clients_rejected, lines.len() as u64);
}

#[test]
fn host_connections_before_activation_wait() {
    let mut h = Harness::new_inactive("preact");
    let mut c = h.client();
    c.write_all(b"CONNECT 52\n").unwrap();
    h.dev().process_backend_events();
    assert_eq!(h.dev().muxer.num_connections(), 1);
    h.activate();
    // What the event loop does on the activation event.
    h.dev().process_backend_events();
    let req = h.expect_one();
    assert_eq!(req.hdr.op, OP_REQUEST);
    assert_eq!(req.hdr.dst_port, 52);
    h.guest_tx(Hdr::g2h(OP_RESPONSE, 52, req.hdr.src_port), &[]);
    assert_eq!(read_line(&mut c), format!("OK {}\n", req.hdr.src_port));
}

#[test]
fn host_to_guest_respects_guest_credit() {
    let mut h = Harness::new("credit");
    let listener = h.path.listen_port(7000);
    let mut req = Hdr::g2h(OP_REQUEST, 1030, 7000);
    req.buf_alloc = 8;
    h.guest_tx(req, &[]);
    let (mut host, _) = listener.accept().unwrap();
    assert_eq!(h.expect_one().hdr.op, OP_RESPONSE);

    host.write_all(b"0123456789abcdefghij").unwrap();
    h.dev().process_backend_events();
    h.give_rx(4);
    let pkts = h.recv_all();
    assert_eq!(pkts.len(), 2, "{pkts:?}");
    assert_eq!(pkts[0].hdr.op, OP_RW);
    assert_eq!(pkts[0].data, b"01234567", "no more than buf_alloc");
    assert_eq!(pkts[0].hdr.buf_alloc, CONN_BUF_ALLOC);
    assert_eq!(pkts[1].hdr.op, OP_CREDIT_REQUEST, "stalled: ask for credit");
    // Still stalled, even when the host socket is polled again.
    h.dev().process_backend_events();
    h.dev().process_rx();
    assert!(h.recv_all().is_empty());

    // The guest consumed 8 bytes: the next 8 flow.
    let mut upd = Hdr::g2h(OP_CREDIT_UPDATE, 1030, 7000);
    upd.buf_alloc = 8;
    upd.fwd_cnt = 8;
    h.guest_tx(upd, &[]);
    let pkts = h.recv_all();
    assert_eq!(pkts.len(), 2, "{pkts:?}");
    assert_eq!(pkts[0].data, b"89abcdef");
    assert_eq!(pkts[1].hdr.op, OP_CREDIT_REQUEST, "stalled again");
    // Bigger window: the rest.
    upd.buf_alloc = 1024;
    upd.fwd_cnt = 16;
    h.push_rx(4); // the first four were used up
    h.guest_tx(upd, &[]);
    let pkts = h.recv_all();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(pkts[0].data, b"ghij");
    h.expect_silence();
}

#[test]
fn credit_request_answered_and_control_first() {
    let mut h = Harness::new("creq");
    let (_l, mut host) = h.guest_connect(1031, 7100);
    h.guest_tx(Hdr::g2h(OP_RW, 1031, 7100), b"12345");
    let mut b = [0u8; 5];
    host.read_exact(&mut b).unwrap();
    // Host data waits in the socket while the guest asks for credit: with a
    // single RX buffer, the control packet goes first.
    host.write_all(b"data").unwrap();
    h.dev().process_backend_events();
    h.guest_tx(Hdr::g2h(OP_CREDIT_REQUEST, 1031, 7100), &[]);
    let p = h.expect_one();
    assert_from_host(&p);
    assert_eq!(p.hdr.op, OP_CREDIT_UPDATE);
    assert_eq!(p.hdr.buf_alloc, CONN_BUF_ALLOC);
    assert_eq!(p.hdr.fwd_cnt, 5);
    let p = h.expect_one();
    assert_eq!(p.hdr.op, OP_RW);
    assert_eq!(p.data, b"data");
    assert_eq!(p.hdr.fwd_cnt, 5);
}

#[test]
fn credit_update_sent_as_guest_data_is_forwarded() {
    let mut h = Harness::new("cupd");
    let (_l, mut host) = h.guest_connect(1032, 7200);
    host.set_nonblocking(true).unwrap();
    h.push_rx(8);
    let chunk = vec![0x5au8; 32 * 1024];
    let mut sink = vec![0u8; 1 << 20];
    let mut sent = 0u32;
    let mut update = None;
    for _ in 0..16 {
        h.guest_tx(Hdr::g2h(OP_RW, 1032, 7200), &chunk);
        sent += chunk.len() as u32;
        loop {
            match host.read(&mut sink) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        h.dev().process_backend_events();
        if let Some(p) = h.recv() {
            update = Some((sent, p));
            break;
        }
    }
    let (sent, p) = update.expect("a credit update before the guest runs dry");
    assert_eq!(p.hdr.op, OP_CREDIT_UPDATE);
    assert!(sent > CONN_BUF_ALLOC - CREDIT_UPDATE_THRESHOLD);
    assert!(sent <= CONN_BUF_ALLOC, "guest never believed us full");
    assert_eq!(p.hdr.fwd_cnt, sent, "everything was forwarded");
}

#[test]
fn guest_overrunning_credit_is_reset_and_bounded() {
    let mut h = Harness::new("overrun");
    let (_l, _host) = h.guest_connect(1033, 7300);
    // Host never reads: the socket buffer fills, then our buffer, then RST.
    let chunk = vec![1u8; MAX_PKT_DATA as usize];
    let mut rst = None;
    for _ in 0..64 {
        h.guest_tx(Hdr::g2h(OP_RW, 1033, 7300), &chunk);
        h.give_rx(1);
        if let Some(p) = h.recv() {
            if p.hdr.op == OP_CREDIT_UPDATE {
                continue; // which this guest ignores
            }
            rst = Some(p);
            break;
        }
    }
    let p = rst.expect("connection reset");
    assert_eq!(p.hdr.op, OP_RST);
    assert_eq!(h.dev().metrics().guest_protocol_errors, 1);
    assert_eq!(h.dev().muxer.num_connections(), 0);
}

#[test]
fn unknown_connection_gets_rst() {
    let mut h = Harness::new("unknown");
    for op in [
        OP_RW,
        OP_CREDIT_UPDATE,
        OP_CREDIT_REQUEST,
        OP_SHUTDOWN,
        OP_RESPONSE,
        0,
        99,
    ] {
        h.guest_tx(Hdr::g2h(op, 2000, 3000), b"");
        let p = h.expect_one();
        assert_from_host(&p);
        assert_eq!(p.hdr.op, OP_RST, "reply to op {op}");
        assert_eq!((p.hdr.src_port, p.hdr.dst_port), (3000, 2000));
    }
    // Data for an unknown connection too.
    h.guest_tx(Hdr::g2h(OP_RW, 2000, 3000), b"xyz");
    assert_eq!(h.expect_one().hdr.op, OP_RST);
    // But never a RST for a RST.
    h.guest_tx(Hdr::g2h(OP_RST, 2000, 3000), &[]);
    h.expect_silence();
}

#[test]
fn bad_addresses_and_types() {
    let mut h = Harness::new("addr");
    let _l = h.path.listen_port(4000);
    let mut p = Hdr::g2h(OP_REQUEST, 1, 4000);
    p.src_cid = 4; // spoofed
    h.guest_tx(p, &[]);
    let mut p = Hdr::g2h(OP_REQUEST, 1, 4000);
    p.dst_cid = 7; // not the host
    h.guest_tx(p, &[]);
    let mut p = Hdr::g2h(OP_REQUEST, 1, 4000);
    p.src_cid = GUEST_CID | 1 << 40;
    h.guest_tx(p, &[]);
    h.expect_silence();
    assert_eq!(h.dev().metrics().tx_bad_address, 3);
    assert_eq!(h.dev().muxer.num_connections(), 0);

    let mut p = Hdr::g2h(OP_REQUEST, 1, 4000);
    p.type_ = 2; // SEQPACKET
    h.guest_tx(p, &[]);
    assert_eq!(h.expect_one().hdr.op, OP_RST);
    assert_eq!(h.dev().muxer.num_connections(), 0);
    assert_eq!(h.used_idx(TXQ), 4, "all chains consumed");
}

#[test]
fn malformed_tx_chains_are_consumed() {
    let mut h = Harness::new("badtx");
    let good = Hdr::g2h(OP_RW, 1, 2);
    let write = |h: &mut Harness, hdr: Hdr| {
        let a = h.alloc(44);
        h.mem.write_slice(&hdr.to_bytes(), GuestAddress(a)).unwrap();
        a
    };
    // 1. Descriptor too short for a header.
    let a = write(&mut h, good);
    h.add_chain(TXQ, &[(a, 20, false)]);
    // 2. Header len larger than the data buffer.
    let a = write(&mut h, Hdr { len: 100, ..good });
    let d = h.alloc(10);
    h.add_chain(TXQ, &[(a, 44, false), (d, 10, false)]);
    // 3. Header len but no data descriptor at all.
    let a = write(&mut h, Hdr { len: 100, ..good });
    h.add_chain(TXQ, &[(a, 44, false)]);
    // 4. Write-only descriptor on TX.
    let a = write(&mut h, good);
    h.add_chain(TXQ, &[(a, 44, true)]);
    // 5. Write-only data descriptor.
    let a = write(&mut h, Hdr { len: 4, ..good });
    let d = h.alloc(4);
    h.add_chain(TXQ, &[(a, 44, false), (d, 4, true)]);
    // 6. Header outside guest memory.
    h.add_chain(TXQ, &[(0xffff_0000_0000, 44, false)]);
    // 7. Header straddling the end of guest memory.
    h.add_chain(TXQ, &[(MEM_SIZE - 20, 44, false)]);
    // 8. Data outside guest memory.
    let a = write(&mut h, Hdr { len: 8, ..good });
    h.add_chain(TXQ, &[(a, 44, false), (u64::MAX - 3, 8, false)]);
    // 9. len above the packet limit.
    let big = MAX_PKT_DATA + 1;
    let a = write(&mut h, Hdr { len: big, ..good });
    let d = h.alloc(big as u64);
    h.add_chain(TXQ, &[(a, 44, false), (d, big, false)]);
    // 10. Header claiming u32::MAX bytes.
    let a = write(
        &mut h,
        Hdr {
            len: u32::MAX,
            ..good
        },
    );
    h.add_chain(TXQ, &[(a, 44, false), (d, 16, false)]);
    h.dev().process_tx();

    assert_eq!(h.used_idx(TXQ), 10, "every chain consumed");
    for i in 0..10 {
        assert_eq!(h.used_elem(TXQ, i).1, 0);
    }
    assert_eq!(h.dev().metrics().tx_malformed_chains, 10);
    h.expect_silence();

    // The device still works.
    h.guest_tx(Hdr::g2h(OP_REQUEST, 5, 6), &[]);
    assert_eq!(h.expect_one().hdr.op, OP_RST);
    let (_l, mut host) = h.guest_connect(1034, 7400);
    h.guest_tx(Hdr::g2h(OP_RW, 1034, 7400), b"ok");
    let mut b = [0u8; 2];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ok");
}

#[test]
fn malformed_rx_chains_are_consumed() {
    let mut h = Harness::new("badrx");
    h.guest_tx(Hdr::g2h(OP_REQUEST, 5, 6), &[]); // queues a RST
    let ha = h.alloc(44);
    let da = h.alloc(64);
    let mut heads = vec![
        // Read-only header.
        h.add_chain(RXQ, &[(ha, 44, false), (da, 64, true)]),
        // Header descriptor too short.
        h.add_chain(RXQ, &[(ha, 20, true), (da, 64, true)]),
        // Header only, no room for data.
        h.add_chain(RXQ, &[(ha, 44, true)]),
        // Out of bounds.
        h.add_chain(RXQ, &[(0xffff_0000_0000, 44, true), (da, 64, true)]),
        // Data descriptor over the size limit.
        h.add_chain(RXQ, &[(ha, 44, true), (da, MAX_PKT_DATA + 1, true)]),
    ];
    for &head in &heads {
        h.rx_bufs.insert(head, (ha, da));
    }
    h.dev().process_rx();
    for _ in 0..heads.len() {
        let p = h.recv().unwrap();
        assert_eq!(p.used_len, 0);
    }
    assert_eq!(h.dev().metrics().rx_malformed_chains, heads.len() as u64);
    heads.clear();
    // The RST was not lost: it goes into the first good buffer.
    let p = h.expect_one();
    assert_eq!(p.hdr.op, OP_RST);
    assert_eq!((p.hdr.src_port, p.hdr.dst_port), (6, 5));
}

#[test]
fn guest_shutdown_then_rst() {
    let mut h = Harness::new("gshut");
    let (_l, mut host) = h.guest_connect(1035, 7500);
    let mut sd = Hdr::g2h(OP_SHUTDOWN, 1035, 7500);
    sd.flags = SHUTDOWN_SEND;
    h.guest_tx(sd, &[]);
    let mut b = [0u8; 4];
    assert_eq!(host.read(&mut b).unwrap(), 0, "host sees EOF");
    h.expect_silence();
    // The host may still talk to the guest.
    host.write_all(b"bye").unwrap();
    h.dev().process_backend_events();
    assert_eq!(h.expect_one().data, b"bye");
    sd.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    h.guest_tx(sd, &[]);
    let p = h.expect_one();
    assert_eq!(p.hdr.op, OP_RST);
    assert_eq!((p.hdr.src_port, p.hdr.dst_port), (7500, 1035));
    assert_eq!(h.dev().muxer.num_connections(), 0);
    // Our end of the unix stream is closed.
    assert!(
        host.write_all(b"x").is_err() || {
            let mut b = [0u8; 1];
            host.read(&mut b).unwrap() == 0
        }
    );
}

#[test]
fn host_eof_sends_shutdown_and_host_error_rst() {
    let mut h = Harness::new("heof");
    let (_l, host) = h.guest_connect(1036, 7600);
    drop(host);
    h.dev().process_backend_events();
    let p = h.expect_one();
    assert_eq!(p.hdr.op, OP_SHUTDOWN);
    assert_eq!(p.hdr.flags, SHUTDOWN_SEND);
    assert_eq!((p.hdr.src_port, p.hdr.dst_port), (7600, 1036));
    // Guest writes to the closed host stream: the write fails and the
    // connection is reset.
    h.guest_tx(Hdr::g2h(OP_RW, 1036, 7600), b"anyone?");
    let p = h.expect_one();
    assert_eq!(p.hdr.op, OP_RST);
    assert_eq!(h.dev().muxer.num_connections(), 0);
}

#[test]
fn rst_queue_is_bounded_and_applies_backpressure() {
    let mut h = Harness::new("backpressure");
    // No RX buffers: every bogus packet queues a RST.
    for i in 0..200 {
        h.push_tx(Hdr::g2h(OP_RW, 10_000 + i, 1), &[]);
    }
    h.dev().process_tx();
    assert_eq!(h.used_idx(TXQ), 200);
    for i in 200..300 {
        h.push_tx(Hdr::g2h(OP_RW, 10_000 + i, 1), &[]);
    }
    h.dev().process_tx();
    assert_eq!(
        h.used_idx(TXQ) as usize,
        RST_QUEUE_SOFT_CAP,
        "TX stalls while RSTs cannot be delivered"
    );
    let mut got = Vec::new();
    for _ in 0..3 {
        h.give_rx(100);
        got.extend(h.recv_all());
    }
    assert_eq!(h.used_idx(TXQ), 300, "TX resumed");
    assert_eq!(got.len(), 300);
    for (i, p) in got.iter().enumerate() {
        assert_eq!(p.hdr.op, OP_RST);
        assert_eq!(p.hdr.dst_port, 10_000 + i as u32, "in order");
    }
    assert_eq!(h.dev().metrics().rst_dropped, 0);
}

#[test]
fn handshake_timeout() {
    let mut h = Harness::new("timeout");
    let mut c = h.client();
    c.write_all(b"CONNECT 1024\n").unwrap();
    // A second client never finishes its CONNECT line.
    let mut silent = h.client();
    silent.write_all(b"CONN").unwrap();
    h.dev().process_backend_events();
    let req = h.expect_one();
    assert_eq!(req.hdr.op, OP_REQUEST);
    let start = Instant::now();
    let rst = loop {
        assert!(start.elapsed() < HANDSHAKE_TIMEOUT * 3, "no timeout");
        std::thread::sleep(TIMER_TICK / 2);
        h.dev().process_backend_events();
        h.give_rx(1);
        if let Some(p) = h.recv() {
            break p;
        }
    };
    assert!(start.elapsed() >= HANDSHAKE_TIMEOUT - TIMER_TICK);
    assert_eq!(rst.hdr.op, OP_RST);
    assert_eq!(rst.hdr.src_port, req.hdr.src_port);
    assert_closed(&mut c);
    assert_closed(&mut silent);
    let dev = h.dev();
    assert_eq!(dev.metrics().handshake_timeouts, 1);
    assert_eq!(dev.muxer.num_connections(), 0);
    assert_eq!(dev.muxer.num_pending_clients(), 0);
}

#[test]
fn event_manager_round_trip() {
    let mut h = Harness::new_inactive("evmgr");
    let mut em = EventManager::<Arc<Mutex<Vsock>>>::new().unwrap();
    em.add_subscriber(h.dev.clone());
    h.activate();

    let run_until = |em: &mut EventManager<Arc<Mutex<Vsock>>>, h: &mut Harness, what: &str| {
        for _ in 0..100 {
            em.run_with_timeout(50).unwrap();
            if let Some(p) = h.recv() {
                return p;
            }
        }
        panic!("timed out waiting for {what}");
    };

    // Host connects; the guest posts RX buffers and kicks.
    let mut c = h.client();
    c.write_all(b"CONNECT 1024\n").unwrap();
    h.push_rx(4);
    h.kicks[RXQ].write(1).unwrap();
    let req = run_until(&mut em, &mut h, "REQUEST");
    assert_eq!(req.hdr.op, OP_REQUEST);
    let hport = req.hdr.src_port;

    h.push_tx(Hdr::g2h(OP_RESPONSE, 1024, hport), &[]);
    h.kicks[TXQ].write(1).unwrap();
    for _ in 0..5 {
        em.run_with_timeout(50).unwrap();
    }
    assert_eq!(read_line(&mut c), format!("OK {hport}\n"));

    c.write_all(b"ping").unwrap();
    let p = run_until(&mut em, &mut h, "RW");
    assert_eq!(p.hdr.op, OP_RW);
    assert_eq!(p.data, b"ping");

    h.push_tx(Hdr::g2h(OP_RW, 1024, hport), b"pong");
    h.kicks[TXQ].write(1).unwrap();
    for _ in 0..5 {
        em.run_with_timeout(50).unwrap();
    }
    let mut b = [0u8; 4];
    c.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"pong");
    assert!(h.irq.used.load(Ordering::SeqCst) >= 3);
    // Idle: the loop does not spin on a ready fd.
    assert_eq!(em.run_with_timeout(50).unwrap(), 0);
}

#[test]
fn connection_churn_without_rx_buffers_stays_bounded() {
    let mut h = Harness::new("churn");
    let _l = h.path.listen_port(8000);
    // Open and immediately reset connections while never giving RX buffers:
    // each RESPONSE that cannot be delivered must not leave garbage behind.
    for round in 0..4u32 {
        for i in 0..100u32 {
            let gport = 20_000 + round * 100 + i;
            h.push_tx(Hdr::g2h(OP_REQUEST, gport, 8000), &[]);
            h.push_tx(Hdr::g2h(OP_RST, gport, 8000), &[]);
            h.dev().process_tx();
        }
        assert_eq!(h.dev().muxer.num_connections(), 0);
        assert_eq!(h.dev().muxer.rx_backlog(), 0);
    }
    assert_eq!(h.used_idx(TXQ), 800);
    h.expect_silence();
}

/// Deterministic xorshift PRNG for the garbage test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_garbage_from_the_guest() {
    let mut h = Harness::new("garbage");
    h.lenient = true;
    let _l = h.path.listen_port(1);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let ops = [
        0,
        OP_REQUEST,
        OP_RESPONSE,
        OP_RST,
        OP_SHUTDOWN,
        OP_RW,
        6,
        7,
        8,
        0xffff,
    ];
    let mut tx_total = 0u16;
    for _round in 0..40 {
        for q in [TXQ, RXQ] {
            // Like any driver, never offer more chains than the ring holds
            // (unconsumed RX buffers stay outstanding).
            let n = if q == TXQ {
                32
            } else {
                32.min(200usize.saturating_sub(h.rx_outstanding()))
            };
            for _ in 0..n {
                // A header at a valid address with random-ish contents.
                let ha = h.alloc(64);
                let mut hdr = Hdr::g2h(ops[rng.below(ops.len() as u64) as usize], 0, 0);
                hdr.src_port = rng.below(4) as u32;
                hdr.dst_port = rng.below(3) as u32;
                hdr.len = match rng.below(4) {
                    0 => 0,
                    1 => rng.below(64) as u32,
                    2 => rng.below(2 * u64::from(MAX_PKT_DATA)) as u32,
                    _ => rng.next() as u32,
                };
                hdr.flags = rng.below(8) as u32;
                hdr.buf_alloc = rng.next() as u32;
                hdr.fwd_cnt = rng.next() as u32;
                if rng.below(8) == 0 {
                    hdr.src_cid = rng.next();
                }
                if rng.below(8) == 0 {
                    hdr.type_ = rng.next() as u16;
                }
                h.mem
                    .write_slice(&hdr.to_bytes(), GuestAddress(ha))
                    .unwrap();
                // Random descriptors: address, length, flags (incl. INDIRECT)
                // and next index all arbitrary.
                let n = 1 + rng.below(3) as u16;
                let start = rng.below(u64::from(QSIZE)) as u16;
                for i in 0..n {
                    let addr = match rng.below(5) {
                        0 => rng.next(),
                        1 => MEM_SIZE - rng.below(64),
                        _ => ha,
                    };
                    let len = match rng.below(3) {
                        0 => rng.next() as u32,
                        1 => rng.below(128) as u32,
                        _ => 44 + rng.below(4096) as u32,
                    };
                    let flags = rng.below(8) as u16; // NEXT | WRITE | INDIRECT
                    let next = rng.below(u64::from(QSIZE) + 2) as u16;
                    let d = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
                    let slot = (start + i) % QSIZE;
                    let daddr = h.rings[q].desc + 16 * u64::from(slot);
                    h.mem.write_obj(d, GuestAddress(daddr)).unwrap();
                }
                let r = h.rings[q];
                let idx = h.read_u16(r.avail + 2);
                h.write_u16(r.avail + 4 + 2 * u64::from(idx % QSIZE), start);
                h.write_u16(r.avail + 2, idx.wrapping_add(1));
            }
        }
        tx_total += 32;
        h.dev().process_tx();
        h.dev().process_backend_events();
        // Give proper RX buffers until the device has nothing left to say;
        // that also un-stalls TX if the RST queue filled up.
        for _ in 0..100 {
            if !h.dev().muxer.has_rx_work_for_test() {
                break;
            }
            h.push_rx(16.min(200usize.saturating_sub(h.rx_outstanding())));
            h.dev().process_rx();
            h.recv_all();
        }
        assert_eq!(h.used_idx(TXQ), tx_total, "all TX chains consumed");
        assert!(!h.dev().muxer.has_rx_work_for_test());
    }
    assert!(h.dev().metrics().tx_malformed_chains > 0);
    assert!(h.dev().metrics().rx_malformed_chains > 0);
    // Use up the RX chains still offered (garbage may have overwritten their
    // descriptors) by provoking one RST each.
    let n = h.rx_outstanding() as u32;
    for i in 0..n {
        h.push_tx(Hdr::g2h(OP_RW, 60_000 + i, 60_000), &[]);
    }
    h.dev().process_tx();
    h.follow_self_kicks();
    h.recv_all();
    assert_eq!(h.rx_outstanding(), 0);
    // Malformed ones were consumed without taking an RST; drain the rest.
    while h.dev().muxer.has_rx_work_for_test() {
        h.give_rx(16);
        h.recv_all();
    }
    h.lenient = false;
    // A well-formed exchange still works.
    let (_l2, mut host) = h.guest_connect(4242, 9100);
    h.guest_tx(Hdr::g2h(OP_RW, 4242, 9100), b"still alive");
    let mut b = [0u8; 11];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"still alive");
}

/// Review F14: a guest that keeps both queues busy gets at most
/// PUMP_BUDGET chains handled per event-loop turn; the device kicks its own
/// TX queue for the rest, so the loop serves host connections in between
/// and then finishes the work.
#[test]
fn pump_work_per_turn_is_bounded() {
    let mut h = Harness::new("budget");
    // Every packet on an unknown connection is answered with a RST on RX:
    // more chains of work than one turn may do.
    let (n_tx, n_rx) = (200, 120);
    h.push_rx(n_rx);
    for i in 0..n_tx as u32 {
        h.push_tx(Hdr::g2h(OP_RW, 20_000 + i, 1), &[]);
    }
    let done = |h: &Harness| usize::from(h.used_idx(TXQ)) + usize::from(h.used_idx(RXQ));
    assert!(n_tx + n_rx > PUMP_BUDGET);
    h.dev().process_tx();
    assert_eq!(done(&h), PUMP_BUDGET, "one turn, one budget");
    assert!(h.kicks[TXQ].read().is_ok(), "the device kicked itself");
    h.dev().process_tx();
    assert_eq!(done(&h), n_tx + n_rx, "the next turn finishes");
    assert_eq!(h.recv_all().len(), n_rx);
    assert!(h.kicks[TXQ].read().is_err(), "no kick once all is done");
}
