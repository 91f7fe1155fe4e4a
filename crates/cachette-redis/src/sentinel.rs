//! Sentinel discovery: which server is the master now, and following it when
//! it changes.
//!
//! redis-rs and deadpool-redis resolve the master only when they connect, and
//! a connection to a demoted master keeps answering `READONLY`. So cachette
//! resolves the master itself: at start, on every `+switch-master` event from
//! any sentinel, whenever the master tier sees `READONLY`, a refused
//! connection or a timeout, and every `sentinel_poll`. A new master is checked
//! with `ROLE` and swapped in without holding a lock across I/O.

use std::{
    pin::pin,
    sync::{Arc, Weak, atomic::Ordering},
    time::Duration,
};

use crate::liveness::{self, Heard, Subscription};

use cachette_core::CacheError;

use crate::{
    Topology,
    config::node_url,
    node::{BACKEND, Node, redis_error},
    shared::Connections,
};

/// Asks one sentinel for the master of `service`.
async fn ask_sentinel(url: &str, service: &str) -> Result<(String, u16), CacheError> {
    let client = liveness::client(url).map_err(redis_error)?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(redis_error)?;
    let reply: Option<(String, String)> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(service)
        .query_async(&mut conn)
        .await
        .map_err(redis_error)?;
    let (host, port) = reply.ok_or_else(|| {
        CacheError::backend(
            BACKEND,
            format!("sentinel {url} does not know service `{service}`"),
        )
    })?;
    let port: u16 = port.parse().map_err(|_| {
        CacheError::backend(BACKEND, format!("sentinel {url} gave a bad port {port:?}"))
    })?;
    Ok((host, port))
}

/// Asks every sentinel (at once) for the master of `service`. Returns the
/// distinct answers, the one named by the most sentinels first (ties in
/// configuration order), or the last error when none answered. A sentinel
/// on the minority side of a partition may name an old master: the caller
/// confirms each answer with `ROLE` rather than trusting the first.
pub(crate) async fn query_masters(
    sentinels: &[String],
    service: &str,
    timeout: Duration,
) -> Result<Vec<(String, u16)>, CacheError> {
    let mut asks = tokio::task::JoinSet::new();
    for (index, url) in sentinels.iter().enumerate() {
        let (url, service) = (url.clone(), service.to_owned());
        asks.spawn(async move {
            let answer = match tokio::time::timeout(timeout, ask_sentinel(&url, &service)).await {
                Ok(answer) => answer,
                Err(_) => Err(CacheError::Timeout {
                    tier: format!("sentinel {url}"),
                    timeout,
                }),
            };
            (index, answer)
        });
    }
    let mut answers = Vec::new();
    let mut last = CacheError::backend(BACKEND, "no sentinel configured");
    while let Some(joined) = asks.join_next().await {
        match joined {
            Ok((index, Ok(found))) => answers.push((index, found)),
            Ok((_, Err(error))) => last = error,
            Err(error) => last = CacheError::backend(BACKEND, error),
        }
    }
    answers.sort_by_key(|(index, _)| *index);
    // (address, votes, first index), most votes first.
    let mut tally: Vec<((String, u16), usize, usize)> = Vec::new();
    for (index, found) in answers {
        match tally.iter_mut().find(|(addr, ..)| *addr == found) {
            Some((_, votes, _)) => *votes += 1,
            None => tally.push((found, 1, index)),
        }
    }
    if tally.is_empty() {
        return Err(last);
    }
    tally.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)));
    Ok(tally.into_iter().map(|(addr, ..)| addr).collect())
}

/// Resolves the master through Sentinel and swaps it in if it changed. Every
/// sentinel is asked; each server they name is checked with `ROLE`, the
/// current master too, and the first that says `master` wins.
pub(crate) async fn refresh_master(shared: &Connections) -> Result<(), CacheError> {
    let Topology::Sentinel {
        sentinels,
        service,
        username,
        password,
        db,
        ..
    } = &shared.config.topology
    else {
        return Ok(());
    };
    let timeout = shared
        .config
        .connect_timeout
        .max(Duration::from_millis(500));
    let candidates = query_masters(sentinels, service, timeout).await?;
    let mut refused = Vec::new();
    for (host, port) in candidates {
        let addr = format!("{host}:{port}");
        if let Some(current) = shared.master().filter(|m| m.addr == addr) {
            match current.role(timeout).await {
                Ok(role) if role == "master" => return Ok(()),
                Ok(role) => refused.push(format!("{addr} (ROLE {role})")),
                Err(error) => refused.push(format!("{addr} ({error})")),
            }
            continue;
        }
        let url = node_url(&host, port, username.as_deref(), password.as_deref(), *db);
        let node = Node::new(
            &url,
            shared.config.master_timeout,
            shared.config.connect_timeout,
            shared.config.pool_size,
        )?;
        match node.role(timeout).await {
            Ok(role) if role == "master" => {
                shared.swap_master(node);
                return Ok(());
            }
            // Mid-failover, or a stale sentinel: try the next answer.
            Ok(role) => refused.push(format!("{addr} (ROLE {role})")),
            Err(error) => refused.push(format!("{addr} ({error})")),
        }
    }
    Err(CacheError::backend(
        BACKEND,
        format!(
            "no server the sentinels name is a master now: {}",
            refused.join(", ")
        ),
    ))
}

