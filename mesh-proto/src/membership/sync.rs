//! Anti-entropy: range hashes, digests of what a node holds, and the answer to a
//! peer's digest (what it lacks). A [`RangeHash`] summarises one range of origin
//! names (with the suspicions of those members, and every document) in a few
//! dozen bytes; only when the receiver's differs does a full digest follow. A
//! digest lists the origins of the range with the generation, highest version
//! and fingerprint held of each, and the ids of the suspicions of those members,
//! so its size is bounded whatever the number of members or suspicions;
//! successive exchanges walk the ranges. The answer sends only records newer
//! than the peer's, so its cost follows the difference.
//!
//! Members this node believes dead are not handed to a peer that does not know
//! them (a new node should not learn of the dead as if alive), but their records
//! are still updated for peers that hold them, and the accusations are shared, so
//! a member wrongly believed dead learns it was accused and refutes. A peer that
//! holds such a member alive after every accusation grew too old to hand on is
//! accused to afresh ([`Answer::reaccuse`]).

use std::collections::{HashMap, HashSet};

use super::config::Timing;
use super::documents::DocumentStore;
use super::liveness::{Liveness, is_timely};
use super::records::RecordStore;
use super::wire::{
    Digest, DocumentSummary, Items, MAX_DIGEST_IDS, MAX_DIGEST_ORIGINS, MAX_DOCUMENTS_PER_MESSAGE,
    MAX_RECORDS_PER_MESSAGE, MAX_SUSPICIONS_PER_MESSAGE, NameRange, OriginSummary, RangeHash,
    SuspicionId, TARGET_MESSAGE_BYTES,
};

/// Bytes of records one message of an answer carries at most.
const ANSWER_CHUNK_BYTES: usize = 16 * 1024;
/// Bytes of records one answer carries at most, in messages of
/// `ANSWER_CHUNK_BYTES`: a node pulling the whole state (it just joined)
/// gets it in a few exchanges, and a node a few changes behind gets only those.
/// The requester reconciles with one neighbour a round, so answers overlap
/// little; the next exchange, with its newer digest, brings the rest.
pub const ANSWER_BYTES: usize = 256 * 1024;

/// Bytes of origin summaries one digest carries at most.
const DIGEST_BUDGET: usize = 40 * 1024;

fn summary_weight(s: &OriginSummary) -> usize {
    s.name.len() + 28
}

/// The next range of names to reconcile, starting at `cursor`, which moves on
/// (wrapping around) so that successive ranges cover every origin; a range holds
/// at most one digest's worth of origins.
pub fn next_range<K: Clone + std::fmt::Debug>(
    cursor: &mut String,
    records: &RecordStore<K>,
    liveness: &Liveness,
) -> NameRange {
    let start = NameRange {
        from: cursor.clone(),
        to: None,
    };
    let (mut count, mut bytes, mut ids) = (0, 0, 0);
    let mut next: Option<String> = None;
    // Both in name order: the accused are walked alongside the origins.
    let mut accused = liveness.accused_in(&start).peekable();
    for o in records.in_range(&start) {
        let w = o.name.len() + 28;
        while accused.next_if(|a| a.name < &*o.name).is_some() {}
        let accusations = accused
            .next_if(|a| a.name == &*o.name)
            .map_or(0, |a| a.count());
        let full = count >= MAX_DIGEST_ORIGINS
            || bytes + w > DIGEST_BUDGET
            || ids + accusations >= MAX_DIGEST_IDS;
        if full && count > 0 {
            next = Some(o.name.to_string());
            break;
        }
        count += 1;
        bytes += w;
        ids += accusations;
    }
    let range = match (&next, cursor.is_empty()) {
        (None, true) => NameRange::all(),
        (to, _) => NameRange {
            from: cursor.clone(),
            to: to.clone(),
        },
    };
    *cursor = next.unwrap_or_default();
    range
}

/// Folded into a range hash for each member held dead.
const DEAD_MARK: u64 = 0xdead_0f5e_a1de_ad00;

/// A member held dead here but alive by a peer is re-accused for it at most
/// this many times per digest (each costs a signature and the budget).
pub const MAX_REACCUSATIONS_PER_DIGEST: usize = 16;

fn mix(h: u64) -> u64 {
    let mut state = h;
    super::state::splitmix64(&mut state)
}

