//! The replicator: copies what the other nodes of a fleet announce into
//! this node's Redis, from a bounded queue, with a bounded number of
//! fetches in flight. Hits never wait on it; a burst of announcements
//! drops the oldest (counted), never grows memory.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use cachette_core::{Backend, CacheError, CacheKey, Entry};
use tokio::sync::Notify;

use crate::{
    RedisTier, ReplicationConfig, Role,
    node::redis_error,
    shared::Space,
    tier::{entry_bytes, stored_version},
};

/// One store another node announced.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Announcement {
    /// Which peer (index in `Links::peers`) holds it.
    peer: usize,
    /// Its version: when it was stored, in the announcer's Redis clock (ms).
    version: u64,
    /// Remaining TTL when announced, in ms (`0`: none).
    ttl_ms: u64,
    size: u64,
    key: String,
}

impl Announcement {
    /// `{version_ms} {ttl_ms} {size} {key}` (the key may hold spaces).
    fn parse(peer: usize, argument: &str) -> Option<Self> {
        let mut parts = argument.splitn(4, ' ');
        Some(Self {
            peer,
            version: parts.next()?.parse().ok()?,
            ttl_ms: parts.next()?.parse().ok()?,
            size: parts.next()?.parse().ok()?,
            key: parts.next()?.to_owned(),
        })
    }
}

/// The replicator's counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) announced: AtomicU64,
    pub(crate) heard: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) copied: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) max_queued: AtomicU64,
    pub(crate) undelivered: AtomicU64,
}

/// Replication counters of one node of a fleet of peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicationStats {
    /// Stores this node announced.
    pub announced: u64,
    /// Announcements heard from the other nodes.
    pub heard: u64,
    /// Announcements dropped unprocessed (the queue was full).
    pub dropped: u64,
    /// Entries copied into this node's Redis.
    pub copied: u64,
    /// Announcements not copied on purpose: held already (same or newer),
    /// too large, too little lifetime left, gone from the peer, or older
    /// than a delete or purge here.
    pub skipped: u64,
    /// Copies that failed (a peer or this node's Redis down, unreadable bytes).
    pub failed: u64,
    /// Announcements waiting now.
    pub queued: u64,
    /// The most that ever waited at once.
    pub max_queued: u64,
    /// Invalidations that reached neither a peer nor its journal.
    pub undelivered: u64,
}

/// The queue of announcements of one namespace.
#[derive(Debug)]
pub(crate) struct Replicator {
    config: ReplicationConfig,
    queue: Mutex<VecDeque<Announcement>>,
    wake: Notify,
    pub(crate) counters: Counters,
}

impl Replicator {
    pub(crate) fn new(config: ReplicationConfig) -> Self {
        Self {
            queue: Mutex::new(VecDeque::with_capacity(config.queue.clamp(1, 1024))),
            config,
            wake: Notify::new(),
            counters: Counters::default(),
        }
    }

