//! What a watchdog takes from the network before and after a peer's MAC:
//! the peer messages (envelope, proposal, lease ask and grant) as gRPC
//! decodes them and their MAC checks, the Raft messages an envelope carries,
//! and the cluster commands Raft entries carry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgwarden_proto::v1::{PeerEnvelope, PeerLeaseAsk, PeerLeaseGrant, PeerProposal};
use pgwarden_watchdog::Message;
use pgwarden_watchdog::auth::Signer;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let signer = Signer::new(b"0123456789abcdef".to_vec());
    if let Ok(e) = PeerEnvelope::decode(data) {
        let _ = signer.verify_envelope(&e);
        for m in &e.messages {
            let _ = <Message as protobuf::Message>::parse_from_bytes(m);
        }
    }
    if let Ok(p) = PeerProposal::decode(data) {
        let _ = signer.verify_proposal(&p);
    }
    if let Ok(a) = PeerLeaseAsk::decode(data) {
        let _ = signer.verify_lease_ask(&a);
        if let Ok(g) = PeerLeaseGrant::decode(data) {
            let _ = signer.verify_lease_grant(&a, &g);
        }
    }
    let _ = <Message as protobuf::Message>::parse_from_bytes(data);
    let _ = serde_json::from_slice::<pgwarden_cluster::Command>(data);
});
