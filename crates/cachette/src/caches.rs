//! [`Caches`]: the registry of named caches, built from settings.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, OnceLock},
    time::Duration,
};

use cachette_core::{CacheError, SingleFlight, TierOptions, Tiered};
use cachette_moka::MemoryTier;
use cachette_settings::{CacheSettings, Settings, SettingsError, TierKind};

use crate::cache::{Cache, CacheInner, KeyFunction};

/// Why a registry could not be built or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The settings are invalid (file, key path, reason).
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// A cache could not be set up (e.g. its journal file cannot be opened).
    #[error("cache `{alias}`: {source}")]
    Cache {
        /// The alias.
        alias: String,
        /// Why.
        #[source]
        source: CacheError,
    },
    /// No cache has this alias.
    #[error("no cache named `{alias}` (configured: {known})")]
    UnknownCache {
        /// The alias asked for.
        alias: String,
        /// The configured aliases.
        known: String,
    },
    /// A settings value needs a feature this build does not have.
    #[error("cache `{alias}` uses {what}, but cachette was built without the `{feature}` feature")]
    MissingFeature {
        /// The alias.
        alias: String,
        /// What it uses.
        what: &'static str,
        /// The feature to enable.
        feature: &'static str,
    },
    /// `key_function` names a function the application did not register.
    #[error("cache `{alias}`: key_function `{name}` is not registered (registered: {known})")]
    UnknownKeyFunction {
        /// The alias.
        alias: String,
        /// The name in the settings.
        name: String,
        /// The registered names.
        known: String,
    },
    /// [`Caches::global`] was called before [`Caches::install`].
    #[error(
        "no caches are installed: call `Caches::install(...)` at startup, before using decorated functions"
    )]
    NotInstalled,
    /// [`Caches::install`] was called twice.
    #[error("caches are already installed")]
    AlreadyInstalled,
}

struct Registry {
    caches: BTreeMap<String, Cache>,
    settings: Settings,
}

/// Every named cache of the application, like Django's `caches`. Cheap to
/// clone: put it in router state or an extension.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use cachette::{Caches, settings::Settings};
///
/// let settings = Settings::from_toml_str("inline", r#"
///     [caches.default]
///     timeout = "5m"
///     [caches.sessions]
///     timeout = "1h"
///     key_prefix = "s"
/// "#)?;
/// let caches = Caches::from_settings(settings).await?;
/// caches.cache("sessions")?.set("user:1", "ada", ()).await?;
/// assert!(caches.cache("default")?.get::<String>("user:1", ()).await?.is_none());
/// assert!(caches.cache("nope").is_err());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Caches {
    registry: Arc<Registry>,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.registry.caches.iter()).finish()
    }
}

static INSTALLED: OnceLock<Caches> = OnceLock::new();

/// Builds a [`Caches`] with key functions registered in code.
#[derive(Clone)]
pub struct CachesBuilder {
    key_functions: BTreeMap<String, KeyFunction>,
    background_replay: bool,
}

impl Default for CachesBuilder {
    fn default() -> Self {
        Self {
            key_functions: BTreeMap::new(),
            background_replay: true,
        }
    }
}

impl CachesBuilder {
    /// Registers a key function under `name`, for `key_function = "name"`.
    pub fn key_function<F>(mut self, name: impl Into<String>, function: F) -> Self
    where
        F: Fn(&str, &str, i64) -> String + Send + Sync + 'static,
    {
        self.key_functions.insert(name.into(), Arc::new(function));
        self
    }

    /// Whether each journal is replayed by a background task when the master
    /// answers (default true). Tools that only inspect caches (the `cachette`
    /// binary's `stats` and `journal status`) turn it off.
    pub fn background_replay(mut self, on: bool) -> Self {
        self.background_replay = on;
        self
    }

    /// Loads `path` (plus `CACHETTE__*` overrides) and builds every cache.
    pub async fn from_file(self, path: impl AsRef<Path>) -> Result<Caches, Error> {
        let settings = Settings::load(path)?;
        self.from_settings(settings).await
    }

