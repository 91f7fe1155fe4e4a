//! A fleet without a master: three nodes, each with its own real
//! `redis-server`, copying each other's stores and delivering every
//! invalidation to every node, through a peer's outage and restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use cachette_core::{Backend, Tiered};
use cachette_moka::MemoryTier;
use cachette_redis::{JournalConfig, RedisConfig, RedisTiers, Topology};
use cachette_testkit::RedisServer;
use common::*;

const NS: &str = "fleet:";

struct Node {
    redis: RedisTiers,
    memory: MemoryTier,
    cache: Tiered,
    url: String,
    _dir: tempfile::TempDir,
}

fn node_config(urls: &[String], this: &str, dir: &std::path::Path) -> RedisConfig {
    let mut config = config(Topology::peers(urls.to_vec(), this), NS);
    config.heartbeat = Duration::from_millis(200);
    let mut journal = JournalConfig::new(dir.join("journal"));
    journal.probe_interval = Duration::from_millis(100);
    config.journal = Some(journal);
    config
}

async fn start_node(urls: &[String], this: &str, tune: impl FnOnce(&mut RedisConfig)) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let mut config = node_config(urls, this, dir.path());
    tune(&mut config);
    let redis = connect(config).await;
    let memory = MemoryTier::default();
    let cache = redis.tiered("fleet", Some(Arc::new(memory.clone())));
    Node {
        redis,
        memory,
        cache,
        url: this.to_owned(),
        _dir: dir,
    }
}

/// Waits until the node hears every peer and reads its own Redis.
async fn ready(node: &Node) {
    assert!(
        eventually(Duration::from_secs(5), || async {
            let stats = node.redis.stats().await;
            stats.own_current == Some(true) && stats.peers.iter().all(|p| p.connected)
        })
        .await,
        "node not ready: {:?}",
        node.redis.stats().await
    );
}

async fn fleet(servers: &[RedisServer]) -> Vec<Node> {
    fleet_with(servers, |_| {}).await
}

/// A fleet whose first node (A) is tuned by `tune_a`.
async fn fleet_with(servers: &[RedisServer], tune_a: impl FnOnce(&mut RedisConfig)) -> Vec<Node> {
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    let mut nodes = vec![start_node(&urls, &urls[0], tune_a).await];
    for url in &urls[1..] {
        nodes.push(start_node(&urls, url, |_| {}).await);
    }
    for node in &nodes {
        ready(node).await;
    }
    nodes
}

fn servers(n: usize) -> Vec<RedisServer> {
    (0..n).map(|_| RedisServer::start()).collect()
}

