//! The behaviours of Django's cache test suite that apply, each run on a
//! memory-only cache and on memory + local replica + master with real Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use cachette::{Cache, CacheError, Caches, Opts, Timeout, Ttl, settings::Settings};
use cachette_testkit::RedisServer;
use serde::{Deserialize, Serialize};

/// Caches plus the servers they need, kept alive for the test.
struct Env {
    caches: Caches,
    _servers: Vec<RedisServer>,
    master_url: Option<String>,
}

impl Env {
    async fn memory() -> Self {
        let settings = Settings::from_toml_str(
            "test.toml",
            r#"
            [caches.default]
            [caches.other]
            key_prefix = "other"
            "#,
        )
        .unwrap();
        Self {
            caches: Caches::from_settings(settings).await.unwrap(),
            _servers: Vec::new(),
            master_url: None,
        }
    }

    async fn redis() -> Self {
        let master = RedisServer::start();
        let replica = RedisServer::replica_of(&master);
        let text = format!(
            r#"
            [redis.main]
            master = "{master}"
            local = "{local}"
            master_timeout = "500ms"
            local_timeout = "200ms"

            [caches.default]
            tiers = ["memory", "local", "master"]
            namespace = "dj:"

            [caches.other]
            tiers = ["memory", "local", "master"]
            namespace = "dj:"
            key_prefix = "other"
            "#,
            master = master.url(),
            local = replica.url()
        );
        let settings = Settings::from_toml_str("test.toml", &text).unwrap();
        let caches = Caches::from_settings(settings).await.unwrap();
        // Let the bus subscribe (its first subscription clears memory).
        let redis = caches.cache("default").unwrap().redis().unwrap().clone();
        for _ in 0..100 {
            if redis.stats().await.bus_subscriptions >= 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            caches,
            master_url: Some(master.url()),
            _servers: vec![master, replica],
        }
    }

    fn cache(&self) -> Cache {
        self.caches.cache("default").unwrap()
    }
}

macro_rules! on_both {
    ($name:ident, |$env:ident, $cache:ident| $body:block) => {
        mod $name {
            use super::*;

            async fn run($env: Env) {
                let $cache = $env.cache();
                $body
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                run(Env::memory().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory_local_master() {
                run(Env::redis().await).await;
            }
        }
    };
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
    tags: Vec<String>,
}

on_both!(simple_get_set_delete, |env, cache| {
    let _ = &env;
    assert_eq!(cache.get::<String>("key", ()).await.unwrap(), None);
    cache.set("key", "value", ()).await.unwrap();
    assert_eq!(
        cache.get::<String>("key", ()).await.unwrap().as_deref(),
        Some("value")
    );
    assert!(cache.delete("key", ()).await.unwrap());
    assert!(
        !cache.delete("key", ()).await.unwrap(),
        "deleting a missing key says so"
    );
    assert_eq!(cache.get::<String>("key", ()).await.unwrap(), None);
    let ada = User {
        id: 1,
        name: "Ada".into(),
        tags: vec!["admin".into()],
    };
    cache.set("user:1", &ada, ()).await.unwrap();
    assert_eq!(cache.get::<User>("user:1", ()).await.unwrap(), Some(ada));
    // A value of another shape is a miss, not an error.
    assert_eq!(cache.get::<Vec<u8>>("user:1", ()).await.unwrap(), None);
    cache
        .set_bytes("raw", bytes::Bytes::from_static(b"\x00\x01"), ())
        .await
        .unwrap();
    assert_eq!(
        cache.get_bytes("raw", ()).await.unwrap().unwrap().as_ref(),
        b"\x00\x01"
    );
});

on_both!(add_does_not_overwrite, |env, cache| {
    let _ = &env;
    assert!(cache.add("addkey1", "value", ()).await.unwrap());
    assert!(!cache.add("addkey1", "newvalue", ()).await.unwrap());
    assert_eq!(
        cache.get::<String>("addkey1", ()).await.unwrap().as_deref(),
        Some("value")
    );
});

on_both!(get_or_set_runs_the_producer_once, |env, cache| {
    let _ = &env;
    let calls = Arc::new(AtomicUsize::new(0));
    let produce = |calls: Arc<AtomicUsize>| async move {
        calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        "produced".to_owned()
    };
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (cache, calls) = (cache.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_set("projector", || produce(calls), ())
                .await
                .unwrap()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), "produced");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "concurrent callers ran the producer once"
    );
    let again: String = cache
        .get_or_set("projector", || async { "other".to_owned() }, ())
        .await
        .unwrap();
    assert_eq!(again, "produced");
});

