//! Which keys hold entries with a tag: a purge by tag removes exactly those,
//! at once, instead of registering a predicate that every later read would
//! evaluate until moka's maintenance runs it (thousands of pending purges
//! made each hit ~1,000× slower).
//!
//! The index is kept by the writes (a tagged entry registers its key, with
//! the entry's generation, before it is inserted) and by moka's removal
//! notifications (a replaced, evicted, expired or removed entry takes out
//! the registrations of *its* generation only). moka may notify a removal
//! after the entry's successor registered, and reports some replacements as
//! explicit removals (after `invalidate_all`): the generation keeps either
//! from taking out the successor's registration. A purge checks the current
//! entry's tags before removing it, so a stale registration costs a little
//! memory until the tag is purged, never a wrong removal.

use std::{
    collections::{HashMap, HashSet},
    hash::BuildHasher,
    sync::{Mutex, PoisonError},
};

use cachette_core::CacheKey;

const SHARDS: usize = 16;

#[derive(Debug)]
pub(crate) struct TagIndex {
    shards: Vec<Mutex<HashMap<String, HashMap<CacheKey, u64>>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for TagIndex {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }
}

impl TagIndex {
    fn shard(
        &self,
        tag: &str,
    ) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<CacheKey, u64>>> {
        let index = usize::try_from(self.hasher.hash_one(tag) % SHARDS as u64).unwrap_or(0);
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `key`'s entry of `generation` under each of `tags`.
    pub(crate) fn add(&self, key: &CacheKey, tags: &[String], generation: u64) {
        for tag in tags {
            self.shard(tag)
                .entry(tag.clone())
                .or_default()
                .insert(key.clone(), generation);
        }
    }

    /// Takes `key` out of each of `tags`, if registered for `generation`.
    pub(crate) fn remove(&self, key: &CacheKey, tags: &[String], generation: u64) {
        for tag in tags {
            let mut shard = self.shard(tag);
            if let Some(keys) = shard.get_mut(tag) {
                if keys.get(key) == Some(&generation) {
                    keys.remove(key);
                }
                if keys.is_empty() {
                    shard.remove(tag);
                }
            }
        }
    }

    /// The keys registered under `tag` (they stay registered).
    pub(crate) fn keys(&self, tag: &str) -> Vec<CacheKey> {
        self.shard(tag)
            .get(tag)
            .map(|keys| keys.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The keys registered under `tag`, unregistered.
    pub(crate) fn take(&self, tag: &str) -> HashSet<CacheKey> {
        self.shard(tag)
            .remove(tag)
            .map(|keys| keys.into_keys().collect())
            .unwrap_or_default()
    }

    /// Forgets everything (after a clear).
    pub(crate) fn clear(&self) {
        for shard in &self.shards {
            shard.lock().unwrap_or_else(PoisonError::into_inner).clear();
        }
    }
}
