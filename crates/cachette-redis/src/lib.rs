//! The Redis tiers of [cachette](https://docs.rs/cachette): this node's
//! replica (**local**) and the **master**, found through static addresses or
//! Redis Sentinel, with a durable journal of master writes that failed and an
//! invalidation bus to every node's memory tier.
//!
//! ```no_run
//! # async fn run() -> Result<(), cachette_core::CacheError> {
//! use cachette_redis::{JournalConfig, RedisConfig, RedisTiers, Topology};
//!
//! let topology = Topology::sentinel(
//!     ["redis://10.0.0.5:26379", "redis://10.0.0.6:26379"],
//!     "mymaster",
//!     Some("10.0.0.7:6379".into()), // this node's replica
//! );
//! let config = RedisConfig::new(topology, "shop:")
//!     .journal(JournalConfig::new("/var/lib/cachette/shop.journal"));
//! let redis = RedisTiers::connect(config).await?;
//! let memory = std::sync::Arc::new(cachette_moka::MemoryTier::default());
//! // memory → local replica → master, with the journal and the bus wired in.
//! let cache = redis.tiered("shop", Some(memory));
//! # Ok(()) }
//! ```
//!
//! docs/operations.md in the repository explains the topologies, the failure
//! modes, the journal and the stats to watch.

mod bus;
mod cluster;
mod config;
mod journal;
pub mod keys;
mod lease;
mod liveness;
mod node;
mod peers;
mod replay;
mod scripts;
mod sentinel;
mod shared;
mod tier;

use std::sync::{Arc, atomic::Ordering};

use cachette_core::{Backend, CacheError, TierOptions, Tiered};

pub use config::{JournalConfig, RedisConfig, ReplicationConfig, Topology, node_url};
pub use journal::{DiskJournal, JournalStats, RecordedOp};
pub use peers::{PeerStats, PeerTier, ReplicationStats, WarmLimits, WarmProgress, WarmReport};
pub use tier::{RedisTier, Role};

use crate::{
    node::Node,
    shared::{Connections, Space},
};

/// The Redis side of one cache: connections to the master and this node's
/// replica (shareable between caches), this cache's namespace, journal and
/// bus, and the background tasks (Sentinel resolver and event listeners,
/// journal replayer, bus subscriber). Cheap to clone; the background tasks
/// stop when the last clone and the last tier are dropped.
#[derive(Debug, Clone)]
pub struct RedisTiers {
    space: Arc<Space>,
}

/// Redis-side counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RedisStats {
    /// The master's address now.
    pub master: Option<String>,
    /// This node's replica's address.
    pub local: Option<String>,
    /// Local writes skipped because the replica is read-only.
    pub readonly_skips: u64,
    /// Master switches followed.
    pub failovers: u64,
    /// Invalidations received from other nodes.
    pub bus_received: u64,
    /// Bus (re)subscriptions (each one cleared the memory tier).
    pub bus_subscriptions: u64,
    /// Whether the bus subscription is up now (`None`: the bus is off).
    pub bus_connected: Option<bool>,
    /// Milliseconds since the last message from another node (`None`:
    /// none yet).
    pub bus_last_message_age_ms: Option<u64>,
    /// Failed attempts to resolve the master through Sentinel.
    pub resolve_errors: u64,
    /// The master's clock minus this node's, in ms, as last measured (write
    /// versions are stamped in the master's clock; see docs/operations.md).
    pub clock_offset_ms: i64,
    /// The journal's counters, if journaling is on.
    pub journal: Option<JournalStats>,
    /// In a fleet of peers: the other nodes.
    pub peers: Vec<PeerStats>,
    /// In a fleet of peers: whether this node's Redis is proven current
    /// (read); `false` from a lost connection until it is checked again.
    pub own_current: Option<bool>,
    /// In a fleet of peers: what this node announced and copied.
    pub replication: Option<ReplicationStats>,
}

