//! The push tree: which neighbours get news in full and which only hear of it
//! (Plumtree's eager and lazy push; Leitão, Pereira and Rodrigues, SRDS 2007).
//!
//! A node pushes new records in full to its *eager* neighbours and announces
//! them ([`super::wire::Body::IHave`]: origin, generation, version) to its *lazy*
//! ones. Every neighbour starts eager. When a push from a neighbour brings
//! nothing new, the news reached this node by another path first: the link
//! leaves the tree (both ends mark it lazy, [`super::wire::Body::Prune`]). When
//! an announcement names something this node lacks and no push delivers it
//! within the graft wait, the link is broken somewhere: the node asks the
//! announcer for it ([`super::wire::Body::Graft`]), which also puts that link
//! back in the tree. So a change crosses each node about once in full, whatever
//! the overlay's degree, a lost push costs one graft wait, and anti-entropy
//! still catches whatever every announcement missed.
//!
//! Only records take the tree: suspicions and route documents are rare and
//! urgent, and go in full to every neighbour.
//!
//! This module is plain bookkeeping (no messages, no clock of its own); the
//! state machine asks it who is lazy and what to graft.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::wire::MAX_ANNOUNCED;

/// Announced origins this node waits for, at most: announcements beyond it are
/// ignored (anti-entropy brings what they named).
pub const MAX_MISSING: usize = 4096;
/// Announcers remembered per missing origin: the first is asked first, then
/// the next after another wait.
pub const MAX_ANNOUNCERS: usize = 3;

/// What an announcement named that this node lacks.
#[derive(Debug, Clone)]
struct Missing {
    generation: u64,
    version: u64,
    /// Who announced it and was not asked yet, first announcer first.
    announcers: Vec<String>,
    /// When to ask the next announcer.
    due: Instant,
}

/// The eager/lazy split of this node's links and the announcements it waits on.
#[derive(Debug, Default)]
pub struct PushTree {
    /// Neighbours that get announcements instead of pushes (every other
    /// neighbour is eager).
    lazy: BTreeSet<String>,
    /// Announced but not held, by origin.
    missing: BTreeMap<String, Missing>,
}

impl PushTree {
    /// Whether `peer` gets announcements only.
    pub fn is_lazy(&self, peer: &str) -> bool {
        self.lazy.contains(peer)
    }

    /// How many links are lazy.
    pub fn lazy_links(&self) -> usize {
        self.lazy.len()
    }

    /// Takes the link to `peer` out of the tree; `true` if it was in it.
    pub fn prune(&mut self, peer: &str) -> bool {
        self.lazy.insert(peer.to_string())
    }

    /// Puts the link to `peer` back in the tree.
    pub fn graft(&mut self, peer: &str) {
        self.lazy.remove(peer);
    }

