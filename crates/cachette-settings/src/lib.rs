//! Named caches configured like Django's `CACHES` setting: a TOML file plus
//! environment overrides, deserialized into typed settings and validated
//! before anything connects.
//!
//! ```
//! use cachette_settings::{Settings, TierKind};
//!
//! let settings = Settings::from_toml_str("caches.toml", r#"
//!     [redis.main]
//!     url = "redis://127.0.0.1:6379/0"
//!
//!     [caches.default]
//!     tiers = ["memory", "master"]
//!     timeout = "5m"
//!     key_prefix = "shop"
//!
//!     [caches.default.memory]
//!     max_bytes = "256MiB"
//! "#).unwrap();
//! assert_eq!(settings.caches["default"].tiers(), vec![TierKind::Memory, TierKind::Master]);
//!
//! let error = Settings::from_toml_str("caches.toml", r#"
//!     [caches.default]
//!     tiers = ["local"]
//! "#).unwrap_err();
//! assert_eq!(error.to_string(), "caches.toml: caches.default.tiers: `local` needs `master` after it (the local replica replicates a master)");
//! ```
//!
//! Every key is documented in docs/configuration.md of the repository.

mod values;

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use serde::Deserialize;

pub use values::{ByteSize, HumanDuration, Timeout};

/// The environment variable prefix of overrides:
/// `CACHETTE__CACHES__DEFAULT__TIMEOUT=60` sets `caches.default.timeout`.
pub const ENV_PREFIX: &str = "CACHETTE__";

/// Settings that cannot be used: where, which key, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {key}: {reason}")]
pub struct SettingsError {
    /// The file (or `environment`) the bad value came from.
    pub source_name: String,
    /// The key path, e.g. `caches.default.timeout`.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl SettingsError {
    fn new(source_name: &str, key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            source_name: source_name.to_owned(),
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// A tier of a cache, in read order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TierKind {
    /// The in-process memory tier.
    Memory,
    /// This node's Redis replica.
    Local,
    /// The Redis master.
    Master,
}

impl fmt::Display for TierKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Memory => "memory",
            Self::Local => "local",
            Self::Master => "master",
        })
    }
}

/// A single-backend shortcut for `tiers`, as Django's `BACKEND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// `tiers = ["memory"]`.
    Memory,
    /// The Redis tiers of the topology: `["local", "master"]` if it has a
    /// local replica, else `["master"]`.
    Redis,
    /// Stores nothing (Django's `DummyCache`): for tests and for disabling.
    Dummy,
}

/// The in-process memory tier of a cache.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemorySettings {
    /// Capacity in bytes (default 64 MiB).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    /// Caps every entry's lifetime in memory: bounds staleness if a cross-node
    /// invalidation is missed (default 60 s when the cache has Redis tiers,
    /// none otherwise).
    pub max_ttl: Option<HumanDuration>,
}

fn default_max_bytes() -> ByteSize {
    ByteSize(64 * 1024 * 1024)
}

impl Default for MemorySettings {
    fn default() -> Self {
        Self {
            max_bytes: default_max_bytes(),
            max_ttl: None,
        }
    }
}

/// The durable journal of master writes that failed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalSettings {
    /// The journal file.
    pub path: PathBuf,
    /// Most operations kept (default 100 000).
    pub max_entries: Option<u64>,
    /// Most bytes kept (default 256 MiB).
    pub max_bytes: Option<ByteSize>,
    /// How often the replayer checks the master (default 500 ms).
    pub probe_interval: Option<HumanDuration>,
    /// Operations per replay batch (default 128).
    pub batch: Option<usize>,
    /// Most operations replayed per second (default 5 000).
    pub max_ops_per_sec: Option<u32>,
}

