//! The replayer: when the master answers again, the journal's operations are
//! applied to it in order, in pipelined batches at a bounded rate, and removed.
//!
//! Each op has its own outcome. An op the master answers with an error reply
//! (a TTL it rejects, `WRONGTYPE`, `OOM` under `noeviction`) is *rejected*: it
//! would fail the same way on every retry, so it is dropped, counted and
//! logged, and the ops after it replay. Only a transport failure (the master
//! is unreachable, or answers "not now": `LOADING`, `BUSY`, `READONLY`...)
//! stops the replay, to be retried; re-applying the ops of a batch is safe,
//! because every write and delete carries its version and the scripts refuse
//! older ones.

use std::{
    sync::Weak,
    time::{Duration, Instant, SystemTime},
};

use cachette_core::{CacheError, JournalOp};

use crate::{
    DiskJournal, RedisTier, Role,
    journal::{RecordedOp, ReplayTally},
    node::redis_error,
    shared::Space,
    tier::{Purge, bus_message, script_reply},
};

/// What the master did with one op.
#[derive(Debug)]
enum Outcome {
    /// Applied.
    Applied,
    /// Not applied, and rightly: newer data, a later delete or purge, or the
    /// entry expired while it waited. Nothing is lost.
    Obsolete,
    /// Refused with an error reply that a retry would get again.
    Rejected(String),
}

/// Whether an error reply means "not now" (retry later) rather than "never".
fn is_transient(code: &str) -> bool {
    matches!(
        code,
        "LOADING"
            | "BUSY"
            | "TRYAGAIN"
            | "MASTERDOWN"
            | "READONLY"
            | "NOSCRIPT"
            | "CLUSTERDOWN"
            | "MOVED"
            | "ASK"
            | "NOREPLICAS"
    )
}

/// The error reply of a failed tier call, if it was one the master would
/// give again on every retry.
fn persistent_rejection(error: &CacheError) -> Option<String> {
    let CacheError::Backend { source, .. } = error else {
        return None;
    };
    let redis = source.downcast_ref::<redis::RedisError>()?;
    let code = redis.code()?;
    (!is_transient(code)).then(|| redis.to_string())
}

/// The key a set or delete is for.
fn key_of(record: &RecordedOp) -> Option<&str> {
    match &record.op {
        Some(JournalOp::Set { key, .. } | JournalOp::Delete { key, .. }) => Some(key.as_str()),
        _ => None,
    }
}

/// Applies a run of sets and deletes as pipelines of script calls; one
/// outcome per op, or an error when a pipeline itself failed. On a cluster
/// a pipeline may only hold one slot: the run is split by slot (each key's
/// ops keep their order; keys in different slots are independent), and
/// the deletes are published afterwards.
async fn apply_pipelined(
    tier: &RedisTier,
    run: &[&RecordedOp],
) -> Result<Vec<Outcome>, CacheError> {
    let keys = &tier.space.keys;
    if !keys.is_cluster() {
        return apply_pipeline(tier, run, true).await;
    }
    let mut by_slot: std::collections::BTreeMap<u16, Vec<usize>> = Default::default();
    for (i, record) in run.iter().enumerate() {
        let slot =
            key_of(record).map_or(0, |k| crate::cluster::hash_slot(keys.entry(k).as_bytes()));
        by_slot.entry(slot).or_default().push(i);
    }
    let node = tier.node()?;
    let mut conn = node.shared.clone();
    if let Some(parts) = &node.cluster {
        // The scripts on every primary (not every node: a replica down
        // must not stop the replay).
        let mut cluster_conn = parts.conn.clone();
        for code in [
            &tier.space.scripts.set_code,
            &tier.space.scripts.delete_code,
        ] {
            crate::cluster::load_on_primaries(&mut cluster_conn, code).await?;
        }
    }
    // A replayed variant is listed in its URL's variants index first, as
    // a direct write is (the set script cannot reach that slot).
    let now = SystemTime::now();
    for record in run {
        if let Some(JournalOp::Set { key, entry }) = &record.op {
            let ttl = entry.remaining_ttl(now);
            if !ttl.is_zero() {
                tier.index_variants(&mut conn, key, entry, ttl).await?;
            }
        }
    }
    let mut outcomes: Vec<Option<Outcome>> = (0..run.len()).map(|_| None).collect();
    for indexes in by_slot.values() {
        let group: Vec<&RecordedOp> = indexes.iter().map(|i| run[*i]).collect();
        let group_outcomes = apply_pipeline(tier, &group, false).await?;
        for (i, outcome) in indexes.iter().zip(group_outcomes) {
            outcomes[*i] = Some(outcome);
        }
    }
    if tier.space.bus && !crate::peers::is_quiet() {
        for record in run {
            if let Some(JournalOp::Delete { key, .. }) = &record.op {
                tier.publish(&mut conn, 'd', key.as_str()).await;
            }
        }
    }
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or(Outcome::Obsolete))
        .collect())
}

