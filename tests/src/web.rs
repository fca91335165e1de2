//! An HTTP application for the HTTP tests, standing in for a service's backend:
//! it says which backend answered (`x-backend` header and in the body), echoes
//! what it received, answers any status on request, streams uploads and downloads
//! of any size without holding them, echoes WebSocket messages, and counts the
//! requests it served.
//!
//! Paths: `/status/NNN` answers NNN; `/upload` reads the body and answers its
//! length; `/download/N` streams N bytes; `/trailers` answers a body with
//! trailers; `/slow/MS` answers after MS
//! milliseconds; `/ws` is a WebSocket echo; `CONNECT host:port` opens a tunnel
//! that echoes what it gets, prefixed with `host:port:`; `/healthz` answers 200 (not counted);
//! anything else answers a JSON echo of the request (with its HTTP version).
//! [`WebApp::start_tls`] serves it over TLS, in HTTP/2 or HTTP/1.1 by ALPN. It also counts the TCP
//! connections that carried counted requests (keep-alive reuse shows there).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

type Body = BoxBody<Bytes, std::io::Error>;

/// A running application backend.
pub struct WebApp {
    name: String,
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl WebApp {
    /// Starts the app called `name` on a free loopback port.
    pub async fn start(name: &str) -> WebApp {
        WebApp::start_with(name, None).await
    }

    /// Starts it serving TLS with `tls`: HTTP/2 on a connection whose ALPN
    /// chose `h2`, HTTP/1.1 (with upgrades) otherwise.
    pub async fn start_tls(name: &str, tls: Arc<rustls::ServerConfig>) -> WebApp {
        WebApp::start_with(name, Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn start_with(name: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> WebApp {
        let listener = shoal_node::proxy::listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let connections = Arc::new(AtomicUsize::new(0));
        let conns = connections.clone();
        let who: Arc<str> = Arc::from(name);
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let who = who.clone();
                let counter = counter.clone();
                let conns = conns.clone();
                let seen = AtomicBool::new(false);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        if req.uri().path() != "/healthz" && !seen.swap(true, Ordering::Relaxed) {
                            conns.fetch_add(1, Ordering::Relaxed);
                        }
                        handle(who.clone(), counter.clone(), req)
                    });
                    let Some(acceptor) = tls else {
                        return serve_http1(s, svc).await;
                    };
                    let s = match acceptor.accept(s).into_fallible().await {
                        Ok(s) => s,
                        Err((_, s)) => return linger(s).await,
                    };
                    if s.get_ref().1.alpn_protocol() == Some(b"h2") {
                        let _ = hyper::server::conn::http2::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                    } else {
                        serve_http1(s, svc).await;
                    }
                });
            }
        });
        WebApp {
            name: name.to_string(),
            addr,
            requests,
            connections,
            task,
        }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Requests served so far (health checks not counted).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    /// TCP connections that carried at least one counted request.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for WebApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// HTTP/1.1 with upgrades (WebSocket, `CONNECT`) over `io`.
async fn serve_http1<IO, S>(io: IO, svc: S)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades()
        .await;
}

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

fn reply(who: &str, status: StatusCode, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert(
        "x-backend",
        who.parse().expect("backend names are header values"),
    );
    r
}

async fn handle(
    who: Arc<str>,
    counter: Arc<AtomicUsize>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        return Ok(reply(&who, StatusCode::OK, full("ok")));
    }
    counter.fetch_add(1, Ordering::Relaxed);
    let answer = if req.method() == hyper::Method::CONNECT {
        connect_tunnel(&who, req)
    } else if let Some(code) = path.strip_prefix("/status/") {
        status(&who, code)
    } else if let Some(ms) = path.strip_prefix("/slow/") {
        let ms = ms.parse::<u64>().unwrap_or(0);
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        reply(&who, StatusCode::OK, full(who.to_string()))
    } else if path == "/upload" {
        upload(&who, req).await
    } else if let Some(n) = path.strip_prefix("/download/") {
        let total = n.parse::<u64>().unwrap_or(0);
        reply(&who, StatusCode::OK, pattern_body(total))
    } else if path == "/trailers" {
        with_trailers(&who)
    } else if path == "/ws" {
        websocket(&who, req)
    } else {
        echo(&who, &path, &req)
    };
    Ok(answer)
}