/// Response-cache options of `caches.layer(alias)`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Store responses without freshness information for this long.
    pub default_ttl: Option<HumanDuration>,
    /// Store every storable response for exactly this long.
    pub ttl: Option<HumanDuration>,
    /// Default `stale-while-revalidate` window.
    pub stale_while_revalidate: Option<HumanDuration>,
    /// Default `stale-if-error` window.
    pub stale_if_error: Option<HumanDuration>,
    /// Larger responses stream through uncached (default 8 MiB).
    pub max_body_bytes: Option<ByteSize>,
    /// Most bytes of origin bodies buffered to be stored at once, every
    /// request together (default 64 MiB).
    pub max_buffered_bytes: Option<ByteSize>,
    /// Query parameters left out of keys (`utm_*`).
    #[serde(default)]
    pub ignore_query_params: Vec<String>,
    /// Whether the host is part of keys (default true).
    pub include_host: Option<bool>,
    /// Heuristic freshness fraction (off by default).
    pub heuristic_freshness: Option<f32>,
    /// Origin calls slower than this count as errors (the hard timeout;
    /// `hard_timeout` is another name for it).
    #[serde(alias = "hard_timeout")]
    pub origin_timeout: Option<HumanDuration>,
    /// With a stale entry at hand, an origin slower than this gets the
    /// stale entry served while its call finishes in the background.
    pub soft_timeout: Option<HumanDuration>,
    /// Coalesce misses across every node on the cache's Redis master
    /// (needs the `master` tier; default off).
    pub fleet_coalescing: Option<bool>,
    /// How long a fleet fill lease lasts, renewed while the fill runs
    /// (default 5 s).
    pub fill_lease: Option<HumanDuration>,
    /// Refresh a hit in the background in the last fraction of its
    /// freshness lifetime (e.g. 0.1; off by default).
    pub refresh_ahead: Option<f64>,
    /// Head and body of an origin call being stored, together (default 60 s).
    pub fill_timeout: Option<HumanDuration>,
    /// Longest pause between body chunks of a call being stored (default 30 s).
    pub body_idle_timeout: Option<HumanDuration>,
    /// How long a coalesced request waits for another's origin call (default 10 s).
    pub lock_timeout: Option<HumanDuration>,
    /// How long a URL whose response was not storable skips coalescing
    /// (default 30 s; `0s` disables).
    pub hit_for_miss: Option<HumanDuration>,
    /// Request fields every stored response is keyed on (as if it varied
    /// on them).
    #[serde(default)]
    pub key_headers: Vec<String>,
    /// Request cookies (lower-case names) every stored response is keyed
    /// on, by value.
    #[serde(default)]
    pub key_cookies: Vec<String>,
    /// Store responses with `Set-Cookie` after removing it.
    pub strip_set_cookie: Option<bool>,
    /// The name in `Cache-Status` (default `cachette`).
    pub status_name: Option<String>,
}

/// One named cache, like one entry of Django's `CACHES`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// The tiers in read order. Exclusive with `backend`.
    pub tiers: Option<Vec<TierKind>>,
    /// A single backend. Exclusive with `tiers`.
    pub backend: Option<BackendKind>,
    /// Which `[redis.<name>]` topology the Redis tiers use (default: the only one).
    pub redis: Option<String>,
    /// Default lifetime of values (Django's `TIMEOUT`; default 300 s).
    #[serde(default)]
    pub timeout: Timeout,
    /// Prefix of every key (Django's `KEY_PREFIX`; default empty).
    #[serde(default)]
    pub key_prefix: String,
    /// Default key version (Django's `VERSION`; default 1).
    #[serde(default = "default_version")]
    pub version: i64,
    /// A key function registered in code by this name (Django's `KEY_FUNCTION`).
    pub key_function: Option<String>,
    /// The Redis namespace of this cache (default `cachette:{alias}:`).
    pub namespace: Option<String>,
    /// The memory tier.
    pub memory: Option<MemorySettings>,
    /// The journal (needs the `master` tier).
    pub journal: Option<JournalSettings>,
    /// Options of the response-cache layer built for this alias.
    pub http: Option<HttpSettings>,
    /// `get_or_set` (and `#[cached]`) coalesce across every node on the
    /// cache's Redis master, not only within the process (needs the
    /// `master` tier; default off).
    #[serde(default)]
    pub fleet_coalescing: bool,
    /// How long a fleet fill lease lasts, renewed while the fill runs
    /// (default 5 s).
    pub fill_lease: Option<HumanDuration>,
    /// The tiers after validation (`backend` resolved).
    #[serde(skip)]
    resolved: Vec<TierKind>,
}

fn default_version() -> i64 {
    1
}

impl CacheSettings {
    /// The tiers in read order, after applying `backend`.
    pub fn tiers(&self) -> Vec<TierKind> {
        self.resolved.clone()
    }

    /// Whether the cache has a tier of this kind.
    pub fn has(&self, tier: TierKind) -> bool {
        self.resolved.contains(&tier)
    }

    /// The Redis namespace of the cache named `alias`.
    pub fn namespace_for(&self, alias: &str) -> String {
        self.namespace
            .clone()
            .unwrap_or_else(|| format!("cachette:{alias}:"))
    }

    /// The memory settings, defaulted.
    pub fn memory_settings(&self) -> MemorySettings {
        self.memory.clone().unwrap_or_default()
    }

