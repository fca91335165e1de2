//! The node's Prometheus metrics: one registry per node (so several in-process
//! nodes never mix their figures), with the families every subsystem updates.
//! Served as text at `/metrics` by the admin API.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Direction of gossip traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Sent by this node.
    Sent,
    /// Received by this node.
    Received,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Sent => "sent",
            Direction::Received => "received",
        }
    }
}

/// Labels: `direction`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DirectionLabels {
    /// sent or received.
    pub direction: &'static str,
}

/// Labels: `reason`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why (a short snake_case word).
    pub reason: &'static str,
}

/// Labels: `task`, a long-running task of the node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TaskLabels {
    /// The task's name (`gossip`, `routing`, `routes`, `health:<service>`...).
    pub task: String,
}

/// Labels: `state` of a member.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StateLabels {
    /// alive, dead or draining.
    pub state: &'static str,
}

/// Labels: `service`, `result` of a health check.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HealthCheckLabels {
    /// The local service checked.
    pub service: String,
    /// success or failure.
    pub result: &'static str,
}

/// Labels: `listener`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ListenerLabels {
    /// The listener name.
    pub listener: String,
}

/// Labels: `listener`, `reason`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ListenerReasonLabels {
    /// The listener name.
    pub listener: String,
    /// Why (a short snake_case word).
    pub reason: &'static str,
}

/// Labels: `listener`, `direction`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ListenerDirectionLabels {
    /// The listener name.
    pub listener: String,
    /// `upstream` (client to service) or `downstream` (service to client).
    pub direction: &'static str,
}

/// Labels: `listener`, `node` (an upstream endpoint).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EndpointLabels {
    /// The listener name.
    pub listener: String,
    /// The endpoint's node.
    pub node: String,
}

/// Labels: `service`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ServiceLabels {
    /// The local service.
    pub service: String,
}

/// Labels: `service`, `direction`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ServiceDirectionLabels {
    /// The local service.
    pub service: String,
    /// `upstream` (caller to backend) or `downstream` (backend to caller).
    pub direction: &'static str,
}

/// Labels: `service`, `reason` of an inbound refusal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ServiceReasonLabels {
    /// The target service named in the stream header (or `-` if unreadable).
    pub service: String,
    /// The refusal (`unknown_service`, `unauthorized`, ...).
    pub reason: &'static str,
}

/// Labels: `service`, `connection` (`new` or `reused`) of a tunnelled HTTP request
/// relayed to a local backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ServiceConnectionLabels {
    /// The local service.
    pub service: String,
    /// Whether the request went over a new or a pooled keep-alive connection.
    pub connection: &'static str,
}

/// Labels of HTTP request metrics: `listener`, `route`, `service`, `class`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HttpLabels {
    /// The listener name.
    pub listener: String,
    /// The route document that matched (`-` for the listener's default service).
    pub route: String,
    /// The destination service (`-` when none was chosen).
    pub service: String,
    /// Status class of the response: `2xx`, `4xx`, `5xx`...
    pub class: &'static str,
}

/// Labels of HTTP retry metrics: `listener`, `route`, `service`, `reason`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HttpRetryLabels {
    /// The listener name.
    pub listener: String,
    /// The route document (`-` for the listener's default service).
    pub route: String,
    /// The destination service.
    pub service: String,
    /// What the previous try ran into: `connect_failure`, `5xx`, `reset`, `timeout`.
    pub reason: &'static str,
}

