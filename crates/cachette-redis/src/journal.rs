//! The durable journal of master writes that failed, on local disk (redb).
//!
//! Not in Redis: a replica that fully resyncs from its master drops its whole
//! dataset, journal included. Every record is durable (fsync'd) before it is
//! acknowledged, so it survives a crash (SIGKILL, power loss).
//!
//! - **Group commit.** One writer thread owns the database. Records that
//!   arrive while it commits are taken together in the next transaction: one
//!   fsync for many concurrent writers, in arrival order.
//! - **Newest op per key wins.** A set then a delete of `k` leaves only the
//!   delete; an identical later purge makes the earlier one redundant; a
//!   `Clear` supersedes everything before it. When the journal is full
//!   (`max_entries`, `max_bytes`), a set that does not fit is recorded as a
//!   delete of its key instead (the newest op still wins: no older value of
//!   the key survives the replay), and an invalidation that does not fit
//!   collapses the journal into one `Clear` marker: no invalidation is lost.
//! - **I/O errors are survived.** redb refuses every operation after one
//!   failed write (`PreviousIo`), for example on a full disk. The writer then
//!   drops the database and opens it again, re-reading what is durable; until
//!   that succeeds, records fail (the caller reports them as not journaled).
//! - **Pending invalidations are readable.** An in-memory index of what the
//!   journal holds answers [`Journal::hides`]: a node does not read back a key
//!   it deleted while the delete waits for the master.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::{BufMut, Bytes, BytesMut};
use cachette_core::{
    CacheError, CacheKey, Entry, Journal, JournalOp, Recorded, async_trait, glob_match, unix_millis,
};
use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use crate::JournalConfig;

const OPS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("ops");

const FORMAT: u8 = 1;
const SET: u8 = 1;
const DELETE: u8 = 2;
const PREFIX: u8 = 3;
const TAG: u8 = 4;
const CLEAR: u8 = 5;
const PATTERN: u8 = 6;

/// Most records committed in one transaction.
const GROUP_MAX: usize = 1024;
/// How often a journal whose database could not be reopened tries again.
const REOPEN_EVERY: Duration = Duration::from_millis(250);

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
    /// The op, or `None` if its bytes were unreadable (the replayer then
    /// drops it, counted as unreadable, with an error in the log).
    pub op: Option<JournalOp>,
}

fn recorded_at_of(raw: &[u8]) -> SystemTime {
    let mut ms = [0u8; 8];
    match raw.get(2..10) {
        Some(bytes) => ms.copy_from_slice(bytes),
        None => return UNIX_EPOCH,
    }
    UNIX_EPOCH + Duration::from_millis(u64::from_be_bytes(ms))
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
    let recorded_at = recorded_at_of(raw);
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
    /// Ops applied to the master by the replay since start.
    pub replayed: u64,
    /// Ops the replay did not need to apply: the master held newer data for
    /// the key (a newer value, a later delete or purge), or the entry had
    /// expired. Nothing is lost.
    pub obsolete: u64,
    /// Ops the master answered with an error that a retry would get again
    /// (e.g. `WRONGTYPE`, `OOM`): dropped, each logged as an error.
    pub rejected: u64,
    /// Ops whose bytes could not be read back: dropped, each logged.
    pub unreadable: u64,
    /// Sets that did not fit a full journal and were recorded as deletes of
    /// their key instead.
    pub dropped: u64,
    /// Times the journal collapsed into one `Clear` marker.
    pub collapsed: u64,
    /// Failed disk writes (each made the journal reopen its database).
    pub io_errors: u64,
    /// Whether the journal's database is open now (false after an I/O error
    /// it has not recovered from yet: records fail until it has).
    pub writable: bool,
}

/// The replay's counts for one acknowledged batch.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ReplayTally {
    pub(crate) replayed: u64,
    pub(crate) obsolete: u64,
    pub(crate) rejected: u64,
    pub(crate) unreadable: u64,
}

