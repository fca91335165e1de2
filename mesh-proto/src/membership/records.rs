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

use std::collections::{BTreeMap, HashMap};

use litemap::LiteMap;
use std::time::{Duration, Instant};

use crate::codec::decode_exact;
use crate::gossip::{Key, NodeCertificate, NodeRecord, ServiceRecord, parse_key};

use super::config::Limits;
use super::refusal::Refusal;
use super::signing::{Crypto, NodeCert, record_payload};
use super::wire::{NameRange, OriginSummary, SignedRecord};

/// What one member holds of one origin.
#[derive(Debug, Clone)]
pub struct Origin<K> {
    /// The origin's name.
    pub name: String,
    /// The generation held.
    pub generation: u64,
    /// Its certificate, as checked.
    pub cert: NodeCert<K>,
    /// The version of the certificate record.
    pub cert_version: u64,
    /// The latest record per key (the certificate record included): a few,
    /// kept in a sorted vector rather than a tree whose first node holds room
    /// for eleven.
    pub records: LiteMap<String, SignedRecord>,
    /// The node record, decoded.
    pub node: Option<NodeRecord>,
    /// The service records, decoded, by service name.
    pub services: LiteMap<String, ServiceRecord>,
    /// The highest version held.
    pub max_version: u64,
    /// The signing time of the record with the highest version: the freshest
    /// proof of life this node holds of the origin.
    pub max_signed_at_ms: u64,
    /// Bytes of its records.
    pub bytes: usize,
    /// When a record of it was last applied here.
    pub changed_at: Instant,
    /// [`Origin::fingerprint`], kept up to date by every change.
    fingerprint: u64,
    /// [`Origin::summary_hash`], likewise.
    summary_hash: u64,
}

