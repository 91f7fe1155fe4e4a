//! `cachette warm`.

use std::time::{Duration, Instant};

use cachette::redis::{WarmLimits, WarmProgress};
use indicatif::{ProgressBar, ProgressStyle};

use super::{known, load, open};
use crate::{Failure, Outcome, cli::WarmArgs, render};

pub(crate) async fn warm(args: WarmArgs) -> Outcome {
    let caches = open(load(&args.config)?).await?;
    known(&caches, &args.cache)?;
    let cache = caches.cache(&args.cache).map_err(Failure::from)?;
    let Some(redis) = cache.redis().filter(|r| r.is_peers()) else {
        return Err(Failure::usage(format!(
            "cache `{}` is not on a fleet of peers (`[redis.<name>] peers`)",
            args.cache
        )));
    };
    // Draws on stderr only when it is a terminal.
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let copying =
        ProgressStyle::with_template("{bar:30} {pos}/{len} entries, {msg} ({elapsed}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    let progress = |step: WarmProgress| match step {
        WarmProgress::Scanning { scanned } => {
            bar.set_message(format!("reading {}: {scanned} keys", args.from));
        }
        WarmProgress::Copying { done, total, bytes } => {
            if bar.length() != Some(total) {
                bar.set_style(copying.clone());
                bar.set_length(total);
            }
            bar.set_position(done);
            bar.set_message(render::bytes(bytes));
        }
        _ => {}
    };
    let limits = WarmLimits {
        max_entries: args.max_entries,
        max_bytes: args.max_bytes,
    };
    let started = Instant::now();
    let report = redis
        .warm_from(&args.from, limits, &progress)
        .await
        .map_err(|e| Failure::operational(format!("cache {}: {e}", args.cache)))?;
    bar.finish_and_clear();
    println!(
        "cache {}: {} entries ({}) copied from {} in {:.1}s; {} of its {} entries looked at skipped",
        args.cache,
        report.copied,
        render::bytes(report.bytes),
        args.from,
        started.elapsed().as_secs_f64(),
        report.skipped,
        report.scanned,
    );
    Ok(())
}
