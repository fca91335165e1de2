//! Checking that a certificate chains to a given mesh CA and is valid at a given
//! time — what `shoal-pki verify` answers, with one reason when it is not.
//!
//! The chain and signature checks are rustls-webpki's, the same code the node's
//! TLS handshake runs; this module only adds the Shoal identity rules (one trust
//! domain, matching the CA's).

use rustls_pki_types::{CertificateDer, UnixTime};
use thiserror::Error;
use time::OffsetDateTime;
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::certificate::X509Certificate;

use crate::identity::{CertIdentity, CertKind};
use crate::inspect::rfc3339;

/// Why a certificate is not valid for the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyError {
    /// The certificate (or the CA certificate) does not parse.
    #[error("malformed certificate: {0}")]
    Malformed(String),
    /// `not_after` has passed.
    #[error("expired on {0}")]
    Expired(String),
    /// `not_before` is still in the future.
    #[error("not yet valid: valid from {0}")]
    NotYetValid(String),
    /// It was not signed by this CA.
    #[error(
        "not signed by this CA ({ca}); its issuer is {issuer}: it belongs to another CA{}",
        if same_name_hint(ca, issuer) { " of the same name (each `shoal-pki ca init` makes a new CA: compare the sha256 with `shoal-pki inspect` of each ca.crt)" } else { "" }
    )]
    OtherCa {
        /// The issuer named in the certificate.
        issuer: String,
        /// This CA: its subject and SHA-256 fingerprint.
        ca: String,
    },
    /// The CA certificate itself is expired or not yet valid.
    #[error("the CA certificate is not valid now: {0}")]
    CaNotValid(String),
    /// Signed by the CA but for another trust domain.
    #[error("carries trust domain {cert:?} but the CA is for {ca:?}")]
    WrongTrustDomain {
        /// The certificate's trust domain.
        cert: String,
        /// The CA's trust domain.
        ca: String,
    },
    /// Any other chain-validation failure.
    #[error("not valid: {0}")]
    Invalid(String),
}

/// The summary of a certificate that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// What the certificate is.
    pub kind: CertKind,
    /// Its identity.
    pub identity: CertIdentity,
    /// When it expires (RFC 3339).
    pub not_after: String,
}

/// A CA as error messages name it: subject and SHA-256 fingerprint (the
/// subject alone is the same for every CA of a trust domain).
pub fn describe_ca(x509: &X509Certificate<'_>, der: &[u8]) -> String {
    format!(
        "{}, sha256 {}",
        x509.subject(),
        crate::inspect::sha256_fingerprint(der)
    )
}

/// Whether the issuer a certificate names is this CA's own name (so only the
/// fingerprint tells them apart).
fn same_name_hint(ca: &str, issuer: &str) -> bool {
    ca.split(", sha256 ").next() == Some(issuer)
}

fn unix(t: OffsetDateTime) -> UnixTime {
    let secs = u64::try_from(t.unix_timestamp()).unwrap_or(0);
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs))
}

/// Verifies `cert` against the CA certificate `ca` at time `now`.
pub fn verify_cert(
    ca: &CertificateDer<'_>,
    cert: &CertificateDer<'_>,
    now: OffsetDateTime,
) -> Result<Verified, VerifyError> {
    let (_, ca_x509) =
        x509_parser::parse_x509_certificate(ca).map_err(|e| malformed("CA certificate", &e))?;
    let (_, x509) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| malformed("certificate", &e))?;
    let ca_id = CertIdentity::from_x509(&ca_x509).map_err(|e| malformed("CA certificate", &e))?;
    let id = CertIdentity::from_x509(&x509).map_err(|e| malformed("certificate", &e))?;
    let na = x509.validity().not_after.to_datetime();
    check_ca_validity(&ca_x509, now)?;

    if ca.as_ref() == cert.as_ref() {
        // The CA certificate itself: self-signed, checked above for validity.
        return Ok(Verified {
            kind: CertKind::Ca,
            identity: id,
            not_after: rfc3339(na),
        });
    }

    verify_chain((ca, &ca_x509), (cert, &x509), id.kind(), now)?;
    if let (Some(ca_td), Some(td)) = (&ca_id.trust_domain, &id.trust_domain)
        && ca_td != td
    {
        return Err(VerifyError::WrongTrustDomain {
            cert: td.clone(),
            ca: ca_td.clone(),
        });
    }
    Ok(Verified {
        kind: id.kind(),
        identity: id,
        not_after: rfc3339(na),
    })
}

