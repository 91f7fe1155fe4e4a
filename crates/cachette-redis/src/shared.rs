//! State shared by the tiers, the background tasks and [`RedisTiers`](crate::RedisTiers).

use std::{
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{Notify, watch},
    task::AbortHandle,
};

use crate::{DiskJournal, RedisConfig, keys::Keys, node::Node, scripts::Scripts};

/// Counters of the Redis tiers beyond the per-tier ones `Tiered` keeps.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) readonly_skips: AtomicU64,
    pub(crate) failovers: AtomicU64,
    pub(crate) bus_received: AtomicU64,
    pub(crate) bus_resubscribes: AtomicU64,
    pub(crate) resolve_errors: AtomicU64,
}

pub(crate) struct Shared {
    pub(crate) config: RedisConfig,
    pub(crate) keys: Keys,
    pub(crate) scripts: Scripts,
    master: RwLock<Option<Arc<Node>>>,
    local: RwLock<Option<Arc<Node>>>,
    /// Wakes the Sentinel resolver (READONLY, refused connections, events).
    pub(crate) resolve: Notify,
    /// Bumped on every master switch; the bus resubscribes on a change.
    pub(crate) master_generation: watch::Sender<u64>,
    pub(crate) journal: Option<DiskJournal>,
    pub(crate) counters: Counters,
    pub(crate) readonly_logged: AtomicBool,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("namespace", &self.keys.namespace())
            .field("master", &self.master_addr())
            .field("local", &self.local().map(|n| n.addr.clone()))
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn new(
        config: RedisConfig,
        master: Option<Node>,
        local: Option<Node>,
        journal: Option<DiskJournal>,
    ) -> Self {
        let (generation, _) = watch::channel(0);
        Self {
            keys: Keys::new(config.namespace.clone()),
            config,
            scripts: Scripts::default(),
            master: RwLock::new(master.map(Arc::new)),
            local: RwLock::new(local.map(Arc::new)),
            resolve: Notify::new(),
            master_generation: generation,
            journal,
            counters: Counters::default(),
            readonly_logged: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
        }
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
            self.counters.failovers.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(from = %previous.addr, to = %addr, "Redis master switched");
        } else {
            tracing::info!(master = %addr, "Redis master found");
        }
        self.master_generation.send_modify(|g| *g += 1);
    }

    pub(crate) fn add_task(&self, handle: AbortHandle) {
        self.tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(handle);
    }

    pub(crate) fn master_timeout(&self) -> Duration {
        self.config.master_timeout
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        for task in self
            .tasks
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            task.abort();
        }
    }
}
