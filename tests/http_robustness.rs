//! The response cache against hostile or broken origins, through a real axum
//! `Router`: header values that would overflow time arithmetic, and (more in
//! the issue "HTTP layer and proxy") bodies that stall.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use axum::{Router, routing::get};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_age_neither_panics_nor_overflows_later_serves() {
    let counter = Counter::default();
    let calls = counter.clone();
    let app = Router::new()
        .route(
            "/aged",
            get(move || {
                calls.hit();
                async {
                    (
                        [
                            ("age", "18446744073709551615"),
                            ("etag", "\"v1\""),
                            ("cache-control", "max-age=18446744073709551615, stale-while-revalidate=99999999999999999999"),
                        ],
                        "aged",
                    )
                }
            }),
        )
        .route(
            "/listed",
            get(|| async { ([("age", "7200, 0"), ("cache-control", "max-age=3600")], "listed") }),
        )
        .layer(layer().stale_while_revalidate(Duration::from_secs(30)));
    for _ in 0..3 {
        let reply = fetch(&app, "/aged").await;
        assert_eq!(reply.status, 200, "{}", reply.cache_status());
        assert_eq!(reply.text(), "aged");
        let age: u64 = reply.header("age").parse().unwrap();
        assert!(age <= 1 << 31, "ages are capped at 2^31 s: {age}");
    }
    // A second later the stored entry is served stale-while-revalidate (the
    // serve that used to panic adding durations).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = fetch(&app, "/aged").await;
    assert_eq!(later.status, 200, "{}", later.cache_status());
    assert_eq!(later.text(), "aged");

    // `Age: 7200, 0` is the first member: older than max-age, so stale.
    fetch(&app, "/listed").await;
    let listed = fetch(&app, "/listed").await;
    assert!(!listed.is_hit(), "{}", listed.cache_status());
}

/// A route whose calls listed in `stall_calls` (1-based) send their head and
/// then never send a byte of body; other calls answer at once.
fn stalling_app(
    counter: &Counter,
    stall_calls: &'static [usize],
    cache_control: &'static str,
) -> Router {
    use axum::body::Body;
    use http_body_util::channel::Channel;
    let calls = counter.clone();
    Router::new().route(
        "/stall",
        get(move || {
            let n = calls.hit();
            async move {
                let body = if stall_calls.contains(&n) {
                    let (sender, body) = Channel::<bytes::Bytes, std::convert::Infallible>::new(1);
                    // Held open, never written: the body stalls, no EOF.
                    tokio::spawn(async move {
                        let _sender = sender;
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    });
                    Body::new(body)
                } else {
                    Body::from(format!("call {n}"))
                };
                ([("cache-control", cache_control), ("etag", "\"e\"")], body)
            }
        }),
    )
}

