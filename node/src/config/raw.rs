//! The raw TOML mirror ([`RawConfig`]) and the parsing that maps a TOML error to the field it is about.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::Serialize;

use crate::config::error::{ConfigError, ConfigErrors};

/// The config file as written: every table and field of the TOML, nothing checked
/// beyond TOML types. Unknown fields are refused. Required fields are `Option`s too,
/// so that a missing one is reported together with every other problem by
/// [`Config::validate`](super::Config::validate).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[node]`: who this node is and where it listens.
    #[serde(default)]
    pub node: RawNode,
    /// `[tls]`: the node's certificate, key and mesh CA (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawTls>,
    /// `[gossip]`: the membership protocol's timing and caps.
    #[serde(default)]
    pub gossip: RawGossip,
    /// `[[service]]`: the local backends this node hosts.
    #[serde(default, rename = "service", skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<RawService>,
    /// `[[listener]]`: local entry points into the mesh.
    #[serde(default, rename = "listener", skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<RawListener>,
}

/// The `[node]` table as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    /// `name`: defaults to the node name in the certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `cluster`: defaults to [`DEFAULT_CLUSTER`](super::defaults::DEFAULT_CLUSTER).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// `zone`: defaults to [`DEFAULT_ZONE`](super::defaults::DEFAULT_ZONE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// `listen`: UDP `IP:PORT` of the QUIC endpoint (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// `advertise`: the `IP:PORT` peers use to reach this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// `admin`: TCP `IP:PORT` of the admin API; defaults to [`DEFAULT_ADMIN`](super::defaults::DEFAULT_ADMIN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    /// `data_dir`: directory for durable state (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `seeds`: `HOST:PORT` of other nodes' QUIC endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<String>,
    /// `ready_alone`: whether `/readyz` is ready before any peer is seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_alone: Option<bool>,
    /// `drain_timeout`: how long a shutdown waits for in-flight work.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub drain_timeout: Option<Duration>,
    /// `max_streams_per_connection`: tunnel streams one peer connection may
    /// have open at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_streams_per_connection: Option<u32>,
    /// `admin_header_timeout`: how long the admin API waits for a request's
    /// headers (and body).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub admin_header_timeout: Option<Duration>,
    /// `max_connections`: inbound QUIC connections open at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// `max_connections_per_address`: inbound QUIC connections open at once
    /// from one peer address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_address: Option<u32>,
    /// `max_handshakes`: inbound QUIC connections still in their handshake at
    /// once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_handshakes: Option<u32>,
    /// `retry_handshakes_above`: connection attempts a second from unvalidated
    /// addresses above which QUIC Retry is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_handshakes_above: Option<u32>,
    /// `admin_max_connections`: admin API connections open at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_max_connections: Option<u32>,
}

/// The `[tls]` table as written. Relative paths are relative to the config file's
/// directory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// `cert`: the node certificate, PEM (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// `key`: its private key, PEM (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// `ca`: the mesh CA certificate, PEM (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
}

/// The `[gossip]` table as written: every field optional. Unknown settings are
/// collected (not refused by the parser) so validation can name them and say
/// what replaced the ones that were removed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RawGossip {
    /// `interval`: time between gossip rounds.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval: Option<Duration>,
    /// `probe_timeout`: how long a probe waits for its answer.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub probe_timeout: Option<Duration>,
    /// `suspicion_timeout`: how long an accused member has to refute, with one
    /// accuser.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub suspicion_timeout: Option<Duration>,
    /// `suspicion_timeout_min`: the same with three or more accusers.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub suspicion_timeout_min: Option<Duration>,
    /// `dead_node_grace`: how long a dead node's state is kept.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub dead_node_grace: Option<Duration>,
    /// `max_clock_skew`: how far members' clocks may differ.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_clock_skew: Option<Duration>,
    /// `rings`: rings of the overlay; each node gossips with at most twice as
    /// many neighbours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rings: Option<usize>,
    /// `max_members`: most members held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_members: Option<usize>,
    /// `max_services_per_member`: most service records per member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_services_per_member: Option<usize>,
    /// `max_state_bytes`: most bytes of records held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_state_bytes: Option<usize>,
    /// `max_documents`: most route documents held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_documents: Option<usize>,
    /// Settings that no longer exist ([`REMOVED_GOSSIP_FIELDS`](super::defaults::REMOVED_GOSSIP_FIELDS)): read only to
    /// say so.
    #[serde(flatten, skip_serializing)]
    pub removed: std::collections::BTreeMap<String, toml::Value>,
}

