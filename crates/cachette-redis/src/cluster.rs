//! Redis Cluster (and Valkey Cluster): hash slots, the slot tags that keep
//! a key's companions (its tombstone, the purge mark, tag indexes) in the
//! key's own slot, the read routing to this node's replicas, and the
//! per-primary calls that redis-rs leaves unrouted (`SCAN`, a pipeline of
//! one command per slot).
//!
//! **Why slot tags.** A script may only touch keys of one slot. An entry
//! stays at `{ns}k:{key}` (readable, and prefix `SCAN`s keep working); the
//! keys a write or delete checks with it are named with a *slot tag*: a
//! short string `T` whose hash slot is the entry's, used as the hash tag
//! `{T}` (`{ns}d:{T}{key}`, `{ns}p:{T}`, `{ns}t:{T}{tag}`). So every
//! script stays single-slot and atomic, exactly as on one master, and a
//! purge raises the mark in each of the 16 384 slots (one pipeline per
//! primary).

use std::{
    collections::BTreeMap,
    sync::{Arc, OnceLock, RwLock},
};

use cachette_core::CacheError;
use redis::{
    Value,
    cluster::NodeAddress,
    cluster_async::ClusterConnection,
    cluster_read_routing::{ClusterTopology, ReadCandidates, ReadRoutingStrategy},
    cluster_routing::{RoutingInfo, SingleNodeRoutingInfo},
};

use crate::{
    node::{BACKEND, Node, redis_error},
    shared::Connections,
};

/// The number of hash slots of a Redis Cluster.
pub(crate) const SLOTS: u16 = 16_384;

/// The part of `key` that is hashed: the content of the first `{...}`, if
/// not empty, else the whole key (the Redis Cluster specification).
fn hashed_part(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|b| *b == b'{') {
        let rest = &key[open + 1..];
        if let Some(close) = rest.iter().position(|b| *b == b'}') {
            if close > 0 {
                return &rest[..close];
            }
        }
    }
    key
}

/// The hash slot of `key`.
pub(crate) fn hash_slot(key: &[u8]) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(hashed_part(key)) % SLOTS
}

/// For each slot, the shortest string (of `[0-9a-z]`) that hashes to it.
fn slot_tags() -> &'static [String] {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let mut tags = vec![String::new(); usize::from(SLOTS)];
        let mut missing = usize::from(SLOTS);
        // Every slot is reached by four characters or fewer (36^4 = 1.7 M
        // candidates; in practice about 200 k are tried).
        'lengths: for len in 1..=4u32 {
            let count = ALPHABET.len().pow(len);
            for n in 0..count {
                let mut candidate = Vec::with_capacity(len as usize);
                let mut rest = n;
                for _ in 0..len {
                    candidate.push(ALPHABET[rest % ALPHABET.len()]);
                    rest /= ALPHABET.len();
                }
                let slot = usize::from(hash_slot(&candidate));
                if tags[slot].is_empty() {
                    tags[slot] = String::from_utf8_lossy(&candidate).into_owned();
                    missing -= 1;
                    if missing == 0 {
                        break 'lengths;
                    }
                }
            }
        }
        tags
    })
}

/// The slot tag of `slot`: a hash tag content that lands in it.
pub(crate) fn slot_tag(slot: u16) -> &'static str {
    slot_tags()
        .get(usize::from(slot % SLOTS))
        .map_or("0", String::as_str)
}

/// Which replicas are this node's: `host` (every replica on that host) or
/// `host:port` (that one), as configured.
#[derive(Debug, Clone, Default)]
pub(crate) struct LocalReplicas {
    matches: Arc<Vec<(String, Option<u16>)>>,
}

impl LocalReplicas {
    /// Parses `host` / `host:port` items.
    pub(crate) fn parse(items: &[String]) -> Result<Self, CacheError> {
        let mut matches = Vec::with_capacity(items.len());
        for item in items {
            let item = item.trim();
            let (host, port) = match item.rsplit_once(':') {
                Some((host, port)) if !host.contains(':') || host.starts_with('[') => {
                    let port = port.parse::<u16>().map_err(|_| {
                        CacheError::backend(
                            BACKEND,
                            format!("local replica {item:?}: the port is not a number"),
                        )
                    })?;
                    (host.trim_matches(['[', ']']).to_owned(), Some(port))
                }
                _ => (item.to_owned(), None),
            };
            if host.is_empty() {
                return Err(CacheError::backend(
                    BACKEND,
                    format!("local replica {item:?}: no host"),
                ));
            }
            matches.push((host, port));
        }
        Ok(Self {
            matches: Arc::new(matches),
        })
    }

