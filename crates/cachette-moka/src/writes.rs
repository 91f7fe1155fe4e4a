//! Per-key order of the memory tier's writes.
//!
//! Every change this tier makes to a key (a store, a delete, a soft purge,
//! `add`, `incr`, a purge's removal) holds the key's stripe of these locks
//! while it reads and writes moka. Why not moka's entry API
//! (`and_compute_with`): moka orders a computation only with the other
//! computations of its key, not with `insert` or `remove`, so every write
//! would have to be one; and a computation costs a waiter entry, a read of
//! the current value and a second hash (measured: ~4,500 instructions a
//! store, a quarter of a refill's time in the memory tier when many
//! entries expire together). An uncontended lock here is one atomic
//! exchange.
//!
//! They cannot deadlock: a change holds one stripe at a time (only `clear`
//! holds them all, taken in order), and nothing that a stripe's holder
//! waits for inside moka (its own per-key lock, room in its write queue,
//! its maintenance) ever waits for a stripe: the eviction listener, which
//! moka runs inside those, must never take one.

use async_lock::{Mutex, MutexGuard};

/// Stripes: keys share one only by their hash, and writes to one key
/// take microseconds, so a few dozen are enough for two cores' worth of
/// concurrent writers.
const STRIPES: usize = 64;

/// One stripe per cache line: writers of neighbouring stripes on two cores
/// would otherwise take turns holding the line.
#[repr(align(64))]
#[derive(Default)]
struct Stripe(Mutex<()>);

/// The write locks of one memory tier.
pub(crate) struct WriteLocks {
    stripes: Box<[Stripe; STRIPES]>,
}

impl WriteLocks {
    pub(crate) fn new() -> Self {
        Self {
            stripes: Box::new(std::array::from_fn(|_| Stripe::default())),
        }
    }

    /// Waits for the stripe of the key whose hash is `hash` (the tier's
    /// keyed hash, see `hot`) and holds it until the guard is dropped.
    pub(crate) async fn lock(&self, hash: u64) -> MutexGuard<'_, ()> {
        // The low bits (the slots and epochs of `hot` use the top ones); in
        // bounds by construction.
        let index = (hash % STRIPES as u64) as usize;
        self.stripes[index].0.lock().await
    }

    /// Waits for every stripe, in order, and holds them all: nothing else
    /// changes the tier until the guards are dropped.
    pub(crate) async fn lock_all(&self) -> Vec<MutexGuard<'_, ()>> {
        let mut guards = Vec::with_capacity(STRIPES);
        for stripe in self.stripes.iter() {
            guards.push(stripe.0.lock().await);
        }
        guards
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_key_waits_for_its_stripe_and_others_do_not() {
        let locks = WriteLocks::new();
        let waker = std::task::Waker::noop();
        let mut context = std::task::Context::from_waker(waker);
        let held = std::pin::pin!(locks.lock(7));
        let std::task::Poll::Ready(held) = held.poll(&mut context) else {
            panic!("a free stripe was not taken at once");
        };
        let same = std::pin::pin!(locks.lock(7 + STRIPES as u64));
        let mut same = same;
        assert!(same.as_mut().poll(&mut context).is_pending());
        let other = std::pin::pin!(locks.lock(8));
        assert!(other.poll(&mut context).is_ready());
        drop(held);
        assert!(same.poll(&mut context).is_ready());
    }
}