/// One `[[service]]` table as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    /// `name`: the service name (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `address`: `IP:PORT` of the local backend (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// `protocol`: `"tcp"` or `"http"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// `weight`: load-balancing weight, 1 to [`MAX_WEIGHT`](super::defaults::MAX_WEIGHT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// `tags`: free labels published with the endpoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// `[service.health]`: the active health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<RawHealth>,
    /// `allow_nodes`: caller nodes allowed to reach this service (see `allow_services`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_nodes: Vec<String>,
    /// `allow_services`: caller services allowed to reach this service. When both
    /// lists are empty every mesh node may call it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_services: Vec<String>,
    /// `max_connections`: tunnelled connections to this backend at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// `max_connections_per_caller`: of those, how many one calling node may hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_caller: Option<u32>,
    /// `connect_timeout`: how long connecting to the local backend may take.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub connect_timeout: Option<Duration>,
    /// `http_idle_timeout`: how long a keep-alive connection to an HTTP backend
    /// may wait unused for the next request; `0s` turns reuse off.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub http_idle_timeout: Option<Duration>,
    /// `http2`: speak HTTP/2 to the backend (prior knowledge, "h2c"), over one
    /// shared connection; for gRPC backends. HTTP services only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2: Option<bool>,
    /// `tls`: speak TLS to the backend (HTTP services only); ALPN picks HTTP/2
    /// or HTTP/1.1 unless `http2 = true` asks for HTTP/2 alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
    /// `tls_ca`: PEM file of the CAs the backend's certificate must chain to
    /// (default: the system's trust store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// `tls_server_name`: the name the backend's certificate must be valid for,
    /// also sent as SNI (default: the IP address of `address`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    /// `tls_cert`: PEM file of the client certificate (and its chain) this
    /// node presents to a backend that asks for one; with `tls_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// `tls_key`: PEM file of the private key of `tls_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// `idle_timeout`: how long a tunnelled connection to this service may
    /// carry no byte before this node closes it.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
    /// `response_timeout`: how long the backend may take to start its answer
    /// to a tunnelled HTTP request once the request has arrived.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub response_timeout: Option<Duration>,
}

/// One `[[listener]]` table as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// `name`: used in metrics and logs; defaults to the service name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `bind`: local `IP:PORT` applications connect to (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    /// `service`: the mesh service connections go to (required for tcp; for http
    /// the service of requests no route matches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// `protocol`: `"tcp"` (default) or `"http"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// `lb`: `"round_robin"`, `"least_request"` or `"ring_hash"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lb: Option<String>,
    /// `source_service`: the local service callers act for (must be in the certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_service: Option<String>,
    /// `max_connections`: accepted connections at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// `connect_timeout`: time for one attempt to reach an endpoint.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub connect_timeout: Option<Duration>,
    /// `idle_timeout`: close a connection idle this long in both directions.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
    /// `attempts`: endpoints tried per connection before giving up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// `hedge`: open on a second endpoint when the first is slow to accept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hedge: Option<bool>,
    /// `hedge_min_delay`: the least time the first open has before a hedge.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub hedge_min_delay: Option<Duration>,
    /// `zone_aware`: prefer endpoints in this node's zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_aware: Option<bool>,
    /// `[listener.outlier]`: passive ejection of failing endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier: Option<RawOutlier>,
    /// `kind`: `"mesh"` (service-to-service) or `"ingress"` (user-facing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `[listener.tls]`: serve HTTPS with this certificate (ingress only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawListenerTls>,
    /// `access_log`: `"stdout"` or a file path (HTTP listeners).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<String>,
    /// `request_timeout`: whole-request timeout when no route sets one (HTTP).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub request_timeout: Option<Duration>,
    /// `header_timeout`: time a client has to send a request head, and the TLS
    /// handshake (HTTP).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub header_timeout: Option<Duration>,
}

/// A `[listener.tls]` table as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    /// `cert`: PEM certificate chain served to clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// `key`: its PEM private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// A `[listener.outlier]` table as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    /// `consecutive_failures`: failures in a row that eject an endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// `base_ejection`: the first ejection's length (doubles on each repeat).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub base_ejection: Option<Duration>,
    /// `max_ejection`: the longest ejection.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_ejection: Option<Duration>,
}

/// A `[service.health]` table as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// `kind`: `"tcp"`, `"http"` or `"none"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `path`: the HTTP path to GET.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `interval`: time between checks.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval: Option<Duration>,
    /// `timeout`: how long one check may take.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// `healthy_threshold`: consecutive successes that make an endpoint healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
    /// `unhealthy_threshold`: consecutive failures that make an endpoint unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
}