    fn is_local(&self, node: &NodeAddress) -> bool {
        self.matches
            .iter()
            .any(|(host, port)| node.host() == host && port.is_none_or(|p| p == node.port()))
    }
}

/// Routes a slot's reads to this node's replica of it, else to the slot's
/// primary (never to another node's replica: a remote replica is no faster
/// than the primary and lags behind it).
#[derive(Debug, Clone)]
pub(crate) struct LocalReplicaRouting(pub(crate) LocalReplicas);

impl ReadRoutingStrategy for LocalReplicaRouting {
    fn on_topology_changed(&self, _topology: ClusterTopology) {}

    fn route_read<'a>(&self, candidates: &ReadCandidates<'a>) -> &'a NodeAddress {
        match candidates {
            ReadCandidates::AnyNode(any) => any
                .replicas()
                .iter()
                .find(|r| self.0.is_local(r))
                .unwrap_or(any.primary()),
            ReadCandidates::ReplicasOnly(only) => only
                .replicas()
                .iter()
                .find(|r| self.0.is_local(r))
                .unwrap_or(only.replicas().first()),
        }
    }
}

impl redis::cluster_read_routing::ReadRoutingStrategyFactory for LocalReplicaRouting {
    fn create_strategy(&self) -> Box<dyn ReadRoutingStrategy> {
        Box::new(self.clone())
    }
}

/// One primary and the slot ranges it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Primary {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) ranges: Vec<(u16, u16)>,
    /// Its replicas as `host:port`.
    pub(crate) replicas: Vec<String>,
}

impl Primary {
    pub(crate) fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn route(&self) -> SingleNodeRoutingInfo {
        SingleNodeRoutingInfo::ByAddress {
            host: self.host.clone(),
            port: self.port,
        }
    }

    fn slots(&self) -> impl Iterator<Item = u16> + '_ {
        self.ranges.iter().flat_map(|(start, end)| *start..=*end)
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        _ => text(value)?.parse().ok(),
    }
}

fn node_of(value: &Value) -> Option<(String, u16)> {
    let Value::Array(fields) = value else {
        return None;
    };
    let host = text(fields.first()?)?;
    let port = u16::try_from(int(fields.get(1)?)?).ok()?;
    Some((host, port))
}

/// Parses a `CLUSTER SLOTS` reply into primaries (sorted by address).
pub(crate) fn parse_slots(reply: &Value) -> Option<Vec<Primary>> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    let mut primaries: BTreeMap<(String, u16), Primary> = BTreeMap::new();
    for range in ranges {
        let Value::Array(fields) = range else {
            return None;
        };
        let start = u16::try_from(int(fields.first()?)?).ok()?;
        let end = u16::try_from(int(fields.get(1)?)?).ok()?;
        let (host, port) = node_of(fields.get(2)?)?;
        let replicas = fields
            .iter()
            .skip(3)
            .filter_map(node_of)
            .map(|(h, p)| format!("{h}:{p}"));
        let primary = primaries
            .entry((host.clone(), port))
            .or_insert_with(|| Primary {
                host,
                port,
                ranges: Vec::new(),
                replicas: Vec::new(),
            });
        primary.ranges.push((start, end));
        for replica in replicas {
            if !primary.replicas.contains(&replica) {
                primary.replicas.push(replica);
            }
        }
    }
    let mut primaries: Vec<Primary> = primaries.into_values().collect();
    for primary in &mut primaries {
        // Nodes list replicas in their own order: compare shapes as sets.
        primary.replicas.sort();
        primary.ranges.sort();
    }
    Some(primaries)
}

/// The cluster's shape as last read, for stats and per-primary calls.
#[derive(Debug, Default)]
pub(crate) struct Shape {
    primaries: RwLock<Vec<Primary>>,
}

