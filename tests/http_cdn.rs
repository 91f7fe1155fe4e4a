//! What CDNs do beyond RFC 9111, through a real axum `Router`: surrogate keys
//! from the origin.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::{Router, routing::get};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surrogate_keys_from_the_origin_tag_the_entry_and_are_not_shown() {
    let counter = Counter::default();
    let app = Router::new()
        .route(
            "/product/1",
            counting_get(
                &counter,
                &[
                    ("cache-control", "max-age=600"),
                    ("surrogate-key", "product-1 products"),
                    ("cache-tag", "catalog"),
                ],
            ),
        )
        .route(
            "/product/2",
            counting_get(
                &counter,
                &[
                    ("cache-control", "max-age=600"),
                    ("surrogate-key", "product-2 products"),
                ],
            ),
        );
    let layer = layer().tags(["site"]);
    let cache = layer.cache().clone();
    let app = app.layer(layer);
    let first = fetch(&app, "/product/1").await;
    assert!(
        first.header("surrogate-key").is_empty(),
        "not passed to clients"
    );
    assert!(first.header("cache-tag").is_empty());
    fetch(&app, "/product/2").await;
    assert!(fetch(&app, "/product/1").await.is_hit());
    assert!(fetch(&app, "/product/2").await.is_hit());

    // A purge by one surrogate key removes exactly its responses.
    assert!(cache.invalidate_tag("product-1").await.is_complete());
    assert!(!fetch(&app, "/product/1").await.is_hit());
    assert!(fetch(&app, "/product/2").await.is_hit());
    // Keys from both fields and the layer's own tags merge.
    for tag in ["products", "catalog", "site"] {
        fetch(&app, "/product/1").await;
        assert!(cache.invalidate_tag(tag).await.is_complete());
        assert!(!fetch(&app, "/product/1").await.is_hit(), "purged by {tag}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiation_headers_that_mean_the_same_share_a_variant() {
    let counter = Counter::default();
    let app = Router::new()
        .route(
            "/page",
            counting_get(
                &counter,
                &[
                    ("cache-control", "max-age=600"),
                    ("vary", "accept-language, accept-encoding"),
                ],
            ),
        )
        .layer(layer());
    let first = send(
        &app,
        get_with(
            "/page",
            &[
                ("accept-language", "en, de"),
                ("accept-encoding", "gzip, br"),
            ],
        ),
    )
    .await;
    assert!(!first.is_hit());
    let same = send(
        &app,
        get_with(
            "/page",
            &[
                ("accept-language", " EN ,   de"),
                ("accept-encoding", "br,gzip"),
            ],
        ),
    )
    .await;
    assert!(same.is_hit(), "{}", same.cache_status());
    let other = send(
        &app,
        get_with(
            "/page",
            &[
                ("accept-language", "de, en"),
                ("accept-encoding", "gzip, br"),
            ],
        ),
    )
    .await;
    assert!(
        !other.is_hit(),
        "another preference order is another variant"
    );
    assert_eq!(counter.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unstorable_url_skips_coalescing_until_a_storable_answer() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    };
    use std::time::Duration;
    let (in_flight, most, storable) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let (f, m, st) = (in_flight.clone(), most.clone(), storable.clone());
    let app = Router::new().route(
        "/me",
        get(move || {
            let (f, m, st) = (f.clone(), m.clone(), st.clone());
            async move {
                let now = f.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
                f.fetch_sub(1, Ordering::SeqCst);
                let cc = if st.load(Ordering::SeqCst) {
                    "max-age=60"
                } else {
                    "private"
                };
                ([("cache-control", cc)], "me")
            }
        }),
    );
    let layer = layer();
    let cache = layer.cache().clone();
    let app = app.layer(layer);
    fetch(&app, "/me").await; // private: not stored, remembered
    let requests: Vec<_> = (0..5)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { fetch(&app, "/me").await })
        })
        .collect();
    for r in requests {
        assert_eq!(r.await.unwrap().status, 200);
    }
    assert_eq!(
        most.load(Ordering::SeqCst),
        5,
        "all five went to the origin at once"
    );
    assert_eq!(cache.snapshot().cache.hit_for_miss, 5);
    // The URL becomes storable: the memory ends and requests coalesce again.
    storable.store(true, Ordering::SeqCst);
    fetch(&app, "/me").await; // still hit-for-miss: goes alone, is stored
    assert!(fetch(&app, "/me").await.is_hit());
    assert_eq!(cache.snapshot().cache.hit_for_miss, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_request_headers_are_part_of_the_key() {
    let counter = Counter::default();
    let calls = counter.clone();
    let app = Router::new()
        .route(
            "/home",
            get(move |headers: axum::http::HeaderMap| {
                calls.hit();
                let tenant = headers
                    .get("x-tenant")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
                    .to_owned();
                async move {
                    (
                        [("cache-control", "max-age=600")],
                        format!("home of {tenant}"),
                    )
                }
            })
            .post(|| async { "updated" }),
        )
        .layer(layer().key_headers([axum::http::HeaderName::from_static("x-tenant")]));
    let as_tenant = |t: &'static str| {
        let app = app.clone();
        async move { send(&app, get_with("/home", &[("x-tenant", t)])).await }
    };
    assert_eq!(as_tenant("a").await.text(), "home of a");
    let b = as_tenant("b").await;
    assert_eq!(b.text(), "home of b", "another tenant, another entry");
    assert!(
        b.header("vary").is_empty(),
        "the response's own Vary is unchanged"
    );
    assert!(as_tenant("a").await.is_hit());
    assert!(as_tenant("b").await.is_hit());
    // Invalidating the URL reaches every tenant's entry.
    let post = http::Request::post("http://test.local/home")
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(send(&app, post).await.status, 200);
    assert!(!as_tenant("a").await.is_hit());
    assert!(!as_tenant("b").await.is_hit());
    assert_eq!(counter.get(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_cookie_is_part_of_the_key_by_its_value_alone() {
    let counter = Counter::default();
    let calls = counter.clone();
    let app = Router::new()
        .route(
            "/prices",
            get(move |headers: axum::http::HeaderMap| {
                calls.hit();
                let cookie = headers
                    .get("cookie")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let currency = if cookie.contains("currency=USD") {
                    "USD"
                } else {
                    "EUR"
                };
                async move {
                    (
                        [("cache-control", "max-age=600")],
                        format!("prices in {currency}"),
                    )
                }
            }),
        )
        .layer(layer().key_cookies(["currency"]));
    let with_cookie = |c: &'static str| {
        let app = app.clone();
        async move { send(&app, get_with("/prices", &[("cookie", c)])).await }
    };
    assert_eq!(
        with_cookie("currency=EUR; session=a").await.text(),
        "prices in EUR"
    );
    assert_eq!(
        with_cookie("currency=USD; session=a").await.text(),
        "prices in USD"
    );
    let other_session = with_cookie("session=b; currency=EUR").await;
    assert!(
        other_session.is_hit(),
        "keyed on the currency alone: {}",
        other_session.cache_status()
    );
    assert_eq!(other_session.text(), "prices in EUR");
    assert_eq!(counter.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_purge_leaves_a_stale_copy_to_revalidate_or_serve() {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    let conditional = Arc::new(AtomicUsize::new(0));
    let seen = conditional.clone();
    let app = Router::new()
        .route(
            "/doc",
            get(move |headers: axum::http::HeaderMap| {
                let seen = seen.clone();
                async move {
                    if headers.get("if-none-match").is_some_and(|v| v == "\"d1\"") {
                        seen.fetch_add(1, Ordering::SeqCst);
                        return (
                            axum::http::StatusCode::NOT_MODIFIED,
                            [("etag", "\"d1\""), ("cache-control", "max-age=600")],
                            "",
                        );
                    }
                    (
                        axum::http::StatusCode::OK,
                        [("etag", "\"d1\""), ("cache-control", "max-age=600")],
                        "document",
                    )
                }
            }),
        )
        .route(
            "/swr",
            counting_get(
                &Counter::default(),
                &[
                    ("cache-control", "max-age=600, stale-while-revalidate=60"),
                    ("surrogate-key", "news"),
                ],
            ),
        );
    let layer = layer();
    let cache = layer.cache().clone();
    let app = app.layer(layer.clone());
    fetch(&app, "/doc").await;
    fetch(&app, "/swr").await;
    assert!(fetch(&app, "/doc").await.is_hit());

    // Soft purge of the URL: the next request revalidates (a 304) instead
    // of fetching the document again.
    let uri: axum::http::Uri = "http://test.local/doc".parse().unwrap();
    assert!(
        layer
            .soft_invalidate_url(&uri, &axum::http::HeaderMap::new())
            .await
            .is_complete()
    );
    let revalidated = fetch(&app, "/doc").await;
    assert_eq!(revalidated.text(), "document");
    assert!(
        revalidated.cache_status().contains("fwd-status=304"),
        "{}",
        revalidated.cache_status()
    );
    assert_eq!(conditional.load(Ordering::SeqCst), 1);
    assert!(
        fetch(&app, "/doc").await.is_hit(),
        "fresh again after the 304"
    );

    // Soft purge by surrogate key: served stale-while-revalidate at once.
    assert!(cache.soft_invalidate_tag("news").await.is_complete());
    let stale = fetch(&app, "/swr").await;
    assert!(
        stale.cache_status().contains("stale-while-revalidate"),
        "{}",
        stale.cache_status()
    );
}
