//! Fill leases: one origin call per key across every node that shares the
//! authoritative tier.
//!
//! The first node to miss a key takes a short lease on the shared tier
//! (Redis: `{ns}l:{key}`, set only if absent), fills the key, and ends the
//! lease with its outcome, which stays readable for a moment (the
//! *linger*) and wakes the other nodes (a bus message). A node that finds
//! the lease held waits, woken by that message or, should the bus lose it,
//! by polling the lease, and then reads the cache ([`FleetFill::Filled`]),
//! goes to the origin at once when the result was not storable
//! ([`FleetFill::Unstorable`]), or takes the lease over when its holder died
//! (the lease expired). Nothing here can stall a request: waits are bounded,
//! every call has the tier's timeout and breaker, and a tier without leases
//! (or down) leaves each node to coalesce on its own
//! ([`FleetFill::Unavailable`]).

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::Notify;

use crate::{CacheKey, Tiered};

/// The default length of a fill lease (renewed while the fill runs).
pub const DEFAULT_FILL_LEASE: Duration = Duration::from_secs(5);

/// What the shared tier says when a node asks for a key's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// The lease is this node's now.
    Acquired {
        /// The previous lease on the key ran out while it was held: its
        /// holder died or hung (as opposed to a key nobody was filling, or
        /// a lease its holder gave up).
        expired: bool,
    },
    /// Another node holds it, or ended it a moment ago.
    Held {
        /// What the holder is doing.
        holder: LeaseHolder,
        /// How long the lease (or the holder's outcome) stays readable.
        remaining: Duration,
    },
}

/// What the node holding (or ending) a lease does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseHolder {
    /// Calling the origin.
    Filling,
    /// Stored the result: read the cache.
    Filled,
    /// Got a result that is not shared (not storable, an error, a failed
    /// store): every node goes to the origin on its own.
    Unstorable,
}

/// How a lease ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEnd {
    /// The result is stored on the shared tier.
    Filled,
    /// The result is not shared: waiters go to the origin themselves.
    Unstorable,
    /// The fill stopped (its request was dropped): another node may take
    /// the lease at once.
    Abandoned,
}

impl LeaseEnd {
    /// The state a waiter reads after this end (`None`: the lease is free).
    pub fn holder(self) -> Option<LeaseHolder> {
        match self {
            Self::Filled => Some(LeaseHolder::Filled),
            Self::Unstorable => Some(LeaseHolder::Unstorable),
            Self::Abandoned => None,
        }
    }
}

/// Wakes this node's waiters on other nodes' fills. A backend with leases
/// owns one and calls [`wake`](FillWakers::wake) when it hears that a lease
/// ended (a bus message); waiters register before they ask for the lease,
/// so a wake-up between the two is not lost.
#[derive(Debug, Default)]
pub struct FillWakers {
    waiting: Mutex<HashMap<CacheKey, Arc<Notify>>>,
}

impl FillWakers {
    /// Registers interest in `key`'s lease ending.
    pub fn watch(&self, key: &CacheKey) -> FillWatch<'_> {
        let notify = self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.clone())
            .or_default()
            .clone();
        FillWatch {
            wakers: self,
            key: key.clone(),
            notify: Some(notify),
        }
    }

    /// Wakes every waiter on `key` (a lease on it ended somewhere).
    pub fn wake(&self, key: &str) {
        let waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(notify) = waiting.get(key) {
            notify.notify_waiters();
        }
    }

    /// Keys with waiters now.
    pub fn watched(&self) -> usize {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// One waiter's registration (see [`FillWakers::watch`]); forgotten on drop.
#[derive(Debug)]
pub struct FillWatch<'a> {
    wakers: &'a FillWakers,
    key: CacheKey,
    /// `None` only while dropping.
    notify: Option<Arc<Notify>>,
}

impl FillWatch<'_> {
    fn notify(&self) -> &Notify {
        // Always `Some` outside `drop`; a fresh `Notify` otherwise is
        // never woken, which a waiter's poll covers.
        static SPARE: std::sync::OnceLock<Notify> = std::sync::OnceLock::new();
        self.notify
            .as_deref()
            .unwrap_or_else(|| SPARE.get_or_init(Notify::new))
    }
}

impl Drop for FillWatch<'_> {
    fn drop(&mut self) {
        let mut waiting = self
            .wakers
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Our reference goes under the lock, so of two watchers dropping at
        // once the second sees only the map's and removes the entry.
        drop(self.notify.take());
        if waiting
            .get(&self.key)
            .is_some_and(|notify| Arc::strong_count(notify) == 1)
        {
            waiting.remove(&self.key);
        }
    }
}

