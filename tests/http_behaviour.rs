//! Behaviour of the response cache through a real axum `Router` with a
//! counting origin: Vary, conditional requests, revalidation, stale serving,
//! coalescing, HEAD, unsafe-method invalidation, large bodies, corrupt entries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::{get, post},
};
use bytes::Bytes;
use cachette::{
    Backend, CacheError, CacheKey, CacheLayer, Entry, TierOptions, Tiered, async_trait,
};
use common::*;
use http::{Request, Response};
use tower::ServiceExt;

#[tokio::test]
async fn vary_keeps_one_variant_per_selecting_header_value() {
    let counter = Counter::default();
    let calls = counter.clone();
    let app = Router::new()
        .route(
            "/greet",
            get(move |headers: HeaderMap| {
                let calls = calls.clone();
                async move {
                    calls.hit();
                    let lang = headers
                        .get("accept-language")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("en")
                        .to_owned();
                    let text = if lang.starts_with("fr") {
                        "bonjour"
                    } else {
                        "hello"
                    };
                    (
                        [("cache-control", "max-age=60"), ("vary", "Accept-Language")],
                        text,
                    )
                }
            })
            .post(|| async { "updated" }),
        )
        .layer(layer());
    let en = [("accept-language", "en")];
    let fr = [("accept-language", "fr")];
    assert_eq!(send(&app, get_with("/greet", &en)).await.text(), "hello");
    let fr_first = send(&app, get_with("/greet", &fr)).await;
    assert_eq!(fr_first.text(), "bonjour");
    assert!(
        fr_first.cache_status().contains("fwd=vary-miss"),
        "{}",
        fr_first.cache_status()
    );
    let en_hit = send(&app, get_with("/greet", &en)).await;
    let fr_hit = send(&app, get_with("/greet", &fr)).await;
    assert!(en_hit.is_hit() && fr_hit.is_hit());
    assert_eq!(
        (en_hit.text().as_str(), fr_hit.text().as_str()),
        ("hello", "bonjour")
    );
    assert_eq!(counter.get(), 2);

    // A POST to the URL invalidates every variant.
    let app2 = app.clone();
    let post = Request::post("http://test.local/greet")
        .body(Body::empty())
        .unwrap();
    let _ = app2.oneshot(post).await.unwrap();
    assert!(!send(&app, get_with("/greet", &en)).await.is_hit());
    assert!(!send(&app, get_with("/greet", &fr)).await.is_hit());
}

fn etag_app(counter: Counter) -> Router {
    Router::new()
        .route(
            "/doc",
            get(move || {
                let calls = counter.clone();
                async move {
                    calls.hit();
                    (
                        [
                            ("cache-control", "max-age=60"),
                            ("etag", "W/\"v1\""),
                            ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
                        ],
                        "document",
                    )
                }
            }),
        )
        .layer(layer())
}

#[tokio::test]
async fn conditional_requests_get_304_from_a_fresh_entry() {
    let counter = Counter::default();
    let app = etag_app(counter.clone());
    fetch(&app, "/doc").await;
    for (name, value) in [
        ("if-none-match", "\"v1\""),
        ("if-none-match", "\"other\", W/\"v1\""),
        ("if-none-match", "*"),
        ("if-modified-since", "Mon, 01 Jan 2024 00:00:00 GMT"),
        ("if-modified-since", "Tue, 02 Jan 2024 00:00:00 GMT"),
    ] {
        let reply = send(&app, get_with("/doc", &[(name, value)])).await;
        assert_eq!(reply.status, StatusCode::NOT_MODIFIED, "{name}: {value}");
        assert!(reply.body.is_empty());
        assert_eq!(reply.header("etag"), "W/\"v1\"");
        assert!(reply.is_hit());
    }
    for (name, value) in [
        ("if-none-match", "\"v2\""),
        ("if-modified-since", "Sun, 31 Dec 2023 00:00:00 GMT"),
    ] {
        let reply = send(&app, get_with("/doc", &[(name, value)])).await;
        assert_eq!(reply.status, StatusCode::OK, "{name}: {value}");
        assert_eq!(reply.text(), "document");
    }
    // A client's conditional miss is not forwarded as conditional: the cache needs the full response.
    let counter2 = Counter::default();
    let app2 = etag_app(counter2.clone());
    let reply = send(&app2, get_with("/doc", &[("if-none-match", "\"v1\"")])).await;
    assert_eq!(reply.status, StatusCode::NOT_MODIFIED);
    assert_eq!(fetch(&app2, "/doc").await.text(), "document");
    assert_eq!(counter.get(), 1);
    assert_eq!(counter2.get(), 1);
}

