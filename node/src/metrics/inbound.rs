//! The serving side: tunnelled streams served by local service, refused by
//! reason, their bytes, the HTTP requests relayed to local backends, and the
//! local backends' health checks.

use super::Families;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::{
    HealthCheckLabels, Metrics, ServiceConnectionLabels, ServiceDirectionLabels, ServiceLabels,
    ServiceReasonLabels, register,
};

/// The serving-side families.
#[derive(Debug)]
pub struct InboundMetrics {
    /// Tunnelled streams served by this node, by local service.
    pub streams: Family<ServiceLabels, Counter>,
    /// Tunnelled streams open now.
    pub active: Family<ServiceLabels, Gauge>,
    /// Inbound streams refused, by reason.
    pub refusals: Family<ServiceReasonLabels, Counter>,
    /// Bytes through inbound tunnels.
    pub bytes: Family<ServiceDirectionLabels, Counter>,
    /// Tunnelled HTTP requests relayed to local backends, by connection reuse.
    pub http_requests: Family<ServiceConnectionLabels, Counter>,
    /// Active health checks of local backends, by service and result.
    pub health_checks: Family<HealthCheckLabels, Counter>,
}

impl InboundMetrics {
    pub(super) fn register(r: &mut Families) -> Self {
        InboundMetrics {
            streams: register(
                r,
                "inbound_streams",
                "Tunnelled streams served, by local service",
                Family::default(),
            ),
            active: register(
                r,
                "inbound_active_streams",
                "Tunnelled streams open now",
                Family::default(),
            ),
            refusals: register(
                r,
                "inbound_refusals",
                "Inbound tunnel streams refused, by reason",
                Family::default(),
            ),
            bytes: register(
                r,
                "inbound_bytes",
                "Bytes through inbound tunnels",
                Family::default(),
            ),
            http_requests: register(
                r,
                "inbound_http_requests",
                "Tunnelled HTTP requests relayed to local backends, by whether the backend connection was new or reused",
                Family::default(),
            ),
            health_checks: register(
                r,
                "health_checks",
                "Active health checks of local backends",
                Family::default(),
            ),
        }
    }
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
                .inbound
                .bytes
                .get_or_create(&ServiceDirectionLabels {
                    service: service.to_string(),
                    direction,
                })
                .clone()
        };
        let http = |connection| {
            metrics
                .inbound
                .http_requests
                .get_or_create(&ServiceConnectionLabels {
                    service: service.to_string(),
                    connection,
                })
                .clone()
        };
        Self {
            streams: metrics.inbound.streams.get_or_create(&labels).clone(),
            active: metrics.inbound.active.get_or_create(&labels).clone(),
            upstream: bytes("upstream"),
            downstream: bytes("downstream"),
            http_new: http("new"),
            http_reused: http("reused"),
        }
    }
}
