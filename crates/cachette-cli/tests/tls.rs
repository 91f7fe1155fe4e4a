//! `cachette proxy` in front of an HTTPS upstream: a real TLS server on
//! loopback with a certificate from a CA made in the test (rcgen). The
//! proxy verifies it against `--upstream-ca`, sends the upstream's name as
//! SNI and `Host`, and caches as over HTTP; a certificate from another CA
//! is a `502` with a clear log line, never a silent connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    process::{Command, Stdio},
    sync::{Arc, Mutex},
};

use axum::{Router, extract::Request, routing::get};
use cachette_testkit::free_port;
use common::{HttpClient, cachette, wait_for_port};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

struct Ca {
    pem: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        cert,
        key,
    }
}

/// Server TLS settings for a certificate naming `name`, signed by `ca`.
fn server_tls(ca: &Ca, name: &str) -> rustls::ServerConfig {
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca.cert, &ca.key)
        .unwrap();
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap()
}

/// An HTTPS server for `localhost` (certificate signed by `ca`) answering
/// `app` over HTTP/1.1; returns its port.
async fn https_upstream(ca: &Ca, app: Router) -> u16 {
    https_upstream_offering(ca, app, &[]).await
}

/// [`https_upstream`], offering the protocols in `alpn` (HTTP/2 and 1.1
/// served by one builder).
async fn https_upstream_offering(ca: &Ca, app: Router, alpn: &[&[u8]]) -> u16 {
    let mut config = server_tls(ca, "localhost");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });
    port
}