    /// Queues an announcement heard from peer `peer` (dropping the oldest
    /// waiting one when full: the newest stores are the likeliest to be
    /// read next, and each dropped one only costs a miss).
    pub(crate) fn offer(&self, peer: usize, argument: &str) {
        self.counters.heard.fetch_add(1, Ordering::Relaxed);
        let Some(announcement) = Announcement::parse(peer, argument) else {
            self.counters.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let waiting = {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            if queue.len() >= self.config.queue.max(1) {
                queue.pop_front();
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
            queue.push_back(announcement);
            queue.len() as u64
        };
        self.counters
            .max_queued
            .fetch_max(waiting, Ordering::Relaxed);
        self.wake.notify_one();
    }

    fn next(&self) -> Option<Announcement> {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
    }

    pub(crate) fn stats(&self) -> ReplicationStats {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ReplicationStats {
            announced: load(&c.announced),
            heard: load(&c.heard),
            dropped: load(&c.dropped),
            copied: load(&c.copied),
            skipped: load(&c.skipped),
            failed: load(&c.failed),
            queued: self
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len() as u64,
            max_queued: load(&c.max_queued),
            undelivered: load(&c.undelivered),
        }
    }
}

/// Runs `concurrency` workers copying announced entries into this node's
/// Redis (`space`), dropping `memory`'s copy of each key replaced (the next
/// read promotes the newer one). Ends when the namespace is dropped.
pub(crate) async fn run_workers(space: Weak<Space>, memory: Arc<dyn Backend>) {
    let Some(replicator) = space
        .upgrade()
        .and_then(|s| s.peers.as_ref().map(|l| l.replicator.clone()))
    else {
        return;
    };
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..replicator.config.concurrency.max(1) {
        workers.spawn(run_worker(
            space.clone(),
            replicator.clone(),
            memory.clone(),
        ));
    }
    while workers.join_next().await.is_some() {}
}

/// One worker. It holds the queue, not the namespace, while it waits: the
/// namespace's drop aborts it.
async fn run_worker(space: Weak<Space>, replicator: Arc<Replicator>, memory: Arc<dyn Backend>) {
    loop {
        let notified = replicator.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let Some(announcement) = replicator.next() else {
            notified.await;
            continue;
        };
        let Some(strong) = space.upgrade() else {
            return;
        };
        let counter = match copy(&strong, memory.as_ref(), &announcement).await {
            Ok(true) => &replicator.counters.copied,
            Ok(false) => &replicator.counters.skipped,
            Err(error) => {
                tracing::debug!(%error, key = %announcement.key, "entry not copied from a peer");
                &replicator.counters.failed
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Copies one announced entry, unless this node holds it already (same or
/// newer), it is too large or too short-lived, or it is gone. Returns
/// whether it was copied.
///
/// Versions are compared in this node's Redis clock: the announcer's
/// (stamped in its own Redis's clock) is brought into this node's clock
/// through the offset measured to the announcer's Redis, so a node whose
/// clock runs ahead cannot make a copy win over a later delete here.
async fn copy(
    space: &Arc<Space>,
    memory: &dyn Backend,
    announcement: &Announcement,
) -> Result<bool, CacheError> {
    let Some(links) = space.peers.as_ref() else {
        return Ok(false);
    };
    if !space.verified.load(Ordering::Acquire) {
        // It would be removed by the proof, or mixed with what it missed.
        return Ok(false);
    }
    let config = &links.replicator.config;
    let Ok(key) = CacheKey::new(announcement.key.as_str()) else {
        return Ok(false);
    };
    let Some(peer) = links.peers.get(announcement.peer) else {
        return Ok(false);
    };
    let own = RedisTier {
        space: space.clone(),
        role: Role::Master,
    };
    let timeout = space.conns.config.master_timeout;
    let peer_tier = peer.tiers.master_tier();
    let peer_node = peer_tier.node()?;
    let peer_clock = &peer.tiers.space.conns;
    let mut peer_conn = peer_node.shared.clone();
    measure_clock(peer_clock, &mut peer_conn, timeout).await?;
    let here = |version: u64| space.conns.master_clock(peer_clock.local_clock(version));
    let announced = here(announcement.version);

    // What this node holds: a 12-byte read, not the entry.
    let own_node = own.node()?;
    let mut conn = own_node.shared.clone();
    let redis_key = space.keys.entry(key.as_str());
    let head: Vec<u8> = within(
        timeout,
        redis::cmd("GETRANGE")
            .arg(&redis_key)
            .arg(0)
            .arg(11)
            .query_async(&mut conn),
    )
    .await?;
    let held = (!head.is_empty()).then(|| stored_version(&head));
    if held.is_some_and(|held| held >= announced) {
        return Ok(false);
    }
    if announcement.size > config.max_bytes
        || (announcement.ttl_ms != 0 && announcement.ttl_ms < millis(config.min_ttl))
    {
        // Not copied, but newer than what is held here (or than a copy
        // that may still arrive from another node): drop that, at the
        // version the peer really holds.
        let head: Vec<u8> = within(
            timeout,
            redis::cmd("GETRANGE")
                .arg(peer.tiers.space.keys.entry(key.as_str()))
                .arg(0)
                .arg(11)
                .query_async(&mut peer_conn),
        )
        .await?;
        let version = stored_version(&head);
        if version != 0 {
            within_cache(timeout, own.drop_older(&key, here(version))).await?;
            if held.is_some() {
                memory.delete(&key).await?;
            }
        }
        return Ok(false);
    }
    let raw: Option<Vec<u8>> = within(
        timeout,
        redis::cmd("GET")
            .arg(peer.tiers.space.keys.entry(key.as_str()))
            .query_async(&mut peer_conn),
    )
    .await?;
    let Some(raw) = raw else { return Ok(false) };
    let version = stored_version(&raw);
    if version == 0 || raw.len() as u64 > config.max_bytes.saturating_add(4096) {
        return Ok(false); // a counter (each node's own), or grown since
    }
    let entry = Entry::decode(entry_bytes(raw))?;
    let ttl = entry.remaining_ttl(SystemTime::now());
    if ttl < config.min_ttl {
        return Ok(false);
    }
    let stored = within_cache(timeout, own.copy_in(&key, &entry, ttl, here(version))).await?;
    if stored {
        // This node's memory may hold an older copy: the next read
        // promotes the one just stored.
        memory.delete(&key).await?;
    }
    Ok(stored)
}

/// Measures the clock of a peer's Redis with `TIME` unless it was measured
/// lately: versions read there are brought into this node's clock with it.
pub(crate) async fn measure_clock(
    peer_clock: &crate::shared::Connections,
    peer_conn: &mut (impl redis::aio::ConnectionLike + Send),
    timeout: Duration,
) -> Result<(), CacheError> {
    if peer_clock.clock_known() {
        return Ok(());
    }
    let sent = Instant::now();
    let (secs, micros): (i64, i64) =
        within(timeout, redis::cmd("TIME").query_async(peer_conn)).await?;
    peer_clock.observe_master_clock(
        secs.saturating_mul(1000).saturating_add(micros / 1000),
        sent,
    );
    Ok(())
}

async fn within_cache<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, CacheError>>,
) -> Result<T, CacheError> {
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or(Err(CacheError::Timeout {
            tier: "local".to_owned(),
            timeout: limit,
        }))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

async fn within<T>(
    limit: Duration,
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, CacheError> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result.map_err(redis_error),
        Err(_) => Err(CacheError::backend(
            crate::node::BACKEND,
            "a peer replication call timed out",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_parse_keys_with_spaces_and_refuse_garbage() {
        let a = Announcement::parse(1, "1700000000000 5000 1024 GET:h/a b?c").unwrap();
        assert_eq!(a.key, "GET:h/a b?c");
        assert_eq!(
            (a.version, a.ttl_ms, a.size),
            (1_700_000_000_000, 5000, 1024)
        );
        assert!(Announcement::parse(0, "x 1 2 k").is_none());
        assert!(Announcement::parse(0, "1 2 3").is_none());
        assert!(Announcement::parse(0, "").is_none());
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_it() {
        let replicator = Replicator::new(ReplicationConfig {
            queue: 2,
            ..ReplicationConfig::default()
        });
        for n in 0..5 {
            replicator.offer(0, &format!("1 0 1 k{n}"));
        }
        let stats = replicator.stats();
        assert_eq!(
            (stats.heard, stats.dropped, stats.queued, stats.max_queued),
            (5, 3, 2, 2)
        );
        assert_eq!(replicator.next().unwrap().key, "k3");
        assert_eq!(replicator.next().unwrap().key, "k4");
    }
}
