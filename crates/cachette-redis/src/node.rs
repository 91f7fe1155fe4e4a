//! Connections to one Redis server: a shared multiplexed connection for the
//! hot path and a small pool of exclusive connections for the rest.

use std::time::Duration;

use cachette_core::CacheError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// The error kind name used in [`CacheError::Backend`].
pub(crate) const BACKEND: &str = "redis";

pub(crate) fn redis_error(error: redis::RedisError) -> CacheError {
    CacheError::backend(BACKEND, error)
}

/// One Redis server.
pub(crate) struct Node {
    /// `host:port`, for logs and stats.
    pub(crate) addr: String,
    pub(crate) client: redis::Client,
    /// A hit is one command on this shared, multiplexed, self-reconnecting
    /// connection: no checkout, no extra round trip.
    pub(crate) shared: ConnectionManager,
    /// Exclusive connections for SCAN sweeps, tag purges and replay.
    pub(crate) pool: deadpool_redis::Pool,
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
            shared,
            pool,
        })
    }

    /// An exclusive connection from the pool.
    pub(crate) async fn exclusive(&self) -> Result<deadpool_redis::Connection, CacheError> {
        self.pool
            .get()
            .await
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
