//! [`CacheLayer`]: the builder and the tower `Layer`.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use cachette_core::{CacheKey, SingleFlight, Tiered};
use http::{HeaderName, request};
use http_cache_semantics::CacheOptions;
use tower_layer::Layer;

use crate::{CacheService, KeyOptions, body::BufferBudget, service::Shared};

/// A predicate over the request head: `true` means "do not use the cache".
pub type Unless = Arc<dyn Fn(&request::Parts) -> bool + Send + Sync>;

/// The configuration of a [`CacheLayer`]. Built with the layer's methods.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) status_name: String,
    pub(crate) keys: KeyOptions,
    pub(crate) rfc_options: CacheOptions,
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) ttl_override: Option<Duration>,
    pub(crate) targeted_fields: Vec<HeaderName>,
    pub(crate) strip_fields: Vec<HeaderName>,
    pub(crate) strip_set_cookie: bool,
    pub(crate) max_body_bytes: usize,
    pub(crate) stale_while_revalidate: Duration,
    pub(crate) stale_if_error: Duration,
    pub(crate) revalidation_window: Duration,
    pub(crate) tags: Vec<String>,
    pub(crate) tags_headers: Vec<HeaderName>,
    pub(crate) unless: Option<Unless>,
    pub(crate) origin_timeout: Option<Duration>,
    pub(crate) fill_timeout: Duration,
    pub(crate) body_idle_timeout: Duration,
    pub(crate) lock_timeout: Duration,
    pub(crate) hit_for_miss: Duration,
    pub(crate) key_headers: Vec<HeaderName>,
    pub(crate) coalesce: bool,
    /// Fill leases on the shared tier, when fleet coalescing is on.
    pub(crate) fleet: Option<cachette_core::LeaseOptions>,
    pub(crate) fill_lease: Duration,
    pub(crate) soft_timeout: Option<Duration>,
    pub(crate) refresh_ahead: Option<f64>,
}

pub use cachette_core::DEFAULT_FILL_LEASE;

/// The default `max_body_bytes`: 8 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// cachette's own targeted cache-control field (RFC 9213): directives in it
/// apply to cachette only and it is never forwarded to clients.
pub const CACHETTE_CONTROL: HeaderName = HeaderName::from_static("cachette-control");
/// The RFC 9213 field for CDNs; cachette obeys it after `Cachette-Control`.
pub const CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");
/// A default response field carrying invalidation tags (comma or space
/// separated), as Cloudflare reads it.
pub const CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");
/// A default response field carrying invalidation tags (space separated), as
/// Fastly and Varnish read it.
pub const SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");

impl Default for Config {
    fn default() -> Self {
        Self {
            status_name: "cachette".into(),
            keys: KeyOptions::default(),
            rfc_options: CacheOptions {
                shared: true,
                cache_heuristic: 0.0,
                immutable_min_time_to_live: Duration::from_secs(24 * 3600),
                ignore_cargo_cult: false,
            },
            default_ttl: None,
            ttl_override: None,
            targeted_fields: vec![CACHETTE_CONTROL, CDN_CACHE_CONTROL],
            strip_fields: vec![CACHETTE_CONTROL, CACHE_TAG, SURROGATE_KEY],
            strip_set_cookie: false,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            revalidation_window: Duration::from_secs(600),
            tags: Vec::new(),
            tags_headers: vec![CACHE_TAG, SURROGATE_KEY],
            unless: None,
            origin_timeout: None,
            fill_timeout: Duration::from_secs(60),
            body_idle_timeout: Duration::from_secs(30),
            lock_timeout: Duration::from_secs(10),
            hit_for_miss: Duration::from_secs(30),
            key_headers: Vec::new(),
            coalesce: true,
            fleet: None,
            fill_lease: DEFAULT_FILL_LEASE,
            soft_timeout: None,
            refresh_ahead: None,
        }
    }
}

