//! The validated, typed configuration the node runs with ([`Config`] and its sections).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mesh_proto::lb::Policy;
use mesh_proto::tunnel::Protocol;
use serde::Serialize;
use serde::Serializer;
use time::OffsetDateTime;

use crate::config::defaults::{
    DEFAULT_DEAD_NODE_GRACE, DEFAULT_GOSSIP_INTERVAL, DEFAULT_MAX_CLOCK_SKEW,
    DEFAULT_MAX_DOCUMENTS, DEFAULT_MAX_MEMBERS, DEFAULT_MAX_SERVICES_PER_MEMBER,
    DEFAULT_MAX_STATE_BYTES, DEFAULT_RINGS, PROBE_TIMEOUT_INTERVALS, SUSPICION_TIMEOUT_INTERVALS,
    SUSPICION_TIMEOUT_MIN_INTERVALS,
};

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
    /// TCP address of the admin HTTP API (port 0: the OS picks); loopback only.
    pub admin: SocketAddr,
    /// How long the admin API waits for a request's headers, or for the next
    /// request on an idle keep-alive connection, and for a request body.
    #[serde(with = "humantime_serde")]
    pub admin_header_timeout: Duration,
    /// Admin API connections open at once; the next one is answered 503.
    pub admin_max_connections: u32,
    /// Caps on inbound QUIC connections, and the attempt rate above which
    /// Retry is required.
    pub incoming: IncomingConfig,
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
    /// Tunnel streams one peer connection may have open at once; `None`: what
    /// the hosted services can take from one caller
    /// ([`crate::endpoint::stream_cap`]).
    pub max_streams_per_connection: Option<u32>,
}

/// `node.max_connections`, `node.max_connections_per_address`,
/// `node.max_handshakes` and `node.retry_handshakes_above`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IncomingConfig {
    /// Inbound QUIC connections open at once.
    pub max_connections: u32,
    /// Inbound QUIC connections open at once from one peer host (IP address;
    /// loopback address and port).
    pub max_connections_per_address: u32,
    /// Inbound QUIC connections still in their handshake at once.
    pub max_handshakes: u32,
    /// Attempts a second from unvalidated addresses before Retry is required.
    pub retry_handshakes_above: u32,
}

impl IncomingConfig {
    /// The endpoint's limits.
    pub fn limits(&self) -> crate::endpoint::IncomingLimits {
        crate::endpoint::IncomingLimits {
            max_connections: self.max_connections as usize,
            max_per_address: self.max_connections_per_address as usize,
            max_handshakes: self.max_handshakes as usize,
            retry_above: self.retry_handshakes_above,
        }
    }
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
    /// Load-balancing weight, 1 to [`MAX_WEIGHT`](super::defaults::MAX_WEIGHT).
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
    /// Of those, how many one calling node may hold (so no one caller can
    /// take every slot); beyond, that caller gets `overloaded`.
    pub max_connections_per_caller: u32,
    /// How long connecting to the backend may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a keep-alive connection to an HTTP backend may wait unused for
    /// the next tunnelled request (zero: every request gets its own connection).
    #[serde(with = "humantime_serde")]
    pub http_idle_timeout: Duration,
    /// Whether the backend speaks HTTP/2 (prior knowledge, or the only
    /// protocol offered by ALPN over TLS) rather than HTTP/1.1.
    pub http2: bool,
    /// TLS to the backend (`tls = true`), with what verifies its certificate.
    pub tls: Option<BackendTls>,
    /// How long a tunnelled connection to this service (a TCP stream, an
    /// upgraded HTTP one) may carry no byte before this node closes it,
    /// whatever the caller's listener allows.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long the backend may take to start its answer to a tunnelled HTTP
    /// request once it has arrived, whatever deadline the caller sent.
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
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

/// TLS from this node to a service's backend (`tls = true`): the backend's
/// certificate must chain to `roots` and be valid for `server_name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendTls {
    /// `tls_ca`: the PEM file of the trusted CAs (absolute path); `None`: the
    /// system's trust store.
    pub ca: Option<PathBuf>,
    /// `tls_server_name`: the name sent as SNI and checked against the
    /// certificate (a DNS name or an IP address; default: the address's IP).
    pub server_name: String,
    /// The trusted CA certificates, read from `ca` or the system's store
    /// when the config was loaded.
    #[serde(skip)]
    pub roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// `tls_cert` and `tls_key`: the client certificate presented to a
    /// backend that asks for one; `None`: none is presented.
    pub client: Option<ClientIdentity>,
}

/// A client certificate this node presents to a backend (mutual TLS to the
/// backend), read when the config was loaded.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct ClientIdentity {
    /// `tls_cert` (absolute path).
    pub cert: PathBuf,
    /// `tls_key` (absolute path).
    pub key: PathBuf,
    /// The certificate chain, leaf first.
    #[serde(skip)]
    pub chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// The private key (its `Debug` shows no secret).
    #[serde(skip)]
    pub key_der: rustls_pki_types::PrivateKeyDer<'static>,
}

impl Clone for ClientIdentity {
    fn clone(&self) -> Self {
        ClientIdentity {
            cert: self.cert.clone(),
            key: self.key.clone(),
            chain: self.chain.clone(),
            key_der: self.key_der.clone_key(),
        }
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
    /// Hedge a slow open on a second endpoint (`proxy::hedge`).
    pub hedge: bool,
    /// The least time the first open has before a hedge starts.
    #[serde(with = "humantime_serde")]
    pub hedge_min_delay: Duration,
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
    /// The address to advertise once the QUIC endpoint is bound to `bound`
    /// (see [`NodeConfig::advertise_for`]).
    pub fn advertise_for(&self, bound: SocketAddr) -> SocketAddr {
        self.node.advertise_for(bound)
    }
}
