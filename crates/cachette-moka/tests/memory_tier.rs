//! Behaviour of the memory tier through the `Backend` trait and `Tiered`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use cachette_core::{Backend, CacheKey, Entry, EntryMeta, Tiered};
use cachette_moka::MemoryTier;

fn key(s: &str) -> CacheKey {
    CacheKey::new(s).unwrap()
}

fn value(body: &'static [u8], ttl: Duration, tags: &[&str]) -> Arc<Entry> {
    let meta = EntryMeta::new(SystemTime::now(), ttl).with_tags(tags.iter().copied());
    Arc::new(Entry::value(Bytes::from_static(body), meta))
}

#[tokio::test]
async fn get_returns_the_same_arc_for_a_value_without_copying() {
    let memory = MemoryTier::default();
    let entry = value(b"hello", Duration::from_secs(60), &[]);
    memory
        .set(&key("a"), entry.clone(), Duration::from_secs(60))
        .await
        .unwrap();
    let got = memory.get(&key("a")).await.unwrap().unwrap();
    assert!(Arc::ptr_eq(&got, &entry));
}

#[tokio::test]
async fn entries_expire_after_their_own_ttl() {
    let memory = MemoryTier::default();
    memory
        .set(
            &key("short"),
            value(b"1", Duration::from_millis(50), &[]),
            Duration::from_millis(50),
        )
        .await
        .unwrap();
    memory
        .set(
            &key("long"),
            value(b"2", Duration::from_secs(60), &[]),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(memory.get(&key("short")).await.unwrap().is_none());
    assert!(memory.get(&key("long")).await.unwrap().is_some());
}

#[tokio::test]
async fn an_already_expired_entry_is_not_stored_with_a_wrapped_ttl() {
    let memory = MemoryTier::default();
    let past = SystemTime::now() - Duration::from_secs(3600);
    let expired = Arc::new(Entry::value(
        Bytes::from_static(b"old"),
        EntryMeta::new(past, Duration::from_secs(1)),
    ));
    // Saturating arithmetic: the remaining lifetime is zero, not u64::MAX - 3599 s.
    assert_eq!(expired.remaining_ttl(SystemTime::now()), Duration::ZERO);

    let cache = Tiered::builder("t").tier("memory", memory.clone()).build();
    let report = cache.set(&key("old"), expired.clone()).await;
    assert!(
        report.succeeded.is_empty(),
        "nothing is written for an expired entry"
    );
    assert!(memory.get(&key("old")).await.unwrap().is_none());

    // Directly with a zero TTL: stores nothing and removes an older value.
    memory
        .set(
            &key("old"),
            value(b"x", Duration::from_secs(60), &[]),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    memory
        .set(&key("old"), expired, Duration::ZERO)
        .await
        .unwrap();
    assert!(memory.get(&key("old")).await.unwrap().is_none());
}

#[tokio::test]
async fn max_ttl_caps_every_entry() {
    let memory = MemoryTier::builder()
        .max_ttl(Duration::from_millis(50))
        .build();
    memory
        .set(
            &key("a"),
            value(b"1", Duration::from_secs(3600), &[]),
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
    assert!(memory.get(&key("a")).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(memory.get(&key("a")).await.unwrap().is_none());
}

#[tokio::test]
async fn invalidation_by_key_prefix_and_tag() {
    let memory = MemoryTier::default();
    let ttl = Duration::from_secs(60);
    for (k, tags) in [
        ("GET:h/users/1", &["users"][..]),
        ("GET:h/users/2", &["users", "vip"][..]),
        ("GET:h/orders/1", &["orders"][..]),
        ("GET:h/orders/2", &["orders", "vip"][..]),
    ] {
        memory
            .set(&key(k), value(b"v", ttl, tags), ttl)
            .await
            .unwrap();
    }
    assert!(memory.delete(&key("GET:h/orders/1")).await.unwrap());
    assert!(!memory.delete(&key("GET:h/orders/1")).await.unwrap());
    memory.invalidate_prefix("GET:h/users/").await.unwrap();
    assert!(memory.get(&key("GET:h/users/1")).await.unwrap().is_none());
    assert!(memory.get(&key("GET:h/users/2")).await.unwrap().is_none());
    assert!(memory.get(&key("GET:h/orders/2")).await.unwrap().is_some());
    memory.invalidate_tag("vip").await.unwrap();
    assert!(memory.get(&key("GET:h/orders/2")).await.unwrap().is_none());
    memory
        .set(&key("later"), value(b"v", ttl, &["vip"]), ttl)
        .await
        .unwrap();
    assert!(
        memory.get(&key("later")).await.unwrap().is_some(),
        "an invalidation does not affect later writes"
    );
    memory.clear().await.unwrap();
    assert!(memory.get(&key("later")).await.unwrap().is_none());
}

#[tokio::test]
async fn capacity_is_bounded_in_bytes() {
    let memory = MemoryTier::with_max_bytes(64 * 1024);
    let ttl = Duration::from_secs(60);
    let body = Bytes::from(vec![7u8; 4096]);
    for i in 0..100 {
        let entry = Arc::new(Entry::value(
            body.clone(),
            EntryMeta::new(SystemTime::now(), ttl),
        ));
        memory
            .set(&key(&format!("k{i}")), entry, ttl)
            .await
            .unwrap();
    }
    memory.run_pending_tasks().await;
    assert!(
        memory.weighted_bytes() <= 64 * 1024,
        "holds {} bytes",
        memory.weighted_bytes()
    );
    assert!(
        memory.entry_count() >= 8,
        "still holds entries: {}",
        memory.entry_count()
    );
}

#[tokio::test]
async fn tag_purges_follow_replaced_evicted_and_removed_entries() {
    let memory = MemoryTier::default();
    let ttl = Duration::from_secs(60);
    memory
        .set(&key("a"), value(b"1", ttl, &["old"]), ttl)
        .await
        .unwrap();
    // Replaced by an entry with another tag: the old tag no longer reaches it.
    memory
        .set(&key("a"), value(b"2", ttl, &["new"]), ttl)
        .await
        .unwrap();
    memory.invalidate_tag("old").await.unwrap();
    assert!(memory.get(&key("a")).await.unwrap().is_some());
    memory.invalidate_tag("new").await.unwrap();
    assert!(memory.get(&key("a")).await.unwrap().is_none());
    // Removed, then stored again untagged: a later purge of the tag keeps it.
    memory
        .set(&key("b"), value(b"1", ttl, &["t"]), ttl)
        .await
        .unwrap();
    memory.delete(&key("b")).await.unwrap();
    memory
        .set(&key("b"), value(b"2", ttl, &[]), ttl)
        .await
        .unwrap();
    memory.invalidate_tag("t").await.unwrap();
    assert!(memory.get(&key("b")).await.unwrap().is_some());
    // A purge takes effect at once, with nothing left pending for reads.
    for i in 0..100 {
        let k = key(&format!("c{i}"));
        memory
            .set(&k, value(b"c", ttl, &["bulk"]), ttl)
            .await
            .unwrap();
    }
    memory.invalidate_tag("bulk").await.unwrap();
    memory.invalidate_prefix("c1").await.unwrap();
    for i in 0..100 {
        assert!(memory.get(&key(&format!("c{i}"))).await.unwrap().is_none());
    }
    memory.run_pending_tasks().await;
    assert_eq!(memory.entry_count(), 1, "only `b` is left");
}

#[tokio::test]
async fn a_tag_purge_reaches_an_entry_stored_again_after_a_clear() {
    let memory = MemoryTier::default();
    let ttl = Duration::from_secs(60);
    for k in ["a", "b"] {
        memory
            .set(&key(k), value(b"1", ttl, &["t"]), ttl)
            .await
            .unwrap();
    }
    // The bus clears memory on every (re)subscription; the same keys come
    // back with the same tags.
    memory.clear().await.unwrap();
    for k in ["a", "b"] {
        memory
            .set(&key(k), value(b"2", ttl, &["t"]), ttl)
            .await
            .unwrap();
    }
    // moka notifies the removal of the cleared entries now, after their
    // successors registered.
    memory.run_pending_tasks().await;
    memory.invalidate_tag("t").await.unwrap();
    for k in ["a", "b"] {
        assert!(
            memory.get(&key(k)).await.unwrap().is_none(),
            "{k} escaped the tag purge"
        );
    }
}

/// A mass expiry does not make moka's maintenance remove every expired
/// entry at once on some unlucky call (measured: calls stalled 180 ms with
/// 100,000 entries expiring while their refills were inserted): an entry is
/// a miss as soon as its lifetime is over, and moka holds it for a grace
/// after (a second or more), during which a refill replaces it. While
/// held, it is absent for every operation.
#[tokio::test]
async fn an_entry_past_its_lifetime_is_absent_but_removed_by_moka_only_after_a_grace() {
    // (The grace is at most the lifetime: 1 s here.)
    let memory = MemoryTier::default();
    let ttl = Duration::from_secs(1);
    memory
        .set(&key("v"), value(b"1", ttl, &["t"]), ttl)
        .await
        .unwrap();
    let counter = Arc::new(Entry::counter(5, EntryMeta::new(SystemTime::now(), ttl)));
    memory.set(&key("n"), counter, ttl).await.unwrap();
    memory
        .set(&key("gone"), value(b"1", ttl, &[]), ttl)
        .await
        .unwrap();
    for n in 0..20 {
        let k = key(&format!("filler/{n}"));
        memory.set(&k, value(b"1", ttl, &[]), ttl).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        memory.get(&key("v")).await.unwrap().is_none(),
        "a miss after its lifetime"
    );
    assert!(memory.get_now(&key("v")).unwrap().unwrap().is_none());
    assert_eq!(
        memory.incr(&key("n"), 1).await.unwrap(),
        None,
        "an expired counter is missing"
    );
    assert!(
        !memory.delete(&key("gone")).await.unwrap(),
        "nothing live was deleted"
    );

    // moka's timers tick about every 1.07 s: without the grace, all of
    // them would be removed by now; with it, not before about 2.1 s.
    tokio::time::sleep(Duration::from_millis(500)).await;
    memory.run_pending_tasks().await;
    assert!(
        memory.entry_count() > 0,
        "held for a grace, removed spread over it"
    );

    // Absent for `add` too, which replaces it.
    let long = Duration::from_secs(60);
    assert!(
        memory
            .add(&key("v"), value(b"2", long, &[]), long)
            .await
            .unwrap()
    );
    let replaced = memory.get(&key("v")).await.unwrap().unwrap();
    assert!(matches!(replaced.payload(), cachette_core::Payload::Value(v) if v.as_ref() == b"2"));
}

/// `add` of a key that is live keeps the live entry findable by its tags
/// (registering the refused write must not take its registration away).
#[tokio::test]
async fn a_refused_add_leaves_the_live_entry_purgeable_by_tag() {
    let memory = MemoryTier::default();
    let ttl = Duration::from_secs(60);
    assert!(
        memory
            .add(&key("k"), value(b"1", ttl, &["t"]), ttl)
            .await
            .unwrap()
    );
    assert!(
        !memory
            .add(&key("k"), value(b"2", ttl, &["t"]), ttl)
            .await
            .unwrap()
    );
    memory.invalidate_tag("t").await.unwrap();
    assert!(
        memory.get(&key("k")).await.unwrap().is_none(),
        "the tag purge found it"
    );
}
