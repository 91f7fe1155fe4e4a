//! The shared read index and the per-thread slots under concurrent
//! changes: a read that starts after a write or delete has returned never
//! answers with what it replaced, however reads, fills and changes
//! interleave (the windows are a few instructions wide, so the test runs
//! many rounds on several threads). Also: the index answers hits on many
//! keys, and its bytes are counted in the tier's weight.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use cachette_core::{Backend, CacheKey, Entry, EntryMeta, Payload};
use cachette_moka::MemoryTier;

const MINUTE: Duration = Duration::from_secs(60);

fn numbered(n: u64) -> Arc<Entry> {
    let meta = EntryMeta::new(SystemTime::now(), MINUTE);
    Arc::new(Entry::value(Bytes::from(n.to_string()), meta))
}

fn number_of(entry: &Entry) -> u64 {
    match entry.payload() {
        Payload::Value(v) => std::str::from_utf8(v).unwrap().parse().unwrap(),
        other => panic!("unexpected {other:?}"),
    }
}

/// What the writer last completed for a key: `2n` = value `n` written,
/// `2n + 1` = deleted after value `n`.
fn published(step: u64) -> (u64, bool) {
    (step / 2, step % 2 == 1)
}

/// Whether the writer publishes `step` as a delete (every third value).
fn published_delete(step: u64) -> bool {
    let (value, deleted) = published(step);
    deleted && value % 3 == 0
}

