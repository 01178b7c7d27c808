//! Peer authentication: every message between watchdogs carries an
//! HMAC-SHA256 over its canonical bytes with the cluster key, checked before
//! any of its bytes reach the Raft decoder, plus an epoch (persisted, only
//! increasing) and a sequence number so a captured message cannot be
//! replayed ([`crate::replay`]).

use hmac::{Hmac, KeyInit, Mac};
use pgwarden_proto::v1::{PeerEnvelope, PeerLeaseAsk, PeerLeaseGrant, PeerProposal};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// A short fingerprint of the member list: nodes configured with different
/// member lists refuse each other (their Raft ids would not agree).
pub fn members_hash(members: &[String]) -> u64 {
    let digest = Sha256::digest(members.join("\n").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(digest.get(..8).unwrap_or(&[0; 8]));
    u64::from_be_bytes(first)
}

/// Signs and checks peer messages with the cluster key.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(***)")
    }
}

impl Signer {
    /// A signer with the cluster key.
    pub fn new(key: Vec<u8>) -> Signer {
        Signer { key }
    }

    fn mac(&self, parts: &[&[u8]]) -> Vec<u8> {
        let Ok(mut mac) = <HmacSha256 as KeyInit>::new_from_slice(&self.key) else {
            unreachable!("HMAC accepts keys of any length")
        };
        for p in parts {
            // Length-prefixed, so no two different part lists sign the same bytes.
            mac.update(&(p.len() as u64).to_be_bytes());
            mac.update(p);
        }
        mac.finalize().into_bytes().to_vec()
    }

    /// The MAC over `head`, then `numbers` (big-endian), then `tail`.
    fn mac_of(&self, head: &[&[u8]], numbers: &[u64], tail: &[&[u8]]) -> Vec<u8> {
        let numbers: Vec<[u8; 8]> = numbers.iter().map(|n| n.to_be_bytes()).collect();
        let mut parts = head.to_vec();
        parts.extend(numbers.iter().map(|n| n.as_slice()));
        parts.extend(tail);
        self.mac(&parts)
    }

    fn envelope_mac(&self, e: &PeerEnvelope) -> Vec<u8> {
        let header = [e.from, e.to, e.members_hash, e.seq, e.epoch];
        let messages: Vec<&[u8]> = e.messages.iter().map(Vec::as_slice).collect();
        self.mac_of(&[], &header, &messages)
    }

    /// Fills in the MAC of an envelope.
    pub fn sign_envelope(&self, e: &mut PeerEnvelope) {
        e.mac = self.envelope_mac(e);
    }

    /// True when the envelope was signed with the cluster key.
    pub fn verify_envelope(&self, e: &PeerEnvelope) -> bool {
        self.envelope_mac(e).ct_eq(&e.mac).into()
    }

    fn proposal_mac(&self, p: &PeerProposal) -> Vec<u8> {
        // The monitor flag is signed only when set, so a backend report
        // signs as it did before the flag existed: watchdogs of both versions
        // accept each other's reports during a rolling upgrade.
        let flags: &[u8] = if p.monitor {
            &[u8::from(p.down), 1]
        } else {
            &[u8::from(p.down)]
        };
        let header = [p.from, p.members_hash, p.epoch, p.seq];
        self.mac_of(&[], &header, &[p.backend.as_bytes(), flags])
    }

    fn bound_proposal_mac(&self, p: &PeerProposal) -> Vec<u8> {
        let header = [p.from, p.to, p.members_hash, p.epoch, p.seq, p.term];
        let flags = [u8::from(p.down), u8::from(p.monitor)];
        let mut tail: Vec<&[u8]> = vec![p.backend.as_bytes(), &flags];
        // An operator's request is signed only when set, so a report signs
        // as it did before requests travelled this way.
        let request = p.operator.as_ref().map(|r| {
            (
                r.kind.to_be_bytes(),
                r.backend_id.to_be_bytes(),
                [u8::from(r.force)],
                r.backend_name.as_bytes(),
            )
        });
        if let Some((kind, id, force, name)) = &request {
            tail.extend([b"operator".as_slice(), kind, id, force, name]);
        }
        self.mac_of(&[b"proposal"], &header, &tail)
    }

    /// Fills in both MACs of a forwarded proposal: `mac` for watchdogs of
    /// older versions, `bound_mac` (which also covers the leader and term
    /// it is for) for this one. An operator's request gets `bound_mac`
    /// only: a watchdog of an older version must refuse it, not take it for
    /// a report.
    pub fn sign_proposal(&self, p: &mut PeerProposal) {
        p.mac = if p.operator.is_some() {
            Vec::new()
        } else {
            self.proposal_mac(p)
        };
        p.bound_mac = self.bound_proposal_mac(p);
    }

    /// True when the proposal was signed with the cluster key (`mac`).
    pub fn verify_proposal(&self, p: &PeerProposal) -> bool {
        self.proposal_mac(p).ct_eq(&p.mac).into()
    }

