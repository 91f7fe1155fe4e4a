//! The durable journal of master writes that failed, on local disk (redb).
//!
//! Not in Redis: a replica that fully resyncs from its master drops its whole
//! dataset, journal included. Each operation is one fsync'd redb transaction,
//! so a recorded op survives a crash (SIGKILL, power loss).
//!
//! - The newest op per key supersedes older ones (a set then a delete of `k`
//!   leaves only the delete); a `Clear` supersedes everything before it.
//! - Sets carry their entry's absolute expiry; deletes carry their time. The
//!   replay never writes an expired entry, never replaces a newer value, and
//!   never deletes a value stored after the delete.
//! - Bounded by `max_entries` and `max_bytes`: over the bound, new sets are
//!   dropped (counted); an invalidation that does not fit collapses the
//!   journal into a single `Clear` marker, so no invalidation is ever lost.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::{BufMut, Bytes, BytesMut};
use cachette_core::{CacheError, CacheKey, Entry, Journal, JournalOp, async_trait, unix_millis};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::JournalConfig;

const OPS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("ops");
const BY_KEY: TableDefinition<'_, &str, u64> = TableDefinition::new("ops_by_key");

const FORMAT: u8 = 1;
const SET: u8 = 1;
const DELETE: u8 = 2;
const PREFIX: u8 = 3;
const TAG: u8 = 4;
const CLEAR: u8 = 5;
const PATTERN: u8 = 6;

fn journal_error(error: impl Into<cachette_core::BoxError>) -> CacheError {
    CacheError::backend("journal", error)
}

fn is_power_of_ten(mut n: u64) -> bool {
    while n >= 10 && n % 10 == 0 {
        n /= 10;
    }
    n == 1
}

/// Encodes an op: format, kind, recorded-at ms, then the kind's fields.
fn encode(op: &JournalOp, recorded_at: SystemTime) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_u8(FORMAT);
    let kind = match op {
        JournalOp::Set { .. } => SET,
        JournalOp::Delete { .. } => DELETE,
        JournalOp::InvalidatePrefix { .. } => PREFIX,
        JournalOp::InvalidateTag { .. } => TAG,
        JournalOp::InvalidatePattern { .. } => PATTERN,
        _ => CLEAR,
    };
    buf.put_u8(kind);
    buf.put_u64(unix_millis(recorded_at));
    match op {
        JournalOp::Set { key, entry } => {
            let key = key.as_str().as_bytes();
            buf.put_u16(u16::try_from(key.len()).unwrap_or(u16::MAX));
            buf.put_slice(key);
            buf.put_slice(&entry.encode());
        }
        JournalOp::Delete { key, at } => {
            buf.put_u64(unix_millis(*at));
            buf.put_slice(key.as_str().as_bytes());
        }
        JournalOp::InvalidatePrefix { prefix } => buf.put_slice(prefix.as_bytes()),
        JournalOp::InvalidateTag { tag } => buf.put_slice(tag.as_bytes()),
        JournalOp::InvalidatePattern { pattern } => buf.put_slice(pattern.as_bytes()),
        _ => {}
    }
    buf.freeze()
}

/// A recorded op as read back.
#[derive(Debug, Clone)]
pub struct RecordedOp {
    /// Position in the journal (replay order).
    pub seq: u64,
    /// When it was recorded.
    pub recorded_at: SystemTime,
    /// The op, or `None` if its bytes were unreadable (it is then skipped).
    pub op: Option<JournalOp>,
}

fn decode(seq: u64, raw: &[u8]) -> RecordedOp {
    let unreadable = |recorded_at| RecordedOp {
        seq,
        recorded_at,
        op: None,
    };
    if raw.len() < 10 || raw[0] != FORMAT {
        return unreadable(UNIX_EPOCH);
    }
    let mut ms = [0u8; 8];
    ms.copy_from_slice(&raw[2..10]);
    let recorded_at = UNIX_EPOCH + Duration::from_millis(u64::from_be_bytes(ms));
    let body = &raw[10..];
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).ok();
    let op = match raw[1] {
        SET if body.len() >= 2 => {
            let len = usize::from(u16::from_be_bytes([body[0], body[1]]));
            body.get(2..2 + len).and_then(text).and_then(|key| {
                let entry = Entry::decode(Bytes::copy_from_slice(body.get(2 + len..)?)).ok()?;
                Some(JournalOp::Set {
                    key: CacheKey::new(key).ok()?,
                    entry: Arc::new(entry),
                })
            })
        }
        DELETE if body.len() >= 8 => {
            let mut at = [0u8; 8];
            at.copy_from_slice(&body[..8]);
            text(&body[8..]).and_then(|key| {
                Some(JournalOp::Delete {
                    key: CacheKey::new(key).ok()?,
                    at: UNIX_EPOCH + Duration::from_millis(u64::from_be_bytes(at)),
                })
            })
        }
        PREFIX => text(body).map(|prefix| JournalOp::InvalidatePrefix { prefix }),
        TAG => text(body).map(|tag| JournalOp::InvalidateTag { tag }),
        PATTERN => text(body).map(|pattern| JournalOp::InvalidatePattern { pattern }),
        CLEAR => Some(JournalOp::Clear),
        _ => None,
    };
    RecordedOp {
        seq,
        recorded_at,
        op,
    }
}