/// The hash of what this node holds in `range`: its origins, the suspicions of
/// members in the range (and all its documents).
///
/// A member this node declared dead counts as one mark, whatever accusations
/// it holds: two nodes that both hold it dead agree although they may hold
/// different accusations, some too old to be handed on; a node that holds it
/// alive differs, and the exchange that follows hands it a fresh accusation
/// ([`Answer::reaccuse`]).
pub fn range_hash<K: Clone + std::fmt::Debug>(
    range: NameRange,
    records: &RecordStore<K>,
    liveness: &Liveness,
    documents: &DocumentStore,
) -> RangeHash {
    let (mut count, mut origins) = (0u32, 0u64);
    for o in records.in_range(&range) {
        count = count.saturating_add(1);
        origins ^= o.summary_hash();
    }
    let suspicions = liveness.accused_in(&range).fold(0, |acc, a| {
        let target = xxhash_rust::xxh3::xxh3_64(a.name.as_bytes());
        if a.dead {
            return acc ^ mix(target ^ mix(a.generation) ^ DEAD_MARK);
        }
        a.suspicions().fold(acc, |acc, s| {
            let id = xxhash_rust::xxh3::xxh3_64_with_seed(s.accuser.as_bytes(), target);
            acc ^ mix(id ^ mix(s.target_version))
        })
    });
    let documents = documents
        .signed()
        .fold(0, |acc, (_, id)| acc ^ mix(xxhash_rust::xxh3::xxh3_64(&id)));
    RangeHash {
        range,
        count,
        origins,
        suspicions,
        documents,
    }
}

/// The digest of exactly `range` (the answer to a peer's digest of it).
pub fn digest_of_range<K: Clone + std::fmt::Debug>(
    range: NameRange,
    records: &RecordStore<K>,
    liveness: &Liveness,
    documents: &DocumentStore,
    reply: bool,
) -> Digest {
    let mut origins = Vec::new();
    let mut bytes = 0;
    for o in records.in_range(&range) {
        let s = o.summary();
        if origins.len() >= MAX_DIGEST_ORIGINS || bytes + summary_weight(&s) > DIGEST_BUDGET {
            break;
        }
        bytes += summary_weight(&s);
        origins.push(s);
    }
    Digest {
        origins,
        suspicions: suspicion_ids(&range, liveness),
        documents: document_summaries(documents),
        range,
        reply,
    }
}

/// The ids of the suspicions of members in `range`, in order: fewer than
/// [`MAX_DIGEST_IDS`] in a range of [`next_range`]'s, and a list that long says
/// it was cut short.
fn suspicion_ids(range: &NameRange, liveness: &Liveness) -> Vec<SuspicionId> {
    let mut ids: Vec<SuspicionId> = liveness
        .accused_in(range)
        .flat_map(|a| a.suspicions().map(|s| s.id()))
        .collect();
    ids.sort();
    ids.truncate(MAX_DIGEST_IDS);
    ids
}

fn document_summaries(documents: &DocumentStore) -> Vec<DocumentSummary> {
    let mut d = documents.summaries();
    d.truncate(MAX_DIGEST_IDS);
    d
}

/// The answer to a peer's digest.
#[derive(Debug, Default)]
pub struct Answer {
    /// What the peer lacks of what this node holds, up to [`ANSWER_BYTES`],
    /// as messages to send (none if it lacks nothing).
    pub items: Vec<Items>,
    /// Members this node holds dead that the peer holds with no accusation at
    /// all, while every accusation held here is too old for it to accept:
    /// this node accuses them again for it, budget permitting (a node that was
    /// cut off or paused while the accusations lived would otherwise hold them
    /// alive for good, since a death is never taken from a peer).
    pub reaccuse: Vec<String>,
}

/// What this node answers to `digest`, from `peer`, at `wall_ms`.
pub fn answer<K: Clone + std::fmt::Debug>(
    digest: &Digest,
    peer: &str,
    (records, liveness, documents): (&RecordStore<K>, &Liveness, &DocumentStore),
    timing: &Timing,
    wall_ms: u64,
) -> Answer {
    let theirs = origins_by_name(digest);
    let held = (records, liveness);
    let mut items = answer_records(digest, &theirs, held, timing);
    let mut first = Items::default();
    let mut bytes = 0;
    let out = (&mut first, &mut bytes);
    let reaccuse = answer_suspicions(digest, &theirs, peer, held, timing, wall_ms, out);
    answer_documents(digest, documents, &mut first, &mut bytes);
    if !first.is_empty() {
        items.insert(0, first);
    }
    Answer { items, reaccuse }
}

