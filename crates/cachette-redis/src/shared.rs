//! State shared by the tiers, the background tasks and
//! [`RedisTiers`](crate::RedisTiers): one [`Connections`] per Redis topology
//! (shared by every cache that uses it), one [`Space`] per namespace.

use std::{
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use cachette_core::unix_millis;

use tokio::{
    sync::{Notify, watch},
    task::AbortHandle,
};

use crate::{DiskJournal, RedisConfig, keys::Keys, node::Node, scripts::Scripts};

/// How long the best clock sample is kept before any newer one replaces it.
const CLOCK_SAMPLE_FOR: Duration = Duration::from_secs(30);

/// Tasks aborted when their owner is dropped.
#[derive(Debug, Default)]
pub(crate) struct Tasks(Mutex<Vec<AbortHandle>>);

impl Tasks {
    pub(crate) fn add(&self, handle: AbortHandle) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(handle);
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in self
            .0
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            task.abort();
        }
    }
}

/// Connections to one topology's master and this node's replica.
pub(crate) struct Connections {
    pub(crate) config: RedisConfig,
    master: RwLock<Option<Arc<Node>>>,
    local: RwLock<Option<Arc<Node>>>,
    /// Wakes the Sentinel resolver (READONLY, refused connections, events).
    pub(crate) resolve: Notify,
    /// Bumped on every master switch; bus subscribers move on a change.
    pub(crate) master_generation: watch::Sender<u64>,
    pub(crate) failovers: AtomicU64,
    pub(crate) resolve_errors: AtomicU64,
    /// The master's clock minus this node's, in ms (0 until the first
    /// script reply): versions are stamped in the master's clock.
    clock_offset_ms: AtomicI64,
    /// The sample the offset came from: the one with the shortest round
    /// trip in the last [`CLOCK_SAMPLE_FOR`] (a reply delayed on its way
    /// back would skew the estimate, and a jumpy offset could order two
    /// writes of this node backwards).
    clock_sample: Mutex<Option<(Duration, Instant)>>,
    /// The other nodes' Redis, in a fleet of peers (each as the master of
    /// a one-server topology of its own); empty otherwise.
    pub(crate) peers: Vec<Arc<Connections>>,
    pub(crate) tasks: Tasks,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("master", &self.master_addr())
            .field("local", &self.local().map(|n| n.addr.clone()))
            .finish_non_exhaustive()
    }
}

impl Connections {
    pub(crate) fn new(config: RedisConfig, master: Option<Node>, local: Option<Node>) -> Self {
        let (generation, _) = watch::channel(0);
        Self {
            config,
            master: RwLock::new(master.map(Arc::new)),
            local: RwLock::new(local.map(Arc::new)),
            resolve: Notify::new(),
            master_generation: generation,
            failovers: AtomicU64::new(0),
            resolve_errors: AtomicU64::new(0),
            clock_offset_ms: AtomicI64::new(0),
            clock_sample: Mutex::new(None),
            peers: Vec::new(),
            tasks: Tasks::default(),
        }
    }

    /// The same, with the other nodes of a fleet of peers.
    pub(crate) fn with_peers(mut self, peers: Vec<Arc<Connections>>) -> Self {
        self.peers = peers;
        self
    }

    /// The current master (the lock is held only to clone an `Arc`).
    pub(crate) fn master(&self) -> Option<Arc<Node>> {
        self.master
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn master_addr(&self) -> Option<String> {
        self.master().map(|n| n.addr.clone())
    }

    /// This node's replica, if any.
    pub(crate) fn local(&self) -> Option<Arc<Node>> {
        self.local
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Installs a new master, built and checked beforehand (no I/O under the lock).
    pub(crate) fn swap_master(&self, node: Node) {
        let addr = node.addr.clone();
        let previous = {
            let mut master = self.master.write().unwrap_or_else(PoisonError::into_inner);
            master.replace(Arc::new(node))
        };
        if let Some(previous) = previous {
            self.failovers.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(from = %previous.addr, to = %addr, "Redis master switched");
        } else {
            tracing::info!(master = %addr, "Redis master found");
        }
        // The new master's clock is measured afresh.
        *self
            .clock_sample
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        self.master_generation.send_modify(|g| *g += 1);
    }

    /// Installs a new connection for this node's replica (a cluster whose
    /// replicas changed).
    pub(crate) fn swap_local(&self, node: Node) {
        *self.local.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(node));
    }

    /// `local` (this node's clock) in the master's clock, as Unix ms.
    pub(crate) fn master_clock(&self, local: SystemTime) -> u64 {
        let offset = self.clock_offset_ms.load(Ordering::Relaxed);
        let local = unix_millis(local);
        if offset >= 0 {
            local.saturating_add(offset.unsigned_abs())
        } else {
            local.saturating_sub(offset.unsigned_abs())
        }
    }

    /// Learns the master's clock from a reply that carried its `TIME`
    /// (`master_now`), for a request sent at `sent` and answered now: the
    /// master read its clock about half-way through the round trip.
    pub(crate) fn observe_master_clock(&self, master_now: i64, sent: Instant) {
        let trip = sent.elapsed();
        {
            let mut sample = self
                .clock_sample
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let better = match *sample {
                None => true,
                Some((best, at)) => trip <= best || at.elapsed() > CLOCK_SAMPLE_FOR,
            };
            if !better {
                return;
            }
            *sample = Some((trip, Instant::now()));
        }
        let Some(midpoint) = SystemTime::now().checked_sub(trip / 2) else {
            return;
        };
        let local = i64::try_from(unix_millis(midpoint)).unwrap_or(i64::MAX);
        self.clock_offset_ms
            .store(master_now.saturating_sub(local), Ordering::Relaxed);
    }

    /// Whether the master's clock was measured in the last
    /// [`CLOCK_SAMPLE_FOR`].
    pub(crate) fn clock_known(&self) -> bool {
        self.clock_sample
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|(_, at)| at.elapsed() <= CLOCK_SAMPLE_FOR)
    }