impl RedisTiers {
    /// Prepares connections (without blocking on a server that is down: the
    /// first calls fail and are journaled instead), opens the journal, and
    /// starts the background tasks.
    pub async fn connect(config: RedisConfig) -> Result<Self, CacheError> {
        let node =
            |url: &str, timeout| Node::new(url, timeout, config.connect_timeout, config.pool_size);
        let (master, local) = match &config.topology {
            Topology::Single { url } => (Some(node(url, config.master_timeout)?), None),
            Topology::Static { master, local } => (
                Some(node(master, config.master_timeout)?),
                local
                    .as_deref()
                    .map(|l| node(l, config.local_timeout))
                    .transpose()?,
            ),
            Topology::Sentinel {
                local,
                username,
                password,
                db,
                ..
            } => {
                let local = match local {
                    Some(addr) => {
                        let (host, port) = addr
                            .rsplit_once(':')
                            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                            .ok_or_else(|| {
                                CacheError::backend(
                                    node::BACKEND,
                                    format!("local replica address {addr:?} is not host:port"),
                                )
                            })?;
                        let url = config::node_url(
                            host,
                            port,
                            username.as_deref(),
                            password.as_deref(),
                            *db,
                        );
                        Some(node(&url, config.local_timeout)?)
                    }
                    None => None,
                };
                (None, local)
            }
            Topology::Cluster { nodes, local } => {
                if config.namespace.contains(['{', '}']) {
                    return Err(CacheError::backend(
                        node::BACKEND,
                        format!(
                            "namespace {:?}: on a Redis Cluster a namespace may not contain `{{` or `}}` (they would pick the keys' hash slot)",
                            config.namespace
                        ),
                    ));
                }
                let shape = Arc::new(cluster::Shape::default());
                let master = Node::cluster(
                    nodes,
                    None,
                    shape.clone(),
                    config.master_timeout,
                    config.connect_timeout,
                )?;
                let local = if local.is_empty() {
                    None
                } else {
                    let replicas = cluster::LocalReplicas::parse(local)?;
                    Some(Node::cluster(
                        nodes,
                        Some(&replicas),
                        shape,
                        config.local_timeout,
                        config.connect_timeout,
                    )?)
                };
                (Some(master), local)
            }
            // Invalidations and sweeps go to it too: the master timeout.
            Topology::Peers { this, .. } => (Some(node(this, config.master_timeout)?), None),
        };
        let peers = match &config.topology {
            Topology::Peers { peers, this } => Self::peer_connections(&config, peers, this)?,
            _ => Vec::new(),
        };
        let namespace = config.namespace.clone();
        let journal = config.journal.clone();
        let conns = Arc::new(Connections::new(config, master, local).with_peers(peers));
        Self::start_connection_tasks(&conns).await;
        Self::in_space(conns, namespace, journal)
    }

    /// The other nodes of a fleet of peers: each as the master of a
    /// one-server topology (no journal, no bus of its own here).
    fn peer_connections(
        config: &RedisConfig,
        peers: &[String],
        this: &str,
    ) -> Result<Vec<Arc<Connections>>, CacheError> {
        // Over a Unix socket, this node's Redis also appears in `peers` by
        // the address the others use, which is not known here: that entry
        // is then a peer too (what it publishes is this node's own, and
        // skipped; deliveries to it apply twice, harmlessly).
        let unix = this.starts_with("unix://");
        let this_addr = config::address_of(this);
        if !unix && !peers.iter().any(|p| config::address_of(p) == this_addr) {
            return Err(CacheError::backend(
                node::BACKEND,
                format!("peers: this node's Redis {this_addr} is not one of the peers"),
            ));
        }
        let mut out = Vec::new();
        for url in peers {
            if !unix && config::address_of(url) == this_addr {
                continue;
            }
            let mut peer = config.clone();
            peer.topology = Topology::single(url.clone());
            peer.journal = None;
            // Deliveries publish on the peer's own channel, which its
            // memory hears even while this node's Redis is down.
            peer.bus = true;
            // Marks what deliveries publish: the peer's memory applies it,
            // the other nodes hearing that channel do not (they got it
            // from this node's channel and their own delivery already).
            peer.node_id = format!("{}{}", config.node_id, peers::DELIVERY_MARK);
            let node = Node::new(
                url,
                config.master_timeout,
                config.connect_timeout,
                config.pool_size,
            )?;
            out.push(Arc::new(Connections::new(peer, Some(node), None)));
        }
        Ok(out)
    }

    /// Another cache on the same connections (and Sentinel tasks): its own
    /// namespace, journal and bus channel. This is how several named caches
    /// share one Redis topology.
    pub fn with_namespace(
        &self,
        namespace: impl Into<String>,
        journal: Option<JournalConfig>,
    ) -> Result<Self, CacheError> {
        Self::in_space(self.space.conns.clone(), namespace.into(), journal)
    }