impl RawConfig {
    /// Parses TOML text. Syntax errors, unknown fields and wrong types are reported
    /// with the field's TOML path and the line number.
    pub fn from_toml(text: &str) -> Result<RawConfig, ConfigErrors> {
        let de = toml::Deserializer::parse(text).map_err(|e| syntax_error(text, &e))?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let field = path_to_field(e.path());
            let inner = e.into_inner();
            let mut reason = inner.message().trim().to_string();
            if let Some(span) = inner.span() {
                let (line, _) = line_col(text, span.start);
                reason.push_str(&format!(" (line {line})"));
            }
            let field = match missing_field(&reason) {
                Some(name) if field == ROOT_FIELD => name.to_string(),
                Some(name) => format!("{field}.{name}"),
                None => field,
            };
            ConfigErrors::from(ConfigError::new(field, reason))
        })
    }

    /// Writes this configuration as TOML (the simulator writes node files with it).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }
}

/// The field name used for problems that concern the whole document.
pub(super) const ROOT_FIELD: &str = "config";

fn path_to_field(path: &serde_path_to_error::Path) -> String {
    let s = path.to_string();
    if s == "." || s.is_empty() {
        ROOT_FIELD.to_string()
    } else {
        s
    }
}

/// The field named by serde's "missing field `x`" message.
fn missing_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next()
}

/// 1-based line and column of byte `offset` in `text`.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.chars().count(), |i| before[i + 1..].chars().count())
        + 1;
    (line, col)
}

fn syntax_error(text: &str, e: &toml::de::Error) -> ConfigErrors {
    let message = e.message().trim().replace('\n', "; ");
    let Some(span) = e.span() else {
        return ConfigError::new(ROOT_FIELD, format!("TOML syntax error: {message}")).into();
    };
    let (line, col) = line_col(text, span.start);
    let field = field_at_line(text, line - 1).unwrap_or_else(|| ROOT_FIELD.to_string());
    ConfigError::new(
        field,
        format!("TOML syntax error at line {line}, column {col}: {message}"),
    )
    .into()
}

/// Best-effort TOML path of what is written on line `target` (0-based): the table
/// header on that line, or the key assigned there inside the current table.
pub(super) fn field_at_line(text: &str, target: usize) -> Option<String> {
    fn clean(seg: &str) -> String {
        seg.trim().trim_matches('"').trim_matches('\'').to_string()
    }
    // Resolves a dotted header against the array tables seen so far, turning
    // `service.health` into `service[2].health`.
    fn resolve(header: &str, counts: &HashMap<String, usize>, array: bool) -> String {
        let segs: Vec<String> = header.split('.').map(clean).collect();
        let mut out = Vec::new();
        for i in 0..segs.len() {
            let prefix = segs[..=i].join(".");
            let seg = &segs[i];
            match counts.get(&prefix) {
                Some(n) if *n > 0 => {
                    let index = if array && i == segs.len() - 1 {
                        *n
                    } else {
                        n - 1
                    };
                    out.push(format!("{seg}[{index}]"));
                }
                _ if array && i == segs.len() - 1 => out.push(format!("{seg}[0]")),
                _ => out.push(seg.clone()),
            }
        }
        out.join(".")
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        let array_header = t
            .strip_prefix("[[")
            .and_then(|r| r.split("]]").next())
            .map(str::to_string);
        let header = if array_header.is_some() {
            None
        } else {
            t.strip_prefix('[')
                .and_then(|r| r.split(']').next())
                .map(str::to_string)
        };
        if i == target {
            if let Some(h) = &array_header {
                return Some(resolve(h, &counts, true));
            }
            if let Some(h) = &header {
                return Some(resolve(h, &counts, false));
            }
            let key = t.split('=').next().map(clean).unwrap_or_default();
            let is_key = !key.is_empty()
                && t.contains('=')
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            return match (is_key, current.is_empty()) {
                (true, true) => Some(key),
                (true, false) => Some(format!("{current}.{key}")),
                (false, true) => None,
                (false, false) => Some(current),
            };
        }
        if let Some(h) = array_header {
            current = resolve(&h, &counts, true);
            let name = h.split('.').map(clean).collect::<Vec<_>>().join(".");
            *counts.entry(name).or_insert(0) += 1;
        } else if let Some(h) = header {
            current = resolve(&h, &counts, false);
        }
    }
    None
}
