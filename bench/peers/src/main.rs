//! The load-test route (bench/load.sh) behind peer caching crates, in a
//! process shaped as `bench_server`: same axum, same runtime, same body.
//!
//! ```sh
//! cargo run --release --manifest-path bench/peers/Cargo.toml -- 3002 1024
//! wrk -t2 -c64 -d10s http://127.0.0.1:3002/peer
//! ```
//!
//! | route | what |
//! |---|---|
//! | `/plain` | the route alone (to check this process against `bench_server`'s) |
//! | `/peer` | the route behind axum-response-cache (1 h lifespan), keyed by method and URI, query included |

use std::time::Duration;

use axum::{Router, routing::get};
use bytes::Bytes;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().map(|p| p.parse()).transpose()?.unwrap_or(3002);
    let size: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1024);
    let body = Bytes::from(vec![b'x'; size]);
    let handler = move || {
        let body = body.clone();
        async move { ([("cache-control", "max-age=3600")], body) }
    };
    // The mass-expiry row: stored for EXPIRY_SECS (default 20), counting
    // its origin calls.
    let expiry: u64 = std::env::var("EXPIRY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = calls.clone();
    let expiring_body = Bytes::from(vec![b'x'; size]);
    let expiring = get(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let body = expiring_body.clone();
        async move { body }
    });
    let app = Router::new()
        .route(
            "/expiring",
            expiring.layer(axum_response_cache::CacheLayer::with_lifespan(
                Duration::from_secs(expiry),
            )),
        )
        .route(
            "/expiring-calls",
            get(move || {
                let calls = calls.clone();
                async move { calls.load(std::sync::atomic::Ordering::Relaxed).to_string() }
            }),
        )
        .route("/plain", get(handler.clone()))
        .route(
            "/peer",
            get(handler).layer(axum_response_cache::CacheLayer::with_lifespan(
                Duration::from_secs(3600),
            )),
        );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
