//! The verified records of every member: for each origin, the generation held,
//! its checked certificate and its latest signed record per key. This module owns
//! the rules that decide whether a record from a peer is applied:
//!
//! 1. a record about this node is never taken from a peer;
//! 2. a new origin, or a new generation of one, starts with its certificate
//!    record: the certificate must chain to the mesh CA, name the origin, and the
//!    record must be signed with its key — no member exists without a certificate;
//! 3. every other record must be signed by the key of the origin's certificate
//!    of that generation, decode as its key's record, agree with its key and
//!    origin, and (for services) be allowed by that certificate;
//! 4. only a higher version replaces a record; a higher generation replaces the
//!    whole origin; generations and signing times from the future are refused;
//! 5. caps on members, keys per member and total bytes refuse new state, never
//!    evict what is held.
//!
//! Signatures are checked last and once per (record, version): old news is
//! dropped before any cryptography.
//!
//! A record is held once checked as an immutable [`Held`] (the record and its
//! decoded value) behind an `Arc`, so record stores given the same
//! [`SharedRecords`] (the simulator's nodes) hold one copy of each record
//! between them. So is an [`Origin`] (copied on write), and stores that hold
//! the same records of it share one; a store's own part of a member is only
//! when it last heard from it.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::codec::decode_exact;
use crate::gossip::{Key, NodeCertificate, NodeRecord, ServiceRecord, parse_key};

use super::config::Limits;
use super::refusal::Refusal;
use super::shared::SharedRecords;
use super::signing::{Crypto, NodeCert, record_payload};
use super::view::MemberRecords;
use super::wire::{NameRange, OriginSummary, SignedRecord};

/// What one member holds of one origin: a function of the records held, shared
/// between stores that hold the same ones (copied on write).
#[derive(Debug, Clone)]
pub struct Origin<K> {
    /// The origin's name.
    pub name: Arc<str>,
    /// The generation held.
    pub generation: u64,
    /// Its certificate, as checked (shared with its certificate record).
    pub cert: Arc<NodeCert<K>>,
    /// The version of the certificate record.
    pub cert_version: u64,
    /// The latest record per key (the certificate record included), sorted by
    /// key: a few, kept in a vector rather than a tree whose first node holds
    /// room for eleven.
    records: Vec<Arc<Held<K>>>,
    /// The highest version held.
    pub max_version: u64,
    /// The signing time of the record with the highest version: the freshest
    /// proof of life this node holds of the origin.
    pub max_signed_at_ms: u64,
    /// Bytes of its records.
    pub bytes: usize,
    /// [`Origin::fingerprint`], kept up to date by every change.
    fingerprint: u64,
    /// [`Origin::summary_hash`], likewise.
    summary_hash: u64,
    /// [`Origin::member_records`], built on first use after each change.
    member_records: OnceLock<Arc<MemberRecords>>,
    /// When this state of the origin was built (one of its records applied):
    /// when the store last heard *of* it. Between stores that share origins
    /// (the simulator's), when the first of them built it.
    pub changed_at: Instant,
}

/// A record as held once checked: immutable, shared by reference.
#[derive(Debug)]
pub struct Held<K> {
    /// The record as signed (shared with the push queue while it waits there).
    pub record: Arc<SignedRecord>,
    /// Its value, decoded.
    pub value: Value<K>,
}

/// A held record's value, decoded.
#[derive(Debug)]
pub enum Value<K> {
    /// A certificate, as checked.
    Cert(Arc<NodeCert<K>>),
    /// A node record.
    Node(NodeRecord),
    /// A service record.
    Service(ServiceRecord),
    /// One of this node's own values that did not decode (it is still
    /// published as signed; [`check_own_value`] stops it before signing).
    Undecoded,
}

impl<K> Origin<K> {
    /// Its latest record under `key`.
    pub fn record(&self, key: &str) -> Option<&SignedRecord> {
        self.held(key).map(|h| &*h.record)
    }