    /// True when the proposal's leader and term were signed too (`bound_mac`).
    pub fn verify_bound_proposal(&self, p: &PeerProposal) -> bool {
        self.bound_proposal_mac(p).ct_eq(&p.bound_mac).into()
    }

    fn lease_ask_mac(&self, a: &PeerLeaseAsk) -> Vec<u8> {
        let mut header = vec![a.from, a.to, a.members_hash, a.term, a.epoch, a.nonce];
        // Signed only when set, so an ask without it verifies as before
        // (a peer of the version before it sends none); stripped on the
        // way, it only makes a promotion wait for the lease.
        if a.proxy_generation != 0 {
            header.push(a.proxy_generation);
        }
        self.mac_of(&[b"lease-ask"], &header, &[])
    }

    /// Fills in the MAC of a lease ask.
    pub fn sign_lease_ask(&self, a: &mut PeerLeaseAsk) {
        a.mac = self.lease_ask_mac(a);
    }

    /// True when the lease ask was signed with the cluster key.
    pub fn verify_lease_ask(&self, a: &PeerLeaseAsk) -> bool {
        self.lease_ask_mac(a).ct_eq(&a.mac).into()
    }

    fn lease_grant_mac(&self, ask: &PeerLeaseAsk, g: &PeerLeaseGrant) -> Vec<u8> {
        let header = [ask.from, ask.to, g.term, ask.epoch, ask.nonce];
        let tail: [&[u8]; 2] = [&[u8::from(g.granted)], &g.generation.to_be_bytes()];
        self.mac_of(&[b"lease-grant"], &header, &tail)
    }

    /// Fills in the MAC of the answer to `ask`.
    pub fn sign_lease_grant(&self, ask: &PeerLeaseAsk, g: &mut PeerLeaseGrant) {
        g.mac = self.lease_grant_mac(ask, g);
    }

