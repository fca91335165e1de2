//! Validation of `[tls]`: the files, and that they make a usable node identity
//! (by `tls::files::check`, the same check the node makes when it loads them),
//! with every problem reported by field; and reading the PEM files listeners
//! and backends name, a certificate chain with its key among them.

use std::path::PathBuf;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::Validator;
use crate::config::raw::RawTls;
use crate::config::types::TlsConfig;
use crate::tls::files::{self, Paths};

impl Validator {
    pub(super) fn read_file(
        &mut self,
        field: &str,
        path: Option<&PathBuf>,
    ) -> Option<(PathBuf, Vec<u8>)> {
        let Some(path) = path else {
            self.err(
                field,
                "required: a PEM file path (shoal-pki issue writes node.crt, node.key and ca.crt)",
            );
            return None;
        };
        let abs = self.resolve(path);
        match std::fs::read(&abs) {
            Ok(bytes) => Some((abs, bytes)),
            Err(e) => {
                self.err(field, format!("cannot read {}: {e}", abs.display()));
                None
            }
        }
    }

    /// A certificate chain and its private key from two PEM files (each a
    /// `(field, path)`): the chain holds a certificate, the key is usable and
    /// belongs to the chain's first certificate.
    pub(super) fn cert_and_key(
        &mut self,
        (cert_field, cert): (&str, Option<&PathBuf>),
        (key_field, key): (&str, Option<&PathBuf>),
    ) -> Option<CertAndKey> {
        let cert = self.read_file(cert_field, cert);
        let key = self.read_file(key_field, key);
        let (Some((cert_path, cert_pem)), Some((key_path, key_pem))) = (cert, key) else {
            return None;
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .filter_map(Result::ok)
            .collect();
        if chain.is_empty() {
            let why = format!("{} holds no PEM certificate", cert_path.display());
            self.err(cert_field, why);
            return None;
        }
        let pair = std::str::from_utf8(&key_pem)
            .ok()
            .and_then(|k| rcgen::KeyPair::from_pem(k).ok());
        let der = PrivateKeyDer::from_pem_slice(&key_pem).ok();
        let (Some(pair), Some(der)) = (pair, der) else {
            let why = format!("{} is not a usable PEM private key", key_path.display());
            self.err(key_field, why);
            return None;
        };
        let matches = x509_parser::parse_x509_certificate(&chain[0]).is_ok_and(|(_, x)| {
            x.public_key().subject_public_key.data.as_ref() == pair.public_key_raw()
        });
        if !matches {
            let why = format!(
                "{} does not match the first certificate of {}",
                key_path.display(),
                cert_path.display()
            );
            self.err(key_field, why);
            return None;
        }
        Some(CertAndKey {
            cert: cert_path,
            key: key_path,
            chain,
            key_der: der,
        })
    }

    pub(super) fn tls(&mut self, raw: Option<&RawTls>) -> Option<TlsConfig> {
        let Some(raw) = raw else {
            self.err(
                "tls",
                "the [tls] table is required: cert, key and ca (the files `shoal-pki issue --node NAME` writes)",
            );
            return None;
        };
        let cert = raw.cert.as_ref().map(|p| self.resolve(p));
        let key = raw.key.as_ref().map(|p| self.resolve(p));
        let ca = raw.ca.as_ref().map(|p| self.resolve(p));
        let paths = Paths {
            cert: cert.as_deref(),
            key: key.as_deref(),
            ca: ca.as_deref(),
        };
        let (checked, problems) = files::check(paths, self.now);
        for p in problems {
            self.err(p.field, p.reason);
        }
        // Built even when the key has a problem (already reported), so that the
        // node name and the services can still be checked against the certificate.
        let checked = checked?;
        Some(TlsConfig {
            cert: cert?,
            key: key.unwrap_or_default(),
            ca: ca?,
            trust_domain: checked.bundle.trust_domain.clone(),
            node_name: checked.identity.node.clone()?,
            allowed_services: checked.identity.services,
            cert_not_after: checked.not_after,
        })
    }

    // --- [gossip] --------------------------------------------------------------
}

/// A certificate chain and its key, as [`Validator::cert_and_key`] read them.
pub(super) struct CertAndKey {
    /// The certificate file (absolute path).
    pub cert: PathBuf,
    /// The key file (absolute path).
    pub key: PathBuf,
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The key.
    pub key_der: PrivateKeyDer<'static>,
}
