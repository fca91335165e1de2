//! The membership protocol's cryptography, done with this node's TLS material:
//! records are signed with the node's private key (the one its certificate
//! certifies), checked against the publisher's certificate verified against the
//! mesh CA, route documents against their operator certificate, and the
//! revocation list against the mesh CA's own certificate. A certificate the
//! revocation list in force revokes is refused like one of another CA. Certificate
//! verdicts are cached by DER (they depend only on the CA, which
//! [`NodeCrypto::clear_cache`] forgets when it changes, and on the time, checked
//! from the cached expiry).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mesh_proto::gossip::RouteDocument;
use mesh_proto::membership::{Crypto, CryptoRefusal, DocumentSigner, NodeCert};
use rustls::pki_types::{CertificateDer, UnixTime};
use webpki::EndEntityCert;

use crate::tls::TlsState;

/// Most certificate verdicts cached before the cache is cleared.
const MAX_CACHED: usize = 65_536;

/// The algorithms a node's record signature may use, tried in order (the key
/// type decides which one applies).
const ALGORITHMS: [&dyn rustls::pki_types::SignatureVerificationAlgorithm; 3] = [
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::ED25519,
];

type Verdict = Result<NodeCert<Arc<CertificateDer<'static>>>, CryptoRefusal>;

/// [`Crypto`] over a node's [`TlsState`].
#[derive(Debug)]
pub struct NodeCrypto {
    tls: Arc<TlsState>,
    cache: Mutex<HashMap<Vec<u8>, Verdict>>,
}

impl NodeCrypto {
    /// The crypto of the node whose TLS state is `tls`.
    pub fn new(tls: Arc<TlsState>) -> NodeCrypto {
        NodeCrypto {
            tls,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Forgets every certificate verdict (the mesh CA changed).
    pub fn clear_cache(&self) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn check(&self, der: &[u8], wall_ms: u64) -> Verdict {
        let cert = CertificateDer::from(der.to_vec());
        let now = UnixTime::since_unix_epoch(std::time::Duration::from_millis(wall_ms));
        let id = self
            .tls
            .verify_peer(&cert, &[], now, webpki::KeyUsage::server_auth())
            .map_err(|r| CryptoRefusal {
                reason: r.as_str(),
                detail: format!("the certificate is refused: {}", r.as_str()),
            })?;
        let node = id.node.ok_or_else(|| CryptoRefusal {
            reason: "not_a_node",
            detail: "not a node certificate".into(),
        })?;
        let not_after_s = x509_parser::parse_x509_certificate(&cert)
            .map(|(_, x)| x.validity().not_after.timestamp())
            .map_err(|e| CryptoRefusal {
                reason: "malformed",
                detail: e.to_string(),
            })?;
        Ok(NodeCert {
            node,
            services: id.services,
            not_after_ms: u64::try_from(not_after_s).unwrap_or(0).saturating_mul(1000),
            key: Arc::new(cert),
        })
    }
}

impl Crypto for NodeCrypto {
    type PublicKey = Arc<CertificateDer<'static>>;

    fn node_certificate(
        &self,
        der: &[u8],
        wall_ms: u64,
    ) -> Result<NodeCert<Self::PublicKey>, CryptoRefusal> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(Ok(cert)) = cache.get(der)
            && cert.not_after_ms >= wall_ms
        {
            return Ok(cert.clone());
        }
        let verdict = self.check(der, wall_ms);
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        // Refusals that time can cure (not yet valid) are not cached.
        if verdict.is_ok() {
            cache.insert(der.to_vec(), verdict.clone());
        }
        verdict
    }

    fn verify(&self, key: &Self::PublicKey, message: &[u8], signature: &[u8]) -> bool {
        let Ok(ee) = EndEntityCert::try_from(key.as_ref()) else {
            return false;
        };
        ALGORITHMS
            .iter()
            .any(|alg| ee.verify_signature(*alg, message, signature).is_ok())
    }

    fn sign(&self, message: &[u8]) -> Option<Vec<u8>> {
        self.tls.sign(message)
    }

    fn document_signer(
        &self,
        document: &RouteDocument,
        at_ms: u64,
    ) -> Result<DocumentSigner, CryptoRefusal> {
        signer_of(self.tls.verify_route_document(document, unix_time(at_ms)))
    }

    fn revocation_signer(
        &self,
        document: &RouteDocument,
        at_ms: u64,
    ) -> Result<DocumentSigner, CryptoRefusal> {
        signer_of(self.tls.verify_revocations(document, unix_time(at_ms)))
    }
}

fn unix_time(ms: u64) -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_millis(ms))
}

/// A signature verdict in the state machine's terms.
fn signer_of(
    verdict: Result<shoal_pki::Signer, shoal_pki::SignatureError>,
) -> Result<DocumentSigner, CryptoRefusal> {
    let signer = verdict.map_err(|e| CryptoRefusal {
        reason: e.reason(),
        detail: e.to_string(),
    })?;
    let ms = |s: i64| u64::try_from(s).unwrap_or(0).saturating_mul(1000);
    Ok(DocumentSigner {
        operator: signer.operator,
        not_before_ms: ms(signer.not_before),
        not_after_ms: ms(signer.not_after),
    })
}