/// What the node's cache answers for `k`: the body and the tier.
async fn read(node: &Node, k: &str) -> Option<(String, &'static str)> {
    node.cache
        .get(&key(k))
        .await
        .map(|hit| (body(&hit.entry), hit.tier_name()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_on_one_node_is_a_hit_on_the_others_within_200ms_with_its_remaining_ttl() {
    let servers = servers(3);
    let nodes = fleet(&servers).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);

    // A filled it after a miss, 5 s into a 60 s lifetime.
    let stored_at = SystemTime::now() - Duration::from_secs(5);
    let e = entry_at("page", stored_at, Duration::from_secs(60), &["t1"]);
    let report = a.cache.set(&key("GET:h/page"), e).await;
    assert!(report.is_complete(), "{report:?}");
    let stored = Instant::now();

    for other in [b, c] {
        assert!(
            eventually(
                Duration::from_millis(200).saturating_sub(stored.elapsed()),
                || async { read(other, "GET:h/page").await.is_some() }
            )
            .await,
            "not replicated to {} within 200 ms: {:?}",
            other.url,
            other.redis.stats().await.replication
        );
        // Read from its own Redis (no origin, no other node on the read
        // path), then from memory.
        let hit = other.cache.get(&key("GET:h/page")).await.unwrap();
        assert_eq!(body(&hit.entry), "page");
        let left = hit.entry.remaining_ttl(SystemTime::now());
        assert!(
            left <= Duration::from_secs(55) && left > Duration::from_secs(50),
            "remaining TTL kept: {left:?}"
        );
        let ttl = pttl(&other.url, &format!("{NS}k:GET:h/page")).await;
        assert!((50_000..=55_000).contains(&ttl), "Redis TTL {ttl}");
        // The tags came with it: a tag purge here finds it.
        assert_eq!(hit.entry.meta().tags, vec!["t1".to_owned()]);
    }
    assert!(b.redis.stats().await.replication.unwrap().copied >= 1);
    assert!(a.redis.stats().await.replication.unwrap().announced >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newer_of_two_stores_wins_on_every_node() {
    let servers = servers(3);
    let nodes = fleet(&servers).await;
    let now = SystemTime::now();
    let newer = || entry_at("from-b", now, Duration::from_secs(60), &[]);
    let older = || {
        entry_at(
            "from-a",
            now - Duration::from_secs(2),
            Duration::from_secs(60),
            &[],
        )
    };
    // `first`: the older store lands (and is read, into every memory) before
    // the newer one. `second`: the older store happens after the newer one.
    assert!(
        nodes[0]
            .cache
            .set(&key("first"), older())
            .await
            .is_complete()
    );
    for node in &nodes {
        assert!(
            eventually(Duration::from_millis(400), || async {
                read(node, "first").await.is_some()
            })
            .await
        );
    }
    assert!(
        nodes[1]
            .cache
            .set(&key("first"), newer())
            .await
            .is_complete()
    );
    assert!(
        nodes[1]
            .cache
            .set(&key("second"), newer())
            .await
            .is_complete()
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = nodes[0].cache.set(&key("second"), older()).await;

    for k in ["first", "second"] {
        for node in &nodes {
            assert!(
                eventually(Duration::from_millis(400), || async {
                    read(node, k).await.is_some_and(|(b, _)| b == "from-b")
                })
                .await,
                "{} did not converge on the newer value of {k}: {:?}",
                node.url,
                read(node, k).await
            );
        }
    }
    // And stays there: no late copy of the older one lands afterwards.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for k in ["first", "second"] {
        for node in &nodes {
            assert_eq!(
                read(node, k).await.unwrap().0,
                "from-b",
                "{k} on {}",
                node.url
            );
        }
    }
}

/// Stores `k` on `from` and waits until every node has it in its own Redis
/// and in its memory.
async fn everywhere(nodes: &[Node], from: usize, k: &str) {
    let e = entry_at("v", SystemTime::now(), Duration::from_secs(300), &[]);
    assert!(nodes[from].cache.set(&key(k), e).await.is_complete());
    for node in nodes {
        assert!(
            eventually(Duration::from_secs(2), || async {
                exists(&node.url, &format!("{NS}k:{k}")).await
            })
            .await,
            "{k} not copied to {}",
            node.url
        );
        assert!(read(node, k).await.is_some());
        assert!(node.memory.get(&key(k)).await.unwrap().is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_prefix_purge_on_one_node_removes_the_entries_from_every_memory_and_redis() {
    let servers = servers(3);
    let nodes = fleet(&servers).await;
    everywhere(&nodes, 0, "GET:h/api/1").await;
    everywhere(&nodes, 2, "GET:h/api/2").await;
    everywhere(&nodes, 0, "GET:h/home").await;
    let before_purge = raw_value(&nodes[0].url, "GET:h/api/1").await;

    let report = nodes[1].cache.invalidate_prefix("GET:h/api/").await;
    assert!(report.is_complete(), "{report:?}");

    for node in &nodes {
        for k in ["GET:h/api/1", "GET:h/api/2"] {
            assert!(
                !exists(&node.url, &format!("{NS}k:{k}")).await,
                "{k} left in {}",
                node.url
            );
            assert!(
                eventually(Duration::from_millis(200), || async {
                    node.memory.get(&key(k)).await.unwrap().is_none()
                })
                .await,
                "{k} left in the memory of {}",
                node.url
            );
            assert!(read(node, k).await.is_none());
        }
        assert!(
            read(node, "GET:h/home").await.is_some(),
            "outside the prefix"
        );
    }
    // A's Redis holds a pre-purge value again (a late write) and announces
    // it: no other node takes the copy (the purge mark).
    let mut conn = raw(&nodes[0].url).await;
    let () = redis::cmd("SET")
        .arg(format!("{NS}k:GET:h/api/1"))
        .arg(&before_purge)
        .query_async(&mut conn)
        .await
        .unwrap();
    let dealt = dealt_with(&nodes[1..]).await;
    announce(&nodes[0].url, "GET:h/api/1", SystemTime::now()).await;
    settled(&nodes[1..], &dealt).await;
    for node in &nodes[1..] {
        assert!(
            !exists(&node.url, &format!("{NS}k:GET:h/api/1")).await,
            "{}",
            node.url
        );
    }
}

/// How many announcements each node has dealt with (copied or not).
async fn dealt_with(nodes: &[Node]) -> Vec<u64> {
    let mut out = Vec::new();
    for node in nodes {
        let r = node.redis.stats().await.replication.unwrap();
        out.push(r.copied + r.skipped + r.failed + r.dropped);
    }
    out
}

/// Waits until each node has dealt with one more announcement than `before`.
async fn settled(nodes: &[Node], before: &[u64]) {
    assert!(
        eventually(Duration::from_secs(2), || async {
            let now = dealt_with(nodes).await;
            now.iter().zip(before).all(|(n, b)| n > b)
        })
        .await,
        "the announcement was not dealt with"
    );
}

/// Publishes, on the channel of the node at `url`, an announcement of `k`
/// stored at `at` (in that node's clock), as that node would.
async fn announce(url: &str, k: &str, at: SystemTime) {
    let mut conn = raw(url).await;
    let message = format!(
        "forged\na\n{} 60000 100 {k}",
        cachette_core::unix_millis(at)
    );
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("{NS}bus"))
        .arg(message)
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// The raw bytes of `k` in the Redis at `url`.
async fn raw_value(url: &str, k: &str) -> Vec<u8> {
    let mut conn = raw(url).await;
    redis::cmd("GET")
        .arg(format!("{NS}k:{k}"))
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// A's deliveries to a peer that was down wait this long to be replayed:
/// long enough for the peer to be read before them.
fn slow_replay(config: &mut RedisConfig) {
    if let Some(journal) = &mut config.journal {
        journal.probe_interval = Duration::from_secs(3);
    }
}

/// Reads `k` on `node` every few ms for `span`; panics if it is ever served.
async fn never_served(node: &Node, k: &str, span: Duration) {
    let until = Instant::now() + span;
    while Instant::now() < until {
        assert!(
            read(node, k).await.is_none(),
            "{} served the purged {k}",
            node.url
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn undelivered(node: &Node) -> u64 {
    node.redis
        .stats()
        .await
        .peers
        .iter()
        .map(|p| p.undelivered)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_redis_restarted_from_an_old_dump_does_not_serve_what_was_purged_meanwhile() {
    let mut servers = servers(3);
    let nodes = fleet_with(&servers, slow_replay).await;
    everywhere(&nodes, 0, "GET:h/api/1").await;
    everywhere(&nodes, 0, "GET:h/keep").await;
    // C's Redis is dumped (holding the entry), then dies.
    servers[2].command("SAVE").unwrap();
    servers[2].kill();
    let report = nodes[0].cache.invalidate_prefix("GET:h/api/").await;
    assert!(report.is_complete(), "{report:?}");
    assert!(undelivered(&nodes[0]).await >= 1, "journaled for C");
    // C's memory heard the purge on A's channel.
    never_served(&nodes[2], "GET:h/api/1", Duration::from_millis(300)).await;

    // C's Redis comes back from the old dump, with the purged entry.
    servers[2].restart();
    never_served(&nodes[2], "GET:h/api/1", Duration::from_millis(1500)).await;
    ready(&nodes[2]).await;
    never_served(&nodes[2], "GET:h/api/1", Duration::from_millis(200)).await;
    assert!(!exists(&nodes[2].url, &format!("{NS}k:GET:h/api/1")).await);
    // A's journal for C drained, and C takes copies again.
    assert!(
        eventually(Duration::from_secs(6), || async {
            undelivered(&nodes[0]).await == 0
        })
        .await,
        "A's journal for C did not drain"
    );
    everywhere(&nodes, 0, "GET:h/after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_redis_stalled_through_a_purge_gets_it_and_does_not_serve_it() {
    let servers = servers(3);
    let nodes = fleet_with(&servers, slow_replay).await;
    everywhere(&nodes, 1, "GET:h/api/1").await;
    // C's Redis stalls (connections open, nothing answered): A cannot
    // deliver, C cannot read it.
    servers[2].pause();
    let report = nodes[0].cache.invalidate_prefix("GET:h/api/").await;
    assert!(report.is_complete(), "{report:?}");
    assert!(undelivered(&nodes[0]).await >= 1, "journaled for C");
    never_served(&nodes[2], "GET:h/api/1", Duration::from_millis(1500)).await;
    servers[2].resume();
    never_served(&nodes[2], "GET:h/api/1", Duration::from_millis(1500)).await;
    ready(&nodes[2]).await;
    assert!(
        eventually(Duration::from_secs(6), || async {
            undelivered(&nodes[0]).await == 0
        })
        .await,
        "A's journal for C did not drain"
    );
    assert!(!exists(&nodes[2].url, &format!("{NS}k:GET:h/api/1")).await);
    never_served(&nodes[2], "GET:h/api/1", Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_announcements_is_bounded_counted_and_never_delays_a_hit() {
    let servers = servers(3);
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    let a = start_node(&urls, &urls[0], |c| {
        c.replication.queue = 256;
        c.replication.concurrency = 2;
    })
    .await;
    ready(&a).await;
    let e = entry_at("hot", SystemTime::now(), Duration::from_secs(60), &[]);
    assert!(a.cache.set(&key("hot"), e).await.is_complete());

    // 10,000 announcements on B's channel, of entries B does not hold.
    let burst = tokio::spawn({
        let url = urls[1].clone();
        async move {
            let mut conn = raw(&url).await;
            let mut pipe = redis::pipe();
            for n in 0..10_000 {
                let message = format!(
                    "burst\na\n{} 60000 100 GET:h/burst/{n}",
                    cachette_core::unix_millis(SystemTime::now())
                );
                pipe.cmd("PUBLISH")
                    .arg(format!("{NS}bus"))
                    .arg(message)
                    .ignore();
            }
            let () = pipe.query_async(&mut conn).await.unwrap();
        }
    });
    // Hits keep being answered from memory while the burst is processed.
    let mut hits = 0;
    let mut slowest = Duration::ZERO;
    while !burst.is_finished() || hits < 1000 {
        // One hit in ten from this node's Redis, which the replicator uses too.
        let tier = if hits % 10 == 0 {
            a.memory.clear().await.unwrap();
            "local"
        } else {
            "memory"
        };
        let started = Instant::now();
        assert_eq!(read(&a, "hot").await.unwrap(), ("hot".to_owned(), tier));
        slowest = slowest.max(started.elapsed());
        hits += 1;
        tokio::task::yield_now().await;
    }
    burst.await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            // Heard, and each one dropped or dealt with (none in flight).
            let r = a.redis.stats().await.replication.unwrap();
            r.heard == 10_000 && r.heard == r.dropped + r.copied + r.skipped + r.failed
        })
        .await,
        "{:?}",
        a.redis.stats().await.replication
    );
    let r = a.redis.stats().await.replication.unwrap();
    assert!(r.max_queued <= 256, "bounded: {r:?}");
    assert!(
        r.dropped > 0,
        "a burst over the queue drops the oldest: {r:?}"
    );
    assert_eq!(
        r.heard,
        r.dropped + r.copied + r.skipped + r.failed,
        "every one accounted: {r:?}"
    );
    // Generous: a loaded 2-core CI machine; what it guards against is a hit
    // queued behind the burst (seconds).
    assert!(
        slowest < Duration::from_millis(250),
        "a hit waited {slowest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peer_fails_no_request_and_replication_resumes_when_it_returns() {
    let mut servers = servers(3);
    let nodes = fleet(&servers).await;
    servers[2].kill();
    // A and B keep storing, copying and invalidating; nothing fails.
    for n in 0..20 {
        let k = format!("GET:h/down/{n}");
        let e = entry_at("v", SystemTime::now(), Duration::from_secs(60), &[]);
        let report = nodes[0].cache.set(&key(&k), e).await;
        assert!(report.failed.is_empty(), "{report:?}");
        assert!(read(&nodes[0], &k).await.is_some());
        let report = nodes[1]
            .cache
            .delete(&key(&format!("GET:h/other/{n}")))
            .await;
        assert!(report.failed.is_empty(), "{report:?}");
    }
    assert!(
        eventually(Duration::from_secs(2), || async {
            read(&nodes[1], "GET:h/down/19").await.is_some()
        })
        .await
    );
    // C, its Redis gone, still answers (a miss), and fails nothing.
    assert!(read(&nodes[2], "GET:h/down/0").await.is_none());
    let report = nodes[2]
        .cache
        .set(
            &key("GET:h/c"),
            entry_at("c", SystemTime::now(), Duration::from_secs(60), &[]),
        )
        .await;
    assert!(
        report.failed.is_empty(),
        "journaled, not failed: {report:?}"
    );

    servers[2].restart();
    for node in &nodes {
        ready(node).await;
    }
    assert!(
        eventually(Duration::from_secs(3), || async {
            undelivered(&nodes[1]).await == 0
        })
        .await
    );
    // Replication resumes both ways.
    everywhere(&nodes, 0, "GET:h/back/a").await;
    everywhere(&nodes, 2, "GET:h/back/c").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_cannot_be_proven_current_is_never_read() {
    // C's server refuses `INFO`: its run is unknown, so its Redis is never
    // proven current, and it keeps nothing it could serve stale.
    let mut servers = servers(2);
    servers.push(RedisServer::start_with(&["--rename-command", "INFO", ""]));
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    let c = start_node(&urls, &urls[2], |_| {}).await;
    let e = entry_at("v", SystemTime::now(), Duration::from_secs(60), &[]);
    let _ = c.cache.set(&key("k"), e).await;
    assert!(
        exists(&c.url, &format!("{NS}k:k")).await,
        "writes still go to it"
    );
    c.memory.clear().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(c.redis.stats().await.own_current, Some(false));
    assert!(read(&c, "k").await.is_none(), "an unproven Redis was read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_on_a_node_whose_redis_is_down_reaches_every_other_node() {
    let mut servers = servers(3);
    let nodes = fleet(&servers).await;
    everywhere(&nodes, 1, "GET:h/api/1").await;
    servers[0].kill();
    // A's own journal now holds a write (a backlog), and its breaker opens.
    for n in 0..6 {
        let e = entry_at("v", SystemTime::now(), Duration::from_secs(60), &[]);
        let _ = nodes[0]
            .cache
            .set(&key(&format!("GET:h/while-down/{n}")), e)
            .await;
    }
    let report = nodes[0].cache.invalidate_prefix("GET:h/api/").await;
    assert!(report.failed.is_empty(), "{report:?}");
    for node in &nodes[1..] {
        // Delivered to its Redis, and heard by its memory on its own
        // channel (A's is down).
        assert!(
            !exists(&node.url, &format!("{NS}k:GET:h/api/1")).await,
            "{}",
            node.url
        );
        assert!(
            eventually(Duration::from_millis(200), || async {
                node.memory
                    .get(&key("GET:h/api/1"))
                    .await
                    .unwrap()
                    .is_none()
            })
            .await,
            "still in the memory of {}",
            node.url
        );
        assert!(read(node, "GET:h/api/1").await.is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_too_short_to_be_noticed_does_not_let_a_node_serve_what_was_purged() {
    let servers = servers(3);
    let nodes = fleet_with(&servers, slow_replay).await;
    everywhere(&nodes, 1, "GET:h/api/1").await;
    let subscriptions = nodes[2].redis.stats().await.bus_subscriptions;
    // C's Redis stalls for less than three heartbeats: A's delivery to it
    // times out (journaled on A, replayed only later), and C's subscription
    // to it never looks lost.
    servers[2].pause();
    let purge = tokio::spawn({
        let cache = nodes[0].cache.clone();
        async move { cache.invalidate_prefix("GET:h/api/").await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    servers[2].resume();
    let report = purge.await.unwrap();
    assert!(report.failed.is_empty(), "{report:?}");
    assert!(
        undelivered(&nodes[0]).await >= 1,
        "A's delivery to C was journaled"
    );
    never_served(&nodes[2], "GET:h/api/1", Duration::from_millis(1500)).await;
    assert_eq!(
        nodes[2].redis.stats().await.bus_subscriptions,
        subscriptions,
        "the stall went unnoticed (the path under test)"
    );
    // C applied what it heard from A itself, once its Redis answered.
    assert!(
        eventually(Duration::from_secs(2), || async {
            !exists(&nodes[2].url, &format!("{NS}k:GET:h/api/1")).await
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_memory_tier_proves_its_redis_and_copies_the_others() {
    let servers = servers(2);
    let nodes = fleet(&servers).await;
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    drop(nodes);
    let dir = tempfile::tempdir().unwrap();
    let bare = connect(node_config(&urls, &urls[1], dir.path())).await;
    let bare_cache = bare.tiered("bare", None);
    let a = start_node(&urls, &urls[0], |_| {}).await;
    ready(&a).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            let stats = bare.stats().await;
            stats.own_current == Some(true) && stats.peers.iter().all(|p| p.connected)
        })
        .await
    );
    let e = entry_at("v", SystemTime::now(), Duration::from_secs(60), &[]);
    assert!(a.cache.set(&key("k"), e).await.is_complete());
    assert!(
        eventually(Duration::from_millis(500), || async {
            bare_cache.get(&key("k")).await.is_some()
        })
        .await,
        "copied into the node without memory, and read there"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_clock_runs_ahead_cannot_bring_back_what_was_deleted() {
    let servers = servers(3);
    let nodes = fleet(&servers).await;
    // A's clock runs 10 s ahead: its entry says it was stored in the future
    // (its Redis stamps the version in its own, right, clock).
    let ahead = SystemTime::now() + Duration::from_secs(10);
    let e = entry_at("old", ahead, Duration::from_secs(60), &[]);
    assert!(nodes[0].cache.set(&key("k"), e).await.is_complete());
    for node in &nodes {
        assert!(
            eventually(Duration::from_secs(1), || async {
                exists(&node.url, &format!("{NS}k:k")).await
            })
            .await
        );
    }
    let before_delete = raw_value(&nodes[0].url, "k").await;
    assert!(nodes[1].cache.delete(&key("k")).await.is_complete());
    // A's Redis holds the value from before the delete again (a slow
    // write), and A announces it with its clock.
    let mut conn = raw(&nodes[0].url).await;
    let () = redis::cmd("SET")
        .arg(format!("{NS}k:k"))
        .arg(&before_delete)
        .query_async(&mut conn)
        .await
        .unwrap();
    let dealt = dealt_with(&nodes[1..]).await;
    announce(&nodes[0].url, "k", ahead).await;
    settled(&nodes[1..], &dealt).await;
    for node in &nodes[1..] {
        assert!(
            !exists(&node.url, &format!("{NS}k:k")).await,
            "brought back on {}",
            node.url
        );
        assert!(read(node, "k").await.is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_value_too_large_to_copy_drops_the_older_copies() {
    let servers = servers(3);
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    let mut nodes = Vec::new();
    for url in &urls {
        nodes.push(start_node(&urls, url, |c| c.replication.max_bytes = 1000).await);
    }
    for node in &nodes {
        ready(node).await;
    }
    everywhere(&nodes, 0, "k").await;
    let big = entry_at(
        &"x".repeat(4000),
        SystemTime::now(),
        Duration::from_secs(60),
        &[],
    );
    assert!(nodes[1].cache.set(&key("k"), big).await.is_complete());
    for node in [&nodes[0], &nodes[2]] {
        assert!(
            eventually(Duration::from_millis(400), || async {
                read(node, "k").await.is_none()
            })
            .await,
            "{} still serves the older value",
            node.url
        );
    }
    assert_eq!(read(&nodes[1], "k").await.unwrap().0.len(), 4000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_is_each_nodes_own() {
    let servers = servers(2);
    let nodes = fleet(&servers).await;
    let counter = |n| {
        Arc::new(cachette_core::Entry::counter(
            n,
            cachette_core::EntryMeta::new(SystemTime::now(), Duration::from_secs(60)),
        ))
    };
    assert!(
        nodes[0]
            .cache
            .set(&key("n"), counter(1))
            .await
            .is_complete()
    );
    assert!(
        nodes[1]
            .cache
            .set(&key("n"), counter(10))
            .await
            .is_complete()
    );
    everywhere(&nodes, 0, "marker").await;
    assert_eq!(nodes[0].cache.incr(&key("n"), 1).await.unwrap(), 2);
    // Whatever A published after its incr has been heard on B...
    assert!(nodes[0].cache.delete(&key("marker")).await.is_complete());
    assert!(
        eventually(Duration::from_secs(1), || async {
            nodes[1].memory.get(&key("marker")).await.unwrap().is_none()
        })
        .await
    );
    // ...and B's counter is untouched.
    assert_eq!(nodes[1].cache.incr(&key("n"), 1).await.unwrap(), 11);
    assert_eq!(nodes[0].cache.incr(&key("n"), 1).await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_may_reach_its_own_redis_by_a_unix_socket() {
    let socket_dir = tempfile::tempdir().unwrap();
    let socket = socket_dir.path().join("redis.sock");
    let socket_arg = socket.to_str().unwrap().to_owned();
    let mut servers = servers(2);
    servers.push(RedisServer::start_with(&[
        "--unixsocket",
        &socket_arg,
        "--unixsocketperm",
        "700",
    ]));
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    let a = start_node(&urls, &urls[0], |_| {}).await;
    let b = start_node(&urls, &urls[1], |_| {}).await;
    // C lists every node by TCP (as the others do) and reaches its own by
    // the socket.
    let c = start_node(&urls, &format!("unix://{socket_arg}"), |_| {}).await;
    for node in [&a, &b, &c] {
        ready(node).await;
    }
    let nodes = [a, b, c];
    for n in 0..3 {
        let e = entry_at("v", SystemTime::now(), Duration::from_secs(60), &[]);
        assert!(
            nodes[2]
                .cache
                .set(&key(&format!("from-c/{n}")), e)
                .await
                .is_complete()
        );
    }
    everywhere(&nodes, 0, "from-a").await;
    for node in &nodes[..2] {
        assert!(
            eventually(Duration::from_secs(1), || async {
                exists(&node.url, &format!("{NS}k:from-c/2")).await
            })
            .await
        );
    }
    // C hears its own channel through its TCP entry, and skips itself.
    let heard = nodes[2].redis.stats().await.replication.unwrap().heard;
    assert_eq!(heard, 1, "only A's store was heard on C");
    let report = nodes[2].cache.invalidate_prefix("from-").await;
    assert!(report.is_complete(), "{report:?}");
    for node in &nodes[..2] {
        assert!(!exists(&node.url, &format!("{NS}k:from-a")).await);
        assert!(!exists(&node.url, &format!("{NS}k:from-c/0")).await);
    }
    assert!(read(&nodes[2], "from-a").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn this_node_must_be_one_of_the_peers() {
    let servers = servers(2);
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    let config = config(Topology::peers(urls, "redis://127.0.0.1:1/0"), NS);
    let error = RedisTiers::connect(config).await.unwrap_err();
    assert!(
        error.to_string().contains("not one of the peers"),
        "{error}"
    );
}
