//! [`Tiered`]: an ordered list of tiers read in order, with promotion, per-call
//! timeouts and a circuit breaker per tier.

use std::{
    fmt,
    future::Future,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use crate::{
    Admission, Backend, BreakerConfig, BreakerState, CacheCounters, CacheError, CacheKey,
    CircuitBreaker, Entry, EntryMeta, Journal, JournalOp, ProbeGuard, Recorded, StatsSnapshot,
    TierInfo, TierSnapshot, TierStats,
};

/// How [`Tiered`] wraps the calls to one tier.
#[derive(Debug, Clone)]
pub struct TierOptions {
    /// Every call to the tier is abandoned after this long (`None`: no timeout,
    /// for tiers that cannot block, like the in-process memory tier).
    pub timeout: Option<Duration>,
    /// When the tier is skipped after failures.
    pub breaker: BreakerConfig,
    /// Where writes and invalidations this tier could not take are recorded
    /// for replay (the Redis master's durable journal).
    pub journal: Option<Arc<dyn Journal>>,
}

impl TierOptions {
    /// Options with the given timeout, the default breaker and no journal.
    pub fn with_timeout(timeout: Option<Duration>) -> Self {
        Self {
            timeout,
            breaker: BreakerConfig::default(),
            journal: None,
        }
    }

    /// Sets the breaker configuration.
    pub fn breaker(mut self, breaker: BreakerConfig) -> Self {
        self.breaker = breaker;
        self
    }

    /// Records what this tier could not take in `journal`.
    pub fn journal(mut self, journal: Arc<dyn Journal>) -> Self {
        self.journal = Some(journal);
        self
    }
}

struct Tier {
    name: Arc<str>,
    /// The same name, interned: what a [`Hit`] carries.
    static_name: &'static str,
    backend: Arc<dyn Backend>,
    options: TierOptions,
    breaker: CircuitBreaker,
    stats: TierStats,
}

impl fmt::Debug for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tier")
            .field("name", &self.name)
            .field("backend", &self.backend)
            .field("options", &self.options)
            .field("breaker", &self.breaker.state())
            .finish()
    }
}

#[derive(Debug)]
struct Inner {
    name: String,
    tiers: Vec<Tier>,
    /// The tiers' journals, for the read path's check of pending
    /// invalidations (empty for most caches: then a hit checks nothing).
    journals: Vec<Arc<dyn Journal>>,
    counters: CacheCounters,
}

/// A named cache made of tiers, read in order: the first hit wins and is
/// copied into the tiers above it with its *remaining* lifetime.
///
/// Every tier call has a timeout and goes through the tier's circuit breaker:
/// a failing tier makes a call slower (then skipped), never failed. `Tiered` is
/// cheap to clone (an `Arc`).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// # use std::{sync::Arc, time::{Duration, SystemTime}};
/// # use bytes::Bytes;
/// # use cachette_core::*;
/// # #[derive(Debug, Default)] struct Map(std::sync::Mutex<std::collections::HashMap<CacheKey, Arc<Entry>>>);
/// # #[async_trait::async_trait] impl Backend for Map {
/// #   fn kind(&self) -> &'static str { "map" }
/// #   async fn get(&self, k: &CacheKey) -> Result<Option<Arc<Entry>>, CacheError> { Ok(self.0.lock().unwrap().get(k).cloned()) }
/// #   async fn set(&self, k: &CacheKey, e: Arc<Entry>, _: Duration) -> Result<(), CacheError> { self.0.lock().unwrap().insert(k.clone(), e); Ok(()) }
/// #   async fn delete(&self, k: &CacheKey) -> Result<bool, CacheError> { Ok(self.0.lock().unwrap().remove(k).is_some()) }
/// #   async fn invalidate_prefix(&self, _: &str) -> Result<(), CacheError> { Ok(()) }
/// #   async fn invalidate_tag(&self, _: &str) -> Result<(), CacheError> { Ok(()) }
/// #   async fn clear(&self) -> Result<(), CacheError> { Ok(()) }
/// #   async fn health(&self) -> Result<(), CacheError> { Ok(()) }
/// # }
/// let upper = Arc::new(Map::default());
/// let lower = Arc::new(Map::default());
/// let cache = Tiered::builder("default")
///     .tier_arc("upper", upper.clone(), TierOptions::with_timeout(None))
///     .tier_arc("lower", lower.clone(), TierOptions::with_timeout(Some(Duration::from_millis(50))))
///     .build();
/// let key = CacheKey::new("k").unwrap();
/// let entry = Entry::value(Bytes::from_static(b"v"), EntryMeta::new(SystemTime::now(), Duration::from_secs(60)));
/// lower.set(&key, Arc::new(entry), Duration::from_secs(60)).await.unwrap();
///
/// let hit = cache.get(&key).await.unwrap();
/// assert_eq!(hit.tier_name(), "lower");
/// // The hit was promoted: the next read is answered by the upper tier.
/// assert_eq!(cache.get(&key).await.unwrap().tier_name(), "upper");
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Tiered {
    inner: Arc<Inner>,
}

