//! Anti-entropy: range hashes, digests of what a node holds, and the answer to a
//! peer's digest (what it lacks). A [`RangeHash`] summarises one range of origin
//! names (and every suspicion and document) in a few dozen bytes; only when the
//! receiver's differs does a full digest follow. A digest lists the origins of
//! the range with the generation, highest version and fingerprint held of each,
//! so its size is bounded whatever the number of members; successive exchanges
//! walk the ranges. The answer sends only records newer than the peer's, so its
//! cost follows the difference.
//!
//! Members this node believes dead are not handed to a peer that does not know
//! them (a new node should not learn of the dead as if alive), but their records
//! are still updated for peers that hold them, and the accusations are shared, so
//! a member wrongly believed dead learns it was accused and refutes.

use std::collections::{HashMap, HashSet};

use super::config::Timing;
use super::documents::DocumentStore;
use super::liveness::Liveness;
use super::records::RecordStore;
use super::wire::{
    Digest, DocumentSummary, Items, MAX_DIGEST_IDS, MAX_DIGEST_ORIGINS, MAX_DOCUMENTS_PER_MESSAGE,
    MAX_RECORDS_PER_MESSAGE, MAX_SUSPICIONS_PER_MESSAGE, NameRange, OriginSummary, RangeHash,
    SuspicionId, TARGET_MESSAGE_BYTES,
};

/// Bytes of records one message of an answer carries at most.
const ANSWER_CHUNK_BYTES: usize = 16 * 1024;
/// Bytes of records one answer carries at most, in messages of
/// [`ANSWER_CHUNK_BYTES`]: a node pulling the whole state (it just joined)
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
) -> NameRange {
    let start = NameRange {
        from: cursor.clone(),
        to: None,
    };
    let (mut count, mut bytes) = (0, 0);
    let mut next: Option<String> = None;
    for o in records.in_range(&start) {
        let w = o.name.len() + 28;
        if count >= MAX_DIGEST_ORIGINS || bytes + w > DIGEST_BUDGET {
            next = Some(o.name.to_string());
            break;
        }
        count += 1;
        bytes += w;
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

fn mix(h: u64) -> u64 {
    let mut state = h;
    super::state::splitmix64(&mut state)
}

/// The hash of what this node holds in `range` (and of all its suspicions and
/// documents).
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
    let suspicions = liveness.suspicions().fold(0, |acc, s| {
        let target = xxhash_rust::xxh3::xxh3_64(s.target.as_bytes());
        let id = xxhash_rust::xxh3::xxh3_64_with_seed(s.accuser.as_bytes(), target);
        acc ^ mix(id ^ mix(s.target_version))
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
        range,
        origins,
        suspicions: suspicion_ids(liveness),
        documents: document_summaries(documents),
        reply,
    }
}

fn suspicion_ids(liveness: &Liveness) -> Vec<SuspicionId> {
    let mut ids: Vec<SuspicionId> = liveness.suspicions().map(|s| s.id()).collect();
    ids.sort();
    ids.truncate(MAX_DIGEST_IDS);
    ids
}

fn document_summaries(documents: &DocumentStore) -> Vec<DocumentSummary> {
    let mut d = documents.summaries();
    d.truncate(MAX_DIGEST_IDS);
    d
}

/// What the sender of `digest` lacks of what this node holds, up to
/// [`ANSWER_BYTES`], as messages to send (none if it lacks nothing).
pub fn answer<K: Clone + std::fmt::Debug>(
    digest: &Digest,
    records: &RecordStore<K>,
    liveness: &Liveness,
    documents: &DocumentStore,
    timing: &Timing,
) -> Vec<Items> {
    let mut chunks = answer_records(digest, records, liveness, timing);
    let mut first = Items::default();
    let mut bytes = 0;
    answer_others(digest, liveness, documents, &mut first, &mut bytes);
    if !first.is_empty() {
        chunks.insert(0, first);
    }
    chunks
}

fn answer_others(
    digest: &Digest,
    liveness: &Liveness,
    documents: &DocumentStore,
    items: &mut Items,
    bytes: &mut usize,
) {
    let theirs: HashSet<&SuspicionId> = digest.suspicions.iter().collect();
    for s in liveness.suspicions() {
        if items.suspicions.len() >= MAX_SUSPICIONS_PER_MESSAGE || *bytes > TARGET_MESSAGE_BYTES {
            break;
        }
        if !theirs.contains(&s.id()) {
            *bytes += s.weight();
            items.suspicions.push(s.clone());
        }
    }
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
/// [`ANSWER_CHUNK_BYTES`], [`ANSWER_BYTES`] in all.
fn answer_records<K: Clone + std::fmt::Debug>(
    digest: &Digest,
    records: &RecordStore<K>,
    liveness: &Liveness,
    timing: &Timing,
) -> Vec<Items> {
    let mut chunks: Vec<Items> = Vec::new();
    let mut items = Items::default();
    let (mut bytes, mut total) = (0usize, 0usize);
    let theirs: HashMap<&str, &OriginSummary> = digest
        .origins
        .iter()
        .map(|s| (s.name.as_str(), s))
        .collect();
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
