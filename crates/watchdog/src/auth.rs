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

    fn envelope_mac(&self, e: &PeerEnvelope) -> Vec<u8> {
        let header = [
            e.from.to_be_bytes(),
            e.to.to_be_bytes(),
            e.members_hash.to_be_bytes(),
            e.seq.to_be_bytes(),
            e.epoch.to_be_bytes(),
        ];
        let mut parts: Vec<&[u8]> = header.iter().map(|h| h.as_slice()).collect();
        parts.extend(e.messages.iter().map(Vec::as_slice));
        self.mac(&parts)
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
        self.mac(&[
            &p.from.to_be_bytes(),
            &p.members_hash.to_be_bytes(),
            &p.epoch.to_be_bytes(),
            &p.seq.to_be_bytes(),
            p.backend.as_bytes(),
            flags,
        ])
    }

    fn bound_proposal_mac(&self, p: &PeerProposal) -> Vec<u8> {
        let (from, to, hash, epoch, seq, term) = (
            p.from.to_be_bytes(),
            p.to.to_be_bytes(),
            p.members_hash.to_be_bytes(),
            p.epoch.to_be_bytes(),
            p.seq.to_be_bytes(),
            p.term.to_be_bytes(),
        );
        let flags = [u8::from(p.down), u8::from(p.monitor)];
        let mut parts: Vec<&[u8]> = vec![
            b"proposal",
            &from,
            &to,
            &hash,
            &epoch,
            &seq,
            &term,
            p.backend.as_bytes(),
            &flags,
        ];
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
            parts.extend([b"operator".as_slice(), kind, id, force, name]);
        }
        self.mac(&parts)
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
        let mut parts: Vec<&[u8]> = Vec::with_capacity(8);
        let (from, to, hash, term, epoch, nonce, proxy) = (
            a.from.to_be_bytes(),
            a.to.to_be_bytes(),
            a.members_hash.to_be_bytes(),
            a.term.to_be_bytes(),
            a.epoch.to_be_bytes(),
            a.nonce.to_be_bytes(),
            a.proxy_generation.to_be_bytes(),
        );
        parts.extend([
            b"lease-ask".as_slice(),
            &from,
            &to,
            &hash,
            &term,
            &epoch,
            &nonce,
        ]);
        // Signed only when set, so an ask without it verifies as before
        // (a peer of the version before it sends none); stripped on the
        // way, it only makes a promotion wait for the lease.
        if a.proxy_generation != 0 {
            parts.push(&proxy);
        }
        self.mac(&parts)
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
        self.mac(&[
            b"lease-grant",
            &ask.from.to_be_bytes(),
            &ask.to.to_be_bytes(),
            &g.term.to_be_bytes(),
            &ask.epoch.to_be_bytes(),
            &ask.nonce.to_be_bytes(),
            &[u8::from(g.granted)],
            &g.generation.to_be_bytes(),
        ])
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
        let s = Signer::new(b"0123456789abcdef".to_vec());
        let mut e = envelope();
        s.sign_envelope(&mut e);
        assert!(s.verify_envelope(&e));
        assert!(!Signer::new(b"another key 0000".to_vec()).verify_envelope(&e));
        let mut t = e.clone();
        t.from = 3;
        assert!(!s.verify_envelope(&t));
        let mut t = e.clone();
        t.messages = vec![b"ab".to_vec(), b"cde".to_vec()];
        assert!(!s.verify_envelope(&t), "message boundaries are signed");
        let mut t = e.clone();
        t.mac.clear();
        assert!(!s.verify_envelope(&t));
    }

    #[test]
    fn proposals_verify() {
        let s = Signer::new(b"0123456789abcdef".to_vec());
        let mut p = PeerProposal {
            from: 2,
            members_hash: 1,
            backend: "pg0".into(),
            down: true,
            epoch: 1,
            seq: 1,
            mac: vec![],
            monitor: false,
            to: 1,
            term: 4,
            bound_mac: vec![],
            operator: None,
        };
        s.sign_proposal(&mut p);
        assert!(s.verify_proposal(&p));
        assert!(s.verify_bound_proposal(&p));
        for changed in [
            PeerProposal { to: 3, ..p.clone() },
            PeerProposal {
                term: 5,
                ..p.clone()
            },
            PeerProposal {
                seq: 2,
                ..p.clone()
            },
        ] {
            assert!(!s.verify_bound_proposal(&changed), "{changed:?}");
        }
        p.down = false;
        assert!(!s.verify_proposal(&p));
        p.down = true;
        p.monitor = true;
        assert!(
            !s.verify_proposal(&p),
            "a backend report cannot pass as a monitor report"
        );
    }

    #[test]
    fn operator_requests_verify_only_unchanged_and_bound() {
        let s = Signer::new(b"0123456789abcdef".to_vec());
        let request = OperatorRequest {
            kind: 2,
            backend_id: 1,
            force: false,
            backend_name: "pg1".into(),
        };
        let mut p = PeerProposal {
            from: 2,
            members_hash: 1,
            epoch: 1,
            seq: 1,
            to: 1,
            term: 4,
            operator: Some(request.clone()),
            ..PeerProposal::default()
        };
        s.sign_proposal(&mut p);
        assert!(s.verify_bound_proposal(&p));
        assert!(
            !s.verify_proposal(&p),
            "an older watchdog (which checks `mac` only) refuses it"
        );
        let changed = |f: &dyn Fn(&mut OperatorRequest)| {
            let mut r = request.clone();
            f(&mut r);
            PeerProposal {
                operator: Some(r),
                ..p.clone()
            }
        };
        for (why, other) in [
            ("another backend", changed(&|r| r.backend_id = 0)),
            ("forced", changed(&|r| r.force = true)),
            ("another kind", changed(&|r| r.kind = 3)),
            ("another name", changed(&|r| r.backend_name = "pg2".into())),
            (
                "made a report",
                PeerProposal {
                    operator: None,
                    ..p.clone()
                },
            ),
            ("another node", PeerProposal { to: 3, ..p.clone() }),
            (
                "another term",
                PeerProposal {
                    term: 5,
                    ..p.clone()
                },
            ),
        ] {
            assert!(!s.verify_bound_proposal(&other), "{why}");
        }
        assert!(!Signer::new(b"another key......".to_vec()).verify_bound_proposal(&p));
    }

    #[test]
    fn a_reports_bound_mac_is_what_it_was_before_operator_requests() {
        let s = Signer::new(b"0123456789abcdef".to_vec());
        let mut p = PeerProposal {
            from: 2,
            members_hash: 1,
            backend: "pg0".into(),
            down: true,
            epoch: 1,
            seq: 1,
            to: 1,
            term: 4,
            ..PeerProposal::default()
        };
        s.sign_proposal(&mut p);
        let before = s.mac(&[
            b"proposal",
            &2u64.to_be_bytes(),
            &1u64.to_be_bytes(),
            &1u64.to_be_bytes(),
            &1u64.to_be_bytes(),
            &1u64.to_be_bytes(),
            &4u64.to_be_bytes(),
            b"pg0",
            &[1, 0],
        ]);
        assert_eq!(p.bound_mac, before);
    }

    #[test]
    fn lease_grants_verify_only_as_the_answer_to_their_own_ask() {
        let s = Signer::new(b"cluster-key".to_vec());
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
        assert!(s.verify_lease_ask(&ask));
        assert!(!Signer::new(b"other".to_vec()).verify_lease_ask(&ask));
        let mut changed = ask.clone();
        changed.term = 5;
        assert!(!s.verify_lease_ask(&changed));
        // What the sender's proxy routes by cannot be raised on the way
        // (it would let the leader promote before that proxy stopped).
        let mut raised = ask.clone();
        raised.proxy_generation = 12;
        assert!(!s.verify_lease_ask(&raised));
        // Without one, an ask signs as the version before it signed.
        let mut plain = ask.clone();
        plain.proxy_generation = 0;
        s.sign_lease_ask(&mut plain);
        let before = s.mac(&[
            b"lease-ask",
            &2u64.to_be_bytes(),
            &1u64.to_be_bytes(),
            &7u64.to_be_bytes(),
            &4u64.to_be_bytes(),
            &99u64.to_be_bytes(),
            &5u64.to_be_bytes(),
        ]);
        assert_eq!(plain.mac, before);

        let mut grant = PeerLeaseGrant {
            granted: true,
            term: 4,
            generation: 12,
            mac: Vec::new(),
        };
        s.sign_lease_grant(&ask, &mut grant);
        assert!(s.verify_lease_grant(&ask, &grant));
        // An old answer does not pass for the answer to a newer ask.
        let mut later = ask.clone();
        later.nonce = 6;
        assert!(!s.verify_lease_grant(&later, &grant));
        let mut forged = grant.clone();
        forged.generation = 11;
        assert!(!s.verify_lease_grant(&ask, &forged));
        let mut flipped = grant.clone();
        flipped.granted = false;
        assert!(!s.verify_lease_grant(&ask, &flipped));
    }

    #[test]
    fn member_lists_hash_differently() {
        let a = members_hash(&["a:1".into(), "b:1".into()]);
        assert_ne!(a, members_hash(&["a:1".into(), "c:1".into()]));
        assert_eq!(a, members_hash(&["a:1".into(), "b:1".into()]));
    }
}
