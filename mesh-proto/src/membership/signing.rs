//! What gets signed, and who checks it: the exact bytes an origin signs for a
//! record or a suspicion, and the [`Crypto`] trait through which the state machine
//! signs and verifies without doing any cryptography itself (the node implements it
//! with its certificate, key and mesh CA; tests use a toy scheme).
//!
//! Every payload starts with a domain-separation tag and binds the cluster name, so
//! a signature made for one purpose or one cluster is worthless for another. Fields
//! are written with fixed-width integers and length-prefixed strings, so no two
//! different items share a payload.

use crate::gossip::RouteDocument;

use super::wire::{IndirectAck, SignedRecord, Suspicion};

/// Tag of record payloads.
const RECORD_TAG: &[u8] = b"shoal/gossip-record/v1\0";
/// Tag of suspicion payloads.
pub(super) const SUSPICION_TAG: &[u8] = b"shoal/gossip-suspicion/v1\0";
/// Tag of indirect-ack payloads.
const INDIRECT_ACK_TAG: &[u8] = b"shoal/gossip-indirect-ack/v1\0";

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The bytes `record.origin` signs: tag, cluster, origin, generation, version,
/// signing time, key and value.
pub fn record_payload(cluster: &str, record: &SignedRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + record.value.len());
    out.extend_from_slice(RECORD_TAG);
    put_bytes(&mut out, cluster.as_bytes());
    put_bytes(&mut out, record.origin.as_bytes());
    out.extend_from_slice(&record.generation.to_be_bytes());
    out.extend_from_slice(&record.version.to_be_bytes());
    out.extend_from_slice(&record.signed_at_ms.to_be_bytes());
    put_bytes(&mut out, record.key.as_bytes());
    put_bytes(&mut out, &record.value);
    out
}

/// The bytes `suspicion.accuser` signs.
pub fn suspicion_payload(cluster: &str, s: &Suspicion) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(SUSPICION_TAG);
    put_bytes(&mut out, cluster.as_bytes());
    put_bytes(&mut out, s.accuser.as_bytes());
    out.extend_from_slice(&s.accuser_generation.to_be_bytes());
    put_bytes(&mut out, s.target.as_bytes());
    out.extend_from_slice(&s.target_generation.to_be_bytes());
    out.extend_from_slice(&s.target_version.to_be_bytes());
    out.extend_from_slice(&s.issued_at_ms.to_be_bytes());
    out
}

/// The bytes `ack.target` signs to answer an indirect ping: proof, to the
/// requester, that the target itself answered its nonce.
pub fn indirect_ack_payload(cluster: &str, ack: &IndirectAck) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(INDIRECT_ACK_TAG);
    put_bytes(&mut out, cluster.as_bytes());
    put_bytes(&mut out, ack.target.as_bytes());
    put_bytes(&mut out, ack.requester.as_bytes());
    out.extend_from_slice(&ack.nonce.to_be_bytes());
    out
}

/// A node certificate that checked out: who it names, what it allows, until when,
/// and the key its owner signs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCert<K> {
    /// The node name (`spiffe://TD/node/NAME`).
    pub node: String,
    /// The services the certificate allows the node to host.
    pub services: Vec<String>,
    /// End of validity, milliseconds since the Unix epoch.
    pub not_after_ms: u64,
    /// The public key records of this node are checked against.
    pub key: K,
}

/// The operator who signed a route document (or the CA that signed the
/// revocation list), and their certificate's validity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentSigner {
    /// The operator name.
    pub operator: String,
    /// Start of the certificate's validity, milliseconds since the Unix epoch.
    pub not_before_ms: u64,
    /// End of the certificate's validity, milliseconds since the Unix epoch.
    pub not_after_ms: u64,
}

/// Why a certificate or a document signature was refused: a metric label and a
/// sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CryptoRefusal {
    /// A short snake_case label (`other_ca`, `expired`, `bad_signature`, ...).
    pub reason: &'static str,
    /// What is wrong, for the log.
    pub detail: String,
}

/// The cryptography the state machine needs, provided by its driver.
pub trait Crypto {
    /// A node's public key, as [`Crypto::node_certificate`] extracted it.
    type PublicKey: Clone + std::fmt::Debug;

    /// Checks a node certificate (DER): it chains to the mesh CA, is valid at
    /// `wall_ms`, is of this trust domain and names exactly one node.
    fn node_certificate(
        &self,
        der: &[u8],
        wall_ms: u64,
    ) -> Result<NodeCert<Self::PublicKey>, CryptoRefusal>;

    /// Whether `signature` is `key`'s signature over `message`.
    fn verify(&self, key: &Self::PublicKey, message: &[u8], signature: &[u8]) -> bool;

    /// Signs `message` with this node's current key; `None` if the key cannot sign
    /// (the state machine then publishes nothing and reports it).
    fn sign(&self, message: &[u8]) -> Option<Vec<u8>>;

    /// Checks a route document's operator signature as of `at_ms`: the signer
    /// certificate chains to the mesh CA, was valid at `at_ms`, is an operator
    /// certificate of this trust domain, and signed the body.
    fn document_signer(
        &self,
        document: &RouteDocument,
        at_ms: u64,
    ) -> Result<DocumentSigner, CryptoRefusal>;

    /// Checks the signature of the revocation list `document` carries as of
    /// `at_ms`: the signer certificate is one of the mesh CAs themselves, valid
    /// at `at_ms`, and its key signed the body. Operator keys cannot revoke.
    fn revocation_signer(
        &self,
        document: &RouteDocument,
        at_ms: u64,
    ) -> Result<DocumentSigner, CryptoRefusal>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> SignedRecord {
        SignedRecord {
            origin: "a".into(),
            generation: 1,
            version: 2,
            signed_at_ms: 3,
            key: "node".into(),
            value: vec![4, 5],
            signature: vec![9],
        }
    }

    #[test]
    fn payloads_bind_every_field_and_the_cluster() {
        let base = record_payload("mesh", &record());
        let mut variants = Vec::new();
        for change in 0..6 {
            let mut r = record();
            match change {
                0 => r.origin = "b".into(),
                1 => r.generation += 1,
                2 => r.version += 1,
                3 => r.signed_at_ms += 1,
                4 => r.key = "cert".into(),
                _ => r.value.push(0),
            }
            variants.push(record_payload("mesh", &r));
        }
        variants.push(record_payload("other", &record()));
        for v in &variants {
            assert_ne!(*v, base);
        }
        // The signature itself is not part of the payload.
        let mut r = record();
        r.signature = vec![1, 2, 3];
        assert_eq!(record_payload("mesh", &r), base);
        // Length prefixes: moving bytes between fields changes the payload.
        let mut a = record();
        a.key = "svc:ab".into();
        a.value = vec![];
        let mut b = record();
        b.key = "svc:a".into();
        b.value = b"b".to_vec();
        assert_ne!(record_payload("mesh", &a), record_payload("mesh", &b));
    }

    #[test]
    fn suspicion_and_record_payloads_never_collide() {
        let s = Suspicion {
            accuser: "a".into(),
            accuser_generation: 1,
            target: "b".into(),
            target_generation: 2,
            target_version: 3,
            issued_at_ms: 4,
            signature: vec![],
        };
        let p = suspicion_payload("mesh", &s);
        assert!(p.starts_with(SUSPICION_TAG));
        assert!(!p.starts_with(RECORD_TAG));
        let mut t = s.clone();
        t.target_version = 4;
        assert_ne!(suspicion_payload("mesh", &t), p);
    }
}
