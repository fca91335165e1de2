//! Log lines about one thing (a peer, a certificate) at most once a minute,
//! and at most [`Throttle::LINES`] lines a minute in all: what a hostile or
//! misconfigured peer repeats thousands of times a second — even under a new
//! name each time — becomes a few lines a minute, saying how many were left
//! out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Says something about a key at most once every [`Throttle::EVERY`], at most
/// [`Throttle::LINES`] times per [`Throttle::EVERY`] over all keys, and
/// remembers at most [`Throttle::KEYS`] keys (a flood of names forgets, it
/// does not grow).
#[derive(Debug, Default)]
pub struct Throttle(Mutex<Inner>);

#[derive(Debug, Default)]
struct Inner {
    keys: HashMap<String, Said>,
    /// When the current window of [`Throttle::EVERY`] began, and how many
    /// lines were said in it.
    window: Option<(Instant, usize)>,
}

#[derive(Debug, Clone, Copy)]
struct Said {
    /// When it was last said (`None`: never, only left out).
    at: Option<Instant>,
    left_out: u64,
}

impl Throttle {
    /// How often one key is said.
    pub const EVERY: Duration = Duration::from_secs(60);
    /// Lines said per [`Throttle::EVERY`], over all keys.
    pub const LINES: usize = 16;
    /// Keys remembered.
    pub const KEYS: usize = 256;

    /// Whether to say it about `key` now.
    pub fn should_say(&self, key: &str) -> bool {
        self.say_at(key, Instant::now()).is_some()
    }

    /// `Some(n)` if it is to be said about `key` at `now`, `n` being how many
    /// times it was not said since the last time; `None` if not now.
    pub fn say_at(&self, key: &str, now: Instant) -> Option<u64> {
        let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Inner { keys, window } = &mut *inner;
        if keys.len() >= Self::KEYS && !keys.contains_key(key) {
            keys.clear();
        }
        let said = keys.entry(key.to_string()).or_insert(Said {
            at: None,
            left_out: 0,
        });
        let recent = said
            .at
            .is_some_and(|at| now.saturating_duration_since(at) < Self::EVERY);
        let (start, lines) = window.get_or_insert((now, 0));
        if now.saturating_duration_since(*start) >= Self::EVERY {
            (*start, *lines) = (now, 0);
        }
        if recent || *lines >= Self::LINES {
            said.left_out += 1;
            return None;
        }
        *lines += 1;
        let left_out = std::mem::take(&mut said.left_out);
        said.at = Some(now);
        Some(left_out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_says_each_key_once_a_minute_counting_what_it_left_out() {
        let t = Throttle::default();
        let start = Instant::now();
        assert_eq!(t.say_at("evil", start), Some(0));
        assert_eq!(t.say_at("evil", start + Duration::from_secs(1)), None);
        assert_eq!(t.say_at("evil", start + Duration::from_secs(2)), None);
        assert_eq!(t.say_at("other", start), Some(0), "each key on its own");
        assert_eq!(
            t.say_at("evil", start + Throttle::EVERY),
            Some(2),
            "a minute later, with the two left out"
        );
    }

    #[test]
    fn a_flood_of_new_keys_is_a_few_lines_a_minute_and_stays_bounded() {
        let t = Throttle::default();
        let start = Instant::now();
        let said = (0..Throttle::KEYS * 4)
            .filter(|n| t.say_at(&format!("flood-{n}"), start).is_some())
            .count();
        assert_eq!(said, Throttle::LINES);
        assert!(t.0.lock().unwrap().keys.len() <= Throttle::KEYS);
        let later = start + Throttle::EVERY;
        assert_eq!(t.say_at("flood-new", later), Some(0), "a new window");
    }
}
