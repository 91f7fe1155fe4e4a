//! Resident memory of a full memory tier: fills a `MemoryTier` of
//! `max_bytes` with responses of mixed sizes (1 to 64 KiB, uniform) until it
//! has evicted for a while, then compares the process's resident memory
//! growth with `max_bytes`. Linux only (reads /proc/self/statm).
//!
//! ```sh
//! cargo run --release --example bench_memory -- 256   # max_bytes in MiB
//! ```

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use cachette::{Backend, CacheKey, Entry, EntryMeta, MemoryTier, StoredResponse};
use http::{HeaderMap, HeaderValue, StatusCode, header};

fn resident_bytes() -> Result<u64, Box<dyn std::error::Error>> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .ok_or("unexpected /proc/self/statm")?
        .parse()?;
    Ok(pages * 4096)
}

/// A small deterministic generator (xorshift64*), so runs compare.
struct Sizes(u64);

impl Sizes {
    fn next(&mut self) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        1024 + (r % (63 * 1024 + 1)) as usize
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: u64 = std::env::args()
        .nth(1)
        .map(|m| m.parse())
        .transpose()?
        .unwrap_or(256);
    let max_bytes = mib * 1024 * 1024;
    let memory = MemoryTier::with_max_bytes(max_bytes);
    let baseline = resident_bytes()?;

    let mut sizes = Sizes(0x9E37_79B9_7F4A_7C15);
    let mut inserted = 0u64;
    let mut n = 0u64;
    // Three times the capacity: the tier is full and has been evicting.
    while inserted < 3 * max_bytes {
        let len = sizes.next();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=3600"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        let entry = Entry::response(
            StoredResponse {
                status: StatusCode::OK,
                headers,
                body: Bytes::from(vec![b'x'; len]),
            },
            EntryMeta::new(SystemTime::now(), Duration::from_secs(3600)),
        );
        let key = CacheKey::new(format!("GET:bench.local/item/{n}"))?;
        memory
            .set(&key, Arc::new(entry), Duration::from_secs(3600))
            .await?;
        inserted += len as u64;
        n += 1;
        if n % 1024 == 0 {
            memory.run_pending_tasks().await;
        }
    }
    memory.run_pending_tasks().await;
    let resident = resident_bytes()?;
    let growth = resident.saturating_sub(baseline);
    println!(
        "memory max_bytes={max_bytes} held_bytes={} entries={} baseline_rss={baseline} rss={resident} growth={growth} ratio={:.3}",
        memory.weighted_bytes(),
        memory.entry_count(),
        growth as f64 / max_bytes as f64
    );
    Ok(())
}
