//! Listeners: client connections, bytes, failures, and the attempts, retries
//! and ejections of reaching an endpoint.

use super::Families;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use super::{
    EndpointLabels, ListenerDirectionLabels, ListenerLabels, ListenerReasonLabels, PeerLabels,
    latency_histogram, register,
};

/// The listener families.
#[derive(Debug)]
pub struct ProxyMetrics {
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
    /// Peers this node began to suspect from its own connections.
    pub peer_suspicions: Family<PeerLabels, Counter>,
    /// Opens hedged on a second endpoint because the first was slow.
    pub hedged_attempts: Family<ListenerLabels, Counter>,
    /// Hedged opens whose second endpoint was used.
    pub hedged_attempts_won: Family<ListenerLabels, Counter>,
}

impl ProxyMetrics {
    pub(super) fn register(r: &mut Families) -> Self {
        ProxyMetrics {
            listener_connections: register(
                r,
                "listener_connections",
                "Client connections accepted by listeners",
                Family::default(),
            ),
            listener_active: register(
                r,
                "listener_active_connections",
                "Client connections open now",
                Family::default(),
            ),
            listener_failures: register(
                r,
                "listener_connection_failures",
                "Client connections that failed, by reason",
                Family::default(),
            ),
            listener_bytes: register(
                r,
                "listener_bytes",
                "Bytes proxied by listeners",
                Family::default(),
            ),
            upstream_attempts: register(
                r,
                "upstream_attempts",
                "Attempts to reach an endpoint",
                Family::default(),
            ),
            upstream_retries: register(
                r,
                "upstream_retries",
                "Attempts after the first for one client connection",
                Family::default(),
            ),
            outlier_ejections: register(
                r,
                "outlier_ejections",
                "Endpoints ejected by passive outlier detection",
                Family::default(),
            ),
            tunnel_setup_seconds: register(
                r,
                "tunnel_setup_seconds",
                "Time from a client connection to an established upstream",
                Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            ),
            peer_suspicions: register(
                r,
                "peer_suspicions",
                "Peers suspected from this node's own connections (a dial failed, or the connection went silent)",
                Family::default(),
            ),
            hedged_attempts: register(
                r,
                "hedged_attempts",
                "Opens hedged on a second endpoint because the first was slow to accept",
                Family::default(),
            ),
            hedged_attempts_won: register(
                r,
                "hedged_attempts_won",
                "Hedged opens whose second endpoint was used",
                Family::default(),
            ),
        }
    }
}
