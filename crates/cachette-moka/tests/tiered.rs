//! `Tiered` over real memory tiers: read order, promotion with the remaining
//! lifetime, timeouts and circuit breakers (fail open), stats.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use cachette_core::{
    Backend, BreakerConfig, BreakerState, CacheError, CacheKey, Entry, EntryMeta, TierOptions,
    Tiered, async_trait,
};
use cachette_moka::MemoryTier;

const HEALTHY: u8 = 0;
const HANGING: u8 = 1;
const FAILING: u8 = 2;

/// A memory tier that can be switched to hang or fail, standing in for a
/// network tier that goes away.
#[derive(Debug, Clone, Default)]
struct Switchable {
    inner: MemoryTier,
    mode: Arc<AtomicU8>,
}

impl Switchable {
    async fn gate(&self) -> Result<(), CacheError> {
        match self.mode.load(Ordering::SeqCst) {
            HANGING => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            }
            FAILING => Err(CacheError::backend(
                "switchable",
                std::io::Error::other("connection refused"),
            )),
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl Backend for Switchable {
    fn kind(&self) -> &'static str {
        "switchable"
    }
    async fn get(&self, key: &CacheKey) -> Result<Option<Arc<Entry>>, CacheError> {
        self.gate().await?;
        self.inner.get(key).await
    }
    async fn set(
        &self,
        key: &CacheKey,
        entry: Arc<Entry>,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        self.gate().await?;
        self.inner.set(key, entry, ttl).await
    }
    async fn delete(&self, key: &CacheKey) -> Result<bool, CacheError> {
        self.gate().await?;
        self.inner.delete(key).await
    }
    async fn invalidate_prefix(&self, prefix: &str) -> Result<(), CacheError> {
        self.gate().await?;
        self.inner.invalidate_prefix(prefix).await
    }
    async fn invalidate_tag(&self, tag: &str) -> Result<(), CacheError> {
        self.gate().await?;
        self.inner.invalidate_tag(tag).await
    }
    async fn clear(&self) -> Result<(), CacheError> {
        self.gate().await?;
        self.inner.clear().await
    }
    async fn health(&self) -> Result<(), CacheError> {
        self.gate().await
    }
}

fn key(s: &str) -> CacheKey {
    CacheKey::new(s).unwrap()
}

fn entry(ttl: Duration) -> Arc<Entry> {
    Arc::new(Entry::value(
        Bytes::from_static(b"v"),
        EntryMeta::new(SystemTime::now(), ttl),
    ))
}

#[tokio::test]
async fn a_lower_hit_is_promoted_with_its_remaining_ttl() {
    let upper = MemoryTier::default();
    let lower = MemoryTier::default();
    let cache = Tiered::builder("t")
        .tier("upper", upper.clone())
        .tier("lower", lower.clone())
        .build();
    // Stored 59.8 s ago with a 60 s lifetime: 200 ms left.
    let old = SystemTime::now() - Duration::from_millis(59_800);
    let e = Arc::new(Entry::value(
        Bytes::from_static(b"v"),
        EntryMeta::new(old, Duration::from_secs(60)),
    ));
    lower
        .set(&key("k"), e, Duration::from_secs(60))
        .await
        .unwrap();

    let hit = cache.get(&key("k")).await.unwrap();
    assert_eq!((hit.tier(), hit.tier_name()), (1, "lower"));
    assert!(upper.get(&key("k")).await.unwrap().is_some(), "promoted");
    assert_eq!(cache.get(&key("k")).await.unwrap().tier_name(), "upper");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        upper.get(&key("k")).await.unwrap().is_none(),
        "the promoted copy kept the remaining TTL, not a fresh one"
    );
    let snap = cache.snapshot();
    assert_eq!(snap.tiers[0].counters.promotions, 1);
    assert_eq!(snap.tiers[1].counters.hits, 1);
}

#[tokio::test]
async fn writes_go_to_every_tier_in_order() {
    let a = MemoryTier::default();
    let b = MemoryTier::default();
    let cache = Tiered::builder("t")
        .tier("a", a.clone())
        .tier("b", b.clone())
        .build();
    let report = cache.set(&key("k"), entry(Duration::from_secs(60))).await;
    assert!(report.is_complete());
    assert_eq!(
        report.succeeded.iter().map(|s| &**s).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert!(a.get(&key("k")).await.unwrap().is_some() && b.get(&key("k")).await.unwrap().is_some());
    assert!(cache.delete(&key("k")).await.is_complete());
    assert!(a.get(&key("k")).await.unwrap().is_none() && b.get(&key("k")).await.unwrap().is_none());
}

#[tokio::test]
async fn a_hanging_tier_times_out_then_is_skipped_by_its_breaker() {
    let memory = MemoryTier::default();
    let remote = Switchable::default();
    let options =
        TierOptions::with_timeout(Some(Duration::from_millis(50))).breaker(BreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_millis(300),
        });
    let cache = Tiered::builder("t")
        .tier("memory", memory.clone())
        .tier_arc("remote", Arc::new(remote.clone()), options)
        .build();
    remote
        .set(
            &key("k"),
            entry(Duration::from_secs(60)),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    remote.mode.store(HANGING, Ordering::SeqCst);

    for _ in 0..3 {
        let started = Instant::now();
        assert!(
            cache.get(&key("k")).await.is_none(),
            "fail open: a miss, not an error"
        );
        assert!(started.elapsed() < Duration::from_millis(500));
    }
    assert_eq!(cache.breaker_states()[1], ("remote", BreakerState::Open));
    let started = Instant::now();
    assert!(cache.get(&key("k")).await.is_none());
    assert!(
        started.elapsed() < Duration::from_millis(20),
        "an open breaker skips the tier at once"
    );
    let snap = cache.snapshot();
    assert_eq!(snap.tiers[1].counters.timeouts, 3);
    assert_eq!(snap.tiers[1].counters.skipped, 1);

    // A write still lands in the healthy tier and reports the skipped one.
    let report = cache.set(&key("w"), entry(Duration::from_secs(60))).await;
    assert_eq!(report.succeeded.len(), 1);
    assert!(matches!(
        report.failed[0].error,
        CacheError::CircuitOpen { .. }
    ));

    // The tier recovers; after the open period one probe closes the breaker.
    remote.mode.store(HEALTHY, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let hit = cache.get(&key("k")).await.unwrap();
    assert_eq!(hit.tier_name(), "remote");
    assert_eq!(cache.breaker_states()[1].1, BreakerState::Closed);
}

#[tokio::test]
async fn invalidations_are_attempted_even_when_the_breaker_is_open() {
    let remote = Switchable::default();
    let options =
        TierOptions::with_timeout(Some(Duration::from_millis(50))).breaker(BreakerConfig {
            failure_threshold: 1,
            open_for: Duration::from_secs(60),
        });
    let cache = Tiered::builder("t")
        .tier_arc("remote", Arc::new(remote.clone()), options)
        .build();
    remote
        .inner
        .set(
            &key("k"),
            entry(Duration::from_secs(60)),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    remote.mode.store(FAILING, Ordering::SeqCst);
    assert!(cache.get(&key("k")).await.is_none());
    assert_eq!(cache.breaker_states()[0].1, BreakerState::Open);
    remote.mode.store(HEALTHY, Ordering::SeqCst);
    assert!(
        cache.delete(&key("k")).await.is_complete(),
        "the delete went through despite the open breaker"
    );
    assert!(remote.inner.get(&key("k")).await.unwrap().is_none());
}
