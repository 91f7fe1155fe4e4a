//! The in-process memory tier of [cachette](https://docs.rs/cachette), on
//! [moka](https://docs.rs/moka).
//!
//! Entries are held decoded, as `Arc<Entry>`: a hit never parses anything, and
//! is answered in front of moka, from the thread's slots (the `hot` module:
//! small responses are held there as the thread's own copy) or from the
//! shared read index (`index`), both exact through epochs raised around
//! every change. Capacity is bounded in bytes (each entry
//! weighs its approximate memory), each entry expires after its own remaining
//! lifetime, optionally capped, and entries can be invalidated by key, by key
//! prefix and by tag.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::{sync::Arc, time::{Duration, SystemTime}};
//! use bytes::Bytes;
//! use cachette_core::{Backend, CacheKey, Entry, EntryMeta};
//! use cachette_moka::MemoryTier;
//!
//! let memory = MemoryTier::builder().max_bytes(16 * 1024 * 1024).build();
//! let key = CacheKey::new("GET:example.com/users/1").unwrap();
//! let meta = EntryMeta::new(SystemTime::now(), Duration::from_secs(60)).with_tags(["users"]);
//! memory.set(&key, Arc::new(Entry::value(Bytes::from_static(b"ada"), meta)), Duration::from_secs(60)).await.unwrap();
//! assert!(memory.get(&key).await.unwrap().is_some());
//!
//! memory.invalidate_tag("users").await.unwrap();
//! assert!(memory.get(&key).await.unwrap().is_none());
//! # }
//! ```

mod hot;
mod index;
mod tags;
mod writes;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use cachette_core::{
    Backend, CacheError, CacheKey, Entry, EntryMeta, Payload, TierInfo, async_trait, glob_match,
};
use moka::{Expiry, future::Cache, notification::RemovalCause};

use crate::{hot::HotView, tags::TagIndex, writes::WriteLocks};

/// The default capacity: 64 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone)]
struct Stored {
    entry: Arc<Entry>,
    /// How long moka keeps it: its TTL and then a grace (see [`held_for`]).
    held: Option<Duration>,
    /// Which write this is, for the tag index.
    generation: u64,
    /// When this tier stops answering with it (`None`: no expiry): taken
    /// just before moka is given it, so never after moka's own expiry.
    expires: Option<Instant>,
}

impl Stored {
    fn new(entry: Arc<Entry>, ttl: Duration, generation: u64) -> Self {
        let expires = expiry(ttl).and_then(|ttl| Instant::now().checked_add(ttl));
        Self {
            entry,
            held: expiry(ttl).map(|ttl| held_for(ttl, generation)),
            generation,
            expires,
        }
    }

    /// Whether its lifetime in this tier is not over: every read checks
    /// it (moka holds it a while longer).
    fn live(&self) -> bool {
        self.expires.is_none_or(|at| Instant::now() < at)
    }

    /// What is left of its lifetime in this tier (`Duration::MAX`: no expiry).
    fn left(&self) -> Duration {
        self.expires.map_or(Duration::MAX, |at| {
            at.saturating_duration_since(Instant::now())
        })
    }
}

