//! How cachette lays out its data in Redis.
//!
//! Everything of one cache lives under its namespace (e.g. `cachette:default:`):
//! entries under `{ns}k:{key}`, tag index sets under `{ns}t:{tag}`, delete
//! tombstones under `{ns}d:{key}` and the purge mark at `{ns}p` (see the
//! scripts). Clearing a cache removes its entries and tag sets and nothing
//! else (tombstones and the mark stay until they expire); settings
//! refuse namespaces where one is a prefix of another.
//!
//! On a Redis Cluster a script may only touch one hash slot, so the keys
//! that go with an entry carry the entry's *slot tag* `{T}` (a short string
//! hashing to the entry's slot): tombstones at `{ns}d:{T}{key}`, one purge
//! mark per slot at `{ns}p:{T}`, and tag indexes per slot at
//! `{ns}t:{T}{tag}`. A URL's variants index (`#vary:` tags) is one set at
//! `{ns}t:{tag}` in its own slot (see docs/operations.md, "Key layout").

pub use cachette_core::escape_glob;

/// The Redis key names of one namespace.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    namespace: String,
    /// Names for a Redis Cluster (slot-tagged companions).
    cluster: bool,
}

impl Keys {
    pub(crate) fn new(namespace: impl Into<String>, cluster: bool) -> Self {
        Self {
            namespace: namespace.into(),
            cluster,
        }
    }

    /// Whether the names are a cluster's.
    pub(crate) fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The hash tag (`{T}`) that puts a companion of `key`'s entry in the
    /// entry's slot; empty off a cluster.
    pub(crate) fn slot_infix(&self, key: &str) -> String {
        if self.cluster {
            let slot = crate::cluster::hash_slot(self.entry(key).as_bytes());
            format!("{{{}}}", crate::cluster::slot_tag(slot))
        } else {
            String::new()
        }
    }

    pub(crate) fn namespace(&self) -> &str {
        &self.namespace
    }

    pub(crate) fn entry(&self, key: &str) -> String {
        format!("{}k:{key}", self.namespace)
    }

    /// The tombstone a delete of `key` leaves on the master.
    pub(crate) fn tombstone(&self, key: &str) -> String {
        format!("{}d:{}{key}", self.namespace, self.slot_infix(key))
    }

    /// The namespace's purge mark that covers `key`: the version of the
    /// namespace's latest purge (on a cluster, the mark of `key`'s slot).
    pub(crate) fn purge_mark_for(&self, key: &str) -> String {
        if self.cluster {
            format!("{}p:{}", self.namespace, self.slot_infix(key))
        } else {
            self.purge_mark()
        }
    }

    /// The namespace's purge mark (one master).
    pub(crate) fn purge_mark(&self) -> String {
        format!("{}p", self.namespace)
    }

    /// The purge mark of the slot tagged `slot_tag` (a cluster).
    pub(crate) fn purge_mark_in(&self, slot_tag: &str) -> String {
        format!("{}p:{{{slot_tag}}}", self.namespace)
    }

    /// The one index set of `tag` (one master; on a cluster, a variants tag).
    pub(crate) fn tag(&self, tag: &str) -> String {
        format!("{}t:{tag}", self.namespace)
    }

    /// The index set of `tag` in the slot tagged `slot_tag` (a cluster).
    pub(crate) fn tag_in(&self, slot_tag: &str, tag: &str) -> String {
        format!("{}t:{{{slot_tag}}}{tag}", self.namespace)
    }

    /// Whether `tag` is indexed in one set (rather than per slot): always
    /// on one master; on a cluster, a URL's variants tag (purged on every
    /// unsafe request, so it must not cost a call per slot).
    pub(crate) fn single_index(&self, tag: &str) -> bool {
        !self.cluster || cachette_core::is_variants_tag(tag)
    }

    /// The index set that `key`'s entry is listed in for `tag`.
    pub(crate) fn tag_index(&self, tag: &str, key: &str) -> String {
        if self.single_index(tag) {
            self.tag(tag)
        } else {
            format!("{}t:{}{tag}", self.namespace, self.slot_infix(key))
        }
    }

    /// `SCAN MATCH` pattern for entries whose key starts with `prefix`.
    pub(crate) fn entry_pattern(&self, prefix: &str) -> String {
        format!("{}k:{}*", escape_glob(&self.namespace), escape_glob(prefix))
    }

    /// `SCAN MATCH` pattern for entries whose key matches the glob `pattern`
    /// (the namespace is escaped; the pattern's own globs are kept).
    pub(crate) fn entry_glob(&self, pattern: &str) -> String {
        format!("{}k:{pattern}", escape_glob(&self.namespace))
    }

    /// `SCAN MATCH` pattern for every entry of the namespace.
    pub(crate) fn entries_pattern(&self) -> String {
        format!("{}k:*", escape_glob(&self.namespace))
    }

    /// `SCAN MATCH` pattern for every tag index of the namespace.
    pub(crate) fn tags_pattern(&self) -> String {
        format!("{}t:*", escape_glob(&self.namespace))
    }

    /// The fill lease of `key` (one key: any slot will do on a cluster).
    pub(crate) fn lease(&self, key: &str) -> String {
        format!("{}l:{key}", self.namespace)
    }

    /// In a fleet of peers: the `run_id` of this node's Redis when its
    /// namespace was last proven current (a restarted server has another).
    pub(crate) fn peer_run(&self) -> String {
        format!("{}peers:run", self.namespace)
    }

    /// The bus channel of the namespace.
    pub(crate) fn bus_channel(&self) -> String {
        format!("{}bus", self.namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_companions_share_the_entry_slot() {
        use crate::cluster::hash_slot;
        let keys = Keys::new("app:", true);
        for key in ["GET:h/a", "}odd{key", "{x}y", ""] {
            let slot = hash_slot(keys.entry(key).as_bytes());
            assert_eq!(hash_slot(keys.tombstone(key).as_bytes()), slot, "{key}");
            assert_eq!(
                hash_slot(keys.purge_mark_for(key).as_bytes()),
                slot,
                "{key}"
            );
            assert_eq!(
                hash_slot(keys.tag_index("shoes", key).as_bytes()),
                slot,
                "{key}"
            );
        }
        let single = Keys::new("app:", false);
        assert_eq!(single.tombstone("k"), "app:d:k");
        assert_eq!(single.purge_mark_for("k"), "app:p");
        assert_eq!(single.tag_index("shoes", "k"), "app:t:shoes");
    }

    #[test]
    fn globs_are_escaped() {
        let keys = Keys::new("app:", false);
        assert_eq!(
            keys.entry_pattern("GET:h/a*[b]?"),
            "app:k:GET:h/a\\*\\[b\\]\\?*"
        );
        assert_eq!(escape_glob("a\\b"), "a\\\\b");
    }
}
