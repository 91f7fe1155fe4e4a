//! This node's own Redis in a fleet of peers, as a tier of a one-tier
//! `Tiered` (its timeout, breaker and journal), held by the namespace
//! itself: the backend holds the namespace weakly, so no cycle keeps it
//! alive.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use async_trait::async_trait;
use cachette_core::{
    Backend, CacheError, CacheKey, Entry, EntryMeta, Journal, TierInfo, TierOptions, Tiered,
};

use crate::{DiskJournal, RedisTier, Role, node::BACKEND, shared::Space};

tokio::task_local! {
    /// Set while this node applies an invalidation it heard from another
    /// node: it is applied here without being published again (each node
    /// publishes only its own, so nothing echoes around the fleet).
    static QUIET: ();
}

/// Runs `op` without publishing on the bus.
pub(crate) async fn quietly<F: std::future::Future>(op: F) -> F::Output {
    QUIET.scope((), op).await
}

/// Whether the current task applies another node's invalidation.
pub(crate) fn is_quiet() -> bool {
    QUIET.try_with(|_| ()).is_ok()
}

/// The one-tier cache over this node's Redis: `local`, with the master
/// timeout and the namespace's journal.
pub(crate) fn own_tiered(
    space: Weak<Space>,
    journal: Option<&DiskJournal>,
    timeout: Duration,
) -> Tiered {
    let mut options = TierOptions::with_timeout(Some(timeout));
    if let Some(journal) = journal {
        options = options.journal(Arc::new(journal.clone()) as Arc<dyn Journal>);
    }
    Tiered::builder("local")
        .tier_arc("local", Arc::new(Own { space }), options)
        .build()
}

/// This node's Redis, reached through the namespace while it lives.
#[derive(Debug)]
struct Own {
    space: Weak<Space>,
}

impl Own {
    fn tier(&self) -> Result<RedisTier, CacheError> {
        self.space
            .upgrade()
            .map(|space| RedisTier {
                space,
                role: Role::Master,
            })
            .ok_or_else(|| CacheError::backend(BACKEND, "the cache was dropped"))
    }
}

#[async_trait]
impl Backend for Own {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn get(&self, key: &CacheKey) -> Result<Option<Arc<Entry>>, CacheError> {
        self.tier()?.get(key).await
    }

    async fn set(
        &self,
        key: &CacheKey,
        entry: Arc<Entry>,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        self.tier()?.set(key, entry, ttl).await
    }

    async fn add(
        &self,
        key: &CacheKey,
        entry: Arc<Entry>,
        ttl: Duration,
    ) -> Result<bool, CacheError> {
        self.tier()?.add(key, entry, ttl).await
    }

    async fn incr(&self, key: &CacheKey, delta: i64) -> Result<Option<i64>, CacheError> {
        self.tier()?.incr(key, delta).await
    }

    async fn touch(&self, key: &CacheKey, meta: EntryMeta) -> Result<bool, CacheError> {
        self.tier()?.touch(key, meta).await
    }

    async fn soften(&self, key: &CacheKey) -> Result<(), CacheError> {
        self.tier()?.soften(key).await
    }

    async fn soften_prefix(&self, prefix: &str) -> Result<(), CacheError> {
        self.tier()?.soften_prefix(prefix).await
    }

    async fn soften_pattern(&self, pattern: &str) -> Result<(), CacheError> {
        self.tier()?.soften_pattern(pattern).await
    }

    async fn soften_tag(&self, tag: &str) -> Result<(), CacheError> {
        self.tier()?.soften_tag(tag).await
    }

    async fn delete(&self, key: &CacheKey) -> Result<bool, CacheError> {
        self.tier()?.delete(key).await
    }

    async fn invalidate_prefix(&self, prefix: &str) -> Result<(), CacheError> {
        self.tier()?.invalidate_prefix(prefix).await
    }

    async fn invalidate_pattern(&self, pattern: &str) -> Result<(), CacheError> {
        self.tier()?.invalidate_pattern(pattern).await
    }

    async fn invalidate_tag(&self, tag: &str) -> Result<(), CacheError> {
        self.tier()?.invalidate_tag(tag).await
    }

    async fn clear(&self) -> Result<(), CacheError> {
        self.tier()?.clear().await
    }

    async fn health(&self) -> Result<(), CacheError> {
        self.tier()?.health().await
    }

    async fn info(&self) -> TierInfo {
        match self.tier() {
            Ok(tier) => tier.info().await,
            Err(_) => TierInfo::default(),
        }
    }
}

/// The memory tier of a cache that has none: the fleet's subscriptions and
/// the replicator still run for it (they prove this node's Redis, copy the
/// others' stores); what they would drop from memory is nowhere.
#[derive(Debug, Default)]
pub(crate) struct NoMemory;

#[async_trait]
impl Backend for NoMemory {
    fn kind(&self) -> &'static str {
        "none"
    }

    async fn get(&self, _: &CacheKey) -> Result<Option<Arc<Entry>>, CacheError> {
        Ok(None)
    }

    async fn set(&self, _: &CacheKey, _: Arc<Entry>, _: Duration) -> Result<(), CacheError> {
        Ok(())
    }

    async fn delete(&self, _: &CacheKey) -> Result<bool, CacheError> {
        Ok(false)
    }

    async fn invalidate_prefix(&self, _: &str) -> Result<(), CacheError> {
        Ok(())
    }

    async fn invalidate_tag(&self, _: &str) -> Result<(), CacheError> {
        Ok(())
    }

    async fn clear(&self) -> Result<(), CacheError> {
        Ok(())
    }

    async fn health(&self) -> Result<(), CacheError> {
        Ok(())
    }
}
