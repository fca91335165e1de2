//! The node's configuration: the TOML file `shoal run --config FILE` reads, parsed
//! into [`RawConfig`] (a plain mirror of the file that the simulator can also build
//! in code), combined with command-line [`Overrides`], then validated into
//! [`Config`], the typed and checked form the node runs with. Validation reads the
//! TLS files and checks that they make a usable node identity (the certificate
//! chains to the CA, the key matches, every `[[service]]` is allowed by the
//! certificate), and collects every problem it finds as a [`ConfigError`] naming
//! the TOML field (`node.listen`, `service[1].health.timeout`, `tls.cert`) and the
//! reason. It does not bind sockets, create directories or keep file contents:
//! the node re-reads the certificate files itself at start and on SIGHUP.
//!
//! `docs/config.md` is the operator's reference for every field.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use humantime_serde::re::humantime;
pub use mesh_proto::lb::Policy;
use mesh_proto::names::validate_name;
pub use mesh_proto::tunnel::Protocol;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize, Serializer};
use shoal_pki::{CaBundle, CertIdentity, CertKind, VerifyError};
use thiserror::Error;
use time::OffsetDateTime;

/// Default `node.cluster`.
pub const DEFAULT_CLUSTER: &str = "shoal";
/// Default `node.zone`.
pub const DEFAULT_ZONE: &str = "default";
/// Default `node.admin`: loopback only, so the admin API is not exposed by accident.
pub const DEFAULT_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7101);
/// Default `node.drain_timeout`.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Default `gossip.interval`.
pub const DEFAULT_GOSSIP_INTERVAL: Duration = Duration::from_millis(250);
/// Shortest accepted `gossip.interval`.
pub const MIN_GOSSIP_INTERVAL: Duration = Duration::from_millis(10);
/// Longest accepted `gossip.interval`.
pub const MAX_GOSSIP_INTERVAL: Duration = Duration::from_secs(10);
/// `gossip.probe_timeout` by default: this many intervals.
pub const PROBE_TIMEOUT_INTERVALS: u32 = 4;
/// `gossip.suspicion_timeout` by default: this many intervals.
pub const SUSPICION_TIMEOUT_INTERVALS: u32 = 20;
/// `gossip.suspicion_timeout_min` by default: this many intervals.
pub const SUSPICION_TIMEOUT_MIN_INTERVALS: u32 = 6;
/// Longest accepted `gossip.probe_timeout`.
pub const MAX_PROBE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest accepted `gossip.suspicion_timeout`.
pub const MAX_SUSPICION_TIMEOUT: Duration = Duration::from_secs(600);
/// Default `gossip.dead_node_grace`.
pub const DEFAULT_DEAD_NODE_GRACE: Duration = Duration::from_secs(300);
/// Shortest accepted `gossip.dead_node_grace`.
pub const MIN_GRACE: Duration = Duration::from_secs(1);
/// Default `gossip.max_clock_skew`.
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = mesh_proto::membership::config::DEFAULT_MAX_CLOCK_SKEW;
/// Accepted range of `gossip.max_clock_skew`.
pub const CLOCK_SKEW_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(3600));
/// Default `gossip.max_members`.
pub const DEFAULT_MAX_MEMBERS: usize = mesh_proto::membership::config::DEFAULT_MAX_MEMBERS;
/// Accepted range of `gossip.max_members`.
pub const MAX_MEMBERS_RANGE: std::ops::RangeInclusive<usize> = 2..=1_000_000;
/// Default `gossip.max_services_per_member`.
pub const DEFAULT_MAX_SERVICES_PER_MEMBER: usize =
    mesh_proto::membership::config::DEFAULT_MAX_SERVICES_PER_MEMBER;
/// Accepted range of `gossip.max_services_per_member`.
pub const MAX_SERVICES_RANGE: std::ops::RangeInclusive<usize> = 1..=1024;
/// Default `gossip.max_state_bytes`.
pub const DEFAULT_MAX_STATE_BYTES: usize = mesh_proto::membership::config::DEFAULT_MAX_STATE_BYTES;
/// Accepted range of `gossip.max_state_bytes`.
pub const MAX_STATE_BYTES_RANGE: std::ops::RangeInclusive<usize> = (1 << 20)..=(4 << 30);
/// Default `gossip.max_documents`.
pub const DEFAULT_MAX_DOCUMENTS: usize = mesh_proto::membership::config::DEFAULT_MAX_DOCUMENTS;
/// Accepted range of `gossip.max_documents`.
pub const MAX_DOCUMENTS_RANGE: std::ops::RangeInclusive<usize> = 1..=100_000;
/// Default `gossip.rings`: each node gossips with at most twice as many
/// neighbours.
pub const DEFAULT_RINGS: usize = mesh_proto::membership::overlay::DEFAULT_RINGS;
/// Accepted range of `gossip.rings`.
pub const RINGS_RANGE: std::ops::RangeInclusive<usize> =
    1..=mesh_proto::membership::overlay::MAX_RINGS;
/// `[gossip]` settings of the chitchat-based membership that no longer exist,
/// with what replaces each.
pub const REMOVED_GOSSIP_FIELDS: [(&str, &str); 5] = [
    (
        "phi_threshold",
        "liveness no longer uses a phi-accrual detector; see gossip.suspicion_timeout",
    ),
    (
        "initial_interval",
        "liveness no longer uses heartbeat statistics; see gossip.probe_timeout",
    ),
    (
        "max_interval",
        "liveness no longer uses heartbeat statistics; see gossip.probe_timeout",
    ),
    (
        "sampling_window",
        "liveness no longer uses heartbeat statistics; see gossip.suspicion_timeout",
    ),
    (
        "deletion_grace",
        "records are no longer deleted; dead members are forgotten after gossip.dead_node_grace",
    ),
];

