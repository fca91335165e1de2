//! What the admin API lets in: at most `node.admin_max_connections` open
//! connections (the next one is answered 503 and closed), request headers read
//! within `node.admin_header_timeout` (a slowloris client, or a keep-alive
//! connection idle that long, is closed), bodies read within the same time, and
//! only requests whose `Host` names this node — `localhost`, a loopback address,
//! or the configured admin address — so a web page cannot reach the API through
//! DNS rebinding. Every refusal is counted in `shoal_admin_refused_total{reason}`.

use std::net::{IpAddr, SocketAddr};

/// Reasons of `shoal_admin_refused_total`.
pub const REASONS: [&str; 4] = [
    "too_many_connections",
    "header_timeout",
    "body_timeout",
    "bad_host",
];

/// What a connection over the cap is told before it is closed.
pub const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: 53\r\n\r\ntoo many admin API connections open; try again later\n";

/// Whether a request with this `Host` header may be served by the admin API
/// bound to `admin`: the host (its port aside) is `localhost`, a loopback IP
/// address, or `admin`'s IP. A missing or unparsable header is refused.
pub fn host_allowed(host: Option<&str>, admin: SocketAddr) -> bool {
    let Some(host) = host.map(str::trim).filter(|h| !h.is_empty()) else {
        return false;
    };
    let name = host_name(host);
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    name.parse::<IpAddr>()
        .is_ok_and(|ip| ip.is_loopback() || ip == admin.ip())
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
        ] {
            assert!(host_allowed(Some(ok), admin), "{ok}");
        }
        for refused in [
            "evil.example",
            "evil.example:7101",
            "localhost.evil.example",
            "10.0.0.5:7101",
            "[fd00::5]:7101",
            "",
            "   ",
        ] {
            assert!(!host_allowed(Some(refused), admin), "{refused}");
        }
        assert!(!host_allowed(None, admin));
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
