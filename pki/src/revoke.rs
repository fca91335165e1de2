//! The mesh's revocation list ([`mesh_proto::revocation`]): signed with the
//! mesh CA's own key (the CLI side, `shoal-pki revoke`), checked against the CA
//! set of the node (the node side, [`RevocationVerifier`]), and its file form.
//!
//! Only the CA key revokes: operator keys sign routes every day and sit on more
//! machines, and a stolen one must not be able to cut every node off the mesh.
//!
//! The file `shoal-pki revoke --list FILE` keeps, and `shoal revoke apply FILE`
//! sends to a node, is JSON (see [`RevocationFile`]): the signed body as text
//! (readable), the signature and the CA certificate (base64). The signature is
//! ECDSA P-256 SHA-256 (DER) over the body's bytes exactly.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mesh_proto::gossip::RouteDocument;
use mesh_proto::revocation::{
    CertFacts, REVOCATIONS_DOCUMENT, RevocationError, RevocationList, serial_hex,
};
use rcgen::SigningKey as _;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use webpki::EndEntityCert;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::ca::CertificateAuthority;
use crate::identity::CertIdentity;
use crate::sign::{SignatureError, Signer};
use crate::verify::CaBundle;

/// Largest revocation file read, in bytes (a body of at most 24 KiB, a CA
/// certificate of at most 4 KiB in base64, JSON escaping).
pub const MAX_FILE_BYTES: usize = 128 * 1024;

/// Why a revocation file cannot be read or signed.
#[derive(Debug, Error)]
pub enum RevocationFileError {
    /// Larger than [`MAX_FILE_BYTES`].
    #[error("the revocation file is {0} bytes; a revocation list file is at most {MAX_FILE_BYTES}")]
    TooLarge(usize),
    /// Not the JSON layout.
    #[error(
        "not a revocation list file ({0}); it is JSON {{\"body\", \"signature\", \"signer_cert_der\"}} as `shoal-pki revoke` writes it"
    )]
    Layout(String),
    /// The body breaks the schema.
    #[error(transparent)]
    Body(#[from] RevocationError),
    /// The list names another trust domain than the CA signing it.
    #[error(
        "the revocation list is for trust domain {list:?} but this CA is of {ca:?}; revoke with the CA of the mesh the list is for"
    )]
    OtherTrustDomain {
        /// The list's trust domain.
        list: String,
        /// The CA's.
        ca: String,
    },
    /// The CA key failed to sign.
    #[error("signing failed: {0}")]
    Sign(String),
}

/// The JSON file form of a signed revocation list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationFile {
    /// The signed body, as text: the list's canonical JSON.
    pub body: String,
    /// The CA's ECDSA P-256 SHA-256 signature over `body`'s bytes (DER), base64.
    pub signature: String,
    /// The CA certificate that signed it (DER), base64.
    pub signer_cert_der: String,
}

impl RevocationFile {
    /// The file form of a signed document.
    pub fn of(document: &RouteDocument) -> RevocationFile {
        RevocationFile {
            body: String::from_utf8_lossy(&document.body).into_owned(),
            signature: BASE64.encode(&document.signature),
            signer_cert_der: BASE64.encode(&document.signer_cert_der),
        }
    }

    /// Pretty JSON, with a final newline.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Reads a file: its layout, and a body that follows the schema. The
    /// signature is not checked here.
    pub fn parse(bytes: &[u8]) -> Result<(RevocationList, RouteDocument), RevocationFileError> {
        if bytes.len() > MAX_FILE_BYTES {
            return Err(RevocationFileError::TooLarge(bytes.len()));
        }
        let file: RevocationFile = serde_json::from_slice(bytes)
            .map_err(|e| RevocationFileError::Layout(e.to_string()))?;
        let field = |name: &str, text: &str| {
            BASE64
                .decode(text.trim())
                .map_err(|e| RevocationFileError::Layout(format!("{name} is not base64: {e}")))
        };
        let document = RouteDocument {
            name: REVOCATIONS_DOCUMENT.to_string(),
            body: file.body.into_bytes(),
            signature: field("signature", &file.signature)?,
            signer_cert_der: field("signer_cert_der", &file.signer_cert_der)?,
        };
        let list = RevocationList::parse_document(&document)?;
        Ok((list, document))
    }
}

impl CertificateAuthority {
    /// Signs `list` with the CA key: the signed document nodes gossip.
    pub fn sign_revocations(
        &self,
        list: &RevocationList,
    ) -> Result<RouteDocument, RevocationFileError> {
        list.validate()?;
        if list.trust_domain != self.trust_domain {
            return Err(RevocationFileError::OtherTrustDomain {
                list: list.trust_domain.clone(),
                ca: self.trust_domain.clone(),
            });
        }
        let body = list.to_body();
        let signature = self
            .key
            .sign(&body)
            .map_err(|e| RevocationFileError::Sign(e.to_string()))?;
        Ok(RouteDocument {
            name: REVOCATIONS_DOCUMENT.to_string(),
            body,
            signature,
            signer_cert_der: self.cert_der.to_vec(),
        })
    }
}

