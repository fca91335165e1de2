//! Route documents: what an operator writes to steer HTTP traffic, and the rules it
//! must follow. A [`RouteSpec`] says, for some hosts, which requests go to which
//! services: a list of [`Rule`]s, each with a [`Match`] on path prefix, headers and
//! method, weighted [`Backend`]s (a traffic split), a load-balancing policy, session
//! persistence, timeouts, a retry policy, header rewrites and an allow-list of
//! caller services. Its canonical JSON ([`RouteSpec::to_body`]) is the signed `body`
//! of a [`crate::gossip::RouteDocument`]; [`RouteSpec::parse_body`] reads it back and
//! [`RouteSpec::validate`] checks every rule, with errors that name the field
//! (`rules[2].backends[0].weight: 0 is out of range 1..=10000`).
//!
//! The other halves of routing live in the submodules: [`table`] picks the route and
//! rule for a request ([`RouteTable`]), and [`mod@merge`] decides, from every route
//! document gossip delivered, which one is in force for each name ([`merge()`]).
//!
//! Operators write TOML or JSON; both deserialize into these types (the node
//! converts TOML, this crate only reads and writes JSON). Field names are
//! `snake_case`, unknown fields are refused, and everything but `name`,
//! `issued_at_ms` and each rule's `backends` has a default. A complete document:
//!
//! ```
//! use mesh_proto::route::RouteSpec;
//!
//! let body = br#"{
//!   "name": "shop",
//!   "issued_at_ms": 1767225600000,
//!   "hosts": ["shop.example.org", "*.shop.example.org"],
//!   "rules": [
//!     {
//!       "match": { "path_prefix": "/api", "headers": { "x-canary": "1" }, "methods": ["GET"] },
//!       "backends": [{ "service": "api-canary" }]
//!     },
//!     {
//!       "match": { "path_prefix": "/api" },
//!       "backends": [{ "service": "api", "weight": 90 }, { "service": "api-v2", "weight": 10 }],
//!       "lb": "least_request",
//!       "timeout_ms": 5000,
//!       "per_try_timeout_ms": 1500,
//!       "retry": { "on": ["connect_failure", "5xx", "reset"], "attempts": 3 },
//!       "request_headers": { "add": { "x-via": "shoal" }, "remove": ["x-debug"] },
//!       "allow_services": ["web", "mobile-bff"]
//!     },
//!     {
//!       "backends": [{ "service": "storefront" }],
//!       "session": { "type": "cookie", "ttl_s": 3600 },
//!       "response_headers": { "add": { "strict-transport-security": "max-age=31536000" } }
//!     }
//!   ]
//! }"#;
//! let spec = RouteSpec::parse_body(body)?;
//! assert_eq!(spec.rules[1].backends[1].weight, 10);
//! assert_eq!(RouteSpec::parse_body(&spec.to_body())?, spec);
//! # Ok::<(), mesh_proto::route::RouteError>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::gossip::RouteDocument;
use crate::lb::Policy;
use crate::names::{NameError, validate_name};

pub mod merge;
pub mod table;

pub use merge::{Merged, Precedence, RejectReason, Rejected, Winner, check_document, merge};
pub use table::{RouteMatch, RouteTable};

/// Most hosts one route may list.
pub const MAX_HOSTS: usize = 32;
/// Most rules one route may have.
pub const MAX_RULES: usize = 64;
/// Most backends one rule may split traffic between.
pub const MAX_BACKENDS: usize = 16;
/// Smallest backend weight.
pub const MIN_WEIGHT: u32 = 1;
/// Largest backend weight.
pub const MAX_WEIGHT: u32 = 10_000;
/// Most header conditions one match may have.
pub const MAX_MATCH_HEADERS: usize = 16;
/// Most methods one match may list.
pub const MAX_METHODS: usize = 16;
/// Most headers one [`HeaderOps`] may add, and most it may remove.
pub const MAX_HEADER_OPS: usize = 16;
/// Most caller services one rule may allow.
pub const MAX_ALLOW_SERVICES: usize = 64;
/// Longest path prefix, in bytes.
pub const MAX_PATH_PREFIX_LEN: usize = 1024;
/// Longest header or cookie name, in bytes.
pub const MAX_HEADER_NAME_LEN: usize = 128;
/// Longest header value (matched or added), in bytes.
pub const MAX_HEADER_VALUE_LEN: usize = 1024;
/// Longest HTTP method name, in bytes.
pub const MAX_METHOD_LEN: usize = 32;
/// Longest timeout (one day), in milliseconds.
pub const MAX_TIMEOUT_MS: u64 = 24 * 3600 * 1000;
/// Longest session cookie lifetime (one year), in seconds.
pub const MAX_COOKIE_TTL_S: u64 = 366 * 24 * 3600;
/// Most tries (the first one included) a retry policy may allow.
pub const MAX_ATTEMPTS: u32 = 10;
/// The session cookie name when a [`Session::Cookie`] names none.
pub const DEFAULT_COOKIE_NAME: &str = "shoal-session";

