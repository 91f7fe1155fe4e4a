//! A read-optimised index of the entries moka holds, shared by every thread:
//! a hit found here takes one shard's read lock and clones the entry's
//! `Arc`; moka's `get` (its lock-free table, an epoch pin, the clock, and a
//! read queued for its eviction policy on a channel every core writes) is
//! left for misses and for one hit in [`SAMPLE`], so moka's policy still
//! sees which entries are read.
//!
//! **Exactness**: the index is only ever *filled* from what moka answered,
//! under the shard's write lock and only while the tier's epochs are still
//! the ones read before moka was asked; every change to a key removes the
//! key from the index after moka has applied it, between two raises of the
//! key's epoch (see `hot::Changing`). So a fill that read moka before a
//! change either lands before the change's removal (and is removed by it)
//! or finds an epoch raised (and is refused), and a read that starts after a
//! change completed finds the new entry or nothing.
//!
//! **Memory**: moka decides what is held. The index holds the same
//! `Arc<Entry>` as moka (no copy) and the key of the read that filled it
//! (another allocation of the same bytes), and loses an entry when moka
//! evicts, expires or removes it (its eviction listener) and when the tier
//! replaces it (the write's own publication). Its own bytes per
//! entry ([`INDEXED_WEIGHT`]) and the key's length are counted in every
//! entry's weight, so the tier stays within `max_bytes`. Entries never read
//! are not indexed.

use std::{
    sync::{Arc, PoisonError, RwLock},
    time::Instant,
};

use cachette_core::{CacheKey, Entry};
use hashbrown::HashTable;

/// Shards of the index: concurrent fills and removals of different keys
/// rarely share a lock.
const SHARDS: usize = 64;

/// One index hit in this many also reads moka, so that its eviction policy
/// counts the hit (recency and frequency, sampled).
pub(crate) const SAMPLE: u32 = 32;

/// What the index costs per entry: the slot (hash, key, entry, expiry: 48
/// bytes) and its control byte, at the table's load factor, with room for
/// one growth. Counted in every entry's weight.
pub(crate) const INDEXED_WEIGHT: usize = 112;

struct Indexed {
    hash: u64,
    key: CacheKey,
    entry: Arc<Entry>,
    /// When this tier stops answering with it (`None`: no expiry).
    expires: Option<Instant>,
}

/// A shard on cache lines of its own: two threads reading different
/// shards write different lines.
#[repr(align(64))]
#[derive(Default)]
struct Shard(RwLock<HashTable<Indexed>>);

/// See the module docs.
pub(crate) struct SharedIndex {
    shards: Box<[Shard]>,
}

impl std::fmt::Debug for SharedIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedIndex").finish_non_exhaustive()
    }
}

/// What the index holds for a key.
pub(crate) enum Read {
    /// A current entry.
    Found(Found),
    /// An entry whose lifetime here is over: a miss, and moka holds
    /// nothing newer for the key unless a write is publishing it (which a
    /// reader may miss as it may miss any write still in progress).
    Ended,
    /// Nothing: ask moka.
    Absent,
}

/// A found entry and when it stops being served.
pub(crate) struct Found {
    pub(crate) entry: Arc<Entry>,
    pub(crate) expires: Option<Instant>,
}

impl SharedIndex {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }

    fn shard(&self, hash: u64) -> &Shard {
        // Bits hashbrown uses for neither its buckets (low) nor its control
        // bytes (the top seven).
        let index = usize::try_from((hash >> 32) % SHARDS as u64).unwrap_or(0);
        &self.shards[index % self.shards.len()]
    }

    /// The live entry under the key whose text is `key`, if indexed.
    pub(crate) fn get(&self, hash: u64, key: &str) -> Read {
        // A panic while a lock was held cannot leave a table half-changed
        // (hashbrown's operations complete or unwind before changing it),
        // so a poisoned lock is used as it is.
        let table = self
            .shard(hash)
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(found) = table.find(hash, |indexed| indexed.key.as_str() == key) else {
            return Read::Absent;
        };
        if found.expires.is_some_and(|at| Instant::now() >= at) {
            return Read::Ended;
        }
        Read::Found(Found {
            entry: found.entry.clone(),
            expires: found.expires,
        })
    }

    /// Indexes what moka answered for `key`, if `still_current` holds while
    /// the shard is locked (the caller's epochs have not moved).
    pub(crate) fn fill(
        &self,
        hash: u64,
        key: &CacheKey,
        entry: &Arc<Entry>,
        expires: Option<Instant>,
        still_current: impl FnOnce() -> bool,
    ) {
        let mut table = self
            .shard(hash)
            .0
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if !still_current() {
            return;
        }
        let indexed = Indexed {
            hash,
            key: key.clone(),
            entry: entry.clone(),
            expires,
        };
        match table.find_mut(hash, |indexed| indexed.key == *key) {
            Some(slot) => *slot = indexed,
            None => {
                table.insert_unique(hash, indexed, |indexed| indexed.hash);
            }
        }
    }

    /// Forgets `key` (after moka applied a change to it).
    pub(crate) fn remove(&self, hash: u64, key: &CacheKey) {
        let mut table = self
            .shard(hash)
            .0
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Ok(slot) = table.find_entry(hash, |indexed| indexed.key == *key) {
            // Dropped outside the lock would be nicer, but an entry's drop
            // only releases reference counts.
            let _ = slot.remove();
            // Give back what a shrinking shard no longer needs (its bytes
            // are counted per entry held, with room for one growth).
            if table.capacity() > 64 && table.len() * 4 < table.capacity() {
                let keep = table.len() * 2;
                table.shrink_to(keep, |indexed| indexed.hash);
            }
        }
    }

    /// Forgets every key that `matches` (after moka applied a purge).
    pub(crate) fn forget_matching(&self, matches: &dyn Fn(&CacheKey) -> bool) {
        for shard in &*self.shards {
            let mut table = shard.0.write().unwrap_or_else(PoisonError::into_inner);
            table.retain(|indexed| !matches(&indexed.key));
        }
    }

    /// Forgets every key (after moka was cleared).
    pub(crate) fn clear(&self) {
        for shard in &*self.shards {
            let mut table = shard.0.write().unwrap_or_else(PoisonError::into_inner);
            let held = std::mem::take(&mut *table);
            drop(table);
            // The entries are released outside the lock.
            drop(held);
        }
    }
}
