//! What operators see and steer: per-cache reports (stats and health) and
//! purges. The admin routes, the metrics and the `cachette` binary are built
//! on these, so all of them say the same thing.

use std::{sync::Arc, time::Duration};

use cachette_core::{CacheError, TierProbe, TierSnapshot, WriteReport};
use serde::{Deserialize, Serialize};

use crate::{Cache, Caches, Error};

/// Whether a cache (or the whole node) can serve from its tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Every tier answers.
    Ok,
    /// Some tiers do not answer; the others serve (fail open).
    Degraded,
    /// No tier answers: nothing can be served from the cache.
    Down,
}

impl Status {
    /// `ok`, `degraded` or `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Degraded => "degraded",
            Self::Down => "down",
        }
    }
}

/// Every cache of a registry at one moment (see [`Caches::report`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Report {
    /// `down` when some cache cannot serve at all, `degraded` when some tier
    /// is down, else `ok`.
    pub status: Status,
    /// One report per cache, by alias.
    pub caches: Vec<CacheReport>,
}

/// One named cache at one moment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CacheReport {
    /// The alias.
    pub alias: String,
    /// Whether its tiers can serve.
    pub status: Status,
    /// What its callers (the HTTP layer, the data API) saw.
    pub counters: CacheCounters,
    /// Its tiers, in read order.
    pub tiers: Vec<TierReport>,
    /// The Redis side, if the cache has Redis tiers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisReport>,
    /// The journal of master writes that failed, if journaling is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub journal: Option<JournalReport>,
}

/// Cache-level counters since the process started.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CacheCounters {
    /// Answered from a fresh entry.
    pub hits: u64,
    /// Went to the origin.
    pub misses: u64,
    /// Answered from a stale entry (stale-while-revalidate, stale-if-error).
    pub stale_served: u64,
    /// Waited on another request's origin call instead of making one.
    pub coalesced: u64,
    /// Went to the origin uncoalesced: the URL's last response was not
    /// storable (hit-for-miss).
    pub hit_for_miss: u64,
    /// Responses or values stored.
    pub stored: u64,
    /// Origin responses that were not storable.
    pub not_stored: u64,
    /// Stale entries revalidated with a `304`.
    pub revalidated: u64,
    /// Requests that bypassed the cache.
    pub bypassed: u64,
    /// Origin errors, timeouts and 5xx seen by the cache.
    pub origin_errors: u64,
    /// Invalidations issued.
    pub invalidations: u64,
    /// Fills this node made for the fleet (it held the fill lease).
    #[serde(default)]
    pub fills_led: u64,
    /// Waits on another node's fill that ended with its stored result.
    #[serde(default)]
    pub fills_waited: u64,
    /// Waits on another node's fill that ran out of time.
    #[serde(default)]
    pub fill_waits_timed_out: u64,
    /// Fill leases taken over after their holder let them run out.
    #[serde(default)]
    pub leases_expired: u64,
}

/// One tier at one moment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TierReport {
    /// The tier's name (`memory`, `local`, `master`).
    pub name: String,
    /// The backend kind (`memory`, `redis`).
    pub kind: String,
    /// Whether it answered a health check now (`None`: not checked, as in
    /// metrics scrapes, which stay cheap).
    pub up: Option<bool>,
    /// Why it did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `closed`, `open` or `half-open`.
    pub breaker: String,
    /// The server's role as it reports it (`master`, `slave`).
    pub role: Option<String>,
    /// The server's address.
    pub address: Option<String>,
    /// Entries held, where known.
    pub entries: Option<u64>,
    /// Bytes held, where known.
    pub bytes: Option<u64>,
    /// Capacity in bytes, where bounded.
    pub capacity_bytes: Option<u64>,
    /// Reads that found an entry.
    pub hits: u64,
    /// Reads that found nothing.
    pub misses: u64,
    /// Calls that failed (including unreadable entries).
    pub errors: u64,
    /// Calls over the tier's timeout.
    pub timeouts: u64,
    /// Calls skipped while the breaker was open.
    pub skipped: u64,
    /// Writes taken.
    pub writes: u64,
    /// Entries copied up from a lower tier.
    pub promotions: u64,
    /// Call latency (tiers with a timeout; the memory tier's calls are
    /// in-process and not timed).
    pub latency: Latency,
}

