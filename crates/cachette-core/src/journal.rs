//! The [`Journal`] trait: where writes that a tier could not take wait to be
//! replayed.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;

use crate::{CacheError, CacheKey, Entry};

/// A write or invalidation that did not reach a tier.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JournalOp {
    /// Store `entry` under `key` (its absolute `keep_until` bounds the replay:
    /// an entry whose time has passed is never written back).
    Set {
        /// The key.
        key: CacheKey,
        /// The entry.
        entry: Arc<Entry>,
    },
    /// Remove `key`, as of `at` (a replay does not remove a value stored later).
    Delete {
        /// The key.
        key: CacheKey,
        /// When the delete was issued.
        at: SystemTime,
    },
    /// Remove every key starting with `prefix`.
    InvalidatePrefix {
        /// The prefix.
        prefix: String,
    },
    /// Remove every key matching a Redis-style glob.
    InvalidatePattern {
        /// The pattern.
        pattern: String,
    },
    /// Remove every entry tagged `tag`.
    InvalidateTag {
        /// The tag.
        tag: String,
    },
    /// Remove every key of the namespace.
    Clear,
}

impl JournalOp {
    /// The key an op is about, for ops that supersede older ops on that key.
    pub fn key(&self) -> Option<&CacheKey> {
        match self {
            Self::Set { key, .. } | Self::Delete { key, .. } => Some(key),
            _ => None,
        }
    }

    /// Whether the op removes data (invalidations are never dropped).
    pub fn is_invalidation(&self) -> bool {
        !matches!(self, Self::Set { .. })
    }
}

/// How a journal took an op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Recorded as given: it will be replayed.
    Kept,
    /// The journal was full: instead of the write, it recorded an
    /// invalidation of what the write would have replaced (a delete of the
    /// key, or a clear of the namespace), so no older value survives the
    /// replay. The write itself will not reach the tier.
    AsInvalidation,
}

/// Milliseconds since the Unix epoch, saturating (for journal timestamps).
pub fn unix_millis(t: SystemTime) -> u64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Durable storage for operations a tier could not take, replayed in order
/// when the tier is back.
///
/// [`Tiered`](crate::Tiered) records an op here when a write or invalidation
/// to a tier with a journal fails (error, timeout, open breaker), and, while
/// the journal is not empty, records new ops for that tier here instead of
/// writing them directly, so that they reach the tier in order.
#[async_trait]
pub trait Journal: Send + Sync + std::fmt::Debug + 'static {
    /// Records `op` durably; returns once it would survive a crash. An error
    /// means the op is not recorded.
    async fn record(&self, op: JournalOp) -> Result<Recorded, CacheError>;

    /// Operations waiting to be replayed (cheap: no I/O).
    fn depth(&self) -> u64;

    /// Whether an invalidation waiting in the journal covers `key` (holding
    /// `entry`): a pending delete of the key, or a pending purge that
    /// matches it and was recorded after the key's latest pending write.
    /// [`Tiered`](crate::Tiered) then treats a hit on `key` as a miss, so a
    /// node never reads back what it deleted before the delete reached the
    /// tier. Called only while [`depth`](Self::depth) is not zero; must not
    /// block. The default says no.
    fn hides(&self, key: &CacheKey, entry: &Entry) -> bool {
        let _ = (key, entry);
        false
    }

    /// Whether the latest op waiting for `key` is a write: the tier then
    /// holds something older than what this node wrote, and [`Tiered`]
    /// does not serve the tier's copy. Called only while
    /// [`depth`](Self::depth) is not zero; must not block. The default says
    /// no.
    ///
    /// [`Tiered`]: crate::Tiered
    fn has_pending_write(&self, key: &CacheKey) -> bool {
        let _ = key;
        false
    }
}
