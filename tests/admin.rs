//! The admin routes of `Caches::admin_router()` with real `redis-server`
//! processes: health follows a stopped Redis, stats and Prometheus metrics
//! report the counters, and purge is refused without the right token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::{Router, body::Body, routing::get};
use cachette::{Caches, settings::Settings};
use cachette_testkit::RedisServer;
use common::*;
use http::{Request, StatusCode};

const TOKEN: &str = "s3cret-admin-token-for-tests";

async fn caches(redis: &RedisServer, token: Option<&str>) -> Caches {
    let admin = token.map_or_else(String::new, |t| format!("[admin]\ntoken = \"{t}\"\n"));
    let settings = Settings::from_toml_str(
        "admin-test.toml",
        &format!(
            r#"{admin}
[redis.main]
url = "{}"
master_timeout = "200ms"
connect_timeout = "200ms"

[caches.default]
tiers = ["memory", "master"]
[caches.default.http]
default_ttl = "60s"

[caches.remote]
tiers = ["master"]
"#,
            redis.url()
        ),
    )
    .unwrap();
    Caches::from_settings(settings).await.unwrap()
}

fn purge_request(token: Option<&str>, body: &str) -> Request<Body> {
    let mut request =
        Request::post("http://admin/purge").header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    request.body(Body::from(body.to_owned())).unwrap()
}

