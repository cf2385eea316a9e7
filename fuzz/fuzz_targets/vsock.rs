//! virtio-vsock: guest packets on the TX queue, RX buffers, and the host
//! side of the unix-socket backend (clients sending `CONNECT <port>`,
//! listeners for guest-initiated connections, data, close), all through the
//! public `Vsock` API as the VMM's event loop calls it. Everything is driven
//! synchronously from the input; sockets live in this process's scratch
//! directory (`$TMPDIR/husk-fuzz-vsock-<pid>`).
//!
//! Input: byte 0 picks the queue size (16/64/256/256); then operations (see
//! `run_one`), each one opcode byte plus operands; missing bytes read as 0.
//! Every packet the device puts on the RX queue is checked (addresses,
//! type, lengths) and remembered, so later operations can answer it (a
//! guest RESPONSE to a host REQUEST, data on an accepted connection).
#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use husk_fuzz::cursor::Cursor;
use husk_fuzz::ring::{guest_memory, write_desc, Alloc, Desc, Mem, Pending, Ring, F_WRITE};
use husk_vmm::devices::virtio::vsock::defs::*;
use husk_vmm::devices::virtio::vsock::Vsock;
use husk_vmm::devices::virtio::{ActivatedQueue, Interrupt, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const GUEST_CID: u64 = 3;
const MEM_SIZE: u64 = 16 << 20;
const RING_BASE: [u64; NUM_QUEUES] = [0, 0x1_0000, 0x2_0000];
const BUF_BASE: u64 = 0x3_0000;
const HDR: usize = 44;
/// Host ports with a listener (`<uds>_<port>`) in every run.
const LISTEN_PORTS: [u32; 2] = [1024, 52];

struct NoInterrupt;
impl Interrupt for NoInterrupt {
    fn signal_used_queue(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn signal_config_change(&self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, Default)]
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
    fn to_bytes(self) -> [u8; HDR] {
        let mut b = [0u8; HDR];
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

    fn from_bytes(b: &[u8; HDR]) -> Hdr {
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

/// An RX buffer the harness built: header at `hdr`, room for `cap` data bytes.
#[derive(Clone, Copy)]
struct RxBuf {
    hdr: u64,
    cap: u32,
}

struct Run<'a> {
    c: Cursor<'a>,
    mem: Mem,
    rings: Vec<Ring>,
    dev: Vsock,
    uds: PathBuf,
    listeners: Vec<UnixListener>,
    streams: Vec<UnixStream>,
    alloc: Alloc,
    rx_bufs: Pending<RxBuf>,
    /// Packets the device sent the guest.
    received: Vec<Hdr>,
    guest_fwd: u32,
}

impl Run<'_> {
    fn port(&mut self) -> u32 {
        match self.c.u8() {
            0xff => self.c.u32(),
            p => match p % 5 {
                0 => LISTEN_PORTS[0],
                1 => LISTEN_PORTS[1],
                2 => 9, // nobody listens
                // The host port of a packet the guest got (e.g. a host-initiated connection).
                3 => self.received.last().map_or(1025, |h| h.src_port),
                _ => 1000 + u32::from(p % 3),
            },
        }
    }

    /// Adds a TX chain for `hdr` + `data`; `layout` varies how it is split.
    fn push_tx(&mut self, hdr: Hdr, data: &[u8], layout: u8) {
        let hb = hdr.to_bytes();
        let mut all = hb.to_vec();
        all.extend_from_slice(data);
        let a = self.alloc.get(all.len() as u64);
        self.mem.write_slice(&all, GuestAddress(a)).unwrap();
        let dflag = if layout & 4 != 0 { F_WRITE } else { 0 };
        let descs: Vec<(u64, u32, u16)> = match layout & 3 {
            // Header and data in one descriptor.
            1 => vec![(a, all.len() as u32, 0)],
            // Header split in two.
            2 => {
                let mut v = vec![(a, 20, 0), (a + 20, 24, 0)];
                if !data.is_empty() {
                    v.push((a + HDR as u64, data.len() as u32, dflag));
                }
                v
            }
            _ => {
                let mut v = vec![(a, HDR as u32, 0)];
                if !data.is_empty() {
                    let half = data.len() / 2;
                    if layout & 8 != 0 && half > 0 {
                        v.push((a + HDR as u64, half as u32, dflag));
                        v.push((a + (HDR + half) as u64, (data.len() - half) as u32, dflag));
                    } else {
                        v.push((a + HDR as u64, data.len() as u32, dflag));
                    }
                }
                v
            }
        };
        self.rings[TXQ].add_chain(&self.mem, &descs);
    }

    fn guest_packet(&mut self) {
        let sel = self.c.u8();
        let src_cid = if sel & 1 != 0 {
            self.c.u64()
        } else {
            GUEST_CID
        };
        let dst_cid = if sel & 2 != 0 { self.c.u64() } else { HOST_CID };
        let type_ = if sel & 4 != 0 {
            self.c.u16()
        } else {
            TYPE_STREAM
        };
        let src_port = self.port();
        let dst_port = self.port();
        let op = match self.c.u8() {
            0xff => self.c.u16(),
            o => u16::from(o % 9),
        };
        let flags = self.c.u32();
        let buf_alloc = match self.c.u32() {
            0 => 64 * 1024,
            b => b,
        };
        let fwd_cnt = if sel & 8 != 0 {
            self.c.u32()
        } else {
            self.guest_fwd
        };
        let dlen = usize::from(self.c.u16()) % (MAX_PKT_DATA as usize + 16);
        let data = self.c.bytes(dlen).to_vec();
        let len = if sel & 16 != 0 {
            self.c.u32()
        } else {
            data.len() as u32
        };
        let layout = self.c.u8();
        let hdr = Hdr {
            src_cid,
            dst_cid,
            src_port,
            dst_port,
            len,
            type_,
            op,
            flags,
            buf_alloc,
            fwd_cnt,
        };
        self.push_tx(hdr, &data, layout);
        if sel & 0x80 == 0 {
            self.dev.process_tx();
        }
    }

    /// The guest answers a packet it received, ports swapped.
    fn reply(&mut self) {
        let k = usize::from(self.c.u8());
        let Some(&p) = self.received.get(
            self.received
                .len()
                .wrapping_sub(1 + k % self.received.len().max(1)),
        ) else {
            return;
        };
        let op = u16::from(self.c.u8() % 9);
        let flags = u32::from(self.c.u8() % 4);
        let dlen = usize::from(self.c.u16() % 8192);
        let data = self.c.bytes(dlen).to_vec();
        let hdr = Hdr {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port: p.dst_port,
            dst_port: p.src_port,
            len: data.len() as u32,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: 64 * 1024,
            fwd_cnt: self.guest_fwd,
        };
        self.push_tx(hdr, &data, 0);
        self.dev.process_tx();
    }

    fn give_rx(&mut self) {
        let n = 1 + self.c.u8() % 8;
        let layout = self.c.u8();
        for _ in 0..n {
            let cap = match layout >> 4 {
                0 => 4096,
                l => u32::from(l) * 97,
            };
            let h = self.alloc.get(HDR as u64);
            let d = self.alloc.get(cap.into());
            let (descs, buf): (Vec<(u64, u32, u16)>, _) = match layout % 6 {
                0 => (
                    vec![(h, HDR as u32, F_WRITE), (d, cap, F_WRITE)],
                    Some(RxBuf { hdr: h, cap }),
                ),
                1 => (
                    vec![(h, HDR as u32, F_WRITE)],
                    Some(RxBuf { hdr: h, cap: 0 }),
                ),
                2 => (vec![(h, 20, F_WRITE), (d, cap, F_WRITE)], None),
                3 => (vec![(h, HDR as u32, 0), (d, cap, F_WRITE)], None),
                4 => {
                    let d = self.alloc.get(u64::from(cap) + HDR as u64);
                    (
                        vec![(d, HDR as u32 + cap, F_WRITE)],
                        Some(RxBuf { hdr: d, cap }),
                    )
                }
                _ => (vec![(h, HDR as u32, F_WRITE), (d, cap, 0)], None),
            };
            let head = self.rings[RXQ].add_chain(&self.mem, &descs);
            self.rx_bufs
                .add(head, descs.len() as u16, self.rings[RXQ].size, buf);
        }
        self.dev.process_rx();
    }

    fn raw_chain(&mut self) {
        let q = if self.c.bool() { TXQ } else { RXQ };
        let n = 1 + self.c.u8() % 6;
        let slot0 = self.c.u16();
        let size = self.rings[q].size;
        for i in 0..u16::from(n) {
            let d = Desc {
                addr: self.c.u32().into(),
                len: self.c.u32() % (1 << 20),
                flags: self.c.u16(),
                next: self.c.u16(),
            };
            write_desc(
                &self.mem,
                self.rings[q].desc,
                slot0.wrapping_add(i) % size,
                d,
            );
        }
        self.rings[q].publish(&self.mem, slot0 % size);
        if q == RXQ {
            self.rx_bufs.add(slot0 % size, n.into(), size, None);
            self.dev.process_rx();
        } else {
            self.dev.process_tx();
        }
    }

    fn host_connect(&mut self) {
        let Ok(s) = UnixStream::connect(&self.uds) else {
            return;
        };
        s.set_nonblocking(true).unwrap();
        let line = match self.c.u8() {
            0 => {
                let n = usize::from(self.c.u8() % 48);
                self.c.bytes(n).to_vec()
            }
            _ => format!("CONNECT {}\n", self.port()).into_bytes(),
        };
        let _ = (&s).write(&line);
        self.streams.push(s);
        self.dev.process_backend_events();
    }

    fn stream(&mut self) -> Option<usize> {
        let k = usize::from(self.c.u8());
        (!self.streams.is_empty()).then(|| k % self.streams.len())
    }

    fn host_write(&mut self) {
        let k = self.stream();
        let n = usize::from(self.c.u16() % 16384);
        let data = self.c.bytes(n);
        if let Some(k) = k {
            let _ = (&self.streams[k]).write(data);
        }
        self.dev.process_backend_events();
    }

    fn host_read(&mut self) {
        if let Some(k) = self.stream() {
            let mut buf = [0u8; 16384];
            while let Ok(1..) = (&self.streams[k]).read(&mut buf) {}
        }
        self.dev.process_backend_events();
    }

    fn host_close(&mut self) {
        let how = self.c.u8();
        if let Some(k) = self.stream() {
            match how % 3 {
                0 => drop(self.streams.swap_remove(k)),
                1 => drop(self.streams[k].shutdown(std::net::Shutdown::Write)),
                _ => drop(self.streams[k].shutdown(std::net::Shutdown::Read)),
            }
        }
        self.dev.process_backend_events();
    }

    fn accept(&mut self) {
        for l in &self.listeners {
            while let Ok((s, _)) = l.accept() {
                s.set_nonblocking(true).unwrap();
                self.streams.push(s);
            }
        }
        self.dev.process_backend_events();
    }

    /// Checks and remembers what the device put on the RX queue.
    fn collect_rx(&mut self) {
        for (id, len) in self.rings[RXQ].take_used(&self.mem) {
            let Some(b) = self.rx_bufs.take(id) else {
                continue;
            };
            if len == 0 {
                continue; // an unusable chain is consumed with length 0
            }
            assert!(
                len as usize >= HDR && len - HDR as u32 <= b.cap,
                "RX used length {len} for a {}-byte buffer",
                HDR as u32 + b.cap
            );
            let mut hb = [0u8; HDR];
            self.mem.read_slice(&mut hb, GuestAddress(b.hdr)).unwrap();
            let h = Hdr::from_bytes(&hb);
            assert_eq!(
                (h.src_cid, h.dst_cid, h.type_),
                (HOST_CID, GUEST_CID, TYPE_STREAM),
                "{h:?}"
            );
            assert_eq!(h.len, len - HDR as u32, "header len vs used length: {h:?}");
            assert!((OP_REQUEST..=OP_CREDIT_REQUEST).contains(&h.op), "{h:?}");
            assert!(h.op == OP_RW || h.len == 0, "only RW carries data: {h:?}");
            self.guest_fwd = self.guest_fwd.wrapping_add(h.len);
            self.received.push(h);
        }
        // TX chains are consumed with length 0.
        for (_, len) in self.rings[TXQ].take_used(&self.mem) {
            assert_eq!(len, 0, "the device wrote into a TX chain");
        }
    }
}

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        husk_fuzz::scratch::ignore_sigpipe();
        husk_fuzz::scratch::process_dir("vsock")
    })
}

