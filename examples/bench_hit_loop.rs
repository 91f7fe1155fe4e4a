//! A fixed number of requests through an axum route, in-process, with or
//! without the cache layer: for instruction counts under callgrind, which
//! are repeatable where timings are not.
//!
//! ```sh
//! cargo build --release --example bench_hit_loop
//! valgrind --tool=callgrind target/release/examples/bench_hit_loop plain 200000
//! valgrind --tool=callgrind target/release/examples/bench_hit_loop cached 200000
//! ```
//! The difference of the two totals, divided by the number of requests, is
//! what a memory hit adds to the route (docs/benchmarks.md). Modes `miss`
//! and `plain-miss` send a new query string each request (`?k=<n>`): a miss
//! and store each time, and the same URLs without the layer. Modes `keyed`
//! and `plain-keyed` cycle through `KEYS` query strings (third argument,
//! default 1,000): hits over many keys once the first round has stored them.

use axum::{Router, body::Body, routing::get};
use bytes::Bytes;
use cachette::{CacheLayer, MemoryTier, Tiered};
use http::{Request, header};
use http_body_util::BodyExt;
use tower::ServiceExt;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (cached, keyed) = match args.next().as_deref() {
        Some("cached") => (true, false),
        Some("plain") | None => (false, false),
        Some("miss" | "keyed") => (true, true),
        Some("plain-miss" | "plain-keyed") => (false, true),
        Some(other) => {
            return Err(format!(
                "mode {other:?}: plain, cached, miss, plain-miss, keyed or plain-keyed"
            )
            .into());
        }
    };
    let requests: u64 = args
        .next()
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(200_000);
    // `miss`: every key new; `keyed`: KEYS keys, over and over.
    let keys: u64 = match std::env::args().nth(1).as_deref() {
        Some("keyed" | "plain-keyed") => {
            args.next().map(|n| n.parse()).transpose()?.unwrap_or(1_000)
        }
        _ => u64::MAX,
    };
    let body = Bytes::from(vec![b'x'; 1024]);
    let route = get(move || {
        let body = body.clone();
        async move { ([(header::CACHE_CONTROL, "max-age=3600")], body) }
    });
    let app = if cached {
        let cache = Tiered::builder("bench")
            .tier("memory", MemoryTier::with_max_bytes(256 << 20))
            .build();
        Router::new()
            .route("/p", route)
            .layer(CacheLayer::new(cache))
    } else {
        Router::new().route("/p", route)
    }
    .with_state(());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut bytes = 0;
        for n in 0..requests {
            let request = if keyed {
                Request::get(format!("http://bench.local/p?k={}", n % keys)).body(Body::empty())?
            } else {
                Request::get("http://bench.local/p").body(Body::empty())?
            };
            let response = app.clone().oneshot(request).await?;
            bytes += response.into_body().collect().await?.to_bytes().len();
        }
        println!("{requests} requests, {bytes} body bytes");
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
