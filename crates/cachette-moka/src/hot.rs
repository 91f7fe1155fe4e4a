//! The read side in front of moka: per-thread slots of the entries a
//! thread hit last, then the shared index of every entry read since it was
//! written (`index`), then moka. A hit answered by a slot reads two shared
//! counters and writes nothing shared; one answered by the index takes a
//! shard's read lock (moka's `get` hashes with SipHash, walks its table,
//! pins an epoch, reads the clock for expiry and queues the read for its
//! eviction policy: most of a memory hit's cost, and cache lines every core
//! writes).
//!
//! **Exactness** comes from epochs, counters raised around every change to
//! the tier: one per stripe of keys ([`STRIPES`], by key hash), raised by a
//! change to one key (write, delete, soft purge, counter, and moka's own
//! removals through its eviction listener), and one for the whole tier,
//! raised by changes to many keys (prefix, pattern and tag purges, clear).
//! Once moka has applied a change to a key, its stripe is raised, the key
//! is removed from the shared index, and the stripe is raised again (the
//! guard [`Changing`], also when the change's future is dropped midway). A
//! slot remembers both epochs as read *before* the lookup that filled it,
//! and answers only while both are unchanged; the index is filled only
//! while they are. So a read that starts after a change completes never
//! sees what the change replaced: a slot filled from the index just before
//! the key's removal is stale by the second raise, and a fill of the index
//! with what moka answered before the change either lands before the
//! removal (and is removed) or after the first raise (and is refused).
//! A slot also stops answering at the entry's expiry in this tier (taken at
//! or before moka's own), so an expired entry is never served from here
//! before moka's maintenance removes it.
//!
//! **Recency**: every [`SAMPLE`]th answer from a slot, and every
//! [`index::SAMPLE`]th from the index, also reads moka (the answer stays
//! the slot's or the index's), so moka's eviction policy still sees which
//! entries are hot.
//!
//! **Hashing**: one keyed SipHash per lookup (the tier's own random keys,
//! so client-chosen URLs cannot aim at one slot, stripe or shard), used for
//! the slot, the stripe and the index.
//!
//! **Contention**: a response served from a shared entry writes the reference
//! counts of the entry, its body and its field values: cache lines that
//! every core serving the entry takes in turn. A slot that has answered
//! twice therefore holds a **private copy** of the entry, made from this
//! thread's allocator, so those counts are only ever touched by this thread
//! (until then it holds moka's `Arc`: with many keys, most slots are
//! replaced before they answer, and a copy per fill would cost more than it
//! saves).
//!
//! **Memory**: only entries with a body (or value) of at most [`MAX_BODY`]
//! and a weight of at most [`MAX_ENTRY_WEIGHT`] are kept, in [`SLOTS`] slots per
//! thread, so the copies are bounded per thread (64 × 32 KiB = 2 MiB) and are
//! outside the tier's `max_bytes`. A slot whose epoch moved is released at
//! the thread's next lookup of its index, and a thread's slots of a tier
//! are all released at its first lookup after a whole-tier change. The
//! shared index's bytes are counted in the entries' weights (`index`).

