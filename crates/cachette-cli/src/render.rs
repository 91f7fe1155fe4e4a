//! Text output of the commands.

use std::fmt::Write as _;

use cachette::ops::{CacheReport, JournalReport, PurgeReport, Report, TierOutcome};

fn opt<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// Bytes in binary units (`2.0 KiB`).
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Microseconds in the unit that reads best (`512µs`, `1.5ms`).
pub(crate) fn micros(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.1}s", us as f64 / 1e6)
    } else if us >= 1_000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else {
        format!("{us}µs")
    }
}

/// Age in seconds, in words.
pub(crate) fn age(secs: f64) -> String {
    if secs >= 3600.0 {
        format!("{:.1}h", secs / 3600.0)
    } else if secs >= 60.0 {
        format!("{:.1}m", secs / 60.0)
    } else {
        format!("{secs:.1}s")
    }
}

/// A table with left-aligned columns.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        out.push_str("  ");
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<width$}  ", width = widths[c]);
            }
        }
        out.push('\n');
    }
    out
}

pub(crate) fn journal_line(journal: &JournalReport) -> String {
    let oldest = journal
        .oldest_age_secs
        .map_or_else(String::new, |secs| format!(", oldest {} old", age(secs)));
    format!(
        "journal {}: depth {} ({}){oldest}; replayed {}, obsolete {}, rejected {}, unreadable {}, dropped {}, collapsed {}, disk errors {}{}",
        journal.path,
        journal.depth,
        bytes(journal.bytes),
        journal.replayed,
        journal.obsolete,
        journal.rejected,
        journal.unreadable,
        journal.dropped,
        journal.collapsed,
        journal.io_errors,
        if journal.writable {
            ""
        } else {
            " (NOT WRITABLE: records fail)"
        }
    )
}

fn cache(out: &mut String, cache: &CacheReport) {
    let c = &cache.counters;
    let _ = writeln!(out, "cache {}: {}", cache.alias, cache.status.as_str());
    let _ = writeln!(
        out,
        "  hits {}  misses {}  stale {}  coalesced {}  hit-for-miss {}  stored {}  not stored {}  revalidated {}  bypassed {}  origin errors {}  invalidations {}",
        c.hits,
        c.misses,
        c.stale_served,
        c.coalesced,
        c.hit_for_miss,
        c.stored,
        c.not_stored,
        c.revalidated,
        c.bypassed,
        c.origin_errors,
        c.invalidations
    );
    if c.fills_led + c.fills_waited + c.fill_waits_timed_out + c.leases_expired > 0 {
        let _ = writeln!(
            out,
            "  fleet fills: led {}  waited {}  waits timed out {}  leases expired {}",
            c.fills_led, c.fills_waited, c.fill_waits_timed_out, c.leases_expired
        );
    }
    let mut rows = vec![
        [
            "tier", "kind", "up", "breaker", "role", "address", "entries", "bytes", "hits",
            "misses", "errors", "timeouts", "skipped", "p50", "p99",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for t in &cache.tiers {
        let up = match t.up {
            Some(true) => "up".to_owned(),
            Some(false) => "DOWN".to_owned(),
            None => "-".to_owned(),
        };
        let used = match (t.bytes, t.capacity_bytes) {
            (Some(b), Some(cap)) => format!("{}/{}", bytes(b), bytes(cap)),
            (Some(b), None) => bytes(b),
            _ => "-".to_owned(),
        };
        rows.push(vec![
            t.name.clone(),
            t.kind.clone(),
            up,
            t.breaker.clone(),
            opt(t.role.as_ref()),
            opt(t.address.as_ref()),
            opt(t.entries),
            used,
            t.hits.to_string(),
            t.misses.to_string(),
            t.errors.to_string(),
            t.timeouts.to_string(),
            t.skipped.to_string(),
            micros(t.latency.p50_us),
            micros(t.latency.p99_us),
        ]);
    }
    out.push_str(&table(&rows));
    for t in cache.tiers.iter().filter(|t| t.error.is_some()) {
        let _ = writeln!(out, "  {} error: {}", t.name, opt(t.error.as_ref()));
    }
    if let Some(redis) = &cache.redis {
        let _ = writeln!(
            out,
            "  redis: master {}, local {}; failovers {}, readonly skips {}, bus received {}, bus subscriptions {}, resolve errors {}",
            opt(redis.master.as_ref()),
            opt(redis.local.as_ref()),
            redis.failovers,
            redis.readonly_skips,
            redis.bus_received,
            redis.bus_subscriptions,
            redis.resolve_errors
        );
    }
    if let Some(journal) = &cache.journal {
        let _ = writeln!(out, "  {}", journal_line(journal));
    }
}

/// `cachette stats` as text.
pub(crate) fn report(report: &Report) -> String {
    let mut out = String::new();
    for (i, c) in report.caches.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        cache(&mut out, c);
    }
    out
}

/// `cachette purge` as text.
pub(crate) fn purge(report: &PurgeReport, removed: Option<String>) -> String {
    let mut out = format!("purged {} from cache {}", report.purged, report.cache);
    if let Some(removed) = removed {
        let _ = write!(out, ": {removed}");
    }
    out.push('\n');
    for (tier, outcome) in &report.tiers {
        let outcome = match outcome {
            TierOutcome::Done => "done".to_owned(),
            TierOutcome::Journaled => "journaled (replayed when the tier answers again)".to_owned(),
            TierOutcome::Failed(error) => format!("FAILED: {error}"),
        };
        let _ = writeln!(out, "  {tier}: {outcome}");
    }
    out
}
