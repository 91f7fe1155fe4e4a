//! `cachette journal status|replay`.

use std::time::{SystemTime, UNIX_EPOCH};

use cachette::{Cache, Caches, core::JournalOp, ops::JournalReport, redis::RecordedOp};
use serde::Serialize;

use super::{known, load, open, print_json};
use crate::{
    Failure, Outcome,
    cli::{JournalReplayArgs, JournalStatusArgs},
    render,
};

/// The caches (or the one asked for) that have a journal.
fn journaled(caches: &Caches, only: Option<&str>) -> Result<Vec<Cache>, Failure> {
    if let Some(alias) = only {
        known(caches, alias)?;
    }
    let found: Vec<Cache> = caches
        .aliases()
        .filter(|alias| only.is_none_or(|only| only == *alias))
        .filter_map(|alias| caches.cache(alias).ok())
        .filter(|cache| cache.redis().is_some_and(|r| r.journal().is_some()))
        .collect();
    if found.is_empty() {
        return Err(Failure::usage(match only {
            Some(alias) => format!("cache `{alias}` has no journal (caches.{alias}.journal)"),
            None => "no cache has a journal (caches.<alias>.journal)".to_owned(),
        }));
    }
    Ok(found)
}

fn describe(op: Option<&JournalOp>) -> String {
    let Some(op) = op else {
        return "unreadable (skipped on replay)".to_owned();
    };
    match op {
        JournalOp::Set { key, entry } => {
            let left = entry.remaining_ttl(SystemTime::now());
            if left.is_zero() {
                format!("set {key} (expired: will not be written)")
            } else {
                format!("set {key} (expires in {})", render::age(left.as_secs_f64()))
            }
        }
        JournalOp::Delete { key, .. } => format!("delete {key}"),
        JournalOp::InvalidatePrefix { prefix } => format!("purge prefix {prefix}"),
        JournalOp::InvalidatePattern { pattern } => format!("purge pattern {pattern}"),
        JournalOp::InvalidateTag { tag } => format!("purge tag {tag}"),
        JournalOp::Clear => "clear the namespace".to_owned(),
        _ => format!("{op:?}"),
    }
}

#[derive(Serialize)]
struct PendingOp {
    seq: u64,
    recorded_at_unix_ms: u64,
    op: String,
}

#[derive(Serialize)]
struct JournalStatus {
    cache: String,
    journal: Option<JournalReport>,
    pending: Vec<PendingOp>,
}

fn pending(ops: Vec<RecordedOp>) -> Vec<PendingOp> {
    ops.into_iter()
        .map(|record| PendingOp {
            seq: record.seq,
            recorded_at_unix_ms: record
                .recorded_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            op: describe(record.op.as_ref()),
        })
        .collect()
}

pub(crate) async fn journal_status(args: JournalStatusArgs) -> Outcome {
    let caches = open(load(&args.config)?).await?;
    let mut statuses = Vec::new();
    for cache in journaled(&caches, args.cache.as_deref())? {
        let ops = match cache.redis().and_then(|r| r.journal()) {
            Some(journal) => journal
                .pending(args.limit)
                .await
                .map_err(|e| Failure::operational(format!("cache {}: {e}", cache.alias())))?,
            None => Vec::new(),
        };
        statuses.push(JournalStatus {
            cache: cache.alias().to_owned(),
            journal: cache.report(false).await.journal,
            pending: pending(ops),
        });
    }
    if args.json {
        return print_json(&statuses);
    }
    for status in &statuses {
        match &status.journal {
            Some(journal) => println!("cache {}: {}", status.cache, render::journal_line(journal)),
            None => println!("cache {}: no journal", status.cache),
        }
        let depth = status.journal.as_ref().map_or(0, |j| j.depth);
        for op in &status.pending {
            println!("  #{} {}", op.seq, op.op);
        }
        if depth > status.pending.len() as u64 {
            println!("  ... {} more", depth - status.pending.len() as u64);
        }
    }
    Ok(())
}

pub(crate) async fn journal_replay(args: JournalReplayArgs) -> Outcome {
    let caches = open(load(&args.config)?).await?;
    let mut problems = Vec::new();
    for cache in journaled(&caches, args.cache.as_deref())? {
        let Some(redis) = cache.redis() else { continue };
        let before = redis.journal().map_or(0, cachette::core::Journal::depth);
        match redis.replay_journal().await {
            Ok(left) => {
                println!(
                    "cache {}: {} op(s) replayed or skipped, {left} left",
                    cache.alias(),
                    before.saturating_sub(left)
                );
                if left > 0 {
                    problems.push(format!("cache {}: {left} op(s) left", cache.alias()));
                }
            }
            Err(error) => {
                println!(
                    "cache {}: replay failed, {before} op(s) left",
                    cache.alias()
                );
                problems.push(format!(
                    "cache {}: the master did not take the replay: {error}",
                    cache.alias()
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Failure::operational(problems.join("; ")))
    }
}
