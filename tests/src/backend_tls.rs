//! A CA of the backends' own (not the mesh's), as an organisation's internal
//! PKI would be: it writes its certificate where a service's `tls_ca` can name
//! it, makes rustls server configs for TLS backends with the names and the
//! ALPN protocols a test asks for (requiring a client certificate of its own
//! if asked), and issues client certificates a service's `tls_cert` and
//! `tls_key` can name.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tempfile::TempDir;

/// The backends' CA and the directory holding its certificate.
pub struct BackendCa {
    dir: TempDir,
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
}

impl BackendCa {
    /// A new CA; its certificate is written to [`BackendCa::ca_file`].
    pub fn new() -> BackendCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "backends test CA");
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("backend-ca.pem"), cert.pem()).unwrap();
        BackendCa {
            dir,
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The PEM file of its certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("backend-ca.pem")
    }

    /// A server config for a backend whose certificate names `names` (DNS
    /// names, or IP addresses), offering `alpn`.
    pub fn server_config(&self, names: &[&str], alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        self.server(
            names,
            alpn,
            rustls::server::WebPkiClientVerifier::no_client_auth(),
        )
    }

    /// The same, for a backend that requires a client certificate issued by
    /// this CA (mutual TLS).
    pub fn server_config_for_clients(
        &self,
        names: &[&str],
        alpn: &[&[u8]],
    ) -> Arc<rustls::ServerConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        self.server(names, alpn, verifier)
    }

    /// A client certificate for `name` issued by this CA: the paths of its
    /// PEM certificate and key files.
    pub fn client_identity(&self, name: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_file, key_file) = (
            self.dir.path().join(format!("{name}.crt")),
            self.dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }

    fn server(
        &self,
        names: &[&str],
        alpn: &[&[u8]],
        clients: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    ) -> Arc<rustls::ServerConfig> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*n).try_into().unwrap()),
            })
            .collect();
        let leaf = params.signed_by(&key, &self.issuer).unwrap();
        let chain = vec![leaf.der().clone(), self.cert.clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(clients)
        .with_single_cert(chain, key)
        .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

impl Default for BackendCa {
    fn default() -> Self {
        Self::new()
    }
}