    /// Its latest record under `key`, shared.
    pub fn shared_record(&self, key: &str) -> Option<&Arc<SignedRecord>> {
        self.held(key).map(|h| &h.record)
    }

    /// Its latest record per key, by key.
    pub fn records(&self) -> impl Iterator<Item = &SignedRecord> {
        self.records.iter().map(|h| &*h.record)
    }

    /// Its node record, once received.
    pub fn node(&self) -> Option<&NodeRecord> {
        self.records.iter().find_map(|h| match &h.value {
            Value::Node(n) => Some(n),
            _ => None,
        })
    }

    /// Its service records, by service name.
    pub fn services(&self) -> impl Iterator<Item = &ServiceRecord> {
        self.records.iter().filter_map(|h| match &h.value {
            Value::Service(s) => Some(s),
            _ => None,
        })
    }

    fn held(&self, key: &str) -> Option<&Arc<Held<K>>> {
        self.slot(key).ok().map(|i| &self.records[i])
    }

    fn slot(&self, key: &str) -> Result<usize, usize> {
        self.records
            .binary_search_by(|h| h.record.key.as_str().cmp(key))
    }

    /// What its records say, for views: built once per change and shared by
    /// every view built until the next one.
    pub fn member_records(&self) -> Arc<MemberRecords> {
        self.member_records
            .get_or_init(|| {
                Arc::new(MemberRecords {
                    name: self.name.to_string(),
                    generation: self.generation,
                    node: self.node().cloned().map(Arc::new),
                    services: self.services().cloned().collect(),
                    cert_services: self.cert.services.clone(),
                    cert_not_after_ms: self.cert.not_after_ms,
                    version: self.max_version,
                })
            })
            .clone()
    }

    /// Its summary for digests.
    pub fn summary(&self) -> OriginSummary {
        OriginSummary {
            name: self.name.to_string(),
            generation: self.generation,
            max_version: self.max_version,
            fingerprint: self.fingerprint(),
        }
    }

    /// A hash of every (key, version) held.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// A hash of the name, generation and fingerprint: what anti-entropy's range
    /// hashes combine.
    pub fn summary_hash(&self) -> u64 {
        self.summary_hash
    }

    fn rehash(&mut self) {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for r in self.records() {
            h.update(&(r.key.len() as u64).to_be_bytes());
            h.update(r.key.as_bytes());
            h.update(&r.version.to_be_bytes());
        }
        self.fingerprint = h.digest();
        let name = xxhash_rust::xxh3::xxh3_64(self.name.as_bytes());
        self.summary_hash = mix(name ^ mix(self.generation ^ mix(self.fingerprint)));
    }

    /// Its records with a version above `after`: the certificate first, then by
    /// version, so a receiver cut short still holds a prefix of the versions.
    pub fn records_after(&self, after: u64) -> Vec<&SignedRecord> {
        let mut out: Vec<&SignedRecord> = self.records().filter(|r| r.version > after).collect();
        out.sort_by_key(|r| (r.key != crate::gossip::CERT_KEY, r.version));
        out
    }

    /// Whether `other` holds the same records of the same origin (everything
    /// else in an origin follows from them).
    pub(super) fn same_records(&self, other: &Origin<K>) -> bool {
        self.name == other.name
            && self.generation == other.generation
            && self.records.len() == other.records.len()
            && self
                .records
                .iter()
                .zip(&other.records)
                .all(|(a, b)| Arc::ptr_eq(a, b) || a.record == b.record)
    }
}

/// What applying a record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// It changed the state: relay it.
    Changed {
        /// It started a new origin or a new generation of one.
        new_generation: bool,
    },
    /// Old news (a version or generation already superseded): dropped silently.
    Stale,
}

/// The context a record is judged in.
#[derive(Debug)]
pub struct Judge<'a, C> {
    /// The cluster name (bound into signatures; node records must name it).
    pub cluster: &'a str,
    /// This node's name.
    pub self_name: &'a str,
    /// The clock, for record timestamps.
    pub now: Instant,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub wall_ms: u64,
    /// Allowed clock skew, milliseconds.
    pub max_skew_ms: u64,
    /// The crypto provider.
    pub crypto: &'a C,
    /// Caps.
    pub limits: &'a Limits,
}

