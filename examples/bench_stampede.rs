//! A stampede: N clients, each on its own open connection, request one URL
//! at the same instant. Prints how many succeeded and their latency
//! percentiles. Used by bench/load.sh against a cold key whose origin takes
//! 200 ms, with the origin's call counter read before and after. Several
//! URLs (comma-separated: one per server of a fleet) get the clients in
//! turn, all with the first URL's authority as `Host`: one site behind a
//! load balancer, so one cache key on every server.
//!
//! ```sh
//! cargo run --release --example bench_stampede -- http://127.0.0.1:3001/slow-cached/1 500
//! ```

use std::{sync::Arc, time::Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let urls: Vec<http::Uri> = args
        .next()
        .ok_or("usage: bench_stampede URL[,URL...] [N]")?
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let clients: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(500);

    let host = urls[0]
        .authority()
        .ok_or("the URL needs host:port")?
        .clone();
    // Connect everyone first: the stampede measures the cache, not connects.
    let mut senders = Vec::with_capacity(clients);
    for i in 0..clients {
        let url = urls[i % urls.len()].clone();
        let server = url.authority().ok_or("the URL needs host:port")?.clone();
        let stream = tokio::net::TcpStream::connect(server.as_str()).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        senders.push((sender, url));
    }
    let (go, ready) = tokio::sync::watch::channel(false);
    let go = Arc::new(go);
    let mut tasks = Vec::with_capacity(clients);
    for (mut sender, url) in senders {
        let mut ready = ready.clone();
        // Origin-form: an absolute URI's authority would override `Host`.
        let path = url.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let request = http::Request::get(path)
            .header(http::header::HOST, host.as_str())
            .body(Empty::<Bytes>::new())?;
        tasks.push(tokio::spawn(async move {
            let _ = ready.wait_for(|go| *go).await;
            let started = Instant::now();
            let response = sender.send_request(request).await.ok()?;
            let ok = response.status().is_success();
            response.into_body().collect().await.ok()?;
            Some((ok, started.elapsed()))
        }));
    }
    go.send_replace(true);
    let mut latencies = Vec::with_capacity(clients);
    let mut ok = 0;
    for task in tasks {
        if let Ok(Some((success, elapsed))) = task.await {
            ok += usize::from(success);
            latencies.push(elapsed.as_secs_f64() * 1000.0);
        }
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let rank = ((latencies.len() as f64) * q).ceil() as usize;
        latencies[rank.clamp(1, latencies.len()) - 1]
    };
    println!(
        "stampede requests={clients} ok={ok} p50_ms={:.1} p99_ms={:.1} max_ms={:.1}",
        at(0.50),
        at(0.99),
        at(1.0)
    );
    Ok(())
}
