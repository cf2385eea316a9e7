//! A blocking rtnetlink socket: one request at a time, acks and dumps read to the end, errors
//! with the kernel's extended-ack text. The same approach as husk-net's (`net/src/netlink.rs`);
//! the agent keeps its own copy so the static guest binary does not depend on the host crate.

use std::fmt;
use std::io;
use std::os::fd::AsRawFd;

use netlink_packet_core::{
    parse_string, NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator, NLM_F_ACK,
    NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// A guest has a handful of links; a dump longer than this means something is wrong.
const MAX_DUMP_MESSAGES: usize = 4096;
/// The kernel sizes dump datagrams to at most 32 KiB.
const RECV_BUF: usize = 64 * 1024;
/// Never hang the request on a kernel that does not answer.
const RECV_TIMEOUT_SECS: libc::time_t = 5;

/// A failed netlink operation: what was done, the errno when the kernel refused it, and why.
#[derive(Debug)]
pub struct NlError {
    pub op: String,
    pub errno: Option<i32>,
    pub detail: String,
}

impl NlError {
    fn io(op: &str, e: io::Error) -> Self {
        NlError {
            op: op.to_string(),
            errno: e.raw_os_error(),
            detail: e.to_string(),
        }
    }

    fn reply(op: &str, detail: impl Into<String>) -> Self {
        NlError {
            op: op.to_string(),
            errno: None,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for NlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.op, self.detail)
    }
}

impl From<NlError> for String {
    fn from(e: NlError) -> String {
        e.to_string()
    }
}

pub struct Rtnl {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, NlError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| NlError::io("socket", e))?;
        socket.bind_auto().map_err(|e| NlError::io("bind", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| NlError::io("connect", e))?;
        // Without extended acks the errors only lose their explanation.
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
            return Err(NlError::io("SO_RCVTIMEO", io::Error::last_os_error()));
        }
        Ok(Rtnl {
            socket,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    fn send(&mut self, op: &str, msg: RouteNetlinkMessage, flags: u16) -> Result<u32, NlError> {
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
            .map_err(|e| NlError::io(op, e))?;
        if sent != bytes.len() {
            return Err(NlError::reply(op, "short send"));
        }
        Ok(self.seq)
    }

    /// Reads until the answer to `seq` is complete: NLMSG_DONE for a dump, the ack for a change.
    fn receive(
        &mut self,
        op: &str,
        seq: u32,
        dump: bool,
    ) -> Result<Vec<RouteNetlinkMessage>, NlError> {
        let mut out = Vec::new();
        loop {
            self.buf.clear();
            let n = self
                .socket
                .recv(&mut self.buf, 0)
                .map_err(|e| NlError::io(op, e))?;
            if n > self.buf.len() {
                return Err(NlError::reply(op, "datagram truncated"));
            }
            let mut offset = 0;
            while offset < self.buf.len() {
                let bytes = &self.buf[offset..];
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                    .map_err(|e| NlError::reply(op, e.to_string()))?;
                let len = msg.header.length as usize;
                if len == 0 || len > bytes.len() {
                    return Err(NlError::reply(op, "bad message length"));
                }
                offset += (len + 3) & !3;
                if msg.header.sequence_number != seq {
                    continue; // a late answer to an earlier, timed-out request
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => match e.code {
                        None if !dump => return Ok(out),
                        None => {}
                        Some(_) => {
                            let source = e.to_io();
                            let detail = match ext_ack_message(msg.header.flags, &e.header) {
                                Some(text) => format!("{source} ({text})"),
                                None => source.to_string(),
                            };
                            return Err(NlError {
                                op: op.to_string(),
                                errno: source.raw_os_error(),
                                detail,
                            });
                        }
                    },
                    NetlinkPayload::InnerMessage(inner) => {
                        if out.len() >= MAX_DUMP_MESSAGES {
                            return Err(NlError::reply(op, "too many messages"));
                        }
                        out.push(inner);
                    }
                    NetlinkPayload::Overrun(_) => return Err(NlError::reply(op, "overrun")),
                    _ => {}
                }
            }
        }
    }

    /// Every object of the kind `msg` asks for.
    pub fn dump(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, NlError> {
        let seq = self.send(op, msg, NLM_F_REQUEST | NLM_F_DUMP)?;
        self.receive(op, seq, true)
    }

    /// A change (new/set/del), acked by the kernel.
    pub fn request(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
        extra_flags: u16,
    ) -> Result<(), NlError> {
        let seq = self.send(op, msg, NLM_F_REQUEST | NLM_F_ACK | extra_flags)?;
        self.receive(op, seq, false).map(|_| ())
    }

    pub fn links(&mut self) -> Result<Vec<LinkMessage>, NlError> {
        let all = self.dump(
            "list links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
        )?;
        Ok(all
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .collect())
    }
}

pub fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

pub fn link_mac(link: &LinkMessage) -> Option<&[u8]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) => Some(m.as_slice()),
        _ => None,
    })
}

/// NLMSGERR_ATTR_MSG: the kernel's text for an error (NETLINK_EXT_ACK).
const NLMSGERR_ATTR_MSG: u16 = 1;

/// The kernel's explanation in an NLMSG_ERROR. netlink-packet-core keeps what follows the
/// error code as raw bytes: the echoed request (only its header when capped), then the TLVs.
fn ext_ack_message(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext_ack_text_follows_the_echoed_request() {
        let mut p = Vec::new();
        p.extend_from_slice(&20u32.to_ne_bytes());
        p.extend_from_slice(&[0u8; 16]);
        let text = b"MTU too large\0";
        p.extend_from_slice(&((4 + text.len()) as u16).to_ne_bytes());
        p.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        p.extend_from_slice(text);
        p.resize((p.len() + 3) & !3, 0);
        assert_eq!(
            ext_ack_message(NLM_F_ACK_TLVS, &p).as_deref(),
            Some("MTU too large")
        );
        assert_eq!(ext_ack_message(0, &p), None);
        assert_eq!(ext_ack_message(NLM_F_ACK_TLVS, &[0xff; 3]), None);
        assert_eq!(ext_ack_message(NLM_F_ACK_TLVS, &[0xff; 40]), None);
    }
}
