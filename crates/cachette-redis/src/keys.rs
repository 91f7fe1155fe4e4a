//! How cachette lays out its data in Redis.
//!
//! Everything of one cache lives under its namespace (e.g. `cachette:default:`):
//! entries under `{ns}k:{key}`, tag index sets under `{ns}t:{tag}`, delete
//! tombstones under `{ns}d:{key}` and the purge mark at `{ns}p` (see the
//! scripts). Clearing a cache removes its entries and tag sets and nothing
//! else (tombstones and the mark stay until they expire); settings
//! refuse namespaces where one is a prefix of another.

pub use cachette_core::escape_glob;

/// The Redis key names of one namespace.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    namespace: String,
}

impl Keys {
    pub(crate) fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
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
        format!("{}d:{key}", self.namespace)
    }

    /// The namespace's purge mark: the version of its latest purge.
    pub(crate) fn purge_mark(&self) -> String {
        format!("{}p", self.namespace)
    }

    pub(crate) fn tag(&self, tag: &str) -> String {
        format!("{}t:{tag}", self.namespace)
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

    /// The bus channel of the namespace.
    pub(crate) fn bus_channel(&self) -> String {
        format!("{}bus", self.namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_are_escaped() {
        let keys = Keys::new("app:");
        assert_eq!(
            keys.entry_pattern("GET:h/a*[b]?"),
            "app:k:GET:h/a\\*\\[b\\]\\?*"
        );
        assert_eq!(escape_glob("a\\b"), "a\\\\b");
    }
}
