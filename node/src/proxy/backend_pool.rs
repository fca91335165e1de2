//! Connections from this node to one local HTTP backend, reused across
//! tunnelled requests: keep-alive HTTP/1.1 connections, or — for a service
//! with `http2 = true` — one HTTP/2 connection (prior knowledge, "h2c") that
//! carries every request at once, which is also what gRPC backends speak.
//! With `tls = true` every connection is TLS ([`super::backend_tls`]) and the
//! backend chooses HTTP/2 or HTTP/1.1 by ALPN.
//!
//! Every HTTP request crosses the mesh on its own QUIC stream, but the serving
//! node need not open a TCP connection to its backend for each of them: a fresh
//! connection per request costs a handshake, a close and a TIME-WAIT entry, and at
//! a few thousand requests a second the kernel's port search dominates the
//! node's CPU. So an HTTP/1.1 connection whose response has been read completely
//! goes back to this pool, and the next request takes it (newest first, so idle
//! ones age out). A connection unused for the service's `http_idle_timeout` is
//! closed, before the backend's own keep-alive timeout would close it under a
//! request.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper::header::{HOST, UPGRADE};
use hyper::http::uri::Scheme;
use hyper::{Method, Request, Response, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::backend_tls::{BackendConnector, Offer, Refused};
use super::body::{Body, MAX_HEADER_BYTES};
use crate::config::ServiceConfig;

/// Most idle connections kept per backend; beyond, finished ones are closed.
pub const MAX_IDLE: usize = 256;

/// A request sender on one backend connection.
#[derive(Debug)]
pub enum Sender {
    /// An HTTP/1.1 connection: one request at a time (and, over TLS, where
    /// a refusal of the client certificate is noted).
    Http1(http1::SendRequest<Body>, Option<Refused>),
    /// The backend's HTTP/2 connection, shared by every request.
    Http2(H2Sender),
}

/// The sender of a backend's HTTP/2 connection, and the scheme of the URIs
/// its requests carry (`:scheme`).
#[derive(Debug, Clone)]
pub struct H2Sender {
    sender: http2::SendRequest<Body>,
    scheme: Scheme,
    /// Over TLS: where a refusal of the client certificate is noted.
    refused: Option<Refused>,
}

impl Sender {
    fn is_ready(&self) -> bool {
        match self {
            Sender::Http1(s, _) => s.is_ready(),
            Sender::Http2(s) => s.sender.is_ready(),
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Sender::Http1(s, _) => s.is_closed(),
            Sender::Http2(s) => s.sender.is_closed(),
        }
    }

    /// Why the exchange on this connection failed with `e`: the backend's
    /// refusal of this node's client certificate if its TLS noted one.
    fn failed(&self, e: hyper::Error) -> SendError {
        let refused = match self {
            Sender::Http1(_, r) => r,
            Sender::Http2(s) => &s.refused,
        };
        match refused.as_ref().and_then(|r| r.get()) {
            Some(alert) => SendError::CertificateRefused(alert),
            None => SendError::Http(e),
        }
    }

    async fn try_send(
        &mut self,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, TrySendError<Request<Body>>> {
        match self {
            Sender::Http1(s, _) => s.try_send_request(req).await,
            Sender::Http2(s) => {
                let req = as_http2(req, s.scheme.clone());
                s.sender.try_send_request(req).await
            }
        }
    }
}

/// `req` as HTTP/2 wants it: the authority (from `Host`) in the URI, so it
/// becomes `:authority`, with `scheme` (`http` for prior knowledge, `https`
/// over TLS).
fn as_http2(mut req: Request<Body>, scheme: Scheme) -> Request<Body> {
    *req.version_mut() = Version::HTTP_2;
    if req.uri().authority().is_none()
        && let Some(host) = req.headers_mut().remove(HOST)
    {
        let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        if let Ok(uri) = Uri::builder()
            .scheme(scheme)
            .authority(host.as_bytes())
            .path_and_query(path)
            .build()
        {
            *req.uri_mut() = uri;
        }
    }
    req
}

/// Whether `req` switches protocols (WebSocket, `CONNECT`): HTTP/1.1 only.
fn switches_protocols(req: &Request<Body>) -> bool {
    req.method() == Method::CONNECT || req.headers().contains_key(UPGRADE)
}

#[derive(Debug)]
struct Idle {
    sender: Sender,
    since: Instant,
}

/// The connections to one backend: idle HTTP/1.1 keep-alive ones, or the one
/// HTTP/2 connection.
#[derive(Debug)]
pub struct BackendPool {
    addr: SocketAddr,
    idle_timeout: Duration,
    idle: Mutex<Vec<Idle>>,
    /// Requests go on the shared HTTP/2 connection: the service says
    /// `http2 = true`, or its TLS backend chose HTTP/2 by ALPN.
    h2: AtomicBool,
    shared: Mutex<Option<H2Sender>>,
    /// TLS to the backend (`tls = true`); the error if it cannot be set up.
    tls: Option<Result<BackendConnector, String>>,
}

impl BackendPool {
    /// A pool for the HTTP/1.1 backend at `addr`; `idle_timeout` zero
    /// disables reuse.
    pub fn new(addr: SocketAddr, idle_timeout: Duration) -> Self {
        Self {
            addr,
            idle_timeout,
            idle: Mutex::new(Vec::new()),
            h2: AtomicBool::new(false),
            shared: Mutex::new(None),
            tls: None,
        }
    }

    /// The pool for `service`'s backend: its address, idle timeout, HTTP
    /// version and TLS.
    pub fn for_service(service: &ServiceConfig) -> Self {
        let tls = service
            .tls
            .as_ref()
            .map(|tls| BackendConnector::new(tls, service.http2).map_err(|e| e.to_string()));
        Self {
            h2: AtomicBool::new(service.http2),
            tls,
            ..Self::new(service.address, service.http_idle_timeout)
        }
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Option<H2Sender>> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle connection ready for a request, if there is one. Connections the
    /// backend closed, or unused for longer than the idle timeout, are dropped.
    pub fn take(&self) -> Option<Sender> {
        if self.h2.load(Ordering::Relaxed) {
            let shared = self.shared();
            return shared
                .as_ref()
                .filter(|s| !s.sender.is_closed())
                .map(|s| Sender::Http2(s.clone()));
        }
        let mut idle = self.lock();
        self.drop_expired(&mut idle, Instant::now());
        // Newest first; one given back an instant ago may still be finishing
        // its exchange (not ready yet): it stays for the next request. One the
        // backend closed is dropped on the way.
        while let Some(i) = idle
            .iter()
            .rposition(|e| e.sender.is_ready() || e.sender.is_closed())
        {
            let entry = idle.remove(i);
            if !entry.sender.is_closed() {
                return Some(entry.sender);
            }
        }
        None
    }

    /// Drops the connections unused for the idle timeout: the oldest, at the
    /// front (each is put back at the end), so this looks at one entry unless
    /// some did expire.
    fn drop_expired(&self, idle: &mut Vec<Idle>, now: Instant) {
        let fresh = idle
            .iter()
            .position(|e| now.duration_since(e.since) < self.idle_timeout)
            .unwrap_or(idle.len());
        idle.drain(..fresh);
    }

    /// Opens a new connection within `timeout` (for HTTP/2, the one the pool
    /// then shares). An HTTP/1.1 connection's task supports protocol upgrades
    /// (WebSocket): an upgraded connection leaves HTTP and never comes back to
    /// the pool.
    pub async fn connect(&self, timeout: Duration) -> std::io::Result<Sender> {
        self.connect_offering(timeout, Offer::Service).await
    }

    async fn connect_offering(&self, timeout: Duration, offer: Offer) -> std::io::Result<Sender> {
        // Boxed: a TLS handshake's state is large, and this future is part of
        // every request's future (which is moved as it is handed on) while
        // it is needed only when no pooled connection is at hand.
        tokio::time::timeout(timeout, Box::pin(self.open(offer)))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("did not accept within {timeout:?}"),
                )
            })?
    }

    /// A TCP connection, then TLS if the service says so, then the HTTP
    /// handshake of the version the service (or ALPN) chose.
    async fn open(&self, offer: Offer) -> std::io::Result<Sender> {
        let stream = TcpStream::connect(self.addr).await?;
        let _ = stream.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return if self.h2.load(Ordering::Relaxed) {
                self.handshake_h2(stream, Scheme::HTTP, None).await
            } else {
                handshake_h1(stream, None).await
            };
        };
        let tls = tls.as_ref().map_err(|e| std::io::Error::other(e.clone()))?;
        let (stream, h2) = tls.handshake(stream, offer).await?;
        if offer == Offer::Service {
            // What the backend chose now decides where the next requests go.
            self.h2.store(h2, Ordering::Relaxed);
        }
        let refused = Some(stream.observer().refused());
        if h2 {
            self.handshake_h2(stream, Scheme::HTTPS, refused).await
        } else {
            handshake_h1(stream, refused).await
        }
    }

    /// The HTTP/2 connection over `io`, which the pool then shares.
    async fn handshake_h2<IO>(
        &self,
        io: IO,
        scheme: Scheme,
        refused: Option<Refused>,
    ) -> std::io::Result<Sender>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .max_header_list_size(MAX_HEADER_BYTES as u32)
            .handshake::<_, Body>(TokioIo::new(io))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        let sender = H2Sender {
            sender,
            scheme,
            refused,
        };
        *self.shared() = Some(sender.clone());
        Ok(Sender::Http2(sender))
    }

    /// Returns `sender` to the pool, its current exchange done (the response
    /// body read to its end). The connection may still be finishing that
    /// exchange for an instant: [`BackendPool::take`] passes over it until it
    /// is ready, and drops it if it closes instead. With reuse off it is
    /// dropped.
    pub fn give_back(&self, sender: Sender) {
        // The HTTP/2 connection is shared, never taken out.
        if self.idle_timeout.is_zero() || matches!(sender, Sender::Http2(_)) {
            return;
        }
        self.put(sender);
    }

    fn put(&self, sender: Sender) {
        let now = Instant::now();
        let mut idle = self.lock();
        self.drop_expired(&mut idle, now);
        if idle.len() >= MAX_IDLE {
            idle.retain(|e| !e.sender.is_closed());
        }
        if idle.len() < MAX_IDLE {
            idle.push(Idle { sender, since: now });
        }
    }

    /// Closes connections idle for longer than the idle timeout (called
    /// periodically, so an idle pool does not hold connections open).
    pub fn reap(&self) {
        let now = Instant::now();
        self.lock()
            .retain(|e| now.duration_since(e.since) < self.idle_timeout && !e.sender.is_closed());
    }

    /// Sends `req` on `sender` — or, when that connection turns out to have been
    /// closed by the backend before the request was written (so nothing was
    /// sent), on a new one (connected within `connect_timeout`). A new connection
    /// is used from the start when `sender` is `None`. The caller gives the
    /// returned sender back ([`BackendPool::give_back`]) unless the exchange
    /// upgraded.
    pub async fn send(
        &self,
        sender: Option<Sender>,
        req: Request<Body>,
        connect_timeout: Duration,
    ) -> Result<Sent, SendError> {
        // A TLS backend that chose HTTP/2 gets a protocol switch on a
        // connection of its own that offers HTTP/1.1 alone.
        let switching = self.tls.is_some() && switches_protocols(&req);
        let sender = sender.filter(|s| !(switching && matches!(s, Sender::Http2(_))));
        let req = match sender {
            Some(mut sender) => match sender.try_send(req).await {
                Ok(response) => {
                    return Ok(Sent {
                        sender,
                        response,
                        on_given: true,
                    });
                }
                Err(mut e) => match e.take_message() {
                    Some(req) => req,
                    None => return Err(sender.failed(e.into_error())),
                },
            },
            None => req,
        };
        let offer = if switching {
            Offer::Http1
        } else {
            Offer::Service
        };
        let mut sender = self
            .connect_offering(connect_timeout, offer)
            .await
            .map_err(SendError::Connect)?;
        let response = match sender.try_send(req).await {
            Ok(response) => response,
            Err(e) => return Err(sender.failed(e.into_error())),
        };
        Ok(Sent {
            sender,
            response,
            on_given: false,
        })
    }

    /// Connections idle in the pool now.
    pub fn idle_count(&self) -> usize {
        self.lock().len()
    }
}