use std::{
    cell::RefCell,
    hash::{BuildHasher, RandomState},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use cachette_core::{CacheKey, Entry, Payload, StoredResponse};

use crate::index::{self, SharedIndex};

/// Slots per thread (direct-mapped by key hash: a collision replaces a
/// slot, so hostile keys can only cause misses here, never longer lookups).
pub(crate) const SLOTS: usize = 64;

/// Epoch stripes per tier: a change to one key invalidates the slots of
/// one stripe (the same hash bits as the slot index), on every thread.
pub(crate) const STRIPES: usize = SLOTS;

/// Responses (and values) with larger bodies are always read from moka.
pub(crate) const MAX_BODY: usize = 16 * 1024;

/// Entries weighing more are always read from moka.
pub(crate) const MAX_ENTRY_WEIGHT: usize = 32 * 1024;

/// One slot answer in this many also reads moka, to keep its recency right.
const SAMPLE: u32 = 32;

/// Distinguishes the tiers of one process in the per-thread slots.
static NEXT_TIER_ID: AtomicU64 = AtomicU64::new(1);

/// A counter on a cache line of its own: raising one stripe must not make
/// readers of the others miss.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Padded(AtomicU64);

/// The shared side: one per memory tier.
#[derive(Debug)]
pub(crate) struct HotView {
    id: u64,
    whole: Padded,
    stripes: Box<[Padded]>,
    /// The tier's keyed hash of cache keys.
    hasher: RandomState,
    index: SharedIndex,
}

struct Slot {
    tier: u64,
    whole: u64,
    stripe: u64,
    key: CacheKey,
    entry: Arc<Entry>,
    /// When this tier stops holding the entry (`None`: never expires).
    expires: Option<Instant>,
    answered: u32,
    /// `entry` is this thread's own copy (made at the slot's second answer:
    /// with many keys most slots are replaced before they answer at all).
    private: bool,
}

impl Slot {
    fn current(&self, whole: u64, stripe: u64) -> bool {
        self.whole == whole
            && self.stripe == stripe
            && self.expires.is_none_or(|at| Instant::now() < at)
    }
}

#[derive(Default)]
struct ThreadSlots {
    slots: Vec<Option<Slot>>,
    /// Per slot, the hash of the last key that missed there: a key is
    /// kept at its second miss in a row at that slot, so keys read once
    /// (many keys, few repeats) cost no fill.
    candidates: Vec<u64>,
    /// The whole-tier epoch this thread last saw, per tier it reads.
    seen: Vec<(u64, u64)>,
    /// Answers from the shared index, for sampling them into moka.
    index_hits: u32,
}

impl ThreadSlots {
    /// Releases every slot of `tier` when its whole-tier epoch moved since
    /// this thread last looked.
    fn sweep_if_moved(&mut self, tier: u64, whole: u64) {
        match self.seen.iter_mut().find(|(id, _)| *id == tier) {
            Some((_, last)) if *last == whole => {}
            Some((_, last)) => {
                *last = whole;
                for slot in &mut self.slots {
                    if slot.as_ref().is_some_and(|slot| slot.tier == tier) {
                        *slot = None;
                    }
                }
            }
            None => {
                // A handful of tiers per process; forget the oldest.
                if self.seen.len() >= 8 {
                    self.seen.remove(0);
                }
                self.seen.push((tier, whole));
            }
        }
    }
}

thread_local! {
    static SLOTS_OF_THIS_THREAD: RefCell<ThreadSlots> = RefCell::new(ThreadSlots::default());
}

fn index_of_hash(hash: u64) -> usize {
    // The top 6 bits: SLOTS is 64.
    usize::try_from(hash >> 58).unwrap_or(0) % SLOTS
}

/// What a lookup found in this thread's slots.
pub(crate) enum Lookup {
    /// A current entry; with `touch`, read the key in moka too (discarding
    /// the answer) so that its eviction policy counts the hit.
    Hit { entry: Arc<Entry>, touch: bool },
    /// Ask moka; then [`HotView::fill`] with these epochs.
    Miss(Epochs),
    /// A miss without asking moka: the index holds the key past its
    /// lifetime here, so moka's answer would be the same ended entry. Why
    /// it matters: when many entries end together, every refill would
    /// otherwise read moka once more (a recorded read, and the maintenance
    /// it triggers) just to be told so.
    Ended,
}

/// The epochs a lookup read before asking moka.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Epochs {
    whole: u64,
    stripe: u64,
    index: usize,
    hash: u64,
}

/// Where [`HotView::published_with`] is between its steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The stripe was raised once; the index still holds the key.
    Raised,
    /// The index no longer holds the key; the stripe is not raised again yet.
    Removed,
}

/// What a [`Changing`] guard changes.
enum Change<'a> {
    /// One key (its hash).
    Key(u64, CacheKey),
    /// Many keys, each also changed on its own.
    Many,
    /// The keys that match, each moka holds also changed on its own; the
    /// index forgets every match (also those moka dropped already).
    Matching(&'a (dyn Fn(&CacheKey) -> bool + Sync)),
    /// Every key at once (moka cleared).
    All,
}

/// Raises epochs and drops index entries when dropped: at the end of a
/// change, or when the change's future is dropped midway (moka may have
/// applied it already).
#[must_use = "the change is published when the guard is dropped"]
pub(crate) struct Changing<'a> {
    view: &'a HotView,
    change: Change<'a>,
}

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        match &self.change {
            Change::Key(hash, key) => self.view.published(*hash, key),
            Change::Many => self.view.raise_whole(),
            Change::Matching(matches) => {
                self.view.raise_whole();
                self.view.index.forget_matching(matches);
                self.view.raise_whole();
            }
            Change::All => {
                self.view.raise_whole();
                self.view.index.clear();
                self.view.raise_whole();
            }
        }
    }
}

