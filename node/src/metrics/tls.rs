//! This node's certificate and its peers' connections: handshakes refused,
//! QUIC connections opened, accepted and recycled, and when the certificate
//! expires.

use super::Families;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::{ReasonLabels, register};

/// The TLS and peer-connection families.
#[derive(Debug)]
pub struct TlsMetrics {
    /// Peers refused during the TLS handshake, by reason.
    pub rejected_peers: Family<ReasonLabels, Counter>,
    /// QUIC connections opened by this node (outbound).
    pub connections_opened: Counter,
    /// QUIC connections accepted by this node (inbound).
    pub connections_accepted: Counter,
    /// QUIC connections closed or retired because of certificates, by reason.
    pub connections_recycled: Family<ReasonLabels, Counter>,
    /// When this node's certificate expires (unix seconds).
    pub certificate_expiry: Gauge,
    /// 1 while this node's certificate expires within 7 days, else 0.
    pub certificate_expires_soon: Gauge,
    /// Reloads of this node's TLS files refused (the current ones kept), by reason.
    pub reloads_refused: Family<ReasonLabels, Counter>,
    /// Inbound QUIC connection attempts refused before any handshake, by reason.
    pub incoming_refused: Family<ReasonLabels, Counter>,
    /// Inbound QUIC connection attempts asked to prove their address (Retry).
    pub quic_retries: Counter,
    /// The version of the revocation list in force (0: none).
    pub revocation_list_version: Gauge,
    /// Entries of the revocation list in force.
    pub revocation_entries: Gauge,
    /// Revocation lists refused (from the admin API or this node's disk), by reason.
    pub revocation_lists_refused: Family<ReasonLabels, Counter>,
}

impl TlsMetrics {
    pub(super) fn register(r: &mut Families) -> Self {
        TlsMetrics {
            rejected_peers: register(
                r,
                "rejected_peers",
                "Peers refused during the TLS handshake, by reason",
                Family::default(),
            ),
            connections_opened: register(
                r,
                "quic_connections_opened",
                "QUIC connections opened to peers",
                Counter::default(),
            ),
            connections_accepted: register(
                r,
                "quic_connections_accepted",
                "QUIC connections accepted from peers",
                Counter::default(),
            ),
            connections_recycled: register(
                r,
                "quic_connections_recycled",
                "QUIC connections closed or retired because of certificates, by reason",
                Family::default(),
            ),
            certificate_expiry: register(
                r,
                "certificate_expiry_timestamp_seconds",
                "When this node's certificate expires (unix seconds)",
                Gauge::default(),
            ),
            certificate_expires_soon: register(
                r,
                "certificate_expires_soon",
                "1 while this node's certificate expires within 7 days (renew it: shoal-pki issue --renew), else 0",
                Gauge::default(),
            ),
            reloads_refused: register(
                r,
                "tls_reloads_refused",
                "Reloads of this node's certificate, key or CA refused, the current ones kept (unusable files, another node's certificate, another trust domain, a hosted service no longer allowed), by reason",
                Family::default(),
            ),
            incoming_refused: register(
                r,
                "quic_incoming_refused",
                "Inbound QUIC connection attempts refused before any handshake (node.max_connections, node.max_connections_per_address), by reason",
                Family::default(),
            ),
            quic_retries: register(
                r,
                "quic_retries",
                "Inbound QUIC connection attempts asked to prove their address with a Retry (more than node.retry_handshakes_above attempts a second)",
                Counter::default(),
            ),
            revocation_list_version: register(
                r,
                "revocation_list_version",
                "Version of the CA-signed revocation list in force (0: none)",
                Gauge::default(),
            ),
            revocation_entries: register(
                r,
                "revocation_list_entries",
                "Entries of the revocation list in force",
                Gauge::default(),
            ),
            revocation_lists_refused: register(
                r,
                "revocation_lists_refused",
                "Revocation lists refused from the admin API or this node's data directory, by reason (lists from peers: shoal_gossip_rejected_total)",
                Family::default(),
            ),
        }
    }

    /// Counts one inbound connection attempt refused for `reason`.
    pub fn incoming_refused(&self, reason: &'static str) {
        self.incoming_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts one refused peer.
    pub fn reject(&self, reason: &'static str) {
        self.rejected_peers
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}
