//! Progress of long invalidations, for operators' tools.
//!
//! A prefix, pattern or tag purge on a Redis tier walks the keyspace with
//! `SCAN` and may take seconds. A tool that wants to show progress (the
//! `cachette purge` command's progress bar) runs the purge inside
//! [`observe`]; the backends call [`report`] after every step. The observer
//! is task-local, so the purge keeps going through the ordinary path
//! ([`Tiered`](crate::Tiered): every tier, timeouts, journal, bus) and costs
//! nothing when no one observes.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::sync::{Arc, atomic::{AtomicU64, Ordering}};
//! use cachette_core::sweep::{self, SweepObserver, SweepStep};
//!
//! #[derive(Default)]
//! struct Count(AtomicU64);
//! impl SweepObserver for Count {
//!     fn step(&self, step: &SweepStep) {
//!         self.0.fetch_add(step.removed, Ordering::Relaxed);
//!     }
//! }
//!
//! let count = Arc::new(Count::default());
//! sweep::observe(count.clone(), async {
//!     // A backend's SCAN loop, after each batch:
//!     sweep::report(SweepStep { tier: "master", matched: 3, removed: 3 });
//! })
//! .await;
//! assert_eq!(count.0.load(Ordering::Relaxed), 3);
//! # }
//! ```

use std::{future::Future, sync::Arc};

/// One step of a sweep: a `SCAN` batch (or a chunk of a tag's members) and
/// what it removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepStep {
    /// The tier's role (`local`, `master`).
    pub tier: &'static str,
    /// Keys that matched in this step.
    pub matched: u64,
    /// Keys removed in this step.
    pub removed: u64,
}

/// Receives sweep steps. Called from the purging task: keep it quick.
pub trait SweepObserver: Send + Sync {
    /// One step is done.
    fn step(&self, step: &SweepStep);
}

tokio::task_local! {
    static OBSERVER: Arc<dyn SweepObserver>;
}

/// Runs `future` with `observer` receiving every sweep step reported inside it.
pub async fn observe<F: Future>(observer: Arc<dyn SweepObserver>, future: F) -> F::Output {
    OBSERVER.scope(observer, future).await
}

/// Reports a step to the observer of the current task, if any.
pub fn report(step: SweepStep) {
    let _ = OBSERVER.try_with(|observer| observer.step(&step));
}
