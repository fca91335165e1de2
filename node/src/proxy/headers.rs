//! What an HTTP proxy does to a message's head, as plain functions: the request
//! head sent upstream (origin-form target, `Host`, hop-by-hop headers removed per
//! RFC 9110 §7.6.1, `x-request-id`, `x-forwarded-*` on ingress, the route's header
//! operations), the response head sent back, request ids, the session cookie, and
//! the checks a request target must pass before it is routed.

use std::net::SocketAddr;

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Request, Uri, Version};
use mesh_proto::lb;
use mesh_proto::route::{HeaderOps, cookie_value};
use mesh_proto::tunnel::RequestId;

/// Headers that concern one connection only (RFC 9110 §7.6.1), never forwarded.
/// `Proxy-Authorization` is also dropped: it is meant for a proxy, and Shoal
/// authenticates none, so it must not leak to a backend. (`Trailer` is end to end
/// and kept: it announces the trailer fields.)
pub const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

/// `x-request-id` (names made once: a name given as a string is parsed and
/// checked on every use).
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `x-forwarded-for`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `x-forwarded-proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Whether `name` is one of [`HOP_BY_HOP`] (compared as text: a match on
/// lengths first, where comparing `HeaderName`s would look at each of seven).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authorization"
    )
}

/// Longest client-supplied `x-request-id` kept as is.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The request id of a request: the client's `x-request-id` if it sent a usable
/// one (visible ASCII, at most [`MAX_REQUEST_ID_LEN`] bytes), otherwise a fresh
/// one from `random`. Returns the text (logged, forwarded) and the id carried in
/// the tunnel header (derived from the text when the client chose it).
pub fn request_id(headers: &HeaderMap, mut random: impl FnMut() -> u64) -> (String, RequestId) {
    let given = headers
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= MAX_REQUEST_ID_LEN
                && v.bytes().all(|b| b.is_ascii_graphic())
        });
    match given {
        Some(text) => {
            let hi = lb::hash_key(text.as_bytes());
            let lo = lb::hash_key(&[text.as_bytes(), b"\0shoal"].concat());
            (
                text.to_string(),
                RequestId((u128::from(hi) << 64) | u128::from(lo)),
            )
        }
        None => {
            let id = RequestId((u128::from(random()) << 64) | u128::from(random()));
            (id.to_string(), id)
        }
    }
}

/// The authority a request is for: the URI's (HTTP/2, absolute-form) or `Host`.
pub fn authority(parts: &Parts) -> String {
    parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// Whether the request asks to switch protocols (`Connection: upgrade` with
/// `Upgrade`, as WebSocket does) or to open a tunnel (`CONNECT`).
pub fn is_upgrade(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::CONNECT
        || (headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade"))
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// A request path made safe to route by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutablePath {
    /// The normalised path, sent to the backend: percent-escapes of unreserved
    /// characters decoded (`%61` → `a`), other escapes upper-cased, runs of `/`
    /// merged. Empty for `CONNECT` (its target is an authority, left as it is).
    pub path: String,
    /// What route rules match against: `path` without `;parameters` in its
    /// segments (`/admin;x=1/a` → `/admin/a`), as servlet containers read it.
    pub match_path: String,
}

/// The path to route by, or why the request target is refused. The path is
/// normalised (RFC 3986 §6.2.2) so that spellings of one path match the same
/// rule — `/%61dmin` and `//admin` are `/admin` — and what cannot be normalised
/// safely is refused: dot segments (`/a/../b`, also percent-encoded), encoded
/// `/` or `\`, a literal `\`, an encoded NUL. A proxy and a backend that read
/// those differently would let `/public/../admin` match a `/public` rule and
/// reach `/admin`.
pub fn routable_path(parts: &Parts) -> Result<RoutablePath, &'static str> {
    if parts.method == Method::CONNECT {
        // An authority (`host:port`), not a path: nothing to normalise or send on.
        return Ok(RoutablePath {
            path: String::new(),
            match_path: "/".into(),
        });
    }
    let path = parts.uri.path();
    if path == "*" {
        return Ok(RoutablePath {
            path: "*".into(),
            match_path: "/".into(),
        });
    }
    if !path.starts_with('/') {
        return Err("the request target must be a path starting with '/'");
    }
    let path = normalize_path(path)?;
    if path
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return Err("the path contains '.' or '..' segments");
    }
    let match_path = if path.contains(';') {
        // What a servlet container would read: each segment without its
        // parameters. `/p/..;/admin` is `/p/../admin` there and `/;/admin` is
        // `//admin`, so a segment that is only parameters, or a dot segment with
        // them, is refused like the plain dot segments above.
        let segments: Vec<&str> = path
            .split('/')
            .map(|segment| segment.split(';').next().unwrap_or(""))
            .collect();
        let bare = path.split('/').zip(&segments).skip(1);
        for (segment, name) in bare {
            if segment.contains(';') && (name.is_empty() || *name == "." || *name == "..") {
                return Err("the path has a '.', '..' or empty segment with ';' parameters");
            }
        }
        segments.join("/")
    } else {
        path.clone()
    };
    Ok(RoutablePath { path, match_path })
}