/// Call latency percentiles, as upper bounds of power-of-two buckets (at
/// most a factor of two high, never low).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Latency {
    /// Calls observed.
    pub count: u64,
    /// Median, µs.
    pub p50_us: u64,
    /// 90th percentile, µs.
    pub p90_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
}

/// The Redis side of a cache.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RedisReport {
    /// The master's address now.
    pub master: Option<String>,
    /// This node's replica.
    pub local: Option<String>,
    /// Master switches followed.
    pub failovers: u64,
    /// Local writes skipped because the replica is read-only.
    pub readonly_skips: u64,
    /// Invalidations received from other nodes.
    pub bus_received: u64,
    /// Bus (re)subscriptions; each cleared the memory tier.
    pub bus_subscriptions: u64,
    /// Whether the bus subscription is up now (absent: the bus is off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus_connected: Option<bool>,
    /// Seconds since the last message from another node (absent: none yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus_last_message_age_secs: Option<f64>,
    /// Failed attempts to resolve the master through Sentinel.
    pub resolve_errors: u64,
    /// In a fleet of peers: the other nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerReport>,
    /// In a fleet of peers: whether this node's Redis is proven current
    /// (read); false from a lost connection until it is checked again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_current: Option<bool>,
    /// In a fleet of peers: what this node announced and copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationReport>,
}

/// Another node of a fleet of peers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PeerReport {
    /// Its Redis (`host:port`).
    pub addr: String,
    /// Whether this node hears its channel now.
    pub connected: bool,
    /// Invalidations waiting in this node's journal for it.
    pub undelivered: u64,
}

/// Replication counters of a node of a fleet of peers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ReplicationReport {
    /// Stores this node announced.
    pub announced: u64,
    /// Announcements heard from the other nodes.
    pub heard: u64,
    /// Announcements dropped unprocessed (the queue was full).
    pub dropped: u64,
    /// Entries copied into this node's Redis.
    pub copied: u64,
    /// Announcements not copied on purpose (held already, too large, too
    /// short-lived, gone, or older than a delete or purge here).
    pub skipped: u64,
    /// Copies that failed.
    pub failed: u64,
    /// Announcements waiting now.
    pub queued: u64,
    /// The most that waited at once.
    pub max_queued: u64,
    /// Invalidations that reached neither a peer nor its journal.
    pub undelivered: u64,
}

/// The journal of a cache.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JournalReport {
    /// The file.
    pub path: String,
    /// Ops waiting for the master.
    pub depth: u64,
    /// Bytes of those ops.
    pub bytes: u64,
    /// Age of the oldest waiting op, seconds.
    pub oldest_age_secs: Option<f64>,
    /// Ops applied to the master by the replay since this process started.
    pub replayed: u64,
    /// Ops the replay did not need to apply (newer data on the master, a
    /// later delete or purge, or expired): nothing lost.
    pub obsolete: u64,
    /// Ops the master rejected with an error a retry would get again:
    /// dropped, each logged.
    pub rejected: u64,
    /// Ops whose bytes could not be read back: dropped, each logged.
    pub unreadable: u64,
    /// Sets that did not fit the full journal.
    pub dropped: u64,
    /// Times the journal collapsed into one clear-on-recovery marker.
    pub collapsed: u64,
    /// Failed disk writes (each reopened the journal).
    pub io_errors: u64,
    /// Whether the journal can record now.
    pub writable: bool,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn tier_report(snapshot: TierSnapshot, probe: Option<TierProbe>) -> TierReport {
    let c = snapshot.counters;
    let (up, error, info) = match probe {
        Some(probe) => (
            Some(probe.health.is_ok()),
            probe.health.err().map(|e| e.to_string()),
            probe.info,
        ),
        None => (None, None, Default::default()),
    };
    TierReport {
        name: snapshot.name,
        kind: snapshot.kind.to_owned(),
        up,
        error,
        breaker: snapshot.breaker.as_str().to_owned(),
        role: info.role,
        address: info.address,
        entries: info.entries,
        bytes: info.bytes,
        capacity_bytes: info.capacity_bytes,
        hits: c.hits,
        misses: c.misses,
        errors: c.errors,
        timeouts: c.timeouts,
        skipped: c.skipped,
        writes: c.writes,
        promotions: c.promotions,
        latency: Latency {
            count: snapshot.latency.count,
            p50_us: micros(snapshot.latency.p50),
            p90_us: micros(snapshot.latency.p90),
            p99_us: micros(snapshot.latency.p99),
        },
    }
}

