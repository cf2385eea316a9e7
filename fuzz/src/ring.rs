//! A fake virtio driver: split virtqueues (virtio 1.2, 2.7) laid out in guest
//! memory, chains written descriptor by descriptor. Addresses are guest
//! physical; the memory is one region starting at 0.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub use virtio_queue::{Queue, QueueT};

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

/// One descriptor as the driver writes it.
#[derive(Clone, Copy, Debug)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

pub type Mem = GuestMemoryMmap<()>;

/// Fresh, zeroed guest memory (anonymous mapping: only touched pages cost).
pub fn guest_memory(size: usize) -> Mem {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).expect("guest memory")
}

fn write<T: vm_memory::ByteValued>(mem: &Mem, addr: u64, v: T) {
    // Fuzz-chosen addresses may be outside memory: the write is then dropped.
    let _ = mem.write_obj(v, GuestAddress(addr));
}

pub fn write_desc(mem: &Mem, table: u64, i: u16, d: Desc) {
    let a = table + 16 * u64::from(i);
    write(mem, a, d.addr.to_le());
    write(mem, a + 8, d.len.to_le());
    write(mem, a + 12, d.flags.to_le());
    write(mem, a + 14, d.next.to_le());
}

/// A split ring: descriptor table, avail ring, used ring, back to back.
pub struct Ring {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub size: u16,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl Ring {
    /// Bytes a ring of `size` entries needs (with alignment slack).
    pub fn span(size: u16) -> u64 {
        let q = u64::from(size);
        16 * q + 6 + 2 * q + 8 + 6 + 8 * q
    }

    pub fn new(base: u64, size: u16) -> Ring {
        let q = u64::from(size);
        let avail = base + 16 * q;
        let used = (avail + 4 + 2 * q + 2 + 3) & !3;
        Ring {
            desc: base,
            avail,
            used,
            size,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// The queue the device gets for this ring (as the transport would set it up).
    pub fn queue(&self, max_size: u16) -> Queue {
        let mut q = Queue::new(max_size).expect("queue max size");
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_ready(true);
        q
    }

    /// Writes a chain (NEXT links filled in) into free slots and makes it
    /// available; returns its head.
    pub fn add_chain(&mut self, mem: &Mem, descs: &[(u64, u32, u16)]) -> u16 {
        let n = descs.len().min(usize::from(self.size)) as u16;
        let slot = |i: u16| (self.next_desc.wrapping_add(i)) % self.size;
        let head = slot(0);
        for i in 0..n {
            let (addr, len, flags) = descs[usize::from(i)];
            let last = i + 1 == n;
            write_desc(
                mem,
                self.desc,
                slot(i),
                Desc {
                    addr,
                    len,
                    flags: if last { flags } else { flags | F_NEXT },
                    next: if last { 0 } else { slot(i + 1) },
                },
            );
        }
        self.next_desc = slot(n);
        self.publish(mem, head);
        head
    }

    /// An indirect chain: the table at `table` in guest memory, one
    /// descriptor in the ring pointing at it.
    pub fn add_indirect(&mut self, mem: &Mem, table: u64, descs: &[(u64, u32, u16)]) -> u16 {
        let n = descs.len() as u16;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let i = i as u16;
            let last = i + 1 == n;
            write_desc(
                mem,
                table,
                i,
                Desc {
                    addr,
                    len,
                    flags: if last { flags } else { flags | F_NEXT },
                    next: if last { 0 } else { i + 1 },
                },
            );
        }
        self.add_chain(mem, &[(table, 16 * u32::from(n), F_INDIRECT)])
    }

    /// Puts `head` into the avail ring and bumps its index.
    pub fn publish(&mut self, mem: &Mem, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        write(mem, self.avail + 4 + 2 * slot, head.to_le());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        write(mem, self.avail + 2, self.avail_idx.to_le());
    }

    /// Overwrites the avail index (a driver publishing more, or less, than it has).
    pub fn set_avail_idx(&mut self, mem: &Mem, idx: u16) {
        self.avail_idx = idx;
        write(mem, self.avail + 2, idx.to_le());
    }

    /// Used elements `(id, len)` the device added since the last call.
    pub fn take_used(&mut self, mem: &Mem) -> Vec<(u32, u32)> {
        let idx: u16 = mem
            .read_obj(GuestAddress(self.used + 2))
            .map(u16::from_le)
            .unwrap_or(self.used_seen);
        let mut out = Vec::new();
        while self.used_seen != idx && out.len() < usize::from(self.size) {
            let e = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
            let id: u32 = mem.read_obj(GuestAddress(e)).unwrap_or(0);
            let len: u32 = mem.read_obj(GuestAddress(e + 4)).unwrap_or(0);
            out.push((u32::from_le(id), u32::from_le(len)));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

/// A bump allocator for buffers in guest memory; wraps to `start` when full
/// (old buffers are then reused: fine for a fuzzer, the device is done with
/// them by then or the input made them overlap on purpose anyway).
pub struct Alloc {
    start: u64,
    next: u64,
    end: u64,
}

impl Alloc {
    pub fn new(start: u64, end: u64) -> Alloc {
        Alloc {
            start,
            next: start,
            end,
        }
    }

    pub fn get(&mut self, len: u64) -> u64 {
        let len = (len.max(1) + 15) & !15;
        if self.next + len > self.end {
            self.next = self.start;
        }
        let a = self.next;
        self.next = (self.next + len).min(self.end);
        a
    }
}

/// What the harness remembers about the chains it made available, by head
/// index, to check what the device reports in the used ring. `None`: a chain
/// whose descriptors were overwritten before the device used it (the ring was
/// over-filled, or raw descriptors): nothing can be checked about it.
pub struct Pending<T>(pub std::collections::HashMap<u16, Option<T>>);

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Pending(Default::default())
    }
}

impl<T> Pending<T> {
    /// A chain of `n` descriptors was written at slots `head..head + n` (mod `size`).
    pub fn add(&mut self, head: u16, n: u16, size: u16, v: Option<T>) {
        for i in 1..n {
            if let Some(e) = self.0.get_mut(&(head.wrapping_add(i) % size)) {
                *e = None;
            }
        }
        let fresh = !self.0.contains_key(&head);
        self.0.insert(head, if fresh { v } else { None });
    }

    /// The chain the device used (`None` if unknown or unverifiable).
    pub fn take(&mut self, head: u32) -> Option<T> {
        u16::try_from(head)
            .ok()
            .and_then(|h| self.0.remove(&h))
            .flatten()
    }
}
