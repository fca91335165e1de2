//! Checked records shared between record stores: each store still judges every
//! record itself, but an identical record that another store already holds is
//! held by reference, not copied. The simulator gives all its nodes one
//! [`SharedRecords`], so N nodes that each hold every member's records keep one
//! copy of each record, not N; a real node has one store and needs none.
//!
//! Only the memory is shared, never a verdict: a store takes the shared copy
//! after its own checks passed, so nothing one store accepted is accepted by
//! another on its word.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use super::records::Held;
use super::wire::SignedRecord;

/// Records held by some store, by content. Entries of records no store holds
/// any more are swept as the table grows.
#[derive(Debug)]
pub struct SharedRecords<K> {
    table: Mutex<Table<K>>,
}

#[derive(Debug)]
struct Table<K> {
    by_hash: HashMap<u64, Vec<Weak<Held<K>>>>,
    entries: usize,
    /// Entries left by the last sweep: the next one waits until twice as many.
    after_sweep: usize,
}

/// Entries below which the table is never swept.
const MIN_SWEEP: usize = 1024;

impl<K> Default for SharedRecords<K> {
    fn default() -> Self {
        SharedRecords {
            table: Mutex::new(Table {
                by_hash: HashMap::new(),
                entries: 0,
                after_sweep: 0,
            }),
        }
    }
}

impl<K> SharedRecords<K> {
    /// The copy held of `held`'s record if a store holds one, else `held`,
    /// now shared. The caller has checked `held`: its value is what it decoded
    /// and checked itself, and an identical record decodes identically.
    pub fn intern(&self, held: Held<K>) -> Arc<Held<K>> {
        let hash = content_hash(&held.record);
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let same = table.by_hash.get(&hash).and_then(|list| {
            list.iter()
                .filter_map(Weak::upgrade)
                .find(|h| h.record == held.record)
        });
        if let Some(existing) = same {
            return existing;
        }
        let held = Arc::new(held);
        table
            .by_hash
            .entry(hash)
            .or_default()
            .push(Arc::downgrade(&held));
        table.entries += 1;
        if table.entries >= (2 * table.after_sweep).max(MIN_SWEEP) {
            table.sweep();
        }
        held
    }

    /// Records some store still holds.
    pub fn len(&self) -> usize {
        let table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        table
            .by_hash
            .values()
            .flatten()
            .filter(|w| w.strong_count() > 0)
            .count()
    }

    /// Whether no store holds a record of it.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K> Table<K> {
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
            record: record(version, value),
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
        let mut other_signature = held(1, b"x");
        other_signature.record.signature = vec![8; 32];
        let d = shared.intern(other_signature);
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
        let table = shared.table.lock().unwrap();
        assert!(
            table.entries < 2 * MIN_SWEEP,
            "{} entries left after sweeps",
            table.entries
        );
        drop(table);
        assert!(Arc::ptr_eq(&kept, &shared.intern(held(0, b"kept"))));
    }
}