    /// `version` (Unix ms in the master's clock) in this node's clock.
    pub(crate) fn local_clock(&self, version: u64) -> SystemTime {
        let offset = self.clock_offset_ms.load(Ordering::Relaxed);
        let local = if offset >= 0 {
            version.saturating_sub(offset.unsigned_abs())
        } else {
            version.saturating_add(offset.unsigned_abs())
        };
        std::time::UNIX_EPOCH
            .checked_add(Duration::from_millis(local))
            .unwrap_or(std::time::UNIX_EPOCH)
    }

    /// The offset last measured (master minus this node), in ms.
    pub(crate) fn clock_offset_ms(&self) -> i64 {
        self.clock_offset_ms.load(Ordering::Relaxed)
    }

    pub(crate) fn master_timeout(&self) -> Duration {
        self.config.master_timeout
    }
}

/// One namespace (one cache) on a topology: its keys, journal and bus.
pub(crate) struct Space {
    pub(crate) conns: Arc<Connections>,
    pub(crate) keys: Keys,
    pub(crate) scripts: Scripts,
    pub(crate) journal: Option<DiskJournal>,
    pub(crate) bus: bool,
    pub(crate) node_id: String,
    pub(crate) readonly_skips: AtomicU64,
    pub(crate) readonly_logged: AtomicBool,
    pub(crate) bus_received: AtomicU64,
    pub(crate) bus_subscriptions: AtomicU64,
    /// Whether a bus subscriber was started (caches with a memory tier).
    pub(crate) bus_started: AtomicBool,
    /// Whether the bus subscription is up now.
    pub(crate) bus_connected: AtomicBool,
    /// When the last message from another node arrived (Unix ms; 0: none).
    pub(crate) bus_last_message_ms: AtomicU64,
    /// This node's waiters on other nodes' fill leases, woken by the bus.
    pub(crate) fill_wakers: cachette_core::FillWakers,
    /// In a fleet of peers: the other nodes (deliveries of invalidations,
    /// their channels) and the replicator's queue.
    pub(crate) peers: Option<crate::peers::Links>,
    /// Whether this node's Redis may be read: in a fleet of peers, false
    /// from the loss of the connection to it until it is proven current
    /// again (see `peers::verify_own`); always true otherwise.
    pub(crate) verified: AtomicBool,
    /// When this namespace was opened: in a fleet of peers, what this node
    /// stored since then is its own (kept when its Redis must be proven).
    pub(crate) opened: SystemTime,
    /// In a fleet of peers: how many times a subscription to another
    /// node's channel was lost (what that node published meanwhile was
    /// not heard here).
    pub(crate) peer_losses: AtomicU64,
    /// When the last of those happened (Unix ms; 0: never).
    pub(crate) last_peer_loss_ms: AtomicU64,
    pub(crate) tasks: Tasks,
}

impl std::fmt::Debug for Space {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Space")
            .field("namespace", &self.keys.namespace())
            .field("connections", &self.conns)
            .finish_non_exhaustive()
    }
}

impl Space {
    pub(crate) fn new(
        conns: Arc<Connections>,
        namespace: String,
        journal: Option<DiskJournal>,
        bus: bool,
        node_id: String,
        peers: Option<crate::peers::Links>,
    ) -> Self {
        let cluster = conns.config.topology.is_cluster();
        Self {
            conns,
            keys: Keys::new(namespace, cluster),
            scripts: Scripts::default(),
            journal,
            bus,
            node_id,
            readonly_skips: AtomicU64::new(0),
            readonly_logged: AtomicBool::new(false),
            bus_received: AtomicU64::new(0),
            bus_subscriptions: AtomicU64::new(0),
            bus_started: AtomicBool::new(false),
            bus_connected: AtomicBool::new(false),
            bus_last_message_ms: AtomicU64::new(0),
            fill_wakers: cachette_core::FillWakers::default(),
            verified: AtomicBool::new(peers.is_none()),
            opened: SystemTime::now(),
            peer_losses: AtomicU64::new(0),
            last_peer_loss_ms: AtomicU64::new(0),
            peers,
            tasks: Tasks::default(),
        }
    }
}
