//! The tc plumbing between a netns link and its tap: an ingress qdisc on each, and on each a u32
//! match-all filter whose mirred action redirects the frame to the other's egress (action stolen).
//! Same as `tc filter add dev A parent ffff: protocol all u32 match u8 0 0 action mirred egress
//! redirect dev B`, Kata's tcfilter model and tc-redirect-tap.

use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirrorOption, TcActionOption, TcActionType, TcAttribute,
    TcFilterU32Option, TcHandle, TcMessage, TcMirror, TcMirrorActionType, TcOption, TcU32Key,
    TcU32Selector, TcU32SelectorFlags,
};

/// `ffff:` — the handle of the ingress qdisc and the parent of its filters.
pub(crate) const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};

/// ETH_P_ALL: the filter sees every protocol.
const ETH_P_ALL: u16 = 0x0003;

/// The filter's priority; fixed so our filter is easy to recognise with `tc filter show`.
const FILTER_PRIO: u16 = 1;

/// `tc qdisc add dev <index> ingress` (handle ffff:, parent ffff:fff1).
pub(crate) fn ingress_qdisc(index: u32) -> TcMessage {
    let mut msg = TcMessage::with_index(index as i32);
    msg.header.handle = INGRESS_HANDLE;
    msg.header.parent = TcHandle::INGRESS;
    msg.attributes
        .push(TcAttribute::Kind("ingress".to_string()));
    msg
}

/// The redirect filter on `from`'s ingress sending every frame out of `to`.
pub(crate) fn redirect_filter(from: u32, to: u32) -> TcMessage {
    let mut msg = TcMessage::with_index(from as i32);
    msg.header.parent = INGRESS_HANDLE;
    // tcm_info = priority << 16 | protocol, the protocol in network byte order.
    msg.header.info = (u32::from(FILTER_PRIO) << 16) | u32::from(ETH_P_ALL.to_be());

    // One all-zero key (mask 0 at offset 0) matches every frame; terminal ends the lookup.
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    selector.keys = vec![TcU32Key::default()];

    let mut mirror = TcMirror::default();
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;

    let mut action = TcAction::default();
    action.attributes = vec![
        TcActionAttribute::Kind("mirred".to_string()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];

    msg.attributes.push(TcAttribute::Kind("u32".to_string()));
    msg.attributes.push(TcAttribute::Options(vec![
        TcOption::U32(TcFilterU32Option::Selector(selector)),
        TcOption::U32(TcFilterU32Option::Action(vec![action])),
    ]));
    msg
}

/// The devices a filter (as dumped by the kernel) redirects or mirrors to with mirred.
pub(crate) fn mirred_targets(filter: &TcMessage) -> Vec<u32> {
    let mut out = Vec::new();
    for attr in &filter.attributes {
        let TcAttribute::Options(opts) = attr else {
            continue;
        };
        for opt in opts {
            let TcOption::U32(TcFilterU32Option::Action(actions)) = opt else {
                continue;
            };
            for action in actions {
                for a in &action.attributes {
                    let TcActionAttribute::Options(aopts) = a else {
                        continue;
                    };
                    for o in aopts {
                        if let TcActionOption::Mirror(TcActionMirrorOption::Parms(m)) = o {
                            out.push(m.ifindex);
                        }
                    }
                }
            }
        }
    }
    out
}

/// The qdisc kind of a dumped qdisc message.
pub(crate) fn kind(msg: &TcMessage) -> Option<&str> {
    msg.attributes.iter().find_map(|a| match a {
        TcAttribute::Kind(k) => Some(k.as_str()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{Emitable, Parseable};

    /// Emits `msg` and parses it back: what the kernel reads is what we meant.
    fn roundtrip(msg: &TcMessage) -> (Vec<u8>, TcMessage) {
        let mut buf = vec![0; msg.buffer_len()];
        msg.emit(&mut buf);
        let back = TcMessage::parse(buf.as_slice()).expect("parse");
        (buf, back)
    }

    #[test]
    fn ingress_qdisc_is_ffff_under_ingress() {
        let (buf, back) = roundtrip(&ingress_qdisc(7));
        // struct tcmsg: family u8, pad, pad u16, ifindex i32, handle u32, parent u32, info u32
        assert_eq!(&buf[4..8], &7i32.to_ne_bytes());
        assert_eq!(&buf[8..12], &0xffff_0000u32.to_ne_bytes());
        assert_eq!(&buf[12..16], &0xffff_fff1u32.to_ne_bytes());
        assert_eq!(kind(&back), Some("ingress"));
    }

    #[test]
    fn redirect_filter_encodes_like_tc() {
        let msg = redirect_filter(3, 9);
        let (buf, back) = roundtrip(&msg);
        assert_eq!(back, msg);
        // parent ffff:, info = prio 1 << 16 | htons(ETH_P_ALL)
        assert_eq!(&buf[12..16], &0xffff_0000u32.to_ne_bytes());
        let info = u32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
        assert_eq!(info >> 16, 1);
        assert_eq!((info & 0xffff) as u16, 0x0003u16.to_be());
        assert_eq!(kind(&back), Some("u32"));
        assert_eq!(mirred_targets(&back), vec![9]);
        // The mirred parms: tc_gen (index, capab, action=TC_ACT_STOLEN 4, refcnt, bindcnt),
        // eaction TCA_EGRESS_REDIR 1, ifindex 9 — found as one 28-byte run in the message.
        let mut parms = Vec::new();
        for v in [0i32, 0, 4, 0, 0, 1, 9] {
            parms.extend_from_slice(&v.to_ne_bytes());
        }
        assert!(buf.windows(parms.len()).any(|w| w == parms.as_slice()));
    }

    #[test]
    fn mirred_targets_of_other_filters_is_empty() {
        let mut msg = TcMessage::with_index(1);
        msg.attributes.push(TcAttribute::Kind("u32".into()));
        assert!(mirred_targets(&msg).is_empty());
    }
}