on_both!(incr_and_decr, |env, cache| {
    let _ = &env;
    cache.set("answer", &41, ()).await.unwrap();
    assert_eq!(cache.incr("answer", 1, ()).await.unwrap(), 42);
    assert_eq!(cache.get::<i64>("answer", ()).await.unwrap(), Some(42));
    assert_eq!(cache.incr("answer", 10, ()).await.unwrap(), 52);
    assert_eq!(cache.decr("answer", 12, ()).await.unwrap(), 40);
    assert_eq!(
        cache.get::<u8>("answer", ()).await.unwrap(),
        Some(40),
        "any integer type reads a counter"
    );
    assert!(
        matches!(cache.incr("does_not_exist", 1, ()).await, Err(CacheError::KeyNotFound(k)) if k == "does_not_exist")
    );
    cache.set("text", "abc", ()).await.unwrap();
    let not_counter = cache.incr("text", 1, ()).await;
    assert!(
        matches!(not_counter, Err(CacheError::NotACounter(_))),
        "{not_counter:?}"
    );
});

on_both!(
    versions_are_isolated_and_incr_version_moves_the_value,
    |env, cache| {
        let _ = &env;
        cache.set("answer1", &42, ()).await.unwrap();
        cache
            .set("answer1", &37, Opts::new().version(2))
            .await
            .unwrap();
        assert_eq!(cache.get::<i64>("answer1", ()).await.unwrap(), Some(42));
        assert_eq!(
            cache
                .get::<i64>("answer1", Opts::new().version(2))
                .await
                .unwrap(),
            Some(37)
        );
        assert_eq!(
            cache
                .get::<i64>("answer1", Opts::new().version(3))
                .await
                .unwrap(),
            None
        );

        cache.set("moving", "value", ()).await.unwrap();
        assert_eq!(cache.incr_version("moving", 1, ()).await.unwrap(), 2);
        assert_eq!(cache.get::<String>("moving", ()).await.unwrap(), None);
        assert_eq!(
            cache
                .get::<String>("moving", Opts::new().version(2))
                .await
                .unwrap()
                .as_deref(),
            Some("value")
        );
        assert_eq!(
            cache
                .decr_version("moving", 1, Opts::new().version(2))
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            cache.get::<String>("moving", ()).await.unwrap().as_deref(),
            Some("value")
        );
        assert!(matches!(
            cache.incr_version("missing", 1, ()).await,
            Err(CacheError::KeyNotFound(_))
        ));
    }
);

