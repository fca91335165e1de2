//! The membership protocol's cryptography, done with this node's TLS material:
//! records are signed with the node's private key (the one its certificate
//! certifies), checked against the publisher's certificate verified against the
//! mesh CA, route documents against their operator certificate, and the
//! revocation list against the mesh CA's own certificate. A certificate the
//! revocation list in force revokes is refused like one of another CA. Certificate
//! verdicts are cached by DER (they depend only on the CA, which
//! [`NodeCrypto::clear_cache`] forgets when it changes, and on the time, checked
//! from the cached expiry).
//!
//! Nodes started in one process (the simulator's) may share a
//! [`SignatureChecks`]: a signature one of them found valid is not checked again
//! by the others (1,000 in-process nodes would each check every record and
//! accusation, where real nodes each have their own cores).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use mesh_proto::gossip::RouteDocument;
use mesh_proto::membership::{Crypto, CryptoRefusal, DocumentSigner, NodeCert};
use rustls::pki_types::{CertificateDer, UnixTime};
use sha2::{Digest, Sha256};
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

/// Most signatures a [`SignatureChecks`] remembers before it is cleared.
const MAX_CHECKED_SIGNATURES: usize = 1 << 20;

/// Signatures found valid, remembered by the SHA-256 of (certificate, message,
/// signature), so that nodes sharing it check each one at most once while it
/// is remembered. A signature check depends on exactly the three inputs
/// hashed (not on the time or the CA, which the certificate's own check
/// covers), so nothing else is shared.
#[derive(Default)]
pub struct SignatureChecks {
    valid: Mutex<HashSet<[u8; 32]>>,
}

impl std::fmt::Debug for SignatureChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignatureChecks")
            .field("remembered", &self.len())
            .finish()
    }
}

impl SignatureChecks {
    /// Whether the check `id` (see [`check_id`]) was found valid.
    fn holds(&self, id: &[u8; 32]) -> bool {
        self.lock().contains(id)
    }

    fn remember(&self, id: [u8; 32]) {
        let mut valid = self.lock();
        if valid.len() >= MAX_CHECKED_SIGNATURES {
            valid.clear();
        }
        valid.insert(id);
    }

    /// How many valid signatures are remembered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<[u8; 32]>> {
        self.valid.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What identifies one signature check: each input length-prefixed, so no two
/// different triples hash the same bytes.
fn check_id(cert: &[u8], message: &[u8], signature: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [cert, message, signature] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// [`Crypto`] over a node's [`TlsState`].
#[derive(Debug)]
pub struct NodeCrypto {
    tls: Arc<TlsState>,
    cache: Mutex<HashMap<Vec<u8>, Verdict>>,
    shared: Option<Arc<SignatureChecks>>,
}

impl NodeCrypto {
    /// The crypto of the node whose TLS state is `tls`.
    pub fn new(tls: Arc<TlsState>) -> NodeCrypto {
        NodeCrypto {
            tls,
            cache: Mutex::new(HashMap::new()),
            shared: None,
        }
    }

    /// The same, sharing `checks` with the other nodes of this process.
    pub fn sharing(tls: Arc<TlsState>, checks: Arc<SignatureChecks>) -> NodeCrypto {
        NodeCrypto {
            shared: Some(checks),
            ..NodeCrypto::new(tls)
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
        verify_signature(self.shared.as_deref(), key, message, signature)
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

/// Whether `signature` over `message` was made with `cert`'s key, looked up in
/// (and remembered by) `shared` if given.
fn verify_signature(
    shared: Option<&SignatureChecks>,
    cert: &CertificateDer<'_>,
    message: &[u8],
    signature: &[u8],
) -> bool {
    let Some(shared) = shared else {
        return check_signature(cert, message, signature);
    };
    let id = check_id(cert, message, signature);
    if shared.holds(&id) {
        return true;
    }
    let valid = check_signature(cert, message, signature);
    if valid {
        shared.remember(id);
    }
    valid
}

/// Checks `signature` over `message` against `cert`'s key.
fn check_signature(cert: &CertificateDer<'_>, message: &[u8], signature: &[u8]) -> bool {
    let Ok(ee) = EndEntityCert::try_from(cert) else {
        return false;
    };
    ALGORITHMS
        .iter()
        .any(|alg| ee.verify_signature(*alg, message, signature).is_ok())
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

#[cfg(test)]
mod tests {
    use shoal_pki::{CertificateAuthority, OperatorKey, Validity};

    use super::*;

    /// A certificate and a signature of `message` by its key.
    fn signed(
        ca: &CertificateAuthority,
        name: &str,
        message: &[u8],
    ) -> (CertificateDer<'static>, Vec<u8>) {
        let issued = ca
            .issue_operator(name, Validity::days_from_now(1).unwrap())
            .unwrap();
        let key =
            OperatorKey::from_pem(issued.cert_pem.as_bytes(), issued.key_pem.as_bytes()).unwrap();
        (key.cert_der().clone(), key.sign(message).unwrap())
    }

    #[test]
    fn a_signature_found_valid_is_remembered_for_every_node_sharing_the_checks() {
        let ca =
            CertificateAuthority::create("mesh.test", Validity::days_from_now(2).unwrap()).unwrap();
        let (cert, sig) = signed(&ca, "alice", b"record v7");
        let checks = SignatureChecks::default();
        assert!(verify_signature(Some(&checks), &cert, b"record v7", &sig));
        assert_eq!(checks.len(), 1);
        // Another node sharing them finds it without checking again.
        assert!(checks.holds(&check_id(&cert, b"record v7", &sig)));
        assert!(verify_signature(Some(&checks), &cert, b"record v7", &sig));
        assert_eq!(checks.len(), 1);
    }

    #[test]
    fn a_remembered_signature_vouches_for_nothing_but_its_own_certificate_message_and_bytes() {
        let ca =
            CertificateAuthority::create("mesh.test", Validity::days_from_now(2).unwrap()).unwrap();
        let (cert, sig) = signed(&ca, "alice", b"record v7");
        let (other, _) = signed(&ca, "mallory", b"record v7");
        let checks = SignatureChecks::default();
        assert!(verify_signature(Some(&checks), &cert, b"record v7", &sig));
        assert!(!verify_signature(Some(&checks), &cert, b"record v8", &sig));
        assert!(!verify_signature(Some(&checks), &other, b"record v7", &sig));
        let mut flipped = sig.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(!verify_signature(
            Some(&checks),
            &cert,
            b"record v7",
            &flipped
        ));
        // Refusals are not remembered, and checked alike without sharing.
        assert_eq!(checks.len(), 1);
        assert!(!verify_signature(None, &cert, b"record v8", &sig));
        assert!(verify_signature(None, &cert, b"record v7", &sig));
    }
}
