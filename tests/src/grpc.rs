//! A gRPC-shaped backend for the HTTP/2 tests: it speaks HTTP/2 only (prior
//! knowledge, as gRPC servers do without TLS; or over TLS, [`GrpcEcho::start_tls`]),
//! so a request that reaches it as HTTP/1.1 fails. `POST /echo.Echo/Unary` answers the request's whole body
//! (gRPC's length-prefixed messages, passed through as they are) and
//! `POST /echo.Echo/Stream` echoes each body frame as it arrives — both end
//! with the trailers `grpc-status: 0` and `x-echo-frames: N` (the non-empty
//! data frames received). It counts its
//! HTTP/2 connections.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// The running backend.
#[derive(Debug)]
pub struct GrpcEcho {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Reply = Response<http_body_util::combinators::BoxBody<Bytes, Infallible>>;

impl GrpcEcho {
    /// Starts it on a free loopback port.
    pub async fn start() -> GrpcEcho {
        GrpcEcho::start_with(None).await
    }

    /// Starts it serving TLS with `tls` (whose ALPN should offer `h2`, as
    /// gRPC servers' does).
    pub async fn start_tls(tls: Arc<rustls::ServerConfig>) -> GrpcEcho {
        GrpcEcho::start_with(Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> GrpcEcho {
        let listener = shoal_node::proxy::listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let conns = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let conns = conns.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => serve(s, &conns).await,
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(s).await {
                                serve(s, &conns).await;
                            }
                        }
                    }
                });
            }
        });
        GrpcEcho {
            addr,
            connections,
            task,
        }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// HTTP/2 connections it has served without a protocol error.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

/// Serves HTTP/2 over `io`, counting the connection unless it fails.
async fn serve<IO>(io: IO, connections: &AtomicUsize)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
        Ok::<_, Infallible>(echo(req))
    });
    let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), svc);
    // Counted once the connection proved to be HTTP/2.
    connections.fetch_add(1, Ordering::Relaxed);
    if served.await.is_err() {
        connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Echoes the body frame by frame, then the trailers.
fn echo(req: Request<Incoming>) -> Reply {
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Frame<Bytes>, Infallible>>();
    let streaming = req.uri().path() == "/echo.Echo/Stream";
    let mut body = req.into_body();
    tokio::spawn(async move {
        let mut frames = 0u32;
        let mut whole = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            // (An empty DATA frame may carry END_STREAM: not a message.)
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            frames += 1;
            if streaming {
                let _ = tx.unbounded_send(Ok(Frame::data(data)));
            } else {
                whole.extend_from_slice(&data);
            }
        }
        if !streaming {
            let _ = tx.unbounded_send(Ok(Frame::data(Bytes::from(whole))));
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("x-echo-frames", frames.to_string().parse().unwrap());
        let _ = tx.unbounded_send(Ok(Frame::trailers(trailers)));
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(rx)));
    *response.status_mut() = StatusCode::OK;
    response
        .headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    response
}

/// An HTTP/2 (prior knowledge) client connection to `addr`, as a gRPC client
/// opens to an HTTP listener; its connection task runs in the background.
pub async fn h2_client<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// `text` as one gRPC message: uncompressed, length-prefixed.
pub fn message(text: &str) -> Bytes {
    let mut m = vec![0u8];
    m.extend_from_slice(&(text.len() as u32).to_be_bytes());
    m.extend_from_slice(text.as_bytes());
    Bytes::from(m)
}
