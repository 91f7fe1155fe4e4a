//! # cachette
//!
//! A fast, highly available, multi-tier response and data cache for
//! axum/tower web apps: in-process memory (moka) → the node-local Redis
//! replica → the Redis master, with RFC 9111 HTTP semantics on top.
//!
//! This is the facade crate: it re-exports the pieces behind feature flags.
//!
//! | feature | default | gives |
//! |---|---|---|
//! | `moka` | yes | [`MemoryTier`], the in-process tier |
//! | `http` | yes | [`CacheLayer`], the tower/axum response cache |
//! | `settings` | yes | [`Caches`] (named caches like Django's `CACHES`) and [`Cache`] (the data API) |
//! | `axum` | no | extractors: [`Cache`] and `Named<A>` from router state |
//! | `macros` | no | `#[cached]` and `#[cache_page]` (with `axum`) |
//! | `redis` | no | [`redis`]: the local-replica and master tiers, Sentinel, the journal, the bus |
//! | `metrics` | no | [`Caches::record_metrics`]: the caches' counters through the `metrics` facade |
//! | `admin` | no | [`Caches::admin_router`]: `/health`, `/stats`, `/metrics` (Prometheus), `/purge` |
//! | `full` | no | everything |
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use cachette::{CacheLayer, MemoryTier, Tiered};
//!
//! let cache = Tiered::builder("default")
//!     .tier("memory", MemoryTier::with_max_bytes(64 * 1024 * 1024))
//!     .build();
//! let app: Router = Router::new()
//!     .route("/time", get(|| async { ([("cache-control", "max-age=10")], "now") }))
//!     .layer(CacheLayer::new(cache).stale_while_revalidate(Duration::from_secs(30)));
//! ```

pub use cachette_core as core;
pub use cachette_core::{
    Backend, BreakerConfig, BreakerState, CacheError, CacheKey, DecodeError, Entry, EntryMeta,
    FleetFill, Freshness, Hit, LeaseOptions, Payload, SingleFlight, StatsSnapshot, StoredResponse,
    TierOptions, Tiered, TieredBuilder, WriteReport, async_trait,
};

#[cfg(feature = "moka")]
pub use cachette_moka::{MemoryTier, MemoryTierBuilder};

/// The HTTP response cache: [`CacheLayer`] and its parts.
#[cfg(feature = "http")]
pub mod http {
    pub use cachette_http::*;
}

#[cfg(feature = "http")]
pub use cachette_http::CacheLayer;

/// The Redis tiers: [`redis::RedisTiers`] and its parts.
#[cfg(feature = "redis")]
pub mod redis {
    pub use cachette_redis::*;
}

#[cfg(feature = "axum")]
mod axum_ext;
#[cfg(feature = "macros")]
#[doc(hidden)]
pub mod __private {
    pub use crate::private::*;
}
#[cfg(feature = "macros")]
mod private;

#[cfg(feature = "macros")]
pub use cachette_macros::{cache_page, cached};
#[cfg(feature = "admin")]
pub mod admin;
#[cfg(feature = "settings")]
mod cache;
#[cfg(feature = "settings")]
mod caches;
#[cfg(all(feature = "settings", feature = "http"))]
mod http_layer;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "settings")]
pub mod ops;

#[cfg(feature = "axum")]
pub use axum_ext::{CacheAlias, Named};
#[cfg(feature = "settings")]
pub use cache::{Cache, KeyFunction, Opts, Timeout, Ttl, default_key};
#[cfg(feature = "settings")]
pub use caches::{Caches, CachesBuilder, Error};

/// Settings types (`Settings`, `CacheSettings`, ...), for validation and tooling.
#[cfg(feature = "settings")]
pub mod settings {
    pub use cachette_settings::*;
}

/// The names most applications need.
pub mod prelude {
    #[cfg(feature = "http")]
    pub use crate::CacheLayer;
    #[cfg(feature = "moka")]
    pub use crate::MemoryTier;
    pub use crate::{Backend, CacheKey, Entry, EntryMeta, Tiered};
    #[cfg(feature = "settings")]
    pub use crate::{Cache, Caches, Opts, Timeout};
}
