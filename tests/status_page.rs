//! The status page in a real headless Chromium (driven through
//! `chromedriver` with fantoccini): live data from a running app with a real
//! `redis-server`, a killed Redis shown as an open breaker, and the purge
//! form removing an entry. A screenshot is left in the target directory
//! (`target/status-page.png`), not committed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    os::unix::process::CommandExt,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use axum::{Router, routing::get};
use cachette::{Caches, settings::Settings};
use cachette_testkit::RedisServer;
use fantoccini::{Client, ClientBuilder, Locator};

const TOKEN: &str = "status-page-token-0123456789";

/// `chromedriver` on a free port, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole process group: chromedriver and the Chromium it started
        // (which a test that panics never closed).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn chromedriver() -> Driver {
    let port = free_port();
    let binary = [
        "chromedriver",
        "/usr/bin/chromedriver",
        "/usr/lib/chromium/chromedriver",
    ]
    .into_iter()
    .find(|b| Command::new(b).arg("--version").output().is_ok())
    .expect("chromedriver is installed (scripts/test.sh installs chromium-driver)");
    let child = Command::new(binary)
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Owned before anything can fail: dropped, it stops the driver.
    let driver = Driver { child, port };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    driver
}

async fn browser(driver: &Driver) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,1600"]
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session")
}

/// Serves `router` on a free loopback port; returns its base URL.
async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{address}")
}

/// Waits until the element's text satisfies `check`; returns the text.
async fn wait_for_text(browser: &Client, css: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(element) = browser.find(Locator::Css(css)).await {
            if let Ok(text) = element.text().await {
                if check(&text) {
                    return text;
                }
                last = text;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("`{css}` never matched; last text: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_live_data_a_dead_tier_and_purges() {
    let mut redis = RedisServer::start();
    let settings = Settings::from_toml_str(
        "status.toml",
        &format!(
            r#"[admin]
token = "{TOKEN}"
[redis.main]
url = "{}"
master_timeout = "200ms"
connect_timeout = "200ms"

[caches.pages]
tiers = ["memory", "master"]
[caches.pages.http]
default_ttl = "60s"

[caches.data]
tiers = ["memory"]
"#,
            redis.url()
        ),
    )
    .unwrap();
    let caches = Caches::from_settings(settings).await.unwrap();
    let app = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .layer(caches.layer("pages").unwrap());
    let app_url = serve(app).await;
    // Nested, as an app mounts it: the page's own requests must go to
    // /admin/..., not to the host app.
    let admin_url = format!(
        "{}/admin",
        serve(Router::new().nest("/admin", caches.admin_router())).await
    );
    let data = caches.cache("data").unwrap();
    data.set("report", "ready", ()).await.unwrap();

    // Some traffic: one miss, then hits.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    for _ in 0..10 {
        let response = client
            .get(format!("{app_url}/hello").parse().unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    // Steady traffic for the chart while the page is open.
    let traffic = {
        let (client, url) = (client.clone(), format!("{app_url}/hello"));
        tokio::spawn(async move {
            loop {
                let _ = client.get(url.parse().unwrap()).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let driver = chromedriver();
    let browser = browser(&driver).await;
    browser.goto(&admin_url).await.unwrap();
    // The live data arrives: both caches, and the hits counted.
    wait_for_text(&browser, r#"article[data-cache="pages"] h2"#, |t| {
        t == "pages"
    })
    .await;
    wait_for_text(&browser, r#"article[data-cache="data"] h2"#, |t| {
        t == "data"
    })
    .await;
    let hits = wait_for_text(
        &browser,
        r#"article[data-cache="pages"] [data-figure="hits"] .value"#,
        |t| t.replace(',', "").parse::<u64>().is_ok_and(|n| n >= 9),
    )
    .await;
    assert!(hits.replace(',', "").parse::<u64>().unwrap() >= 9);
    wait_for_text(&browser, "#overall", |t| t == "status: ok").await;
    let bus = r#"article[data-cache="pages"] [data-figure="bus"] .value"#;
    wait_for_text(&browser, bus, |t| t == "connected").await;

    // A few seconds of history in the chart (longer for the screenshot in
    // docs/: `STATUS_PAGE_HISTORY_SECS=45`).
    let history = std::env::var("STATUS_PAGE_HISTORY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    tokio::time::sleep(Duration::from_secs(history)).await;
    // Redis dies: the next requests open the master tier's breaker, and the
    // page says so in words.
    redis.kill();
    for i in 0..8 {
        let response = client
            .get(format!("{app_url}/hello?miss={i}").parse().unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "a Redis outage is never a 5xx");
    }
    wait_for_text(
        &browser,
        r#"article[data-cache="pages"] tr[data-tier="master"] .state"#,
        |t| t == "open",
    )
    .await;
    wait_for_text(&browser, "#overall", |t| t == "status: degraded").await;
    wait_for_text(&browser, bus, |t| t == "DOWN").await;

    // The purge form, with the token typed in.
    browser
        .find(Locator::Css("#purge-cache"))
        .await
        .unwrap()
        .select_by_value("data")
        .await
        .unwrap();
    browser
        .find(Locator::Css("#purge-kind"))
        .await
        .unwrap()
        .select_by_value("key")
        .await
        .unwrap();
    browser
        .find(Locator::Css("#purge-value"))
        .await
        .unwrap()
        .send_keys("report")
        .await
        .unwrap();
    browser
        .find(Locator::Css("#purge-token"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    browser
        .find(Locator::Css("#purge-form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let result = wait_for_text(&browser, "#purge-result", |t| t.starts_with("purged")).await;
    assert!(result.contains("data"), "{result}");
    assert_eq!(data.get::<String>("report", ()).await.unwrap(), None);

    let screenshot = browser.screenshot().await.unwrap();
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("status-page.png"), screenshot).unwrap();

    // Phone width: the page reflows (wide tables scroll inside their own
    // box), nothing makes the whole page scroll sideways.
    browser.set_window_size(390, 844).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let fits = browser
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        fits,
        serde_json::Value::Bool(true),
        "no sideways scroll at phone width"
    );

    // The token is kept nowhere: not in the address, not in storage.
    let kept = browser
        .execute(
            "return [location.href, JSON.stringify(localStorage), JSON.stringify(sessionStorage), document.cookie].join(' ')",
            vec![],
        )
        .await
        .unwrap();
    assert!(!kept.as_str().unwrap().contains(TOKEN), "{kept}");
    browser.close().await.unwrap();
    traffic.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_page_has_no_purge_form_and_sets_a_strict_policy() {
    let caches = Caches::memory_only();
    let admin_url = serve(caches.admin_router()).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let response = client
        .get(format!("{admin_url}/").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let policy = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(policy.contains("default-src 'none'") && policy.contains("script-src 'self'"));
    use http_body_util::BodyExt;
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let page = String::from_utf8(body.to_vec()).unwrap();
    assert!(page.contains(r#"content="off""#));
    for asset in ["status.js", "status.css"] {
        let response = client
            .get(format!("{admin_url}/{asset}").parse().unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{asset}");
    }
}