/// What a revocation entry needs of a certificate: its serial, node and
/// validity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSerial {
    /// The serial, as [`serial_hex`] writes it.
    pub serial: String,
    /// The node it names.
    pub node: Option<String>,
    /// Start of validity, ms since the Unix epoch.
    pub not_before_ms: u64,
    /// End of validity, ms since the Unix epoch.
    pub not_after_ms: u64,
}

impl CertSerial {
    /// Reads them out of a DER certificate; `None` if it does not parse.
    pub fn of(der: &[u8]) -> Option<CertSerial> {
        let (_, x509) = X509Certificate::from_der(der).ok()?;
        let id = CertIdentity::from_x509(&x509).ok();
        let ms = |s: i64| u64::try_from(s).unwrap_or(0).saturating_mul(1000);
        Some(CertSerial {
            serial: serial_hex(x509.raw_serial()),
            node: id.and_then(|i| i.node),
            not_before_ms: ms(x509.validity().not_before.timestamp()),
            not_after_ms: ms(x509.validity().not_after.timestamp()),
        })
    }

    /// The facts [`RevocationList::revokes`] matches on.
    pub fn facts(&self) -> CertFacts<'_> {
        CertFacts {
            serial: &self.serial,
            node: self.node.as_deref(),
            not_before_ms: self.not_before_ms,
        }
    }
}

/// Checks that a revocation list was signed by one of the mesh CAs.
#[derive(Debug, Clone)]
pub struct RevocationVerifier {
    trust_domain: String,
    cas: Vec<CertificateDer<'static>>,
}

impl RevocationVerifier {
    /// A verifier trusting the CAs of `bundle`.
    pub fn from_bundle(bundle: &CaBundle) -> RevocationVerifier {
        RevocationVerifier {
            trust_domain: bundle.trust_domain.clone(),
            cas: bundle.cas.clone(),
        }
    }

    /// Checks `document` at `now`: its signer certificate is one of the mesh
    /// CAs (byte for byte), valid at `now`, its key signed the body, and the
    /// body (when it parses) names this mesh's trust domain.
    pub fn verify(
        &self,
        document: &RouteDocument,
        now: UnixTime,
    ) -> Result<Signer, SignatureError> {
        let (_, x509) = X509Certificate::from_der(&document.signer_cert_der)
            .map_err(|e| SignatureError::MalformedCert(e.to_string()))?;
        if !self
            .cas
            .iter()
            .any(|ca| ca.as_ref() == document.signer_cert_der.as_slice())
        {
            return Err(SignatureError::NotTheCa {
                subject: x509.subject().to_string(),
            });
        }
        let signer = Signer {
            operator: format!("the {} mesh CA", self.trust_domain),
            not_before: x509.validity().not_before.timestamp(),
            not_after: x509.validity().not_after.timestamp(),
        };
        signer.valid_at(now)?;
        let der = CertificateDer::from(document.signer_cert_der.as_slice());
        let ca = EndEntityCert::try_from(&der)
            .map_err(|e| SignatureError::MalformedCert(format!("{e:?}")))?;
        ca.verify_signature(
            webpki::ring::ECDSA_P256_SHA256,
            &document.body,
            &document.signature,
        )
        .map_err(|_| SignatureError::BadSignature)?;
        self.of_this_mesh(document)?;
        Ok(signer)
    }

    /// Refuses a list naming another trust domain (only a CA shared by two
    /// meshes could sign one; each mesh keeps its own list).
    fn of_this_mesh(&self, document: &RouteDocument) -> Result<(), SignatureError> {
        match RevocationList::parse_body(&document.body) {
            Ok(list) if list.trust_domain != self.trust_domain => {
                Err(SignatureError::ListOfOtherTrustDomain {
                    list: list.trust_domain,
                    mesh: self.trust_domain.clone(),
                })
            }
            _ => Ok(()),
        }
    }

    /// The trust domain whose lists this verifier accepts.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CertificateAuthority, Validity};
    use mesh_proto::revocation::Revocation;

    fn ca(td: &str) -> CertificateAuthority {
        CertificateAuthority::create(td, Validity::days_from_now(30).unwrap()).unwrap()
    }

    fn bundle(ca: &CertificateAuthority) -> CaBundle {
        CaBundle::from_pem(ca.cert_pem().as_bytes()).unwrap()
    }

