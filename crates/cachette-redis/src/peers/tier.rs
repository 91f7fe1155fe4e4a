//! [`PeerTier`]: this node's Redis in a fleet of peers.

use std::{sync::Arc, sync::atomic::Ordering, time::Duration};

use async_trait::async_trait;
use cachette_core::{
    Backend, CacheError, CacheKey, Entry, EntryMeta, Payload, TierInfo, Tiered, WriteReport,
};

use crate::{RedisTier, node::BACKEND, peers::Links, tier::bus_message};

/// This node's Redis in a fleet of peers ([`Topology::Peers`](crate::Topology::Peers)):
/// reads and writes go to it (with its timeout, breaker and the journal);
/// a store is announced to the other nodes (which copy it if they want
/// it); an invalidation is applied to it and delivered to every other
/// node's Redis (journaled for a node that cannot take it), always both,
/// whatever the state of this node's Redis. Reads are misses while that
/// Redis is not proven current (see the `peers` module).
#[derive(Debug, Clone)]
pub struct PeerTier {
    pub(crate) own: RedisTier,
}

/// An invalidation, as applied here and delivered to the peers.
#[derive(Debug, Clone)]
pub(crate) enum Invalidation {
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

impl Invalidation {
    /// Runs it on `cache` (every tier of it, journaled where it cannot take it).
    pub(crate) async fn run(&self, cache: &Tiered) -> WriteReport {
        match self {
            Self::Delete(key) => cache.delete(key).await,
            Self::Prefix(prefix) => cache.invalidate_prefix(prefix).await,
            Self::Pattern(pattern) => cache.invalidate_pattern(pattern).await,
            Self::Tag(tag) => cache.invalidate_tag(tag).await,
            Self::Clear => cache.clear().await,
            Self::SoftDelete(key) => cache.soft_delete(key).await,
            Self::SoftPrefix(prefix) => cache.soft_invalidate_prefix(prefix).await,
            Self::SoftPattern(pattern) => cache.soft_invalidate_pattern(pattern).await,
            Self::SoftTag(tag) => cache.soft_invalidate_tag(tag).await,
        }
    }

    /// The invalidation a bus message carries (`kind`, `argument`).
    pub(crate) fn from_bus(kind: &str, argument: &str) -> Option<Self> {
        let key = || CacheKey::new(argument).ok();
        Some(match kind {
            "d" => Self::Delete(key()?),
            "p" => Self::Prefix(argument.to_owned()),
            "g" => Self::Pattern(argument.to_owned()),
            "t" => Self::Tag(argument.to_owned()),
            "c" => Self::Clear,
            "S" => Self::SoftDelete(key()?),
            "P" => Self::SoftPrefix(argument.to_owned()),
            "G" => Self::SoftPattern(argument.to_owned()),
            "T" => Self::SoftTag(argument.to_owned()),
            _ => return None,
        })
    }
}

/// The first failure of a report on this node's Redis, as the call's
/// error; a journaled op is not one (it is kept, and replayed in order).
fn own_result(report: &WriteReport) -> Result<(), CacheError> {
    if !report.superseded.is_empty() {
        return Err(CacheError::Superseded {
            tier: "local".to_owned(),
        });
    }
    match report.failed.first() {
        Some(failure) => Err(CacheError::backend(BACKEND, failure.error.to_string())),
        None => Ok(()),
    }
}

impl PeerTier {
    fn links(&self) -> Result<&Links, CacheError> {
        self.own
            .space
            .peers
            .as_ref()
            .ok_or_else(|| CacheError::backend(BACKEND, "not a fleet of peers"))
    }

    /// Applies `invalidation` here and delivers it to every peer, at once.
    /// Each runs in a task of its own: a caller that gives up (a client
    /// gone, a timeout) cancels none of them half-way. Fails if
    /// this node's Redis failed it without journaling it, or a delivery
    /// reached neither its peer nor its journal.
    async fn invalidate(&self, invalidation: Invalidation) -> Result<(), CacheError> {
        let links = self.links()?;
        let deliveries: Vec<_> = links
            .peers
            .iter()
            .map(|peer| {
                let (invalidation, delivery) = (invalidation.clone(), peer.delivery.clone());
                tokio::spawn(async move { invalidation.run(&delivery).await })
            })
            .collect();
        let here = {
            let (invalidation, own) = (invalidation.clone(), links.own.clone());
            tokio::spawn(async move { invalidation.run(&own).await })
        };
        let mut lost = 0u64;
        for delivery in deliveries {
            match delivery.await {
                Ok(report) if report.failed.is_empty() => {}
                _ => lost += 1,
            }
        }
        let here = here.await.map_err(|e| {
            CacheError::backend(BACKEND, format!("the invalidation task failed: {e}"))
        })?;
        if lost > 0 {
            links
                .replicator
                .counters
                .undelivered
                .fetch_add(lost, Ordering::Relaxed);
            tracing::error!(op = ?invalidation, lost, "an invalidation reached neither a peer nor its journal (no journal configured, or it failed)");
            own_result(&here)?;
            return Err(CacheError::backend(
                BACKEND,
                format!("{lost} peer(s) took neither the invalidation nor a journal record of it"),
            ));
        }
        own_result(&here)
    }

