//! An INSECURE stand-in for the node's cryptography, for tests and simulations
//! of many nodes: "certificates" and "signatures" are keyed hashes under a secret
//! shared by the whole simulated mesh (its CA). They are unforgeable only for code
//! that does not hold the secret — which is how tests model a hostile member: it
//! may use its own [`ToyCrypto`], never another's. Never use this outside tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use xxhash_rust::xxh3::xxh3_128_with_seed;

use crate::gossip::RouteDocument;

use super::signing::{Crypto, CryptoRefusal, DocumentSigner, NodeCert, SUSPICION_TAG};

const NODE_CERT: &str = "toy-node";
const OPERATOR_CERT: &str = "toy-operator";
const CA_CERT: &str = "toy-ca";

/// One simulated mesh's CA and one member's key.
#[derive(Debug, Clone)]
pub struct ToyCrypto {
    ca_secret: u64,
    me: String,
    /// Accusations signed with this key, shared between clones (what a test
    /// reads to see what signing cost a node).
    accusations_signed: Arc<AtomicU64>,
}

impl ToyCrypto {
    /// The crypto of node `me` in the mesh whose CA secret is `ca_secret`.
    pub fn new(ca_secret: u64, me: impl Into<String>) -> ToyCrypto {
        ToyCrypto {
            ca_secret,
            me: me.into(),
            accusations_signed: Arc::default(),
        }
    }

    /// How many accusations ([`super::wire::Suspicion`]s) this key (or a clone
    /// of it) has signed.
    pub fn accusations_signed(&self) -> u64 {
        self.accusations_signed.load(Ordering::Relaxed)
    }

    fn tag(&self, parts: &[&[u8]]) -> [u8; 16] {
        let mut buf = Vec::new();
        for p in parts {
            buf.extend_from_slice(&(p.len() as u64).to_be_bytes());
            buf.extend_from_slice(p);
        }
        xxh3_128_with_seed(&buf, self.ca_secret).to_be_bytes()
    }

    /// A node certificate for `node`, allowing `services`, valid until
    /// `not_after_ms`, issued by this mesh's CA.
    pub fn issue_node(&self, node: &str, services: &[&str], not_after_ms: u64) -> Vec<u8> {
        let body = format!("{NODE_CERT}|{node}|{}|{not_after_ms}", services.join(","));
        let mut der = body.clone().into_bytes();
        der.push(b'|');
        der.extend_from_slice(&hex(&self.tag(&[body.as_bytes()])));
        der
    }

    /// An operator certificate for `operator`, valid from `not_before_ms` to
    /// `not_after_ms`.
    pub fn issue_operator(&self, operator: &str, not_before_ms: u64, not_after_ms: u64) -> Vec<u8> {
        let body = format!("{OPERATOR_CERT}|{operator}|{not_before_ms}|{not_after_ms}");
        let mut der = body.clone().into_bytes();
        der.push(b'|');
        der.extend_from_slice(&hex(&self.tag(&[body.as_bytes()])));
        der
    }

    /// The CA's own certificate, valid until `not_after_ms`.
    pub fn ca_certificate(&self, not_after_ms: u64) -> Vec<u8> {
        let body = format!("{CA_CERT}|ca|0|{not_after_ms}");
        let mut der = body.clone().into_bytes();
        der.push(b'|');
        der.extend_from_slice(&hex(&self.tag(&[body.as_bytes()])));
        der
    }

    /// The CA's signature over a revocation list body.
    pub fn sign_as_ca(&self, body: &[u8]) -> Vec<u8> {
        self.tag(&[b"ca", body]).to_vec()
    }

    /// `operator`'s signature over a route body.
    pub fn sign_as_operator(&self, operator: &str, body: &[u8]) -> Vec<u8> {
        self.tag(&[b"operator", operator.as_bytes(), body]).to_vec()
    }

    /// Splits a toy certificate into its fields, checking the CA's tag.
    fn open_cert<'a>(&self, der: &'a [u8]) -> Result<Vec<&'a str>, CryptoRefusal> {
        let text = std::str::from_utf8(der).map_err(|_| refuse("malformed", "not a toy cert"))?;
        let (body, tag) = text
            .rsplit_once('|')
            .ok_or_else(|| refuse("malformed", "not a toy cert"))?;
        if hex(&self.tag(&[body.as_bytes()])) != tag.as_bytes() {
            return Err(refuse("other_ca", "not issued by this mesh's CA"));
        }
        Ok(body.split('|').collect())
    }
}

fn refuse(reason: &'static str, detail: &str) -> CryptoRefusal {
    CryptoRefusal {
        reason,
        detail: detail.to_string(),
    }
}

fn hex(bytes: &[u8]) -> Vec<u8> {
    bytes
        .iter()
        .flat_map(|b| format!("{b:02x}").into_bytes())
        .collect()
}

