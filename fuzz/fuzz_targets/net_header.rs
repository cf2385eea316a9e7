//! virtio-net: every parser of guest-controlled bytes (`net/header.rs`),
//! alone: TX chains (shape, lengths, the `virtio_net_hdr_v1` against the
//! acked features), RX chains (shape, minimum size) and the RX header fix-up,
//! on descriptor chains popped from a split ring in guest memory, exactly as
//! the device calls them. No tap, no thread: one input is one
//! deterministic run.
//!
//! Input: byte 0 picks the memory layout (one 16 MiB region; two adjacent
//! 8 MiB regions; two with a 1 MiB hole at 8 MiB) and the queue size
//! (16/64/256); then 8 bytes of acked features (any bits: the parser must
//! not rely on the transport's masking); then up to 64 operations, each an
//! opcode byte plus operands (missing bytes read as 0):
//! * 0 structured TX chain: header fields, frame length, 1..8 descriptors
//!   (length share, write flag); the result is compared with a model of the
//!   rules.
//! * 1 structured RX chain: 1..8 descriptors (length, write flag), then a
//!   "tap read" of some bytes and the header fix-up.
//! * 2 raw descriptors (address, length, flags, next) on the TX or RX ring.
//! * 3 a bare header and frame length for `check_tx_header`.
//!
//! Checked beyond "no panic, no ASan report": an accepted TX chain has a
//! header the checks accept (num_buffers 0), a frame of 14..=65550 bytes
//! that its slices add up to, and fewer than 1024 segments; for structured
//! chains the verdict and the bytes equal the model's. An accepted RX chain
//! holds 26..=65562 bytes in fewer than 1024 segments, and after the fix-up
//! its header says num_buffers = 1.
#![no_main]

use husk_fuzz::cursor::Cursor;
use husk_fuzz::ring::{write_desc, Desc, Mem, Queue, QueueT, Ring, F_WRITE};
use husk_vmm::devices::virtio::net::fuzzing::*;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

const MIB: u64 = 1 << 20;
const RING_BASE: [u64; 2] = [0, 0x1_0000];
const BUF_BASE: u64 = 0x2_0000;
/// Feature bits the header checks look at.
const CSUM: u64 = 1 << 0;
const GUEST_CSUM: u64 = 1 << 1;
const HOST_TSO4: u64 = 1 << 11;
const HOST_TSO6: u64 = 1 << 12;

fn memory(layout: u8) -> Mem {
    let ranges: Vec<(GuestAddress, usize)> = match layout % 3 {
        0 => vec![(GuestAddress(0), (16 * MIB) as usize)],
        1 => vec![
            (GuestAddress(0), (8 * MIB) as usize),
            (GuestAddress(8 * MIB), (8 * MIB) as usize),
        ],
        _ => vec![
            (GuestAddress(0), (8 * MIB) as usize),
            (GuestAddress(9 * MIB), (7 * MIB) as usize),
        ],
    };
    Mem::from_ranges(&ranges).expect("guest memory")
}

/// The rules of `check_tx_header`, written out again.
fn model_header(h: &VnetHdr, frame_len: usize, acked: u64) -> bool {
    let needs_csum = h.flags == 1;
    if h.flags & !1 != 0 || (needs_csum && acked & CSUM == 0) {
        return false;
    }
    if needs_csum && h.csum_start as usize + h.csum_offset as usize + 2 > frame_len {
        return false;
    }
    let gso_ok = match h.gso_type {
        0 => true,
        1 => acked & HOST_TSO4 != 0 && needs_csum && h.gso_size != 0,
        4 => acked & HOST_TSO6 != 0 && needs_csum && h.gso_size != 0,
        _ => false,
    };
    gso_ok && h.hdr_len as usize <= frame_len
}

fn check_tx_ok(f: &TxFrame<'_>, acked: u64) {
    let h = VnetHdr::from_bytes(&f.hdr);
    assert_eq!(h.num_buffers, 0);
    assert_eq!(check_tx_header(&h, f.frame_len, acked), Ok(()));
    assert!((ETH_HLEN..=MAX_FRAME_LEN).contains(&f.frame_len));
    assert_eq!(f.frame.iter().map(|s| s.len()).sum::<usize>(), f.frame_len);
    assert!(f.frame.len() < MAX_SEGMENTS);
}

fn check_rx_ok(b: &RxBuffers<'_>) {
    assert!((MIN_RX_CHAIN..=VNET_HDR_LEN + MAX_FRAME_LEN).contains(&b.capacity));
    assert_eq!(b.slices.iter().map(|s| s.len()).sum::<usize>(), b.capacity);
    assert!(b.slices.len() < MAX_SEGMENTS);
}