/// A generation that may not come back: replaced by a newer one, or dead and
/// forgotten.
#[derive(Debug, Clone, Copy)]
struct Tombstone {
    generation: u64,
    at: Instant,
    /// Wall-clock time of the burial, ms since the Unix epoch.
    wall_ms: u64,
}

/// The verified records of every member.
#[derive(Debug)]
pub struct RecordStore<K> {
    /// Keyed by the origin's own name (shared with it): a name and a pointer
    /// per member, nothing of this store's own (so a settled simulator of
    /// 10,000 nodes holds 10⁸ of them in about 2.5 GB).
    origins: BTreeMap<Arc<str>, Arc<Origin<K>>>,
    /// When members this store's node heard from last (a message from them),
    /// for those it did.
    heard: HashMap<Arc<str>, Instant>,
    tombstones: HashMap<String, Tombstone>,
    bytes: usize,
    shared: Option<Arc<SharedRecords<K>>>,
}

impl<K> Default for RecordStore<K> {
    fn default() -> Self {
        RecordStore {
            origins: BTreeMap::new(),
            heard: HashMap::new(),
            tombstones: HashMap::new(),
            bytes: 0,
            shared: None,
        }
    }
}

impl<K: Clone + std::fmt::Debug> RecordStore<K> {
    /// Holds the records it takes from now on in `shared`, with every other
    /// store given the same: a record checked here and there is held once.
    pub fn share(&mut self, shared: Arc<SharedRecords<K>>) {
        self.shared = Some(shared);
    }

    /// `record`, checked, as this store holds it: the copy already in the
    /// shared records if there is one.
    fn hold(&self, record: SignedRecord, value: Value<K>) -> Arc<Held<K>> {
        let held = Held {
            record: Arc::new(record),
            value,
        };
        match &self.shared {
            Some(shared) => shared.intern(held),
            None => Arc::new(held),
        }
    }

    /// The origin called `name`.
    pub fn get(&self, name: &str) -> Option<&Origin<K>> {
        self.origins.get(name).map(|o| &**o)
    }

    /// The origin called `name`, as this store holds it (to share).
    pub fn get_shared(&self, name: &str) -> Option<Arc<Origin<K>>> {
        self.origins.get(name).cloned()
    }

    /// Holds `origins` as if their records had been received and applied here,
    /// without judging them again: the caller vouches that a store of the same
    /// cluster checked each (the simulator's settled start, where every node
    /// begins with what gossip would have given it). Origins already held, of
    /// any generation, are left as they are. Returns how many were taken.
    ///
    /// The map is built again in one pass (sorted, full B-tree nodes), so a
    /// store that adopts thousands of origins at once holds them compactly.
    pub(crate) fn adopt(&mut self, origins: impl IntoIterator<Item = Arc<Origin<K>>>) -> usize {
        let mut fresh: Vec<Arc<Origin<K>>> = origins.into_iter().collect();
        if !fresh.is_sorted_by(|a, b| a.name <= b.name) {
            fresh.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        }
        fresh.dedup_by(|a, b| a.name == b.name);
        // Merged in name order with what is held, which wins on a tie.
        let held = std::mem::take(&mut self.origins);
        let mut merged: Vec<(Arc<str>, Arc<Origin<K>>)> =
            Vec::with_capacity(held.len() + fresh.len());
        let mut held = held.into_iter().peekable();
        let mut taken = 0;
        for origin in fresh {
            while let Some(entry) = held.next_if(|(name, _)| **name <= *origin.name) {
                merged.push(entry);
            }
            if merged.last().is_some_and(|(name, _)| *name == origin.name) {
                continue;
            }
            self.bytes += origin.bytes;
            taken += 1;
            merged.push((origin.name.clone(), origin));
        }
        merged.extend(held);
        self.origins = merged.into_iter().collect();
        taken
    }

