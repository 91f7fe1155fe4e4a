//! `#[cached]` and `#[cache_page]` end to end: through a real axum `Router`
//! and direct calls, on a memory-only cache and on memory + real Redis.
//!
//! The registry is process-global (`Caches::install`), so the scenarios run
//! in one test that owns the Redis server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use axum::{
    Router,
    extract::{Path, Query, State},
    http::HeaderMap,
    routing::get,
};
use cachette::{Caches, cache_page, cached, settings::Settings};
use cachette_testkit::RedisServer;
use common::*;
use serde::{Deserialize, Serialize};

static USER_CALLS: AtomicUsize = AtomicUsize::new(0);
static FALLIBLE_CALLS: AtomicUsize = AtomicUsize::new(0);
static FIND_CALLS: AtomicUsize = AtomicUsize::new(0);
static SHARED_CALLS: AtomicUsize = AtomicUsize::new(0);
static PAGE_CALLS: AtomicUsize = AtomicUsize::new(0);
static SLOW_CALLS: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

/// A database handle: not serializable, so it is left out of the key.
#[derive(Clone)]
struct Db;

#[cached(ttl = "60s", tags = ["users"])]
async fn load_user(id: u64, #[cache_ignore] _db: &Db) -> User {
    USER_CALLS.fetch_add(1, Ordering::SeqCst);
    User {
        id,
        name: format!("user {id}"),
    }
}

#[derive(Debug, PartialEq)]
struct NotFound;

#[cached(key = "fallible:{id}")]
async fn fallible(id: u64) -> Result<String, NotFound> {
    FALLIBLE_CALLS.fetch_add(1, Ordering::SeqCst);
    if id == 0 {
        Err(NotFound)
    } else {
        Ok(format!("found {id}"))
    }
}

#[cached(cache_none = true)]
async fn find(name: String) -> Option<u32> {
    FIND_CALLS.fetch_add(1, Ordering::SeqCst);
    (name == "seven").then_some(7)
}

#[cached(cache = "shared", ttl = "1m", key = "shared:{id}")]
async fn shared_lookup(id: u32) -> u32 {
    SHARED_CALLS.fetch_add(1, Ordering::SeqCst);
    id * 10
}

#[cached(ttl = "1m")]
async fn slow_square(n: u64) -> u64 {
    SLOW_CALLS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    n * n
}

struct Repo {
    calls: AtomicUsize,
}

impl Repo {
    #[cached(key = "repo:{id}")]
    async fn name(&self, id: u32) -> String {
        self.calls.fetch_add(1, Ordering::SeqCst);
        format!("name {id}")
    }
}

#[derive(Deserialize)]
struct Page {
    page: Option<u32>,
}

#[cache_page(ttl = "5m", cache = "pages", vary = ["accept-language"], tags = ["users"])]
async fn user_page(
    Path(id): Path<u64>,
    Query(query): Query<Page>,
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ([(&'static str, &'static str); 1], String) {
    PAGE_CALLS.fetch_add(1, Ordering::SeqCst);
    let lang = headers
        .get("accept-language")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("en")
        .to_owned();
    let page = query.page.unwrap_or(1);
    let body = format!(
        r#"{{"id":{id},"page":{page},"lang":"{lang}","app":"{}"}}"#,
        state.name
    );
    ([("content-type", "application/json")], body)
}

fn is_admin(parts: &axum::http::request::Parts) -> bool {
    parts.headers.contains_key("x-admin")
}

#[cache_page(cache = "pages", unless = is_admin)]
async fn home() -> &'static str {
    PAGE_CALLS.fetch_add(1, Ordering::SeqCst);
    "home"
}