/// Every metric the node exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Cluster members by state.
    pub members: Family<StateLabels, Gauge>,
    /// Gossip messages sent / received.
    pub gossip_messages: Family<DirectionLabels, Counter>,
    /// Gossip bytes sent / received (message bytes, before QUIC framing).
    pub gossip_bytes: Family<DirectionLabels, Counter>,
    /// Gossip messages dropped by the transport, by reason.
    pub gossip_dropped: Family<ReasonLabels, Counter>,
    /// Gossip items refused by the membership protocol, by reason.
    pub gossip_rejected: Family<ReasonLabels, Counter>,
    /// Accusations (suspicions) accepted.
    pub gossip_suspicions: Counter,
    /// Accusations of this node it refuted.
    pub gossip_refutations: Counter,
    /// Peers quarantined for sending a bad signature.
    pub gossip_quarantines: Counter,
    /// Bytes of signed records held.
    pub gossip_state_bytes: Gauge,
    /// The membership protocol's local health multiplier (0: healthy).
    pub gossip_local_health: Gauge,
    /// Open QUIC connections carrying gossip (dialled or accepted).
    pub gossip_connections: Gauge,
    /// Long-running tasks restarted after they ended unexpectedly, by task.
    pub task_restarts: Family<TaskLabels, Counter>,
    /// Peers refused during the TLS handshake, by reason.
    pub rejected_peers: Family<ReasonLabels, Counter>,
    /// Active health checks of local backends, by service and result.
    pub health_checks: Family<HealthCheckLabels, Counter>,
    /// Routing-table rebuilds.
    pub routing_rebuilds: Counter,
    /// Service claims ignored because the publishing node's certificate does not name
    /// the service.
    pub ignored_service_claims: Counter,
    /// QUIC connections opened by this node (outbound).
    pub connections_opened: Counter,
    /// QUIC connections accepted by this node (inbound).
    pub connections_accepted: Counter,
    /// QUIC connections closed or retired because of certificates, by reason.
    pub connections_recycled: Family<ReasonLabels, Counter>,
    /// When this node's certificate expires (unix seconds).
    pub certificate_expiry: Gauge,
    /// Route documents in force (not deleted).
    pub route_documents: Gauge,
    /// Distinct route documents refused, by reason.
    pub route_rejections: Family<ReasonLabels, Counter>,
    /// When the first operator certificate that signed a route in force expires
    /// (unix seconds; 0 without routes).
    pub route_signer_expiry: Gauge,
    /// Route documents in force whose signer's certificate has expired.
    pub route_documents_expired: Gauge,
    /// Client connections accepted by listeners.
    pub listener_connections: Family<ListenerLabels, Counter>,
    /// Client connections open now.
    pub listener_active: Family<ListenerLabels, Gauge>,
    /// Client connections that failed, by reason.
    pub listener_failures: Family<ListenerReasonLabels, Counter>,
    /// Bytes proxied by listeners.
    pub listener_bytes: Family<ListenerDirectionLabels, Counter>,
    /// Attempts to reach an endpoint (one per try).
    pub upstream_attempts: Family<ListenerLabels, Counter>,
    /// Attempts after the first, for the same client connection.
    pub upstream_retries: Family<ListenerLabels, Counter>,
    /// Endpoints ejected by outlier detection.
    pub outlier_ejections: Family<EndpointLabels, Counter>,
    /// Time from a client's connection to an established upstream.
    pub tunnel_setup_seconds: Family<ListenerLabels, Histogram>,
    /// Tunnelled streams served by this node, by local service.
    pub inbound_streams: Family<ServiceLabels, Counter>,
    /// Tunnelled streams open now.
    pub inbound_active: Family<ServiceLabels, Gauge>,
    /// Inbound streams refused, by reason.
    pub inbound_refusals: Family<ServiceReasonLabels, Counter>,
    /// Bytes through inbound tunnels.
    pub inbound_bytes: Family<ServiceDirectionLabels, Counter>,
    /// Tunnelled HTTP requests relayed to local backends, by connection reuse.
    pub inbound_http_requests: Family<ServiceConnectionLabels, Counter>,
    /// HTTP requests answered by listeners, by route, service and status class.
    pub http_requests: Family<HttpLabels, Counter>,
    /// Time from a request's arrival to its response headers.
    pub http_duration: Family<HttpLabels, Histogram>,
    /// HTTP tries after the first, by route, service and reason.
    pub http_retries: Family<HttpRetryLabels, Counter>,
    /// HTTP retries refused by the listener's retry budget.
    pub http_retry_budget_exhausted: Family<ListenerLabels, Counter>,
}

/// The serving-side metric handles of one local service, looked up once at start
/// so that a tunnelled stream or request does not look them up again.
#[derive(Debug, Clone)]
pub struct ServiceCounters {
    /// `shoal_inbound_streams_total{service}`.
    pub streams: Counter,
    /// `shoal_inbound_active_streams{service}`.
    pub active: Gauge,
    /// `shoal_inbound_bytes_total{service,direction="upstream"}`.
    pub upstream: Counter,
    /// `shoal_inbound_bytes_total{service,direction="downstream"}`.
    pub downstream: Counter,
    /// `shoal_inbound_http_requests_total{service,connection="new"}`.
    pub http_new: Counter,
    /// `shoal_inbound_http_requests_total{service,connection="reused"}`.
    pub http_reused: Counter,
}