/// `cachette proxy` with its log in a file; killed on drop.
struct Proxy {
    child: std::process::Child,
    listen: String,
    log: std::path::PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proxy(upstream: &str, ca_file: &std::path::Path, dir: &std::path::Path) -> Proxy {
    proxy_with(upstream, ca_file, dir, &[], &[])
}

fn proxy_with(
    upstream: &str,
    ca_file: &std::path::Path,
    dir: &std::path::Path,
    extra_args: &[&str],
    env: &[(&str, &str)],
) -> Proxy {
    let listen = format!("127.0.0.1:{}", free_port());
    let log = dir.join("proxy.log");
    let child = Command::new(assert_cmd::cargo::cargo_bin("cachette"))
        .args([
            "proxy",
            "--listen",
            &listen,
            "--upstream",
            upstream,
            "--upstream-ca",
        ])
        .arg(ca_file)
        .args(extra_args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Owned before waiting: a panic while it starts still stops it.
    let proxy = Proxy { child, listen, log };
    wait_for_port(&proxy.listen);
    proxy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_is_verified_named_and_cached() {
    let ca = ca("cachette test CA");
    let hosts = Arc::new(Mutex::new(Vec::new()));
    let seen = hosts.clone();
    let app = Router::new().route(
        "/api/item",
        get(move |request: Request| {
            let seen = seen.clone();
            async move {
                let host = request
                    .headers()
                    .get("host")
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                seen.lock().unwrap().push(host);
                ([("cache-control", "max-age=60")], "from https")
            }
        }),
    );
    let port = https_upstream(&ca, app).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let proxy = proxy(&format!("https://localhost:{port}"), &ca_file, dir.path());

    let client = HttpClient::new();
    let url = format!("http://{}/api/item", proxy.listen);
    // A client's own X-Api-Key does not choose the answer (the cache keys no
    // such field): the proxy's value goes upstream.
    let first = client.get(&url, &[("x-api-key", "attacker")]).await;
    assert_eq!(
        first.status,
        200,
        "{}",
        std::fs::read_to_string(&proxy.log).unwrap()
    );
    assert_eq!(first.text(), "from https");
    assert!(first.header("cache-status").contains("fwd=miss"));
    let second = client.get(&url, &[]).await;
    assert!(
        second.header("cache-status").contains("hit"),
        "{}",
        second.header("cache-status")
    );
    let hosts = hosts.lock().unwrap().clone();
    assert_eq!(
        hosts,
        vec![format!("localhost:{port}")],
        "one call, addressed by the upstream's own name"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_certificate_from_another_ca_is_a_502_with_a_clear_log_line() {
    let upstream_ca = ca("the upstream's CA");
    let trusted_ca = ca("another CA");
    let port = https_upstream(
        &upstream_ca,
        Router::new().route("/", get(|| async { "must not be read" })),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &trusted_ca.pem).unwrap();
    let proxy = proxy(&format!("https://localhost:{port}"), &ca_file, dir.path());
    let reply = HttpClient::new()
        .get(&format!("http://{}/", proxy.listen), &[])
        .await;
    assert_eq!(reply.status, 502);
    assert!(!reply.text().contains("must not be read"));
    let log = std::fs::read_to_string(&proxy.log).unwrap();
    assert!(
        log.contains("upstream unreachable") && log.to_lowercase().contains("certificate"),
        "{log}"
    );
}

#[test]
fn a_missing_or_empty_ca_file_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.pem");
    let output = cachette()
        .args([
            "proxy",
            "--upstream",
            "https://localhost:1",
            "--upstream-ca",
        ])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--upstream-ca") && stderr.contains("nope.pem"),
        "{stderr}"
    );
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let output = cachette()
        .args([
            "proxy",
            "--upstream",
            "https://localhost:1",
            "--upstream-ca",
        ])
        .arg(&empty)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no PEM certificate"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_the_environment_reaches_the_upstream_and_never_a_client() {
    const TOKEN: &str = "upstream-secret-0123456789";
    let ca = ca("cachette test CA");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let field = |request: &Request, name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (on_get, on_post) = (record.clone(), record);
    let app = Router::new().route(
        "/repos",
        get(move |request: Request| {
            let record = on_get.clone();
            async move {
                let auth = field(&request, "authorization");
                let key = field(&request, "x-api-key");
                record.lock().unwrap().push(format!("GET {auth} / {key}"));
                let body = if auth == format!("Bearer {TOKEN}") {
                    "repos for the proxy's token"
                } else {
                    "other credentials"
                };
                ([("cache-control", "max-age=60")], body)
            }
        })
        .post(move |request: Request| {
            let record = on_post.clone();
            async move {
                let auth = field(&request, "authorization");
                record.lock().unwrap().push(format!("POST {auth}"));
                "posted"
            }
        }),
    );
    let port = https_upstream(&ca, app).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let config = dir.path().join("caches.toml");
    std::fs::write(
        &config,
        "[caches.default]\n[proxy.upstream_headers]\nauthorization = \"Bearer ${CACHETTE_TEST_API_TOKEN}\"\nx-api-key = \"${CACHETTE_TEST_API_TOKEN}\"\n",
    )
    .unwrap();
    let proxy = proxy_with(
        &format!("https://localhost:{port}"),
        &ca_file,
        dir.path(),
        &["--config", config.to_str().unwrap()],
        &[("CACHETTE_TEST_API_TOKEN", TOKEN)],
    );
    let client = HttpClient::new();
    let url = format!("http://{}/repos", proxy.listen);
    // A client's own X-Api-Key does not choose the answer (the cache keys no
    // such field): the proxy's value goes upstream.
    let first = client.get(&url, &[("x-api-key", "attacker")]).await;
    assert_eq!(
        first.text(),
        "repos for the proxy's token",
        "{}",
        std::fs::read_to_string(&proxy.log).unwrap()
    );
    let second = client.get(&url, &[]).await;
    assert!(
        second.header("cache-status").contains("hit"),
        "shared by the proxy's clients"
    );
    for reply in [&first, &second] {
        for (_, value) in reply.headers.iter() {
            assert!(
                !value.to_str().unwrap_or("").contains(TOKEN),
                "{:?}",
                reply.headers
            );
        }
    }
    // A client's own credentials go on as they are (and are not cached for others).
    let own = client
        .get(&url, &[("authorization", "Bearer client-own")])
        .await;
    assert_eq!(own.text(), "other credentials");
    // ...and did not replace the shared entry.
    let anonymous = client.get(&url, &[]).await;
    assert_eq!(anonymous.text(), "repos for the proxy's token");
    assert!(anonymous.header("cache-status").contains("hit"));
    // Writes do not carry the proxy's credentials; TRACE (an echo) is refused.
    let posted = client.request("POST", &url, &[], b"x".to_vec()).await;
    assert_eq!(posted.status, 200);
    let traced = client.request("TRACE", &url, &[], Vec::new()).await;
    assert_eq!(traced.status, 405);
    assert_eq!(
        seen.lock().unwrap().clone(),
        vec![
            format!("GET Bearer {TOKEN} / {TOKEN}"),
            format!("GET Bearer client-own / {TOKEN}"),
            "POST ".to_owned(),
        ]
    );
    assert!(
        !std::fs::read_to_string(&proxy.log).unwrap().contains(TOKEN),
        "not logged"
    );
}

#[test]
fn an_upstream_header_naming_a_missing_variable_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("caches.toml");
    std::fs::write(
        &config,
        "[proxy.upstream_headers]\nauthorization = \"Bearer ${CACHETTE_TEST_UNSET_VARIABLE}\"\n",
    )
    .unwrap();
    let output = cachette()
        .args(["proxy", "--upstream", "http://127.0.0.1:1", "--config"])
        .arg(&config)
        .env_remove("CACHETTE_TEST_UNSET_VARIABLE")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("proxy.upstream_headers.authorization")
            && stderr.contains("CACHETTE_TEST_UNSET_VARIABLE")
            && stderr.contains("caches.toml"),
        "{stderr}"
    );
}

/// A certificate for `localhost` signed by `ca`: (chain PEM, key PEM, DER).
fn leaf(ca: &Ca) -> (String, String, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca.cert, &ca.key)
        .unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

fn client_tls(ca: &Ca) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca.cert.der().to_vec()))
        .unwrap();
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// GET `url` over TLS trusting `ca`, offering HTTP/2 or HTTP/1.1 only.
async fn tls_get(ca: &Ca, url: &str, h2: bool) -> (http::Version, String, String) {
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_tls(ca))
        .https_only();
    let connector = if h2 {
        builder.enable_http2().build()
    } else {
        builder.enable_http1().build()
    };
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(h2)
        .build::<_, http_body_util::Empty<bytes::Bytes>>(connector);
    let response = client.get(url.parse().unwrap()).await.unwrap();
    let version = response.version();
    let status = response
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    use http_body_util::BodyExt;
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (version, status, String::from_utf8(body.to_vec()).unwrap())
}

