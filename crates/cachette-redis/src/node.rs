//! Connections to one Redis server: a shared multiplexed connection for the
//! hot path and a small pool of exclusive connections for the rest.

use std::time::Duration;

use std::sync::Arc;

use cachette_core::CacheError;
use redis::{
    Cmd, Pipeline, RedisFuture, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster_async::ClusterConnection,
};

use crate::cluster::{LocalReplicaRouting, LocalReplicas, Shape};

/// The error kind name used in [`CacheError::Backend`].
pub(crate) const BACKEND: &str = "redis";

pub(crate) fn redis_error(error: redis::RedisError) -> CacheError {
    CacheError::backend(BACKEND, error)
}

/// The shared connection of a [`Node`]: to one server, or to a whole
/// Redis Cluster (one multiplexed connection per cluster node, commands
/// routed by their keys' slots).
#[derive(Clone)]
pub(crate) enum Shared {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Shared {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Server(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Server(conn) => conn.req_packed_commands(cmd, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Server(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

/// An exclusive connection: pooled for one server; for a cluster, a clone
/// of the multiplexed cluster connection (there is no pool to take from,
/// and none is needed: commands are routed per slot).
pub(crate) enum Exclusive {
    Pooled(deadpool_redis::Connection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Exclusive {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Pooled(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Pooled(conn) => conn.req_packed_commands(cmd, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Pooled(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

/// What a cluster [`Node`] knows of its cluster.
pub(crate) struct ClusterParts {
    /// The primaries and their slots, as last read.
    pub(crate) shape: Arc<Shape>,
    /// The seed nodes' URLs (the bus subscribes to one of them).
    pub(crate) seeds: Vec<String>,
    /// The cluster connection itself (for per-primary routed calls).
    pub(crate) conn: ClusterConnection,
}

/// One Redis server, or one view of a Redis Cluster (the primaries, or
/// this node's replicas for reads).
pub(crate) struct Node {
    /// `host:port` (for a cluster, the seeds), for logs and stats.
    pub(crate) addr: String,
    pub(crate) client: redis::Client,
    /// A hit is one command on this shared, multiplexed, self-reconnecting
    /// connection: no checkout, no extra round trip.
    pub(crate) shared: Shared,
    /// Exclusive connections for SCAN sweeps, tag purges and replay (none
    /// for a cluster).
    pool: Option<deadpool_redis::Pool>,
    /// Set for a Redis Cluster.
    pub(crate) cluster: Option<ClusterParts>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Prepares connections to `url` without connecting: a server that is down
    /// at startup makes the first calls fail, not the startup.
    pub(crate) fn new(
        url: &str,
        response_timeout: Duration,
        connect_timeout: Duration,
        pool_size: usize,
    ) -> Result<Self, CacheError> {
        let info = crate::liveness::connection_info(url).map_err(redis_error)?;
        let client = redis::Client::open(info.clone()).map_err(redis_error)?;
        let addr = match &client.get_connection_info().addr() {
            redis::ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
            redis::ConnectionAddr::TcpTls { host, port, .. } => format!("{host}:{port}"),
            other => other.to_string(),
        };
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(response_timeout))
            .set_connection_timeout(Some(connect_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(500));
        let shared =
            ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(redis_error)?;
        // Built from the connection info (not the URL) so that the pool's
        // connections keep the TCP keepalive settings.
        let manager = deadpool_redis::Manager::new(info).map_err(redis_error)?;
        let pool = deadpool_redis::Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(deadpool_redis::Runtime::Tokio1)
            .wait_timeout(Some(connect_timeout.max(Duration::from_millis(500))))
            .create_timeout(Some(connect_timeout))
            .recycle_timeout(Some(connect_timeout))
            .build()
            .map_err(|e| CacheError::backend(BACKEND, e))?;
        Ok(Self {
            addr,
            client,
            shared: Shared::Server(shared),
            pool: Some(pool),
            cluster: None,
        })
    }

    /// Prepares a Redis Cluster connection from `seeds` without connecting
    /// (the slot map is read on first use, and re-read on `MOVED`, on
    /// errors and as redis-rs refreshes it). With `local`, reads go to this
    /// node's replica of each slot where there is one, else to the slot's
    /// primary; without, everything goes to the primaries.
    pub(crate) fn cluster(
        seeds: &[String],
        local: Option<&LocalReplicas>,
        shape: Arc<Shape>,
        response_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Self, CacheError> {
        let first = seeds.first().ok_or_else(|| {
            CacheError::backend(BACKEND, "a cluster needs at least one seed node")
        })?;
        let infos = seeds
            .iter()
            .map(|url| crate::liveness::connection_info(url))
            .collect::<Result<Vec<_>, _>>()
            .map_err(redis_error)?;
        let mut builder = redis::cluster::ClusterClientBuilder::new(infos)
            .response_timeout(response_timeout)
            .connection_timeout(connect_timeout)
            .tcp_settings(crate::liveness::tcp_settings())
            // A MOVED or ASK is followed at once; a CLUSTERDOWN or a
            // connection error during a failover is retried a few times
            // within the tier's own timeout, which bounds the whole call.
            .retries(3)
            .min_retry_wait(10)
            .max_retry_wait(100);
        if let Some(local) = local {
            builder = builder.read_routing_strategy(LocalReplicaRouting(local.clone()));
        }
        let client = builder.build().map_err(redis_error)?;
        let conn = client.get_pending_async_connection_with_config(
            redis::cluster::ClusterConfig::new()
                .set_connection_timeout(connect_timeout)
                .set_response_timeout(response_timeout),
        );
        Ok(Self {
            addr: seeds
                .iter()
                .map(|s| crate::config::address_of(s))
                .collect::<Vec<_>>()
                .join(","),
            client: crate::liveness::client(first).map_err(redis_error)?,
            shared: Shared::Cluster(conn.clone()),
            pool: None,
            cluster: Some(ClusterParts {
                shape,
                seeds: seeds.to_vec(),
                conn,
            }),
        })
    }

    /// The client the bus subscribes with, for the `attempt`-th try: this
    /// server; on a cluster, the seeds in turn.
    pub(crate) fn pubsub_client(&self, attempt: usize) -> Result<redis::Client, CacheError> {
        match &self.cluster {
            Some(parts) if !parts.seeds.is_empty() => {
                let url = &parts.seeds[attempt % parts.seeds.len()];
                crate::liveness::client(url).map_err(redis_error)
            }
            _ => Ok(self.client.clone()),
        }
    }

    /// An exclusive connection from the pool (for a cluster, the shared
    /// cluster connection).
    pub(crate) async fn exclusive(&self) -> Result<Exclusive, CacheError> {
        if let Some(cluster) = &self.cluster {
            return Ok(Exclusive::Cluster(cluster.conn.clone()));
        }
        let pool = self
            .pool
            .as_ref()
            .ok_or_else(|| CacheError::backend(BACKEND, "no connection pool"))?;
        pool.get()
            .await
            .map(Exclusive::Pooled)
            .map_err(|e| CacheError::backend(BACKEND, e))
    }

    /// The server's replication role (`master`, `slave`, `sentinel`).
    pub(crate) async fn role(&self, timeout: Duration) -> Result<String, CacheError> {
        let mut conn = self.shared.clone();
        let reply = tokio::time::timeout(
            timeout,
            redis::cmd("ROLE").query_async::<redis::Value>(&mut conn),
        )
        .await
        .map_err(|_| CacheError::Timeout {
            tier: self.addr.clone(),
            timeout,
        })?
        .map_err(redis_error)?;
        match reply {
            redis::Value::Array(items) => match items.first() {
                Some(redis::Value::BulkString(role)) => {
                    Ok(String::from_utf8_lossy(role).into_owned())
                }
                Some(redis::Value::SimpleString(role)) => Ok(role.clone()),
                _ => Err(CacheError::backend(BACKEND, "unexpected ROLE reply")),
            },
            _ => Err(CacheError::backend(BACKEND, "unexpected ROLE reply")),
        }
    }
}

/// Whether an error from the master means "this is not (or no longer) the
/// master, or it is unreachable": a reason to ask Sentinel again.
pub(crate) fn suggests_failover(error: &redis::RedisError) -> bool {
    error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
        || error.is_connection_refusal()
        || error.is_connection_dropped()
        || error.is_io_error()
        || error.is_timeout()
}

/// Whether the server refused a write because it is a read-only replica.
pub(crate) fn is_readonly(error: &redis::RedisError) -> bool {
    error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}
