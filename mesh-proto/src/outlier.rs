//! Passive outlier detection: the caller's own verdict on an endpoint, from the
//! outcome of its real connection attempts, to complement the hosting node's active
//! checks (which are slower and see the backend from the inside). After
//! `consecutive_failures` failures in a row an endpoint is *ejected* — the caller
//! stops picking it — for `base_ejection × 2^(earlier ejections)`, capped at
//! `max_ejection`. The ejection ends by itself; the endpoint is then on *probation*
//! until its first success: one failure re-ejects it, for twice as long. The count
//! of earlier ejections decays to zero once the endpoint has gone `max_ejection`
//! without a failure since its last ejection ended.
//!
//! [`OutlierDetector`] is one endpoint's state; [`OutlierSet`] keeps one per key
//! (the node keeps a set per listener or service, keyed by node name). Time comes
//! in as `now`, so tests replay exact timelines.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Outlier detection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Failures in a row that eject an endpoint; 0 counts as 1.
    pub consecutive_failures: u32,
    /// The first ejection's length; each repeat doubles it.
    pub base_ejection: Duration,
    /// The longest ejection, and how long an endpoint must go without failure
    /// before its earlier ejections are forgotten.
    pub max_ejection: Duration,
}

impl OutlierConfig {
    /// Default `consecutive_failures`.
    pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 3;
    /// Default `base_ejection`.
    pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(5);
    /// Default `max_ejection`.
    pub const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(60);
    /// Longer `base_ejection` or `max_ejection` values count as this (one day).
    pub const LONGEST_EJECTION: Duration = Duration::from_secs(24 * 3600);

    fn normalized(self) -> Self {
        OutlierConfig {
            consecutive_failures: self.consecutive_failures.max(1),
            base_ejection: self.base_ejection.min(Self::LONGEST_EJECTION),
            max_ejection: self.max_ejection.min(Self::LONGEST_EJECTION),
        }
    }

    /// The length of an ejection preceded by `earlier` ones (not yet decayed).
    pub fn ejection_time(&self, earlier: u32) -> Duration {
        let c = self.normalized();
        let factor = 1u32.checked_shl(earlier).unwrap_or(u32::MAX);
        c.base_ejection
            .checked_mul(factor)
            .map_or(c.max_ejection, |d| d.min(c.max_ejection))
    }
}

impl Default for OutlierConfig {
    /// 3 failures; 5 s, doubling up to 60 s.
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: Self::DEFAULT_CONSECUTIVE_FAILURES,
            base_ejection: Self::DEFAULT_BASE_EJECTION,
            max_ejection: Self::DEFAULT_MAX_EJECTION,
        }
    }
}

/// One ejection, as [`OutlierDetector::record_failure`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    /// When it ends.
    pub until: Instant,
    /// How long it lasts.
    pub duration: Duration,
    /// Which ejection this is since the count last decayed: 1 for the first.
    pub count: u32,
}

/// The outlier state of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierDetector {
    config: OutlierConfig,
    failures_in_row: u32,
    times_ejected: u32,
    ejected_until: Option<Instant>,
    probation: bool,
    /// Since when the endpoint has gone without failure (its last failure or the
    /// end of its last ejection); decay is measured from here.
    clean_since: Option<Instant>,
}

impl OutlierDetector {
    /// A detector for an endpoint with no history (`config` normalized as its field
    /// docs say).
    pub fn new(config: OutlierConfig) -> Self {
        OutlierDetector {
            config: config.normalized(),
            failures_in_row: 0,
            times_ejected: 0,
            ejected_until: None,
            probation: false,
            clean_since: None,
        }
    }

    /// The settings in use.
    pub fn config(&self) -> OutlierConfig {
        self.config
    }

    /// Whether the endpoint is ejected at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }

    /// When the current (or last) ejection ends; `None` if never ejected.
    pub fn ejected_until(&self) -> Option<Instant> {
        self.ejected_until
    }

    /// Ejections counted for the backoff, as of the last recorded result.
    pub fn times_ejected(&self) -> u32 {
        self.times_ejected
    }