    fn in_space(
        conns: Arc<Connections>,
        namespace: String,
        journal: Option<JournalConfig>,
    ) -> Result<Self, CacheError> {
        let replay_in_background = journal.as_ref().is_some_and(|j| j.background_replay);
        let journal_config = journal.clone();
        let journal = journal.map(DiskJournal::open).transpose()?;
        let bus = conns.config.bus;
        // One sender id per cache, not per process: two aliases over one
        // namespace in one process are two subscribers, and each must apply
        // the other's invalidations (only its own are already applied).
        static SPACES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let node_id = format!(
            "{}.{}",
            conns.config.node_id,
            SPACES.fetch_add(1, Ordering::Relaxed)
        );
        let peer_parts = Self::peer_links(&conns, &namespace, journal_config.as_ref())?;
        let own_timeout = conns.config.master_timeout;
        let space = Arc::new_cyclic(|weak| {
            let links = peer_parts.map(|(peers, replicator)| peers::Links {
                own: peers::own_tiered(weak.clone(), journal.as_ref(), own_timeout),
                peers,
                replicator,
            });
            Space::new(conns, namespace, journal, bus, node_id, links)
        });
        if replay_in_background {
            space
                .tasks
                .add(tokio::spawn(replay::run_replayer(Arc::downgrade(&space))).abort_handle());
        }
        Ok(Self { space })
    }

    /// In a fleet of peers, this namespace's view of the other nodes: a
    /// delivery per peer, journaled beside this namespace's journal, and
    /// the replicator's queue.
    #[allow(clippy::type_complexity)]
    fn peer_links(
        conns: &Arc<Connections>,
        namespace: &str,
        journal: Option<&JournalConfig>,
    ) -> Result<Option<(Vec<peers::Peer>, Arc<peers::Replicator>)>, CacheError> {
        if !conns.config.topology.is_peers() {
            return Ok(None);
        }
        let mut links = Vec::new();
        for peer_conns in &conns.peers {
            let addr = peer_conns.master_addr().unwrap_or_default();
            let peer_journal = journal.map(|j| JournalConfig {
                path: peers::peer_journal_path(&j.path, &addr),
                ..j.clone()
            });
            if peer_journal.is_none() {
                tracing::warn!(peer = %addr, "fleet of peers without a journal: an invalidation a peer cannot take is lost");
            }
            let tiers = Self::in_space(peer_conns.clone(), namespace.to_owned(), peer_journal)?;
            let delivery = Tiered::builder(format!("peer {addr}"))
                .tier_arc(
                    "peer",
                    Arc::new(tiers.master_tier()),
                    tiers.master_options(),
                )
                .build();
            links.push(peers::Peer {
                addr,
                tiers,
                delivery,
            });
        }
        Ok(Some((
            links,
            Arc::new(peers::Replicator::new(conns.config.replication.clone())),
        )))
    }

    async fn start_connection_tasks(conns: &Arc<Connections>) {
        let weak = Arc::downgrade(conns);
        if conns.config.topology.is_cluster() {
            // Read the shape once before returning (stats, first purges),
            // without failing the startup when the cluster is down.
            if let Some(parts) = conns.master().as_ref().and_then(|m| m.cluster.as_ref()) {
                let mut conn = parts.conn.clone();
                if let Ok(Err(error)) = tokio::time::timeout(
                    conns.config.connect_timeout,
                    parts.shape.refresh(&mut conn),
                )
                .await
                {
                    tracing::warn!(%error, "Redis Cluster not reached at startup; will keep trying");
                }
            }
            conns
                .tasks
                .add(tokio::spawn(cluster::run_watcher(weak.clone())).abort_handle());
        }
        if let Topology::Sentinel { sentinels, .. } = &conns.config.topology {
            // Resolve once before returning, so the first requests have a master.
            if let Err(error) = sentinel::refresh_master(conns).await {
                tracing::warn!(%error, "Redis master not resolved at startup; will keep trying");
            }
            conns
                .tasks
                .add(tokio::spawn(sentinel::run_resolver(weak.clone())).abort_handle());
            for url in sentinels {
                conns.tasks.add(
                    tokio::spawn(sentinel::run_event_listener(weak.clone(), url.clone()))
                        .abort_handle(),
                );
            }
            conns
                .tasks
                .add(tokio::spawn(sentinel::verify_local(conns.clone())).abort_handle());
        }
    }

    /// The master tier.
    pub fn master_tier(&self) -> RedisTier {
        RedisTier {
            space: self.space.clone(),
            role: Role::Master,
        }
    }

    /// This node's Redis in a fleet of peers (`None` in other topologies).
    pub fn peer_tier(&self) -> Option<PeerTier> {
        self.space.peers.as_ref().map(|_| PeerTier {
            own: self.master_tier(),
        })
    }

