//! Metrics through the [`metrics`](https://docs.rs/metrics) facade.
//!
//! The request path only bumps atomic counters (see [`Tiered::snapshot`]);
//! the metrics are published from those counters when asked, typically right
//! before a scrape, like a Prometheus collector. So an application pays
//! nothing per request for metrics, whatever recorder it installed.
//!
//! - [`Caches::record_metrics`] publishes to the installed (global) recorder:
//!   call it from your own `/metrics` handler, or on an interval.
//! - The admin router's `GET /metrics` (feature `admin`) renders them in the
//!   Prometheus text format from a recorder of its own.
//!
//! Every metric carries a `cache` label (the alias), per-tier ones a `tier`
//! label too. docs/operations.md lists them with their meaning.
//!
//! [`Tiered::snapshot`]: crate::Tiered::snapshot

use metrics::{Unit, counter, describe_counter, describe_gauge, gauge};

use crate::{
    Caches,
    ops::{Report, Status},
};

/// Cache-level counters: (metric name, description, value getter).
type CacheCounter = (
    &'static str,
    &'static str,
    fn(&crate::ops::CacheCounters) -> u64,
);

const CACHE_COUNTERS: &[CacheCounter] = &[
    (
        "cachette_hits_total",
        "Requests answered from a fresh entry",
        |c| c.hits,
    ),
    (
        "cachette_misses_total",
        "Requests that went to the origin",
        |c| c.misses,
    ),
    (
        "cachette_stale_served_total",
        "Requests answered from a stale entry (stale-while-revalidate, stale-if-error)",
        |c| c.stale_served,
    ),
    (
        "cachette_coalesced_total",
        "Requests that waited on another request's origin call",
        |c| c.coalesced,
    ),
    (
        "cachette_hit_for_miss_total",
        "Requests sent to the origin uncoalesced: the URL's last response was not storable",
        |c| c.hit_for_miss,
    ),
    ("cachette_stored_total", "Responses or values stored", |c| {
        c.stored
    }),
    (
        "cachette_not_stored_total",
        "Origin responses that were not storable",
        |c| c.not_stored,
    ),
    (
        "cachette_revalidated_total",
        "Stale entries revalidated with a 304",
        |c| c.revalidated,
    ),
    (
        "cachette_bypassed_total",
        "Requests that bypassed the cache",
        |c| c.bypassed,
    ),
    (
        "cachette_origin_errors_total",
        "Origin errors, timeouts and 5xx seen by the cache",
        |c| c.origin_errors,
    ),
    (
        "cachette_invalidations_total",
        "Invalidations issued (keys, prefixes, tags, clears)",
        |c| c.invalidations,
    ),
    (
        "cachette_fleet_fills_led_total",
        "Fills this node made for the fleet (it held the fill lease)",
        |c| c.fills_led,
    ),
    (
        "cachette_fleet_fills_waited_total",
        "Waits on another node's fill that ended with its stored result",
        |c| c.fills_waited,
    ),
    (
        "cachette_fleet_fill_waits_timed_out_total",
        "Waits on another node's fill that ran out of time",
        |c| c.fill_waits_timed_out,
    ),
    (
        "cachette_fleet_leases_expired_total",
        "Fill leases taken over after their holder let them run out",
        |c| c.leases_expired,
    ),
];

type TierCounter = (
    &'static str,
    &'static str,
    fn(&crate::ops::TierReport) -> u64,
);

const TIER_COUNTERS: &[TierCounter] = &[
    (
        "cachette_tier_hits_total",
        "Tier reads that found an entry",
        |t| t.hits,
    ),
    (
        "cachette_tier_misses_total",
        "Tier reads that found nothing",
        |t| t.misses,
    ),
    (
        "cachette_tier_errors_total",
        "Tier calls that failed, unreadable entries included",
        |t| t.errors,
    ),
    (
        "cachette_tier_timeouts_total",
        "Tier calls over the tier's timeout",
        |t| t.timeouts,
    ),
    (
        "cachette_tier_skipped_total",
        "Tier calls skipped while the breaker was open",
        |t| t.skipped,
    ),
    ("cachette_tier_writes_total", "Writes the tier took", |t| {
        t.writes
    }),
    (
        "cachette_tier_promotions_total",
        "Entries copied up into the tier from a lower one",
        |t| t.promotions,
    ),
    (
        "cachette_tier_calls_total",
        "Tier calls whose latency was measured",
        |t| t.latency.count,
    ),
];

