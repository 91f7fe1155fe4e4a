//! The `cachette` binary run as a process: `check`, `stats`, `purge` and
//! `journal` against real `redis-server` processes, usage errors and exit
//! codes, and `proxy --admin` with the remote commands.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, body::Body, http::Request, routing::get};
use cachette::Caches;
use cachette_testkit::{RedisServer, free_port};
use common::{HttpClient, Running, UpstreamServer, cachette, wait_for_port};
use http_body_util::BodyExt;
use tower::ServiceExt;

const TOKEN: &str = "test-token-0123456789";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A `pages` cache on memory + one Redis master, optionally journaled.
fn redis_settings(redis: &RedisServer, journal: Option<&Path>) -> String {
    let mut text = format!(
        r#"
[redis.main]
url = "{}"
master_timeout = "300ms"
connect_timeout = "200ms"

[caches.pages]
tiers = ["memory", "master"]
[caches.pages.http]
default_ttl = "60s"
"#,
        redis.url()
    );
    if let Some(path) = journal {
        text.push_str(&format!(
            "[caches.pages.journal]\npath = \"{}\"\nprobe_interval = \"100ms\"\n",
            path.display()
        ));
    }
    text
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(output: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: stdout {} stderr {}", stdout(output), stderr(output)))
}

/// The cache entries in Redis (`{namespace}k:...`; not the tombstones and
/// purge marks the scripts keep beside them).
async fn redis_keys(redis: &RedisServer) -> Vec<String> {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("*:k:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.sort();
    keys
}

#[test]
fn check_accepts_a_good_file_and_rejects_a_bad_one_with_the_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(
        dir.path(),
        "good.toml",
        "[caches.default]\ntimeout = \"5m\"\n[caches.default.memory]\nmax_bytes = \"8MiB\"\n",
    );
    let output = cachette().arg("check").arg(&good).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stdout(&output).contains("ok"), "{}", stdout(&output));
    assert!(stdout(&output).contains("default [memory]"));

    let bad = write(
        dir.path(),
        "bad.toml",
        "[caches.default]\ntimeout = \"5m\"\n[caches.default.memory]\nmax_bytes = \"lots\"\n",
    );
    let output = cachette().arg("check").arg(&bad).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(err.contains("caches.default.memory.max_bytes"), "{err}");
    assert!(err.contains("bad.toml"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");

    let unknown = write(dir.path(), "unknown.toml", "[caches.default]\ntierz = []\n");
    let output = cachette().arg("check").arg(&unknown).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("tierz"), "{}", stderr(&output));

    let output = cachette()
        .arg("check")
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("does not exist"));
}

