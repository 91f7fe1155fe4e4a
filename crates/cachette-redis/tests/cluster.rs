//! The Redis tiers on a real Redis Cluster (3 primaries + 3 replicas on
//! loopback, made with `redis-cli --cluster create`): keys spread over every
//! primary, reads from this node's replicas, versions, tombstones and purge
//! marks in each key's slot, purges across slots and nodes, corrupt bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use cachette_core::{Backend, CacheError, CacheKey, Tiered};
use cachette_moka::MemoryTier;
use cachette_redis::{RedisConfig, RedisTiers, Topology};
use cachette_testkit::RedisCluster;
use common::*;

const TTL: Duration = Duration::from_secs(300);

fn cluster_config(cluster: &RedisCluster, local: Vec<String>, namespace: &str) -> RedisConfig {
    let mut config = config(Topology::cluster(cluster.urls(), local), namespace);
    config.master_timeout = Duration::from_millis(1000);
    config.local_timeout = Duration::from_millis(500);
    config.connect_timeout = Duration::from_millis(500);
    config
}

/// A raw connection to the node on `port`.
async fn node(port: u16) -> redis::aio::MultiplexedConnection {
    raw(&format!("redis://127.0.0.1:{port}")).await
}

/// Whether the node on `port` holds the raw key `k`.
async fn holds(port: u16, k: &str) -> bool {
    let mut conn = node(port).await;
    // A replica answers reads of its slots once told the client knows.
    let _: () = redis::cmd("READONLY").query_async(&mut conn).await.unwrap();
    let n: i64 = redis::cmd("EXISTS")
        .arg(k)
        .query_async(&mut conn)
        .await
        .unwrap();
    n == 1
}

