//! The serving end of a tunnelled HTTP request: the stream (past its `ok`)
//! carries one HTTP/1.1 exchange, which this node relays to its backend over a
//! pooled keep-alive connection ([`BackendPool`]) instead of a fresh TCP
//! connection per request. The caller's listener has already routed the request
//! and shaped its headers; this end forwards head and body as they are, and
//! splices the two sides when the backend switches protocols (WebSocket).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use quinn::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::HEADER_TIMEOUT;
use super::backend_pool::{BackendPool, Sender};
use super::headers;
use super::http::{Body, BoxError, MAX_HEADER_BYTES, splice_upgraded};

/// Serves the one HTTP exchange on a tunnel stream with `sender`, a connection
/// to the backend taken from (and returned to) `pool`. Counts bytes read from the
/// stream as `upstream` and written to it as `downstream`.
pub async fn serve(
    pool: Arc<BackendPool>,
    sender: Sender,
    connect_timeout: Duration,
    send: SendStream,
    recv: RecvStream,
    counters: (Counter, Counter),
) -> Result<(), hyper::Error> {
    let io = Counting {
        inner: tokio::io::join(recv, send),
        read: counters.0,
        written: counters.1,
    };
    let sender = Arc::new(Mutex::new(Some(sender)));
    let service = hyper::service::service_fn(move |req| {
        let pool = pool.clone();
        let sender = sender.lock().unwrap_or_else(|e| e.into_inner()).take();
        async move { relay(pool, sender, req, connect_timeout).await }
    });
    hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await
}

async fn relay(
    pool: Arc<BackendPool>,
    sender: Option<Sender>,
    mut req: Request<Incoming>,
    connect_timeout: Duration,
) -> Result<Response<Body>, String> {
    let upgrade = headers::is_upgrade(req.method(), req.headers());
    let caller_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let req = req.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync());
    let fresh = |req| {
        let pool = pool.clone();
        async move {
            let mut sender = pool
                .connect(connect_timeout)
                .await
                .map_err(|e| format!("backend refused: {e}"))?;
            let response = sender
                .send_request(req)
                .await
                .map_err(|e| format!("the backend failed the request: {e}"))?;
            Ok::<_, String>((sender, response))
        }
    };
    let result = match sender {
        Some(mut sender) => match sender.try_send_request(req).await {
            Ok(response) => Ok((sender, response)),
            // The idle connection closed before the request went out on it (the
            // backend timed it out): nothing was sent, so a new one is safe.
            Err(mut e) => match e.take_message() {
                Some(req) => fresh(req).await,
                None => Err(format!(
                    "the backend failed the request: {}",
                    e.into_error()
                )),
            },
        },
        None => fresh(req).await,
    };
    // A backend that fails the request ends the stream without a response, as a
    // reset backend connection would: the caller's listener sees the failure as
    // such (its retry policy's `reset`, its outlier detection).
    let (sender, mut response) = result?;
    let switched = upgrade
        && (response.status() == StatusCode::SWITCHING_PROTOCOLS || response.status().is_success());
    if switched {
        if let Some(caller) = caller_upgrade {
            splice_upgraded(caller, hyper::upgrade::on(&mut response), "inbound");
        }
    } else {
        pool.give_back(sender);
    }
    Ok(response.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()))
}

/// An I/O object that adds the bytes it reads and writes to two counters.
struct Counting<T> {
    inner: T,
    read: Counter,
    written: Counter,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counting<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read.inc_by(n as u64);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counting<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.written.inc_by(n as u64);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.written.inc_by(n as u64);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