    /// Whether `origin` at (`generation`, `version`) would be news here: not
    /// held at that version or later, nor replaced by a later generation.
    pub fn is_news(&self, origin: &str, generation: u64, version: u64) -> bool {
        self.get(origin)
            .is_none_or(|o| (o.generation, o.max_version) < (generation, version))
    }

    /// Every origin, by name.
    pub fn origins(&self) -> impl Iterator<Item = &Origin<K>> {
        self.origins.values().map(|o| &**o)
    }

    /// Every origin, by name, with when this node last heard from it or of it.
    pub fn members(&self) -> impl Iterator<Item = (&Origin<K>, Instant)> {
        self.origins.values().map(|o| {
            let from = self.heard.get(&*o.name).copied();
            (&**o, from.map_or(o.changed_at, |t| t.max(o.changed_at)))
        })
    }

    /// The origins whose names fall in `range`.
    pub fn in_range<'s>(&'s self, range: &'s NameRange) -> impl Iterator<Item = &'s Origin<K>> {
        let from = (Bound::Included(range.from.as_str()), Bound::Unbounded);
        self.origins
            .range::<str, _>(from)
            .take_while(move |(name, _)| range.to.as_deref().is_none_or(|to| &***name < to))
            .map(|(_, o)| &**o)
    }

    /// How many origins are held.
    pub fn len(&self) -> usize {
        self.origins.len()
    }

    /// Whether no origin is held.
    pub fn is_empty(&self) -> bool {
        self.origins.is_empty()
    }

    /// Bytes of records held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Notes a message from `name`, if it is held.
    pub fn heard_from(&mut self, name: &str, now: Instant) {
        if let Some(t) = self.heard.get_mut(name) {
            *t = now;
        } else if let Some((name, _)) = self.origins.get_key_value(name) {
            self.heard.insert(name.clone(), now);
        }
    }

    /// Stores one of this node's own records (signed by it, checked by nothing).
    /// The certificate record must come first.
    pub fn insert_own(&mut self, record: SignedRecord, cert: Option<NodeCert<K>>, now: Instant) {
        let name = record.origin.clone();
        let value = match cert {
            Some(cert) => Value::Cert(Arc::new(cert)),
            None => decode_value(&record, &name, None).unwrap_or(Value::Undecoded),
        };
        let replace = match &value {
            Value::Cert(cert) => self
                .get(&name)
                .is_none_or(|o| o.generation != record.generation)
                .then(|| empty_origin(&record, cert.clone(), now)),
            _ => None,
        };
        let held = self.hold(record, value);
        match replace {
            Some(entry) => {
                self.remove_unburied(&name);
                self.start(entry, held, now);
            }
            None => {
                self.update(held, now);
            }
        }
    }

    /// Holds a new origin (or generation) with its first record.
    fn start(&mut self, mut origin: Arc<Origin<K>>, held: Arc<Held<K>>, now: Instant) {
        store(
            &mut origin,
            &mut self.bytes,
            held,
            now,
            self.shared.as_deref(),
        );
        // Keyed by the origin's name as held: one shared copy of the name.
        self.origins.insert(origin.name.clone(), origin);
    }

    /// Holds a record of an origin held; false if the origin is not.
    fn update(&mut self, held: Arc<Held<K>>, now: Instant) -> bool {
        let RecordStore {
            origins,
            bytes,
            shared,
            ..
        } = self;
        let Some(entry) = origins.get_mut(held.record.origin.as_str()) else {
            return false;
        };
        store(entry, bytes, held, now, shared.as_deref());
        true
    }