/// A certificate that could not be read: `what` and why.
fn malformed(what: &str, e: &dyn std::fmt::Display) -> VerifyError {
    VerifyError::Malformed(format!("{what}: {e}"))
}

/// The CA certificate is valid at `now`.
fn check_ca_validity(ca: &X509Certificate<'_>, now: OffsetDateTime) -> Result<(), VerifyError> {
    let nb = ca.validity().not_before.to_datetime();
    let na = ca.validity().not_after.to_datetime();
    if now < nb {
        return Err(VerifyError::CaNotValid(format!(
            "valid from {}",
            rfc3339(nb)
        )));
    }
    if now > na {
        return Err(VerifyError::CaNotValid(format!(
            "expired on {}",
            rfc3339(na)
        )));
    }
    Ok(())
}

/// `cert` chains to `ca` at `now` for the TLS role of its kind: a node's
/// certificate as server and client, any other as client.
fn verify_chain(
    (ca, ca_x509): (&CertificateDer<'_>, &X509Certificate<'_>),
    (cert, x509): (&CertificateDer<'_>, &X509Certificate<'_>),
    kind: CertKind,
    now: OffsetDateTime,
) -> Result<(), VerifyError> {
    let anchors =
        [webpki::anchor_from_trusted_cert(ca).map_err(|e| malformed("CA certificate", &e))?];
    let ee = EndEntityCert::try_from(cert).map_err(|e| malformed("certificate", &e))?;
    let verify = |usage| {
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &[],
            unix(now),
            usage,
            None,
            None,
        )
    };
    let usage = if kind == CertKind::Node {
        KeyUsage::server_auth()
    } else {
        KeyUsage::client_auth()
    };
    if let Err(e) = verify(usage) {
        let nb = x509.validity().not_before.to_datetime();
        let na = x509.validity().not_after.to_datetime();
        return Err(match e {
            webpki::Error::CertExpired { .. } => VerifyError::Expired(rfc3339(na)),
            webpki::Error::CertNotValidYet { .. } => VerifyError::NotYetValid(rfc3339(nb)),
            webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
                VerifyError::OtherCa {
                    issuer: x509.issuer().to_string(),
                    ca: describe_ca(ca_x509, ca),
                }
            }
            other => VerifyError::Invalid(format!("{other:?}")),
        });
    }
    if kind == CertKind::Node {
        // Node certificates are also TLS clients (they dial other nodes).
        verify(KeyUsage::client_auth())
            .map_err(|e| VerifyError::Invalid(format!("not usable as a TLS client: {e:?}")))?;
    }
    Ok(())
}

/// A set of trusted mesh CAs of one trust domain: usually one; two while a CA is
/// being replaced (old and new in one PEM file), so that certificates of either
/// verify during the rollover.
#[derive(Debug, Clone)]
pub struct CaBundle {
    /// The CA certificates, in file order.
    pub cas: Vec<CertificateDer<'static>>,
    /// Their common trust domain.
    pub trust_domain: String,
}

/// Why a CA file is not a usable bundle.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BundleError {
    /// No PEM certificate in it.
    #[error("no PEM certificate in it")]
    Empty,
    /// A certificate that does not parse.
    #[error("certificate {index} is malformed: {reason}")]
    Malformed {
        /// Position in the file (0-based).
        index: usize,
        /// The parser's complaint.
        reason: String,
    },
    /// A certificate that is not a Shoal CA.
    #[error("certificate {index} is not a Shoal mesh CA certificate ({what})")]
    NotACa {
        /// Position in the file (0-based).
        index: usize,
        /// What it is instead.
        what: String,
    },
    /// CAs of different trust domains.
    #[error("the CAs are of different trust domains ({0:?} and {1:?}); a mesh has one")]
    MixedTrustDomains(String, String),
}

