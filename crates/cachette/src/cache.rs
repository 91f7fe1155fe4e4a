//! [`Cache`]: one named cache with a Django-grade API over its tiers.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use cachette_core::{
    CacheError, CacheKey, Entry, EntryMeta, FleetFill, LeaseEnd, Payload, SingleFlight,
    StatsSnapshot, Tiered, escape_glob,
};
use serde::{Serialize, de::DeserializeOwned};

pub use cachette_settings::Timeout;

/// Builds the stored key from the user's key, the cache's prefix and a
/// version (Django's `KEY_FUNCTION`).
pub type KeyFunction = Arc<dyn Fn(&str, &str, i64) -> String + Send + Sync>;

/// Django's default key function: `key_prefix:version:key`.
pub fn default_key(key: &str, key_prefix: &str, version: i64) -> String {
    format!("{key_prefix}:{version}:{key}")
}

/// A caller's key as the key layout can hold it. Django accepts any string
/// key; cache keys cannot hold spaces or control characters, so those (and
/// `%`, which keeps the mapping one-to-one) are written `%XX` per UTF-8
/// byte: `"a b"` and `"a%20b"` stay two keys. Everything else, non-ASCII
/// included, is kept as it is.
pub fn escape_key(key: &str) -> std::borrow::Cow<'_, str> {
    let needs = |c: char| c == ' ' || c == '%' || c.is_control();
    if !key.chars().any(needs) {
        return std::borrow::Cow::Borrowed(key);
    }
    let mut out = String::with_capacity(key.len() + 8);
    for c in key.chars() {
        if needs(c) {
            let mut buf = [0u8; 4];
            for byte in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{byte:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Per-call options: lifetime, version, tags, and a deadline for the whole call.
///
/// `()` means "the cache's defaults"; a [`Duration`] or a [`Timeout`] sets the
/// lifetime.
///
/// ```
/// use std::time::Duration;
/// use cachette::{Opts, Timeout};
///
/// let defaults: Opts = ().into();
/// let one_minute: Opts = Duration::from_secs(60).into();
/// let forever = Opts::new().timeout(Timeout::Never).version(2).tags(["users"]);
/// # let _ = (defaults, one_minute, forever);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Opts {
    /// The lifetime of a stored value (default: the cache's `timeout`).
    pub timeout: Option<Timeout>,
    /// The key version (default: the cache's `version`).
    pub version: Option<i64>,
    /// Tags to store the value with, for [`Cache::purge_tag`].
    pub tags: Vec<String>,
    /// The whole call fails with [`CacheError::Deadline`] after this long.
    pub deadline: Option<Duration>,
}

impl Opts {
    /// The cache's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the lifetime.
    pub fn timeout(mut self, timeout: impl Into<Timeout>) -> Self {
        self.timeout = Some(timeout.into());
        self
    }

    /// Sets the key version.
    pub fn version(mut self, version: i64) -> Self {
        self.version = Some(version);
        self
    }

    /// Sets the tags.
    pub fn tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// Sets a deadline for the whole call.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }
}

impl From<()> for Opts {
    fn from((): ()) -> Self {
        Self::default()
    }
}

impl From<Duration> for Opts {
    fn from(timeout: Duration) -> Self {
        Self::new().timeout(timeout)
    }
}

impl From<Timeout> for Opts {
    fn from(timeout: Timeout) -> Self {
        Self::new().timeout(timeout)
    }
}

/// The remaining lifetime of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// The key never expires.
    Never,
    /// The key expires after this long.
    Remaining(Duration),
}

pub(crate) struct CacheInner {
    pub(crate) alias: String,
    pub(crate) tiered: Tiered,
    pub(crate) timeout: Timeout,
    pub(crate) key_prefix: String,
    pub(crate) version: i64,
    pub(crate) key_function: Option<KeyFunction>,
    pub(crate) flights: SingleFlight<Option<Payload>>,
    #[cfg(feature = "redis")]
    pub(crate) redis: Option<cachette_redis::RedisTiers>,
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) http: cachette_settings::HttpSettings,
    /// Fill leases across nodes for `get_or_set`, when fleet coalescing is on.
    pub(crate) fleet: Option<cachette_core::LeaseOptions>,
}

