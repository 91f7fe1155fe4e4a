//! A per-thread, read-only view of the entries a thread hit last, in front
//! of moka: a hit answered here reads no shared state but one counter, and
//! writes nothing shared (moka's `get` hashes with SipHash, walks its table,
//! reads the clock for expiry and queues the read for its eviction policy:
//! most of a memory hit's cost, and cache lines every core writes).
//!
//! Exactness comes from the tier's **epoch**, a counter every change to the
//! tier raises *after* the change is made (writes, deletes, purges, clears,
//! and moka's removals through the eviction listener). A slot remembers the
//! epoch read *before* the moka lookup that filled it, and answers only
//! while the epoch is unchanged: a read that starts after a change completes
//! never sees what the change replaced. A slot also stops answering at the
//! entry's expiry in this tier (computed from when it was stored, at or
//! before moka's own), so an expired entry is never served from here before
//! moka's maintenance removes it.
//!
//! Memory: a slot holds an `Arc` of an entry the tier held when the slot
//! was filled. Entries over [`MAX_ENTRY_WEIGHT`] are not kept here, and a
//! thread has [`SLOTS`] slots, so what slots can keep alive after the tier
//! dropped it is bounded (and released at the slot's next use).
//!
//! Recency: every [`SAMPLE`]th answer from a slot also reads moka (the
//! answer stays the slot's), so moka's eviction policy still sees which
//! entries are hot.
//!
//! Contention: a response served from a shared entry writes the reference
//! counts of the entry, its body and each field value: cache lines that
//! every core serving the entry takes in turn, which under load costs more
//! than the rest of the hit. A slot therefore keeps a **private copy** of a
//! small response (body up to [`PRIVATE_BODY_MAX`]), made from this
//! thread's allocator when the slot is filled, so those counts are only
//! ever touched by this thread. Larger bodies are shared (their copy to the
//! socket dominates).

use std::{
    cell::RefCell,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use cachette_core::{CacheKey, Entry, Payload, StoredResponse};

/// Slots per thread (direct-mapped by key hash: a collision replaces a
/// slot, so hostile keys can only cause misses here, never longer lookups).
pub(crate) const SLOTS: usize = 64;

/// Entries weighing more are always read from moka.
pub(crate) const MAX_ENTRY_WEIGHT: usize = 128 * 1024;

/// Responses with bodies up to this size are copied into the slot.
pub(crate) const PRIVATE_BODY_MAX: usize = 16 * 1024;

/// One slot answer in this many also reads moka, to keep its recency right.
const SAMPLE: u32 = 32;

/// Distinguishes the tiers of one process in the per-thread slots.
static NEXT_TIER_ID: AtomicU64 = AtomicU64::new(1);

/// The shared side: one per memory tier.
#[derive(Debug)]
pub(crate) struct HotView {
    id: u64,
    epoch: AtomicU64,
}

struct Slot {
    tier: u64,
    epoch: u64,
    key: CacheKey,
    entry: Arc<Entry>,
    /// When this tier stops holding the entry (`None`: never expires).
    expires: Option<Instant>,
    answered: u32,
}

thread_local! {
    static SLOTS_OF_THIS_THREAD: RefCell<Vec<Option<Slot>>> = const { RefCell::new(Vec::new()) };
}

fn slot_index(tier: u64, key: &CacheKey) -> usize {
    let hash = cachette_core::stable_hash(key.as_str().as_bytes())
        ^ tier.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    // Truncation intended: only the low bits pick the slot.
    (hash as usize) % SLOTS
}

/// What a lookup found in this thread's slots.
pub(crate) enum Lookup {
    /// A current entry; with `touch`, read the key in moka too (discarding
    /// the answer) so that its eviction policy counts the hit.
    Hit { entry: Arc<Entry>, touch: bool },
    /// Ask moka; fill the slot with [`HotView::fill`] using this epoch.
    Miss { epoch: u64 },
}

impl HotView {
    pub(crate) fn new() -> Self {
        Self {
            id: NEXT_TIER_ID.fetch_add(1, Ordering::Relaxed),
            epoch: AtomicU64::new(0),
        }
    }

    /// Records that the tier changed: every slot filled before stops
    /// answering. Call after the change is visible in moka.
    pub(crate) fn changed(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// This thread's slot for `key`, if it is current.
    pub(crate) fn lookup(&self, key: &CacheKey) -> Lookup {
        // Read before moka is asked: a change completing after this read
        // raises the epoch past what the slot will be filled with.
        let epoch = self.epoch.load(Ordering::Acquire);
        let index = slot_index(self.id, key);
        let found = SLOTS_OF_THIS_THREAD.with(|slots| {
            let mut slots = slots.try_borrow_mut().ok()?;
            let slot = slots.get_mut(index)?;
            let current = slot.as_mut().filter(|slot| {
                slot.tier == self.id
                    && slot.epoch == epoch
                    && slot.key == *key
                    && slot.expires.is_none_or(|at| Instant::now() < at)
            });
            match current {
                Some(slot) => {
                    slot.answered = slot.answered.wrapping_add(1);
                    Some((slot.entry.clone(), slot.answered % SAMPLE == 0))
                }
                None => {
                    // Release what a stale slot keeps alive now.
                    if slot.as_ref().is_some_and(|slot| slot.tier == self.id) {
                        *slot = None;
                    }
                    None
                }
            }
        });
        match found {
            Some((entry, touch)) => Lookup::Hit { entry, touch },
            None => Lookup::Miss { epoch },
        }
    }

    /// Keeps what moka answered for `key` in this thread's slot, tagged
    /// with the epoch read before asking.
    pub(crate) fn fill(
        &self,
        epoch: u64,
        key: &CacheKey,
        entry: &Arc<Entry>,
        expires: Option<Instant>,
    ) {
        if entry.weight() > MAX_ENTRY_WEIGHT {
            return;
        }
        let entry = private_copy(entry);
        let index = slot_index(self.id, key);
        SLOTS_OF_THIS_THREAD.with(|slots| {
            let Ok(mut slots) = slots.try_borrow_mut() else {
                return;
            };
            if slots.is_empty() {
                slots.resize_with(SLOTS, || None);
            }
            if let Some(slot) = slots.get_mut(index) {
                *slot = Some(Slot {
                    tier: self.id,
                    epoch,
                    key: key.clone(),
                    entry,
                    expires,
                    answered: 0,
                });
            }
        });
    }
}

/// The entry as this thread's own allocations (see the module docs): a
/// small response is copied, anything else shared.
fn private_copy(entry: &Arc<Entry>) -> Arc<Entry> {
    let Payload::Response(stored) = entry.payload() else {
        return entry.clone();
    };
    if stored.body.len() > PRIVATE_BODY_MAX {
        return entry.clone();
    }
    let mut headers = http::HeaderMap::with_capacity(stored.headers.len());
    for (name, value) in &stored.headers {
        let copy = http::HeaderValue::from_bytes(value.as_bytes()).map(|mut copy| {
            copy.set_sensitive(value.is_sensitive());
            copy
        });
        // Standard names are static; a custom one is copied like a value.
        let name =
            http::HeaderName::from_bytes(name.as_str().as_bytes()).unwrap_or_else(|_| name.clone());
        headers.append(name, copy.unwrap_or_else(|_| value.clone()));
    }
    let copy = StoredResponse {
        status: stored.status,
        headers,
        body: bytes::Bytes::copy_from_slice(&stored.body),
    };
    Arc::new(Entry::response(copy, entry.meta().clone()))
}