/// Headers a route may not add (request or response): the hop-by-hop headers of
/// RFC 9110 §7.6.1, which describe one connection and which the proxy writes
/// itself, plus `content-length` and `host`, which the proxy owns because they
/// frame and address the message. Any `proxy-*` header is refused as well.
pub const NOT_ADDABLE_HEADERS: [&str; 8] = [
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
];

/// Methods that RFC 9110 §9.2.2 calls idempotent, the only ones retried unless a
/// retry policy says [`Retry::all_methods`].
pub const IDEMPOTENT_METHODS: [&str; 6] = ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"];

/// Whether `method` is idempotent (RFC 9110 §9.2.2): repeating it has the same
/// effect as sending it once, so a failed try may be retried. Methods are
/// case-sensitive: `get` is not `GET`.
pub fn is_idempotent(method: &str) -> bool {
    IDEMPOTENT_METHODS.contains(&method)
}

/// One route: rules for the requests to some hosts. The signed body of a route
/// document is its canonical JSON ([`RouteSpec::to_body`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// The route's name (a valid [name](crate::names)); must equal the name of the
    /// route document that carries it.
    pub name: String,
    /// When the operator issued this version, in milliseconds since the Unix epoch;
    /// set by the signing CLI and covered by the signature. Of two valid documents
    /// for one route, the one issued later wins (see [`merge()`]).
    pub issued_at_ms: u64,
    /// A signed tombstone: the route is deleted (`shoal route delete`). A winning
    /// tombstone removes the route and keeps beating every older version.
    #[serde(default)]
    pub deleted: bool,
    /// The authorities the route applies to, 1 to [`MAX_HOSTS`]: exact host names
    /// (`shop.example.org`), suffix wildcards (`*.example.org`: any host ending in
    /// `.example.org`, not `example.org` itself), or `*` for any host. Lowercase;
    /// ports are not part of a host. Default: `["*"]`.
    #[serde(default = "default_hosts")]
    pub hosts: Vec<String>,
    /// The rules, checked in order: the first whose [`Match`] matches handles the
    /// request. 1 to [`MAX_RULES`] (none for a tombstone).
    #[serde(default)]
    pub rules: Vec<Rule>,
}

fn default_hosts() -> Vec<String> {
    vec!["*".to_string()]
}

/// What a matching request gets: where it goes and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Which requests the rule takes. Default: every request.
    #[serde(default)]
    pub r#match: Match,
    /// Where the requests go: 1 to [`MAX_BACKENDS`] services, each request to one
    /// of them with a probability proportional to its weight
    /// ([`Rule::pick_backend`]).
    pub backends: Vec<Backend>,
    /// How an endpoint of the chosen service is picked. Default: `round_robin`, or
    /// `ring_hash` when [`Rule::session`] hashes a header or the source address
    /// (see [`Rule::policy`]).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "policy_serde"
    )]
    pub lb: Option<Policy>,
    /// Session persistence: keep a client's requests on one endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<Session>,
    /// Deadline for the whole request, retries included, in milliseconds
    /// (1 to [`MAX_TIMEOUT_MS`]). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Deadline for each try, in milliseconds (1 to [`MAX_TIMEOUT_MS`], and at most
    /// `timeout_ms`). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout_ms: Option<u64>,
    /// When failed tries are retried. Default: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Changes to the request headers before the request is sent on.
    #[serde(default)]
    pub request_headers: HeaderOps,
    /// Changes to the response headers before the response is returned.
    #[serde(default)]
    pub response_headers: HeaderOps,
    /// The caller services allowed to use the rule (each a valid name, at most
    /// [`MAX_ALLOW_SERVICES`]); empty allows any caller, including clients of an
    /// ingress listener, which have no service identity. See
    /// [`Rule::allows_caller`].
    #[serde(default)]
    pub allow_services: Vec<String>,
}

/// Which requests a [`Rule`] takes: all conditions must hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// The path must be this prefix, segment by segment: `/api` matches `/api`,
    /// `/api/` and `/api/orders`, not `/apix`; `/` matches every path. Starts with
    /// `/`, does not end with `/` (except `/` itself), has no query (`?`) or
    /// fragment (`#`); the query string of a request is not part of its path.
    /// Case-sensitive. Default: `/`.
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    /// Headers the request must carry with exactly these values (at most
    /// [`MAX_MATCH_HEADERS`]). Names are lowercase.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The request's method must be one of these (case-sensitive, so uppercase for
    /// the standard methods); empty means any method.
    #[serde(default)]
    pub methods: Vec<String>,
}

fn default_path_prefix() -> String {
    "/".to_string()
}

impl Default for Match {
    fn default() -> Self {
        Match {
            path_prefix: default_path_prefix(),
            headers: BTreeMap::new(),
            methods: Vec::new(),
        }
    }
}