#[tokio::test]
async fn a_stale_entry_is_revalidated_and_updated_from_the_304() {
    #[derive(Clone, Default)]
    struct Seen {
        full: Counter,
        not_modified: Counter,
    }
    let seen = Seen::default();
    let origin = seen.clone();
    let app = Router::new()
        .route(
            "/doc",
            get(move |headers: HeaderMap| {
                let seen = origin.clone();
                async move {
                    if headers.get("if-none-match").is_some_and(|v| v == "\"v1\"") {
                        let n = seen.not_modified.hit();
                        let version = format!("{}", n + 1);
                        (
                            StatusCode::NOT_MODIFIED,
                            [
                                ("cache-control", "max-age=1".to_owned()),
                                ("etag", "\"v1\"".to_owned()),
                                ("x-version", version),
                            ],
                            "",
                        )
                            .into_response()
                    } else {
                        seen.full.hit();
                        (
                            [
                                ("cache-control", "max-age=1"),
                                ("etag", "\"v1\""),
                                ("x-version", "1"),
                            ],
                            "body v1",
                        )
                            .into_response()
                    }
                }
            }),
        )
        .layer(layer());
    assert_eq!(fetch(&app, "/doc").await.header("x-version"), "1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let revalidated = fetch(&app, "/doc").await;
    assert_eq!(revalidated.status, StatusCode::OK);
    assert_eq!(revalidated.text(), "body v1", "the stored body is reused");
    assert_eq!(
        revalidated.header("x-version"),
        "2",
        "headers are updated from the 304"
    );
    assert!(
        revalidated
            .cache_status()
            .contains("fwd=stale; fwd-status=304"),
        "{}",
        revalidated.cache_status()
    );
    let hit = fetch(&app, "/doc").await;
    assert!(
        hit.is_hit(),
        "fresh again after revalidation: {}",
        hit.cache_status()
    );
    assert_eq!(hit.header("x-version"), "2");
    assert_eq!((seen.full.get(), seen.not_modified.get()), (1, 1));
}

#[tokio::test]
async fn stale_while_revalidate_serves_stale_and_refreshes_once_in_the_background() {
    let counter = Counter::default();
    let calls = counter.clone();
    let app = Router::new()
        .route(
            "/swr",
            get(move || {
                let calls = calls.clone();
                async move {
                    let n = calls.hit();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    (
                        [("cache-control", "max-age=1, stale-while-revalidate=30")],
                        format!("v{n}"),
                    )
                }
            }),
        )
        .layer(layer());
    assert_eq!(fetch(&app, "/swr").await.text(), "v1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let started = std::time::Instant::now();
    let replies = futures_join(&app, "/swr", 20).await;
    assert!(
        started.elapsed() < Duration::from_millis(90),
        "stale answers do not wait for the origin"
    );
    for reply in &replies {
        assert_eq!(reply.text(), "v1");
        assert!(
            reply.cache_status().contains("stale-while-revalidate"),
            "{}",
            reply.cache_status()
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(counter.get(), 2, "exactly one background refresh");
    let fresh = fetch(&app, "/swr").await;
    assert_eq!(fresh.text(), "v2");
    assert!(fresh.is_hit());
}

async fn futures_join(app: &Router, uri: &str, n: usize) -> Vec<Reply> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let app = app.clone();
            let uri = uri.to_owned();
            tokio::spawn(async move { fetch(&app, &uri).await })
        })
        .collect();
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

#[tokio::test]
async fn stale_if_error_serves_stale_on_5xx_errors_and_timeouts() {
    let mode = Arc::new(Mutex::new("ok"));
    let origin_mode = mode.clone();
    let origin = tower::service_fn(move |_req: Request<Body>| {
        let mode = origin_mode.clone();
        async move {
            let current = *mode.lock().unwrap();
            match current {
                "ok" => Ok(Response::builder()
                    .header("cache-control", "max-age=1, stale-if-error=60")
                    .body(Body::from("good"))
                    .unwrap()),
                "500" => Ok(Response::builder()
                    .status(500)
                    .body(Body::from("broken"))
                    .unwrap()),
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok(Response::new(Body::from("late")))
                }
                _ => Err(std::io::Error::other("connection refused")),
            }
        }
    });
    let svc = layer()
        .origin_timeout(Duration::from_millis(200))
        .layer_service(origin);
    let call = |svc: tower::util::BoxCloneService<
        Request<Body>,
        Response<Body>,
        std::io::Error,
    >| async move {
        let response = svc.oneshot(common::get("/x")).await;
        match response {
            Ok(r) => {
                let (parts, body) = r.into_parts();
                let bytes = http_body_util::BodyExt::collect(body)
                    .await
                    .unwrap()
                    .to_bytes();
                Ok((parts.status, parts.headers, bytes))
            }
            Err(e) => Err(e),
        }
    };
    let (status, _, body) = call(svc.clone()).await.unwrap();
    assert_eq!((status, body.as_ref()), (StatusCode::OK, &b"good"[..]));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for failure in ["500", "error", "slow"] {
        *mode.lock().unwrap() = failure;
        let (status, headers, body) = call(svc.clone()).await.unwrap();
        assert_eq!(
            (status, body.as_ref()),
            (StatusCode::OK, &b"good"[..]),
            "{failure}"
        );
        let cache_status = headers["cache-status"].to_str().unwrap();
        assert!(
            cache_status.contains("fwd=stale") && cache_status.contains("stale-if-error"),
            "{failure}: {cache_status}"
        );
    }
    // Without a stale entry, an error is the origin's error and a timeout is a 504.
    let fresh_svc = layer()
        .origin_timeout(Duration::from_millis(200))
        .layer_service(tower::service_fn(|_req: Request<Body>| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, std::io::Error>(Response::new(Body::empty()))
        }));
    let (status, _, _) = call(fresh_svc).await.unwrap();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
}