/// How long moka holds an entry whose lifetime here is `ttl`: `ttl`, then a
/// grace of a quarter of it (1 s to 30 s), stretched by up to as much again
/// per entry (from its write's number), and at most `ttl` again.
///
/// Why: moka removes expired entries in its maintenance, which runs inline
/// in whichever call triggers it and processes every expired timer at
/// once; when many entries written together expire together while misses
/// insert their refills, calls stall for 100 ms and more (measured: 180 ms
/// with 100,000 entries). Read after its lifetime, an entry is a miss here
/// (see [`Stored::live`]); its refill replaces it before moka's timer fires,
/// and the entries nobody asks for again are removed spread over the grace.
/// They stay within `max_bytes` meanwhile.
fn held_for(ttl: Duration, generation: u64) -> Duration {
    let grace = (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
    // A fraction in [0, 1) from the write number (Fibonacci hashing).
    let spread =
        (generation.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as f64 / (1u64 << 24) as f64;
    // At most 60 s (finite: `mul_f64` cannot overflow), and never more
    // than the lifetime itself (short-lived entries hold little capacity).
    ttl.saturating_add(grace.mul_f64(1.0 + spread).min(ttl))
}

/// Each entry is held for its lifetime and a grace (see [`held_for`]).
struct PerEntryTtl;

/// `Duration::MAX` means "no expiry" (a persistent entry, no TTL cap).
fn expiry(ttl: Duration) -> Option<Duration> {
    (ttl != Duration::MAX).then_some(ttl)
}

impl Expiry<CacheKey, Stored> for PerEntryTtl {
    fn expire_after_create(&self, _: &CacheKey, value: &Stored, _: Instant) -> Option<Duration> {
        value.held
    }

    fn expire_after_update(
        &self,
        _: &CacheKey,
        value: &Stored,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        value.held
    }
}

/// Builds a [`MemoryTier`].
#[derive(Debug, Clone)]
pub struct MemoryTierBuilder {
    max_bytes: u64,
    max_ttl: Option<Duration>,
}

impl MemoryTierBuilder {
    /// Bounds the tier by the approximate memory of its entries and keys
    /// (default [`DEFAULT_MAX_BYTES`]). Least valuable entries are evicted first
    /// (moka's TinyLFU).
    pub fn max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Caps every entry's lifetime in this tier, whatever its TTL. A lost
    /// cross-node invalidation then serves stale data for at most this long.
    pub fn max_ttl(mut self, max_ttl: Duration) -> Self {
        self.max_ttl = Some(max_ttl);
        self
    }

    /// Builds the tier.
    pub fn build(self) -> MemoryTier {
        let tags = Arc::new(TagIndex::default());
        let unindex = tags.clone();
        let hot = Arc::new(HotView::new());
        let removed = hot.clone();
        let cache = Cache::builder()
            .name("cachette-memory")
            .max_capacity(self.max_bytes)
            .weigher(|key: &CacheKey, value: &Stored| {
                // The shared read index's slot, and the copy of the key it
                // may hold (a reader's), are counted whether or not the
                // entry is read (see `index`).
                u32::try_from(2 * key.as_str().len() + value.entry.weight() + index::INDEXED_WEIGHT)
                    .unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .eviction_listener(
                move |key: Arc<CacheKey>, value: Stored, cause: RemovalCause| {
                    unindex.remove(&key, &value.entry.meta().tags, value.generation);
                    // Evicted, expired or removed: the shared index forgets
                    // it and threads' slots of its stripe stop answering.
                    // A replacement is always this tier's own write, which
                    // publishes itself once made (see `hot::Changing`).
                    if cause != RemovalCause::Replaced {
                        removed.removed(&key);
                    }
                },
            )
            .build();
        MemoryTier {
            cache,
            hot,
            writes: Arc::new(WriteLocks::new()),
            tags,
            generations: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            max_ttl: self.max_ttl,
            max_bytes: self.max_bytes,
        }
    }
}

/// The in-process memory tier. Cheap to clone: clones share the same cache.
#[derive(Clone)]
pub struct MemoryTier {
    cache: Cache<CacheKey, Stored>,
    /// Per-thread slots and the shared read index in front of `cache` (see
    /// `hot`); every change below is published to them once made.
    hot: Arc<HotView>,
    /// Orders every change to a key with the others (see `writes`).
    writes: Arc<WriteLocks>,
    tags: Arc<TagIndex>,
    generations: Arc<std::sync::atomic::AtomicU64>,
    max_ttl: Option<Duration>,
    max_bytes: u64,
}

impl std::fmt::Debug for MemoryTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTier")
            .field("max_bytes", &self.max_bytes)
            .field("max_ttl", &self.max_ttl)
            .field("entries", &self.cache.entry_count())
            .field("weighted_bytes", &self.cache.weighted_size())
            .finish()
    }
}

impl Default for MemoryTier {
    fn default() -> Self {
        Self::builder().build()
    }
}

impl MemoryTier {
    /// Starts a builder with the defaults (64 MiB, no TTL cap).
    pub fn builder() -> MemoryTierBuilder {
        MemoryTierBuilder {
            max_bytes: DEFAULT_MAX_BYTES,
            max_ttl: None,
        }
    }

    /// A tier bounded to `max_bytes`.
    pub fn with_max_bytes(max_bytes: u64) -> Self {
        Self::builder().max_bytes(max_bytes).build()
    }

    /// Entries held (approximate until pending maintenance has run).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Approximate bytes held (approximate until pending maintenance has run).
    pub fn weighted_bytes(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// The configured capacity in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Runs moka's pending maintenance (evictions, invalidation sweeps) now.
    pub async fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks().await;
    }

    /// A new write of `key`: its generation, registered under its tags
    /// before the entry is inserted (so a purge running meanwhile finds it).
    /// Called with the key's write lock held (see [`Backend::set`]'s
    /// implementation for why).
    fn register(&self, key: &CacheKey, entry: &Entry) -> u64 {
        let generation = self
            .generations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.tags.add(key, &entry.meta().tags, generation);
        generation
    }

    /// Registers `entry`'s tags under a new generation, then inserts it.
    /// Called with the key's write lock held (see [`Self::register`]).
    async fn insert_locked(&self, key: &CacheKey, entry: Arc<Entry>, ttl: Duration) {
        let generation = self.register(key, &entry);
        self.cache
            .insert(key.clone(), Stored::new(entry, ttl, generation))
            .await;
    }

    /// Removes `key`, in order with every other change to it (see
    /// `writes`); what was held, if anything.
    async fn remove_ordered(&self, key: &CacheKey) -> Option<Stored> {
        let _write = self.writes.lock(self.hot.hash(key)).await;
        self.cache.remove(key).await
    }

    /// [`Backend::get_now`] for the key whose text is `text` (`key`: the
    /// key itself when the caller has one; otherwise one is made only to
    /// index what moka answered).
    fn answer_now(
        &self,
        text: &str,
        key: Option<&CacheKey>,
    ) -> Option<Result<Option<Arc<Entry>>, CacheError>> {
        let noop = || std::task::Context::from_waker(std::task::Waker::noop());
        let epoch = match self.hot.lookup(text) {
            hot::Lookup::Hit { entry, touch } => {
                if touch {
                    // Counted by moka's policy; should its lookup have to
                    // wait for maintenance, this one read goes uncounted.
                    let lookup = std::pin::pin!(self.cache.get(text));
                    let _ = lookup.poll(&mut noop());
                }
                return Some(Ok(Some(entry)));
            }
            hot::Lookup::Miss(epochs) => epochs,
            hot::Lookup::Ended => return Some(Ok(None)),
        };
        // moka's lookup completes in one poll unless it must wait for its
        // own maintenance; then the caller awaits `get` instead.
        let lookup = std::pin::pin!(self.cache.get(text));
        let std::task::Poll::Ready(found) = lookup.poll(&mut noop()) else {
            return None;
        };
        let Some(stored) = found.filter(Stored::live) else {
            return Some(Ok(None));
        };
        let made;
        let key = match key {
            Some(key) => key,
            None => match CacheKey::new(text) {
                Ok(key) => {
                    made = key;
                    &made
                }
                // Unreachable: moka holds only valid keys.
                Err(_) => return Some(Ok(Some(stored.entry))),
            },
        };
        Some(Ok(Some(self.keep_hot(epoch, key, stored))))
    }

    /// Keeps what moka answered in this thread's slot (see `hot`).
    fn keep_hot(&self, epochs: hot::Epochs, key: &CacheKey, stored: Stored) -> Arc<Entry> {
        self.hot.fill(epochs, key, &stored.entry, stored.expires);
        stored.entry
    }

    fn capped(&self, ttl: Duration) -> Duration {
        match self.max_ttl {
            Some(cap) => ttl.min(cap),
            None => ttl,
        }
    }

    /// The keys held that `matches` (one pass over the tier).
    fn matching_keys(&self, matches: impl Fn(&CacheKey) -> bool) -> Vec<CacheKey> {
        self.cache
            .iter()
            .filter(|(key, _)| matches(key))
            .map(|(key, _)| CacheKey::clone(&key))
            .collect()
    }

    /// Makes the entries under `keys` stale in place (a soft purge), each
    /// for the rest of its lifetime; `Vary` markers are left alone.
    async fn soften_keys(&self, keys: impl IntoIterator<Item = CacheKey>) {
        self.soften_keys_tagged(keys, None).await;
    }

    /// [`Self::soften_keys`], only for entries still tagged `tag` (if given).
    async fn soften_keys_tagged(
        &self,
        keys: impl IntoIterator<Item = CacheKey>,
        tag: Option<&str>,
    ) {
        let now = std::time::SystemTime::now();
        for key in keys {
            let _changing = self.hot.changing(&key);
            // Read and replaced under the key's write lock: a write landing
            // between the read and the insert would be overwritten by a
            // staled copy of what it replaced.
            let _write = self.writes.lock(self.hot.hash(&key)).await;
            let Some(stored) = self.cache.get(&key).await.filter(Stored::live) else {
                continue;
            };
            if matches!(stored.entry.payload(), Payload::Variants(_)) {
                continue;
            }
            let meta = stored.entry.meta();
            if tag.is_some_and(|tag| !meta.tags.iter().any(|t| t == tag)) {
                continue;
            }
            let staled = Arc::new(stored.entry.with_meta(meta.clone().staled(now)));
            // Never longer than what was left of it here (its `max_ttl`
            // cap does not start again).
            let ttl = self.capped(staled.remaining_ttl(now)).min(stored.left());
            if ttl.is_zero() {
                self.cache.invalidate(&key).await;
                continue;
            }
            self.insert_locked(&key, staled, ttl).await;
        }
    }

    /// Removes every entry whose key matches, now: one pass over the tier
    /// (prefix and pattern purges are administrative; nothing is left for
    /// later reads to evaluate).
    async fn invalidate_matching(&self, matches: impl Fn(&CacheKey) -> bool + Sync) {
        // The index also forgets every matching key it holds, when done: a
        // key moka already dropped (its eviction listener still to run) is
        // not in `iter`, and must not be answered after the purge returns.
        let _all = self.hot.changing_matching(&matches);
        let keys: Vec<Arc<CacheKey>> = self
            .cache
            .iter()
            .filter(|(key, _)| matches(key))
            .map(|(key, _)| key)
            .collect();
        for key in keys {
            let _changing = self.hot.changing(&key);
            self.remove_ordered(&key).await;
        }
    }
}

#[async_trait]
impl Backend for MemoryTier {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn info(&self) -> TierInfo {
        TierInfo::usage(self.entry_count(), self.weighted_bytes(), self.max_bytes)
    }

    async fn get(&self, key: &CacheKey) -> Result<Option<Arc<Entry>>, CacheError> {
        let epoch = match self.hot.lookup(key.as_str()) {
            hot::Lookup::Hit { entry, touch } => {
                if touch {
                    let _ = self.cache.get(key).await;
                }
                return Ok(Some(entry));
            }
            hot::Lookup::Miss(epochs) => epochs,
            hot::Lookup::Ended => return Ok(None),
        };
        Ok(self
            .cache
            .get(key)
            .await
            .filter(Stored::live)
            .map(|stored| self.keep_hot(epoch, key, stored)))
    }

    fn get_now(&self, key: &CacheKey) -> Option<Result<Option<Arc<Entry>>, CacheError>> {
        self.answer_now(key.as_str(), Some(key))
    }

    fn get_now_str(&self, key: &str) -> Option<Result<Option<Arc<Entry>>, CacheError>> {
        self.answer_now(key, None)
    }

    async fn set(
        &self,
        key: &CacheKey,
        entry: Arc<Entry>,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        let ttl = match self.max_ttl {
            Some(cap) => ttl.min(cap),
            None => ttl,
        };
        // Laid out for its hits before the key's write lock is taken.
        if !ttl.is_zero() {
            entry.prepare_for_serving();
        }
        let _changing = self.hot.changing(key);
        // Registered and inserted under the key's write lock: a concurrent
        // write of the same key registering in between would otherwise have
        // its registration taken out when this value replaced it (the
        // replaced value's generation would be the current one), and a
        // purge of its tags would miss the value kept.
        let _write = self.writes.lock(self.hot.hash(key)).await;
        if ttl.is_zero() {
            // Nothing to keep; and make sure an older value does not outlive this write.
            self.cache.invalidate(key).await;
            return Ok(());
        }
        self.insert_locked(key, entry, ttl).await;
        Ok(())
    }

    async fn delete(&self, key: &CacheKey) -> Result<bool, CacheError> {
        let _changing = self.hot.changing(key);
        Ok(self
            .remove_ordered(key)
            .await
            .is_some_and(|stored| stored.live()))
    }

    async fn touch(&self, key: &CacheKey, meta: EntryMeta) -> Result<bool, CacheError> {
        let _changing = self.hot.changing(key);
        // Read and replaced under the key's write lock (the trait's default
        // reads, then writes: a delete or purge completing in between was
        // undone by the touched copy).
        let _write = self.writes.lock(self.hot.hash(key)).await;
        let Some(stored) = self.cache.get(key).await.filter(Stored::live) else {
            return Ok(false);
        };
        let meta = meta.with_tags(stored.entry.meta().tags.iter().cloned());
        let touched = Arc::new(stored.entry.with_meta(meta));
        let ttl = self.capped(touched.remaining_ttl(std::time::SystemTime::now()));
        if ttl.is_zero() {
            self.cache.invalidate(key).await;
            return Ok(true);
        }
        self.insert_locked(key, touched, ttl).await;
        Ok(true)
    }

    async fn soften(&self, key: &CacheKey) -> Result<(), CacheError> {
        self.soften_keys(std::iter::once(key.clone())).await;
        Ok(())
    }

    async fn soften_prefix(&self, prefix: &str) -> Result<(), CacheError> {
        let matches = |key: &CacheKey| key.starts_with(prefix);
        // As for purges: the index forgets matching keys moka already dropped.
        let _all = self.hot.changing_matching(&matches);
        let keys = self.matching_keys(matches);
        self.soften_keys(keys).await;
        Ok(())
    }

    async fn soften_pattern(&self, pattern: &str) -> Result<(), CacheError> {
        let matches = |key: &CacheKey| glob_match(pattern, key.as_str());
        let _all = self.hot.changing_matching(&matches);
        let keys = self.matching_keys(matches);
        self.soften_keys(keys).await;
        Ok(())
    }

    async fn soften_tag(&self, tag: &str) -> Result<(), CacheError> {
        self.soften_keys_tagged(self.tags.keys(tag), Some(tag))
            .await;
        Ok(())
    }

    async fn invalidate_prefix(&self, prefix: &str) -> Result<(), CacheError> {
        self.invalidate_matching(|key| key.starts_with(prefix))
            .await;
        Ok(())
    }

    async fn invalidate_tag(&self, tag: &str) -> Result<(), CacheError> {
        let _all = self.hot.changing_many();
        for key in self.tags.take(tag) {
            // Published whether or not moka still holds it: one it already
            // dropped (its eviction listener still to run) may be indexed.
            let _changing = self.hot.changing(&key);
            // Checked and removed under the key's write lock: a write of
            // an untagged value meanwhile is kept.
            let _write = self.writes.lock(self.hot.hash(&key)).await;
            let tagged = self
                .cache
                .get(&key)
                .await
                .is_some_and(|stored| stored.entry.meta().tags.iter().any(|t| t == tag));
            if tagged {
                self.cache.invalidate(&key).await;
            }
        }
        Ok(())
    }

    async fn invalidate_pattern(&self, pattern: &str) -> Result<(), CacheError> {
        self.invalidate_matching(|key| glob_match(pattern, key.as_str()))
            .await;
        Ok(())
    }

    async fn add(
        &self,
        key: &CacheKey,
        entry: Arc<Entry>,
        ttl: Duration,
    ) -> Result<bool, CacheError> {
        let ttl = self.capped(ttl);
        if ttl.is_zero() {
            return Ok(false);
        }
        entry.prepare_for_serving();
        let _changing = self.hot.changing(key);
        // Checked and inserted under the key's write lock: once per key.
        let _write = self.writes.lock(self.hot.hash(key)).await;
        // An entry past its lifetime (held by moka for its grace) is absent.
        if self.cache.get(key).await.is_some_and(|held| held.live()) {
            return Ok(false);
        }
        self.insert_locked(key, entry, ttl).await;
        Ok(true)
    }

    async fn incr(&self, key: &CacheKey, delta: i64) -> Result<Option<i64>, CacheError> {
        let _changing = self.hot.changing(key);
        // Read and replaced under the key's write lock: no increment is lost.
        let _write = self.writes.lock(self.hot.hash(key)).await;
        let Some(stored) = self.cache.get(key).await.filter(Stored::live) else {
            return Ok(None);
        };
        let Payload::Counter(value) = stored.entry.payload() else {
            return Err(CacheError::NotACounter(key.to_string()));
        };
        let next = value
            .checked_add(delta)
            .ok_or_else(|| CacheError::Overflow(key.to_string()))?;
        let now = std::time::SystemTime::now();
        let ttl = self
            .capped(stored.entry.remaining_ttl(now))
            .min(stored.left());
        let entry = Arc::new(Entry::counter(next, stored.entry.meta().clone()));
        self.insert_locked(key, entry, ttl).await;
        Ok(Some(next))
    }

    async fn clear(&self) -> Result<(), CacheError> {
        let _all = self.hot.clearing();
        // With every write lock held, no write registers its tags between
        // the registry's reset and moka's (one that did would keep its
        // value unregistered: a purge of its tags would miss it).
        let _writes = self.writes.lock_all().await;
        self.tags.clear();
        self.cache.invalidate_all();
        Ok(())
    }

    async fn health(&self) -> Result<(), CacheError> {
        Ok(())
    }
}