/// A destination service and its share of the traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// The service (a valid name).
    pub service: String,
    /// Relative share of the rule's requests, [`MIN_WEIGHT`] to [`MAX_WEIGHT`].
    /// Default: 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// How a client's requests are kept on one endpoint.
///
/// In JSON, an object with a `type`: `{"type": "cookie", "name": "sid", "ttl_s":
/// 3600}`, `{"type": "header", "name": "x-session-id"}` or `{"type": "source_ip"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SessionRepr", into = "SessionRepr")]
pub enum Session {
    /// The proxy sets a cookie naming the endpoint it picked (opaquely) and sends
    /// later requests carrying it to that endpoint while it is healthy; the first
    /// pick follows [`Rule::policy`].
    Cookie {
        /// The cookie's name (an HTTP token). Default: [`DEFAULT_COOKIE_NAME`].
        name: String,
        /// The cookie's `Max-Age`, in seconds (1 to [`MAX_COOKIE_TTL_S`]); none
        /// makes it a browser-session cookie.
        ttl_s: Option<u64>,
    },
    /// Requests are placed on a consistent-hash ring by the value of a header the
    /// application sets (its own session id); requests without it are placed by
    /// source address.
    Header {
        /// The header's name, lowercase.
        name: String,
    },
    /// Requests are placed on a consistent-hash ring by the client's IP address.
    SourceIp,
}

impl Session {
    /// The JSON `type`: `cookie`, `header` or `source_ip`.
    pub fn kind(&self) -> &'static str {
        match self {
            Session::Cookie { .. } => "cookie",
            Session::Header { .. } => "header",
            Session::SourceIp => "source_ip",
        }
    }
}

/// The JSON shape of a [`Session`]: one flat object, so that unknown fields are
/// refused for every kind (serde's internally tagged enums do not refuse them for
/// unit variants) and a field of another kind is reported by name.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionRepr {
    #[serde(rename = "type")]
    kind: SessionKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ttl_s: Option<u64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum SessionKind {
    Cookie,
    Header,
    SourceIp,
}

impl TryFrom<SessionRepr> for Session {
    type Error = String;

    fn try_from(r: SessionRepr) -> Result<Self, Self::Error> {
        match (r.kind, r.name, r.ttl_s) {
            (SessionKind::Cookie, name, ttl_s) => Ok(Session::Cookie {
                name: name.unwrap_or_else(|| DEFAULT_COOKIE_NAME.to_string()),
                ttl_s,
            }),
            (SessionKind::Header, Some(name), None) => Ok(Session::Header { name }),
            (SessionKind::Header, None, _) => {
                Err("a \"header\" session needs the header's \"name\"".to_string())
            }
            (SessionKind::Header, Some(_), Some(_)) => {
                Err("\"ttl_s\" applies to \"cookie\" sessions only".to_string())
            }
            (SessionKind::SourceIp, None, None) => Ok(Session::SourceIp),
            (SessionKind::SourceIp, _, _) => {
                Err("a \"source_ip\" session takes no \"name\" or \"ttl_s\"".to_string())
            }
        }
    }
}

impl From<Session> for SessionRepr {
    fn from(s: Session) -> Self {
        match s {
            Session::Cookie { name, ttl_s } => SessionRepr {
                kind: SessionKind::Cookie,
                name: Some(name),
                ttl_s,
            },
            Session::Header { name } => SessionRepr {
                kind: SessionKind::Header,
                name: Some(name),
                ttl_s: None,
            },
            Session::SourceIp => SessionRepr {
                kind: SessionKind::SourceIp,
                name: None,
                ttl_s: None,
            },
        }
    }
}

/// When a failed try is tried again, on another endpoint where there is one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// The failures that are retried; at least one.
    pub on: Vec<RetryOn>,
    /// Most tries in all, the first one included: 1 to [`MAX_ATTEMPTS`].
    pub attempts: u32,
    /// Retry every method, not only the idempotent ones ([`is_idempotent`]).
    /// Connection failures are retried for every method regardless: the request
    /// never reached a backend. Default: false.
    #[serde(default)]
    pub all_methods: bool,
}

/// A kind of failed try.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RetryOn {
    /// No connection (or tunnel stream) to the endpoint could be opened, so the
    /// request was not sent. JSON: `"connect_failure"`.
    #[serde(rename = "connect_failure")]
    ConnectFailure,
    /// The backend answered with a 5xx status. JSON: `"5xx"`.
    #[serde(rename = "5xx")]
    ServerError,
    /// The connection or stream was reset before a response arrived. JSON:
    /// `"reset"`.
    #[serde(rename = "reset")]
    Reset,
}

impl RetryOn {
    /// The JSON name: `connect_failure`, `5xx` or `reset`.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryOn::ConnectFailure => "connect_failure",
            RetryOn::ServerError => "5xx",
            RetryOn::Reset => "reset",
        }
    }
}

impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Header changes: first every header in `remove` is removed, then every header in
/// `add` is set, replacing any value it had.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    /// Headers to set (lowercase names, printable values), at most
    /// [`MAX_HEADER_OPS`]; none of [`NOT_ADDABLE_HEADERS`] or `proxy-*`.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Headers to remove (lowercase names), at most [`MAX_HEADER_OPS`].
    #[serde(default)]
    pub remove: Vec<String>,
}

impl HeaderOps {
    /// Whether there is nothing to change.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// Why a route body was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RouteError {
    /// The body is longer than [`RouteDocument::MAX_DOCUMENT_LEN`].
    #[error(
        "the route body is {len} bytes; the limit is {max} (split the route into several routes)"
    )]
    TooLarge {
        /// The body's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body is not JSON, or not the JSON of a route (a missing field, an
    /// unknown field, a value of the wrong type). The message gives the line and
    /// column.
    #[error("the route body is not a valid route document: {message}")]
    Syntax {
        /// serde_json's description of the problem.
        message: String,
    },
    /// A field breaks a rule.
    #[error("{field}: {problem}")]
    Invalid {
        /// The path to the field, as in `rules[2].backends[0].weight`.
        field: String,
        /// What is wrong with it.
        problem: Problem,
    },
}

impl RouteError {
    /// The path to the offending field, for [`RouteError::Invalid`].
    pub fn field(&self) -> Option<&str> {
        match self {
            RouteError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// What is wrong with one field of a route ([`RouteError::Invalid`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Problem {
    /// A name (route, service, host) breaks the naming rule.
    #[error("{0}")]
    BadName(NameError),
    /// A wildcard anywhere but as a leading `*.` or as `*` alone.
    #[error(
        "{host:?} has a misplaced '*'; use \"*\" alone or a leading \"*.\", as in \"*.example.org\""
    )]
    BadWildcard {
        /// The refused host pattern.
        host: String,
    },
    /// A number outside its range.
    #[error("{value} is out of range {min}..={max}")]
    OutOfRange {
        /// The refused value.
        value: u64,
        /// The smallest accepted value.
        min: u64,
        /// The largest accepted value.
        max: u64,
    },
    /// A list or map with too many entries.
    #[error("{count} entries; at most {max} are allowed")]
    TooMany {
        /// How many entries there are.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A list that needs at least one entry is empty.
    #[error("is empty; {hint}")]
    Empty {
        /// What to put there.
        hint: &'static str,
    },
    /// The same entry appears twice.
    #[error("{value:?} is listed twice")]
    Duplicate {
        /// The repeated entry.
        value: String,
    },
    /// A string is longer than its limit.
    #[error("{len} bytes long; the limit is {max}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A header name that is not a lowercase HTTP token.
    #[error(
        "{name:?} is not a lowercase header name: use a-z, 0-9 and !#$%&'*+-.^_`|~ (header names are matched in lowercase)"
    )]
    BadHeaderName {
        /// The refused name.
        name: String,
    },
    /// A cookie name that is not an HTTP token.
    #[error("{name:?} is not a cookie name: use letters, digits and !#$%&'*+-.^_`|~")]
    BadCookieName {
        /// The refused name.
        name: String,
    },
    /// A header value with a character outside printable ASCII (space to `~`).
    #[error("the value contains {ch:?}; only printable ASCII (space to '~') is allowed")]
    BadHeaderValue {
        /// The first refused character.
        ch: char,
    },
    /// A header a route may not add ([`NOT_ADDABLE_HEADERS`], `proxy-*`).
    #[error("{name:?} cannot be added: hop-by-hop, framing and host headers belong to the proxy")]
    NotAddable {
        /// The refused header name.
        name: String,
    },
    /// A header both added and removed by the same [`HeaderOps`].
    #[error("{name:?} is both added and removed; adding already replaces the old value")]
    AddedAndRemoved {
        /// The header name.
        name: String,
    },
    /// A path prefix that breaks a rule of [`Match::path_prefix`].
    #[error("{prefix:?} {rule}")]
    BadPathPrefix {
        /// The refused prefix.
        prefix: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// A method that is not an uppercase HTTP token.
    #[error(
        "{method:?} is not an HTTP method; methods are case-sensitive, write them in uppercase (\"GET\")"
    )]
    BadMethod {
        /// The refused method.
        method: String,
    },
    /// A per-try timeout longer than the whole request's timeout.
    #[error("{per_try_ms} ms is longer than timeout_ms ({timeout_ms} ms)")]
    PerTryAboveTimeout {
        /// The per-try timeout.
        per_try_ms: u64,
        /// The whole request's timeout.
        timeout_ms: u64,
    },
    /// A load-balancing policy that contradicts the session setting.
    #[error(
        "{policy} cannot keep {session} sessions; hashed sessions need \"ring_hash\" (or leave lb unset)"
    )]
    PolicyConflict {
        /// The policy the rule names.
        policy: Policy,
        /// The session kind (`header` or `source_ip`).
        session: &'static str,
    },
    /// The body's name differs from the name it is published under.
    #[error("the body names route {body:?} but it is published as {expected:?}")]
    NameMismatch {
        /// The name the document is published under.
        expected: String,
        /// The name in the body.
        body: String,
    },
}