/// Boxes a layered `service_fn` so tests can clone and call it.
trait LayerService {
    fn layer_service<S>(
        self,
        origin: S,
    ) -> tower::util::BoxCloneService<Request<Body>, Response<Body>, std::io::Error>
    where
        S: tower::Service<Request<Body>, Response = Response<Body>, Error = std::io::Error>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static;
}

impl LayerService for CacheLayer {
    fn layer_service<S>(
        self,
        origin: S,
    ) -> tower::util::BoxCloneService<Request<Body>, Response<Body>, std::io::Error>
    where
        S: tower::Service<Request<Body>, Response = Response<Body>, Error = std::io::Error>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let svc =
            tower::Layer::layer(&self, origin).map_response(|r: Response<_>| r.map(Body::new));
        tower::util::BoxCloneService::new(svc)
    }
}

#[tokio::test]
async fn a_hundred_concurrent_misses_make_one_origin_call() {
    let counter = Counter::default();
    let calls = counter.clone();
    let app = Router::new()
        .route(
            "/slow",
            get(move || {
                let calls = calls.clone();
                async move {
                    calls.hit();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    ([("cache-control", "max-age=60")], "expensive")
                }
            }),
        )
        .layer(layer());
    let replies = futures_join(&app, "/slow", 100).await;
    assert_eq!(counter.get(), 1);
    assert!(
        replies
            .iter()
            .all(|r| r.status == 200 && r.text() == "expensive")
    );
    let collapsed = replies
        .iter()
        .filter(|r| r.cache_status().contains("collapsed"))
        .count();
    assert_eq!(
        collapsed, 99,
        "every request but the leader's was collapsed"
    );
}

