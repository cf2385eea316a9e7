//! The agent wire protocol as each side reads it: a stream of frames
//! (4-byte big-endian length + JSON) decoded with `husk_protocol::recv`.
//!
//! Input: byte 0 picks the reader (even: the host reading the agent's
//! `Response`s, odd: the agent reading the host's `Request`s), the rest is
//! the byte stream. Every message decoded must re-encode and decode to
//! itself (what the host forwards or logs is what it parsed).
#![no_main]

use husk_protocol::{recv, send, FrameError, Request, Response};
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};

fn read_all<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(mut stream: &[u8]) {
    // Each frame consumes at least 4 bytes, so this ends.
    loop {
        match recv::<T>(&mut stream) {
            Ok(msg) => {
                let mut buf = Vec::new();
                send(&mut buf, &msg).expect("a decoded message re-encodes");
                let again: T = recv(&mut buf.as_slice()).expect("a re-encoded message decodes");
                assert_eq!(again, msg, "round trip changed the message");
            }
            // A bad payload is skipped like the readers do (they drop the
            // connection; here the next frame is still worth parsing).
            Err(FrameError::Malformed(_)) => continue,
            Err(FrameError::Io(e)) => panic!("a byte slice cannot fail to read: {e}"),
            // Closed, Truncated, TooLarge (and any newer variant): the stream ends.
            Err(_) => return,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, stream)) = data.split_first() else {
        return;
    };
    if which % 2 == 0 {
        read_all::<Response>(stream);
    } else {
        read_all::<Request>(stream);
    }
});
