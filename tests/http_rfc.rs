//! RFC 9110/9111 details through a real axum `Router`: HTTP-date forms,
//! status codes, ranges.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::{Router, routing::get};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_dates_are_read_in_all_three_forms_and_strictly() {
    let counter = Counter::default();
    let app = Router::new()
        // asctime, far in the future: fresh (RFC 9110 §5.6.7: recipients
        // accept the obsolete forms).
        .route(
            "/asctime",
            counting_get(&counter, &[("expires", "Fri Dec 31 23:59:59 2100")]),
        )
        // IMF-fixdate with a doubled space: invalid, hence already expired.
        .route(
            "/sloppy",
            counting_get(&counter, &[("expires", "Fri,  31 Dec 2100 23:59:59 GMT")]),
        )
        // RFC 850, in the past: stale.
        .route(
            "/rfc850",
            counting_get(&counter, &[("expires", "Sunday, 06-Nov-94 08:49:37 GMT")]),
        )
        .layer(layer());
    fetch(&app, "/asctime").await;
    assert!(
        fetch(&app, "/asctime").await.is_hit(),
        "asctime Expires is honoured"
    );
    for uri in ["/sloppy", "/rfc850"] {
        fetch(&app, uri).await;
        let again = fetch(&app, uri).await;
        assert!(!again.is_hit(), "{uri}: {}", again.cache_status());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_final_status_with_explicit_freshness_is_stored() {
    let counter = Counter::default();
    let mut app = Router::new();
    for (path, status) in [
        ("/s400", 400u16),
        ("/s499", 499),
        ("/s500", 500),
        ("/s503", 503),
        ("/s599", 599),
    ] {
        let calls = counter.clone();
        app = app.route(
            path,
            get(move || {
                calls.hit();
                async move {
                    (
                        axum::http::StatusCode::from_u16(status).unwrap(),
                        [("cache-control", "max-age=60")],
                        format!("status {status}"),
                    )
                }
            }),
        );
    }
    let calls = counter.clone();
    app = app.route(
        "/bare500",
        get(move || {
            calls.hit();
            async {
                (
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "no freshness",
                )
            }
        }),
    );
    let app = app.layer(layer());
    for path in ["/s400", "/s499", "/s500", "/s503", "/s599"] {
        let first = fetch(&app, path).await;
        assert!(
            first.cache_status().contains("stored"),
            "{path}: {}",
            first.cache_status()
        );
        let again = fetch(&app, path).await;
        assert!(again.is_hit(), "{path}: {}", again.cache_status());
        assert_eq!(again.status.as_str(), &path[2..]);
    }
    fetch(&app, "/bare500").await;
    assert!(
        !fetch(&app, "/bare500").await.is_hit(),
        "no explicit freshness: not stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_replacing_a_stored_page_is_answered_stale_within_stale_if_error() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    let failing = Arc::new(AtomicBool::new(false));
    let fail = failing.clone();
    let app = Router::new()
        .route(
            "/page",
            get(move || {
                let fail = fail.load(Ordering::SeqCst);
                async move {
                    if fail {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            [("cache-control", "max-age=60")],
                            "down",
                        )
                    } else {
                        (
                            axum::http::StatusCode::OK,
                            [("cache-control", "max-age=1, stale-if-error=60")],
                            "page",
                        )
                    }
                }
            }),
        )
        .layer(layer());
    assert_eq!(fetch(&app, "/page").await.text(), "page");
    failing.store(true, Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let reply = fetch(&app, "/page").await;
    assert_eq!(reply.status, 200, "{}", reply.cache_status());
    assert_eq!(reply.text(), "page");
    assert!(reply.cache_status().contains("stale-if-error"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_targeted_field_that_is_not_a_valid_dictionary_is_ignored_as_a_whole() {
    let counter = Counter::default();
    let app = Router::new()
        .route(
            "/valid",
            counting_get(
                &counter,
                &[
                    ("cdn-cache-control", "max-age=600"),
                    ("cache-control", "no-store"),
                ],
            ),
        )
        .route(
            "/junk",
            counting_get(
                &counter,
                &[
                    ("cdn-cache-control", "max-age=600, &&&&&"),
                    ("cache-control", "no-store"),
                ],
            ),
        )
        .route(
            "/string",
            counting_get(
                &counter,
                &[
                    ("cdn-cache-control", "max-age=\"600\""),
                    ("cache-control", "no-store"),
                ],
            ),
        )
        .layer(layer());
    fetch(&app, "/valid").await;
    assert!(
        fetch(&app, "/valid").await.is_hit(),
        "a valid targeted field wins over Cache-Control"
    );
    for uri in ["/junk", "/string"] {
        fetch(&app, uri).await;
        let again = fetch(&app, uri).await;
        assert!(
            !again.is_hit(),
            "{uri}: the invalid field is ignored, Cache-Control: no-store applies"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_are_answered_from_the_stored_full_response() {
    let counter = Counter::default();
    let calls = counter.clone();
    let app = Router::new()
        .route(
            "/file",
            get(move |headers: axum::http::HeaderMap| {
                calls.hit();
                // The cache asks for the whole response, to store it.
                assert!(
                    !headers.contains_key("range"),
                    "the fill asks for everything"
                );
                async {
                    (
                        [("cache-control", "max-age=600"), ("etag", "\"v1\"")],
                        "0123456789",
                    )
                }
            }),
        )
        .layer(layer());
    let part = |range: &'static str, extra: Option<(&'static str, &'static str)>| {
        let app = app.clone();
        async move {
            let mut headers = vec![("range", range)];
            headers.extend(extra);
            send(&app, get_with("/file", &headers)).await
        }
    };
    // A miss with a Range: stored whole, answered in part.
    let first = part("bytes=2-4", None).await;
    assert_eq!((first.status.as_u16(), first.text().as_str()), (206, "234"));
    assert_eq!(first.header("content-range"), "bytes 2-4/10");
    assert_eq!(first.header("content-length"), "3");
    let suffix = part("bytes=-3", None).await;
    assert_eq!(
        (suffix.status.as_u16(), suffix.text().as_str()),
        (206, "789")
    );
    assert!(suffix.is_hit());
    let open = part("bytes=7-", None).await;
    assert_eq!(open.text(), "789");
    let past = part("bytes=20-", None).await;
    assert_eq!(past.status.as_u16(), 416);
    assert_eq!(past.header("content-range"), "bytes */10");
    let several = part("bytes=0-1,3-4", None).await;
    assert_eq!(
        (several.status.as_u16(), several.text().as_str()),
        (200, "0123456789")
    );
    let same = part("bytes=0-0", Some(("if-range", "\"v1\""))).await;
    assert_eq!((same.status.as_u16(), same.text().as_str()), (206, "0"));
    let changed = part("bytes=0-0", Some(("if-range", "\"v0\""))).await;
    assert_eq!(
        changed.status.as_u16(),
        200,
        "If-Range does not match: the whole response"
    );
    assert_eq!(counter.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_targeted_field_does_not_displace_cache_control() {
    let counter = Counter::default();
    let app = Router::new()
        .route(
            "/mine",
            counting_get(
                &counter,
                &[
                    ("cdn-cache-control", ""),
                    ("cache-control", "private, max-age=600"),
                    ("etag", "\"e\""),
                ],
            ),
        )
        .layer(layer());
    fetch(&app, "/mine").await;
    assert!(
        !fetch(&app, "/mine").await.is_hit(),
        "private stays private"
    );
    assert_eq!(counter.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_of_a_response_too_large_to_store_reach_the_origin() {
    let body: &'static str = "0123456789abcdefghij";
    let app = Router::new()
        .route(
            "/big",
            get(move |headers: axum::http::HeaderMap| async move {
                let range = headers
                    .get("range")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                match range.as_deref() {
                    Some("bytes=0-4") => (
                        axum::http::StatusCode::PARTIAL_CONTENT,
                        [
                            ("cache-control", "max-age=600"),
                            ("content-range", "bytes 0-4/20"),
                        ],
                        &body[..5],
                    ),
                    _ => (
                        axum::http::StatusCode::OK,
                        [("cache-control", "max-age=600"), ("x-full", "yes")],
                        body,
                    ),
                }
            }),
        )
        .layer(layer().max_body_bytes(8));
    let first = send(&app, get_with("/big", &[("range", "bytes=0-4")])).await;
    assert!(
        first.cache_status().contains("too-large"),
        "{}",
        first.cache_status()
    );
    let again = send(&app, get_with("/big", &[("range", "bytes=0-4")])).await;
    assert_eq!(
        again.status.as_u16(),
        206,
        "the origin answers the range: {}",
        again.cache_status()
    );
    assert_eq!(again.text(), "01234");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surrogate_keys_survive_a_304_revalidation() {
    let layer = layer().tags(["static"]);
    let cache = layer.cache().clone();
    let tagged = Router::new()
        .route(
            "/t",
            get(|headers: axum::http::HeaderMap| async move {
                if headers.contains_key("if-none-match") {
                    return (
                        axum::http::StatusCode::NOT_MODIFIED,
                        [
                            ("etag", "\"t\""),
                            ("cache-control", "max-age=1"),
                            ("surrogate-key", ""),
                        ],
                        "",
                    );
                }
                (
                    axum::http::StatusCode::OK,
                    [
                        ("etag", "\"t\""),
                        ("cache-control", "max-age=1"),
                        ("surrogate-key", "page-t"),
                    ],
                    "tagged",
                )
            }),
        )
        .layer(layer);
    fetch(&tagged, "/t").await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let revalidated = fetch(&tagged, "/t").await;
    assert!(
        revalidated.cache_status().contains("fwd-status=304"),
        "{}",
        revalidated.cache_status()
    );
    assert!(fetch(&tagged, "/t").await.is_hit());
    assert!(cache.invalidate_tag("page-t").await.is_complete());
    assert!(
        !fetch(&tagged, "/t").await.is_hit(),
        "the origin's key still reaches the revalidated entry"
    );
}