impl Config {
    /// The fleet lease options the settings make.
    fn lease_options(&self) -> cachette_core::LeaseOptions {
        cachette_core::LeaseOptions::new(self.fill_lease, self.lock_timeout)
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("keys", &self.keys)
            .field("default_ttl", &self.default_ttl)
            .field("ttl_override", &self.ttl_override)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("stale_while_revalidate", &self.stale_while_revalidate)
            .field("stale_if_error", &self.stale_if_error)
            .field("unless", &self.unless.is_some())
            .finish_non_exhaustive()
    }
}

/// State shared by every service a layer makes: in-flight origin calls and
/// background refreshes, so that coalescing works across clones and routes.
#[derive(Debug)]
pub(crate) struct Flights {
    pub(crate) fills: SingleFlight<Shared>,
    pub(crate) refreshing: Mutex<HashSet<CacheKey>>,
    /// Origin bodies being read into memory to be stored, all requests
    /// together.
    pub(crate) buffers: Arc<BufferBudget>,
    /// URLs whose last response was not storable, until when (hit-for-miss).
    pub(crate) uncacheable: Mutex<HashMap<CacheKey, std::time::Instant>>,
}

/// The most URLs remembered as not storable; past it the memory starts over
/// (a hostile client cannot grow it without bound).
const MAX_UNCACHEABLE: usize = 10_000;

impl Flights {
    /// Whether `key`'s last response was not storable, recently.
    pub(crate) fn is_uncacheable(&self, key: &CacheKey) -> bool {
        let mut map = self
            .uncacheable
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match map.get(key) {
            Some(until) if *until > std::time::Instant::now() => true,
            Some(_) => {
                map.remove(key);
                false
            }
            None => false,
        }
    }

    /// Remembers (for `window`) that `key`'s response was not storable.
    pub(crate) fn mark_uncacheable(&self, key: &CacheKey, window: Duration) {
        if window.is_zero() {
            return;
        }
        let mut map = self
            .uncacheable
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_UNCACHEABLE {
            let now = std::time::Instant::now();
            map.retain(|_, until| *until > now);
            if map.len() >= MAX_UNCACHEABLE {
                map.clear();
            }
        }
        map.insert(key.clone(), std::time::Instant::now() + window);
    }

    /// A storable response arrived for `key`: coalesce it again.
    pub(crate) fn mark_cacheable(&self, key: &CacheKey) {
        let mut map = self
            .uncacheable
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !map.is_empty() {
            map.remove(key);
        }
    }
}

impl Default for Flights {
    fn default() -> Self {
        Self {
            fills: SingleFlight::default(),
            refreshing: Mutex::default(),
            buffers: BufferBudget::new(DEFAULT_MAX_BUFFERED_BYTES),
            uncacheable: Mutex::default(),
        }
    }
}

/// The default `max_buffered_bytes`: 64 MiB.
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 64 * 1024 * 1024;

/// A tower layer that caches HTTP responses in a [`Tiered`] cache, as a
/// shared cache by RFC 9111.
///
/// ```
/// use std::time::Duration;
/// use axum::{Router, routing::get};
/// use cachette_core::Tiered;
/// use cachette_http::CacheLayer;
/// use cachette_moka::MemoryTier;
///
/// let cache = Tiered::builder("pages").tier("memory", MemoryTier::default()).build();
/// let app: Router = Router::new()
///     .route("/", get(|| async { ([("cache-control", "max-age=60")], "hello") }))
///     .layer(
///         CacheLayer::new(cache)
///             .stale_while_revalidate(Duration::from_secs(30))
///             .ignore_query_params(["utm_*"]),
///     );
/// ```
#[derive(Clone)]
pub struct CacheLayer {
    pub(crate) cache: Tiered,
    pub(crate) config: Arc<Config>,
    pub(crate) flights: Arc<Flights>,
}

impl fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLayer")
            .field("cache", &self.cache.name())
            .field("config", &self.config)
            .finish()
    }
}

