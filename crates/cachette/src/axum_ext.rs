//! axum extractors for named caches.
//!
//! Put [`Caches`] in the router state (or make it reachable with `FromRef`);
//! then a handler takes [`Cache`] (the `default` alias) or [`Named<A>`] (the
//! alias of a marker type declared with [`cache_alias!`](crate::cache_alias)).
//!
//! ```
//! use axum::{Router, routing::get};
//! use cachette::{Cache, Caches, Named, cache_alias};
//!
//! cache_alias!(Sessions = "sessions");
//!
//! async fn visits(cache: Cache) -> String {
//!     let n = cache.get_or_set("visits", || async { 0u64 }, ()).await.unwrap_or(0);
//!     format!("{n}")
//! }
//!
//! async fn session(Named(sessions, ..): Named<Sessions>) -> String {
//!     sessions.alias().to_owned()
//! }
//!
//! let caches = Caches::memory_only();
//! let app: Router = Router::new()
//!     .route("/visits", get(visits))
//!     .route("/session", get(session))
//!     .with_state(caches);
//! ```

use std::marker::PhantomData;

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{StatusCode, request::Parts},
};

use crate::{Cache, Caches};

/// A type that names a cache alias, for [`Named`].
pub trait CacheAlias: Send + Sync + 'static {
    /// The alias.
    const ALIAS: &'static str;
}

/// Declares a marker type for a cache alias:
/// `cache_alias!(Sessions = "sessions");` then `Named<Sessions>`.
#[macro_export]
macro_rules! cache_alias {
    ($(#[$meta:meta])* $vis:vis $name:ident = $alias:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy)]
        $vis struct $name;
        impl $crate::CacheAlias for $name {
            const ALIAS: &'static str = $alias;
        }
    };
}

/// Extracts the named cache of alias `A`.
#[derive(Debug, Clone)]
pub struct Named<A: CacheAlias>(pub Cache, pub PhantomData<A>);

impl<A: CacheAlias> std::ops::Deref for Named<A> {
    type Target = Cache;
    fn deref(&self) -> &Cache {
        &self.0
    }
}

fn lookup(caches: &Caches, alias: &str) -> Result<Cache, (StatusCode, String)> {
    caches.cache(alias).map_err(|error| {
        tracing::error!(%error, "a handler asked for a cache that is not configured");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cache not configured".to_owned(),
        )
    })
}

impl<S> FromRequestParts<S> for Cache
where
    Caches: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = (StatusCode, String);

    async fn from_request_parts(_parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        lookup(&Caches::from_ref(state), "default")
    }
}

impl<S, A> FromRequestParts<S> for Named<A>
where
    Caches: FromRef<S>,
    S: Send + Sync,
    A: CacheAlias,
{
    type Rejection = (StatusCode, String);

    async fn from_request_parts(_parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        lookup(&Caches::from_ref(state), A::ALIAS).map(|cache| Named(cache, PhantomData))
    }
}
