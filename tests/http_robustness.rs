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