fn cache_status(tiers: &[TierReport]) -> Status {
    // Unprobed tiers count as up unless their breaker is open.
    let up = |t: &TierReport| t.up.unwrap_or(t.breaker != "open");
    let answering = tiers.iter().filter(|t| up(t)).count();
    if answering == tiers.len() {
        Status::Ok
    } else if answering > 0 {
        Status::Degraded
    } else {
        Status::Down
    }
}

impl Cache {
    /// This cache's report. With `probe`, every tier is health-checked and
    /// asked for its role, address and usage (one round trip per Redis tier,
    /// bounded by its timeout); without, only counters and breakers are read.
    pub async fn report(&self, probe: bool) -> CacheReport {
        let snapshot = self.tiered().snapshot();
        let mut probes = if probe {
            self.tiered().probe().await.into_iter().map(Some).collect()
        } else {
            Vec::new()
        };
        probes.resize_with(snapshot.tiers.len(), || None);
        let tiers: Vec<TierReport> = snapshot
            .tiers
            .into_iter()
            .zip(probes)
            .map(|(tier, probe)| tier_report(tier, probe))
            .collect();
        let c = snapshot.cache;
        #[allow(unused_mut)]
        let mut report = CacheReport {
            alias: self.alias().to_owned(),
            status: cache_status(&tiers),
            counters: CacheCounters {
                hits: c.hits,
                misses: c.misses,
                stale_served: c.stale_served,
                coalesced: c.coalesced,
                hit_for_miss: c.hit_for_miss,
                stored: c.stored,
                not_stored: c.not_stored,
                revalidated: c.revalidated,
                bypassed: c.bypassed,
                origin_errors: c.origin_errors,
                invalidations: c.invalidations,
                fills_led: c.fills_led,
                fills_waited: c.fills_waited,
                fill_waits_timed_out: c.fill_waits_timed_out,
                leases_expired: c.leases_expired,
            },
            tiers,
            redis: None,
            journal: None,
        };
        #[cfg(feature = "redis")]
        if let Some(redis) = self.redis() {
            let stats = redis.stats().await;
            report.journal = stats.journal.map(|j| JournalReport {
                path: redis
                    .journal()
                    .map(|journal| journal.config().path.display().to_string())
                    .unwrap_or_default(),
                depth: j.depth,
                bytes: j.bytes,
                oldest_age_secs: j.oldest_age.map(|age| age.as_secs_f64()),
                replayed: j.replayed,
                obsolete: j.obsolete,
                rejected: j.rejected,
                unreadable: j.unreadable,
                dropped: j.dropped,
                collapsed: j.collapsed,
                io_errors: j.io_errors,
                writable: j.writable,
            });
            report.redis = Some(RedisReport {
                master: stats.master,
                local: stats.local,
                failovers: stats.failovers,
                readonly_skips: stats.readonly_skips,
                bus_received: stats.bus_received,
                bus_subscriptions: stats.bus_subscriptions,
                bus_connected: stats.bus_connected,
                bus_last_message_age_secs: stats
                    .bus_last_message_age_ms
                    .map(|ms| ms as f64 / 1000.0),
                resolve_errors: stats.resolve_errors,
                peers: stats
                    .peers
                    .into_iter()
                    .map(|p| PeerReport {
                        addr: p.addr,
                        connected: p.connected,
                        undelivered: p.undelivered,
                    })
                    .collect(),
                own_current: stats.own_current,
                replication: stats.replication.map(|r| ReplicationReport {
                    announced: r.announced,
                    heard: r.heard,
                    dropped: r.dropped,
                    copied: r.copied,
                    skipped: r.skipped,
                    failed: r.failed,
                    queued: r.queued,
                    max_queued: r.max_queued,
                    undelivered: r.undelivered,
                }),
            });
        }
        report
    }

