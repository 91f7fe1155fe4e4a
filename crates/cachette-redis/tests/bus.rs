//! Invalidation on every node: two nodes (two `RedisTiers`, own memory tiers)
//! share one master; one node's invalidations reach the other's memory tier,
//! and a node whose bus connection dropped clears its memory on reconnect.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{sync::Arc, time::Duration};

use cachette_core::{Backend, Tiered};
use cachette_moka::MemoryTier;
use cachette_redis::{RedisTiers, Topology};
use cachette_testkit::RedisServer;
use common::*;

struct NodeUnderTest {
    redis: RedisTiers,
    memory: MemoryTier,
    cache: Tiered,
}

async fn node(master: &RedisServer) -> NodeUnderTest {
    let redis = connect(config(Topology::single(master.url()), "bus:")).await;
    let memory = MemoryTier::default();
    let cache = redis.tiered("bus", Some(Arc::new(memory.clone())));
    wait_bus(&redis, 1).await;
    NodeUnderTest {
        redis,
        memory,
        cache,
    }
}

async fn in_memory(node: &NodeUnderTest, k: &str) -> bool {
    node.memory.get(&key(k)).await.unwrap().is_some()
}

/// Puts `k` in both nodes' memory tiers: A writes it, B reads it through.
async fn share(a: &NodeUnderTest, b: &NodeUnderTest, k: &str, tags: &[&str]) {
    let e = entry_at(
        "v",
        std::time::SystemTime::now(),
        Duration::from_secs(60),
        tags,
    );
    assert!(a.cache.set(&key(k), e).await.is_complete());
    assert!(b.cache.get(&key(k)).await.is_some());
    assert!(in_memory(a, k).await && in_memory(b, k).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_reach_the_other_nodes_memory_within_200ms() {
    let master = RedisServer::start();
    let a = node(&master).await;
    let b = node(&master).await;

    share(&a, &b, "GET:h/users/1", &[]).await;
    assert!(a.cache.delete(&key("GET:h/users/1")).await.is_complete());
    assert!(!in_memory(&a, "GET:h/users/1").await);
    assert!(
        eventually(Duration::from_millis(200), || async {
            !in_memory(&b, "GET:h/users/1").await
        })
        .await,
        "delete reached B"
    );

    share(&a, &b, "GET:h/users/2", &[]).await;
    share(&a, &b, "GET:h/orders/2", &[]).await;
    assert!(
        a.cache
            .invalidate_prefix("GET:h/users/")
            .await
            .is_complete()
    );
    assert!(
        eventually(Duration::from_millis(200), || async {
            !in_memory(&b, "GET:h/users/2").await
        })
        .await,
        "prefix purge reached B"
    );
    assert!(in_memory(&b, "GET:h/orders/2").await, "and only the prefix");

    share(&a, &b, "GET:h/tagged", &["vip"]).await;
    assert!(a.cache.invalidate_tag("vip").await.is_complete());
    assert!(
        eventually(Duration::from_millis(200), || async {
            !in_memory(&b, "GET:h/tagged").await
        })
        .await,
        "tag purge reached B"
    );
    assert!(b.redis.stats().await.bus_received >= 3);
    assert!(
        in_memory(&b, "GET:h/orders/2").await,
        "B's other entries stay"
    );
    // A ignores its own messages (it applied them directly).
    assert_eq!(a.redis.stats().await.bus_received, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_bus_connection_clears_the_memory_tier_on_reconnect() {
    let master = RedisServer::start();
    let a = node(&master).await;
    let b = node(&master).await;
    share(&a, &b, "k", &[]).await;
    let before = b.redis.stats().await.bus_subscriptions;
    // Kill every pub/sub connection on the master: B's subscription drops.
    let killed = master.command("CLIENT KILL TYPE pubsub").unwrap();
    assert!(killed.starts_with(':'), "{killed}");
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.redis.stats().await.bus_subscriptions > before
        })
        .await,
        "B resubscribed"
    );
    assert!(
        !in_memory(&b, "k").await,
        "B cleared its memory tier: it may have missed invalidations"
    );
    // The bus works again after the reconnect.
    wait_bus(&a.redis, before + 1).await;
    share(&a, &b, "k2", &[]).await;
    assert!(a.cache.delete(&key("k2")).await.is_complete());
    assert!(
        eventually(Duration::from_millis(200), || async {
            !in_memory(&b, "k2").await
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_purge_marks_entries_stale_on_every_tier_and_node() {
    let master = RedisServer::start();
    let a = node(&master).await;
    let b = node(&master).await;
    let stale_in = |memory: MemoryTier, k: &'static str| async move {
        let now = std::time::SystemTime::now();
        memory
            .get(&key(k))
            .await
            .unwrap()
            .is_some_and(|e| matches!(e.freshness(now), cachette_core::Freshness::Stale { .. }))
    };
    share(&a, &b, "GET:h/p/1", &["p"]).await;
    share(&a, &b, "GET:h/p/2", &[]).await;
    share(&a, &b, "GET:h/q/1", &[]).await;
    for (report, k) in [
        (a.cache.soft_invalidate_tag("p").await, "GET:h/p/1"),
        (
            a.cache.soft_invalidate_prefix("GET:h/p/").await,
            "GET:h/p/2",
        ),
        (a.cache.soft_delete(&key("GET:h/q/1")).await, "GET:h/q/1"),
    ] {
        assert!(report.is_complete(), "{report:?}");
        assert!(
            stale_in(a.memory.clone(), k).await,
            "{k}: stale in this node's memory"
        );
        let master_copy = a.redis.master_tier().get(&key(k)).await.unwrap().unwrap();
        assert!(
            matches!(
                master_copy.freshness(std::time::SystemTime::now()),
                cachette_core::Freshness::Stale { .. }
            ),
            "{k}: stale on the master, and still there"
        );
        assert!(
            eventually(Duration::from_secs(2), || stale_in(b.memory.clone(), k)).await,
            "{k}: stale in the other node's memory"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_keeps_serving_through_a_master_outage() {
    let mut master = RedisServer::start();
    let a = node(&master).await;
    let e = entry_at(
        "v",
        std::time::SystemTime::now(),
        Duration::from_secs(60),
        &[],
    );
    assert!(a.cache.set(&key("k"), e).await.is_complete());
    master.kill();
    // The bus connection closes at once; memory is not emptied for it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        in_memory(&a, "k").await,
        "memory still serves during the outage"
    );
    assert!(a.cache.get(&key("k")).await.is_some());
}
