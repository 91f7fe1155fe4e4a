//! A tower/axum HTTP response cache with RFC 9111 shared-cache semantics, on
//! top of cachette's tiers (in-process memory, Redis replica, Redis master).
//!
//! Put [`CacheLayer`] on a router (or a single route): GET and HEAD are
//! answered from the cache when a fresh response is stored; misses go to the
//! inner service once per key (request coalescing) and are stored when RFC
//! 9111 allows it; stale responses are revalidated with conditional requests,
//! or served while revalidating / on origin errors within
//! `stale-while-revalidate` / `stale-if-error`; unsafe methods invalidate.
//! Every response carries `Cache-Status` (RFC 9211), and hits carry `Age`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use axum::{Router, body::Body, routing::get};
//! use cachette_core::Tiered;
//! use cachette_http::CacheLayer;
//! use cachette_moka::MemoryTier;
//! use http::Request;
//! use tower::ServiceExt;
//!
//! let cache = Tiered::builder("pages").tier("memory", MemoryTier::default()).build();
//! let app = Router::new()
//!     .route("/", get(|| async { ([("cache-control", "max-age=60")], "hello") }))
//!     .layer(CacheLayer::new(cache));
//!
//! let first = app.clone().oneshot(Request::get("http://example.com/").body(Body::empty()).unwrap()).await.unwrap();
//! assert_eq!(first.headers()["cache-status"], "cachette; fwd=miss; fwd-status=200; stored");
//! let second = app.oneshot(Request::get("http://example.com/").body(Body::empty()).unwrap()).await.unwrap();
//! assert!(second.headers()["cache-status"].to_str().unwrap().starts_with("cachette; hit; ttl="));
//! # }
//! ```
//!
//! docs/http-semantics.md in the repository lists every directive and header
//! and what the layer does with it.

mod body;
mod conditional;
mod directives;
mod future;
mod key;
mod layer;
mod policy;
mod range;
mod service;
mod status;

pub use body::CacheBody;
pub use future::ResponseFuture;
pub use key::{KeyOptions, UrlScope};
pub(crate) use layer::Config;
pub use layer::{
    CACHE_TAG, CACHETTE_CONTROL, CDN_CACHE_CONTROL, CacheLayer, DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_BUFFERED_BYTES, SURROGATE_KEY, Unless,
};
pub use service::CacheService;
pub use status::CACHE_STATUS;
