//! Pushing news along the push tree ([`crate::membership::tree`]): records in
//! full to eager neighbours and announced to lazy ones, suspicions and route
//! documents in full to every neighbour; and the tree's messages from peers
//! (a push with nothing new, an announcement, a prune, a graft).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::membership::signing::Crypto;
use crate::membership::wire::{
    Announced, Body, Items, MAX_RECORDS_PER_MESSAGE, SignedRecord, TARGET_MESSAGE_BYTES,
};

use super::{Ask, Destination, Membership, Peer};

/// The announcements of `records`: each origin once, at its highest version.
fn announcements(records: &[SignedRecord]) -> Vec<Announced> {
    let mut latest: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for r in records {
        let e = latest.entry(&r.origin).or_insert((r.generation, r.version));
        *e = (*e).max((r.generation, r.version));
    }
    latest
        .into_iter()
        .map(|(origin, (generation, version))| Announced {
            origin: origin.to_string(),
            generation,
            version,
        })
        .collect()
}

impl<C: Crypto> Membership<C> {
    /// How long an announced record waits for a push before it is grafted:
    /// a quarter of a round (62 ms at the default interval), well above the
    /// few hops' latency by which a push along the tree may trail an
    /// announcement along a shorter path.
    fn graft_wait(&self) -> Duration {
        self.config.timing.interval / 4
    }

    /// Pushes what is queued to the neighbours: records in full along the
    /// tree and announced off it; suspicions and documents in full to all.
    pub(super) fn push_round(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let neighbours = self.neighbours();
        if neighbours.is_empty() {
            return;
        }
        let round = self.queue.next_round();
        let items = &round.items;
        if items.is_empty() {
            return;
        }
        let (lazy, eager): (Vec<Peer>, Vec<Peer>) = neighbours
            .into_iter()
            .partition(|p| self.tree.is_lazy(&p.name));
        if !lazy.is_empty() {
            let announced = announcements(&items.records);
            let urgent = Items {
                records: Vec::new(),
                suspicions: items.suspicions.clone(),
                documents: items.documents.clone(),
            };
            for peer in lazy {
                if !announced.is_empty() {
                    let body = Body::IHave(announced.clone());
                    self.send(Destination::Member(peer.clone()), body);
                }
                if !urgent.is_empty() {
                    self.send(Destination::Member(peer), Body::Items(urgent.clone()));
                }
            }
        }
        for peer in eager {
            let items = round.for_peer(&peer.name);
            if !items.is_empty() {
                self.send(Destination::Member(peer), Body::Items(items));
            }
        }
    }

    /// Records from `from`, most of which were held already: the news came by
    /// another path first, so this link leaves the tree (and `from` is told,
    /// so it leaves it at its end, where it matters: while views differ, as
    /// in a mass start, `from` may count this node a neighbour when this node
    /// does not count it one).
    pub(super) fn pushed_nothing_new(&mut self, from: &Peer) {
        if self.tree.prune(&from.name) {
            self.send(Destination::Member(from.clone()), Body::Prune);
        }
    }

    /// `from` announces records: those this node lacks are awaited, and
    /// grafted from `from` if no push brings them within the graft wait.
    pub(super) fn handle_ihave(&mut self, from: &Peer, list: Vec<Announced>, now: Instant) {
        let wait = self.graft_wait();
        for a in list {
            if a.origin == self.config.name
                || !self.records.is_news(&a.origin, a.generation, a.version)
            {
                continue;
            }
            let at = (a.generation, a.version);
            self.tree.announced(&from.name, &a.origin, at, now, wait);
        }
    }

    /// Asks the announcers of what is still missing after the graft wait for
    /// it (one graft per announcer), which puts their links back in the tree.
    pub(super) fn graft_due(&mut self, now: Instant) {
        if self.tree.missing() == 0 {
            return;
        }
        let wait = self.graft_wait();
        let records = &self.records;
        let asks = self
            .tree
            .due(now, wait, |o, g, v| !records.is_news(o, g, v));
        for (name, origins) in asks {
            let Some(addr) = self.node_addr(&name) else {
                continue;
            };
            let list = origins
                .into_iter()
                .map(|(origin, generation)| {
                    let version = self
                        .records
                        .get(&origin)
                        .filter(|o| o.generation == generation)
                        .map_or(0, |o| o.max_version);
                    Announced {
                        origin,
                        generation,
                        version,
                    }
                })
                .collect();
            self.send(Destination::Member(Peer { name, addr }), Body::Graft(list));
        }
    }

    /// `from` lacks what this node announced: it gets the records after the
    /// versions it holds (one message's worth), and pushes in full again.
    pub(super) fn handle_graft(&mut self, from: Peer, list: Vec<Announced>, now: Instant) {
        if !self.may_answer(&from.name, now, Ask::Graft) {
            return;
        }
        self.tree.graft(&from.name);
        let mut items = Items::default();
        let mut bytes = 0;
        'origins: for a in &list {
            let Some(o) = self.records.get(&a.origin) else {
                continue;
            };
            let after = match o.generation.cmp(&a.generation) {
                std::cmp::Ordering::Equal => a.version,
                std::cmp::Ordering::Greater => 0,
                std::cmp::Ordering::Less => continue,
            };
            for r in o.records_after(after) {
                let full = items.records.len() >= MAX_RECORDS_PER_MESSAGE;
                if full || bytes + r.weight() > TARGET_MESSAGE_BYTES {
                    break 'origins;
                }
                bytes += r.weight();
                items.records.push(r.clone());
            }
        }
        if !items.records.is_empty() {
            self.send(Destination::Member(from), Body::Items(items));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(origin: &str, generation: u64, version: u64) -> SignedRecord {
        SignedRecord {
            origin: origin.into(),
            generation,
            version,
            signed_at_ms: 0,
            key: "node".into(),
            value: vec![0; 4],
            signature: vec![1; 8],
        }
    }

    #[test]
    fn an_announcement_names_each_origin_once_at_its_latest_version() {
        let records = [record("b", 1, 4), record("a", 1, 2), record("b", 1, 6)];
        let got = announcements(&records);
        let got: Vec<(&str, u64, u64)> = got
            .iter()
            .map(|a| (a.origin.as_str(), a.generation, a.version))
            .collect();
        assert_eq!(got, [("a", 1, 2), ("b", 1, 6)]);
    }
}
