//! A fleet without a master ([`Topology::Peers`](crate::Topology::Peers)):
//! every node has its own Redis, and nothing is shared.
//!
//! - **Stores** go to this node's Redis ([`PeerTier`]), then are announced
//!   on its bus channel (`a`: `stored_at`, TTL, size, key). Every other node
//!   hears the announcement on its subscription to that channel and queues
//!   it; its replicator fetches the entry from the announcing node's Redis
//!   and stores it in its own, newer-wins (the set script refuses a copy
//!   older than what it holds, or than a delete or purge it applied).
//! - **Invalidations** are applied to this node's Redis and memory, and to
//!   every peer's Redis directly (one delivery per peer: timeout, breaker,
//!   and a journal of its own, replayed in order when the peer answers
//!   again). Every node's memory hears them on the invalidating node's
//!   channel (a lost subscription clears it, as on the bus).
//! - **A node whose Redis may have missed invalidations forgets it**: from
//!   the loss of its connection to its own Redis until it is back, reads
//!   of that Redis are misses; back, the node compares the server's
//!   `run_id` with the one it recorded there, and after a loss or a
//!   restart it removes the namespace's entries before reading again
//!   (what the others delivered meanwhile waits in their journals, and is
//!   replayed after).

mod own;
mod replicator;
mod tier;
mod warm;

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, SystemTime},
};

use cachette_core::{CacheError, Tiered};

pub(crate) use own::{NoMemory, is_quiet, own_tiered, quietly};
pub use replicator::ReplicationStats;
pub(crate) use replicator::{Replicator, run_workers};
pub(crate) use tier::Invalidation;
pub use tier::PeerTier;
pub(crate) use warm::warm;
pub use warm::{WarmLimits, WarmProgress, WarmReport};

use crate::{RedisTier, RedisTiers, Role, node::redis_error, shared::Space};

/// Ends the bus sender id of what a delivery to a peer publishes there.
pub(crate) const DELIVERY_MARK: &str = "~delivery";

/// The other nodes of a fleet, as one namespace sees them.
#[derive(Debug)]
pub(crate) struct Links {
    /// This node's Redis as a one-tier cache (timeout, breaker, journal).
    pub(crate) own: Tiered,
    pub(crate) peers: Vec<Peer>,
    pub(crate) replicator: Arc<Replicator>,
}

/// One other node.
#[derive(Debug)]
pub(crate) struct Peer {
    /// Its Redis's `host:port`.
    pub(crate) addr: String,
    /// Its Redis as the master of a namespace of its own (a journal for
    /// this peer, no bus publishing: its memory hears this node's channel).
    pub(crate) tiers: RedisTiers,
    /// A one-tier cache over it: what delivers invalidations, with the
    /// tier's timeout, breaker and journal (ops wait behind the journal's
    /// backlog, so they reach the peer in order).
    pub(crate) delivery: Tiered,
}

/// A peer as the stats report it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerStats {
    /// Its Redis's `host:port`.
    pub addr: String,
    /// Whether this node's subscription to its channel is up.
    pub connected: bool,
    /// Invalidations waiting in the journal for it.
    pub undelivered: u64,
}

/// The journal file of the deliveries to the peer at `addr`, beside this
/// namespace's own: `{path}.peer-{addr}`, unsafe characters replaced.
pub(crate) fn peer_journal_path(path: &std::path::Path, addr: &str) -> std::path::PathBuf {
    let safe: String = addr
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".peer-{safe}"));
    name.into()
}

/// How long removing unproven entries may take (a large namespace is
/// swept page by page) before the proof is retried.
const FORGET_FOR: Duration = Duration::from_secs(60);

/// The loss of this node's connection to its own Redis.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Loss {
    /// When it was noticed.
    pub(crate) at: SystemTime,
    /// [`Space::peer_losses`] then.
    pub(crate) peer_losses: u64,
    /// Whether every peer's channel was heard then.
    pub(crate) all_heard: bool,
}

impl Loss {
    /// The loss of `space`'s own Redis, noticed now.
    pub(crate) fn now(space: &Space) -> Self {
        Self {
            at: SystemTime::now(),
            peer_losses: space.peer_losses.load(Ordering::Acquire),
            all_heard: all_heard(space),
        }
    }