    /// The embedded default: memory only, 300 s, no prefix, version 1.
    pub fn memory_only() -> Self {
        Self {
            tiers: Some(vec![TierKind::Memory]),
            backend: None,
            redis: None,
            timeout: Timeout::default(),
            key_prefix: String::new(),
            version: 1,
            key_function: None,
            namespace: None,
            memory: None,
            journal: None,
            http: None,
            fleet_coalescing: false,
            fill_lease: None,
            resolved: vec![TierKind::Memory],
        }
    }
}

/// A Redis topology: one connection set that caches can share.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// One Redis (the master), no replica.
    pub url: Option<String>,
    /// The master's URL, with a fixed local replica (`local`).
    pub master: Option<String>,
    /// Sentinel URLs (`redis://host:26379`); needs `service`.
    pub sentinels: Option<Vec<String>>,
    /// The Sentinel service name.
    pub service: Option<String>,
    /// Redis Cluster (or Valkey Cluster) seed nodes: `redis://host:port`
    /// URLs or `host:port` (credentials from `username`, `password`).
    pub cluster: Option<Vec<String>>,
    /// A fleet without a master: every node's Redis URL (this node's
    /// included, as `self`). Each node reads and writes its own and copies
    /// what the others store.
    pub peers: Option<Vec<String>>,
    /// With `peers`: this node's Redis, one of them, or a `unix:///path`
    /// socket to it (the others list it by its TCP address).
    #[serde(rename = "self")]
    pub this: Option<String>,
    /// With `peers`: entries larger than this are not copied (default 1 MiB).
    pub replicate_max_bytes: Option<ByteSize>,
    /// With `peers`: entries with less lifetime left than this are not
    /// copied (default 1 s).
    pub replicate_min_ttl: Option<HumanDuration>,
    /// With `peers`: announcements waiting to be copied, at most; the
    /// oldest are dropped beyond it (default 4 096).
    pub replicate_queue: Option<usize>,
    /// With `peers`: copies in flight at once (default 8).
    pub replicate_concurrency: Option<usize>,
    /// This node's replica: a URL, or `host:port` (credentials and db from
    /// `username`, `password`, `db`). On a cluster: `host` (every replica on
    /// this host) or `host:port`, several separated by commas.
    #[serde(alias = "local_replica")]
    pub local: Option<String>,
    /// ACL user for the data nodes.
    pub username: Option<String>,
    /// Password for the data nodes.
    pub password: Option<String>,
    /// Database number (default 0).
    #[serde(default)]
    pub db: i64,
    /// Per-call timeout on the local replica (default 50 ms).
    pub local_timeout: Option<HumanDuration>,
    /// Per-call timeout on the master (default 300 ms).
    pub master_timeout: Option<HumanDuration>,
    /// Connection timeout (default 250 ms).
    pub connect_timeout: Option<HumanDuration>,
    /// Exclusive connections per server (default 4).
    pub pool_size: Option<usize>,
    /// How often Sentinel is polled besides its events (default 2 s).
    pub sentinel_poll: Option<HumanDuration>,
    /// Publish and apply invalidations across nodes (default true).
    pub bus: Option<bool>,
    /// How often the bus and Sentinel subscriptions are checked with a
    /// `PING` (default 1 s).
    pub heartbeat: Option<HumanDuration>,
    /// How long delete tombstones and purge marks stay on the master
    /// (default 10 min).
    pub tombstone_ttl: Option<HumanDuration>,
}

impl RedisSettings {
    /// Whether the topology has a Redis of this node's own (a replica,
    /// or its Redis in a fleet of peers).
    pub fn has_local(&self) -> bool {
        self.local.is_some() || self.peers.is_some()
    }

    /// Whether this is a fleet of peers (no master).
    pub fn is_peers(&self) -> bool {
        self.peers.is_some()
    }
}

