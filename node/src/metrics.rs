//! The node's Prometheus metrics: one registry per node (so several in-process
//! nodes never mix their figures), with the families every subsystem updates.
//! Served as text at `/metrics` by the admin API.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

/// Every metric the node exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Cluster members by state.
    pub members: Family<StateLabels, Gauge>,
    /// Gossip messages sent / received.
    pub gossip_messages: Family<DirectionLabels, Counter>,
    /// Gossip bytes sent / received (chitchat message bytes, before QUIC framing).
    pub gossip_bytes: Family<DirectionLabels, Counter>,
    /// Gossip messages dropped, by reason.
    pub gossip_dropped: Family<ReasonLabels, Counter>,
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
        Metrics {
            registry,
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
        }
    }

    /// Counts one refused peer.
    pub fn reject(&self, reason: &'static str) {
        self.rejected_peers
            .get_or_create(&ReasonLabels { reason })
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

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
