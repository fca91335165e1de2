//! The admin API client: where it is (`--admin`), one request, and a JSON GET.

use std::net::{SocketAddr, ToSocketAddrs};

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

/// `--admin`'s default (`node.admin`'s).
pub(crate) const DEFAULT_ADMIN_TEXT: &str = "127.0.0.1:7101";

/// Reads `--admin` (or `$SHOAL_ADMIN`): `IP:PORT`, `HOST:PORT` (resolved; an
/// IPv4 address first, as the admin API listens on 127.0.0.1 by default), or
/// either as an `http://` URL, with or without a trailing `/`.
pub(crate) fn parse_admin(text: &str) -> Result<SocketAddr, String> {
    let trimmed = text.trim();
    if trimmed.starts_with("https://") {
        return Err(format!(
            "{text:?}: the admin API speaks plain HTTP on loopback; use http://HOST:PORT or HOST:PORT"
        ));
    }
    let bare = trimmed
        .strip_prefix("http://")
        .unwrap_or(trimmed)
        .trim_end_matches('/');
    if let Ok(addr) = bare.parse() {
        return Ok(addr);
    }
    let addrs: Vec<SocketAddr> = bare
        .to_socket_addrs()
        .map_err(|e| format!("{text:?}: not HOST:PORT or http://HOST:PORT ({e})"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_address_is_read_in_every_form_an_operator_writes() {
        let want: SocketAddr = "127.0.0.1:7101".parse().unwrap();
        for text in [
            "127.0.0.1:7101",
            "http://127.0.0.1:7101",
            "http://127.0.0.1:7101/",
            "localhost:7101",
            "http://localhost:7101/",
            " 127.0.0.1:7101 ",
        ] {
            assert_eq!(parse_admin(text), Ok(want), "{text}");
        }
        assert_eq!(parse_admin("[::1]:7101"), Ok("[::1]:7101".parse().unwrap()));
        assert_eq!(
            parse_admin(DEFAULT_ADMIN_TEXT),
            Ok(shoal_node::config::DEFAULT_ADMIN),
            "the flag's default is node.admin's"
        );
        for bad in [
            "https://127.0.0.1:7101",
            "127.0.0.1",
            "no port",
            "localhost:http",
        ] {
            assert!(parse_admin(bad).is_err(), "{bad}");
        }
    }
}
