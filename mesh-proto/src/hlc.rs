//! The hybrid logical clock that versions route documents: a reading is the wall
//! clock in milliseconds plus a logical counter, so readings taken on one node only
//! ever grow (even when the wall clock steps back), and a node that has seen another
//! node's reading ([`Hlc::observe`]) stamps every later reading above it. Readings
//! are [`HlcTimestamp`]s; two nodes that stamp the same instant are still ordered,
//! by node name. The wall clock comes in as an argument (`wall_ms`, milliseconds
//! since the Unix epoch): this module never reads a clock.
//!
//! The rules are those of Kulkarni et al., "Logical Physical Clocks" (2014): a
//! reading is `(max(last.wall, now), logical)`, where the logical counter restarts
//! at 0 whenever the wall part moves forward and counts up otherwise. One addition:
//! a remote reading more than [`Hlc::max_drift_ms`] ahead of the local wall clock is
//! not adopted ([`Hlc::observe`] returns [`ClockDrift`]), so one member with a broken
//! clock, or a hostile one, cannot drag every node's clock into the far future.

use thiserror::Error;

use crate::gossip::HlcTimestamp;

/// A remote reading that [`Hlc::observe`] refused to adopt because it is too far
/// ahead of the local wall clock.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "the reading {remote_wall_ms} ms from node {node:?} is {ahead_ms} ms ahead of this node's \
     wall clock (the limit is {max_drift_ms} ms); check the clocks of both nodes (NTP)"
)]
pub struct ClockDrift {
    /// The node that took the remote reading.
    pub node: String,
    /// The wall part of the remote reading.
    pub remote_wall_ms: u64,
    /// How far ahead of the local wall clock it is.
    pub ahead_ms: u64,
    /// The limit it exceeded ([`Hlc::max_drift_ms`]).
    pub max_drift_ms: u64,
}

/// One node's hybrid logical clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hlc {
    node: String,
    /// The last reading taken or adopted: `(wall_ms, logical)`.
    last: (u64, u32),
    max_drift_ms: u64,
}

impl Hlc {
    /// Default [`Hlc::max_drift_ms`]: five minutes. Far more than NTP-synchronised
    /// clocks ever differ by, far less than a clock set to the wrong day.
    pub const DEFAULT_MAX_DRIFT_MS: u64 = 5 * 60 * 1000;

    /// A clock for `node` (the name stamped into every reading) that has taken no
    /// reading yet.
    pub fn new(node: impl Into<String>) -> Hlc {
        Hlc {
            node: node.into(),
            last: (0, 0),
            max_drift_ms: Self::DEFAULT_MAX_DRIFT_MS,
        }
    }

    /// The same clock with another drift limit for [`Hlc::observe`].
    pub fn with_max_drift_ms(mut self, max_drift_ms: u64) -> Hlc {
        self.max_drift_ms = max_drift_ms;
        self
    }

    /// The node name stamped into every reading.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The last reading taken or adopted, as `(wall_ms, logical)`; `(0, 0)` at first.
    pub fn last(&self) -> (u64, u32) {
        self.last
    }

    /// How far ahead of the local wall clock a remote reading may be and still be
    /// adopted by [`Hlc::observe`].
    pub fn max_drift_ms(&self) -> u64 {
        self.max_drift_ms
    }

    /// Takes a reading at wall-clock time `wall_ms`. Every reading is greater than
    /// the previous one and than every reading [`Hlc::observe`] adopted, whatever
    /// `wall_ms` does.
    pub fn now(&mut self, wall_ms: u64) -> HlcTimestamp {
        let (last_wall, last_logical) = self.last;
        self.last = if wall_ms > last_wall {
            (wall_ms, 0)
        } else {
            bump(last_wall, last_logical)
        };
        self.timestamp()
    }

    /// Adopts a reading seen from another node (the version of a route document
    /// received through gossip), so that every later [`Hlc::now`] is greater than
    /// it. Refuses, and leaves the clock unchanged, a reading more than
    /// [`Hlc::max_drift_ms`] ahead of `wall_ms`.
    pub fn observe(&mut self, remote: &HlcTimestamp, wall_ms: u64) -> Result<(), ClockDrift> {
        let ahead_ms = remote.wall_ms.saturating_sub(wall_ms);
        if ahead_ms > self.max_drift_ms {
            return Err(ClockDrift {
                node: remote.node.clone(),
                remote_wall_ms: remote.wall_ms,
                ahead_ms,
                max_drift_ms: self.max_drift_ms,
            });
        }
        let (last_wall, last_logical) = self.last;
        let wall = last_wall.max(remote.wall_ms).max(wall_ms);
        self.last = if wall == last_wall && wall == remote.wall_ms {
            bump(wall, last_logical.max(remote.logical))
        } else if wall == last_wall {
            bump(wall, last_logical)
        } else if wall == remote.wall_ms {
            bump(wall, remote.logical)
        } else {
            (wall, 0)
        };
        Ok(())
    }

    fn timestamp(&self) -> HlcTimestamp {
        HlcTimestamp {
            wall_ms: self.last.0,
            logical: self.last.1,
            node: self.node.clone(),
        }
    }
}

