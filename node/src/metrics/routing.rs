//! The routing table and route documents: rebuilds, service claims ignored,
//! documents in force and refused, and their signers' expiry.

use super::Families;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::{ReasonLabels, register};

/// The routing families.
#[derive(Debug)]
pub struct RoutingMetrics {
    /// Routing-table rebuilds.
    pub rebuilds: Counter,
    /// View changes that could not change the table (liveness details only),
    /// so no rebuild.
    pub rebuilds_skipped: Counter,
    /// Service claims ignored because the publishing node's certificate does not
    /// name the service.
    pub ignored_service_claims: Counter,
    /// Route documents in force (not deleted).
    pub route_documents: Gauge,
    /// Distinct route documents refused, by reason.
    pub route_rejections: Family<ReasonLabels, Counter>,
    /// When the first operator certificate that signed a route in force expires
    /// (unix seconds; 0 without routes).
    pub route_signer_expiry: Gauge,
    /// Route documents in force whose signer's certificate has expired.
    pub route_documents_expired: Gauge,
}

impl RoutingMetrics {
    pub(super) fn register(r: &mut Families) -> Self {
        RoutingMetrics {
            rebuilds: register(
                r,
                "routing_table_rebuilds",
                "Routing-table rebuilds",
                Counter::default(),
            ),
            rebuilds_skipped: register(
                r,
                "routing_table_rebuilds_skipped",
                "Membership view changes that could not change the routing table (no rebuild)",
                Counter::default(),
            ),
            ignored_service_claims: register(
                r,
                "ignored_service_claims",
                "Service claims ignored because the node certificate does not name the service",
                Counter::default(),
            ),
            route_documents: register(
                r,
                "route_documents",
                "Route documents in force (deleted routes not counted)",
                Gauge::default(),
            ),
            route_rejections: register(
                r,
                "route_documents_rejected",
                "Distinct route documents refused (bad signature, signer, body...), by reason",
                Family::default(),
            ),
            route_signer_expiry: register(
                r,
                "route_signer_expiry_timestamp_seconds",
                "When the first operator certificate that signed a route in force expires (unix seconds)",
                Gauge::default(),
            ),
            route_documents_expired: register(
                r,
                "route_documents_expired",
                "Route documents in force whose operator certificate has expired (they stay in force until replaced)",
                Gauge::default(),
            ),
        }
    }
}
