//! Peers this node suspects from its own connections, before gossip says
//! anything: a dial that fails or times out, or an attempt on which the peer's
//! connection went silent while another endpoint answered, makes the peer
//! suspect at once — for 1 s, doubling with each new suspicion up to 30 s —
//! and every listener and service of the node then avoids it while others are
//! healthy. An answer from the peer clears the suspicion.
//!
//! A suspicion is this node's own routing hint only: it is never gossiped, so
//! a hostile member cannot use it to make others avoid a node, and a node's
//! death stays the decision of the membership layer (signed, origin-checked).

use std::sync::Mutex;
use std::time::Duration;

use mesh_proto::outlier::{OutlierConfig, OutlierSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::metrics::PeerLabels;

/// How long a first suspicion lasts; each new one doubles it.
pub const FIRST_SUSPICION: Duration = Duration::from_secs(1);
/// The longest a suspicion lasts.
pub const LONGEST_SUSPICION: Duration = Duration::from_secs(30);
/// The longest a peer is doubted before it is suspected or cleared.
pub const LONGEST_DOUBT: Duration = Duration::from_secs(1);
/// Peers remembered before those no longer suspect are forgotten.
const REMEMBERED: usize = 1024;

/// The node-wide set of suspect peers (by node name).
#[derive(Debug)]
pub struct Suspects {
    set: Mutex<OutlierSet<String>>,
    /// Peers doubted until an instant: a hedge beat their open and their
    /// silence is being timed ([`Suspects::doubt`]).
    doubted: Mutex<std::collections::HashMap<String, std::time::Instant>>,
    suspicions: Family<PeerLabels, Counter>,
}

/// Now, on tokio's clock (paused and advanced in tests).
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

impl Suspects {
    /// Nobody suspect; new suspicions are counted in `suspicions`.
    pub fn new(suspicions: Family<PeerLabels, Counter>) -> Suspects {
        Suspects {
            set: Mutex::new(OutlierSet::new(OutlierConfig {
                consecutive_failures: 1,
                base_ejection: FIRST_SUSPICION,
                max_ejection: LONGEST_SUSPICION,
            })),
            doubted: Mutex::default(),
            suspicions,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutlierSet<String>> {
        self.set.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `node` did not answer (`why`: a log word); it becomes suspect unless it
    /// already is.
    pub fn no_answer(&self, node: &str, why: &'static str) {
        self.doubted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(node);
        let now = now();
        let mut set = self.lock();
        if set.len() >= REMEMBERED {
            // Forget those no longer suspect; never one that is.
            let suspect: std::collections::HashSet<String> =
                set.ejected(now).map(|(n, _)| n.clone()).collect();
            set.retain(|n| n.as_str() == node || suspect.contains(n));
        }
        if let Some(e) = set.record(node, false, now) {
            tracing::info!(%node, why, for_ms = e.duration.as_millis() as u64, "peer suspected from this node's own connection");
            self.suspicions
                .get_or_create(&PeerLabels {
                    node: node.to_string(),
                })
                .inc();
        }
    }

    /// `node` is avoided until `until` (at most [`LONGEST_DOUBT`]) while its
    /// silence is timed: neither suspected nor counted; [`Self::no_answer`]
    /// or [`Self::answered`] settle it sooner.
    pub fn doubt(&self, node: &str, until: std::time::Instant) {
        let until = until.min(now() + LONGEST_DOUBT);
        let mut doubted = self.doubted.lock().unwrap_or_else(|e| e.into_inner());
        let now = now();
        doubted.retain(|_, u| *u > now);
        if doubted.len() < REMEMBERED {
            doubted.insert(node.to_string(), until);
        }
    }

    /// `node` answered: no longer suspect, and its history forgotten.
    pub fn answered(&self, node: &str) {
        // (Called for every answer: nothing is hashed while nothing is doubted.)
        let mut doubted = self.doubted.lock().unwrap_or_else(|e| e.into_inner());
        if !doubted.is_empty() {
            doubted.remove(node);
        }
        drop(doubted);
        let mut set = self.lock();
        if !set.is_empty() && set.get(node).is_some() {
            set.retain(|n| n.as_str() != node);
        }
    }

    /// Whether `node` is suspect (or doubted) now.
    pub fn is_suspect(&self, node: &str) -> bool {
        let now = now();
        let doubted = self
            .doubted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
            .is_some_and(|until| *until > now);
        doubted || self.lock().is_ejected(node, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_silence_makes_a_peer_suspect_for_a_doubling_time_and_an_answer_clears_it() {
        let s = Suspects::new(Family::default());
        assert!(!s.is_suspect("n2"));
        s.no_answer("n2", "connect_failed");
        assert!(s.is_suspect("n2"), "on the first failure, not the third");
        assert!(!s.is_suspect("n3"));
        tokio::time::advance(FIRST_SUSPICION).await;
        assert!(!s.is_suspect("n2"), "the suspicion lapses");
        s.no_answer("n2", "connect_failed");
        tokio::time::advance(FIRST_SUSPICION).await;
        assert!(s.is_suspect("n2"), "a second suspicion lasts longer");
        s.answered("n2");
        assert!(!s.is_suspect("n2"), "an answer clears it");
        s.no_answer("n2", "connect_failed");
        assert!(s.is_suspect("n2"));
        tokio::time::advance(FIRST_SUSPICION).await;
        assert!(!s.is_suspect("n2"), "and starts the doubling over");
        s.answered("n3");
        assert_eq!(
            s.suspicions
                .get_or_create(&PeerLabels { node: "n2".into() })
                .get(),
            3
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_memory_forgets_lapsed_peers_but_never_a_suspect_one() {
        let s = Suspects::new(Family::default());
        for n in 0..REMEMBERED - 1 {
            s.no_answer(&format!("old-{n}"), "timeout");
        }
        tokio::time::advance(FIRST_SUSPICION).await;
        s.no_answer("suspect", "timeout");
        assert_eq!(s.lock().len(), REMEMBERED, "full");
        s.no_answer("new", "timeout");
        assert!(s.is_suspect("suspect"), "kept while suspect");
        assert!(s.is_suspect("new"));
        assert_eq!(s.lock().len(), 2, "the lapsed ones are forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn a_doubted_peer_is_avoided_uncounted_until_it_is_settled() {
        let s = Suspects::new(Family::default());
        s.doubt("n2", now() + Duration::from_millis(50));
        assert!(s.is_suspect("n2"), "avoided while its silence is timed");
        tokio::time::advance(Duration::from_millis(50)).await;
        assert!(!s.is_suspect("n2"), "the doubt lapses by itself");
        s.doubt("n2", now() + Duration::from_secs(60));
        s.answered("n2");
        assert!(!s.is_suspect("n2"), "an answer settles it");
        s.doubt("n2", now() + Duration::from_secs(60));
        tokio::time::advance(LONGEST_DOUBT).await;
        assert!(!s.is_suspect("n2"), "never longer than LONGEST_DOUBT");
        assert_eq!(
            s.suspicions
                .get_or_create(&PeerLabels { node: "n2".into() })
                .get(),
            0,
            "a doubt is not a suspicion"
        );
    }
}
