//! Everything the device reads that the guest controls, in one place so it
//! can be fuzzed alone (`fuzz/fuzz_targets/net_header.rs`): the shape of TX
//! and RX descriptor chains, and the `virtio_net_hdr_v1` in front of each
//! TX frame (virtio spec 5.1.6).
//!
//! The TX header is copied out of guest memory once, checked, and that copy
//! is what the tap gets (the guest cannot change it between the check and
//! the write). The frame itself goes to the tap straight from guest memory:
//! the kernel treats its bytes as untrusted anyway; the lengths it is checked
//! against come from the descriptors, read once here.

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{GuestAddress, GuestMemory, VolatileSlice};

use crate::memory::GuestMemoryMmap;

/// `struct virtio_net_hdr_v1`: always 12 bytes under VIRTIO_F_VERSION_1
/// (with `num_buffers`), which is also the tap's TUNSETVNETHDRSZ.
pub const VNET_HDR_LEN: usize = 12;
/// Ethernet header: the shortest frame a tap accepts.
pub const ETH_HLEN: usize = 14;
/// Largest frame (after the header) either way: a 64 KiB GSO frame plus an
/// Ethernet header (Firecracker's bound).
pub const MAX_FRAME_LEN: usize = 65550;
/// `UIO_MAXIOV`: most segments one `readv`/`writev` takes. A chain may map
/// to one fewer: the device adds the TX header copy, or an RX overflow byte.
pub const MAX_SEGMENTS: usize = 1024;
/// Smallest RX chain the device uses: the header and an Ethernet header.
/// The spec's SHOULD (1526 bytes, 65562 with guest TSO) is not enforced; a
/// frame that does not fit a smaller chain is dropped and counted.
pub const MIN_RX_CHAIN: usize = VNET_HDR_LEN + ETH_HLEN;

const fn bit(f: u32) -> u64 {
    1 << f
}

/// The header fields (little endian in memory).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub num_buffers: u16,
}

impl VnetHdr {
    pub fn from_bytes(b: &[u8; VNET_HDR_LEN]) -> VnetHdr {
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
            num_buffers: le(10),
        }
    }

    pub fn to_bytes(self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        for (i, v) in [
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
            self.num_buffers,
        ]
        .into_iter()
        .enumerate()
        {
            b[2 + 2 * i..4 + 2 * i].copy_from_slice(&v.to_le_bytes());
        }
        b
    }
}

/// A TX header the device refuses (spec 5.1.6.2: what the driver MUST do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("flags {0:#x}: only NEEDS_CSUM is valid on TX")]
    Flags(u8),
    #[error("NEEDS_CSUM without VIRTIO_NET_F_CSUM")]
    CsumNotAcked,
    #[error("checksum at {start}+{offset} outside the {frame}-byte frame")]
    CsumOutOfFrame {
        start: u16,
        offset: u16,
        frame: usize,
    },
    #[error("gso_type {0:#x} not offered or not acked")]
    GsoType(u8),
    #[error("GSO frame without NEEDS_CSUM")]
    GsoWithoutCsum,
    #[error("GSO frame with gso_size 0")]
    GsoSizeZero,
    #[error("hdr_len {hdr_len} beyond the {frame}-byte frame")]
    HdrLen { hdr_len: u16, frame: usize },
}

/// Checks a TX header against the frame length (bytes after the header) and
/// the features the driver acked. On success the header can be handed to
/// the tap as it is (with `num_buffers`, which the tap ignores, zeroed).
pub fn check_tx_header(h: &VnetHdr, frame_len: usize, acked: u64) -> Result<(), HeaderError> {
    let needs_csum = u32::from(h.flags) & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0;
    if u32::from(h.flags) & !VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
        return Err(HeaderError::Flags(h.flags));
    }
    if needs_csum {
        if acked & bit(VIRTIO_NET_F_CSUM) == 0 {
            return Err(HeaderError::CsumNotAcked);
        }
        // The tap writes 2 checksum bytes at csum_start + csum_offset.
        if usize::from(h.csum_start) + usize::from(h.csum_offset) + 2 > frame_len {
            return Err(HeaderError::CsumOutOfFrame {
                start: h.csum_start,
                offset: h.csum_offset,
                frame: frame_len,
            });
        }
    }
    // ECN (HOST_ECN) and UFO (HOST_UFO) are never offered.
    let gso = u32::from(h.gso_type);
    let needed = match gso {
        VIRTIO_NET_HDR_GSO_NONE => None,
        VIRTIO_NET_HDR_GSO_TCPV4 => Some(VIRTIO_NET_F_HOST_TSO4),
        VIRTIO_NET_HDR_GSO_TCPV6 => Some(VIRTIO_NET_F_HOST_TSO6),
        _ => return Err(HeaderError::GsoType(h.gso_type)),
    };
    if let Some(f) = needed {
        if acked & bit(f) == 0 {
            return Err(HeaderError::GsoType(h.gso_type));
        }
        if !needs_csum {
            return Err(HeaderError::GsoWithoutCsum);
        }
        if h.gso_size == 0 {
            return Err(HeaderError::GsoSizeZero);
        }
    }
    // The tap refuses hdr_len beyond the frame; refused here so the guest's
    // mistake is counted as such, not as a tap error.
    if usize::from(h.hdr_len) > frame_len {
        return Err(HeaderError::HdrLen {
            hdr_len: h.hdr_len,
            frame: frame_len,
        });
    }
    Ok(())
}

