//! The startup packet a client sends first (before any authentication),
//! fed in the pieces a socket may deliver it in.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks where the stream is cut in two reads.
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut).min(rest.len());
    let mut buf = BytesMut::from(&rest[..cut]);
    if let Ok(None) = pgwarden_wire::startup::parse_startup(&mut buf) {
        buf.extend_from_slice(&rest[cut..]);
        let _ = pgwarden_wire::startup::parse_startup(&mut buf);
    }
});