/// Registers the description and unit of every cachette metric with the
/// current recorder (the `# HELP` lines of Prometheus).
pub fn describe_metrics() {
    for (name, help, _) in CACHE_COUNTERS {
        describe_counter!(*name, Unit::Count, *help);
    }
    for (name, help, _) in TIER_COUNTERS {
        describe_counter!(*name, Unit::Count, *help);
    }
    describe_gauge!(
        "cachette_up",
        "1 when every cache can serve from some tier, 0 when one cannot"
    );
    describe_gauge!(
        "cachette_cache_status",
        "0 ok, 1 degraded (some tier down), 2 down (no tier answers)"
    );
    describe_gauge!(
        "cachette_tier_breaker_state",
        "0 closed, 1 half-open (probing), 2 open (tier skipped)"
    );
    describe_gauge!(
        "cachette_tier_latency_seconds",
        Unit::Seconds,
        "Tier call latency quantiles (bucket upper bounds)"
    );
    describe_gauge!(
        "cachette_tier_entries",
        Unit::Count,
        "Entries held by the tier, where known"
    );
    describe_gauge!(
        "cachette_tier_bytes",
        Unit::Bytes,
        "Bytes held by the tier, where known"
    );
    describe_gauge!(
        "cachette_tier_capacity_bytes",
        Unit::Bytes,
        "Capacity of the tier, where bounded"
    );
    describe_gauge!(
        "cachette_journal_depth",
        Unit::Count,
        "Ops waiting in the journal for the master"
    );
    describe_gauge!(
        "cachette_journal_bytes",
        Unit::Bytes,
        "Bytes of the ops waiting in the journal"
    );
    describe_gauge!(
        "cachette_journal_oldest_age_seconds",
        Unit::Seconds,
        "Age of the oldest op waiting in the journal"
    );
    describe_counter!(
        "cachette_journal_replayed_total",
        Unit::Count,
        "Journal ops replayed to the master"
    );
    describe_counter!(
        "cachette_journal_dropped_total",
        Unit::Count,
        "Sets that did not fit the full journal"
    );
    describe_counter!(
        "cachette_journal_obsolete_total",
        Unit::Count,
        "Journal ops the replay did not need (newer data on the master, a later delete or purge, expired)"
    );
    describe_counter!(
        "cachette_journal_rejected_total",
        Unit::Count,
        "Journal ops the master rejected with a persistent error (dropped, logged)"
    );
    describe_counter!(
        "cachette_journal_unreadable_total",
        Unit::Count,
        "Journal ops whose bytes could not be read back (dropped, logged)"
    );
    describe_counter!(
        "cachette_journal_io_errors_total",
        Unit::Count,
        "Failed journal disk writes (each reopened the journal)"
    );
    describe_gauge!(
        "cachette_journal_writable",
        "1 when the journal can record, 0 after a disk error it has not recovered from"
    );
    describe_counter!(
        "cachette_journal_collapsed_total",
        Unit::Count,
        "Times the journal collapsed into one clear-on-recovery marker"
    );
    describe_counter!(
        "cachette_redis_failovers_total",
        Unit::Count,
        "Redis master switches followed"
    );
    describe_counter!(
        "cachette_redis_readonly_skips_total",
        Unit::Count,
        "Local writes skipped because the replica is read-only"
    );
    describe_counter!(
        "cachette_redis_resolve_errors_total",
        Unit::Count,
        "Failed attempts to resolve the master through Sentinel"
    );
    describe_counter!(
        "cachette_bus_received_total",
        Unit::Count,
        "Invalidations received from other nodes"
    );
    describe_counter!(
        "cachette_bus_subscriptions_total",
        Unit::Count,
        "Invalidation bus (re)subscriptions: reconnects, each clearing the memory tier"
    );
    describe_gauge!(
        "cachette_bus_connected",
        "1 while the invalidation bus subscription is up, 0 while it is down (absent: bus off)"
    );
}

fn status_value(status: Status) -> f64 {
    match status {
        Status::Ok => 0.0,
        Status::Degraded => 1.0,
        Status::Down => 2.0,
    }
}

fn breaker_value(breaker: &str) -> f64 {
    match breaker {
        "closed" => 0.0,
        "half-open" => 1.0,
        _ => 2.0,
    }
}

