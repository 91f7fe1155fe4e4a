//! The invalidation bus: every node applies the other nodes' deletes, prefix
//! purges, tag purges and clears to its own memory tier (and to the local-only
//! writes on its replica).
//!
//! Pub/sub is lossy: a node whose subscription dropped may have missed
//! messages, so on every (re)subscription it clears its memory tier. The
//! memory tier's TTL cap bounds staleness even if that fails.

use std::{
    sync::{Arc, Weak, atomic::Ordering},
    time::Duration,
};

use cachette_core::{Backend, CacheKey};

use crate::{
    RedisTier, Role,
    liveness::{Heard, Subscription},
    shared::Space,
};

/// What the subscriber applies an invalidation to: this node's memory tier,
/// and its replica when it has one. The replica tier is made per message
/// from the `Space` upgraded for it: a tier kept here would hold the `Space`
/// (connections, journal, file lock) alive after its last user dropped it.
pub(crate) struct Targets {
    pub(crate) memory: Arc<dyn Backend>,
    /// The subscription is to this node's own Redis in a fleet of peers:
    /// losing it makes that Redis unproven (reads are misses) until it is
    /// proven current again on resubscription (`peers::verify_own`).
    pub(crate) verify_own: bool,
    /// The subscription is to another node of a fleet of peers: its store
    /// announcements go to this namespace's replicator (the `Space`, and
    /// the peer's index in its links).
    pub(crate) announcements: Option<(Weak<Space>, usize)>,
    /// Senders whose messages are this cache's own (on another node's
    /// channel: this cache's id and its deliveries' ids), skipped.
    pub(crate) own_senders: Vec<String>,
}

/// A soft purge (`S` key, `P` prefix, `T` tag, `G` pattern): this node's
/// memory copies go stale too. A replica gets the master's softened entries
/// by replication. Returns whether `kind` was one.
async fn apply_soft(targets: &Targets, kind: &str, argument: &str) -> bool {
    let memory = targets.memory.as_ref();
    let result = match kind {
        "S" => match CacheKey::new(argument) {
            Ok(key) => memory.soften(&key).await,
            Err(_) => Ok(()),
        },
        "P" => memory.soften_prefix(argument).await,
        "T" => memory.soften_tag(argument).await,
        "G" => memory.soften_pattern(argument).await,
        _ => return false,
    };
    if let Err(error) = result {
        tracing::warn!(kind, argument, %error, "could not apply a bus soft purge");
    }
    true
}

async fn apply(space: &Arc<Space>, targets: &Targets, kind: &str, argument: &str) {
    if apply_soft(targets, kind, argument).await {
        return;
    }
    let local = space.conns.local().map(|_| RedisTier {
        space: space.clone(),
        role: Role::Local,
    });
    let mut backends: Vec<&dyn Backend> = vec![targets.memory.as_ref()];
    if let Some(local) = &local {
        backends.push(local);
    }
    for backend in backends {
        let result = match kind {
            "d" => match CacheKey::new(argument) {
                Ok(key) => backend.delete(&key).await.map(|_| ()),
                Err(_) => Ok(()),
            },
            "p" => backend.invalidate_prefix(argument).await,
            "t" => backend.invalidate_tag(argument).await,
            "g" => backend.invalidate_pattern(argument).await,
            "c" => backend.clear().await,
            _ => Ok(()),
        };
        if let Err(error) = result {
            tracing::warn!(kind, argument, %error, "could not apply a bus invalidation");
        }
    }
}