/// How a node takes part in fleet fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseOptions {
    /// How long a lease lasts without renewal. The holder renews it every
    /// third of this while it fills, so a long fill keeps it and a dead
    /// holder loses it this long after its last renewal.
    pub lease: Duration,
    /// How long a node waits on another node's fill before it goes to the
    /// origin itself.
    pub wait: Duration,
    /// How often a waiter asks the lease when no wake-up came (the bus may
    /// be down, or the holder died).
    pub poll: Duration,
}

impl LeaseOptions {
    /// `lease` and `wait` with the default poll (50 ms, at most a quarter
    /// of the lease).
    pub fn new(lease: Duration, wait: Duration) -> Self {
        Self {
            lease,
            wait,
            poll: (lease / 4).clamp(Duration::from_millis(5), Duration::from_millis(50)),
        }
    }

    /// How long a lease's outcome stays readable after it ended: long
    /// enough for a waiter that missed the wake-up to read it on its next
    /// poll, short enough that it never hides a later miss for long.
    pub fn linger(&self) -> Duration {
        (self.poll * 5).max(Duration::from_millis(250))
    }
}

/// What a node that missed a key does, once the fleet has been asked.
#[derive(Debug)]
pub enum FleetFill {
    /// This node fills the key for the fleet: call the origin inside
    /// [`FillLease::hold`], store the result, then [`FillLease::end`].
    Lead(FillLease),
    /// Another node filled the key: read the cache.
    Filled,
    /// Another node's result was not shared: go to the origin now, without
    /// waiting on anyone (hit-for-miss).
    Unstorable,
    /// Another node's fill took longer than the wait: go to the origin
    /// without storing over what that fill stores.
    TimedOut,
    /// No fleet lease (a tier without leases, Redis down, breaker open):
    /// this node coalesces on its own.
    Unavailable,
}

/// A fill lease this node holds. Dropped without [`end`](FillLease::end)
/// (the request was cancelled), it is given up in the background, so the
/// other nodes do not wait for it to run out.
#[derive(Debug)]
pub struct FillLease {
    tiered: Tiered,
    key: CacheKey,
    token: String,
    options: LeaseOptions,
    ended: bool,
}

/// A token no other lease holder uses: the process's random seed, the
/// time and a counter (a holder must never end a lease that expired and was
/// taken by someone else).
fn new_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static SEED: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let mut hasher = SEED.get_or_init(Default::default).build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    hasher.write_u64(n);
    format!("{:016x}{n:x}", hasher.finish())
}

impl FillLease {
    /// The key being filled.
    pub fn key(&self) -> &CacheKey {
        &self.key
    }

    /// Runs the fill, renewing the lease every third of its length so a
    /// slow fill keeps it. A renewal that fails (the tier is down, the
    /// lease was lost) is not an error: the fill goes on, and the store's
    /// own ordering keeps a late result from overwriting a newer one.
    pub async fn hold<F: Future>(&mut self, fill: F) -> F::Output {
        let every = (self.options.lease / 3).max(Duration::from_millis(1));
        let this = &*self;
        let mut fill = std::pin::pin!(fill);
        let mut next = Box::pin(tokio::time::sleep(every));
        // A renewal runs beside the fill, never in its way: a slow Redis
        // (its breaker still closed) must not pause the origin call.
        let mut renewal: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>>> = None;
        std::future::poll_fn(|cx| {
            if let std::task::Poll::Ready(output) = fill.as_mut().poll(cx) {
                return std::task::Poll::Ready(output);
            }
            if let Some(running) = renewal.as_mut() {
                if running.as_mut().poll(cx).is_ready() {
                    renewal = None;
                }
            }
            if renewal.is_none() && next.as_mut().poll(cx).is_ready() {
                next.as_mut()
                    .reset(tokio::time::Instant::now() + every);
                let _ = next.as_mut().poll(cx);
                let mut running: std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> =
                    Box::pin(async move {
                        let renewed = this
                            .tiered
                            .lease_call(|b| b.renew_lease(&this.key, &this.token, this.options.lease))
                            .await;
                        if !matches!(renewed, Ok(true)) {
                            tracing::debug!(key = %this.key, "fill lease not renewed; the fill goes on");
                        }
                    });
                if running.as_mut().poll(cx).is_pending() {
                    renewal = Some(running);
                }
            }
            std::task::Poll::Pending
        })
        .await
    }

    /// Ends the lease with the fill's outcome and wakes the waiting nodes.
    pub async fn end(mut self, end: LeaseEnd) {
        let linger = self.options.linger();
        let ended = self
            .tiered
            .lease_call(|b| b.end_lease(&self.key, &self.token, end, linger))
            .await;
        // Only now: dropped during the call, the lease is still given up
        // (a no-op if the end landed: the end compares the token's state).
        self.ended = true;
        if let Err(error) = ended {
            // The waiters find out by polling, or when the lease runs out.
            tracing::debug!(key = %self.key, %error, "fill lease not ended");
        }
    }
}

