//! [`RedisTier`]: the local-replica and master tiers.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use cachette_core::{
    Backend, CacheError, CacheKey, Entry, EntryMeta, Payload, TierInfo, async_trait,
    sweep::{self, SweepStep},
};

use crate::{
    cluster::{self, OnFound},
    node::{BACKEND, Node, Shared, is_readonly, redis_error, suggests_failover},
    shared::Space,
};

/// Which server a [`RedisTier`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// This node's replica: reads, and this node's own writes (with a TTL,
    /// overwritten later by the master's replication stream).
    Local,
    /// The master: writes for every node, reads when the local replica misses
    /// or is down, and the invalidation bus.
    Master,
}

/// One `SCAN MATCH pattern COUNT 1000` page: the next cursor and its keys.
pub(crate) async fn scan_page(
    conn: &mut (impl redis::aio::ConnectionLike + Send),
    cursor: u64,
    pattern: &str,
) -> Result<(u64, Vec<Vec<u8>>), CacheError> {
    redis::cmd("SCAN")
        .arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(1000)
        .query_async(conn)
        .await
        .map_err(redis_error)
}

/// What [`RedisTier::replace_in_place`] found.
enum InPlace {
    Absent,
    Counter,
    Done,
}

/// A purge of a [`RedisTier`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Purge<'a> {
    Prefix(&'a str),
    Pattern(&'a str),
    Tag(&'a str),
    Clear,
}

/// A Redis tier. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RedisTier {
    pub(crate) space: Arc<Space>,
    pub(crate) role: Role,
}

/// What the bus carries: `{node id}\n{kind}\n{argument}`.
pub(crate) fn bus_message(node_id: &str, kind: char, argument: &str) -> String {
    format!("{node_id}\n{kind}\n{argument}")
}

/// The bytes stored for an entry: a plain integer for counters (so `INCRBY`
/// works on them), the binary encoding otherwise.
pub(crate) fn wire_value(entry: &Entry) -> Bytes {
    match entry.payload() {
        Payload::Counter(value) => Bytes::from(value.to_string()),
        _ => entry.encode(),
    }
}

/// The longest TTL sent to Redis: 2^31 seconds (RFC 9111 §1.2.2 caps
/// delta-seconds there). Far longer values are rejected by `SET PX` (the
/// scripts' Lua numbers lose integer precision past 2^53), so an uncapped
/// TTL would make the write fail every time, and block a journal replay.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(1 << 31);

/// The TTL argument of the scripts: milliseconds, `0` for no expiry, at most
/// [`MAX_TTL`].
pub(crate) fn ttl_arg(ttl: Duration) -> u64 {
    if ttl == Duration::MAX {
        0
    } else {
        u64::try_from(ttl.min(MAX_TTL).as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

/// Whether a stored value is versioned (`CHTV` + 8 bytes + the entry).
const VERSIONED: &[u8; 4] = b"CHTV";
const VERSION_HEADER: usize = 12;

/// The version a stored value carries (as the scripts read it): the
/// `CHTV` header, or an older entry's `stored_at`; 0 for anything else.
pub(crate) fn stored_version(raw: &[u8]) -> u64 {
    let bytes = if raw.len() >= VERSION_HEADER && raw.starts_with(VERSIONED) {
        raw.get(4..12)
    } else if raw.len() >= 15 && raw.starts_with(&cachette_core::codec::MAGIC) {
        raw.get(7..15)
    } else {
        None
    };
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_be_bytes)
}

/// The entry bytes of a stored value: without the version header, if any.
pub(crate) fn entry_bytes(raw: Vec<u8>) -> Bytes {
    let raw = Bytes::from(raw);
    if raw.len() >= VERSION_HEADER && raw.starts_with(VERSIONED) {
        raw.slice(VERSION_HEADER..)
    } else {
        raw
    }
}

/// The `{status, master_now_ms}` reply of the scripts.
pub(crate) fn script_reply(value: &redis::Value) -> Option<(i64, i64)> {
    match value {
        redis::Value::Array(items) => match items.as_slice() {
            [redis::Value::Int(status), redis::Value::Int(now)] => Some((*status, *now)),
            _ => None,
        },
        _ => None,
    }
}

fn parse_counter(raw: &[u8]) -> Option<i64> {
    if raw.starts_with(&cachette_core::codec::MAGIC) {
        return None;
    }
    std::str::from_utf8(raw).ok()?.parse().ok()
}

impl Role {
    /// `local` or `master`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Master => "master",
        }
    }
}

impl RedisTier {
    /// The tier's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The address of the server this tier talks to now.
    pub fn addr(&self) -> Option<String> {
        self.node().ok().map(|n| n.addr.clone())
    }

    /// The namespace every key of this tier lives under.
    pub fn namespace(&self) -> &str {
        self.space.keys.namespace()
    }

    pub(crate) fn node(&self) -> Result<Arc<Node>, CacheError> {
        let conns = &self.space.conns;
        let node = match self.role {
            Role::Local => conns.local(),
            Role::Master => conns.master(),
        };
        node.ok_or_else(|| {
            if self.role == Role::Master {
                conns.resolve.notify_one();
            }
            CacheError::backend(BACKEND, "no server known for this tier yet")
        })
    }

    /// Maps a client error, asking Sentinel again when the master looks gone.
    pub(crate) fn fail(&self, error: redis::RedisError) -> CacheError {
        if self.role == Role::Master && suggests_failover(&error) {
            self.space.conns.resolve.notify_one();
        }
        redis_error(error)
    }

    pub(crate) async fn publish(
        &self,
        conn: &mut (impl redis::aio::ConnectionLike + Send),
        kind: char,
        argument: &str,
    ) {
        if self.role != Role::Master || !self.space.bus || crate::peers::is_quiet() {
            return;
        }
        let message = bus_message(&self.space.node_id, kind, argument);
        let published: Result<i64, _> = redis::cmd("PUBLISH")
            .arg(self.space.keys.bus_channel())
            .arg(message)
            .query_async(conn)
            .await;
        if let Err(error) = published {
            tracing::warn!(%error, "invalidation applied on the master but not published on the bus");
        }
    }

    /// Removes every key matching `pattern` with `SCAN` + `UNLINK`; returns how
    /// many were removed. Each batch is reported to a [`sweep`] observer.
    pub(crate) async fn sweep(node: &Node, role: Role, pattern: &str) -> Result<u64, CacheError> {
        if let Some(parts) = &node.cluster {
            let mut conn = parts.conn.clone();
            let (_, removed) = cluster::scan_primaries(
                &mut conn,
                &parts.shape,
                pattern,
                OnFound::Unlink(role.as_str()),
            )
            .await?;
            return Ok(removed);
        }
        let mut conn = node.exclusive().await?;
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let (next, keys) = scan_page(&mut conn, cursor, pattern).await?;
            if !keys.is_empty() {
                let n: u64 = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await
                    .map_err(redis_error)?;
                removed += n;
                sweep::report(SweepStep {
                    tier: role.as_str(),
                    matched: keys.len() as u64,
                    removed: n,
                });
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    /// Removes the entries indexed under `tag`, and exactly those members from
    /// the index: an entry tagged while the purge runs stays indexed (removing
    /// the whole index would make it unreachable by any later purge of the
    /// tag). The index key itself expires with its newest entry.
    pub(crate) async fn purge_tag(
        &self,
        node: &Node,
        tag: &str,
        at: SystemTime,
    ) -> Result<u64, CacheError> {
        let mut conn = node.exclusive().await?;
        let index = self.space.keys.tag(tag);
        let members: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
            .arg(&index)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        let mut removed = 0;
        for chunk in members.chunks(500) {
            // One script per chunk: an entry cannot be re-stored (and
            // re-indexed) between its removal and its removal from the index.
            let mut invocation = self.space.scripts.purge_tag_chunk.key(&index);
            for member in chunk {
                invocation.key(member.as_slice());
            }
            let window = if self.role == Role::Master {
                self.window_ms()
            } else {
                0
            };
            invocation
                .arg(self.space.conns.master_clock(at))
                .arg(window)
                .arg(self.space.keys.namespace());
            let n: u64 = invocation
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.fail(e))?;
            removed += n;
            sweep::report(SweepStep {
                tier: self.role.as_str(),
                matched: chunk.len() as u64,
                removed: n,
            });
        }
        Ok(removed)
    }

    /// Removes the namespace's entries stored before `before` (by their
    /// versions) from this tier's server, telling no other node: for a node
    /// of a fleet of peers whose Redis may have missed invalidations since
    /// then (what it forgets, the others still hold; what it stored since,
    /// it keeps). Returns how many were removed.
    pub(crate) async fn forget_older(&self, before: SystemTime) -> Result<u64, CacheError> {
        let node = self.node()?;
        let version = self.space.conns.master_clock(before);
        let mut conn = node.exclusive().await?;
        let mut cursor = 0;
        let mut removed = 0;
        loop {
            let (next, page) =
                scan_page(&mut conn, cursor, &self.space.keys.entries_pattern()).await?;
            if !page.is_empty() {
                let mut invocation = self.space.scripts.forget_older.prepare_invoke();
                for key in &page {
                    invocation.key(key.as_slice());
                }
                invocation.arg(version);
                let reply: redis::Value = invocation
                    .invoke_async(&mut conn)
                    .await
                    .map_err(redis_error)?;
                removed += script_reply(&reply).map_or(0, |(n, _)| n.unsigned_abs());
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    /// The tombstone window in ms, for the scripts.
    pub(crate) fn window_ms(&self) -> u64 {
        u64::try_from(self.space.conns.config.tombstone_ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Prepares the set script for `entry` (keys and arguments), as a write
    /// issued when the entry was stored.
    pub(crate) fn set_invocation(
        &self,
        key: &CacheKey,
        entry: &Entry,
        ttl: Duration,
        mode: &str,
    ) -> redis::ScriptInvocation<'_> {
        let version = self.space.conns.master_clock(entry.meta().stored_at);
        self.set_invocation_at(key, entry, ttl, mode, version)
    }

    /// [`Self::set_invocation`] with the write's version given (in this
    /// server's clock): a copy from another server keeps the version it
    /// had there.
    pub(crate) fn set_invocation_at(
        &self,
        key: &CacheKey,
        entry: &Entry,
        ttl: Duration,
        mode: &str,
        version: u64,
    ) -> redis::ScriptInvocation<'_> {
        let keys = &self.space.keys;
        let mut invocation = self.space.scripts.set.key(keys.entry(key.as_str()));
        invocation
            .key(keys.tombstone(key.as_str()))
            .key(keys.purge_mark_for(key.as_str()));
        for tag in &entry.meta().tags {
            // On a cluster, a variants index lives in its own slot and is
            // added to before the script (see `write`).
            if !keys.is_cluster() || !keys.single_index(tag) {
                invocation.key(keys.tag_index(tag, key.as_str()));
            }
        }
        let versioned = !matches!(entry.payload(), Payload::Counter(_));
        invocation
            .arg(wire_value(entry).as_ref())
            .arg(ttl_arg(ttl))
            .arg(mode)
            .arg(version)
            .arg(self.window_ms())
            .arg(if versioned { "v" } else { "" });
        invocation
    }

    /// Prepares the delete script: a delete issued at `at` (this node's clock).
    pub(crate) fn delete_invocation(
        &self,
        key: &str,
        at: SystemTime,
    ) -> redis::ScriptInvocation<'_> {
        let keys = &self.space.keys;
        let mut invocation = self.space.scripts.delete.key(keys.entry(key));
        invocation
            .key(keys.tombstone(key))
            .arg(self.space.conns.master_clock(at))
            .arg(self.window_ms());
        invocation
    }

    /// Runs a script that answers `{status, master_now_ms}`, learning the
    /// master's clock from the reply.
    async fn run_script(
        &self,
        conn: &mut (impl redis::aio::ConnectionLike + Send),
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<i64, redis::RedisError> {
        let sent = std::time::Instant::now();
        let reply: redis::Value = invocation.invoke_async(conn).await?;
        let (status, now) = script_reply(&reply).ok_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "unexpected script reply",
            ))
        })?;
        if self.role == Role::Master {
            self.space.conns.observe_master_clock(now, sent);
        }
        Ok(status)
    }

    /// Runs a purge issued at `at` (this node's clock; a journal replay
    /// passes when the purge was recorded, so that writes journaled after
    /// it are not refused as older): raises the purge mark first (so writes
    /// issued before the purge are refused from then on, and the sweep
    /// removes those already stored), sweeps, and publishes it on the bus.
    /// A URL's variants (a variants tag) raise no mark: each removed entry
    /// leaves a tombstone, as a delete does, and an unsafe request must not
    /// refuse every fill of the namespace in flight at that moment.
    pub(crate) async fn purge_at(
        &self,
        purge: &Purge<'_>,
        at: SystemTime,
    ) -> Result<(), CacheError> {
        if self.read_only() {
            return Ok(());
        }
        let node = self.node()?;
        if node.cluster.is_some() {
            return self.purge_cluster(&node, purge, at).await;
        }
        let marks = !matches!(purge, Purge::Tag(tag) if cachette_core::is_variants_tag(tag));
        // Under `maxmemory` with `noeviction` the mark (a write) can be
        // refused; the sweep frees memory, then the mark is raised.
        let marked = if marks {
            self.mark_purge(&node, at).await
        } else {
            Ok(())
        };
        let keys = &self.space.keys;
        let (kind, argument) = match purge {
            Purge::Prefix(prefix) => {
                Self::sweep(&node, self.role, &keys.entry_pattern(prefix)).await?;
                ('p', *prefix)
            }
            Purge::Pattern(pattern) => {
                Self::sweep(&node, self.role, &keys.entry_glob(pattern)).await?;
                ('g', *pattern)
            }
            Purge::Tag(tag) => {
                self.purge_tag(&node, tag, at).await?;
                ('t', *tag)
            }
            Purge::Clear => {
                // Entries and tag sets; tombstones and the mark stay (they
                // are what refuses older writes, and expire on their own).
                Self::sweep(&node, self.role, &keys.entries_pattern()).await?;
                Self::sweep(&node, self.role, &keys.tags_pattern()).await?;
                ('c', "")
            }
        };
        if marked.is_err() {
            self.mark_purge(&node, at).await?;
        }
        let mut conn = node.shared.clone();
        self.publish(&mut conn, kind, argument).await;
        Ok(())
    }

    /// [`Self::purge_at`] on a cluster: the purge mark is raised in every
    /// slot (one script per slot, pipelined per primary), a tag's per-slot
    /// indexes are purged by the same scripts, prefixes and patterns are
    /// swept on every primary. A URL's variants (one index, no mark) are
    /// deleted one by one, each leaving a tombstone.
    async fn purge_cluster(
        &self,
        node: &Node,
        purge: &Purge<'_>,
        at: SystemTime,
    ) -> Result<(), CacheError> {
        let keys = &self.space.keys;
        let (kind, argument, pattern) = match purge {
            Purge::Tag(tag) if keys.single_index(tag) => {
                self.purge_variants(node, tag, at).await?;
                let mut conn = node.shared.clone();
                self.publish(&mut conn, 't', tag).await;
                return Ok(());
            }
            Purge::Tag(tag) => ('t', *tag, None),
            Purge::Prefix(prefix) => ('p', *prefix, Some(keys.entry_pattern(prefix))),
            Purge::Pattern(pattern) => ('g', *pattern, Some(keys.entry_glob(pattern))),
            Purge::Clear => ('c', "", Some(keys.entries_pattern())),
        };
        let tag = matches!(purge, Purge::Tag(_)).then_some(argument);
        // Under `maxmemory` with `noeviction` the marks (writes) can be
        // refused; the sweep frees memory, then they are raised.
        let marked = self.purge_slots(node, at, tag).await;
        if let Some(pattern) = &pattern {
            Self::sweep(node, self.role, pattern).await?;
        }
        if matches!(purge, Purge::Clear) {
            Self::sweep(node, self.role, &keys.tags_pattern()).await?;
        }
        if marked.is_err() {
            self.purge_slots(node, at, tag).await?;
        }
        let mut conn = node.shared.clone();
        self.publish(&mut conn, kind, argument).await;
        Ok(())
    }

    /// Raises the purge mark of every slot to `at` and, with `tag`, purges
    /// the slot's index of it (atomically per slot). Returns how many
    /// entries were removed.
    async fn purge_slots(
        &self,
        node: &Node,
        at: SystemTime,
        tag: Option<&str>,
    ) -> Result<u64, CacheError> {
        let Some(parts) = &node.cluster else {
            return Ok(0);
        };
        let mut conn = parts.conn.clone();
        let script = &self.space.scripts.purge_slot;
        // EVALSHA in the pipelines needs the script on every primary (not
        // on every node: a replica that is down or loading must not stop
        // purges).
        cluster::load_on_primaries(&mut conn, &self.space.scripts.purge_slot_code).await?;
        let keys = &self.space.keys;
        let version = self.space.conns.master_clock(at);
        let window = self.window_ms();
        let replies = cluster::each_slot(&mut conn, &parts.shape, |pipe, slot_tag| {
            let command = pipe.cmd("EVALSHA").arg(script.get_hash());
            match tag {
                Some(tag) => command
                    .arg(2)
                    .arg(keys.purge_mark_in(slot_tag))
                    .arg(keys.tag_in(slot_tag, tag)),
                None => command.arg(1).arg(keys.purge_mark_in(slot_tag)),
            }
            .arg(version)
            .arg(window)
            .arg(keys.namespace())
            .arg(format!("{{{slot_tag}}}"));
        })
        .await
        .inspect_err(|_| self.space.conns.resolve.notify_one())?;
        let removed = replies
            .iter()
            .filter_map(|v| match v {
                redis::Value::Int(n) => u64::try_from(*n).ok(),
                _ => None,
            })
            .sum();
        if tag.is_some() {
            sweep::report(SweepStep {
                tier: self.role.as_str(),
                matched: removed,
                removed,
            });
        }
        Ok(removed)
    }

    /// Deletes the members of a cluster's variants index `tag`, each as a
    /// delete issued at `at` (an entry stored after it stays, and each one
    /// removed leaves a tombstone). The index keeps its members (removing
    /// one could unlist a variant stored again meanwhile in another slot);
    /// it holds one URL's variants and expires with the newest.
    async fn purge_variants(
        &self,
        node: &Node,
        tag: &str,
        at: SystemTime,
    ) -> Result<u64, CacheError> {
        let mut conn = node.shared.clone();
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.space.keys.tag(tag))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        let entries = self.space.keys.entry("");
        let mut removed = 0u64;
        for member in &members {
            let Some(key) = member.strip_prefix(entries.as_str()) else {
                continue;
            };
            let invocation = self.delete_invocation(key, at);
            let n = self
                .run_script(&mut conn, &invocation)
                .await
                .map_err(|e| self.fail(e))?;
            removed += u64::try_from(n).unwrap_or(0);
        }
        sweep::report(SweepStep {
            tier: self.role.as_str(),
            matched: members.len() as u64,
            removed,
        });
        Ok(removed)
    }

    /// Raises the namespace's purge mark to `at` (see [`Self::purge_at`]).
    async fn mark_purge(&self, node: &Node, at: SystemTime) -> Result<(), CacheError> {
        if self.role != Role::Master {
            return Ok(());
        }
        let mut conn = node.shared.clone();
        let mut invocation = self
            .space
            .scripts
            .purge_mark
            .key(self.space.keys.purge_mark());
        invocation
            .arg(self.space.conns.master_clock(at))
            .arg(self.window_ms());
        self.run_script(&mut conn, &invocation)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Replaces the entry under `key` with `update(entry)` in place: exactly
    /// the value read, its version kept (the set script's `cas` mode), read
    /// again if another write lands in between (a few times: it races only
    /// with writes of the key, which then stand). `update` saying `None`
    /// leaves the entry as it is; counters are not entries.
    async fn replace_in_place(
        &self,
        key: &CacheKey,
        update: impl Fn(&Entry) -> Option<Entry>,
    ) -> Result<InPlace, CacheError> {
        let node = self.node()?;
        let mut conn = node.shared.clone();
        let redis_key = self.space.keys.entry(key.as_str());
        for _ in 0..4 {
            let raw: Option<Vec<u8>> = redis::cmd("GET")
                .arg(&redis_key)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.fail(e))?;
            let Some(raw) = raw else {
                return Ok(InPlace::Absent);
            };
            if parse_counter(&raw).is_some() {
                return Ok(InPlace::Counter);
            }
            let version = stored_version(&raw);
            let entry = Entry::decode(entry_bytes(raw))?;
            let Some(updated) = update(&entry) else {
                return Ok(InPlace::Done);
            };
            let ttl = updated.remaining_ttl(SystemTime::now());
            if ttl.is_zero() {
                return Ok(InPlace::Done);
            }
            if self.space.keys.is_cluster() {
                // The variants index must outlive the entry it lists.
                self.index_variants(&mut conn, key, &updated, ttl).await?;
            }
            let mut invocation = self.set_invocation(key, &updated, ttl, "cas");
            invocation.arg(version);
            match self
                .run_script(&mut conn, &invocation)
                .await
                .map_err(|e| self.fail(e))?
            {
                -2 => continue,
                _ => return Ok(InPlace::Done),
            }
        }
        Err(CacheError::backend(
            BACKEND,
            format!("`{key}` kept changing while it was updated in place"),
        ))
    }

    /// Marks the entry under `key` stale in place (a soft purge); `Vary`
    /// markers are left alone. Newer writes racing with it stand.
    async fn soften_one(&self, key: &CacheKey) -> Result<(), CacheError> {
        let now = SystemTime::now();
        self.replace_in_place(key, |entry| {
            (!matches!(entry.payload(), Payload::Variants(_)))
                .then(|| entry.with_meta(entry.meta().clone().staled(now)))
        })
        .await
        .map(|_| ())
    }

    /// The entry keys of this namespace matching `pattern` (`SCAN`).
    async fn scan_entries(&self, pattern: &str) -> Result<Vec<CacheKey>, CacheError> {
        let node = self.node()?;
        let entries = self.space.keys.entry("");
        if let Some(parts) = &node.cluster {
            let mut conn = parts.conn.clone();
            let (found, _) =
                cluster::scan_primaries(&mut conn, &parts.shape, pattern, OnFound::Collect).await?;
            return Ok(found
                .iter()
                .filter_map(|k| std::str::from_utf8(k).ok())
                .filter_map(|k| k.strip_prefix(entries.as_str()))
                .filter_map(|k| CacheKey::new(k).ok())
                .collect());
        }
        let mut conn = node.exclusive().await?;
        let mut cursor: u64 = 0;
        let mut out = Vec::new();
        loop {
            let (next, keys) = scan_page(&mut conn, cursor, pattern).await?;
            out.extend(
                keys.iter()
                    .filter_map(|k| std::str::from_utf8(k).ok())
                    .filter_map(|k| k.strip_prefix(entries.as_str()))
                    .filter_map(|k| CacheKey::new(k).ok()),
            );
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }

    /// Softens each of `keys`, then publishes `kind`/`argument` on the bus.
    async fn soften_all(
        &self,
        keys: Vec<CacheKey>,
        kind: char,
        argument: &str,
    ) -> Result<(), CacheError> {
        for key in &keys {
            self.soften_one(key).await?;
        }
        let node = self.node()?;
        let mut conn = node.shared.clone();
        self.publish(&mut conn, kind, argument).await;
        Ok(())
    }

    /// Whether this tier takes no writes or invalidations: a cluster's
    /// local tier (its replicas cannot be written: a write goes to the
    /// slot's primary, which the master tier writes, and replication
    /// brings it here).
    fn read_only(&self) -> bool {
        self.role == Role::Local && self.space.keys.is_cluster()
    }

    /// On a cluster, lists `key` in the variants indexes of `entry` before
    /// the entry is stored (they live in other slots than the entry, so the
    /// set script cannot): an entry is never stored unindexed.
    pub(crate) async fn index_variants(
        &self,
        conn: &mut Shared,
        key: &CacheKey,
        entry: &Entry,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        let keys = &self.space.keys;
        for tag in entry
            .meta()
            .tags
            .iter()
            .filter(|t| cachette_core::is_variants_tag(t))
        {
            let _: i64 = self
                .space
                .scripts
                .index_add
                .key(keys.tag(tag))
                .arg(keys.entry(key.as_str()))
                .arg(ttl_arg(ttl))
                .invoke_async(conn)
                .await
                .map_err(|e| self.fail(e))?;
        }
        Ok(())
    }

    /// Stores a copy of an entry from another server at `version` (in this
    /// server's clock), unless this server holds a newer value, a later
    /// delete or purge; a refused copy still removes an older value held.
    /// Returns whether it was stored.
    pub(crate) async fn copy_in(
        &self,
        key: &CacheKey,
        entry: &Entry,
        ttl: Duration,
        version: u64,
    ) -> Result<bool, CacheError> {
        let node = self.node()?;
        let mut conn = node.shared.clone();
        let invocation = self.set_invocation_at(key, entry, ttl, "", version);
        match self.run_script(&mut conn, &invocation).await {
            Ok(stored) => Ok(stored == 1),
            Err(error) => Err(self.fail(error)),
        }
    }

    /// Removes the value of `key` if it is older than `version` (in this
    /// server's clock), leaving a tombstone at it: a newer value exists
    /// elsewhere that was not copied here.
    pub(crate) async fn drop_older(&self, key: &CacheKey, version: u64) -> Result<(), CacheError> {
        let node = self.node()?;
        let mut conn = node.shared.clone();
        let keys = &self.space.keys;
        let mut invocation = self.space.scripts.delete.key(keys.entry(key.as_str()));
        invocation
            .key(keys.tombstone(key.as_str()))
            .arg(version)
            .arg(self.window_ms());
        self.run_script(&mut conn, &invocation)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    async fn write(
        &self,
        key: &CacheKey,
        entry: &Entry,
        ttl: Duration,
        mode: &str,
    ) -> Result<bool, CacheError> {
        if self.read_only() {
            return Ok(false);
        }
        let node = self.node()?;
        let mut conn = node.shared.clone();
        if self.space.keys.is_cluster() {
            self.index_variants(&mut conn, key, entry, ttl).await?;
        }
        let invocation = self.set_invocation(key, entry, ttl, mode);
        match self.run_script(&mut conn, &invocation).await {
            Ok(-1) if mode != "nx" => Err(CacheError::Superseded {
                tier: self.role.as_str().to_owned(),
            }),
            Ok(stored) => Ok(stored == 1),
            Err(error) if self.role == Role::Local && is_readonly(&error) => {
                // A read-only replica cannot hold this node's own writes; the
                // master write still happens. Say so once, count every time.
                self.space.readonly_skips.fetch_add(1, Ordering::Relaxed);
                if !self.space.readonly_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(replica = %node.addr, "local replica is read-only (replica-read-only yes): local writes are skipped; set replica-read-only no");
                }
                Ok(false)
            }
            Err(error) => Err(self.fail(error)),
        }
    }
}

#[async_trait]
impl Backend for RedisTier {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn lease(
        &self,
        key: &CacheKey,
        token: &str,
        ttl: Duration,
    ) -> Result<cachette_core::LeaseState, CacheError> {
        self.take_lease(key, token, ttl).await
    }

    async fn renew_lease(
        &self,
        key: &CacheKey,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, CacheError> {
        self.renew(key, token, ttl).await
    }

    async fn end_lease(
        &self,
        key: &CacheKey,
        token: &str,
        end: cachette_core::LeaseEnd,
        linger: Duration,
    ) -> Result<(), CacheError> {
        self.end(key, token, end, linger).await
    }

    fn fill_wakers(&self) -> Option<&cachette_core::FillWakers> {
        (self.role == Role::Master).then_some(&self.space.fill_wakers)
    }

    async fn get(&self, key: &CacheKey) -> Result<Option<Arc<Entry>>, CacheError> {
        let node = self.node()?;
        let mut conn = node.shared.clone();
        let redis_key = self.space.keys.entry(key.as_str());
        let raw: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&redis_key)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        let Some(raw) = raw else { return Ok(None) };
        if let Some(value) = parse_counter(&raw) {
            // A counter carries no metadata: its lifetime is the key's TTL.
            let pttl: i64 = redis::cmd("PTTL")
                .arg(&redis_key)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.fail(e))?;
            let now = SystemTime::now();
            let meta = match u64::try_from(pttl) {
                Ok(ms) => EntryMeta::new(now, Duration::from_millis(ms)),
                Err(_) if pttl == -1 => EntryMeta::persistent(now),
                Err(_) => return Ok(None), // expired between the two calls
            };
            return Ok(Some(Arc::new(Entry::counter(value, meta))));
        }
        Ok(Some(Arc::new(Entry::decode(entry_bytes(raw))?)))
    }

    async fn set(
        &self,
        key: &CacheKey,
        entry: Arc<Entry>,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        if ttl.is_zero() {
            return Ok(());
        }
        self.write(key, &entry, ttl, "").await.map(|_| ())
    }

    async fn add(
        &self,
        key: &CacheKey,
        entry: Arc<Entry>,
        ttl: Duration,
    ) -> Result<bool, CacheError> {
        if ttl.is_zero() {
            return Ok(false);
        }
        self.write(key, &entry, ttl, "nx").await
    }

    async fn incr(&self, key: &CacheKey, delta: i64) -> Result<Option<i64>, CacheError> {
        let node = self.node()?;
        let mut conn = node.shared.clone();
        let result: Result<Option<i64>, _> = self
            .space
            .scripts
            .incr
            .key(self.space.keys.entry(key.as_str()))
            .arg(delta)
            .invoke_async(&mut conn)
            .await;
        match result {
            Ok(value) => {
                if value.is_some() && self.space.peers.is_none() {
                    // Other memory tiers (other nodes, other aliases here)
                    // hold the old number: drop their copies. (In a fleet
                    // of peers a counter is each node's own: the others
                    // would delete theirs.)
                    self.publish(&mut conn, 'd', key.as_str()).await;
                }
                Ok(value)
            }
            Err(error) if error.to_string().contains("NOTCOUNTER") => {
                Err(CacheError::NotACounter(key.to_string()))
            }
            Err(error) if error.to_string().contains("overflow") => {
                Err(CacheError::Overflow(key.to_string()))
            }
            Err(error) => Err(self.fail(error)),
        }
    }

    async fn touch(&self, key: &CacheKey, meta: EntryMeta) -> Result<bool, CacheError> {
        if self.read_only() {
            return Ok(false);
        }
        let touched = self
            .replace_in_place(key, |entry| {
                Some(entry.with_meta(meta.clone().with_tags(entry.meta().tags.iter().cloned())))
            })
            .await?;
        match touched {
            InPlace::Absent => Ok(false),
            InPlace::Done => Ok(true),
            InPlace::Counter => {
                // A counter's lifetime is the key's TTL.
                let node = self.node()?;
                let mut conn = node.shared.clone();
                let redis_key = self.space.keys.entry(key.as_str());
                let ttl = Entry::value(Bytes::new(), meta).remaining_ttl(SystemTime::now());
                let touched: i64 = match ttl_arg(ttl) {
                    0 => {
                        redis::cmd("PERSIST")
                            .arg(&redis_key)
                            .query_async(&mut conn)
                            .await
                    }
                    ms => {
                        redis::cmd("PEXPIRE")
                            .arg(&redis_key)
                            .arg(ms)
                            .query_async(&mut conn)
                            .await
                    }
                }
                .map_err(|e| self.fail(e))?;
                Ok(touched == 1 || ttl_arg(ttl) == 0)
            }
        }
    }

    async fn soften(&self, key: &CacheKey) -> Result<(), CacheError> {
        if self.read_only() {
            return Ok(());
        }
        self.soften_all(vec![key.clone()], 'S', key.as_str()).await
    }

    async fn soften_prefix(&self, prefix: &str) -> Result<(), CacheError> {
        if self.read_only() {
            return Ok(());
        }
        let keys = self
            .scan_entries(&self.space.keys.entry_pattern(prefix))
            .await?;
        self.soften_all(keys, 'P', prefix).await
    }

    async fn soften_pattern(&self, pattern: &str) -> Result<(), CacheError> {
        if self.read_only() {
            return Ok(());
        }
        let keys = self
            .scan_entries(&self.space.keys.entry_glob(pattern))
            .await?;
        self.soften_all(keys, 'G', pattern).await
    }

    async fn soften_tag(&self, tag: &str) -> Result<(), CacheError> {
        if self.read_only() {
            return Ok(());
        }
        let node = self.node()?;
        let mut conn = node.shared.clone();
        let keys = &self.space.keys;
        let members: Vec<String> = match &node.cluster {
            Some(parts) if !keys.single_index(tag) => {
                let mut conn = parts.conn.clone();
                let replies = cluster::each_slot(&mut conn, &parts.shape, |pipe, slot_tag| {
                    pipe.cmd("SMEMBERS").arg(keys.tag_in(slot_tag, tag));
                })
                .await?;
                let mut members = Vec::new();
                for reply in replies {
                    let slot: Vec<String> =
                        redis::from_redis_value(reply).map_err(|e| redis_error(e.into()))?;
                    members.extend(slot);
                }
                members
            }
            _ => redis::cmd("SMEMBERS")
                .arg(keys.tag(tag))
                .query_async(&mut conn)
                .await
                .map_err(|e| self.fail(e))?,
        };
        let entries = self.space.keys.entry("");
        let keys = members
            .iter()
            .filter_map(|k| k.strip_prefix(entries.as_str()))
            .filter_map(|k| CacheKey::new(k).ok())
            .collect();
        self.soften_all(keys, 'T', tag).await
    }

    async fn delete(&self, key: &CacheKey) -> Result<bool, CacheError> {
        if self.read_only() {
            return Ok(false);
        }
        let node = self.node()?;
        let mut conn = node.shared.clone();
        let removed = if self.role == Role::Master {
            // The tombstone keeps a write issued before this delete (a set
            // that timed out and is replayed, or arrives late) from bringing
            // the value back.
            let invocation = self.delete_invocation(key.as_str(), SystemTime::now());
            self.run_script(&mut conn, &invocation)
                .await
                .map_err(|e| self.fail(e))?
        } else {
            redis::cmd("UNLINK")
                .arg(self.space.keys.entry(key.as_str()))
                .query_async(&mut conn)
                .await
                .map_err(|e| self.fail(e))?
        };
        self.publish(&mut conn, 'd', key.as_str()).await;
        Ok(removed > 0)
    }

    async fn invalidate_prefix(&self, prefix: &str) -> Result<(), CacheError> {
        self.purge_at(&Purge::Prefix(prefix), SystemTime::now())
            .await
    }

    async fn invalidate_pattern(&self, pattern: &str) -> Result<(), CacheError> {
        self.purge_at(&Purge::Pattern(pattern), SystemTime::now())
            .await
    }

    async fn invalidate_tag(&self, tag: &str) -> Result<(), CacheError> {
        self.purge_at(&Purge::Tag(tag), SystemTime::now()).await
    }

    async fn clear(&self) -> Result<(), CacheError> {
        self.purge_at(&Purge::Clear, SystemTime::now()).await
    }

    async fn health(&self) -> Result<(), CacheError> {
        let node = self.node()?;
        let mut conn = node.shared.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    async fn info(&self) -> TierInfo {
        let Ok(node) = self.node() else {
            return TierInfo::default();
        };
        let timeout = match self.role {
            Role::Local => self.space.conns.config.local_timeout,
            Role::Master => self.space.conns.config.master_timeout,
        };
        if let Some(parts) = &node.cluster {
            let primaries = parts.shape.primaries();
            let address = if primaries.is_empty() {
                node.addr.clone()
            } else {
                primaries
                    .iter()
                    .map(cluster::Primary::addr)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let role = match self.role {
                Role::Local => "cluster replicas",
                Role::Master => "cluster primaries",
            };
            return TierInfo::server(Some(address), Some(role.to_owned()));
        }
        let role = node.role(timeout).await.ok();
        TierInfo::server(Some(node.addr.clone()), role)
    }
}