impl HotView {
    pub(crate) fn new() -> Self {
        Self {
            id: NEXT_TIER_ID.fetch_add(1, Ordering::Relaxed),
            whole: Padded::default(),
            stripes: (0..STRIPES).map(|_| Padded::default()).collect(),
            hasher: RandomState::new(),
            index: SharedIndex::new(),
        }
    }

    pub(crate) fn hash(&self, key: &CacheKey) -> u64 {
        self.hash_str(key.as_str())
    }

    /// The keyed hash of a key's text (the same as [`Self::hash`]).
    fn hash_str(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    /// A change to `key` is applied in moka: raise its stripe, forget it in
    /// the index, raise the stripe again (see the module docs for why two).
    fn published(&self, hash: u64, key: &CacheKey) {
        self.published_with(hash, key, |_| {});
    }

    /// [`Self::published`], with a call between its steps (for tests of
    /// what a reader does there).
    fn published_with(&self, hash: u64, key: &CacheKey, mut between: impl FnMut(Step)) {
        let stripe = index_of_hash(hash);
        self.raise_stripe(stripe);
        between(Step::Raised);
        self.index.remove(hash, key);
        between(Step::Removed);
        self.raise_stripe(stripe);
    }

    fn raise_stripe(&self, index: usize) {
        if let Some(stripe) = self.stripes.get(index) {
            stripe.0.fetch_add(1, Ordering::AcqRel);
        } else {
            self.raise_whole();
        }
    }

    fn raise_whole(&self) {
        self.whole.0.fetch_add(1, Ordering::AcqRel);
    }

    /// Records that moka removed `key` (its eviction listener).
    pub(crate) fn removed(&self, key: &CacheKey) {
        self.published(self.hash(key), key);
    }

    /// A guard for a change to `key`: publishes it when dropped.
    pub(crate) fn changing(&self, key: &CacheKey) -> Changing<'_> {
        Changing {
            view: self,
            change: Change::Key(self.hash(key), key.clone()),
        }
    }