/// What the index knows of one waiting op (no entry bodies).
#[derive(Debug, Clone)]
enum Pending {
    Set(String),
    Delete(String),
    Prefix(String),
    Pattern(String),
    Tag(String),
    Clear,
    Unreadable,
}

impl Pending {
    fn of(op: Option<&JournalOp>) -> Self {
        match op {
            Some(JournalOp::Set { key, .. }) => Self::Set(key.as_str().to_owned()),
            Some(JournalOp::Delete { key, .. }) => Self::Delete(key.as_str().to_owned()),
            Some(JournalOp::InvalidatePrefix { prefix }) => Self::Prefix(prefix.clone()),
            Some(JournalOp::InvalidatePattern { pattern }) => Self::Pattern(pattern.clone()),
            Some(JournalOp::InvalidateTag { tag }) => Self::Tag(tag.clone()),
            Some(JournalOp::Clear) => Self::Clear,
            _ => Self::Unreadable,
        }
    }
}

#[derive(Debug, Clone)]
struct IndexedOp {
    recorded_at: SystemTime,
    len: u64,
    what: Pending,
}

/// What the journal holds, in memory: one row per waiting op, the latest op
/// per key, and the pending sweeps by kind (for [`Journal::hides`], which a
/// read asks on every hit while the journal is not empty: a tag costs one
/// lookup per tag of the entry; prefix and pattern purges, which are
/// administrative and few, are scanned).
#[derive(Debug, Default)]
struct Index {
    ops: BTreeMap<u64, IndexedOp>,
    by_key: HashMap<String, u64>,
    /// The latest pending purge of each tag.
    tags: HashMap<String, u64>,
    /// Pending prefix and pattern purges, by seq; and the latest of each.
    matches: BTreeMap<u64, Pending>,
    by_match: HashMap<(bool, String), u64>,
    /// The pending clear (a clear collapses everything before it).
    clear_seq: Option<u64>,
    bytes: u64,
    next_seq: u64,
}

/// How to take back a change to the [`Index`] (when the transaction that
/// made it does not commit).
#[derive(Debug)]
enum Undo {
    Inserted(u64),
    Removed(u64, IndexedOp),
    Cleared(Box<Index>),
}

impl Index {
    fn insert(&mut self, seq: u64, op: IndexedOp, undo: &mut Vec<Undo>) {
        self.bytes += op.len;
        match &op.what {
            Pending::Set(key) | Pending::Delete(key) => {
                self.by_key.insert(key.clone(), seq);
            }
            Pending::Tag(tag) => {
                self.tags.insert(tag.clone(), seq);
            }
            Pending::Prefix(arg) | Pending::Pattern(arg) => {
                let prefix = matches!(op.what, Pending::Prefix(_));
                self.matches.insert(seq, op.what.clone());
                self.by_match.insert((prefix, arg.clone()), seq);
            }
            Pending::Clear => self.clear_seq = Some(seq),
            Pending::Unreadable => {}
        }
        self.ops.insert(seq, op);
        self.next_seq = self.next_seq.max(seq + 1);
        undo.push(Undo::Inserted(seq));
    }

    fn remove(&mut self, seq: u64, undo: &mut Vec<Undo>) -> Option<u64> {
        let op = self.ops.remove(&seq)?;
        self.bytes = self.bytes.saturating_sub(op.len);
        let unmap = |map: &mut HashMap<_, u64>, key| {
            if map.get(key) == Some(&seq) {
                map.remove(key);
            }
        };
        match &op.what {
            Pending::Set(key) | Pending::Delete(key) => unmap(&mut self.by_key, key),
            Pending::Tag(tag) => unmap(&mut self.tags, tag),
            Pending::Prefix(arg) | Pending::Pattern(arg) => {
                let prefix = matches!(op.what, Pending::Prefix(_));
                self.matches.remove(&seq);
                if self.by_match.get(&(prefix, arg.clone())) == Some(&seq) {
                    self.by_match.remove(&(prefix, arg.clone()));
                }
            }
            Pending::Clear => {
                if self.clear_seq == Some(seq) {
                    self.clear_seq = None;
                }
            }
            Pending::Unreadable => {}
        }
        let len = op.len;
        undo.push(Undo::Removed(seq, op));
        Some(len)
    }

