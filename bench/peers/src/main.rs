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
    let app = Router::new()
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