/// The `peers` / `self` / `replicate_*` keys of a Redis topology.
/// Returns the offending key and the reason.
fn check_peers(
    redis: &RedisSettings,
    key: &dyn Fn(&str) -> String,
) -> Result<(), (String, String)> {
    let err = |key: String, reason: String| (key, reason);
    let Some(peers) = &redis.peers else {
        for (field, set) in [
            ("self", redis.this.is_some()),
            ("replicate_max_bytes", redis.replicate_max_bytes.is_some()),
            ("replicate_min_ttl", redis.replicate_min_ttl.is_some()),
            ("replicate_queue", redis.replicate_queue.is_some()),
            (
                "replicate_concurrency",
                redis.replicate_concurrency.is_some(),
            ),
        ] {
            if set {
                return Err(err(key(field), "is only used with `peers`".into()));
            }
        }
        return Ok(());
    };
    if peers.len() < 2 {
        return Err(err(
            key("peers"),
            "a fleet of peers lists every node's Redis: at least two".into(),
        ));
    }
    let address = |url: &str| -> Option<String> {
        let rest = url
            .strip_prefix("redis://")
            .or_else(|| url.strip_prefix("rediss://"))?;
        let rest = rest.split(['/', '?', '#']).next().unwrap_or(rest);
        let rest = rest.rsplit('@').next().unwrap_or(rest);
        rest.rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            .then(|| rest.to_owned())
    };
    let mut seen = std::collections::BTreeSet::new();
    for peer in peers {
        let Some(addr) = address(peer) else {
            return Err(err(
                key("peers"),
                format!("`{peer}` is not a redis:// or rediss:// URL with host and port"),
            ));
        };
        if !seen.insert(addr) {
            return Err(err(key("peers"), format!("`{peer}` is listed twice")));
        }
    }
    let Some(this) = &redis.this else {
        return Err(err(
            key("self"),
            "a fleet of peers needs `self`: which of `peers` is this node's Redis".into(),
        ));
    };
    // A Unix socket reaches this node's Redis without the network; the
    // others list it by its TCP address.
    let unix = this
        .strip_prefix("unix://")
        .is_some_and(|path| path.starts_with('/'));
    match address(this) {
        _ if unix => {}
        Some(addr) if seen.contains(&addr) => {}
        _ => {
            return Err(err(
                key("self"),
                format!(
                    "`{this}` is not one of `peers` ({}), nor a unix:///path socket",
                    peers.join(", ")
                ),
            ));
        }
    }
    if redis.local.is_some() {
        return Err(err(
            key("local"),
            "a fleet of peers has no replicas: this node's Redis is `self`".into(),
        ));
    }
    if redis.bus == Some(false) {
        return Err(err(
            key("bus"),
            "a fleet of peers needs the bus: stores are announced and invalidations heard on it"
                .into(),
        ));
    }
    if redis.replicate_queue == Some(0) || redis.replicate_concurrency == Some(0) {
        return Err(err(
            key(if redis.replicate_queue == Some(0) {
                "replicate_queue"
            } else {
                "replicate_concurrency"
            }),
            "must be at least 1".into(),
        ));
    }
    Ok(())
}

/// A secret value: deserialized like a string, never printed by `Debug`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The admin routes (`Caches::admin_router`, `cachette proxy --admin`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// The bearer token that `POST /purge` requires (at least 16 characters).
    /// Without it the purge routes do not exist. Best set from the
    /// environment: `CACHETTE__ADMIN__TOKEN`.
    pub token: Option<Secret>,
}

/// `cachette proxy`'s own settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySettings {
    /// Fields added to every request to the upstream (unless the client
    /// sent the field itself), e.g. `authorization = "Bearer ${API_TOKEN}"`.
    /// `${NAME}` is replaced by the environment variable `NAME` at startup
    /// (a missing one is an error), so secrets stay out of the file. The
    /// responses fetched with them are shared by every client of the proxy,
    /// by design (docs/operations.md).
    #[serde(default)]
    pub upstream_headers: BTreeMap<String, Secret>,
}

/// Replaces every `${NAME}` in `value` by `lookup(NAME)`.
fn expand(value: &str, lookup: impl Fn(&str) -> Result<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "an unclosed `${` (write `${NAME}`)".to_owned())?;
        let name = &after[..end];
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("`${{{name}}}` is not an environment variable name"));
        }
        out.push_str(&lookup(name)?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl Settings {
    /// `[proxy] upstream_headers` with every `${NAME}` replaced by the
    /// environment variable `NAME` now; an unset one is an error naming
    /// the file, the key and the variable.
    pub fn proxy_upstream_headers(&self) -> Result<Vec<(String, Secret)>, SettingsError> {
        self.proxy
            .upstream_headers
            .iter()
            .map(|(name, value)| {
                let value = expand(value.expose(), |var| {
                    std::env::var(var)
                        .map_err(|_| format!("the environment variable `{var}` is not set"))
                })
                .map_err(|reason| {
                    SettingsError::new(
                        &self.source_name,
                        format!("proxy.upstream_headers.{name}"),
                        reason,
                    )
                })?;
                Ok((name.clone(), Secret::new(value)))
            })
            .collect()
    }
}

/// The shortest admin token accepted: guessing it must be impractical.
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    caches: BTreeMap<String, CacheSettings>,
    #[serde(default)]
    redis: BTreeMap<String, RedisSettings>,
    #[serde(default)]
    admin: AdminSettings,
    #[serde(default)]
    proxy: ProxySettings,
}

