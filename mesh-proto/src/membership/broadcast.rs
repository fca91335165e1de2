//! New items waiting to be pushed to the neighbours: each goes out in the next
//! round (or its next few), remembering the peer it came from so it is not
//! pushed back there, then is dropped; anti-entropy catches whoever the push
//! missed. A newer item replaces an older one of the same key, so a flapping
//! record costs one slot. A record waits as the record store holds it (shared,
//! not copied): it is copied only into the round's message.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::gossip::RouteDocument;

use super::wire::{Items, SignedRecord, Suspicion, TARGET_MESSAGE_BYTES};

/// A queued item, which is also its slot: ordered and compared by what it is
/// about (a record's origin and key, a suspicion's target and accuser, a
/// document's name), so a newer item of the same key replaces the older one.
/// Items are shared, not copied, until they go into a round's message.
#[derive(Debug, Clone)]
enum Slot {
    Record(Arc<SignedRecord>),
    Suspicion(Arc<Suspicion>),
    Document(Arc<RouteDocument>),
}

impl Slot {
    fn id(&self) -> (u8, &str, &str) {
        match self {
            Slot::Record(r) => (0, &r.origin, &r.key),
            Slot::Suspicion(s) => (1, &s.target, &s.accuser),
            Slot::Document(d) => (2, &d.name, ""),
        }
    }

    fn weight(&self) -> usize {
        match self {
            Slot::Record(r) => r.weight(),
            Slot::Suspicion(s) => s.weight(),
            Slot::Document(d) => {
                d.name.len() + d.body.len() + d.signature.len() + d.signer_cert_der.len() + 16
            }
        }
    }
}

impl PartialEq for Slot {
    fn eq(&self, other: &Self) -> bool {
        self.id() == other.id()
    }
}

impl Eq for Slot {}

impl PartialOrd for Slot {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Slot {
    fn cmp(&self, other: &Self) -> Ordering {
        self.id().cmp(&other.id())
    }
}

#[derive(Debug, Clone)]
struct Queued {
    /// The peer it came from (not pushed back to it), if any.
    from: Option<Arc<str>>,
    rounds_left: u32,
    /// Queue order, so older items go first when a round cannot take them all.
    seq: u64,
}

/// One round's items, and for each record the peer it came from (which it is
/// not pushed back to).
#[derive(Debug, Default)]
pub struct Round {
    /// The items.
    pub items: Items,
    /// `items.records[i]` came from `senders[i]`.
    pub senders: Vec<Option<Arc<str>>>,
}

impl Round {
    /// What goes to `peer`: every item but the records it sent.
    pub fn for_peer(&self, peer: &str) -> Items {
        if !self.senders.iter().flatten().any(|s| **s == *peer) {
            return self.items.clone();
        }
        let records = self
            .items
            .records
            .iter()
            .zip(&self.senders)
            .filter(|(_, from)| from.as_deref() != Some(peer))
            .map(|(r, _)| r.clone())
            .collect();
        Items {
            records,
            suspicions: self.items.suspicions.clone(),
            documents: self.items.documents.clone(),
        }
    }
}

/// The items to push.
#[derive(Debug, Default)]
pub struct TransmitQueue {
    slots: BTreeMap<Slot, Queued>,
    seq: u64,
}

impl TransmitQueue {
    /// How many items wait.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn put(&mut self, slot: Slot, rounds: u32, from: Option<Arc<str>>) {
        self.seq += 1;
        // A replaced slot's key is dropped too (an insert over an equal key
        // would keep the old one, and with it the old record).
        self.slots.remove(&slot);
        self.slots.insert(
            slot,
            Queued {
                from,
                rounds_left: rounds.max(1),
                seq: self.seq,
            },
        );
    }

    /// Queues a record for `rounds` rounds (replacing an older one of its key),
    /// received from `from` (`None`: this node's own).
    pub fn record(&mut self, r: Arc<SignedRecord>, rounds: u32, from: Option<&str>) {
        self.put(Slot::Record(r), rounds, from.map(Arc::from));
    }

    /// Queues a suspicion.
    pub fn suspicion(&mut self, s: Suspicion, rounds: u32) {
        self.put(Slot::Suspicion(Arc::new(s)), rounds, None);
    }

    /// Queues a route document.
    pub fn document(&mut self, d: RouteDocument, rounds: u32) {
        self.put(Slot::Document(Arc::new(d)), rounds, None);
    }

    /// Drops every queued item about `origin` (it was forgotten or replaced).
    pub fn forget_origin(&mut self, origin: &str) {
        self.slots.retain(|slot, _| match slot {
            Slot::Record(r) => r.origin != origin,
            Slot::Suspicion(s) => s.target != origin,
            Slot::Document(_) => true,
        });
    }

