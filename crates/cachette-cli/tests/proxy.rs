//! The caching reverse proxy against a real upstream axum app over loopback
//! TCP: hits and misses, pass-through and invalidation, header handling,
//! streaming of large bodies, an unreachable upstream and stale-if-error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    http::{HeaderMap, StatusCode},
    routing::get,
};
use cachette::{CacheLayer, MemoryTier, Tiered};
use cachette_cli::proxy::{Upstream, router, serve};
use common::{HttpClient, UpstreamServer};
use http_body_util::{BodyExt, channel::Channel};
use std::convert::Infallible;
use tokio::sync::Notify;

/// Starts the proxy in this runtime in front of `upstream_url`.
async fn start_proxy(upstream_url: &str, layer: CacheLayer) -> String {
    let upstream = Upstream::new(upstream_url, Duration::from_secs(5)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, router(upstream, layer)));
    format!("http://{addr}")
}

fn memory_layer() -> CacheLayer {
    CacheLayer::new(
        Tiered::builder("proxy")
            .tier("memory", MemoryTier::with_max_bytes(64 << 20))
            .build(),
    )
}

fn counting_app(calls: Arc<AtomicUsize>) -> Router {
    let cached = calls.clone();
    let plain = calls.clone();
    Router::new()
        .route(
            "/cached",
            get(move || {
                let n = cached.fetch_add(1, Ordering::SeqCst) + 1;
                async move { ([("cache-control", "max-age=60")], format!("version {n}")) }
            })
            .post(|body: Bytes| async move { format!("posted {} bytes", body.len()) }),
        )
        .route(
            "/plain",
            get(move || {
                plain.fetch_add(1, Ordering::SeqCst);
                async { "no caching headers" }
            }),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_is_a_miss_then_a_hit_and_unmarked_responses_are_not_stored() {
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = UpstreamServer::start(counting_app(calls.clone()));
    let proxy = start_proxy(&upstream.url(), memory_layer()).await;
    let client = HttpClient::new();

    let first = client.get(&format!("{proxy}/cached"), &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.text(), "version 1");
    assert!(
        first.header("cache-status").contains("fwd=miss"),
        "{first:?}"
    );
    let second = client.get(&format!("{proxy}/cached"), &[]).await;
    assert_eq!(second.text(), "version 1");
    assert!(second.header("cache-status").contains("hit"), "{second:?}");
    assert!(second.headers.contains_key("age"));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one upstream call for two GETs"
    );

    // No freshness, no validator: not stored (RFC 9111 shared cache).
    let before = calls.load(Ordering::SeqCst);
    for _ in 0..2 {
        let reply = client.get(&format!("{proxy}/plain"), &[]).await;
        assert_eq!(reply.text(), "no caching headers");
    }
    assert_eq!(calls.load(Ordering::SeqCst), before + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_passes_through_with_its_body_and_invalidates_the_url() {
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = UpstreamServer::start(counting_app(calls.clone()));
    let proxy = start_proxy(&upstream.url(), memory_layer()).await;
    let client = HttpClient::new();

    client.get(&format!("{proxy}/cached"), &[]).await;
    assert!(
        client
            .get(&format!("{proxy}/cached"), &[])
            .await
            .header("cache-status")
            .contains("hit")
    );
    let posted = client
        .request("POST", &format!("{proxy}/cached"), &[], vec![7u8; 3000])
        .await;
    assert_eq!(posted.status, StatusCode::OK);
    assert_eq!(posted.text(), "posted 3000 bytes");
    let after = client.get(&format!("{proxy}/cached"), &[]).await;
    assert_eq!(after.text(), "version 2", "the POST invalidated the page");
    assert!(after.header("cache-status").contains("fwd=miss"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_headers_are_forwarded_and_hop_by_hop_ones_stripped() {
    let app = Router::new().route(
        "/echo",
        get(|headers: HeaderMap| async move {
            let mut seen: Vec<String> = headers
                .iter()
                .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
                .collect();
            seen.sort();
            (
                [
                    ("connection", "x-upstream-hop"),
                    ("x-upstream-hop", "1"),
                    ("x-upstream-app", "kept"),
                ],
                seen.join("\n"),
            )
        }),
    );
    let upstream = UpstreamServer::start(app);
    let proxy = start_proxy(&upstream.url(), memory_layer()).await;
    let client = HttpClient::new();

    let reply = client
        .get(
            &format!("{proxy}/echo?b=2&a=1"),
            &[
                ("connection", "x-client-hop"),
                ("x-client-hop", "secret"),
                ("keep-alive", "timeout=5"),
                ("proxy-authorization", "Basic c2VjcmV0"),
                ("te", "trailers"),
                ("x-app", "yes"),
                ("x-forwarded-for", "203.0.113.9"),
                ("accept-language", "fr"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = reply.text();
    assert!(seen.contains("x-app: yes"), "{seen}");
    assert!(seen.contains("accept-language: fr"), "{seen}");
    assert!(seen.contains("via: 1.1 cachette"), "{seen}");
    // A client's own X-Forwarded-For is not believed (it is not trusted):
    // the proxy sets the field to the client's address.
    assert!(seen.contains("x-forwarded-for: 127.0.0.1\n"), "{seen}");
    assert!(seen.contains("x-forwarded-proto: http"), "{seen}");
    for hop in ["x-client-hop", "keep-alive", "proxy-authorization", "te:"] {
        assert!(!seen.contains(hop), "{hop} reached the upstream: {seen}");
    }
    assert_eq!(reply.header("x-upstream-app"), "kept");
    assert!(!reply.headers.contains_key("x-upstream-hop"));
    assert!(reply.header("via").contains("1.1 cachette"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways() {
    const CHUNK: usize = 1 << 20;
    const CHUNKS: usize = 20;
    // The upstream sends one chunk, then waits until the client has it: a
    // proxy that buffered the body would never deliver that first chunk.
    // (`no-store`: a response the cache may store is read up to
    // `max_body_bytes` before it is answered, to store it.)
    let first_chunk_seen = Arc::new(Notify::new());
    let gate = first_chunk_seen.clone();
    let app = Router::new()
        .route(
            "/large",
            get(move || {
                let gate = gate.clone();
                async move {
                    let (mut sender, body) = Channel::<Bytes, Infallible>::new(2);
                    tokio::spawn(async move {
                        for i in 0..CHUNKS {
                            if i == 1 {
                                gate.notified().await;
                            }
                            if sender
                                .send_data(Bytes::from(vec![b'x'; CHUNK]))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    });
                    ([("cache-control", "no-store")], Body::new(body))
                }
            }),
        )
        .route(
            "/large-cacheable",
            get(|| async {
                (
                    [("cache-control", "max-age=60")],
                    vec![b'z'; CHUNK * CHUNKS],
                )
            }),
        )
        .route(
            "/upload",
            axum::routing::post(|body: Body| async move {
                let mut body = body;
                let mut total = 0usize;
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame.unwrap().into_data() {
                        total += data.len();
                    }
                }
                format!("{total}")
            }),
        );
    let upstream = UpstreamServer::start(app);
    let proxy = start_proxy(&upstream.url(), memory_layer()).await;
    let client = HttpClient::new();

    let response = client
        .send("GET", &format!("{proxy}/large"), &[], Vec::new())
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = 0usize;
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the body kept coming (streamed, not buffered)")
    {
        if let Ok(data) = frame.unwrap().into_data() {
            assert!(data.iter().all(|b| *b == b'x'));
            if received == 0 {
                first_chunk_seen.notify_one();
            }
            received += data.len();
        }
    }
    assert_eq!(received, CHUNK * CHUNKS);

    // Storable but over max_body_bytes (8 MiB): streamed through, not stored.
    for _ in 0..2 {
        let reply = client.get(&format!("{proxy}/large-cacheable"), &[]).await;
        assert_eq!(reply.body.len(), CHUNK * CHUNKS);
        assert!(reply.body.iter().all(|b| *b == b'z'));
        assert!(
            reply.header("cache-status").contains("fwd=miss"),
            "{:?}",
            reply.headers
        );
    }

    let upload = client
        .request(
            "POST",
            &format!("{proxy}/upload"),
            &[],
            vec![b'y'; 12 << 20],
        )
        .await;
    assert_eq!(upload.text(), format!("{}", 12 << 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_is_502_or_stale_within_stale_if_error() {
    let client = HttpClient::new();
    // Nothing listens there.
    let closed = format!("http://127.0.0.1:{}", cachette_testkit::free_port());
    let proxy = start_proxy(&closed, memory_layer()).await;
    let reply = client.get(&format!("{proxy}/anything"), &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.text(), "upstream unreachable\n");

    // An entry stored while the upstream was up is served stale once the
    // upstream is gone, inside stale-if-error.
    let app = Router::new().route(
        "/page",
        get(|| async { ([("cache-control", "max-age=1, stale-if-error=60")], "kept") }),
    );
    let mut upstream = UpstreamServer::start(app);
    let proxy = start_proxy(&upstream.url(), memory_layer()).await;
    assert_eq!(
        client.get(&format!("{proxy}/page"), &[]).await.text(),
        "kept"
    );
    upstream.stop();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let stale = client.get(&format!("{proxy}/page"), &[]).await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!(stale.text(), "kept");
    assert!(
        stale.header("cache-status").contains("stale-if-error"),
        "{stale:?}"
    );
    let other = client.get(&format!("{proxy}/never-stored"), &[]).await;
    assert_eq!(other.status, StatusCode::BAD_GATEWAY);
}

/// An upstream page that shows what it was asked with, varies on
/// `Accept-Language`, and may be stored for a minute.
fn echo_app() -> Router {
    Router::new().route(
        "/echo",
        get(|headers: HeaderMap| async move {
            let show = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
                    .to_owned()
            };
            (
                [("cache-control", "max-age=60"), ("vary", "accept-language")],
                format!(
                    "host={} lang={} xfh={} xfp={} original={}",
                    show("host"),
                    show("accept-language"),
                    show("x-forwarded-host"),
                    show("x-forwarded-proto"),
                    show("x-original-url")
                ),
            )
        }),
    )
}

/// Sends `raw` (a whole HTTP/1.1 request with `Connection: close`) and
/// returns the whole answer as text.
async fn raw_request(proxy: &str, raw: &str) -> String {
    use std::io::{Read, Write};
    let addr = proxy.trim_start_matches("http://").to_owned();
    let raw = raw.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(raw.as_bytes()).unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_target_cannot_poison_another_host() {
    let upstream = UpstreamServer::start(echo_app());
    let proxy = start_proxy(&upstream.url(), memory_layer()).await;
    let attack = raw_request(
        &proxy,
        "GET http://victim.test/echo HTTP/1.1\r\nHost: attacker.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        attack.contains("host=victim.test"),
        "one authority, the target's: {attack}"
    );
    let client = HttpClient::new();
    let victim = client
        .get(&format!("{proxy}/echo"), &[("host", "victim.test")])
        .await;
    assert!(
        !victim.text().contains("attacker"),
        "the victim got the attacker's page: {}",
        victim.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_nominated_header_cannot_pick_the_variant() {
    let upstream = UpstreamServer::start(echo_app());
    let proxy = start_proxy(&upstream.url(), memory_layer()).await;
    let client = HttpClient::new();
    let attack = raw_request(
        &proxy,
        "GET /echo HTTP/1.1\r\nHost: shop.test\r\nAccept-Language: fr\r\nConnection: close, accept-language\r\n\r\n",
    )
    .await;
    assert!(attack.contains("lang=none"), "{attack}");
    let victim = client
        .get(
            &format!("{proxy}/echo"),
            &[("host", "shop.test"), ("accept-language", "fr")],
        )
        .await;
    assert!(
        victim.text().contains("lang=fr"),
        "the fr variant is the fr page: {}",
        victim.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_from_clients_are_dropped_unless_trusted() {
    let upstream = UpstreamServer::start(echo_app());
    let proxy = start_proxy(&upstream.url(), memory_layer()).await;
    let client = HttpClient::new();
    let attack = client
        .get(
            &format!("{proxy}/echo"),
            &[
                ("host", "shop.test"),
                ("x-forwarded-host", "evil.test"),
                ("x-forwarded-proto", "https"),
                ("x-original-url", "/admin"),
            ],
        )
        .await;
    assert_eq!(
        attack.text(),
        "host=shop.test lang=none xfh=shop.test xfp=http original=none",
        "the proxy sets the forwarding headers it owns and drops the rest"
    );
    let victim = client
        .get(&format!("{proxy}/echo"), &[("host", "shop.test")])
        .await;
    assert!(!victim.text().contains("evil"), "{}", victim.text());

    // Behind a trusted front proxy (here: loopback), they are passed on.
    let upstream = Upstream::new(&upstream.url(), Duration::from_secs(5))
        .unwrap()
        .trust(cachette_cli::proxy::TrustedProxies::parse(["127.0.0.0/8"]).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trusting = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(listener, router(upstream, memory_layer())));
    let fronted = client
        .get(
            &format!("{trusting}/echo"),
            &[("host", "shop.test"), ("x-forwarded-proto", "https")],
        )
        .await;
    assert!(fronted.text().contains("xfp=https"), "{}", fronted.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscored_forwarding_headers_are_dropped_too() {
    let upstream = UpstreamServer::start(Router::new().route(
        "/h",
        get(|headers: HeaderMap| async move {
            let names: Vec<String> = headers.keys().map(|k| k.to_string()).collect();
            ([("cache-control", "max-age=60")], names.join(" "))
        }),
    ));
    let proxy = start_proxy(&upstream.url(), memory_layer()).await;
    let reply = raw_request(
        &proxy,
        "GET /h HTTP/1.1\r\nHost: shop.test\r\nX_Forwarded_Host: evil.test\r\nX-Forwarded-Ssl: on\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(!reply.contains("x_forwarded_host"), "{reply}");
    assert!(!reply.contains("x-forwarded-ssl"), "{reply}");
    let mapped = cachette_cli::proxy::TrustedProxies::parse(["::ffff:10.0.0.0/104"]).unwrap();
    assert!(mapped.contains("10.1.2.3".parse().unwrap()));
    assert!(mapped.contains("::ffff:10.9.9.9".parse().unwrap()));
    assert!(!mapped.contains("11.0.0.1".parse().unwrap()));
}

/// A request over HTTP/2 with prior knowledge (h2c) or HTTP/1.1; returns
/// the version answered, `Cache-Status` and the body.
async fn h2c_or_h1(h2: bool, url: &str, host: Option<&str>) -> (http::Version, String, String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(h2)
        .build_http::<http_body_util::Empty<Bytes>>();
    let mut request = http::Request::get(url);
    if let Some(host) = host {
        request = request.header("host", host);
    }
    let response = client
        .request(request.body(http_body_util::Empty::new()).unwrap())
        .await
        .unwrap();
    let version = response.version();
    let status = response
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (version, status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_gets_the_same_cache_as_http1() {
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = UpstreamServer::start(counting_app(calls.clone()));
    let proxy = start_proxy(&upstream.url(), memory_layer()).await;
    let url = format!("{proxy}/cached");
    let (version, status, body) = h2c_or_h1(true, &url, None).await;
    assert_eq!(version, http::Version::HTTP_2, "h2c on the plain listener");
    assert!(status.contains("fwd=miss"), "{status}");
    assert_eq!(body, "version 1");
    // The same entry over HTTP/1.1 (one key for both protocols), and again
    // over HTTP/2.
    let (version, status, body) = h2c_or_h1(false, &url, None).await;
    assert_eq!(version, http::Version::HTTP_11);
    assert!(status.contains("hit"), "{status}");
    assert_eq!(body, "version 1");
    let (_, status, _) = h2c_or_h1(true, &url, None).await;
    assert!(status.contains("hit"), "{status}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_the_authority_is_the_key_not_a_conflicting_host() {
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = UpstreamServer::start(counting_app(calls.clone()));
    let proxy = start_proxy(&upstream.url(), memory_layer()).await;
    let addr = proxy.trim_start_matches("http://");
    // :authority is the proxy's address; a Host field says victim.example.
    let (_, status, _) = h2c_or_h1(true, &format!("{proxy}/cached"), Some("victim.example")).await;
    assert!(status.contains("fwd=miss"), "{status}");
    // What was stored is not served for victim.example over HTTP/1.1...
    let (_, status, _) = h2c_or_h1(false, &format!("{proxy}/cached"), Some("victim.example")).await;
    assert!(status.contains("fwd=miss"), "not poisoned: {status}");
    // ...but is for the authority it was asked for.
    let (_, status, _) = h2c_or_h1(false, &format!("{proxy}/cached"), Some(addr)).await;
    assert!(status.contains("hit"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_body_larger_than_the_stream_window_is_not_held_back() {
    // 64 KiB is one byte more than HTTP/2's initial stream window: the last
    // byte goes after the client's WINDOW_UPDATE, as a small segment behind
    // unacknowledged data. Without TCP_NODELAY on the accepted socket, Nagle
    // holds it until the client's delayed ACK: ~40 ms for every response.
    let body = Bytes::from(vec![b'x'; 64 * 1024]);
    let app = Router::new().route(
        "/big",
        get(move || {
            let body = body.clone();
            async move { ([("cache-control", "max-age=60")], body) }
        }),
    );
    let upstream = UpstreamServer::start(app);
    let proxy = start_proxy(&upstream.url(), memory_layer()).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Empty<Bytes>>();
    let url: http::Uri = format!("{proxy}/big").parse().unwrap();
    let get_body = || async {
        let response = client.get(url.clone()).await.unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .len()
    };
    assert_eq!(get_body().await, 64 * 1024, "the miss fills the cache");
    let hits = 25;
    let started = std::time::Instant::now();
    for _ in 0..hits {
        assert_eq!(get_body().await, 64 * 1024);
    }
    let elapsed = started.elapsed();
    // Held back, 25 hits take over a second; sent at once, a few ms each
    // even on a loaded machine.
    assert!(
        elapsed < Duration::from_millis(750),
        "{hits} HTTP/2 hits of 64 KiB took {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_request_head_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Slowloris: half a request head, then nothing. On the plain listener
    // too (axum's own server sets no header timer: it waited forever).
    let upstream = UpstreamServer::start(Router::new().route("/", get(|| async { "ok" })));
    let app = router(
        Upstream::new(&upstream.url(), Duration::from_secs(5)).unwrap(),
        memory_layer(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = cachette_cli::listen::ClientLimits {
        header_read_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    tokio::spawn(cachette_cli::proxy::serve_with(
        listener,
        app,
        limits,
        std::future::pending(),
    ));
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: shop.test\r\nX-Slow: ")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), slow.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the connection is still open after 3 s");
    // A client that sends its head in time is served on the same listener.
    let mut quick = tokio::net::TcpStream::connect(addr).await.unwrap();
    quick
        .write_all(b"GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    quick.read_to_end(&mut answer).await.unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}