    /// Judges a record from a peer and applies it if it passes (see the module
    /// documentation).
    pub fn apply<C: Crypto<PublicKey = K>>(
        &mut self,
        record: SignedRecord,
        judge: &Judge<'_, C>,
    ) -> Result<Applied, Refusal> {
        if record.origin == judge.self_name {
            return self.judge_about_self(&record);
        }
        let future = judge.wall_ms.saturating_add(judge.max_skew_ms);
        if record.signed_at_ms > future || record.generation > future {
            return Err(Refusal::FromTheFuture);
        }
        let key = match parse_key(&record.key) {
            Some(Key::Node) => Kind::Node,
            Some(Key::Cert) => Kind::Cert,
            Some(Key::Service(_)) => Kind::Service,
            _ => return Err(Refusal::InvalidValue),
        };
        match self.get(&record.origin) {
            Some(o) if o.generation > record.generation => Ok(Applied::Stale),
            Some(o) if o.generation == record.generation => {
                self.apply_to_current(record, key, judge)
            }
            _ => self.start_generation(record, key, judge),
        }
    }

    fn judge_about_self(&self, record: &SignedRecord) -> Result<Applied, Refusal> {
        match self.get(&record.origin) {
            Some(own) if record.generation < own.generation => Ok(Applied::Stale),
            Some(own)
                if record.generation == own.generation
                    && own
                        .record(&record.key)
                        .is_some_and(|r| r.version >= record.version) =>
            {
                Ok(Applied::Stale)
            }
            _ => Err(Refusal::AboutSelf),
        }
    }

    /// A record of an origin not held, or of a newer generation: only a valid
    /// certificate record may start it.
    fn start_generation<C: Crypto<PublicKey = K>>(
        &mut self,
        record: SignedRecord,
        key: Kind,
        judge: &Judge<'_, C>,
    ) -> Result<Applied, Refusal> {
        // A buried generation stays refused (a dead node's records cannot be
        // replayed back to life), unless its node signed again after the burial:
        // it was alive all along (a partition longer than the grace), and
        // re-announced itself.
        if let Some(t) = self.tombstones.get(&record.origin)
            && record.generation <= t.generation
        {
            let fresh = record.generation == t.generation
                && record.signed_at_ms.saturating_add(judge.max_skew_ms) >= t.wall_ms;
            if !fresh {
                return Err(Refusal::StaleGeneration);
            }
        }
        if key != Kind::Cert {
            return Err(Refusal::UnknownOrigin);
        }
        let existing = self.get(&record.origin);
        if existing.is_none() && self.origins.len() >= judge.limits.max_members {
            return Err(Refusal::MemberLimit);
        }
        let freed = existing.map_or(0, |o| o.bytes);
        if self.bytes - freed + record.weight() > judge.limits.max_state_bytes {
            return Err(Refusal::StateFull);
        }
        let cert = Arc::new(check_certificate(&record, judge)?);
        if let Some(old) = self.remove_unburied(&record.origin) {
            self.bury(&old.name, old.generation, judge.now, judge.wall_ms);
        }
        let entry = empty_origin(&record, cert.clone(), judge.now);
        let held = self.hold(record, Value::Cert(cert));
        self.start(entry, held, judge.now);
        Ok(Applied::Changed {
            new_generation: true,
        })
    }

    fn apply_to_current<C: Crypto<PublicKey = K>>(
        &mut self,
        record: SignedRecord,
        key: Kind,
        judge: &Judge<'_, C>,
    ) -> Result<Applied, Refusal> {
        let Some(origin) = self.get(&record.origin) else {
            return Err(Refusal::UnknownOrigin);
        };
        let held = origin.record(&record.key);
        if held.is_some_and(|r| r.version >= record.version) {
            return Ok(Applied::Stale);
        }
        // Records signed before the current certificate was published belong to
        // the previous key: the origin re-signed everything after rotating.
        if key != Kind::Cert && record.version < origin.cert_version {
            return Ok(Applied::Stale);
        }
        if held.is_none()
            && key == Kind::Service
            && origin.services().count() >= judge.limits.max_services_per_member
        {
            return Err(Refusal::KeyLimit);
        }
        let freed = held.map_or(0, SignedRecord::weight);
        if self.bytes - freed + record.weight() > judge.limits.max_state_bytes {
            return Err(Refusal::StateFull);
        }
        let value = if key == Kind::Cert {
            Value::Cert(Arc::new(check_certificate(&record, judge)?))
        } else {
            let value = decode_value(&record, &record.origin, Some(judge.cluster))?;
            if let Value::Service(s) = &value
                && !origin.cert.services.contains(&s.name)
            {
                return Err(Refusal::ServiceNotInCertificate);
            }
            let payload = record_payload(judge.cluster, &record);
            if !judge
                .crypto
                .verify(&origin.cert.key, &payload, &record.signature)
            {
                return Err(Refusal::BadSignature);
            }
            value
        };
        let held = self.hold(record, value);
        if !self.update(held, judge.now) {
            return Err(Refusal::UnknownOrigin);
        }
        Ok(Applied::Changed {
            new_generation: false,
        })
    }

