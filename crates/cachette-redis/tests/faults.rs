//! Faults against real `redis-server` processes and a real redb journal: each
//! test reproduces one way the journal, the replay, the breaker or the bus
//! broke the promise "nothing lost, nothing resurrected", and checks it holds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use cachette_core::{Backend, BreakerState, CacheError, CacheKey, Entry, Tiered, async_trait};
use cachette_moka::MemoryTier;
use cachette_redis::{JournalConfig, RedisTier, RedisTiers, Topology};
use cachette_testkit::{RedisServer, Tmpfs};
use common::*;

/// The raw value of a key, if any.
async fn raw_get(url: &str, k: &str) -> Option<Vec<u8>> {
    let mut conn = raw(url).await;
    redis::cmd("GET")
        .arg(k)
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// The body of what the master tier reads for `k` (retrying while the
/// shared connection reconnects after a restart).
async fn master_body(redis: &RedisTiers, k: &str) -> Option<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        match redis.master_tier().get(&key(k)).await {
            Ok(entry) => return entry.map(|e| body(&e)),
            Err(error) if std::time::Instant::now() > deadline => panic!("{error}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

fn journal_config(path: &std::path::Path) -> JournalConfig {
    let mut journal = JournalConfig::new(path);
    // Replays happen when the test asks for them.
    journal.probe_interval = Duration::from_secs(3600);
    journal
}

async fn with_journal(
    master: &RedisServer,
    namespace: &str,
    dir: &tempfile::TempDir,
) -> RedisTiers {
    connect(
        config(Topology::single(master.url()), namespace)
            .journal(journal_config(&dir.path().join("journal"))),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_probe_does_not_leave_the_breaker_half_open() {
    let mut master = RedisServer::start();
    let redis = connect(config(Topology::single(master.url()), "f1:")).await;
    let cache = redis.tiered("f1", None);
    master.kill();
    for _ in 0..6 {
        assert!(cache.get(&key("k")).await.is_none());
    }
    assert_eq!(cache.breaker_states()[0].1, BreakerState::Open);
    master.restart();
    assert!(
        redis
            .master_tier()
            .set(
                &key("k"),
                entry("v", Duration::from_secs(60)),
                Duration::from_secs(60)
            )
            .await
            .is_ok()
            || eventually(Duration::from_secs(2), || async {
                redis
                    .master_tier()
                    .set(
                        &key("k"),
                        entry("v", Duration::from_secs(60)),
                        Duration::from_secs(60),
                    )
                    .await
                    .is_ok()
            })
            .await
    );
    // The breaker's pause ends; the probe's caller gives up while Redis is
    // slow to answer (a client that hung up, a deadline around the call).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(master.command("CLIENT PAUSE 400 ALL").is_some());
    let cancelled = tokio::time::timeout(Duration::from_millis(50), cache.get(&key("k"))).await;
    assert!(cancelled.is_err(), "the probe was cancelled midway");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut answered = 0;
    for _ in 0..50 {
        if cache.get(&key("k")).await.is_some() {
            answered += 1;
        }
    }
    assert_eq!(
        answered,
        50,
        "the healthy tier serves again: {:?}",
        cache.breaker_states()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journaled_pattern_purge_is_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = RedisServer::start();
    let redis = with_journal(&master, "f2:", &dir).await;
    let cache = redis.tiered("f2", None);
    let ttl = Duration::from_secs(60);
    master.kill();
    let report = cache.invalidate_pattern("fn:a:*").await;
    assert_eq!(report.journaled.len(), 1, "{report:?}");
    master.restart();
    // What the master holds when the replay runs (written by another node).
    for k in ["fn:a:1", "fn:a:2", "fn:b:1"] {
        let written = eventually(Duration::from_secs(2), || async {
            redis
                .master_tier()
                .set(&key(k), entry("v1", ttl), ttl)
                .await
                .is_ok()
        })
        .await;
        assert!(written);
    }
    assert_eq!(redis.replay_journal().await.unwrap(), 0);
    assert!(
        !exists(&master.url(), "f2:k:fn:a:1").await,
        "purged by the replay"
    );
    assert!(
        !exists(&master.url(), "f2:k:fn:a:2").await,
        "purged by the replay"
    );
    assert!(
        exists(&master.url(), "f2:k:fn:b:1").await,
        "not matched: kept"
    );
    let stats = redis.journal().unwrap().stats().await;
    assert_eq!((stats.replayed, stats.dropped), (1, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_releases_the_journal_with_a_local_replica() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let master = RedisServer::start();
    let replica = RedisServer::replica_with(&master, false);
    let redis = connect(
        config(Topology::fixed(master.url(), Some(replica.url())), "f3:")
            .journal(journal_config(&path)),
    )
    .await;
    let memory = MemoryTier::default();
    let cache = redis.tiered("f3", Some(Arc::new(memory)));
    wait_bus(&redis, 1).await;
    assert!(
        cache
            .set(&key("k"), entry("v", Duration::from_secs(60)))
            .await
            .is_complete()
    );
    drop(cache);
    drop(redis);
    // The background tasks stop and the journal's file lock is released.
    let mut reopened = None;
    assert!(
        eventually(Duration::from_secs(3), || {
            let attempt = cachette_redis::DiskJournal::open(journal_config(&path));
            let ok = attempt.is_ok();
            if let Ok(journal) = attempt {
                reopened = Some(journal);
            }
            async move { ok }
        })
        .await,
        "the journal can be reopened after every handle is dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_first_sentinel_does_not_hide_the_master() {
    let master = RedisServer::start();
    let replica = RedisServer::replica_of(&master);
    // The first sentinel names a server that is not a master (a sentinel on
    // the minority side of a partition still naming the old master).
    let stale = cachette_testkit::Sentinels::start(1, &replica, "svc");
    let good = cachette_testkit::Sentinels::start(1, &master, "svc");
    let sentinels: Vec<String> = stale.urls().into_iter().chain(good.urls()).collect();
    let redis = connect(config(Topology::sentinel(sentinels, "svc", None), "f4:")).await;
    assert!(
        eventually(Duration::from_secs(3), || async {
            redis.master_addr() == Some(master.addr())
        })
        .await,
        "the master named by the second sentinel is found: {:?}",
        redis.stats().await
    );
    let cache = redis.tiered("f4", None);
    assert!(
        cache
            .set(&key("k"), entry("v", Duration::from_secs(60)))
            .await
            .is_complete()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_tagged_during_a_tag_purge_stay_purgeable() {
    let master = RedisServer::start();
    let redis = connect(config(Topology::single(master.url()), "f5:")).await;
    let tier = redis.master_tier();
    let ttl = Duration::from_secs(60);
    // Writers keep storing tagged entries while purges run.
    let writer = {
        let tier = tier.clone();
        tokio::spawn(async move {
            for i in 0..1500 {
                let e = entry_at("v", std::time::SystemTime::now(), ttl, &["users"]);
                // A write issued before a purge that overtook it is refused.
                match tier.set(&key(&format!("u{i}")), e, ttl).await {
                    Ok(()) | Err(cachette_core::CacheError::Superseded { .. }) => {}
                    Err(error) => panic!("{error}"),
                }
            }
        })
    };
    while !writer.is_finished() {
        tier.invalidate_tag("users").await.unwrap();
    }
    writer.await.unwrap();
    // Every entry still alive is reachable through its tag.
    let mut conn = raw(&master.url()).await;
    let live: Vec<String> = redis::cmd("KEYS")
        .arg("f5:k:u*")
        .query_async(&mut conn)
        .await
        .unwrap();
    for k in &live {
        let member: bool = redis::cmd("SISMEMBER")
            .arg("f5:t:users")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(member, "{k} is alive but not indexed under its tag");
    }
    tier.invalidate_tag("users").await.unwrap();
    let left: Vec<String> = redis::cmd("KEYS")
        .arg("f5:k:u*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        left.is_empty(),
        "{} tagged entries escaped the purge",
        left.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_op_the_master_always_rejects_does_not_block_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = RedisServer::start();
    let redis = with_journal(&master, "f6:", &dir).await;
    let cache = redis.tiered("f6", None);
    master.kill();
    let ttl = Duration::from_secs(60);
    // A TTL far beyond what SET PX takes (an origin's max-age=1e15): capped.
    let forever = entry("kept for ages", Duration::from_secs(1_000_000_000_000_000));
    assert_eq!(cache.set(&key("ages"), forever).await.journaled.len(), 1);
    assert_eq!(
        cache
            .set(&key("poison"), entry("p", ttl))
            .await
            .journaled
            .len(),
        1
    );
    assert_eq!(
        cache
            .set(&key("after"), entry("a", ttl))
            .await
            .journaled
            .len(),
        1
    );
    assert_eq!(cache.delete(&key("gone")).await.journaled.len(), 1);
    master.restart();
    let mut conn = raw(&master.url()).await;
    // The poison op: the key now holds a list, so the set script gets
    // WRONGTYPE on every attempt.
    let _: i64 = redis::cmd("RPUSH")
        .arg("f6:k:poison")
        .arg("x")
        .query_async(&mut conn)
        .await
        .unwrap();
    // What the master held from before the outage.
    let before = SystemTime::now() - Duration::from_secs(30);
    let _: () = redis::cmd("SET")
        .arg("f6:k:gone")
        .arg(entry_at("old", before, ttl, &[]).encode().as_ref())
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("f6:k:gone:tag")
        .arg("unrelated")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        redis.replay_journal().await.unwrap(),
        0,
        "the journal drained"
    );
    let stats = redis.journal().unwrap().stats().await;
    assert_eq!((stats.replayed, stats.rejected), (3, 1), "{stats:?}");
    assert_eq!(master_body(&redis, "after").await.as_deref(), Some("a"));
    assert_eq!(
        master_body(&redis, "ages").await.as_deref(),
        Some("kept for ages")
    );
    assert!(
        !exists(&master.url(), "f6:k:gone").await,
        "the delete after it ran"
    );
    // Later ops are not queued behind anything.
    let report = cache.set(&key("later"), entry("l", ttl)).await;
    assert_eq!(report.succeeded.len(), 1, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_waiting_in_the_journal_hides_the_key_on_this_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = RedisServer::start();
    let redis = with_journal(&master, "f7:", &dir).await;
    let memory = MemoryTier::default();
    let cache = redis.tiered("f7", Some(Arc::new(memory.clone())));
    let ttl = Duration::from_secs(60);
    // An outage leaves a backlog the replayer has not drained yet.
    master.kill();
    let _ = cache.set(&key("other"), entry("o", ttl)).await;
    master.restart();
    assert!(
        eventually(Duration::from_secs(2), || async {
            redis
                .master_tier()
                .set(&key("profile"), entry("old profile", ttl), ttl)
                .await
                .is_ok()
        })
        .await
    );
    let report = cache.delete(&key("profile")).await;
    assert_eq!(
        report.journaled.len(),
        1,
        "queued behind the backlog: {report:?}"
    );
    assert!(
        cache.get(&key("profile")).await.is_none(),
        "the deleted profile is not read back from the master"
    );
    assert_eq!(redis.replay_journal().await.unwrap(), 0);
    assert!(!exists(&master.url(), "f7:k:profile").await);
    assert!(cache.get(&key("profile")).await.is_none());
    assert!(
        memory.get(&key("profile")).await.unwrap().is_none(),
        "and memory holds no copy after the replay"
    );
}

/// A master tier whose sets take 400 ms: a write that times out while a
/// later delete completes.
#[derive(Debug)]
struct SlowSets(RedisTier);

#[async_trait]
impl Backend for SlowSets {
    fn kind(&self) -> &'static str {
        "redis"
    }
    async fn get(&self, k: &CacheKey) -> Result<Option<Arc<Entry>>, CacheError> {
        self.0.get(k).await
    }
    async fn set(&self, k: &CacheKey, e: Arc<Entry>, ttl: Duration) -> Result<(), CacheError> {
        tokio::time::sleep(Duration::from_millis(400)).await;
        self.0.set(k, e, ttl).await
    }
    async fn delete(&self, k: &CacheKey) -> Result<bool, CacheError> {
        self.0.delete(k).await
    }
    async fn invalidate_prefix(&self, p: &str) -> Result<(), CacheError> {
        self.0.invalidate_prefix(p).await
    }
    async fn invalidate_tag(&self, t: &str) -> Result<(), CacheError> {
        self.0.invalidate_tag(t).await
    }
    async fn clear(&self) -> Result<(), CacheError> {
        self.0.clear().await
    }
    async fn health(&self) -> Result<(), CacheError> {
        self.0.health().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_set_replayed_after_a_later_delete_does_not_resurrect() {
    let dir = tempfile::tempdir().unwrap();
    let master = RedisServer::start();
    let redis = with_journal(&master, "f8:", &dir).await;
    let cache = Tiered::builder("f8")
        .tier_arc(
            "master",
            Arc::new(SlowSets(redis.master_tier())),
            redis.master_options(),
        )
        .build();
    let ttl = Duration::from_secs(60);
    let set = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.set(&key("page"), entry("stale page", ttl)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let deleted = cache.delete(&key("page")).await;
    assert_eq!(
        deleted.succeeded.len(),
        1,
        "the delete went straight to the master: {deleted:?}"
    );
    let set = set.await.unwrap();
    assert_eq!(
        set.journaled.len(),
        1,
        "the set timed out and was journaled: {set:?}"
    );
    assert_eq!(redis.replay_journal().await.unwrap(), 0);
    assert!(
        !exists(&master.url(), "f8:k:page").await,
        "the replay did not bring back the deleted page"
    );
    assert_eq!(redis.journal().unwrap().stats().await.obsolete, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_set_wins_in_a_full_journal() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = RedisServer::start();
    let mut journal = journal_config(&dir.path().join("journal"));
    journal.max_entries = 2;
    journal.max_bytes = 4096;
    let redis = connect(config(Topology::single(master.url()), "f9:").journal(journal)).await;
    let cache = redis.tiered("f9", None);
    let ttl = Duration::from_secs(60);
    master.kill();
    assert_eq!(
        cache
            .set(&key("k"), entry("v1 (old)", ttl))
            .await
            .journaled
            .len(),
        1
    );
    assert_eq!(
        cache
            .set(&key("other"), entry("o", ttl))
            .await
            .journaled
            .len(),
        1
    );
    // Full by entries: the newer set of `k` replaces the older one.
    let newest = cache.set(&key("k"), entry("v2 (newest)", ttl)).await;
    assert_eq!(newest.journaled.len(), 1, "{newest:?}");
    // Full by bytes: a newer set too big to fit becomes a delete of its key.
    let big = "x".repeat(8192);
    let too_big = cache.set(&key("other"), entry(&big, ttl)).await;
    assert_eq!(too_big.failed.len(), 1, "{too_big:?}");
    master.restart();
    let mut conn = raw(&master.url()).await;
    let before = SystemTime::now() - Duration::from_secs(30);
    let _: () = redis::cmd("SET")
        .arg("f9:k:other")
        .arg(
            entry_at("on the master before the outage", before, ttl, &[])
                .encode()
                .as_ref(),
        )
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(redis.replay_journal().await.unwrap(), 0);
    assert_eq!(
        master_body(&redis, "k").await.as_deref(),
        Some("v2 (newest)")
    );
    assert_eq!(
        master_body(&redis, "other").await,
        None,
        "the older value of a key whose newest set did not fit is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_clock_does_not_make_a_value_sticky() {
    let master = RedisServer::start();
    let redis = connect(config(Topology::single(master.url()), "fa:")).await;
    let cache = redis.tiered("fa", None);
    let ttl = Duration::from_secs(600);
    // Written by a node whose clock is 5 minutes fast.
    let fast = entry_at(
        "in stock (old)",
        SystemTime::now() + Duration::from_secs(300),
        ttl,
        &[],
    );
    assert_eq!(cache.set(&key("stock"), fast).await.succeeded.len(), 1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let now = cache.set(&key("stock"), entry("sold out", ttl)).await;
    assert_eq!(now.succeeded.len(), 1, "a later write wins: {now:?}");
    assert_eq!(
        master_body(&redis, "stock").await.as_deref(),
        Some("sold out")
    );
    // A write that really is older than what the master holds is refused,
    // and reported so.
    let older = entry_at(
        "restocked (older)",
        SystemTime::now() - Duration::from_secs(10),
        ttl,
        &[],
    );
    let refused = cache.set(&key("stock"), older).await;
    assert_eq!(refused.superseded.len(), 1, "{refused:?}");
    assert!(refused.succeeded.is_empty() && refused.is_complete());
    assert_eq!(
        master_body(&redis, "stock").await.as_deref(),
        Some("sold out")
    );
    let value = raw_get(&master.url(), "fa:k:stock").await.unwrap();
    assert!(value.starts_with(b"CHTV"), "stored with its version");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_does_not_break_the_journal_for_good() {
    let Some(disk) = Tmpfs::mount(4 * 1024 * 1024) else {
        eprintln!("skipped: mounting a tmpfs needs root (the README's test command runs as root)");
        return;
    };
    let mut master = RedisServer::start();
    let mut journal = journal_config(&disk.path().join("journal"));
    journal.max_bytes = 64 * 1024 * 1024;
    let redis = connect(config(Topology::single(master.url()), "fb:").journal(journal)).await;
    let cache = redis.tiered("fb", None);
    let ttl = Duration::from_secs(60);
    master.kill();
    assert_eq!(
        cache
            .set(&key("victim"), entry("victim v1", ttl))
            .await
            .journaled
            .len(),
        1
    );

    let filler = disk.fill();
    let big = "b".repeat(512 * 1024);
    let full = cache.set(&key("big"), entry(&big, ttl)).await;
    assert!(
        full.journaled.is_empty(),
        "not journaled on a full disk: {full:?}"
    );
    assert_eq!(full.failed.len(), 1);
    let stats = redis.journal().unwrap().stats().await;
    assert!(stats.io_errors >= 1, "{stats:?} {full:?}");

    // The master is back; the backlog cannot be replayed (the disk is full),
    // and a delete goes to the master directly.
    master.restart();
    // Once the tier has reconnected (its first calls after a restart may
    // still meet the dead connection).
    let master_tier = redis.master_tier();
    assert!(
        eventually(Duration::from_secs(5), || async {
            master_tier.health().await.is_ok()
        })
        .await,
        "the master answers again"
    );
    let deleted = cache.delete(&key("victim")).await;
    assert!(deleted.is_complete(), "{deleted:?}");

    // Space again: the journal recovers without a restart.
    std::fs::remove_file(filler).unwrap();
    assert!(
        eventually(Duration::from_secs(3), || async {
            cache
                .set(&key("after"), entry("after", ttl))
                .await
                .journaled
                .len()
                == 1
        })
        .await,
        "the journal records again once the disk has space"
    );
    assert_eq!(redis.replay_journal().await.unwrap(), 0, "and drains");
    assert_eq!(master_body(&redis, "after").await.as_deref(), Some("after"));
    assert_eq!(
        master_body(&redis, "victim").await,
        None,
        "the journaled set did not undo the later delete"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_network_drop_clears_memory_instead_of_serving_stale_forever() {
    let master = RedisServer::start();
    let link = cachette_testkit::BlackholeProxy::start(master.port());
    let mut cfg = config(Topology::single(link.url()), "fc:");
    cfg.heartbeat = Duration::from_millis(200);
    let node_a = connect(cfg).await;
    let memory = MemoryTier::default();
    let cache_a = node_a.tiered("fc", Some(Arc::new(memory.clone())));
    wait_bus(&node_a, 1).await;
    let node_b = connect(config(Topology::single(master.url()), "fc:")).await;
    let cache_b = node_b.tiered("fc", None);
    let ttl = Duration::from_secs(600);
    assert!(cache_a.set(&key("k"), entry("v1", ttl)).await.is_complete());

    // The network between node A and Redis drops packets: no FIN, no RST.
    link.blackhole();
    assert!(cache_b.delete(&key("k")).await.is_complete());
    assert!(
        eventually(Duration::from_secs(3), || async {
            memory.get(&key("k")).await.unwrap().is_none()
        })
        .await,
        "the lost subscription is noticed and memory cleared"
    );
}

/// Writes `body` under the raw key as an entry stored `age` ago (what the
/// master held before an outage, or another node wrote).
async fn raw_entry(url: &str, raw_key: &str, body: &str, age: Duration) {
    let mut conn = raw(url).await;
    let e = entry_at(body, SystemTime::now() - age, Duration::from_secs(600), &[]);
    let _: () = redis::cmd("SET")
        .arg(raw_key)
        .arg(e.encode().as_ref())
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_purge_does_not_refuse_the_writes_journaled_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = RedisServer::start();
    let redis = with_journal(&master, "fd:", &dir).await;
    let cache = redis.tiered("fd", None);
    master.kill();
    assert_eq!(cache.invalidate_prefix("/a/").await.journaled.len(), 1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let ttl = Duration::from_secs(600);
    assert_eq!(
        cache
            .set(&key("/b/x"), entry("v2", ttl))
            .await
            .journaled
            .len(),
        1
    );
    master.restart();
    raw_entry(
        &master.url(),
        "fd:k:/b/x",
        "v1 (before the outage)",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(redis.replay_journal().await.unwrap(), 0);
    assert_eq!(master_body(&redis, "/b/x").await.as_deref(), Some("v2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_as_too_old_still_removes_the_older_value() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = RedisServer::start();
    let mut cfg = config(Topology::single(master.url()), "fe:")
        .journal(journal_config(&dir.path().join("journal")));
    cfg.tombstone_ttl = Duration::from_millis(300);
    let redis = connect(cfg).await;
    let cache = redis.tiered("fe", None);
    master.kill();
    let ttl = Duration::from_secs(600);
    assert_eq!(
        cache.set(&key("k"), entry("v2", ttl)).await.journaled.len(),
        1
    );
    // The outage outlasts the tombstone window: the journaled write can no
    // longer be ordered against deletes, so it is not stored...
    tokio::time::sleep(Duration::from_millis(500)).await;
    master.restart();
    raw_entry(
        &master.url(),
        "fe:k:k",
        "v1 (before the outage)",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(redis.replay_journal().await.unwrap(), 0);
    // ...but the value it replaced is stale: it is removed, not kept.
    assert_eq!(master_body(&redis, "k").await, None);
    assert_eq!(redis.journal().unwrap().stats().await.obsolete, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_master_refuses_leaves_no_copy_above_it() {
    let master = RedisServer::start();
    let redis = connect(config(Topology::single(master.url()), "ff:")).await;
    let memory = MemoryTier::default();
    let cache = redis.tiered("ff", Some(Arc::new(memory.clone())));
    wait_bus(&redis, 1).await;
    let ttl = Duration::from_secs(600);
    // Another node stored a newer value; this node's write is older (a slow
    // fill that started before it).
    raw_entry(&master.url(), "ff:k:k", "newer", Duration::ZERO).await;
    let older = entry_at(
        "older",
        SystemTime::now() - Duration::from_secs(5),
        ttl,
        &[],
    );
    let report = cache.set(&key("k"), older).await;
    assert_eq!(report.superseded.len(), 1, "{report:?}");
    assert!(
        memory.get(&key("k")).await.unwrap().is_none(),
        "no refused copy in memory"
    );
    assert_eq!(body(&cache.get(&key("k")).await.unwrap().entry), "newer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_waiting_in_the_journal_is_not_undone_by_a_read_of_the_master() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = RedisServer::start();
    let redis = with_journal(&master, "fg:", &dir).await;
    let memory = MemoryTier::default();
    let cache = redis.tiered("fg", Some(Arc::new(memory.clone())));
    let ttl = Duration::from_secs(600);
    master.kill();
    let _ = cache.set(&key("other"), entry("o", ttl)).await;
    master.restart();
    raw_entry(
        &master.url(),
        "fg:k:profile",
        "old profile",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        cache
            .set(&key("profile"), entry("new profile", ttl))
            .await
            .journaled
            .len(),
        1
    );
    // Memory loses its copy (eviction, a restart): the master's is older
    // than what this node wrote.
    memory.delete(&key("profile")).await.unwrap();
    assert!(
        cache.get(&key("profile")).await.is_none(),
        "the master's older copy is not served while this node's write waits"
    );
    assert_eq!(redis.replay_journal().await.unwrap(), 0);
    assert_eq!(
        body(&cache.get(&key("profile")).await.unwrap().entry),
        "new profile"
    );
}
