//! Attribute macros for [cachette](https://docs.rs/cachette), re-exported by
//! the `cachette` crate with its `macros` feature: [`macro@cache_page`] caches
//! an axum handler's responses, [`macro@cached`] memoizes an async function.
//! Both use the caches installed with `cachette::Caches::install`.

mod cache_page;
mod cached;
mod options;

use proc_macro::TokenStream;

/// Caches an axum handler's responses, like Django's `@cache_page`.
///
/// `#[cache_page(ttl = "5m", cache = "pages", key_prefix = "users", vary = ["accept-language"], tags = ["users"], unless = path::to::predicate)]`
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use axum::{Router, body::Body, extract::Path, http::Request, routing::get};
/// use cachette::{Caches, cache_page};
/// use tower::ServiceExt;
///
/// #[cache_page(ttl = "5m", vary = ["accept-language"])]
/// async fn user(Path(id): Path<u64>) -> String {
///     format!("user {id}")
/// }
///
/// Caches::memory_only().install().unwrap();
/// let app = Router::new().route("/users/{id}", get(user));
/// let request = || Request::get("http://example.com/users/7").body(Body::empty()).unwrap();
/// let _ = app.clone().oneshot(request()).await.unwrap();
/// let hit = app.oneshot(request()).await.unwrap();
/// assert!(hit.headers()["cache-status"].to_str().unwrap().starts_with("cachette; hit"));
/// # }
/// ```
///
/// Every option is optional: `cache` defaults to `default`, `ttl` to the
/// cache's `timeout` (and, like Django's `cache_page`, beats the response's
/// `max-age`). The handler keeps all its extractors and is routed as usual;
/// the HTTP semantics are exactly those of `CacheLayer` (storability, `Vary`,
/// `304`, stale-while-revalidate, stale-if-error, coalescing, `Cache-Status`).
#[proc_macro_attribute]
pub fn cache_page(args: TokenStream, item: TokenStream) -> TokenStream {
    cache_page::expand(args.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Memoizes an async function in a named cache, like Flask-Caching's
/// `@memoize`.
///
/// `#[cached(cache = "default", ttl = "60s", key = "user:{id}", tags = ["users"], cache_none = false)]`
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use cachette::{Caches, cached};
///
/// static CALLS: AtomicUsize = AtomicUsize::new(0);
///
/// #[cached(ttl = "60s", key = "square:{n}")]
/// async fn square(n: u64) -> u64 {
///     CALLS.fetch_add(1, Ordering::SeqCst);
///     n * n
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// Caches::memory_only().install().unwrap();
/// assert_eq!(square(12).await, 144);
/// assert_eq!(square(12).await, 144);
/// assert_eq!(CALLS.load(Ordering::SeqCst), 1);
/// square::invalidate(12).await;          // one call
/// square::invalidate_all().await;        // every call
/// assert_eq!(square::uncached(3).await, 9);
/// # }
/// ```
///
/// The default key is the function's path plus a stable encoding of its
/// arguments (each must be `Serialize`, or marked `#[cache_ignore]`; `self`
/// is never part of it). Returns `T`, `Result<T, E>` (errors are not cached)
/// or `Option<T>` (`None` is cached only with `cache_none = true`).
/// Concurrent calls with the same key run the body once. A cache failure
/// never fails the call: the body runs instead.
///
/// For a free function `f`, a module `f` is generated with `invalidate(args)`,
/// `invalidate_all()` and `uncached(args)`; for a method `f`, associated
/// functions `f_invalidate`, `f_invalidate_all` and `f_uncached`. Because of
/// that module, a decorated free function must be a module-level item (not
/// declared inside another function's body).
#[proc_macro_attribute]
pub fn cached(args: TokenStream, item: TokenStream) -> TokenStream {
    cached::expand(args.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
