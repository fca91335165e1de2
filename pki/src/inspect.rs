//! Reading a certificate file back: who it names, what it may do, when it
//! expires, and its fingerprint — what `shoal-pki inspect` prints.

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::Serialize;
use sha2::{Digest, Sha256};
use thiserror::Error;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::{CertIdentity, CertKind, IdentityError};

/// Why a certificate file could not be read.
#[derive(Debug, Error)]
pub enum InspectError {
    /// Neither a PEM `CERTIFICATE` block nor DER.
    #[error("malformed: no PEM CERTIFICATE block and not a DER certificate")]
    NotACertificate,
    /// The certificate does not parse.
    #[error("malformed: {0}")]
    Malformed(String),
    /// It parses, but its SPIFFE ids are malformed or contradictory.
    #[error("malformed identity: {0}")]
    Identity(#[from] IdentityError),
}

/// What `shoal-pki inspect` reports about one certificate.
#[derive(Debug, Clone, Serialize)]
pub struct CertInfo {
    /// Subject distinguished name.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// ca, node, operator or other.
    pub kind: CertKind,
    /// Trust domain of its SPIFFE ids.
    pub trust_domain: Option<String>,
    /// Every SPIFFE id it carries.
    pub spiffe_ids: Vec<String>,
    /// Node name, for node certificates.
    pub node: Option<String>,
    /// Operator name, for operator certificates.
    pub operator: Option<String>,
    /// Services a node certificate may host.
    pub services: Vec<String>,
    /// Start of validity (RFC 3339).
    pub not_before: String,
    /// End of validity (RFC 3339).
    pub not_after: String,
    /// Whole days until `not_after` (negative once expired).
    pub days_left: i64,
    /// Whether `not_after` has passed.
    pub expired: bool,
    /// Serial number, hex.
    pub serial: String,
    /// SHA-256 of the DER certificate, colon-separated uppercase hex.
    pub sha256_fingerprint: String,
}

/// Reads the first certificate of a PEM file, or a DER file.
pub fn parse_cert_file(bytes: &[u8]) -> Result<CertificateDer<'static>, InspectError> {
    if let Ok(der) = CertificateDer::from_pem_slice(bytes) {
        return Ok(der);
    }
    if bytes.first() == Some(&0x30) {
        return Ok(CertificateDer::from(bytes.to_vec()));
    }
    Err(InspectError::NotACertificate)
}

/// Describes `der` as of `now`.
pub fn inspect_der(der: &[u8], now: OffsetDateTime) -> Result<CertInfo, InspectError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| InspectError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(InspectError::Malformed(format!(
            "{} bytes after the certificate",
            rest.len()
        )));
    }
    let id = CertIdentity::from_x509(&cert)?;
    let not_before = cert.validity().not_before.to_datetime();
    let not_after = cert.validity().not_after.to_datetime();
    let fingerprint = sha256_fingerprint(der);
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        kind: id.kind(),
        trust_domain: id.trust_domain.clone(),
        spiffe_ids: id.ids.iter().map(|i| i.to_uri()).collect(),
        node: id.node.clone(),
        operator: id.operator.clone(),
        services: id.services.clone(),
        not_before: rfc3339(not_before),
        not_after: rfc3339(not_after),
        days_left: (not_after - now).whole_days(),
        expired: not_after < now,
        serial: hex::encode(cert.raw_serial()),
        sha256_fingerprint: fingerprint,
    })
}

/// Formats a time as RFC 3339 (UTC).
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

impl CertInfo {
    /// The human-readable form printed by `shoal-pki inspect`.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: &str| out.push_str(&format!("{k:<14}{v}\n"));
        line("subject:", &self.subject);
        line("issuer:", &self.issuer);
        line("kind:", &self.kind.to_string());
        line(
            "trust domain:",
            self.trust_domain.as_deref().unwrap_or("(none)"),
        );
        if self.spiffe_ids.is_empty() {
            line("spiffe ids:", "(none)");
        }
        for (i, id) in self.spiffe_ids.iter().enumerate() {
            line(if i == 0 { "spiffe ids:" } else { "" }, id);
        }
        if let Some(n) = &self.node {
            line("node:", n);
        }
        if let Some(o) = &self.operator {
            line("operator:", o);
        }
        if self.kind == CertKind::Node {
            let s = if self.services.is_empty() {
                "(none)".to_string()
            } else {
                self.services.join(", ")
            };
            line("services:", &s);
        }
        line("not before:", &self.not_before);
        let left = if self.expired {
            format!("{} (EXPIRED)", self.not_after)
        } else {
            format!("{} ({} days left)", self.not_after, self.days_left)
        };
        line("not after:", &left);
        line("serial:", &self.serial);
        line("sha256:", &self.sha256_fingerprint);
        out
    }
}

/// The SHA-256 fingerprint of a DER certificate as `shoal-pki inspect` prints
/// it (`AB:CD:...`): what tells apart two CAs of the same name.
pub fn sha256_fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}
