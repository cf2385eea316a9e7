//! A blocking rtnetlink socket: one request at a time, dumps read to NLMSG_DONE, acks checked,
//! errors with the kernel's extended-ack text. Used by husk-net on the host and by the guest
//! agent (a static binary without an async runtime).
//!
//! netlink-packet-route encodes and decodes every message; this crate only frames requests,
//! matches sequence numbers and turns NLMSG_ERROR into [`RtnlError`]. (rtnetlink, the crate
//! that does this, needs tokio or smol.)

use std::io;
use std::os::fd::AsRawFd;

use netlink_packet_core::{
    parse_string, NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator, NLM_F_ACK,
    NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// What went wrong, with the operation named.
#[derive(Debug, thiserror::Error)]
pub enum RtnlError {
    /// The kernel refused or the socket failed; `detail` is the kernel's extended-ack text.
    #[error("netlink {op}: {source}{}", detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Kernel {
        op: String,
        source: io::Error,
        detail: Option<String>,
    },
    /// The kernel answered something we could not read.
    #[error("netlink {op}: unexpected reply: {reason}")]
    Reply { op: String, reason: String },
}

impl RtnlError {
    pub fn io(op: impl Into<String>, source: io::Error) -> Self {
        RtnlError::Kernel {
            op: op.into(),
            source,
            detail: None,
        }
    }

    pub fn reply(op: impl Into<String>, reason: impl Into<String>) -> Self {
        RtnlError::Reply {
            op: op.into(),
            reason: reason.into(),
        }
    }

    /// The errno behind a kernel refusal, to tell "already gone" from real failures.
    pub fn errno(&self) -> Option<i32> {
        match self {
            RtnlError::Kernel { source, .. } => source.raw_os_error(),
            RtnlError::Reply { .. } => None,
        }
    }
}

/// Upper bound on the messages of one dump: a container netns has a handful of links; a reply
/// this long means something is wrong, and we would rather fail than grow without limit.
const MAX_DUMP_MESSAGES: usize = 16 * 1024;

/// Large enough for any single datagram the kernel sends for a dump (it sizes them to 32 KiB).
const RECV_BUF: usize = 64 * 1024;

/// Never hang on a kernel that does not answer.
const RECV_TIMEOUT_SECS: libc::time_t = 5;

/// One rtnetlink socket in the network namespace of the thread that opened it.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    /// Opens a socket in the calling thread's network namespace (call it after setns).
    pub fn open() -> Result<Self, RtnlError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| RtnlError::io("socket", e))?;
        socket.bind_auto().map_err(|e| RtnlError::io("bind", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| RtnlError::io("connect", e))?;
        // Extended acks make the kernel explain EINVALs in dmesg-free form; failing to enable
        // them only loses detail.
        let _ = socket.set_ext_ack(true);
        let tv = libc::timeval {
            tv_sec: RECV_TIMEOUT_SECS,
            tv_usec: 0,
        };
        // SAFETY: setsockopt with a correctly sized timeval on our own fd.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(RtnlError::io("SO_RCVTIMEO", io::Error::last_os_error()));
        }
        Ok(Rtnl {
            socket,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    fn send(&mut self, op: &str, msg: RouteNetlinkMessage, flags: u16) -> Result<u32, RtnlError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut bytes = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut bytes);
        let sent = self
            .socket
            .send(&bytes, 0)
            .map_err(|e| RtnlError::io(op, e))?;
        if sent != bytes.len() {
            return Err(RtnlError::reply(op, "short send"));
        }
        Ok(self.seq)
    }

    /// Reads datagrams until the reply to `seq` is complete; collects inner messages.
    /// Returns when NLMSG_DONE (dump) or an ack/NACK (request) arrives.
    fn receive(
        &mut self,
        op: &str,
        seq: u32,
        dump: bool,
    ) -> Result<Vec<RouteNetlinkMessage>, RtnlError> {
        let mut out = Vec::new();
        loop {
            self.buf.clear();
            let n = self
                .socket
                .recv(&mut self.buf, 0)
                .map_err(|e| RtnlError::io(op, e))?;
            if n > self.buf.len() {
                return Err(RtnlError::reply(op, "datagram truncated"));
            }
            let mut offset = 0;
            while offset < self.buf.len() {
                let bytes = &self.buf[offset..];
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                    .map_err(|e| RtnlError::reply(op, e.to_string()))?;
                let len = msg.header.length as usize;
                if len == 0 || len > bytes.len() {
                    return Err(RtnlError::reply(op, "bad message length"));
                }
                // Netlink messages are 4-byte aligned inside a datagram.
                offset += (len + 3) & !3;
                if msg.header.sequence_number != seq {
                    // A late answer to an earlier request (a timed-out one): not ours.
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => match e.code {
                        None if !dump => return Ok(out),
                        None => {}
                        Some(_) => {
                            return Err(RtnlError::Kernel {
                                op: op.to_string(),
                                source: e.to_io(),
                                detail: ext_ack_message(msg.header.flags, &e.header),
                            })
                        }
                    },
                    NetlinkPayload::InnerMessage(inner) => {
                        if out.len() >= MAX_DUMP_MESSAGES {
                            return Err(RtnlError::reply(op, "too many messages"));
                        }
                        out.push(inner);
                    }
                    NetlinkPayload::Overrun(_) => {
                        return Err(RtnlError::reply(op, "overrun"));
                    }
                    _ => {}
                }
            }
        }
    }

    /// NLM_F_DUMP request: every object of the kind `msg` asks for.
    pub fn dump(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, RtnlError> {
        let seq = self.send(op, msg, NLM_F_REQUEST | NLM_F_DUMP)?;
        self.receive(op, seq, true)
    }

    /// A change (new/set/del) with NLM_F_ACK: Ok when the kernel acked it.
    pub fn request(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
        extra_flags: u16,
    ) -> Result<(), RtnlError> {
        let seq = self.send(op, msg, NLM_F_REQUEST | NLM_F_ACK | extra_flags)?;
        self.receive(op, seq, false).map(|_| ())
    }

    /// Every link of the namespace.
    pub fn links(&mut self) -> Result<Vec<LinkMessage>, RtnlError> {
        Ok(self
            .dump(
                "dump links",
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
            )?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .collect())
    }

    /// The ifindex of the link named `name`, None when there is none.
    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>, RtnlError> {
        Ok(self
            .links()?
            .iter()
            .find(|l| link_name(l) == Some(name))
            .map(|l| l.header.index))
    }
}