#[test]
fn a_read_after_a_change_returned_never_sees_what_it_replaced() {
    const KEYS: usize = 4;
    const READERS: usize = 3;
    let memory = MemoryTier::default();
    let keys: Arc<Vec<CacheKey>> = Arc::new(
        (0..KEYS)
            .map(|i| CacheKey::new(format!("GET:example.com/k{i}")).unwrap())
            .collect(),
    );
    // Per key, the writer's last completed step and the step it is on.
    let steps: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let starting: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let done = Arc::new(AtomicBool::new(false));
    let violations = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));

    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (memory, keys, steps, starting, done, violations, reads) = (
                memory.clone(),
                keys.clone(),
                steps.clone(),
                starting.clone(),
                done.clone(),
                violations.clone(),
                reads.clone(),
            );
            thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                let mut i = 0usize;
                while !done.load(Ordering::Acquire) {
                    i = i.wrapping_add(1);
                    let which = i % KEYS;
                    let before = steps[which].load(Ordering::Acquire);
                    let found = runtime.block_on(memory.get(&keys[which])).unwrap();
                    // The states the read may have seen: from the last one
                    // completed before it to the one begun by its end.
                    let after = starting[which].load(Ordering::Acquire);
                    let (value, deleted) = published(before);
                    let fine = match found {
                        // Missing: nothing written yet, or a delete
                        // completed before or during the read.
                        None => before == 0 || (before..=after).any(published_delete),
                        Some(entry) => {
                            let n = number_of(&entry);
                            if deleted { n > value } else { n >= value }
                        }
                    };
                    if !fine {
                        violations.fetch_add(1, Ordering::Relaxed);
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_millis(1500) {
        n += 1;
        for (which, key) in keys.iter().enumerate() {
            starting[which].store(2 * n, Ordering::Release);
            runtime
                .block_on(memory.set(key, numbered(n), MINUTE))
                .unwrap();
            steps[which].store(2 * n, Ordering::Release);
            // Let readers take the new value into the index and their
            // slots before it is replaced.
            thread::yield_now();
            if n % 3 == 0 {
                starting[which].store(2 * n + 1, Ordering::Release);
                runtime.block_on(memory.delete(key)).unwrap();
                steps[which].store(2 * n + 1, Ordering::Release);
                thread::yield_now();
            }
        }
    }
    done.store(true, Ordering::Release);
    for reader in readers {
        reader.join().unwrap();
    }
    let reads = reads.load(Ordering::Relaxed);
    assert!(reads > 10_000, "only {reads} reads");
    assert_eq!(
        violations.load(Ordering::Relaxed),
        0,
        "reads that saw a replaced value, of {reads} ({n} rounds of writes)"
    );
}

#[tokio::test]
async fn hits_on_many_keys_are_answered_and_removals_seen() {
    let memory = MemoryTier::default();
    let keys: Vec<CacheKey> = (0..5_000)
        .map(|i| CacheKey::new(format!("GET:example.com/p?k={i}")).unwrap())
        .collect();
    for (i, key) in keys.iter().enumerate() {
        memory.set(key, numbered(i as u64), MINUTE).await.unwrap();
    }
    // Twice: the first read fills the index, the second is answered by it.
    for _ in 0..2 {
        for (i, key) in keys.iter().enumerate() {
            let found = memory.get(key).await.unwrap().expect("stored");
            assert_eq!(number_of(&found), i as u64);
        }
    }
    for key in keys.iter().step_by(2) {
        assert!(memory.delete(key).await.unwrap());
    }
    memory
        .invalidate_prefix("GET:example.com/p?k=1")
        .await
        .unwrap();
    for (i, key) in keys.iter().enumerate() {
        let found = memory.get(key).await.unwrap();
        let expected = i % 2 == 1 && !i.to_string().starts_with('1');
        assert_eq!(found.is_some(), expected, "key {i}");
    }
    memory.clear().await.unwrap();
    for key in &keys {
        assert!(memory.get(key).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn the_index_is_counted_in_the_weight() {
    let memory = MemoryTier::default();
    let key = CacheKey::new("GET:example.com/one").unwrap();
    let entry = numbered(7);
    memory.set(&key, entry.clone(), MINUTE).await.unwrap();
    memory.run_pending_tasks().await;
    let weighed = memory.weighted_bytes();
    // The key (moka's and the index's copy), the entry and at least the
    // index's slot.
    assert!(
        weighed >= (2 * key.as_str().len() + entry.weight() + 48) as u64,
        "{weighed} bytes"
    );
}

#[test]
fn a_soft_purge_never_brings_back_what_a_concurrent_write_replaced() {
    let memory = MemoryTier::default();
    let key = CacheKey::new("GET:example.com/soft").unwrap();
    let completed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let older = Arc::new(AtomicU64::new(0));
    let softener = {
        let (memory, key, done) = (memory.clone(), key.clone(), done.clone());
        thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            while !done.load(Ordering::Acquire) {
                runtime.block_on(memory.soften(&key)).unwrap();
            }
        })
    };
    let reader = {
        let (memory, key, done, completed, older) = (
            memory.clone(),
            key.clone(),
            done.clone(),
            completed.clone(),
            older.clone(),
        );
        thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            while !done.load(Ordering::Acquire) {
                let before = completed.load(Ordering::Acquire);
                if let Some(entry) = runtime.block_on(memory.get(&key)).unwrap() {
                    if number_of(&entry) < before {
                        older.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_millis(1000) {
        n += 1;
        runtime
            .block_on(memory.set(&key, numbered(n), MINUTE))
            .unwrap();
        completed.store(n, Ordering::Release);
    }
    done.store(true, Ordering::Release);
    softener.join().unwrap();
    reader.join().unwrap();
    assert_eq!(
        older.load(Ordering::Relaxed),
        0,
        "reads of a value older than the last completed write ({n} writes, {} reads older)",
        older.load(Ordering::Relaxed)
    );
}

/// A key read past its lifetime is a miss at once (the index holds the
/// ended entry; moka is not asked), and its refill is answered.
#[tokio::test]
async fn an_ended_entry_is_a_miss_and_its_refill_is_answered() {
    let memory = MemoryTier::default();
    let key = CacheKey::new("GET:example.com/ending").unwrap();
    memory
        .set(&key, numbered(1), Duration::from_millis(100))
        .await
        .unwrap();
    // Two reads: the first fills the index from moka, the second is its hit.
    for _ in 0..2 {
        assert_eq!(number_of(&memory.get(&key).await.unwrap().unwrap()), 1);
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(memory.get(&key).await.unwrap().is_none());
    assert!(memory.get_now(&key).unwrap().unwrap().is_none());
    memory.set(&key, numbered(2), MINUTE).await.unwrap();
    for _ in 0..2 {
        assert_eq!(number_of(&memory.get(&key).await.unwrap().unwrap()), 2);
    }
}

/// A lookup by the key's text answers what one by the key answers: from
/// moka at first (then indexed), from the index after, nothing once the
/// key is deleted; a text that is no valid key finds nothing.
#[tokio::test]
async fn a_lookup_by_text_answers_as_one_by_key() {
    let memory = MemoryTier::default();
    let key = CacheKey::new("GET:example.com/text?k=1").unwrap();
    memory.set(&key, numbered(7), MINUTE).await.unwrap();
    for _ in 0..3 {
        let found = memory.get_now_str(key.as_str()).unwrap().unwrap().unwrap();
        assert_eq!(number_of(&found), 7);
    }
    assert!(
        memory
            .get_now_str("GET:example.com/text?k=2")
            .unwrap()
            .unwrap()
            .is_none()
    );
    assert!(
        memory
            .get_now_str("GET:example.com/text k=1")
            .unwrap()
            .unwrap()
            .is_none()
    );
    assert!(memory.delete(&key).await.unwrap());
    assert!(memory.get_now_str(key.as_str()).unwrap().unwrap().is_none());
}