/// Subscribes to the namespace's channel on the current master, follows master
/// switches, and applies what other nodes publish. A subscription that ends,
/// or misses a heartbeat (a silent network drop), is lost: the memory tier
/// is cleared at once (invalidations may have been missed) and again on the
/// next successful subscription.
pub(crate) async fn run_subscriber(shared: Weak<Space>, targets: Targets) {
    let mut backoff = Duration::from_millis(50);
    let mut attempt = 0usize;
    // When a subscription that was up ended (for `verify_own`), and how
    // many peer subscriptions had been lost by then.
    let mut lost: Option<crate::peers::Loss> = None;
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let Some(node) = strong.conns.master() else {
            drop(strong);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut generation = strong.conns.master_generation.subscribe();
        generation.mark_unchanged();
        let channel = strong.keys.bus_channel();
        let node_id = strong.node_id.clone();
        let heartbeat = strong.conns.config.heartbeat;
        let timeout = strong
            .conns
            .config
            .connect_timeout
            .max(Duration::from_millis(500));
        drop(strong);

        // On a cluster, plain pub/sub is broadcast to every node: any seed
        // will do, and the next one is tried when it fails.
        let client = match node.pubsub_client(attempt) {
            Ok(client) => client,
            Err(error) => {
                tracing::warn!(%error, "no client for the bus subscription");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                attempt += 1;
                continue;
            }
        };
        let subscribed =
            tokio::time::timeout(timeout, Subscription::open(&client, &channel, heartbeat)).await;
        attempt += 1;
        let mut subscription = match subscribed {
            Ok(Ok(subscription)) => subscription,
            Ok(Err(error)) => {
                tracing::debug!(%error, "bus subscription failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        if targets.verify_own {
            let Some(strong) = shared.upgrade() else {
                return;
            };
            if let Err(error) = crate::peers::verify_own(&strong, lost, strong.opened).await {
                tracing::warn!(%error, "this node's Redis could not be proven current; retrying");
                drop(strong);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
            lost = None;
        }
        backoff = Duration::from_millis(50);
        // Stay on this node next time, unless it is the one that fails.
        attempt -= 1;
        // Whatever was published while we were not subscribed is lost: drop
        // what this node's memory holds rather than serve it stale.
        clear_memory(&targets, "after (re)subscribing to the bus").await;
        if let Some(strong) = shared.upgrade() {
            strong.bus_subscriptions.fetch_add(1, Ordering::Relaxed);
            strong.bus_connected.store(true, Ordering::Relaxed);
        }
        // Down again whenever this subscription ends, however it ends.
        let _connected = Connected(shared.clone());
        tracing::info!(master = %node.addr, %channel, "subscribed to the invalidation bus; memory tier cleared");

        loop {
            tokio::select! {
                heard = subscription.next() => {
                    let message = match heard {
                        Heard::Message(message) => message,
                        Heard::Closed => {
                            // Cleared on resubscription: until then, a master
                            // that is down publishes nothing, and memory
                            // keeps serving through the outage.
                            tracing::warn!("invalidation bus connection closed; resubscribing");
                            break;
                        }
                        Heard::Silent => {
                            // Messages have been missed for an unknown while
                            // already: drop memory now, not on reconnection.
                            tracing::warn!("invalidation bus subscription silent (no heartbeat answer); memory tier cleared, resubscribing");
                            if let Some(strong) = shared.upgrade() {
                                strong.bus_connected.store(false, Ordering::Relaxed);
                            }
                            clear_memory(&targets, "after losing the bus").await;
                            break;
                        }
                    };
                    let payload: String = message.get_payload().unwrap_or_default();
                    let mut parts = payload.splitn(3, '\n');
                    let (Some(sender), Some(kind), Some(argument)) = (parts.next(), parts.next(), parts.next()) else {
                        continue;
                    };
                    // On another node's channel, what this cache published
                    // itself (its own Redis reached by a Unix socket and
                    // listed among the peers, or its deliveries there).
                    if sender == node_id || targets.own_senders.iter().any(|own| own == sender) {
                        continue;
                    }
                    let Some(strong) = shared.upgrade() else {
                        return;
                    };
                    strong.bus_received.fetch_add(1, Ordering::Relaxed);
                    strong
                        .bus_last_message_ms
                        .store(cachette_core::unix_millis(std::time::SystemTime::now()), Ordering::Relaxed);
                    if kind == "a" {
                        // A store on another node of a fleet of peers.
                        if let Some((own, peer)) = &targets.announcements {
                            if let Some(links) = own.upgrade().as_ref().and_then(|s| s.peers.as_ref()) {
                                links.replicator.offer(*peer, argument);
                            }
                        }
                        continue;
                    }
                    if kind == "l" {
                        // A fill lease ended: its waiters here read its outcome.
                        strong.fill_wakers.wake(argument);
                        continue;
                    }
                    apply(&strong, &targets, kind, argument).await;
                    drop(strong);
                    // What a delivery published here was applied to this
                    // peer's Redis by its sender, and to this node's by
                    // its own delivery.
                    if let Some((own, _)) = &targets.announcements {
                        if !sender.contains(crate::peers::DELIVERY_MARK) {
                            apply_to_own(own, kind, argument).await;
                        }
                    }
                }
                changed = generation.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    tracing::info!("master switched; moving the bus subscription");
                    break;
                }
            }
        }
        if targets.verify_own {
            // Invalidations the others delivered from now on may not land:
            // no read of this Redis until it is proven current again.
            if let Some(strong) = shared.upgrade() {
                strong.verified.store(false, Ordering::Release);
                // The first loss counts until this Redis is proven again.
                lost.get_or_insert_with(|| crate::peers::Loss::now(&strong));
            }
        }
        if let Some((own, _)) = &targets.announcements {
            if let Some(own) = own.upgrade() {
                own.last_peer_loss_ms.store(
                    cachette_core::unix_millis(std::time::SystemTime::now()),
                    Ordering::Release,
                );
                own.peer_losses.fetch_add(1, Ordering::AcqRel);
            }
        }
    }
}

/// In a fleet of peers, an invalidation heard from another node is also
/// applied to this node's own Redis (it was delivered there too, unless
/// that delivery failed: then this application, or this node's journal
/// when its Redis cannot take it either, is what keeps it from serving the
/// entry), without publishing it again.
async fn apply_to_own(own: &Weak<Space>, kind: &str, argument: &str) {
    let Some(invalidation) = crate::peers::Invalidation::from_bus(kind, argument) else {
        return;
    };
    let Some(own) = own.upgrade() else { return };
    let Some(links) = own.peers.as_ref() else {
        return;
    };
    let report = crate::peers::quietly(invalidation.run(&links.own)).await;
    if !report.failed.is_empty() {
        tracing::warn!(
            kind,
            argument,
            "an invalidation heard from another node reached neither this node's Redis nor its journal"
        );
    }
}

/// Marks the bus down when a subscription ends.
struct Connected(Weak<Space>);

impl Drop for Connected {
    fn drop(&mut self) {
        if let Some(space) = self.0.upgrade() {
            space.bus_connected.store(false, Ordering::Relaxed);
        }
    }
}

async fn clear_memory(targets: &Targets, when: &str) {
    if let Err(error) = targets.memory.clear().await {
        tracing::warn!(%error, when, "could not clear the memory tier");
    }
}
