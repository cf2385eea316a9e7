//! Queue processing: one descriptor chain carries one FUSE request (readable
//! part: `fuse_in_header` + arguments) and room for its reply (writable part).
//! Parsing and the reply are fuse-backend-rs' `Server::handle_message`; this
//! file decides what reaches it and what the guest gets when it fails.

use std::io::Write;
use std::mem::size_of;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode, OutHeader};
use fuse_backend_rs::api::server::{Server, MAX_BUFFER_SIZE};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use fuse_backend_rs::Error as FuseError;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{ByteValued, Bytes};

use super::confined::ConfinedFs;
use super::metrics::{count_and_warn_once, Counters};
use crate::memory::GuestMemoryMmap;

/// Most bytes a chain may offer in each direction. The largest legitimate
/// request is a WRITE of `max_pages` (256) pages plus headers, the largest
/// reply a READ of as much; the server itself refuses `in_header.len` above
/// the same bound. Larger chains are refused before the server sees them, so
/// nothing the guest sizes (e.g. an ioctl `in_size` or a READDIR `size`
/// checked only against the chain) exceeds it.
pub(crate) const MAX_CHAIN_BYTES: u64 = MAX_BUFFER_SIZE as u64 + 0x1000;

const OUT_HEADER_LEN: usize = size_of::<OutHeader>();

type Chain<'a> = DescriptorChain<&'a GuestMemoryMmap>;

pub(crate) struct RequestHandler {
    server: Arc<Server<ConfinedFs>>,
    counters: Arc<Counters>,
}

impl RequestHandler {
    pub fn new(server: Arc<Server<ConfinedFs>>, counters: Arc<Counters>) -> Self {
        RequestHandler { server, counters }
    }

    /// Handle every available chain of `queue`. Returns whether any were
    /// used; an error means the used ring could not be written.
    pub fn process_queue(
        &self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
    ) -> Result<bool, virtio_queue::Error> {
        let mut used = false;
        while self.avail_index_sane(mem, queue) {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let len = self.handle_chain(mem, chain);
            queue.add_used(mem, head, len)?;
            used = true;
        }
        Ok(used)
    }

    /// A driver never publishes more than a ring's worth of chains ahead of
    /// the device. virtio-queue refuses such an index too, but logs an error
    /// on every attempt; check first so a guest cannot flood the log.
    fn avail_index_sane(&self, mem: &GuestMemoryMmap, queue: &Queue) -> bool {
        let sane = queue
            .avail_idx(mem, Ordering::Acquire)
            .is_ok_and(|idx| idx.0.wrapping_sub(queue.next_avail()) <= queue.size());
        if !sane {
            count_and_warn_once!(
                self.counters.bad_avail_index,
                "virtio-fs: guest published an impossible avail index; queue ignored until it \
                 is fixed"
            );
        }
        sane
    }

    /// Run one request; returns the number of bytes written into the chain.
    fn handle_chain(&self, mem: &GuestMemoryMmap, chain: Chain<'_>) -> u32 {
        let c = &*self.counters;
        c.requests.fetch_add(1, Ordering::Relaxed);
        let head = chain.head_index();

        // Without a complete header there is no request to answer.
        let in_header = match read_in_header(mem, &chain) {
            Ok(h) => h,
            Err(e) => {
                count_and_warn_once!(
                    c.malformed_chains,
                    "virtio-fs: malformed descriptor chain (head {head}): {e}"
                );
                return 0;
            }
        };
        #[cfg(test)]
        tests_hook::between_walks(mem);
        // One walk of the chain per object, and the size check is on the
        // very objects the server gets: descriptors are guest memory and may
        // change between walks (a second vCPU), so a check on another walk
        // would prove nothing.
        let reader = Reader::from_descriptor_chain(mem, chain.clone());
        let writer = VirtioFsWriter::new(mem, chain.clone());
        let (reader, writer) = match (reader, writer) {
            (Ok(r), Ok(w)) => (r, w),
            (Err(e), _) | (_, Err(e)) => {
                count_and_warn_once!(
                    c.malformed_chains,
                    "virtio-fs: malformed descriptor chain (head {head}): {e}"
                );
                return reply_error(mem, &chain, &in_header, libc::EINVAL);
            }
        };
        let (readable, writable) = (reader.available_bytes(), writer.available_bytes());
        if !within_limit(readable, writable) {
            count_and_warn_once!(
                c.oversized_chains,
                "virtio-fs: descriptor chain too large (head {head}, {readable} bytes \
                 readable, {writable} writable, limit {MAX_CHAIN_BYTES})"
            );
            return reply_error(mem, &chain, &in_header, libc::ENOMEM);
        }
        let capacity = writer.available_bytes();
        // So that a reply the server wrote before failing can be recognised.
        clear_reply_header(mem, &chain, capacity);

        match self
            .server
            .handle_message(reader, Writer::VirtioFs(writer), None, None)
        {
            Ok(n) if n > 0 => clamp_len(n, capacity),
            // DESTROY and INTERRUPT report 0 even when they wrote a reply.
            Ok(_) => server_reply_len(mem, &chain, &in_header, capacity).unwrap_or(0),
            Err(e) => {
                count_and_warn_once!(
                    c.failed_requests,
                    "virtio-fs: request failed (opcode {}, unique {}): {e}",
                    in_header.opcode,
                    in_header.unique
                );
                // Some failures come after the server already answered (e.g.
                // EINVAL for a bad name); otherwise answer ourselves.
                match server_reply_len(mem, &chain, &in_header, capacity) {
                    Some(len) => len,
                    None => reply_error(mem, &chain, &in_header, errno_of(&e)),
                }
            }
        }
    }
}