/// Applies `run` as one pipeline (publishing deletes in it when
/// `publish_inline`).
async fn apply_pipeline(
    tier: &RedisTier,
    run: &[&RecordedOp],
    publish_inline: bool,
) -> Result<Vec<Outcome>, CacheError> {
    let shared = &tier.space;
    let node = tier.node()?;
    let mut conn = node.exclusive().await?;
    // Load both scripts once so the pipeline can use EVALSHA (on a cluster,
    // the caller loaded them on every primary).
    let scripts = if node.cluster.is_some() {
        Vec::new()
    } else {
        vec![&shared.scripts.set, &shared.scripts.delete]
    };
    for script in scripts {
        script
            .prepare_invoke()
            .load_async(&mut conn)
            .await
            .map_err(redis_error)?;
    }
    let now = SystemTime::now();
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    // For each op: whether it went into the pipeline (one reply) or was
    // decided here.
    let mut sent = Vec::with_capacity(run.len());
    for record in run {
        match &record.op {
            Some(JournalOp::Set { key, entry }) => {
                let ttl = entry.remaining_ttl(now);
                if ttl.is_zero() {
                    sent.push(false); // expired while waiting: never resurrected
                    continue;
                }
                pipe.invoke_script(&tier.set_invocation(key, entry, ttl, ""));
                sent.push(true);
            }
            Some(JournalOp::Delete { key, at }) => {
                pipe.invoke_script(&tier.delete_invocation(key.as_str(), *at));
                if shared.bus && publish_inline && !crate::peers::is_quiet() {
                    pipe.cmd("PUBLISH")
                        .arg(shared.keys.bus_channel())
                        .arg(bus_message(&shared.node_id, 'd', key.as_str()))
                        .ignore();
                }
                sent.push(true);
            }
            _ => sent.push(false),
        }
    }
    let replies: Vec<redis::Value> = if sent.iter().any(|s| *s) {
        pipe.query_async(&mut conn).await.map_err(redis_error)?
    } else {
        Vec::new()
    };
    let mut replies = replies.into_iter();
    let mut outcomes = Vec::with_capacity(run.len());
    for was_sent in sent {
        if !was_sent {
            outcomes.push(Outcome::Obsolete);
            continue;
        }
        let outcome = match replies.next() {
            Some(redis::Value::ServerError(error)) if is_transient(error.code()) => {
                return Err(CacheError::backend(
                    "redis",
                    format!("the master answered {}: retrying later", error.code()),
                ));
            }
            Some(redis::Value::ServerError(error)) => Outcome::Rejected(format!(
                "{} {}",
                error.code(),
                error.details().unwrap_or_default()
            )),
            Some(reply) => match script_reply(&reply) {
                Some((-1, _)) => Outcome::Obsolete,
                Some(_) => Outcome::Applied,
                None => Outcome::Rejected(format!("unexpected reply {reply:?}")),
            },
            None => {
                return Err(CacheError::backend(
                    "redis",
                    "the pipeline returned fewer replies than commands",
                ));
            }
        };
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// Runs one invalidation sweep from the journal, as of when it was
/// recorded: writes journaled after it are not refused as older than it.
async fn apply_sweep(
    tier: &RedisTier,
    op: &JournalOp,
    recorded_at: SystemTime,
) -> Result<Outcome, CacheError> {
    let purge = match op {
        JournalOp::InvalidatePrefix { prefix } => Purge::Prefix(prefix),
        JournalOp::InvalidatePattern { pattern } => Purge::Pattern(pattern),
        JournalOp::InvalidateTag { tag } => Purge::Tag(tag),
        JournalOp::Clear => Purge::Clear,
        other => {
            return Ok(Outcome::Rejected(format!(
                "the replayer has no sweep for {other:?}"
            )));
        }
    };
    let result = tier.purge_at(&purge, recorded_at).await;
    match result {
        Ok(()) => Ok(Outcome::Applied),
        Err(error) => match persistent_rejection(&error) {
            Some(reason) => Ok(Outcome::Rejected(reason)),
            None => Err(error),
        },
    }
}

/// Counts an op's outcome, and logs a rejection (with what the op was).
fn tally(tally: &mut ReplayTally, record: &RecordedOp, outcome: &Outcome) {
    match outcome {
        Outcome::Applied => tally.replayed += 1,
        Outcome::Obsolete => tally.obsolete += 1,
        Outcome::Rejected(reason) => {
            tally.rejected += 1;
            tracing::error!(seq = record.seq, op = ?record.op, %reason, "the master rejected a journaled op: dropped (a retry would fail the same way)");
        }
    }
}

/// Replays everything the journal holds, or stops at the first transport
/// failure (what was decided before it is acknowledged).
pub(crate) async fn replay(tier: &RedisTier, journal: &DiskJournal) -> Result<(), CacheError> {
    let config = journal.config().clone();
    loop {
        let batch = journal.pending(config.batch.max(1)).await?;
        if batch.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let mut done: Vec<RecordedOp> = Vec::with_capacity(batch.len());
        let mut counts = ReplayTally::default();
        let mut run: Vec<&RecordedOp> = Vec::new();
        let mut failure = None;
        let mut records = batch.iter().peekable();
        while let Some(record) = records.next() {
            let Some(op) = &record.op else {
                counts.unreadable += 1;
                tracing::error!(
                    seq = record.seq,
                    "a journaled op is unreadable (corrupt or from a newer version): dropped"
                );
                done.push(record.clone());
                continue;
            };
            let pipelined = matches!(op, JournalOp::Set { .. } | JournalOp::Delete { .. });
            if pipelined {
                run.push(record);
            }
            // Flush the run before a sweep (sweeps cannot be pipelined, and
            // order matters), and at the end of the batch.
            let flush = !pipelined || records.peek().is_none();
            if flush && !run.is_empty() {
                match apply_pipelined(tier, &run).await {
                    Ok(outcomes) => {
                        for (record, outcome) in run.drain(..).zip(outcomes) {
                            tally(&mut counts, record, &outcome);
                            done.push(record.clone());
                        }
                    }
                    Err(error) => {
                        failure = Some(error);
                        break;
                    }
                }
            }
            if !pipelined {
                match apply_sweep(tier, op, record.recorded_at).await {
                    Ok(outcome) => {
                        tally(&mut counts, record, &outcome);
                        done.push(record.clone());
                    }
                    Err(error) => {
                        failure = Some(error);
                        break;
                    }
                }
            }
        }
        let count = done.len();
        journal.acknowledge(done, counts).await?;
        if count > 0 {
            tracing::info!(
                done = count,
                replayed = counts.replayed,
                obsolete = counts.obsolete,
                rejected = counts.rejected,
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
