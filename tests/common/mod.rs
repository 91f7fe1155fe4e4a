//! Helpers shared by the integration tests: a memory-tier layer, requests
//! through a real axum `Router`, and a counting origin.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use axum::{Router, body::Body};
use bytes::Bytes;
use cachette::{CacheLayer, MemoryTier, Tiered};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// A cache with only the in-process tier.
pub fn memory_cache() -> Tiered {
    Tiered::builder("test")
        .tier("memory", MemoryTier::with_max_bytes(32 * 1024 * 1024))
        .build()
}

pub fn layer() -> CacheLayer {
    CacheLayer::new(memory_cache())
}

/// Counts origin calls.
#[derive(Clone, Default)]
pub struct Counter(Arc<AtomicUsize>);

impl Counter {
    pub fn hit(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
    pub fn cache_status(&self) -> &str {
        self.header("cache-status")
    }
    /// The `ttl` parameter of `Cache-Status`, in seconds.
    pub fn status_ttl(&self) -> i64 {
        let status = self.cache_status();
        let ttl = status.split("ttl=").nth(1).expect("Cache-Status has a ttl");
        ttl.split(';').next().unwrap().trim().parse().unwrap()
    }
    pub fn is_hit(&self) -> bool {
        self.cache_status().starts_with("cachette; hit")
    }
    pub fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).unwrap()
    }
}

pub async fn send(app: &Router, request: Request<Body>) -> Reply {
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

pub fn get(uri: &str) -> Request<Body> {
    Request::get(format!("http://test.local{uri}"))
        .body(Body::empty())
        .unwrap()
}

pub fn get_with(uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut builder = Request::get(format!("http://test.local{uri}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::empty()).unwrap()
}

pub async fn fetch(app: &Router, uri: &str) -> Reply {
    send(app, get(uri)).await
}

/// A GET handler that counts its calls and answers `"<n>"` (the call number)
/// with the given response headers.
pub fn counting_get(
    counter: &Counter,
    headers: &'static [(&'static str, &'static str)],
) -> axum::routing::MethodRouter {
    let calls = counter.clone();
    axum::routing::get(move || {
        let calls = calls.clone();
        async move {
            let mut map = HeaderMap::new();
            for (name, value) in headers {
                map.insert(*name, http::HeaderValue::from_static(value));
            }
            (map, calls.hit().to_string())
        }
    })
}