#[tokio::test]
async fn head_is_answered_from_the_get_entry() {
    let counter = Counter::default();
    let app = etag_app(counter.clone());
    let head = |app: &Router| {
        let request = Request::head("http://test.local/doc")
            .body(Body::empty())
            .unwrap();
        let app = app.clone();
        async move { send(&app, request).await }
    };
    let miss = head(&app).await;
    assert!(!miss.is_hit());
    assert!(!head(&app).await.is_hit(), "a HEAD miss stores nothing");
    assert_eq!(counter.get(), 2);
    let full = fetch(&app, "/doc").await;
    let hit = head(&app).await;
    assert!(hit.is_hit());
    assert!(hit.body.is_empty());
    assert_eq!(hit.header("content-length"), full.body.len().to_string());
    assert_eq!(counter.get(), 3);
}

#[tokio::test]
async fn unsafe_methods_invalidate_the_url_and_same_origin_locations() {
    let counter = Counter::default();
    let calls = counter.clone();
    let page = move || {
        let calls = calls.clone();
        async move {
            (
                [("cache-control", "max-age=60")],
                format!("page {}", calls.hit()),
            )
        }
    };
    let app = Router::new()
        .route(
            "/items",
            get(page.clone())
                .post(|| async { (StatusCode::CREATED, [("location", "/items/7")], "") }),
        )
        .route(
            "/items/7",
            get(page.clone()).put(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "") }),
        )
        .route(
            "/other",
            post(|| async { ([("location", "http://elsewhere.example/items")], "") }),
        )
        .layer(layer());
    let send_method = |method: &str, uri: &str| {
        let request = Request::builder()
            .method(method)
            .uri(format!("http://test.local{uri}"))
            .body(Body::empty())
            .unwrap();
        let app = app.clone();
        async move { send(&app, request).await }
    };
    fetch(&app, "/items").await;
    fetch(&app, "/items/7").await;
    assert!(fetch(&app, "/items").await.is_hit() && fetch(&app, "/items/7").await.is_hit());

    // A failed unsafe request invalidates nothing.
    assert_eq!(send_method("PUT", "/items/7").await.status, 500);
    assert!(fetch(&app, "/items/7").await.is_hit());
    // A cross-origin Location is not invalidated.
    let other = send_method("POST", "/other").await;
    assert_eq!(other.cache_status(), "cachette; fwd=method");
    assert!(fetch(&app, "/items").await.is_hit());
    // A successful POST invalidates its URL and its Location.
    assert_eq!(send_method("POST", "/items").await.status, 201);
    assert!(!fetch(&app, "/items").await.is_hit());
    assert!(!fetch(&app, "/items/7").await.is_hit());
}

#[tokio::test]
async fn a_body_over_the_limit_streams_through_uncached() {
    let counter = Counter::default();
    let calls = counter.clone();
    let app = Router::new()
        .route(
            "/big",
            get(move || {
                let calls = calls.clone();
                async move {
                    calls.hit();
                    // A streamed body with no Content-Length, in 64 chunks of 1 KiB.
                    let chunks = (0..64u8).map(|i| Ok::<_, Infallible>(Bytes::from(vec![i; 1024])));
                    let body = Body::from_stream(futures_stream(chunks.collect()));
                    ([("cache-control", "max-age=60")], body)
                }
            }),
        )
        .layer(layer().max_body_bytes(4096));
    for _ in 0..2 {
        let reply = fetch(&app, "/big").await;
        assert_eq!(reply.body.len(), 64 * 1024);
        assert!(
            reply
                .body
                .chunks(1024)
                .enumerate()
                .all(|(i, c)| c.iter().all(|b| usize::from(*b) == i))
        );
        assert!(
            reply.cache_status().contains("too-large"),
            "{}",
            reply.cache_status()
        );
    }
    assert_eq!(counter.get(), 2);
}

