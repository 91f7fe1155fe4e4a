//! Writes to one key from several threads at once: each change of the
//! memory tier is ordered with the others on its key (its write lock), so
//! read-modify-writes lose nothing and tag registrations match what is
//! held.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::{Arc, Barrier},
    thread,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use cachette_core::{Backend, CacheKey, Entry, EntryMeta};
use cachette_moka::MemoryTier;

const MINUTE: Duration = Duration::from_secs(60);

fn tagged(body: &'static [u8]) -> Arc<Entry> {
    let meta = EntryMeta::new(SystemTime::now(), MINUTE).with_tags(["t"]);
    Arc::new(Entry::value(Bytes::from_static(body), meta))
}

fn new_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// Two writers store the same key with the same tag at once, then the tag
/// is purged: the value kept must be gone. Before writes were ordered, one
/// writer could register its tags, the other register and insert, and the
/// first insert last: replacing the second's value took out the second's
/// registration, which was the current one, and the purge missed the value
/// kept (6-10 rounds of 3,000 kept it).
#[test]
fn a_tag_purge_after_concurrent_writes_of_a_key_removes_the_value_kept() {
    const ROUNDS: usize = 3_000;
    let memory = MemoryTier::default();
    let key = CacheKey::new("GET:example.com/tagged").unwrap();
    let barrier = Arc::new(Barrier::new(3));
    let writers: Vec<_> = [b"a" as &'static [u8], b"b"]
        .into_iter()
        .map(|body| {
            let (memory, key, barrier) = (memory.clone(), key.clone(), barrier.clone());
            thread::spawn(move || {
                let runtime = new_runtime();
                for _ in 0..ROUNDS {
                    barrier.wait();
                    runtime
                        .block_on(memory.set(&key, tagged(body), MINUTE))
                        .unwrap();
                    barrier.wait();
                    // The purge and its check.
                    barrier.wait();
                }
            })
        })
        .collect();
    let runtime = new_runtime();
    let mut kept = 0;
    for _ in 0..ROUNDS {
        barrier.wait();
        barrier.wait();
        runtime.block_on(memory.invalidate_tag("t")).unwrap();
        if runtime.block_on(memory.get(&key)).unwrap().is_some() {
            kept += 1;
            runtime.block_on(memory.delete(&key)).unwrap();
        }
        barrier.wait();
    }
    for writer in writers {
        writer.join().unwrap();
    }
    assert_eq!(
        kept, 0,
        "values kept through a purge of their tag, of {ROUNDS} rounds"
    );
}

/// Counters incremented from four threads at once: every increment counts.
#[test]
fn concurrent_increments_are_all_counted() {
    const EACH: i64 = 2_000;
    let memory = MemoryTier::default();
    let key = CacheKey::new("counter").unwrap();
    let runtime = new_runtime();
    let meta = EntryMeta::new(SystemTime::now(), MINUTE);
    runtime
        .block_on(memory.set(&key, Arc::new(Entry::counter(0, meta)), MINUTE))
        .unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (memory, key) = (memory.clone(), key.clone());
            thread::spawn(move || {
                let runtime = new_runtime();
                for _ in 0..EACH {
                    runtime.block_on(memory.incr(&key, 1)).unwrap().unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(
        runtime.block_on(memory.incr(&key, 0)).unwrap(),
        Some(4 * EACH)
    );
}

/// `add` from four threads at once for each of many keys: exactly one adds.
#[test]
fn of_concurrent_adds_of_a_key_exactly_one_succeeds() {
    const KEYS: usize = 500;
    let memory = MemoryTier::default();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let memory = memory.clone();
            thread::spawn(move || {
                let runtime = new_runtime();
                (0..KEYS)
                    .filter(|n| {
                        let key = CacheKey::new(format!("add-{n}")).unwrap();
                        runtime
                            .block_on(memory.add(&key, tagged(b"x"), MINUTE))
                            .unwrap()
                    })
                    .count()
            })
        })
        .collect();
    let added: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(added, KEYS);
}

/// A touch running beside deletes of its key: once a delete has returned,
/// the key reads as absent. Before touches held the key's write lock, a
/// touch that had read the value before the delete wrote it back after
/// (the trait's default reads, then writes).
#[test]
fn a_touch_never_brings_back_what_a_delete_removed() {
    let memory = MemoryTier::default();
    let key = CacheKey::new("GET:example.com/touched").unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let toucher = {
        let (memory, key, done) = (memory.clone(), key.clone(), done.clone());
        thread::spawn(move || {
            let runtime = new_runtime();
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                let meta = EntryMeta::new(SystemTime::now(), MINUTE);
                runtime.block_on(memory.touch(&key, meta)).unwrap();
            }
        })
    };
    let runtime = new_runtime();
    let mut back = 0;
    for _ in 0..10_000 {
        runtime
            .block_on(memory.set(&key, tagged(b"v"), MINUTE))
            .unwrap();
        runtime.block_on(memory.delete(&key)).unwrap();
        if runtime.block_on(memory.get(&key)).unwrap().is_some() {
            back += 1;
        }
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    toucher.join().unwrap();
    assert_eq!(
        back, 0,
        "reads after a delete returned that found the value again"
    );
}

/// A write racing a `clear`, then a purge of the write's tag: the value
/// must be gone. Before `clear` held every write lock, a write could
/// register its tags after the registry's reset and insert after moka's,
/// keeping its value unregistered: the purge missed it.
#[test]
fn a_tag_purge_after_a_write_racing_a_clear_removes_the_value() {
    const ROUNDS: usize = 3_000;
    let memory = MemoryTier::default();
    let key = CacheKey::new("GET:example.com/cleared").unwrap();
    let barrier = Arc::new(Barrier::new(2));
    let writer = {
        let (memory, key, barrier) = (memory.clone(), key.clone(), barrier.clone());
        thread::spawn(move || {
            let runtime = new_runtime();
            for _ in 0..ROUNDS {
                barrier.wait();
                runtime
                    .block_on(memory.set(&key, tagged(b"w"), MINUTE))
                    .unwrap();
                barrier.wait();
                barrier.wait();
            }
        })
    };
    let runtime = new_runtime();
    let mut kept = 0;
    for _ in 0..ROUNDS {
        barrier.wait();
        runtime.block_on(memory.clear()).unwrap();
        barrier.wait();
        runtime.block_on(memory.invalidate_tag("t")).unwrap();
        if runtime.block_on(memory.get(&key)).unwrap().is_some() {
            kept += 1;
            runtime.block_on(memory.delete(&key)).unwrap();
        }
        barrier.wait();
    }
    writer.join().unwrap();
    assert_eq!(
        kept, 0,
        "values kept through a purge of their tag, of {ROUNDS} rounds"
    );
}