fn run_one(data: &[u8]) {
    static N: AtomicU64 = AtomicU64::new(0);
    let uds = scratch().join(format!("v{}.sock", N.fetch_add(1, Ordering::Relaxed)));
    let mut c = Cursor::new(data);
    let size = [16u16, 64, 256, 256][usize::from(c.u8() & 3)];
    let mut dev = Vsock::new(GUEST_CID, &uds).expect("vsock device");
    let listeners: Vec<_> = LISTEN_PORTS
        .iter()
        .map(|p| {
            let l = UnixListener::bind(format!("{}_{p}", uds.display())).unwrap();
            l.set_nonblocking(true).unwrap();
            l
        })
        .collect();
    let mem = guest_memory(MEM_SIZE as usize);
    let rings: Vec<Ring> = RING_BASE.iter().map(|&b| Ring::new(b, size)).collect();
    let queues = rings
        .iter()
        .map(|r| ActivatedQueue {
            queue: r.queue(QUEUE_MAX_SIZE),
            kick: EventFd::new(EFD_NONBLOCK).unwrap(),
        })
        .collect();
    dev.activate(mem.clone(), Arc::new(NoInterrupt), queues)
        .expect("activation");
    let mut run = Run {
        c,
        mem,
        rings,
        dev,
        uds: uds.clone(),
        listeners,
        streams: Vec::new(),
        alloc: Alloc::new(BUF_BASE, MEM_SIZE),
        rx_bufs: Pending::default(),
        received: Vec::new(),
        guest_fwd: 0,
    };
    let mut ops = 0;
    while !run.c.is_empty() && ops < 128 {
        ops += 1;
        match run.c.u8() % 10 {
            0 => run.guest_packet(),
            1 => run.reply(),
            2 => run.give_rx(),
            3 => run.raw_chain(),
            4 => run.host_connect(),
            5 => run.host_write(),
            6 => run.host_read(),
            7 => run.host_close(),
            8 => run.accept(),
            _ => match run.c.u8() % 3 {
                0 => run.dev.process_tx(),
                1 => run.dev.process_rx(),
                _ => run.dev.process_backend_events(),
            },
        }
        run.collect_rx();
    }
    drop(run);
    let _ = std::fs::remove_file(&uds);
    for p in LISTEN_PORTS {
        let _ = std::fs::remove_file(format!("{}_{p}", uds.display()));
    }
}

fuzz_target!(|data: &[u8]| run_one(data));