    /// The items of this round, oldest first, up to a message's worth; each taken
    /// item has one round less to go.
    pub fn next_round(&mut self) -> Round {
        let mut order: Vec<(u64, Slot)> = self
            .slots
            .iter()
            .map(|(slot, q)| (q.seq, slot.clone()))
            .collect();
        order.sort();
        let mut items = Items::default();
        let mut senders = Vec::new();
        let mut bytes = 0;
        for (_, slot) in order {
            let Some(q) = self.slots.get_mut(&slot) else {
                continue;
            };
            let w = slot.weight();
            if bytes + w > TARGET_MESSAGE_BYTES && bytes > 0 {
                break;
            }
            let full = match &slot {
                Slot::Record(_) => items.records.len() >= super::wire::MAX_RECORDS_PER_MESSAGE,
                Slot::Suspicion(_) => {
                    items.suspicions.len() >= super::wire::MAX_SUSPICIONS_PER_MESSAGE
                }
                Slot::Document(_) => {
                    items.documents.len() >= super::wire::MAX_DOCUMENTS_PER_MESSAGE
                }
            };
            if full {
                continue;
            }
            bytes += w;
            match &slot {
                Slot::Record(r) => {
                    items.records.push(SignedRecord::clone(r));
                    senders.push(q.from.clone());
                }
                Slot::Suspicion(s) => items.suspicions.push(Suspicion::clone(s)),
                Slot::Document(d) => items.documents.push(RouteDocument::clone(d)),
            }
            q.rounds_left -= 1;
            if q.rounds_left == 0 {
                self.slots.remove(&slot);
            }
        }
        // Certificates first, so a receiver that meets an origin in this message
        // can check its other records.
        let mut order: Vec<usize> = (0..items.records.len()).collect();
        order.sort_by_key(|&i| items.records[i].key != crate::gossip::CERT_KEY);
        let records = order.iter().map(|&i| items.records[i].clone()).collect();
        let senders = order.iter().map(|&i| senders[i].clone()).collect();
        items.records = records;
        Round { items, senders }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(origin: &str, key: &str, version: u64) -> SignedRecord {
        SignedRecord {
            origin: origin.into(),
            generation: 1,
            version,
            signed_at_ms: 0,
            key: key.into(),
            value: vec![0; 10],
            signature: vec![1; 64],
        }
    }

    #[test]
    fn items_go_out_for_their_rounds_then_leave() {
        let mut q = TransmitQueue::default();
        q.record(record("a", "node", 1).into(), 2, None);
        assert_eq!(q.next_round().items.records.len(), 1);
        assert_eq!(q.next_round().items.records.len(), 1);
        assert!(q.next_round().items.is_empty());
        assert!(q.is_empty());
    }

    #[test]
    fn a_newer_record_replaces_the_queued_one_and_certificates_lead() {
        let mut q = TransmitQueue::default();
        q.record(record("a", "svc:web", 1).into(), 3, None);
        q.record(record("a", "svc:web", 2).into(), 3, Some("b"));
        q.record(record("a", "cert", 3).into(), 3, None);
        let round = q.next_round();
        let items = &round.items;
        assert_eq!(items.records.len(), 2);
        assert_eq!(items.records[0].key, "cert");
        assert_eq!(items.records[1].version, 2);
        assert_eq!(round.senders, [None, Some(Arc::from("b"))]);
        // Not pushed back to the peer it came from.
        let to_b = round.for_peer("b");
        assert_eq!(to_b.records.len(), 1);
        assert_eq!(to_b.records[0].key, "cert");
        assert_eq!(round.for_peer("c"), round.items);
    }

    #[test]
    fn a_queued_record_is_shared_and_let_go_once_replaced() {
        let mut q = TransmitQueue::default();
        let old = Arc::new(record("a", "node", 1));
        q.record(old.clone(), 3, None);
        assert_eq!(Arc::strong_count(&old), 2, "the queue shares it, no copy");
        q.record(record("a", "node", 2).into(), 3, None);
        assert_eq!(Arc::strong_count(&old), 1, "nothing holds the old one");
        assert_eq!(q.len(), 1);
        assert_eq!(q.next_round().items.records[0].version, 2);
    }

    #[test]
    fn a_round_fits_one_message() {
        let mut q = TransmitQueue::default();
        for i in 0..2000 {
            let mut r = record(&format!("n{i}"), "node", 1);
            r.value = vec![0; 200];
            q.record(r.into(), 1, None);
        }
        let first = q.next_round().items;
        let bytes: usize = first.records.iter().map(SignedRecord::weight).sum();
        assert!(bytes <= TARGET_MESSAGE_BYTES, "{bytes}");
        assert!(first.records.len() <= crate::membership::wire::MAX_RECORDS_PER_MESSAGE);
        assert!(!q.is_empty(), "the rest waits for later rounds");
    }
}
