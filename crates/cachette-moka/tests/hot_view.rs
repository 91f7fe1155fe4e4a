//! The per-thread slots in front of moka never answer with what a change
//! made on another thread replaced: each change is seen by a reader thread
//! that had the entry in its slot, at its next read. Also: slots stop at
//! the entry's expiry, and served responses are the stored ones.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::{Arc, mpsc},
    thread,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use cachette_core::{Backend, CacheKey, Entry, EntryMeta, StoredResponse};
use cachette_moka::MemoryTier;
use http::{HeaderMap, HeaderValue, StatusCode};

fn key(s: &str) -> CacheKey {
    CacheKey::new(s).unwrap()
}

fn value(body: &str, ttl: Duration, tags: &[&str]) -> Arc<Entry> {
    let meta = EntryMeta::new(SystemTime::now(), ttl).with_tags(tags.iter().copied());
    Arc::new(Entry::value(Bytes::from(body.to_owned()), meta))
}

fn counter(n: i64) -> Arc<Entry> {
    Arc::new(Entry::counter(
        n,
        EntryMeta::new(SystemTime::now(), Duration::from_secs(60)),
    ))
}

/// What a reader thread saw for a key.
#[derive(Debug, PartialEq)]
enum Seen {
    Missing,
    Value(String),
    Counter(i64),
    Stale,
}

/// A thread of its own, reading the tier on request: its slots are not the
/// test thread's.
struct Reader {
    ask: mpsc::Sender<(CacheKey, mpsc::Sender<Seen>)>,
}