impl Shape {
    pub(crate) fn primaries(&self) -> Vec<Primary> {
        self.primaries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Reads `CLUSTER SLOTS` now (from a primary: a stalled or loading
    /// replica must not time out purges), remembers and returns it. A
    /// cluster whose slots are not all served is an error (a purge could
    /// not reach every slot).
    pub(crate) async fn refresh(
        &self,
        conn: &mut ClusterConnection,
    ) -> Result<Vec<Primary>, CacheError> {
        let reply = conn
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
            )
            .await
            .map_err(redis_error)?;
        let primaries = parse_slots(&reply)
            .ok_or_else(|| CacheError::backend(BACKEND, "unexpected CLUSTER SLOTS reply"))?;
        let covered: u32 = primaries
            .iter()
            .flat_map(|p| p.ranges.iter())
            .map(|(s, e)| u32::from(e.saturating_sub(*s)) + 1)
            .sum();
        if covered < u32::from(SLOTS) {
            return Err(CacheError::backend(
                BACKEND,
                format!("the cluster serves {covered} of {SLOTS} slots"),
            ));
        }
        *self
            .primaries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = primaries.clone();
        Ok(primaries)
    }
}

/// Follows the cluster's shape: reads `CLUSTER SLOTS` every
/// `topology_poll`, counts a change of a slot's primary as a failover, and
/// rebuilds the local tier's connection when the replicas changed. redis-rs
/// follows `MOVED` on its own, but it reads replicas only when it refreshes
/// its slot map, and Redis lists a replica only once it has replicated
/// something: without this, reads of a cluster started empty would never
/// reach this node's replicas.
pub(crate) async fn run_watcher(conns: std::sync::Weak<Connections>) {
    let mut known: Option<Vec<Primary>> = None;
    loop {
        let Some(strong) = conns.upgrade() else {
            return;
        };
        let poll = strong.config.sentinel_poll;
        if let Some(master) = strong.master() {
            if let Some(parts) = &master.cluster {
                let mut conn = parts.conn.clone();
                match tokio::time::timeout(
                    poll.max(strong.config.master_timeout),
                    parts.shape.refresh(&mut conn),
                )
                .await
                {
                    Ok(Ok(now)) => {
                        if let Some(before) = &known {
                            follow_change(&strong, &master, before, &now);
                        }
                        known = Some(now);
                    }
                    Ok(Err(error)) => {
                        strong
                            .resolve_errors
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::debug!(%error, "cluster slots not read; will retry");
                    }
                    Err(_) => {
                        strong
                            .resolve_errors
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        }
        drop(strong);
        tokio::time::sleep(poll).await;
    }
}

/// What a change of shape means: failovers counted, the local tier's
/// connection rebuilt when this node's replicas changed.
fn follow_change(conns: &Connections, master: &Node, before: &[Primary], now: &[Primary]) {
    let owners = |primaries: &[Primary]| {
        primaries
            .iter()
            .map(|p| (p.addr(), p.ranges.clone()))
            .collect::<Vec<_>>()
    };
    if owners(before) != owners(now) {
        conns
            .failovers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            primaries = %now.iter().map(Primary::addr).collect::<Vec<_>>().join(","),
            "Redis Cluster primaries changed"
        );
        conns.master_generation.send_modify(|g| *g += 1);
    }
    let replicas = |primaries: &[Primary]| {
        primaries
            .iter()
            .map(|p| (p.addr(), p.replicas.clone()))
            .collect::<Vec<_>>()
    };
    if replicas(before) == replicas(now) {
        return;
    }
    let (Some(parts), crate::Topology::Cluster { local, .. }) =
        (&master.cluster, &conns.config.topology)
    else {
        return;
    };
    if local.is_empty() {
        return;
    }
    let rebuilt = LocalReplicas::parse(local).and_then(|replicas| {
        Node::cluster(
            &parts.seeds,
            Some(&replicas),
            parts.shape.clone(),
            conns.config.local_timeout,
            conns.config.connect_timeout,
        )
    });
    match rebuilt {
        Ok(node) => {
            tracing::info!("Redis Cluster replicas changed; local reads follow");
            conns.swap_local(node);
        }
        Err(error) => tracing::warn!(%error, "could not rebuild the local replica connection"),
    }
}

/// Loads a script on every primary (`SCRIPT LOAD`), so that pipelines of
/// `EVALSHA` find it. redis-rs's own `SCRIPT LOAD` goes to every node,
/// replicas included, and fails when one of them is down or loading.
pub(crate) async fn load_on_primaries(
    conn: &mut ClusterConnection,
    code: &str,
) -> Result<(), CacheError> {
    conn.route_command(
        redis::cmd("SCRIPT").arg("LOAD").arg(code).clone(),
        RoutingInfo::MultiNode((
            redis::cluster_routing::MultipleNodeRoutingInfo::AllMasters,
            Some(redis::cluster_routing::ResponsePolicy::AllSucceeded),
        )),
    )
    .await
    .map(|_| ())
    .map_err(redis_error)
}

/// Runs `command(slot_tag)` once for every slot, one pipeline per primary
/// (routed to it: the slots it serves). Every reply must be a success: a
/// slot that moved meanwhile (`MOVED`, `ASK`) fails the whole call, which
/// the caller retries or journals (the commands are idempotent).
pub(crate) async fn each_slot(
    conn: &mut ClusterConnection,
    shape: &Shape,
    mut command: impl FnMut(&mut redis::Pipeline, &'static str),
) -> Result<Vec<Value>, CacheError> {
    let primaries = shape.refresh(conn).await?;
    let mut replies = Vec::with_capacity(usize::from(SLOTS));
    for primary in &primaries {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut count = 0;
        for slot in primary.slots() {
            command(&mut pipe, slot_tag(slot));
            count += 1;
        }
        if count == 0 {
            continue;
        }
        let values = conn
            .route_pipeline(pipe, 0, count, primary.route())
            .await
            .map_err(redis_error)?;
        for value in values {
            if let Value::ServerError(error) = value {
                return Err(redis_error(error.into()));
            }
            replies.push(value);
        }
    }
    Ok(replies)
}

/// What [`scan_primaries`] does with the keys it finds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum OnFound {
    /// Returns them.
    Collect,
    /// Unlinks them (reporting each page to the sweep observer as `tier`)
    /// and returns none.
    Unlink(&'static str),
}

/// Every key matching `pattern` on every primary (`SCAN` on each), handled
/// as `on_found` says; returns the keys collected and the number unlinked.
pub(crate) async fn scan_primaries(
    conn: &mut ClusterConnection,
    shape: &Shape,
    pattern: &str,
    on_found: OnFound,
) -> Result<(Vec<Vec<u8>>, u64), CacheError> {
    let primaries = shape.refresh(conn).await?;
    let mut collected = Vec::new();
    let mut removed = 0;
    for primary in &primaries {
        let mut cursor: u64 = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000);
            let reply = conn
                .route_command(scan, RoutingInfo::SingleNode(primary.route()))
                .await
                .map_err(redis_error)?;
            let (next, keys): (u64, Vec<Vec<u8>>) =
                redis::from_redis_value(reply).map_err(|e| redis_error(e.into()))?;
            if !keys.is_empty() {
                match on_found {
                    OnFound::Collect => collected.extend(keys),
                    OnFound::Unlink(tier) => {
                        let n = unlink_on(conn, primary, &keys).await?;
                        removed += n;
                        cachette_core::sweep::report(cachette_core::sweep::SweepStep {
                            tier,
                            matched: keys.len() as u64,
                            removed: n,
                        });
                    }
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok((collected, removed))
}

/// Unlinks `keys` (found on `primary`) in one pipeline routed to it, one
/// command per key: the keys span slots, and a multi-key command across
/// slots is refused. A key that moved meanwhile fails the call (retried or
/// journaled by the caller).
async fn unlink_on(
    conn: &mut ClusterConnection,
    primary: &Primary,
    keys: &[Vec<u8>],
) -> Result<u64, CacheError> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for key in keys {
        pipe.cmd("UNLINK").arg(key);
    }
    let values = conn
        .route_pipeline(pipe, 0, keys.len(), primary.route())
        .await
        .map_err(redis_error)?;
    let mut removed = 0;
    for value in values {
        match value {
            Value::Int(n) => removed += u64::try_from(n).unwrap_or(0),
            Value::ServerError(error) => return Err(redis_error(error.into())),
            _ => {}
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_specification() {
        // Values from the Redis Cluster specification and redis-cli.
        assert_eq!(hash_slot(b"123456789"), 0x31C3 % SLOTS);
        assert_eq!(hash_slot(b"foo"), 12182);
        assert_eq!(hash_slot(b"{user1000}.following"), hash_slot(b"user1000"));
        assert_eq!(hash_slot(b"foo{}{bar}"), hash_slot(b"foo{}{bar}"));
        assert_ne!(hash_slot(b"foo{}{bar}"), hash_slot(b"bar"));
        assert_eq!(hash_slot(b"foo{{bar}}zap"), hash_slot(b"{bar"));
    }

    #[test]
    fn every_slot_has_a_tag_that_lands_in_it() {
        for slot in 0..SLOTS {
            let tag = slot_tag(slot);
            assert!(!tag.is_empty() && tag.len() <= 4, "slot {slot}: {tag:?}");
            assert_eq!(hash_slot(format!("x{{{tag}}}y").as_bytes()), slot);
        }
    }

    #[test]
    fn local_replicas_match_hosts_or_addresses() {
        let local =
            LocalReplicas::parse(&["10.0.0.7".to_owned(), "10.0.0.8:7001".to_owned()]).unwrap();
        assert!(local.is_local(&NodeAddress::new("10.0.0.7", 7005)));
        assert!(local.is_local(&NodeAddress::new("10.0.0.8", 7001)));
        assert!(!local.is_local(&NodeAddress::new("10.0.0.8", 7002)));
        assert!(!local.is_local(&NodeAddress::new("10.0.0.9", 7001)));
        assert!(LocalReplicas::parse(&["h:x".to_owned()]).is_err());
    }
}