impl Report {
    /// Publishes this report through the `metrics` facade, to the current
    /// recorder. Counters are set to their absolute values, so publishing the
    /// same report twice counts nothing twice.
    pub fn record_metrics(&self) {
        gauge!("cachette_up").set(if self.status == Status::Down {
            0.0
        } else {
            1.0
        });
        for cache in &self.caches {
            let alias = cache.alias.clone();
            gauge!("cachette_cache_status", "cache" => alias.clone())
                .set(status_value(cache.status));
            for (name, _, value) in CACHE_COUNTERS {
                counter!(*name, "cache" => alias.clone()).absolute(value(&cache.counters));
            }
            for tier in &cache.tiers {
                let labels = [("cache", alias.clone()), ("tier", tier.name.clone())];
                for (name, _, value) in TIER_COUNTERS {
                    counter!(*name, &labels).absolute(value(tier));
                }
                gauge!("cachette_tier_breaker_state", &labels).set(breaker_value(&tier.breaker));
                for (quantile, micros) in [
                    ("0.5", tier.latency.p50_us),
                    ("0.9", tier.latency.p90_us),
                    ("0.99", tier.latency.p99_us),
                ] {
                    gauge!(
                        "cachette_tier_latency_seconds",
                        "cache" => alias.clone(),
                        "tier" => tier.name.clone(),
                        "quantile" => quantile
                    )
                    .set(micros as f64 / 1e6);
                }
                for (name, value) in [
                    ("cachette_tier_entries", tier.entries),
                    ("cachette_tier_bytes", tier.bytes),
                    ("cachette_tier_capacity_bytes", tier.capacity_bytes),
                ] {
                    if let Some(value) = value {
                        gauge!(name, &labels).set(value as f64);
                    }
                }
            }
            if let Some(journal) = &cache.journal {
                let cache = || [("cache", alias.clone())];
                gauge!("cachette_journal_depth", &cache()).set(journal.depth as f64);
                gauge!("cachette_journal_bytes", &cache()).set(journal.bytes as f64);
                gauge!("cachette_journal_oldest_age_seconds", &cache())
                    .set(journal.oldest_age_secs.unwrap_or(0.0));
                counter!("cachette_journal_replayed_total", &cache()).absolute(journal.replayed);
                counter!("cachette_journal_dropped_total", &cache()).absolute(journal.dropped);
                counter!("cachette_journal_collapsed_total", &cache()).absolute(journal.collapsed);
                counter!("cachette_journal_obsolete_total", &cache()).absolute(journal.obsolete);
                counter!("cachette_journal_rejected_total", &cache()).absolute(journal.rejected);
                counter!("cachette_journal_unreadable_total", &cache())
                    .absolute(journal.unreadable);
                counter!("cachette_journal_io_errors_total", &cache()).absolute(journal.io_errors);
                gauge!("cachette_journal_writable", &cache()).set(if journal.writable {
                    1.0
                } else {
                    0.0
                });
            }
            if let Some(redis) = &cache.redis {
                let cache = || [("cache", alias.clone())];
                counter!("cachette_redis_failovers_total", &cache()).absolute(redis.failovers);
                counter!("cachette_redis_readonly_skips_total", &cache())
                    .absolute(redis.readonly_skips);
                counter!("cachette_redis_resolve_errors_total", &cache())
                    .absolute(redis.resolve_errors);
                counter!("cachette_bus_received_total", &cache()).absolute(redis.bus_received);
                counter!("cachette_bus_subscriptions_total", &cache())
                    .absolute(redis.bus_subscriptions);
                if let Some(connected) = redis.bus_connected {
                    gauge!("cachette_bus_connected", &cache()).set(if connected {
                        1.0
                    } else {
                        0.0
                    });
                }
            }
        }
    }
}

impl Caches {
    /// Publishes every cache's counters, breakers, latencies, journal and
    /// Redis state through the `metrics` facade, to the installed recorder.
    /// Reads counters only (no Redis round trip besides the journal's oldest
    /// op on local disk): cheap enough for every scrape.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let caches = cachette::Caches::memory_only();
    /// // With an exporter installed (metrics-exporter-prometheus, statsd...),
    /// // call this before each scrape or on an interval.
    /// caches.record_metrics().await;
    /// # }
    /// ```
    pub async fn record_metrics(&self) {
        self.report(false, None).await.record_metrics();
    }
}
