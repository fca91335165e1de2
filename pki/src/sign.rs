//! Operator signatures on route documents.
//!
//! A route document ([`mesh_proto::gossip::RouteDocument`]) is published
//! cluster-wide, so every node must be able to tell, on its own, that an operator
//! of this mesh wrote it. The operator signs the document's `body` (the canonical
//! JSON of a [`RouteSpec`], [`RouteSpec::to_body`]) with the key of their operator
//! certificate, and ships the certificate with the signature. A node accepts the
//! document only if ([`OperatorVerifier::verify`]):
//!
//! 1. the signer certificate chains to the mesh CA (any CA of the node's bundle)
//!    and is valid now;
//! 2. it carries exactly one `spiffe://TD/operator/NAME` id, of the node's trust
//!    domain — node, service and CA certificates are refused, whatever they chain to;
//! 3. the signature over `body` verifies with that certificate's public key.
//!
//! The signature is ECDSA P-256 with SHA-256, DER-encoded (ASN.1), over the body
//! bytes exactly — what `openssl dgst -sha256 -sign operator.key body.json`
//! writes, so a document can be signed with other tools too. Besides the route
//! name (which must equal the name inside the signed body) the document carries
//! nothing but the body, the signature and the certificate: nodes relay it exactly
//! as signed, with no field of their own.
//!
//! This module signs with [`OperatorKey`] (the CLI side) and verifies with
//! [`OperatorVerifier`] (the node side). It never reads a clock: callers pass
//! `now`.

use mesh_proto::gossip::RouteDocument;
use mesh_proto::route::RouteSpec;
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, SigningKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use thiserror::Error;
use time::OffsetDateTime;
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::{CertIdentity, IdentityError};
use crate::inspect::rfc3339;
use crate::verify::{BundleError, CaBundle};

/// Why an operator certificate and key cannot be used to sign.
#[derive(Debug, Error)]
pub enum KeyError {
    /// The certificate file holds no PEM certificate.
    #[error("the operator certificate is not a PEM certificate: {0}")]
    CertPem(String),
    /// The certificate does not parse, or its SPIFFE ids are malformed.
    #[error("the operator certificate is malformed: {0}")]
    CertMalformed(String),
    /// The certificate is not an operator certificate.
    #[error(
        "the certificate is {what}, not an operator certificate; issue one with `shoal-pki issue --ca CA-DIR --operator NAME --out DIR`"
    )]
    NotAnOperator {
        /// What it is instead.
        what: String,
    },
    /// The key file holds no PKCS#8 ECDSA P-256 key.
    #[error(
        "the operator key is not a PEM PKCS#8 ECDSA P-256 private key (use the operator.key written by shoal-pki): {0}"
    )]
    Key(String),
    /// The key is not the certificate's key.
    #[error(
        "the operator key does not belong to the operator certificate (their public keys differ); use the operator.key issued together with this operator.crt"
    )]
    KeyMismatch,
    /// The crypto library failed to sign.
    #[error("signing failed: {0}")]
    Sign(String),
}

/// An operator's certificate and private key: what `shoal route apply` signs with.
pub struct OperatorKey {
    key: KeyPair,
    cert_der: CertificateDer<'static>,
    operator: String,
    trust_domain: String,
}

impl std::fmt::Debug for OperatorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorKey")
            .field("operator", &self.operator)
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

/// A route body with its operator signature and the signer's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRoute {
    /// The route name (from the body).
    pub name: String,
    /// The signed bytes: the canonical JSON of the route spec.
    pub body: Vec<u8>,
    /// The DER ECDSA signature over `body`.
    pub signature: Vec<u8>,
    /// The signer's operator certificate, DER.
    pub signer_cert_der: Vec<u8>,
}

impl SignedRoute {
    /// The route document with this signature: exactly what is gossiped.
    pub fn document(&self) -> RouteDocument {
        RouteDocument {
            name: self.name.clone(),
            body: self.body.clone(),
            signature: self.signature.clone(),
            signer_cert_der: self.signer_cert_der.clone(),
        }
    }
}