    /// Tier options for [`Self::peer_tier`]: room for this node's call and
    /// the deliveries to the peers (each bounded by the master timeout).
    pub fn peer_options(&self) -> TierOptions {
        let config = &self.space.conns.config;
        let limit = config
            .master_timeout
            .saturating_mul(2)
            .saturating_add(config.connect_timeout);
        // No journal here: `PeerTier` journals this node's own Redis itself
        // (so an invalidation always reaches the peers, even while this
        // node's Redis is down or has a backlog).
        TierOptions::with_timeout(Some(limit))
    }

    /// Warms this node of a fleet of peers from `peer` (its URL or
    /// `host:port`, as in the topology): copies the peer's most recently
    /// stored entries into this node's Redis with their remaining TTL,
    /// newest first, within `limits`, reporting to `progress` as it goes.
    /// Versioned like every write: a copy older than what this node holds,
    /// or than a delete or purge it applied, is skipped.
    pub async fn warm_from(
        &self,
        peer: &str,
        limits: WarmLimits,
        progress: &(dyn Fn(WarmProgress) + Send + Sync),
    ) -> Result<WarmReport, CacheError> {
        let links = self.space.peers.as_ref().ok_or_else(|| {
            CacheError::backend(node::BACKEND, "warm-up is for a fleet of peers (`peers`)")
        })?;
        let wanted = config::address_of(peer);
        let index = links
            .peers
            .iter()
            .position(|p| p.addr == wanted)
            .ok_or_else(|| {
                let known: Vec<&str> = links.peers.iter().map(|p| p.addr.as_str()).collect();
                CacheError::backend(
                    node::BACKEND,
                    format!(
                        "{wanted} is not another node of this fleet (peers: {})",
                        known.join(", ")
                    ),
                )
            })?;
        peers::warm(&self.space, index, limits, progress).await
    }

    /// Whether this is a node of a fleet of peers.
    pub fn is_peers(&self) -> bool {
        self.space.peers.is_some()
    }

    /// This node's replica tier, if the topology has one.
    pub fn local_tier(&self) -> Option<RedisTier> {
        self.space.conns.local().map(|_| RedisTier {
            space: self.space.clone(),
            role: Role::Local,
        })
    }

    /// The journal, if journaling is on.
    pub fn journal(&self) -> Option<&DiskJournal> {
        self.space.journal.as_ref()
    }

    /// Tier options for the master: its timeout and the journal.
    pub fn master_options(&self) -> TierOptions {
        let options = TierOptions::with_timeout(Some(self.space.conns.config.master_timeout));
        match &self.space.journal {
            Some(journal) => options.journal(Arc::new(journal.clone())),
            None => options,
        }
    }

    /// Tier options for the local replica: its (short) timeout.
    pub fn local_options(&self) -> TierOptions {
        TierOptions::with_timeout(Some(self.space.conns.config.local_timeout))
    }

    /// Builds the cache `memory → local → master` (the tiers that exist), and
    /// starts the bus subscriber that applies other nodes' invalidations to
    /// `memory` and to this node's replica.
    pub fn tiered(&self, name: impl Into<String>, memory: Option<Arc<dyn Backend>>) -> Tiered {
        let mut builder = Tiered::builder(name);
        if let Some(memory) = &memory {
            builder = builder.tier_arc("memory", memory.clone(), TierOptions::with_timeout(None));
        }
        if let Some(peer) = self.peer_tier() {
            builder = builder.tier_arc("local", Arc::new(peer), self.peer_options());
        } else {
            if let Some(local) = self.local_tier() {
                builder = builder.tier_arc("local", Arc::new(local), self.local_options());
            }
            builder = builder.tier_arc(
                "master",
                Arc::new(self.master_tier()),
                self.master_options(),
            );
        }
        match memory {
            Some(memory) => self.start_bus(memory),
            None => self.start_without_memory(),
        }
        builder.build()
    }

    /// For a cache without a memory tier: in a fleet of peers, starts what
    /// [`Self::start_bus`] starts (this node's Redis is proven current by
    /// its subscriber, and the replicator copies the others' stores);
    /// nothing otherwise.
    pub fn start_without_memory(&self) {
        if self.space.peers.is_some() {
            self.start_bus(Arc::new(peers::NoMemory));
        }
    }

