//! Single-flight: concurrent callers for one key share one computation.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::sync::OnceCell;

use crate::CacheKey;

/// Whether a caller ran the computation or waited for another caller's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// This caller ran the computation.
    Leader,
    /// This caller was answered from another caller's computation.
    Follower,
}

/// Deduplicates concurrent computations per key within this process.
///
/// N concurrent [`run`](SingleFlight::run) calls for one key run the
/// computation once; the others wait (they are woken, not polling) and get a
/// clone of its result. If the leader is cancelled, a waiting caller takes
/// over. Once the computation finishes, the key is forgotten: later callers
/// start a new one (by then the result is normally in the cache).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::sync::{Arc, atomic::{AtomicUsize, Ordering}};
/// use cachette_core::{CacheKey, SingleFlight};
///
/// let flights = Arc::new(SingleFlight::<u32>::new());
/// let calls = Arc::new(AtomicUsize::new(0));
/// let key = CacheKey::new("k").unwrap();
/// let tasks: Vec<_> = (0..10).map(|_| {
///     let (flights, calls, key) = (flights.clone(), calls.clone(), key.clone());
///     tokio::spawn(async move {
///         flights.run(&key, || async {
///             calls.fetch_add(1, Ordering::SeqCst);
///             tokio::time::sleep(std::time::Duration::from_millis(20)).await;
///             7
///         }).await.0
///     })
/// }).collect();
/// for t in tasks { assert_eq!(t.await.unwrap(), 7); }
/// assert_eq!(calls.load(Ordering::SeqCst), 1);
/// # }
/// ```
#[derive(Debug)]
pub struct SingleFlight<T> {
    calls: Mutex<HashMap<CacheKey, Arc<OnceCell<T>>>>,
}

impl<T> Default for SingleFlight<T> {
    fn default() -> Self {
        Self {
            calls: Mutex::new(HashMap::new()),
        }
    }
}

/// Forgets the key once its computation is done, or once nobody waits on an
/// unfinished one (every caller was cancelled).
struct Forget<'a, T> {
    flights: &'a SingleFlight<T>,
    key: &'a CacheKey,
    cell: &'a Arc<OnceCell<T>>,
}

impl<T> Drop for Forget<'_, T> {
    fn drop(&mut self) {
        let mut calls = self
            .flights
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let ours = calls
            .get(self.key)
            .is_some_and(|cell| Arc::ptr_eq(cell, self.cell));
        // Two references left = the map's and ours: nobody else is waiting.
        if ours && (self.cell.initialized() || Arc::strong_count(self.cell) <= 2) {
            calls.remove(self.key);
        }
    }
}

impl<T: Clone> SingleFlight<T> {
    /// An empty set of flights.
    pub fn new() -> Self {
        Self::default()
    }

    /// The cell of `key`'s computation under way (a new one if none).
    fn cell(&self, key: &CacheKey) -> Arc<OnceCell<T>> {
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        calls.entry(key.clone()).or_default().clone()
    }

    /// Runs `compute` for `key` unless a computation for it is already under
    /// way, in which case waits for that one and returns a clone of its result.
    pub async fn run<F, Fut>(&self, key: &CacheKey, compute: F) -> (T, Role)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let cell = self.cell(key);
        let _forget = Forget {
            flights: self,
            key,
            cell: &cell,
        };
        let mut role = Role::Follower;
        let value = cell
            .get_or_init(|| {
                role = Role::Leader;
                compute()
            })
            .await
            .clone();
        (value, role)
    }

    /// [`run`](Self::run), but a caller that would wait for another caller's
    /// computation waits at most `wait`; then it gets `None` and goes its own
    /// way (a leader that hangs must not hang everyone behind it). A caller
    /// that becomes the leader is never timed out here: its computation
    /// bounds itself.
    pub async fn run_or_give_up<F, Fut>(
        &self,
        key: &CacheKey,
        wait: std::time::Duration,
        compute: F,
    ) -> Option<(T, Role)>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        use std::sync::atomic::{AtomicBool, Ordering};
        let cell = self.cell(key);
        let _forget = Forget {
            flights: self,
            key,
            cell: &cell,
        };
        let leader = AtomicBool::new(false);
        let init = cell.get_or_init(|| {
            leader.store(true, Ordering::Relaxed);
            compute()
        });
        let mut init = std::pin::pin!(init);
        let give_up = tokio::time::sleep(wait);
        let mut give_up = std::pin::pin!(give_up);
        // Polled by hand: whether the timer applies is decided at every
        // poll (a caller may become the leader while it waits).
        std::future::poll_fn(|cx| {
            if let std::task::Poll::Ready(value) = init.as_mut().poll(cx) {
                let role = if leader.load(Ordering::Relaxed) {
                    Role::Leader
                } else {
                    Role::Follower
                };
                return std::task::Poll::Ready(Some((value.clone(), role)));
            }
            if !leader.load(Ordering::Relaxed) && give_up.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(None);
            }
            std::task::Poll::Pending
        })
        .await
    }

    /// Computations currently under way.
    pub fn in_flight(&self) -> usize {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_follower_gives_up_on_a_hung_leader_and_a_leader_is_never_timed_out() {
        let flights = Arc::new(SingleFlight::<u8>::new());
        let key = CacheKey::new("k").unwrap();
        let leader = {
            let (flights, key) = (flights.clone(), key.clone());
            tokio::spawn(async move {
                flights
                    .run_or_give_up(&key, Duration::from_millis(10), || async {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        1
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let gave_up = flights
            .run_or_give_up(&key, Duration::from_millis(30), || async { 2 })
            .await;
        assert_eq!(gave_up, None, "the follower stopped waiting");
        assert_eq!(
            leader.await.unwrap(),
            Some((1, Role::Leader)),
            "past its own wait"
        );
        assert_eq!(flights.in_flight(), 0);
    }

    #[tokio::test]
    async fn cancelled_leader_hands_over_and_map_is_cleaned() {
        let flights = Arc::new(SingleFlight::<u8>::new());
        let key = CacheKey::new("k").unwrap();
        let leader = {
            let (flights, key) = (flights.clone(), key.clone());
            tokio::spawn(async move {
                flights
                    .run(&key, || async {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        1
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let follower = {
            let (flights, key) = (flights.clone(), key.clone());
            tokio::spawn(async move { flights.run(&key, || async { 2 }).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        leader.abort();
        let (value, role) = follower.await.unwrap();
        assert_eq!((value, role), (2, Role::Leader));
        assert_eq!(flights.in_flight(), 0);
    }
}
