//! Named caches configured like Django's `CACHES`, the data API, and the axum
//! integration.
//!
//! ```sh
//! cargo run --example named_caches            # uses examples/caches.toml
//! CACHETTE__CACHES__DEFAULT__TIMEOUT=30 cargo run --example named_caches
//! ```
//!
//! The `shared` cache uses Redis at 127.0.0.1:6379; when it is not
//! reachable the example says so and skips that part.

use std::time::Duration;

use axum::{Router, body::Body, http::Request, routing::get};
use cachette::{Cache, Caches, Named, Opts, cache_alias};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use tower::ServiceExt;

#[derive(Debug, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
}

cache_alias!(Shared = "shared");

/// A handler using the `default` cache through the extractor.
async fn visits(cache: Cache) -> String {
    // `add` creates the counter once; `incr` is atomic.
    let _ = cache.add("visits", &0, ()).await;
    match cache.incr("visits", 1, ()).await {
        Ok(n) => format!("visit #{n}\n"),
        Err(error) => format!("no counter: {error}\n"),
    }
}

/// A handler using a named cache.
async fn shared_alias(Named(cache, ..): Named<Shared>) -> String {
    format!(
        "the `{}` cache has tiers {:?}\n",
        cache.alias(),
        cache.tiered().tier_names().collect::<Vec<_>>()
    )
}

async fn call(app: &Router, uri: &str) -> Result<String, Box<dyn std::error::Error>> {
    let response = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty())?)
        .await?;
    let status = response
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap_or("").to_owned());
    let body = response.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&body).trim_end().to_owned();
    Ok(match status {
        Some(status) => format!("{text}    [{status}]"),
        None => text,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/caches.toml");
    // Invalid settings fail here, with the file, the key path and the reason.
    let caches = Caches::from_file(path).await?;
    println!(
        "caches from {path}: {:?}",
        caches.aliases().collect::<Vec<_>>()
    );

    // The data API on the memory-only default cache.
    let cache = caches.cache("default")?;
    cache
        .set(
            "profile:1",
            &Profile {
                id: 1,
                name: "Ada".into(),
            },
            (),
        )
        .await?;
    let profile: Option<Profile> = cache.get("profile:1", ()).await?;
    println!("get profile:1 -> {profile:?}");
    println!(
        "add profile:1 again -> {} (add never overwrites)",
        cache.add("profile:1", "x", ()).await?
    );
    let n: u64 = cache
        .get_or_set("expensive", || async { 6 * 7 }, Duration::from_secs(60))
        .await?;
    println!("get_or_set expensive -> {n}");
    cache.set("hits", &10, ()).await?;
    println!("incr hits -> {}", cache.incr("hits", 5, ()).await?);
    cache.set("report", "v1", Opts::new().version(1)).await?;
    println!(
        "incr_version report -> version {}",
        cache.incr_version("report", 1, ()).await?
    );
    println!("ttl profile:1 -> {:?}", cache.ttl("profile:1", ()).await?);

    // The Redis-backed alias, if Redis is there.
    let shared = caches.cache("shared")?;
    let reachable = shared
        .tiered()
        .health()
        .await
        .into_iter()
        .all(|(_, result)| result.is_ok());
    if reachable {
        shared
            .set("greeting", "hello from Redis", Opts::new().tags(["demo"]))
            .await?;
        println!(
            "shared get greeting -> {:?}",
            shared.get::<String>("greeting", ()).await?
        );
        shared.purge_tag("demo").await?;
        println!(
            "shared after purge_tag -> {:?}",
            shared.get::<String>("greeting", ()).await?
        );
    } else {
        println!(
            "Redis at redis://127.0.0.1:6379 is not reachable: skipping the `shared` cache (start redis-server to try it)"
        );
    }

    // axum: the registry in state, extractors in handlers, a layer per alias.
    let pages = Router::new()
        .route("/page", get(|| async { "a slow page\n" }))
        .layer(caches.layer("pages")?);
    let app = Router::new()
        .route("/visits", get(visits))
        .route("/shared", get(shared_alias))
        .with_state(caches.clone())
        .merge(pages);
    for uri in [
        "/visits",
        "/visits",
        "/shared",
        "/page",
        "/page?utm_source=x",
    ] {
        println!(
            "GET {uri} -> {}",
            call(&app, &format!("http://example.local{uri}")).await?
        );
    }

    // Operations: health, stats and Prometheus metrics for every alias (and
    // POST /purge once `admin.token` is set). Serve it on an internal port.
    let admin = caches.admin_router();
    let health = call(&admin, "http://example.local/health").await?;
    println!(
        "GET /health -> {}",
        health.lines().next().unwrap_or_default()
    );
    let metrics = call(&admin, "http://example.local/metrics").await?;
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("cachette_hits_total"))
    {
        println!("GET /metrics -> {line}");
    }
    Ok(())
}
