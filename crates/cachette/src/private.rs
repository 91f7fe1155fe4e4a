//! Runtime support for the code `#[cached]` and `#[cache_page]` generate.
//! Not a public API: it may change in any release.

use std::{future::Future, time::Duration};

use cachette_core::{FleetFill, LeaseEnd, Payload};
use serde::{Serialize, de::DeserializeOwned};

use cachette_core::escape_glob;

use crate::{
    Cache, Caches, Opts, Timeout,
    cache::{decode, encode},
};

/// A key argument of a `#[cached]` function must be serializable.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be part of a #[cached] key: it is not `Serialize`",
    label = "this argument is encoded into the cache key",
    note = "mark the argument `#[cache_ignore]`, or name the key yourself: #[cached(key = \"...{{arg}}...\")]"
)]
pub trait KeyArg {
    /// Appends the argument's stable encoding.
    fn encode_into(&self, out: &mut Vec<u8>);
}

impl<T: Serialize + ?Sized> KeyArg for T {
    fn encode_into(&self, out: &mut Vec<u8>) {
        if let Err(error) = rmp_serde::encode::write(out, self) {
            tracing::debug!(%error, "a #[cached] argument did not serialize; it is left out of the key");
        }
    }
}

/// Appends one argument to the key bytes (and checks at compile time that
/// it can be part of a key).
pub fn key_arg<T: KeyArg + ?Sized>(out: &mut Vec<u8>, arg: &T) {
    arg.encode_into(out);
}

/// The static description of one `#[cached]` function.
#[derive(Debug)]
pub struct CachedSite {
    /// The cache alias.
    pub alias: &'static str,
    /// The function's path: the default key prefix.
    pub path: &'static str,
    /// The lifetime, if given.
    pub ttl_ms: Option<u64>,
    /// Tags stored with every result.
    pub tags: &'static [&'static str],
    /// With a key template, the glob matching every key (for `invalidate_all`).
    pub pattern: Option<&'static str>,
    /// Whether `None` results are cached.
    pub cache_none: bool,
}

impl CachedSite {
    /// `path:hash(encoded arguments)`.
    pub fn bytes_key(&self, bytes: &[u8]) -> String {
        format!("{}:{:016x}", self.path, cachette_core::stable_hash(bytes))
    }

    fn cache(&self) -> Option<Cache> {
        match Caches::global() {
            Ok(caches) => match caches.cache(self.alias) {
                Ok(cache) => Some(cache),
                Err(error) => {
                    tracing::warn!(function = self.path, %error, "#[cached] runs uncached");
                    None
                }
            },
            Err(error) => {
                tracing::warn!(function = self.path, %error, "#[cached] runs uncached");
                None
            }
        }
    }

    fn opts(&self) -> Opts {
        let mut opts = Opts::new().tags(self.tags.iter().copied());
        if let Some(ms) = self.ttl_ms {
            opts = opts.timeout(Timeout::After(Duration::from_millis(ms)));
        }
        opts
    }
}

