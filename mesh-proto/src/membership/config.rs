//! The tunables of the membership protocol: its timing and its caps. Every limit
//! is a named default here; the node's `[gossip]` config section overrides some.

use std::time::Duration;

/// Default time between gossip rounds.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(250);
/// Default rounds between two anti-entropy exchanges.
pub const DEFAULT_SYNC_EVERY: u32 = 4;
/// Default bound on how far ahead of this node's clock a signing time or a
/// generation may be (and how far behind a refutation may be signed).
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Default time a dead member's records are kept (and listed as dead) before they
/// are forgotten.
pub const DEFAULT_DEAD_GRACE: Duration = Duration::from_secs(300);
/// Default time a forgotten or replaced generation stays refused.
pub const DEFAULT_TOMBSTONE_TTL: Duration = Duration::from_secs(3600);
/// Default most members (node names) the state admits.
pub const DEFAULT_MAX_MEMBERS: usize = 16_384;
/// Default most services one member may publish.
pub const DEFAULT_MAX_SERVICES_PER_MEMBER: usize = 64;
/// Default most bytes of records the state holds.
pub const DEFAULT_MAX_STATE_BYTES: usize = 64 << 20;
/// Default most route documents the state holds.
pub const DEFAULT_MAX_DOCUMENTS: usize = 1024;
/// Default most open suspicions.
pub const DEFAULT_MAX_SUSPICIONS: usize = 8192;
/// Default most tombstones remembered.
pub const DEFAULT_MAX_TOMBSTONES: usize = 32_768;
/// Default suspicions one accuser may raise at once (token bucket capacity).
pub const DEFAULT_SUSPICION_BURST: u32 = 8;
/// Default time for an accuser's budget to win back one suspicion.
pub const DEFAULT_SUSPICION_REFILL: Duration = Duration::from_secs(2);
/// Distinct accusers past the first at which the suspicion timeout is shortest.
pub const DEFAULT_CONFIRMATIONS_FOR_MIN: u32 = 2;

/// Timing of the protocol. Probe and suspicion timeouts default to multiples of
/// the interval ([`Timing::from_interval`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    /// Time between rounds: one probe, one push of what is still queued.
    pub interval: Duration,
    /// How long a probe waits for its answer before the prober accuses.
    pub probe_timeout: Duration,
    /// Suspicion timeout with one accuser: the accused has this long to refute.
    pub suspicion_max: Duration,
    /// Suspicion timeout once [`Timing::confirmations_for_min`] further accusers agree.
    pub suspicion_min: Duration,
    /// See [`Timing::suspicion_min`].
    pub confirmations_for_min: u32,
    /// Rounds between two anti-entropy exchanges.
    pub sync_every: u32,
    /// Rings of the overlay ([`super::overlay`]): a node talks to at most
    /// `2 × rings` neighbours.
    pub rings: usize,
    /// How long a dead member is kept before it is forgotten.
    pub dead_grace: Duration,
    /// How long a forgotten or replaced generation stays refused.
    pub tombstone_ttl: Duration,
    /// Allowed clock difference between members.
    pub max_clock_skew: Duration,
    /// An accuser's budget wins back one suspicion per this much time.
    pub suspicion_refill: Duration,
}

impl Timing {
    /// The defaults for a round `interval`: probes time out after 4 rounds,
    /// suspicions after 20 rounds with one accuser and 6 with three.
    pub fn from_interval(interval: Duration) -> Timing {
        Timing {
            interval,
            probe_timeout: interval * 4,
            suspicion_max: interval * 20,
            suspicion_min: interval * 6,
            confirmations_for_min: DEFAULT_CONFIRMATIONS_FOR_MIN,
            sync_every: DEFAULT_SYNC_EVERY,
            rings: super::overlay::DEFAULT_RINGS,
            dead_grace: DEFAULT_DEAD_GRACE,
            tombstone_ttl: DEFAULT_TOMBSTONE_TTL,
            max_clock_skew: DEFAULT_MAX_CLOCK_SKEW,
            suspicion_refill: DEFAULT_SUSPICION_REFILL,
        }
    }

    /// How long suspicions stay valid: an accusation older than this is refused,
    /// and one that old is forgotten.
    pub fn suspicion_ttl(&self) -> Duration {
        (self.suspicion_max * 4).max(Duration::from_secs(60))
    }

    /// The suspicion timeout with `accusers` distinct accusers (Lifeguard's
    /// formula): the maximum with one, falling logarithmically to the minimum
    /// once `confirmations_for_min` more agree.
    pub fn suspicion_timeout(&self, accusers: usize) -> Duration {
        let confirmations = accusers.saturating_sub(1) as f64;
        let k = f64::from(self.confirmations_for_min.max(1));
        let min = self.suspicion_min.min(self.suspicion_max);
        let span = self.suspicion_max.saturating_sub(min).as_secs_f64();
        let fraction = ((confirmations + 1.0).ln() / (k + 1.0).ln()).clamp(0.0, 1.0);
        self.suspicion_max
            .saturating_sub(Duration::from_secs_f64(span * fraction))
            .max(min)
    }
}

impl Default for Timing {
    fn default() -> Self {
        Timing::from_interval(DEFAULT_INTERVAL)
    }
}

/// Caps on what peers can make this node hold. Reaching one refuses new items
/// (counted); nothing already held is evicted for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most members (node names).
    pub max_members: usize,
    /// Most service records per member.
    pub max_services_per_member: usize,
    /// Most bytes of records.
    pub max_state_bytes: usize,
    /// Most route documents.
    pub max_documents: usize,
    /// Most open suspicions.
    pub max_suspicions: usize,
    /// Most tombstones.
    pub max_tombstones: usize,
    /// Suspicions one accuser may raise at once.
    pub suspicion_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_members: DEFAULT_MAX_MEMBERS,
            max_services_per_member: DEFAULT_MAX_SERVICES_PER_MEMBER,
            max_state_bytes: DEFAULT_MAX_STATE_BYTES,
            max_documents: DEFAULT_MAX_DOCUMENTS,
            max_suspicions: DEFAULT_MAX_SUSPICIONS,
            max_tombstones: DEFAULT_MAX_TOMBSTONES,
            suspicion_burst: DEFAULT_SUSPICION_BURST,
        }
    }
}

/// Who this node is, and how it gossips.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The cluster name; bound into every signature.
    pub cluster: String,
    /// This node's name (its certificate's).
    pub name: String,
    /// This node's generation (its start time, ms since the Unix epoch).
    pub generation: u64,
    /// Timing.
    pub timing: Timing,
    /// Caps.
    pub limits: Limits,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_suspicion_timeout_falls_with_more_accusers() {
        let t = Timing::from_interval(Duration::from_millis(250));
        assert_eq!(t.suspicion_timeout(0), t.suspicion_max);
        assert_eq!(t.suspicion_timeout(1), t.suspicion_max);
        let two = t.suspicion_timeout(2);
        assert!(two < t.suspicion_max && two > t.suspicion_min, "{two:?}");
        assert_eq!(t.suspicion_timeout(3), t.suspicion_min);
        assert_eq!(t.suspicion_timeout(100), t.suspicion_min);
    }
}
