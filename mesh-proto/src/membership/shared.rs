//! Checked records shared between record stores: each store still judges every
//! record itself, but an identical record that another store already holds is
//! held by reference, not copied. The simulator gives all its nodes one
//! [`SharedRecords`], so N nodes that each hold every member's records keep one
//! copy of each record, not N; a real node has one store and needs none.
//! Origins (what a store holds of a member: a function of its records) are
//! shared the same way.
//!
//! Only the memory is shared, never a verdict: a store takes the shared copy
//! after its own checks passed, so nothing one store accepted is accepted by
//! another on its word.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use super::records::{Held, Origin};
use super::wire::SignedRecord;

/// Records, and origins (a function of the records held), held by some store,
/// by content. Entries no store holds any more are swept as the tables grow.
#[derive(Debug)]
pub struct SharedRecords<K> {
    records: Mutex<Table<Held<K>>>,
    origins: Mutex<Table<Origin<K>>>,
}

#[derive(Debug)]
struct Table<T> {
    by_hash: HashMap<u64, Vec<Weak<T>>>,
    entries: usize,
    /// Entries left by the last sweep: the next one waits until twice as many.
    after_sweep: usize,
}

/// Entries below which a table is never swept.
const MIN_SWEEP: usize = 1024;

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            by_hash: HashMap::new(),
            entries: 0,
            after_sweep: 0,
        }
    }
}

impl<K> Default for SharedRecords<K> {
    fn default() -> Self {
        SharedRecords {
            records: Mutex::default(),
            origins: Mutex::default(),
        }
    }
}

impl<K> SharedRecords<K> {
    /// The copy held of `held`'s record if a store holds one, else `held`,
    /// now shared. The caller has checked `held`: its value is what it decoded
    /// and checked itself, and an identical record decodes identically.
    pub fn intern(&self, held: Held<K>) -> Arc<Held<K>> {
        let hash = content_hash(&held.record);
        let mut table = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        table.intern(hash, held, |a, b| a.record == b.record)
    }

    /// The copy held of `origin` if a store holds the same records of it, else
    /// `origin`, now shared.
    pub fn intern_origin(&self, origin: Arc<Origin<K>>) -> Arc<Origin<K>> {
        let hash = origin.summary_hash();
        let mut table = self.origins.lock().unwrap_or_else(PoisonError::into_inner);
        table.intern_arc(hash, origin, Origin::same_records)
    }

    /// Records some store still holds.
    pub fn len(&self) -> usize {
        lock(&self.records).live()
    }

    /// Whether no store holds a record of it.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Distinct origins some store still holds (an origin held at different
    /// versions by different stores counts once per version).
    pub fn origins_len(&self) -> usize {
        lock(&self.origins).live()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<T> Table<T> {
    fn intern(&mut self, hash: u64, item: T, same: impl Fn(&T, &T) -> bool) -> Arc<T> {
        if let Some(existing) = self.find(hash, |held| same(held, &item)) {
            return existing;
        }
        let item = Arc::new(item);
        self.add(hash, &item);
        item
    }

    fn intern_arc(&mut self, hash: u64, item: Arc<T>, same: impl Fn(&T, &T) -> bool) -> Arc<T> {
        if let Some(existing) = self.find(hash, |held| same(held, &item)) {
            return existing;
        }
        self.add(hash, &item);
        item
    }

    fn find(&self, hash: u64, same: impl Fn(&T) -> bool) -> Option<Arc<T>> {
        let list = self.by_hash.get(&hash)?;
        list.iter().filter_map(Weak::upgrade).find(|h| same(h))
    }

    fn add(&mut self, hash: u64, item: &Arc<T>) {
        self.by_hash
            .entry(hash)
            .or_default()
            .push(Arc::downgrade(item));
        self.entries += 1;
        if self.entries >= (2 * self.after_sweep).max(MIN_SWEEP) {
            self.sweep();
        }
    }

    fn live(&self) -> usize {
        self.by_hash
            .values()
            .flatten()
            .filter(|w| w.strong_count() > 0)
            .count()
    }

    fn sweep(&mut self) {
        self.by_hash.retain(|_, list| {
            list.retain(|w| w.strong_count() > 0);
            !list.is_empty()
        });
        self.entries = self.by_hash.values().map(Vec::len).sum();
        self.after_sweep = self.entries;
    }
}

fn content_hash(record: &SignedRecord) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    record.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::records::Value;

    fn record(version: u64, value: &[u8]) -> SignedRecord {
        SignedRecord {
            origin: "n1".into(),
            generation: 1,
            version,
            signed_at_ms: 5,
            key: "node".into(),
            value: value.to_vec(),
            signature: vec![7; 32],
        }
    }

    fn held(version: u64, value: &[u8]) -> Held<()> {
        Held {
            record: Arc::new(record(version, value)),
            value: Value::Undecoded,
        }
    }

    #[test]
    fn an_identical_record_is_held_once() {
        let shared = SharedRecords::default();
        let a = shared.intern(held(1, b"x"));
        let b = shared.intern(held(1, b"x"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(shared.len(), 1);
    }

    #[test]
    fn records_that_differ_in_anything_are_held_apart() {
        let shared = SharedRecords::default();
        let a = shared.intern(held(1, b"x"));
        let b = shared.intern(held(2, b"x"));
        let c = shared.intern(held(1, b"y"));
        let mut other_signature = record(1, b"x");
        other_signature.signature = vec![8; 32];
        let d = shared.intern(Held {
            record: Arc::new(other_signature),
            value: Value::Undecoded,
        });
        for (x, y) in [(&a, &b), (&a, &c), (&a, &d), (&b, &c)] {
            assert!(!Arc::ptr_eq(x, y));
        }
        assert_eq!(shared.len(), 4);
    }

    #[test]
    fn a_record_no_store_holds_is_forgotten() {
        let shared = SharedRecords::default();
        let kept = shared.intern(held(0, b"kept"));
        for v in 1..=(3 * MIN_SWEEP as u64) {
            drop(shared.intern(held(v, b"dropped")));
        }
        assert_eq!(shared.len(), 1);
        let table = shared.records.lock().unwrap();
        assert!(
            table.entries < 2 * MIN_SWEEP,
            "{} entries left after sweeps",
            table.entries
        );
        drop(table);
        assert!(Arc::ptr_eq(&kept, &shared.intern(held(0, b"kept"))));
    }
}