/// A minimal `Stream` over a vector, so the test needs no stream crate.
fn futures_stream(items: Vec<Result<Bytes, Infallible>>) -> VecStream {
    VecStream(items.into_iter())
}

struct VecStream(std::vec::IntoIter<Result<Bytes, Infallible>>);

impl futures_core::Stream for VecStream {
    type Item = Result<Bytes, Infallible>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::task::Poll::Ready(self.0.next())
    }
}

/// A tier that stores encoded bytes, as the Redis tiers do, so that stored
/// bytes can be corrupted.
#[derive(Debug, Default, Clone)]
struct BytesTier(Arc<Mutex<HashMap<CacheKey, Bytes>>>);

#[async_trait]
impl Backend for BytesTier {
    fn kind(&self) -> &'static str {
        "bytes"
    }
    async fn get(&self, key: &CacheKey) -> Result<Option<Arc<Entry>>, CacheError> {
        let bytes = self.0.lock().unwrap().get(key).cloned();
        match bytes {
            Some(bytes) => Ok(Some(Arc::new(Entry::decode(bytes)?))),
            None => Ok(None),
        }
    }
    async fn set(&self, key: &CacheKey, entry: Arc<Entry>, _: Duration) -> Result<(), CacheError> {
        self.0.lock().unwrap().insert(key.clone(), entry.encode());
        Ok(())
    }
    async fn delete(&self, key: &CacheKey) -> Result<bool, CacheError> {
        Ok(self.0.lock().unwrap().remove(key).is_some())
    }
    async fn invalidate_prefix(&self, prefix: &str) -> Result<(), CacheError> {
        self.0.lock().unwrap().retain(|k, _| !k.starts_with(prefix));
        Ok(())
    }
    async fn invalidate_tag(&self, _: &str) -> Result<(), CacheError> {
        Ok(())
    }
    async fn clear(&self) -> Result<(), CacheError> {
        self.0.lock().unwrap().clear();
        Ok(())
    }
    async fn health(&self) -> Result<(), CacheError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_corrupt_stored_entry_is_a_miss() {
    let tier = BytesTier::default();
    let cache = Tiered::builder("bytes")
        .tier_arc(
            "encoded",
            Arc::new(tier.clone()),
            TierOptions::with_timeout(None),
        )
        .build();
    let counter = Counter::default();
    let app = Router::new()
        .route(
            "/c",
            counting_get(&counter, &[("cache-control", "max-age=60")]),
        )
        .layer(CacheLayer::new(cache.clone()));
    fetch(&app, "/c").await;
    let hit = fetch(&app, "/c").await;
    assert!(hit.is_hit());
    assert_eq!(hit.text(), "1");
    // Flip one byte in the middle of every stored entry.
    for bytes in tier.0.lock().unwrap().values_mut() {
        let mut raw = bytes.to_vec();
        let middle = raw.len() / 2;
        raw[middle] ^= 0x55;
        *bytes = Bytes::from(raw);
    }
    let after = fetch(&app, "/c").await;
    assert_eq!(after.status, 200);
    assert_eq!(
        after.text(),
        "2",
        "the corrupt entry was a miss, not a panic or a 5xx"
    );
    assert!(fetch(&app, "/c").await.is_hit(), "and was replaced");
    assert!(
        cache.snapshot().tiers[0].counters.errors >= 1,
        "the decode error is counted"
    );
}

