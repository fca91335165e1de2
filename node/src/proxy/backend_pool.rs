//! Keep-alive HTTP/1.1 connections from this node to one local HTTP backend,
//! reused across tunnelled requests.
//!
//! Every HTTP request crosses the mesh on its own QUIC stream, but the serving
//! node need not open a TCP connection to its backend for each of them: a fresh
//! connection per request costs a handshake, a close and a TIME-WAIT entry, and at
//! a few thousand requests a second the kernel's port search dominates the
//! node's CPU. So a connection whose response has been read completely goes back
//! to this pool, and the next request takes it (newest first, so idle ones age
//! out). A connection unused for the service's `http_idle_timeout` is closed,
//! before the backend's own keep-alive timeout would close it under a request.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::{Builder, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::body::{Body, MAX_HEADER_BYTES};

/// Most idle connections kept per backend; beyond, finished ones are closed.
pub const MAX_IDLE: usize = 256;

/// A request sender on one backend connection.
pub type Sender = SendRequest<Body>;

#[derive(Debug)]
struct Idle {
    sender: Sender,
    since: Instant,
}

/// The idle keep-alive connections to one backend.
#[derive(Debug)]
pub struct BackendPool {
    addr: SocketAddr,
    idle_timeout: Duration,
    idle: Mutex<Vec<Idle>>,
}

impl BackendPool {
    /// A pool for the backend at `addr`; `idle_timeout` zero disables reuse.
    pub fn new(addr: SocketAddr, idle_timeout: Duration) -> Self {
        Self {
            addr,
            idle_timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle connection ready for a request, if there is one. Connections the
    /// backend closed, or unused for longer than the idle timeout, are dropped.
    pub fn take(&self) -> Option<Sender> {
        let now = Instant::now();
        let mut idle = self.lock();
        while let Some(entry) = idle.pop() {
            if entry.sender.is_ready() && now.duration_since(entry.since) < self.idle_timeout {
                return Some(entry.sender);
            }
        }
        None
    }

    /// Opens a new connection within `timeout`. The connection's task supports
    /// protocol upgrades (WebSocket): an upgraded connection leaves HTTP and
    /// never comes back to the pool.
    pub async fn connect(&self, timeout: Duration) -> std::io::Result<Sender> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("did not accept within {timeout:?}"),
                )
            })??;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = Builder::new()
            .max_buf_size(MAX_HEADER_BYTES.max(8192))
            .handshake::<_, Body>(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }

    /// Returns `sender` to the pool once its current exchange has completed (the
    /// response body read to its end); if the connection closes instead, or reuse
    /// is off, it is dropped.
    pub fn give_back(self: &Arc<Self>, mut sender: Sender) {
        if self.idle_timeout.is_zero() {
            return;
        }
        let pool = self.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                pool.put(sender);
            }
        });
    }

    fn put(&self, sender: Sender) {
        let now = Instant::now();
        let mut idle = self.lock();
        idle.retain(|e| now.duration_since(e.since) < self.idle_timeout && !e.sender.is_closed());
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
        let req = match sender {
            Some(mut sender) => match sender.try_send_request(req).await {
                Ok(response) => {
                    return Ok(Sent {
                        sender,
                        response,
                        on_given: true,
                    });
                }
                Err(mut e) => match e.take_message() {
                    Some(req) => req,
                    None => return Err(SendError::Http(e.into_error())),
                },
            },
            None => req,
        };
        let mut sender = self
            .connect(connect_timeout)
            .await
            .map_err(SendError::Connect)?;
        let response = sender.send_request(req).await.map_err(SendError::Http)?;
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
}

impl SendError {
    /// Whether the failure was the request body's own (the client went away
    /// mid-upload) rather than the backend's.
    pub fn is_user(&self) -> bool {
        matches!(self, SendError::Http(e) if e.is_user())
    }
}