    /// Forgets the lazy links to peers that are no longer neighbours: a link
    /// that becomes a neighbour again starts eager.
    pub fn keep_links<'a>(&mut self, neighbours: impl IntoIterator<Item = &'a str>) {
        let keep: BTreeSet<&str> = neighbours.into_iter().collect();
        self.lazy.retain(|p| keep.contains(p.as_str()));
    }

    /// Notes that `from` announced `origin` at (`generation`, `version`), which
    /// this node lacks (the caller checked); it is asked for after `wait`
    /// unless a push brings it first. A later announcement of the same origin
    /// adds an announcer (or raises the version wanted).
    pub fn announced(
        &mut self,
        from: &str,
        origin: &str,
        (generation, version): (u64, u64),
        now: Instant,
        wait: Duration,
    ) {
        if let Some(m) = self.missing.get_mut(origin) {
            if (generation, version) > (m.generation, m.version) {
                (m.generation, m.version) = (generation, version);
            }
            if m.announcers.len() < MAX_ANNOUNCERS && !m.announcers.iter().any(|a| a == from) {
                m.announcers.push(from.to_string());
            }
            return;
        }
        if self.missing.len() >= MAX_MISSING {
            return;
        }
        self.missing.insert(
            origin.to_string(),
            Missing {
                generation,
                version,
                announcers: vec![from.to_string()],
                due: now + wait,
            },
        );
    }

    /// The earliest time a graft may be due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.missing.values().map(|m| m.due).min()
    }

    /// What to graft now: for each announcer asked, the origins (with the
    /// generation announced) it is asked for, at most one message's worth
    /// ([`MAX_ANNOUNCED`]; the rest wait another `wait`). Origins `holds` says
    /// are held (at the announced generation and version or later) are
    /// dropped; an origin whose every announcer was asked is dropped too. The
    /// links to the announcers asked are back in the tree.
    pub fn due(
        &mut self,
        now: Instant,
        wait: Duration,
        holds: impl Fn(&str, u64, u64) -> bool,
    ) -> BTreeMap<String, Vec<(String, u64)>> {
        let mut asks: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
        self.missing.retain(|origin, m| {
            if holds(origin, m.generation, m.version) {
                return false;
            }
            if now < m.due {
                return true;
            }
            m.due = now + wait;
            let ask = asks.entry(m.announcers[0].clone()).or_default();
            if ask.len() >= MAX_ANNOUNCED {
                return true;
            }
            ask.push((origin.clone(), m.generation));
            m.announcers.remove(0);
            !m.announcers.is_empty()
        });
        for peer in asks.keys() {
            self.lazy.remove(peer);
        }
        asks
    }

    /// How many announced origins are awaited.
    pub fn missing(&self) -> usize {
        self.missing.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_millis(100);

    #[test]
    fn every_link_starts_in_the_tree_and_a_prune_takes_it_out_once() {
        let mut t = PushTree::default();
        assert!(!t.is_lazy("b"));
        assert!(t.prune("b"));
        assert!(!t.prune("b"), "already out");
        assert!(t.is_lazy("b"));
        t.graft("b");
        assert!(!t.is_lazy("b"));
    }

    #[test]
    fn a_former_neighbour_comes_back_eager() {
        let mut t = PushTree::default();
        t.prune("b");
        t.prune("c");
        t.keep_links(["c", "d"]);
        assert!(!t.is_lazy("b"));
        assert!(t.is_lazy("c"));
        assert_eq!(t.lazy_links(), 1);
    }

    #[test]
    fn an_announcement_waits_for_the_push_before_it_grafts() {
        let t0 = Instant::now();
        let mut t = PushTree::default();
        t.prune("b");
        t.announced("b", "x", (1, 5), t0, WAIT);
        assert_eq!(t.next_deadline(), Some(t0 + WAIT));
        assert!(t.due(t0 + WAIT / 2, WAIT, |_, _, _| false).is_empty());
        let asks = t.due(t0 + WAIT, WAIT, |_, _, _| false);
        assert_eq!(asks["b"], vec![("x".to_string(), 1)]);
        assert!(
            !t.is_lazy("b"),
            "the link to the announcer is back in the tree"
        );
        assert_eq!(t.missing(), 0, "its only announcer was asked");
    }

    #[test]
    fn a_push_that_arrives_in_time_cancels_the_graft() {
        let t0 = Instant::now();
        let mut t = PushTree::default();
        t.announced("b", "x", (1, 5), t0, WAIT);
        let asks = t.due(t0 + WAIT, WAIT, |o, g, v| o == "x" && (g, v) <= (1, 5));
        assert!(asks.is_empty());
        assert_eq!(t.missing(), 0);
    }

    #[test]
    fn announcers_are_asked_in_turn_and_the_highest_version_is_wanted() {
        let t0 = Instant::now();
        let mut t = PushTree::default();
        t.announced("b", "x", (1, 5), t0, WAIT);
        t.announced("c", "x", (1, 7), t0, WAIT);
        t.announced("c", "x", (1, 6), t0, WAIT);
        let first = t.due(t0 + WAIT, WAIT, |_, _, _| false);
        assert_eq!(first.keys().collect::<Vec<_>>(), ["b"]);
        // Holding version 5 is not enough: 7 was announced.
        let second = t.due(t0 + WAIT * 2, WAIT, |_, g, v| (g, v) <= (1, 5));
        assert_eq!(second.keys().collect::<Vec<_>>(), ["c"]);
        assert_eq!(t.missing(), 0);
    }

    #[test]
    fn a_graft_asks_for_one_message_worth_and_the_rest_waits() {
        let t0 = Instant::now();
        let mut t = PushTree::default();
        for i in 0..MAX_ANNOUNCED + 88 {
            t.announced("b", &format!("n{i:04}"), (1, 1), t0, WAIT);
        }
        let first = t.due(t0 + WAIT, WAIT, |_, _, _| false);
        assert_eq!(first["b"].len(), MAX_ANNOUNCED);
        assert_eq!(t.missing(), 88);
        assert!(
            t.due(t0 + WAIT, WAIT, |_, _, _| false).is_empty(),
            "not at once"
        );
        let second = t.due(t0 + WAIT * 2, WAIT, |_, _, _| false);
        assert_eq!(second["b"].len(), 88);
        assert_eq!(t.missing(), 0);
    }

    #[test]
    fn announcements_beyond_the_cap_are_ignored() {
        let t0 = Instant::now();
        let mut t = PushTree::default();
        for i in 0..MAX_MISSING + 10 {
            t.announced("b", &format!("n{i}"), (1, 1), t0, WAIT);
        }
        assert_eq!(t.missing(), MAX_MISSING);
        for i in 0..10 {
            t.announced(&format!("p{i}"), "n0", (1, 1), t0, WAIT);
        }
        let first = t.due(t0 + WAIT, WAIT, |_, _, _| false);
        assert_eq!(first.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(first["b"][0].0, "n0");
        // n0 goes to its next announcer; b is asked a message at a time.
        let second = t.due(t0 + WAIT * 2, WAIT, |_, _, _| false);
        assert_eq!(second["p0"], vec![("n0".to_string(), 1)]);
        let mut asked = first["b"].len() + second["b"].len();
        for round in 3..=9 {
            let asks = t.due(t0 + WAIT * round, WAIT, |_, _, _| false);
            asked += asks.get("b").map_or(0, Vec::len);
        }
        assert_eq!(asked, MAX_MISSING, "every origin asked of b");
    }
}