impl Reader {
    fn start(memory: MemoryTier) -> Self {
        let (ask, asked) = mpsc::channel::<(CacheKey, mpsc::Sender<Seen>)>();
        thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            for (key, reply) in asked {
                let entry = runtime.block_on(memory.get(&key)).unwrap();
                let seen = match entry {
                    None => Seen::Missing,
                    Some(entry) => match entry.payload() {
                        cachette_core::Payload::Value(v) => {
                            if matches!(
                                entry.freshness(SystemTime::now()),
                                cachette_core::Freshness::Fresh { .. }
                            ) {
                                Seen::Value(String::from_utf8(v.to_vec()).unwrap())
                            } else {
                                Seen::Stale
                            }
                        }
                        cachette_core::Payload::Counter(n) => Seen::Counter(*n),
                        other => panic!("unexpected {other:?}"),
                    },
                };
                let _ = reply.send(seen);
            }
        });
        Self { ask }
    }

    fn get(&self, key: &CacheKey) -> Seen {
        let (reply, answer) = mpsc::channel();
        self.ask.send((key.clone(), reply)).unwrap();
        answer.recv().unwrap()
    }

    /// Reads `key` enough times that its slot answers (and checks it).
    fn warm(&self, key: &CacheKey, expected: Seen) {
        for _ in 0..5 {
            assert_eq!(self.get(key), expected);
        }
    }
}

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_write_on_another_thread_is_seen_at_the_next_read() {
    let memory = MemoryTier::default();
    let reader = Reader::start(memory.clone());
    let k = key("k");
    memory
        .set(&k, value("v1", MINUTE, &[]), MINUTE)
        .await
        .unwrap();
    reader.warm(&k, Seen::Value("v1".into()));
    memory
        .set(&k, value("v2", MINUTE, &[]), MINUTE)
        .await
        .unwrap();
    assert_eq!(reader.get(&k), Seen::Value("v2".into()));
    // A write with no lifetime removes the older value too.
    reader.warm(&k, Seen::Value("v2".into()));
    memory
        .set(&k, value("v3", MINUTE, &[]), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(reader.get(&k), Seen::Missing);
}

#[tokio::test]
async fn every_kind_of_removal_is_seen_at_the_next_read() {
    let memory = MemoryTier::default();
    let reader = Reader::start(memory.clone());
    let k = key("GET:example.com/users/1");
    let refill = || async {
        memory
            .set(&k, value("ada", MINUTE, &["users"]), MINUTE)
            .await
            .unwrap();
        reader.warm(&k, Seen::Value("ada".into()));
    };

    refill().await;
    memory.delete(&k).await.unwrap();
    assert_eq!(reader.get(&k), Seen::Missing, "delete");

    refill().await;
    memory.invalidate_prefix("GET:example.com/").await.unwrap();
    assert_eq!(reader.get(&k), Seen::Missing, "prefix purge");

    refill().await;
    memory.invalidate_tag("users").await.unwrap();
    assert_eq!(reader.get(&k), Seen::Missing, "tag purge");

    refill().await;
    memory.invalidate_pattern("GET:*/users/*").await.unwrap();
    assert_eq!(reader.get(&k), Seen::Missing, "pattern purge");

    refill().await;
    memory.clear().await.unwrap();
    assert_eq!(reader.get(&k), Seen::Missing, "clear");

    refill().await;
    memory.soften(&k).await.unwrap();
    assert_eq!(reader.get(&k), Seen::Stale, "soft purge");

    refill().await;
    memory.soften_tag("users").await.unwrap();
    assert_eq!(reader.get(&k), Seen::Stale, "soft tag purge");

    refill().await;
    memory.soften_prefix("GET:example.com/").await.unwrap();
    assert_eq!(reader.get(&k), Seen::Stale, "soft prefix purge");
}

#[tokio::test]
async fn counters_and_add_are_seen_at_the_next_read() {
    let memory = MemoryTier::default();
    let reader = Reader::start(memory.clone());
    let k = key("hits");
    assert!(memory.add(&k, counter(1), MINUTE).await.unwrap());
    reader.warm(&k, Seen::Counter(1));
    assert_eq!(memory.incr(&k, 41).await.unwrap(), Some(42));
    assert_eq!(reader.get(&k), Seen::Counter(42));
    // An add that finds the key changes nothing, and is seen as nothing.
    assert!(!memory.add(&k, counter(7), MINUTE).await.unwrap());
    assert_eq!(reader.get(&k), Seen::Counter(42));
    memory.delete(&k).await.unwrap();
    reader.warm(&k, Seen::Missing);
    assert!(memory.add(&k, counter(7), MINUTE).await.unwrap());
    assert_eq!(reader.get(&k), Seen::Counter(7));
}

#[tokio::test]
async fn a_slot_stops_answering_when_the_entry_expires() {
    // moka removes expired entries in its maintenance, which nothing runs
    // here: the slot must stop on its own clock.
    let memory = MemoryTier::default();
    let reader = Reader::start(memory.clone());
    let k = key("short");
    let ttl = Duration::from_millis(300);
    memory
        .set(&k, value("soon gone", MINUTE, &[]), ttl)
        .await
        .unwrap();
    reader.warm(&k, Seen::Value("soon gone".into()));
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    assert_eq!(reader.get(&k), Seen::Missing);
}

#[tokio::test]
async fn an_entry_evicted_for_space_is_not_served_after_its_eviction() {
    let memory = MemoryTier::with_max_bytes(64 * 1024);
    let reader = Reader::start(memory.clone());
    let k = key("first");
    memory
        .set(&k, value("first", MINUTE, &[]), MINUTE)
        .await
        .unwrap();
    reader.warm(&k, Seen::Value("first".into()));
    let filler = "x".repeat(2048);
    for n in 0..200 {
        memory
            .set(
                &key(&format!("filler-{n}")),
                value(&filler, MINUTE, &[]),
                MINUTE,
            )
            .await
            .unwrap();
        memory.run_pending_tasks().await;
    }
    memory.run_pending_tasks().await;
    let held = memory.get(&k).await.unwrap().is_some();
    let seen = reader.get(&k);
    assert_eq!(
        seen == Seen::Missing,
        !held,
        "the reader agrees with the tier: held {held}, seen {seen:?}"
    );
}

#[tokio::test]
async fn a_response_is_served_with_the_stored_fields_and_body() {
    let memory = MemoryTier::default();
    let k = key("GET:example.com/doc");
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("text/plain"));
    headers.insert("x-custom-name", HeaderValue::from_static("custom"));
    let mut secret = HeaderValue::from_static("token");
    secret.set_sensitive(true);
    headers.insert("x-secret", secret);
    let stored = StoredResponse {
        status: StatusCode::CREATED,
        headers,
        body: Bytes::from_static(b"the body"),
    };
    let entry = Arc::new(Entry::response(
        stored.clone(),
        EntryMeta::new(SystemTime::now(), MINUTE),
    ));
    memory.set(&k, entry.clone(), MINUTE).await.unwrap();
    for _ in 0..5 {
        let got = memory.get(&k).await.unwrap().unwrap();
        assert_eq!(*got, *entry);
        let response = got.as_response().unwrap();
        assert_eq!(response, &stored);
        assert!(response.headers["x-secret"].is_sensitive());
    }
}

#[tokio::test]
async fn a_soft_purge_that_removes_an_entry_past_its_lifetime_is_seen() {
    // The tier was given a longer lifetime than the entry's own: a soft
    // purge finds nothing left to keep and removes it.
    let memory = MemoryTier::default();
    let reader = Reader::start(memory.clone());
    let k = key("lingering");
    memory
        .set(&k, value("old", Duration::from_millis(100), &[]), MINUTE)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    reader.warm(&k, Seen::Stale);
    memory.soften(&k).await.unwrap();
    assert_eq!(reader.get(&k), Seen::Missing);
}
