//! The health state machine of one endpoint: consecutive check results flip it
//! between healthy and unhealthy, with separate thresholds each way (as Envoy's
//! and Consul's checkers do), so one lost probe does not eject an endpoint and one
//! lucky probe does not readmit it.
//!
//! A new endpoint is [`Health::Unknown`] until its first result, which decides at
//! once: waiting for a threshold at start would only delay a fresh node.

use crate::gossip::Health;

/// Tracks one endpoint's health from check results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthTracker {
    state: Health,
    ok_in_row: u32,
    fail_in_row: u32,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
}

impl HealthTracker {
    /// A tracker in [`Health::Unknown`]; thresholds below 1 count as 1.
    pub fn new(healthy_threshold: u32, unhealthy_threshold: u32) -> Self {
        HealthTracker {
            state: Health::Unknown,
            ok_in_row: 0,
            fail_in_row: 0,
            healthy_threshold: healthy_threshold.max(1),
            unhealthy_threshold: unhealthy_threshold.max(1),
        }
    }

    /// The current state.
    pub fn state(&self) -> Health {
        self.state
    }

    /// Records one check result; returns the new state if it changed.
    pub fn record(&mut self, ok: bool) -> Option<Health> {
        if ok {
            self.ok_in_row = self.ok_in_row.saturating_add(1);
            self.fail_in_row = 0;
        } else {
            self.fail_in_row = self.fail_in_row.saturating_add(1);
            self.ok_in_row = 0;
        }
        let next = match self.state {
            Health::Unknown if ok => Health::Healthy,
            Health::Unknown => Health::Unhealthy,
            Health::Healthy if self.fail_in_row >= self.unhealthy_threshold => Health::Unhealthy,
            Health::Unhealthy if self.ok_in_row >= self.healthy_threshold => Health::Healthy,
            s => s,
        };
        (next != self.state).then(|| {
            self.state = next;
            next
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_result_decides_then_thresholds_apply() {
        let mut t = HealthTracker::new(2, 3);
        assert_eq!(t.state(), Health::Unknown);
        assert_eq!(t.record(true), Some(Health::Healthy));
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(Health::Unhealthy));
        assert_eq!(t.record(true), None);
        assert_eq!(
            t.record(false),
            None,
            "a success streak is broken by a failure"
        );
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(Health::Healthy));
    }

    #[test]
    fn unknown_to_unhealthy_on_first_failure() {
        let mut t = HealthTracker::new(1, 1);
        assert_eq!(t.record(false), Some(Health::Unhealthy));
        assert_eq!(t.record(true), Some(Health::Healthy));
        assert_eq!(t.record(false), Some(Health::Unhealthy));
    }

    #[test]
    fn zero_thresholds_behave_as_one() {
        let mut t = HealthTracker::new(0, 0);
        t.record(true);
        assert_eq!(t.record(false), Some(Health::Unhealthy));
    }
}