    /// Builds every cache of `settings`.
    pub async fn from_settings(self, settings: Settings) -> Result<Caches, Error> {
        let mut caches = BTreeMap::new();
        #[cfg(feature = "redis")]
        let mut topologies: BTreeMap<String, cachette_redis::RedisTiers> = BTreeMap::new();
        for (alias, cache_settings) in &settings.caches {
            let key_function = match &cache_settings.key_function {
                Some(name) => Some(self.key_functions.get(name).cloned().ok_or_else(|| {
                    Error::UnknownKeyFunction {
                        alias: alias.clone(),
                        name: name.clone(),
                        known: join(self.key_functions.keys()),
                    }
                })?),
                None => None,
            };
            let tiers = cache_settings.tiers();
            let has_redis = tiers.iter().any(|t| *t != TierKind::Memory);
            let memory = tiers
                .contains(&TierKind::Memory)
                .then(|| memory_tier(cache_settings, has_redis));
            let mut builder = Tiered::builder(alias.clone());
            if let Some(memory) = &memory {
                builder = builder.tier("memory", memory.clone());
            }
            #[cfg(feature = "redis")]
            let mut redis_tiers = None;
            if has_redis {
                #[cfg(feature = "redis")]
                {
                    let redis = redis_for(
                        &settings,
                        alias,
                        cache_settings,
                        self.background_replay,
                        &mut topologies,
                    )
                    .await?;
                    if let Some(peer) = redis.peer_tier() {
                        // A fleet of peers: this node's Redis is the last tier.
                        builder = builder.tier_arc("local", Arc::new(peer), redis.peer_options());
                    } else {
                        if tiers.contains(&TierKind::Local) {
                            if let Some(local) = redis.local_tier() {
                                builder = builder.tier_arc(
                                    "local",
                                    Arc::new(local),
                                    redis.local_options(),
                                );
                            }
                        }
                        builder = builder.tier_arc(
                            "master",
                            Arc::new(redis.master_tier()),
                            redis.master_options(),
                        );
                    }
                    match &memory {
                        Some(memory) => redis.start_bus(Arc::new(memory.clone())),
                        None => redis.start_without_memory(),
                    }
                    redis_tiers = Some(redis);
                }
                #[cfg(not(feature = "redis"))]
                return Err(Error::MissingFeature {
                    alias: alias.clone(),
                    what: "Redis tiers",
                    feature: "redis",
                });
            }
            let cache = Cache {
                inner: Arc::new(CacheInner {
                    alias: alias.clone(),
                    tiered: builder.build(),
                    timeout: cache_settings.timeout,
                    key_prefix: cache_settings.key_prefix.clone(),
                    version: cache_settings.version,
                    key_function,
                    flights: SingleFlight::new(),
                    #[cfg(feature = "redis")]
                    redis: redis_tiers,
                    http: cache_settings.http.clone().unwrap_or_default(),
                    fleet: cache_settings.fleet_coalescing.then(|| {
                        crate::cache::data_lease_options(
                            cache_settings
                                .fill_lease
                                .map_or(cachette_core::DEFAULT_FILL_LEASE, |d| d.0),
                        )
                    }),
                }),
            };
            caches.insert(alias.clone(), cache);
        }
        Ok(Caches {
            registry: Arc::new(Registry { caches, settings }),
        })
    }
}

fn join<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

fn memory_tier(settings: &CacheSettings, has_redis: bool) -> MemoryTier {
    let memory = settings.memory_settings();
    let mut builder = MemoryTier::builder().max_bytes(memory.max_bytes.0);
    // With Redis tiers, other nodes invalidate over a lossy bus: cap how
    // long a missed invalidation can be served from memory.
    let cap = memory
        .max_ttl
        .map(|d| d.0)
        .or(has_redis.then_some(Duration::from_secs(60)));
    if let Some(cap) = cap {
        builder = builder.max_ttl(cap);
    }
    builder.build()
}