fn normalize_path(path: &str) -> Result<String, &'static str> {
    const BAD_ESCAPE: &str = "the path has a malformed percent-escape";
    let bytes = path.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err("the path contains a backslash"),
            b'%' => {
                let hex = path.get(i + 1..i + 3).ok_or(BAD_ESCAPE)?;
                if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(BAD_ESCAPE);
                }
                let v = u8::from_str_radix(hex, 16).map_err(|_| BAD_ESCAPE)?;
                match v {
                    b'/' | b'\\' => return Err("the path contains an encoded '/' or '\\'"),
                    0 => return Err("the path contains an encoded NUL"),
                    c if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') => {
                        out.push(c);
                    }
                    _ => {
                        out.push(b'%');
                        out.extend_from_slice(hex.to_ascii_uppercase().as_bytes());
                    }
                }
                i += 3;
            }
            b'/' if out.last() == Some(&b'/') => i += 1,
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    // Only ASCII was added to what was a valid string.
    String::from_utf8(out).map_err(|_| BAD_ESCAPE)
}

/// Removes hop-by-hop headers and those the `Connection` header names. With
/// `keep_upgrade`, `Upgrade` is kept and `Connection: upgrade` set (a protocol
/// switch is negotiated hop by hop but must reach the backend). `TE: trailers` is
/// kept: it says the client accepts trailers, which the backend needs to know.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the head, comparing names (a lookup by name hashes it),
    // and nothing allocated for a head with no hop-by-hop header.
    let mut named: Vec<&str> = Vec::new();
    let mut trailers = false;
    for (k, v) in headers.iter() {
        // (A value is checked as text only for the two names read here.)
        if k == header::CONNECTION
            && let Ok(v) = v.to_str()
        {
            named.extend(v.split(',').map(str::trim).filter(|t| !t.is_empty()));
        } else if k == header::TE
            && let Ok(v) = v.to_str()
        {
            trailers |= v
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
        }
    }
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            (is_hop_by_hop(k) || named.iter().any(|t| t.eq_ignore_ascii_case(k.as_str())))
                && !(keep_upgrade && *k == header::UPGRADE)
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Applies a route's header operations: removals first, then additions (which
/// replace any existing value). Validation already refused names and values that
/// are not valid HTTP.
pub fn apply_ops(headers: &mut HeaderMap, ops: &HeaderOps) {
    for name in &ops.remove {
        headers.remove(name.as_str());
    }
    for (name, value) in &ops.add {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(n, v);
        }
    }
}

/// Who sent a request and how, for the `x-forwarded-*` headers of ingress.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    /// The client's address.
    pub addr: SocketAddr,
    /// Whether it came over TLS.
    pub tls: bool,
}

/// The head of the request sent upstream (always HTTP/1.1 over the tunnel).
#[derive(Debug, Clone)]
pub struct UpstreamHead {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl UpstreamHead {
    /// Builds the upstream head of a client request. `ingress` adds
    /// `x-forwarded-for` / `x-forwarded-proto`; `ops` are the route's request
    /// header operations.
    pub fn new(
        parts: &Parts,
        authority: &str,
        request_id: &str,
        client: Option<Client>,
        upgrade: bool,
        ops: Option<&HeaderOps>,
    ) -> UpstreamHead {
        let mut headers = parts.headers.clone();
        strip_hop_by_hop(&mut headers, upgrade && parts.method != Method::CONNECT);
        // HTTP/2 may split cookies over several fields; HTTP/1.1 wants one.
        if parts.version == Version::HTTP_2 {
            let crumbs: Vec<String> = headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok().map(str::to_string))
                .collect();
            if crumbs.len() > 1
                && let Ok(v) = HeaderValue::from_str(&crumbs.join("; "))
            {
                headers.insert(header::COOKIE, v);
            }
        }
        if let Ok(h) = HeaderValue::from_str(authority) {
            headers.insert(header::HOST, h);
        }
        if let Ok(v) = HeaderValue::from_str(request_id) {
            headers.insert(X_REQUEST_ID, v);
        }
        if let Some(client) = client {
            let ip = client.addr.ip().to_canonical().to_string();
            let forwarded = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
                Some(prior) => format!("{prior}, {ip}"),
                None => ip,
            };
            if let Ok(v) = HeaderValue::from_str(&forwarded) {
                headers.insert(X_FORWARDED_FOR, v);
            }
            headers.insert(
                X_FORWARDED_PROTO,
                HeaderValue::from_static(if client.tls { "https" } else { "http" }),
            );
        }
        if let Some(ops) = ops {
            apply_ops(&mut headers, ops);
        }
        let uri = if parts.method == Method::CONNECT {
            parts.uri.clone()
        } else {
            parts
                .uri
                .path_and_query()
                .map(|pq| Uri::from(pq.clone()))
                .unwrap_or_else(|| Uri::from_static("/"))
        };
        UpstreamHead {
            method: parts.method.clone(),
            uri,
            headers,
        }
    }

    /// A request with this head and `body`.
    pub fn request<B>(&self, body: B) -> Request<B> {
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = self.headers.clone();
        request
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The target: origin-form, or the authority for `CONNECT`.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }
}