/// A tunnel to "anywhere": answers 200, then echoes what comes through,
/// prefixed with the authority it was asked for.
fn connect_tunnel(who: &str, mut req: Request<Incoming>) -> Response<Body> {
    let target = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        if let Ok(upgraded) = upgrade.await {
            let mut io = TokioIo::new(upgraded);
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut out = format!("{target}:").into_bytes();
                out.extend_from_slice(&buf[..n]);
                if io.write_all(&out).await.is_err() {
                    break;
                }
            }
        }
    });
    reply(who, StatusCode::OK, full(""))
}

/// The status `code` asks for (400 if it names none).
fn status(who: &str, code: &str) -> Response<Body> {
    let status = code
        .parse::<u16>()
        .ok()
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::BAD_REQUEST);
    reply(who, status, full(who.to_string()))
}

/// Reads the body to its end and answers its length.
async fn upload(who: &str, req: Request<Incoming>) -> Response<Body> {
    let mut body = req.into_body();
    let mut n: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(e) => return reply(who, StatusCode::BAD_REQUEST, full(format!("body: {e}"))),
        }
    }
    reply(who, StatusCode::OK, full(n.to_string()))
}

/// A chunked body ending in trailers (as gRPC does).
fn with_trailers(who: &str) -> Response<Body> {
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("x-checksum", "abc123".parse().unwrap());
    let frames = vec![
        Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"part one, "))),
        Ok(Frame::data(Bytes::from_static(b"part two"))),
        Ok(Frame::trailers(trailers)),
    ];
    let body = BodyExt::boxed(StreamBody::new(futures::stream::iter(frames)));
    let mut r = reply(who, StatusCode::OK, body);
    r.headers_mut()
        .insert("trailer", "x-checksum".parse().unwrap());
    r
}

/// Switches to WebSocket and echoes every text and binary message.
fn websocket(who: &str, mut req: Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key") else {
        return reply(who, StatusCode::BAD_REQUEST, full("no key"));
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            let ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            let (mut tx, mut rx) = ws.split();
            while let Some(Ok(msg)) = rx.next().await {
                if (msg.is_text() || msg.is_binary()) && tx.send(msg).await.is_err() {
                    break;
                }
            }
        }
    });
    let mut r = reply(who, StatusCode::SWITCHING_PROTOCOLS, full(""));
    let h = r.headers_mut();
    h.insert("upgrade", "websocket".parse().unwrap());
    h.insert("connection", "upgrade".parse().unwrap());
    h.insert("sec-websocket-accept", accept.parse().unwrap());
    r
}

/// A JSON echo of the request: backend, method, version, path, query, headers.
fn echo(who: &str, path: &str, req: &Request<Incoming>) -> Response<Body> {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    let echo = serde_json::json!({
        "backend": who,
        "method": req.method().as_str(),
        "version": format!("{:?}", req.version()),
        "path": path,
        "query": req.uri().query(),
        "headers": headers,
    });
    reply(who, StatusCode::OK, full(echo.to_string()))
}

/// `total` bytes of a repeating pattern, produced 64 KiB at a time as the
/// receiver reads them (never held whole).
pub fn pattern_body(total: u64) -> BoxBody<Bytes, std::io::Error> {
    const CHUNK: u64 = 64 * 1024;
    let chunk = Bytes::from((0..CHUNK).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let stream = futures::stream::unfold(0u64, move |sent| {
        let chunk = chunk.clone();
        async move {
            if sent >= total {
                return None;
            }
            let n = CHUNK.min(total - sent);
            Some((
                Ok::<_, std::io::Error>(Frame::data(chunk.slice(..n as usize))),
                sent + n,
            ))
        }
    });
    BodyExt::boxed(StreamBody::new(stream))
}

/// Sends `n` text messages on `ws`, each echoed (by [`WebApp`]'s `/ws`)
/// before the next is sent.
pub async fn ws_round_trips<S>(ws: &mut WebSocketStream<S>, n: usize)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    for i in 0..n {
        let text = format!("message {i}");
        ws.send(tokio_tungstenite::tungstenite::Message::text(text.clone()))
            .await
            .unwrap();
        let echoed = ws.next().await.expect("an echo").unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
}

/// Reads what the client still sends after a failed TLS handshake, until it
/// closes (bounded), before closing: closing with its data unread would
/// reset the connection, and the reset can destroy the alert that told the
/// client why (a lingering close, as web servers make).
async fn linger(mut s: tokio::net::TcpStream) {
    let mut sink = tokio::io::sink();
    let drain = tokio::io::copy(&mut s, &mut sink);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
}