/// Builds a [`Tiered`] cache.
#[derive(Debug)]
pub struct TieredBuilder {
    name: String,
    tiers: Vec<Tier>,
}

impl TieredBuilder {
    /// Appends a tier (read after the ones added before it) with the backend's
    /// suggested options: no timeout for `memory`, 250 ms for others.
    pub fn tier(self, name: impl Into<String>, backend: impl Backend) -> Self {
        let options = if backend.kind() == "memory" {
            TierOptions::with_timeout(None)
        } else {
            TierOptions::with_timeout(Some(Duration::from_millis(250)))
        };
        self.tier_arc(name, Arc::new(backend), options)
    }

    /// Appends a shared backend as a tier with explicit options.
    pub fn tier_arc(
        mut self,
        name: impl Into<String>,
        backend: Arc<dyn Backend>,
        options: TierOptions,
    ) -> Self {
        let name: String = name.into();
        self.tiers.push(Tier {
            static_name: intern(&name),
            name: Arc::from(name),
            backend,
            breaker: CircuitBreaker::new(options.breaker),
            options,
            stats: TierStats::default(),
        });
        self
    }

    /// Finishes the cache.
    pub fn build(self) -> Tiered {
        let journals = self
            .tiers
            .iter()
            .filter_map(|t| t.options.journal.clone())
            .collect();
        Tiered {
            inner: Arc::new(Inner {
                name: self.name,
                tiers: self.tiers,
                journals,
                counters: CacheCounters::default(),
            }),
        }
    }
}

/// Tier names live as long as the program: a [`Hit`] then names its tier
/// without a reference count that every core would touch on every hit.
/// Names are few and repeat (`memory`, `local`, `master`), so they are
/// interned rather than leaked one per cache.
fn intern(name: &str) -> &'static str {
    static NAMES: std::sync::OnceLock<std::sync::Mutex<std::collections::BTreeSet<&'static str>>> =
        std::sync::OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(known) = names.get(name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.into());
    names.insert(leaked);
    leaked
}

/// An entry found by [`Tiered::get`], and where.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The entry.
    pub entry: Arc<Entry>,
    tier: usize,
    tier_name: &'static str,
}

/// What [`Tiered::get_now_if`] found in the first tier.
#[derive(Debug)]
pub enum FirstTier {
    /// An entry the caller accepted (counted as a first-tier hit).
    Hit(Hit),
    /// Nothing for the key (counted as a first-tier miss).
    Missed,
    /// No answer without waiting, an entry the caller did not accept, or a
    /// pending journal entry for the key: nothing counted.
    Declined,
}

impl Hit {
    /// The index of the tier that answered (0 = first).
    pub fn tier(&self) -> usize {
        self.tier
    }

    /// The name of the tier that answered.
    pub fn tier_name(&self) -> &'static str {
        self.tier_name
    }
}

/// A tier that did not take a write or an invalidation.
#[derive(Debug)]
pub struct TierFailure {
    /// The tier's name.
    pub tier: Arc<str>,
    /// Why.
    pub error: CacheError,
}

/// One tier's answer to [`Tiered::probe`].
#[derive(Debug)]
#[non_exhaustive]
pub struct TierProbe {
    /// The tier's name.
    pub name: Arc<str>,
    /// Whether it answered its health check.
    pub health: Result<(), CacheError>,
    /// What it says about itself (usage, server, role).
    pub info: TierInfo,
}

/// What happened to a write or an invalidation, tier by tier.
#[derive(Debug, Default)]
#[must_use = "a report says which tiers missed a write"]
pub struct WriteReport {
    /// Tiers that took it.
    pub succeeded: Vec<Arc<str>>,
    /// Tiers that did not take it directly but recorded it in their journal
    /// for replay.
    pub journaled: Vec<Arc<str>>,
    /// Tiers that refused a write because they hold newer data for the key
    /// (a newer value, or a later delete or purge). Nothing is lost: the
    /// newer state stands.
    pub superseded: Vec<Arc<str>>,
    /// Tiers that did not take it (and have no journal, or the journal failed).
    pub failed: Vec<TierFailure>,
}