/// The lease options of the data API: a waiter waits at least twice the
/// lease, so that a dead holder's lease runs out and another node fills
/// before anyone gives up.
pub(crate) fn data_lease_options(lease: Duration) -> cachette_core::LeaseOptions {
    let lease = lease.max(Duration::from_millis(10));
    cachette_core::LeaseOptions::new(lease, (lease * 2).max(Duration::from_secs(10)))
}

/// One named cache: typed values through serde (MessagePack) or raw bytes,
/// with Django's low-level API. Cheap to clone.
///
/// Every call takes options ([`Opts`]; `()` for the defaults). Keys are
/// `key_prefix:version:key` unless the cache has its own key function; an
/// invalid key (too long, spaces, control characters) is
/// [`CacheError::InvalidKey`]. A tier that fails makes a read a miss and a
/// write a no-op for that tier (and a journal entry for the Redis master):
/// only the atomic operations (`add`, `incr`) report a master failure.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use cachette::Caches;
///
/// let caches = Caches::memory_only();
/// let cache = caches.cache("default")?;
/// cache.set("greeting", "hello", ()).await?;
/// assert_eq!(cache.get::<String>("greeting", ()).await?, Some("hello".to_owned()));
/// assert!(!cache.add("greeting", "bonjour", ()).await?);   // add does not overwrite
/// cache.set("visits", &41, Duration::from_secs(60)).await?;
/// assert_eq!(cache.incr("visits", 1, ()).await?, 42);
/// let answer: u32 = cache.get_or_set("answer", || async { 42 }, ()).await?;
/// assert_eq!(answer, 42);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Cache {
    pub(crate) inner: Arc<CacheInner>,
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("alias", &self.inner.alias)
            .field("tiers", &self.inner.tiered.tier_names().collect::<Vec<_>>())
            .field("timeout", &self.inner.timeout)
            .field("key_prefix", &self.inner.key_prefix)
            .field("version", &self.inner.version)
            .finish()
    }
}

fn is_integer_marker(byte: u8) -> bool {
    // positive fixint, negative fixint, uint8..uint64, int8..int64
    byte <= 0x7f || byte >= 0xe0 || (0xcc..=0xd3).contains(&byte)
}

/// Serializes a value; integers become counters, so that `incr` works on
/// them, as in Django.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Payload, CacheError> {
    let bytes = rmp_serde::to_vec_named(value).map_err(|e| CacheError::Serialize(e.to_string()))?;
    if bytes.first().copied().is_some_and(is_integer_marker) {
        if let Ok(n) = rmp_serde::from_slice::<i64>(&bytes) {
            return Ok(Payload::Counter(n));
        }
    }
    Ok(Payload::Value(Bytes::from(bytes)))
}

/// Deserializes a stored value; a value of another shape (an older struct
/// definition, another type) is a miss, not an error.
pub(crate) fn decode<T: DeserializeOwned>(payload: &Payload) -> Option<T> {
    let decoded = match payload {
        Payload::Value(bytes) => rmp_serde::from_slice(bytes),
        Payload::Counter(n) => rmp_serde::to_vec(n)
            .map_err(|e| rmp_serde::decode::Error::Uncategorized(e.to_string()))
            .and_then(|bytes| rmp_serde::from_slice(&bytes)),
        _ => return None,
    };
    match decoded {
        Ok(value) => Some(value),
        Err(error) => {
            tracing::debug!(%error, "stored value does not decode as the requested type: a miss");
            None
        }
    }
}

async fn within<T>(
    deadline: Option<Duration>,
    call: impl Future<Output = Result<T, CacheError>>,
) -> Result<T, CacheError> {
    match deadline {
        Some(limit) => tokio::time::timeout(limit, call)
            .await
            .map_err(|_| CacheError::Deadline(limit))?,
        None => call.await,
    }
}