    /// Forgets `name`: its generation stays refused for `tombstone_ttl`, unless
    /// records it signs after now arrive.
    pub fn remove(&mut self, name: &str, now: Instant, wall_ms: u64) -> Option<Arc<Origin<K>>> {
        let origin = self.remove_unburied(name)?;
        self.bury(name, origin.generation, now, wall_ms);
        Some(origin)
    }

    /// Forgets `name` without refusing its generation afterwards: its records
    /// are welcome again once they check out (after a trust change, say).
    pub fn remove_unburied(&mut self, name: &str) -> Option<Arc<Origin<K>>> {
        let origin = self.origins.remove(name)?;
        self.heard.remove(name);
        self.bytes -= origin.bytes;
        Some(origin)
    }

    fn bury(&mut self, name: &str, generation: u64, now: Instant, wall_ms: u64) {
        let stone = Tombstone {
            generation,
            at: now,
            wall_ms,
        };
        let t = self.tombstones.entry(name.to_string()).or_insert(stone);
        if generation >= t.generation {
            *t = stone;
        }
    }

    /// Drops tombstones older than `ttl`, and the oldest beyond `max`.
    pub fn expire_tombstones(&mut self, now: Instant, ttl: Duration, max: usize) {
        self.tombstones
            .retain(|_, t| now.saturating_duration_since(t.at) < ttl);
        if self.tombstones.len() > max {
            let mut ages: Vec<(Instant, String)> = self
                .tombstones
                .iter()
                .map(|(n, t)| (t.at, n.clone()))
                .collect();
            ages.sort();
            for (_, name) in ages.into_iter().take(self.tombstones.len() - max) {
                self.tombstones.remove(&name);
            }
        }
    }

    /// Checks every held certificate again (after the mesh CA changed, or as time
    /// passes); returns the origins whose certificate no longer verifies, which
    /// the caller removes.
    pub fn recheck_certificates<C: Crypto<PublicKey = K>>(
        &self,
        crypto: &C,
        wall_ms: u64,
        self_name: &str,
    ) -> Vec<String> {
        self.origins()
            .filter(|o| &*o.name != self_name)
            .filter(|o| {
                let Some(r) = o.record(crate::gossip::CERT_KEY) else {
                    return true;
                };
                let Ok(cert) = decode_exact::<NodeCertificate>(&r.value) else {
                    return true;
                };
                crypto
                    .node_certificate(&cert.der, wall_ms)
                    .map_or(true, |c| *c.node != *o.name)
            })
            .map(|o| o.name.to_string())
            .collect()
    }
}

/// Checks one of this node's own values before it is signed: it decodes as its
/// key's record, names this node and cluster, and (for a service) is allowed by
/// the certificate published. The error says what is wrong.
pub fn check_own_value<K>(
    record: &SignedRecord,
    own: &Origin<K>,
    cluster: &str,
) -> Result<(), String> {
    match decode_value::<K>(record, &own.name, Some(cluster)) {
        Ok(Value::Service(s)) if !own.cert.services.contains(&s.name) => Err(format!(
            "this node's certificate does not allow service {:?}",
            s.name
        )),
        Ok(_) => Ok(()),
        Err(r) => Err(format!("the value is not a valid record of its key ({r})")),
    }
}

/// The kind of a record's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Node,
    Cert,
    Service,
}

