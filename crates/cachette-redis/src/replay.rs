//! The replayer: when the master answers again, the journal's operations are
//! applied to it in order, in pipelined batches at a bounded rate, and removed.

use std::{
    sync::Weak,
    time::{Duration, Instant, SystemTime},
};

use cachette_core::{CacheError, JournalOp, unix_millis};

use crate::{
    DiskJournal, RedisTier, Role,
    journal::RecordedOp,
    node::redis_error,
    shared::Space,
    tier::{bus_message, ttl_arg, wire_value},
};

/// Applies a run of sets and deletes as one pipeline of script calls.
async fn apply_pipelined(tier: &RedisTier, run: &[&RecordedOp]) -> Result<u64, CacheError> {
    let shared = &tier.space;
    let node = tier.node()?;
    let mut conn = node.exclusive().await?;
    // Load both scripts once so the pipeline can use EVALSHA.
    for script in [&shared.scripts.set, &shared.scripts.delete_if_older] {
        script
            .prepare_invoke()
            .load_async(&mut conn)
            .await
            .map_err(redis_error)?;
    }
    let now = SystemTime::now();
    let mut pipe = redis::pipe();
    let mut applied = 0;
    for record in run {
        match &record.op {
            Some(JournalOp::Set { key, entry }) => {
                let ttl = entry.remaining_ttl(now);
                if ttl.is_zero() {
                    continue; // expired while waiting: never resurrected
                }
                let tags = &entry.meta().tags;
                let cmd = pipe
                    .cmd("EVALSHA")
                    .arg(shared.scripts.set.get_hash())
                    .arg(1 + tags.len())
                    .arg(shared.keys.entry(key.as_str()));
                for tag in tags {
                    cmd.arg(shared.keys.tag(tag));
                }
                cmd.arg(wire_value(entry).as_ref())
                    .arg(ttl_arg(ttl))
                    .arg("")
                    .ignore();
                applied += 1;
            }
            Some(JournalOp::Delete { key, at }) => {
                pipe.cmd("EVALSHA")
                    .arg(shared.scripts.delete_if_older.get_hash())
                    .arg(1)
                    .arg(shared.keys.entry(key.as_str()))
                    .arg(unix_millis(*at).to_be_bytes().as_slice())
                    .ignore();
                if shared.bus {
                    pipe.cmd("PUBLISH")
                        .arg(shared.keys.bus_channel())
                        .arg(bus_message(&shared.node_id, 'd', key.as_str()))
                        .ignore();
                }
                applied += 1;
            }
            _ => {}
        }
    }
    if applied > 0 {
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(redis_error)?;
    }
    Ok(applied)
}

/// Replays everything the journal holds, or fails at the first error (what
/// was applied before it is acknowledged).
pub(crate) async fn replay(tier: &RedisTier, journal: &DiskJournal) -> Result<(), CacheError> {
    let config = journal.config().clone();
    loop {
        let batch = journal.pending(config.batch.max(1)).await?;
        if batch.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let mut done: Vec<RecordedOp> = Vec::with_capacity(batch.len());
        let mut replayed = 0;
        let mut run: Vec<&RecordedOp> = Vec::new();
        let mut failure = None;
        for record in &batch {
            match &record.op {
                Some(JournalOp::Set { .. } | JournalOp::Delete { .. }) => run.push(record),
                other => {
                    // An invalidation sweep cannot be pipelined: flush the run first.
                    if !run.is_empty() {
                        match apply_pipelined(tier, &run).await {
                            Ok(_) => {
                                replayed += run.len() as u64;
                                done.extend(run.drain(..).cloned());
                            }
                            Err(error) => {
                                failure = Some(error);
                                break;
                            }
                        }
                    }
                    let result = match other {
                        Some(JournalOp::InvalidatePrefix { prefix }) => {
                            cachette_core::Backend::invalidate_prefix(tier, prefix).await
                        }
                        Some(JournalOp::InvalidateTag { tag }) => {
                            cachette_core::Backend::invalidate_tag(tier, tag).await
                        }
                        Some(JournalOp::Clear) => cachette_core::Backend::clear(tier).await,
                        _ => Ok(()), // unreadable record: skipped
                    };
                    match result {
                        Ok(()) => {
                            if other.is_some() {
                                replayed += 1;
                            }
                            done.push(record.clone());
                        }
                        Err(error) => {
                            failure = Some(error);
                            break;
                        }
                    }
                }
            }
        }
        if failure.is_none() && !run.is_empty() {
            match apply_pipelined(tier, &run).await {
                Ok(_) => {
                    replayed += run.len() as u64;
                    done.extend(run.drain(..).cloned());
                }
                Err(error) => failure = Some(error),
            }
        }
        let count = done.len();
        journal.acknowledge(done, replayed).await?;
        if count > 0 {
            tracing::info!(
                replayed = count,
                left = cachette_core::Journal::depth(journal),
                "journal replayed to the master"
            );
        }
        if let Some(error) = failure {
            return Err(error);
        }
        let budget =
            Duration::from_secs_f64(count as f64 / f64::from(config.max_ops_per_sec.max(1)));
        if let Some(rest) = budget.checked_sub(started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
}

/// Watches the journal; whenever it holds ops and the master answers a probe,
/// replays them.
pub(crate) async fn run_replayer(space: Weak<Space>) {
    loop {
        let Some(strong) = space.upgrade() else {
            return;
        };
        let Some(journal) = strong.journal.clone() else {
            return;
        };
        let interval = journal.config().probe_interval;
        if cachette_core::Journal::depth(&journal) > 0 {
            let tier = RedisTier {
                space: strong.clone(),
                role: Role::Master,
            };
            let probe = tokio::time::timeout(
                strong.conns.master_timeout(),
                cachette_core::Backend::health(&tier),
            )
            .await;
            if matches!(probe, Ok(Ok(()))) {
                if let Err(error) = replay(&tier, &journal).await {
                    tracing::warn!(%error, "journal replay stopped; will retry");
                }
            }
        }
        drop(strong);
        tokio::time::sleep(interval).await;
    }
}