/// The RX header as the guest gets it: the tap fills the first 10 bytes and
/// skips `num_buffers`, which is 1 without MRG_RXBUF (spec 5.1.6.4). A
/// checksum hint (DATA_VALID) only with GUEST_CSUM acked: else the spec
/// wants flags 0. Returns false for a frame the guest cannot take: a
/// partial checksum or a GSO type it did not ack (the tap's offloads follow
/// the acked features, but frames queued before a renegotiation do not).
pub fn fix_rx_header(h: &mut [u8; VNET_HDR_LEN], acked: u64) -> bool {
    let guest_csum = acked & bit(VIRTIO_NET_F_GUEST_CSUM) != 0;
    if u32::from(h[0]) & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 && !guest_csum {
        return false;
    }
    let gso_ok = match u32::from(h[1]) {
        VIRTIO_NET_HDR_GSO_NONE => true,
        VIRTIO_NET_HDR_GSO_TCPV4 => acked & bit(VIRTIO_NET_F_GUEST_TSO4) != 0,
        VIRTIO_NET_HDR_GSO_TCPV6 => acked & bit(VIRTIO_NET_F_GUEST_TSO6) != 0,
        // UFO, USO and ECN are never offered (nor set on the tap).
        _ => false,
    };
    if !gso_ok {
        return false;
    }
    if !guest_csum {
        // Only hints are left (DATA_VALID): dropped.
        h[0] = 0;
    }
    h[10..12].copy_from_slice(&1u16.to_le_bytes());
    true
}

/// A descriptor chain the device cannot use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("device-writable descriptor in a TX chain")]
    WriteOnlyOnTx,
    #[error("read-only descriptor in an RX chain")]
    ReadOnlyOnRx,
    #[error("TX chain longer than {} bytes", VNET_HDR_LEN + MAX_FRAME_LEN)]
    TooLong,
    #[error("TX chain of {0} bytes has no complete header")]
    HeaderTooShort(usize),
    #[error("TX frame of {0} bytes is shorter than an Ethernet header")]
    FrameTooShort(usize),
    #[error("RX chain of {0} bytes cannot hold a header and an Ethernet header")]
    RxTooSmall(usize),
    #[error("descriptor {addr:#x}+{len} is not in guest memory")]
    Memory { addr: u64, len: u32 },
    #[error("chain has more than {} memory segments", MAX_SEGMENTS - 1)]
    TooManySegments,
    #[error("bad header: {0}")]
    Header(#[from] HeaderError),
}

/// The host slices of one descriptor, appended to `out`.
fn map<'m>(
    mem: &'m GuestMemoryMmap,
    d: &Descriptor,
    len: usize,
    out: &mut Vec<VolatileSlice<'m>>,
) -> Result<(), ChainError> {
    let bad = ChainError::Memory {
        addr: d.addr().0,
        len: d.len(),
    };
    // `get_slices` splits at region boundaries (the guest's RAM has a hole
    // below 4 GiB); an address outside memory ends up in an error item.
    for s in mem.get_slices(GuestAddress(d.addr().0), len) {
        if out.len() >= MAX_SEGMENTS - 1 {
            return Err(ChainError::TooManySegments);
        }
        out.push(s.map_err(|_| bad)?);
    }
    Ok(())
}

/// A TX chain, checked: the header (a checked copy) and the frame's slices.
pub struct TxFrame<'m> {
    pub hdr: [u8; VNET_HDR_LEN],
    pub frame: Vec<VolatileSlice<'m>>,
    pub frame_len: usize,
}

