//! What the admin API lets in: at most `node.admin_max_connections` open
//! connections (the next one is answered 503 and closed), request headers read
//! within `node.admin_header_timeout` (a slowloris client, or a keep-alive
//! connection idle that long, is closed), bodies read within the same time, and
//! only requests whose `Host` names this node — a loopback name, this machine's
//! host name, a loopback address, or the configured admin address — so a web
//! page cannot reach the API through DNS rebinding. Every refusal is counted in
//! `shoal_admin_refused_total{reason}`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reasons of `shoal_admin_refused_total`.
pub const REASONS: [&str; 4] = [
    "too_many_connections",
    "header_timeout",
    "body_timeout",
    "bad_host",
];

/// Connections over the cap being told [`OVER_CAPACITY`] at once; beyond
/// that, they are closed without an answer.
pub const MAX_REFUSING: usize = 16;
/// How long a connection over the cap is read from (and its bytes dropped)
/// after its answer, so closing it does not reset the answer away.
const LINGER: Duration = Duration::from_millis(500);

/// What a connection over the cap is told before it is closed.
pub const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: 53\r\n\r\ntoo many admin API connections open; try again later\n";

/// Answers a connection over the cap with [`OVER_CAPACITY`] and closes it:
/// the answer, then the end of what this side sends, then whatever the client
/// sent is read and dropped for a moment — closing a socket with unread bytes
/// resets the connection, and a client may then lose the answer.
pub async fn tell_over_capacity(mut stream: TcpStream) {
    let told = async {
        stream.write_all(OVER_CAPACITY).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(LINGER, told).await;
}

/// Names that resolve to loopback on every host (RFC 6761 `localhost` and its
/// subdomains; the names Debian's and Red Hat's `/etc/hosts` give loopback): a
/// page on another origin cannot make a browser send them to the attacker.
const LOOPBACK_NAMES: [&str; 4] = [
    "localhost",
    "localhost.localdomain",
    "ip6-localhost",
    "ip6-loopback",
];

/// Whether a request with this `Host` header may be served by the admin API
/// bound to `admin`: the host (its port aside) is a loopback name
/// ([`LOOPBACK_NAMES`], `*.localhost`), this machine's host name (`hostname`,
/// which `/etc/hosts` points at 127.0.1.1 on Debian), a loopback IP address, or
/// `admin`'s IP. A missing or unparsable header is refused.
pub fn host_allowed(host: Option<&str>, admin: SocketAddr, hostname: Option<&str>) -> bool {
    let Some(host) = host.map(str::trim).filter(|h| !h.is_empty()) else {
        return false;
    };
    let name = host_name(host).trim_end_matches('.').to_ascii_lowercase();
    if LOOPBACK_NAMES.contains(&name.as_str())
        || name.ends_with(".localhost")
        || hostname.is_some_and(|h| !h.is_empty() && h.eq_ignore_ascii_case(&name))
    {
        return true;
    }
    name.parse::<IpAddr>()
        .is_ok_and(|ip| ip.is_loopback() || ip == admin.ip())
}

/// This machine's host name (Linux), for [`host_allowed`].
pub fn this_hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_ascii_lowercase())
}

/// The host of a `Host` header value, without its port or IPv6 brackets.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(ip, _)| ip);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_and_the_configured_address_are_allowed() {
        let admin: SocketAddr = "127.0.0.5:7101".parse().unwrap();
        for ok in [
            "localhost",
            "LOCALHOST:7101",
            "127.0.0.1",
            "127.0.0.5:7101",
            "127.9.9.9:1",
            "[::1]:7101",
            "[::1]",
            "localhost.",
            "localhost.localdomain:7101",
            "ip6-localhost",
            "ip6-loopback",
            "api.localhost:7101",
            "web-7:7101",
            "WEB-7",
        ] {
            assert!(host_allowed(Some(ok), admin, Some("web-7")), "{ok}");
        }
        for refused in [
            "evil.example",
            "evil.example:7101",
            "localhost.evil.example",
            "localhostevil.example",
            "web-8",
            "10.0.0.5:7101",
            "[fd00::5]:7101",
            "",
            "   ",
        ] {
            assert!(
                !host_allowed(Some(refused), admin, Some("web-7")),
                "{refused}"
            );
        }
        assert!(!host_allowed(None, admin, None));
        assert!(!host_allowed(Some("web-7"), admin, None));
        assert!(!host_allowed(Some(""), admin, Some("")));
    }

    #[test]
    fn the_over_capacity_answer_is_a_complete_response() {
        let text = std::str::from_utf8(OVER_CAPACITY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), len);
        assert!(head.starts_with("HTTP/1.1 503 "));
    }
}