#[cfg(feature = "redis")]
async fn redis_for(
    settings: &Settings,
    alias: &str,
    cache: &CacheSettings,
    background_replay: bool,
    topologies: &mut BTreeMap<String, cachette_redis::RedisTiers>,
) -> Result<cachette_redis::RedisTiers, Error> {
    use cachette_redis::{JournalConfig, RedisConfig, Topology};

    let failed = |source| Error::Cache {
        alias: alias.to_owned(),
        source,
    };
    let namespace = cache.namespace_for(alias);
    let journal = cache.journal.as_ref().map(|j| {
        let mut config = JournalConfig::new(&j.path);
        if let Some(v) = j.max_entries {
            config.max_entries = v;
        }
        if let Some(v) = j.max_bytes {
            config.max_bytes = v.0;
        }
        if let Some(v) = j.probe_interval {
            config.probe_interval = v.0;
        }
        if let Some(v) = j.batch {
            config.batch = v;
        }
        if let Some(v) = j.max_ops_per_sec {
            config.max_ops_per_sec = v;
        }
        config.background_replay = background_replay;
        config
    });
    let topology_name = cache.redis.clone().unwrap_or_default();
    if let Some(existing) = topologies.get(&topology_name) {
        return existing.with_namespace(namespace, journal).map_err(failed);
    }
    let Some(redis) = settings.redis.get(&topology_name) else {
        return Err(Error::Settings(SettingsError {
            source_name: settings.source_name.clone(),
            key: format!("caches.{alias}.redis"),
            reason: format!("no topology `[redis.{topology_name}]`"),
        }));
    };
    let local_url = |local: &str| {
        if local.contains("://") {
            local.to_owned()
        } else {
            let (host, port) = local.rsplit_once(':').unwrap_or((local, "6379"));
            cachette_redis::node_url(
                host,
                port.parse().unwrap_or(6379),
                redis.username.as_deref(),
                redis.password.as_deref(),
                redis.db,
            )
        }
    };
    let topology = if let Some(peers) = &redis.peers {
        Topology::peers(peers.clone(), redis.this.clone().unwrap_or_default())
    } else if let Some(seeds) = &redis.cluster {
        let seeds = seeds
            .iter()
            .map(|seed| {
                if seed.contains("://") {
                    seed.clone()
                } else {
                    let (host, port) = seed.rsplit_once(':').unwrap_or((seed, "6379"));
                    cachette_redis::node_url(
                        host,
                        port.parse().unwrap_or(6379),
                        redis.username.as_deref(),
                        redis.password.as_deref(),
                        0,
                    )
                }
            })
            .collect::<Vec<_>>();
        let local = redis
            .local
            .as_deref()
            .map(|l| {
                l.split(',')
                    .map(|item| item.trim().to_owned())
                    .filter(|item| !item.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Topology::cluster(seeds, local)
    } else if let Some(url) = &redis.url {
        Topology::single(url.clone())
    } else if let Some(master) = &redis.master {
        Topology::fixed(master.clone(), redis.local.as_deref().map(local_url))
    } else {
        let local = redis.local.as_deref().map(|l| match l.split_once("://") {
            Some((_, rest)) => rest
                .split(['/', '?'])
                .next()
                .unwrap_or(rest)
                .rsplit('@')
                .next()
                .unwrap_or(rest)
                .to_owned(),
            None => l.to_owned(),
        });
        Topology::Sentinel {
            sentinels: redis.sentinels.clone().unwrap_or_default(),
            service: redis.service.clone().unwrap_or_default(),
            local,
            username: redis.username.clone(),
            password: redis.password.clone(),
            db: redis.db,
        }
    };
    let mut config = RedisConfig::new(topology, namespace);
    if let Some(v) = redis.local_timeout {
        config.local_timeout = v.0;
    }
    if let Some(v) = redis.master_timeout {
        config.master_timeout = v.0;
    }
    if let Some(v) = redis.connect_timeout {
        config.connect_timeout = v.0;
    }
    if let Some(v) = redis.pool_size {
        config.pool_size = v;
    }
    if let Some(v) = redis.sentinel_poll {
        config.sentinel_poll = v.0;
    }
    if let Some(v) = redis.bus {
        config.bus = v;
    }
    if let Some(v) = redis.heartbeat {
        config.heartbeat = v.0;
    }
    if let Some(v) = redis.tombstone_ttl {
        config.tombstone_ttl = v.0;
    }
    if let Some(v) = redis.replicate_max_bytes {
        config.replication.max_bytes = v.0;
    }
    if let Some(v) = redis.replicate_min_ttl {
        config.replication.min_ttl = v.0;
    }
    if let Some(v) = redis.replicate_queue {
        config.replication.queue = v;
    }
    if let Some(v) = redis.replicate_concurrency {
        config.replication.concurrency = v;
    }
    config.journal = journal;
    let tiers = cachette_redis::RedisTiers::connect(config)
        .await
        .map_err(failed)?;
    topologies.insert(topology_name, tiers.clone());
    Ok(tiers)
}

impl Caches {
    /// A builder, to register key functions first.
    pub fn builder() -> CachesBuilder {
        CachesBuilder::default()
    }

    /// Loads `path` (plus `CACHETTE__*` environment overrides) and builds
    /// every cache. Redis servers that are down do not fail this: their tiers
    /// fail open until they answer.
    pub async fn from_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        CachesBuilder::default().from_file(path).await
    }

    /// Builds every cache of `settings`.
    pub async fn from_settings(settings: Settings) -> Result<Self, Error> {
        CachesBuilder::default().from_settings(settings).await
    }

    /// The embedded default: one `default` cache, memory only, 300 s.
    pub fn memory_only() -> Self {
        let settings = Settings::from_toml_str("(embedded default)", "");
        let mut caches = BTreeMap::new();
        if let Ok(settings) = &settings {
            for (alias, cache_settings) in &settings.caches {
                let tiered = Tiered::builder(alias.clone())
                    .tier_arc(
                        "memory",
                        Arc::new(memory_tier(cache_settings, false)),
                        TierOptions::with_timeout(None),
                    )
                    .build();
                caches.insert(alias.clone(), Cache::new(alias.clone(), tiered));
            }
        }
        let settings = settings.unwrap_or_else(|_| Settings {
            caches: BTreeMap::new(),
            redis: BTreeMap::new(),
            admin: Default::default(),
            proxy: Default::default(),
            source_name: "(embedded default)".into(),
        });
        Self {
            registry: Arc::new(Registry { caches, settings }),
        }
    }

    /// Validates the settings file at `path` (with environment overrides)
    /// without connecting to anything.
    pub fn check(path: impl AsRef<Path>) -> Result<Settings, SettingsError> {
        Settings::check(path)
    }

    /// The cache named `alias`.
    pub fn cache(&self, alias: &str) -> Result<Cache, Error> {
        self.registry
            .caches
            .get(alias)
            .cloned()
            .ok_or_else(|| Error::UnknownCache {
                alias: alias.to_owned(),
                known: join(self.registry.caches.keys()),
            })
    }

    /// The aliases.
    pub fn aliases(&self) -> impl Iterator<Item = &str> {
        self.registry.caches.keys().map(String::as_str)
    }

    /// The settings the caches were built from.
    pub fn settings(&self) -> &Settings {
        &self.registry.settings
    }

    /// The response-cache layer for `alias`, with its `[caches.<alias>.http]`
    /// options. Its keys live under the cache's `key_prefix:version:`, so
    /// [`Cache::clear`] removes the cached pages too.
    #[cfg(feature = "http")]
    pub fn layer(&self, alias: &str) -> Result<crate::CacheLayer, Error> {
        let cache = self.cache(alias)?;
        Ok(crate::http_layer::layer_for(&cache))
    }

    /// Makes this registry reachable from anywhere ([`Caches::global`]), for
    /// the decorators. Once per process.
    pub fn install(self) -> Result<(), Error> {
        INSTALLED.set(self).map_err(|_| Error::AlreadyInstalled)
    }

    /// The installed registry.
    pub fn global() -> Result<&'static Caches, Error> {
        INSTALLED.get().ok_or(Error::NotInstalled)
    }
}