    /// Failures in a row so far (0 right after an ejection).
    pub fn failures_in_row(&self) -> u32 {
        self.failures_in_row
    }

    /// Whether one more failure ejects the endpoint: it came back from an ejection
    /// and has not succeeded since.
    pub fn on_probation(&self) -> bool {
        self.probation
    }

    /// Records one outcome; see [`OutlierDetector::record_success`] and
    /// [`OutlierDetector::record_failure`].
    pub fn record(&mut self, ok: bool, now: Instant) -> Option<Ejection> {
        if ok {
            self.record_success(now);
            None
        } else {
            self.record_failure(now)
        }
    }

    /// Records a success: it ends the failure streak and the probation. Ignored
    /// while ejected (it belongs to an attempt begun before the ejection).
    pub fn record_success(&mut self, now: Instant) {
        if self.is_ejected(now) {
            return;
        }
        self.decay(now);
        self.failures_in_row = 0;
        self.probation = false;
    }

    /// Records a failure; returns the ejection it caused, if any: after
    /// `consecutive_failures` in a row, or the first one on probation. Ignored while
    /// ejected (it belongs to an attempt begun before the ejection).
    pub fn record_failure(&mut self, now: Instant) -> Option<Ejection> {
        if self.is_ejected(now) {
            return None;
        }
        self.decay(now);
        self.failures_in_row = self.failures_in_row.saturating_add(1);
        self.clean_since = Some(now);
        if !self.probation && self.failures_in_row < self.config.consecutive_failures {
            return None;
        }
        let duration = self.config.ejection_time(self.times_ejected);
        let until = now.checked_add(duration)?;
        self.times_ejected = self.times_ejected.saturating_add(1);
        self.failures_in_row = 0;
        self.probation = true;
        self.ejected_until = Some(until);
        self.clean_since = Some(until);
        Some(Ejection {
            until,
            duration,
            count: self.times_ejected,
        })
    }

    /// Forgets earlier ejections (and the probation) once the endpoint has gone
    /// `max_ejection` without failure since its last ejection ended.
    fn decay(&mut self, now: Instant) {
        if let Some(since) = self.clean_since
            && now.saturating_duration_since(since) >= self.config.max_ejection
        {
            self.times_ejected = 0;
            self.probation = false;
            self.clean_since = None;
        }
    }

    /// Whether the state carries nothing a fresh detector would not.
    fn is_pristine(&self) -> bool {
        self.failures_in_row == 0 && self.times_ejected == 0 && !self.probation
    }
}

/// Outlier state for a set of endpoints, by key (say, node name, one set per
/// service). Only endpoints with a history take room: a success that leaves an
/// endpoint with nothing to remember drops its entry.
#[derive(Debug, Clone)]
pub struct OutlierSet<K> {
    config: OutlierConfig,
    endpoints: HashMap<K, OutlierDetector>,
}

impl<K: Eq + Hash> OutlierSet<K> {
    /// An empty set whose detectors use `config`.
    pub fn new(config: OutlierConfig) -> Self {
        OutlierSet {
            config: config.normalized(),
            endpoints: HashMap::new(),
        }
    }

    /// The settings in use.
    pub fn config(&self) -> OutlierConfig {
        self.config
    }