/// The peer's summary of each origin its digest names, by name.
fn origins_by_name(digest: &Digest) -> HashMap<&str, &OriginSummary> {
    digest
        .origins
        .iter()
        .map(|s| (s.name.as_str(), s))
        .collect()
}

/// The suspicions of members in the digest's range that the peer lacks and
/// can still accept (or that accuse the peer itself, which it refutes whatever
/// their age); returns the members to accuse again for it.
fn answer_suspicions<K: Clone + std::fmt::Debug>(
    digest: &Digest,
    known: &HashMap<&str, &OriginSummary>,
    peer: &str,
    (records, liveness): (&RecordStore<K>, &Liveness),
    timing: &Timing,
    wall_ms: u64,
    (items, bytes): (&mut Items, &mut usize),
) -> Vec<String> {
    let theirs: HashSet<&SuspicionId> = digest.suspicions.iter().collect();
    let accused: HashSet<&str> = digest
        .suspicions
        .iter()
        .map(|i| i.target.as_str())
        .collect();
    let complete = digest.suspicions.len() < MAX_DIGEST_IDS;
    let mut reaccuse = Vec::new();
    // The peer's own accusations, whatever the range: it refutes them at once
    // (a healing partition waits on these).
    if !digest.range.contains(peer) {
        for s in liveness.accusations_of(peer) {
            if items.suspicions.len() < MAX_SUSPICIONS_PER_MESSAGE && *bytes <= TARGET_MESSAGE_BYTES
            {
                *bytes += s.weight();
                items.suspicions.push(s.clone());
            }
        }
    }
    for a in liveness.accused_in(&digest.range) {
        let mut timely = false;
        for s in a.suspicions() {
            let sendable = s.target == peer || is_timely(s, timing, wall_ms);
            timely |= sendable;
            let room = items.suspicions.len() < MAX_SUSPICIONS_PER_MESSAGE
                && *bytes <= TARGET_MESSAGE_BYTES;
            if sendable && room && !theirs.contains(&s.id()) {
                *bytes += s.weight();
                items.suspicions.push(s.clone());
            }
        }
        // The peer holds the same generation, no newer than here (a newer
        // record would refute the accusation), and no accusation of it.
        let version = records.get(a.name).map_or(0, |o| o.max_version);
        let holds_it_alive = complete
            && !accused.contains(a.name)
            && known
                .get(a.name)
                .is_some_and(|o| o.generation == a.generation && o.max_version <= version);
        if a.dead && !timely && holds_it_alive && reaccuse.len() < MAX_REACCUSATIONS_PER_DIGEST {
            reaccuse.push(a.name.to_string());
        }
    }
    reaccuse
}

fn answer_documents(
    digest: &Digest,
    documents: &DocumentStore,
    items: &mut Items,
    bytes: &mut usize,
) {
    for (d, id) in documents.signed() {
        if items.documents.len() >= MAX_DOCUMENTS_PER_MESSAGE || *bytes > TARGET_MESSAGE_BYTES {
            break;
        }
        let known = digest
            .documents
            .iter()
            .any(|x| x.name == d.name && x.id == id);
        if !known {
            *bytes += d.body.len() + d.signer_cert_der.len();
            items.documents.push(d.clone());
        }
    }
}

