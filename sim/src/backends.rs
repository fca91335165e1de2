//! Demo backends: the services the simulated mesh hosts. Each answers with the
//! name of the node it runs on, so the traffic generator knows who served a
//! request. A backend can be made to fail: the TCP one stops listening (its
//! health check and its requests fail), the HTTP one answers 500.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::scenario::BackendKind;

/// A running demo backend.
#[derive(Debug)]
pub struct Backend {
    kind: BackendKind,
    node: String,
    addr: SocketAddr,
    failing: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
}

impl Backend {
    /// Starts a backend for `node` on a free loopback port.
    pub async fn start(kind: BackendKind, node: &str) -> std::io::Result<Backend> {
        let listener = shoal_node::proxy::listen(([127, 0, 0, 1], 0).into())?;
        let addr = listener.local_addr()?;
        let mut b = Backend {
            kind,
            node: node.to_string(),
            addr,
            failing: Arc::default(),
            task: None,
        };
        b.serve(listener);
        Ok(b)
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn serve(&mut self, listener: TcpListener) {
        let node = self.node.clone();
        let failing = self.failing.clone();
        let kind = self.kind;
        self.task = Some(tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let node = node.clone();
                let failing = failing.clone();
                tokio::spawn(async move {
                    match kind {
                        BackendKind::Echo => echo(stream, &node).await,
                        BackendKind::Http => http(stream, node, failing).await,
                    }
                });
            }
        }));
    }

    /// Makes the backend fail (or recover).
    pub async fn set_healthy(&mut self, healthy: bool) -> std::io::Result<()> {
        self.failing.store(!healthy, Ordering::Relaxed);
        if self.kind == BackendKind::Echo {
            if healthy && self.task.is_none() {
                let listener = shoal_node::proxy::listen(self.addr)?;
                self.serve(listener);
            } else if !healthy && let Some(t) = self.task.take() {
                t.abort();
                let _ = t.await;
            }
        }
        Ok(())
    }

    /// Stops it (when its node is killed in processes mode it keeps running: a
    /// backend is a separate program).
    pub fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn echo(mut stream: tokio::net::TcpStream, node: &str) {
    let _ = stream.set_nodelay(true);
    if stream
        .write_all(format!("{node}\n").as_bytes())
        .await
        .is_err()
    {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = stream.shutdown().await;
}

async fn http(stream: tokio::net::TcpStream, node: String, failing: Arc<AtomicBool>) {
    let svc = hyper::service::service_fn(move |_req| {
        let fail = failing.load(Ordering::Relaxed);
        let body = format!("{node}\n");
        async move {
            let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
            if fail {
                *resp.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
            }
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
        .await;
}
