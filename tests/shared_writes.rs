//! Two nodes of an application over one real Redis master: operations that
//! start from a value (touch, incr_version) start from the shared value, not
//! from this node's possibly stale memory copy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cachette::{Caches, settings::Settings};
use cachette_testkit::RedisServer;

/// A node: its own process state (memory tier, bus id) over `master`.
async fn node(master: &RedisServer) -> Caches {
    let text = format!(
        r#"
        [redis.main]
        url = "{}"
        master_timeout = "500ms"

        [caches.default]
        tiers = ["memory", "master"]
        namespace = "sw:"
        "#,
        master.url()
    );
    Caches::from_settings(Settings::from_toml_str("test.toml", &text).unwrap())
        .await
        .unwrap()
}

async fn pttl(master: &RedisServer, key: &str) -> i64 {
    let mut conn = redis::Client::open(master.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn touch_keeps_another_nodes_newer_value() {
    let master = RedisServer::start();
    let (a, b) = (node(&master).await, node(&master).await);
    let (a, b) = (a.cache("default").unwrap(), b.cache("default").unwrap());
    a.set("price", "10 EUR", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        a.get::<String>("price", ()).await.unwrap().as_deref(),
        Some("10 EUR")
    );
    // Another node changes the price; this node's memory still holds 10 EUR.
    b.set("price", "12 EUR", Duration::from_secs(60))
        .await
        .unwrap();

    assert!(a.touch("price", Duration::from_secs(600)).await.unwrap());
    let left = pttl(&master, "sw:k::1:price").await;
    assert!(
        (590_000..=600_000).contains(&left),
        "the new lifetime: {left}"
    );
    assert_eq!(
        b.get::<String>("price", ()).await.unwrap().as_deref(),
        Some("12 EUR")
    );
    assert_eq!(
        a.get::<String>("price", ()).await.unwrap().as_deref(),
        Some("12 EUR"),
        "the touch did not write this node's stale copy back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incr_version_moves_the_shared_value() {
    let master = RedisServer::start();
    let (a, b) = (node(&master).await, node(&master).await);
    let (a, b) = (a.cache("default").unwrap(), b.cache("default").unwrap());
    a.set("profile", "old", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        a.get::<String>("profile", ()).await.unwrap().as_deref(),
        Some("old")
    );
    b.set("profile", "new", Duration::from_secs(60))
        .await
        .unwrap();

    assert_eq!(a.incr_version("profile", 1, ()).await.unwrap(), 2);
    let moved = cachette::Opts::default().version(2);
    assert_eq!(
        b.get::<String>("profile", moved).await.unwrap().as_deref(),
        Some("new"),
        "version 2 holds the shared value, not this node's stale copy"
    );
}
