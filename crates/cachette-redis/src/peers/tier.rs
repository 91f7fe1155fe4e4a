//! [`PeerTier`]: this node's Redis in a fleet of peers.

use std::{sync::Arc, sync::atomic::Ordering, time::Duration};

use async_trait::async_trait;
use cachette_core::{
    Backend, CacheError, CacheKey, Entry, EntryMeta, TierInfo, Tiered, WriteReport,
};

use crate::{RedisTier, node::BACKEND, tier::bus_message};

/// This node's Redis in a fleet of peers ([`Topology::Peers`](crate::Topology::Peers)):
/// reads and writes go to it; a store is announced to the other nodes
/// (which copy it if they want it); an invalidation is applied to it and
/// delivered to every other node's Redis (journaled for a node that cannot
/// take it). Reads are misses while the Redis is not proven current (see
/// the `peers` module).
#[derive(Debug, Clone)]
pub struct PeerTier {
    pub(crate) own: RedisTier,
}

/// An invalidation delivered to the peers.
#[derive(Debug, Clone)]
enum Delivery {
    Delete(CacheKey),
    Prefix(String),
    Pattern(String),
    Tag(String),
    Clear,
    SoftDelete(CacheKey),
    SoftPrefix(String),
    SoftPattern(String),
    SoftTag(String),
}

impl Delivery {
    async fn to(self, delivery: Tiered) -> WriteReport {
        match self {
            Self::Delete(key) => delivery.delete(&key).await,
            Self::Prefix(prefix) => delivery.invalidate_prefix(&prefix).await,
            Self::Pattern(pattern) => delivery.invalidate_pattern(&pattern).await,
            Self::Tag(tag) => delivery.invalidate_tag(&tag).await,
            Self::Clear => delivery.clear().await,
            Self::SoftDelete(key) => delivery.soft_delete(&key).await,
            Self::SoftPrefix(prefix) => delivery.soft_invalidate_prefix(&prefix).await,
            Self::SoftPattern(pattern) => delivery.soft_invalidate_pattern(&pattern).await,
            Self::SoftTag(tag) => delivery.soft_invalidate_tag(&tag).await,
        }
    }
}

impl PeerTier {
    fn timeout(&self) -> Duration {
        self.own.space.conns.config.master_timeout
    }

    /// Runs `op` on this node's Redis within the master timeout.
    async fn own<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, CacheError>>,
    ) -> Result<T, CacheError> {
        let limit = self.timeout();
        tokio::time::timeout(limit, op)
            .await
            .unwrap_or(Err(CacheError::Timeout {
                tier: "local".to_owned(),
                timeout: limit,
            }))
    }

    /// Delivers `delivery` to every peer at once and waits for all of them
    /// (each bounded by its timeout; a peer known down is journaled without
    /// waiting). What no journal took is logged and counted.
    async fn deliver(&self, delivery: Delivery) {
        let Some(links) = &self.own.space.peers else {
            return;
        };
        let mut tasks = tokio::task::JoinSet::new();
        for peer in &links.peers {
            tasks.spawn(delivery.clone().to(peer.delivery.clone()));
        }
        while let Some(report) = tasks.join_next().await {
            let lost = match report {
                Ok(report) => report.failed.len(),
                Err(_) => 1,
            };
            if lost > 0 {
                links
                    .replicator
                    .counters
                    .undelivered
                    .fetch_add(lost as u64, Ordering::Relaxed);
                tracing::error!(op = ?delivery, "an invalidation reached neither a peer nor its journal (no journal configured, or it failed)");
            }
        }
    }

    /// Applies an invalidation here and delivers it to the peers, both at
    /// once; the result is this node's (its own journal records a failure).
    async fn invalidate(
        &self,
        here: impl std::future::Future<Output = Result<(), CacheError>>,
        delivery: Delivery,
    ) -> Result<(), CacheError> {
        let (here, ()) = tokio::join!(self.own(here), self.deliver(delivery));
        here
    }

    /// Tells the other nodes that `key` was stored here.
    async fn announce(&self, key: &CacheKey, entry: &Entry, ttl: Duration) {
        let space = &self.own.space;
        let Some(links) = &space.peers else { return };
        let Ok(node) = self.own.node() else { return };
        let argument = format!(
            "{} {} {} {}",
            cachette_core::unix_millis(entry.meta().stored_at),
            crate::tier::ttl_arg(ttl),
            entry.weight(),
            key.as_str()
        );
        let mut conn = node.shared.clone();
        let published: Result<i64, _> = redis::cmd("PUBLISH")
            .arg(space.keys.bus_channel())
            .arg(bus_message(&space.node_id, 'a', &argument))
            .query_async(&mut conn)
            .await;
        match published {
            Ok(_) => {
                links
                    .replicator
                    .counters
                    .announced
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::debug!(%error, %key, "store not announced to the peers");
            }
        }
    }
}