on_both!(
    key_prefixes_are_isolated_and_clear_touches_only_its_own,
    |env, cache| {
        let other = env.caches.cache("other").unwrap();
        cache.set("shared", "default's", ()).await.unwrap();
        assert_eq!(
            other.get::<String>("shared", ()).await.unwrap(),
            None,
            "prefix isolation"
        );
        other.set("shared", "other's", ()).await.unwrap();
        cache
            .set("v2", "version 2", Opts::new().version(2))
            .await
            .unwrap();
        if let Some(url) = &env.master_url {
            let mut conn = redis::Client::open(url.as_str())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let _: () = redis::cmd("SET")
                .arg("unrelated")
                .arg("data")
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        cache.clear(()).await.unwrap();
        assert_eq!(cache.get::<String>("shared", ()).await.unwrap(), None);
        assert_eq!(
            other.get::<String>("shared", ()).await.unwrap().as_deref(),
            Some("other's"),
            "another cache's keys survive"
        );
        assert_eq!(
            cache
                .get::<String>("v2", Opts::new().version(2))
                .await
                .unwrap()
                .as_deref(),
            Some("version 2"),
            "other versions survive"
        );
        if let Some(url) = &env.master_url {
            let mut conn = redis::Client::open(url.as_str())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let kept: Option<String> = redis::cmd("GET")
                .arg("unrelated")
                .query_async(&mut conn)
                .await
                .unwrap();
            assert_eq!(kept.as_deref(), Some("data"), "never FLUSHDB");
        }
    }
);

on_both!(touch_extends_and_expiry_removes, |env, cache| {
    let _ = &env;
    cache
        .set("expire1", "very quickly", Duration::from_secs(1))
        .await
        .unwrap();
    cache
        .set("expire2", "touched", Duration::from_secs(1))
        .await
        .unwrap();
    assert!(
        cache
            .touch("expire2", Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert!(!cache.touch("missing", ()).await.unwrap());
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(cache.get::<String>("expire1", ()).await.unwrap(), None);
    assert!(!cache.has_key("expire1", ()).await.unwrap());
    assert_eq!(
        cache.get::<String>("expire2", ()).await.unwrap().as_deref(),
        Some("touched")
    );
    match cache.ttl("expire2", ()).await.unwrap() {
        Some(Ttl::Remaining(left)) => assert!(
            left > Duration::from_secs(50) && left <= Duration::from_secs(60),
            "{left:?}"
        ),
        other => panic!("unexpected ttl {other:?}"),
    }
});

on_both!(
    timeout_zero_stores_nothing_and_none_never_expires,
    |env, cache| {
        let _ = &env;
        cache.set("key1", "eggs", Duration::ZERO).await.unwrap();
        assert_eq!(cache.get::<String>("key1", ()).await.unwrap(), None);
        cache.set("key1", "spam", ()).await.unwrap();
        cache.set("key1", "eggs", Duration::ZERO).await.unwrap();
        assert_eq!(
            cache.get::<String>("key1", ()).await.unwrap(),
            None,
            "timeout 0 removes an older value"
        );
        assert!(cache.add("key2", "ham", Duration::ZERO).await.unwrap());
        assert_eq!(cache.get::<String>("key2", ()).await.unwrap(), None);

        cache.set("forever", "bacon", Timeout::Never).await.unwrap();
        assert_eq!(cache.ttl("forever", ()).await.unwrap(), Some(Ttl::Never));
        assert_eq!(
            cache.get::<String>("forever", ()).await.unwrap().as_deref(),
            Some("bacon")
        );
        cache
            .set("later", "sausage", Duration::from_secs(30))
            .await
            .unwrap();
        assert!(cache.persist("later", ()).await.unwrap());
        assert_eq!(cache.ttl("later", ()).await.unwrap(), Some(Ttl::Never));
        assert_eq!(cache.ttl("missing", ()).await.unwrap(), None);
    }
);

on_both!(many_at_once, |env, cache| {
    let _ = &env;
    let too_long = "k".repeat(2000);
    let failed = cache
        .set_many([("a", &1), ("b", &2), (too_long.as_str(), &3)], ())
        .await
        .unwrap();
    assert_eq!(
        failed,
        vec![too_long.clone()],
        "keys that cannot be stored are returned"
    );
    let got = cache.get_many::<i64>(["a", "b", "c"], ()).await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!((got["a"], got["b"]), (1, 2));
    cache.delete_many(["a", "b"], ()).await.unwrap();
    assert!(
        cache
            .get_many::<i64>(["a", "b"], ())
            .await
            .unwrap()
            .is_empty()
    );
});

on_both!(delete_pattern_and_purge_tag, |env, cache| {
    let _ = &env;
    for key in ["user:1:name", "user:2:name", "user:1:mail", "order:1"] {
        cache.set(key, "v", ()).await.unwrap();
    }
    cache.delete_pattern("user:*:name", ()).await.unwrap();
    assert!(!cache.has_key("user:1:name", ()).await.unwrap());
    assert!(!cache.has_key("user:2:name", ()).await.unwrap());
    assert!(cache.has_key("user:1:mail", ()).await.unwrap());
    assert!(cache.has_key("order:1", ()).await.unwrap());

    cache
        .set("p1", "v", Opts::new().tags(["products"]))
        .await
        .unwrap();
    cache
        .set("p2", "v", Opts::new().tags(["products", "sale"]))
        .await
        .unwrap();
    cache
        .set("p3", "v", Opts::new().tags(["sale"]))
        .await
        .unwrap();
    cache.purge_tag("products").await.unwrap();
    assert!(!cache.has_key("p1", ()).await.unwrap());
    assert!(!cache.has_key("p2", ()).await.unwrap());
    assert!(cache.has_key("p3", ()).await.unwrap());
});

on_both!(keys_are_any_string_django_accepts, |env, cache| {
    let _ = &env;
    // Django's LocMem and Redis backends take any string key.
    for key in [
        "key with spaces and 清",
        "bad\nkey",
        "tab\tkey",
        "50%",
        "a%20b",
        "a b",
    ] {
        cache.set(key, key, ()).await.unwrap();
    }
    for key in [
        "key with spaces and 清",
        "bad\nkey",
        "tab\tkey",
        "50%",
        "a%20b",
        "a b",
    ] {
        assert_eq!(
            cache.get::<String>(key, ()).await.unwrap().as_deref(),
            Some(key),
            "{key:?} is its own key (no collision through the escaping)"
        );
    }
    cache.delete_pattern("a *", ()).await.unwrap();
    assert_eq!(cache.get::<String>("a b", ()).await.unwrap(), None);
    assert!(cache.get::<String>("a%20b", ()).await.unwrap().is_some());
    // What cannot be stored is still a typed error.
    let long = "k".repeat(2000);
    assert!(matches!(
        cache.set(&long, "v", ()).await,
        Err(CacheError::InvalidKey(_))
    ));
    assert_eq!(
        cache.make_key("k", None).unwrap().as_str(),
        ":1:k",
        "Django's key_prefix:version:key"
    );
});

#[tokio::test]
async fn a_per_call_deadline_bounds_the_call() {
    let env = Env::memory().await;
    let cache = env.cache();
    let slow = cache
        .get_or_set(
            "slow",
            || async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                1u8
            },
            Opts::new().deadline(Duration::from_millis(50)),
        )
        .await;
    assert!(matches!(slow, Err(CacheError::Deadline(_))));
}

#[tokio::test]
async fn key_functions_are_registered_in_code() {
    let settings = Settings::from_toml_str(
        "t",
        "[caches.default]\nkey_function = \"upper\"\nkey_prefix = \"p\"",
    )
    .unwrap();
    let caches = Caches::builder()
        .key_function("upper", |key, prefix, version| {
            format!("{prefix}-{version}-{}", key.to_uppercase())
        })
        .from_settings(settings.clone())
        .await
        .unwrap();
    assert_eq!(
        caches
            .cache("default")
            .unwrap()
            .make_key("abc", None)
            .unwrap()
            .as_str(),
        "p-1-ABC"
    );
    let missing = Caches::from_settings(settings).await.unwrap_err();
    assert_eq!(
        missing.to_string(),
        "cache `default`: key_function `upper` is not registered (registered: none)"
    );
}

#[tokio::test]
async fn global_registry_needs_install() {
    assert!(matches!(
        Caches::global(),
        Err(cachette::Error::NotInstalled)
    ));
    Caches::memory_only().install().unwrap();
    assert!(Caches::global().unwrap().cache("default").is_ok());
    assert!(matches!(
        Caches::memory_only().install(),
        Err(cachette::Error::AlreadyInstalled)
    ));
}

on_both!(reads_count_as_hits_and_misses_in_the_stats, |env, cache| {
    let before = cache.stats().cache;
    cache.set("counted", &1u8, ()).await.unwrap();
    assert_eq!(cache.get::<u8>("counted", ()).await.unwrap(), Some(1));
    assert_eq!(cache.get::<u8>("absent", ()).await.unwrap(), None);
    let many = cache
        .get_many::<u8>(&["counted", "absent"], ())
        .await
        .unwrap();
    assert_eq!(many.len(), 1);
    let after = cache.stats().cache;
    assert_eq!(after.hits - before.hits, 2);
    assert_eq!(after.misses - before.misses, 2);
    assert_eq!(after.stored - before.stored, 1);
    drop(env);
});

/// Two aliases over one Redis namespace in one process (Django's "several
/// aliases over one store"): each sees the other's deletes and increments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sibling_aliases_over_one_namespace_see_each_others_changes() {
    let master = RedisServer::start();
    let text = format!(
        r#"
        [redis.main]
        url = "{}"
        master_timeout = "500ms"

        [caches.default]
        tiers = ["memory", "master"]
        namespace = "sib:"

        [caches.v2]
        tiers = ["memory", "master"]
        namespace = "sib:"
        "#,
        master.url()
    );
    let caches = Caches::from_settings(Settings::from_toml_str("test.toml", &text).unwrap())
        .await
        .unwrap();
    let (default, v2) = (
        caches.cache("default").unwrap(),
        caches.cache("v2").unwrap(),
    );
    for cache in [&default, &v2] {
        let redis = cache.redis().unwrap().clone();
        for _ in 0..100 {
            if redis.stats().await.bus_subscriptions >= 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    default.set("profile", "old", ()).await.unwrap();
    assert_eq!(
        v2.get::<String>("profile", ()).await.unwrap().as_deref(),
        Some("old")
    );
    assert_eq!(
        default
            .get::<String>("profile", ())
            .await
            .unwrap()
            .as_deref(),
        Some("old")
    );
    v2.delete("profile", ()).await.unwrap();
    let mut gone = false;
    for _ in 0..50 {
        if default
            .get::<String>("profile", ())
            .await
            .unwrap()
            .is_none()
        {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        gone,
        "the sibling alias's delete reached this alias's memory"
    );

    default.set("visits", &1i64, ()).await.unwrap();
    assert_eq!(v2.get::<i64>("visits", ()).await.unwrap(), Some(1));
    assert_eq!(default.incr("visits", 1, ()).await.unwrap(), 2);
    let mut seen = None;
    for _ in 0..50 {
        seen = v2.get::<i64>("visits", ()).await.unwrap();
        if seen == Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, Some(2), "an increment reaches the other memory tiers");
}

on_both!(get_or_set_keeps_the_first_writer, |env, cache| {
    let _ = &env;
    // Another caller (or node) stores the key while this one produces.
    let writer = cache.clone();
    let value: String = cache
        .get_or_set(
            "race",
            || async move {
                writer.set("race", "first", ()).await.unwrap();
                "second".to_owned()
            },
            (),
        )
        .await
        .unwrap();
    assert_eq!(value, "first", "Django's get_or_set: add, then read back");
    assert_eq!(
        cache.get::<String>("race", ()).await.unwrap().as_deref(),
        Some("first")
    );
});

on_both!(
    add_with_timeout_zero_tells_whether_the_key_was_absent,
    |env, cache| {
        let _ = &env;
        cache.set("present", "v", ()).await.unwrap();
        assert!(!cache.add("present", "x", Duration::ZERO).await.unwrap());
        assert!(cache.add("absent", "x", Duration::ZERO).await.unwrap());
        assert_eq!(
            cache.get::<String>("absent", ()).await.unwrap(),
            None,
            "stores nothing"
        );
    }
);

on_both!(errors_name_the_callers_key, |env, cache| {
    let _ = &env;
    cache.set("text", "not a number", ()).await.unwrap();
    let error = cache.incr("text", 1, ()).await.unwrap_err().to_string();
    assert!(error.contains("`text`"), "{error}");
    assert!(!error.contains(":1:"), "not the stored key: {error}");
    cache.set("big", &i64::MAX, ()).await.unwrap();
    let error = cache.incr("big", 1, ()).await.unwrap_err().to_string();
    assert!(error.contains("`big`") && !error.contains(":1:"), "{error}");
    let error = cache.incr("missing", 1, ()).await.unwrap_err().to_string();
    assert!(error.contains("`missing`"), "{error}");
});