/// Writes `bytes` across `slices` from their start.
fn put(slices: &[vm_memory::VolatileSlice<'_>], bytes: &[u8]) {
    let mut done = 0;
    for s in slices {
        if done == bytes.len() {
            break;
        }
        // copy_from copies min(slice, buffer) bytes.
        let n = s.len().min(bytes.len() - done);
        s.copy_from(&bytes[done..done + n]);
        done += n;
    }
}

struct Run<'a> {
    c: Cursor<'a>,
    mem: Mem,
    rings: [Ring; 2],
    /// The device's view of `rings` (TX, RX), kept across operations.
    queues: [Queue; 2],
    acked: u64,
    next: u64,
}

impl Run<'_> {
    /// Buffer space in the first region (both layouts have 8 MiB there).
    fn alloc(&mut self, len: u64) -> u64 {
        if self.next + len > 8 * MIB - 0x1000 {
            self.next = BUF_BASE;
        }
        let a = self.next;
        self.next += (len + 15) & !15;
        a
    }

    /// Pops the next TX chain: its head and the parser's verdict.
    fn pop_tx(&mut self) -> Option<(u16, Result<TxFrame<'_>, ChainError>)> {
        let chain = self.queues[0].pop_descriptor_chain(&self.mem)?;
        Some((chain.head_index(), parse_tx(&self.mem, chain, self.acked)))
    }

    /// Pops the next RX chain: its head and the parser's verdict.
    fn pop_rx(&mut self) -> Option<(u16, Result<RxBuffers<'_>, ChainError>)> {
        let chain = self.queues[1].pop_descriptor_chain(&self.mem)?;
        Some((chain.head_index(), parse_rx(&self.mem, chain)))
    }

    fn tx(&mut self) {
        let h = VnetHdr {
            flags: self.c.u8() & 0x83,
            gso_type: match self.c.u8() {
                0xff => self.c.u8(),
                g => [0, 1, 4, 3, 5, 0x81][usize::from(g % 6)],
            },
            hdr_len: self.c.u16() % 200,
            gso_size: self.c.u16(),
            csum_start: self.c.u16() % 128,
            csum_offset: self.c.u16() % 32,
            num_buffers: self.c.u16(),
        };
        let sel = self.c.u8();
        let frame_len = match sel & 3 {
            0 => usize::from(self.c.u8()),
            1 => usize::from(self.c.u16()),
            2 => MAX_FRAME_LEN + usize::from(self.c.u8() % 4) - 1,
            _ => usize::from(self.c.u8() % 20),
        };
        let total = VNET_HDR_LEN + frame_len;
        let mut bytes = h.to_bytes().to_vec();
        bytes.extend((0..frame_len).map(|i| i as u8));
        // Near the end of the first region, so a chain may straddle it.
        let base = if sel & 4 != 0 {
            8 * MIB - (total as u64).min(8 * MIB - BUF_BASE) / 2
        } else {
            self.alloc(total as u64)
        };
        let _ = self.mem.write_slice(&bytes, GuestAddress(base));
        let n = 1 + usize::from(self.c.u8() % 8);
        let mut descs = Vec::new();
        let mut off = 0usize;
        let mut model_err = false;
        for i in 0..n {
            let len = if i + 1 == n {
                total - off
            } else {
                (usize::from(self.c.u16()) % (total - off + 1)).min(total - off)
            };
            let write = self.c.u8() == 0xee;
            model_err |= write;
            descs.push((
                base + off as u64,
                len as u32,
                if write { F_WRITE } else { 0 },
            ));
            off += len;
        }
        let head = self.rings[0].add_chain(&self.mem, &descs);
        let acked = self.acked;
        let in_memory = self.mem.check_range(GuestAddress(base), total);
        let Some((popped, r)) = self.pop_tx() else {
            return;
        };
        if popped != head {
            // Out of step after raw descriptors: nothing to compare with.
            if let Ok(f) = r {
                check_tx_ok(&f, acked);
            }
            return;
        }
        let model_ok = !model_err
            && in_memory
            && (ETH_HLEN..=MAX_FRAME_LEN).contains(&frame_len)
            && model_header(&h, frame_len, acked);
        match r {
            Ok(f) => {
                assert!(model_ok, "accepted against the model: {h:?} {frame_len}");
                check_tx_ok(&f, acked);
                let mut got = f.hdr.to_vec();
                for s in &f.frame {
                    let mut b = vec![0u8; s.len()];
                    s.copy_to(&mut b[..]);
                    got.extend(b);
                }
                let mut want = bytes;
                want[10] = 0;
                want[11] = 0;
                assert!(got == want, "TX bytes differ");
            }
            Err(e) => assert!(
                !model_ok,
                "refused against the model: {e} {h:?} {frame_len}"
            ),
        }
    }

    fn rx(&mut self) {
        let n = 1 + usize::from(self.c.u8() % 8);
        let mut descs = Vec::new();
        let mut cap = 0usize;
        let mut ro = false;
        for _ in 0..n {
            let len = match self.c.u8() % 4 {
                0 => u32::from(self.c.u8()),
                1 => u32::from(self.c.u16()),
                2 => 1526,
                _ => self.c.u32() % (1 << 20),
            };
            let write = self.c.u8() != 0xee;
            ro |= !write;
            let a = self.alloc(len.into());
            descs.push((a, len, if write { F_WRITE } else { 0 }));
            cap += len as usize;
        }
        let head = self.rings[1].add_chain(&self.mem, &descs);
        let fill = usize::from(self.c.u16());
        let acked = self.acked;
        let all_in = descs
            .iter()
            .all(|&(a, l, _)| self.mem.check_range(GuestAddress(a), l as usize));
        let Some((popped, r)) = self.pop_rx() else {
            return;
        };
        if popped != head {
            if let Ok(b) = r {
                check_rx_ok(&b);
            }
            return;
        }
        match r {
            Ok(b) => {
                assert!(!ro && cap >= MIN_RX_CHAIN);
                check_rx_ok(&b);
                assert_eq!(b.capacity, cap.min(VNET_HDR_LEN + MAX_FRAME_LEN));
                // What the tap would write: a zero header, then `fill`
                // bytes of 0xa5 from the start (flags 0xa5 include
                // NEEDS_CSUM; gso_type 0xa5 is no type at all).
                put(&b.slices, &[0u8; VNET_HDR_LEN]);
                put(&b.slices, &vec![0xa5u8; fill.min(b.capacity)]);
                let ok = fill == 0 || (fill == 1 && acked & GUEST_CSUM != 0);
                assert_eq!(b.fix_header(acked), ok, "fill {fill}");
                if !ok {
                    put(&b.slices, &[0u8; VNET_HDR_LEN]);
                    assert!(b.fix_header(acked));
                }
                let mut h = [0u8; VNET_HDR_LEN];
                let mut got = 0;
                for s in &b.slices {
                    got += s.copy_to(&mut h[got..]);
                    if got == VNET_HDR_LEN {
                        break;
                    }
                }
                let h = VnetHdr::from_bytes(&h);
                assert_eq!(h.num_buffers, 1);
                if acked & GUEST_CSUM == 0 {
                    assert_eq!(h.flags & 3, 0);
                }
            }
            Err(_) => assert!(ro || cap < MIN_RX_CHAIN || !all_in),
        }
    }

    fn raw(&mut self) {
        let q = usize::from(self.c.bool());
        let n = 1 + self.c.u8() % 6;
        let slot0 = self.c.u16();
        let size = self.rings[q].size;
        for i in 0..u16::from(n) {
            let d = Desc {
                addr: match self.c.u8() % 3 {
                    0 => self.c.u32().into(),
                    1 => self.c.u64(),
                    _ => 8 * MIB - u64::from(self.c.u16()),
                },
                len: self.c.u32(),
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
        let acked = self.acked;
        if q == 0 {
            if let Some((_, Ok(f))) = self.pop_tx() {
                check_tx_ok(&f, acked);
            }
        } else if let Some((_, Ok(b))) = self.pop_rx() {
            check_rx_ok(&b);
        }
    }

    fn header(&mut self) {
        let b: [u8; VNET_HDR_LEN] = self.c.bytes(VNET_HDR_LEN).try_into().unwrap_or([0; 12]);
        let frame_len = self.c.u32() as usize % (MAX_FRAME_LEN + 100);
        let h = VnetHdr::from_bytes(&b);
        assert_eq!(h.to_bytes(), b);
        let r = check_tx_header(&h, frame_len, self.acked);
        assert_eq!(r.is_ok(), model_header(&h, frame_len, self.acked), "{h:?}");
        let mut fixed = b;
        if fix_rx_header(&mut fixed, self.acked) {
            assert_eq!(&fixed[10..], &[1, 0]);
            assert_eq!(&fixed[1..10], &b[1..10]);
            assert!(matches!(fixed[1], 0 | 1 | 4));
            if self.acked & GUEST_CSUM == 0 {
                assert_eq!(fixed[0], 0);
            }
        } else {
            assert_eq!(fixed, b);
        }
        let _ = tap_offload_flags(self.acked);
    }
}

fn run_one(data: &[u8]) {
    let mut c = Cursor::new(data);
    let sel = c.u8();
    let size = [16u16, 64, 256][usize::from(sel >> 2) % 3];
    let acked = c.u64();
    let rings = RING_BASE.map(|b| Ring::new(b, size));
    let queues = [rings[0].queue(size), rings[1].queue(size)];
    let mut run = Run {
        c,
        mem: memory(sel),
        rings,
        queues,
        acked,
        next: BUF_BASE,
    };
    let mut ops = 0;
    while !run.c.is_empty() && ops < 64 {
        ops += 1;
        match run.c.u8() % 4 {
            0 => run.tx(),
            1 => run.rx(),
            2 => run.raw(),
            _ => run.header(),
        }
    }
}

fuzz_target!(|data: &[u8]| run_one(data));