    /// True when `g` answers `ask` (this very ask: its nonce is signed)
    /// and was signed with the cluster key.
    pub fn verify_lease_grant(&self, ask: &PeerLeaseAsk, g: &PeerLeaseGrant) -> bool {
        self.lease_grant_mac(ask, g).ct_eq(&g.mac).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwarden_proto::v1::OperatorRequest;

    /// The signer with the test cluster key.
    fn signer() -> Signer {
        Signer::new(b"0123456789abcdef".to_vec())
    }

    /// `m` with the one change `f` makes.
    fn with<T: Clone>(m: &T, f: impl FnOnce(&mut T)) -> T {
        let mut t = m.clone();
        f(&mut t);
        t
    }

    /// Checks that `m`, signed by [`signer`], passes `verify` with that key
    /// only, and that none of the `changed` copies of it passes.
    fn verifies_only_unchanged<T>(
        m: &T,
        verify: impl Fn(&Signer, &T) -> bool,
        changed: &[(&str, T)],
    ) {
        assert!(verify(&signer(), m), "as signed");
        assert!(
            !verify(&Signer::new(b"another key 0000".to_vec()), m),
            "another key"
        );
        for (why, t) in changed {
            assert!(!verify(&signer(), t), "{why}");
        }
    }

    fn envelope() -> PeerEnvelope {
        PeerEnvelope {
            from: 1,
            to: 2,
            members_hash: 7,
            seq: 3,
            epoch: 9,
            messages: vec![b"abc".to_vec(), b"de".to_vec()],
            mac: Vec::new(),
        }
    }

    #[test]
    fn envelopes_verify_only_with_the_key_and_unchanged() {
        let mut e = envelope();
        signer().sign_envelope(&mut e);
        verifies_only_unchanged(
            &e,
            Signer::verify_envelope,
            &[
                ("another sender", with(&e, |t| t.from = 3)),
                (
                    "message boundaries are signed",
                    with(&e, |t| t.messages = vec![b"ab".to_vec(), b"cde".to_vec()]),
                ),
                ("no MAC", with(&e, |t| t.mac.clear())),
            ],
        );
    }

    /// A proposal from node 2 to its leader, node 1, in term 4, saying
    /// nothing yet.
    fn addressed() -> PeerProposal {
        PeerProposal {
            from: 2,
            members_hash: 1,
            epoch: 1,
            seq: 1,
            to: 1,
            term: 4,
            ..PeerProposal::default()
        }
    }

    /// A backend report (`pg0` down), [`addressed`].
    fn report() -> PeerProposal {
        PeerProposal {
            backend: "pg0".into(),
            down: true,
            ..addressed()
        }
    }

    /// `p` sent again to another node, in another term or with another
    /// seq: none of them passes the `bound_mac` `p` was signed with.
    fn rebound(p: &PeerProposal) -> [(&'static str, PeerProposal); 3] {
        [
            ("another node", with(p, |p| p.to = 3)),
            ("another term", with(p, |p| p.term = 5)),
            ("another seq", with(p, |p| p.seq = 2)),
        ]
    }

    #[test]
    fn proposals_verify() {
        let mut p = report();
        signer().sign_proposal(&mut p);
        verifies_only_unchanged(&p, Signer::verify_bound_proposal, &rebound(&p));
        verifies_only_unchanged(
            &p,
            Signer::verify_proposal,
            &[
                ("up", with(&p, |p| p.down = false)),
                (
                    "a backend report cannot pass as a monitor report",
                    with(&p, |p| p.monitor = true),
                ),
            ],
        );
    }

    #[test]
    fn operator_requests_verify_only_unchanged_and_bound() {
        let request = OperatorRequest {
            kind: 2,
            backend_id: 1,
            force: false,
            backend_name: "pg1".into(),
        };
        let mut p = PeerProposal {
            operator: Some(request.clone()),
            ..addressed()
        };
        signer().sign_proposal(&mut p);
        assert!(
            !signer().verify_proposal(&p),
            "an older watchdog (which checks `mac` only) refuses it"
        );
        let changed =
            |f: &dyn Fn(&mut OperatorRequest)| with(&p, |p| p.operator = Some(with(&request, f)));
        let mut others = vec![
            ("another backend", changed(&|r| r.backend_id = 0)),
            ("forced", changed(&|r| r.force = true)),
            ("another kind", changed(&|r| r.kind = 3)),
            ("another name", changed(&|r| r.backend_name = "pg2".into())),
            ("made a report", with(&p, |p| p.operator = None)),
        ];
        others.extend(rebound(&p));
        verifies_only_unchanged(&p, Signer::verify_bound_proposal, &others);
    }

    /// `bytes` in lower-case hex.
    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn a_reports_bound_mac_is_what_it_was_before_operator_requests() {
        let mut p = report();
        signer().sign_proposal(&mut p);
        // Spelled out part by part, not through `mac_of`: this pins the
        // bytes a watchdog of the version before signs and checks.
        let be = |n: u64| n.to_be_bytes();
        let before = signer().mac(&[
            b"proposal",
            &be(2),
            &be(1),
            &be(1),
            &be(1),
            &be(1),
            &be(4),
            b"pg0",
            &[1, 0],
        ]);
        assert_eq!(p.bound_mac, before);
        assert_eq!(
            hex(&p.bound_mac),
            "94ee9e00bea84e13f3acd7984fe0319ae91ecb701e7c59064e009e4bf5499fa9"
        );
    }

    #[test]
    fn lease_grants_verify_only_as_the_answer_to_their_own_ask() {
        let s = signer();
        let mut ask = PeerLeaseAsk {
            from: 2,
            to: 1,
            members_hash: 7,
            term: 4,
            epoch: 99,
            nonce: 5,
            mac: Vec::new(),
            proxy_generation: 11,
        };
        s.sign_lease_ask(&mut ask);
        verifies_only_unchanged(
            &ask,
            Signer::verify_lease_ask,
            &[
                ("another term", with(&ask, |a| a.term = 5)),
                // What the sender's proxy routes by cannot be raised on the
                // way (it would let the leader promote before that proxy
                // stopped).
                (
                    "a raised proxy generation",
                    with(&ask, |a| a.proxy_generation = 12),
                ),
            ],
        );
        // Without one, an ask signs as the version before it signed.
        let mut plain = with(&ask, |a| a.proxy_generation = 0);
        s.sign_lease_ask(&mut plain);
        let be = |n: u64| n.to_be_bytes();
        let before = s.mac(&[
            b"lease-ask",
            &be(2),
            &be(1),
            &be(7),
            &be(4),
            &be(99),
            &be(5),
        ]);
        assert_eq!(plain.mac, before);
        assert_eq!(
            hex(&plain.mac),
            "0456bbc74581dfc42d2d19c41c31fe9c93fe3e52326bf7cbc9cb13353a24d657"
        );

        let mut grant = PeerLeaseGrant {
            granted: true,
            term: 4,
            generation: 12,
            mac: Vec::new(),
        };
        s.sign_lease_grant(&ask, &mut grant);
        verifies_only_unchanged(
            &grant,
            |s, g| s.verify_lease_grant(&ask, g),
            &[
                ("forged", with(&grant, |g| g.generation = 11)),
                ("flipped", with(&grant, |g| g.granted = false)),
            ],
        );
        // An old answer does not pass for the answer to a newer ask.
        assert!(!s.verify_lease_grant(&with(&ask, |a| a.nonce = 6), &grant));
    }

    #[test]
    fn member_lists_hash_differently() {
        let a = members_hash(&["a:1".into(), "b:1".into()]);
        assert_ne!(a, members_hash(&["a:1".into(), "c:1".into()]));
        assert_eq!(a, members_hash(&["a:1".into(), "b:1".into()]));
    }
}