    /// Starts the bus subscriber for `memory` (and this node's replica). Does
    /// nothing if the bus is off. In a fleet of peers, also subscribes to
    /// every other node's channel (their invalidations, for `memory`; their
    /// stores, for the replicator) and starts the replicator.
    pub fn start_bus(&self, memory: Arc<dyn Backend>) {
        if !self.space.bus {
            return;
        }
        let targets = bus::Targets {
            memory: memory.clone(),
            verify_own: self.space.peers.is_some(),
            announcements: None,
            own_senders: Vec::new(),
        };
        self.space.bus_started.store(true, Ordering::Relaxed);
        let task = tokio::spawn(bus::run_subscriber(Arc::downgrade(&self.space), targets));
        self.space.tasks.add(task.abort_handle());
        let Some(links) = &self.space.peers else {
            return;
        };
        let own_senders: Vec<String> = std::iter::once(self.space.node_id.clone())
            .chain(links.peers.iter().map(|p| p.tiers.space.node_id.clone()))
            .collect();
        for (index, peer) in links.peers.iter().enumerate() {
            let targets = bus::Targets {
                memory: memory.clone(),
                verify_own: false,
                announcements: Some((Arc::downgrade(&self.space), index)),
                own_senders: own_senders.clone(),
            };
            peer.tiers.space.bus_started.store(true, Ordering::Relaxed);
            let task = tokio::spawn(bus::run_subscriber(
                Arc::downgrade(&peer.tiers.space),
                targets,
            ));
            self.space.tasks.add(task.abort_handle());
        }
        let task = tokio::spawn(peers::run_workers(Arc::downgrade(&self.space), memory));
        self.space.tasks.add(task.abort_handle());
    }

    /// The master's address now.
    pub fn master_addr(&self) -> Option<String> {
        self.space.conns.master_addr()
    }

    /// Asks Sentinel for the master now (normally automatic).
    pub async fn refresh_master(&self) -> Result<(), CacheError> {
        sentinel::refresh_master(&self.space.conns).await
    }

    /// Replays the journal to the master now (the background replayer does
    /// this on its own when the master answers again). Returns the ops left.
    pub async fn replay_journal(&self) -> Result<u64, CacheError> {
        let Some(journal) = &self.space.journal else {
            return Ok(0);
        };
        // Right after the master comes back, a connection may still report
        // the outage once while it reconnects: retry briefly.
        let mut attempt = 0;
        loop {
            match replay::replay(&self.master_tier(), journal).await {
                Ok(()) => return Ok(cachette_core::Journal::depth(journal)),
                Err(error) if attempt >= 4 => return Err(error),
                Err(_) => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
                }
            }
        }
    }

    /// The namespace of this cache's keys.
    pub fn namespace(&self) -> &str {
        self.space.keys.namespace()
    }

    /// This cache's id on the bus (the node's id, `RedisConfig::node_id`,
    /// and a number for the cache in this process).
    pub fn node_id(&self) -> &str {
        &self.space.node_id
    }

    /// The cluster's primaries as `host:port` with their replicas, as last
    /// read (a purge reads them afresh); empty off a cluster.
    pub fn cluster_primaries(&self) -> Vec<(String, Vec<String>)> {
        self.space
            .conns
            .master()
            .and_then(|n| n.cluster.as_ref().map(|c| c.shape.primaries()))
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p.addr(), p.replicas))
            .collect()
    }

    /// Reads the counters.
    pub async fn stats(&self) -> RedisStats {
        let space = &self.space;
        let journal = match &space.journal {
            Some(journal) => Some(journal.stats().await),
            None => None,
        };
        RedisStats {
            master: space.conns.master_addr(),
            local: space.conns.local().map(|n| n.addr.clone()),
            readonly_skips: space.readonly_skips.load(Ordering::Relaxed),
            failovers: space.conns.failovers.load(Ordering::Relaxed),
            bus_received: space.bus_received.load(Ordering::Relaxed),
            bus_subscriptions: space.bus_subscriptions.load(Ordering::Relaxed),
            // A cache without a memory tier has no subscriber: no bus to
            // report, rather than one forever "down".
            bus_connected: (space.bus && space.bus_started.load(Ordering::Relaxed))
                .then(|| space.bus_connected.load(Ordering::Relaxed)),
            bus_last_message_age_ms: match space.bus_last_message_ms.load(Ordering::Relaxed) {
                0 => None,
                at => Some(
                    cachette_core::unix_millis(std::time::SystemTime::now()).saturating_sub(at),
                ),
            },
            resolve_errors: space.conns.resolve_errors.load(Ordering::Relaxed),
            clock_offset_ms: space.conns.clock_offset_ms(),
            journal,
            peers: space
                .peers
                .as_ref()
                .map(peers::Links::stats)
                .unwrap_or_default(),
            replication: space.peers.as_ref().map(|l| l.replicator.stats()),
            own_current: space
                .peers
                .as_ref()
                .map(|_| space.verified.load(Ordering::Acquire)),
        }
    }
}
