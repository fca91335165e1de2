//! Validation of a service's TLS to its backend (`tls`, `tls_ca`,
//! `tls_server_name`, `tls_cert`, `tls_key`): HTTP services only, a server
//! name rustls accepts, trusted CAs read now — from `tls_ca`, or the system's
//! trust store — and a client certificate with its own key, so a file that
//! holds nothing usable is refused with the config, not at the first request.

use std::net::SocketAddr;

use mesh_proto::tunnel::Protocol;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use super::Validator;
use crate::config::raw::RawService;
use crate::config::types::{BackendTls, ClientIdentity};

impl Validator {
    /// `Some(None)` without `tls = true`; `None` after reporting an error.
    pub(super) fn backend_tls(
        &mut self,
        i: usize,
        raw: &RawService,
        protocol: Option<Protocol>,
        address: Option<SocketAddr>,
    ) -> Option<Option<BackendTls>> {
        let f = |name: &str| format!("service[{i}].{name}");
        if raw.tls != Some(true) {
            return self.no_tls_settings(&f, raw).then_some(None);
        }
        if protocol == Some(Protocol::Tcp) {
            self.err(
                f("tls"),
                "only an HTTP service originates TLS to its backend (a TCP service relays the caller's bytes as they are, its TLS included): set protocol = \"http\", or remove tls",
            );
            return None;
        }
        let server_name = match &raw.tls_server_name {
            Some(name) => self.server_name(&f("tls_server_name"), name)?,
            None => address?.ip().to_string(),
        };
        let (ca, roots) = match &raw.tls_ca {
            Some(path) => {
                let (abs, pem) = self.read_file(&f("tls_ca"), Some(path))?;
                let roots = self.ca_file_roots(&f("tls_ca"), &abs, &pem)?;
                (Some(abs), roots)
            }
            None => (None, self.system_roots(&f("tls_ca"))?),
        };
        let client = self.client_identity(&f, raw)?;
        Some(Some(BackendTls {
            ca,
            server_name,
            roots,
            client,
        }))
    }

    /// `tls_cert` and `tls_key`, which go together: `Some(None)` without
    /// them; `None` after reporting an error.
    fn client_identity(
        &mut self,
        f: &dyn Fn(&str) -> String,
        raw: &RawService,
    ) -> Option<Option<ClientIdentity>> {
        match (&raw.tls_cert, &raw.tls_key) {
            (None, None) => Some(None),
            (Some(_), None) | (None, Some(_)) => {
                let (set, missing) = if raw.tls_cert.is_some() {
                    ("tls_cert", "tls_key")
                } else {
                    ("tls_key", "tls_cert")
                };
                self.err(
                    f(missing),
                    format!(
                        "required with {set}: a client certificate needs its key (tls_cert: the PEM certificate chain, tls_key: its PEM private key)"
                    ),
                );
                None
            }
            (Some(cert), Some(key)) => {
                let pair =
                    self.cert_and_key((&f("tls_cert"), Some(cert)), (&f("tls_key"), Some(key)))?;
                Some(Some(ClientIdentity {
                    cert: pair.cert,
                    key: pair.key,
                    chain: pair.chain,
                    key_der: pair.key_der,
                }))
            }
        }
    }

    /// `tls_ca`, `tls_server_name`, `tls_cert` and `tls_key` mean nothing
    /// without `tls = true`.
    fn no_tls_settings(&mut self, f: &dyn Fn(&str) -> String, raw: &RawService) -> bool {
        let mut ok = true;
        for (field, set) in [
            ("tls_ca", raw.tls_ca.is_some()),
            ("tls_server_name", raw.tls_server_name.is_some()),
            ("tls_cert", raw.tls_cert.is_some()),
            ("tls_key", raw.tls_key.is_some()),
        ] {
            if set {
                self.err(
                    f(field),
                    "applies only with tls = true: set tls = true, or remove it",
                );
                ok = false;
            }
        }
        ok
    }

    fn server_name(&mut self, field: &str, name: &str) -> Option<String> {
        match ServerName::try_from(name) {
            Ok(_) => Some(name.to_string()),
            Err(e) => {
                self.err(
                    field,
                    format!("{name:?} is not a DNS name or an IP address ({e})"),
                );
                None
            }
        }
    }

    /// Every certificate of the PEM file, each one usable as a trust anchor.
    fn ca_file_roots(
        &mut self,
        field: &str,
        path: &std::path::Path,
        pem: &[u8],
    ) -> Option<Vec<CertificateDer<'static>>> {
        let certs: Vec<CertificateDer<'static>> =
            match CertificateDer::pem_slice_iter(pem).collect::<Result<_, _>>() {
                Ok(certs) => certs,
                Err(e) => {
                    self.err(
                        field,
                        format!("{} is not a PEM certificate file: {e}", path.display()),
                    );
                    return None;
                }
            };
        if certs.is_empty() {
            self.err(
                field,
                format!("{} holds no PEM certificate", path.display()),
            );
            return None;
        }
        let (_, unusable) = RootCertStore::empty().add_parsable_certificates(certs.clone());
        if unusable > 0 {
            self.err(
                field,
                format!(
                    "{} holds {unusable} certificate(s) that cannot be a trust anchor (not parsable X.509)",
                    path.display()
                ),
            );
            return None;
        }
        Some(certs)
    }

    /// The system's trust store (as OpenSSL finds it: `SSL_CERT_FILE`,
    /// `SSL_CERT_DIR`, or the distribution's bundle).
    fn system_roots(&mut self, field: &str) -> Option<Vec<CertificateDer<'static>>> {
        let found = rustls_native_certs::load_native_certs();
        if found.certs.is_empty() {
            let why = found
                .errors
                .first()
                .map_or_else(|| "none found".to_string(), ToString::to_string);
            self.err(
                field,
                format!(
                    "not set, and the system's trust store has no certificate ({why}): set tls_ca to the PEM file of the CA that signed the backend's certificate"
                ),
            );
            return None;
        }
        Some(found.certs)
    }
}