impl<K> Origin<K> {
    /// Its summary for digests.
    pub fn summary(&self) -> OriginSummary {
        OriginSummary {
            name: self.name.clone(),
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
        for (k, r) in self.records.iter() {
            h.update(&(k.len() as u64).to_be_bytes());
            h.update(k.as_bytes());
            h.update(&r.version.to_be_bytes());
        }
        self.fingerprint = h.digest();
        let name = xxhash_rust::xxh3::xxh3_64(self.name.as_bytes());
        self.summary_hash = mix(name ^ mix(self.generation ^ mix(self.fingerprint)));
    }

    /// Its records with a version above `after`: the certificate first, then by
    /// version, so a receiver cut short still holds a prefix of the versions.
    pub fn records_after(&self, after: u64) -> Vec<&SignedRecord> {
        let mut out: Vec<&SignedRecord> = self
            .records
            .values()
            .filter(|r| r.version > after)
            .collect();
        out.sort_by_key(|r| (r.key != crate::gossip::CERT_KEY, r.version));
        out
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
    origins: BTreeMap<String, Origin<K>>,
    tombstones: HashMap<String, Tombstone>,
    bytes: usize,
}

impl<K> Default for RecordStore<K> {
    fn default() -> Self {
        RecordStore {
            origins: BTreeMap::new(),
            tombstones: HashMap::new(),
            bytes: 0,
        }
    }
}

impl<K: Clone + std::fmt::Debug> RecordStore<K> {
    /// The origin called `name`.
    pub fn get(&self, name: &str) -> Option<&Origin<K>> {
        self.origins.get(name)
    }

    /// Whether `origin` at (`generation`, `version`) would be news here: not
    /// held at that version or later, nor replaced by a later generation.
    pub fn is_news(&self, origin: &str, generation: u64, version: u64) -> bool {
        self.origins
            .get(origin)
            .is_none_or(|o| (o.generation, o.max_version) < (generation, version))
    }

    /// Every origin, by name.
    pub fn origins(&self) -> impl Iterator<Item = &Origin<K>> {
        self.origins.values()
    }

    /// The origins whose names fall in `range`.
    pub fn in_range<'s>(&'s self, range: &'s NameRange) -> impl Iterator<Item = &'s Origin<K>> {
        self.origins
            .range(range.from.clone()..)
            .take_while(move |(name, _)| range.to.as_deref().is_none_or(|to| name.as_str() < to))
            .map(|(_, o)| o)
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

    /// Stores one of this node's own records (signed by it, checked by nothing).
    /// The certificate record must come first.
    pub fn insert_own(&mut self, record: SignedRecord, cert: Option<NodeCert<K>>, now: Instant) {
        let name = record.origin.clone();
        if let Some(cert) = cert {
            let replace = self
                .origins
                .get(&name)
                .is_none_or(|o| o.generation != record.generation);
            if replace {
                if let Some(old) = self.origins.remove(&name) {
                    self.bytes -= old.bytes;
                }
                self.origins
                    .insert(name.clone(), empty_origin(&record, cert.clone(), now));
            } else if let Some(o) = self.origins.get_mut(&name) {
                o.cert = cert;
                o.cert_version = record.version;
            }
        }
        let Some(origin) = self.origins.get_mut(&name) else {
            return;
        };
        let decoded = decode_value(&record, &name, None);
        store(origin, &mut self.bytes, record, decoded, now);
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
        match self.origins.get(&record.origin) {
            Some(o) if o.generation > record.generation => Ok(Applied::Stale),
            Some(o) if o.generation == record.generation => {
                self.apply_to_current(record, key, judge)
            }
            _ => self.start_generation(record, key, judge),
        }
    }

    fn judge_about_self(&self, record: &SignedRecord) -> Result<Applied, Refusal> {
        match self.origins.get(&record.origin) {
            Some(own) if record.generation < own.generation => Ok(Applied::Stale),
            Some(own)
                if record.generation == own.generation
                    && own
                        .records
                        .get(&record.key)
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
        let existing = self.origins.get(&record.origin);
        if existing.is_none() && self.origins.len() >= judge.limits.max_members {
            return Err(Refusal::MemberLimit);
        }
        let freed = existing.map_or(0, |o| o.bytes);
        if self.bytes - freed + record.weight() > judge.limits.max_state_bytes {
            return Err(Refusal::StateFull);
        }
        let cert = check_certificate(&record, judge)?;
        let replaced = self.origins.remove(&record.origin);
        if let Some(old) = replaced {
            self.bytes -= old.bytes;
            self.bury(&old.name, old.generation, judge.now, judge.wall_ms);
        }
        let mut origin = empty_origin(&record, cert, judge.now);
        let decoded = decode_value(&record, &record.origin, None);
        store(&mut origin, &mut self.bytes, record, decoded, judge.now);
        self.origins.insert(origin.name.clone(), origin);
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
        let Some(origin) = self.origins.get(&record.origin) else {
            return Err(Refusal::UnknownOrigin);
        };
        let held = origin.records.get(&record.key);
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
            && origin.services.len() >= judge.limits.max_services_per_member
        {
            return Err(Refusal::KeyLimit);
        }
        let freed = held.map_or(0, SignedRecord::weight);
        if self.bytes - freed + record.weight() > judge.limits.max_state_bytes {
            return Err(Refusal::StateFull);
        }
        let (decoded, new_cert) = if key == Kind::Cert {
            (Decoded::Cert, Some(check_certificate(&record, judge)?))
        } else {
            let decoded = decode_value(&record, &record.origin, Some(judge.cluster))?;
            if let Decoded::Service(s) = &decoded
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
            (decoded, None)
        };
        let Some(origin) = self.origins.get_mut(&record.origin) else {
            return Err(Refusal::UnknownOrigin);
        };
        if let Some(cert) = new_cert {
            origin.cert = cert;
            origin.cert_version = record.version;
        }
        store(origin, &mut self.bytes, record, Ok(decoded), judge.now);
        Ok(Applied::Changed {
            new_generation: false,
        })
    }

    /// Forgets `name`: its generation stays refused for `tombstone_ttl`, unless
    /// records it signs after now arrive.
    pub fn remove(&mut self, name: &str, now: Instant, wall_ms: u64) -> Option<Origin<K>> {
        let origin = self.remove_unburied(name)?;
        self.bury(name, origin.generation, now, wall_ms);
        Some(origin)
    }

    /// Forgets `name` without refusing its generation afterwards: its records
    /// are welcome again once they check out (after a trust change, say).
    pub fn remove_unburied(&mut self, name: &str) -> Option<Origin<K>> {
        let origin = self.origins.remove(name)?;
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
        self.origins
            .values()
            .filter(|o| o.name != self_name)
            .filter(|o| {
                let Some(r) = o.records.get(crate::gossip::CERT_KEY) else {
                    return true;
                };
                let Ok(cert) = decode_exact::<NodeCertificate>(&r.value) else {
                    return true;
                };
                crypto
                    .node_certificate(&cert.der, wall_ms)
                    .map_or(true, |c| c.node != o.name)
            })
            .map(|o| o.name.clone())
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
    match decode_value(record, &own.name, Some(cluster)) {
        Ok(Decoded::Service(s)) if !own.cert.services.contains(&s.name) => Err(format!(
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

/// A decoded record value.
#[derive(Debug)]
enum Decoded {
    Cert,
    Node(NodeRecord),
    Service(ServiceRecord),
}

/// Decodes a value as its key's record and checks it against its key, its origin
/// and (for node records, with `cluster`) the cluster.
fn decode_value(
    record: &SignedRecord,
    origin: &str,
    cluster: Option<&str>,
) -> Result<Decoded, Refusal> {
    match parse_key(&record.key) {
        Some(Key::Cert) => decode_exact::<NodeCertificate>(&record.value)
            .map(|_| Decoded::Cert)
            .map_err(|_| Refusal::InvalidValue),
        Some(Key::Node) => {
            let node =
                decode_exact::<NodeRecord>(&record.value).map_err(|_| Refusal::InvalidValue)?;
            let cluster_ok = cluster.is_none_or(|c| node.cluster == c);
            if node.name != origin || !cluster_ok {
                return Err(Refusal::InvalidValue);
            }
            Ok(Decoded::Node(node))
        }
        Some(Key::Service(name)) => {
            let svc =
                decode_exact::<ServiceRecord>(&record.value).map_err(|_| Refusal::InvalidValue)?;
            if svc.name != name {
                return Err(Refusal::InvalidValue);
            }
            Ok(Decoded::Service(svc))
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

fn empty_origin<K>(record: &SignedRecord, cert: NodeCert<K>, now: Instant) -> Origin<K> {
    Origin {
        name: record.origin.clone(),
        generation: record.generation,
        cert,
        cert_version: record.version,
        // The usual origin: a certificate, a node record and one service.
        records: LiteMap::with_capacity(3),
        node: None,
        services: LiteMap::with_capacity(1),
        max_version: 0,
        max_signed_at_ms: 0,
        bytes: 0,
        changed_at: now,
        fingerprint: 0,
        summary_hash: 0,
    }
}

fn mix(h: u64) -> u64 {
    let mut state = h;
    super::state::splitmix64(&mut state)
}

fn store<K>(
    origin: &mut Origin<K>,
    total: &mut usize,
    record: SignedRecord,
    decoded: Result<Decoded, Refusal>,
    now: Instant,
) {
    match decoded {
        Ok(Decoded::Node(n)) => origin.node = Some(n),
        Ok(Decoded::Service(s)) => {
            origin.services.insert(s.name.clone(), s);
        }
        Ok(Decoded::Cert) | Err(_) => {}
    }
    if record.version >= origin.max_version {
        origin.max_version = record.version;
        origin.max_signed_at_ms = record.signed_at_ms;
    }
    let weight = record.weight();
    if let Some(old) = origin.records.insert(record.key.clone(), record) {
        origin.bytes -= old.weight();
        *total -= old.weight();
    }
    origin.bytes += weight;
    *total += weight;
    origin.changed_at = now;
    origin.rehash();
}
