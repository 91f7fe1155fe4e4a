//! Cheap counters and latency histograms, readable as snapshots.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use crate::BreakerState;

const BUCKETS: usize = 32;

/// A lock-free latency histogram with power-of-two microsecond buckets
/// (`< 1µs`, `< 2µs`, `< 4µs`, ... `< 2^31µs`). Percentiles are reported as the
/// upper bound of their bucket: at most a factor of two high, never low.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS],
}

impl LatencyHistogram {
    /// Records one observation.
    pub fn record(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = (u64::BITS - micros.leading_zeros()) as usize;
        self.buckets[bucket.min(BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
    }

    /// The number of observations and the p50, p90 and p99 bucket bounds.
    pub fn snapshot(&self) -> LatencySnapshot {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let quantile = |q: f64| -> Duration {
            if total == 0 {
                return Duration::ZERO;
            }
            // Rank of the q-quantile observation, 1-based.
            let rank = ((total as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, count) in counts.iter().enumerate() {
                seen += count;
                if seen >= rank {
                    return Duration::from_micros(1u64 << i);
                }
            }
            Duration::from_micros(1u64 << (BUCKETS - 1))
        };
        LatencySnapshot {
            count: total,
            p50: quantile(0.50),
            p90: quantile(0.90),
            p99: quantile(0.99),
        }
    }
}

/// Latency percentiles (bucket upper bounds) at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LatencySnapshot {
    /// Observations recorded.
    pub count: u64,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
}

/// How many slots a [`Counter`] spreads over.
const STRIPES: usize = 8;

/// One cache line of a [`Counter`].
#[derive(Debug, Default)]
#[repr(align(64))]
struct Stripe(AtomicU64);

/// A counter many threads bump at once, as every request bumps `hits`:
/// spread over cache-line-sized slots (each thread keeps to one), so that
/// two cores counting do not pass one cache line back and forth. Reading
/// sums the slots.
#[derive(Debug, Default)]
pub struct Counter {
    stripes: [Stripe; STRIPES],
}

impl Counter {
    /// Adds one.
    pub fn incr(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.stripes[stripe()].0.fetch_add(n, Ordering::Relaxed);
    }

    /// The total.
    pub fn get(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

/// This thread's slot: threads take slots round-robin as they first count.
fn stripe() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.try_with(|s| *s).unwrap_or(0)
}

macro_rules! counters {
    ($(#[$meta:meta])* $name:ident / $snap:ident { $($(#[$fmeta:meta])* $field:ident),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: Counter,)*
        }

        /// A point-in-time copy of the counters.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        #[non_exhaustive]
        pub struct $snap {
            $($(#[$fmeta])* pub $field: u64,)*
        }

        impl $name {
            /// Reads every counter.
            pub fn snapshot(&self) -> $snap {
                $snap { $($field: self.$field.get(),)* }
            }
        }
    };
}

counters! {
    /// Counters of one tier.
    TierCounters / TierCountersSnapshot {
        /// Reads that found an entry.
        hits,
        /// Reads that found nothing.
        misses,
        /// Calls that failed (including unreadable entries).
        errors,
        /// Calls that exceeded the tier's timeout.
        timeouts,
        /// Calls skipped because the breaker was open.
        skipped,
        /// Successful writes.
        writes,
        /// Entries copied up into this tier from a lower one.
        promotions,
    }
}

counters! {
    /// Counters of one named cache, as seen by its callers (the HTTP layer, the
    /// data API).
    CacheCounters / CacheCountersSnapshot {
        /// Answered from a fresh entry.
        hits,
        /// No usable entry: went to the origin.
        misses,
        /// Answered from a stale entry (stale-while-revalidate or stale-if-error).
        stale_served,
        /// Waited on another request's origin call instead of making one.
        coalesced,
        /// Went to the origin without coalescing because the URL's last
        /// response was not storable (hit-for-miss).
        hit_for_miss,
        /// Responses stored.
        stored,
        /// Origin responses that were not storable.
        not_stored,
        /// Stale entries revalidated with a 304 from the origin.
        revalidated,
        /// Requests that bypassed the cache (method, `unless` predicate, ...).
        bypassed,
        /// Origin failures (errors, timeouts, 5xx) seen by the cache.
        origin_errors,
        /// Invalidations issued (keys, prefixes, tags, clears).
        invalidations,
        /// Fills this node made for the fleet (it held the fill lease).
        fills_led,
        /// Waits on another node's fill that ended with its stored result.
        fills_waited,
        /// Waits on another node's fill that ran out of time.
        fill_waits_timed_out,
        /// Fill leases taken over after their holder let them run out
        /// (it died or hung).
        leases_expired,
    }
}

/// Counters plus latency of one tier.
#[derive(Debug, Default)]
pub struct TierStats {
    /// The counters.
    pub counters: TierCounters,
    /// Latency of every attempted call.
    pub latency: LatencyHistogram,
}

/// One tier's stats at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TierSnapshot {
    /// The tier's name (`memory`, `local`, `master`, ...).
    pub name: String,
    /// The backend kind.
    pub kind: &'static str,
    /// The breaker's state.
    pub breaker: BreakerState,
    /// The counters.
    pub counters: TierCountersSnapshot,
    /// Latency percentiles.
    pub latency: LatencySnapshot,
}

/// A named cache's stats at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// The cache's name.
    pub name: String,
    /// Cache-level counters.
    pub cache: CacheCountersSnapshot,
    /// One entry per tier, in read order.
    pub tiers: Vec<TierSnapshot>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sum_over_threads() {
        let counter = std::sync::Arc::new(Counter::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let counter = counter.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        counter.incr();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        counter.add(5);
        assert_eq!(counter.get(), 4005);
    }

    #[test]
    fn histogram_quantiles_bound_observations() {
        let h = LatencyHistogram::default();
        for _ in 0..98 {
            h.record(Duration::from_micros(3));
        }
        h.record(Duration::from_millis(5));
        h.record(Duration::from_millis(5));
        let s = h.snapshot();
        assert_eq!(s.count, 100);
        assert_eq!(s.p50, Duration::from_micros(4));
        assert!(s.p99 >= Duration::from_millis(5) && s.p99 < Duration::from_millis(10));
    }
}
