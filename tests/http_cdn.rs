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