impl WriteReport {
    /// Whether every tier took it or journaled it: nothing is lost.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty()
    }

    /// Folds in the report of a further op of the same logical change (a
    /// page and its `Vary` variants): per tier, the worse outcome stands
    /// (failed over journaled over succeeded).
    pub fn merge(&mut self, other: WriteReport) {
        for failure in other.failed {
            if !self.failed.iter().any(|f| f.tier == failure.tier) {
                self.failed.push(failure);
            }
        }
        for tier in other.journaled {
            if !self.journaled.contains(&tier) {
                self.journaled.push(tier);
            }
        }
        for tier in other.superseded {
            if !self.superseded.contains(&tier) {
                self.superseded.push(tier);
            }
        }
        for tier in other.succeeded {
            if !self.succeeded.contains(&tier) {
                self.succeeded.push(tier);
            }
        }
        let failed: Vec<Arc<str>> = self.failed.iter().map(|f| f.tier.clone()).collect();
        self.journaled.retain(|t| !failed.contains(t));
        let journaled = &self.journaled;
        self.superseded
            .retain(|t| !failed.contains(t) && !journaled.contains(t));
        let superseded = &self.superseded;
        self.succeeded
            .retain(|t| !failed.contains(t) && !journaled.contains(t) && !superseded.contains(t));
    }
}

impl Tiered {
    /// Starts a cache named `name` (the name appears in stats and logs).
    pub fn builder(name: impl Into<String>) -> TieredBuilder {
        TieredBuilder {
            name: name.into(),
            tiers: Vec::new(),
        }
    }

    /// The cache's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The tiers' names, in read order.
    pub fn tier_names(&self) -> impl Iterator<Item = &str> {
        self.inner.tiers.iter().map(|t| &*t.name)
    }

    /// Cache-level counters, for callers (the HTTP layer, the data API) to count
    /// hits, misses, stale serves and the like.
    pub fn counters(&self) -> &CacheCounters {
        &self.inner.counters
    }