#[derive(Clone)]
struct AppState {
    name: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decorators_end_to_end() {
    let master = RedisServer::start();
    let settings = Settings::from_toml_str(
        "decorators.toml",
        &format!(
            r#"
            [redis.main]
            url = "{url}"
            [caches.default]
            [caches.pages]
            tiers = ["memory", "master"]
            [caches.shared]
            tiers = ["memory", "master"]
            "#,
            url = master.url()
        ),
    )
    .unwrap();
    Caches::from_settings(settings)
        .await
        .unwrap()
        .install()
        .unwrap();
    let db = Db;

    // #[cached] on a plain return, with an ignored argument.
    assert_eq!(
        load_user(1, &db).await,
        User {
            id: 1,
            name: "user 1".into()
        }
    );
    assert_eq!(load_user(1, &db).await.id, 1);
    assert_eq!(load_user(2, &db).await.id, 2);
    assert_eq!(
        USER_CALLS.load(Ordering::SeqCst),
        2,
        "one body run per argument value"
    );
    load_user::invalidate(1).await;
    load_user(1, &db).await;
    assert_eq!(
        USER_CALLS.load(Ordering::SeqCst),
        3,
        "invalidate(args) drops one call's result"
    );
    assert_eq!(load_user::uncached(2, &db).await.id, 2);
    assert_eq!(
        USER_CALLS.load(Ordering::SeqCst),
        4,
        "uncached() always runs the body"
    );
    load_user::invalidate_all().await;
    load_user(2, &db).await;
    assert_eq!(
        USER_CALLS.load(Ordering::SeqCst),
        5,
        "invalidate_all() drops every result"
    );
    let default = Caches::global().unwrap().cache("default").unwrap();
    default.purge_tag("users").await.unwrap();
    load_user(2, &db).await;
    assert_eq!(
        USER_CALLS.load(Ordering::SeqCst),
        6,
        "results carry the tags"
    );

    // Result: errors are not cached, values are; the key template is used as is.
    assert_eq!(fallible(0).await, Err(NotFound));
    assert_eq!(fallible(0).await, Err(NotFound));
    assert_eq!(fallible(5).await.unwrap(), "found 5");
    assert_eq!(fallible(5).await.unwrap(), "found 5");
    assert_eq!(FALLIBLE_CALLS.load(Ordering::SeqCst), 3);
    assert!(default.has_key("fallible:5", ()).await.unwrap());

    // Option with cache_none: None is cached too.
    assert_eq!(find("seven".into()).await, Some(7));
    assert_eq!(find("seven".into()).await, Some(7));
    assert_eq!(find("eight".into()).await, None);
    assert_eq!(find("eight".into()).await, None);
    assert_eq!(FIND_CALLS.load(Ordering::SeqCst), 2);

    // Single-flight: concurrent calls with the same key run the body once.
    let calls: Vec<_> = (0..20).map(|_| tokio::spawn(slow_square(12))).collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), 144);
    }
    assert_eq!(SLOW_CALLS.load(Ordering::SeqCst), 1);

    // Methods: &self is not part of the key; associated companions.
    let repo = Repo {
        calls: AtomicUsize::new(0),
    };
    assert_eq!(repo.name(3).await, "name 3");
    assert_eq!(repo.name(3).await, "name 3");
    assert_eq!(repo.calls.load(Ordering::SeqCst), 1);
    Repo::name_invalidate(3).await;
    assert_eq!(repo.name(3).await, "name 3");
    assert_eq!(repo.calls.load(Ordering::SeqCst), 2);
    assert_eq!(repo.name_uncached(3).await, "name 3");
    assert_eq!(repo.calls.load(Ordering::SeqCst), 3);

    // #[cache_page]: extractors keep working, the layer's semantics apply.
    let app = Router::new()
        .route("/users/{id}", get(user_page))
        .route("/", get(home))
        .with_state(AppState { name: "demo" });
    let first = fetch(&app, "/users/7?page=2").await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.text(),
        r#"{"id":7,"page":2,"lang":"en","app":"demo"}"#
    );
    assert!(
        first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );
    let second = fetch(&app, "/users/7?page=2").await;
    assert!(second.is_hit(), "{}", second.cache_status());
    assert_eq!(second.text(), first.text());
    let fr = send(
        &app,
        get_with("/users/7?page=2", &[("accept-language", "fr")]),
    )
    .await;
    assert!(
        fr.text().contains(r#""lang":"fr""#),
        "vary = [accept-language] keeps variants apart"
    );
    assert_eq!(PAGE_CALLS.load(Ordering::SeqCst), 2);
    let etagless_304 = send(
        &app,
        get_with(
            "/users/7?page=2",
            &[("if-modified-since", "Mon, 01 Jan 2024 00:00:00 GMT")],
        ),
    )
    .await;
    assert_eq!(etagless_304.status, 200, "no validator: a full response");
    // ttl beats the response's (absent) freshness: stored for 5 minutes.
    let ttl = second.status_ttl();
    assert!((295..=300).contains(&ttl), "ttl {ttl}");
    // Tags purge pages too.
    Caches::global()
        .unwrap()
        .cache("pages")
        .unwrap()
        .purge_tag("users")
        .await
        .unwrap();
    assert!(!fetch(&app, "/users/7?page=2").await.is_hit());

    // unless: the predicate bypasses the cache.
    let before = PAGE_CALLS.load(Ordering::SeqCst);
    fetch(&app, "/").await;
    assert!(fetch(&app, "/").await.is_hit());
    let admin = send(&app, get_with("/", &[("x-admin", "1")])).await;
    assert_eq!(admin.cache_status(), "cachette; fwd=bypass");
    assert_eq!(PAGE_CALLS.load(Ordering::SeqCst), before + 2);

    // The pages alias is memory + Redis: the stored page is in the master.
    let scanned = master
        .command("KEYS cachette:pages:k:*")
        .unwrap_or_default();
    assert!(
        !scanned.is_empty() && scanned != "*0",
        "pages stored in Redis: {scanned}"
    );

    // On memory + Redis: the result is in Redis; a cache failure never fails the call.
    assert_eq!(shared_lookup(4).await, 40);
    assert_eq!(shared_lookup(4).await, 40);
    assert_eq!(SHARED_CALLS.load(Ordering::SeqCst), 1);
    let in_redis = master.command("EXISTS cachette:shared:k::1:shared:4");
    assert_eq!(in_redis.as_deref(), Some(":1"), "stored in the master");
    drop(master); // Redis gone
    assert_eq!(
        shared_lookup(5).await,
        50,
        "the body runs when the cache fails"
    );
    assert_eq!(
        shared_lookup(4).await,
        40,
        "answered from memory or recomputed, never an error"
    );
}
