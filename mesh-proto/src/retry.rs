//! The retry budget: a cap on retries relative to the traffic, so that retries help
//! with scattered failures but cannot multiply the load on a backend that is
//! already failing (a retry storm). Over a sliding window (10 s by default) a retry
//! is allowed while the retries already made are fewer than the larger of
//! `ratio × requests` (20 % by default) and a floor of `min_per_sec × window` (so a
//! quiet route can still retry). This is the budget of Finagle and Linkerd.
//!
//! The window is kept as [`RetryBudget::SLOTS`] counters of `window / SLOTS` each,
//! so memory is constant whatever the rate, and the window slides by one slot at a
//! time. Time comes in as `now` ([`Instant`]), so tests replay exact timelines; an
//! instant older than one already seen counts as that newest one.

use std::time::{Duration, Instant};

/// Retry budget settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetConfig {
    /// Retries allowed per request in the window (0.2: one retry per five
    /// requests). Negative or not finite counts as 0.
    pub ratio: f64,
    /// Retries allowed per second of window however few requests there were.
    pub min_per_sec: u32,
    /// The sliding window; shorter than [`RetryBudgetConfig::MIN_WINDOW`] counts
    /// as that.
    pub window: Duration,
}

impl RetryBudgetConfig {
    /// Default `ratio`.
    pub const DEFAULT_RATIO: f64 = 0.2;
    /// Default `min_per_sec`.
    pub const DEFAULT_MIN_PER_SEC: u32 = 10;
    /// Default `window`.
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
    /// Shortest window.
    pub const MIN_WINDOW: Duration = Duration::from_secs(1);

    fn normalized(self) -> Self {
        RetryBudgetConfig {
            ratio: if self.ratio.is_finite() && self.ratio > 0.0 {
                self.ratio
            } else {
                0.0
            },
            min_per_sec: self.min_per_sec,
            window: self.window.max(Self::MIN_WINDOW),
        }
    }
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig {
            ratio: Self::DEFAULT_RATIO,
            min_per_sec: Self::DEFAULT_MIN_PER_SEC,
            window: Self::DEFAULT_WINDOW,
        }
    }
}

/// Requests and retries counted in the current window ([`RetryBudget::counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowCounts {
    /// Requests recorded ([`RetryBudget::record_request`]).
    pub requests: u64,
    /// Retries allowed ([`RetryBudget::try_retry`]).
    pub retries: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Which slot of time since the epoch this counter holds.
    index: u64,
    requests: u64,
    retries: u64,
}

/// One retry budget (the node keeps one per route or service, behind a lock).
#[derive(Debug, Clone)]
pub struct RetryBudget {
    config: RetryBudgetConfig,
    /// The first instant seen: slot 0 starts there.
    epoch: Option<Instant>,
    /// The newest slot index seen.
    latest: u64,
    slot_nanos: u128,
    slots: [Slot; RetryBudget::SLOTS],
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget::new(RetryBudgetConfig::default())
    }
}

impl RetryBudget {
    /// How many counters the window is cut into.
    pub const SLOTS: usize = 20;

    /// An empty budget.
    pub fn new(config: RetryBudgetConfig) -> RetryBudget {
        let config = config.normalized();
        RetryBudget {
            config,
            epoch: None,
            latest: 0,
            slot_nanos: (config.window.as_nanos() / Self::SLOTS as u128).max(1),
            slots: [Slot::default(); Self::SLOTS],
        }
    }

    /// The settings in force (after normalization).
    pub fn config(&self) -> RetryBudgetConfig {
        self.config
    }

    /// Counts one request (call it once per client request, not per try).
    pub fn record_request(&mut self, now: Instant) {
        self.slot(now).requests += 1;
    }

    /// Whether a retry may be made now; if so, counts it. A retry is allowed while
    /// the retries in the window are fewer than
    /// `max(min_per_sec × window in seconds, ratio × requests in the window)`.
    pub fn try_retry(&mut self, now: Instant) -> bool {
        let counts = self.counts(now);
        if (counts.retries as f64) < self.limit(counts.requests) {
            self.slot(now).retries += 1;
            true
        } else {
            false
        }
    }

    /// The requests and retries in the window ending at `now`.
    pub fn counts(&self, now: Instant) -> WindowCounts {
        let current = self.index(now);
        self.slots
            .iter()
            .filter(|s| s.index <= current && current - s.index < Self::SLOTS as u64)
            .fold(WindowCounts::default(), |acc, s| WindowCounts {
                requests: acc.requests + s.requests,
                retries: acc.retries + s.retries,
            })
    }

    /// How many retries the window allows with `requests` requests in it.
    fn limit(&self, requests: u64) -> f64 {
        let floor = f64::from(self.config.min_per_sec) * self.config.window.as_secs_f64();
        floor.max(self.config.ratio * requests as f64)
    }

    /// The slot index of `now`: never below the newest seen.
    fn index(&self, now: Instant) -> u64 {
        let since = self
            .epoch
            .map_or(Duration::ZERO, |e| now.saturating_duration_since(e));
        let index = u64::try_from(since.as_nanos() / self.slot_nanos).unwrap_or(u64::MAX);
        index.max(self.latest)
    }