    /// Reads every counter, breaker and histogram.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            name: self.inner.name.clone(),
            cache: self.inner.counters.snapshot(),
            tiers: self
                .inner
                .tiers
                .iter()
                .map(|t| TierSnapshot {
                    name: t.name.to_string(),
                    kind: t.backend.kind(),
                    breaker: t.breaker.state(),
                    counters: t.stats.counters.snapshot(),
                    latency: t.stats.latency.snapshot(),
                })
                .collect(),
        }
    }

    /// The state of each tier's breaker, in read order.
    pub fn breaker_states(&self) -> Vec<(&str, BreakerState)> {
        self.inner
            .tiers
            .iter()
            .map(|t| (&*t.name, t.breaker.state()))
            .collect()
    }

    /// Runs one call against a tier: breaker check (unless `force`), timeout,
    /// latency, counters.
    async fn call<T>(
        tier: &Tier,
        force: bool,
        op: impl Future<Output = Result<T, CacheError>>,
    ) -> Result<T, CacheError> {
        let admission = if force {
            Admission::Pass
        } else {
            tier.breaker.admit()
        };
        if admission == Admission::Deny {
            tier.stats.counters.skipped.incr();
            return Err(CacheError::CircuitOpen {
                tier: tier.name.to_string(),
            });
        }
        // If this call is the breaker's probe and the caller drops it midway,
        // the guard hands the probe to the next caller.
        let probe = ProbeGuard::new(&tier.breaker, admission);
        let started = Instant::now();
        let result = match tier.options.timeout {
            Some(limit) => match tokio::time::timeout(limit, op).await {
                Ok(result) => result,
                Err(_) => {
                    tier.stats.counters.timeouts.incr();
                    Err(CacheError::Timeout {
                        tier: tier.name.to_string(),
                        timeout: limit,
                    })
                }
            },
            None => op.await,
        };
        tier.stats.latency.record(started.elapsed());
        let result = Self::account(tier, result);
        probe.disarm();
        result
    }

    /// Counts a call's outcome and feeds the tier's breaker.
    fn account<T>(tier: &Tier, result: Result<T, CacheError>) -> Result<T, CacheError> {
        match &result {
            // A refusal is an answer: the tier is healthy.
            Ok(_) | Err(CacheError::Superseded { .. }) => tier.breaker.record_success(),
            // Unreadable bytes are a data problem, not a sick tier: the tier
            // answered.
            Err(CacheError::Decode(_)) => {
                tier.stats.counters.errors.incr();
                tier.breaker.record_success();
            }
            Err(error) => {
                tier.stats.counters.errors.incr();
                if tier.breaker.record_failure() {
                    tracing::warn!(cache = %tier.name, %error, "circuit breaker opened: tier skipped for a while");
                }
            }
        }
        result
    }

    /// A hit in the first tier for the key whose text is `key`, answered
    /// without waiting, when that tier is in-process (it answers without a
    /// future: see [`Backend::get_now_str`](crate::Backend::get_now_str))
    /// and `accept` takes the entry; counted as [`get`](Self::get) counts a
    /// first-tier hit. No [`CacheKey`] is built for it.
    ///
    /// [`FirstTier::Missed`]: the first tier holds nothing for it (counted
    /// as a first-tier miss; go on with [`get_below_first`](Self::get_below_first)).
    /// [`FirstTier::Declined`] is not a miss, and nothing is counted for it:
    /// the caller goes on with [`get`](Self::get), which asks the first tier
    /// again. Why:
    /// a caller that can answer a hit at once (the HTTP layer's fresh hits)
    /// skips the state machine of an asynchronous lookup, and an entry it
    /// would not serve as it is (a `Vary` marker, a stale entry) is left to
    /// the full path with nothing counted twice.
    pub fn get_now_if(&self, key: &str, accept: impl FnOnce(&Entry) -> bool) -> FirstTier {
        let Some(tier) = self.inner.tiers.first() else {
            return FirstTier::Declined;
        };
        if tier.options.timeout.is_some() {
            return FirstTier::Declined;
        }
        let entry = match tier.backend.get_now_str(key) {
            Some(Ok(Some(entry))) => entry,
            Some(Ok(None)) => {
                // Counted as `get` counts a first-tier miss.
                tier.breaker.record_success();
                tier.stats.counters.misses.incr();
                return FirstTier::Missed;
            }
            Some(Err(_)) | None => return FirstTier::Declined,
        };
        // The journals' checks take a key; one is built only while a
        // journal holds something.
        let pending = tier.options.journal.as_ref().is_some_and(|j| j.depth() > 0)
            || self.inner.journals.iter().any(|j| j.depth() > 0);
        if pending {
            let Ok(owned) = CacheKey::new(key) else {
                return FirstTier::Declined;
            };
            if Self::behind_own_journal(tier, &owned) || self.hidden_by_journal(&owned, &entry) {
                return FirstTier::Declined;
            }
        }
        if !accept(&entry) {
            return FirstTier::Declined;
        }
        tier.breaker.record_success();
        tier.stats.counters.hits.incr();
        FirstTier::Hit(Hit {
            entry,
            tier: 0,
            tier_name: tier.static_name,
        })
    }

    /// [`get`](Self::get) past the first tier, for a caller that was just
    /// told by [`get_now_if`](Self::get_now_if) that the first tier holds
    /// nothing for `key` (and counted so): a hit below is still copied into
    /// the first tier.
    pub async fn get_below_first(&self, key: &CacheKey) -> Option<Hit> {
        self.get_from(key, 1).await
    }

    /// Reads `key` through the tiers in order. The first entry found wins and is
    /// copied into every tier above it with its remaining lifetime. Errors,
    /// timeouts, open breakers and unreadable entries count as misses.
    pub async fn get(&self, key: &CacheKey) -> Option<Hit> {
        self.get_from(key, 0).await
    }

    /// [`get`](Self::get) from the tier at `start` down.
    async fn get_from(&self, key: &CacheKey, start: usize) -> Option<Hit> {
        for (index, tier) in self.inner.tiers.iter().enumerate().skip(start) {
            // An in-process first tier answers without a future or a timer
            // (its calls are not timed: they cannot block).
            let now = match (index, &tier.options.timeout) {
                (0, None) => tier.backend.get_now(key),
                _ => None,
            };
            let result = match now {
                Some(result) => Self::account(tier, result),
                None => Self::call(tier, false, tier.backend.get(key)).await,
            };
            match result {
                Ok(Some(entry)) => {
                    // The first tier's own expiry is trusted (the hit path stays
                    // free of clock reads); a lower hit needs its remaining
                    // lifetime anyway, to promote it.
                    let ttl = if index == 0 {
                        Duration::MAX
                    } else {
                        entry.remaining_ttl(SystemTime::now())
                    };
                    if ttl.is_zero() {
                        tier.stats.counters.misses.incr();
                        continue;
                    }
                    if Self::behind_own_journal(tier, key) {
                        // This node wrote the key since; the write waits in
                        // this tier's journal, so what the tier holds is
                        // older than what this node has written.
                        tier.stats.counters.misses.incr();
                        continue;
                    }
                    if self.hidden_by_journal(key, &entry) {
                        // Deleted by this node, the delete still queued for a
                        // lower tier: a miss in every tier, and copies read
                        // back into the tiers above since are dropped.
                        tier.stats.counters.misses.incr();
                        for upper in &self.inner.tiers[..=index] {
                            if upper.options.journal.is_none() {
                                let _ = Self::call(upper, false, upper.backend.delete(key)).await;
                            }
                        }
                        return None;
                    }
                    tier.stats.counters.hits.incr();
                    for upper in &self.inner.tiers[..index] {
                        let promoted =
                            Self::call(upper, false, upper.backend.set(key, entry.clone(), ttl))
                                .await;
                        if promoted.is_ok() {
                            upper.stats.counters.promotions.incr();
                        }
                    }
                    return Some(Hit {
                        entry,
                        tier: index,
                        tier_name: tier.static_name,
                    });
                }
                Ok(None) => {
                    tier.stats.counters.misses.incr();
                }
                Err(CacheError::Decode(error)) => {
                    tracing::debug!(%key, tier = %tier.name, %error, "unreadable entry treated as a miss and removed");
                    // Best effort: a corrupt entry would otherwise fail every read until it expires.
                    let _ = Self::call(tier, false, tier.backend.delete(key)).await;
                }
                Err(error) => {
                    tracing::debug!(%key, tier = %tier.name, %error, "tier read failed; trying the next tier");
                }
            }
        }
        None
    }

    /// Whether `tier` has a journal holding a write of `key` not applied yet.
    fn behind_own_journal(tier: &Tier, key: &CacheKey) -> bool {
        tier.options
            .journal
            .as_ref()
            .is_some_and(|j| j.depth() > 0 && j.has_pending_write(key))
    }

    /// Whether a pending invalidation in a tier's journal covers `key`.
    fn hidden_by_journal(&self, key: &CacheKey, entry: &Entry) -> bool {
        self.inner
            .journals
            .iter()
            .any(|j| j.depth() > 0 && j.hides(key, entry))
    }

    /// Writes `entry` to every tier in order, for its remaining lifetime
    /// (`keep_until`). An entry whose lifetime is over is not written.
    pub async fn set(&self, key: &CacheKey, entry: Arc<Entry>) -> WriteReport {
        let ttl = entry.remaining_ttl(SystemTime::now());
        self.set_with_ttl(key, entry, ttl).await
    }

    /// Writes `entry` to every tier in order for `ttl`.
    pub async fn set_with_ttl(
        &self,
        key: &CacheKey,
        entry: Arc<Entry>,
        ttl: Duration,
    ) -> WriteReport {
        let mut report = WriteReport::default();
        if ttl.is_zero() {
            return report;
        }
        for tier in &self.inner.tiers {
            let op = || JournalOp::Set {
                key: key.clone(),
                entry: entry.clone(),
            };
            if Self::journal_first(tier, op, &mut report).await {
                continue;
            }
            match Self::call(tier, false, tier.backend.set(key, entry.clone(), ttl)).await {
                Ok(()) => {
                    tier.stats.counters.writes.incr();
                    report.succeeded.push(tier.name.clone());
                }
                Err(CacheError::Superseded { .. }) => {
                    report.superseded.push(tier.name.clone());
                }
                Err(error) => {
                    tracing::debug!(%key, tier = %tier.name, %error, "tier write failed");
                    Self::journal_or_fail(tier, op(), error, &mut report).await;
                }
            }
        }
        if !report.superseded.is_empty() {
            // A lower tier holds newer data for the key (or a later delete):
            // the copies just written above it are older than that; drop
            // them, the next read promotes what the lower tier holds.
            for tier in &self.inner.tiers {
                if report.superseded.contains(&tier.name) {
                    break;
                }
                if report.succeeded.contains(&tier.name) {
                    let _ = Self::call(tier, true, tier.backend.delete(key)).await;
                }
            }
        }
        report
    }

    /// While a tier's journal holds ops, new ops for that tier queue behind
    /// them (so they reach it in order). Returns whether `op` was dealt with
    /// (journaled, or reported failed); `false` means "call the tier".
    ///
    /// When the journal holds ops but cannot record this one (a full disk),
    /// a write is reported failed rather than sent past the backlog; an
    /// invalidation goes to the tier directly, because applying it is always
    /// safe (the tier refuses a replayed write older than a delete or purge:
    /// see the Redis scripts) and dropping it would serve deleted data.
    async fn journal_first(
        tier: &Tier,
        op: impl FnOnce() -> JournalOp,
        report: &mut WriteReport,
    ) -> bool {
        let Some(journal) = &tier.options.journal else {
            return false;
        };
        if journal.depth() == 0 {
            return false;
        }
        let op = op();
        let invalidation = op.is_invalidation();
        match journal.record(op).await {
            Ok(recorded) => {
                Self::report_recorded(tier, recorded, report);
                true
            }
            Err(error) if invalidation => {
                tracing::error!(tier = %tier.name, %error, "journal write failed; the invalidation goes to the tier directly");
                false
            }
            Err(error) => {
                tracing::error!(tier = %tier.name, %error, "journal write failed; the write is not sent past the journal's backlog");
                report.failed.push(TierFailure {
                    tier: tier.name.clone(),
                    error,
                });
                true
            }
        }
    }

    fn report_recorded(tier: &Tier, recorded: Recorded, report: &mut WriteReport) {
        match recorded {
            Recorded::Kept => report.journaled.push(tier.name.clone()),
            Recorded::AsInvalidation => report.failed.push(TierFailure {
                tier: tier.name.clone(),
                error: CacheError::backend(
                    "journal",
                    "the journal is full: the write was replaced by an invalidation of the key (no older value survives the replay)",
                ),
            }),
        }
    }

    /// Records a failed op in the tier's journal, or reports the failure.
    async fn journal_or_fail(
        tier: &Tier,
        op: JournalOp,
        error: CacheError,
        report: &mut WriteReport,
    ) {
        if let Some(journal) = &tier.options.journal {
            match journal.record(op).await {
                Ok(recorded) => {
                    Self::report_recorded(tier, recorded, report);
                    return;
                }
                Err(journal_error) => {
                    tracing::error!(tier = %tier.name, error = %journal_error, "journal write failed; the op is lost for this tier");
                }
            }
        }
        report.failed.push(TierFailure {
            tier: tier.name.clone(),
            error,
        });
    }

    /// Runs an invalidation on every tier. Invalidations are attempted even on a
    /// tier whose breaker is open (bounded by its timeout): a lost invalidation
    /// serves wrong data, which is worse than a slow one. A tier with a journal
    /// records what it could not take.
    async fn invalidate_all<'a, F>(&'a self, journal_op: JournalOp, op: F) -> WriteReport
    where
        F: Fn(
            &'a Arc<dyn Backend>,
        )
            -> std::pin::Pin<Box<dyn Future<Output = Result<(), CacheError>> + Send + 'a>>,
    {
        self.inner.counters.invalidations.incr();
        let mut report = WriteReport::default();
        for tier in &self.inner.tiers {
            if Self::journal_first(tier, || journal_op.clone(), &mut report).await {
                continue;
            }
            let open = tier.breaker.state() == BreakerState::Open;
            let result = if open && tier.options.journal.is_some() {
                // A journaled tier that is known down: record without waiting.
                Err(CacheError::CircuitOpen {
                    tier: tier.name.to_string(),
                })
            } else {
                Self::call(tier, true, op(&tier.backend)).await
            };
            match result {
                Ok(()) => report.succeeded.push(tier.name.clone()),
                Err(error) => {
                    tracing::warn!(cache = %self.inner.name, tier = %tier.name, %error, op = ?journal_op, "invalidation failed on a tier");
                    Self::journal_or_fail(tier, journal_op.clone(), error, &mut report).await;
                }
            }
        }
        report
    }

    /// Deletes `key` from every tier.
    pub async fn delete(&self, key: &CacheKey) -> WriteReport {
        let op = JournalOp::Delete {
            key: key.clone(),
            at: SystemTime::now(),
        };
        self.invalidate_all(op, |b| {
            Box::pin(async move { b.delete(key).await.map(|_| ()) })
        })
        .await
    }

    /// Deletes every key starting with `prefix` from every tier.
    pub async fn invalidate_prefix(&self, prefix: &str) -> WriteReport {
        let op = JournalOp::InvalidatePrefix {
            prefix: prefix.to_owned(),
        };
        self.invalidate_all(op, |b| b.invalidate_prefix(prefix))
            .await
    }

    /// Deletes every key matching the Redis-style glob `pattern` from every tier.
    pub async fn invalidate_pattern(&self, pattern: &str) -> WriteReport {
        let op = JournalOp::InvalidatePattern {
            pattern: pattern.to_owned(),
        };
        self.invalidate_all(op, |b| b.invalidate_pattern(pattern))
            .await
    }

    /// Deletes every entry tagged `tag` from every tier.
    pub async fn invalidate_tag(&self, tag: &str) -> WriteReport {
        let op = JournalOp::InvalidateTag {
            tag: tag.to_owned(),
        };
        self.invalidate_all(op, |b| b.invalidate_tag(tag)).await
    }

    /// Soft-purges `key` on every tier: marks it stale instead of removing
    /// it, so that stale-while-revalidate, stale-if-error and revalidation
    /// (a `304`) can still use it. A tier that cannot take it (down) journals
    /// a delete instead: stricter, never weaker.
    pub async fn soft_delete(&self, key: &CacheKey) -> WriteReport {
        let op = JournalOp::Delete {
            key: key.clone(),
            at: SystemTime::now(),
        };
        self.invalidate_all(op, |b| b.soften(key)).await
    }

    /// [`soft_delete`](Self::soft_delete) for every key starting with `prefix`.
    pub async fn soft_invalidate_prefix(&self, prefix: &str) -> WriteReport {
        let op = JournalOp::InvalidatePrefix {
            prefix: prefix.to_owned(),
        };
        self.invalidate_all(op, |b| b.soften_prefix(prefix)).await
    }

    /// [`soft_delete`](Self::soft_delete) for every key matching the glob
    /// `pattern`.
    pub async fn soft_invalidate_pattern(&self, pattern: &str) -> WriteReport {
        let op = JournalOp::InvalidatePattern {
            pattern: pattern.to_owned(),
        };
        self.invalidate_all(op, |b| b.soften_pattern(pattern)).await
    }

    /// [`soft_delete`](Self::soft_delete) for every entry tagged `tag`.
    pub async fn soft_invalidate_tag(&self, tag: &str) -> WriteReport {
        let op = JournalOp::InvalidateTag {
            tag: tag.to_owned(),
        };
        self.invalidate_all(op, |b| b.soften_tag(tag)).await
    }

    /// Clears this cache's namespace in every tier.
    pub async fn clear(&self) -> WriteReport {
        self.invalidate_all(JournalOp::Clear, |b| b.clear()).await
    }

    /// The authoritative tier for atomic operations: the last one (the master
    /// when there is one). Its failure is the operation's failure: falling
    /// back to a tier above would break atomicity across nodes.
    fn authority(&self) -> Result<(usize, &Tier), CacheError> {
        let index = self
            .inner
            .tiers
            .len()
            .checked_sub(1)
            .ok_or_else(|| CacheError::backend("tiered", "the cache has no tiers"))?;
        Ok((index, &self.inner.tiers[index]))
    }

    /// The authoritative tier's wake-ups for fleet fills, when it has
    /// leases (see [`fleet_fill`](Self::fleet_fill)).
    pub(crate) fn lease_wakers(&self) -> Option<&crate::FillWakers> {
        let (_, tier) = self.authority().ok()?;
        tier.backend.fill_wakers()
    }

    /// A lease call on the authoritative tier, with its timeout and breaker.
    pub(crate) async fn lease_call<'a, T, F, Fut>(&'a self, call: F) -> Result<T, CacheError>
    where
        F: FnOnce(&'a dyn Backend) -> Fut,
        Fut: Future<Output = Result<T, CacheError>> + 'a,
    {
        let (_, tier) = self.authority()?;
        Self::call(tier, false, call(tier.backend.as_ref())).await
    }

    /// Reads `key` from the authoritative tier only (the master), for
    /// operations that must start from the shared value rather than this
    /// node's copy (`incr_version`). An entry whose lifetime is over is
    /// `None`.
    pub async fn get_authoritative(
        &self,
        key: &CacheKey,
    ) -> Result<Option<Arc<Entry>>, CacheError> {
        let (_, tier) = self.authority()?;
        let entry = Self::call(tier, false, tier.backend.get(key)).await?;
        Ok(entry.filter(|e| !e.remaining_ttl(SystemTime::now()).is_zero()))
    }

    /// Reads `key` from the authoritative tier and copies what it holds
    /// into the tiers above (replacing their copies): for a node that
    /// learned that another node just stored a newer entry, which this
    /// node's upper tiers may hide behind an older one.
    pub async fn get_shared(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        let (index, tier) = self.authority().ok()?;
        let entry = Self::call(tier, false, tier.backend.get(key))
            .await
            .ok()??;
        if entry.remaining_ttl(SystemTime::now()).is_zero() || self.hidden_by_journal(key, &entry) {
            return None;
        }
        self.fill_above(index, key, entry.clone()).await;
        Some(entry)
    }

    /// Gives `key` a new lifetime (`meta`) on the authoritative tier, where
    /// it is atomic, and drops the copies in the tiers above (the next read
    /// promotes the touched entry): a touch never writes this node's
    /// possibly stale copy over another node's newer value. Returns whether
    /// the key exists.
    pub async fn touch(&self, key: &CacheKey, meta: EntryMeta) -> Result<bool, CacheError> {
        let (index, tier) = self.authority()?;
        let touched = Self::call(tier, false, tier.backend.touch(key, meta)).await?;
        for upper in &self.inner.tiers[..index] {
            let _ = Self::call(upper, false, upper.backend.delete(key)).await;
        }
        Ok(touched)
    }

    /// Copies a value the authoritative tier just wrote into the tiers above it.
    async fn fill_above(&self, index: usize, key: &CacheKey, entry: Arc<Entry>) {
        let ttl = entry.remaining_ttl(SystemTime::now());
        for tier in &self.inner.tiers[..index] {
            let _ = Self::call(tier, false, tier.backend.set(key, entry.clone(), ttl)).await;
        }
    }

    /// Stores `entry` only if `key` is absent, atomically on the last tier
    /// (Redis `SET NX` on the master); on success the tiers above get it too.
    pub async fn add(&self, key: &CacheKey, entry: Arc<Entry>) -> Result<bool, CacheError> {
        let ttl = entry.remaining_ttl(SystemTime::now());
        if ttl.is_zero() {
            return Ok(false);
        }
        let (index, tier) = self.authority()?;
        let added = Self::call(tier, false, tier.backend.add(key, entry.clone(), ttl)).await?;
        if added {
            tier.stats.counters.writes.incr();
            self.fill_above(index, key, entry).await;
        }
        Ok(added)
    }

    /// Adds `delta` to the counter under `key`, atomically on the last tier
    /// (Redis `INCRBY` on the master), and refreshes the tiers above with the
    /// new value. A missing key is [`CacheError::KeyNotFound`].
    pub async fn incr(&self, key: &CacheKey, delta: i64) -> Result<i64, CacheError> {
        let (index, tier) = self.authority()?;
        let value = Self::call(tier, false, tier.backend.incr(key, delta))
            .await?
            .ok_or_else(|| CacheError::KeyNotFound(key.to_string()))?;
        if index > 0 {
            // Read back the stored counter (with its TTL) for the tiers above.
            if let Ok(Some(entry)) = Self::call(tier, false, tier.backend.get(key)).await {
                self.fill_above(index, key, entry).await;
            }
        }
        Ok(value)
    }

    /// The tier at `index` (read order), for components that act on one tier
    /// directly (the invalidation bus, admin commands).
    pub fn tier_backend(&self, index: usize) -> Option<&Arc<dyn Backend>> {
        self.inner.tiers.get(index).map(|t| &t.backend)
    }

    /// Checks every tier and asks it to describe itself, for health and stats
    /// reports; one probe per tier, in read order. The health check runs even
    /// where the breaker is open (bounded by the tier's timeout), so that a
    /// report says what is true now.
    pub async fn probe(&self) -> Vec<TierProbe> {
        let mut out = Vec::with_capacity(self.inner.tiers.len());
        for tier in &self.inner.tiers {
            let health = Self::call(tier, true, tier.backend.health()).await;
            let info = match tier.options.timeout {
                Some(limit) => tokio::time::timeout(limit, tier.backend.info())
                    .await
                    .unwrap_or_default(),
                None => tier.backend.info().await,
            };
            out.push(TierProbe {
                name: tier.name.clone(),
                health,
                info,
            });
        }
        out
    }

    /// Checks every tier; one result per tier, in read order.
    pub async fn health(&self) -> Vec<(String, Result<(), CacheError>)> {
        let mut out = Vec::with_capacity(self.inner.tiers.len());
        for tier in &self.inner.tiers {
            let result = Self::call(tier, true, tier.backend.health()).await;
            out.push((tier.name.to_string(), result));
        }
        out
    }
}
