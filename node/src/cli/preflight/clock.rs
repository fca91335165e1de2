//! The clock check of `shoal check --pre`: each seed's clock against this
//! machine's. Members sign their records with their clock; a record from more
//! than `gossip.max_clock_skew` ahead of a member is refused by it, and a node
//! whose clock is that far behind cannot refute an accusation. Two nodes each
//! half that far off a seed, in opposite directions, are already too far
//! apart, so half of it fails the check; more than [`WARN_SKEW`] (which NTP
//! never lets happen) is a warning.

use std::net::SocketAddr;
use std::time::Duration;

pub(super) use shoal_node::gossip::clock::ask_time;
use shoal_node::gossip::clock::{ClockError, TimeSample};

use super::Finding;

/// A skew above this is a warning: a clock kept by NTP is off by milliseconds.
pub(super) const WARN_SKEW: Duration = Duration::from_secs(1);

/// The finding for one seed's clock (`asked`: its answer or why none came).
pub(super) fn judge(
    field: &str,
    addr: SocketAddr,
    asked: Result<TimeSample, ClockError>,
    max_skew: Duration,
) -> Finding {
    let field = format!("{field} clock");
    let sample = match asked {
        Ok(s) => s,
        Err(e) => {
            return Finding::new("warn", field, format!("{addr}: clock not checked: {e}"));
        }
    };
    let skew = sample.skew_ms();
    let uncertainty = sample.uncertainty_ms();
    let off = skew.unsigned_abs();
    let way = if skew >= 0 { "ahead of" } else { "behind" };
    let said = format!(
        "{addr}: its clock is {} {way} this machine's (± {} ms)",
        seconds(off),
        uncertainty
    );
    let limit = u64::try_from(max_skew.as_millis() / 2).unwrap_or(u64::MAX);
    if off.saturating_sub(uncertainty) > limit {
        let detail = format!(
            "{said}: more than half of gossip.max_clock_skew ({}): this node's records would be refused as from the future, or its refutations as too old; run NTP (chrony, systemd-timesyncd) on both machines",
            seconds(u64::try_from(max_skew.as_millis()).unwrap_or(u64::MAX))
        );
        return Finding::new("fail", field, detail);
    }
    if off > WARN_SKEW.as_millis() as u64 {
        let detail = format!("{said}: is NTP running on both machines?");
        return Finding::new("warn", field, detail);
    }
    Finding::new("ok", field, said)
}

/// Milliseconds as seconds for people: `0.042 s`, `12.5 s`.
fn seconds(ms: u64) -> String {
    if ms < 10_000 {
        format!("{:.3} s", ms as f64 / 1000.0)
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use shoal_node::gossip::clock::{ClockError, TimeSample};

    use super::judge;

    const MAX: Duration = Duration::from_secs(60);

    fn seed_at(skew_ms: i64, round_trip_ms: u64) -> Result<TimeSample, ClockError> {
        let sent_ms = 1_000_000;
        let middle = sent_ms + round_trip_ms / 2;
        Ok(TimeSample {
            sent_ms,
            theirs_ms: middle.checked_add_signed(skew_ms).unwrap(),
            received_ms: sent_ms + round_trip_ms,
        })
    }

    fn level(asked: Result<TimeSample, ClockError>) -> &'static str {
        judge(
            "node.seeds[0]",
            "127.0.0.1:7100".parse().unwrap(),
            asked,
            MAX,
        )
        .level
    }

    #[test]
    fn a_clock_within_a_second_is_ok_beyond_is_a_warning_and_half_the_allowed_skew_fails() {
        assert_eq!(level(seed_at(0, 2)), "ok");
        assert_eq!(level(seed_at(-900, 2)), "ok");
        assert_eq!(level(seed_at(1_500, 2)), "warn");
        assert_eq!(level(seed_at(-29_000, 2)), "warn");
        assert_eq!(level(seed_at(31_000, 2)), "fail");
        assert_eq!(level(seed_at(-45_000, 2)), "fail");
        // Only a skew beyond doubt fails: a slow answer widens the margin.
        assert_eq!(level(seed_at(31_000, 4_000)), "warn");
    }

    #[test]
    fn the_finding_says_which_way_how_far_and_what_to_do() {
        let f = judge(
            "node.seeds[1]",
            "127.0.0.1:7100".parse().unwrap(),
            seed_at(-45_000, 2),
            MAX,
        );
        assert_eq!(f.field, "node.seeds[1] clock");
        assert!(f.detail.contains("45.0 s behind"), "{}", f.detail);
        assert!(
            f.detail.contains("gossip.max_clock_skew (60.0 s)"),
            "{}",
            f.detail
        );
        assert!(f.detail.contains("NTP"), "{}", f.detail);
        let unanswered = judge(
            "node.seeds[0]",
            "127.0.0.1:7100".parse().unwrap(),
            Err(ClockError::Timeout(Duration::from_secs(3))),
            MAX,
        );
        assert_eq!(unanswered.level, "warn");
        assert!(unanswered.detail.contains("clock not checked"));
    }
}