impl Drop for FillLease {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (tiered, key, token, linger) = (
            self.tiered.clone(),
            self.key.clone(),
            std::mem::take(&mut self.token),
            self.options.linger(),
        );
        runtime.spawn(async move {
            let _ = tiered
                .lease_call(|b| b.end_lease(&key, &token, LeaseEnd::Abandoned, linger))
                .await;
        });
    }
}

impl Tiered {
    /// Asks the fleet who fills `key`: takes its lease on the authoritative
    /// tier, or waits (at most `options.wait`) on the node holding it. Use
    /// it behind this node's own single-flight, so that one request per
    /// node asks.
    pub async fn fleet_fill(&self, key: &CacheKey, options: LeaseOptions) -> FleetFill {
        let Some(wakers) = self.lease_wakers() else {
            return FleetFill::Unavailable;
        };
        let counters = self.counters();
        let watch = wakers.watch(key);
        let token = new_token();
        let deadline = tokio::time::Instant::now() + options.wait;
        let mut waited = false;
        loop {
            // Registered before asking: a lease that ends between the
            // answer and the wait still wakes us.
            let notified = watch.notify().notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let state = match self
                .lease_call(|b| b.lease(key, &token, options.lease))
                .await
            {
                Ok(state) => state,
                Err(error) => {
                    tracing::debug!(%key, %error, "no fleet lease; this node fills on its own");
                    return FleetFill::Unavailable;
                }
            };
            match state {
                LeaseState::Acquired { expired } => {
                    if expired && waited {
                        counters.leases_expired.incr();
                    }
                    counters.fills_led.incr();
                    return FleetFill::Lead(FillLease {
                        tiered: self.clone(),
                        key: key.clone(),
                        token,
                        options,
                        ended: false,
                    });
                }
                LeaseState::Held {
                    holder: LeaseHolder::Filled,
                    ..
                } => {
                    counters.fills_waited.incr();
                    return FleetFill::Filled;
                }
                LeaseState::Held {
                    holder: LeaseHolder::Unstorable,
                    ..
                } => return FleetFill::Unstorable,
                LeaseState::Held {
                    holder: LeaseHolder::Filling,
                    remaining,
                } => {
                    waited = true;
                    let now = tokio::time::Instant::now();
                    if now >= deadline {
                        counters.fill_waits_timed_out.incr();
                        return FleetFill::TimedOut;
                    }
                    // Ask again when woken, at the next poll, or just after
                    // the lease runs out, whichever comes first.
                    let nap = options
                        .poll
                        .min(remaining.saturating_add(Duration::from_millis(1)))
                        .min(deadline.saturating_duration_since(now));
                    let _ = tokio::time::timeout(nap, notified).await;
                }
            }
        }
    }

    /// Takes `key`'s lease if nobody holds it, without waiting: for
    /// background refreshes, which another node's refresh makes unneeded.
    pub async fn try_fill_lease(&self, key: &CacheKey, options: LeaseOptions) -> Option<FillLease> {
        self.lease_wakers()?;
        let token = new_token();
        match self
            .lease_call(|b| b.lease(key, &token, options.lease))
            .await
        {
            Ok(LeaseState::Acquired { .. }) => {
                self.counters().fills_led.incr();
                Some(FillLease {
                    tiered: self.clone(),
                    key: key.clone(),
                    token,
                    options,
                    ended: false,
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wake_reaches_a_registered_waiter_and_the_map_is_cleaned() {
        let wakers = FillWakers::default();
        let key = CacheKey::new("k").unwrap();
        let watch = wakers.watch(&key);
        {
            let notified = watch.notify().notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            // Woken before the wait starts: not lost.
            wakers.wake("k");
            tokio::time::timeout(Duration::from_secs(1), notified)
                .await
                .expect("woken");
        }
        assert_eq!(wakers.watched(), 1);
        drop(watch);
        assert_eq!(wakers.watched(), 0);
    }

    #[test]
    fn tokens_differ_and_linger_covers_several_polls() {
        assert_ne!(new_token(), new_token());
        let options = LeaseOptions::new(Duration::from_secs(5), Duration::from_secs(10));
        assert_eq!(options.poll, Duration::from_millis(50));
        assert!(options.linger() >= options.poll * 5);
        let short = LeaseOptions::new(Duration::from_millis(8), Duration::from_secs(1));
        assert_eq!(short.poll, Duration::from_millis(5));
    }
}