    /// Whether the endpoint `key` is ejected at `now` (an unknown key is not).
    pub fn is_ejected<Q>(&self, key: &Q, now: Instant) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.endpoints.get(key).is_some_and(|d| d.is_ejected(now))
    }

    /// The state of `key`, if it has a history.
    pub fn get<Q>(&self, key: &Q) -> Option<&OutlierDetector>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.endpoints.get(key)
    }

    /// Records one outcome for `key`; returns the ejection it caused, if any.
    /// The key is copied into the set only on a failure.
    pub fn record<Q>(&mut self, key: &Q, ok: bool, now: Instant) -> Option<Ejection>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if ok {
            let detector = self.endpoints.get_mut(key)?;
            detector.record_success(now);
            if detector.is_pristine() && !detector.is_ejected(now) {
                self.endpoints.remove(key);
            }
            None
        } else {
            let config = self.config;
            self.endpoints
                .entry(key.to_owned())
                .or_insert_with(|| OutlierDetector::new(config))
                .record_failure(now)
        }
    }

    /// Keeps only the endpoints for which `keep` is true: call it with the routing
    /// table's endpoints to forget the ones that left.
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.endpoints.retain(|k, _| keep(k));
    }

    /// The endpoints ejected at `now`, with the end of their ejection.
    pub fn ejected(&self, now: Instant) -> impl Iterator<Item = (&K, Instant)> + '_ {
        self.endpoints.iter().filter_map(move |(k, d)| {
            d.ejected_until
                .filter(|&until| now < until)
                .map(|until| (k, until))
        })
    }

    /// How many endpoints have a history.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether no endpoint has a history.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn config() -> OutlierConfig {
        OutlierConfig::default()
    }

    /// Records up to `n` failures at `at`, stopping at the ejection they cause.
    fn fail(d: &mut OutlierDetector, n: u32, at: Instant) -> Option<Ejection> {
        (0..n).find_map(|_| d.record_failure(at))
    }

    #[test]
    fn ejects_after_exactly_n_failures() {
        let t0 = Instant::now();
        let mut d = OutlierDetector::new(config());
        assert_eq!(d.record_failure(t0), None);
        assert_eq!(d.record_failure(t0 + S), None);
        assert!(!d.is_ejected(t0 + S));
        let e = d.record_failure(t0 + 2 * S).unwrap();
        assert_eq!(
            e,
            Ejection {
                until: t0 + 7 * S,
                duration: 5 * S,
                count: 1
            }
        );
        assert!(d.is_ejected(t0 + 2 * S));
        assert!(d.is_ejected(t0 + 7 * S - Duration::from_nanos(1)));
        assert!(!d.is_ejected(t0 + 7 * S), "ejection ends by itself");
    }

    #[test]
    fn a_success_resets_the_streak() {
        let t0 = Instant::now();
        let mut d = OutlierDetector::new(config());
        fail(&mut d, 2, t0);
        d.record_success(t0);
        assert_eq!(d.failures_in_row(), 0);
        assert_eq!(fail(&mut d, 2, t0), None);
        assert!(!d.is_ejected(t0));
        assert!(d.record_failure(t0).is_some());
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let t0 = Instant::now();
        let mut d = OutlierDetector::new(config());
        let mut now = t0;
        let mut lengths = Vec::new();
        for _ in 0..6 {
            // After the first, one failure is enough: the endpoint is on probation.
            let e = fail(&mut d, 3, now).unwrap();
            lengths.push(e.duration.as_secs());
            now = e.until;
        }
        assert_eq!(lengths, [5, 10, 20, 40, 60, 60]);
        assert_eq!(d.times_ejected(), 6);
        let c = config();
        assert_eq!(c.ejection_time(0), 5 * S);
        assert_eq!(c.ejection_time(40), 60 * S, "no overflow");
    }

    #[test]
    fn probation_re_ejects_on_one_failure_with_doubled_time() {
        let t0 = Instant::now();
        let mut d = OutlierDetector::new(config());
        let first = fail(&mut d, 3, t0).unwrap();
        // Failures of attempts begun before the ejection do not extend it.
        assert_eq!(d.record_failure(t0 + S), None);
        assert_eq!(d.ejected_until(), Some(first.until));
        assert!(d.on_probation());
        let back = first.until;
        let second = d.record_failure(back).unwrap();
        assert_eq!(second.duration, 10 * S);
        assert_eq!(second.count, 2);
        assert!(d.is_ejected(back));
    }

    #[test]
    fn a_success_ends_probation_but_not_the_backoff() {
        let t0 = Instant::now();
        let mut d = OutlierDetector::new(config());
        let first = fail(&mut d, 3, t0).unwrap();
        let back = first.until;
        d.record_success(back);
        assert!(!d.on_probation());
        assert_eq!(
            fail(&mut d, 2, back + S),
            None,
            "the streak rule applies again"
        );
        let second = d.record_failure(back + S).unwrap();
        assert_eq!(second.duration, 10 * S, "still doubled: not decayed yet");
    }

    #[test]
    fn successes_while_ejected_are_ignored() {
        let t0 = Instant::now();
        let mut d = OutlierDetector::new(config());
        let e = fail(&mut d, 3, t0).unwrap();
        d.record_success(t0 + S);
        assert!(d.on_probation());
        assert!(d.is_ejected(t0 + S));
        assert!(d.record_failure(e.until).is_some());
    }

    #[test]
    fn the_ejection_count_decays_after_max_ejection_without_failure() {
        let t0 = Instant::now();
        let mut d = OutlierDetector::new(config());
        let first = fail(&mut d, 3, t0).unwrap();
        let second = d.record_failure(first.until).unwrap();
        assert_eq!(second.count, 2);
        // Back, working, for just under max_ejection: the count stays.
        d.record_success(second.until);
        d.record_success(second.until + 59 * S);
        assert_eq!(d.times_ejected(), 2);
        // A full max_ejection after the ejection ended: forgotten.
        d.record_success(second.until + 60 * S);
        assert_eq!(d.times_ejected(), 0);
        let third = fail(&mut d, 3, second.until + 61 * S).unwrap();
        assert_eq!(third.duration, 5 * S);
        assert_eq!(third.count, 1);
    }

    #[test]
    fn a_failure_restarts_the_decay_clock() {
        let t0 = Instant::now();
        let mut d = OutlierDetector::new(config());
        let e = fail(&mut d, 3, t0).unwrap();
        d.record_success(e.until);
        d.record_failure(e.until + 30 * S);
        d.record_success(e.until + 70 * S);
        assert_eq!(d.times_ejected(), 1, "only 40 s since the last failure");
        d.record_success(e.until + 90 * S);
        assert_eq!(d.times_ejected(), 0);
    }

    #[test]
    fn config_is_normalized() {
        let t0 = Instant::now();
        let mut d = OutlierDetector::new(OutlierConfig {
            consecutive_failures: 0,
            base_ejection: Duration::MAX,
            max_ejection: Duration::MAX,
        });
        let e = d.record_failure(t0).unwrap();
        assert_eq!(e.duration, OutlierConfig::LONGEST_EJECTION);
        // base above max: every ejection is max long.
        let c = OutlierConfig {
            base_ejection: 10 * S,
            max_ejection: 2 * S,
            ..config()
        };
        assert_eq!(c.ejection_time(0), 2 * S);
    }

    #[test]
    fn the_set_tracks_endpoints_by_key() {
        let t0 = Instant::now();
        let mut set: OutlierSet<String> = OutlierSet::new(config());
        assert!(!set.is_ejected("a", t0));
        assert_eq!(set.record("a", true, t0), None);
        assert!(set.is_empty(), "a success alone leaves nothing to remember");
        assert_eq!(set.record("a", false, t0), None);
        assert_eq!(set.record("b", false, t0), None);
        assert_eq!(set.record("a", false, t0), None);
        let e = set.record("a", false, t0).unwrap();
        assert!(set.is_ejected("a", t0));
        assert!(!set.is_ejected("b", t0));
        assert_eq!(
            set.ejected(t0).collect::<Vec<_>>(),
            [(&"a".to_string(), e.until)]
        );
        assert_eq!(set.ejected(e.until).count(), 0);
        // A success resets b, whose entry then goes.
        set.record(&"b".to_string(), true, t0);
        assert!(set.get("b").is_none());
        assert_eq!(set.len(), 1);
        // a left the routing table.
        set.retain(|k| k != "a");
        assert!(set.is_empty());
        assert!(!set.is_ejected("a", t0));
    }

    #[test]
    fn the_set_keeps_a_backoff_history_after_success() {
        let t0 = Instant::now();
        let mut set: OutlierSet<String> = OutlierSet::new(config());
        for _ in 0..3 {
            set.record("a", false, t0);
        }
        let back = set.get("a").unwrap().ejected_until().unwrap();
        set.record("a", true, back);
        assert_eq!(set.get("a").unwrap().times_ejected(), 1);
        for _ in 0..3 {
            set.record("a", false, back + S);
        }
        assert_eq!(
            set.get("a").unwrap().ejected_until(),
            Some(back + S + 10 * S)
        );
    }
}