#[test]
fn usage_errors_exit_with_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "c.toml", "[caches.default]\n");
    // No target.
    let output = cachette()
        .args(["purge", "--cache", "default", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    // Two targets.
    let output = cachette()
        .args([
            "purge", "--cache", "default", "--all", "--tag", "t", "--config",
        ])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    // Neither --config nor --admin.
    assert_eq!(
        cachette().arg("stats").output().unwrap().status.code(),
        Some(2)
    );
    // An unknown cache.
    let output = cachette()
        .args(["stats", "--cache", "nope", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("no cache named `nope`"),
        "{}",
        stderr(&output)
    );
    // A memory-only cache cannot be purged from another process.
    let output = cachette()
        .args(["purge", "--cache", "default", "--all", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--admin"), "{}", stderr(&output));
    // --help on every command.
    for command in ["proxy", "check", "stats", "purge", "journal"] {
        let output = cachette().args([command, "--help"]).output().unwrap();
        assert_eq!(output.status.code(), Some(0), "{command} --help");
        assert!(stdout(&output).contains("Usage"), "{command} --help");
    }
}

async fn page(app: &Router, path: &str) -> String {
    let response = app
        .clone()
        .oneshot(
            Request::get(format!("http://shop.test{path}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let _ = response.into_body().collect().await.unwrap();
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_by_prefix_removes_only_matching_keys_on_every_tier_and_node() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "caches.toml", &redis_settings(&redis, None));

    // This test process is a node of the application: memory + master.
    let caches = Caches::from_file(&config).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let app = Router::new()
        .fallback(get(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { "page" }
        }))
        .layer(caches.layer("pages").unwrap());
    let paths = ["/api/a", "/api/b?x=1", "/apis", "/other"];
    for path in paths {
        assert!(page(&app, path).await.contains("stored"));
        assert!(page(&app, path).await.contains("hit"));
    }
    assert_eq!(redis_keys(&redis).await.len(), 4);

    let output = cachette()
        .args(["purge", "--cache", "pages", "--prefix", "/api/", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let out = stdout(&output);
    assert!(
        out.contains("purged prefix /api/ from cache pages: 2 keys removed"),
        "{out}"
    );
    assert!(out.contains("master: done"), "{out}");

    let left = redis_keys(&redis).await;
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left.iter().any(|k| k.ends_with("shop.test/apis")),
        "{left:?}"
    );
    assert!(
        left.iter().any(|k| k.ends_with("shop.test/other")),
        "{left:?}"
    );

    // The bus carried the purge to this node's memory tier.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = page(&app, "/api/a").await;
        if status.contains("fwd=miss") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "memory still serves /api/a: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(page(&app, "/apis").await.contains("hit"));
    assert!(page(&app, "/other").await.contains("hit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_show_the_journal_during_an_outage_and_replay_drains_it() {
    let mut redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("pages.journal");
    let config = write(
        dir.path(),
        "caches.toml",
        &redis_settings(&redis, Some(&journal)),
    );
    let stats = || {
        let output = cachette()
            .args(["stats", "--cache", "pages", "--json", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        json(&output)["caches"][0].clone()
    };
    let healthy = stats();
    assert_eq!(healthy["status"], "ok");
    assert_eq!(healthy["journal"]["depth"], 0);
    assert_eq!(healthy["tiers"][1]["role"], "master");
    assert_eq!(healthy["tiers"][1]["address"], redis.addr());

    redis.kill();
    let output = cachette()
        .args(["purge", "--cache", "pages", "--tag", "users", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "journaled is not applied yet"
    );
    assert!(
        stdout(&output).contains("master: journaled"),
        "{}",
        stdout(&output)
    );
    assert!(stderr(&output).contains("journaled"), "{}", stderr(&output));
    assert_eq!(stderr(&output).trim_end().lines().count(), 1);

    let down = stats();
    assert_eq!(down["status"], "degraded");
    assert_eq!(down["tiers"][1]["up"], false);
    assert_eq!(down["journal"]["depth"], 1);
    assert!(down["journal"]["oldest_age_secs"].as_f64().unwrap() >= 0.0);

    let text = cachette()
        .args(["stats", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = stdout(&text);
    assert!(text.contains("cache pages: degraded"), "{text}");
    assert!(text.contains("depth 1"), "{text}");
    assert!(text.contains("DOWN"), "{text}");

    let status = cachette()
        .args(["journal", "status", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
    assert!(
        stdout(&status).contains("purge tag users"),
        "{}",
        stdout(&status)
    );

    let replay = cachette()
        .args(["journal", "replay", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(replay.status.code(), Some(1), "the master is still down");

    redis.restart();
    let replay = cachette()
        .args(["journal", "replay", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(replay.status.code(), Some(0), "{}", stderr(&replay));
    assert!(stdout(&replay).contains("0 left"), "{}", stdout(&replay));
    let recovered = stats();
    assert_eq!(recovered["journal"]["depth"], 0);
    assert_eq!(recovered["status"], "ok");
}

async fn cache_status(client: &HttpClient, url: &str) -> String {
    client.get(url, &[]).await.header("cache-status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_process_with_admin_routes_and_remote_commands() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let upstream = UpstreamServer::start(Router::new().route(
        "/cached",
        get(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { ([("cache-control", "max-age=60")], "from upstream") }
        }),
    ));
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "caches.toml",
        &format!("[admin]\ntoken = \"{TOKEN}\"\n[caches.default]\n"),
    );
    let listen = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let _proxy = Running::spawn(&[
        "proxy",
        "--listen",
        &listen,
        "--upstream",
        &upstream.url(),
        "--admin",
        &admin,
        "--config",
        config.to_str().unwrap(),
    ]);
    wait_for_port(&listen);
    wait_for_port(&admin);
    let client = HttpClient::new();
    let url = format!("http://{listen}/cached");
    assert!(cache_status(&client, &url).await.contains("fwd=miss"));
    assert!(cache_status(&client, &url).await.contains("hit"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let health = client.get(&format!("http://{admin}/health"), &[]).await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
    let metrics = client.get(&format!("http://{admin}/metrics"), &[]).await;
    assert!(
        metrics
            .text()
            .contains("cachette_hits_total{cache=\"default\"} 1"),
        "{}",
        metrics.text()
    );

    let admin_url = format!("http://{admin}");
    let output = cachette()
        .args(["stats", "--json", "--admin", &admin_url])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(json(&output)["caches"][0]["counters"]["hits"], 1);

    let wrong = cachette()
        .args([
            "purge", "--cache", "default", "--url", &url, "--admin", &admin_url,
        ])
        .args(["--token", "not-the-token-at-all"])
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(2));
    assert!(stderr(&wrong).contains("403"), "{}", stderr(&wrong));

    let purge = cachette()
        .args([
            "purge", "--cache", "default", "--url", &url, "--admin", &admin_url,
        ])
        .env("CACHETTE_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_eq!(purge.status.code(), Some(0), "{}", stderr(&purge));
    assert!(
        stdout(&purge).contains("memory: done"),
        "{}",
        stdout(&purge)
    );
    assert!(cache_status(&client, &url).await.contains("fwd=miss"));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A `pages` cache on a fleet of the two servers, as the node at `this`.
fn peers_settings(servers: &[&RedisServer], this: &RedisServer, dir: &Path, node: &str) -> String {
    let peers: Vec<String> = servers.iter().map(|s| format!("\"{}\"", s.url())).collect();
    format!(
        r#"
[redis.fleet]
peers = [{}]
self = "{}"
master_timeout = "300ms"
connect_timeout = "200ms"

[caches.pages]
tiers = ["memory", "local"]
journal = {{ path = "{}" }}
[caches.pages.http]
default_ttl = "60s"
"#,
        peers.join(", "),
        this.url(),
        dir.join(format!("{node}.journal")).display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_copies_the_newest_entries_of_a_peer_into_a_joining_node() {
    let a = RedisServer::start();
    let b = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let a_config = write(
        dir.path(),
        "a.toml",
        &peers_settings(&[&a, &b], &a, dir.path(), "a"),
    );
    let b_config = write(
        dir.path(),
        "b.toml",
        &peers_settings(&[&a, &b], &b, dir.path(), "b"),
    );

    // Node A serves alone; node B joins later.
    let caches = Caches::from_file(&a_config).await.unwrap();
    let app = Router::new()
        .fallback(get(|| async { "page" }))
        .layer(caches.layer("pages").unwrap());
    for n in 0..5 {
        assert!(page(&app, &format!("/p/{n}")).await.contains("stored"));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(redis_keys(&b).await.is_empty());
    assert_eq!(
        redis_keys(&a).await.len(),
        5,
        "a node's first fills are its own"
    );

    let output = cachette()
        .args(["warm", "--cache", "pages", "--max-entries", "3", "--from"])
        .arg(a.url())
        .arg("--config")
        .arg(&b_config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let out = stdout(&output);
    assert!(out.contains("cache pages: 3 entries ("), "{out}");
    assert!(out.contains("of its 5 entries looked at"), "{out}");
    // The three most recently stored, with their remaining lifetime.
    let copied = redis_keys(&b).await;
    assert_eq!(copied.len(), 3, "{copied:?}");
    for n in 2..5 {
        assert!(
            copied.iter().any(|k| k.ends_with(&format!("/p/{n}"))),
            "{copied:?}"
        );
    }
    let client = redis::Client::open(b.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&copied[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        (50_000..=60_000).contains(&ttl),
        "remaining TTL kept: {ttl}"
    );

    // Not a fleet, or a peer that is not one: clear errors.
    let output = cachette()
        .args([
            "warm",
            "--cache",
            "pages",
            "--from",
            "redis://10.9.9.9:6379",
            "--config",
        ])
        .arg(&b_config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("10.9.9.9:6379 is not another node of this fleet"),
        "{}",
        stderr(&output)
    );
}
