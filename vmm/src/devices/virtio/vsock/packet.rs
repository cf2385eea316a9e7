//! Glue between `virtio_vsock::packet::VsockPacket` (which does all parsing and
//! bounds checking of descriptor chains) and the rest of the device, which works
//! with plain header values.

use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};

use super::defs::{HOST_CID, TYPE_STREAM};

/// The header of a packet the guest put in the TX queue, copied out of guest
/// memory (so later guest writes to the buffer cannot change what we act on).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct GuestHeader {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl GuestHeader {
    pub fn from_packet(pkt: &VsockPacket<'_, ()>) -> Self {
        GuestHeader {
            src_cid: pkt.src_cid(),
            dst_cid: pkt.dst_cid(),
            src_port: pkt.src_port(),
            dst_port: pkt.dst_port(),
            len: pkt.len(),
            type_: pkt.type_(),
            op: pkt.op(),
            flags: pkt.flags(),
            buf_alloc: pkt.buf_alloc(),
            fwd_cnt: pkt.fwd_cnt(),
        }
    }
}

/// The fields of a packet we put in the guest's RX queue; the CIDs and the type
/// are implied (host -> guest, stream).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RxHeader {
    pub src_port: u32,
    pub dst_port: u32,
    pub op: u16,
    pub flags: u32,
    pub len: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

/// Zero the header of an RX packet. Done before anything else is written so a
/// failure here (there is none in practice: the slice was bounds-checked when the
/// packet was parsed) leaves no side effect behind.
pub(crate) fn clear_header(pkt: &mut VsockPacket<'_, ()>) -> virtio_vsock::packet::Result<()> {
    pkt.set_header_from_raw(&[0u8; PKT_HEADER_SIZE])
}

/// Fill in an RX packet header (after [`clear_header`]).
pub(crate) fn write_header(pkt: &mut VsockPacket<'_, ()>, guest_cid: u64, hdr: &RxHeader) {
    pkt.set_src_cid(HOST_CID)
        .set_dst_cid(guest_cid)
        .set_src_port(hdr.src_port)
        .set_dst_port(hdr.dst_port)
        .set_type(TYPE_STREAM)
        .set_op(hdr.op)
        .set_flags(hdr.flags)
        .set_len(hdr.len)
        .set_buf_alloc(hdr.buf_alloc)
        .set_fwd_cnt(hdr.fwd_cnt);
}
