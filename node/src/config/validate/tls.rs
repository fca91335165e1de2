//! Validation of `[tls]`: the files, and that they make a usable node identity (checked once here; the node loads the same files at start).

use std::path::Path;
use std::path::PathBuf;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use shoal_pki::CaBundle;
use shoal_pki::CertIdentity;
use shoal_pki::CertKind;
use shoal_pki::VerifyError;

use super::Validator;
use crate::config::raw::RawTls;
use crate::config::types::TlsConfig;

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

    pub(super) fn pem_cert(
        &mut self,
        field: &str,
        path: &Path,
        bytes: &[u8],
    ) -> Option<CertificateDer<'static>> {
        match CertificateDer::from_pem_slice(bytes) {
            Ok(der) => Some(der),
            Err(_) => {
                self.err(
                    field,
                    format!(
                        "{} is not a PEM certificate (no -----BEGIN CERTIFICATE----- block)",
                        path.display()
                    ),
                );
                None
            }
        }
    }

    pub(super) fn tls(&mut self, raw: Option<&RawTls>) -> Option<TlsConfig> {
        let Some(raw) = raw else {
            self.err(
                "tls",
                "the [tls] table is required: cert, key and ca (the files `shoal-pki issue --node NAME` writes)",
            );
            return None;
        };
        let cert = self.read_file("tls.cert", raw.cert.as_ref());
        let key = self.read_file("tls.key", raw.key.as_ref());
        let ca = self.read_file("tls.ca", raw.ca.as_ref());
        let ca_checked = ca
            .as_ref()
            .and_then(|(path, bytes)| self.tls_ca(path, bytes));
        let cert_checked = cert
            .as_ref()
            .and_then(|(path, bytes)| self.tls_node_cert(path, bytes));
        let key_ok = key.as_ref().and_then(|(path, pem)| self.tls_key(path, pem));
        if let (Some(k), Some((key_path, _)), Some((cert_path, _)), Some((cert_der, _))) =
            (&key_ok, &key, &cert, &cert_checked)
        {
            self.tls_key_matches(k, key_path, cert_path, cert_der);
        }
        let (Some((bundle, ca_td)), Some((cert_der, id)), Some((ca_path, _))) =
            (&ca_checked, &cert_checked, &ca)
        else {
            return None;
        };
        let cert_td = self.tls_chain(bundle, ca_td, ca_path, cert_der, id)?;
        let not_after = x509_parser::parse_x509_certificate(cert_der)
            .map(|(_, x)| x.validity().not_after.to_datetime())
            .ok()?;
        // Built even when the key has a problem (already reported), so that the
        // node name and the services can still be checked against the certificate.
        let key_path = match (&key, &raw.key) {
            (Some((path, _)), _) => path.clone(),
            (None, Some(path)) => self.resolve(path),
            (None, None) => PathBuf::new(),
        };
        Some(TlsConfig {
            cert: cert.as_ref()?.0.clone(),
            key: key_path,
            ca: ca_path.clone(),
            trust_domain: cert_td,
            node_name: id.node.clone()?,
            allowed_services: id.services.clone(),
            cert_not_after: not_after,
        })
    }

    /// The CA (one, or several of one trust domain during a CA rollover) and
    /// its trust domain.
    fn tls_ca(&mut self, path: &Path, bytes: &[u8]) -> Option<(CaBundle, String)> {
        match CaBundle::from_pem(bytes) {
            Ok(bundle) => {
                let td = bundle.trust_domain.clone();
                Some((bundle, td))
            }
            Err(e) => {
                self.err(
                    "tls.ca",
                    format!(
                        "{} is not a Shoal mesh CA file ({e}); use the ca.crt written by `shoal-pki ca init`",
                        path.display()
                    ),
                );
                None
            }
        }
    }

    /// The node certificate: PEM, a Shoal identity, and a node's (not an
    /// operator's or a CA's).
    fn tls_node_cert(
        &mut self,
        path: &Path,
        bytes: &[u8],
    ) -> Option<(CertificateDer<'static>, CertIdentity)> {
        let der = self.pem_cert("tls.cert", path, bytes)?;
        let id = match CertIdentity::from_der(&der) {
            Ok(id) => id,
            Err(e) => {
                self.err("tls.cert", format!("{}: {e}", path.display()));
                return None;
            }
        };
        let p = path.display();
        let problem = match id.kind() {
            CertKind::Node => None,
            CertKind::Operator => Some(format!(
                "{p} is an operator certificate (spiffe://{}/operator/{}); a node needs a node certificate: shoal-pki issue --ca DIR --node NAME --service SVC...",
                id.trust_domain.as_deref().unwrap_or("?"),
                id.operator.as_deref().unwrap_or("?"),
            )),
            CertKind::Ca => Some(format!(
                "{p} is a CA certificate; put it in tls.ca and point tls.cert at a node certificate (shoal-pki issue --node NAME)"
            )),
            CertKind::Other => Some(format!(
                "{p} carries no spiffe://TRUST-DOMAIN/node/NAME id; it is not a Shoal node certificate (shoal-pki issue --node NAME)"
            )),
        };
        if let Some(problem) = problem {
            self.err("tls.cert", problem);
            return None;
        }
        Some((der, id))
    }

    /// The key: a usable PEM private key.
    fn tls_key(&mut self, path: &Path, pem: &[u8]) -> Option<rcgen::KeyPair> {
        let parsed = std::str::from_utf8(pem)
            .map_err(|e| e.to_string())
            .and_then(|s| rcgen::KeyPair::from_pem(s).map_err(|e| e.to_string()));
        match parsed {
            Ok(k) => Some(k),
            Err(e) => {
                self.err(
                    "tls.key",
                    format!("{} is not a usable PEM private key ({e})", path.display()),
                );
                None
            }
        }
    }

    /// The key's public half is the certificate's.
    fn tls_key_matches(
        &mut self,
        k: &rcgen::KeyPair,
        key_path: &Path,
        cert_path: &Path,
        cert_der: &[u8],
    ) {
        let matches = x509_parser::parse_x509_certificate(cert_der).is_ok_and(|(_, x)| {
            x.public_key().subject_public_key.data.as_ref() == k.public_key_raw()
        });
        if !matches {
            self.err(
                "tls.key",
                format!(
                    "{} does not match the public key of tls.cert ({}); use the key written next to that certificate",
                    key_path.display(),
                    cert_path.display()
                ),
            );
        }
    }

    /// The certificate against the CA: same trust domain, and it chains.
    /// Returns the trust domain unless the certificate is unusable; an expired
    /// or not yet valid one is still this node's, so the name and services can
    /// still be checked against it (one run of `shoal check` reports every
    /// problem).
    fn tls_chain(
        &mut self,
        bundle: &CaBundle,
        ca_td: &str,
        ca_path: &Path,
        cert_der: &CertificateDer<'static>,
        id: &CertIdentity,
    ) -> Option<String> {
        let cert_td = id.trust_domain.clone().unwrap_or_default();
        if cert_td != ca_td {
            self.err(
                "tls.cert",
                format!(
                    "certificate of another trust domain: it is for {cert_td:?} but tls.ca ({}) is the CA of {ca_td:?}",
                    ca_path.display()
                ),
            );
            return None;
        }
        let Err(e) = bundle.verify(cert_der, self.now) else {
            return Some(cert_td);
        };
        let keep_going = matches!(e, VerifyError::Expired(_) | VerifyError::NotYetValid(_));
        let (field, reason) = match e {
            VerifyError::Expired(when) => (
                "tls.cert",
                format!("the certificate expired on {when}; issue a new one with shoal-pki issue"),
            ),
            VerifyError::NotYetValid(_) => (
                "tls.cert",
                format!("the certificate is {e}; is this host's clock right?"),
            ),
            VerifyError::OtherCa { issuer } => (
                "tls.cert",
                format!(
                    "the certificate was not signed by the CA in tls.ca ({}); it belongs to another CA (issuer: {issuer})",
                    ca_path.display()
                ),
            ),
            VerifyError::CaNotValid(why) => (
                "tls.ca",
                format!("the CA certificate is not valid now: {why}"),
            ),
            VerifyError::WrongTrustDomain { .. } => (
                "tls.cert",
                format!("certificate of another trust domain: {e}"),
            ),
            other => (
                "tls.cert",
                format!("the certificate does not verify: {other}"),
            ),
        };
        self.err(field, reason);
        keep_going.then_some(cert_td)
    }

    // --- [gossip] --------------------------------------------------------------
}
