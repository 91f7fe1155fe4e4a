//! The response cache over the Redis tiers, with real `redis-server` and
//! `redis-sentinel` processes: a master killed under load, a Sentinel
//! failover, and every Redis down. No request may fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use axum::{Router, body::Body, extract::Path, routing::get};
use cachette::{
    Backend, CacheKey, CacheLayer, Entry, EntryMeta, MemoryTier,
    redis::{JournalConfig, RedisConfig, RedisTiers, Topology},
};
use cachette_testkit::{RedisServer, Sentinels};
use common::*;
use http::Request;

fn redis_config(topology: Topology, namespace: &str) -> RedisConfig {
    let mut config = RedisConfig::new(topology, namespace);
    config.local_timeout = Duration::from_millis(100);
    config.master_timeout = Duration::from_millis(300);
    config.connect_timeout = Duration::from_millis(200);
    config.sentinel_poll = Duration::from_millis(300);
    config
}

fn app(layer: CacheLayer) -> Router {
    Router::new()
        .route(
            "/item/{n}",
            get(|Path(n): Path<u32>| async move {
                ([("cache-control", "max-age=1")], format!("item {n}"))
            })
            .post(|| async { "updated" }),
        )
        .layer(layer)
}

/// Sends requests in a loop until stopped; collects every status.
fn load(app: Router, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<u16>> {
    tokio::spawn(async move {
        let mut statuses = Vec::new();
        let mut i = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let uri = format!("http://test.local/item/{}", i % 25);
            let request = if i % 10 == 9 {
                Request::post(uri).body(Body::empty()).unwrap()
            } else {
                Request::get(uri).body(Body::empty()).unwrap()
            };
            statuses.push(send(&app, request).await.status.as_u16());
            i += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        statuses
    })
}

fn assert_all_2xx(statuses: &[u16]) {
    assert!(
        statuses.len() > 20,
        "the load ran: {} requests",
        statuses.len()
    );
    let failed: Vec<_> = statuses
        .iter()
        .filter(|s| !(200..300).contains(*s))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        statuses.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_load_fails_no_request_and_journals_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = RedisServer::start();
    let mut journal = JournalConfig::new(dir.path().join("journal"));
    journal.probe_interval = Duration::from_secs(3600);
    let redis =
        RedisTiers::connect(redis_config(Topology::single(master.url()), "h1:").journal(journal))
            .await
            .unwrap();
    let cache = redis.tiered("h1", Some(Arc::new(MemoryTier::default())));
    let stop = Arc::new(AtomicBool::new(false));
    let runner = load(app(CacheLayer::new(cache)), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    master.kill();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::Relaxed);
    assert_all_2xx(&runner.await.unwrap());
    let stats = redis.stats().await.journal.unwrap();
    assert!(
        stats.depth > 0,
        "writes during the outage were journaled: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_is_followed_without_a_restart_or_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = RedisServer::start();
    let replica = RedisServer::replica_of(&master);
    let sentinels = Sentinels::start(3, &master, "mymaster");
    let mut journal = JournalConfig::new(dir.path().join("journal"));
    journal.probe_interval = Duration::from_millis(200);
    let topology = Topology::sentinel(sentinels.urls(), "mymaster", Some(replica.addr()));
    let redis = RedisTiers::connect(redis_config(topology, "h2:").journal(journal))
        .await
        .unwrap();
    assert_eq!(redis.master_addr(), Some(master.addr()));
    let cache = redis.tiered("h2", Some(Arc::new(MemoryTier::default())));

    let stop = Arc::new(AtomicBool::new(false));
    let runner = load(app(CacheLayer::new(cache.clone())), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    master.kill(); // SIGKILL
    let started = Instant::now();
    let promoted = async {
        while sentinels.master_port("mymaster") != Some(replica.port()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), promoted)
        .await
        .expect("Sentinel promoted the replica");
    let failover = started.elapsed();

    // Within 2 s of the promotion, writes land on the new master.
    let key = CacheKey::new("after-failover").unwrap();
    let mut landed = false;
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let entry = Entry::value(
            bytes::Bytes::from_static(b"v"),
            EntryMeta::new(SystemTime::now(), Duration::from_secs(60)),
        );
        let report = cache.set(&key, Arc::new(entry)).await;
        if report.succeeded.iter().any(|t| &**t == "master")
            && replica.command("EXISTS h2:k:after-failover").as_deref() == Some(":1")
        {
            landed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        landed,
        "writes reach the new master within failover ({failover:?}) + 2 s"
    );
    assert_eq!(redis.master_addr(), Some(replica.addr()));
    assert!(redis.stats().await.failovers >= 1);
    stop.store(true, Ordering::Relaxed);
    assert_all_2xx(&runner.await.unwrap());
    // What was journaled during the switch reaches the new master.
    assert!(
        eventually_async(Duration::from_secs(10), || async {
            redis.stats().await.journal.unwrap().depth == 0
        })
        .await
    );
}

async fn eventually_async<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_redis_down_the_origin_answers_and_the_breaker_keeps_it_fast() {
    let mut master = RedisServer::start();
    let mut replica = RedisServer::replica_of(&master);
    let redis = RedisTiers::connect(redis_config(
        Topology::fixed(master.url(), Some(replica.url())),
        "h3:",
    ))
    .await
    .unwrap();
    // No memory tier: every request goes to Redis first.
    let cache = redis.tiered("h3", None);
    let cached = app(CacheLayer::new(cache.clone()));
    let plain = app(CacheLayer::new(cachette::Tiered::builder("none").build()));
    replica.kill();
    master.kill();
    // The first requests pay the timeouts until the breakers open.
    for i in 0..8 {
        let reply = fetch(&cached, &format!("/item/{i}")).await;
        assert_eq!(reply.status, 200);
    }
    assert!(
        cache
            .breaker_states()
            .iter()
            .all(|(_, s)| *s == cachette::BreakerState::Open),
        "{:?}",
        cache.breaker_states()
    );
    let timed = |app: Router| async move {
        let started = Instant::now();
        for i in 0..20 {
            let reply = fetch(&app, &format!("/item/{}", 100 + i)).await;
            assert_eq!(reply.status, 200);
            assert_eq!(reply.text(), format!("item {}", 100 + i));
        }
        started.elapsed() / 20
    };
    let through_breakers = timed(cached).await;
    let baseline = timed(plain).await;
    let added = through_breakers.saturating_sub(baseline);
    assert!(
        added < Duration::from_millis(5),
        "added latency per request with every Redis down: {added:?}"
    );
}

async fn wait_for_bus(redis: &RedisTiers) {
    for _ in 0..100 {
        if redis.stats().await.bus_subscriptions >= 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the bus did not subscribe");
}

/// A page that varies on `Accept-Language`, answering with the language and
/// the call number; POST updates it.
fn varying_app(layer: CacheLayer, counter: &Counter) -> Router {
    let calls = counter.clone();
    Router::new()
        .route(
            "/page",
            get(move |headers: http::HeaderMap| {
                let n = calls.hit();
                async move {
                    let lang = headers
                        .get("accept-language")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("none")
                        .to_owned();
                    (
                        [
                            ("cache-control", "max-age=600"),
                            ("vary", "accept-language"),
                        ],
                        format!("{lang} {n}"),
                    )
                }
            })
            .post(|| async { "updated" }),
        )
        .layer(layer)
}

async fn commandstat(url: &str, command: &str) -> u64 {
    let mut conn = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidating_a_varying_url_sweeps_no_keyspace_and_needs_no_marker() {
    let master = RedisServer::start();
    let redis = RedisTiers::connect(redis_config(Topology::single(master.url()), "h5:"))
        .await
        .unwrap();
    let memory = MemoryTier::default();
    let cache = redis.tiered("h5", Some(Arc::new(memory.clone())));
    let counter = Counter::default();
    let app = varying_app(CacheLayer::new(cache.clone()), &counter);
    wait_for_bus(&redis).await;
    let store_variants = || async {
        for lang in ["fr", "de"] {
            send(&app, get_with("/page", &[("accept-language", lang)])).await;
            let again = send(&app, get_with("/page", &[("accept-language", lang)])).await;
            assert!(again.is_hit(), "{}", again.cache_status());
        }
    };
    let post_and_check = || async {
        let post = Request::post("http://test.local/page")
            .body(Body::empty())
            .unwrap();
        assert_eq!(send(&app, post).await.status, 200);
        let calls = counter.get();
        for lang in ["fr", "de"] {
            let reply = send(&app, get_with("/page", &[("accept-language", lang)])).await;
            assert!(
                !reply.is_hit(),
                "the {lang} variant was invalidated: {}",
                reply.cache_status()
            );
        }
        assert_eq!(counter.get(), calls + 2);
    };

    // An anonymous POST on a varying URL finds its variants without a
    // keyspace sweep (each SCAN is linear in the keyspace, on every node).
    store_variants().await;
    let scans = commandstat(&master.url(), "scan").await;
    post_and_check().await;
    assert_eq!(
        commandstat(&master.url(), "scan").await,
        scans,
        "no SCAN of the keyspace for a POST"
    );

    // The marker is gone (evicted in memory and in Redis, or unreadable at
    // this moment): the invalidation still reaches the variants.
    store_variants().await;
    let marker_key = CacheKey::new("GET:test.local/page").unwrap();
    memory.delete(&marker_key).await.unwrap();
    redis.master_tier().delete(&marker_key).await.unwrap();
    post_and_check().await;
}