impl OperatorKey {
    /// Reads an operator certificate and its key (both PEM, as `shoal-pki issue
    /// --operator` writes them) and checks that they belong together. Whether the
    /// certificate is valid now, and chains to the mesh CA, is the node's call.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<OperatorKey, KeyError> {
        let cert_der = CertificateDer::from_pem_slice(cert_pem)
            .map_err(|e| KeyError::CertPem(e.to_string()))?;
        let (_, x509) = X509Certificate::from_der(&cert_der)
            .map_err(|e| KeyError::CertMalformed(e.to_string()))?;
        let id = CertIdentity::from_x509(&x509).map_err(|e| match e {
            IdentityError::Ambiguous(what) => KeyError::NotAnOperator { what },
            other => KeyError::CertMalformed(other.to_string()),
        })?;
        let (Some(operator), Some(trust_domain), false) =
            (id.operator.clone(), id.trust_domain.clone(), id.is_ca)
        else {
            return Err(KeyError::NotAnOperator {
                what: describe_identity(&id),
            });
        };
        let key_text = std::str::from_utf8(key_pem).map_err(|e| KeyError::Key(e.to_string()))?;
        let key = KeyPair::from_pkcs8_pem_and_sign_algo(key_text, &PKCS_ECDSA_P256_SHA256)
            .map_err(|e| KeyError::Key(e.to_string()))?;
        if key.public_key_raw() != x509.public_key().subject_public_key.data.as_ref() {
            return Err(KeyError::KeyMismatch);
        }
        Ok(OperatorKey {
            key,
            cert_der: cert_der.into_owned(),
            operator,
            trust_domain,
        })
    }

    /// The operator name in the certificate.
    pub fn operator(&self) -> &str {
        &self.operator
    }

    /// The trust domain of the certificate.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The operator certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Signs `bytes`: ECDSA P-256 with SHA-256, DER-encoded.
    pub fn sign(&self, bytes: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.key
            .sign(bytes)
            .map_err(|e| KeyError::Sign(e.to_string()))
    }

    /// Signs a route: its canonical body ([`RouteSpec::to_body`]), never the file the
    /// operator wrote, so every node reads back exactly the bytes that were signed.
    pub fn sign_route(&self, spec: &RouteSpec) -> Result<SignedRoute, KeyError> {
        let body = spec.to_body();
        let signature = self.sign(&body)?;
        Ok(SignedRoute {
            name: spec.name.clone(),
            body,
            signature,
            signer_cert_der: self.cert_der.to_vec(),
        })
    }
}

/// The operator who signed a document that verified, and the validity window of
/// their certificate (the document stops verifying when it ends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// The operator name (`spiffe://TD/operator/NAME`).
    pub operator: String,
    /// Start of the certificate's validity, Unix seconds.
    pub not_before: i64,
    /// End of the certificate's validity, Unix seconds.
    pub not_after: i64,
}

impl Signer {
    /// Whether the certificate is valid at `now` (as the verification found it);
    /// for rechecking a cached verdict.
    pub fn valid_at(&self, now: UnixTime) -> Result<(), SignatureError> {
        let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        if now > self.not_after {
            return Err(SignatureError::Expired {
                not_after: unix_rfc3339(self.not_after),
            });
        }
        if now < self.not_before {
            return Err(SignatureError::NotYetValid {
                not_before: unix_rfc3339(self.not_before),
            });
        }
        Ok(())
    }
}