/// Keeps the master current: on demand (`resolve`), and every `sentinel_poll`.
pub(crate) async fn run_resolver(shared: Weak<Connections>) {
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        if let Err(error) = refresh_master(&strong).await {
            strong.resolve_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, "could not resolve the Redis master through Sentinel");
        }
        let poll = strong.config.sentinel_poll;
        {
            let notified = pin!(strong.resolve.notified());
            let _ = tokio::time::timeout(poll, notified).await;
        }
        drop(strong);
        // A burst of failures asks many times; resolve at most every 100 ms.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Listens for `+switch-master` on one sentinel and wakes the resolver. A
/// subscription that dies silently (no heartbeat answer) is reopened, and the
/// resolver is asked once: an event may have been missed meanwhile.
pub(crate) async fn run_event_listener(shared: Weak<Connections>, sentinel_url: String) {
    loop {
        let Some(heartbeat) = shared.upgrade().map(|s| s.config.heartbeat) else {
            return;
        };
        let listen = async {
            let client = liveness::client(&sentinel_url).map_err(redis_error)?;
            let mut subscription = Subscription::open(&client, "+switch-master", heartbeat)
                .await
                .map_err(redis_error)?;
            loop {
                match subscription.next().await {
                    Heard::Message(message) => {
                        let Some(strong) = shared.upgrade() else {
                            return Ok(());
                        };
                        let payload: String = message.get_payload().unwrap_or_default();
                        tracing::info!(sentinel = %sentinel_url, event = %payload, "sentinel reported +switch-master");
                        strong.resolve.notify_one();
                    }
                    lost @ (Heard::Closed | Heard::Silent) => {
                        let why = if matches!(lost, Heard::Silent) {
                            "no heartbeat answer"
                        } else {
                            "connection closed"
                        };
                        tracing::warn!(sentinel = %sentinel_url, why, "sentinel event subscription lost; resubscribing");
                        if let Some(strong) = shared.upgrade() {
                            strong.resolve.notify_one();
                        }
                        return Ok::<(), CacheError>(());
                    }
                }
            }
        };
        if let Err(error) = listen.await {
            tracing::debug!(sentinel = %sentinel_url, %error, "sentinel event subscription failed; retrying");
        }
        if shared.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Checks that the configured local replica is one of the service's replicas
/// (by address) and replies `ROLE slave`; warns otherwise.
pub(crate) async fn verify_local(shared: Arc<Connections>) {
    let Some(local) = shared.local() else { return };
    let timeout = shared
        .config
        .connect_timeout
        .max(Duration::from_millis(500));
    if let Topology::Sentinel {
        sentinels, service, ..
    } = &shared.config.topology
    {
        let mut known = None;
        for url in sentinels {
            let query = async {
                let client = liveness::client(url).ok()?;
                let mut conn = client.get_multiplexed_async_connection().await.ok()?;
                let replicas: Vec<std::collections::HashMap<String, String>> =
                    redis::cmd("SENTINEL")
                        .arg("replicas")
                        .arg(service)
                        .query_async(&mut conn)
                        .await
                        .ok()?;
                Some(replicas.iter().any(|r| {
                    r.get("ip")
                        .zip(r.get("port"))
                        .map(|(ip, port)| format!("{ip}:{port}"))
                        == Some(local.addr.clone())
                }))
            };
            if let Ok(Some(found)) = tokio::time::timeout(timeout, query).await {
                known = Some(found);
                break;
            }
        }
        if known == Some(false) {
            tracing::warn!(local = %local.addr, %service, "the configured local replica is not among the replicas Sentinel knows");
        }
    }
    match local.role(timeout).await {
        Ok(role) if role == "slave" => {}
        Ok(role) => {
            tracing::warn!(local = %local.addr, %role, "the configured local replica is not a replica")
        }
        Err(error) => {
            tracing::warn!(local = %local.addr, %error, "could not check the local replica's ROLE")
        }
    }
}