/// The reading right after `(wall, logical)`: the next logical count, or — once the
/// counter is exhausted (four billion readings in one millisecond) — the next
/// millisecond. Saturates at the largest reading.
fn bump(wall: u64, logical: u32) -> (u64, u32) {
    match logical.checked_add(1) {
        Some(next) => (wall, next),
        None => match wall.checked_add(1) {
            Some(next_wall) => (next_wall, 0),
            None => (wall, logical),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(wall_ms: u64, logical: u32, node: &str) -> HlcTimestamp {
        HlcTimestamp {
            wall_ms,
            logical,
            node: node.to_string(),
        }
    }

    #[test]
    fn follows_the_wall_clock_when_it_moves_forward() {
        let mut clock = Hlc::new("n1");
        assert_eq!(clock.now(100), ts(100, 0, "n1"));
        assert_eq!(clock.now(250), ts(250, 0, "n1"));
        assert_eq!(clock.now(250), ts(250, 1, "n1"));
        assert_eq!(clock.now(251), ts(251, 0, "n1"));
    }

    #[test]
    fn stays_monotonic_when_the_wall_clock_goes_backwards() {
        let mut clock = Hlc::new("n1");
        let mut previous = clock.now(10_000);
        for wall in [9_000, 10_000, 5, 0, 9_999, 10_001, 10_000] {
            let next = clock.now(wall);
            assert!(next > previous, "{next:?} after {previous:?}");
            previous = next;
        }
        assert_eq!(previous, ts(10_001, 1, "n1"));
    }

    #[test]
    fn observe_then_now_is_above_the_remote_reading() {
        // The remote is ahead in wall time.
        let mut clock = Hlc::new("a");
        clock.now(1_000);
        let remote = ts(1_500, 7, "z");
        clock.observe(&remote, 1_000).unwrap();
        let next = clock.now(1_000);
        assert!(next > remote, "{next:?}");
        assert_eq!(next, ts(1_500, 9, "a"));

        // Same wall time, remote has the higher logical count: still above it,
        // although "a" < "z" would lose a plain tie.
        let mut clock = Hlc::new("a");
        clock.now(2_000);
        let remote = ts(2_000, 3, "z");
        clock.observe(&remote, 2_000).unwrap();
        assert!(clock.now(1_999) > remote);

        // The local clock is ahead: observing an older reading changes nothing
        // that matters.
        let mut clock = Hlc::new("a");
        let before = clock.now(5_000);
        clock.observe(&ts(10, 0, "z"), 5_000).unwrap();
        assert!(clock.now(5_000) > before);

        // The wall clock is ahead of both.
        let mut clock = Hlc::new("a");
        clock.observe(&ts(10, 4, "z"), 20).unwrap();
        assert_eq!(clock.last(), (20, 0));
    }

    #[test]
    fn equal_readings_are_ordered_by_node_name() {
        let mut a = Hlc::new("node-a");
        let mut b = Hlc::new("node-b");
        let ra = a.now(42);
        let rb = b.now(42);
        assert_eq!((ra.wall_ms, ra.logical), (rb.wall_ms, rb.logical));
        assert!(rb > ra);
    }

    #[test]
    fn refuses_readings_from_the_far_future() {
        let mut clock = Hlc::new("a").with_max_drift_ms(1_000);
        clock.now(10_000);
        let err = clock.observe(&ts(11_001, 0, "z"), 10_000).unwrap_err();
        assert_eq!(err.ahead_ms, 1_001);
        assert!(err.to_string().contains("\"z\""), "{err}");
        assert_eq!(clock.last(), (10_000, 0));
        clock.observe(&ts(11_000, 0, "z"), 10_000).unwrap();
        assert_eq!(clock.last(), (11_000, 1));
    }

    #[test]
    fn the_logical_counter_carries_into_the_wall_part() {
        let mut clock = Hlc::new("a");
        clock.observe(&ts(7, u32::MAX - 1, "z"), 7).unwrap();
        assert_eq!(clock.last(), (7, u32::MAX));
        assert_eq!(clock.now(7), ts(8, 0, "a"));
        let mut clock = Hlc::new("a").with_max_drift_ms(u64::MAX);
        clock.observe(&ts(u64::MAX, u32::MAX, "z"), 0).unwrap();
        assert_eq!(clock.now(0), ts(u64::MAX, u32::MAX, "a"));
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Step {
            Now(u64),
            Observe(u64, u32, u64),
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                (0..10_000u64).prop_map(Step::Now),
                (0..10_000u64, 0..5u32, 0..10_000u64).prop_map(|(w, l, n)| Step::Observe(w, l, n)),
            ]
        }

        proptest! {
            #[test]
            fn readings_grow_and_exceed_everything_observed(steps in proptest::collection::vec(step(), 1..60)) {
                let mut clock = Hlc::new("m").with_max_drift_ms(u64::MAX);
                let mut floor: Option<HlcTimestamp> = None;
                for s in steps {
                    match s {
                        Step::Now(wall) => {
                            let reading = clock.now(wall);
                            if let Some(f) = &floor {
                                prop_assert!((reading.wall_ms, reading.logical) > (f.wall_ms, f.logical));
                            }
                            prop_assert!(reading.wall_ms >= wall);
                            floor = Some(reading);
                        }
                        Step::Observe(wall_ms, logical, now) => {
                            let remote = HlcTimestamp { wall_ms, logical, node: "r".into() };
                            clock.observe(&remote, now).unwrap();
                            if floor.as_ref().is_none_or(|f| (f.wall_ms, f.logical) < (wall_ms, logical)) {
                                floor = Some(remote);
                            }
                        }
                    }
                }
            }
        }
    }
}