    /// Whether something another node published may have gone unheard
    /// during the outage: a peer's channel not heard at its start or now,
    /// one lost since, or lost shortly before it was noticed (a loss is
    /// noticed up to a few heartbeats late).
    fn unheard(&self, space: &Space) -> bool {
        let noticed_late = space.conns.config.heartbeat.saturating_mul(4);
        let last_peer_loss = space.last_peer_loss_ms.load(Ordering::Acquire);
        let since =
            cachette_core::unix_millis(self.at.checked_sub(noticed_late).unwrap_or(self.at));
        space.journal.is_none()
            || !self.all_heard
            || !all_heard(space)
            || space.peer_losses.load(Ordering::Acquire) != self.peer_losses
            || (last_peer_loss != 0 && last_peer_loss >= since)
    }
}

/// Whether this node hears every other node's channel now.
fn all_heard(space: &Space) -> bool {
    space.peers.as_ref().is_none_or(|links| {
        links
            .peers
            .iter()
            .all(|p| p.tiers.space.bus_connected.load(Ordering::Relaxed))
    })
}

/// Proves this node's Redis current before it is read again, removing the
/// entries stored before a moment it cannot vouch for (what this node
/// stored since stays; what it forgets, the others still hold):
///
/// - the server is another run than the one recorded in the namespace (a
///   restart, maybe from an old dump, or a server never proven): the
///   entries stored before the loss, or before this node opened the
///   namespace (`started`);
/// - after a loss, if a subscription to another node was lost too, or
///   there is no journal: the entries stored before the loss. Otherwise
///   every invalidation of the outage was heard from the others and
///   applied here, or kept in the journal, which hides what it covers.
pub(crate) async fn verify_own(
    space: &Arc<Space>,
    lost: Option<Loss>,
    started: SystemTime,
) -> Result<(), CacheError> {
    let own = RedisTier {
        space: space.clone(),
        role: Role::Master,
    };
    let node = own.node()?;
    let mut conn = node.shared.clone();
    let timeout = space
        .conns
        .config
        .master_timeout
        .max(Duration::from_secs(1));
    let info: String = tokio::time::timeout(
        timeout,
        redis::cmd("INFO").arg("server").query_async(&mut conn),
    )
    .await
    .map_err(|_| CacheError::backend(crate::node::BACKEND, "INFO server timed out"))?
    .map_err(redis_error)?;
    let run_id = info
        .lines()
        .find_map(|line| line.strip_prefix("run_id:"))
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| CacheError::backend(crate::node::BACKEND, "INFO server has no run_id"))?
        .to_owned();
    let key = space.keys.peer_run();
    let recorded: Option<String> =
        tokio::time::timeout(timeout, redis::cmd("GET").arg(&key).query_async(&mut conn))
            .await
            .map_err(|_| CacheError::backend(crate::node::BACKEND, "GET timed out"))?
            .map_err(redis_error)?;
    let restarted = recorded.as_deref() != Some(run_id.as_str());
    let unheard = lost.is_some_and(|loss| loss.unheard(space));
    let before = match lost {
        Some(loss) if restarted => Some((loss.at, "the server restarted during an outage")),
        Some(loss) if unheard => Some((
            loss.at,
            "the connection to it was lost while another node was not heard either",
        )),
        Some(_) => None,
        None if restarted => Some((started, "the server restarted, or was never proven current")),
        None => None,
    };
    if let Some((before, why)) = before {
        let removed = tokio::time::timeout(FORGET_FOR, own.forget_older(before))
            .await
            .map_err(|_| {
                CacheError::backend(crate::node::BACKEND, "removing unproven entries timed out")
            })??;
        let _: () = tokio::time::timeout(
            timeout,
            redis::cmd("SET")
                .arg(&key)
                .arg(&run_id)
                .query_async(&mut conn),
        )
        .await
        .map_err(|_| CacheError::backend(crate::node::BACKEND, "SET timed out"))?
        .map_err(redis_error)?;
        if removed > 0 {
            tracing::warn!(redis = %node.addr, removed, why, "this node's Redis may have missed invalidations: the entries stored before were removed");
        }
    }
    space.verified.store(true, Ordering::Release);
    Ok(())
}

impl Links {
    /// The peers' states.
    pub(crate) fn stats(&self) -> Vec<PeerStats> {
        self.peers
            .iter()
            .map(|peer| PeerStats {
                addr: peer.addr.clone(),
                connected: peer.tiers.space.bus_connected.load(Ordering::Relaxed),
                undelivered: peer
                    .tiers
                    .journal()
                    .map_or(0, cachette_core::Journal::depth),
            })
            .collect()
    }
}