/// Looks the key up; on a miss runs `call` once per key (single-flight),
/// stores what `shareable` allows, and returns the value. Any cache problem
/// runs `call` instead.
async fn memoize<V, F, Fut>(
    site: &CachedSite,
    key: String,
    call: F,
    shareable: impl Fn(&V) -> Option<Payload>,
    from_payload: impl Fn(&Payload) -> Option<V>,
) -> V
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = V>,
{
    let Some(cache) = site.cache() else {
        return call().await;
    };
    let stored = match cache.make_key(&key, None) {
        Ok(stored) => stored,
        Err(error) => {
            tracing::warn!(function = site.path, %error, "#[cached] key is not usable; running uncached");
            return call().await;
        }
    };
    if let Some(value) = cache
        .lookup(&stored)
        .await
        .and_then(|e| from_payload(e.payload()))
    {
        return value;
    }
    let opts = site.opts();
    let mut call = Some(call);
    let mut own = None;
    let (call_slot, own_slot) = (&mut call, &mut own);
    let (cache_ref, stored_ref, opts_ref) = (&cache, &stored, &opts);
    let (shared, _) = cache
        .inner
        .flights
        .run(&stored, move || async move {
            // With fleet coalescing, one node runs the call for the fleet.
            let mut lease = None;
            if let Some(options) = cache_ref.inner.fleet {
                let tiered = &cache_ref.inner.tiered;
                match tiered.fleet_fill(stored_ref, options).await {
                    FleetFill::Lead(held) => lease = Some(held),
                    FleetFill::Filled => {
                        if let Some(kept) = tiered.get_shared(stored_ref).await {
                            return Some(kept.payload().clone());
                        }
                    }
                    _ => {}
                }
            }
            let call = call_slot.take()?;
            let value = match &mut lease {
                Some(lease) => lease.hold(call()).await,
                None => call().await,
            };
            let payload = shareable(&value);
            if let Some(payload) = &payload {
                cache_ref.store(stored_ref, payload.clone(), opts_ref).await;
            }
            if let Some(lease) = lease {
                let stored = payload.is_some() && cache_ref.meta(opts_ref).is_some();
                lease
                    .end(if stored {
                        LeaseEnd::Filled
                    } else {
                        LeaseEnd::Unstorable
                    })
                    .await;
            }
            *own_slot = Some(value);
            payload
        })
        .await;
    if let Some(value) = own {
        return value;
    }
    if let Some(value) = shared.as_ref().and_then(&from_payload) {
        return value;
    }
    // The leader's result could not be shared (an error, an uncached None):
    // run our own call.
    match call.take() {
        Some(call) => call().await,
        // Our closure only runs as the leader, which sets `own`.
        None => unreachable!("a #[cached] call ran as leader without a result"),
    }
}

/// `#[cached]` on a function returning `T`.
pub async fn cached_plain<T, F, Fut>(
    site: &CachedSite,
    key: String,
    _cache_none: bool,
    call: F,
) -> T
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> Fut,
    Fut: Future<Output = T>,
{
    memoize(site, key, call, |v| encode(v).ok(), decode).await
}

/// `#[cached]` on a function returning `Result<T, E>`: errors are not cached.
pub async fn cached_result<T, E, F, Fut>(
    site: &CachedSite,
    key: String,
    _cache_none: bool,
    call: F,
) -> Result<T, E>
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    memoize(
        site,
        key,
        call,
        |v: &Result<T, E>| v.as_ref().ok().and_then(|t| encode(t).ok()),
        |p| decode::<T>(p).map(Ok),
    )
    .await
}

/// `#[cached]` on a function returning `Option<T>`: `None` is cached only
/// with `cache_none = true`.
pub async fn cached_option<T, F, Fut>(
    site: &CachedSite,
    key: String,
    cache_none: bool,
    call: F,
) -> Option<T>
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    memoize(
        site,
        key,
        call,
        |v: &Option<T>| {
            (v.is_some() || cache_none)
                .then(|| encode(v).ok())
                .flatten()
        },
        decode::<Option<T>>,
    )
    .await
}

/// Removes the cached result under `key`.
pub async fn invalidate(site: &CachedSite, key: String) {
    if let Some(cache) = site.cache() {
        if let Err(error) = cache.delete(&key, ()).await {
            tracing::warn!(function = site.path, %error, "could not invalidate a #[cached] result");
        }
    }
}

/// Removes every cached result of the function (a glob purge on every tier,
/// carried to every node by the bus).
pub async fn invalidate_all(site: &CachedSite) {
    if let Some(cache) = site.cache() {
        let pattern = match site.pattern {
            Some(pattern) => pattern.to_owned(),
            None => format!("{}:*", escape_glob(site.path)),
        };
        if let Err(error) = cache.delete_pattern(&pattern, ()).await {
            tracing::warn!(function = site.path, %error, "could not invalidate a #[cached] function");
        }
    }
}

#[cfg(feature = "axum")]
pub use page::*;

#[cfg(feature = "axum")]
mod page {
    use std::{
        convert::Infallible,
        future::Future,
        pin::Pin,
        sync::{Arc, Mutex, OnceLock, PoisonError},
        task::{Context, Poll},
        time::Duration,
    };

    pub use axum;
    pub use axum::http;
    use axum::{
        body::Body,
        extract::OriginalUri,
        http::{
            HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header, request::Parts,
        },
        response::IntoResponse,
    };
    use tower::{Layer, ServiceExt};

