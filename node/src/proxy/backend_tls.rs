//! TLS from this node to the backend of a service that says `tls = true`: the
//! backend's certificate must chain to the service's trusted CAs (`tls_ca`, or
//! the system's store) and be valid for its `tls_server_name`, which is also
//! sent as SNI. ALPN offers HTTP/2 and HTTP/1.1 and the backend chooses —
//! HTTP/2 alone when the service says `http2 = true` — except for a request
//! that switches protocols (WebSocket, `CONNECT`), which only HTTP/1.1
//! carries the way the mesh relays it, so its connection offers HTTP/1.1 alone.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::BackendTls;

/// ALPN protocol id of HTTP/2.
const H2: &[u8] = b"h2";
/// ALPN protocol id of HTTP/1.1.
const HTTP11: &[u8] = b"http/1.1";

/// Which protocols a new backend connection offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// What the service allows: HTTP/2 and HTTP/1.1 (or HTTP/2 alone).
    Service,
    /// HTTP/1.1 alone, for a request that switches protocols.
    Http1,
}

/// Makes TLS connections to one service's backend.
#[derive(Clone)]
pub struct BackendConnector {
    service: TlsConnector,
    http1: TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for BackendConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendConnector")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// Why TLS to a backend cannot be set up from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum BackendTlsError {
    /// `tls_server_name` is neither a DNS name nor an IP address.
    #[error("tls_server_name {0:?} is not a DNS name or an IP address")]
    ServerName(String),
    /// rustls refused the configuration.
    #[error("TLS to the backend cannot be configured: {0}")]
    Config(#[from] rustls::Error),
}

impl BackendConnector {
    /// The connector `tls` describes; `http2_only` offers HTTP/2 alone.
    pub fn new(tls: &BackendTls, http2_only: bool) -> Result<Self, BackendTlsError> {
        let server_name = ServerName::try_from(tls.server_name.clone())
            .map_err(|_| BackendTlsError::ServerName(tls.server_name.clone()))?;
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(tls.roots.iter().cloned());
        let roots = Arc::new(roots);
        let service = if http2_only {
            vec![H2.to_vec()]
        } else {
            vec![H2.to_vec(), HTTP11.to_vec()]
        };
        Ok(BackendConnector {
            service: connector(roots.clone(), service)?,
            http1: connector(roots, vec![HTTP11.to_vec()])?,
            server_name,
        })
    }

    /// TLS over `tcp`, offering `offer`; also whether the backend chose HTTP/2.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        offer: Offer,
    ) -> std::io::Result<(TlsStream<TcpStream>, bool)> {
        let connector = match offer {
            Offer::Service => &self.service,
            Offer::Http1 => &self.http1,
        };
        let stream = connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("TLS handshake: {e}")))?;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(H2);
        Ok((stream, h2))
    }
}

fn connector(roots: Arc<RootCertStore>, alpn: Vec<Vec<u8>>) -> Result<TlsConnector, rustls::Error> {
    let mut config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn;
    Ok(TlsConnector::from(Arc::new(config)))
}