/// An HTTP/1.1 connection over `io`, its task driving upgrades too.
async fn handshake_h1<IO>(io: IO, refused: Option<Refused>) -> std::io::Result<Sender>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .max_buf_size(MAX_HEADER_BYTES.max(8192))
        .handshake::<_, Body>(TokioIo::new(io))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(Sender::Http1(sender, refused))
}

/// A request sent by [`BackendPool::send`], with its response head.
#[derive(Debug)]
pub struct Sent {
    /// The connection that carried it.
    pub sender: Sender,
    /// The response head (its body streams on).
    pub response: Response<Incoming>,
    /// Whether the connection given to `send` carried it (rather than a new one).
    pub on_given: bool,
}

/// Why [`BackendPool::send`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No new connection could be made to the backend.
    #[error("backend refused: {0}")]
    Connect(std::io::Error),
    /// The exchange failed.
    #[error("the backend failed the request: {0}")]
    Http(hyper::Error),
    /// The backend's TLS refused this node's client certificate (or its
    /// lack of one) with this alert, before it read the request.
    #[error(
        "the backend refused this node's TLS client certificate (alert {0}): check the service's tls_cert and tls_key"
    )]
    CertificateRefused(&'static str),
}

impl SendError {
    /// Whether the failure was the request body's own (the client went away
    /// mid-upload) rather than the backend's.
    pub fn is_user(&self) -> bool {
        matches!(self, SendError::Http(e) if e.is_user())
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::BodyExt;
    use hyper::server::conn::http1 as server;
    use tokio::net::TcpListener;

    use super::*;
    use crate::proxy::body::full;

    /// A keep-alive HTTP/1.1 backend on loopback answering `body` to all.
    async fn backend(body: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let answer = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, Infallible>(Response::new(full(Bytes::from_static(body))))
                });
                tokio::spawn(server::Builder::new().serve_connection(TokioIo::new(stream), answer));
            }
        });
        addr
    }

    fn get() -> Request<Body> {
        Request::get("/")
            .header(HOST, "b")
            .body(full(Bytes::new()))
            .unwrap()
    }

    /// Takes an idle connection, letting the runtime run in between (bounded).
    async fn take_soon(pool: &BackendPool) -> Option<Sender> {
        for _ in 0..100 {
            if let Some(sender) = pool.take() {
                return Some(sender);
            }
            tokio::task::yield_now().await;
        }
        None
    }

    #[tokio::test]
    async fn a_connection_given_back_right_after_its_body_serves_the_next_request() {
        let pool = BackendPool::new(backend(b"hello").await, Duration::from_secs(30));
        let sent = pool
            .send(None, get(), Duration::from_secs(5))
            .await
            .unwrap();
        let body = sent
            .response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body, "hello");
        // Given back at once, perhaps before its connection has finished the
        // exchange: kept, and taken once ready.
        pool.give_back(sent.sender);
        assert_eq!(pool.idle_count(), 1);
        let sender = take_soon(&pool).await.expect("the connection is reused");
        let again = pool
            .send(Some(sender), get(), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(
            again.on_given,
            "the second request went on the pooled connection"
        );
    }

    #[tokio::test]
    async fn a_connection_whose_body_was_abandoned_is_never_taken() {
        // Far more than hyper buffers: the exchange cannot end unread.
        static BIG: [u8; 4 << 20] = [b'x'; 4 << 20];
        let pool = BackendPool::new(backend(&BIG).await, Duration::from_secs(30));
        let sent = pool
            .send(None, get(), Duration::from_secs(5))
            .await
            .unwrap();
        pool.give_back(sent.sender);
        assert!(
            take_soon(&pool).await.is_none(),
            "a connection still in its exchange is passed over"
        );
        drop(sent.response);
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(
            pool.take().is_none(),
            "a connection closed mid-body is dropped"
        );
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn connections_unused_for_the_idle_timeout_are_dropped_oldest_first() {
        let pool = BackendPool::new(backend(b"hello").await, Duration::from_secs(5));
        let mut open = Vec::new();
        for _ in 0..2 {
            let sent = pool
                .send(None, get(), Duration::from_secs(5))
                .await
                .unwrap();
            sent.response.into_body().collect().await.unwrap();
            open.push(sent.sender);
        }
        let newer = open.pop().unwrap();
        pool.give_back(open.pop().unwrap());
        tokio::time::advance(Duration::from_secs(3)).await;
        pool.give_back(newer);
        assert_eq!(pool.idle_count(), 2);
        // The first has been idle 6 s, the second 3 s.
        tokio::time::advance(Duration::from_secs(3)).await;
        let taken = take_soon(&pool)
            .await
            .expect("the newer one is still fresh");
        assert_eq!(pool.idle_count(), 0, "the expired one was dropped");
        pool.give_back(taken);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(pool.take().is_none(), "past its timeout too");
        assert_eq!(pool.idle_count(), 0);
    }
}