#[tokio::test]
async fn unless_predicate_bypasses_the_cache() {
    let counter = Counter::default();
    let app = Router::new()
        .route(
            "/admin",
            counting_get(&counter, &[("cache-control", "max-age=60")]),
        )
        .layer(layer().unless(|parts| parts.uri.path().starts_with("/admin")));
    let a = fetch(&app, "/admin").await;
    let b = fetch(&app, "/admin").await;
    assert_eq!(a.cache_status(), "cachette; fwd=bypass");
    assert_ne!(a.text(), b.text());
    assert_eq!(counter.get(), 2);
}

#[tokio::test]
async fn the_layer_works_on_a_single_route() {
    let counter = Counter::default();
    let other = Counter::default();
    let app = Router::new()
        .route(
            "/cached",
            counting_get(&counter, &[("cache-control", "max-age=60")]).layer(layer()),
        )
        .route(
            "/plain",
            counting_get(&other, &[("cache-control", "max-age=60")]),
        );
    fetch(&app, "/cached").await;
    assert!(fetch(&app, "/cached").await.is_hit());
    let plain = fetch(&app, "/plain").await;
    assert!(plain.headers.get("cache-status").is_none());
    fetch(&app, "/plain").await;
    assert_eq!((counter.get(), other.get()), (1, 2));
}

#[tokio::test]
async fn a_hit_serves_every_stored_field_with_one_age_and_the_origins_cache_status_first() {
    // Hits are served from fields prepared once per entry, with slots for
    // `Age` and `Cache-Status`: repeated hits must not accumulate or lose
    // fields, and a `Cache-Status` from a cache behind the origin stays first.
    let app = Router::new()
        .route(
            "/doc",
            get(|| async {
                (
                    [
                        ("cache-control", "max-age=60"),
                        ("x-one", "1"),
                        ("set-cookie-like", "a"),
                        ("cache-status", "OriginCache; hit"),
                        ("age", "5"),
                    ],
                    "doc",
                )
            }),
        )
        .route(
            "/plain",
            get(|| async { ([("cache-control", "max-age=60"), ("x-two", "2")], "plain") }),
        )
        .layer(layer());
    let miss = fetch(&app, "/doc").await;
    let last = miss
        .headers
        .get_all("cache-status")
        .iter()
        .next_back()
        .unwrap();
    assert!(last.to_str().unwrap().contains("fwd=miss"), "{last:?}");
    for _ in 0..3 {
        let hit = fetch(&app, "/doc").await;
        let statuses: Vec<_> = hit
            .headers
            .get_all("cache-status")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(statuses.len(), 2, "{statuses:?}");
        assert_eq!(statuses[0], "OriginCache; hit");
        assert!(statuses[1].starts_with("cachette; hit"), "{statuses:?}");
        assert_eq!(hit.headers.get_all("age").iter().count(), 1);
        let age: u64 = hit.header("age").parse().unwrap();
        assert!((5..60).contains(&age), "the origin's age counts: {age}");
        assert_eq!(hit.header("x-one"), "1");
        assert_eq!(hit.header("set-cookie-like"), "a");
        assert_eq!(hit.text(), "doc");
        // Every field as the origin sent it (and `Content-Length` for the
        // body), in its order.
        let served: Vec<(String, String)> = hit
            .headers
            .iter()
            .filter(|(name, _)| *name != "age" && *name != "date")
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
            .collect();
        let expected = [
            ("content-type", "text/plain; charset=utf-8"),
            ("cache-control", "max-age=60"),
            ("x-one", "1"),
            ("set-cookie-like", "a"),
            ("cache-status", "OriginCache; hit"),
            ("content-length", "3"),
        ];
        let without_ours: Vec<_> = served
            .iter()
            .filter(|(name, value)| !(name == "cache-status" && value.starts_with("cachette")))
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        assert_eq!(without_ours, expected);
    }
    fetch(&app, "/plain").await;
    for _ in 0..3 {
        let hit = fetch(&app, "/plain").await;
        assert!(hit.is_hit(), "{}", hit.cache_status());
        assert_eq!(hit.headers.get_all("cache-status").iter().count(), 1);
        assert_eq!(hit.headers.get_all("age").iter().count(), 1);
        assert_eq!(hit.header("x-two"), "2");
        assert_eq!(hit.header("content-type"), "text/plain; charset=utf-8");
    }
}

