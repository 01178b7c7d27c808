//! SCRAM-SHA-256 messages: a client's first and final messages as the
//! proxy's server side takes them (from anyone who connects), and a
//! server's messages as the proxy's client side takes them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgwarden_wire::auth::scram::{Credentials, ScramClient, ScramServer};

fuzz_target!(|data: &[u8]| {
    // Two messages, split at the first NUL.
    let (first, second) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let verifier = ScramServer::mock_verifier("alice", b"fuzz");
    let mut server = ScramServer::with_nonce(verifier.clone(), "servernonce".to_owned());
    if server.client_first(first).is_ok() {
        let _ = server.client_final(second);
    }
    // The client side with a recovered ClientKey (no PBKDF2 per input).
    let credentials = Credentials::ClientKey {
        client_key: [7; 32],
        verifier,
    };
    let mut client = ScramClient::with_nonce(credentials, "", "clientnonce".to_owned());
    if client.server_first(first).is_ok() {
        let _ = client.server_final(second);
    }
});
