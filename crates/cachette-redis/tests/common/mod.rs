//! Helpers for the Redis tier tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use cachette_core::{CacheKey, Entry, EntryMeta};
use cachette_redis::{RedisConfig, RedisTiers, Topology};

/// A key from a literal.
pub fn key(s: &str) -> CacheKey {
    CacheKey::new(s).unwrap()
}

/// A value entry stored now.
pub fn entry(body: &str, ttl: Duration) -> Arc<Entry> {
    entry_at(body, SystemTime::now(), ttl, &[])
}

/// A value entry with an explicit store time and tags.
pub fn entry_at(body: &str, stored_at: SystemTime, ttl: Duration, tags: &[&str]) -> Arc<Entry> {
    let meta = EntryMeta::new(stored_at, ttl).with_tags(tags.iter().copied());
    Arc::new(Entry::value(Bytes::from(body.to_owned()), meta))
}

/// The text of a value entry.
pub fn body(entry: &Entry) -> String {
    match entry.payload() {
        cachette_core::Payload::Value(v) => String::from_utf8(v.to_vec()).unwrap(),
        other => panic!("not a value: {other:?}"),
    }
}

/// A config with test-friendly timeouts.
pub fn config(topology: Topology, namespace: &str) -> RedisConfig {
    let mut config = RedisConfig::new(topology, namespace);
    config.local_timeout = Duration::from_millis(200);
    config.master_timeout = Duration::from_millis(300);
    config.connect_timeout = Duration::from_millis(200);
    config.sentinel_poll = Duration::from_millis(500);
    config
}

/// Connects, panicking on a configuration error.
pub async fn connect(config: RedisConfig) -> RedisTiers {
    RedisTiers::connect(config).await.unwrap()
}

/// Polls `check` until it holds or `timeout` passes; returns whether it held.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A raw async connection for inspecting and tampering with a server.
pub async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The remaining TTL of a raw key in ms.
pub async fn pttl(url: &str, key: &str) -> i64 {
    let mut conn = raw(url).await;
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// Whether a raw key exists.
pub async fn exists(url: &str, key: &str) -> bool {
    let mut conn = raw(url).await;
    let n: i64 = redis::cmd("EXISTS")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    n == 1
}

/// Waits until the bus of `redis` has subscribed at least `n` times.
pub async fn wait_bus(redis: &RedisTiers, n: u64) {
    assert!(
        eventually(Duration::from_secs(5), || async {
            redis.stats().await.bus_subscriptions >= n
        })
        .await,
        "bus did not subscribe"
    );
}
