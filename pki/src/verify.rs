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
    #[error("not signed by this CA (issuer: {issuer}); it belongs to another CA")]
    OtherCa {
        /// The issuer named in the certificate.
        issuer: String,
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
    let malformed =
        |what: &str, e: &dyn std::fmt::Display| VerifyError::Malformed(format!("{what}: {e}"));
    let (_, ca_x509) =
        x509_parser::parse_x509_certificate(ca).map_err(|e| malformed("CA certificate", &e))?;
    let (_, x509) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| malformed("certificate", &e))?;
    let ca_id = CertIdentity::from_x509(&ca_x509).map_err(|e| malformed("CA certificate", &e))?;
    let id = CertIdentity::from_x509(&x509).map_err(|e| malformed("certificate", &e))?;
    let nb = x509.validity().not_before.to_datetime();
    let na = x509.validity().not_after.to_datetime();
    let ca_nb = ca_x509.validity().not_before.to_datetime();
    let ca_na = ca_x509.validity().not_after.to_datetime();
    if now < ca_nb {
        return Err(VerifyError::CaNotValid(format!(
            "valid from {}",
            rfc3339(ca_nb)
        )));
    }
    if now > ca_na {
        return Err(VerifyError::CaNotValid(format!(
            "expired on {}",
            rfc3339(ca_na)
        )));
    }

    if ca.as_ref() == cert.as_ref() {
        // The CA certificate itself: self-signed, checked above for validity.
        return Ok(Verified {
            kind: CertKind::Ca,
            identity: id,
            not_after: rfc3339(na),
        });
    }

    let anchors =
        [webpki::anchor_from_trusted_cert(ca).map_err(|e| malformed("CA certificate", &e))?];
    let ee = EndEntityCert::try_from(cert).map_err(|e| malformed("certificate", &e))?;
    let usage = if id.kind() == CertKind::Node {
        KeyUsage::server_auth()
    } else {
        KeyUsage::client_auth()
    };
    let result = ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &[],
        unix(now),
        usage,
        None,
        None,
    );
    if let Err(e) = result {
        return Err(match e {
            webpki::Error::CertExpired { .. } => VerifyError::Expired(rfc3339(na)),
            webpki::Error::CertNotValidYet { .. } => VerifyError::NotYetValid(rfc3339(nb)),
            webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
                VerifyError::OtherCa {
                    issuer: x509.issuer().to_string(),
                }
            }
            other => VerifyError::Invalid(format!("{other:?}")),
        });
    }
    if id.kind() == CertKind::Node {
        // Node certificates are also TLS clients (they dial other nodes).
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &[],
            unix(now),
            KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| VerifyError::Invalid(format!("not usable as a TLS client: {e:?}")))?;
    }
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