impl ServiceCounters {
    /// The handles of `service` in `metrics`.
    pub fn new(metrics: &Metrics, service: &str) -> Self {
        let labels = ServiceLabels {
            service: service.to_string(),
        };
        let bytes = |direction| {
            metrics
                .inbound_bytes
                .get_or_create(&ServiceDirectionLabels {
                    service: service.to_string(),
                    direction,
                })
                .clone()
        };
        let http = |connection| {
            metrics
                .inbound_http_requests
                .get_or_create(&ServiceConnectionLabels {
                    service: service.to_string(),
                    connection,
                })
                .clone()
        };
        Self {
            streams: metrics.inbound_streams.get_or_create(&labels).clone(),
            active: metrics.inbound_active.get_or_create(&labels).clone(),
            upstream: bytes("upstream"),
            downstream: bytes("downstream"),
            http_new: http("new"),
            http_reused: http("reused"),
        }
    }
}

fn setup_histogram() -> Histogram {
    // 100 µs to ~3 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every family registered under the `shoal_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("shoal");
        let members = Family::<StateLabels, Gauge>::default();
        let gossip_messages = Family::<DirectionLabels, Counter>::default();
        let gossip_bytes = Family::<DirectionLabels, Counter>::default();
        let gossip_dropped = Family::<ReasonLabels, Counter>::default();
        let rejected_peers = Family::<ReasonLabels, Counter>::default();
        let health_checks = Family::<HealthCheckLabels, Counter>::default();
        let routing_rebuilds = Counter::default();
        let ignored_service_claims = Counter::default();
        let connections_opened = Counter::default();
        let connections_accepted = Counter::default();
        registry.register("members", "Cluster members by state", members.clone());
        registry.register(
            "gossip_messages",
            "Gossip messages sent and received",
            gossip_messages.clone(),
        );
        registry.register(
            "gossip_bytes",
            "Gossip message bytes sent and received",
            gossip_bytes.clone(),
        );
        registry.register(
            "gossip_dropped",
            "Gossip messages dropped, by reason",
            gossip_dropped.clone(),
        );
        registry.register(
            "rejected_peers",
            "Peers refused during the TLS handshake, by reason",
            rejected_peers.clone(),
        );
        registry.register(
            "health_checks",
            "Active health checks of local backends",
            health_checks.clone(),
        );
        registry.register(
            "routing_table_rebuilds",
            "Routing-table rebuilds",
            routing_rebuilds.clone(),
        );
        registry.register(
            "ignored_service_claims",
            "Service claims ignored because the node certificate does not name the service",
            ignored_service_claims.clone(),
        );
        registry.register(
            "quic_connections_opened",
            "QUIC connections opened to peers",
            connections_opened.clone(),
        );
        registry.register(
            "quic_connections_accepted",
            "QUIC connections accepted from peers",
            connections_accepted.clone(),
        );
        let connections_recycled = Family::<ReasonLabels, Counter>::default();
        let certificate_expiry = Gauge::default();
        registry.register(
            "quic_connections_recycled",
            "QUIC connections closed or retired because of certificates, by reason",
            connections_recycled.clone(),
        );
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When this node's certificate expires (unix seconds)",
            certificate_expiry.clone(),
        );
        let membership = register_membership(&mut registry);
        let route_documents = Gauge::default();
        let route_rejections = Family::<ReasonLabels, Counter>::default();
        let route_signer_expiry = Gauge::default();
        registry.register(
            "route_documents",
            "Route documents in force (deleted routes not counted)",
            route_documents.clone(),
        );
        registry.register(
            "route_documents_rejected",
            "Distinct route documents refused (bad signature, signer, body...), by reason",
            route_rejections.clone(),
        );
        registry.register(
            "route_signer_expiry_timestamp_seconds",
            "When the first operator certificate that signed a route in force expires (unix seconds)",
            route_signer_expiry.clone(),
        );
        let listener_connections = Family::<ListenerLabels, Counter>::default();
        let listener_active = Family::<ListenerLabels, Gauge>::default();
        let listener_failures = Family::<ListenerReasonLabels, Counter>::default();
        let listener_bytes = Family::<ListenerDirectionLabels, Counter>::default();
        let upstream_attempts = Family::<ListenerLabels, Counter>::default();
        let upstream_retries = Family::<ListenerLabels, Counter>::default();
        let outlier_ejections = Family::<EndpointLabels, Counter>::default();
        let tunnel_setup_seconds = Family::<ListenerLabels, Histogram>::new_with_constructor(
            setup_histogram as fn() -> Histogram,
        );
        let inbound_streams = Family::<ServiceLabels, Counter>::default();
        let inbound_active = Family::<ServiceLabels, Gauge>::default();
        let inbound_refusals = Family::<ServiceReasonLabels, Counter>::default();
        let inbound_bytes = Family::<ServiceDirectionLabels, Counter>::default();
        let inbound_http_requests = Family::<ServiceConnectionLabels, Counter>::default();
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_duration = Family::<HttpLabels, Histogram>::new_with_constructor(
            setup_histogram as fn() -> Histogram,
        );
        let http_retries = Family::<HttpRetryLabels, Counter>::default();
        let http_retry_budget_exhausted = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered by listeners, by route, service and status class",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from an HTTP request's arrival to its response headers",
            http_duration.clone(),
        );
        registry.register(
            "http_retries",
            "HTTP tries after the first, by route, service and the previous try's failure",
            http_retries.clone(),
        );
        registry.register(
            "http_retry_budget_exhausted",
            "HTTP retries not made because the listener's retry budget was spent",
            http_retry_budget_exhausted.clone(),
        );
        registry.register(
            "listener_connections",
            "Client connections accepted by listeners",
            listener_connections.clone(),
        );
        registry.register(
            "listener_active_connections",
            "Client connections open now",
            listener_active.clone(),
        );
        registry.register(
            "listener_connection_failures",
            "Client connections that failed, by reason",
            listener_failures.clone(),
        );
        registry.register(
            "listener_bytes",
            "Bytes proxied by listeners",
            listener_bytes.clone(),
        );
        registry.register(
            "upstream_attempts",
            "Attempts to reach an endpoint",
            upstream_attempts.clone(),
        );
        registry.register(
            "upstream_retries",
            "Attempts after the first for one client connection",
            upstream_retries.clone(),
        );
        registry.register(
            "outlier_ejections",
            "Endpoints ejected by passive outlier detection",
            outlier_ejections.clone(),
        );
        registry.register(
            "tunnel_setup_seconds",
            "Time from a client connection to an established upstream",
            tunnel_setup_seconds.clone(),
        );
        registry.register(
            "inbound_streams",
            "Tunnelled streams served, by local service",
            inbound_streams.clone(),
        );
        registry.register(
            "inbound_active_streams",
            "Tunnelled streams open now",
            inbound_active.clone(),
        );
        registry.register(
            "inbound_refusals",
            "Inbound tunnel streams refused, by reason",
            inbound_refusals.clone(),
        );
        registry.register(
            "inbound_bytes",
            "Bytes through inbound tunnels",
            inbound_bytes.clone(),
        );
        registry.register(
            "inbound_http_requests",
            "Tunnelled HTTP requests relayed to local backends, by whether the backend connection was new or reused",
            inbound_http_requests.clone(),
        );
        Metrics {
            registry,
            listener_connections,
            listener_active,
            listener_failures,
            listener_bytes,
            upstream_attempts,
            upstream_retries,
            outlier_ejections,
            tunnel_setup_seconds,
            inbound_streams,
            inbound_active,
            inbound_refusals,
            inbound_bytes,
            inbound_http_requests,
            http_requests,
            http_duration,
            http_retries,
            http_retry_budget_exhausted,
            members,
            gossip_messages,
            gossip_bytes,
            gossip_dropped,
            rejected_peers,
            health_checks,
            routing_rebuilds,
            ignored_service_claims,
            connections_opened,
            connections_accepted,
            connections_recycled,
            certificate_expiry,
            route_documents,
            route_rejections,
            route_signer_expiry,
            gossip_rejected: membership.rejected,
            gossip_suspicions: membership.suspicions,
            gossip_refutations: membership.refutations,
            gossip_quarantines: membership.quarantines,
            gossip_state_bytes: membership.state_bytes,
            gossip_local_health: membership.local_health,
            gossip_connections: membership.connections,
            route_documents_expired: membership.documents_expired,
            task_restarts: membership.task_restarts,
        }
    }

    /// Counts one refused peer.
    pub fn reject(&self, reason: &'static str) {
        self.rejected_peers
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// The counter of gossip items refused for `reason`.
    pub fn gossip_rejected(&self, reason: &'static str) -> Counter {
        self.gossip_rejected
            .get_or_create(&ReasonLabels { reason })
            .clone()
    }

    /// Counts one restart of `task`.
    pub fn task_restarted(&self, task: &str) {
        self.task_restarts
            .get_or_create(&TaskLabels {
                task: task.to_string(),
            })
            .inc();
    }

    /// Counts one dropped gossip message.
    pub fn gossip_drop(&self, reason: &'static str) {
        self.gossip_dropped
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts one gossip message of `bytes` bytes.
    pub fn gossip(&self, direction: Direction, bytes: usize) {
        let labels = DirectionLabels {
            direction: direction.as_str(),
        };
        self.gossip_messages.get_or_create(&labels).inc();
        self.gossip_bytes
            .get_or_create(&labels)
            .inc_by(bytes as u64);
    }

    /// Gossip bytes sent so far.
    pub fn gossip_sent_bytes(&self) -> u64 {
        self.gossip_bytes
            .get_or_create(&DirectionLabels { direction: "sent" })
            .get()
    }

    /// Open gossip connections, as last counted (`shoal_gossip_connections`).
    pub fn gossip_connections_open(&self) -> u64 {
        u64::try_from(self.gossip_connections.get()).unwrap_or(0)
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The membership protocol's and the supervisor's families.
struct MembershipFamilies {
    rejected: Family<ReasonLabels, Counter>,
    suspicions: Counter,
    refutations: Counter,
    quarantines: Counter,
    state_bytes: Gauge,
    local_health: Gauge,
    connections: Gauge,
    documents_expired: Gauge,
    task_restarts: Family<TaskLabels, Counter>,
}

fn register_membership(registry: &mut Registry) -> MembershipFamilies {
    let f = MembershipFamilies {
        rejected: Family::default(),
        suspicions: Counter::default(),
        refutations: Counter::default(),
        quarantines: Counter::default(),
        state_bytes: Gauge::default(),
        local_health: Gauge::default(),
        connections: Gauge::default(),
        documents_expired: Gauge::default(),
        task_restarts: Family::default(),
    };
    registry.register(
        "route_documents_expired",
        "Route documents in force whose operator certificate has expired (they stay in force until replaced)",
        f.documents_expired.clone(),
    );
    registry.register(
        "gossip_rejected",
        "Gossip items refused by the membership protocol (bad signature, not the origin's, from the future, over a cap, ...), by reason",
        f.rejected.clone(),
    );
    registry.register(
        "gossip_suspicions",
        "Accusations that a member stopped answering, accepted",
        f.suspicions.clone(),
    );
    registry.register(
        "gossip_refutations",
        "Accusations of this node that it refuted",
        f.refutations.clone(),
    );
    registry.register(
        "gossip_quarantines",
        "Peers ignored for a while after sending a bad signature",
        f.quarantines.clone(),
    );
    registry.register(
        "gossip_state_bytes",
        "Bytes of signed records held",
        f.state_bytes.clone(),
    );
    registry.register(
        "gossip_local_health",
        "Lifeguard's local health multiplier: 0 when healthy, up to 8 when this node wakes late (CPU starvation) or is accused (its probes then wait longer)",
        f.local_health.clone(),
    );
    registry.register(
        "gossip_connections",
        "Open QUIC connections carrying gossip, dialled or accepted: about one per overlay neighbour (at most 8), plus the members reached in the last 15 s",
        f.connections.clone(),
    );
    registry.register(
        "task_restarts",
        "Long-running tasks restarted after they ended unexpectedly, by task",
        f.task_restarts.clone(),
    );
    f
}