/// Default `service.weight`.
pub const DEFAULT_WEIGHT: u32 = 100;
/// Default `max_connections` of services and listeners.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
/// Largest `max_connections`.
pub const MAX_MAX_CONNECTIONS: u32 = 1_000_000;
/// Default `service.connect_timeout` (to the local backend).
pub const DEFAULT_BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default `service.http_idle_timeout`: how long a keep-alive connection to an
/// HTTP backend may sit unused. Shorter than the common backend keep-alive
/// timeouts (Node.js 5 s, nginx 75 s), so the backend rarely closes a connection
/// just as a request is sent on it.
pub const DEFAULT_HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Largest `service.http_idle_timeout`.
pub const MAX_HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default `listener.connect_timeout` (one attempt through the mesh).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default `listener.idle_timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default `listener.request_timeout` (HTTP).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `listener.header_timeout` (HTTP).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `listener.attempts`.
pub const DEFAULT_ATTEMPTS: u32 = 3;
/// Largest `listener.attempts`.
pub const MAX_ATTEMPTS: u32 = 10;
/// Default `listener.outlier.consecutive_failures`.
pub const DEFAULT_OUTLIER_FAILURES: u32 = 3;
/// Default `listener.outlier.base_ejection`.
pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(5);
/// Default `listener.outlier.max_ejection`.
pub const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(60);
/// Largest accepted `service.weight`.
pub const MAX_WEIGHT: u32 = 10_000;
/// Most tags a service may carry.
pub const MAX_TAGS: usize = 16;
/// Default `service.health.path`.
pub const DEFAULT_HEALTH_PATH: &str = "/";
/// Default `service.health.interval`.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// Shortest accepted `service.health.interval`.
pub const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(100);
/// Longest accepted `service.health.interval`.
pub const MAX_HEALTH_INTERVAL: Duration = Duration::from_secs(3600);
/// Default `service.health.timeout`.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// Default `service.health.healthy_threshold`.
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
/// Default `service.health.unhealthy_threshold`.
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
/// Largest accepted health threshold.
pub const MAX_THRESHOLD: u32 = 100;

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// One problem in a configuration: the field it is about and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {reason}")]
pub struct ConfigError {
    /// The TOML path of the field (`node.listen`, `service[1].health.timeout`,
    /// `tls.cert`), a command-line flag (`--seed`), or the config file's path when
    /// the file itself cannot be read.
    pub field: String,
    /// What is wrong, and where it helps, what to do about it.
    pub reason: String,
}

impl ConfigError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Every problem found in a configuration, in file order as far as possible.
/// Displayed one error per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The errors.
    pub fn errors(&self) -> &[ConfigError] {
        &self.0
    }

    /// The first error about exactly `field`, if any.
    pub fn find(&self, field: &str) -> Option<&ConfigError> {
        self.0.iter().find(|e| e.field == field)
    }

    /// How many errors there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none (a returned `ConfigErrors` always has at least one).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

// ---------------------------------------------------------------------------
// The raw file
// ---------------------------------------------------------------------------

/// The config file as written: every table and field of the TOML, nothing checked
/// beyond TOML types. Unknown fields are refused. Required fields are `Option`s too,
/// so that a missing one is reported together with every other problem by
/// [`Config::validate`].
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
    /// `cluster`: defaults to [`DEFAULT_CLUSTER`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// `zone`: defaults to [`DEFAULT_ZONE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// `listen`: UDP `IP:PORT` of the QUIC endpoint (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// `advertise`: the `IP:PORT` peers use to reach this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// `admin`: TCP `IP:PORT` of the admin API; defaults to [`DEFAULT_ADMIN`].
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
    /// Settings that no longer exist ([`REMOVED_GOSSIP_FIELDS`]): read only to
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
    /// `weight`: load-balancing weight, 1 to [`MAX_WEIGHT`].
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
const ROOT_FIELD: &str = "config";

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
fn line_col(text: &str, offset: usize) -> (usize, usize) {
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
fn field_at_line(text: &str, target: usize) -> Option<String> {
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

// ---------------------------------------------------------------------------
// Overrides
// ---------------------------------------------------------------------------

/// Command-line flags applied on top of the file before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--seed HOST:PORT`: added after the file's `node.seeds`.
    pub seeds: Vec<String>,
    /// `--listen ADDR`: replaces `node.listen`.
    pub listen: Option<SocketAddr>,
    /// `--admin ADDR`: replaces `node.admin`.
    pub admin: Option<SocketAddr>,
}

impl Overrides {
    /// Applies the flags to a raw configuration.
    pub fn apply(&self, raw: &mut RawConfig) {
        raw.node.seeds.extend(self.seeds.iter().cloned());
        if let Some(listen) = self.listen {
            raw.node.listen = Some(listen.to_string());
        }
        if let Some(admin) = self.admin {
            raw.node.admin = Some(admin.to_string());
        }
    }
}

// ---------------------------------------------------------------------------
// The validated configuration
// ---------------------------------------------------------------------------

/// The validated configuration a node runs with. Only [`Config::validate`] (and
/// [`Config::load`] / [`Config::from_toml`], which call it) build one, so holding a
/// `Config` means every rule in `docs/config.md` held when it was made, including
/// that the TLS files formed a valid node identity. Serialized (as JSON) by the
/// admin API's `/config`; it holds paths, never key material.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Config {
    /// `[node]`.
    pub node: NodeConfig,
    /// `[tls]` and the identity read from its files.
    pub tls: TlsConfig,
    /// `[gossip]`.
    pub gossip: GossipConfig,
    /// `[[service]]`, in file order.
    pub services: Vec<ServiceConfig>,
    /// `[[listener]]`, in file order.
    pub listeners: Vec<ListenerConfig>,
}

/// The validated `[node]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct NodeConfig {
    /// The node name (from the file or from the certificate; they agree).
    pub name: String,
    /// The cluster name (bound into every gossip signature): nodes of different clusters ignore
    /// each other's gossip.
    pub cluster: String,
    /// The zone this node is in, for zone-aware load balancing.
    pub zone: String,
    /// UDP address the QUIC endpoint binds (port 0: the OS picks).
    pub listen: SocketAddr,
    /// The address peers should use, when it is not simply the bound address; see
    /// [`NodeConfig::advertise_for`].
    pub advertise: Option<SocketAddr>,
    /// TCP address of the admin HTTP API (port 0: the OS picks).
    pub admin: SocketAddr,
    /// Directory for durable state, absolute. It may not exist yet.
    pub data_dir: PathBuf,
    /// Seed peers, `HOST:PORT`, file entries first, then `--seed` flags, without
    /// duplicates. May include this node's own address, which the node skips.
    pub seeds: Vec<String>,
    /// Whether `/readyz` reports ready before any peer has been seen.
    pub ready_alone: bool,
    /// How long a shutdown waits for in-flight work.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl NodeConfig {
    /// The address to advertise to peers once the QUIC endpoint is bound to
    /// `bound`: `advertise` when set (with `bound`'s port if `advertise` says port
    /// 0), else `bound` itself.
    pub fn advertise_for(&self, bound: SocketAddr) -> SocketAddr {
        match self.advertise {
            Some(a) if a.port() == 0 => SocketAddr::new(a.ip(), bound.port()),
            Some(a) => a,
            None => bound,
        }
    }
}

/// The validated `[tls]` table and what its files say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TlsConfig {
    /// The node certificate file, absolute.
    pub cert: PathBuf,
    /// The private key file, absolute.
    pub key: PathBuf,
    /// The mesh CA certificate file, absolute.
    pub ca: PathBuf,
    /// The trust domain of the certificate and the CA.
    pub trust_domain: String,
    /// The node name in the certificate (`spiffe://TD/node/NAME`).
    pub node_name: String,
    /// The services the certificate allows this node to host, sorted.
    pub allowed_services: Vec<String>,
    /// When the certificate expires.
    #[serde(serialize_with = "serialize_time")]
    pub cert_not_after: OffsetDateTime,
}

/// The validated `[gossip]` table: the membership protocol's timing and caps.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct GossipConfig {
    /// Time between gossip rounds.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How long a probe waits for its answer before the prober accuses.
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
    /// How long an accused member has to refute, with one accuser.
    #[serde(with = "humantime_serde")]
    pub suspicion_timeout: Duration,
    /// The same once three members accuse it.
    #[serde(with = "humantime_serde")]
    pub suspicion_timeout_min: Duration,
    /// How long a dead node's state is kept before it is forgotten.
    #[serde(with = "humantime_serde")]
    pub dead_node_grace: Duration,
    /// How far members' clocks may differ.
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// Rings of the overlay: each node gossips with at most `2 × rings`
    /// neighbours.
    pub rings: usize,
    /// Most members held.
    pub max_members: usize,
    /// Most service records one member may publish.
    pub max_services_per_member: usize,
    /// Most bytes of records held.
    pub max_state_bytes: usize,
    /// Most route documents held.
    pub max_documents: usize,
}

impl GossipConfig {
    /// The defaults for a round `interval`.
    pub fn with_interval(interval: Duration) -> GossipConfig {
        GossipConfig {
            interval,
            probe_timeout: interval * PROBE_TIMEOUT_INTERVALS,
            suspicion_timeout: interval * SUSPICION_TIMEOUT_INTERVALS,
            suspicion_timeout_min: interval * SUSPICION_TIMEOUT_MIN_INTERVALS,
            dead_node_grace: DEFAULT_DEAD_NODE_GRACE,
            max_clock_skew: DEFAULT_MAX_CLOCK_SKEW,
            rings: DEFAULT_RINGS,
            max_members: DEFAULT_MAX_MEMBERS,
            max_services_per_member: DEFAULT_MAX_SERVICES_PER_MEMBER,
            max_state_bytes: DEFAULT_MAX_STATE_BYTES,
            max_documents: DEFAULT_MAX_DOCUMENTS,
        }
    }

    /// The membership protocol's timing these values stand for.
    pub fn timing(&self) -> mesh_proto::membership::Timing {
        let mut t = mesh_proto::membership::Timing::from_interval(self.interval);
        t.probe_timeout = self.probe_timeout;
        t.suspicion_max = self.suspicion_timeout;
        t.suspicion_min = self.suspicion_timeout_min;
        t.dead_grace = self.dead_node_grace;
        t.max_clock_skew = self.max_clock_skew;
        t.rings = self.rings;
        t
    }

