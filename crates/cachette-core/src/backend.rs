//! The [`Backend`] trait every cache tier implements.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;

use crate::{CacheError, CacheKey, Entry, EntryMeta, FillWakers, LeaseEnd, LeaseState, Payload};

/// What a tier can tell about itself for stats and health reports, where it
/// knows: how much it holds, and which server it talks to in which role.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TierInfo {
    /// Entries held (the memory tier; `None` where counting would cost a scan).
    pub entries: Option<u64>,
    /// Bytes held.
    pub bytes: Option<u64>,
    /// Capacity in bytes.
    pub capacity_bytes: Option<u64>,
    /// The server this tier talks to now (`host:port`).
    pub address: Option<String>,
    /// The server's role as it reports it (Redis `ROLE`: `master`, `slave`).
    pub role: Option<String>,
}

impl TierInfo {
    /// Usage of an in-process tier.
    pub fn usage(entries: u64, bytes: u64, capacity_bytes: u64) -> Self {
        Self {
            entries: Some(entries),
            bytes: Some(bytes),
            capacity_bytes: Some(capacity_bytes),
            ..Self::default()
        }
    }

    /// A server and the role it reports (`None` when it could not be asked).
    pub fn server(address: Option<String>, role: Option<String>) -> Self {
        Self {
            address,
            role,
            ..Self::default()
        }
    }
}

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

    /// Answers a lookup without awaiting, when the backend can (an in-process
    /// tier); `None` means "ask [`get`](Backend::get)". [`Tiered`](crate::Tiered)
    /// tries this first on a first tier without a timeout: a memory hit then
    /// allocates no future. The default always says `None`.
    fn get_now(&self, key: &CacheKey) -> Option<Result<Option<Arc<Entry>>, CacheError>> {
        let _ = key;
        None
    }

    /// [`get_now`](Backend::get_now) by the key's text, for a caller that
    /// has not built a [`CacheKey`] (a hit path would allocate one only to
    /// look it up). A text that is not a valid key is never found. The
    /// default always says `None`.
    fn get_now_str(&self, key: &str) -> Option<Result<Option<Arc<Entry>>, CacheError>> {
        let _ = key;
        None
    }

    /// Stores `entry` under `key` for `ttl`. A zero `ttl` stores nothing.
    async fn set(&self, key: &CacheKey, entry: Arc<Entry>, ttl: Duration)
    -> Result<(), CacheError>;

    /// Removes `key`; returns whether something was removed (where known).
    async fn delete(&self, key: &CacheKey) -> Result<bool, CacheError>;

    /// Removes every key starting with `prefix`.
    async fn invalidate_prefix(&self, prefix: &str) -> Result<(), CacheError>;

    /// Removes every entry tagged `tag`.
    async fn invalidate_tag(&self, tag: &str) -> Result<(), CacheError>;

    /// Removes every key matching the Redis-style glob `pattern` (see
    /// [`glob_match`](crate::glob_match)). The default says it is unsupported.
    async fn invalidate_pattern(&self, pattern: &str) -> Result<(), CacheError> {
        let _ = pattern;
        Err(CacheError::Unsupported {
            backend: self.kind(),
            operation: "invalidate_pattern",
        })
    }

    /// Stores `entry` only if `key` holds nothing; returns whether it stored.
    /// Backends that can make this atomic do (moka's entry API, Redis
    /// `SET NX`); the default reads then writes.
    async fn add(
        &self,
        key: &CacheKey,
        entry: Arc<Entry>,
        ttl: Duration,
    ) -> Result<bool, CacheError> {
        if self.get(key).await?.is_some() {
            return Ok(false);
        }
        self.set(key, entry, ttl).await?;
        Ok(true)
    }

    /// Adds `delta` to the counter under `key` and returns the new value;
    /// `Ok(None)` when the key holds nothing. Backends that can make this
    /// atomic do (Redis `INCRBY`); the default reads then writes.
    async fn incr(&self, key: &CacheKey, delta: i64) -> Result<Option<i64>, CacheError> {
        let Some(entry) = self.get(key).await? else {
            return Ok(None);
        };
        let Payload::Counter(value) = entry.payload() else {
            return Err(CacheError::NotACounter(key.to_string()));
        };
        let next = value
            .checked_add(delta)
            .ok_or_else(|| CacheError::Overflow(key.to_string()))?;
        let now = std::time::SystemTime::now();
        let ttl = entry.remaining_ttl(now);
        let meta: EntryMeta = entry.meta().clone();
        self.set(key, Arc::new(Entry::counter(next, meta)), ttl)
            .await?;
        Ok(Some(next))
    }

    /// Gives what `key` holds a new lifetime: its entry with `meta` (the
    /// entry's own tags are kept). Returns whether the key held something.
    /// Backends shared between nodes make this atomic (Redis: the entry is
    /// replaced only if no other write landed since it was read), so a touch
    /// never writes an older copy over a newer value. The default reads then
    /// writes.
    async fn touch(&self, key: &CacheKey, meta: EntryMeta) -> Result<bool, CacheError> {
        let Some(entry) = self.get(key).await? else {
            return Ok(false);
        };
        let meta = meta.with_tags(entry.meta().tags.iter().cloned());
        let touched = Arc::new(entry.with_meta(meta));
        let ttl = touched.remaining_ttl(std::time::SystemTime::now());
        self.set(key, touched, ttl).await?;
        Ok(true)
    }

    /// Makes what `key` holds stale without removing it (a soft purge): it
    /// can still be served stale-while-revalidate or stale-if-error, and
    /// revalidated with its validators. The default reads then writes.
    async fn soften(&self, key: &CacheKey) -> Result<(), CacheError> {
        let Some(entry) = self.get(key).await? else {
            return Ok(());
        };
        if matches!(entry.payload(), Payload::Variants(_)) {
            return Ok(());
        }
        let now = std::time::SystemTime::now();
        let staled = Arc::new(entry.with_meta(entry.meta().clone().staled(now)));
        let ttl = staled.remaining_ttl(now);
        self.set(key, staled, ttl).await
    }

    /// [`soften`](Backend::soften) for every key starting with `prefix`.
    async fn soften_prefix(&self, prefix: &str) -> Result<(), CacheError> {
        let _ = prefix;
        Err(CacheError::Unsupported {
            backend: self.kind(),
            operation: "soften_prefix",
        })
    }

    /// [`soften`](Backend::soften) for every key matching the glob `pattern`.
    async fn soften_pattern(&self, pattern: &str) -> Result<(), CacheError> {
        let _ = pattern;
        Err(CacheError::Unsupported {
            backend: self.kind(),
            operation: "soften_pattern",
        })
    }

    /// [`soften`](Backend::soften) for every entry tagged `tag`.
    async fn soften_tag(&self, tag: &str) -> Result<(), CacheError> {
        let _ = tag;
        Err(CacheError::Unsupported {
            backend: self.kind(),
            operation: "soften_tag",
        })
    }

    /// Takes the fill lease of `key` for `ttl` as `token`, if nobody holds
    /// it (see [`Tiered::fleet_fill`](crate::Tiered::fleet_fill)). Backends
    /// shared between nodes implement the lease family atomically (Redis: a
    /// script); the default has no leases.
    async fn lease(
        &self,
        key: &CacheKey,
        token: &str,
        ttl: Duration,
    ) -> Result<LeaseState, CacheError> {
        let _ = (key, token, ttl);
        Err(CacheError::Unsupported {
            backend: self.kind(),
            operation: "lease",
        })
    }

    /// Extends `token`'s lease on `key` to `ttl` from now; `false` when the
    /// lease is no longer `token`'s.
    async fn renew_lease(
        &self,
        key: &CacheKey,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, CacheError> {
        let _ = (key, token, ttl);
        Err(CacheError::Unsupported {
            backend: self.kind(),
            operation: "renew_lease",
        })
    }

    /// Ends `token`'s lease on `key` (nothing if it is no longer
    /// `token`'s): the outcome stays readable for `linger`, and the nodes
    /// waiting on it are woken.
    async fn end_lease(
        &self,
        key: &CacheKey,
        token: &str,
        end: LeaseEnd,
        linger: Duration,
    ) -> Result<(), CacheError> {
        let _ = (key, token, end, linger);
        Err(CacheError::Unsupported {
            backend: self.kind(),
            operation: "end_lease",
        })
    }

    /// Where this node's waiters on other nodes' leases are woken; `None`
    /// for a backend without leases.
    fn fill_wakers(&self) -> Option<&FillWakers> {
        None
    }

    /// Removes every key of this backend's namespace (and nothing else).
    async fn clear(&self) -> Result<(), CacheError>;

    /// Checks that the backend can serve (e.g. a `PING`).
    async fn health(&self) -> Result<(), CacheError>;

    /// Describes the tier for stats and health reports (best effort: what
    /// cannot be learned is `None`). The default knows nothing.
    async fn info(&self) -> TierInfo {
        TierInfo::default()
    }
}