/// The certificate a new TLS connection to `port` is shown.
async fn served_certificate(ca: &Ca, port: u16) -> Vec<u8> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls(ca)));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let stream = connector
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_terminates_tls_speaks_h2_and_h1_by_alpn_and_reloads_its_certificate_on_sighup() {
    let ca = ca("cachette test CA");
    let protos = Arc::new(Mutex::new(Vec::new()));
    let seen = protos.clone();
    let upstream = common::UpstreamServer::start(Router::new().route(
        "/page",
        get(move |request: Request| {
            let seen = seen.clone();
            async move {
                let proto = request
                    .headers()
                    .get("x-forwarded-proto")
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                seen.lock().unwrap().push(proto);
                ([("cache-control", "max-age=60")], "page")
            }
        }),
    ));
    let dir = tempfile::tempdir().unwrap();
    let (cert_pem, key_pem, first_der) = leaf(&ca);
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, &cert_pem).unwrap();
    std::fs::write(&key_file, &key_pem).unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let log = dir.path().join("proxy.log");
    let child = Command::new(assert_cmd::cargo::cargo_bin("cachette"))
        .args([
            "proxy",
            "--listen",
            &listen,
            "--upstream",
            &upstream.url(),
            "--tls-cert",
        ])
        .arg(&cert_file)
        .arg("--tls-key")
        .arg(&key_file)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let proxy = Proxy {
        child,
        listen: listen.clone(),
        log,
    };
    wait_for_port(&listen);
    let url = format!("https://localhost:{port}/page");
    let (version, status, body) = tls_get(&ca, &url, true).await;
    assert_eq!(version, http::Version::HTTP_2, "h2 by ALPN");
    assert!(status.contains("fwd=miss"), "{status}");
    assert_eq!(body, "page");
    let (version, status, _) = tls_get(&ca, &url, false).await;
    assert_eq!(version, http::Version::HTTP_11);
    assert!(
        status.contains("hit"),
        "the same entry over HTTP/1.1: {status}"
    );
    assert_eq!(protos.lock().unwrap().clone(), vec!["https".to_owned()]);
    assert_eq!(served_certificate(&ca, port).await, first_der);

    // A new certificate, then SIGHUP: new connections get it, the process
    // and its cache stay.
    let (cert_pem, key_pem, second_der) = leaf(&ca);
    std::fs::write(&cert_file, &cert_pem).unwrap();
    std::fs::write(&key_file, &key_pem).unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &proxy.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while served_certificate(&ca, port).await != second_der {
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate was not served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (_, status, _) = tls_get(&ca, &url, true).await;
    assert!(status.contains("hit"), "same process, same cache: {status}");
    assert!(
        std::fs::read_to_string(&proxy.log)
            .unwrap()
            .contains("TLS certificate reloaded")
    );
}