async fn bounded(app: &Router, uri: &str) -> Reply {
    tokio::time::timeout(Duration::from_secs(5), fetch(app, uri))
        .await
        .expect("the request finished: a stalled origin body must not hang a URL")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_whose_body_stalls_does_not_hang_the_url() {
    let counter = Counter::default();
    let app = stalling_app(&counter, &[1], "max-age=60").layer(
        layer()
            .body_idle_timeout(Duration::from_millis(500))
            .fill_timeout(Duration::from_secs(1))
            .lock_timeout(Duration::from_millis(200)),
    );
    let leader = {
        let app = app.clone();
        tokio::spawn(async move { bounded(&app, "/stall").await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A coalesced follower gives up on the stuck fill and asks the origin
    // itself, without storing.
    let follower = bounded(&app, "/stall").await;
    assert_eq!(follower.status, 200);
    assert_eq!(follower.text(), "call 2");
    assert!(
        follower.cache_status().contains("lock-timeout"),
        "{}",
        follower.cache_status()
    );
    // The leader's fill ends with a timeout instead of never.
    let leader = leader.await.unwrap();
    assert_eq!(leader.status, 504, "{}", leader.cache_status());
    // The key is free again: the next miss fills and stores normally.
    let next = bounded(&app, "/stall").await;
    assert_eq!(next.text(), "call 3");
    assert!(bounded(&app, "/stall").await.is_hit());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_refresh_whose_body_stalls_releases_the_key() {
    let counter = Counter::default();
    let app = stalling_app(&counter, &[2], "max-age=1, stale-while-revalidate=1").layer(
        layer()
            .origin_timeout(Duration::from_secs(1))
            .body_idle_timeout(Duration::from_millis(300))
            .fill_timeout(Duration::from_millis(600))
            .lock_timeout(Duration::from_millis(200)),
    );
    assert_eq!(bounded(&app, "/stall").await.text(), "call 1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Stale within stale-while-revalidate: served, and a refresh starts whose
    // body stalls.
    let stale = bounded(&app, "/stall").await;
    assert!(
        stale.cache_status().contains("stale-while-revalidate"),
        "{}",
        stale.cache_status()
    );
    // Past the window, requests for the key are misses that must not wait on
    // the stuck refresh.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after = bounded(&app, "/stall").await;
    assert_eq!(after.status, 200, "{}", after.cache_status());
    assert_eq!(after.text(), "call 3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_304_that_cannot_be_applied_never_reaches_an_unconditional_client() {
    let counter = Counter::default();
    let calls = counter.clone();
    let app = Router::new()
        .route(
            "/doc",
            get(move |headers: axum::http::HeaderMap| {
                let n = calls.hit();
                async move {
                    if headers.contains_key("if-modified-since") {
                        // RFC 9110 §15.4.5 does not require a validator on a
                        // 304; this one carries none.
                        return (
                            axum::http::StatusCode::NOT_MODIFIED,
                            axum::http::HeaderMap::new(),
                            String::new(),
                        );
                    }
                    let mut h = axum::http::HeaderMap::new();
                    h.insert("cache-control", "max-age=1".parse().unwrap());
                    h.insert(
                        "last-modified",
                        "Tue, 01 Dec 2026 08:00:00 GMT".parse().unwrap(),
                    );
                    (axum::http::StatusCode::OK, h, format!("document {n}"))
                }
            }),
        )
        .layer(layer());
    assert_eq!(fetch(&app, "/doc").await.text(), "document 1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..2 {
        let reply = fetch(&app, "/doc").await;
        assert_eq!(
            reply.status,
            200,
            "an unconditional request gets the document: {}",
            reply.cache_status()
        );
        assert!(reply.text().starts_with("document"), "{:?}", reply.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_large_misses_share_one_buffer_budget() {
    use axum::body::Body;
    use http_body_util::channel::Channel;
    use std::sync::Arc;
    // The first response sends 48 KiB and then waits; while it is held in
    // memory, another large response does not fit the 64 KiB budget.
    let release = Arc::new(tokio::sync::Notify::new());
    let gate = release.clone();
    let app = Router::new()
        .route(
            "/held",
            get(move || {
                let gate = gate.clone();
                async move {
                    let (mut sender, body) =
                        Channel::<bytes::Bytes, std::convert::Infallible>::new(2);
                    tokio::spawn(async move {
                        let _ = sender
                            .send_data(bytes::Bytes::from(vec![b'h'; 48 * 1024]))
                            .await;
                        gate.notified().await;
                        let _ = sender.send_data(bytes::Bytes::from_static(b"end")).await;
                    });
                    ([("cache-control", "max-age=60")], Body::new(body))
                }
            }),
        )
        .route(
            "/other",
            get(|| async { ([("cache-control", "max-age=60")], vec![b'o'; 32 * 1024]) }),
        );
    let layer = layer()
        .max_body_bytes(1 << 20)
        .max_buffered_bytes(64 * 1024);
    let app = app.layer(layer.clone());
    let held = {
        let app = app.clone();
        tokio::spawn(async move { fetch(&app, "/held").await })
    };
    // Wait until the first body is buffered.
    for _ in 0..100 {
        if layer.buffered_bytes() >= 48 * 1024 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(layer.buffered_bytes(), 48 * 1024);
    let other = fetch(&app, "/other").await;
    assert_eq!(
        other.body.len(),
        32 * 1024,
        "the client gets the whole body"
    );
    assert!(
        other.cache_status().contains("over-buffer-budget"),
        "{}",
        other.cache_status()
    );
    assert!(!fetch(&app, "/other").await.is_hit(), "not stored");
    release.notify_one();
    let held = held.await.unwrap();
    assert_eq!(held.body.len(), 48 * 1024 + 3);
    assert!(fetch(&app, "/held").await.is_hit(), "stored once complete");
    assert_eq!(layer.buffered_bytes(), 0, "the budget is given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_healthy_body_reaches_its_client_uncached() {
    use axum::body::Body;
    use http_body_util::channel::Channel;
    let app = Router::new()
        .route(
            "/slow",
            get(|| async {
                let (mut sender, body) = Channel::<bytes::Bytes, std::convert::Infallible>::new(1);
                tokio::spawn(async move {
                    for _ in 0..6 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        let _ = sender.send_data(bytes::Bytes::from_static(b"chunk ")).await;
                    }
                });
                ([("cache-control", "max-age=60")], Body::new(body))
            }),
        )
        .layer(
            layer()
                .fill_timeout(Duration::from_millis(300))
                .body_idle_timeout(Duration::from_secs(1)),
        );
    let reply = bounded(&app, "/slow").await;
    assert_eq!(reply.status, 200, "{}", reply.cache_status());
    assert_eq!(reply.text(), "chunk ".repeat(6), "every byte arrives");
    assert!(
        reply.cache_status().contains("fill-timeout"),
        "{}",
        reply.cache_status()
    );
}