    /// The membership protocol's caps these values stand for.
    pub fn limits(&self) -> mesh_proto::membership::Limits {
        mesh_proto::membership::Limits {
            max_members: self.max_members,
            max_services_per_member: self.max_services_per_member,
            max_state_bytes: self.max_state_bytes,
            max_documents: self.max_documents,
            ..mesh_proto::membership::Limits::default()
        }
    }
}

impl Default for GossipConfig {
    /// The documented defaults.
    fn default() -> Self {
        GossipConfig::with_interval(DEFAULT_GOSSIP_INTERVAL)
    }
}

/// One validated `[[service]]`: a local backend this node hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ServiceConfig {
    /// The service name (allowed by the node certificate).
    pub name: String,
    /// The local backend's address.
    pub address: SocketAddr,
    /// What the backend speaks.
    #[serde(serialize_with = "serialize_protocol")]
    pub protocol: Protocol,
    /// Load-balancing weight, 1 to [`MAX_WEIGHT`].
    pub weight: u32,
    /// Labels published with the endpoint.
    pub tags: Vec<String>,
    /// The active health check.
    pub health: HealthConfig,
    /// Caller nodes allowed (with `allow_services`; both empty: every mesh node).
    pub allow_nodes: Vec<String>,
    /// Caller services allowed.
    pub allow_services: Vec<String>,
    /// Tunnelled connections to this backend at once; beyond, callers get
    /// `overloaded`.
    pub max_connections: u32,
    /// How long connecting to the backend may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a keep-alive connection to an HTTP backend may wait unused for
    /// the next tunnelled request (zero: every request gets its own connection).
    #[serde(with = "humantime_serde")]
    pub http_idle_timeout: Duration,
}

impl ServiceConfig {
    /// Whether a caller (its node name, and the source service it claims and its
    /// certificate allows) may reach this service.
    pub fn allows(&self, node: &str, source_service: Option<&str>) -> bool {
        if self.allow_nodes.is_empty() && self.allow_services.is_empty() {
            return true;
        }
        self.allow_nodes.iter().any(|n| n == node)
            || source_service.is_some_and(|s| self.allow_services.iter().any(|a| a == s))
    }
}

/// A validated `[[listener]]`: a local entry point into the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ListenerConfig {
    /// Name used in metrics and logs.
    pub name: String,
    /// Local address applications connect to.
    pub bind: SocketAddr,
    /// The mesh service its connections go to (TCP), or the default service of
    /// requests no route matches (HTTP; optional there).
    pub service: Option<String>,
    /// What it proxies.
    #[serde(serialize_with = "serialize_protocol")]
    pub protocol: Protocol,
    /// Load-balancing policy.
    #[serde(serialize_with = "serialize_policy")]
    pub lb: Policy,
    /// The local service its callers act for (sent in the stream header).
    pub source_service: Option<String>,
    /// Accepted connections at once; beyond, new ones are closed at once.
    pub max_connections: u32,
    /// Time for one attempt (dial, stream, remote backend connect, status).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// A connection idle this long in both directions is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Endpoints tried per connection before it is closed.
    pub attempts: u32,
    /// Prefer endpoints in this node's zone while enough of them are healthy.
    pub zone_aware: bool,
    /// Passive outlier detection.
    pub outlier: OutlierConfig,
    /// Service-to-service or user-facing.
    pub kind: ListenerKind,
    /// HTTPS certificate and key (ingress).
    pub tls: Option<ListenerTls>,
    /// Where the access log goes (HTTP).
    pub access_log: Option<AccessLog>,
    /// Whole-request timeout when no route sets one (HTTP).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Time a client has to send a complete request head (HTTP).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
}

impl ListenerConfig {
    /// The service name, or `""` for an HTTP listener without a default service.
    pub fn service(&self) -> &str {
        self.service.as_deref().unwrap_or("")
    }
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// Applications on this host calling mesh services.
    Mesh,
    /// User-facing traffic from outside the mesh.
    Ingress,
}

/// An ingress listener's own certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerTls {
    /// PEM certificate chain (absolute path).
    pub cert: PathBuf,
    /// PEM private key (absolute path).
    pub key: PathBuf,
}

/// Where an HTTP listener writes one JSON line per request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLog {
    /// Standard output.
    Stdout,
    /// Appended to this file (absolute path).
    File(PathBuf),
}

/// Passive outlier detection settings of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OutlierConfig {
    /// Consecutive failures that eject an endpoint.
    pub consecutive_failures: u32,
    /// First ejection's length; each repeat doubles it.
    #[serde(with = "humantime_serde")]
    pub base_ejection: Duration,
    /// Longest ejection.
    #[serde(with = "humantime_serde")]
    pub max_ejection: Duration,
}

fn serialize_policy<S: Serializer>(p: &Policy, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(p.as_str())
}

/// How the hosting node checks a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthKind {
    /// A TCP connect to the backend's address succeeds.
    Tcp,
    /// `GET path` on the backend answers 2xx.
    Http,
    /// No checks: the endpoint is always reported healthy.
    None,
}

impl HealthKind {
    /// The name used in the config file (`tcp`, `http`, `none`).
    pub fn as_str(self) -> &'static str {
        match self {
            HealthKind::Tcp => "tcp",
            HealthKind::Http => "http",
            HealthKind::None => "none",
        }
    }
}