    /// Tells the other nodes that `key` was stored here.
    async fn announce(&self, key: &CacheKey, entry: &Entry, ttl: Duration) {
        // A counter is this node's own (nothing is shared in a fleet of
        // peers); its `incr` drops the others' memory copies, as always.
        if matches!(entry.payload(), Payload::Counter(_)) {
            return;
        }
        let space = &self.own.space;
        let Some(links) = &space.peers else { return };
        let Ok(node) = self.own.node() else { return };
        let argument = format!(
            "{} {} {} {}",
            space.conns.master_clock(entry.meta().stored_at),
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

    fn proven(&self) -> bool {
        self.own.space.verified.load(Ordering::Acquire)
    }
}

#[async_trait]
impl Backend for PeerTier {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn get(&self, key: &CacheKey) -> Result<Option<Arc<Entry>>, CacheError> {
        if !self.proven() {
            return Ok(None);
        }
        Ok(self.links()?.own.get(key).await.map(|hit| hit.entry))
    }

    async fn set(
        &self,
        key: &CacheKey,
        entry: Arc<Entry>,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        let report = self
            .links()?
            .own
            .set_with_ttl(key, entry.clone(), ttl)
            .await;
        own_result(&report)?;
        if !report.succeeded.is_empty() {
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
        if !self.proven() {
            // An unproven Redis may hold a stale value that would refuse it.
            return Err(CacheError::backend(
                BACKEND,
                "this node's Redis is not proven current yet",
            ));
        }
        let added = self.links()?.own.add(key, entry.clone()).await?;
        if added {
            self.announce(key, &entry, ttl).await;
        }
        Ok(added)
    }

    async fn incr(&self, key: &CacheKey, delta: i64) -> Result<Option<i64>, CacheError> {
        if !self.proven() {
            return Err(CacheError::backend(
                BACKEND,
                "this node's Redis is not proven current yet",
            ));
        }
        match self.links()?.own.incr(key, delta).await {
            Ok(value) => Ok(Some(value)),
            Err(CacheError::KeyNotFound(_)) => Ok(None),
            Err(error) => Err(error),
        }
    }

    async fn touch(&self, key: &CacheKey, meta: EntryMeta) -> Result<bool, CacheError> {
        if !self.proven() {
            return Ok(false);
        }
        self.links()?.own.touch(key, meta).await
    }

    async fn soften(&self, key: &CacheKey) -> Result<(), CacheError> {
        self.invalidate(Invalidation::SoftDelete(key.clone())).await
    }

    async fn soften_prefix(&self, prefix: &str) -> Result<(), CacheError> {
        self.invalidate(Invalidation::SoftPrefix(prefix.to_owned()))
            .await
    }

    async fn soften_pattern(&self, pattern: &str) -> Result<(), CacheError> {
        self.invalidate(Invalidation::SoftPattern(pattern.to_owned()))
            .await
    }

    async fn soften_tag(&self, tag: &str) -> Result<(), CacheError> {
        self.invalidate(Invalidation::SoftTag(tag.to_owned())).await
    }

    async fn delete(&self, key: &CacheKey) -> Result<bool, CacheError> {
        self.invalidate(Invalidation::Delete(key.clone())).await?;
        Ok(true)
    }

    async fn invalidate_prefix(&self, prefix: &str) -> Result<(), CacheError> {
        self.invalidate(Invalidation::Prefix(prefix.to_owned()))
            .await
    }

    async fn invalidate_pattern(&self, pattern: &str) -> Result<(), CacheError> {
        self.invalidate(Invalidation::Pattern(pattern.to_owned()))
            .await
    }

    async fn invalidate_tag(&self, tag: &str) -> Result<(), CacheError> {
        self.invalidate(Invalidation::Tag(tag.to_owned())).await
    }

    async fn clear(&self) -> Result<(), CacheError> {
        self.invalidate(Invalidation::Clear).await
    }

    async fn health(&self) -> Result<(), CacheError> {
        let limit = self.own.space.conns.config.master_timeout;
        tokio::time::timeout(limit, self.own.health())
            .await
            .unwrap_or(Err(CacheError::Timeout {
                tier: "local".to_owned(),
                timeout: limit,
            }))
    }

    async fn info(&self) -> TierInfo {
        let mut info = self.own.info().await;
        if !self.proven() {
            info.role = Some(format!(
                "{} (not proven current yet: reads are misses)",
                info.role.unwrap_or_else(|| BACKEND.to_owned())
            ));
        }
        info
    }
}