impl Cache {
    /// A cache over `tiered` with Django's defaults (300 s, no prefix, version 1).
    pub fn new(alias: impl Into<String>, tiered: Tiered) -> Self {
        Self {
            inner: Arc::new(CacheInner {
                alias: alias.into(),
                tiered,
                timeout: Timeout::default(),
                key_prefix: String::new(),
                version: 1,
                key_function: None,
                flights: SingleFlight::new(),
                #[cfg(feature = "redis")]
                redis: None,
                http: cachette_settings::HttpSettings::default(),
                fleet: None,
            }),
        }
    }

    /// This cache with `get_or_set` coalesced across every node on its
    /// shared tier (the Redis master): one producer call per key for the
    /// fleet, the other nodes read its stored value. `lease` is the fill
    /// lease ([`DEFAULT_FILL_LEASE`](cachette_core::DEFAULT_FILL_LEASE) is
    /// the settings' default). Without a shared tier (or with it down),
    /// calls coalesce per process, as without this.
    pub fn with_fleet_coalescing(self, lease: Duration) -> Self {
        let mut inner = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            Err(shared) => CacheInner {
                alias: shared.alias.clone(),
                tiered: shared.tiered.clone(),
                timeout: shared.timeout,
                key_prefix: shared.key_prefix.clone(),
                version: shared.version,
                key_function: shared.key_function.clone(),
                flights: SingleFlight::new(),
                #[cfg(feature = "redis")]
                redis: shared.redis.clone(),
                http: shared.http.clone(),
                fleet: shared.fleet,
            },
        };
        inner.fleet = Some(data_lease_options(lease));
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The alias.
    pub fn alias(&self) -> &str {
        &self.inner.alias
    }

    /// The tiers.
    pub fn tiered(&self) -> &Tiered {
        &self.inner.tiered
    }

    /// The default lifetime.
    pub fn default_timeout(&self) -> Timeout {
        self.inner.timeout
    }

    /// The default version.
    pub fn version(&self) -> i64 {
        self.inner.version
    }

    /// The Redis side of this cache, if it has Redis tiers.
    #[cfg(feature = "redis")]
    pub fn redis(&self) -> Option<&cachette_redis::RedisTiers> {
        self.inner.redis.as_ref()
    }