impl fmt::Display for HealthKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated `[service.health]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct HealthConfig {
    /// What is checked.
    pub kind: HealthKind,
    /// The path an HTTP check GETs (starts with `/`).
    pub path: String,
    /// Time between checks.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How long one check may take (never longer than `interval`).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive successes that turn an endpoint healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures that turn an endpoint unhealthy.
    pub unhealthy_threshold: u32,
}

fn serialize_protocol<S: Serializer>(p: &Protocol, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(p.as_str())
}

fn serialize_time<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&shoal_pki::inspect::rfc3339(*t))
}

impl Config {
    /// Reads, parses and validates the config file at `path`, with `overrides`
    /// applied. Relative paths in the file are relative to the file's directory.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(path.display().to_string(), format!("cannot read: {e}"))
        })?;
        let base_dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        Config::from_toml(&text, base_dir, overrides)
    }

    /// Parses and validates TOML text as if read from a file in `base_dir`.
    pub fn from_toml(
        text: &str,
        base_dir: &Path,
        overrides: &Overrides,
    ) -> Result<Config, ConfigErrors> {
        let mut raw = RawConfig::from_toml(text)?;
        let file_seeds = raw.node.seeds.len();
        overrides.apply(&mut raw);
        Config::validate(raw, base_dir).map_err(|mut errors| {
            // A bad `--seed` flag is reported as the flag, not as a seed index the
            // file does not have.
            for e in &mut errors.0 {
                let index = e
                    .field
                    .strip_prefix("node.seeds[")
                    .and_then(|r| r.strip_suffix(']'))
                    .and_then(|i| i.parse::<usize>().ok());
                if index.is_some_and(|i| i >= file_seeds) {
                    e.field = "--seed".to_string();
                }
            }
            errors
        })
    }

    /// Validates a raw configuration; relative paths in it are relative to
    /// `base_dir`. Reads the TLS files. Returns every problem found.
    pub fn validate(raw: RawConfig, base_dir: &Path) -> Result<Config, ConfigErrors> {
        Validator::new(base_dir, OffsetDateTime::now_utc()).run(raw)
    }

    /// The address to advertise once the QUIC endpoint is bound to `bound`
    /// (see [`NodeConfig::advertise_for`]).
    pub fn advertise_for(&self, bound: SocketAddr) -> SocketAddr {
        self.node.advertise_for(bound)
    }
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

struct Validator {
    base_dir: PathBuf,
    now: OffsetDateTime,
    errors: Vec<ConfigError>,
}

/// Where a field's section comes in the file, for ordering errors.
fn section_rank(field: &str) -> u8 {
    let section = field.split(['.', '[']).next().unwrap_or_default();
    match section {
        "node" => 0,
        "tls" => 1,
        "gossip" => 2,
        "service" => 3,
        "listener" => 4,
        _ => 5,
    }
}

const ADDR_EXAMPLE: &str = "an IP:PORT address such as 10.0.0.5:7100 or [fd00::5]:7100";

impl Validator {
    fn new(base_dir: &Path, now: OffsetDateTime) -> Self {
        let base_dir = std::path::absolute(base_dir).unwrap_or_else(|_| base_dir.to_path_buf());
        Validator {
            base_dir,
            now,
            errors: Vec::new(),
        }
    }

    fn err(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(ConfigError::new(field, reason));
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        let joined = self.base_dir.join(p);
        std::path::absolute(&joined).unwrap_or(joined)
    }

    fn run(mut self, raw: RawConfig) -> Result<Config, ConfigErrors> {
        let tls = self.tls(raw.tls.as_ref());
        let node = self.node(&raw.node, tls.as_ref());
        let gossip = self.gossip(&raw.gossip);
        let services = self.services(&raw.services, tls.as_ref());
        let listeners = self.listeners(&raw.listeners, tls.as_ref());
        match (node, tls, services, listeners) {
            (Some(node), Some(tls), Some(services), Some(listeners)) if self.errors.is_empty() => {
                Ok(Config {
                    node,
                    tls,
                    gossip,
                    services,
                    listeners,
                })
            }
            _ => {
                if self.errors.is_empty() {
                    self.err(ROOT_FIELD, "invalid configuration");
                }
                // File order: the sections were checked out of order because
                // [node] and [[service]] depend on what the [tls] files say.
                self.errors.sort_by_key(|e| section_rank(&e.field));
                Err(ConfigErrors(self.errors))
            }
        }
    }

    fn name(&mut self, field: &str, what: &'static str, value: &str) -> bool {
        match validate_name(what, value) {
            Ok(()) => true,
            Err(e) => {
                self.err(field, e.to_string());
                false
            }
        }
    }

    fn socket_addr(&mut self, field: &str, value: &str) -> Option<SocketAddr> {
        match value.trim().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                let hint = if value.contains(':') && value.matches(':').count() > 1 {
                    " (IPv6 addresses go in brackets: [fd00::5]:7100)"
                } else if !value.contains(':') {
                    " (the port is missing)"
                } else {
                    ""
                };
                self.err(
                    field,
                    format!(
                        "{value:?} is not {ADDR_EXAMPLE}{hint}; host names are not accepted here"
                    ),
                );
                None
            }
        }
    }

    // --- [node] ----------------------------------------------------------------

    fn node(&mut self, raw: &RawNode, id: Option<&TlsConfig>) -> Option<NodeConfig> {
        let name = match (&raw.name, id) {
            (Some(name), id) => {
                let ok = self.name("node.name", "node name", name);
                if let Some(id) = id
                    && ok
                    && *name != id.node_name
                {
                    self.err(
                        "node.name",
                        format!(
                            "{name:?} does not match the certificate's node name {:?}; remove node.name or use a certificate issued for {name:?}",
                            id.node_name
                        ),
                    );
                }
                Some(name.clone())
            }
            (None, Some(id)) => Some(id.node_name.clone()),
            (None, None) => None,
        };
        let cluster = raw
            .cluster
            .as_deref()
            .unwrap_or(DEFAULT_CLUSTER)
            .to_string();
        self.name("node.cluster", "cluster name", &cluster);
        let zone = raw.zone.as_deref().unwrap_or(DEFAULT_ZONE).to_string();
        self.name("node.zone", "zone", &zone);

        let listen = match &raw.listen {
            Some(l) => self.socket_addr("node.listen", l),
            None => {
                self.err(
                    "node.listen",
                    "required: the UDP IP:PORT of this node's QUIC endpoint, such as 0.0.0.0:7100",
                );
                None
            }
        };
        let advertise = raw
            .advertise
            .as_deref()
            .and_then(|a| self.socket_addr("node.advertise", a));
        if let Some(a) = advertise
            && a.ip().is_unspecified()
        {
            self.err(
                "node.advertise",
                format!(
                    "{a} is an unspecified address; peers need an address they can reach, such as this host's IP"
                ),
            );
        }
        if let Some(listen) = listen {
            if listen.ip().is_unspecified() && raw.advertise.is_none() {
                self.err(
                    "node.advertise",
                    format!(
                        "required because node.listen ({listen}) is an unspecified address: set the IP:PORT peers use to reach this node"
                    ),
                );
            }
            if let Some(a) = advertise
                && a.port() == 0
                && listen.port() != 0
            {
                self.err(
                    "node.advertise",
                    format!(
                        "port 0 means \"the port actually bound\" and is only allowed when node.listen's port is 0 too (it is {})",
                        listen.port()
                    ),
                );
            }
        }
        let admin = match &raw.admin {
            Some(a) => self.socket_addr("node.admin", a),
            None => Some(DEFAULT_ADMIN),
        };
        let data_dir = match &raw.data_dir {
            Some(d) => self.data_dir(d),
            None => {
                self.err(
                    "node.data_dir",
                    "required: the directory for this node's durable state, such as /var/lib/shoal",
                );
                None
            }
        };

        let mut seeds: Vec<String> = Vec::new();
        let mut parsed_seeds: Vec<Option<SocketAddr>> = Vec::new();
        for (i, seed) in raw.seeds.iter().enumerate() {
            let field = format!("node.seeds[{i}]");
            if let Some(s) = self.seed(&field, seed)
                && !seeds.contains(&s)
            {
                parsed_seeds.push(s.parse().ok());
                seeds.push(s);
            }
        }
        let own: Vec<SocketAddr> = [listen, advertise]
            .into_iter()
            .flatten()
            .filter(|a| a.port() != 0)
            .collect();
        let other_seeds = parsed_seeds
            .iter()
            .filter(|s| !matches!(s, Some(a) if own.contains(a)))
            .count();
        let ready_alone = raw.ready_alone.unwrap_or(other_seeds == 0);
        let drain_timeout = raw.drain_timeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT);

        Some(NodeConfig {
            name: name?,
            cluster,
            zone,
            listen: listen?,
            advertise,
            admin: admin?,
            data_dir: data_dir?,
            seeds,
            ready_alone,
            drain_timeout,
        })
    }

    fn data_dir(&mut self, raw: &Path) -> Option<PathBuf> {
        if raw.as_os_str().is_empty() {
            self.err("node.data_dir", "is empty; name a directory");
            return None;
        }
        let dir = self.resolve(raw);
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => Some(dir),
            Ok(_) => {
                self.err(
                    "node.data_dir",
                    format!(
                        "{} exists and is not a directory; point data_dir at a directory",
                        dir.display()
                    ),
                );
                None
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let parent_ok = dir
                    .parent()
                    .is_some_and(|p| std::fs::metadata(p).is_ok_and(|m| m.is_dir()));
                if parent_ok {
                    Some(dir)
                } else {
                    self.err(
                        "node.data_dir",
                        format!(
                            "neither {} nor its parent directory exists; the node creates the directory itself, but not its parents",
                            dir.display()
                        ),
                    );
                    None
                }
            }
            Err(e) => {
                self.err(
                    "node.data_dir",
                    format!("cannot inspect {}: {e}", dir.display()),
                );
                None
            }
        }
    }

    /// Checks one seed; returns it normalized (trimmed).
    fn seed(&mut self, field: &str, raw: &str) -> Option<String> {
        let s = raw.trim();
        if let Ok(a) = s.parse::<SocketAddr>() {
            if a.port() == 0 {
                self.err(
                    field,
                    format!("{raw:?} has port 0; give the seed's QUIC port"),
                );
                return None;
            }
            if a.ip().is_unspecified() {
                self.err(
                    field,
                    format!(
                        "{raw:?} is an unspecified address; give an address that reaches the seed"
                    ),
                );
                return None;
            }
            return Some(a.to_string());
        }
        let bad = |why: &str| {
            format!(
                "{raw:?} is not HOST:PORT ({why}); for example 10.0.0.5:7100 or seed-1.example.org:7100"
            )
        };
        let Some((host, port)) = s.rsplit_once(':') else {
            self.err(field, bad("the port is missing"));
            return None;
        };
        if host.contains(':') {
            self.err(field, bad("IPv6 addresses go in brackets: [fd00::5]:7100"));
            return None;
        }
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !host_ok {
            self.err(field, bad(&format!("{host:?} is not a valid host name")));
            return None;
        }
        match port.parse::<u16>() {
            Ok(p) if p != 0 => Some(format!("{host}:{p}")),
            _ => {
                self.err(
                    field,
                    bad(&format!("{port:?} is not a port from 1 to 65535")),
                );
                None
            }
        }
    }

    // --- [tls] -----------------------------------------------------------------

    fn read_file(&mut self, field: &str, path: Option<&PathBuf>) -> Option<(PathBuf, Vec<u8>)> {
        let Some(path) = path else {
            self.err(
                field,
                "required: a PEM file path (shoal-pki issue writes node.crt, node.key and ca.crt)",
            );
            return None;
        };
        let abs = self.resolve(path);
        match std::fs::read(&abs) {
            Ok(bytes) => Some((abs, bytes)),
            Err(e) => {
                self.err(field, format!("cannot read {}: {e}", abs.display()));
                None
            }
        }
    }

    fn pem_cert(
        &mut self,
        field: &str,
        path: &Path,
        bytes: &[u8],
    ) -> Option<CertificateDer<'static>> {
        match CertificateDer::from_pem_slice(bytes) {
            Ok(der) => Some(der),
            Err(_) => {
                self.err(
                    field,
                    format!(
                        "{} is not a PEM certificate (no -----BEGIN CERTIFICATE----- block)",
                        path.display()
                    ),
                );
                None
            }
        }
    }

    fn tls(&mut self, raw: Option<&RawTls>) -> Option<TlsConfig> {
        let Some(raw) = raw else {
            self.err(
                "tls",
                "the [tls] table is required: cert, key and ca (the files `shoal-pki issue --node NAME` writes)",
            );
            return None;
        };
        let cert = self.read_file("tls.cert", raw.cert.as_ref());
        let key = self.read_file("tls.key", raw.key.as_ref());
        let ca = self.read_file("tls.ca", raw.ca.as_ref());

        // The CA (one, or several of one trust domain during a CA rollover).
        let ca_checked = ca.as_ref().and_then(|(path, bytes)| {
            match CaBundle::from_pem(bytes) {
                Ok(bundle) => {
                    let td = bundle.trust_domain.clone();
                    Some((bundle, td))
                }
                Err(e) => {
                    self.err(
                        "tls.ca",
                        format!(
                            "{} is not a Shoal mesh CA file ({e}); use the ca.crt written by `shoal-pki ca init`",
                            path.display()
                        ),
                    );
                    None
                }
            }
        });

        // The node certificate.
        let cert_checked = cert.as_ref().and_then(|(path, bytes)| {
            let der = self.pem_cert("tls.cert", path, bytes)?;
            let id = match CertIdentity::from_der(&der) {
                Ok(id) => id,
                Err(e) => {
                    self.err("tls.cert", format!("{}: {e}", path.display()));
                    return None;
                }
            };
            let p = path.display();
            let problem = match id.kind() {
                CertKind::Node => None,
                CertKind::Operator => Some(format!(
                    "{p} is an operator certificate (spiffe://{}/operator/{}); a node needs a node certificate: shoal-pki issue --ca DIR --node NAME --service SVC...",
                    id.trust_domain.as_deref().unwrap_or("?"),
                    id.operator.as_deref().unwrap_or("?"),
                )),
                CertKind::Ca => Some(format!(
                    "{p} is a CA certificate; put it in tls.ca and point tls.cert at a node certificate (shoal-pki issue --node NAME)"
                )),
                CertKind::Other => Some(format!(
                    "{p} carries no spiffe://TRUST-DOMAIN/node/NAME id; it is not a Shoal node certificate (shoal-pki issue --node NAME)"
                )),
            };
            if let Some(problem) = problem {
                self.err("tls.cert", problem);
                return None;
            }
            Some((der, id))
        });

        // The key, against the certificate.
        let key_ok = key.as_ref().and_then(|(path, bytes)| {
            let parsed = std::str::from_utf8(bytes)
                .map_err(|e| e.to_string())
                .and_then(|s| rcgen::KeyPair::from_pem(s).map_err(|e| e.to_string()));
            match parsed {
                Ok(k) => Some(k),
                Err(e) => {
                    self.err(
                        "tls.key",
                        format!("{} is not a usable PEM private key ({e})", path.display()),
                    );
                    None
                }
            }
        });
        if let (Some(k), Some((cert_der, _)), Some((key_path, _)), Some((cert_path, _))) =
            (&key_ok, &cert_checked, &key, &cert)
        {
            let matches = x509_parser::parse_x509_certificate(cert_der).is_ok_and(|(_, x)| {
                x.public_key().subject_public_key.data.as_ref() == k.public_key_raw()
            });
            if !matches {
                self.err(
                    "tls.key",
                    format!(
                        "{} does not match the public key of tls.cert ({}); use the key written next to that certificate",
                        key_path.display(),
                        cert_path.display()
                    ),
                );
            }
        }

        // The certificate, against the CA.
        let (Some((ca_der, ca_td)), Some((cert_der, id)), Some((ca_path, _))) =
            (&ca_checked, &cert_checked, &ca)
        else {
            return None;
        };
        let cert_td = id.trust_domain.clone().unwrap_or_default();
        if cert_td != *ca_td {
            self.err(
                "tls.cert",
                format!(
                    "certificate of another trust domain: it is for {cert_td:?} but tls.ca ({}) is the CA of {ca_td:?}",
                    ca_path.display()
                ),
            );
            return None;
        }
        if let Err(e) = ca_der.verify(cert_der, self.now) {
            // An expired or not yet valid certificate is still this node's: keep
            // checking the name and the services against it, so that one run of
            // `shoal check` reports every problem.
            let keep_going = matches!(e, VerifyError::Expired(_) | VerifyError::NotYetValid(_));
            let (field, reason) = match e {
                VerifyError::Expired(when) => (
                    "tls.cert",
                    format!(
                        "the certificate expired on {when}; issue a new one with shoal-pki issue"
                    ),
                ),
                VerifyError::NotYetValid(_) => (
                    "tls.cert",
                    format!("the certificate is {e}; is this host's clock right?"),
                ),
                VerifyError::OtherCa { issuer } => (
                    "tls.cert",
                    format!(
                        "the certificate was not signed by the CA in tls.ca ({}); it belongs to another CA (issuer: {issuer})",
                        ca_path.display()
                    ),
                ),
                VerifyError::CaNotValid(why) => (
                    "tls.ca",
                    format!("the CA certificate is not valid now: {why}"),
                ),
                VerifyError::WrongTrustDomain { .. } => (
                    "tls.cert",
                    format!("certificate of another trust domain: {e}"),
                ),
                other => (
                    "tls.cert",
                    format!("the certificate does not verify: {other}"),
                ),
            };
            self.err(field, reason);
            if !keep_going {
                return None;
            }
        }
        let not_after = x509_parser::parse_x509_certificate(cert_der)
            .map(|(_, x)| x.validity().not_after.to_datetime())
            .ok()?;
        // Built even when the key has a problem (already reported), so that the
        // node name and the services can still be checked against the certificate.
        let key_path = match (&key, &raw.key) {
            (Some((path, _)), _) => path.clone(),
            (None, Some(path)) => self.resolve(path),
            (None, None) => PathBuf::new(),
        };
        Some(TlsConfig {
            cert: cert.as_ref()?.0.clone(),
            key: key_path,
            ca: ca_path.clone(),
            trust_domain: cert_td,
            node_name: id.node.clone()?,
            allowed_services: id.services.clone(),
            cert_not_after: not_after,
        })
    }

    // --- [gossip] --------------------------------------------------------------

    fn duration_range(&mut self, field: &str, d: Duration, min: Duration, max: Duration) {
        if d < min || d > max {
            self.err(
                field,
                format!(
                    "{} is out of range: it must be between {} and {}",
                    humantime::format_duration(d),
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ),
            );
        }
    }

    fn gossip(&mut self, raw: &RawGossip) -> GossipConfig {
        for field in raw.removed.keys() {
            match REMOVED_GOSSIP_FIELDS.iter().find(|(f, _)| f == field) {
                Some((_, why)) => self.err(
                    format!("gossip.{field}"),
                    format!("no longer exists: {why}; remove it (docs/config.md)"),
                ),
                None => self.err(format!("gossip.{field}"), "unknown setting"),
            }
        }
        let interval = raw.interval.unwrap_or(DEFAULT_GOSSIP_INTERVAL);
        self.duration_range(
            "gossip.interval",
            interval,
            MIN_GOSSIP_INTERVAL,
            MAX_GOSSIP_INTERVAL,
        );
        let d = GossipConfig::with_interval(interval);
        let probe_timeout = raw.probe_timeout.unwrap_or(d.probe_timeout);
        self.duration_range(
            "gossip.probe_timeout",
            probe_timeout,
            interval,
            MAX_PROBE_TIMEOUT.max(interval),
        );
        let suspicion_timeout_min = raw.suspicion_timeout_min.unwrap_or(d.suspicion_timeout_min);
        self.duration_range(
            "gossip.suspicion_timeout_min",
            suspicion_timeout_min,
            interval,
            MAX_SUSPICION_TIMEOUT,
        );
        let suspicion_timeout = raw.suspicion_timeout.unwrap_or(d.suspicion_timeout).max(
            if raw.suspicion_timeout.is_some() {
                Duration::ZERO
            } else {
                suspicion_timeout_min
            },
        );
        self.duration_range(
            "gossip.suspicion_timeout",
            suspicion_timeout,
            suspicion_timeout_min,
            MAX_SUSPICION_TIMEOUT,
        );
        let dead_node_grace = raw.dead_node_grace.unwrap_or(DEFAULT_DEAD_NODE_GRACE);
        self.at_least("gossip.dead_node_grace", dead_node_grace, MIN_GRACE);
        let max_clock_skew = raw.max_clock_skew.unwrap_or(DEFAULT_MAX_CLOCK_SKEW);
        self.duration_range(
            "gossip.max_clock_skew",
            max_clock_skew,
            CLOCK_SKEW_RANGE.0,
            CLOCK_SKEW_RANGE.1,
        );
        GossipConfig {
            interval,
            probe_timeout,
            suspicion_timeout,
            suspicion_timeout_min,
            dead_node_grace,
            max_clock_skew,
            ..self.gossip_caps(raw)
        }
    }

    /// The `[gossip]` caps and overlay size, each within its range; the timing
    /// fields are left at their defaults for [`Validator::gossip`] to fill.
    fn gossip_caps(&mut self, raw: &RawGossip) -> GossipConfig {
        GossipConfig {
            rings: self.count_in("gossip.rings", raw.rings, DEFAULT_RINGS, &RINGS_RANGE),
            max_members: self.count_in(
                "gossip.max_members",
                raw.max_members,
                DEFAULT_MAX_MEMBERS,
                &MAX_MEMBERS_RANGE,
            ),
            max_services_per_member: self.count_in(
                "gossip.max_services_per_member",
                raw.max_services_per_member,
                DEFAULT_MAX_SERVICES_PER_MEMBER,
                &MAX_SERVICES_RANGE,
            ),
            max_state_bytes: self.count_in(
                "gossip.max_state_bytes",
                raw.max_state_bytes,
                DEFAULT_MAX_STATE_BYTES,
                &MAX_STATE_BYTES_RANGE,
            ),
            max_documents: self.count_in(
                "gossip.max_documents",
                raw.max_documents,
                DEFAULT_MAX_DOCUMENTS,
                &MAX_DOCUMENTS_RANGE,
            ),
            ..GossipConfig::with_interval(DEFAULT_GOSSIP_INTERVAL)
        }
    }

    /// `value` (or `default`), checked against `range`.
    fn count_in(
        &mut self,
        field: &str,
        value: Option<usize>,
        default: usize,
        range: &std::ops::RangeInclusive<usize>,
    ) -> usize {
        let v = value.unwrap_or(default);
        if !range.contains(&v) {
            self.err(
                field,
                format!(
                    "{v} is out of range: it must be between {} and {} (the default is {default})",
                    range.start(),
                    range.end()
                ),
            );
        }
        v
    }

    fn at_least(&mut self, field: &str, d: Duration, min: Duration) {
        if d < min {
            self.err(
                field,
                format!(
                    "{} is too short: it must be at least {}",
                    humantime::format_duration(d),
                    humantime::format_duration(min)
                ),
            );
        }
    }

    // --- [[service]] -----------------------------------------------------------

    fn services(
        &mut self,
        raw: &[RawService],
        id: Option<&TlsConfig>,
    ) -> Option<Vec<ServiceConfig>> {
        let mut out = Vec::new();
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut ok = true;
        for (i, svc) in raw.iter().enumerate() {
            match self.service(i, svc, id, &mut seen) {
                Some(s) => out.push(s),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn service(
        &mut self,
        i: usize,
        raw: &RawService,
        id: Option<&TlsConfig>,
        seen: &mut BTreeMap<String, usize>,
    ) -> Option<ServiceConfig> {
        let f = |name: &str| format!("service[{i}].{name}");
        let name = match &raw.name {
            None => {
                self.err(f("name"), "required: the service name");
                None
            }
            Some(name) => {
                let mut ok = self.name(&f("name"), "service name", name);
                if let Some(first) = seen.get(name) {
                    self.err(
                        f("name"),
                        format!(
                            "{name:?} is already defined by service[{first}]; each service is listed once per node"
                        ),
                    );
                    ok = false;
                } else {
                    seen.insert(name.clone(), i);
                }
                if ok
                    && let Some(id) = id
                    && !id.allowed_services.iter().any(|s| s == name)
                {
                    let allows = if id.allowed_services.is_empty() {
                        "none".to_string()
                    } else {
                        id.allowed_services.join(", ")
                    };
                    self.err(
                        f("name"),
                        format!(
                            "{name:?} is not in the node certificate (it allows: {allows}); issue a certificate with --service {name}"
                        ),
                    );
                    ok = false;
                }
                ok.then(|| name.clone())
            }
        };
        let address = match &raw.address {
            None => {
                self.err(
                    f("address"),
                    "required: the IP:PORT of the local backend, such as 127.0.0.1:8080",
                );
                None
            }
            Some(a) => self.socket_addr(&f("address"), a).and_then(|a| {
                if a.port() == 0 {
                    self.err(f("address"), format!("{a} has port 0; give the backend's port"));
                    None
                } else if a.ip().is_unspecified() {
                    self.err(
                        f("address"),
                        format!(
                            "{a} is an unspecified address; give the address the backend can be reached at, such as 127.0.0.1:{}",
                            a.port()
                        ),
                    );
                    None
                } else {
                    Some(a)
                }
            }),
        };
        let protocol = match raw.protocol.as_deref() {
            None | Some("tcp") => Some(Protocol::Tcp),
            Some("http") => Some(Protocol::Http),
            Some(other) => {
                self.err(
                    f("protocol"),
                    format!("{other:?} is not a protocol; use \"tcp\" or \"http\""),
                );
                None
            }
        };
        let weight = raw.weight.unwrap_or(DEFAULT_WEIGHT);
        let weight_ok = (1..=MAX_WEIGHT).contains(&weight);
        if !weight_ok {
            self.err(
                f("weight"),
                format!("{weight} is out of range: it must be between 1 and {MAX_WEIGHT}"),
            );
        }
        let mut tags_ok = true;
        if raw.tags.len() > MAX_TAGS {
            self.err(
                f("tags"),
                format!("{} tags; at most {MAX_TAGS} are allowed", raw.tags.len()),
            );
            tags_ok = false;
        }
        for (t, tag) in raw.tags.iter().enumerate() {
            tags_ok &= self.name(&format!("service[{i}].tags[{t}]"), "tag", tag);
        }
        let health = self.health(i, raw.health.as_ref(), protocol.unwrap_or(Protocol::Tcp));
        let mut allow_ok = true;
        for (n, node) in raw.allow_nodes.iter().enumerate() {
            allow_ok &= self.name(&format!("service[{i}].allow_nodes[{n}]"), "node name", node);
        }
        for (n, svc) in raw.allow_services.iter().enumerate() {
            allow_ok &= self.name(
                &format!("service[{i}].allow_services[{n}]"),
                "service name",
                svc,
            );
        }
        let max_connections = raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        let max_ok = self.count_range(
            &f("max_connections"),
            max_connections,
            1,
            MAX_MAX_CONNECTIONS,
        );
        let connect_timeout = raw
            .connect_timeout
            .unwrap_or(DEFAULT_BACKEND_CONNECT_TIMEOUT);
        self.duration_range(
            &f("connect_timeout"),
            connect_timeout,
            Duration::from_millis(1),
            Duration::from_secs(300),
        );
        let http_idle_timeout = raw.http_idle_timeout.unwrap_or(DEFAULT_HTTP_IDLE_TIMEOUT);
        self.duration_range(
            &f("http_idle_timeout"),
            http_idle_timeout,
            Duration::ZERO,
            MAX_HTTP_IDLE_TIMEOUT,
        );
        if !(weight_ok && tags_ok && allow_ok && max_ok) {
            return None;
        }
        Some(ServiceConfig {
            name: name?,
            address: address?,
            protocol: protocol?,
            weight,
            tags: raw.tags.clone(),
            health: health?,
            allow_nodes: raw.allow_nodes.clone(),
            allow_services: raw.allow_services.clone(),
            max_connections,
            connect_timeout,
            http_idle_timeout,
        })
    }

    fn count_range(&mut self, field: &str, value: u32, min: u32, max: u32) -> bool {
        if (min..=max).contains(&value) {
            true
        } else {
            self.err(
                field,
                format!("{value} is out of range: it must be between {min} and {max}"),
            );
            false
        }
    }

    // --- [[listener]] ----------------------------------------------------------

    fn listeners(
        &mut self,
        raw: &[RawListener],
        id: Option<&TlsConfig>,
    ) -> Option<Vec<ListenerConfig>> {
        let mut out = Vec::new();
        let mut ok = true;
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        let mut binds: BTreeMap<SocketAddr, usize> = BTreeMap::new();
        for (i, l) in raw.iter().enumerate() {
            match self.listener(i, l, id) {
                Some(l) => {
                    if let Some(first) = names.insert(l.name.clone(), i) {
                        self.err(
                            format!("listener[{i}].name"),
                            format!(
                                "{:?} is already the name of listener[{first}]; give each listener its own name",
                                l.name
                            ),
                        );
                        ok = false;
                    }
                    if l.bind.port() != 0
                        && let Some(first) = binds.insert(l.bind, i)
                    {
                        self.err(
                            format!("listener[{i}].bind"),
                            format!("{} is already bound by listener[{first}]", l.bind),
                        );
                        ok = false;
                    }
                    out.push(l);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn listener(
        &mut self,
        i: usize,
        raw: &RawListener,
        id: Option<&TlsConfig>,
    ) -> Option<ListenerConfig> {
        let f = |name: &str| format!("listener[{i}].{name}");
        let before = self.errors.len();
        let bind = match &raw.bind {
            None => {
                self.err(
                    f("bind"),
                    "required: the local IP:PORT applications connect to, such as 127.0.0.1:9000",
                );
                None
            }
            Some(b) => self.socket_addr(&f("bind"), b),
        };
        let protocol = match raw.protocol.as_deref() {
            None | Some("tcp") => Some(Protocol::Tcp),
            Some("http") => Some(Protocol::Http),
            Some(other) => {
                self.err(
                    f("protocol"),
                    format!("{other:?} is not a protocol; use \"tcp\" or \"http\""),
                );
                None
            }
        };
        let http = protocol == Some(Protocol::Http);
        let service = match &raw.service {
            None if http => None,
            None => {
                self.err(
                    f("service"),
                    "required for a tcp listener: the mesh service this listener leads to",
                );
                None
            }
            Some(s) => self
                .name(&f("service"), "service name", s)
                .then(|| s.clone()),
        };
        if raw.name.is_none() && service.is_none() && raw.service.is_none() && http {
            self.err(
                f("name"),
                "required for an http listener without a default service (the name labels its metrics and logs)",
            );
        }
        let name = raw
            .name
            .clone()
            .or_else(|| service.clone())
            .unwrap_or_default();
        if raw.name.is_some() {
            self.name(&f("name"), "listener name", &name);
        }
        let kind = match raw.kind.as_deref() {
            None | Some("mesh") => ListenerKind::Mesh,
            Some("ingress") => ListenerKind::Ingress,
            Some(other) => {
                self.err(
                    f("kind"),
                    format!("{other:?} is not a listener kind; use \"mesh\" or \"ingress\""),
                );
                ListenerKind::Mesh
            }
        };
        let tls = raw.tls.as_ref().and_then(|t| {
            if kind != ListenerKind::Ingress || !http {
                self.err(
                    f("tls"),
                    "only an http listener of kind = \"ingress\" serves its own certificate",
                );
                return None;
            }
            self.listener_tls(i, t)
        });
        let access_log = raw.access_log.as_deref().and_then(|a| {
            if !http {
                self.err(f("access_log"), "only http listeners write an access log");
                return None;
            }
            match a {
                "" => {
                    self.err(f("access_log"), "is empty; use \"stdout\" or a file path");
                    None
                }
                "stdout" => Some(AccessLog::Stdout),
                path => Some(AccessLog::File(self.resolve(Path::new(path)))),
            }
        });
        let request_timeout = raw.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT);
        self.duration_range(
            &f("request_timeout"),
            request_timeout,
            Duration::from_millis(1),
            Duration::from_secs(24 * 3600),
        );
        let header_timeout = raw.header_timeout.unwrap_or(DEFAULT_HEADER_TIMEOUT);
        self.duration_range(
            &f("header_timeout"),
            header_timeout,
            Duration::from_millis(1),
            Duration::from_secs(3600),
        );
        if !http && raw.header_timeout.is_some() {
            self.err(
                f("header_timeout"),
                "only http listeners read request heads",
            );
        }
        if !http && raw.request_timeout.is_some() {
            self.err(
                f("request_timeout"),
                "only http listeners time requests; a tcp listener has idle_timeout",
            );
        }
        let lb = match raw.lb.as_deref() {
            None => Some(Policy::RoundRobin),
            Some(p) => match p.parse::<Policy>() {
                Ok(p) => Some(p),
                Err(_) => {
                    self.err(
                        f("lb"),
                        format!(
                            "{p:?} is not a load-balancing policy; use \"round_robin\", \"least_request\" or \"ring_hash\""
                        ),
                    );
                    None
                }
            },
        };
        let source_service = raw.source_service.clone();
        if let Some(src) = &source_service
            && self.name(&f("source_service"), "service name", src)
            && let Some(id) = id
            && !id.allowed_services.iter().any(|s| s == src)
        {
            self.err(
                f("source_service"),
                format!(
                    "{src:?} is not in the node certificate, so peers would refuse the claim; issue a certificate with --service {src}"
                ),
            );
        }
        let max_connections = raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        self.count_range(
            &f("max_connections"),
            max_connections,
            1,
            MAX_MAX_CONNECTIONS,
        );
        let connect_timeout = raw.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        self.duration_range(
            &f("connect_timeout"),
            connect_timeout,
            Duration::from_millis(1),
            Duration::from_secs(300),
        );
        let idle_timeout = raw.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT);
        self.duration_range(
            &f("idle_timeout"),
            idle_timeout,
            Duration::from_millis(1),
            Duration::from_secs(7 * 24 * 3600),
        );
        let attempts = raw.attempts.unwrap_or(DEFAULT_ATTEMPTS);
        self.count_range(&f("attempts"), attempts, 1, MAX_ATTEMPTS);
        let o = raw.outlier.clone().unwrap_or_default();
        let outlier = OutlierConfig {
            consecutive_failures: o.consecutive_failures.unwrap_or(DEFAULT_OUTLIER_FAILURES),
            base_ejection: o.base_ejection.unwrap_or(DEFAULT_BASE_EJECTION),
            max_ejection: o.max_ejection.unwrap_or(DEFAULT_MAX_EJECTION),
        };
        self.count_range(
            &f("outlier.consecutive_failures"),
            outlier.consecutive_failures,
            1,
            1000,
        );
        self.duration_range(
            &f("outlier.base_ejection"),
            outlier.base_ejection,
            Duration::from_millis(1),
            Duration::from_secs(3600),
        );
        if outlier.max_ejection < outlier.base_ejection {
            self.err(
                f("outlier.max_ejection"),
                "must be at least outlier.base_ejection",
            );
        }
        if self.errors.len() != before {
            return None;
        }
        Some(ListenerConfig {
            name,
            bind: bind?,
            service,
            protocol: protocol?,
            lb: lb?,
            source_service,
            max_connections,
            connect_timeout,
            idle_timeout,
            attempts,
            zone_aware: raw.zone_aware.unwrap_or(true),
            outlier,
            kind,
            tls,
            access_log,
            request_timeout,
            header_timeout,
        })
    }

    fn listener_tls(&mut self, i: usize, raw: &RawListenerTls) -> Option<ListenerTls> {
        let cert = self.read_file(&format!("listener[{i}].tls.cert"), raw.cert.as_ref());
        let key = self.read_file(&format!("listener[{i}].tls.key"), raw.key.as_ref());
        let (Some((cert_path, cert_pem)), Some((key_path, key_pem))) = (cert, key) else {
            return None;
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .filter_map(Result::ok)
            .collect();
        if chain.is_empty() {
            self.err(
                format!("listener[{i}].tls.cert"),
                format!("{} holds no PEM certificate", cert_path.display()),
            );
            return None;
        }
        let key_ok = std::str::from_utf8(&key_pem)
            .ok()
            .and_then(|k| rcgen::KeyPair::from_pem(k).ok());
        match key_ok {
            None => {
                self.err(
                    format!("listener[{i}].tls.key"),
                    format!("{} is not a usable PEM private key", key_path.display()),
                );
                None
            }
            Some(k) => {
                let matches = x509_parser::parse_x509_certificate(&chain[0]).is_ok_and(|(_, x)| {
                    x.public_key().subject_public_key.data.as_ref() == k.public_key_raw()
                });
                if !matches {
                    self.err(
                        format!("listener[{i}].tls.key"),
                        format!(
                            "{} does not match the first certificate of {}",
                            key_path.display(),
                            cert_path.display()
                        ),
                    );
                    return None;
                }
                Some(ListenerTls {
                    cert: cert_path,
                    key: key_path,
                })
            }
        }
    }

    fn health(
        &mut self,
        i: usize,
        raw: Option<&RawHealth>,
        protocol: Protocol,
    ) -> Option<HealthConfig> {
        let f = |name: &str| format!("service[{i}].health.{name}");
        let empty = RawHealth::default();
        let raw = raw.unwrap_or(&empty);
        let errors_before = self.errors.len();
        let kind = match raw.kind.as_deref() {
            None => match protocol {
                Protocol::Http => HealthKind::Http,
                Protocol::Tcp => HealthKind::Tcp,
            },
            Some("tcp") => HealthKind::Tcp,
            Some("http") => HealthKind::Http,
            Some("none") => HealthKind::None,
            Some(other) => {
                self.err(
                    f("kind"),
                    format!(
                        "{other:?} is not a health check kind; use \"tcp\", \"http\" or \"none\""
                    ),
                );
                HealthKind::Tcp
            }
        };
        let path = raw
            .path
            .as_deref()
            .unwrap_or(DEFAULT_HEALTH_PATH)
            .to_string();
        if !path.starts_with('/') {
            self.err(f("path"), format!("{path:?} must start with '/'"));
        } else if !path.chars().all(|c| c.is_ascii_graphic()) {
            self.err(
                f("path"),
                format!("{path:?} contains spaces or other characters not allowed in a URL path; percent-encode them"),
            );
        }
        if raw.path.is_some() && kind != HealthKind::Http {
            let why = if raw.kind.is_some() {
                String::new()
            } else {
                format!(" (the default for protocol \"{protocol}\")")
            };
            self.err(
                f("path"),
                format!(
                    "is only used by HTTP checks, and this check is \"{kind}\"{why}; set kind = \"http\" or remove path"
                ),
            );
        }
        let interval = raw.interval.unwrap_or(DEFAULT_HEALTH_INTERVAL);
        self.duration_range(
            &f("interval"),
            interval,
            MIN_HEALTH_INTERVAL,
            MAX_HEALTH_INTERVAL,
        );
        let timeout = raw.timeout.unwrap_or(DEFAULT_HEALTH_TIMEOUT);
        if timeout.is_zero() {
            self.err(f("timeout"), "must be greater than 0");
        } else if timeout > interval {
            self.err(
                f("timeout"),
                format!(
                    "{} is longer than the check interval ({}); it must be at most the interval",
                    humantime::format_duration(timeout),
                    humantime::format_duration(interval)
                ),
            );
        }
        let mut threshold = |name: &str, value: Option<u32>, default: u32| {
            let v = value.unwrap_or(default);
            if !(1..=MAX_THRESHOLD).contains(&v) {
                self.err(
                    f(name),
                    format!("{v} is out of range: it must be between 1 and {MAX_THRESHOLD}"),
                );
            }
            v
        };
        let healthy_threshold = threshold(
            "healthy_threshold",
            raw.healthy_threshold,
            DEFAULT_HEALTHY_THRESHOLD,
        );
        let unhealthy_threshold = threshold(
            "unhealthy_threshold",
            raw.unhealthy_threshold,
            DEFAULT_UNHEALTHY_THRESHOLD,
        );
        (self.errors.len() == errors_before).then_some(HealthConfig {
            kind,
            path,
            interval,
            timeout,
            healthy_threshold,
            unhealthy_threshold,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_at_line_resolves_array_tables() {
        let text = "[node]\nlisten = 1\n[[service]]\nname = 'a'\n[[service]]\nname = 'b'\n[service.health]\nkind = x\n";
        assert_eq!(field_at_line(text, 1).as_deref(), Some("node.listen"));
        assert_eq!(field_at_line(text, 3).as_deref(), Some("service[0].name"));
        assert_eq!(field_at_line(text, 4).as_deref(), Some("service[1]"));
        assert_eq!(
            field_at_line(text, 7).as_deref(),
            Some("service[1].health.kind")
        );
        assert_eq!(field_at_line("x = 1\n", 0).as_deref(), Some("x"));
        assert_eq!(field_at_line("\n", 0), None);
    }

    #[test]
    fn raw_config_accepts_integers_for_floats() {
        let raw = RawConfig::from_toml("[gossip]\nprobe_timeout = \"2s\"\n").unwrap();
        assert_eq!(raw.gossip.probe_timeout, Some(Duration::from_secs(2)));
    }

    #[test]
    fn errors_are_ordered_by_section() {
        assert!(section_rank("node.listen") < section_rank("tls.cert"));
        assert!(section_rank("tls") < section_rank("gossip.interval"));
        assert!(section_rank("gossip.interval") < section_rank("service[3].name"));
        assert!(section_rank("service[0]") < section_rank("--seed"));
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
