//! cachette quickstart: an axum app with a response cache in the in-process
//! memory tier. No Redis, no config file.
//!
//! ```sh
//! cargo run --example quickstart          # PORT=8080 to change the port
//! ```

use std::{
    net::SocketAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{Router, extract::State, http::HeaderMap, routing::get};
use cachette::{CacheLayer, MemoryTier, Tiered};

/// A slow origin route: ~200 ms of "work", fresh for 10 s in the cache.
async fn time() -> ([(&'static str, &'static str); 1], String) {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (
        [("cache-control", "max-age=10, stale-while-revalidate=30")],
        format!(
            "computed at unix time {}.{:03}\n",
            now.as_secs(),
            now.subsec_millis()
        ),
    )
}

/// A route whose response depends on `Accept-Language`: one stored variant per language.
async fn greet(headers: HeaderMap) -> ([(&'static str, &'static str); 2], &'static str) {
    tokio::time::sleep(Duration::from_millis(100)).await;
    let lang = headers
        .get("accept-language")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("en");
    let text = if lang.starts_with("fr") {
        "bonjour\n"
    } else if lang.starts_with("de") {
        "hallo\n"
    } else {
        "hello\n"
    };
    (
        [("cache-control", "max-age=60"), ("vary", "accept-language")],
        text,
    )
}

/// Cache statistics, uncached.
async fn stats(State(cache): State<Tiered>) -> String {
    let snapshot = cache.snapshot();
    let c = snapshot.cache;
    let mut out = format!(
        "cache {}: hits={} misses={} stale={} coalesced={} stored={} not_stored={}\n",
        snapshot.name, c.hits, c.misses, c.stale_served, c.coalesced, c.stored, c.not_stored
    );
    for tier in snapshot.tiers {
        out.push_str(&format!(
            "tier {} ({}): hits={} misses={} errors={} breaker={} p99={:?}\n",
            tier.name,
            tier.kind,
            tier.counters.hits,
            tier.counters.misses,
            tier.counters.errors,
            tier.breaker.as_str(),
            tier.latency.p99
        ));
    }
    out
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = match std::env::var("PORT") {
        Ok(value) => value
            .parse()
            .map_err(|_| format!("PORT must be a port number, got {value:?}"))?,
        Err(_) => 3000,
    };

    // One named cache with a single tier: the in-process memory, 64 MiB.
    let cache = Tiered::builder("default")
        .tier("memory", MemoryTier::with_max_bytes(64 * 1024 * 1024))
        .build();

    let cached = Router::new()
        .route("/time", get(time).post(|| async { "invalidated /time\n" }))
        .route("/greet", get(greet))
        .layer(CacheLayer::new(cache.clone()));
    let app = Router::new()
        .route("/stats", get(stats))
        .with_state(cache)
        .merge(cached);

    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let base = format!("http://{addr}");
    println!("cachette quickstart listening on {base}\n");
    println!("Try (watch the Cache-Status and Age headers):");
    println!(
        "  curl -si {base}/time | grep -iE '^(cache-status|age)|computed'   # MISS: ~200 ms, stored"
    );
    println!(
        "  curl -si {base}/time | grep -iE '^(cache-status|age)|computed'   # HIT: instant, same body"
    );
    println!(
        "  curl -si -H 'accept-language: fr' {base}/greet                    # a second Vary variant"
    );
    println!(
        "  curl -si -X POST {base}/time                                       # invalidates /time"
    );
    println!("  curl -s {base}/stats");
    axum::serve(listener, app).await?;
    Ok(())
}
