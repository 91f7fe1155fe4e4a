//! Micro-benchmarks of cachette's paths, each beside the baseline it adds to:
//!
//! - `codec`: entry encode / decode at 1 KiB, 64 KiB, 1 MiB (what the Redis
//!   tiers and the journal pay per entry);
//! - `keys`: a primary key with query normalization, and a `Vary` variant key;
//! - `layer_hit`: a memory-tier hit through `CacheLayer` as an in-process
//!   `tower::Service` call, beside the same axum route without the layer;
//! - `redis_hit`: `Tiered::get` answered by a Redis tier (a real
//!   `redis-server` on loopback; skipped when it is not installed);
//! - `memory_after_purges`: a memory-tier hit in a tier of 10,000 entries,
//!   fresh and right after 5,000 tag and prefix purges (purges must leave
//!   no work behind for reads: review finding 21).
//!
//! `cargo bench --bench cache_paths [-- filter]`. docs/benchmarks.md has
//! numbers and the load tests over real sockets.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::{
    hint::black_box,
    sync::Arc,
    time::{Duration, SystemTime},
};

use axum::{Router, body::Body, routing::get};
use bytes::Bytes;
use cachette::{
    CacheKey, CacheLayer, Entry, EntryMeta, MemoryTier, StoredResponse, Tiered,
    http::KeyOptions,
    redis::{RedisConfig, RedisTiers, Topology},
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::BodyExt;
use tower::ServiceExt;

const SIZES: [(usize, &str); 3] = [(1 << 10, "1KiB"), (64 << 10, "64KiB"), (1 << 20, "1MiB")];

fn typical_headers(len: usize) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=3600"),
    );
    headers.insert(header::ETAG, HeaderValue::from_static("\"5e1f-2b7c9d\""));
    headers.insert(
        header::DATE,
        HeaderValue::from_static("Mon, 23 Nov 2026 18:00:00 GMT"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    headers
}

fn response_entry(len: usize) -> Entry {
    Entry::response(
        StoredResponse {
            status: StatusCode::OK,
            headers: typical_headers(len),
            body: Bytes::from(vec![b'x'; len]),
        },
        EntryMeta::new(SystemTime::now(), Duration::from_secs(3600)),
    )
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    for (len, name) in SIZES {
        let entry = response_entry(len);
        let encoded = entry.encode();
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::new("encode", name), &entry, |b, entry| {
            b.iter(|| black_box(entry).encode());
        });
        group.bench_with_input(BenchmarkId::new("decode", name), &encoded, |b, bytes| {
            b.iter(|| Entry::decode(black_box(bytes.clone())).unwrap());
        });
    }
    group.finish();
}

fn keys(c: &mut Criterion) {
    let layer = CacheLayer::new(Tiered::builder("keys").build()).ignore_query_params(["utm_*"]);
    let uri: Uri = "/search?q=rust+cache&page=2&utm_source=news&lang=en&sort=date"
        .parse()
        .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(header::HOST, HeaderValue::from_static("shop.example.com"));
    headers.insert(
        header::ACCEPT_LANGUAGE,
        HeaderValue::from_static("fr-CH, fr;q=0.9"),
    );
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("gzip, br"),
    );
    let vary = [header::ACCEPT_LANGUAGE, header::ACCEPT_ENCODING];
    let primary = layer.key_for(&uri, &headers);

    let mut group = c.benchmark_group("keys");
    group.bench_function("primary: host, path, sorted query, ignored params", |b| {
        b.iter(|| layer.key_for(black_box(&uri), black_box(&headers)));
    });
    group.bench_function("vary variant: 2 headers", |b| {
        b.iter(|| KeyOptions::variant(black_box(&primary), &vary, black_box(&headers)));
    });
    group.finish();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// One request through `app`, body drained: what serving it costs.
async fn serve(app: &Router, uri: &'static str) -> usize {
    let response = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .len()
}

fn layer_hit(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("layer_hit");
    for (len, name) in &SIZES[..2] {
        let body = Bytes::from(vec![b'x'; *len]);
        let route = get(move || {
            let body = body.clone();
            async move { ([(header::CACHE_CONTROL, "max-age=3600")], body) }
        });
        // `with_state` turns handlers into services once, as `axum::serve`
        // does per connection (a bare `Router` would redo it per request).
        let plain = Router::new().route("/p", route.clone()).with_state(());
        let cache = Tiered::builder("bench")
            .tier("memory", MemoryTier::with_max_bytes(64 << 20))
            .build();
        let cached = Router::new()
            .route("/p", route)
            .layer(CacheLayer::new(cache))
            .with_state(());
        rt.block_on(serve(&cached, "http://bench.local/p"));
        group.throughput(Throughput::Bytes(*len as u64));
        group.bench_function(BenchmarkId::new("route without the layer", name), |b| {
            b.to_async(&rt)
                .iter(|| serve(&plain, "http://bench.local/p"));
        });
        group.bench_function(
            BenchmarkId::new("memory hit through the layer", name),
            |b| {
                b.to_async(&rt)
                    .iter(|| serve(&cached, "http://bench.local/p"));
            },
        );
    }
    group.finish();
}

fn redis_hit(c: &mut Criterion) {
    if std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("redis_hit: redis-server is not installed; skipped");
        return;
    }
    let redis = cachette_testkit::RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let tiers = rt
        .block_on(RedisTiers::connect(RedisConfig::new(
            Topology::single(redis.url()),
            "bench:",
        )))
        .unwrap();
    let cache = rt.block_on(async { tiers.tiered("bench", None) });
    let mut group = c.benchmark_group("redis_hit");
    for (len, name) in &SIZES[..2] {
        let key = CacheKey::new(format!("GET:bench.local/{name}")).unwrap();
        let report = rt.block_on(cache.set(&key, Arc::new(response_entry(*len))));
        assert!(report.is_complete(), "{report:?}");
        group.throughput(Throughput::Bytes(*len as u64));
        group.bench_function(BenchmarkId::new("Tiered::get, one Redis tier", name), |b| {
            b.to_async(&rt)
                .iter(|| async { cache.get(black_box(&key)).await.expect("a hit") });
        });
    }
    group.finish();
    drop(redis);
}

fn memory_after_purges(c: &mut Criterion) {
    use cachette::Backend;
    let rt = runtime();
    let memory = MemoryTier::with_max_bytes(256 << 20);
    let ttl = Duration::from_secs(3600);
    let key = |i: usize| CacheKey::new(format!("GET:bench.local/item/{i}")).unwrap();
    rt.block_on(async {
        for i in 0..10_000 {
            let meta = EntryMeta::new(SystemTime::now(), ttl).with_tags([format!("t{}", i % 100)]);
            let entry = Arc::new(Entry::value(Bytes::from_static(b"v"), meta));
            memory.set(&key(i), entry, ttl).await.unwrap();
        }
    });
    let hot = key(9_999);
    let mut group = c.benchmark_group("memory_after_purges");
    group.bench_function("hit, no purge pending", |b| {
        b.iter(|| memory.get_now(black_box(&hot)))
    });
    rt.block_on(async {
        for i in 0..5_000 {
            memory.invalidate_tag(&format!("absent-{i}")).await.unwrap();
            if i % 50 == 0 {
                memory
                    .invalidate_prefix(&format!("GET:bench.local/none/{i}"))
                    .await
                    .unwrap();
            }
        }
    });
    group.bench_function("hit, right after 5,000 purges", |b| {
        b.iter(|| memory.get_now(black_box(&hot)))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = codec, keys, layer_hit, redis_hit, memory_after_purges
}
criterion_main!(benches);
