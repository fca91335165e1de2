//! Default values and bounds of every field: each limit a named constant.

use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::time::Duration;

/// Default `node.cluster`.
pub const DEFAULT_CLUSTER: &str = "shoal";
/// Default `node.zone`.
pub const DEFAULT_ZONE: &str = "default";
/// Default `node.admin`: loopback only, so the admin API is not exposed by accident.
pub const DEFAULT_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7101);
/// Default `node.admin_header_timeout`.
pub const DEFAULT_ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Accepted range of `node.admin_header_timeout`.
pub const ADMIN_HEADER_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(300));
/// Default `node.admin_max_connections`.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: u32 = 64;
/// Accepted range of `node.admin_max_connections`.
pub const ADMIN_MAX_CONNECTIONS_RANGE: (u32, u32) = (1, 4096);
/// Accepted range of `node.max_connections`,
/// `node.max_connections_per_address` and `node.max_handshakes` (defaults:
/// [`crate::endpoint::IncomingLimits::DEFAULT`]).
pub const MAX_CONNECTIONS_RANGE: (u32, u32) = (1, 1_000_000);
/// Accepted range of `node.retry_handshakes_above` (0: always Retry).
pub const RETRY_HANDSHAKES_RANGE: (u32, u32) = (0, 1_000_000);
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
/// Default `service.max_connections_per_caller`, in percent of the service's
/// `max_connections` (at least 1): one calling node can hold three quarters of
/// the slots, so a quarter stays for the others.
pub const DEFAULT_CALLER_SHARE_PERCENT: u32 = 75;
/// Default `service.connect_timeout` (to the local backend).
pub const DEFAULT_BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Shortest `service.connect_timeout`.
pub const MIN_BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_millis(1);
/// Longest `service.connect_timeout`.
pub const MAX_BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(300);
/// Default `service.http_idle_timeout`: how long a keep-alive connection to an
/// HTTP backend may sit unused. Shorter than the common backend keep-alive
/// timeouts (Node.js 5 s, nginx 75 s), so the backend rarely closes a connection
/// just as a request is sent on it.
pub const DEFAULT_HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Largest `service.http_idle_timeout`.
pub const MAX_HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default `listener.connect_timeout` (one attempt through the mesh).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default `listener.hedge_min_delay`: well above a healthy tunnel setup on a
/// LAN (a millisecond or two, one round trip on a pooled connection), far
/// below the connect timeout.
pub const DEFAULT_HEDGE_MIN_DELAY: Duration = Duration::from_millis(25);
/// Default `listener.idle_timeout`, and `service.idle_timeout` (the serving
/// node's bound on any caller's idle tunnel): ten minutes.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Default `service.response_timeout`: longer than a listener's default
/// `request_timeout`, so callers' own deadlines cut first.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `listener.request_timeout` (HTTP).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `listener.header_timeout` (HTTP).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Shortest `listener.connect_timeout`, `idle_timeout`, `request_timeout`,
/// `header_timeout` and `outlier.base_ejection`.
pub const MIN_LISTENER_TIMEOUT: Duration = Duration::from_millis(1);
/// Longest `listener.connect_timeout`.
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest `listener.idle_timeout` (a week).
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest `listener.request_timeout` (a day).
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Longest `listener.header_timeout`.
pub const MAX_HEADER_TIMEOUT: Duration = Duration::from_secs(3600);
/// Most `listener.outlier.consecutive_failures`.
pub const MAX_OUTLIER_FAILURES: u32 = 1000;
/// Longest `listener.outlier.base_ejection`.
pub const MAX_BASE_EJECTION: Duration = Duration::from_secs(3600);
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