    fn clear(&mut self, undo: &mut Vec<Undo>) {
        let next_seq = self.next_seq;
        let old = std::mem::take(self);
        self.next_seq = next_seq;
        undo.push(Undo::Cleared(Box::new(old)));
    }

    /// Takes back `undo`, newest change first.
    fn revert(&mut self, undo: Vec<Undo>) {
        let mut ignored = Vec::new();
        for change in undo.into_iter().rev() {
            match change {
                Undo::Inserted(seq) => {
                    self.remove(seq, &mut ignored);
                }
                Undo::Removed(seq, op) => self.insert(seq, op, &mut ignored),
                Undo::Cleared(old) => {
                    let next_seq = self.next_seq;
                    *self = *old;
                    self.next_seq = self.next_seq.max(next_seq);
                }
            }
            ignored.clear();
        }
    }

    /// The op an identical new sweep makes redundant (anything it would
    /// remove, the new one removes too, later).
    fn same_sweep(&self, what: &Pending) -> Option<u64> {
        match what {
            Pending::Tag(tag) => self.tags.get(tag).copied(),
            Pending::Prefix(arg) => self.by_match.get(&(true, arg.clone())).copied(),
            Pending::Pattern(arg) => self.by_match.get(&(false, arg.clone())).copied(),
            _ => None,
        }
    }

    fn depth(&self) -> u64 {
        self.ops.len() as u64
    }

    fn hides(&self, key: &str, entry: &Entry) -> bool {
        let latest = self.by_key.get(key).copied();
        if let Some(seq) = latest {
            if matches!(
                self.ops.get(&seq).map(|o| &o.what),
                Some(Pending::Delete(_))
            ) {
                return true;
            }
        }
        // A sweep recorded after the key's latest pending write covers it.
        let after = latest.map_or(0, |seq| seq + 1);
        if self.clear_seq.is_some_and(|seq| seq >= after) {
            return true;
        }
        if entry
            .meta()
            .tags
            .iter()
            .any(|tag| self.tags.get(tag).is_some_and(|seq| *seq >= after))
        {
            return true;
        }
        self.matches.range(after..).any(|(_, sweep)| match sweep {
            Pending::Prefix(prefix) => key.starts_with(prefix.as_str()),
            Pending::Pattern(pattern) => glob_match(pattern, key),
            _ => false,
        })
    }
}

/// State shared by the handles and the writer thread.
#[derive(Debug)]
struct Shared {
    config: JournalConfig,
    index: RwLock<Index>,
    /// Mirrors the index's depth for the lock-free [`Journal::depth`].
    depth: AtomicU64,
    replayed: AtomicU64,
    obsolete: AtomicU64,
    rejected: AtomicU64,
    unreadable: AtomicU64,
    dropped: AtomicU64,
    collapsed: AtomicU64,
    io_errors: AtomicU64,
    writable: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn index_mut(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(PoisonError::into_inner)
    }
}

type Reply<T> = oneshot::Sender<Result<T, CacheError>>;

/// What the writer thread is asked to do.
enum Request {
    Record(JournalOp, Reply<Recorded>),
    Pending(usize, Reply<Vec<RecordedOp>>),
    Acknowledge(Vec<RecordedOp>, ReplayTally, Reply<()>),
}

/// The durable journal. Cheap to clone; the writer thread (and the file
/// lock) end when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct DiskJournal {
    handle: Arc<Handle>,
}

#[derive(Debug)]
struct Handle {
    requests: mpsc::Sender<Request>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Record(..) => "Record",
            Self::Pending(..) => "Pending",
            Self::Acknowledge(..) => "Acknowledge",
        })
    }
}