fn json(reply: &Reply) -> serde_json::Value {
    serde_json::from_slice(&reply.body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_a_stopped_redis() {
    let mut redis = RedisServer::start();
    let caches = caches(&redis, None).await;
    let admin = caches.admin_router();

    let healthy = send(&admin, Request::get("/health").body(Body::empty()).unwrap()).await;
    assert_eq!(healthy.status, StatusCode::OK);
    let body = json(&healthy);
    assert_eq!(body["status"], "ok");
    let default = &body["caches"][0];
    assert_eq!(default["alias"], "default");
    assert_eq!(default["master"], redis.addr());
    assert_eq!(default["tiers"][1]["role"], "master");
    assert_eq!(default["tiers"][1]["up"], true);
    assert_eq!(default["tiers"][1]["breaker"], "closed");

    redis.kill();
    let down = send(&admin, Request::get("/health").body(Body::empty()).unwrap()).await;
    // `remote` has no tier left that answers: the node cannot serve it.
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = json(&down);
    assert_eq!(body["status"], "down");
    assert_eq!(
        body["caches"][0]["status"], "degraded",
        "memory still serves"
    );
    assert_eq!(body["caches"][0]["tiers"][0]["up"], true);
    assert_eq!(body["caches"][0]["tiers"][1]["up"], false);
    assert!(body["caches"][0]["tiers"][1]["error"].is_string());
    assert_eq!(body["caches"][1]["status"], "down");

    redis.restart();
    let mut recovered = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..50 {
        let reply = send(&admin, Request::get("/health").body(Body::empty()).unwrap()).await;
        recovered = reply.status;
        if recovered == StatusCode::OK && json(&reply)["status"] == "ok" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(recovered, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_needs_the_configured_token() {
    let redis = RedisServer::start();

    // No token configured: there is no purge route at all.
    let open = caches(&redis, None).await.admin_router();
    let reply = send(&open, purge_request(None, r#"{"all": true}"#)).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);

    let caches = caches(&redis, Some(TOKEN)).await;
    let admin = caches.admin_router();
    let counter = Counter::default();
    let origin = counter.clone();
    let app = Router::new()
        .route(
            "/api/items",
            get(move || {
                let n = origin.hit();
                async move { format!("items {n}") }
            }),
        )
        .layer(caches.layer("default").unwrap());
    let get_items = || {
        Request::get("http://shop.test/api/items")
            .body(Body::empty())
            .unwrap()
    };
    send(&app, get_items()).await;
    assert!(send(&app, get_items()).await.cache_status().contains("hit"));

    let missing = send(&admin, purge_request(None, r#"{"prefix": "/api/"}"#)).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.header("www-authenticate"), "Bearer");
    let wrong = send(
        &admin,
        purge_request(
            Some("s3cret-admin-token-for-tesTS"),
            r#"{"prefix": "/api/"}"#,
        ),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert!(
        send(&app, get_items()).await.cache_status().contains("hit"),
        "nothing purged"
    );

    let two_targets = send(
        &admin,
        purge_request(Some(TOKEN), r#"{"tag": "a", "all": true}"#),
    )
    .await;
    assert_eq!(two_targets.status, StatusCode::BAD_REQUEST);
    let unknown = send(
        &admin,
        purge_request(Some(TOKEN), r#"{"cache": "nope", "all": true}"#),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    let done = send(&admin, purge_request(Some(TOKEN), r#"{"prefix": "/api/"}"#)).await;
    assert_eq!(done.status, StatusCode::OK, "{:?}", done.body);
    let body = json(&done);
    assert_eq!(body["complete"], true);
    assert_eq!(body["cache"], "default");
    assert!(
        send(&app, get_items())
            .await
            .cache_status()
            .contains("fwd=miss")
    );
    assert_eq!(counter.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_prometheus_metrics_report_the_counters() {
    let redis = RedisServer::start();
    let caches = caches(&redis, None).await;
    let admin = caches.admin_router();
    let app = Router::new()
        .route("/p", get(|| async { "p" }))
        .layer(caches.layer("default").unwrap());
    for _ in 0..3 {
        send(
            &app,
            Request::get("http://shop.test/p")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    }

    let stats = send(&admin, Request::get("/stats").body(Body::empty()).unwrap()).await;
    assert_eq!(stats.status, StatusCode::OK);
    let body = json(&stats);
    let default = &body["caches"][0];
    assert_eq!(default["counters"]["hits"], 2);
    assert_eq!(default["counters"]["misses"], 1);
    assert_eq!(default["counters"]["stored"], 1);
    assert!(
        default["tiers"][0]["entries"].is_u64(),
        "the memory tier knows its size"
    );
    assert_eq!(default["tiers"][0]["capacity_bytes"], 64 * 1024 * 1024);
    assert!(default["tiers"][1]["writes"].as_u64().unwrap() >= 1);

    let metrics = send(
        &admin,
        Request::get("/metrics").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(metrics.header("content-type").starts_with("text/plain"));
    let text = String::from_utf8(metrics.body.to_vec()).unwrap();
    for expected in [
        "cachette_hits_total{cache=\"default\"} 2",
        "cachette_misses_total{cache=\"default\"} 1",
        "cachette_tier_writes_total{cache=\"default\",tier=\"master\"} 1",
        "cachette_tier_breaker_state{cache=\"default\",tier=\"master\"} 0",
        "cachette_up 1",
        "# HELP cachette_hits_total",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
    assert!(
        text.contains(
            "cachette_tier_latency_seconds{cache=\"default\",tier=\"master\",quantile=\"0.99\"}"
        ),
        "{text}"
    );
    // Scraping twice counts nothing twice.
    let again = send(
        &admin,
        Request::get("/metrics").body(Body::empty()).unwrap(),
    )
    .await;
    assert!(
        String::from_utf8(again.body.to_vec())
            .unwrap()
            .contains("cachette_hits_total{cache=\"default\"} 2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_only_journaled_is_accepted_not_reported_applied() {
    let mut redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::from_toml_str(
        "admin-test.toml",
        &format!(
            r#"[admin]
token = "{TOKEN}"
[redis.main]
url = "{}"
master_timeout = "200ms"
connect_timeout = "200ms"

[caches.default]
tiers = ["memory", "master"]
[caches.default.journal]
path = "{}"
probe_interval = "1h"
"#,
            redis.url(),
            dir.path().join("journal").display()
        ),
    )
    .unwrap();
    let caches = Caches::from_settings(settings).await.unwrap();
    let admin = caches.admin_router();
    let applied = send(&admin, purge_request(Some(TOKEN), r#"{"tag": "t"}"#)).await;
    assert_eq!(applied.status, StatusCode::OK);
    assert_eq!(json(&applied)["applied"], true);

    redis.kill();
    let journaled = send(&admin, purge_request(Some(TOKEN), r#"{"tag": "t"}"#)).await;
    assert_eq!(
        journaled.status,
        StatusCode::ACCEPTED,
        "journaled for the master, not applied there: {:?}",
        journaled.body
    );
    let body = json(&journaled);
    assert_eq!(body["complete"], true, "nothing is lost");
    assert_eq!(body["applied"], false);
    assert_eq!(body["tiers"][1][1]["outcome"], "journaled", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_purge_through_the_admin_route_marks_pages_stale() {
    let redis = RedisServer::start();
    let caches = caches(&redis, Some(TOKEN)).await;
    let admin = caches.admin_router();
    let counter = Counter::default();
    let origin = counter.clone();
    let app = Router::new()
        .route(
            "/news",
            get(move || {
                let n = origin.hit();
                async move {
                    (
                        [
                            ("cache-control", "max-age=600, stale-while-revalidate=60"),
                            ("cache-tag", "news"),
                        ],
                        format!("news {n}"),
                    )
                }
            }),
        )
        .layer(caches.layer("default").unwrap());
    let news = || {
        Request::get("http://shop.test/news")
            .body(Body::empty())
            .unwrap()
    };
    send(&app, news()).await;
    assert!(send(&app, news()).await.cache_status().contains("hit"));
    let soft = send(
        &admin,
        purge_request(Some(TOKEN), r#"{"tag": "news", "soft": true}"#),
    )
    .await;
    assert_eq!(soft.status, StatusCode::OK, "{:?}", soft.body);
    assert!(json(&soft)["purged"].as_str().unwrap().contains("soft"));
    let stale = send(&app, news()).await;
    assert!(
        stale.cache_status().contains("stale-while-revalidate"),
        "{}",
        stale.cache_status()
    );
    assert_eq!(
        stale.text(),
        "news 1",
        "the stale copy, while a refresh runs"
    );
}