impl CaBundle {
    /// Reads every certificate of a PEM file; each must be a Shoal CA, all of one
    /// trust domain.
    pub fn from_pem(pem: &[u8]) -> Result<CaBundle, BundleError> {
        use rustls_pki_types::pem::PemObject;
        let mut cas = Vec::new();
        let mut trust_domain: Option<String> = None;
        for (index, der) in CertificateDer::pem_slice_iter(pem).enumerate() {
            let der = der.map_err(|e| BundleError::Malformed {
                index,
                reason: e.to_string(),
            })?;
            let id = CertIdentity::from_der(&der).map_err(|e| BundleError::Malformed {
                index,
                reason: e.to_string(),
            })?;
            let what = match id.kind() {
                CertKind::Ca => "it carries no spiffe://TRUST-DOMAIN id".to_string(),
                CertKind::Other => "no CA flag and no spiffe:// id".to_string(),
                kind => format!("it is a {kind} certificate"),
            };
            let td = match (id.is_ca, id.trust_domain) {
                (true, Some(td)) => td,
                _ => return Err(BundleError::NotACa { index, what }),
            };
            match &trust_domain {
                Some(first) if *first != td => {
                    return Err(BundleError::MixedTrustDomains(first.clone(), td));
                }
                Some(_) => {}
                None => trust_domain = Some(td),
            }
            cas.push(der.into_owned());
        }
        let trust_domain = trust_domain.ok_or(BundleError::Empty)?;
        Ok(CaBundle { cas, trust_domain })
    }

    /// Verifies `cert` against each CA; succeeds if any accepts it. Otherwise the
    /// most telling reason: one about the certificate itself (expired, not yet
    /// valid, ...) from a CA that signed it, before "another CA".
    pub fn verify(
        &self,
        cert: &CertificateDer<'_>,
        now: OffsetDateTime,
    ) -> Result<Verified, VerifyError> {
        let mut best: Option<VerifyError> = None;
        for ca in &self.cas {
            match verify_cert(ca, cert, now) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let other = matches!(e, VerifyError::OtherCa { .. });
                    if best.is_none() || !other {
                        best = Some(e);
                    }
                }
            }
        }
        Err(best.unwrap_or_else(|| VerifyError::Malformed("empty CA bundle".into())))
    }
}

#[cfg(test)]
mod tests {
    use time::Duration;

    use super::*;
    use crate::{CertificateAuthority, Validity};

    #[test]
    fn a_certificate_verifies_only_while_its_ca_is_valid() {
        let ca = CertificateAuthority::create("mesh.test", Validity::days_from_now(30).unwrap())
            .unwrap();
        let node = ca
            .issue_node("n1", &[], Validity::days_from_now(10).unwrap())
            .unwrap();
        let now = OffsetDateTime::now_utc();
        let verified = verify_cert(ca.cert_der(), &node.cert_der, now).unwrap();
        assert_eq!(verified.kind, CertKind::Node);
        for (at, said) in [
            (
                now - Duration::days(2),
                "the CA certificate is not valid now: valid from",
            ),
            (
                now + Duration::days(40),
                "the CA certificate is not valid now: expired on",
            ),
        ] {
            let err = verify_cert(ca.cert_der(), &node.cert_der, at).unwrap_err();
            assert!(matches!(err, VerifyError::CaNotValid(_)), "{err}");
            assert!(err.to_string().starts_with(said), "{err}");
        }
        // The CA certificate itself is the CA kind.
        let itself = verify_cert(ca.cert_der(), ca.cert_der(), now).unwrap();
        assert_eq!(itself.kind, CertKind::Ca);
    }
}