/// Why a route document's signature is not accepted. [`SignatureError::reason`]
/// is a short label for metrics.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignatureError {
    /// The signer certificate does not parse.
    #[error(
        "the signer certificate is malformed ({0}); sign with an operator certificate issued by shoal-pki"
    )]
    MalformedCert(String),
    /// The signer certificate does not chain to any CA of the mesh.
    #[error(
        "the signer certificate was not issued by this mesh's CA (its issuer: {issuer}); sign with an operator certificate of this mesh (`shoal-pki issue --ca MESH-CA-DIR --operator NAME`)"
    )]
    OtherCa {
        /// The issuer named in the certificate.
        issuer: String,
    },
    /// The signer certificate has expired.
    #[error(
        "the signer certificate expired on {not_after}; issue a new operator certificate and apply the route again"
    )]
    Expired {
        /// When it expired (RFC 3339).
        not_after: String,
    },
    /// The signer certificate is not valid yet.
    #[error(
        "the signer certificate is valid only from {not_before}; check this node's clock (NTP)"
    )]
    NotYetValid {
        /// When it becomes valid (RFC 3339).
        not_before: String,
    },
    /// The signer certificate names another trust domain.
    #[error("the signer certificate is of trust domain {cert:?}, this mesh is {mesh:?}")]
    WrongTrustDomain {
        /// The certificate's trust domain.
        cert: String,
        /// The mesh's trust domain.
        mesh: String,
    },
    /// The signer certificate is not an operator certificate.
    #[error(
        "the signer certificate is {what}, not an operator certificate; only certificates with one spiffe://TD/operator/NAME id may sign route documents (`shoal-pki issue --operator NAME`)"
    )]
    NotAnOperator {
        /// What it is instead.
        what: String,
    },
    /// The signer certificate fails another check (key usage, ...).
    #[error("the signer certificate cannot sign route documents: {0}")]
    InvalidCert(String),
    /// A revocation list, signed by a mesh CA, for another trust domain.
    #[error("the revocation list is for trust domain {list:?}, this mesh is {mesh:?}")]
    ListOfOtherTrustDomain {
        /// The list's trust domain.
        list: String,
        /// The mesh's trust domain.
        mesh: String,
    },
    /// A revocation list signed by something other than a mesh CA.
    #[error(
        "the revocation list is signed by {subject}, not by a CA of this mesh; only the mesh CA key revokes (`shoal-pki revoke --ca MESH-CA-DIR`)"
    )]
    NotTheCa {
        /// The signer certificate's subject.
        subject: String,
    },
    /// The signature does not verify over the body with the certificate's key.
    #[error(
        "the signature does not match the document body: the body was changed after it was signed, or it was signed with another key than the certificate's; sign it again (`shoal route apply`)"
    )]
    BadSignature,
}

impl SignatureError {
    /// Every [`SignatureError::reason`] label.
    pub const REASONS: [&'static str; 9] = [
        "malformed_cert",
        "other_ca",
        "expired",
        "not_yet_valid",
        "wrong_trust_domain",
        "not_an_operator",
        "invalid_cert",
        "not_the_ca",
        "bad_signature",
    ];

    /// A short snake_case label: the `reason` of the node's rejection metric.
    pub fn reason(&self) -> &'static str {
        match self {
            SignatureError::MalformedCert(_) => "malformed_cert",
            SignatureError::OtherCa { .. } => "other_ca",
            SignatureError::Expired { .. } => "expired",
            SignatureError::NotYetValid { .. } => "not_yet_valid",
            SignatureError::WrongTrustDomain { .. }
            | SignatureError::ListOfOtherTrustDomain { .. } => "wrong_trust_domain",
            SignatureError::NotAnOperator { .. } => "not_an_operator",
            SignatureError::InvalidCert(_) => "invalid_cert",
            SignatureError::NotTheCa { .. } => "not_the_ca",
            SignatureError::BadSignature => "bad_signature",
        }
    }
}

/// Checks operator signatures against the mesh CAs of one trust domain.
#[derive(Debug, Clone)]
pub struct OperatorVerifier {
    trust_domain: String,
    anchors: Vec<TrustAnchor<'static>>,
}

impl OperatorVerifier {
    /// A verifier trusting `anchors` (the mesh CAs) for `trust_domain`.
    pub fn new(trust_domain: impl Into<String>, anchors: Vec<TrustAnchor<'static>>) -> Self {
        OperatorVerifier {
            trust_domain: trust_domain.into(),
            anchors,
        }
    }