/// The records the sender of `digest` lacks, in messages of at most
/// `ANSWER_CHUNK_BYTES`, [`ANSWER_BYTES`] in all.
fn answer_records<K: Clone + std::fmt::Debug>(
    digest: &Digest,
    theirs: &HashMap<&str, &OriginSummary>,
    (records, liveness): (&RecordStore<K>, &Liveness),
    timing: &Timing,
) -> Vec<Items> {
    let mut chunks: Vec<Items> = Vec::new();
    let mut items = Items::default();
    let (mut bytes, mut total) = (0usize, 0usize);
    for o in records.in_range(&digest.range) {
        let after = match theirs.get(&*o.name) {
            None => {
                if !liveness.health(&o.name, o.generation, timing).is_up() {
                    continue;
                }
                None
            }
            Some(s) if s.generation < o.generation => None,
            Some(s) if s.generation > o.generation => continue,
            // Same generation: they are behind (send what is newer), or equally
            // far but missing something in between (send it all: they keep what
            // they have), or ahead (their answer to this node's digest helps).
            Some(s) if s.max_version < o.max_version => Some(s.max_version),
            Some(s) if s.max_version == o.max_version && s.fingerprint != o.fingerprint() => None,
            Some(_) => continue,
        };
        // An origin's records stay in one message, its certificate first, so
        // the receiver can check them whatever order the messages arrive in.
        let theirs_new = o.records_after(after.unwrap_or(0));
        let weight: usize = theirs_new.iter().map(|r| r.weight()).sum();
        if total + weight > ANSWER_BYTES && total > 0 {
            break;
        }
        if items.records.len() + theirs_new.len() > MAX_RECORDS_PER_MESSAGE
            || (bytes + weight > ANSWER_CHUNK_BYTES && bytes > 0)
        {
            chunks.push(std::mem::take(&mut items));
            bytes = 0;
        }
        bytes += weight;
        total += weight;
        items.records.extend(theirs_new.into_iter().cloned());
    }
    if !items.is_empty() {
        chunks.push(items);
    }
    chunks
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::gossip::CERT_KEY;
    use crate::membership::config::Limits;
    use crate::membership::signing::NodeCert;
    use crate::membership::toy::ToyCrypto;
    use crate::membership::wire::{SignedRecord, Suspicion};

    const WALL_MS: u64 = 1_700_000_000_000;

    /// `n` members `m0000`.. with one record each (checked by nothing: the
    /// store's own path).
    fn members(n: usize, now: Instant) -> RecordStore<String> {
        let mut records = RecordStore::default();
        for i in 0..n {
            let name = format!("m{i:04}");
            let record = SignedRecord {
                origin: name.clone(),
                generation: 1,
                version: 1,
                signed_at_ms: WALL_MS,
                key: CERT_KEY.into(),
                value: Vec::new(),
                signature: Vec::new(),
            };
            let cert = NodeCert {
                node: name.clone(),
                services: Vec::new(),
                not_after_ms: u64::MAX,
                key: name,
            };
            records.insert_own(record, Some(cert), now);
        }
        records
    }

    fn accusation(accuser: &str, target: usize) -> Suspicion {
        Suspicion {
            accuser: accuser.into(),
            accuser_generation: 1,
            target: format!("m{target:04}"),
            target_generation: 1,
            target_version: 1,
            issued_at_ms: WALL_MS,
            signature: Vec::new(),
        }
    }

    /// Holds `s` as if checked (the signature is not: `own`).
    fn hold(liveness: &mut Liveness, records: &RecordStore<String>, s: Suspicion, now: Instant) {
        let (timing, limits) = (Timing::default(), Limits::default());
        let crypto = ToyCrypto::new(1, "test");
        let r = liveness.accept(
            s, records, &crypto, "c", &timing, &limits, now, WALL_MS, true,
        );
        assert!(r.is_ok(), "{r:?}");
    }

    #[test]
    fn a_node_holding_more_accusations_than_a_digest_lists_reconciles_them_range_by_range() {
        // A node cut off from most of the mesh holds thousands of accusations.
        // `b` holds 1,400 (accused by m1999); `a` holds those and 50 more of
        // members that sort after them (accused by m1998). Digests list at most
        // 1,024 ids: when a digest listed the first 1,024 of every accusation
        // held, `a` answered each exchange with the same 256 accusations `b`
        // already held beyond that point, and `b` never got the 50.
        let now = Instant::now();
        let records = members(2000, now);
        let (mut a, mut b) = (Liveness::default(), Liveness::default());
        for t in 0..1400 {
            hold(&mut a, &records, accusation("m1999", t), now);
            hold(&mut b, &records, accusation("m1999", t), now);
        }
        for t in 1400..1450 {
            hold(&mut a, &records, accusation("m1998", t), now);
        }
        let documents = DocumentStore::default();
        let mut cursor = String::new();
        let mut ranges = 0;
        // `b` walks its ranges; `a` answers each digest of `b`'s.
        for _ in 0..8 {
            let range = next_range(&mut cursor, &records, &b);
            ranges += 1;
            let digest = digest_of_range(range, &records, &b, &documents, true);
            assert!(
                digest.suspicions.len() < MAX_DIGEST_IDS,
                "a range holds too many"
            );
            let held = (&records, &a, &documents);
            let answer = answer(&digest, "m1997", held, &Timing::default(), WALL_MS);
            assert!(answer.reaccuse.is_empty());
            for s in answer.items.into_iter().flat_map(|i| i.suspicions) {
                hold(&mut b, &records, s, now);
            }
            if cursor.is_empty() {
                break;
            }
        }
        assert!(ranges >= 2, "1,400 accusations fit in one range");
        assert_eq!(b.len(), 1450, "b did not get every accusation");
        assert_eq!(whole_hash(&records, &a), whole_hash(&records, &b));
    }

    fn whole_hash(records: &RecordStore<String>, liveness: &Liveness) -> RangeHash {
        range_hash(
            NameRange::all(),
            records,
            liveness,
            &DocumentStore::default(),
        )
    }

    #[test]
    fn a_member_held_dead_counts_once_whatever_accusations_are_held() {
        // Two nodes that both declared m0003 dead agree, although they hold
        // different accusations of it; a node that only suspects it does not.
        let now = Instant::now();
        let records = members(10, now);
        let timing = Timing::default();
        let (mut a, mut b, mut c) = (
            Liveness::default(),
            Liveness::default(),
            Liveness::default(),
        );
        hold(&mut a, &records, accusation("m0001", 3), now);
        hold(&mut b, &records, accusation("m0002", 3), now);
        hold(&mut c, &records, accusation("m0002", 3), now);
        let later = now + timing.suspicion_max;
        assert_eq!(a.tick(later, &timing).len(), 1);
        assert_eq!(b.tick(later, &timing).len(), 1);
        assert_eq!(whole_hash(&records, &a), whole_hash(&records, &b));
        assert_ne!(whole_hash(&records, &b), whole_hash(&records, &c));
    }

    #[test]
    fn accusations_too_old_to_accept_are_not_handed_on_but_the_dead_are_accused_again() {
        // `a` holds m0003 dead on an accusation that is now too old for anyone
        // to accept; a peer whose digest holds m0003 with no accusation gets
        // none of the old ones (it would refuse them) but is named for a fresh
        // one. The accusations of the peer itself are handed on whatever their
        // age: it refutes them.
        let now = Instant::now();
        let records = members(10, now);
        let timing = Timing::default();
        let mut a = Liveness::default();
        hold(&mut a, &records, accusation("m0001", 3), now);
        hold(&mut a, &records, accusation("m0001", 5), now);
        a.tick(now + timing.suspicion_max, &timing);
        let documents = DocumentStore::default();
        let digest = digest_of_range(
            NameRange::all(),
            &records,
            &Liveness::default(),
            &documents,
            true,
        );
        let late = WALL_MS + crate::membership::liveness::millis(timing.suspicion_ttl()) + 1;
        let reply = answer(&digest, "m0005", (&records, &a, &documents), &timing, late);
        let sent: Vec<String> = reply
            .items
            .iter()
            .flat_map(|i| i.suspicions.iter().map(|s| s.target.clone()))
            .collect();
        assert_eq!(sent, ["m0005"]);
        assert_eq!(reply.reaccuse, ["m0003"]);
        // While the accusation is young it is handed on instead.
        let reply = answer(
            &digest,
            "m0009",
            (&records, &a, &documents),
            &timing,
            WALL_MS,
        );
        assert!(reply.reaccuse.is_empty());
        // A digest of a range the peer is not in still brings it its own.
        let range = NameRange {
            from: "m0000".into(),
            to: Some("m0004".into()),
        };
        let digest = digest_of_range(range, &records, &Liveness::default(), &documents, true);
        let reply = answer(&digest, "m0005", (&records, &a, &documents), &timing, late);
        let sent: Vec<&str> = reply.items[0]
            .suspicions
            .iter()
            .map(|s| s.target.as_str())
            .collect();
        assert_eq!(sent, ["m0005"]);
        assert_eq!(reply.reaccuse, ["m0003"]);
    }
}
