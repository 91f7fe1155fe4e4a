//! Which origin responses the layer stores, as a shared cache by RFC 9111,
//! and how long they stay fresh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime};

use axum::{Router, http::HeaderMap, routing::get};
use cachette::CacheLayer;
use common::*;
use http::{HeaderName, HeaderValue, header};

/// An app whose `/r` answers with `headers` and counts its calls.
fn origin_with(layer: CacheLayer, headers: Vec<(&'static str, String)>) -> (Router, Counter) {
    let counter = Counter::default();
    let calls = counter.clone();
    let app = Router::new()
        .route(
            "/r",
            get(move || {
                let calls = calls.clone();
                let headers = headers.clone();
                async move {
                    let n = calls.hit();
                    let mut map = HeaderMap::new();
                    for (name, value) in headers {
                        map.append(
                            HeaderName::from_static(name),
                            HeaderValue::from_str(&value).unwrap(),
                        );
                    }
                    (map, format!("response {n}"))
                }
            }),
        )
        .layer(layer);
    (app, counter)
}

fn h(name: &'static str, value: &str) -> (&'static str, String) {
    (name, value.to_owned())
}

/// Requests `/r` twice; returns whether the second was answered from the cache.
async fn stored(headers: Vec<(&'static str, String)>) -> bool {
    stored_with(layer(), headers, &[]).await
}

async fn stored_with(
    layer: CacheLayer,
    headers: Vec<(&'static str, String)>,
    request_headers: &[(&str, &str)],
) -> bool {
    let (app, counter) = origin_with(layer, headers);
    let first = send(&app, get_with("/r", request_headers)).await;
    assert_eq!(first.status, 200);
    let second = send(&app, get_with("/r", request_headers)).await;
    assert_eq!(second.status, 200);
    let hit = second.is_hit();
    assert_eq!(
        counter.get(),
        if hit { 1 } else { 2 },
        "origin calls agree with Cache-Status"
    );
    if hit {
        assert_eq!(first.body, second.body);
    }
    hit
}

#[tokio::test]
async fn max_age_and_s_maxage_and_expires_are_stored() {
    assert!(stored(vec![h("cache-control", "max-age=60")]).await);
    assert!(stored(vec![h("cache-control", "s-maxage=60")]).await);
    assert!(stored(vec![h("cache-control", "public, max-age=60")]).await);
    let in_a_minute = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(60));
    assert!(stored(vec![h("expires", &in_a_minute)]).await);
}

#[tokio::test]
async fn no_store_private_and_zero_lifetimes_are_not_stored() {
    assert!(!stored(vec![h("cache-control", "no-store, max-age=60")]).await);
    assert!(!stored(vec![h("cache-control", "private, max-age=60")]).await);
    assert!(!stored(vec![h("cache-control", "max-age=0")]).await);
    // s-maxage=0 wins over max-age for a shared cache.
    assert!(!stored(vec![h("cache-control", "max-age=60, s-maxage=0")]).await);
}

#[tokio::test]
async fn no_freshness_and_no_validator_is_stored_only_with_a_default_ttl() {
    assert!(!stored(vec![]).await);
    assert!(stored_with(layer().default_ttl(Duration::from_secs(30)), vec![], &[]).await);
    // An explicit lifetime beats the default.
    assert!(
        !stored_with(
            layer().default_ttl(Duration::from_secs(30)),
            vec![h("cache-control", "max-age=0")],
            &[]
        )
        .await
    );
}

#[tokio::test]
async fn heuristic_freshness_only_when_configured() {
    let last_modified =
        httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(100 * 24 * 3600));
    // Stored (it has a validator) but never fresh without the heuristic.
    assert!(!stored(vec![h("last-modified", &last_modified)]).await);
    assert!(
        stored_with(
            layer().heuristic_freshness(0.1),
            vec![h("last-modified", &last_modified)],
            &[]
        )
        .await
    );
}

#[tokio::test]
async fn no_cache_with_a_validator_is_revalidated_every_time() {
    let (app, counter) = origin_with(
        layer(),
        vec![h("cache-control", "no-cache"), h("etag", "\"v1\"")],
    );
    let first = fetch(&app, "/r").await;
    assert!(
        first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );
    let second = fetch(&app, "/r").await;
    assert!(
        second.cache_status().contains("fwd=stale"),
        "{}",
        second.cache_status()
    );
    assert_eq!(counter.get(), 2);
}

#[tokio::test]
async fn set_cookie_is_not_stored_unless_stripping_is_configured() {
    let cookie = vec![
        h("cache-control", "max-age=60"),
        h("set-cookie", "session=abc"),
    ];
    assert!(!stored(cookie.clone()).await);

    let (app, counter) = origin_with(layer().strip_set_cookie(true), cookie);
    let first = fetch(&app, "/r").await;
    assert_eq!(
        first.header("set-cookie"),
        "session=abc",
        "the client that caused the store keeps its cookie"
    );
    let second = fetch(&app, "/r").await;
    assert!(second.is_hit());
    assert!(
        second.headers.get(header::SET_COOKIE).is_none(),
        "no one else gets that cookie"
    );
    assert_eq!(counter.get(), 1);
}

#[tokio::test]
async fn vary_star_in_any_spelling_is_not_stored() {
    assert!(!stored(vec![h("cache-control", "max-age=60"), h("vary", "*")]).await);
    assert!(
        !stored(vec![
            h("cache-control", "max-age=60"),
            h("vary", "accept, *")
        ])
        .await
    );
    assert!(
        !stored(vec![
            h("cache-control", "max-age=60"),
            h("vary", "accept"),
            h("vary", "*")
        ])
        .await
    );
}

#[tokio::test]
async fn authorization_needs_public_s_maxage_or_must_revalidate() {
    let auth = [("authorization", "Bearer t")];
    assert!(!stored_with(layer(), vec![h("cache-control", "max-age=60")], &auth).await);
    assert!(
        stored_with(
            layer(),
            vec![h("cache-control", "public, max-age=60")],
            &auth
        )
        .await
    );
    assert!(stored_with(layer(), vec![h("cache-control", "s-maxage=60")], &auth).await);
    assert!(
        stored_with(
            layer(),
            vec![h("cache-control", "max-age=60, must-revalidate")],
            &auth
        )
        .await
    );
}

#[tokio::test]
async fn an_anonymous_entry_does_not_answer_an_authorized_request() {
    let (app, counter) = origin_with(layer(), vec![h("cache-control", "max-age=60")]);
    assert!(fetch(&app, "/r").await.cache_status().contains("stored"));
    let authed = send(&app, get_with("/r", &[("authorization", "Bearer t")])).await;
    assert!(!authed.is_hit());
    assert_eq!(counter.get(), 2);
    assert!(fetch(&app, "/r").await.is_hit());
}

#[tokio::test]
async fn request_no_store_bypasses() {
    let (app, counter) = origin_with(layer(), vec![h("cache-control", "max-age=60")]);
    let first = send(&app, get_with("/r", &[("cache-control", "no-store")])).await;
    assert_eq!(first.cache_status(), "cachette; fwd=request");
    assert!(!fetch(&app, "/r").await.is_hit(), "nothing was stored");
    assert_eq!(counter.get(), 2);
}

#[tokio::test]
async fn targeted_fields_take_precedence() {
    // CDN-Cache-Control (RFC 9213) overrides Cache-Control for the cache...
    assert!(
        stored(vec![
            h("cache-control", "no-store"),
            h("cdn-cache-control", "max-age=60")
        ])
        .await
    );
    // ...and Cachette-Control overrides both.
    assert!(
        !stored(vec![
            h("cache-control", "max-age=60"),
            h("cachette-control", "no-store")
        ])
        .await
    );
    assert!(
        stored(vec![
            h("cdn-cache-control", "no-store"),
            h("cachette-control", "max-age=60")
        ])
        .await
    );
    // The client still sees the origin's Cache-Control; Cachette-Control is ours and removed.
    let (app, _) = origin_with(
        layer(),
        vec![
            h("cache-control", "no-cache"),
            h("cachette-control", "max-age=60"),
        ],
    );
    let reply = fetch(&app, "/r").await;
    assert_eq!(reply.header("cache-control"), "no-cache");
    assert!(reply.headers.get("cachette-control").is_none());
    assert!(fetch(&app, "/r").await.is_hit());
}

#[tokio::test]
async fn layer_ttl_overrides_max_age_but_not_no_store() {
    assert!(
        stored_with(
            layer().ttl(Duration::from_secs(60)),
            vec![h("cache-control", "max-age=0")],
            &[]
        )
        .await
    );
    assert!(
        !stored_with(
            layer().ttl(Duration::from_secs(60)),
            vec![h("cache-control", "no-store")],
            &[]
        )
        .await
    );
}

#[tokio::test]
async fn expires_is_computed_against_date() {
    let now = SystemTime::now();
    // Expires 30 s after a Date 100 s ago: already stale, whatever the local clock says of Expires.
    let date = httpdate::fmt_http_date(now - Duration::from_secs(100));
    let expires = httpdate::fmt_http_date(now - Duration::from_secs(70));
    assert!(!stored(vec![h("date", &date), h("expires", &expires)]).await);
    // Expires 200 s after that Date: fresh for about 100 s more.
    let expires = httpdate::fmt_http_date(now + Duration::from_secs(100));
    let (app, _) = origin_with(layer(), vec![h("date", &date), h("expires", &expires)]);
    fetch(&app, "/r").await;
    let hit = fetch(&app, "/r").await;
    assert!(hit.is_hit());
    let ttl = hit.status_ttl();
    assert!((95..=100).contains(&ttl), "ttl {ttl}");
    let age: u64 = hit.header("age").parse().unwrap();
    assert!((100..=102).contains(&age), "age {age}");
    assert_eq!(hit.header("date"), date, "Date is kept as stored");
    // An invalid Expires means already expired.
    assert!(!stored(vec![h("expires", "0")]).await);
}

#[tokio::test]
async fn age_counts_the_incoming_age_and_the_time_in_cache() {
    let (app, _) = origin_with(
        layer(),
        vec![h("cache-control", "max-age=60"), h("age", "10")],
    );
    let first = fetch(&app, "/r").await;
    assert_eq!(first.header("age"), "10");
    let hit = fetch(&app, "/r").await;
    assert!(
        hit.cache_status().starts_with("cachette; hit; ttl=50")
            || hit.cache_status().starts_with("cachette; hit; ttl=49"),
        "{}",
        hit.cache_status()
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = fetch(&app, "/r").await;
    assert_eq!(later.header("age"), "11");
}

#[tokio::test]
async fn hits_keep_content_length_and_drop_hop_by_hop_fields() {
    let (app, _) = origin_with(
        layer(),
        vec![
            h("cache-control", "max-age=60"),
            h("connection", "x-secret"),
            h("x-secret", "1"),
            h("cache-tag", "a b"),
        ],
    );
    fetch(&app, "/r").await;
    let hit = fetch(&app, "/r").await;
    assert!(hit.is_hit());
    assert_eq!(hit.header("content-length"), hit.body.len().to_string());
    assert!(
        hit.headers.get("x-secret").is_none(),
        "fields named in Connection are not stored"
    );
    assert!(
        hit.headers.get("cache-tag").is_none(),
        "tag field is consumed by the cache"
    );
}
