//! Writes while the master is down: every write goes to the durable journal
//! (one fsync'd redb commit per group of concurrent records). Runs 1, 64 and
//! 512 concurrent writers for a few seconds each against a master address
//! where nothing listens, and prints writes/s and the latency each write
//! took (what a miss pays on top of the origin while Redis is down).
//!
//! ```sh
//! cargo run --release --example bench_journal -- [seconds per row] [journal dir]
//! ```
//! The journal dir defaults to a temporary directory (use one on the disk
//! you deploy on: fsync cost is the disk's).
#![allow(clippy::expect_used)]

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use cachette::{
    CacheKey, Entry, EntryMeta,
    redis::{JournalConfig, RedisConfig, RedisTiers, Topology},
};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3);
    let base = match args.next() {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };
    // Nothing listens there: every master call fails at once, the breaker
    // opens, and writes go straight to the journal.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    println!(
        "writers  writes/s  p50      p99      max      (journal in {})",
        base.path().display()
    );
    for writers in [1usize, 64, 512] {
        let mut journal = JournalConfig::new(base.path().join(format!("journal-{writers}")));
        journal.background_replay = false;
        journal.max_entries = u64::MAX;
        journal.max_bytes = u64::MAX;
        let config = RedisConfig::new(
            Topology::single(format!("redis://127.0.0.1:{port}/0")),
            "bench:",
        )
        .journal(journal);
        let redis = RedisTiers::connect(config).await?;
        let cache = redis.tiered("bench", None);
        let body = Bytes::from(vec![b'x'; 1024]);
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for w in 0..writers {
            let (cache, body) = (cache.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let key = CacheKey::new(format!("GET:bench/{w}/{i}")).expect("a key");
                    let meta = EntryMeta::new(SystemTime::now(), Duration::from_secs(600));
                    let entry = Arc::new(Entry::value(body.clone(), meta));
                    let started = Instant::now();
                    let report = cache.set(&key, entry).await;
                    latencies.push(started.elapsed());
                    assert!(report.is_complete(), "{report:?}");
                    i += 1;
                }
                latencies
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await?);
        }
        all.sort();
        let depth = redis.journal().map_or(0, cachette::core::Journal::depth);
        println!(
            "{writers:>7}  {:>8.0}  {:>7.2?}  {:>7.2?}  {:>7.2?}  (journal depth {depth})",
            all.len() as f64 / seconds as f64,
            percentile(&all, 0.5),
            percentile(&all, 0.99),
            all.last().copied().unwrap_or_default(),
        );
    }
    Ok(())
}
