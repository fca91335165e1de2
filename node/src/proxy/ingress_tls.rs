//! The TLS certificate an ingress listener serves to user-facing clients
//! (`[listener.tls]`): loaded from PEM files, swapped in place on reload (SIGHUP)
//! so new handshakes use the new certificate while open connections go on.
//! Offers HTTP/2 and HTTP/1.1 by ALPN. This is not the mesh identity: clients are
//! not asked for certificates.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::ListenerTls;

/// Why an ingress certificate cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IngressTlsError {
    /// A file cannot be read or parsed.
    #[error("{field}: {path}: {reason}")]
    File {
        /// The config field.
        field: String,
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The TLS configuration cannot be built.
    #[error("{field}: {source}")]
    Config {
        /// The config field.
        field: String,
        /// The rustls error.
        #[source]
        source: rustls::Error,
    },
}

/// An ingress listener's certificate, reloadable.
#[derive(Debug)]
pub struct IngressCert {
    field: String,
    files: ListenerTls,
    current: ArcSwap<CertifiedKey>,
}

impl IngressCert {
    /// Loads the files of `listener[index].tls`.
    pub fn load(index: usize, files: &ListenerTls) -> Result<Arc<Self>, IngressTlsError> {
        let field = format!("listener[{index}].tls");
        let key = read(&field, files)?;
        Ok(Arc::new(IngressCert {
            field,
            files: files.clone(),
            current: ArcSwap::from_pointee(key),
        }))
    }

    /// Re-reads the files; on error the current certificate stays.
    pub fn reload(&self) -> Result<(), IngressTlsError> {
        let key = read(&self.field, &self.files)?;
        self.current.store(Arc::new(key));
        Ok(())
    }

    /// A TLS acceptor serving this certificate (h2 and http/1.1 by ALPN).
    pub fn acceptor(self: &Arc<Self>) -> Result<tokio_rustls::TlsAcceptor, IngressTlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| IngressTlsError::Config {
                field: self.field.clone(),
                source,
            })?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

impl ResolvesServerCert for IngressCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn read(field: &str, files: &ListenerTls) -> Result<CertifiedKey, IngressTlsError> {
    let bad = |sub: &str, path: &Path, reason: String| IngressTlsError::File {
        field: format!("{field}.{sub}"),
        path: path.display().to_string(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| bad("cert", &files.cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad("cert", &files.cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad("cert", &files.cert, "holds no PEM certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| bad("key", &files.key, e.to_string()))?;
    let signer = crate::tls::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| bad("key", &files.key, e.to_string()))?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|e| {
        bad(
            "key",
            &files.key,
            format!("does not match the certificate: {e}"),
        )
    })?;
    Ok(certified)
}