    /// Removes what `purge` names from every tier of this cache and, through
    /// the bus, from every node's memory tier: the same path as
    /// [`Cache::delete`] and the HTTP layer's invalidations. A tier that
    /// cannot take it now records it in its journal (the master).
    pub async fn purge(&self, purge: &Purge) -> Result<PurgeReport, CacheError> {
        self.purge_as(purge, false).await
    }

    /// A soft purge: what `purge` names becomes stale instead of gone, so
    /// the next request revalidates it (a cheap `304` when unchanged) and
    /// stale-while-revalidate or stale-if-error can still serve it. A tier
    /// that cannot take it now journals a (hard) purge instead.
    pub async fn soft_purge(&self, purge: &Purge) -> Result<PurgeReport, CacheError> {
        self.purge_as(purge, true).await
    }

    async fn purge_as(&self, purge: &Purge, soft: bool) -> Result<PurgeReport, CacheError> {
        let tiered = self.tiered();
        let report = match (purge, soft) {
            (Purge::Key(key), false) => tiered.delete(&self.make_key(key, None)?).await,
            (Purge::Key(key), true) => tiered.soft_delete(&self.make_key(key, None)?).await,
            (Purge::Tag(tag), false) => tiered.invalidate_tag(tag).await,
            (Purge::Tag(tag), true) => tiered.soft_invalidate_tag(tag).await,
            (Purge::All, false) => tiered.clear().await,
            (Purge::All, true) => tiered.soft_invalidate_prefix("").await,
            #[cfg(feature = "http")]
            (Purge::Url(url), soft) => {
                let uri: http::Uri = url.parse().map_err(|e| {
                    CacheError::backend("purge", format!("`{url}` is not a URL: {e}"))
                })?;
                let layer = crate::http_layer::layer_for(self);
                let headers = http::HeaderMap::new();
                if soft {
                    layer.soft_invalidate_url(&uri, &headers).await
                } else {
                    layer.invalidate_url(&uri, &headers).await
                }
            }
            #[cfg(feature = "http")]
            (Purge::UrlPrefix(prefix), soft) => {
                let layer = crate::http_layer::layer_for(self);
                let report = if soft {
                    layer.soft_invalidate_url_prefix(prefix).await
                } else {
                    layer.invalidate_url_prefix(prefix).await
                };
                report.map_err(|reason| CacheError::backend("purge", reason))?
            }
        };
        let mut purged = PurgeReport::new(self.alias(), purge, report);
        if soft {
            purged.purged = format!("{} (soft: marked stale)", purged.purged);
        }
        let order: Vec<&str> = tiered.tier_names().collect();
        purged
            .tiers
            .sort_by_key(|(tier, _)| order.iter().position(|t| t == tier));
        Ok(purged)
    }
}

impl Caches {
    /// Every cache's report (see [`Cache::report`]); `aliases` limits it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use cachette::{Caches, ops::Status};
    ///
    /// let caches = Caches::memory_only();
    /// let report = caches.report(true, None).await;
    /// assert_eq!(report.status, Status::Ok);
    /// assert_eq!(report.caches[0].tiers[0].name, "memory");
    /// assert_eq!(report.caches[0].tiers[0].up, Some(true));
    /// # }
    /// ```
    pub async fn report(&self, probe: bool, aliases: Option<&[&str]>) -> Report {
        let mut caches = Vec::new();
        for alias in self.aliases() {
            if aliases.is_some_and(|wanted| !wanted.contains(&alias)) {
                continue;
            }
            if let Ok(cache) = self.cache(alias) {
                caches.push(cache.report(probe).await);
            }
        }
        let status = if caches.iter().any(|c| c.status == Status::Down) {
            Status::Down
        } else if caches.iter().any(|c| c.status == Status::Degraded) {
            Status::Degraded
        } else {
            Status::Ok
        };
        Report { status, caches }
    }

