//! The [`Backend`] trait every cache tier implements.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;

use crate::{CacheError, CacheKey, Entry};

/// One storage tier: the in-process memory cache, a Redis replica, a Redis master...
///
/// A backend owns one namespace: [`clear`](Backend::clear) and the
/// invalidations touch only the keys this backend was configured for, never
/// other data sharing the same store. Backends do not need their own timeouts
/// or breakers: [`Tiered`](crate::Tiered) wraps every call in both.
#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// A short name of the backend kind, e.g. `memory` or `redis`.
    fn kind(&self) -> &'static str;

    /// Looks `key` up. Unreadable stored bytes are `Err(CacheError::Decode)`,
    /// which callers treat as a miss.
    async fn get(&self, key: &CacheKey) -> Result<Option<Arc<Entry>>, CacheError>;

    /// Stores `entry` under `key` for `ttl`. A zero `ttl` stores nothing.
    async fn set(&self, key: &CacheKey, entry: Arc<Entry>, ttl: Duration)
    -> Result<(), CacheError>;

    /// Removes `key`; returns whether something was removed (where known).
    async fn delete(&self, key: &CacheKey) -> Result<bool, CacheError>;

    /// Removes every key starting with `prefix`.
    async fn invalidate_prefix(&self, prefix: &str) -> Result<(), CacheError>;

    /// Removes every entry tagged `tag`.
    async fn invalidate_tag(&self, tag: &str) -> Result<(), CacheError>;

    /// Removes every key of this backend's namespace (and nothing else).
    async fn clear(&self) -> Result<(), CacheError>;

    /// Checks that the backend can serve (e.g. a `PING`).
    async fn health(&self) -> Result<(), CacheError>;
}