/// NLMSGERR_ATTR_MSG: the kernel's text for an error (NETLINK_EXT_ACK).
const NLMSGERR_ATTR_MSG: u16 = 1;

/// The kernel's explanation in an NLMSG_ERROR ("Exclusivity flag on, cannot modify").
/// netlink-packet-core keeps everything after the error code as raw bytes (its ErrorMessage
/// parser has a FIXME for it), so the echoed request is skipped and the TLVs read here, with
/// its own NLA iterator.
fn ext_ack_message(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    // The echoed request: its header only when capped, else the whole (aligned) message.
    let echoed = if flags & NLM_F_CAPPED != 0 {
        16
    } else {
        let len = u32::from_ne_bytes(payload.get(..4)?.try_into().ok()?) as usize;
        (len + 3) & !3
    };
    NlasIterator::new(payload.get(echoed..)?)
        .filter_map(Result::ok)
        .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
        .and_then(|nla| parse_string(nla.value()).ok())
        .filter(|m| !m.is_empty())
}

pub fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// The link's hardware address.
pub fn link_mac(link: &LinkMessage) -> Option<&[u8]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) => Some(m.as_slice()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error payload as the kernel sends it with NETLINK_EXT_ACK: the echoed 20-byte request,
    /// then NLMSGERR_ATTR_MSG.
    fn payload(capped: bool) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&20u32.to_ne_bytes());
        p.extend_from_slice(&[0u8; 12]);
        if !capped {
            p.extend_from_slice(&[0u8; 4]);
        }
        let text = b"Exclusivity flag on\0";
        p.extend_from_slice(&((4 + text.len()) as u16).to_ne_bytes());
        p.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        p.extend_from_slice(text);
        p.resize((p.len() + 3) & !3, 0);
        p
    }

    #[test]
    fn ext_ack_text_is_found_after_the_echoed_request() {
        assert_eq!(
            ext_ack_message(NLM_F_ACK_TLVS, &payload(false)).as_deref(),
            Some("Exclusivity flag on")
        );
        assert_eq!(
            ext_ack_message(NLM_F_ACK_TLVS | NLM_F_CAPPED, &payload(true)).as_deref(),
            Some("Exclusivity flag on")
        );
        // No TLV flag: nothing; garbage: nothing, no panic.
        assert_eq!(ext_ack_message(0, &payload(false)), None);
        assert_eq!(ext_ack_message(NLM_F_ACK_TLVS, &[0xff; 3]), None);
        assert_eq!(ext_ack_message(NLM_F_ACK_TLVS, &[0xff; 40]), None);
    }
}