impl CacheLayer {
    /// A layer caching in `cache` with the defaults: RFC 9111 shared-cache
    /// rules, no heuristic freshness, responses without freshness and without
    /// a validator not stored, 8 MiB body limit, coalescing on.
    pub fn new(cache: Tiered) -> Self {
        Self {
            cache,
            config: Arc::new(Config::default()),
            flights: Arc::new(Flights::default()),
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// The cache this layer stores into (for invalidation and stats).
    pub fn cache(&self) -> &Tiered {
        &self.cache
    }

    /// Stores responses that carry no freshness information (no `max-age`,
    /// `s-maxage` or `Expires`) for `ttl`. Without this, such responses are
    /// stored only if they have a validator (and are then revalidated).
    pub fn default_ttl(self, ttl: Duration) -> Self {
        self.with(|c| c.default_ttl = Some(ttl))
    }

    /// Stores every storable response for exactly `ttl`, whatever its
    /// `max-age`/`s-maxage`/`Expires` say (like Django's `cache_page`
    /// timeout). `no-store` and `private` are still obeyed.
    pub fn ttl(self, ttl: Duration) -> Self {
        self.with(|c| c.ttl_override = Some(ttl))
    }

    /// Enables heuristic freshness (RFC 9111 §4.2.2): a response with
    /// `Last-Modified` and no explicit lifetime is fresh for `fraction` of its
    /// age (0.1 is usual). Off by default.
    pub fn heuristic_freshness(self, fraction: f32) -> Self {
        self.with(|c| c.rfc_options.cache_heuristic = fraction.max(0.0))
    }

    /// Targeted cache-control fields obeyed before `Cache-Control`, first
    /// present wins (RFC 9213). Default: `Cachette-Control`, `CDN-Cache-Control`.
    pub fn targeted_fields(self, fields: impl IntoIterator<Item = HeaderName>) -> Self {
        self.with(|c| c.targeted_fields = fields.into_iter().collect())
    }

    /// Response fields removed before storing and from every response served
    /// from the cache. Default: `Cachette-Control`, `Cache-Tag`.
    pub fn strip_fields(self, fields: impl IntoIterator<Item = HeaderName>) -> Self {
        self.with(|c| c.strip_fields = fields.into_iter().collect())
    }

    /// Stores responses with `Set-Cookie` after removing it from the stored
    /// copy (the client that triggered the store still gets its cookie).
    /// Off by default: such responses are not stored.
    pub fn strip_set_cookie(self, strip: bool) -> Self {
        self.with(|c| c.strip_set_cookie = strip)
    }

    /// Responses larger than this stream through to the client uncached,
    /// without being held in memory. Default [`DEFAULT_MAX_BODY_BYTES`].
    pub fn max_body_bytes(self, max: usize) -> Self {
        self.with(|c| c.max_body_bytes = max)
    }

    /// The `stale-while-revalidate` window for responses that do not set one.
    pub fn stale_while_revalidate(self, window: Duration) -> Self {
        self.with(|c| c.stale_while_revalidate = window)
    }

    /// The `stale-if-error` window for responses that do not set one.
    pub fn stale_if_error(self, window: Duration) -> Self {
        self.with(|c| c.stale_if_error = window)
    }

    /// How long a stale response with a validator is kept for conditional
    /// revalidation (default 10 minutes).
    pub fn revalidation_window(self, window: Duration) -> Self {
        self.with(|c| c.revalidation_window = window)
    }

    /// Tags added to every response this layer stores.
    pub fn tags<I, S>(self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.with(|c| c.tags = tags.into_iter().map(Into::into).collect())
    }

    /// The one response field read for per-response tags (default: both
    /// `Cache-Tag` and `Surrogate-Key`); `None` reads none. See
    /// [`tags_headers`](Self::tags_headers).
    pub fn tags_header(self, name: Option<HeaderName>) -> Self {
        self.tags_headers(name)
    }

    /// The response fields read for per-response tags (surrogate keys: the
    /// origin names the tags of what it answers, and a purge by tag removes
    /// every response that carries it, on every tier and node). Default
    /// `Cache-Tag` and `Surrogate-Key`; they are also in the default
    /// [`strip_fields`](Self::strip_fields), so clients do not see them.
    pub fn tags_headers(self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        let names: Vec<HeaderName> = names.into_iter().collect();
        self.with(|c| c.tags_headers = names)
    }

    /// A predicate over the request head: when it returns `true`, the request
    /// bypasses the cache entirely.
    pub fn unless<F>(self, predicate: F) -> Self
    where
        F: Fn(&request::Parts) -> bool + Send + Sync + 'static,
    {
        self.with(|c| c.unless = Some(Arc::new(predicate)))
    }

    /// An origin call slower than this counts as an error: a stale entry is
    /// served inside its `stale-if-error` window, else `504 Gateway Timeout`.
    pub fn origin_timeout(self, timeout: Duration) -> Self {
        self.with(|c| c.origin_timeout = Some(timeout))
    }

    /// The longest an origin call that may be stored takes, head and body
    /// (up to `max_body_bytes`) together (default 60 s). Past it the call
    /// counts as failed (stale-if-error, else `504`): a body that trickles
    /// forever cannot hold a key's fill, or a background refresh, for good.
    pub fn fill_timeout(self, timeout: Duration) -> Self {
        self.with(|c| c.fill_timeout = timeout)
    }

    /// The longest pause between two chunks of an origin body being read to
    /// store it (default 30 s); a longer pause fails the call as
    /// [`fill_timeout`](Self::fill_timeout) does.
    pub fn body_idle_timeout(self, timeout: Duration) -> Self {
        self.with(|c| c.body_idle_timeout = timeout)
    }

    /// How long a coalesced request waits for another request's origin call
    /// for the same key (default 10 s). Past it, it makes its own origin
    /// call and does not store the result (pingora's cache-lock semantics):
    /// a hung fill delays its followers by this much, never for good.
    pub fn lock_timeout(self, timeout: Duration) -> Self {
        self.with(|c| {
            c.lock_timeout = timeout;
            if c.fleet.is_some() {
                c.fleet = Some(c.lease_options());
            }
        })
    }

    /// The most bytes of origin bodies read into memory to be stored at
    /// once, across every request through this layer (default
    /// [`DEFAULT_MAX_BUFFERED_BYTES`]). A response that would go over it
    /// streams to its client uncached (`Cache-Status: ...;
    /// detail=over-buffer-budget`): many concurrent large misses cannot hold
    /// many times `max_body_bytes`.
    pub fn max_buffered_bytes(self, max: usize) -> Self {
        self.flights.buffers.set_max(max);
        self
    }

    /// Bytes of origin bodies held in memory to be stored right now.
    pub fn buffered_bytes(&self) -> usize {
        self.flights.buffers.used()
    }

    /// How long a URL whose response was not storable (`private`,
    /// `no-store`, `Set-Cookie`...) skips coalescing (default 30 s;
    /// Varnish's hit-for-miss): its next requests go to the origin in
    /// parallel instead of queueing behind each other for a result they
    /// could not share. A storable response ends it at once. Zero disables.
    pub fn hit_for_miss(self, window: Duration) -> Self {
        self.with(|c| c.hit_for_miss = window)
    }

    /// Whether concurrent misses for one key make one origin call (default on).
    pub fn coalesce(self, coalesce: bool) -> Self {
        self.with(|c| c.coalesce = coalesce)
    }

    /// Coalesces misses across every node sharing the cache's last tier
    /// (the Redis master), not only within this process (default off): the
    /// first node to miss a key takes a fill lease on the shared tier and
    /// calls the origin; the other nodes wait for its result (woken by the
    /// bus, at most [`lock_timeout`](Self::lock_timeout)) and read it from
    /// the shared tier. One request per node waits; the others coalesce
    /// behind it as without this. A cache without a shared tier, or with
    /// it down, coalesces per node.
    pub fn fleet_coalescing(self, on: bool) -> Self {
        self.with(|c| c.fleet = on.then(|| c.lease_options()))
    }

    /// How long a fleet fill lease lasts (default [`DEFAULT_FILL_LEASE`]).
    /// Its holder renews it every third of this while it fills; a holder
    /// that dies or hangs loses it this long after its last renewal, and
    /// another node fills.
    pub fn fill_lease(self, lease: Duration) -> Self {
        self.with(|c| {
            c.fill_lease = lease.max(Duration::from_millis(10));
            if c.fleet.is_some() {
                c.fleet = Some(c.lease_options());
            }
        })
    }

    /// When a stale entry is at hand and the origin has not answered within
    /// `timeout`, serve the stale entry (`Cache-Status: ...; fwd=stale;
    /// detail=soft-timeout`) and let the origin call finish in the
    /// background to update the cache (FusionCache's soft timeout; off by
    /// default). Past [`origin_timeout`](Self::origin_timeout) /
    /// [`fill_timeout`](Self::fill_timeout) (the hard timeouts) the call
    /// fails. Entries that must be revalidated (`must-revalidate`,
    /// `no-cache`, `proxy-revalidate`) are never served this way.
    pub fn soft_timeout(self, timeout: Duration) -> Self {
        self.with(|c| c.soft_timeout = Some(timeout))
    }

    /// Refreshes a hot entry in the background before it expires: a hit
    /// in the last `fraction` of its freshness lifetime (e.g. `0.1`: the
    /// last 10 %) starts one refresh per key (per fleet, with
    /// [`fleet_coalescing`](Self::fleet_coalescing)), so a key under steady
    /// load never misses. Off by default; values outside `(0, 1)` turn it
    /// off.
    pub fn refresh_ahead(self, fraction: f64) -> Self {
        self.with(|c| c.refresh_ahead = (fraction > 0.0 && fraction < 1.0).then_some(fraction))
    }

    /// Request fields every stored response is keyed on, as if it carried
    /// `Vary` for them (e.g. `x-tenant`, `x-device-class` set by a front
    /// proxy): each value gets its own stored response, and invalidating a
    /// URL removes them all. The response's own `Vary` is unchanged.
    pub fn key_headers(self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        let names: Vec<HeaderName> = names.into_iter().collect();
        self.with(|c| c.key_headers = names)
    }

    /// Request cookies every stored response is keyed on, by name (e.g. a
    /// `currency` or `ab_group` cookie): each value gets its own stored
    /// response, keyed on that cookie's value alone, not the whole `Cookie`
    /// field. Invalidating a URL removes them all. Only lower-case names
    /// that are valid field-name characters are taken (the key carries the
    /// name as a pseudo field); others are skipped.
    pub fn key_cookies<I, S>(self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let names: Vec<HeaderName> = names
            .into_iter()
            .filter_map(|name| {
                let lowered = name.as_ref().to_ascii_lowercase();
                (lowered == name.as_ref())
                    .then(|| {
                        HeaderName::from_bytes(
                            format!("{}{lowered}", crate::key::COOKIE_KEY_PREFIX).as_bytes(),
                        )
                        .ok()
                    })
                    .flatten()
            })
            .collect();
        self.with(|c| {
            for name in names {
                if !c.key_headers.contains(&name) {
                    c.key_headers.push(name);
                }
            }
        })
    }

    /// A prefix for every key (e.g. `shop:1:`).
    pub fn key_prefix(self, prefix: impl Into<String>) -> Self {
        self.with(|c| c.keys.prefix = prefix.into())
    }

    /// Whether the host is part of the key (default `true`, as RFC 9111 keys on
    /// the whole target URI). Turn off for one site served under many names.
    pub fn include_host(self, include: bool) -> Self {
        self.with(|c| c.keys.include_host = include)
    }

    /// Whether query parameters are sorted in the key (default `true`).
    pub fn sort_query(self, sort: bool) -> Self {
        self.with(|c| c.keys.sort_query = sort)
    }

    /// Query parameters left out of the key; a trailing `*` matches a prefix
    /// (`utm_*`).
    pub fn ignore_query_params<I, S>(self, params: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.with(|c| c.keys.ignored_query = params.into_iter().map(Into::into).collect())
    }

    /// The cache's name in `Cache-Status` (default `cachette`).
    pub fn status_name(self, name: impl Into<String>) -> Self {
        self.with(|c| c.status_name = name.into())
    }

    /// The primary key this layer uses for a GET to `uri` (with `Host` from
    /// `headers` when `uri` has no authority), for purging by URL or prefix.
    pub fn key_for(&self, uri: &http::Uri, headers: &http::HeaderMap) -> CacheKey {
        self.config.keys.primary(&http::Method::GET, uri, headers)
    }

    /// Removes the stored responses (every `Vary` variant) for a GET to `uri`,
    /// in every tier and (through the bus) on every node.
    pub async fn invalidate_url(
        &self,
        uri: &http::Uri,
        headers: &http::HeaderMap,
    ) -> cachette_core::WriteReport {
        crate::service::invalidate_primary(&self.cache, &self.key_for(uri, headers)).await
    }

    /// Removes every stored response whose URL starts with `url_prefix`, in
    /// every tier and (through the bus) on every node: `https://host/api/`,
    /// `host/api/`, or `/api/` for every host. An `Err` says why the prefix
    /// cannot be a URL prefix.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # use cachette_core::Tiered;
    /// # let layer = cachette_http::CacheLayer::new(Tiered::builder("pages").build());
    /// let report = layer.invalidate_url_prefix("/api/").await.unwrap();
    /// assert!(report.is_complete());
    /// assert!(layer.invalidate_url_prefix("ftp://host/").await.is_err());
    /// # }
    /// ```
    pub async fn invalidate_url_prefix(
        &self,
        url_prefix: &str,
    ) -> Result<cachette_core::WriteReport, String> {
        Ok(match self.config.keys.url_scope(url_prefix)? {
            crate::UrlScope::Prefix(prefix) => self.cache.invalidate_prefix(&prefix).await,
            crate::UrlScope::Pattern(pattern) => self.cache.invalidate_pattern(&pattern).await,
        })
    }

    /// Soft purge of a URL: its stored responses (every `Vary` variant)
    /// become stale instead of gone, so the next request revalidates them
    /// (a `304` is cheap), and stale-while-revalidate or stale-if-error can
    /// still serve them. On every tier and (through the bus) every node.
    pub async fn soft_invalidate_url(
        &self,
        uri: &http::Uri,
        headers: &http::HeaderMap,
    ) -> cachette_core::WriteReport {
        let primary = self.key_for(uri, headers);
        let mut report = self.cache.soft_delete(&primary).await;
        report.merge(
            self.cache
                .soft_invalidate_tag(&cachette_core::variants_tag(&primary))
                .await,
        );
        report
    }

    /// Soft purge of every stored response whose URL starts with
    /// `url_prefix` (see [`invalidate_url_prefix`](Self::invalidate_url_prefix)
    /// and [`soft_invalidate_url`](Self::soft_invalidate_url)).
    pub async fn soft_invalidate_url_prefix(
        &self,
        url_prefix: &str,
    ) -> Result<cachette_core::WriteReport, String> {
        Ok(match self.config.keys.url_scope(url_prefix)? {
            crate::UrlScope::Prefix(prefix) => self.cache.soft_invalidate_prefix(&prefix).await,
            crate::UrlScope::Pattern(pattern) => self.cache.soft_invalidate_pattern(&pattern).await,
        })
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = CacheService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CacheService::new(inner, self.clone())
    }
}