#[test]
fn tls_options_are_checked_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "no certificate here\n").unwrap();
    let output = cachette()
        .args(["proxy", "--upstream", "http://127.0.0.1:1", "--tls-cert"])
        .arg(&cert)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--tls-key go together"));
    let output = cachette()
        .args(["proxy", "--upstream", "http://127.0.0.1:1", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&cert)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no PEM certificate"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_name_is_refused_even_from_a_trusted_ca() {
    let ca = ca("cachette test CA");
    // The upstream answers for `other.example`, reached as `localhost`.
    let config = server_tls(&ca, "other.example");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = acceptor.accept(tcp).await;
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let proxy = proxy(&format!("https://localhost:{port}"), &ca_file, dir.path());
    let reply = HttpClient::new()
        .get(&format!("http://{}/", proxy.listen), &[])
        .await;
    assert_eq!(reply.status, 502);
    let log = std::fs::read_to_string(&proxy.log).unwrap();
    assert!(log.to_lowercase().contains("certificate"), "{log}");
}

#[test]
fn credentials_in_the_upstream_url_are_refused() {
    let output = cachette()
        .args(["proxy", "--upstream", "https://user:secret@localhost:1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no user or password"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_offering_http2_by_alpn_is_spoken_to_in_http2() {
    let ca = ca("cachette test CA");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = Router::new().route(
        "/api/item",
        get(move |request: Request| {
            let record = record.clone();
            async move {
                record.lock().unwrap().push((
                    request.version(),
                    request.uri().authority().map(|a| a.to_string()),
                ));
                ([("cache-control", "max-age=60")], "over h2")
            }
        }),
    );
    let port = https_upstream_offering(&ca, app, &[b"h2", b"http/1.1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let proxy = proxy(&format!("https://localhost:{port}"), &ca_file, dir.path());

    let client = HttpClient::new();
    let url = format!("http://{}/api/item", proxy.listen);
    let first = client.get(&url, &[]).await;
    assert_eq!(
        first.status,
        200,
        "{}",
        std::fs::read_to_string(&proxy.log).unwrap()
    );
    assert_eq!(first.text(), "over h2");
    assert!(first.header("cache-status").contains("fwd=miss"));
    let second = client.get(&url, &[]).await;
    assert!(second.header("cache-status").contains("hit"));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![(http::Version::HTTP_2, Some(format!("localhost:{port}")))],
        "one call, over HTTP/2, with the upstream's own authority"
    );
}
