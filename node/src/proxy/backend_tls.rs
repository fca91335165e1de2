//! TLS from this node to the backend of a service that says `tls = true`: the
//! backend's certificate must chain to the service's trusted CAs (`tls_ca`, or
//! the system's store) and be valid for its `tls_server_name`, which is also
//! sent as SNI; a service with `tls_cert` and `tls_key` presents that client
//! certificate to a backend that asks for one. ALPN offers HTTP/2 and HTTP/1.1 and the backend chooses —
//! HTTP/2 alone when the service says `http2 = true` — except for a request
//! that switches protocols (WebSocket, `CONNECT`), which only HTTP/1.1
//! carries the way the mesh relays it, so its connection offers HTTP/1.1 alone.

use std::sync::{Arc, OnceLock};

use rustls::RootCertStore;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::observed::{Dir, Observed, Observer};
use crate::config::{BackendTls, ClientIdentity};

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
        let client = tls.client.as_ref();
        Ok(BackendConnector {
            service: connector(roots.clone(), client, service)?,
            http1: connector(roots, client, vec![HTTP11.to_vec()])?,
            server_name,
        })
    }

    /// TLS over `tcp`, offering `offer`; also whether the backend chose HTTP/2.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        offer: Offer,
    ) -> std::io::Result<(Watched<TlsStream<TcpStream>>, bool)> {
        let connector = match offer {
            Offer::Service => &self.service,
            Offer::Http1 => &self.http1,
        };
        let stream = connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("TLS handshake: {e}")))?;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(H2);
        Ok((Observed::new(stream, NoteRefusal::default()), h2))
    }
}

/// Where a backend connection notes the TLS alert by which the backend
/// refused this node's client certificate (or its lack of one), once read.
pub type Refused = Arc<OnceLock<&'static str>>;

/// A backend connection's TLS stream, noting in [`Refused`] the alert by
/// which the backend refused this node's client certificate. TLS 1.3 ends
/// the client's side of the handshake before the server has checked that
/// certificate, so its refusal is the first thing read after the handshake:
/// by then a request may be queued, and hyper reports it only as a closed
/// connection. A server sends these alerts while verifying the handshake,
/// before it reads any request, so a request they fail was not forwarded.
pub type Watched<IO> = Observed<IO, NoteRefusal>;

/// The [`Observer`] of a [`Watched`] stream: notes a certificate alert that
/// failed a read.
#[derive(Debug, Default)]
pub struct NoteRefusal(Refused);

impl NoteRefusal {
    /// Where the refusal is noted.
    pub fn refused(&self) -> Refused {
        self.0.clone()
    }
}

impl Observer for NoteRefusal {
    fn moved(&self, _: Dir, _: usize) {}

    fn read_failed(&self, e: &std::io::Error) {
        if let Some(alert) = certificate_alert(e) {
            let _ = self.0.set(alert);
        }
    }
}

/// The TLS alerts (by rustls's names) a server sends when it refuses a
/// client's certificate, or the handshake's proof of its key: each ends the
/// handshake, before any request is read.
const CLIENT_CERTIFICATE_ALERTS: [&str; 10] = [
    "CertificateRequired",
    "BadCertificate",
    "UnsupportedCertificate",
    "CertificateRevoked",
    "CertificateExpired",
    "CertificateUnknown",
    "UnknownCA",
    "AccessDenied",
    "HandshakeFailure",
    "DecryptError",
];

/// The alert by which a backend refused this node's client certificate, if
/// `e` (from reading its TLS stream) is one. tokio-rustls hands it on inside
/// an `io::Error`, typed or as rustls's text ("received fatal alert: …").
pub fn certificate_alert(e: &std::io::Error) -> Option<&'static str> {
    let inner = e.get_ref()?;
    let name = match inner.downcast_ref::<rustls::Error>() {
        Some(rustls::Error::AlertReceived(alert)) => format!("{alert:?}"),
        _ => inner
            .to_string()
            .strip_prefix("received fatal alert: ")?
            .to_string(),
    };
    CLIENT_CERTIFICATE_ALERTS
        .iter()
        .find(|a| **a == name)
        .copied()
}

fn connector(
    roots: Arc<RootCertStore>,
    client: Option<&ClientIdentity>,
    alpn: Vec<Vec<u8>>,
) -> Result<TlsConnector, rustls::Error> {
    let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match client {
        Some(id) => builder.with_client_auth_cert(id.chain.clone(), id.key_der.clone_key())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn;
    Ok(TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use std::io::{Error, ErrorKind};

    use rustls::AlertDescription;

    use super::*;

    #[test]
    fn only_alerts_about_the_clients_certificate_are_refusals() {
        let typed = |a| Error::new(ErrorKind::InvalidData, rustls::Error::AlertReceived(a));
        assert_eq!(
            certificate_alert(&typed(AlertDescription::CertificateRequired)),
            Some("CertificateRequired")
        );
        assert_eq!(
            certificate_alert(&typed(AlertDescription::UnknownCA)),
            Some("UnknownCA")
        );
        // As text, the way an error that was turned into a string arrives.
        let text = Error::new(
            ErrorKind::InvalidData,
            "received fatal alert: BadCertificate",
        );
        assert_eq!(certificate_alert(&text), Some("BadCertificate"));
        // Alerts a server may send after it has read a request, and errors
        // that are not alerts, say nothing about what was forwarded.
        assert_eq!(
            certificate_alert(&typed(AlertDescription::InternalError)),
            None
        );
        assert_eq!(
            certificate_alert(&typed(AlertDescription::CloseNotify)),
            None
        );
        assert_eq!(
            certificate_alert(&Error::from(ErrorKind::ConnectionReset)),
            None
        );
        assert_eq!(certificate_alert(&Error::other("UnknownCA")), None);
    }
}
