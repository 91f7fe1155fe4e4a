//! The durable journal against real Redis: outages are journaled and replayed
//! in order, without resurrecting deleted or expired data and without
//! overwriting newer values; a SIGKILLed process replays after restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, SystemTime},
};

use cachette_core::{Backend, Journal};
use cachette_moka::MemoryTier;
use cachette_redis::{JournalConfig, RedisTiers, Topology};
use cachette_testkit::{RedisServer, free_port};
use common::*;

fn journal_config(path: &std::path::Path, probe: Duration) -> JournalConfig {
    let mut journal = JournalConfig::new(path);
    journal.probe_interval = probe;
    journal
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_journaled_and_replayed_without_resurrection_or_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = RedisServer::start();
    let cfg = config(Topology::single(master.url()), "j1:").journal(journal_config(
        &dir.path().join("j"),
        Duration::from_secs(3600),
    ));
    let redis = connect(cfg).await;
    let memory = MemoryTier::default();
    let cache = redis.tiered("j1", Some(Arc::new(memory.clone())));
    let journal = redis.journal().unwrap().clone();

    master.kill();
    let ttl = Duration::from_secs(60);
    let written = cache
        .set(&key("written"), entry("during outage", ttl))
        .await;
    assert_eq!(written.journaled.len(), 1, "{written:?}");
    assert!(written.is_complete(), "nothing lost: {written:?}");
    assert!(
        memory.get(&key("written")).await.unwrap().is_some(),
        "this node still sees its own write"
    );
    // Set then delete during the outage: the delete supersedes the set.
    let _ = cache.set(&key("deleted"), entry("gone", ttl)).await;
    assert!(cache.delete(&key("deleted")).await.is_complete());
    // An older value for a key another node will write after the restart.
    let old = entry_at(
        "older",
        SystemTime::now() - Duration::from_secs(5),
        ttl,
        &[],
    );
    let _ = cache.set(&key("contended"), old).await;
    // An entry that expires before the master is back.
    let _ = cache
        .set(&key("short"), entry("brief", Duration::from_millis(300)))
        .await;
    assert_eq!(
        journal.depth(),
        4,
        "written, deleted (delete only), contended, short"
    );

    tokio::time::sleep(Duration::from_millis(400)).await;
    master.restart();
    let mut conn = raw(&master.url()).await;
    let newer = entry("newer from another node", ttl).encode();
    let _: () = redis::cmd("SET")
        .arg("j1:k:contended")
        .arg(newer.as_ref())
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .unwrap();

    assert_eq!(redis.replay_journal().await.unwrap(), 0, "journal drained");
    let raw_written: Option<Vec<u8>> = redis::cmd("GET")
        .arg("j1:k:written")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(raw_written.is_some(), "the outage write reached the master");
    let ttl_left = pttl(&master.url(), "j1:k:written").await;
    assert!(
        (55_000..=60_000).contains(&ttl_left),
        "with its remaining TTL: {ttl_left}"
    );
    assert!(
        !exists(&master.url(), "j1:k:deleted").await,
        "deleted during the outage: not resurrected"
    );
    assert!(
        !exists(&master.url(), "j1:k:short").await,
        "expired while waiting: not resurrected"
    );
    // The shared connection reports the outage once more before it reconnects.
    assert!(
        eventually(Duration::from_secs(2), || async {
            redis.master_tier().health().await.is_ok()
        })
        .await
    );
    let contended = redis
        .master_tier()
        .get(&key("contended"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        body(&contended),
        "newer from another node",
        "an older journaled value does not overwrite a newer one"
    );
    let stats = journal.stats().await;
    assert_eq!(stats.depth, 0);
    // Applied: `written` and the delete of `deleted`; obsolete: `contended`
    // (newer on the master) and `short` (expired).
    assert_eq!((stats.replayed, stats.obsolete), (2, 2), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_replayer_drains_when_the_master_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = RedisServer::start();
    let cfg = config(Topology::single(master.url()), "j2:").journal(journal_config(
        &dir.path().join("j"),
        Duration::from_millis(100),
    ));
    let redis = connect(cfg).await;
    let cache = redis.tiered("j2", None);
    master.kill();
    for i in 0..20 {
        let report = cache
            .set(&key(&format!("k{i}")), entry("v", Duration::from_secs(60)))
            .await;
        assert!(report.is_complete());
    }
    // While the journal is not empty, even invalidations queue behind it, in order.
    assert!(cache.invalidate_prefix("k1").await.is_complete());
    assert_eq!(redis.journal().unwrap().depth(), 21);
    master.restart();
    assert!(
        eventually(Duration::from_secs(10), || async {
            redis.journal().unwrap().depth() == 0
        })
        .await
    );
    assert!(exists(&master.url(), "j2:k:k0").await);
    assert!(exists(&master.url(), "j2:k:k2").await);
    assert!(
        !exists(&master.url(), "j2:k:k1").await,
        "the prefix purge ran after the sets"
    );
    assert!(!exists(&master.url(), "j2:k:k12").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_journal_collapses_rather_than_lose_an_invalidation() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = RedisServer::start();
    let mut journal = journal_config(&dir.path().join("j"), Duration::from_secs(3600));
    journal.max_entries = 3;
    let redis = connect(config(Topology::single(master.url()), "j3:").journal(journal)).await;
    let cache = redis.tiered("j3", None);
    let before = entry("before", Duration::from_secs(60));
    assert!(cache.set(&key("before"), before).await.is_complete());
    master.kill();
    for i in 0..5 {
        let _ = cache
            .set(&key(&format!("k{i}")), entry("v", Duration::from_secs(60)))
            .await;
    }
    // k3 does not fit: recorded as a delete of k3, which does not fit
    // either, so the journal collapses into one clear; k4 then fits.
    let stats = redis.journal().unwrap().stats().await;
    assert_eq!(
        (stats.depth, stats.dropped, stats.collapsed),
        (2, 1, 1),
        "{stats:?}"
    );
    // An invalidation fits now (a delete of k4 replaces its set); one that
    // does not collapses the journal again.
    assert!(cache.delete(&key("before")).await.is_complete());
    assert!(cache.delete(&key("k4")).await.is_complete());
    assert_eq!(redis.journal().unwrap().depth(), 3);
    assert!(cache.delete(&key("x")).await.is_complete());
    let stats = redis.journal().unwrap().stats().await;
    assert_eq!((stats.depth, stats.collapsed), (1, 2), "{stats:?}");
    master.restart();
    let mut conn = raw(&master.url()).await;
    let stale = entry("stale", Duration::from_secs(60)).encode();
    let _: () = redis::cmd("SET")
        .arg("j3:k:before")
        .arg(stale.as_ref())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(redis.replay_journal().await.unwrap(), 0);
    assert!(
        !exists(&master.url(), "j3:k:before").await,
        "the clear marker removed the namespace"
    );
}

/// Run as a child process by `a_killed_process_replays_its_journal_after_restart`:
/// journals writes against a dead master, says so, and waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of a_killed_process_replays_its_journal_after_restart"]
async fn journal_child_process() {
    let (Ok(path), Ok(port)) = (
        std::env::var("CACHETTE_CHILD_JOURNAL"),
        std::env::var("CACHETTE_CHILD_PORT"),
    ) else {
        return;
    };
    let url = format!("redis://127.0.0.1:{port}/0");
    let redis = RedisTiers::connect(
        config(Topology::single(url), "j4:")
            .journal(journal_config(path.as_ref(), Duration::from_secs(3600))),
    )
    .await
    .unwrap();
    let cache = redis.tiered("j4", None);
    for i in 0..3 {
        let report = cache
            .set(
                &key(&format!("k{i}")),
                entry("from the killed process", Duration::from_secs(120)),
            )
            .await;
        assert_eq!(report.journaled.len(), 1);
    }
    println!("JOURNALED");
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_replays_its_journal_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let port = free_port();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "journal_child_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CACHETTE_CHILD_JOURNAL", &path)
        .env("CACHETTE_CHILD_PORT", port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let waited = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains("JOURNALED"))
    });
    assert!(
        tokio::time::timeout(Duration::from_secs(30), waited)
            .await
            .unwrap()
            .unwrap(),
        "child journaled"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let master = RedisServer::start();
    let mut journal = journal_config(&path, Duration::from_millis(100));
    journal.batch = 2;
    let redis = connect(config(Topology::single(master.url()), "j4:").journal(journal)).await;
    assert_eq!(
        redis.journal().unwrap().depth(),
        3,
        "the journal survived SIGKILL"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            redis.journal().unwrap().depth() == 0
        })
        .await
    );
    for i in 0..3 {
        assert!(exists(&master.url(), &format!("j4:k:k{i}")).await);
    }
}
