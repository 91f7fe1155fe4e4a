//! `cachette top` in a real pseudo-terminal (util-linux `script`), reading
//! a running `cachette proxy --admin`: it draws the cache and tier rows and
//! quits on `q`; an unreachable admin address is a clear error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    io::{Read, Write},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use axum::{Router, routing::get};
use cachette_testkit::free_port;
use common::{HttpClient, Running, UpstreamServer, cachette, wait_for_port};

/// The screen text without terminal escape sequences.
fn plain(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte; others: ESC + one char.
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_draws_the_caches_of_a_running_proxy_and_quits_on_q() {
    let upstream = UpstreamServer::start(Router::new().route(
        "/page",
        get(|| async { ([("cache-control", "max-age=60")], "page") }),
    ));
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
    ]);
    wait_for_port(&listen);
    wait_for_port(&admin);
    let client = HttpClient::new();
    for _ in 0..5 {
        assert_eq!(
            client
                .get(&format!("http://{listen}/page"), &[])
                .await
                .status,
            200
        );
    }

    let binary = env!("CARGO_BIN_EXE_cachette");
    let command =
        format!("stty rows 30 cols 150; exec {binary} top --admin http://{admin} --interval 200ms");
    let mut child = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("util-linux `script` (Debian's bsdutils, always installed) gives the view a pseudo-terminal");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut raw = Vec::new();
        let _ = stdout.read_to_end(&mut raw);
        raw
    });
    // A few redraws, then `q`.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"q").unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`q` did not quit the view");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(stdin);
    let screen = plain(&reader.join().unwrap());
    assert!(status.success(), "exit {status:?}; screen: {screen}");
    assert!(screen.contains("cachette top"), "{screen}");
    assert!(screen.contains("default"), "the cache's row: {screen}");
    assert!(screen.contains("memory"), "the tier's row: {screen}");
    assert!(screen.contains("closed"), "the breaker in words: {screen}");
    assert!(
        screen.contains("hits 5") || screen.contains("hits 4"),
        "{screen}"
    );
}

#[test]
fn top_says_clearly_when_the_admin_address_is_unreachable() {
    let port = free_port();
    let output = cachette()
        .args(["top", "--admin", &format!("http://127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot read http://127.0.0.1:{port}/stats")),
        "{stderr}"
    );
}
