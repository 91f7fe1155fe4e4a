//! A server for load tests: the same pre-built body with and without the
//! cache layer, side by side.
//!
//! ```sh
//! cargo run --release --example bench_server -- 3001 1024
//! wrk -t2 -c64 -d10s http://127.0.0.1:3001/plain
//! wrk -t2 -c64 -d10s http://127.0.0.1:3001/cached
//! ```
//! Arguments: port (default 3001), body size in bytes (default 1024), and
//! optionally a Redis URL: then `/redis` serves the same route from a cache
//! whose only tier is that Redis (the memory tier disabled), to measure a
//! Redis hit.

use axum::{Router, routing::get};
use bytes::Bytes;
use cachette::{CacheLayer, MemoryTier, Tiered};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().map(|p| p.parse()).transpose()?.unwrap_or(3001);
    let size: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1024);
    let body = Bytes::from(vec![b'x'; size]);

    let handler = move || {
        let body = body.clone();
        async move { ([("cache-control", "max-age=3600")], body) }
    };
    let cache = Tiered::builder("bench")
        .tier("memory", MemoryTier::with_max_bytes(64 * 1024 * 1024))
        .build();
    let mut app = Router::new().route("/plain", get(handler.clone())).route(
        "/cached",
        get(handler.clone()).layer(CacheLayer::new(cache)),
    );
    if let Some(url) = args.next() {
        let redis = cachette::redis::RedisTiers::connect(cachette::redis::RedisConfig::new(
            cachette::redis::Topology::single(url),
            "bench:",
        ))
        .await?;
        let redis_only = redis.tiered("bench-redis", None);
        app = app.route("/redis", get(handler).layer(CacheLayer::new(redis_only)));
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("bench server on http://127.0.0.1:{port} (/plain, /cached), body {size} bytes");
    axum::serve(listener, app).await?;
    Ok(())
}