    use crate::{CacheLayer, Caches, Timeout, cache::default_key};

    /// Forces a future's output type (keeps handler return types inferred).
    pub fn typed<R, F: Future<Output = R>>(future: F) -> F {
        future
    }

    /// The lazily built layer of a `#[cache_page]` handler.
    #[derive(Debug, Default)]
    pub struct LayerSlot(OnceLock<CacheLayer>);

    impl LayerSlot {
        /// An empty slot.
        pub const fn new() -> Self {
            Self(OnceLock::new())
        }
    }

    /// The static description of one `#[cache_page]` handler.
    #[derive(Debug)]
    pub struct PageSite {
        /// The cache alias.
        pub alias: &'static str,
        /// `ttl`, beating the response's own lifetime (Django's `cache_page`).
        pub ttl_ms: Option<u64>,
        /// An extra key prefix.
        pub key_prefix: Option<&'static str>,
        /// Request headers the response varies on (added to its `Vary`).
        pub vary: &'static [&'static str],
        /// Tags stored with every response.
        pub tags: &'static [&'static str],
        /// Requests for which the cache is bypassed.
        pub unless: Option<fn(&Parts) -> bool>,
        /// The layer, built on first use.
        pub layer: LayerSlot,
    }

    impl PageSite {
        fn layer(&self) -> Option<CacheLayer> {
            if let Some(layer) = self.layer.0.get() {
                return Some(layer.clone());
            }
            let cache = match Caches::global().and_then(|caches| caches.cache(self.alias)) {
                Ok(cache) => cache,
                Err(error) => {
                    tracing::warn!(%error, "#[cache_page] handler runs uncached");
                    return None;
                }
            };
            let mut layer = crate::http_layer::layer_for(&cache);
            let ttl = match (self.ttl_ms, cache.default_timeout()) {
                (Some(ms), _) => Some(Duration::from_millis(ms)),
                (None, Timeout::After(d)) if !d.is_zero() => Some(d),
                _ => None,
            };
            if let Some(ttl) = ttl {
                layer = layer.ttl(ttl);
            }
            if let Some(prefix) = self.key_prefix {
                let base = default_key("", &cache.inner.key_prefix, cache.version());
                layer = layer.key_prefix(format!("{base}{prefix}:"));
            }
            if !self.tags.is_empty() {
                layer = layer.tags(self.tags.iter().copied());
            }
            if let Some(unless) = self.unless {
                layer = layer.unless(unless);
            }
            let _ = self.layer.0.set(layer.clone());
            Some(layer)
        }
    }

    type HandlerFuture = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

    /// The handler's call, as a service the layer can call once (or, for a
    /// stale-while-revalidate refresh, later in the background).
    #[derive(Clone)]
    struct OneShot(Arc<Mutex<Option<HandlerFuture>>>);

    impl tower::Service<Request<Body>> for OneShot {
        type Response = Response<Body>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<Body>) -> Self::Future {
            let handler = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
            Box::pin(async move {
                Ok(match handler {
                    Some(handler) => handler.await,
                    None => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "handler already answered\n",
                    )
                        .into_response(),
                })
            })
        }
    }

    /// Runs a `#[cache_page]` handler through the site's response cache layer.
    pub async fn cache_page<F, R>(
        site: &'static PageSite,
        method: Method,
        OriginalUri(uri): OriginalUri,
        headers: HeaderMap,
        handler: F,
    ) -> Response<Body>
    where
        F: Future<Output = R> + Send + 'static,
        R: IntoResponse,
    {
        let vary = site.vary;
        let respond = async move {
            let mut response = handler.await.into_response();
            // Header names were checked when the attribute was expanded.
            for name in vary {
                if let Ok(value) = HeaderValue::from_str(name) {
                    response.headers_mut().append(header::VARY, value);
                }
            }
            response
        };
        let Some(layer) = site.layer() else {
            return respond.await;
        };
        let service = layer.layer(OneShot(Arc::new(Mutex::new(Some(Box::pin(respond))))));
        let mut request = Request::new(Body::empty());
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        match service.oneshot(request).await {
            Ok(response) => response.map(Body::new),
            Err(never) => match never {},
        }
    }
}