/// Decodes a value as its key's record and checks it against its key, its origin
/// and (for node records, with `cluster`) the cluster. A certificate is only
/// checked to decode: it is [`Value::Undecoded`] until [`check_certificate`].
fn decode_value<K>(
    record: &SignedRecord,
    origin: &str,
    cluster: Option<&str>,
) -> Result<Value<K>, Refusal> {
    match parse_key(&record.key) {
        Some(Key::Cert) => decode_exact::<NodeCertificate>(&record.value)
            .map(|_| Value::Undecoded)
            .map_err(|_| Refusal::InvalidValue),
        Some(Key::Node) => {
            let node =
                decode_exact::<NodeRecord>(&record.value).map_err(|_| Refusal::InvalidValue)?;
            let cluster_ok = cluster.is_none_or(|c| node.cluster == c);
            if node.name != origin || !cluster_ok {
                return Err(Refusal::InvalidValue);
            }
            Ok(Value::Node(node))
        }
        Some(Key::Service(name)) => {
            let svc =
                decode_exact::<ServiceRecord>(&record.value).map_err(|_| Refusal::InvalidValue)?;
            if svc.name != name {
                return Err(Refusal::InvalidValue);
            }
            Ok(Value::Service(svc))
        }
        _ => Err(Refusal::InvalidValue),
    }
}

/// Checks a certificate record: the certificate verifies, names the origin, and
/// its key signed the record.
fn check_certificate<C: Crypto>(
    record: &SignedRecord,
    judge: &Judge<'_, C>,
) -> Result<NodeCert<C::PublicKey>, Refusal> {
    let cert = decode_exact::<NodeCertificate>(&record.value).map_err(|_| Refusal::InvalidValue)?;
    let checked = judge
        .crypto
        .node_certificate(&cert.der, judge.wall_ms)
        .map_err(|_| Refusal::BadCertificate)?;
    if checked.node != record.origin {
        return Err(Refusal::CertificateMismatch);
    }
    let payload = record_payload(judge.cluster, record);
    if !judge
        .crypto
        .verify(&checked.key, &payload, &record.signature)
    {
        return Err(Refusal::BadSignature);
    }
    Ok(checked)
}

fn empty_origin<K>(record: &SignedRecord, cert: Arc<NodeCert<K>>, now: Instant) -> Arc<Origin<K>> {
    Arc::new(Origin {
        name: Arc::from(record.origin.as_str()),
        generation: record.generation,
        cert,
        cert_version: record.version,
        // The usual origin: a certificate, a node record and one service.
        records: Vec::with_capacity(3),
        max_version: 0,
        max_signed_at_ms: 0,
        bytes: 0,
        fingerprint: 0,
        summary_hash: 0,
        member_records: OnceLock::new(),
        changed_at: now,
    })
}

fn mix(h: u64) -> u64 {
    let mut state = h;
    super::state::splitmix64(&mut state)
}

/// Holds `held` in `entry`, an origin: a copy of it if another store shares
/// it, then the copy another store holds of the result if there is one.
fn store<K: Clone>(
    entry: &mut Arc<Origin<K>>,
    total: &mut usize,
    held: Arc<Held<K>>,
    now: Instant,
    shared: Option<&SharedRecords<K>>,
) {
    let origin = Arc::make_mut(entry);
    let record = &held.record;
    if let Value::Cert(cert) = &held.value {
        origin.cert = cert.clone();
        origin.cert_version = record.version;
    }
    if record.version >= origin.max_version {
        origin.max_version = record.version;
        origin.max_signed_at_ms = record.signed_at_ms;
    }
    let weight = record.weight();
    match origin.slot(&record.key) {
        Ok(i) => {
            let old = std::mem::replace(&mut origin.records[i], held);
            origin.bytes -= old.record.weight();
            *total -= old.record.weight();
        }
        Err(i) => origin.records.insert(i, held),
    }
    origin.bytes += weight;
    *total += weight;
    origin.rehash();
    origin.member_records = OnceLock::new();
    origin.changed_at = now;
    if let Some(shared) = shared {
        *entry = shared.intern_origin(entry.clone());
    }
}
