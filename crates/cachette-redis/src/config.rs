//! Settings of the Redis tiers.

use std::{path::PathBuf, time::Duration};

/// Where the master and this node's replica are.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Topology {
    /// One Redis: the master, no replica.
    Single {
        /// `redis://[user:password@]host:port/db` (or `rediss://` with TLS support).
        url: String,
    },
    /// Fixed addresses for the master and, optionally, this node's replica.
    Static {
        /// The master's URL.
        master: String,
        /// This node's replica's URL.
        local: Option<String>,
    },
    /// Redis Sentinel: the sentinels name the master of `service`; this node's
    /// replica is the one at `local` (`host:port`), verified with `ROLE`.
    Sentinel {
        /// `redis://host:port` of each sentinel.
        sentinels: Vec<String>,
        /// The monitored service name (`sentinel monitor <service> ...`).
        service: String,
        /// This node's replica as `host:port`.
        local: Option<String>,
        /// ACL user for the data nodes (not the sentinels).
        username: Option<String>,
        /// Password for the data nodes.
        password: Option<String>,
        /// Database number.
        db: i64,
    },
    /// Redis Cluster (or Valkey Cluster): the primaries hold the slots,
    /// this node reads from its own replica of each slot where it has one.
    Cluster {
        /// `redis://[user:password@]host:port` of some cluster nodes (the
        /// rest is discovered).
        nodes: Vec<String>,
        /// This node's replicas: `host` (every replica on that host) or
        /// `host:port`. Empty: every read goes to the slot's primary.
        local: Vec<String>,
    },
    /// No master: every node has its own Redis (`this`, read and written
    /// by this node only) and copies what the other `peers` store, lazily
    /// (see [`ReplicationConfig`]); invalidations are applied to every
    /// peer's Redis, or kept in the journal for a peer that cannot take
    /// them.
    Peers {
        /// Every node's Redis URL, this node's included.
        peers: Vec<String>,
        /// This node's Redis: one of `peers`, or a `unix://` socket to it
        /// (then its entry in `peers` is treated as another node's, and
        /// what this node publishes there is recognised as its own).
        this: String,
    },
}

impl Topology {
    /// A single Redis at `url`.
    pub fn single(url: impl Into<String>) -> Self {
        Self::Single { url: url.into() }
    }

    /// A master and, optionally, this node's replica, at fixed URLs.
    pub fn fixed(master: impl Into<String>, local: Option<String>) -> Self {
        Self::Static {
            master: master.into(),
            local,
        }
    }

    /// Sentinel discovery of `service`, with this node's replica at `local`.
    pub fn sentinel<I, S>(sentinels: I, service: impl Into<String>, local: Option<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::Sentinel {
            sentinels: sentinels.into_iter().map(Into::into).collect(),
            service: service.into(),
            local,
            username: None,
            password: None,
            db: 0,
        }
    }
}

impl Topology {
    /// A Redis Cluster reached through `nodes`, reading from this node's
    /// replicas `local` (`host` or `host:port` each).
    pub fn cluster<I, S>(nodes: I, local: Vec<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::Cluster {
            nodes: nodes.into_iter().map(Into::into).collect(),
            local,
        }
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster { .. })
    }

    /// A fleet of peers: every node's Redis in `peers`, this node's at
    /// `this` (one of them).
    pub fn peers<I, S>(peers: I, this: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::Peers {
            peers: peers.into_iter().map(Into::into).collect(),
            this: this.into(),
        }
    }

    /// Whether this is a fleet of peers.
    pub fn is_peers(&self) -> bool {
        matches!(self, Self::Peers { .. })
    }
}

/// How a node of a [`Topology::Peers`] fleet copies what the others store.
///
/// Each store is announced on the storing node's Redis (`stored_at`, key,
/// size, remaining TTL); every other node queues the announcements it
/// hears and fetches the entries it wants from the announcing node's Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// Entries larger than this are not copied (default 1 MiB).
    pub max_bytes: u64,
    /// Entries with less lifetime left than this are not copied (default 1 s).
    pub min_ttl: Duration,
    /// Announcements waiting to be fetched, at most; beyond it the oldest
    /// are dropped and counted (default 4 096).
    pub queue: usize,
    /// Fetches in flight at once (default 8).
    pub concurrency: usize,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            max_bytes: 1024 * 1024,
            min_ttl: Duration::from_secs(1),
            queue: 4096,
            concurrency: 8,
        }
    }
}

/// The `host:port` of a Redis URL (for logs; credentials never included).
pub(crate) fn address_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    rest.rsplit('@').next().unwrap_or(rest).to_owned()
}

