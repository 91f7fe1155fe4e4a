//! `#[cache_page]` on axum handlers and `#[cached]` on async functions,
//! with the memory-only default caches (no Redis, no config file).
//!
//! ```sh
//! cargo run --example decorators      # PORT=3002 by default
//! ```

use std::time::Duration;

use axum::{
    Router,
    extract::{Path, State},
    routing::get,
};
use cachette::{Caches, cache_page, cached};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

/// Stands for a database pool: not part of any key.
#[derive(Clone)]
struct Db;

/// Memoized for a minute per `id`; errors are never cached.
#[cached(ttl = "60s", key = "user:{id}", tags = ["users"])]
async fn load_user(id: u64, #[cache_ignore] _db: &Db) -> Result<User, String> {
    tokio::time::sleep(Duration::from_millis(150)).await; // a slow query
    if id == 0 {
        return Err("no user 0".into());
    }
    Ok(User {
        id,
        name: format!("user {id}"),
    })
}

/// The whole response is cached for 5 minutes, one variant per language.
#[cache_page(ttl = "5m", vary = ["accept-language"], tags = ["users"])]
async fn user_page(Path(id): Path<u64>, State(db): State<Db>) -> String {
    match load_user(id, &db).await {
        Ok(user) => format!("<h1>{}</h1>\n", user.name),
        Err(error) => format!("<p>{error}</p>\n"),
    }
}

/// Invalidates one user's memoized result and every cached page tagged `users`.
async fn refresh(Path(id): Path<u64>) -> &'static str {
    load_user::invalidate(id).await;
    if let Ok(pages) = Caches::global().and_then(|c| c.cache("default")) {
        let _ = pages.purge_tag("users").await;
    }
    "invalidated\n"
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The decorators find their caches here; install once, at startup.
    Caches::memory_only().install()?;

    let started = std::time::Instant::now();
    load_user(1, &Db).await?;
    let first = started.elapsed();
    let started = std::time::Instant::now();
    load_user(1, &Db).await?;
    println!(
        "load_user(1): {first:?} from the body, then {:?} from the cache",
        started.elapsed()
    );

    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3002);
    let app = Router::new()
        .route("/users/{id}", get(user_page).post(refresh))
        .with_state(Db);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let base = format!("http://127.0.0.1:{port}");
    println!("listening on {base}");
    println!("  curl -si {base}/users/7 | grep -i cache-status      # miss, stored");
    println!("  curl -si {base}/users/7 | grep -i cache-status      # hit");
    println!("  curl -si -X POST {base}/users/7                    # invalidates");
    axum::serve(listener, app).await?;
    Ok(())
}