/// The journal's counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct JournalStats {
    /// Ops waiting for replay.
    pub depth: u64,
    /// Bytes of those ops.
    pub bytes: u64,
    /// Age of the oldest waiting op.
    pub oldest_age: Option<Duration>,
    /// Ops replayed since start.
    pub replayed: u64,
    /// Sets dropped because the journal was full, or unreadable ops skipped.
    pub dropped: u64,
    /// Times the journal collapsed into one `Clear` marker.
    pub collapsed: u64,
}

#[derive(Debug)]
struct State {
    depth: u64,
    bytes: u64,
    next_seq: u64,
}

#[derive(Debug)]
struct Inner {
    db: Database,
    config: JournalConfig,
    state: Mutex<State>,
    depth: AtomicU64,
    replayed: AtomicU64,
    dropped: AtomicU64,
    collapsed: AtomicU64,
}

/// The durable journal. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DiskJournal {
    inner: Arc<Inner>,
}

impl DiskJournal {
    /// Opens (or creates) the journal at `config.path`. Ops left by an earlier
    /// process are kept and will be replayed.
    pub fn open(config: JournalConfig) -> Result<Self, CacheError> {
        if let Some(parent) = config.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(journal_error)?;
        }
        let db = Database::create(&config.path).map_err(|error| match error {
            redb::DatabaseError::DatabaseAlreadyOpen => journal_error(format!(
                "{} is in use by another process (only one process at a time can hold a journal)",
                config.path.display()
            )),
            error => journal_error(error),
        })?;
        let txn = db.begin_write().map_err(journal_error)?;
        let (depth, bytes, next_seq) = {
            let ops = txn.open_table(OPS).map_err(journal_error)?;
            txn.open_table(BY_KEY).map_err(journal_error)?;
            let mut depth = 0;
            let mut bytes = 0;
            let mut last = 0;
            for item in ops.iter().map_err(journal_error)? {
                let (seq, value) = item.map_err(journal_error)?;
                depth += 1;
                bytes += value.value().len() as u64;
                last = seq.value();
            }
            (depth, bytes, last + 1)
        };
        txn.commit().map_err(journal_error)?;
        if depth > 0 {
            tracing::warn!(path = %config.path.display(), depth, "journal holds operations from an earlier run; they will be replayed");
        }
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                config,
                state: Mutex::new(State {
                    depth,
                    bytes,
                    next_seq,
                }),
                depth: AtomicU64::new(depth),
                replayed: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                collapsed: AtomicU64::new(0),
            }),
        })
    }

    fn record_blocking(inner: &Inner, op: &JournalOp) -> Result<(), CacheError> {
        let mut state = inner.state.lock().unwrap_or_else(PoisonError::into_inner);
        let encoded = encode(op, SystemTime::now());
        let len = encoded.len() as u64;
        let full = state.depth + 1 > inner.config.max_entries
            || state.bytes + len > inner.config.max_bytes;
        if full && !op.is_invalidation() {
            inner.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(depth = state.depth, "journal full: a set was dropped");
            return Ok(());
        }
        let collapse = full || matches!(op, JournalOp::Clear);
        let (op, encoded) = if full {
            inner.collapsed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("journal full: collapsed into one clear-on-recovery marker");
            let clear = JournalOp::Clear;
            let encoded = encode(&clear, SystemTime::now());
            (clear, encoded)
        } else {
            (op.clone(), encoded)
        };
        let txn = inner.db.begin_write().map_err(journal_error)?;
        let seq = state.next_seq;
        let (mut depth, mut bytes) = (state.depth, state.bytes);
        {
            let mut ops = txn.open_table(OPS).map_err(journal_error)?;
            let mut by_key = txn.open_table(BY_KEY).map_err(journal_error)?;
            if collapse {
                ops.retain(|_, _| false).map_err(journal_error)?;
                by_key.retain(|_, _| false).map_err(journal_error)?;
                depth = 0;
                bytes = 0;
            } else if let Some(key) = op.key() {
                let older = by_key
                    .get(key.as_str())
                    .map_err(journal_error)?
                    .map(|v| v.value());
                if let Some(older) = older {
                    if let Some(old) = ops.remove(older).map_err(journal_error)? {
                        depth -= 1;
                        bytes -= old.value().len() as u64;
                    }
                }
                by_key.insert(key.as_str(), seq).map_err(journal_error)?;
            }
            ops.insert(seq, encoded.as_ref()).map_err(journal_error)?;
        }
        txn.commit().map_err(journal_error)?;
        state.next_seq = seq + 1;
        state.depth = depth + 1;
        state.bytes = bytes + encoded.len() as u64;
        inner.depth.store(state.depth, Ordering::Release);
        // Once per order of magnitude: loud enough to notice, not a flood.
        if is_power_of_ten(state.depth) {
            tracing::warn!(path = %inner.config.path.display(), depth = state.depth, bytes = state.bytes, "journal growing: the master is not taking writes from this node");
        }
        Ok(())
    }

    /// The first `limit` ops in replay order.
    pub async fn pending(&self, limit: usize) -> Result<Vec<RecordedOp>, CacheError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || -> Result<Vec<RecordedOp>, CacheError> {
            let txn = inner.db.begin_read().map_err(journal_error)?;
            let ops = txn.open_table(OPS).map_err(journal_error)?;
            let mut out = Vec::new();
            for item in ops.iter().map_err(journal_error)?.take(limit) {
                let (seq, value) = item.map_err(journal_error)?;
                out.push(decode(seq.value(), value.value()));
            }
            Ok(out)
        })
        .await
        .map_err(journal_error)?
    }

    /// Removes replayed (or skipped) ops. `replayed` counts toward the stats.
    pub async fn acknowledge(
        &self,
        done: Vec<RecordedOp>,
        replayed: u64,
    ) -> Result<(), CacheError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || -> Result<(), CacheError> {
            let mut state = inner.state.lock().unwrap_or_else(PoisonError::into_inner);
            let txn = inner.db.begin_write().map_err(journal_error)?;
            let (mut depth, mut bytes) = (state.depth, state.bytes);
            {
                let mut ops = txn.open_table(OPS).map_err(journal_error)?;
                let mut by_key = txn.open_table(BY_KEY).map_err(journal_error)?;
                for record in &done {
                    if let Some(old) = ops.remove(record.seq).map_err(journal_error)? {
                        depth = depth.saturating_sub(1);
                        bytes = bytes.saturating_sub(old.value().len() as u64);
                    }
                    if let Some(key) = record.op.as_ref().and_then(JournalOp::key) {
                        let current = by_key
                            .get(key.as_str())
                            .map_err(journal_error)?
                            .map(|v| v.value());
                        if current == Some(record.seq) {
                            by_key.remove(key.as_str()).map_err(journal_error)?;
                        }
                    }
                }
            }
            txn.commit().map_err(journal_error)?;
            state.depth = depth;
            state.bytes = bytes;
            inner.depth.store(depth, Ordering::Release);
            inner.replayed.fetch_add(replayed, Ordering::Relaxed);
            let skipped = done.len() as u64 - replayed.min(done.len() as u64);
            inner.dropped.fetch_add(skipped, Ordering::Relaxed);
            Ok(())
        })
        .await
        .map_err(journal_error)?
    }

    /// Reads the counters (and the oldest op's age, from disk).
    pub async fn stats(&self) -> JournalStats {
        let oldest = self
            .pending(1)
            .await
            .ok()
            .and_then(|ops| ops.into_iter().next());
        let state = self
            .inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        JournalStats {
            depth: state.depth,
            bytes: state.bytes,
            oldest_age: oldest.and_then(|op| SystemTime::now().duration_since(op.recorded_at).ok()),
            replayed: self.inner.replayed.load(Ordering::Relaxed),
            dropped: self.inner.dropped.load(Ordering::Relaxed),
            collapsed: self.inner.collapsed.load(Ordering::Relaxed),
        }
    }

    /// The settings the journal was opened with.
    pub fn config(&self) -> &JournalConfig {
        &self.inner.config
    }
}

#[async_trait]
impl Journal for DiskJournal {
    async fn record(&self, op: JournalOp) -> Result<(), CacheError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || Self::record_blocking(&inner, &op))
            .await
            .map_err(journal_error)?
    }

    fn depth(&self) -> u64 {
        self.inner.depth.load(Ordering::Acquire)
    }
}