    /// Counters, breakers and latencies of every tier.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.tiered.snapshot()
    }

    /// The stored key for `key` at `version` (default: the cache's).
    pub fn make_key(&self, key: &str, version: Option<i64>) -> Result<CacheKey, CacheError> {
        let version = version.unwrap_or(self.inner.version);
        let raw = match &self.inner.key_function {
            Some(function) => {
                escape_key(&function(key, &self.inner.key_prefix, version)).into_owned()
            }
            None => default_key(&escape_key(key), &self.inner.key_prefix, version),
        };
        CacheKey::new(raw)
    }

    pub(crate) fn meta(&self, opts: &Opts) -> Option<EntryMeta> {
        let now = SystemTime::now();
        let meta = match opts.timeout.unwrap_or(self.inner.timeout) {
            Timeout::After(ttl) if ttl.is_zero() => return None,
            Timeout::After(ttl) => EntryMeta::new(now, ttl),
            Timeout::Never => EntryMeta::persistent(now),
        };
        Some(meta.with_tags(opts.tags.iter().cloned()))
    }

    pub(crate) async fn entry(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        let hit = self.inner.tiered.get(key).await?;
        let now = SystemTime::now();
        // A value's lifetime is its keep_until; a tier that kept it longer
        // (clock skew, a promoted copy) does not make it live again.
        (!hit.entry.remaining_ttl(now).is_zero()).then_some(hit.entry)
    }

    /// [`Cache::entry`] for a read the caller asked for, counted as a hit
    /// or a miss in the cache's stats.
    pub(crate) async fn lookup(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        let found = self.entry(key).await;
        let counters = self.inner.tiered.counters();
        let counter = if found.is_some() {
            &counters.hits
        } else {
            &counters.misses
        };
        counter.incr();
        found
    }

    pub(crate) async fn store(&self, key: &CacheKey, payload: Payload, opts: &Opts) {
        match self.meta(opts) {
            Some(meta) => {
                self.inner.tiered.counters().stored.incr();
                let report = self
                    .inner
                    .tiered
                    .set(key, Arc::new(Entry::new(payload, meta)))
                    .await;
                if !report.is_complete() {
                    tracing::debug!(cache = %self.inner.alias, %key, failed = ?report.failed, "value not stored in every tier");
                }
            }
            // Django: timeout 0 stores nothing (and an older value goes).
            None => {
                let _ = self.inner.tiered.delete(key).await;
            }
        }
    }

    /// The value of `key`, or `None` (missing, expired, or stored with
    /// another shape).
    pub async fn get<T: DeserializeOwned>(
        &self,
        key: &str,
        opts: impl Into<Opts>,
    ) -> Result<Option<T>, CacheError> {
        let opts = opts.into();
        within(opts.deadline, async {
            let key = self.make_key(key, opts.version)?;
            Ok(self.lookup(&key).await.and_then(|e| decode(e.payload())))
        })
        .await
    }

    /// The raw bytes stored with [`Cache::set_bytes`].
    pub async fn get_bytes(
        &self,
        key: &str,
        opts: impl Into<Opts>,
    ) -> Result<Option<Bytes>, CacheError> {
        let opts = opts.into();
        within(opts.deadline, async {
            let key = self.make_key(key, opts.version)?;
            Ok(self.lookup(&key).await.and_then(|e| match e.payload() {
                Payload::Value(bytes) => Some(bytes.clone()),
                _ => None,
            }))
        })
        .await
    }

    /// Stores `value` under `key` (a zero timeout stores nothing and removes
    /// an older value).
    pub async fn set<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        opts: impl Into<Opts>,
    ) -> Result<(), CacheError> {
        let opts = opts.into();
        within(opts.deadline, async {
            let key = self.make_key(key, opts.version)?;
            self.store(&key, encode(value)?, &opts).await;
            Ok(())
        })
        .await
    }

    /// Stores raw bytes under `key`.
    pub async fn set_bytes(
        &self,
        key: &str,
        value: Bytes,
        opts: impl Into<Opts>,
    ) -> Result<(), CacheError> {
        let opts = opts.into();
        within(opts.deadline, async {
            let key = self.make_key(key, opts.version)?;
            self.store(&key, Payload::Value(value), &opts).await;
            Ok(())
        })
        .await
    }

    /// Stores `value` only if `key` holds nothing; returns whether it did.
    /// Atomic on the last tier (Redis `SET NX` on the master).
    pub async fn add<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        opts: impl Into<Opts>,
    ) -> Result<bool, CacheError> {
        let opts = opts.into();
        within(opts.deadline, async {
            let key = self.make_key(key, opts.version)?;
            let payload = encode(value)?;
            if self.inner.tiered.tier_names().next().is_none() {
                return Ok(true); // Django's dummy cache "adds" everything
            }
            let Some(meta) = self.meta(&opts) else {
                // Django: timeout 0 stores nothing (it expires at once), and
                // the add succeeds only if the key was absent.
                return Ok(self.entry(&key).await.is_none());
            };
            self.inner
                .tiered
                .add(&key, Arc::new(Entry::new(payload, meta)))
                .await
        })
        .await
    }

    /// Removes `key`; returns whether it held something.
    pub async fn delete(&self, key: &str, opts: impl Into<Opts>) -> Result<bool, CacheError> {
        let opts = opts.into();
        within(opts.deadline, async {
            let key = self.make_key(key, opts.version)?;
            let existed = self.entry(&key).await.is_some();
            let _ = self.inner.tiered.delete(&key).await;
            Ok(existed)
        })
        .await
    }

    /// The values of the keys that hold one, by key.
    pub async fn get_many<T: DeserializeOwned>(
        &self,
        keys: impl IntoIterator<Item = impl AsRef<str>>,
        opts: impl Into<Opts>,
    ) -> Result<HashMap<String, T>, CacheError> {
        let opts = opts.into();
        within(opts.deadline, async {
            let mut out = HashMap::new();
            for key in keys {
                let key = key.as_ref();
                let stored = self.make_key(key, opts.version)?;
                if let Some(value) = self.lookup(&stored).await.and_then(|e| decode(e.payload())) {
                    out.insert(key.to_owned(), value);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Stores every pair. Returns the keys that could not be stored (invalid
    /// or unserializable), as Django does.
    pub async fn set_many<'a, T: Serialize + 'a>(
        &self,
        values: impl IntoIterator<Item = (&'a str, &'a T)>,
        opts: impl Into<Opts>,
    ) -> Result<Vec<String>, CacheError> {
        let opts = opts.into();
        within(opts.deadline, async {
            let mut failed = Vec::new();
            for (key, value) in values {
                match (self.make_key(key, opts.version), encode(value)) {
                    (Ok(stored), Ok(payload)) => self.store(&stored, payload, &opts).await,
                    _ => failed.push(key.to_owned()),
                }
            }
            Ok(failed)
        })
        .await
    }

    /// Removes every key.
    pub async fn delete_many(
        &self,
        keys: impl IntoIterator<Item = impl AsRef<str>>,
        opts: impl Into<Opts>,
    ) -> Result<(), CacheError> {
        let opts = opts.into();
        within(opts.deadline, async {
            for key in keys {
                let key = self.make_key(key.as_ref(), opts.version)?;
                let _ = self.inner.tiered.delete(&key).await;
            }
            Ok(())
        })
        .await
    }

    /// The value of `key`; if missing, runs `producer`, stores its value and
    /// returns it. Concurrent callers for one key run the producer once.
    pub async fn get_or_set<T, F, Fut>(
        &self,
        key: &str,
        producer: F,
        opts: impl Into<Opts>,
    ) -> Result<T, CacheError>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let opts = opts.into();
        within(opts.deadline, async {
            let stored = self.make_key(key, opts.version)?;
            if let Some(value) = self.lookup(&stored).await.and_then(|e| decode(e.payload())) {
                return Ok(value);
            }
            let mut produced: Option<T> = None;
            let (payload, _) = self
                .inner
                .flights
                .run(&stored, || async {
                    let tiered = &self.inner.tiered;
                    let mut lease = None;
                    if let Some(options) = self.inner.fleet {
                        match tiered.fleet_fill(&stored, options).await {
                            FleetFill::Lead(held) => lease = Some(held),
                            FleetFill::Filled => {
                                if let Some(kept) = tiered.get_shared(&stored).await {
                                    return Some(kept.payload().clone());
                                }
                            }
                            // Not shared, late, or no lease: produce here.
                            _ => {}
                        }
                    }
                    let value = match &mut lease {
                        Some(lease) => lease.hold(producer()).await,
                        None => producer().await,
                    };
                    let payload = encode(&value).ok();
                    // As Django: `add`, then read back. When two callers (or
                    // nodes) miss at once, the first writer wins and every
                    // caller returns the stored value.
                    let mut kept = None;
                    if let (Some(payload), Some(meta)) = (&payload, self.meta(&opts)) {
                        if tiered.tier_names().next().is_some() {
                            let entry = Arc::new(Entry::new(payload.clone(), meta));
                            if matches!(tiered.add(&stored, entry).await, Ok(true)) {
                                tiered.counters().stored.incr();
                            }
                            kept = self.entry(&stored).await;
                        }
                    }
                    if let Some(lease) = lease {
                        lease
                            .end(if kept.is_some() {
                                LeaseEnd::Filled
                            } else {
                                LeaseEnd::Unstorable
                            })
                            .await;
                    }
                    if let Some(kept) = kept {
                        return Some(kept.payload().clone());
                    }
                    produced = Some(value);
                    payload
                })
                .await;
            if let Some(value) = produced {
                return Ok(value);
            }
            payload.as_ref().and_then(decode).ok_or_else(|| {
                CacheError::Serialize(format!("the value of `{key}` could not be shared"))
            })
        })
        .await
    }

    /// Sets a new lifetime for `key` (default: the cache's timeout); returns
    /// whether the key exists.
    pub async fn touch(&self, key: &str, opts: impl Into<Opts>) -> Result<bool, CacheError> {
        let opts = opts.into();
        within(opts.deadline, async {
            let stored = self.make_key(key, opts.version)?;
            if self.inner.tiered.tier_names().next().is_none() {
                return Ok(false); // a dummy cache holds nothing
            }
            match self.meta(&opts) {
                // On the shared tier, atomically: never this node's copy
                // written back over another node's newer value.
                Some(meta) => self.inner.tiered.touch(&stored, meta).await,
                None => {
                    let existed = self.entry(&stored).await.is_some();
                    let _ = self.inner.tiered.delete(&stored).await;
                    Ok(existed)
                }
            }
        })
        .await
    }

    /// Adds `delta` to the integer under `key` and returns the new value;
    /// atomic on the last tier (Redis `INCRBY` on the master). A missing key
    /// is [`CacheError::KeyNotFound`], as in Django.
    pub async fn incr(
        &self,
        key: &str,
        delta: i64,
        opts: impl Into<Opts>,
    ) -> Result<i64, CacheError> {
        let opts = opts.into();
        within(opts.deadline, async {
            let stored = self.make_key(key, opts.version)?;
            if self.inner.tiered.tier_names().next().is_none() {
                return Err(CacheError::KeyNotFound(key.to_owned()));
            }
            self.inner
                .tiered
                .incr(&stored, delta)
                .await
                // Errors name the caller's key, as `KeyNotFound` does.
                .map_err(|e| match e {
                    CacheError::KeyNotFound(_) => CacheError::KeyNotFound(key.to_owned()),
                    CacheError::NotACounter(_) => CacheError::NotACounter(key.to_owned()),
                    CacheError::Overflow(_) => CacheError::Overflow(key.to_owned()),
                    other => other,
                })
        })
        .await
    }

    /// Subtracts `delta` (see [`Cache::incr`]).
    pub async fn decr(
        &self,
        key: &str,
        delta: i64,
        opts: impl Into<Opts>,
    ) -> Result<i64, CacheError> {
        let delta = delta
            .checked_neg()
            .ok_or_else(|| CacheError::Overflow(key.to_owned()))?;
        self.incr(key, delta, opts).await
    }

    /// Whether `key` holds a value.
    pub async fn has_key(&self, key: &str, opts: impl Into<Opts>) -> Result<bool, CacheError> {
        let opts = opts.into();
        within(opts.deadline, async {
            let stored = self.make_key(key, opts.version)?;
            Ok(self.entry(&stored).await.is_some())
        })
        .await
    }

    /// The remaining lifetime of `key`, or `None` if it is missing.
    pub async fn ttl(&self, key: &str, opts: impl Into<Opts>) -> Result<Option<Ttl>, CacheError> {
        let opts = opts.into();
        within(opts.deadline, async {
            let stored = self.make_key(key, opts.version)?;
            Ok(self.entry(&stored).await.map(|entry| {
                if entry.meta().persistent {
                    Ttl::Never
                } else {
                    Ttl::Remaining(entry.remaining_ttl(SystemTime::now()))
                }
            }))
        })
        .await
    }

    /// Makes `key` never expire; returns whether it exists.
    pub async fn persist(&self, key: &str, opts: impl Into<Opts>) -> Result<bool, CacheError> {
        let opts = opts.into().timeout(Timeout::Never);
        self.touch(key, opts).await
    }

    /// Removes this cache's keys at its version (default) or `opts.version`:
    /// never other caches' data, never other data in Redis. With a custom
    /// key function, removes the cache's whole namespace.
    pub async fn clear(&self, opts: impl Into<Opts>) -> Result<(), CacheError> {
        let opts = opts.into();
        within(opts.deadline, async {
            let report = if self.inner.key_function.is_some() {
                self.inner.tiered.clear().await
            } else {
                let version = opts.version.unwrap_or(self.inner.version);
                let prefix = default_key("", &self.inner.key_prefix, version);
                self.inner.tiered.invalidate_prefix(&prefix).await
            };
            log_incomplete(&self.inner.alias, "clear", &report);
            Ok(())
        })
        .await
    }

    /// Moves `key` from its version to `version + delta` and returns the new
    /// version; a missing key is [`CacheError::KeyNotFound`].
    pub async fn incr_version(
        &self,
        key: &str,
        delta: i64,
        opts: impl Into<Opts>,
    ) -> Result<i64, CacheError> {
        let opts = opts.into();
        within(opts.deadline, async {
            let version = opts.version.unwrap_or(self.inner.version);
            let new_version = version
                .checked_add(delta)
                .ok_or_else(|| CacheError::Overflow(key.to_owned()))?;
            let old_key = self.make_key(key, Some(version))?;
            let new_key = self.make_key(key, Some(new_version))?;
            // The shared value, not this node's possibly stale copy.
            let entry = self
                .inner
                .tiered
                .get_authoritative(&old_key)
                .await?
                .ok_or_else(|| CacheError::KeyNotFound(key.to_owned()))?;
            // A new write of the value: stamped now, so that it orders after
            // whatever purge or delete came before (an old stamp would be
            // refused, and the value lost with the old key).
            let moved = Arc::new(
                entry.with_meta(
                    entry
                        .meta()
                        .clone()
                        .written_at(std::time::SystemTime::now()),
                ),
            );
            let _ = self.inner.tiered.set(&new_key, moved).await;
            let _ = self.inner.tiered.delete(&old_key).await;
            Ok(new_version)
        })
        .await
    }

    /// Moves `key` to `version - delta` (see [`Cache::incr_version`]).
    pub async fn decr_version(
        &self,
        key: &str,
        delta: i64,
        opts: impl Into<Opts>,
    ) -> Result<i64, CacheError> {
        let delta = delta
            .checked_neg()
            .ok_or_else(|| CacheError::Overflow(key.to_owned()))?;
        self.incr_version(key, delta, opts).await
    }

    /// Removes every key (at the version) matching the Redis-style glob
    /// `pattern` (`user:*`), on every tier (Redis: `SCAN` + `UNLINK`).
    pub async fn delete_pattern(
        &self,
        pattern: &str,
        opts: impl Into<Opts>,
    ) -> Result<(), CacheError> {
        let opts = opts.into();
        within(opts.deadline, async {
            let version = opts.version.unwrap_or(self.inner.version);
            // Patterns are escaped as keys are, so they match them.
            let full = match &self.inner.key_function {
                Some(function) => {
                    escape_key(&function(pattern, &self.inner.key_prefix, version)).into_owned()
                }
                None => format!(
                    "{}{}",
                    escape_glob(&default_key("", &self.inner.key_prefix, version)),
                    escape_key(pattern)
                ),
            };
            let report = self.inner.tiered.invalidate_pattern(&full).await;
            log_incomplete(&self.inner.alias, "delete_pattern", &report);
            Ok(())
        })
        .await
    }

    /// Removes every value stored with `tag`, on every tier and every node.
    pub async fn purge_tag(&self, tag: &str) -> Result<(), CacheError> {
        let report = self.inner.tiered.invalidate_tag(tag).await;
        log_incomplete(&self.inner.alias, "purge_tag", &report);
        Ok(())
    }
}

fn log_incomplete(alias: &str, what: &str, report: &cachette_core::WriteReport) {
    if !report.is_complete() {
        tracing::warn!(cache = alias, what, failed = ?report.failed, "invalidation did not reach every tier");
    }
}