    fn list(serial: &str) -> RevocationList {
        RevocationList {
            trust_domain: "shoal.test".into(),
            version: 1,
            issued_at_ms: 1,
            entries: vec![Revocation {
                serial: Some(serial.into()),
                node: None,
                issued_before_ms: None,
                not_after_ms: None,
                reason: "key_compromise".into(),
                revoked_at_ms: 1,
            }],
        }
    }

    #[test]
    fn a_list_signed_by_the_mesh_ca_verifies_and_round_trips_through_its_file() {
        let ca = ca("shoal.test");
        let doc = ca.sign_revocations(&list("0a")).unwrap();
        let verifier = RevocationVerifier::from_bundle(&bundle(&ca));
        let signer = verifier.verify(&doc, UnixTime::now()).unwrap();
        assert!(signer.operator.contains("shoal.test"));
        let text = RevocationFile::of(&doc).to_json();
        assert!(
            text.contains("key_compromise"),
            "the body is readable: {text}"
        );
        let (parsed, back) = RevocationFile::parse(text.as_bytes()).unwrap();
        assert_eq!(back, doc);
        assert_eq!(parsed, list("0a"));
    }

    #[test]
    fn other_signers_and_changed_bodies_are_refused() {
        let mesh = ca("shoal.test");
        let verifier = RevocationVerifier::from_bundle(&bundle(&mesh));
        // Another CA, even of the same trust domain.
        let other = ca("shoal.test").sign_revocations(&list("0a")).unwrap();
        assert_eq!(
            verifier
                .verify(&other, UnixTime::now())
                .unwrap_err()
                .reason(),
            "not_the_ca"
        );
        // A node certificate of the mesh, its key signing.
        let node = mesh
            .issue_node("n1", &[], Validity::days_from_now(1).unwrap())
            .unwrap();
        let mut by_node = mesh.sign_revocations(&list("0a")).unwrap();
        by_node.signer_cert_der = node.cert_der.to_vec();
        assert_eq!(
            verifier
                .verify(&by_node, UnixTime::now())
                .unwrap_err()
                .reason(),
            "not_the_ca"
        );
        // The body changed after signing.
        let mut changed = mesh.sign_revocations(&list("0a")).unwrap();
        changed.body = list("0b").to_body();
        assert_eq!(
            verifier
                .verify(&changed, UnixTime::now())
                .unwrap_err()
                .reason(),
            "bad_signature"
        );
    }

    #[test]
    fn a_list_for_another_trust_domain_is_neither_signed_nor_accepted() {
        let mesh = ca("shoal.test");
        let mut foreign = list("0a");
        foreign.trust_domain = "other.test".into();
        assert!(matches!(
            mesh.sign_revocations(&foreign),
            Err(RevocationFileError::OtherTrustDomain { .. })
        ));
        // Signed with the mesh CA key anyway (as a CA shared by two meshes could).
        let body = foreign.to_body();
        let document = RouteDocument {
            name: REVOCATIONS_DOCUMENT.into(),
            signature: mesh.key.sign(&body).unwrap(),
            body,
            signer_cert_der: mesh.cert_der.to_vec(),
        };
        let verifier = RevocationVerifier::from_bundle(&bundle(&mesh));
        assert_eq!(
            verifier
                .verify(&document, UnixTime::now())
                .unwrap_err()
                .reason(),
            "wrong_trust_domain"
        );
    }

    #[test]
    fn a_certificate_serial_is_read_the_way_lists_write_it() {
        let mesh = ca("shoal.test");
        let node = mesh
            .issue_node("n1", &[], Validity::days_from_now(1).unwrap())
            .unwrap();
        let facts = CertSerial::of(&node.cert_der).unwrap();
        assert_eq!(facts.node.as_deref(), Some("n1"));
        assert_eq!(
            mesh_proto::revocation::normalize_serial(&facts.serial).unwrap(),
            facts.serial
        );
        let l = list(&facts.serial);
        assert!(l.revokes(&facts.facts()).is_some());
    }

    #[test]
    fn files_that_are_not_revocation_lists_are_refused() {
        assert!(matches!(
            RevocationFile::parse(b"{}"),
            Err(RevocationFileError::Layout(_))
        ));
        assert!(matches!(
            RevocationFile::parse(&vec![b' '; MAX_FILE_BYTES + 1]),
            Err(RevocationFileError::TooLarge(_))
        ));
        let route = RevocationFile {
            body: "{\"name\":\"web\"}".into(),
            signature: String::new(),
            signer_cert_der: String::new(),
        };
        assert!(matches!(
            RevocationFile::parse(route.to_json().as_bytes()),
            Err(RevocationFileError::Body(_))
        ));
    }
}