/// Settings of the durable write journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalConfig {
    /// The journal file (created if missing; replayed on start if not empty).
    pub path: PathBuf,
    /// Most operations kept. Beyond it, sets are dropped (and counted);
    /// invalidations collapse the journal into one "clear on recovery" marker.
    pub max_entries: u64,
    /// Most bytes of operations kept (same policy as `max_entries`).
    pub max_bytes: u64,
    /// How often the replayer checks whether the master is back.
    pub probe_interval: Duration,
    /// Operations replayed per pipelined batch.
    pub batch: usize,
    /// Most operations replayed per second.
    pub max_ops_per_sec: u32,
    /// Whether a background task replays the journal when the master
    /// answers (default true). Tools that only inspect a journal turn it off
    /// and call [`RedisTiers::replay_journal`](crate::RedisTiers::replay_journal)
    /// when asked to.
    pub background_replay: bool,
}

impl JournalConfig {
    /// A journal at `path` with default bounds: 100 000 ops, 256 MiB, probe
    /// every 500 ms, batches of 128, at most 5 000 ops/s.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            max_entries: 100_000,
            max_bytes: 256 * 1024 * 1024,
            probe_interval: Duration::from_millis(500),
            batch: 128,
            max_ops_per_sec: 5_000,
            background_replay: true,
        }
    }
}

/// Settings of the Redis tiers of one cache.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Where the servers are.
    pub topology: Topology,
    /// Every key of this cache starts with this (e.g. `cachette:default:`).
    pub namespace: String,
    /// Per-call timeout on the local replica (default 50 ms).
    pub local_timeout: Duration,
    /// Per-call timeout on the master (default 300 ms).
    pub master_timeout: Duration,
    /// Timeout to establish a connection (default 250 ms).
    pub connect_timeout: Duration,
    /// Size of each exclusive connection pool (sweeps, tag purges, replay).
    pub pool_size: usize,
    /// The journal of master writes that failed; `None` disables journaling.
    pub journal: Option<JournalConfig>,
    /// Publish invalidations to other nodes, and apply theirs (default on).
    pub bus: bool,
    /// How often the sentinels are asked for the master even without a
    /// `+switch-master` event, and a cluster for its slots (default 2 s).
    pub sentinel_poll: Duration,
    /// Identifies this process on the bus (default: random).
    pub node_id: String,
    /// How long a delete's tombstone and a purge's mark stay on the master
    /// (default 10 min). A write older than a delete or purge within this
    /// window is refused; a write older than the window itself is refused
    /// too (its delete may have left no trace any more), so journaled writes
    /// that waited longer than this are dropped at replay: a miss, never
    /// resurrected data.
    pub tombstone_ttl: Duration,
    /// How often the bus and Sentinel subscriptions are checked with a
    /// `PING` (default 1 s). One not answered within three beats counts as a
    /// lost subscription (the bus then clears the memory tier and
    /// resubscribes): a silent network drop is noticed within about four.
    pub heartbeat: Duration,
    /// How a fleet of peers copies entries (only with [`Topology::Peers`]).
    pub replication: ReplicationConfig,
}

impl RedisConfig {
    /// Settings with the defaults for `topology` under `namespace`.
    pub fn new(topology: Topology, namespace: impl Into<String>) -> Self {
        Self {
            topology,
            namespace: namespace.into(),
            local_timeout: Duration::from_millis(50),
            master_timeout: Duration::from_millis(300),
            connect_timeout: Duration::from_millis(250),
            pool_size: 4,
            journal: None,
            bus: true,
            sentinel_poll: Duration::from_secs(2),
            node_id: random_node_id(),
            tombstone_ttl: Duration::from_secs(600),
            heartbeat: Duration::from_secs(1),
            replication: ReplicationConfig::default(),
        }
    }

    /// Enables the journal.
    pub fn journal(mut self, journal: JournalConfig) -> Self {
        self.journal = Some(journal);
        self
    }
}

fn random_node_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    format!("{:016x}", hasher.finish())
}

/// Percent-encodes a URL userinfo component.
fn encode_userinfo(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for byte in raw.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A data-node URL (`redis://[user:password@]host:port/db`, credentials
/// percent-encoded) for an address given as host and port.
pub fn node_url(
    host: &str,
    port: u16,
    username: Option<&str>,
    password: Option<&str>,
    db: i64,
) -> String {
    let auth = match (username, password) {
        (Some(u), Some(p)) => format!("{}:{}@", encode_userinfo(u), encode_userinfo(p)),
        (None, Some(p)) => format!(":{}@", encode_userinfo(p)),
        (Some(u), None) => format!("{}@", encode_userinfo(u)),
        (None, None) => String::new(),
    };
    format!("redis://{auth}{host}:{port}/{db}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_leave_out_credentials() {
        assert_eq!(address_of("redis://u:p@10.0.0.1:7000/0"), "10.0.0.1:7000");
        assert_eq!(address_of("rediss://h:1"), "h:1");
        assert_eq!(address_of("h:2"), "h:2");
    }

    #[test]
    fn node_urls_encode_credentials() {
        assert_eq!(
            node_url("10.0.0.1", 6379, None, None, 0),
            "redis://10.0.0.1:6379/0"
        );
        assert_eq!(
            node_url("h", 1, Some("app"), Some("p@ss:w/rd"), 2),
            "redis://app:p%40ss%3Aw%2Frd@h:1/2"
        );
    }
}