/// The value of cookie `name` in the request's `Cookie` fields.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| cookie_value(v, name))
}

/// The opaque session-cookie value naming an endpoint: a hash of route, service
/// and node — the same on every node, so a client keeps its backend when it comes
/// back through another listener, and no address is revealed.
pub fn session_token(route: &str, service: &str, node: &str) -> String {
    format!(
        "{:016x}",
        lb::hash_key(format!("shoal-session\0{route}\0{service}\0{node}").as_bytes())
    )
}

/// The `Set-Cookie` value pinning a client to `token`.
pub fn set_cookie(name: &str, token: &str, ttl_s: Option<u64>, secure: bool) -> String {
    let mut c = format!("{name}={token}; Path=/; HttpOnly; SameSite=Lax");
    if let Some(ttl) = ttl_s {
        c.push_str(&format!("; Max-Age={ttl}"));
    }
    if secure {
        c.push_str("; Secure");
    }
    c
}

/// Prometheus status class of a status code.
pub fn status_class(status: hyper::StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The request's `Content-Length`, if it declared one.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)], version: Version) -> Parts {
        let mut b = Request::builder().method(method).uri(uri).version(version);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_are_removed() {
        for name in HOP_BY_HOP {
            assert!(is_hop_by_hop(&name), "{name}");
        }
        for name in [
            header::HOST,
            header::TRAILER,
            X_REQUEST_ID,
            header::CONTENT_LENGTH,
        ] {
            assert!(!is_hop_by_hop(&name), "{name}");
        }
        let p = parts(
            "GET",
            "/a?b=1",
            &[
                ("host", "shop"),
                ("connection", "keep-alive, x-secret"),
                ("keep-alive", "timeout=5"),
                ("x-secret", "1"),
                ("transfer-encoding", "chunked"),
                ("te", "trailers, deflate"),
                ("proxy-authorization", "Basic x"),
                ("x-kept", "yes"),
            ],
            Version::HTTP_11,
        );
        let head = UpstreamHead::new(&p, "shop", "rid", None, false, None);
        let h = head.headers();
        for gone in [
            "connection",
            "keep-alive",
            "x-secret",
            "transfer-encoding",
            "proxy-authorization",
        ] {
            assert!(!h.contains_key(gone), "{gone} was forwarded");
        }
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["x-kept"], "yes");
        assert_eq!(h["x-request-id"], "rid");
        assert_eq!(head.request(()).uri(), "/a?b=1");
    }

    #[test]
    fn upgrades_keep_upgrade_and_connection() {
        let p = parts(
            "GET",
            "/ws",
            &[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-key", "k"),
            ],
            Version::HTTP_11,
        );
        assert!(is_upgrade(&p.method, &p.headers));
        let head = UpstreamHead::new(&p, "h", "r", None, true, None);
        assert_eq!(head.headers()["upgrade"], "websocket");
        assert_eq!(head.headers()["connection"], "upgrade");
    }

    #[test]
    fn http2_requests_become_origin_form_with_host_and_one_cookie() {
        let p = parts(
            "GET",
            "https://shop.example:8443/cart?x=1",
            &[("cookie", "a=1"), ("cookie", "b=2")],
            Version::HTTP_2,
        );
        assert_eq!(authority(&p), "shop.example:8443");
        let head = UpstreamHead::new(&p, &authority(&p), "r", None, false, None);
        let req = head.request(());
        assert_eq!(req.uri(), "/cart?x=1");
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()["host"], "shop.example:8443");
        assert_eq!(req.headers()["cookie"], "a=1; b=2");
        assert_eq!(cookie(req.headers(), "b"), Some("2"));
    }

    #[test]
    fn ingress_appends_forwarded_for_and_sets_proto() {
        let p = parts(
            "GET",
            "/",
            &[("x-forwarded-for", "203.0.113.7")],
            Version::HTTP_11,
        );
        let client = Client {
            addr: "127.0.0.9:5555".parse().unwrap(),
            tls: true,
        };
        let head = UpstreamHead::new(&p, "h", "r", Some(client), false, None);
        assert_eq!(head.headers()["x-forwarded-for"], "203.0.113.7, 127.0.0.9");
        assert_eq!(head.headers()["x-forwarded-proto"], "https");
    }

    #[test]
    fn route_header_operations_apply_after_the_proxy_headers() {
        let p = parts("GET", "/", &[("x-debug", "1")], Version::HTTP_11);
        let ops = HeaderOps {
            add: [("x-via".to_string(), "shoal".to_string())].into(),
            remove: vec!["x-debug".into()],
        };
        let head = UpstreamHead::new(&p, "h", "r", None, false, Some(&ops));
        assert_eq!(head.headers()["x-via"], "shoal");
        assert!(!head.headers().contains_key("x-debug"));
    }

    #[test]
    fn paths_are_normalised_and_ambiguous_ones_refused() {
        for bad in [
            "/a/../b",
            "/a/./b",
            "/..",
            "/a/%2e%2e/b",
            "/a/%2E/b",
            "/public/..%2Fadmin",
            "/public/%2fadmin",
            "/public/%5Cadmin",
            "/public/..\\admin",
            "/a%00b",
            "/a%zz",
            "/a%2",
            "/a%+F",
            "/public/..;/admin",
            "/public/.;x/admin",
            "/;/admin",
            "/a/;x=1/b",
        ] {
            let p = parts("GET", bad, &[], Version::HTTP_11);
            assert!(routable_path(&p).is_err(), "{bad} was accepted");
        }
        for (given, path, match_path) in [
            ("/", "/", "/"),
            ("/a/b", "/a/b", "/a/b"),
            ("/a..b/c", "/a..b/c", "/a..b/c"),
            ("/.well-known/x", "/.well-known/x", "/.well-known/x"),
            ("/%61dmin", "/admin", "/admin"),
            ("//admin///x", "/admin/x", "/admin/x"),
            ("/a%20b/%c3%a9", "/a%20b/%C3%A9", "/a%20b/%C3%A9"),
            ("/admin;x=1/secret", "/admin;x=1/secret", "/admin/secret"),
        ] {
            let p = parts("GET", given, &[], Version::HTTP_11);
            let r = routable_path(&p).unwrap();
            assert_eq!(
                (r.path.as_str(), r.match_path.as_str()),
                (path, match_path),
                "{given}"
            );
        }
        let p = parts("CONNECT", "db.internal:5432", &[], Version::HTTP_11);
        assert_eq!(routable_path(&p).unwrap().match_path, "/");
    }

    #[test]
    fn request_ids_are_kept_or_made() {
        let mut h = HeaderMap::new();
        let (text, id) = request_id(&h, || 0xab);
        assert_eq!(text.len(), 32);
        assert_eq!(text, id.to_string());
        h.insert("x-request-id", HeaderValue::from_static("client-chosen-1"));
        let (text, id1) = request_id(&h, || 0);
        assert_eq!(text, "client-chosen-1");
        let (_, id2) = request_id(&h, || 1);
        assert_eq!(id1, id2, "the same client id maps to the same tunnel id");
        h.insert(
            "x-request-id",
            HeaderValue::from_str(&"x".repeat(200)).unwrap(),
        );
        assert_eq!(
            request_id(&h, || 7).0.len(),
            32,
            "an oversize id is replaced"
        );
    }

    #[test]
    fn session_tokens_are_opaque_and_stable() {
        let t = session_token("shop", "cart", "node-1");
        assert_eq!(t, session_token("shop", "cart", "node-1"));
        assert_ne!(t, session_token("shop", "cart", "node-2"));
        assert!(!t.contains("node"));
        assert_eq!(
            set_cookie("sid", &t, Some(60), true),
            format!("sid={t}; Path=/; HttpOnly; SameSite=Lax; Max-Age=60; Secure")
        );
    }
}