#[async_trait]
impl Backend for PeerTier {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn get(&self, key: &CacheKey) -> Result<Option<Arc<Entry>>, CacheError> {
        if !self.own.space.verified.load(Ordering::Acquire) {
            return Ok(None);
        }
        self.own.get(key).await
    }

    async fn set(
        &self,
        key: &CacheKey,
        entry: Arc<Entry>,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        self.own(self.own.set(key, entry.clone(), ttl)).await?;
        if !ttl.is_zero() {
            self.announce(key, &entry, ttl).await;
        }
        Ok(())
    }

    async fn add(
        &self,
        key: &CacheKey,
        entry: Arc<Entry>,
        ttl: Duration,
    ) -> Result<bool, CacheError> {
        let added = self.own(self.own.add(key, entry.clone(), ttl)).await?;
        if added {
            self.announce(key, &entry, ttl).await;
        }
        Ok(added)
    }

    async fn incr(&self, key: &CacheKey, delta: i64) -> Result<Option<i64>, CacheError> {
        // A counter is this node's own: nothing is shared in a fleet of
        // peers (the incr drops the other nodes' memory copies, as always).
        self.own(self.own.incr(key, delta)).await
    }

    async fn touch(&self, key: &CacheKey, meta: EntryMeta) -> Result<bool, CacheError> {
        self.own(self.own.touch(key, meta)).await
    }

    async fn soften(&self, key: &CacheKey) -> Result<(), CacheError> {
        self.invalidate(self.own.soften(key), Delivery::SoftDelete(key.clone()))
            .await
    }

    async fn soften_prefix(&self, prefix: &str) -> Result<(), CacheError> {
        self.invalidate(
            self.own.soften_prefix(prefix),
            Delivery::SoftPrefix(prefix.to_owned()),
        )
        .await
    }

    async fn soften_pattern(&self, pattern: &str) -> Result<(), CacheError> {
        self.invalidate(
            self.own.soften_pattern(pattern),
            Delivery::SoftPattern(pattern.to_owned()),
        )
        .await
    }

    async fn soften_tag(&self, tag: &str) -> Result<(), CacheError> {
        self.invalidate(self.own.soften_tag(tag), Delivery::SoftTag(tag.to_owned()))
            .await
    }

    async fn delete(&self, key: &CacheKey) -> Result<bool, CacheError> {
        let (here, ()) = tokio::join!(
            self.own(self.own.delete(key)),
            self.deliver(Delivery::Delete(key.clone()))
        );
        here
    }

    async fn invalidate_prefix(&self, prefix: &str) -> Result<(), CacheError> {
        self.invalidate(
            self.own.invalidate_prefix(prefix),
            Delivery::Prefix(prefix.to_owned()),
        )
        .await
    }

    async fn invalidate_pattern(&self, pattern: &str) -> Result<(), CacheError> {
        self.invalidate(
            self.own.invalidate_pattern(pattern),
            Delivery::Pattern(pattern.to_owned()),
        )
        .await
    }

    async fn invalidate_tag(&self, tag: &str) -> Result<(), CacheError> {
        self.invalidate(self.own.invalidate_tag(tag), Delivery::Tag(tag.to_owned()))
            .await
    }

    async fn clear(&self) -> Result<(), CacheError> {
        self.invalidate(self.own.clear(), Delivery::Clear).await
    }

    async fn health(&self) -> Result<(), CacheError> {
        self.own(self.own.health()).await
    }

    async fn info(&self) -> TierInfo {
        let mut info = self.own.info().await;
        if !self.own.space.verified.load(Ordering::Acquire) {
            info.role = Some(format!(
                "{} (not proven current yet: reads are misses)",
                info.role.unwrap_or_else(|| BACKEND.to_owned())
            ));
        }
        info
    }
}