/// The FUSE header at the start of the readable part.
fn read_in_header(
    mem: &GuestMemoryMmap,
    chain: &Chain<'_>,
) -> Result<InHeader, Box<dyn std::error::Error>> {
    let mut r = Reader::from_descriptor_chain(mem, chain.clone())?;
    Ok(r.read_obj::<InHeader>()?)
}

/// Whether a chain of `readable`/`writable` bytes (as the server's reader
/// and writer see it) may reach the server.
fn within_limit(readable: usize, writable: usize) -> bool {
    let max = usize::try_from(MAX_CHAIN_BYTES).unwrap_or(usize::MAX);
    readable <= max && writable <= max
}

fn clamp_len(n: usize, capacity: usize) -> u32 {
    u32::try_from(n.min(capacity)).unwrap_or(0)
}

fn expects_reply(opcode: u32) -> bool {
    opcode != Opcode::Forget as u32 && opcode != Opcode::BatchForget as u32
}

fn clear_reply_header(mem: &GuestMemoryMmap, chain: &Chain<'_>, capacity: usize) {
    if capacity < OUT_HEADER_LEN {
        return;
    }
    if let Ok(mut w) = VirtioFsWriter::new(mem, chain.clone()) {
        let _ = w.write_all(&[0u8; OUT_HEADER_LEN]);
    }
}

/// If the writable part starts with a reply to this request (after
/// `clear_reply_header`), its length.
fn server_reply_len(
    mem: &GuestMemoryMmap,
    chain: &Chain<'_>,
    in_header: &InHeader,
    capacity: usize,
) -> Option<u32> {
    let mut out = OutHeader::default();
    let buf = out.as_mut_slice();
    let mut filled = 0;
    for d in chain.clone().writable() {
        if filled == buf.len() {
            break;
        }
        let n = (d.len() as usize).min(buf.len() - filled);
        mem.read_slice(&mut buf[filled..filled + n], d.addr())
            .ok()?;
        filled += n;
    }
    let len = out.len as usize;
    (filled == OUT_HEADER_LEN
        && out.unique == in_header.unique
        && (OUT_HEADER_LEN..=capacity).contains(&len))
    .then_some(out.len)
}

/// Answer the request with `-errno` if it expects an answer and there is
/// room for one; returns the used length.
fn reply_error(mem: &GuestMemoryMmap, chain: &Chain<'_>, in_header: &InHeader, errno: i32) -> u32 {
    if !expects_reply(in_header.opcode) {
        return 0;
    }
    let Ok(mut w) = VirtioFsWriter::new(mem, chain.clone()) else {
        return 0;
    };
    let out = OutHeader {
        len: OUT_HEADER_LEN as u32,
        error: -errno,
        unique: in_header.unique,
    };
    match w.write_all(out.as_slice()) {
        Ok(()) => out.len,
        Err(_) => 0,
    }
}

fn errno_of(e: &FuseError) -> i32 {
    match e {
        FuseError::InvalidMessage(io) => io.raw_os_error().unwrap_or(libc::EINVAL),
        FuseError::EncodeMessage(_)
        | FuseError::FailedToWrite(_)
        | FuseError::FailedToSplitWriter(_) => libc::EIO,
        FuseError::FailedToRemapID(_) => libc::EPERM,
        _ => libc::EINVAL,
    }
}

/// Unit tests change the chain between the walks here (F7: the size check
/// must hold for what the server gets, whatever earlier walks saw).
#[cfg(test)]
pub(crate) mod tests_hook {
    use std::sync::Mutex;

    use crate::memory::GuestMemoryMmap;

    type Hook = Box<dyn Fn(&GuestMemoryMmap) + Send>;

    /// Hooks run (on the worker thread) after the header was read and before
    /// the reader and writer walk the chain. Each hook must check that `mem`
    /// is its own test's memory: tests run in parallel.
    pub static BETWEEN_WALKS: Mutex<Vec<Hook>> = Mutex::new(Vec::new());

    pub fn between_walks(mem: &GuestMemoryMmap) {
        let hooks = BETWEEN_WALKS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for h in hooks.iter() {
            h(mem);
        }
    }
}
