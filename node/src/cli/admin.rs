//! The admin API client: one request, and a JSON GET.

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};

/// One request to the admin API; returns the status and the body.
pub(super) async fn admin_request(
    admin: SocketAddr,
    method: hyper::Method,
    path: &str,
    body: Vec<u8>,
) -> Result<(hyper::StatusCode, bytes::Bytes)> {
    use http_body_util::{BodyExt, Full};
    let stream = tokio::net::TcpStream::connect(admin)
        .await
        .with_context(|| {
            format!("cannot reach the admin API at {admin}; is the node running? (--admin)")
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<bytes::Bytes>>(
        hyper_util::rt::TokioIo::new(stream),
    )
    .await?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, admin.to_string());
    if !body.is_empty() {
        req = req.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let resp = sender
        .send_request(req.body(Full::new(bytes::Bytes::from(body)))?)
        .await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

pub(super) async fn get_json<T: serde::de::DeserializeOwned>(
    admin: SocketAddr,
    path: &str,
) -> Result<T> {
    let (status, body) = admin_request(admin, hyper::Method::GET, path, Vec::new()).await?;
    if !status.is_success() {
        bail!("GET {path} answered {status}");
    }
    Ok(serde_json::from_slice(&body)?)
}