    /// Purges from the cache named `alias` (see [`Cache::purge`]).
    pub async fn purge(&self, alias: &str, purge: &Purge) -> Result<PurgeReport, Error> {
        let cache = self.cache(alias)?;
        cache.purge(purge).await.map_err(|source| Error::Cache {
            alias: alias.to_owned(),
            source,
        })
    }

    /// [`Cache::soft_purge`] on the cache named `alias`.
    pub async fn soft_purge(&self, alias: &str, purge: &Purge) -> Result<PurgeReport, Error> {
        let cache = self.cache(alias)?;
        cache
            .soft_purge(purge)
            .await
            .map_err(|source| Error::Cache {
                alias: alias.to_owned(),
                source,
            })
    }
}

/// What to remove from a cache.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Purge {
    /// One data-API key (the cache's key prefix and version applied).
    Key(String),
    /// One page: every stored variant of a GET to this URL
    /// (`https://host/path?query`, or `/path` when keys leave out the host).
    #[cfg(feature = "http")]
    Url(String),
    /// Every page whose URL starts with this: `https://host/api/`, or
    /// `/api/` on every host (see [`UrlScope`](crate::http::UrlScope)).
    #[cfg(feature = "http")]
    UrlPrefix(String),
    /// Every entry stored with this tag.
    Tag(String),
    /// Everything in the cache's namespace.
    All,
}

impl std::fmt::Display for Purge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Key(key) => write!(f, "key {key}"),
            #[cfg(feature = "http")]
            Self::Url(url) => write!(f, "url {url}"),
            #[cfg(feature = "http")]
            Self::UrlPrefix(prefix) => write!(f, "prefix {prefix}"),
            Self::Tag(tag) => write!(f, "tag {tag}"),
            Self::All => f.write_str("everything"),
        }
    }
}

/// How one tier took a purge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "outcome", content = "error")]
pub enum TierOutcome {
    /// Done.
    Done,
    /// Recorded in the journal: replayed when the tier answers again.
    Journaled,
    /// Not done, not recorded.
    Failed(String),
}

/// What a purge did, tier by tier.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PurgeReport {
    /// The cache.
    pub cache: String,
    /// What was purged, in words.
    pub purged: String,
    /// Each tier's outcome, in read order of the report.
    pub tiers: Vec<(String, TierOutcome)>,
    /// Every tier took it or journaled it: nothing is lost.
    pub complete: bool,
    /// Every tier took it now. A journaled purge is complete but not
    /// applied: it reaches the tier (and, through the bus, the other nodes)
    /// when the tier answers again.
    pub applied: bool,
}

impl PurgeReport {
    fn new(cache: &str, purge: &Purge, report: WriteReport) -> Self {
        let name = |t: &Arc<str>| t.to_string();
        let mut tiers: Vec<(String, TierOutcome)> = Vec::new();
        tiers.extend(
            report
                .succeeded
                .iter()
                .map(|t| (name(t), TierOutcome::Done)),
        );
        tiers.extend(
            report
                .journaled
                .iter()
                .map(|t| (name(t), TierOutcome::Journaled)),
        );
        tiers.extend(
            report
                .failed
                .iter()
                .map(|f| (name(&f.tier), TierOutcome::Failed(f.error.to_string()))),
        );
        Self {
            cache: cache.to_owned(),
            purged: purge.to_string(),
            complete: report.is_complete(),
            applied: report.is_complete() && report.journaled.is_empty(),
            tiers,
        }
    }
}
