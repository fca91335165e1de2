//! Validation of `[gossip]`: timing and caps.

use std::time::Duration;

use super::Validator;
use crate::config::defaults::{
    CLOCK_SKEW_RANGE, DEFAULT_DEAD_NODE_GRACE, DEFAULT_GOSSIP_INTERVAL, DEFAULT_MAX_CLOCK_SKEW,
    DEFAULT_MAX_DOCUMENTS, DEFAULT_MAX_MEMBERS, DEFAULT_MAX_SERVICES_PER_MEMBER,
    DEFAULT_MAX_STATE_BYTES, DEFAULT_RINGS, MAX_DOCUMENTS_RANGE, MAX_GOSSIP_INTERVAL,
    MAX_MEMBERS_RANGE, MAX_PROBE_TIMEOUT, MAX_SERVICES_RANGE, MAX_STATE_BYTES_RANGE,
    MAX_SUSPICION_TIMEOUT, MIN_GOSSIP_INTERVAL, MIN_GRACE, REMOVED_GOSSIP_FIELDS, RINGS_RANGE,
};
use crate::config::raw::RawGossip;
use crate::config::types::GossipConfig;

impl Validator {
    pub(super) fn gossip(&mut self, raw: &RawGossip) -> GossipConfig {
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
    pub(super) fn gossip_caps(&mut self, raw: &RawGossip) -> GossipConfig {
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
}