fn open_database(config: &JournalConfig) -> Result<Database, CacheError> {
    Database::create(&config.path).map_err(|error| match error {
        redb::DatabaseError::DatabaseAlreadyOpen => journal_error(format!(
            "{} is in use by another process (only one process at a time can hold a journal)",
            config.path.display()
        )),
        error => journal_error(error),
    })
}

/// Reads what is durable into a fresh index.
fn load_index(db: &Database) -> Result<Index, CacheError> {
    let txn = db.begin_write().map_err(journal_error)?;
    let mut index = Index {
        next_seq: 1,
        ..Index::default()
    };
    {
        let ops = txn.open_table(OPS).map_err(journal_error)?;
        for item in ops.iter().map_err(journal_error)? {
            let (seq, value) = item.map_err(journal_error)?;
            let raw = value.value();
            let record = decode(seq.value(), raw);
            index.insert(
                seq.value(),
                IndexedOp {
                    recorded_at: record.recorded_at,
                    len: raw.len() as u64,
                    what: Pending::of(record.op.as_ref()),
                },
                &mut Vec::new(),
            );
        }
    }
    txn.commit().map_err(journal_error)?;
    Ok(index)
}

impl DiskJournal {
    /// Opens (or creates) the journal at `config.path`. Ops left by an earlier
    /// process are kept and will be replayed.
    pub fn open(config: JournalConfig) -> Result<Self, CacheError> {
        if let Some(parent) = config.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(journal_error)?;
        }
        let db = open_database(&config)?;
        let index = load_index(&db)?;
        let depth = index.depth();
        if depth > 0 {
            tracing::warn!(path = %config.path.display(), depth, "journal holds operations from an earlier run; they will be replayed");
        }
        let shared = Arc::new(Shared {
            config,
            index: RwLock::new(index),
            depth: AtomicU64::new(depth),
            replayed: AtomicU64::new(0),
            obsolete: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            unreadable: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            collapsed: AtomicU64::new(0),
            io_errors: AtomicU64::new(0),
            writable: std::sync::atomic::AtomicBool::new(true),
        });
        let (requests, inbox) = mpsc::channel();
        let writer = Writer {
            db: Some(db),
            shared: shared.clone(),
            last_reopen: Instant::now(),
        };
        std::thread::Builder::new()
            .name("cachette-journal".into())
            .spawn(move || writer.run(inbox))
            .map_err(journal_error)?;
        Ok(Self {
            handle: Arc::new(Handle { requests, shared }),
        })
    }

    async fn ask<T>(&self, request: impl FnOnce(Reply<T>) -> Request) -> Result<T, CacheError> {
        let (reply, answer) = oneshot::channel();
        self.handle
            .requests
            .send(request(reply))
            .map_err(|_| journal_error("the journal's writer thread has stopped"))?;
        answer
            .await
            .map_err(|_| journal_error("the journal's writer thread has stopped"))?
    }

    /// The first `limit` ops in replay order.
    pub async fn pending(&self, limit: usize) -> Result<Vec<RecordedOp>, CacheError> {
        self.ask(|reply| Request::Pending(limit, reply)).await
    }

    /// Removes replayed (or dropped) ops, and counts their outcomes.
    pub(crate) async fn acknowledge(
        &self,
        done: Vec<RecordedOp>,
        tally: ReplayTally,
    ) -> Result<(), CacheError> {
        self.ask(|reply| Request::Acknowledge(done, tally, reply))
            .await
    }

    /// Reads the counters.
    pub async fn stats(&self) -> JournalStats {
        let shared = &self.handle.shared;
        let index = shared.index();
        let oldest = index.ops.values().next().map(|op| op.recorded_at);
        JournalStats {
            depth: index.depth(),
            bytes: index.bytes,
            oldest_age: oldest.and_then(|at| SystemTime::now().duration_since(at).ok()),
            replayed: shared.replayed.load(Ordering::Relaxed),
            obsolete: shared.obsolete.load(Ordering::Relaxed),
            rejected: shared.rejected.load(Ordering::Relaxed),
            unreadable: shared.unreadable.load(Ordering::Relaxed),
            dropped: shared.dropped.load(Ordering::Relaxed),
            collapsed: shared.collapsed.load(Ordering::Relaxed),
            io_errors: shared.io_errors.load(Ordering::Relaxed),
            writable: shared.writable.load(Ordering::Relaxed),
        }
    }

    /// The settings the journal was opened with.
    pub fn config(&self) -> &JournalConfig {
        &self.handle.shared.config
    }
}

