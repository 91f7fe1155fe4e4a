//! Warming a joining node: the most recently stored entries of one peer,
//! copied into this node's Redis, bounded by count and bytes.

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant, SystemTime},
};

use cachette_core::{CacheError, CacheKey, Entry};

use crate::{
    RedisTier, Role,
    node::{BACKEND, redis_error},
    shared::Space,
    tier::{entry_bytes, scan_page, stored_version},
};

/// How much [`warm`](crate::RedisTiers::warm_from) copies at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmLimits {
    /// Entries copied, at most (the most recently stored first).
    pub max_entries: usize,
    /// Bytes copied, at most.
    pub max_bytes: u64,
}

impl Default for WarmLimits {
    /// 10 000 entries, 256 MiB.
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Where a warm-up is, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WarmProgress {
    /// Reading the peer's keys and their store times.
    Scanning {
        /// Keys looked at so far.
        scanned: u64,
    },
    /// Copying the chosen entries, newest first.
    Copying {
        /// Entries dealt with so far.
        done: u64,
        /// Entries chosen.
        total: u64,
        /// Bytes copied so far.
        bytes: u64,
    },
}

/// What a warm-up did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmReport {
    /// The peer's entries looked at.
    pub scanned: u64,
    /// Entries copied.
    pub copied: u64,
    /// Bytes copied.
    pub bytes: u64,
    /// Entries not copied: gone or expired meanwhile, unreadable, held here
    /// already in the same or a newer version, or older than a delete or
    /// purge here.
    pub skipped: u64,
}

/// Copies the newest entries of `peer` (an index in this namespace's links)
/// into this node's Redis.
pub(crate) async fn warm(
    space: &Arc<Space>,
    peer: usize,
    limits: WarmLimits,
    progress: &(dyn Fn(WarmProgress) + Send + Sync),
) -> Result<WarmReport, CacheError> {
    let links = space
        .peers
        .as_ref()
        .ok_or_else(|| CacheError::backend(BACKEND, "not a fleet of peers"))?;
    let peer = links
        .peers
        .get(peer)
        .ok_or_else(|| CacheError::backend(BACKEND, "no such peer"))?;
    prove_own(space).await?;

    // The newest `max_entries`, by the version each value carries (its
    // store time in the writer's estimate of the clock): a min-heap.
    let peer_tier = peer.tiers.master_tier();
    let peer_node = peer_tier.node()?;
    let keys = &peer.tiers.space.keys;
    let entry_prefix = keys.entry("");
    let mut newest: BinaryHeap<Reverse<(u64, Vec<u8>)>> = BinaryHeap::new();
    let mut report = WarmReport::default();
    let mut conn = peer_node.exclusive().await?;
    let mut cursor = 0;
    loop {
        let (next, page) = scan_page(&mut conn, cursor, &keys.entries_pattern()).await?;
        if !page.is_empty() {
            let mut pipe = redis::pipe();
            for key in &page {
                pipe.cmd("GETRANGE").arg(key).arg(0).arg(11);
            }
            let heads: Vec<Vec<u8>> = pipe.query_async(&mut conn).await.map_err(redis_error)?;
            for (key, head) in page.into_iter().zip(heads) {
                report.scanned += 1;
                if head.is_empty() {
                    continue; // gone since the scan
                }
                newest.push(Reverse((stored_version(&head), key)));
                if newest.len() > limits.max_entries {
                    newest.pop();
                }
            }
            progress(WarmProgress::Scanning {
                scanned: report.scanned,
            });
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut chosen: Vec<(u64, Vec<u8>)> = newest.into_iter().map(|Reverse(v)| v).collect();
    chosen.sort_unstable_by_key(|(version, _)| Reverse(*version));
    let total = chosen.len() as u64;

    let own = RedisTier {
        space: space.clone(),
        role: Role::Master,
    };
    let timeout = space.conns.config.master_timeout;
    let peer_clock = &peer.tiers.space.conns;
    for (done, (_, redis_key)) in chosen.into_iter().enumerate() {
        let raw: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&redis_key)
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        let copied = match raw {
            Some(raw) if report.bytes.saturating_add(raw.len() as u64) > limits.max_bytes => {
                break;
            }
            Some(raw) => {
                let version = stored_version(&raw);
                if version == 0 {
                    None // a counter: each node's own
                } else {
                    super::replicator::measure_clock(peer_clock, &mut conn, timeout).await?;
                    let here = space.conns.master_clock(peer_clock.local_clock(version));
                    copy_one(&own, &entry_prefix, &redis_key, raw, here, timeout).await?
                }
            }
            None => None,
        };
        match copied {
            Some(bytes) => {
                report.copied += 1;
                report.bytes += bytes;
            }
            None => report.skipped += 1,
        }
        progress(WarmProgress::Copying {
            done: done as u64 + 1,
            total,
            bytes: report.bytes,
        });
    }
    Ok(report)
}

/// Stores one fetched value here; `Some(bytes)` if it was copied.
async fn copy_one(
    own: &RedisTier,
    entry_prefix: &str,
    redis_key: &[u8],
    raw: Vec<u8>,
    version: u64,
    timeout: Duration,
) -> Result<Option<u64>, CacheError> {
    let size = raw.len() as u64;
    let Some(key) = std::str::from_utf8(redis_key)
        .ok()
        .and_then(|k| k.strip_prefix(entry_prefix))
        .and_then(|k| CacheKey::new(k).ok())
    else {
        return Ok(None);
    };
    let Ok(entry) = Entry::decode(entry_bytes(raw)) else {
        return Ok(None); // counters and unreadable values stay where they are
    };
    let ttl = entry.remaining_ttl(SystemTime::now());
    if ttl.is_zero() {
        return Ok(None);
    }
    // The version the peer holds, in this node's clock: a writer whose
    // clock runs ahead cannot beat a delete here.
    match tokio::time::timeout(timeout, own.copy_in(&key, &entry, ttl, version)).await {
        Ok(Ok(true)) => Ok(Some(size)),
        Ok(Ok(false)) => Ok(None),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(CacheError::Timeout {
            tier: "local".to_owned(),
            timeout,
        }),
    }
}

/// Makes sure this node's Redis is proven current before copying into it:
/// a copy into an unproven Redis would be removed by the proof (or, worse,
/// mixed with what it may have missed). With the bus running in this
/// process, its subscriber proves it; waits for that.
async fn prove_own(space: &Arc<Space>) -> Result<(), CacheError> {
    if !space.bus_started.load(Ordering::Relaxed) {
        return super::verify_own(space, None, SystemTime::now()).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !space.verified.load(Ordering::Acquire) {
        if Instant::now() > deadline {
            return Err(CacheError::backend(
                BACKEND,
                "this node's Redis was not proven current within 10 s (is it up?)",
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
