//! A mass expiry under load (bench/load.sh's expiry row): fills `keys`
//! entries (`URL?k=1..keys`, each stored with the route's short `max-age`),
//! then keeps `connections` clients requesting random keys for `seconds`,
//! through the moment they all expire and are refilled. Prints one line
//! per second of the run: requests, non-2xx answers, p50 / p99 / max
//! latency; then the origin calls during the run (read from `CALLS_URL`).
//!
//! ```sh
//! cargo run --release --example bench_expiry -- http://127.0.0.1:3001/expiring http://127.0.0.1:3001/expiring-calls 100000 64 40
//! ```
//! Output: `sec=N requests=.. errors=.. p50_us=.. p99_us=.. max_us=..` per
//! second, then `calls=.. keys=..`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(authority: &str) -> Result<Sender, Box<dyn std::error::Error + Send + Sync>> {
    let stream = tokio::net::TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// GET `path` on `sender`; the status, after reading the whole body.
async fn get(
    sender: &mut Sender,
    host: &str,
    path: &str,
) -> Result<u16, Box<dyn std::error::Error + Send + Sync>> {
    sender.ready().await?;
    let request = http::Request::get(path)
        .header("host", host)
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    response.into_body().collect().await?;
    Ok(status)
}

/// The origin's call counter (a number as the body).
async fn origin_calls(
    sender: &mut Sender,
    host: &str,
    path: &str,
) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    sender.ready().await?;
    let request = http::Request::get(path)
        .header("host", host)
        .body(Empty::<Bytes>::new())?;
    let body = sender
        .send_request(request)
        .await?
        .into_body()
        .collect()
        .await?
        .to_bytes();
    Ok(std::str::from_utf8(&body)?.trim().parse()?)
}

/// A small xorshift: random keys without a dependency.
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: bench_expiry URL CALLS_URL [keys] [connections] [seconds]";
    let url: http::Uri = args.next().ok_or(usage)?.parse()?;
    let calls_url: http::Uri = args.next().ok_or(usage)?.parse()?;
    let keys: u64 = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100_000);
    let connections: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(64);
    let seconds: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(40);
    let authority = url.authority().ok_or("URL without host")?.to_string();
    let path = url.path().to_owned();

    // Fill: every key once, 16 clients walking the key space.
    let next = Arc::new(AtomicUsize::new(1));
    let mut fill = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (authority, path, next) = (authority.clone(), path.clone(), next.clone());
        fill.spawn(async move {
            let mut sender = connect(&authority).await?;
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed) as u64;
                if k > keys {
                    return Ok::<_, Box<dyn std::error::Error + Send + Sync>>(());
                }
                get(&mut sender, &authority, &format!("{path}?k={k}")).await?;
            }
        });
    }
    while let Some(done) = fill.join_next().await {
        done??;
    }

    let calls_host = calls_url
        .authority()
        .ok_or("CALLS_URL without host")?
        .to_string();
    let mut calls_sender = connect(&calls_host).await?;
    let calls_before = origin_calls(&mut calls_sender, &calls_host, calls_url.path()).await?;

    // The load: each client keeps per-second buckets of latencies (µs)
    // and errors, merged at the end.
    let started = Instant::now();
    let mut load = tokio::task::JoinSet::new();
    for c in 0..connections {
        let (authority, path) = (authority.clone(), path.clone());
        load.spawn(async move {
            let mut buckets: Vec<(Vec<u32>, u64)> = vec![(Vec::new(), 0); seconds];
            let mut sender = connect(&authority).await?;
            let mut random =
                Random(0x9E37_79B9_7F4A_7C15 ^ (c as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
            loop {
                if started.elapsed().as_secs() as usize >= seconds {
                    return Ok::<_, Box<dyn std::error::Error + Send + Sync>>(buckets);
                }
                let k = random.below(keys) + 1;
                let sent = Instant::now();
                let status = get(&mut sender, &authority, &format!("{path}?k={k}")).await;
                let took = u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX);
                let bucket = (started.elapsed().as_secs() as usize).min(seconds - 1);
                buckets[bucket].0.push(took);
                match status {
                    Ok(200..=299) => {}
                    Ok(_) => buckets[bucket].1 += 1,
                    Err(_) => {
                        buckets[bucket].1 += 1;
                        sender = connect(&authority).await?;
                    }
                }
            }
        });
    }
    let mut merged: Vec<(Vec<u32>, u64)> = vec![(Vec::new(), 0); seconds];
    while let Some(done) = load.join_next().await {
        for (into, from) in merged.iter_mut().zip(done??) {
            into.0.extend(from.0);
            into.1 += from.1;
        }
    }
    let calls_after = origin_calls(&mut calls_sender, &calls_host, calls_url.path()).await?;
    for (second, slot) in merged.iter_mut().enumerate() {
        slot.0.sort_unstable();
        println!(
            "sec={second} requests={} errors={} p50_us={} p99_us={} max_us={}",
            slot.0.len(),
            slot.1,
            percentile(&slot.0, 0.5),
            percentile(&slot.0, 0.99),
            slot.0.last().copied().unwrap_or(0),
        );
    }
    println!("calls={} keys={keys}", calls_after - calls_before);
    Ok(())
}