#[async_trait]
impl Journal for DiskJournal {
    async fn record(&self, op: JournalOp) -> Result<Recorded, CacheError> {
        self.ask(|reply| Request::Record(op, reply)).await
    }

    fn depth(&self) -> u64 {
        self.handle.shared.depth.load(Ordering::Acquire)
    }

    fn hides(&self, key: &CacheKey, entry: &Entry) -> bool {
        self.handle.shared.index().hides(key.as_str(), entry)
    }

    fn has_pending_write(&self, key: &CacheKey) -> bool {
        let index = self.handle.shared.index();
        index
            .by_key
            .get(key.as_str())
            .and_then(|seq| index.ops.get(seq))
            .is_some_and(|op| matches!(op.what, Pending::Set(_)))
    }
}

/// The writer thread: owns the database, applies requests in arrival order,
/// commits concurrent records together.
struct Writer {
    db: Option<Database>,
    shared: Arc<Shared>,
    last_reopen: Instant,
}

/// One record planned into a transaction (`None`: not recorded, full).
struct Planned {
    reply: Reply<Recorded>,
    recorded: Option<Recorded>,
}

impl Writer {
    fn run(mut self, inbox: mpsc::Receiver<Request>) {
        while let Ok(first) = inbox.recv() {
            let mut records = Vec::new();
            let mut next = Some(first);
            while let Some(request) = next.take() {
                match request {
                    Request::Record(op, reply) => {
                        records.push((op, reply));
                        if records.len() < GROUP_MAX {
                            next = inbox.try_recv().ok();
                        }
                    }
                    other => {
                        // Keep arrival order: commit the records before it.
                        self.record_group(std::mem::take(&mut records));
                        self.serve(other);
                        next = inbox.try_recv().ok();
                    }
                }
            }
            self.record_group(records);
        }
        // Every handle is gone: the database (and its file lock) drop here.
    }

    /// The open database, reopening it after an I/O error (at most every
    /// [`REOPEN_EVERY`]).
    fn database(&mut self) -> Result<&Database, CacheError> {
        if self.db.is_none() && self.last_reopen.elapsed() >= REOPEN_EVERY {
            self.last_reopen = Instant::now();
            match open_database(&self.shared.config).and_then(|db| Ok((load_index(&db)?, db))) {
                Ok((index, db)) => {
                    let depth = index.depth();
                    *self.shared.index_mut() = index;
                    self.shared.depth.store(depth, Ordering::Release);
                    self.shared.writable.store(true, Ordering::Relaxed);
                    tracing::warn!(path = %self.shared.config.path.display(), depth, "journal reopened after an I/O error");
                    self.db = Some(db);
                }
                Err(error) => {
                    tracing::error!(path = %self.shared.config.path.display(), %error, "journal could not be reopened; records fail until it can");
                }
            }
        }
        self.db.as_ref().ok_or_else(|| {
            journal_error("the journal's disk failed and it could not be reopened yet")
        })
    }

    /// After a failed write: redb refuses everything from now on, so the
    /// database is dropped and reopened (now, or on a later request).
    fn failed(&mut self, error: &CacheError) {
        self.shared.io_errors.fetch_add(1, Ordering::Relaxed);
        self.shared.writable.store(false, Ordering::Relaxed);
        tracing::error!(path = %self.shared.config.path.display(), %error, "journal write failed; reopening the journal");
        self.db = None;
        self.last_reopen = Instant::now() - REOPEN_EVERY;
        // Re-read what is durable, or, if that fails, keep the index as it
        // was: its depth keeps new writes behind the backlog.
        let _ = self.database();
    }