    /// A verifier trusting every CA of `bundle`.
    pub fn from_bundle(bundle: &CaBundle) -> Result<Self, BundleError> {
        let anchors = bundle
            .cas
            .iter()
            .enumerate()
            .map(|(index, ca)| {
                webpki::anchor_from_trusted_cert(ca)
                    .map(|a| a.to_owned())
                    .map_err(|e| BundleError::Malformed {
                        index,
                        reason: format!("{e:?}"),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::new(bundle.trust_domain.clone(), anchors))
    }

    /// The trust domain whose operators this verifier accepts.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Checks `document`'s signer certificate and signature at time `now` (see
    /// the module documentation); returns who signed it. Does not look at the
    /// body's contents (the route merge reads and checks them).
    pub fn verify(
        &self,
        document: &RouteDocument,
        now: UnixTime,
    ) -> Result<Signer, SignatureError> {
        let der = CertificateDer::from(document.signer_cert_der.as_slice());
        let (_, x509) = X509Certificate::from_der(&der)
            .map_err(|e| SignatureError::MalformedCert(e.to_string()))?;
        let ee = EndEntityCert::try_from(&der)
            .map_err(|e| SignatureError::MalformedCert(format!("{e:?}")))?;
        self.chains_to_the_mesh(&ee, &x509, now)?;
        let operator = self.operator_of(&x509)?;
        signed_body(&ee, document)?;
        Ok(Signer {
            operator,
            not_before: x509.validity().not_before.timestamp(),
            not_after: x509.validity().not_after.timestamp(),
        })
    }

    /// The signer certificate chains to a mesh CA and is valid at `now`.
    fn chains_to_the_mesh(
        &self,
        ee: &EndEntityCert<'_>,
        x509: &X509Certificate<'_>,
        now: UnixTime,
    ) -> Result<(), SignatureError> {
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.anchors,
            &[],
            now,
            KeyUsage::client_auth(),
            None,
            None,
        )
        .map(|_| ())
        .map_err(|e| match e {
            webpki::Error::CertExpired { .. } => SignatureError::Expired {
                not_after: unix_rfc3339(x509.validity().not_after.timestamp()),
            },
            webpki::Error::CertNotValidYet { .. } => SignatureError::NotYetValid {
                not_before: unix_rfc3339(x509.validity().not_before.timestamp()),
            },
            webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
                SignatureError::OtherCa {
                    issuer: x509.issuer().to_string(),
                }
            }
            webpki::Error::BadDer | webpki::Error::BadDerTime => {
                SignatureError::MalformedCert(format!("{e:?}"))
            }
            other => SignatureError::InvalidCert(format!("{other:?}")),
        })
    }

    /// The operator the certificate names: exactly one operator id, of this
    /// trust domain, not a CA.
    fn operator_of(&self, x509: &X509Certificate<'_>) -> Result<String, SignatureError> {
        let id = CertIdentity::from_x509(x509).map_err(|e| match e {
            IdentityError::Ambiguous(what) => SignatureError::NotAnOperator { what },
            other => SignatureError::MalformedCert(other.to_string()),
        })?;
        match &id.trust_domain {
            Some(td) if *td == self.trust_domain => {}
            Some(td) => {
                return Err(SignatureError::WrongTrustDomain {
                    cert: td.clone(),
                    mesh: self.trust_domain.clone(),
                });
            }
            None => {
                return Err(SignatureError::NotAnOperator {
                    what: describe_identity(&id),
                });
            }
        }
        match (&id.operator, &id.node, id.is_ca) {
            (Some(operator), None, false) => Ok(operator.clone()),
            _ => Err(SignatureError::NotAnOperator {
                what: describe_identity(&id),
            }),
        }
    }
}

/// The certificate's key signed the document's body (ECDSA P-256, SHA-256).
fn signed_body(ee: &EndEntityCert<'_>, document: &RouteDocument) -> Result<(), SignatureError> {
    ee.verify_signature(
        webpki::ring::ECDSA_P256_SHA256,
        &document.body,
        &document.signature,
    )
    .map_err(|e| match e {
        webpki::Error::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
            SignatureError::InvalidCert(
                "its key is not ECDSA P-256 (operator certificates from shoal-pki are)".to_string(),
            )
        }
        _ => SignatureError::BadSignature,
    })
}

/// What a certificate is, for "it is X, not an operator certificate".
fn describe_identity(id: &CertIdentity) -> String {
    if id.is_ca {
        return "a CA certificate".to_string();
    }
    match (&id.node, id.ids.first()) {
        (Some(_), Some(first)) => format!("a node certificate ({first})"),
        (_, Some(first)) => format!("a certificate for {first}"),
        _ => "a certificate without a SPIFFE id".to_string(),
    }
}

