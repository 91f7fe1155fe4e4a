//! Replication in a fleet of peers: two nodes (each its own `RedisTiers`
//! and memory tier, in this process) over two Redis servers. Measures the
//! time from a store on A to a hit on B (one store at a time), then how
//! many announcements per second B's replicator copies when A stores as
//! fast as it can (64 concurrent writers), and how many it had to drop.
//!
//! ```sh
//! cargo run --release --example bench_replication -- redis://127.0.0.1:6379/0 redis://127.0.0.1:6380/0 [stores]
//! ```
//! Prints one line: `replication p50_us=.. p99_us=.. max_us=.. copies_per_s=.. dropped=.. stores=..`.
#![allow(clippy::expect_used)]

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use cachette::{
    Backend, CacheKey, Entry, EntryMeta, MemoryTier, Tiered,
    redis::{JournalConfig, RedisConfig, RedisTiers, Topology},
};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

struct Node {
    redis: RedisTiers,
    cache: Tiered,
}

async fn node(urls: &[String], this: &str, dir: &std::path::Path, queue: usize) -> Node {
    let mut config = RedisConfig::new(Topology::peers(urls.to_vec(), this), "bench:repl:");
    config.journal = Some(JournalConfig::new(dir.join("journal")));
    config.replication.queue = queue;
    let redis = RedisTiers::connect(config).await.expect("connect");
    let memory: Arc<dyn Backend> = Arc::new(MemoryTier::default());
    let cache = redis.tiered("bench", Some(memory));
    Node { redis, cache }
}

fn entry(n: usize) -> Arc<Entry> {
    let body = Bytes::from(vec![b'x' + (n % 3) as u8; 1024]);
    Arc::new(Entry::value(
        body,
        EntryMeta::new(SystemTime::now(), Duration::from_secs(300)),
    ))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let a_url = args
        .next()
        .ok_or("usage: bench_replication A_URL B_URL [stores]")?;
    let b_url = args
        .next()
        .ok_or("usage: bench_replication A_URL B_URL [stores]")?;
    let stores: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20_000);
    let urls = vec![a_url.clone(), b_url.clone()];
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("a"))?;
    std::fs::create_dir_all(dir.path().join("b"))?;
    let a = node(&urls, &a_url, &dir.path().join("a"), 4096).await;
    let b = node(&urls, &b_url, &dir.path().join("b"), 4096).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (sa, sb) = (a.redis.stats().await, b.redis.stats().await);
        let ready = |s: &cachette::redis::RedisStats| {
            s.own_current == Some(true) && s.peers.iter().all(|p| p.connected)
        };
        if ready(&sa) && ready(&sb) {
            break;
        }
        if Instant::now() > deadline {
            return Err("the two nodes did not hear each other within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Keys of this run only (earlier runs' stay on the servers until they
    // expire; a clear would raise a purge mark a copy made within its
    // millisecond could fall under).
    let run = cachette::core::unix_millis(SystemTime::now());

    // 1. Store on A, then poll B until it answers (one key at a time).
    let mut latencies = Vec::with_capacity(500);
    for n in 0..500 {
        let key = CacheKey::new(format!("{run}/lat/{n}"))?;
        let started = Instant::now();
        if !a.cache.set(&key, entry(n)).await.is_complete() {
            return Err(format!("{key} not stored on A").into());
        }
        loop {
            if b.cache.get(&key).await.is_some() {
                break;
            }
            if started.elapsed() > Duration::from_secs(2) {
                return Err(format!("{key} not on B within 2 s").into());
            }
            tokio::task::yield_now().await;
        }
        latencies.push(started.elapsed());
    }
    latencies.sort();

    // 2. A stores as fast as 64 writers can; B copies what it can.
    let before = b.redis.stats().await.replication.unwrap_or_default();
    let started = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..64 {
        let cache = a.cache.clone();
        writers.spawn(async move {
            let run = run;
            for n in (w..stores).step_by(64) {
                if let Ok(key) = CacheKey::new(format!("{run}/burst/{n}")) {
                    let _ = cache.set(&key, entry(n)).await;
                }
            }
        });
    }
    while writers.join_next().await.is_some() {}
    let stored_in = started.elapsed();
    let settle = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let r = b.redis.stats().await.replication.unwrap_or_default();
        let dealt = (r.copied + r.skipped + r.failed + r.dropped)
            - (before.copied + before.skipped + before.failed + before.dropped);
        if dealt >= stores as u64 || Instant::now() > settle {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let elapsed = started.elapsed();
    let copied = after.copied - before.copied;
    println!(
        "replication p50_us={} p99_us={} max_us={} copies_per_s={:.0} copied={} dropped={} stores={} stores_per_s={:.0}",
        percentile(&latencies, 0.5).as_micros(),
        percentile(&latencies, 0.99).as_micros(),
        latencies.last().copied().unwrap_or_default().as_micros(),
        copied as f64 / elapsed.as_secs_f64(),
        copied,
        after.dropped - before.dropped,
        stores,
        stores as f64 / stored_in.as_secs_f64(),
    );
    Ok(())
}