/// Calls of `command` the node on `port` has served.
async fn calls(port: u16, command: &str) -> u64 {
    let mut conn = node(port).await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// `n` keys whose entries, between them, fall on every primary.
fn spread_keys(cluster: &RedisCluster, namespace: &str, prefix: &str, n: usize) -> Vec<String> {
    let keys: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let primaries: std::collections::BTreeSet<u16> = keys
        .iter()
        .map(|k| {
            let slot = cluster.slot_of(&format!("{namespace}k:{k}")).unwrap();
            cluster.primary_of_slot(slot).unwrap()
        })
        .collect();
    assert_eq!(primaries.len(), 3, "the keys should cover the 3 primaries");
    keys
}

async fn tiered(redis: &RedisTiers, memory: Option<Arc<MemoryTier>>) -> Tiered {
    redis.tiered("c", memory.map(|m| m as Arc<dyn Backend>))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_spread_over_every_primary_and_reads_come_from_this_nodes_replica() {
    let cluster = RedisCluster::start(3, 1);
    // This node's replica: the replica of the primary holding `k0`.
    let ns = "cl1:";
    let slot = cluster.slot_of(&format!("{ns}k:k0")).unwrap();
    let primary = cluster.primary_of_slot(slot).unwrap();
    let replica = cluster.replicas_of(primary)[0];
    let redis = connect(cluster_config(
        &cluster,
        vec![format!("127.0.0.1:{replica}")],
        ns,
    ))
    .await;
    assert_eq!(
        redis.tiered("probe", None).tier_names().collect::<Vec<_>>(),
        ["local", "master"]
    );
    let cache = tiered(&redis, None).await;
    let keys = spread_keys(&cluster, ns, "k", 30);
    for k in &keys {
        let report = cache.set(&key(k), entry(&format!("v-{k}"), TTL)).await;
        assert!(report.is_complete(), "{k}: {report:?}");
    }
    // Each entry is on the primary of its slot, with its tombstone-free
    // companions nowhere else.
    for k in &keys {
        let raw = format!("{ns}k:{k}");
        let slot = cluster.slot_of(&raw).unwrap();
        let owner = cluster.primary_of_slot(slot).unwrap();
        assert!(holds(owner, &raw).await, "{raw} on its primary {owner}");
    }
    // Reads of `k0`'s shard go to the local replica once it has the
    // entry; the other shards' reads go to their primaries.
    assert!(
        eventually(Duration::from_secs(3), || async {
            holds(replica, &format!("{ns}k:k0")).await
        })
        .await
    );
    let before = calls(replica, "get").await;
    let got = cache.get(&key("k0")).await.unwrap();
    assert_eq!(body(&got.entry), "v-k0");
    assert_eq!(got.tier_name(), "local", "read from this node's replica");
    assert!(calls(replica, "get").await > before);
    for k in &keys {
        let got = cache.get(&key(k)).await.expect(k);
        assert_eq!(body(&got.entry), format!("v-{k}"));
    }
    // A write to the local tier of a cluster is not sent (its replicas take
    // no writes): the master tier's write is the one that counts.
    let before = calls(replica, "evalsha").await + calls(replica, "eval").await;
    let local = redis.local_tier().unwrap();
    local
        .set(&key("k0"), entry("local", TTL), TTL)
        .await
        .unwrap();
    assert_eq!(
        calls(replica, "evalsha").await + calls(replica, "eval").await,
        before
    );
    assert_eq!(
        body(&redis.master_tier().get(&key("k0")).await.unwrap().unwrap()),
        "v-k0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_are_promoted_and_a_delete_or_purge_refuses_older_writes_in_every_slot() {
    let cluster = RedisCluster::start(3, 1);
    let ns = "cl2:";
    let redis = connect(cluster_config(&cluster, Vec::new(), ns)).await;
    let memory = Arc::new(MemoryTier::default());
    let cache = tiered(&redis, Some(memory.clone())).await;
    let keys = spread_keys(&cluster, ns, "p", 30);
    let master = redis.master_tier();
    for k in &keys {
        master.set(&key(k), entry(k, TTL), TTL).await.unwrap();
    }
    // Read-through from the primaries, promoted to memory.
    for k in &keys {
        let got = cache.get(&key(k)).await.unwrap();
        assert_eq!(got.tier_name(), "master");
        assert!(memory.get(&key(k)).await.unwrap().is_some());
    }
    // A delete leaves a tombstone in the key's slot: a write issued before
    // it (a late or replayed write) is refused, in every slot.
    let before = SystemTime::now() - Duration::from_secs(1);
    for k in &keys {
        assert!(master.delete(&key(k)).await.unwrap());
        let late = master
            .set(&key(k), entry_at("late", before, TTL, &[]), TTL)
            .await;
        assert!(
            matches!(late, Err(CacheError::Superseded { .. })),
            "{k}: {late:?}"
        );
        assert!(master.get(&key(k)).await.unwrap().is_none());
    }
    // A prefix purge raises the mark of every slot: an older write of any
    // key is refused afterwards, a newer one stored.
    master.invalidate_prefix("q").await.unwrap();
    for k in spread_keys(&cluster, ns, "q", 30) {
        let late = master
            .set(&key(&k), entry_at("late", before, TTL, &[]), TTL)
            .await;
        assert!(matches!(late, Err(CacheError::Superseded { .. })), "{k}");
        master.set(&key(&k), entry("new", TTL), TTL).await.unwrap();
        assert_eq!(body(&master.get(&key(&k)).await.unwrap().unwrap()), "new");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_by_prefix_pattern_tag_and_variants_reach_every_slot_and_every_node() {
    let cluster = RedisCluster::start(3, 1);
    let ns = "cl3:";
    let node_a = connect(cluster_config(&cluster, Vec::new(), ns)).await;
    let node_b = connect(cluster_config(&cluster, Vec::new(), ns)).await;
    let memory_a = Arc::new(MemoryTier::default());
    let memory_b = Arc::new(MemoryTier::default());
    let cache_a = tiered(&node_a, Some(memory_a.clone())).await;
    let cache_b = tiered(&node_b, Some(memory_b.clone())).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            node_a.stats().await.bus_subscriptions > 0 && node_b.stats().await.bus_subscriptions > 0
        })
        .await
    );
    let store = |k: String, tags: &'static [&'static str]| {
        let cache_a = &cache_a;
        async move {
            let report = cache_a
                .set(&key(&k), entry_at(&k, SystemTime::now(), TTL, tags))
                .await;
            assert!(report.is_complete(), "{k}: {report:?}");
        }
    };
    let prefixed = spread_keys(&cluster, ns, "shop/", 30);
    let globbed = spread_keys(&cluster, ns, "img-", 30);
    let tagged = spread_keys(&cluster, ns, "t", 30);
    let variants = spread_keys(&cluster, ns, "GET:h/page#vary:accept=", 30);
    let kept = spread_keys(&cluster, ns, "keep", 30);
    let variants_tag = cachette_core::variants_tag(&key("GET:h/page"));
    for k in &prefixed {
        store(k.clone(), &[]).await;
    }
    for k in &globbed {
        store(k.clone(), &[]).await;
    }
    for k in &tagged {
        store(k.clone(), &["shoes"]).await;
    }
    for k in &variants {
        let report = cache_a
            .set(
                &key(k),
                entry_at(k, SystemTime::now(), TTL, &[variants_tag.as_str()]),
            )
            .await;
        assert!(report.is_complete());
    }
    for k in &kept {
        store(k.clone(), &["boots"]).await;
    }
    // Node B reads everything (its memory now holds copies).
    let all: Vec<&String> = prefixed
        .iter()
        .chain(&globbed)
        .chain(&tagged)
        .chain(&variants)
        .chain(&kept)
        .collect();
    for k in &all {
        assert!(cache_b.get(&key(k)).await.is_some(), "{k}");
        assert!(memory_b.get(&key(k)).await.unwrap().is_some());
    }

    assert!(cache_a.invalidate_prefix("shop/").await.is_complete());
    assert!(cache_a.invalidate_pattern("img-*").await.is_complete());
    assert!(cache_a.invalidate_tag("shoes").await.is_complete());
    assert!(cache_a.invalidate_tag(&variants_tag).await.is_complete());

    let gone: Vec<&String> = prefixed
        .iter()
        .chain(&globbed)
        .chain(&tagged)
        .chain(&variants)
        .collect();
    let master_b = node_b.master_tier();
    for k in &gone {
        assert!(
            master_b.get(&key(k)).await.unwrap().is_none(),
            "{k} on the cluster"
        );
    }
    assert!(
        eventually(Duration::from_secs(3), || async {
            let mut all_gone = true;
            for k in &gone {
                all_gone &= memory_b.get(&key(k)).await.unwrap().is_none();
            }
            all_gone
        })
        .await,
        "node B's memory tier got every purge through the bus"
    );
    for k in &kept {
        assert!(cache_b.get(&key(k)).await.is_some(), "{k} kept");
    }
    // No per-slot tag index of a purged tag is left holding members.
    let mut tags_left = 0;
    for n in cluster.nodes() {
        let mut conn = node(n.port()).await;
        let found: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{ns}t:*shoes"))
            .query_async(&mut conn)
            .await
            .unwrap();
        tags_left += found.len();
    }
    assert_eq!(tags_left, 0);

    // Clear empties every primary of the namespace.
    assert!(cache_a.clear().await.is_complete());
    for k in &kept {
        assert!(master_b.get(&key(k)).await.unwrap().is_none());
    }
    for n in cluster.nodes() {
        let mut conn = node(n.port()).await;
        let found: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{ns}k:*"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(found.is_empty(), "{found:?} on {}", n.port());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_bytes_in_any_slot_are_a_miss_and_are_removed() {
    let cluster = RedisCluster::start(3, 1);
    let ns = "cl4:";
    let redis = connect(cluster_config(&cluster, Vec::new(), ns)).await;
    let cache = tiered(&redis, None).await;
    for k in spread_keys(&cluster, ns, "bad", 20) {
        let raw = format!("{ns}k:{k}");
        let slot = cluster.slot_of(&raw).unwrap();
        let owner = cluster.primary_of_slot(slot).unwrap();
        let mut conn = node(owner).await;
        let _: () = redis::cmd("SET")
            .arg(&raw)
            .arg(b"CHTV\x00\x00\x00\x00\x00\x00\x00\x01CHTE\xff garbage".as_slice())
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(cache.get(&key(&k)).await.is_none(), "{k}");
        assert!(
            eventually(Duration::from_secs(2), || async {
                !holds(owner, &raw).await
            })
            .await,
            "{raw} removed"
        );
    }
}

#[tokio::test]
async fn a_cluster_namespace_with_braces_is_refused_at_startup() {
    let config = RedisConfig::new(
        Topology::cluster(["redis://127.0.0.1:1"], Vec::new()),
        "app{1}:",
    );
    let error = RedisTiers::connect(config).await.unwrap_err().to_string();
    assert!(error.contains("may not contain"), "{error}");
    let _ = CacheKey::new("x").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_variant_is_indexed_and_a_stalled_replica_stops_no_replay_or_purge() {
    let mut cluster = RedisCluster::start(3, 1);
    let ns = "cl5:";
    let dir = tempfile::tempdir().unwrap();
    let mut journal = cachette_redis::JournalConfig::new(dir.path().join("journal"));
    journal.probe_interval = Duration::from_secs(3600);
    let redis = connect(cluster_config(&cluster, Vec::new(), ns).journal(journal)).await;
    let master = redis.master_tier();
    // A variant write and a plain write that waited in the journal.
    let variants_tag = cachette_core::variants_tag(&key("GET:h/doc"));
    let variant = "GET:h/doc#vary:accept=text";
    let journal = redis.journal().unwrap();
    for (k, tags) in [(variant, vec![variants_tag.as_str()]), ("plain", vec![])] {
        cachette_core::Journal::record(
            journal,
            cachette_core::JournalOp::Set {
                key: key(k),
                entry: entry_at(k, SystemTime::now(), TTL, &tags),
            },
        )
        .await
        .unwrap();
    }
    // A replica stalls (its connections open, unanswered): the replay and
    // purges need the primaries only.
    let replica = cluster
        .cluster_nodes()
        .into_iter()
        .find(|n| !n.primary)
        .unwrap()
        .port;
    cluster.node_on(replica).unwrap().pause();
    assert_eq!(redis.replay_journal().await.unwrap(), 0);
    assert_eq!(
        body(&master.get(&key(variant)).await.unwrap().unwrap()),
        variant
    );
    assert_eq!(
        body(&master.get(&key("plain")).await.unwrap().unwrap()),
        "plain"
    );
    // The replayed variant is found by its URL's invalidation.
    master.invalidate_tag(&variants_tag).await.unwrap();
    assert!(master.get(&key(variant)).await.unwrap().is_none());
    // A purge across every slot runs with the replica down.
    master.invalidate_prefix("pl").await.unwrap();
    assert!(master.get(&key("plain")).await.unwrap().is_none());
    cluster.node_on(replica).unwrap().resume();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fill_leases_work_across_slots_and_nodes() {
    use cachette_core::{FleetFill, LeaseEnd, LeaseOptions};
    let cluster = RedisCluster::start(3, 1);
    let ns = "cl6:";
    let a = connect(cluster_config(&cluster, Vec::new(), ns)).await;
    let b = connect(cluster_config(&cluster, Vec::new(), ns)).await;
    let (a, b) = (tiered(&a, None).await, tiered(&b, None).await);
    let options = LeaseOptions::new(Duration::from_millis(400), Duration::from_secs(3));
    // Keys on every primary: each lease is one key, any slot.
    for k in spread_keys(&cluster, ns, "fill", 12) {
        let FleetFill::Lead(lease) = a.fleet_fill(&key(&k), options).await else {
            panic!("{k}: the first node leads");
        };
        let waiter = {
            let (b, k) = (b.clone(), k.clone());
            tokio::spawn(async move { b.fleet_fill(&key(&k), options).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "{k}: the second node waits");
        let report = a.set(&key(&k), entry(&format!("v-{k}"), TTL)).await;
        assert!(report.is_complete());
        lease.end(LeaseEnd::Filled).await;
        assert!(matches!(waiter.await.unwrap(), FleetFill::Filled), "{k}");
        assert_eq!(
            body(&b.get_shared(&key(&k)).await.unwrap()),
            format!("v-{k}")
        );
    }
    // A lease left to run out is taken over.
    let FleetFill::Lead(lease) = a.fleet_fill(&key("dead"), options).await else {
        panic!("leads");
    };
    std::mem::forget(lease);
    assert!(matches!(
        b.fleet_fill(&key("dead"), options).await,
        FleetFill::Lead(_)
    ));
    assert_eq!(b.snapshot().cache.leases_expired, 1);
}
