//! Issuing leaf certificates from a [`CertificateAuthority`]: node certificates
//! (`spiffe://TD/node/NAME` plus one `spiffe://TD/service/SVC` per service the
//! node may host; TLS server and client) and operator certificates
//! (`spiffe://TD/operator/NAME`; TLS client, signs route documents).

use std::path::{Path, PathBuf};

use mesh_proto::names::NameError;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use thiserror::Error;

use crate::ca::{CA_CERT_FILE, CertificateAuthority, Validity};
use crate::files::{FileSetError, OutputFile, write_file_set};
use crate::identity::{CertKind, IdKind, SpiffeId};

/// Why a certificate was not issued.
#[derive(Debug, Error)]
pub enum IssueError {
    /// A node, service or operator name breaks the naming rule.
    #[error(transparent)]
    BadName(#[from] NameError),
    /// The same service was named twice.
    #[error("service {0:?} is listed twice")]
    DuplicateService(String),
    /// The requested window ends after the CA expires.
    #[error(
        "the certificate would outlive the CA (CA expires {ca_not_after}); use fewer --days or a new CA"
    )]
    OutlivesCa {
        /// When the CA expires.
        ca_not_after: time::OffsetDateTime,
    },
    /// rcgen refused to build the certificate.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// Writing the files failed.
    #[error(transparent)]
    Files(#[from] FileSetError),
}

/// A freshly issued certificate with its private key, in memory.
pub struct IssuedCert {
    /// Node or operator.
    pub kind: CertKind,
    /// The SPIFFE ids it carries, node/operator id first.
    pub ids: Vec<SpiffeId>,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The certificate, DER.
    pub cert_der: CertificateDer<'static>,
    /// The private key, PEM (PKCS#8).
    pub key_pem: String,
    /// The private key, DER (PKCS#8).
    pub key_der: Vec<u8>,
    /// The issuing CA's certificate, PEM.
    pub ca_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("kind", &self.kind)
            .field("ids", &self.ids)
            .finish_non_exhaustive()
    }
}

impl IssuedCert {
    /// The private key in the form rustls takes.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// File names for this kind: `node.crt`/`node.key` or `operator.crt`/`operator.key`.
    pub fn file_names(&self) -> (&'static str, &'static str) {
        match self.kind {
            CertKind::Operator => ("operator.crt", "operator.key"),
            _ => ("node.crt", "node.key"),
        }
    }

    /// Writes the certificate, its key (0600) and a copy of `ca.crt` into `dir`,
    /// all or nothing.
    pub fn save(&self, dir: &Path, force: bool) -> Result<Vec<PathBuf>, IssueError> {
        let (crt, key) = self.file_names();
        let files = [
            OutputFile {
                name: crt,
                contents: self.cert_pem.clone().into_bytes(),
                private: false,
            },
            OutputFile {
                name: key,
                contents: self.key_pem.clone().into_bytes(),
                private: true,
            },
            OutputFile {
                name: CA_CERT_FILE,
                contents: self.ca_pem.clone().into_bytes(),
                private: false,
            },
        ];
        Ok(write_file_set(dir, &files, force)?)
    }
}

impl CertificateAuthority {
    /// Issues a node certificate for `node`, allowed to host `services`.
    pub fn issue_node(
        &self,
        node: &str,
        services: &[String],
        validity: Validity,
    ) -> Result<IssuedCert, IssueError> {
        let mut ids = vec![SpiffeId::new(&self.trust_domain, IdKind::Node, node)?];
        let mut seen = std::collections::BTreeSet::new();
        for svc in services {
            if !seen.insert(svc.as_str()) {
                return Err(IssueError::DuplicateService(svc.clone()));
            }
            ids.push(SpiffeId::new(&self.trust_domain, IdKind::Service, svc)?);
        }
        self.issue(
            CertKind::Node,
            node,
            ids,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            validity,
        )
    }

    /// Issues an operator certificate for `operator`.
    pub fn issue_operator(
        &self,
        operator: &str,
        validity: Validity,
    ) -> Result<IssuedCert, IssueError> {
        let ids = vec![SpiffeId::new(
            &self.trust_domain,
            IdKind::Operator,
            operator,
        )?];
        self.issue(
            CertKind::Operator,
            operator,
            ids,
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            validity,
        )
    }

    fn issue(
        &self,
        kind: CertKind,
        name: &str,
        ids: Vec<SpiffeId>,
        eku: Vec<ExtendedKeyUsagePurpose>,
        validity: Validity,
    ) -> Result<IssuedCert, IssueError> {
        if validity.not_after > self.not_after {
            return Err(IssueError::OutlivesCa {
                ca_not_after: self.not_after,
            });
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationalUnitName, kind.to_string());
        dn.push(DnType::OrganizationName, self.trust_domain.clone());
        params.distinguished_name = dn;
        params.subject_alt_names = ids
            .iter()
            .map(|id| Ok(SanType::URI(id.to_uri().try_into()?)))
            .collect::<Result<_, rcgen::Error>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = eku;
        params.use_authority_key_identifier_extension = true;
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let issuer = Issuer::from_ca_cert_der(&self.cert_der, &self.key)?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(IssuedCert {
            kind,
            ids,
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
            ca_pem: self.cert_pem.clone(),
        })
    }
}