/// Parses a TX chain: only device-readable descriptors, all in guest memory,
/// a complete header, an Ethernet header at least, at most
/// [`MAX_FRAME_LEN`] frame bytes, and a header [`check_tx_header`] accepts.
pub fn parse_tx<'m>(
    mem: &'m GuestMemoryMmap,
    descs: impl IntoIterator<Item = Descriptor>,
    acked: u64,
) -> Result<TxFrame<'m>, ChainError> {
    let mut slices = Vec::new();
    let mut total = 0usize;
    for d in descs {
        if d.is_write_only() {
            return Err(ChainError::WriteOnlyOnTx);
        }
        let len = d.len() as usize;
        total = total.saturating_add(len);
        if total > VNET_HDR_LEN + MAX_FRAME_LEN {
            return Err(ChainError::TooLong);
        }
        map(mem, &d, len, &mut slices)?;
    }
    if total < VNET_HDR_LEN {
        return Err(ChainError::HeaderTooShort(total));
    }
    let frame_len = total - VNET_HDR_LEN;
    if frame_len < ETH_HLEN {
        return Err(ChainError::FrameTooShort(frame_len));
    }
    // Copy the header out and keep only the frame's part of the slices.
    let mut hdr = [0u8; VNET_HDR_LEN];
    let mut got = 0;
    let mut frame = Vec::with_capacity(slices.len());
    for s in slices {
        if got < VNET_HDR_LEN {
            let n = s.copy_to(&mut hdr[got..]);
            got += n;
            if n < s.len() {
                // In bounds: n < s.len().
                frame.push(s.offset(n).map_err(|_| ChainError::TooLong)?);
            }
        } else if !s.is_empty() {
            frame.push(s);
        }
    }
    let mut h = VnetHdr::from_bytes(&hdr);
    check_tx_header(&h, frame_len, acked)?;
    h.num_buffers = 0;
    Ok(TxFrame {
        hdr: h.to_bytes(),
        frame,
        frame_len,
    })
}

/// An RX chain, checked: where a frame (with its header) may go.
pub struct RxBuffers<'m> {
    pub slices: Vec<VolatileSlice<'m>>,
    /// Their total length; at most `VNET_HDR_LEN + MAX_FRAME_LEN`.
    pub capacity: usize,
}

impl RxBuffers<'_> {
    /// Reads the header the tap wrote, fixes it, writes it back; false (and
    /// nothing written) for a frame the guest cannot take (see [`fix_rx_header`]).
    pub fn fix_header(&self, acked: u64) -> bool {
        let mut h = [0u8; VNET_HDR_LEN];
        let mut got = 0;
        for s in &self.slices {
            got += s.copy_to(&mut h[got..]);
            if got == VNET_HDR_LEN {
                break;
            }
        }
        if !fix_rx_header(&mut h, acked) {
            return false;
        }
        let mut put = 0;
        for s in &self.slices {
            let n = s.len().min(VNET_HDR_LEN - put);
            s.copy_from(&h[put..put + n]);
            put += n;
            if put == VNET_HDR_LEN {
                break;
            }
        }
        true
    }
}

/// Parses an RX chain: only device-writable descriptors, all in guest
/// memory, room for at least [`MIN_RX_CHAIN`] bytes. Room beyond the largest
/// frame is not mapped.
pub fn parse_rx<'m>(
    mem: &'m GuestMemoryMmap,
    descs: impl IntoIterator<Item = Descriptor>,
) -> Result<RxBuffers<'m>, ChainError> {
    const CAP: usize = VNET_HDR_LEN + MAX_FRAME_LEN;
    let mut slices = Vec::new();
    let mut capacity = 0usize;
    for d in descs {
        if !d.is_write_only() {
            return Err(ChainError::ReadOnlyOnRx);
        }
        let len = (d.len() as usize).min(CAP - capacity);
        if len > 0 {
            map(mem, &d, len, &mut slices)?;
            capacity += len;
        }
    }
    if capacity < MIN_RX_CHAIN {
        return Err(ChainError::RxTooSmall(capacity));
    }
    Ok(RxBuffers { slices, capacity })
}

/// `iovec`s for `readv`/`writev` over guest memory slices (and, for TX, the
/// header copy in front).
pub fn iovecs<'a>(
    head: Option<&'a [u8; VNET_HDR_LEN]>,
    slices: &'a [VolatileSlice<'_>],
) -> Vec<libc::iovec> {
    let mut v = Vec::with_capacity(slices.len() + 1);
    if let Some(h) = head {
        v.push(libc::iovec {
            iov_base: h.as_ptr() as *mut libc::c_void,
            iov_len: h.len(),
        });
    }
    for s in slices {
        v.push(libc::iovec {
            iov_base: s.ptr_guard_mut().as_ptr().cast(),
            iov_len: s.len(),
        });
    }
    v
}