/// Every named cache and Redis topology.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Named caches by alias.
    pub caches: BTreeMap<String, CacheSettings>,
    /// Redis topologies by name.
    pub redis: BTreeMap<String, RedisSettings>,
    /// The admin routes.
    pub admin: AdminSettings,
    /// `cachette proxy`'s settings (upstream request fields).
    pub proxy: ProxySettings,
    /// Where the settings came from (for messages).
    pub source_name: String,
}

impl Settings {
    /// Loads `path` (TOML) and applies `CACHETTE__*` environment overrides,
    /// then validates. Connects to nothing.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, SettingsError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        if !path.exists() {
            return Err(SettingsError::new(
                &name,
                "(file)",
                "the file does not exist",
            ));
        }
        let figment =
            Figment::from(Toml::file_exact(path)).merge(Env::prefixed(ENV_PREFIX).split("__"));
        Self::extract(figment, &name)
    }

    /// Loads from environment overrides only (no file): the embedded default
    /// plus whatever `CACHETTE__*` sets.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::extract(
            Figment::from(Env::prefixed(ENV_PREFIX).split("__")),
            "environment",
        )
    }

    /// Parses TOML text (no environment overrides), named `source_name` in errors.
    pub fn from_toml_str(source_name: &str, text: &str) -> Result<Self, SettingsError> {
        Self::extract(Figment::from(Toml::string(text)), source_name)
    }

    /// Validates the file at `path` (with environment overrides) without
    /// connecting to anything.
    pub fn check(path: impl AsRef<Path>) -> Result<Self, SettingsError> {
        Self::load(path)
    }

    fn extract(figment: Figment, name: &str) -> Result<Self, SettingsError> {
        let raw: Raw = figment.extract().map_err(|error| {
            let error = error.into_iter().next();
            match error {
                Some(error) => {
                    let source = error
                        .metadata
                        .as_ref()
                        .map(|m| match &m.source {
                            Some(figment::Source::File(path)) => path.display().to_string(),
                            _ => m.name.to_string(),
                        })
                        .unwrap_or_else(|| name.to_owned());
                    let source = if source.contains("environment") || source.contains("Env") {
                        "environment".to_owned()
                    } else if source == "TOML source string" {
                        name.to_owned()
                    } else {
                        source
                    };
                    let mut key = error.path.join(".");
                    if key.is_empty() {
                        key = "(top level)".to_owned();
                    }
                    SettingsError::new(&source, key, error.kind.to_string())
                }
                None => SettingsError::new(name, "(top level)", "unreadable settings"),
            }
        })?;
        let mut settings = Self {
            caches: raw.caches,
            redis: raw.redis,
            admin: raw.admin,
            proxy: raw.proxy,
            source_name: name.to_owned(),
        };
        if settings.caches.is_empty() {
            settings
                .caches
                .insert("default".to_owned(), CacheSettings::memory_only());
        }
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&mut self) -> Result<(), SettingsError> {
        let source = self.source_name.clone();
        let err = |key: String, reason: String| SettingsError::new(&source, key, reason);
        if let Some(token) = &self.admin.token {
            let token = token.expose();
            if token.chars().count() < MIN_TOKEN_LEN {
                return Err(err(
                    "admin.token".into(),
                    format!("must be at least {MIN_TOKEN_LEN} characters (it guards purges)"),
                ));
            }
            if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(err(
                    "admin.token".into(),
                    "must not contain spaces or control characters".into(),
                ));
            }
        }
        let mut checked = BTreeMap::new();
        for (name, value) in &self.proxy.upstream_headers {
            let key = format!("proxy.upstream_headers.{name}");
            if !is_field_name(name) {
                return Err(err(key, "is not a header field name".into()));
            }
            let lower = name.to_ascii_lowercase();
            if matches!(
                lower.as_str(),
                "host"
                    | "connection"
                    | "keep-alive"
                    | "te"
                    | "trailer"
                    | "transfer-encoding"
                    | "upgrade"
                    | "content-length"
                    | "proxy-connection"
            ) {
                return Err(err(
                    key,
                    "is set by the proxy itself (connection or framing field)".into(),
                ));
            }
            // Only the syntax here: the variables are read by the proxy
            // when it starts (`cachette check` and the other commands need
            // not hold the secret).
            expand(value.expose(), |_| Ok(String::new()))
                .map_err(|reason| err(key.clone(), reason))?;
            if value.expose().chars().any(|c| c.is_control() && c != '\t') {
                return Err(err(key, "the value has control characters".into()));
            }
            if checked.insert(lower, value.clone()).is_some() {
                return Err(err(
                    key,
                    "given twice (field names are case-insensitive)".into(),
                ));
            }
        }
        self.proxy.upstream_headers = checked;
        for (name, redis) in &self.redis {
            let key = |k: &str| format!("redis.{name}.{k}");
            let modes = [
                redis.url.is_some(),
                redis.master.is_some(),
                redis.sentinels.is_some(),
                redis.cluster.is_some(),
                redis.peers.is_some(),
            ];
            match modes.iter().filter(|m| **m).count() {
                0 => return Err(err(format!("redis.{name}"), "set one of `url` (one Redis), `master` (+ `local`), `sentinels` (+ `service`), `cluster` (seed nodes) or `peers` (+ `self`)".into())),
                1 => {}
                _ => return Err(err(format!("redis.{name}"), "`url`, `master`, `sentinels`, `cluster` and `peers` are exclusive: set only one".into())),
            }
            check_peers(redis, &key).map_err(|(k, reason)| err(k, reason))?;
            if let Some(seeds) = &redis.cluster {
                if seeds.is_empty() {
                    return Err(err(
                        key("cluster"),
                        "at least one seed node is needed".into(),
                    ));
                }
                for seed in seeds {
                    let address = seed
                        .split_once("://")
                        .map_or(seed.as_str(), |(scheme, rest)| {
                            if scheme == "redis" || scheme == "rediss" {
                                rest
                            } else {
                                ""
                            }
                        });
                    let address = address.rsplit('@').next().unwrap_or(address);
                    let address = address.split(['/', '?', '#']).next().unwrap_or(address);
                    let valid = address.rsplit_once(':').is_some_and(|(host, port)| {
                        !host.is_empty() && port.parse::<u16>().is_ok()
                    });
                    if !valid {
                        return Err(err(
                            key("cluster"),
                            format!("`{seed}` is not host:port or a redis:// URL with a port"),
                        ));
                    }
                }
                if redis.db != 0 {
                    return Err(err(key("db"), "a Redis Cluster has only database 0".into()));
                }
                if let Some(local) = &redis.local {
                    for item in local.split(',') {
                        let item = item.trim();
                        let port_ok = match item.rsplit_once(':') {
                            Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
                            None => !item.is_empty(),
                        };
                        if !port_ok || item.contains("://") {
                            return Err(err(
                                key("local"),
                                format!(
                                    "`{item}` is not a host or host:port of this node's replicas"
                                ),
                            ));
                        }
                    }
                }
            }
            if redis.sentinels.is_some() && redis.service.is_none() {
                return Err(err(
                    key("service"),
                    "Sentinel needs the service name (`sentinel monitor <service> ...`)".into(),
                ));
            }
            if redis.sentinels.as_ref().is_some_and(Vec::is_empty) {
                return Err(err(
                    key("sentinels"),
                    "at least one sentinel address is needed".into(),
                ));
            }
            if redis.service.is_some() && redis.sentinels.is_none() {
                return Err(err(
                    key("service"),
                    "`service` is only used with `sentinels`".into(),
                ));
            }
            if redis.url.is_some() && redis.local.is_some() {
                return Err(err(
                    key("local"),
                    "a single Redis (`url`) has no local replica: use `master` and `local`".into(),
                ));
            }
            for (field, url) in [("url", &redis.url), ("master", &redis.master)] {
                if let Some(url) = url {
                    if !(url.starts_with("redis://")
                        || url.starts_with("rediss://")
                        || url.starts_with("unix://"))
                    {
                        return Err(err(
                            key(field),
                            format!("`{url}` is not a redis:// or rediss:// URL"),
                        ));
                    }
                }
            }
            if redis.pool_size == Some(0) {
                return Err(err(key("pool_size"), "must be at least 1".into()));
            }
        }
        let topologies: Vec<String> = self.redis.keys().cloned().collect();
        for (alias, cache) in &mut self.caches {
            let key = |k: &str| format!("caches.{alias}.{k}");
            let tiers = match (&cache.tiers, cache.backend) {
                (Some(_), Some(_)) => {
                    return Err(err(
                        key("backend"),
                        "`tiers` and `backend` are exclusive: set only one".into(),
                    ));
                }
                (Some(tiers), None) => tiers.clone(),
                (None, Some(BackendKind::Memory)) | (None, None) => vec![TierKind::Memory],
                (None, Some(BackendKind::Dummy)) => Vec::new(),
                (None, Some(BackendKind::Redis)) => {
                    let has_local = cache
                        .redis
                        .as_ref()
                        .or(topologies.first())
                        .and_then(|t| self.redis.get(t))
                        .is_some_and(RedisSettings::has_local);
                    let peers = cache
                        .redis
                        .as_ref()
                        .or(topologies.first())
                        .and_then(|t| self.redis.get(t))
                        .is_some_and(RedisSettings::is_peers);
                    if peers {
                        vec![TierKind::Local]
                    } else if has_local {
                        vec![TierKind::Local, TierKind::Master]
                    } else {
                        vec![TierKind::Master]
                    }
                }
            };
            if cache.tiers.as_ref().is_some_and(Vec::is_empty) {
                return Err(err(
                    key("tiers"),
                    "list at least one tier, or use `backend = \"dummy\"` to store nothing".into(),
                ));
            }
            for pair in tiers.windows(2) {
                if pair[0] >= pair[1] {
                    return Err(err(
                        key("tiers"),
                        format!(
                            "tiers are read in the order memory, local, master: `{}` cannot come before `{}`, and no tier may repeat",
                            pair[0], pair[1]
                        ),
                    ));
                }
            }
            let local_alone =
                tiers.contains(&TierKind::Local) && !tiers.contains(&TierKind::Master);
            if local_alone && !self.redis.values().any(RedisSettings::is_peers) {
                return Err(err(
                    key("tiers"),
                    "`local` needs `master` after it (the local replica replicates a master)"
                        .into(),
                ));
            }
            let uses_redis = tiers.iter().any(|t| *t != TierKind::Memory);
            if uses_redis {
                let topology =
                    match &cache.redis {
                        Some(name) => name.clone(),
                        None => match topologies.as_slice() {
                            [only] => only.clone(),
                            [] => return Err(err(
                                key("tiers"),
                                "Redis tiers need a `[redis.<name>]` topology, and there is none"
                                    .into(),
                            )),
                            _ => {
                                return Err(err(
                                    key("redis"),
                                    format!(
                                        "several Redis topologies exist ({}): name one",
                                        topologies.join(", ")
                                    ),
                                ));
                            }
                        },
                    };
                let Some(redis) = self.redis.get(&topology) else {
                    return Err(err(
                        key("redis"),
                        format!(
                            "no topology `[redis.{topology}]` (known: {})",
                            topologies.join(", ")
                        ),
                    ));
                };
                if redis.is_peers() {
                    if tiers.contains(&TierKind::Master) {
                        return Err(err(
                            key("tiers"),
                            format!(
                                "`[redis.{topology}]` is a fleet of peers, which has no master: list `local` (this node's Redis) instead"
                            ),
                        ));
                    }
                } else if tiers.contains(&TierKind::Local) && !tiers.contains(&TierKind::Master) {
                    return Err(err(
                        key("tiers"),
                        "`local` needs `master` after it (the local replica replicates a master)"
                            .into(),
                    ));
                }
                if tiers.contains(&TierKind::Local) && !redis.has_local() {
                    return Err(err(
                        key("tiers"),
                        format!(
                            "`local` is listed but `[redis.{topology}]` has no `local` replica"
                        ),
                    ));
                }
                cache.redis = Some(topology);
            } else if cache.redis.is_some() {
                return Err(err(key("redis"), "the cache has no Redis tier".into()));
            }
            if cache.memory.is_some() && !tiers.contains(&TierKind::Memory) {
                return Err(err(
                    key("memory"),
                    "memory options without the `memory` tier".into(),
                ));
            }
            let on_peers = cache
                .redis
                .as_ref()
                .and_then(|t| self.redis.get(t))
                .is_some_and(RedisSettings::is_peers);
            if on_peers && tiers.contains(&TierKind::Local) && cache.journal.is_none() {
                return Err(err(
                    key("journal"),
                    "a cache on a fleet of peers needs a journal: it keeps the invalidations a peer could not take until it answers again (and this node's own writes its Redis could not take)".into(),
                ));
            }
            if cache.journal.is_some() && !tiers.contains(&TierKind::Master) && !on_peers {
                return Err(err(
                    key("journal"),
                    "the journal records master writes: it needs the `master` tier".into(),
                ));
            }
            if cache.key_prefix.chars().any(|c| c.is_control() || c == ' ') {
                return Err(err(
                    key("key_prefix"),
                    "must not contain spaces or control characters".into(),
                ));
            }
            let shared = tiers.contains(&TierKind::Master);
            if cache.fleet_coalescing && !shared {
                return Err(err(
                    key("fleet_coalescing"),
                    "fleet coalescing takes its leases on the Redis master: it needs the `master` tier".into(),
                ));
            }
            let too_short =
                |d: &Option<HumanDuration>| d.is_some_and(|d| d.0 < Duration::from_millis(10));
            if too_short(&cache.fill_lease) {
                return Err(err(
                    key("fill_lease"),
                    "must be at least 10ms (it is renewed every third of it)".into(),
                ));
            }
            if let Some(http) = &cache.http {
                if too_short(&http.fill_lease) {
                    return Err(err(
                        key("http.fill_lease"),
                        "must be at least 10ms (it is renewed every third of it)".into(),
                    ));
                }
                let lease = http.fill_lease.map_or(Duration::from_secs(5), |d| d.0);
                let wait = http.lock_timeout.map_or(Duration::from_secs(10), |d| d.0);
                if http.fleet_coalescing == Some(true) && lease >= wait {
                    return Err(err(
                        key("http.fill_lease"),
                        format!(
                            "must be shorter than lock_timeout ({}): a node that dies holding the lease must lose it before the other nodes stop waiting",
                            humantime::format_duration(wait)
                        ),
                    ));
                }
                if http.fleet_coalescing == Some(true) && !shared {
                    return Err(err(
                        key("http.fleet_coalescing"),
                        "fleet coalescing takes its leases on the Redis master: it needs the `master` tier".into(),
                    ));
                }
                if http.refresh_ahead.is_some_and(|f| !(f > 0.0 && f < 1.0)) {
                    return Err(err(
                        key("http.refresh_ahead"),
                        "must be a fraction strictly between 0 and 1 (e.g. 0.1: the last 10 % of the lifetime)".into(),
                    ));
                }
                if http
                    .heuristic_freshness
                    .is_some_and(|f| !(0.0..=1.0).contains(&f))
                {
                    return Err(err(
                        key("http.heuristic_freshness"),
                        "must be between 0 and 1".into(),
                    ));
                }
                if let Some(bad) = http.key_cookies.iter().find(|name| {
                    !is_field_name(name) || name.chars().any(|c| c.is_ascii_uppercase())
                }) {
                    return Err(err(
                        key("http.key_cookies"),
                        format!("`{bad}`: cookie names here must be lower-case tokens"),
                    ));
                }
                if let Some(bad) = http.key_headers.iter().find(|name| !is_field_name(name)) {
                    return Err(err(
                        key("http.key_headers"),
                        format!("`{bad}` is not a header field name"),
                    ));
                }
            }
            cache.resolved = tiers;
        }
        self.check_namespaces()
    }

    /// Two caches on one Redis topology must not have namespaces where one is
    /// a prefix of the other: `clear` (and every sweep) of `shop` matches
    /// `shop*`, which would remove `shop2`'s keys. Equal namespaces are
    /// allowed: that is several aliases over one store, on purpose.
    fn check_namespaces(&self) -> Result<(), SettingsError> {
        let mut spaces: Vec<(&str, &str, String)> = self
            .caches
            .iter()
            .filter_map(|(alias, cache)| {
                let topology = cache.redis.as_deref()?;
                Some((alias.as_str(), topology, cache.namespace_for(alias)))
            })
            .collect();
        spaces.sort_by(|a, b| a.2.cmp(&b.2));
        for (i, (alias, topology, namespace)) in spaces.iter().enumerate() {
            if namespace.is_empty() {
                return Err(SettingsError::new(
                    &self.source_name,
                    format!("caches.{alias}.namespace"),
                    "must not be empty (it would cover every key of the Redis database)",
                ));
            }
            let on_cluster = self
                .redis
                .get(*topology)
                .is_some_and(|r| r.cluster.is_some());
            if on_cluster && namespace.contains(['{', '}']) {
                return Err(SettingsError::new(
                    &self.source_name,
                    format!("caches.{alias}.namespace"),
                    format!(
                        "`{namespace}` is on a Redis Cluster, where `{{` and `}}` in a namespace would pick the keys' hash slot: leave them out"
                    ),
                ));
            }
            for (other, other_topology, other_namespace) in &spaces[i + 1..] {
                if other_topology == topology
                    && other_namespace != namespace
                    && other_namespace.starts_with(namespace.as_str())
                {
                    return Err(SettingsError::new(
                        &self.source_name,
                        format!("caches.{other}.namespace"),
                        format!(
                            "`{other_namespace}` starts with `{namespace}`, the namespace of cache `{alias}` on the same Redis: clearing `{alias}` would remove this cache's keys; choose namespaces where none is a prefix of another (end them with `:`)"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Whether `name` is an HTTP field name (RFC 9110 §5.1: a token).
fn is_field_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