impl Crypto for ToyCrypto {
    type PublicKey = String;

    fn node_certificate(
        &self,
        der: &[u8],
        wall_ms: u64,
    ) -> Result<NodeCert<String>, CryptoRefusal> {
        let fields = self.open_cert(der)?;
        let [kind, node, services, not_after] = fields.as_slice() else {
            return Err(refuse("malformed", "wrong field count"));
        };
        if *kind != NODE_CERT {
            return Err(refuse("not_a_node", "not a node certificate"));
        }
        let not_after_ms: u64 = not_after
            .parse()
            .map_err(|_| refuse("malformed", "bad expiry"))?;
        if wall_ms > not_after_ms {
            return Err(refuse("expired", "expired"));
        }
        Ok(NodeCert {
            node: node.to_string(),
            services: services
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            not_after_ms,
            key: node.to_string(),
        })
    }

    fn verify(&self, key: &String, message: &[u8], signature: &[u8]) -> bool {
        self.tag(&[b"node", key.as_bytes(), message]) == signature
    }

    fn sign(&self, message: &[u8]) -> Option<Vec<u8>> {
        if message.starts_with(SUSPICION_TAG) {
            self.accusations_signed.fetch_add(1, Ordering::Relaxed);
        }
        Some(self.tag(&[b"node", self.me.as_bytes(), message]).to_vec())
    }

    fn document_signer(
        &self,
        document: &RouteDocument,
        at_ms: u64,
    ) -> Result<DocumentSigner, CryptoRefusal> {
        let fields = self.open_cert(&document.signer_cert_der)?;
        let [kind, operator, not_before, not_after] = fields.as_slice() else {
            return Err(refuse("malformed_cert", "wrong field count"));
        };
        if *kind != OPERATOR_CERT {
            return Err(refuse("not_an_operator", "not an operator certificate"));
        }
        let signer = validity(operator, not_before, not_after, at_ms)?;
        if self.sign_as_operator(operator, &document.body) != document.signature {
            return Err(refuse("bad_signature", "bad signature"));
        }
        Ok(signer)
    }

    fn revocation_signer(
        &self,
        document: &RouteDocument,
        at_ms: u64,
    ) -> Result<DocumentSigner, CryptoRefusal> {
        let fields = self.open_cert(&document.signer_cert_der)?;
        let [kind, name, not_before, not_after] = fields.as_slice() else {
            return Err(refuse("malformed_cert", "wrong field count"));
        };
        if *kind != CA_CERT {
            return Err(refuse("not_the_ca", "not the CA certificate"));
        }
        let signer = validity(name, not_before, not_after, at_ms)?;
        if self.sign_as_ca(&document.body) != document.signature {
            return Err(refuse("bad_signature", "bad signature"));
        }
        Ok(signer)
    }
}

/// The signer of a toy certificate with these validity fields, if valid at `at_ms`.
fn validity(
    name: &str,
    not_before: &str,
    not_after: &str,
    at_ms: u64,
) -> Result<DocumentSigner, CryptoRefusal> {
    let not_before_ms: u64 = not_before
        .parse()
        .map_err(|_| refuse("malformed_cert", "bad validity"))?;
    let not_after_ms: u64 = not_after
        .parse()
        .map_err(|_| refuse("malformed_cert", "bad validity"))?;
    if at_ms < not_before_ms {
        return Err(refuse("not_yet_valid", "not valid yet"));
    }
    if at_ms > not_after_ms {
        return Err(refuse("expired", "expired"));
    }
    Ok(DocumentSigner {
        operator: name.to_string(),
        not_before_ms,
        not_after_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toy_certificates_and_signatures_check_out_only_under_their_ca() {
        let ca = ToyCrypto::new(7, "a");
        let der = ca.issue_node("a", &["web"], 100);
        let cert = ca.node_certificate(&der, 50).unwrap();
        assert_eq!(cert.node, "a");
        assert_eq!(cert.services, vec!["web".to_string()]);
        assert_eq!(
            ca.node_certificate(&der, 101).unwrap_err().reason,
            "expired"
        );
        let other = ToyCrypto::new(8, "a");
        assert_eq!(
            other.node_certificate(&der, 50).unwrap_err().reason,
            "other_ca"
        );
        let mut forged = der.clone();
        forged[9] = b'b';
        assert!(ca.node_certificate(&forged, 50).is_err());

        let sig = ca.sign(b"hello").unwrap();
        assert!(ca.verify(&"a".to_string(), b"hello", &sig));
        assert!(!ca.verify(&"b".to_string(), b"hello", &sig));
        assert!(!ca.verify(&"a".to_string(), b"hellO", &sig));
        let b = ToyCrypto::new(7, "b");
        assert!(!ca.verify(&"a".to_string(), b"hello", &b.sign(b"hello").unwrap()));
    }
}