fn invalid(field: impl Into<String>, problem: Problem) -> RouteError {
    RouteError::Invalid {
        field: field.into(),
        problem,
    }
}

impl RouteSpec {
    /// A signed tombstone for route `name` (what `shoal route delete` publishes).
    pub fn tombstone(name: impl Into<String>, issued_at_ms: u64) -> RouteSpec {
        RouteSpec {
            name: name.into(),
            issued_at_ms,
            deleted: true,
            hosts: default_hosts(),
            rules: Vec::new(),
        }
    }

    /// Reads a route body: refuses one longer than
    /// [`RouteDocument::MAX_DOCUMENT_LEN`] before parsing it, parses the JSON and
    /// [validates](RouteSpec::validate) the result. Never panics, whatever the
    /// bytes.
    pub fn parse_body(body: &[u8]) -> Result<RouteSpec, RouteError> {
        if body.len() > RouteDocument::MAX_DOCUMENT_LEN {
            return Err(RouteError::TooLarge {
                len: body.len(),
                max: RouteDocument::MAX_DOCUMENT_LEN,
            });
        }
        let spec: RouteSpec = serde_json::from_slice(body).map_err(|e| RouteError::Syntax {
            message: e.to_string(),
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// The canonical body: compact JSON, fields in declaration order, map keys
    /// sorted, unset options left out. The same spec always gives the same bytes,
    /// which is what the operator signs.
    pub fn to_body(&self) -> Vec<u8> {
        // Serializing these types cannot fail: every map key is a string and every
        // Serialize impl is derived or writes a string. An empty body, were it to
        // happen, would be refused by `parse_body`.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads the body of a route document: [`RouteSpec::parse_body`], and the name
    /// in the body must be the document's name (otherwise a body signed for one
    /// route could be published as another).
    pub fn parse_document(document: &RouteDocument) -> Result<RouteSpec, RouteError> {
        let spec = RouteSpec::parse_body(&document.body)?;
        if spec.name != document.name {
            return Err(invalid(
                "name",
                Problem::NameMismatch {
                    expected: document.name.clone(),
                    body: spec.name,
                },
            ));
        }
        Ok(spec)
    }

    /// Checks every rule of the schema; the error names the offending field.
    pub fn validate(&self) -> Result<(), RouteError> {
        validate_name("route name", &self.name)
            .map_err(|e| invalid("name", Problem::BadName(e)))?;
        self.validate_hosts()?;
        if self.rules.is_empty() && !self.deleted {
            return Err(invalid(
                "rules",
                Problem::Empty {
                    hint: "a route needs at least one rule (to remove a route, publish a tombstone: `shoal route delete`)",
                },
            ));
        }
        if self.rules.len() > MAX_RULES {
            return Err(invalid(
                "rules",
                Problem::TooMany {
                    count: self.rules.len(),
                    max: MAX_RULES,
                },
            ));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            rule.validate(&format!("rules[{i}]"))?;
        }
        let len = self.to_body().len();
        if len > RouteDocument::MAX_DOCUMENT_LEN {
            return Err(RouteError::TooLarge {
                len,
                max: RouteDocument::MAX_DOCUMENT_LEN,
            });
        }
        Ok(())
    }

    fn validate_hosts(&self) -> Result<(), RouteError> {
        if self.hosts.is_empty() {
            return Err(invalid(
                "hosts",
                Problem::Empty {
                    hint: "list host names, \"*.\" wildcards, or \"*\" for any host",
                },
            ));
        }
        if self.hosts.len() > MAX_HOSTS {
            return Err(invalid(
                "hosts",
                Problem::TooMany {
                    count: self.hosts.len(),
                    max: MAX_HOSTS,
                },
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, host) in self.hosts.iter().enumerate() {
            let field = || format!("hosts[{i}]");
            validate_host_pattern(host).map_err(|p| invalid(field(), p))?;
            if !seen.insert(host.as_str()) {
                return Err(invalid(
                    field(),
                    Problem::Duplicate {
                        value: host.clone(),
                    },
                ));
            }
        }
        Ok(())
    }
}

fn validate_host_pattern(host: &str) -> Result<(), Problem> {
    if host == "*" {
        return Ok(());
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.contains('*') {
        return Err(Problem::BadWildcard {
            host: host.to_string(),
        });
    }
    validate_name("host", name).map_err(Problem::BadName)
}

impl Rule {
    /// The load-balancing policy in force: [`Rule::lb`] if set; otherwise
    /// `ring_hash` for header and source-address sessions, `round_robin` for the
    /// rest.
    pub fn policy(&self) -> Policy {
        match (self.lb, &self.session) {
            (Some(policy), _) => policy,
            (None, Some(Session::Header { .. } | Session::SourceIp)) => Policy::RingHash,
            (None, _) => Policy::RoundRobin,
        }
    }

    /// Picks the backend for one request, each with a probability proportional to
    /// its weight when `random` is uniformly distributed; the same `random` always
    /// picks the same backend. `None` only if the rule has no backends (which
    /// [`RouteSpec::validate`] refuses). For hashed sessions pass the session's
    /// hash, so that a session also stays on one side of a split.
    pub fn pick_backend(&self, random: u64) -> Option<&Backend> {
        let total: u64 = self.backends.iter().map(|b| u64::from(b.weight)).sum();
        if total == 0 {
            return self.backends.first();
        }
        let mut point = random % total;
        for backend in &self.backends {
            let weight = u64::from(backend.weight);
            if point < weight {
                return Some(backend);
            }
            point -= weight;
        }
        self.backends.last()
    }

    /// Whether a caller may use the rule: any caller when
    /// [`Rule::allow_services`] is empty; otherwise only a caller whose service
    /// is listed. A caller without a service identity (`None`: an ingress client)
    /// is allowed only by an empty list.
    pub fn allows_caller(&self, caller_service: Option<&str>) -> bool {
        self.allow_services.is_empty()
            || caller_service.is_some_and(|c| self.allow_services.iter().any(|s| s == c))
    }

    /// Most tries in all for one request: [`Retry::attempts`], or 1 without a
    /// retry policy.
    pub fn max_attempts(&self) -> u32 {
        self.retry.as_ref().map_or(1, |r| r.attempts.max(1))
    }

    /// Whether a request with `method` whose try number `tries_so_far` (1 for the
    /// first) failed with `cause` may be tried again, as far as the route is
    /// concerned: the policy lists `cause`, tries remain, and the method is
    /// idempotent, or the policy says `all_methods`, or the failure is a connection
    /// failure (the request never left). The caller still checks its retry budget
    /// ([`crate::retry::RetryBudget`]), the remaining time and that it can replay
    /// the request body.
    pub fn may_retry(&self, method: &str, cause: RetryOn, tries_so_far: u32) -> bool {
        let Some(retry) = &self.retry else {
            return false;
        };
        retry.on.contains(&cause)
            && tries_so_far < retry.attempts
            && (cause == RetryOn::ConnectFailure || retry.all_methods || is_idempotent(method))
    }

    fn validate(&self, at: &str) -> Result<(), RouteError> {
        self.r#match.validate(&format!("{at}.match"))?;
        self.validate_backends(at)?;
        self.validate_session(at)?;
        self.validate_timeouts(at)?;
        self.validate_retry(at)?;
        self.request_headers
            .validate(&format!("{at}.request_headers"))?;
        self.response_headers
            .validate(&format!("{at}.response_headers"))?;
        self.validate_allow_services(at)
    }

    /// The session's key rules, and the balancing it needs.
    fn validate_session(&self, at: &str) -> Result<(), RouteError> {
        let Some(session) = &self.session else {
            return Ok(());
        };
        let field = format!("{at}.session");
        match session {
            Session::Cookie { name, ttl_s } => {
                if !is_token(name) || name.len() > MAX_HEADER_NAME_LEN {
                    return Err(invalid(
                        format!("{field}.name"),
                        Problem::BadCookieName { name: name.clone() },
                    ));
                }
                if let Some(ttl) = *ttl_s {
                    check_range(&format!("{field}.ttl_s"), ttl, 1, MAX_COOKIE_TTL_S)?;
                }
            }
            Session::Header { name } => {
                check_header_name(&format!("{field}.name"), name)?;
            }
            Session::SourceIp => {}
        }
        let hashed = !matches!(session, Session::Cookie { .. });
        if let Some(policy) = self.lb
            && hashed
            && policy != Policy::RingHash
        {
            return Err(invalid(
                format!("{at}.lb"),
                Problem::PolicyConflict {
                    policy,
                    session: session.kind(),
                },
            ));
        }
        Ok(())
    }

    /// The overall and per-try timeouts: in range, the per-try one within the
    /// overall one.
    fn validate_timeouts(&self, at: &str) -> Result<(), RouteError> {
        if let Some(t) = self.timeout_ms {
            check_range(&format!("{at}.timeout_ms"), t, 1, MAX_TIMEOUT_MS)?;
        }
        if let Some(t) = self.per_try_timeout_ms {
            let field = format!("{at}.per_try_timeout_ms");
            check_range(&field, t, 1, MAX_TIMEOUT_MS)?;
            if let Some(total) = self.timeout_ms
                && t > total
            {
                return Err(invalid(
                    field,
                    Problem::PerTryAboveTimeout {
                        per_try_ms: t,
                        timeout_ms: total,
                    },
                ));
            }
        }
        Ok(())
    }

    /// The retry policy: causes listed once each, attempts in range.
    fn validate_retry(&self, at: &str) -> Result<(), RouteError> {
        let Some(retry) = &self.retry else {
            return Ok(());
        };
        let field = format!("{at}.retry");
        if retry.on.is_empty() {
            return Err(invalid(
                format!("{field}.on"),
                Problem::Empty {
                    hint: "list at least one of \"connect_failure\", \"5xx\", \"reset\"",
                },
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, on) in retry.on.iter().enumerate() {
            if !seen.insert(*on) {
                return Err(invalid(
                    format!("{field}.on[{i}]"),
                    Problem::Duplicate {
                        value: on.to_string(),
                    },
                ));
            }
        }
        check_range(
            &format!("{field}.attempts"),
            retry.attempts.into(),
            1,
            MAX_ATTEMPTS.into(),
        )?;
        Ok(())
    }

    /// The services allowed to call: valid names, listed once, not too many.
    fn validate_allow_services(&self, at: &str) -> Result<(), RouteError> {
        let field = format!("{at}.allow_services");
        if self.allow_services.len() > MAX_ALLOW_SERVICES {
            return Err(invalid(
                field,
                Problem::TooMany {
                    count: self.allow_services.len(),
                    max: MAX_ALLOW_SERVICES,
                },
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, service) in self.allow_services.iter().enumerate() {
            validate_name("service name", service)
                .map_err(|e| invalid(format!("{field}[{i}]"), Problem::BadName(e)))?;
            if !seen.insert(service.as_str()) {
                return Err(invalid(
                    format!("{field}[{i}]"),
                    Problem::Duplicate {
                        value: service.clone(),
                    },
                ));
            }
        }
        Ok(())
    }

    fn validate_backends(&self, at: &str) -> Result<(), RouteError> {
        let field = format!("{at}.backends");
        if self.backends.is_empty() {
            return Err(invalid(
                field,
                Problem::Empty {
                    hint: "name at least one destination service",
                },
            ));
        }
        if self.backends.len() > MAX_BACKENDS {
            return Err(invalid(
                field,
                Problem::TooMany {
                    count: self.backends.len(),
                    max: MAX_BACKENDS,
                },
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, backend) in self.backends.iter().enumerate() {
            validate_name("service name", &backend.service)
                .map_err(|e| invalid(format!("{field}[{i}].service"), Problem::BadName(e)))?;
            if !seen.insert(backend.service.as_str()) {
                return Err(invalid(
                    format!("{field}[{i}].service"),
                    Problem::Duplicate {
                        value: backend.service.clone(),
                    },
                ));
            }
            check_range(
                &format!("{field}[{i}].weight"),
                backend.weight.into(),
                MIN_WEIGHT.into(),
                MAX_WEIGHT.into(),
            )?;
        }
        Ok(())
    }
}

impl Match {
    /// Whether a request matches: its path (query string ignored) is under
    /// [`Match::path_prefix`], it carries every header of [`Match::headers`] with
    /// that exact value (`header` is asked for lowercase names and returns the
    /// request's value), and its method is listed (or no method is).
    pub fn matches<'h>(
        &self,
        path: &str,
        method: &str,
        header: impl Fn(&str) -> Option<&'h str>,
    ) -> bool {
        path_matches(&self.path_prefix, path)
            && (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
            && self
                .headers
                .iter()
                .all(|(name, value)| header(name) == Some(value.as_str()))
    }

    fn validate(&self, at: &str) -> Result<(), RouteError> {
        self.validate_path_prefix(at)?;
        self.validate_headers(at)?;
        self.validate_methods(at)
    }

    /// The path prefix: visible ASCII, starting and not ending with '/', no
    /// query, within its length.
    fn validate_path_prefix(&self, at: &str) -> Result<(), RouteError> {
        let field = format!("{at}.path_prefix");
        let p = &self.path_prefix;
        let bad = |rule| {
            invalid(
                field.clone(),
                Problem::BadPathPrefix {
                    prefix: p.clone(),
                    rule,
                },
            )
        };
        if p.len() > MAX_PATH_PREFIX_LEN {
            return Err(invalid(
                field.clone(),
                Problem::TooLong {
                    len: p.len(),
                    max: MAX_PATH_PREFIX_LEN,
                },
            ));
        }
        if !p.starts_with('/') {
            return Err(bad("does not start with '/'"));
        }
        if p.len() > 1 && p.ends_with('/') {
            return Err(bad(
                "ends with '/'; drop it (\"/api\" already matches \"/api/\" and everything under it)",
            ));
        }
        if p.contains(['?', '#']) {
            return Err(bad(
                "contains '?' or '#'; a path prefix matches the path, not the query",
            ));
        }
        if p.chars().any(|c| !('!'..='~').contains(&c)) {
            return Err(bad(
                "contains a space, a control or a non-ASCII character; percent-encode it",
            ));
        }
        Ok(())
    }

    /// The matched headers: valid names and values, not too many.
    fn validate_headers(&self, at: &str) -> Result<(), RouteError> {
        let field = format!("{at}.headers");
        if self.headers.len() > MAX_MATCH_HEADERS {
            return Err(invalid(
                field,
                Problem::TooMany {
                    count: self.headers.len(),
                    max: MAX_MATCH_HEADERS,
                },
            ));
        }
        for (name, value) in &self.headers {
            let at = format!("{field}[{name:?}]");
            check_header_name(&at, name)?;
            check_header_value(&at, value)?;
        }
        Ok(())
    }

    /// The matched methods: uppercase tokens, listed once, not too many.
    fn validate_methods(&self, at: &str) -> Result<(), RouteError> {
        let field = format!("{at}.methods");
        if self.methods.len() > MAX_METHODS {
            return Err(invalid(
                field,
                Problem::TooMany {
                    count: self.methods.len(),
                    max: MAX_METHODS,
                },
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, method) in self.methods.iter().enumerate() {
            if !is_token(method)
                || method.len() > MAX_METHOD_LEN
                || method.bytes().any(|b| b.is_ascii_lowercase())
            {
                return Err(invalid(
                    format!("{field}[{i}]"),
                    Problem::BadMethod {
                        method: method.clone(),
                    },
                ));
            }
            if !seen.insert(method.as_str()) {
                return Err(invalid(
                    format!("{field}[{i}]"),
                    Problem::Duplicate {
                        value: method.clone(),
                    },
                ));
            }
        }
        Ok(())
    }
}

impl HeaderOps {
    fn validate(&self, at: &str) -> Result<(), RouteError> {
        for (list, count) in [("add", self.add.len()), ("remove", self.remove.len())] {
            if count > MAX_HEADER_OPS {
                return Err(invalid(
                    format!("{at}.{list}"),
                    Problem::TooMany {
                        count,
                        max: MAX_HEADER_OPS,
                    },
                ));
            }
        }
        for (name, value) in &self.add {
            let field = format!("{at}.add[{name:?}]");
            check_header_name(&field, name)?;
            if !is_addable(name) {
                return Err(invalid(field, Problem::NotAddable { name: name.clone() }));
            }
            check_header_value(&field, value)?;
        }
        let mut seen = BTreeSet::new();
        for (i, name) in self.remove.iter().enumerate() {
            let field = format!("{at}.remove[{i}]");
            check_header_name(&field, name)?;
            if !seen.insert(name.as_str()) {
                return Err(invalid(
                    field,
                    Problem::Duplicate {
                        value: name.clone(),
                    },
                ));
            }
            if self.add.contains_key(name) {
                return Err(invalid(
                    field,
                    Problem::AddedAndRemoved { name: name.clone() },
                ));
            }
        }
        Ok(())
    }
}

/// Whether a route may add header `name` (lowercase): not one of
/// [`NOT_ADDABLE_HEADERS`] and not `proxy-*`.
pub fn is_addable(name: &str) -> bool {
    !NOT_ADDABLE_HEADERS.contains(&name) && !name.starts_with("proxy-")
}

/// Whether `path` (query string ignored) is under `prefix`, segment by segment:
/// `/api` matches `/api`, `/api/`, `/api/x` and `/api?q`, not `/apix`; `/` matches
/// every path.
pub fn path_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    let path = match path.find(['?', '#']) {
        Some(end) => &path[..end],
        None => path,
    };
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The value of cookie `name` in a `Cookie` request header (`a=1; b=2`), the first
/// if it appears more than once. Surrounding double quotes are kept, as RFC 6265
/// says.
pub fn cookie_value<'a>(cookie_header: &'a str, name: &str) -> Option<&'a str> {
    cookie_header.split(';').find_map(|pair| {
        let (n, v) = pair.split_once('=')?;
        (n.trim() == name).then(|| v.trim())
    })
}

/// An HTTP token (RFC 9110 §5.6.2): one or more tchar.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn check_header_name(field: &str, name: &str) -> Result<(), RouteError> {
    if !is_token(name)
        || name.len() > MAX_HEADER_NAME_LEN
        || name.bytes().any(|b| b.is_ascii_uppercase())
    {
        return Err(invalid(
            field,
            Problem::BadHeaderName {
                name: name.to_string(),
            },
        ));
    }
    Ok(())
}

fn check_header_value(field: &str, value: &str) -> Result<(), RouteError> {
    if value.len() > MAX_HEADER_VALUE_LEN {
        return Err(invalid(
            field,
            Problem::TooLong {
                len: value.len(),
                max: MAX_HEADER_VALUE_LEN,
            },
        ));
    }
    if let Some(ch) = value.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(invalid(field, Problem::BadHeaderValue { ch }));
    }
    Ok(())
}

fn check_range(field: &str, value: u64, min: u64, max: u64) -> Result<(), RouteError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(invalid(field, Problem::OutOfRange { value, min, max }))
    }
}

/// (De)serializes `Option<Policy>` as its config name (`"round_robin"`, ...).
mod policy_serde {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::lb::Policy;

    pub(super) fn serialize<S: Serializer>(
        policy: &Option<Policy>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match policy {
            Some(p) => s.serialize_some(p.as_str()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Policy>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| s.parse().map_err(D::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests;