/// Fresh hits from the memory tier are answered in the service's `call`
/// itself; whatever it does not answer (a `Vary` marker, a stale entry)
/// goes the full way. Either way each request is counted once: one layer
/// hit per hit, one tier hit per entry read (the marker and the variant
/// behind it are two reads).
#[tokio::test]
async fn hits_answered_at_once_or_the_full_way_are_counted_once() {
    let cache = memory_cache();
    let (plain, varied, short) = (Counter::default(), Counter::default(), Counter::default());
    let app = Router::new()
        .route(
            "/plain",
            counting_get(&plain, &[("cache-control", "max-age=60")]),
        )
        .route(
            "/varied",
            counting_get(
                &varied,
                &[("cache-control", "max-age=60"), ("vary", "accept-language")],
            ),
        )
        .route(
            "/short",
            counting_get(
                &short,
                &[("cache-control", "max-age=1, stale-while-revalidate=60")],
            ),
        )
        .layer(CacheLayer::new(cache.clone()));
    let en = [("accept-language", "en")];
    for _ in 0..4 {
        assert_eq!(fetch(&app, "/plain").await.text(), "1");
        assert_eq!(send(&app, get_with("/varied", &en)).await.text(), "1");
    }
    let stats = cache.snapshot();
    assert_eq!((plain.get(), varied.get()), (1, 1));
    assert_eq!(stats.cache.hits, 6, "three hits on each URL");
    assert_eq!(stats.cache.misses, 2);
    // /plain: 3 hits; /varied: 3 x (marker + variant).
    assert_eq!(stats.tiers[0].counters.hits, 3 + 3 * 2);
    // The first request of each: the tier asked once (the full path looks
    // below the first tier only, after the fast path found nothing there).
    assert_eq!(stats.tiers[0].counters.misses, 2);

    // Stale within stale-while-revalidate: served by the full path.
    assert!(!fetch(&app, "/short").await.is_hit());
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let before = cache.snapshot();
    let stale = fetch(&app, "/short").await;
    assert!(
        stale.cache_status().contains("stale-while-revalidate"),
        "{}",
        stale.cache_status()
    );
    let after = cache.snapshot();
    assert_eq!(after.cache.stale_served - before.cache.stale_served, 1);
    assert_eq!(after.cache.hits - before.cache.hits, 0);
    assert_eq!(
        after.tiers[0].counters.hits - before.tiers[0].counters.hits,
        1
    );
}

/// A request carrying `Cache-Control: no-store` is forwarded even when a
/// fresh response is stored (its answer must not come from, or go to, the
/// cache); the next plain request is still a hit.
#[tokio::test]
async fn a_no_store_request_is_forwarded_past_a_fresh_entry() {
    let counter = Counter::default();
    let app = Router::new()
        .route(
            "/p",
            counting_get(&counter, &[("cache-control", "max-age=60")]),
        )
        .layer(layer());
    assert_eq!(fetch(&app, "/p").await.text(), "1");
    assert!(fetch(&app, "/p").await.is_hit());
    let forwarded = send(&app, get_with("/p", &[("cache-control", "no-store")])).await;
    assert_eq!(forwarded.text(), "2");
    assert!(
        forwarded.cache_status().contains("fwd=request"),
        "{}",
        forwarded.cache_status()
    );
    let again = fetch(&app, "/p").await;
    assert!(again.is_hit());
    assert_eq!(again.text(), "1", "the forwarded answer was not stored");
}