    fn serve(&mut self, request: Request) {
        match request {
            Request::Record(op, reply) => self.record_group(vec![(op, reply)]),
            Request::Pending(limit, reply) => {
                let result = self.read_pending(limit);
                if let Err(error) = &result {
                    self.failed(error);
                }
                let _ = reply.send(result);
            }
            Request::Acknowledge(done, tally, reply) => {
                let result = self.acknowledge(&done, tally);
                if let Err(error) = &result {
                    self.failed(error);
                }
                let _ = reply.send(result);
            }
        }
    }

    fn read_pending(&mut self, limit: usize) -> Result<Vec<RecordedOp>, CacheError> {
        use redb::ReadableDatabase;
        let db = self.database()?;
        let txn = db.begin_read().map_err(journal_error)?;
        let ops = txn.open_table(OPS).map_err(journal_error)?;
        let mut out = Vec::new();
        for item in ops.iter().map_err(journal_error)?.take(limit) {
            let (seq, value) = item.map_err(journal_error)?;
            out.push(decode(seq.value(), value.value()));
        }
        Ok(out)
    }

    fn acknowledge(&mut self, done: &[RecordedOp], tally: ReplayTally) -> Result<(), CacheError> {
        let db = self.database()?;
        let txn = db.begin_write().map_err(journal_error)?;
        {
            let mut ops = txn.open_table(OPS).map_err(journal_error)?;
            for record in done {
                ops.remove(record.seq).map_err(journal_error)?;
            }
        }
        txn.commit().map_err(journal_error)?;
        let shared = &self.shared;
        {
            let mut index = shared.index_mut();
            for record in done {
                index.remove(record.seq, &mut Vec::new());
            }
            shared.depth.store(index.depth(), Ordering::Release);
        }
        shared.replayed.fetch_add(tally.replayed, Ordering::Relaxed);
        shared.obsolete.fetch_add(tally.obsolete, Ordering::Relaxed);
        shared.rejected.fetch_add(tally.rejected, Ordering::Relaxed);
        shared
            .unreadable
            .fetch_add(tally.unreadable, Ordering::Relaxed);
        Ok(())
    }

