//! The Redis tiers against real `redis-server` processes: read-through and
//! promotion, write order, READONLY replicas, replica down, corrupt bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{sync::Arc, time::Duration};

use cachette_core::{Backend, Tiered};
use cachette_moka::MemoryTier;
use cachette_redis::Topology;
use cachette_testkit::RedisServer;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_only_in_the_master_is_promoted_with_its_remaining_ttl() {
    let master = RedisServer::start();
    let replica = RedisServer::replica_of(&master);
    let redis = connect(config(
        Topology::fixed(master.url(), Some(replica.url())),
        "t1:",
    ))
    .await;
    let memory = MemoryTier::default();
    let cache = redis.tiered("t1", Some(Arc::new(memory.clone())));
    wait_bus(&redis, 1).await;

    // Stored 50 s ago with a 60 s lifetime: ~10 s left.
    let e = entry_at(
        "v",
        std::time::SystemTime::now() - Duration::from_secs(50),
        Duration::from_secs(60),
        &[],
    );
    redis
        .master_tier()
        .set(&key("k"), e, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(2), || async {
            exists(&replica.url(), "t1:k:k").await
        })
        .await
    );
    // Make it master-only: remove the replicated copy from the (writable) replica.
    let mut conn = raw(&replica.url()).await;
    let _: i64 = redis::cmd("UNLINK")
        .arg("t1:k:k")
        .query_async(&mut conn)
        .await
        .unwrap();

    let hit = cache.get(&key("k")).await.unwrap();
    assert_eq!(hit.tier_name(), "master");
    assert_eq!(body(&hit.entry), "v");
    let local_ttl = pttl(&replica.url(), "t1:k:k").await;
    assert!(
        (8_000..=10_000).contains(&local_ttl),
        "promoted into local with the remaining TTL: {local_ttl}"
    );
    assert!(
        memory.get(&key("k")).await.unwrap().is_some(),
        "promoted into memory"
    );
    assert_eq!(cache.get(&key("k")).await.unwrap().tier_name(), "memory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_land_in_memory_and_the_replica_before_the_master() {
    let master = RedisServer::start();
    let replica = RedisServer::replica_of(&master);
    let mut cfg = config(Topology::fixed(master.url(), Some(replica.url())), "t2:");
    cfg.master_timeout = Duration::from_secs(3);
    let redis = connect(cfg).await;
    let memory = MemoryTier::default();
    let cache = redis.tiered("t2", Some(Arc::new(memory.clone())));
    wait_bus(&redis, 1).await;

    // Hold the master's writes for a moment.
    assert_eq!(
        master.command("CLIENT PAUSE 700 WRITE").as_deref(),
        Some("+OK")
    );
    let writer = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .set(&key("w"), entry("mine", Duration::from_secs(60)))
                .await
        })
    };
    assert!(
        eventually(Duration::from_millis(500), || async {
            memory.get(&key("w")).await.unwrap().is_some() && exists(&replica.url(), "t2:k:w").await
        })
        .await,
        "memory and the local replica hold the write at once"
    );
    assert!(
        !exists(&master.url(), "t2:k:w").await,
        "the master write is still pending"
    );
    let report = writer.await.unwrap();
    assert!(
        report.is_complete() && report.succeeded.len() == 3,
        "{report:?}"
    );
    assert!(exists(&master.url(), "t2:k:w").await);
    let local_ttl = pttl(&replica.url(), "t2:k:w").await;
    assert!(
        local_ttl > 0 && local_ttl <= 60_000,
        "local writes carry a TTL: {local_ttl}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_replica_is_skipped_without_error() {
    let master = RedisServer::start();
    let replica = RedisServer::replica_with(&master, true);
    let redis = connect(config(
        Topology::fixed(master.url(), Some(replica.url())),
        "t3:",
    ))
    .await;
    let cache: Tiered = redis.tiered("t3", None);
    let report = cache
        .set(&key("k"), entry("v", Duration::from_secs(60)))
        .await;
    assert!(report.is_complete(), "{report:?}");
    let report = cache
        .set(&key("k2"), entry("v", Duration::from_secs(60)))
        .await;
    assert!(report.is_complete(), "{report:?}");
    assert!(exists(&master.url(), "t3:k:k").await);
    assert_eq!(
        redis.stats().await.readonly_skips,
        2,
        "counted every time (logged once)"
    );
    // Reads still work from the replica once replication delivers the value.
    assert!(
        eventually(Duration::from_secs(2), || async {
            exists(&replica.url(), "t3:k:k").await
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fall_through_to_the_master_when_the_replica_is_down() {
    let master = RedisServer::start();
    let mut replica = RedisServer::replica_of(&master);
    let redis = connect(config(
        Topology::fixed(master.url(), Some(replica.url())),
        "t4:",
    ))
    .await;
    let cache = redis.tiered("t4", None);
    assert!(
        cache
            .set(&key("k"), entry("v", Duration::from_secs(60)))
            .await
            .is_complete()
    );
    replica.kill();
    for _ in 0..8 {
        let hit = cache.get(&key("k")).await.expect("served by the master");
        assert_eq!(hit.tier_name(), "master");
    }
    let local = &cache.snapshot().tiers[0];
    assert_eq!(local.name, "local");
    assert!(local.counters.errors + local.counters.skipped >= 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_bytes_in_redis_are_a_miss() {
    let master = RedisServer::start();
    let redis = connect(config(Topology::single(master.url()), "t5:")).await;
    let cache = redis.tiered("t5", None);
    let mut conn = raw(&master.url()).await;
    let _: () = redis::cmd("SET")
        .arg("t5:k:bad")
        .arg("not an entry")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut valid = cache_entry_bytes();
    let middle = valid.len() / 2;
    valid[middle] ^= 0xff;
    let _: () = redis::cmd("SET")
        .arg("t5:k:flipped")
        .arg(valid)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(cache.get(&key("bad")).await.is_none());
    assert!(cache.get(&key("flipped")).await.is_none());
    assert!(
        !exists(&master.url(), "t5:k:bad").await,
        "the unreadable entry was removed"
    );
    assert_eq!(cache.snapshot().tiers[0].counters.errors, 2);
}

fn cache_entry_bytes() -> Vec<u8> {
    entry("a perfectly good value", Duration::from_secs(60))
        .encode()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_and_tag_purges_remove_exactly_their_keys() {
    let master = RedisServer::start();
    let redis = connect(config(Topology::single(master.url()), "t6:")).await;
    let cache = redis.tiered("t6", None);
    let ttl = Duration::from_secs(60);
    let now = std::time::SystemTime::now();
    for (k, tags) in [
        ("GET:h/a*/1", &["users"][..]),
        ("GET:h/a*/2", &[][..]),
        ("GET:h/ab/1", &["users", "vip"][..]),
        ("GET:h/b/1", &["vip"][..]),
    ] {
        assert!(
            cache
                .set(&key(k), entry_at("v", now, ttl, tags))
                .await
                .is_complete()
        );
    }
    // A glob character in the prefix matches only itself.
    assert!(cache.invalidate_prefix("GET:h/a*").await.is_complete());
    assert!(!exists(&master.url(), "t6:k:GET:h/a*/1").await);
    assert!(!exists(&master.url(), "t6:k:GET:h/a*/2").await);
    assert!(exists(&master.url(), "t6:k:GET:h/ab/1").await);
    assert!(cache.invalidate_tag("vip").await.is_complete());
    assert!(!exists(&master.url(), "t6:k:GET:h/ab/1").await);
    assert!(!exists(&master.url(), "t6:k:GET:h/b/1").await);
    assert!(
        !exists(&master.url(), "t6:t:vip").await,
        "the tag index goes too"
    );
    // Clear removes the namespace and nothing else.
    let mut conn = raw(&master.url()).await;
    let _: () = redis::cmd("SET")
        .arg("other:data")
        .arg("1")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(cache.set(&key("x"), entry("v", ttl)).await.is_complete());
    assert!(cache.clear().await.is_complete());
    assert!(!exists(&master.url(), "t6:k:x").await);
    assert!(exists(&master.url(), "other:data").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_and_acl_user_come_from_the_url() {
    let master = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let acl = master
        .command("ACL SETUSER app on >app-pass ~* &* +@all")
        .unwrap_or_default();
    assert!(acl.contains("OK"), "{acl}");
    for url in [
        format!("redis://:s3cret@127.0.0.1:{}/0", master.port()),
        format!("redis://app:app-pass@127.0.0.1:{}/0", master.port()),
    ] {
        let redis = connect(config(Topology::single(url.clone()), "auth:")).await;
        let cache = redis.tiered("auth", None);
        assert!(
            cache
                .set(&key("k"), entry("v", Duration::from_secs(60)))
                .await
                .is_complete(),
            "{url}"
        );
        assert_eq!(cache.get(&key("k")).await.unwrap().tier_name(), "master");
    }
    let wrong = connect(config(
        Topology::single(format!("redis://:nope@127.0.0.1:{}/0", master.port())),
        "auth:",
    ))
    .await;
    let cache = wrong.tiered("auth", None);
    assert!(
        cache.get(&key("k")).await.is_none(),
        "a wrong password is a miss, not a panic"
    );
    assert!(
        !cache
            .set(&key("k"), entry("v", Duration::from_secs(60)))
            .await
            .is_complete()
    );
}

#[cfg(feature = "tls-insecure")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_urls_connect_over_tls() {
    let server = RedisServer::start_tls();
    let url = format!("rediss://127.0.0.1:{}/0#insecure", server.port());
    let redis = connect(config(Topology::single(url), "tls:")).await;
    let cache = redis.tiered("tls", None);
    assert!(
        cache
            .set(&key("k"), entry("over tls", Duration::from_secs(60)))
            .await
            .is_complete()
    );
    assert_eq!(body(&cache.get(&key("k")).await.unwrap().entry), "over tls");
}
