//! The response cache on a fleet of peers, built from settings as an app
//! would: three nodes (three `Caches`, each with its own real
//! `redis-server`), one axum app each over the same origin.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use axum::Router;
use cachette::{Caches, settings::Settings};
use cachette_testkit::RedisServer;
use common::*;

async fn node(urls: &[String], this: &str, dir: &std::path::Path) -> Caches {
    let peers = urls
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let settings = Settings::from_toml_str(
        "fleet.toml",
        &format!(
            r#"
[redis.fleet]
peers = [{peers}]
self = "{this}"
heartbeat = "200ms"

[caches.default]
tiers = ["memory", "local"]
journal = {{ path = "{}" }}
[caches.default.http]
default_ttl = "60s"
"#,
            dir.join("journal").display()
        ),
    )
    .unwrap();
    Caches::from_settings(settings).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_filled_on_one_node_is_a_hit_on_the_others_without_an_origin_call() {
    let servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    let dir = tempfile::tempdir().unwrap();
    let origin = Counter::default();
    let mut apps = Vec::new();
    let mut fleet = Vec::new();
    for (n, url) in urls.iter().enumerate() {
        let node_dir = dir.path().join(n.to_string());
        std::fs::create_dir_all(&node_dir).unwrap();
        let caches = node(&urls, url, &node_dir).await;
        apps.push(
            Router::new()
                .route(
                    "/page",
                    counting_get(&origin, &[("cache-control", "max-age=60")]),
                )
                .layer(caches.layer("default").unwrap()),
        );
        fleet.push(caches);
    }
    // Every node hears the others and reads its own Redis before the fill.
    for caches in &fleet {
        let started = Instant::now();
        loop {
            let report = caches.report(false, None).await;
            let redis = report.caches[0].redis.clone().unwrap();
            if redis.own_current == Some(true) && redis.peers.iter().all(|p| p.connected) {
                assert_eq!(redis.peers.len(), 2);
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "{redis:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    let first = fetch(&apps[0], "/page").await;
    assert!(!first.is_hit(), "{}", first.cache_status());
    assert_eq!(origin.get(), 1);
    let filled = Instant::now();
    for (server, app) in servers[1..].iter().zip(&apps[1..]) {
        // Copied into that node's own Redis, in the background...
        while server
            .command("EXISTS cachette:default:k::1:GET:test.local/page")
            .as_deref()
            != Some(":1")
        {
            assert!(
                filled.elapsed() < Duration::from_millis(200),
                "not copied to {} within 200 ms: {:?}",
                server.addr(),
                servers[0].command("EXISTS cachette:default:k::1:GET:test.local/page")
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // ...so a request there is a hit, with no origin call.
        let reply = fetch(app, "/page").await;
        assert!(reply.is_hit(), "{}", reply.cache_status());
        assert_eq!(reply.text(), first.text(), "the same page");
    }
    // One origin call for the fleet; the reports say what was copied.
    assert_eq!(origin.get(), 1);
    for caches in &fleet[1..] {
        let report = caches.report(false, None).await;
        let replication = report.caches[0].redis.clone().unwrap().replication.unwrap();
        assert!(replication.copied >= 1, "{replication:?}");
    }

    // A purge on B reaches every node.
    let report = fleet[1]
        .layer("default")
        .unwrap()
        .invalidate_url_prefix("http://test.local/")
        .await
        .unwrap();
    assert!(report.is_complete(), "{report:?}");
    // Every node's Redis at once; the other nodes' memory over their
    // subscriptions, within moments.
    for server in &servers {
        assert_eq!(
            server
                .command("EXISTS cachette:default:k::1:GET:test.local/page")
                .as_deref(),
            Some(":0")
        );
    }
    let purged = Instant::now();
    let key = cachette::CacheKey::new(":1:GET:test.local/page").unwrap();
    for caches in &fleet {
        let cache = caches.cache("default").unwrap();
        let memory = cache.tiered().tier_backend(0).unwrap();
        while memory.get(&key).await.unwrap().is_some() {
            assert!(
                purged.elapsed() < Duration::from_millis(200),
                "still in a memory tier"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // The next request is a miss (then a fill, copied again).
    let again = fetch(&apps[2], "/page").await;
    assert!(!again.is_hit(), "{}", again.cache_status());
    assert_eq!(origin.get(), 2);
}