    /// Records a group of ops in one transaction (one fsync) and answers each.
    fn record_group(&mut self, records: Vec<(JournalOp, Reply<Recorded>)>) {
        if records.is_empty() {
            return;
        }
        match self.commit_group(records) {
            Ok(planned) => {
                let depth = self.shared.depth.load(Ordering::Acquire);
                for planned in planned {
                    let _ = planned.reply.send(planned.recorded.ok_or_else(|| {
                        journal_error("the journal is full: the write was not recorded")
                    }));
                }
                // Once per order of magnitude: loud enough to notice, not a flood.
                if is_power_of_ten(depth) {
                    tracing::warn!(path = %self.shared.config.path.display(), depth, "journal growing: the master is not taking writes from this node");
                }
            }
            Err((error, replies)) => {
                // Recover (and rebuild the index) before anyone hears of it.
                self.failed(&error);
                for reply in replies {
                    let _ = reply.send(Err(journal_error(error.to_string())));
                }
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn commit_group(
        &mut self,
        records: Vec<(JournalOp, Reply<Recorded>)>,
    ) -> Result<Vec<Planned>, (CacheError, Vec<Reply<Recorded>>)> {
        let shared = self.shared.clone();
        let db = match self.database() {
            Ok(db) => db,
            Err(error) => return Err((error, records.into_iter().map(|(_, r)| r).collect())),
        };
        let mut planned = Vec::with_capacity(records.len());
        let mut replies_on_error = Vec::new();
        // What the group changed in the index, to take back if it does not
        // commit (the index must say what the disk holds).
        let mut undo = Vec::new();
        let result = (|| -> Result<(), CacheError> {
            let txn = db.begin_write().map_err(journal_error)?;
            {
                let mut ops = txn.open_table(OPS).map_err(journal_error)?;
                let mut index = shared.index_mut();
                for (op, reply) in records {
                    let recorded = plan(&shared, &mut index, &mut ops, op, &mut undo);
                    match recorded {
                        Ok(recorded) => planned.push(Planned { reply, recorded }),
                        Err(error) => {
                            replies_on_error.push(reply);
                            return Err(error);
                        }
                    }
                }
                shared.depth.store(index.depth(), Ordering::Release);
            }
            txn.commit().map_err(journal_error)
        })();
        match result {
            Ok(()) => Ok(planned),
            Err(error) => {
                // Nothing of the group is durable: the index forgets it too.
                {
                    let mut index = shared.index_mut();
                    index.revert(undo);
                    shared.depth.store(index.depth(), Ordering::Release);
                }
                let mut replies: Vec<_> = planned.into_iter().map(|p| p.reply).collect();
                replies.extend(replies_on_error);
                Err((error, replies))
            }
        }
    }
}

/// Adds one op to the open transaction and the index: supersedes the key's
/// older op (or an identical older sweep), and applies the journal's bounds:
/// a set that does not fit becomes a delete of its key as of the write (the
/// newest op of a key wins, full or not: no older value survives the
/// replay), and an invalidation that does not fit collapses the journal
/// into one clear. `None`: not recorded (never, today; kept for bounds that
/// may refuse).
fn plan(
    shared: &Shared,
    index: &mut Index,
    ops: &mut redb::Table<'_, u64, &[u8]>,
    op: JournalOp,
    undo: &mut Vec<Undo>,
) -> Result<Option<Recorded>, CacheError> {
    let config = &shared.config;
    let now = SystemTime::now();
    let fits = |index: &Index, freed: (u64, u64), len: u64| {
        index.depth() - freed.0 < config.max_entries
            && index.bytes - freed.1 + len <= config.max_bytes
    };
    let older = match op.key() {
        Some(key) => index.by_key.get(key.as_str()).copied(),
        None => index.same_sweep(&Pending::of(Some(&op))),
    }
    .and_then(|seq| index.ops.get(&seq).map(|o| (seq, o.len)));
    let freed = older.map_or((0, 0), |(_, len)| (1, len));
    let mut recorded = Recorded::Kept;
    let mut op = op;
    let mut encoded = encode(&op, now);
    if !matches!(op, JournalOp::Clear) && !fits(index, freed, encoded.len() as u64) {
        if let JournalOp::Set { key, entry } = &op {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(depth = index.depth(), %key, "journal full: a set is recorded as a delete of its key");
            recorded = Recorded::AsInvalidation;
            op = JournalOp::Delete {
                key: key.clone(),
                at: entry.meta().stored_at,
            };
            encoded = encode(&op, now);
        }
    }
    let collapse = matches!(op, JournalOp::Clear) || !fits(index, freed, encoded.len() as u64);
    if collapse {
        if !matches!(op, JournalOp::Clear) {
            shared.collapsed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("journal full: collapsed into one clear-on-recovery marker");
            op = JournalOp::Clear;
            encoded = encode(&op, now);
        }
        ops.retain(|_, _| false).map_err(journal_error)?;
        index.clear(undo);
    } else if let Some((seq, _)) = older {
        ops.remove(seq).map_err(journal_error)?;
        index.remove(seq, undo);
    }
    let seq = index.next_seq.max(1);
    ops.insert(seq, encoded.as_ref()).map_err(journal_error)?;
    index.insert(
        seq,
        IndexedOp {
            recorded_at: now,
            len: encoded.len() as u64,
            what: Pending::of(Some(&op)),
        },
        undo,
    );
    Ok(Some(recorded))
}
