//! The mesh certificate authority: creating one (ECDSA P-256, `spiffe://TD`,
//! path length 0), loading it from `ca.crt` / `ca.key`, and saving it.
//!
//! Issuing leaf certificates from a loaded CA lives in [`crate::issue`].

use std::fs;
use std::path::{Path, PathBuf};

use mesh_proto::names::{NameError, validate_name};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use thiserror::Error;
use time::{Duration, OffsetDateTime};

use crate::files::{FileSetError, OutputFile, write_file_set};
use crate::identity::{CertIdentity, IdKind, SpiffeId};

/// File name of the CA certificate (also copied next to every issued certificate).
pub const CA_CERT_FILE: &str = "ca.crt";
/// File name of the CA private key.
pub const CA_KEY_FILE: &str = "ca.key";

/// Default lifetime of a new CA.
pub const DEFAULT_CA_DAYS: u32 = 3650;
/// Longest lifetime accepted for any certificate (100 years).
pub const MAX_DAYS: u32 = 36_500;

/// How far back `not_before` is set, so that hosts whose clocks run a little
/// behind accept a certificate issued just now.
pub const BACKDATE: Duration = Duration::minutes(5);

/// The validity window of a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// First instant the certificate is valid.
    pub not_before: OffsetDateTime,
    /// Last instant the certificate is valid.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// Valid from a few minutes ago ([`BACKDATE`]) for `days` days from now.
    pub fn days_from_now(days: u32) -> Result<Self, CaError> {
        if days == 0 || days > MAX_DAYS {
            return Err(CaError::BadDays(days));
        }
        let now = OffsetDateTime::now_utc();
        Ok(Validity {
            not_before: now - BACKDATE,
            not_after: now + Duration::days(i64::from(days)),
        })
    }

    /// An explicit window, for tests and tools that need expired or future
    /// certificates.
    pub fn between(not_before: OffsetDateTime, not_after: OffsetDateTime) -> Result<Self, CaError> {
        if not_after <= not_before {
            return Err(CaError::EmptyValidity);
        }
        Ok(Validity {
            not_before,
            not_after,
        })
    }
}

/// Why a CA could not be created, loaded or saved.
#[derive(Debug, Error)]
pub enum CaError {
    /// The trust domain breaks the naming rule.
    #[error(transparent)]
    BadName(#[from] NameError),
    /// The requested lifetime is out of range.
    #[error("--days must be between 1 and {MAX_DAYS}, got {0}")]
    BadDays(u32),
    /// `not_after` is not after `not_before`.
    #[error("validity window is empty: not_after must be later than not_before")]
    EmptyValidity,
    /// A CA file could not be read.
    #[error("cannot read {path}: {cause}; is this the directory written by `shoal-pki ca init`?")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// `ca.crt` is not a PEM certificate.
    #[error("{0}: not a PEM certificate")]
    BadCertPem(String),
    /// `ca.key` is not a PEM private key rcgen can sign with.
    #[error("{0}: not a usable PEM private key ({1})")]
    BadKeyPem(String, String),
    /// The certificate is not a Shoal CA (no CA flag or no `spiffe://TD` id).
    #[error("{0}: not a Shoal mesh CA certificate ({1})")]
    NotACa(String, String),
    /// The key does not belong to the certificate.
    #[error("{0} does not match the public key of {1}")]
    KeyMismatch(String, String),
    /// rcgen refused to build the certificate.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// Writing the files failed.
    #[error(transparent)]
    Files(#[from] FileSetError),
}

/// A loaded or newly created mesh CA: its certificate and signing key.
pub struct CertificateAuthority {
    pub(crate) trust_domain: String,
    pub(crate) cert_pem: String,
    pub(crate) cert_der: CertificateDer<'static>,
    pub(crate) key: KeyPair,
    pub(crate) not_after: OffsetDateTime,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Creates a new CA for `trust_domain`, in memory.
    pub fn create(trust_domain: &str, validity: Validity) -> Result<Self, CaError> {
        validate_name("trust domain", trust_domain)?;
        let id = SpiffeId::new(trust_domain, IdKind::TrustDomain, "")?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{trust_domain} mesh CA"));
        dn.push(DnType::OrganizationName, "Shoal");
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(id.to_uri().try_into()?)];
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params.self_signed(&key)?;
        Ok(CertificateAuthority {
            trust_domain: trust_domain.to_string(),
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key,
            not_after: validity.not_after,
        })
    }

    /// Loads a CA from its PEM certificate and key; `origin` names where they came
    /// from in error messages. Checks that the certificate is a Shoal CA and that
    /// the key matches it.
    pub fn from_pem(cert_pem: &str, key_pem: &str, origin: &str) -> Result<Self, CaError> {
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|_| CaError::BadCertPem(format!("{origin}/{CA_CERT_FILE}")))?;
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| CaError::BadKeyPem(format!("{origin}/{CA_KEY_FILE}"), e.to_string()))?;
        let cert_name = format!("{origin}/{CA_CERT_FILE}");
        let (_, x509) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| CaError::NotACa(cert_name.clone(), e.to_string()))?;
        let identity = CertIdentity::from_x509(&x509)
            .map_err(|e| CaError::NotACa(cert_name.clone(), e.to_string()))?;
        if !identity.is_ca {
            return Err(CaError::NotACa(
                cert_name,
                "basic constraints do not allow signing".into(),
            ));
        }
        let Some(trust_domain) = identity.trust_domain else {
            return Err(CaError::NotACa(
                cert_name,
                "it carries no spiffe://TRUST-DOMAIN id".into(),
            ));
        };
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::KeyMismatch(
                format!("{origin}/{CA_KEY_FILE}"),
                cert_name,
            ));
        }
        let not_after = x509.validity().not_after.to_datetime();
        Ok(CertificateAuthority {
            trust_domain,
            cert_pem: cert_pem.to_string(),
            cert_der: cert_der.into_owned(),
            key,
            not_after,
        })
    }

    /// Loads `DIR/ca.crt` and `DIR/ca.key`.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read_to_string(&path).map_err(|cause| CaError::Read { path, cause })
        };
        let cert = read(CA_CERT_FILE)?;
        let key = read(CA_KEY_FILE)?;
        Self::from_pem(&cert, &key, &dir.display().to_string())
    }

    /// Writes `DIR/ca.crt` and `DIR/ca.key` (mode 0600), all or nothing.
    pub fn save(&self, dir: &Path, force: bool) -> Result<Vec<PathBuf>, CaError> {
        let files = [
            OutputFile {
                name: CA_CERT_FILE,
                contents: self.cert_pem.clone().into_bytes(),
                private: false,
            },
            OutputFile {
                name: CA_KEY_FILE,
                contents: self.key_pem().into_bytes(),
                private: true,
            },
        ];
        Ok(write_file_set(dir, &files, force)?)
    }

    /// The trust domain this CA signs for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA private key, PEM (PKCS#8).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// When the CA certificate expires; issued certificates never outlive it.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }
}