    /// A guard for a change to many keys, each of which also takes its own
    /// guard: raises the whole-tier epoch when dropped.
    pub(crate) fn changing_many(&self) -> Changing<'_> {
        Changing {
            view: self,
            change: Change::Many,
        }
    }

    /// A guard for a change to the keys that `matches`, each of which moka
    /// holds also taking its own guard: when dropped, raises the whole-tier
    /// epoch, drops every match from the index, raises it again.
    pub(crate) fn changing_matching<'a>(
        &'a self,
        matches: &'a (dyn Fn(&CacheKey) -> bool + Sync),
    ) -> Changing<'a> {
        Changing {
            view: self,
            change: Change::Matching(matches),
        }
    }

    /// A guard for clearing moka: raises the whole-tier epoch and empties
    /// the index when dropped.
    pub(crate) fn clearing(&self) -> Changing<'_> {
        Changing {
            view: self,
            change: Change::All,
        }
    }

    /// Whether no epoch moved since `epochs` were read.
    fn unchanged(&self, epochs: &Epochs) -> bool {
        let now = self.epochs(epochs.hash);
        now.whole == epochs.whole && now.stripe == epochs.stripe
    }

    fn epochs(&self, hash: u64) -> Epochs {
        let index = index_of_hash(hash);
        // Read before moka is asked: a change completing after this read
        // raises an epoch past what the slot will be filled with.
        let whole = self.whole.0.load(Ordering::Acquire);
        let stripe = self
            .stripes
            .get(index)
            .map_or(u64::MAX, |stripe| stripe.0.load(Ordering::Acquire));
        Epochs {
            whole,
            stripe,
            index,
            hash,
        }
    }

    /// A current entry for `key` from this thread's slot or the shared
    /// index, or the epochs to fill them with after asking moka.
    pub(crate) fn lookup(&self, key: &str) -> Lookup {
        let epochs = self.epochs(self.hash_str(key));
        let found = SLOTS_OF_THIS_THREAD.try_with(|slots| {
            let mut slots = slots.try_borrow_mut().ok()?;
            slots.sweep_if_moved(self.id, epochs.whole);
            let slot = slots.slots.get_mut(epochs.index)?;
            let ours = slot.as_mut().filter(|slot| slot.tier == self.id)?;
            if !ours.current(epochs.whole, epochs.stripe) {
                // Release what a stale slot keeps alive now.
                *slot = None;
                return None;
            }
            if ours.key.as_str() != key {
                return None;
            }
            ours.answered = ours.answered.wrapping_add(1);
            if !ours.private && ours.answered >= 2 {
                if let Some(copy) = private_copy(&ours.entry) {
                    ours.entry = copy;
                }
                ours.private = true;
            }
            Some((ours.entry.clone(), ours.answered % SAMPLE == 0))
        });
        if let Ok(Some((entry, touch))) = found {
            return Lookup::Hit { entry, touch };
        }
        match self.index.get(epochs.hash, key) {
            index::Read::Found(found) => {
                self.fill_slot(epochs, KeyText::Text(key), &found.entry, found.expires);
                let touch = SLOTS_OF_THIS_THREAD
                    .try_with(|slots| {
                        let mut slots = slots.try_borrow_mut().ok()?;
                        slots.index_hits = slots.index_hits.wrapping_add(1);
                        Some(slots.index_hits % index::SAMPLE == 0)
                    })
                    .ok()
                    .flatten()
                    .unwrap_or(false);
                Lookup::Hit {
                    entry: found.entry,
                    touch,
                }
            }
            index::Read::Ended => Lookup::Ended,
            index::Read::Absent => Lookup::Miss(epochs),
        }
    }

    /// Keeps what moka answered for `key` in the shared index and in this
    /// thread's slot, tagged with the epochs read before asking moka, if no
    /// epoch has moved since (see the module docs).
    pub(crate) fn fill(
        &self,
        epochs: Epochs,
        key: &CacheKey,
        entry: &Arc<Entry>,
        expires: Option<Instant>,
    ) {
        self.index
            .fill(epochs.hash, key, entry, expires, || self.unchanged(&epochs));
        self.fill_slot(epochs, KeyText::Key(key), entry, expires);
    }

    /// Keeps an entry found for `key` in this thread's slot, tagged with
    /// the epochs read before looking, if the key also missed there last
    /// time and no epoch has moved since (the slot would never answer). The
    /// slot holds the shared `Arc` until it has answered twice, then this
    /// thread's own copy.
    fn fill_slot(
        &self,
        epochs: Epochs,
        key: KeyText<'_>,
        entry: &Arc<Entry>,
        expires: Option<Instant>,
    ) {
        let _ = SLOTS_OF_THIS_THREAD.try_with(|slots| {
            let Ok(mut slots) = slots.try_borrow_mut() else {
                return;
            };
            if slots.slots.is_empty() {
                slots.slots.resize_with(SLOTS, || None);
                slots.candidates.resize(SLOTS, 0);
            }
            match slots.candidates.get_mut(epochs.index) {
                Some(candidate) if *candidate == epochs.hash => {}
                Some(candidate) => {
                    *candidate = epochs.hash;
                    return;
                }
                None => return,
            }
            if !kept_here(entry) || entry.weight() > MAX_ENTRY_WEIGHT {
                return;
            }
            if !self.unchanged(&epochs) {
                return;
            }
            // Made only now for a lookup by text: a slot is filled rarely.
            let Some(key) = key.owned() else {
                return;
            };
            if let Some(slot) = slots.slots.get_mut(epochs.index) {
                *slot = Some(Slot {
                    tier: self.id,
                    whole: epochs.whole,
                    stripe: epochs.stripe,
                    key,
                    entry: entry.clone(),
                    expires,
                    answered: 0,
                    private: false,
                });
            }
        });
    }
}

/// The key a slot is filled for: built already, or only its text (a
/// lookup by text).
#[derive(Clone, Copy)]
enum KeyText<'a> {
    Key(&'a CacheKey),
    Text(&'a str),
}

impl KeyText<'_> {
    /// The key to keep (a text that is no valid key is never kept: no
    /// entry is stored under it).
    fn owned(self) -> Option<CacheKey> {
        match self {
            Self::Key(key) => Some(key.clone()),
            Self::Text(text) => CacheKey::new(text).ok(),
        }
    }
}

/// Whether slots keep `entry` (see [`MAX_BODY`]).
fn kept_here(entry: &Entry) -> bool {
    match entry.payload() {
        Payload::Response(stored) => stored.body.len() <= MAX_BODY,
        Payload::Value(value) => value.len() <= MAX_BODY,
        Payload::Counter(_) | Payload::Variants(_) => true,
        _ => false,
    }
}

