//! The server of the load tests (bench/load.sh): one pre-built body served
//! with and without the cache layer, side by side in one process, plus the
//! routes for the miss and stampede measurements.
//!
//! ```sh
//! cargo run --release --example bench_server -- 3001 1024 [redis://127.0.0.1:6379/0] [redis://127.0.0.1:7000,...]
//! wrk -t2 -c64 -d10s http://127.0.0.1:3001/plain
//! wrk -t2 -c64 -d10s http://127.0.0.1:3001/cached
//! ```
//!
//! Arguments: port (default 3001), body size in bytes (default 1024),
//! optionally a Redis URL, and optionally Redis Cluster seed URLs
//! (comma-separated). Routes, all answering the same body with
//! `Cache-Control: max-age=3600`:
//!
//! | route | what |
//! |---|---|
//! | `/plain` | the route alone: the physical limit |
//! | `/cached` | the route behind `CacheLayer`, memory tier |
//! | `/redis` | the route behind `CacheLayer` whose only tier is the Redis at the URL (memory disabled) |
//! | `/cluster` | the same over the Redis Cluster at the seeds (memory disabled, reads from the primaries) |
//! | `/miss/{n}` | the route alone, under any path |
//! | `/miss-cached/{n}` | behind the layer: each new `n` is a miss that is stored |
//! | `/slow/{n}` | an origin taking 200 ms, counting its calls |
//! | `/slow-cached/{n}` | the same behind the layer |
//! | `/slow-fleet/{n}` | the same behind a layer with fleet coalescing over the Redis at the URL (memory + Redis): start several servers on one Redis for a fleet |
//! | `/calls` | how many times the 200 ms origin ran |
//! | `/expiring` | the route behind the layer, stored for `EXPIRY_SECS` (default 20) only: the mass-expiry row (keys in the query) |
//! | `/expiring-calls` | how many times `/expiring`'s origin ran |

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{Router, routing::get};
use bytes::Bytes;
use cachette::{CacheLayer, MemoryTier, Tiered};

fn memory_layer(name: &str) -> CacheLayer {
    CacheLayer::new(
        Tiered::builder(name)
            .tier("memory", MemoryTier::with_max_bytes(256 * 1024 * 1024))
            .build(),
    )
}

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
    let calls = Arc::new(AtomicU64::new(0));
    let counted = calls.clone();
    let slow = get(move || {
        counted.fetch_add(1, Ordering::Relaxed);
        async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            ([("cache-control", "max-age=3600")], "slow origin\n")
        }
    });
    let slow_fleet = slow.clone();
    let expiry: u64 = std::env::var("EXPIRY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let expiring_calls = Arc::new(AtomicU64::new(0));
    let expiring = {
        let (body, counted) = (Bytes::from(vec![b'x'; size]), expiring_calls.clone());
        let control = format!("max-age={expiry}");
        get(move || {
            counted.fetch_add(1, Ordering::Relaxed);
            let (body, control) = (body.clone(), control.clone());
            async move { ([("cache-control", control)], body) }
        })
    };
    let mut app = Router::new()
        .route("/plain", get(handler.clone()))
        .route("/cached", get(handler.clone()).layer(memory_layer("bench")))
        .route("/miss/{n}", get(handler.clone()))
        .route(
            "/miss-cached/{n}",
            get(handler.clone()).layer(memory_layer("bench-miss")),
        )
        .route("/slow/{n}", slow.clone())
        .route(
            "/slow-cached/{n}",
            slow.layer(memory_layer("bench-stampede")),
        )
        .route("/expiring", expiring.layer(memory_layer("bench-expiring")))
        .route(
            "/expiring-calls",
            get(move || {
                let calls = expiring_calls.clone();
                async move { calls.load(Ordering::Relaxed).to_string() }
            }),
        )
        .route(
            "/calls",
            get(move || {
                let calls = calls.clone();
                async move { calls.load(Ordering::Relaxed).to_string() }
            }),
        );
    if let Some(url) = args.next() {
        let redis = cachette::redis::RedisTiers::connect(cachette::redis::RedisConfig::new(
            cachette::redis::Topology::single(url),
            "bench:",
        ))
        .await?;
        let redis_only = redis.tiered("bench-redis", None);
        app = app.route(
            "/redis",
            get(handler.clone()).layer(CacheLayer::new(redis_only)),
        );
        // The fleet stampede: every server of the fleet on this Redis,
        // one fill lease per key across them.
        let fleet = redis.tiered(
            "bench-fleet",
            Some(Arc::new(MemoryTier::with_max_bytes(64 * 1024 * 1024))),
        );
        app = app.route(
            "/slow-fleet/{n}",
            slow_fleet.layer(CacheLayer::new(fleet).fleet_coalescing(true)),
        );
    }
    if let Some(seeds) = args.next() {
        let cluster = cachette::redis::RedisTiers::connect(cachette::redis::RedisConfig::new(
            cachette::redis::Topology::cluster(seeds.split(','), Vec::new()),
            "bench:",
        ))
        .await?;
        let cluster_only = cluster.tiered("bench-cluster", None);
        app = app.route(
            "/cluster",
            get(handler).layer(CacheLayer::new(cluster_only)),
        );
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("bench server on http://127.0.0.1:{port}, body {size} bytes");
    axum::serve(listener, app).await?;
    Ok(())
}
