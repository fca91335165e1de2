//! Membership and gossip: members by state, messages and bytes, what the
//! transport dropped and the protocol refused, accusations, and the
//! connections gossip holds.

use super::Families;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::register;
use super::{Direction, DirectionLabels, ReasonLabels, StateLabels};

/// The gossip families.
#[derive(Debug)]
pub struct GossipMetrics {
    /// Cluster members by state.
    pub members: Family<StateLabels, Gauge>,
    /// Gossip messages sent / received.
    pub messages: Family<DirectionLabels, Counter>,
    /// Gossip bytes sent / received (message bytes, before QUIC framing).
    pub bytes: Family<DirectionLabels, Counter>,
    /// Gossip messages dropped by the transport, by reason.
    pub dropped: Family<ReasonLabels, Counter>,
    /// Gossip items refused by the membership protocol, by reason.
    pub rejected: Family<ReasonLabels, Counter>,
    /// Accusations (suspicions) accepted.
    pub suspicions: Counter,
    /// Accusations of this node it refuted.
    pub refutations: Counter,
    /// Members held dead that this node accused again for a peer that still
    /// held them alive.
    pub reaccusations: Counter,
    /// Peers quarantined for sending a bad signature.
    pub quarantines: Counter,
    /// Bytes of signed records held.
    pub state_bytes: Gauge,
    /// The membership protocol's local health multiplier (0: healthy).
    pub local_health: Gauge,
    /// Open QUIC connections carrying gossip (dialled or accepted).
    pub connections: Gauge,
    /// Gossip connections closed for being over the cap.
    pub connections_shed: Counter,
}

impl GossipMetrics {
    pub(super) fn register(r: &mut Families) -> Self {
        GossipMetrics {
            members: register(r, "members", "Cluster members by state", Family::default()),
            messages: register(
                r,
                "gossip_messages",
                "Gossip messages sent and received",
                Family::default(),
            ),
            bytes: register(
                r,
                "gossip_bytes",
                "Gossip message bytes sent and received",
                Family::default(),
            ),
            dropped: register(
                r,
                "gossip_dropped",
                "Gossip messages dropped, by reason",
                Family::default(),
            ),
            rejected: register(
                r,
                "gossip_rejected",
                "Gossip items refused by the membership protocol (bad signature, not the origin's, from the future, over a cap, ...), by reason",
                Family::default(),
            ),
            suspicions: register(
                r,
                "gossip_suspicions",
                "Accusations that a member stopped answering, accepted",
                Counter::default(),
            ),
            refutations: register(
                r,
                "gossip_refutations",
                "Accusations of this node that it refuted",
                Counter::default(),
            ),
            reaccusations: register(
                r,
                "gossip_reaccusations",
                "Members held dead accused again for a peer that still held them alive after every accusation grew too old to hand on",
                Counter::default(),
            ),
            quarantines: register(
                r,
                "gossip_quarantines",
                "Peers ignored for a while after sending a bad signature",
                Counter::default(),
            ),
            state_bytes: register(
                r,
                "gossip_state_bytes",
                "Bytes of signed records held",
                Gauge::default(),
            ),
            local_health: register(
                r,
                "gossip_local_health",
                "Lifeguard's local health multiplier: 0 when healthy, up to 8 when this node wakes late (CPU starvation) or is accused (its probes then wait longer)",
                Gauge::default(),
            ),
            connections: register(
                r,
                "gossip_connections",
                "Open QUIC connections carrying gossip, dialled or accepted: about one per overlay neighbour (at most 8), plus the members reached in the last 15 s, at most 16 beyond the neighbours' for long",
                Gauge::default(),
            ),
            connections_shed: register(
                r,
                "gossip_connections_shed",
                "Gossip connections this node closed because it held more than 16 (least recently used first, never an overlay neighbour's): a seed during mass joins",
                Counter::default(),
            ),
        }
    }

    /// The counter of gossip items refused for `reason`.
    pub fn rejected_for(&self, reason: &'static str) -> Counter {
        self.rejected
            .get_or_create(&ReasonLabels { reason })
            .clone()
    }

    /// Counts one dropped gossip message.
    pub fn drop(&self, reason: &'static str) {
        self.dropped.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Counts one gossip message of `bytes` bytes.
    pub fn count(&self, direction: Direction, bytes: usize) {
        let labels = DirectionLabels {
            direction: direction.as_str(),
        };
        self.messages.get_or_create(&labels).inc();
        self.bytes.get_or_create(&labels).inc_by(bytes as u64);
    }

    /// Gossip bytes sent so far.
    pub fn sent_bytes(&self) -> u64 {
        self.bytes
            .get_or_create(&DirectionLabels { direction: "sent" })
            .get()
    }

    /// Open gossip connections, as last counted (`shoal_gossip_connections`).
    pub fn connections_open(&self) -> u64 {
        u64::try_from(self.connections.get()).unwrap_or(0)
    }
}
