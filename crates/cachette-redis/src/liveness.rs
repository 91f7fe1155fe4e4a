//! Noticing a connection that died silently: a partition without RST (a
//! black hole, a host that lost power) leaves a socket "established"
//! forever, and a subscriber waiting on it never hears of it.
//!
//! Two layers: TCP keepalive (and, on Linux, `TCP_USER_TIMEOUT`) on every
//! connection, so the kernel gives up on a peer that stopped answering; and
//! an application heartbeat on subscriptions (a `PING` on the subscribed
//! connection every `heartbeat`), because keepalive does not see a peer
//! whose kernel answers while the server behind it does not (a stopped
//! process, a proxy that stopped forwarding).

use std::{pin::Pin, time::Duration};

use futures_core::Stream;
use redis::{
    ConnectionInfo, IntoConnectionInfo, Msg, RedisResult,
    aio::{PubSubSink, PubSubStream},
    io::tcp::{TcpSettings, socket2::TcpKeepalive},
};

/// Keepalive probes start after this much silence, one per
/// [`KEEPALIVE_INTERVAL`], and the connection is dropped after
/// [`KEEPALIVE_RETRIES`] unanswered ones (about 8 s in all).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_RETRIES: u32 = 3;

pub(crate) fn tcp_settings() -> TcpSettings {
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    let settings = TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive);
    // Unacknowledged writes (a request sent into a black hole) also give up.
    #[cfg(target_os = "linux")]
    let settings =
        settings.set_user_timeout(KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_RETRIES);
    settings
}

/// The connection info of `url` with keepalive on.
pub(crate) fn connection_info(url: &str) -> RedisResult<ConnectionInfo> {
    Ok(url.into_connection_info()?.set_tcp_settings(tcp_settings()))
}

/// A client for `url` whose connections have keepalive on.
pub(crate) fn client(url: &str) -> RedisResult<redis::Client> {
    redis::Client::open(connection_info(url)?)
}

/// What a watched subscription produced.
pub(crate) enum Heard {
    /// A message.
    Message(Msg),
    /// The connection closed: the subscription is lost (whatever is
    /// published until it is back is missed).
    Closed,
    /// The connection still looks open but missed its heartbeats: it has
    /// been dead for an unknown while (a silent network drop), and what was
    /// published during that while was missed already.
    Silent,
}

/// A subscription with a heartbeat.
pub(crate) struct Subscription {
    sink: PubSubSink,
    stream: Pin<Box<PubSubStream>>,
    heartbeat: tokio::time::Interval,
    every: Duration,
}

impl Subscription {
    /// Subscribes to `channel` on `client`.
    pub(crate) async fn open(
        client: &redis::Client,
        channel: &str,
        heartbeat: Duration,
    ) -> RedisResult<Self> {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        let (sink, stream) = pubsub.split();
        let every = heartbeat.max(Duration::from_millis(10));
        let mut heartbeat = tokio::time::interval(every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        Ok(Self {
            sink,
            stream: Box::pin(stream),
            heartbeat,
            every,
        })
    }

    /// The next message, or the news that the subscription is lost: the
    /// stream ended, or a `PING` on it was not answered within three
    /// heartbeats.
    pub(crate) async fn next(&mut self) -> Heard {
        loop {
            let message = std::future::poll_fn(|cx| self.stream.as_mut().poll_next(cx));
            tokio::select! {
                message = message => {
                    return match message {
                        Some(message) => Heard::Message(message),
                        None => Heard::Closed,
                    };
                }
                _ = self.heartbeat.tick() => {
                    // Three beats of silence: a server busy for a second (a
                    // fork, a slow script) is not a lost subscription, which
                    // would clear every node's memory at once.
                    let pong = tokio::time::timeout(self.every * 3, self.sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        return Heard::Silent;
                    }
                }
            }
        }
    }
}