    /// The counter for `now`, cleared if it held an older slot.
    fn slot(&mut self, now: Instant) -> &mut Slot {
        if self.epoch.is_none() {
            self.epoch = Some(now);
        }
        let index = self.index(now);
        self.latest = index;
        let slot = &mut self.slots[(index % Self::SLOTS as u64) as usize];
        if slot.index != index {
            *slot = Slot {
                index,
                requests: 0,
                retries: 0,
            };
        }
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ratio: f64, min_per_sec: u32, window_s: u64) -> RetryBudget {
        RetryBudget::new(RetryBudgetConfig {
            ratio,
            min_per_sec,
            window: Duration::from_secs(window_s),
        })
    }

    fn retries_allowed(b: &mut RetryBudget, now: Instant, tries: u32) -> u32 {
        (0..tries).filter(|_| b.try_retry(now)).count() as u32
    }

    #[test]
    fn defaults_are_twenty_percent_ten_per_second_ten_seconds() {
        let c = RetryBudgetConfig::default();
        assert_eq!(c.ratio, 0.2);
        assert_eq!(c.min_per_sec, 10);
        assert_eq!(c.window, Duration::from_secs(10));
    }

    #[test]
    fn the_floor_allows_retries_without_traffic() {
        let t0 = Instant::now();
        let mut b = budget(0.2, 3, 10);
        // 3 per second over 10 s: 30 retries, then no more.
        assert_eq!(retries_allowed(&mut b, t0, 100), 30);
        assert_eq!(b.counts(t0).retries, 30);
    }

    #[test]
    fn the_ratio_allows_a_share_of_the_requests() {
        let t0 = Instant::now();
        let mut b = budget(0.2, 0, 10);
        assert!(!b.try_retry(t0), "no requests, no floor: no retry");
        for _ in 0..1_000 {
            b.record_request(t0);
        }
        assert_eq!(retries_allowed(&mut b, t0, 1_000), 200);
        // Five more requests earn one more retry.
        for _ in 0..5 {
            b.record_request(t0);
        }
        assert_eq!(retries_allowed(&mut b, t0, 10), 1);
        assert_eq!(
            b.counts(t0),
            WindowCounts {
                requests: 1_005,
                retries: 201
            }
        );
    }

    #[test]
    fn the_larger_of_floor_and_ratio_applies() {
        let t0 = Instant::now();
        let mut b = budget(0.5, 1, 10); // floor 10
        for _ in 0..10 {
            b.record_request(t0);
        }
        assert_eq!(retries_allowed(&mut b, t0, 100), 10, "floor 10 > 0.5 × 10");
        for _ in 0..30 {
            b.record_request(t0);
        }
        assert_eq!(retries_allowed(&mut b, t0, 100), 10, "0.5 × 40 = 20 in all");
    }

    #[test]
    fn old_requests_and_retries_leave_the_window() {
        let t0 = Instant::now();
        let mut b = budget(0.1, 0, 10);
        for _ in 0..100 {
            b.record_request(t0);
        }
        assert_eq!(retries_allowed(&mut b, t0, 50), 10);
        // Still in the window just before it ends...
        let t9 = t0 + Duration::from_millis(9_400);
        assert!(!b.try_retry(t9));
        assert_eq!(b.counts(t9).requests, 100);
        // ...and gone once it has slid past.
        let t10 = t0 + Duration::from_secs(10);
        assert_eq!(b.counts(t10), WindowCounts::default());
        assert!(!b.try_retry(t10), "no requests left to earn a retry");
        for _ in 0..30 {
            b.record_request(t10);
        }
        assert_eq!(retries_allowed(&mut b, t10, 50), 3);
    }

    #[test]
    fn the_window_slides_slot_by_slot() {
        let t0 = Instant::now();
        let mut b = budget(1.0, 0, 10); // slots of 500 ms
        for s in 0..10u64 {
            b.record_request(t0 + Duration::from_secs(s));
        }
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(b.counts(at(9_999)).requests, 10);
        assert_eq!(b.counts(at(10_000)).requests, 9, "the t0 request left");
        assert_eq!(b.counts(at(14_999)).requests, 5);
        assert_eq!(b.counts(at(19_500)).requests, 0);
        // Retries spend what the window's requests earned: 5 at 14.999 s.
        assert_eq!(retries_allowed(&mut b, at(14_999), 10), 5);
    }

    #[test]
    fn an_instant_older_than_the_newest_counts_as_the_newest() {
        let t0 = Instant::now();
        let mut b = budget(1.0, 0, 10);
        let late = t0 + Duration::from_secs(30);
        b.record_request(t0);
        b.record_request(late);
        b.record_request(t0 + Duration::from_secs(1)); // out of order: counts at 30 s
        assert_eq!(b.counts(late).requests, 2);
        assert_eq!(b.counts(t0).requests, 2);
    }

    #[test]
    fn odd_settings_are_normalized() {
        let b = RetryBudget::new(RetryBudgetConfig {
            ratio: f64::NAN,
            min_per_sec: 0,
            window: Duration::ZERO,
        });
        assert_eq!(b.config().ratio, 0.0);
        assert_eq!(b.config().window, RetryBudgetConfig::MIN_WINDOW);
        let mut b = b;
        let t0 = Instant::now();
        b.record_request(t0);
        assert!(!b.try_retry(t0));
    }
}