fn unix_rfc3339(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .map(rfc3339)
        .unwrap_or_else(|_| secs.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CertificateAuthority, IssuedCert, Validity};

    fn ca(td: &str) -> CertificateAuthority {
        CertificateAuthority::create(td, Validity::days_from_now(30).unwrap()).unwrap()
    }

    fn operator(ca: &CertificateAuthority, name: &str) -> (IssuedCert, OperatorKey) {
        let cert = ca
            .issue_operator(name, Validity::days_from_now(10).unwrap())
            .unwrap();
        let key = OperatorKey::from_pem(cert.cert_pem.as_bytes(), cert.key_pem.as_bytes()).unwrap();
        (cert, key)
    }

    fn verifier(ca: &CertificateAuthority) -> OperatorVerifier {
        OperatorVerifier::from_bundle(&CaBundle::from_pem(ca.cert_pem().as_bytes()).unwrap())
            .unwrap()
    }

    fn spec() -> RouteSpec {
        RouteSpec::parse_body(
            br#"{"name":"shop","issued_at_ms":1000,"rules":[{"backends":[{"service":"web"}]}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn a_document_signed_by_an_operator_verifies() {
        let ca = ca("mesh.test");
        let (_, key) = operator(&ca, "alice");
        assert_eq!(key.operator(), "alice");
        assert_eq!(key.trust_domain(), "mesh.test");
        let signed = key.sign_route(&spec()).unwrap();
        assert_eq!(
            signed.body,
            spec().to_body(),
            "the canonical body is signed"
        );
        let doc = signed.document();
        // The document is the signed parts and the name, nothing else.
        assert_eq!(
            doc,
            RouteDocument {
                name: "shop".into(),
                body: signed.body.clone(),
                signature: signed.signature.clone(),
                signer_cert_der: signed.signer_cert_der.clone(),
            }
        );
        let signer = verifier(&ca).verify(&doc, UnixTime::now()).unwrap();
        assert_eq!(signer.operator, "alice");
        assert!(signer.valid_at(UnixTime::now()).is_ok());
        // A signature changed in transit is refused.
        let mut relayed = doc.clone();
        let last = relayed.signature.len() - 1;
        relayed.signature[last] ^= 1;
        assert!(verifier(&ca).verify(&relayed, UnixTime::now()).is_err());
    }

    #[test]
    fn a_tampered_body_or_a_foreign_signature_is_refused() {
        let ca = ca("mesh.test");
        let (_, key) = operator(&ca, "alice");
        let mut doc = key.sign_route(&spec()).unwrap().document();
        let at = doc.body.len() - 5;
        doc.body[at] ^= 1;
        let err = verifier(&ca).verify(&doc, UnixTime::now()).unwrap_err();
        assert_eq!(err, SignatureError::BadSignature);
        assert_eq!(err.reason(), "bad_signature");

        // Bob's signature shipped with Alice's certificate.
        let (_, bob) = operator(&ca, "bob");
        let mut doc = key.sign_route(&spec()).unwrap().document();
        doc.signature = bob.sign(&doc.body).unwrap();
        assert_eq!(
            verifier(&ca).verify(&doc, UnixTime::now()),
            Err(SignatureError::BadSignature)
        );
        doc.signature.clear();
        assert_eq!(
            verifier(&ca).verify(&doc, UnixTime::now()),
            Err(SignatureError::BadSignature)
        );
    }

    #[test]
    fn a_node_certificate_may_not_sign() {
        let ca = ca("mesh.test");
        let node = ca
            .issue_node("n1", &["web".into()], Validity::days_from_now(10).unwrap())
            .unwrap();
        let err =
            OperatorKey::from_pem(node.cert_pem.as_bytes(), node.key_pem.as_bytes()).unwrap_err();
        assert!(matches!(err, KeyError::NotAnOperator { .. }), "{err}");
        assert!(
            err.to_string().contains("spiffe://mesh.test/node/n1"),
            "{err}"
        );

        // Signed with the node's key anyway, by hand.
        let node_key = KeyPair::from_pem(&node.key_pem).unwrap();
        let body = spec().to_body();
        let doc = RouteDocument {
            name: "shop".into(),
            signature: node_key.sign(&body).unwrap(),
            body,
            signer_cert_der: node.cert_der.to_vec(),
        };
        let err = verifier(&ca).verify(&doc, UnixTime::now()).unwrap_err();
        assert_eq!(err.reason(), "not_an_operator", "{err}");
        assert!(err.to_string().contains("node certificate"), "{err}");

        // The CA certificate itself is no operator either.
        let mut doc = doc;
        doc.signer_cert_der = ca.cert_der().to_vec();
        let err = verifier(&ca).verify(&doc, UnixTime::now()).unwrap_err();
        assert!(
            matches!(err.reason(), "not_an_operator" | "invalid_cert"),
            "{err}"
        );
    }

    #[test]
    fn an_operator_of_another_ca_is_refused() {
        let ours = ca("mesh.test");
        let theirs = ca("mesh.test");
        let (_, key) = operator(&theirs, "mallory");
        let doc = key.sign_route(&spec()).unwrap().document();
        let err = verifier(&ours).verify(&doc, UnixTime::now()).unwrap_err();
        assert_eq!(err.reason(), "other_ca", "{err}");
        assert!(err.to_string().contains("not issued by this mesh's CA"));
        // A bundle with both CAs (a rollover) accepts it.
        let both = format!("{}{}", ours.cert_pem(), theirs.cert_pem());
        let bundle = CaBundle::from_pem(both.as_bytes()).unwrap();
        let v = OperatorVerifier::from_bundle(&bundle).unwrap();
        assert_eq!(v.verify(&doc, UnixTime::now()).unwrap().operator, "mallory");
        // Another trust domain's CA does not vouch for this mesh's operators.
        let other_td = ca("other.test");
        let (_, key) = operator(&other_td, "eve");
        let doc = key.sign_route(&spec()).unwrap().document();
        let v = OperatorVerifier::new(
            "mesh.test",
            vec![
                webpki::anchor_from_trusted_cert(other_td.cert_der())
                    .unwrap()
                    .to_owned(),
            ],
        );
        let err = v.verify(&doc, UnixTime::now()).unwrap_err();
        assert_eq!(err.reason(), "wrong_trust_domain", "{err}");
    }

    #[test]
    fn an_expired_or_future_signer_is_refused() {
        let ca = ca("mesh.test");
        let now = OffsetDateTime::now_utc();
        let expired = ca
            .issue_operator(
                "old",
                Validity::between(
                    now - time::Duration::days(10),
                    now - time::Duration::days(1),
                )
                .unwrap(),
            )
            .unwrap();
        let key =
            OperatorKey::from_pem(expired.cert_pem.as_bytes(), expired.key_pem.as_bytes()).unwrap();
        let doc = key.sign_route(&spec()).unwrap().document();
        let err = verifier(&ca).verify(&doc, UnixTime::now()).unwrap_err();
        assert_eq!(err.reason(), "expired", "{err}");

        let (_, key) = operator(&ca, "alice");
        let doc = key.sign_route(&spec()).unwrap().document();
        let signer = verifier(&ca).verify(&doc, UnixTime::now()).unwrap();
        let later = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(signer.not_after).unwrap() + 1,
        ));
        assert_eq!(signer.valid_at(later).unwrap_err().reason(), "expired");
        let err = verifier(&ca).verify(&doc, later).unwrap_err();
        assert_eq!(err.reason(), "expired", "{err}");
        let earlier = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(signer.not_before).unwrap() - 1,
        ));
        assert_eq!(
            signer.valid_at(earlier).unwrap_err().reason(),
            "not_yet_valid"
        );
    }

    #[test]
    fn a_key_must_match_its_certificate() {
        let ca = ca("mesh.test");
        let (alice, _) = operator(&ca, "alice");
        let (bob, _) = operator(&ca, "bob");
        let err =
            OperatorKey::from_pem(alice.cert_pem.as_bytes(), bob.key_pem.as_bytes()).unwrap_err();
        assert!(matches!(err, KeyError::KeyMismatch), "{err}");
        let err = OperatorKey::from_pem(alice.cert_pem.as_bytes(), b"not a key").unwrap_err();
        assert!(matches!(err, KeyError::Key(_)), "{err}");
        let err = OperatorKey::from_pem(b"nothing", alice.key_pem.as_bytes()).unwrap_err();
        assert!(matches!(err, KeyError::CertPem(_)), "{err}");
    }

    #[test]
    fn garbage_certificates_are_malformed_not_panics() {
        let ca = ca("mesh.test");
        let (_, key) = operator(&ca, "alice");
        let mut doc = key.sign_route(&spec()).unwrap().document();
        for cert in [vec![], vec![0x30], b"not a certificate".to_vec()] {
            doc.signer_cert_der = cert;
            let err = verifier(&ca).verify(&doc, UnixTime::now()).unwrap_err();
            assert_eq!(err.reason(), "malformed_cert", "{err}");
        }
    }
}