/// The entry as this thread's own allocations (see the module docs);
/// `None` when it is not kept here (a body over [`MAX_BODY`], or fields
/// that cannot be laid out again).
fn private_copy(entry: &Entry) -> Option<Arc<Entry>> {
    let meta = entry.meta().clone();
    let copy = match entry.payload() {
        Payload::Response(stored) if stored.body.len() <= MAX_BODY => {
            let copy = Entry::response(private_response(stored)?, meta);
            copy.prepare_for_serving();
            copy
        }
        Payload::Value(value) if value.len() <= MAX_BODY => {
            Entry::value(bytes::Bytes::copy_from_slice(value), meta)
        }
        Payload::Counter(value) => Entry::counter(*value, meta),
        Payload::Variants(names) => Entry::variants(names.iter().map(private_name).collect(), meta),
        _ => return None,
    };
    Some(Arc::new(copy))
}

/// Standard names are static; a custom one is copied like a value.
fn private_name(name: &http::HeaderName) -> http::HeaderName {
    http::HeaderName::from_bytes(name.as_str().as_bytes()).unwrap_or_else(|_| name.clone())
}

fn private_response(stored: &StoredResponse) -> Option<StoredResponse> {
    let mut headers = http::HeaderMap::try_with_capacity(stored.headers.len()).ok()?;
    for (name, value) in &stored.headers {
        let copy = http::HeaderValue::from_bytes(value.as_bytes()).map(|mut copy| {
            copy.set_sensitive(value.is_sensitive());
            copy
        });
        headers
            .try_append(private_name(name), copy.unwrap_or_else(|_| value.clone()))
            .ok()?;
    }
    Some(StoredResponse {
        status: stored.status,
        headers,
        body: bytes::Bytes::copy_from_slice(&stored.body),
    })
}

#[cfg(test)]
mod tests {
    //! The two windows of a change's publication, each entered on purpose
    //! (the concurrent test in `tests/read_index.rs` rarely lands in them).
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::{Duration, SystemTime};

    use cachette_core::EntryMeta;

    use super::*;

    fn old_entry() -> Arc<Entry> {
        let meta = EntryMeta::new(SystemTime::now(), Duration::from_secs(60));
        Arc::new(Entry::value(bytes::Bytes::from_static(b"old"), meta))
    }

    fn is_miss(view: &HotView, key: &CacheKey) -> bool {
        matches!(view.lookup(key.as_str()), Lookup::Miss(_) | Lookup::Ended)
    }

    #[test]
    fn a_slot_filled_from_the_index_before_its_removal_stops_answering() {
        let view = HotView::new();
        let key = CacheKey::new("GET:example.com/a").unwrap();
        let Lookup::Miss(epochs) = view.lookup(key.as_str()) else {
            panic!("empty view answered");
        };
        view.fill(epochs, &key, &old_entry(), None);
        // A first hit from the index makes the key this slot's candidate.
        assert!(!is_miss(&view, &key));
        let hash = view.hash(&key);
        view.published_with(hash, &key, |step| {
            if step == Step::Raised {
                // The old entry is still indexed: the slot takes it, with
                // the epoch raised once.
                assert!(!is_miss(&view, &key));
            }
        });
        assert!(is_miss(&view, &key), "the slot answered a replaced entry");
    }

    #[test]
    fn a_fill_with_what_moka_answered_before_the_change_is_refused() {
        let view = HotView::new();
        let key = CacheKey::new("GET:example.com/b").unwrap();
        // A reader read the epochs and got the old entry from moka; the
        // change is applied in moka and published before it fills.
        let Lookup::Miss(epochs) = view.lookup(key.as_str()) else {
            panic!("empty view answered");
        };
        let hash = view.hash(&key);
        view.published_with(hash, &key, |step| {
            if step == Step::Removed {
                view.fill(epochs, &key, &old_entry(), None);
            }
        });
        assert!(is_miss(&view, &key), "the index kept a replaced entry");
    }

    #[test]
    fn a_purge_forgets_indexed_keys_moka_has_already_dropped() {
        // moka evicted the key (its listener has not run yet), so a purge
        // finds nothing to invalidate there: the index must still forget it.
        let view = HotView::new();
        let key = CacheKey::new("GET:example.com/purged").unwrap();
        let Lookup::Miss(epochs) = view.lookup(key.as_str()) else {
            panic!("empty view answered");
        };
        view.fill(epochs, &key, &old_entry(), None);
        assert!(!is_miss(&view, &key));
        let matches = |key: &CacheKey| key.starts_with("GET:example.com/");
        drop(view.changing_matching(&matches));
        assert!(is_miss(&view, &key), "the index answered a purged key");
    }
}
