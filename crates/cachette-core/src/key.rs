//! Cache keys.

use std::{borrow::Borrow, fmt, sync::Arc};

use crate::CacheError;

/// The longest key accepted, in bytes. Longer keys are a sign of unbounded user
/// input; key builders hash overlong parts instead of passing them through.
pub const MAX_KEY_LEN: usize = 1024;

/// 64-bit FNV-1a of `bytes`: stable across processes, versions and machines,
/// which keys shared through Redis need (std's hasher promises no such thing).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Tags starting with this are cachette's own (users' tags must not): the
/// tag every `Vary` variant of a URL carries, so that invalidating the URL
/// reaches its variants through the tag index, without reading the
/// `Variants` marker (which may be evicted or unreachable at that moment)
/// and without a keyspace sweep.
pub const VARIANTS_TAG_PREFIX: &str = "#vary:";

/// The tag of the `Vary` variants of the response stored under `primary`.
pub fn variants_tag(primary: &CacheKey) -> String {
    format!("{VARIANTS_TAG_PREFIX}{primary}")
}

/// Whether `tag` is a variants tag (see [`variants_tag`]).
pub fn is_variants_tag(tag: &str) -> bool {
    tag.starts_with(VARIANTS_TAG_PREFIX)
}

/// A cache key: a readable, immutable string that is cheap to clone.
///
/// Keys stay readable (`GET:example.com/users/1?page=2`) so that invalidation
/// by prefix can work on them; builders hash only overlong parts.
///
/// ```
/// use cachette_core::CacheKey;
///
/// let key = CacheKey::new("GET:example.com/users/1").unwrap();
/// assert!(key.starts_with("GET:example.com/users/"));
/// assert!(CacheKey::new("bad\nkey").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(Arc<str>);

impl CacheKey {
    /// Validates and wraps `key`: it must be non-empty, at most [`MAX_KEY_LEN`]
    /// bytes, and free of control characters and spaces.
    pub fn new(key: impl AsRef<str>) -> Result<Self, CacheError> {
        let key = key.as_ref();
        if key.is_empty() {
            return Err(CacheError::InvalidKey("empty key".into()));
        }
        if key.len() > MAX_KEY_LEN {
            return Err(CacheError::InvalidKey(format!(
                "{} bytes is longer than the limit of {MAX_KEY_LEN}",
                key.len()
            )));
        }
        // Keys are almost always printable ASCII: check bytes, and decode
        // characters only when something else is there.
        let printable_ascii = key.bytes().all(|b| b.is_ascii_graphic());
        if let Some(c) = (!printable_ascii)
            .then(|| key.chars().find(|c| c.is_control() || *c == ' '))
            .flatten()
        {
            return Err(CacheError::InvalidKey(format!(
                "contains the character {c:?}"
            )));
        }
        Ok(Self(Arc::from(key)))
    }

    /// A key made only of a hash (`~` and 16 hex digits): always valid, for
    /// builders that must stay total when their input cannot form a key.
    pub fn from_hash(hash: u64) -> Self {
        Self(Arc::from(format!("~{hash:016x}")))
    }

    /// The key as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the key starts with `prefix` (used by prefix invalidation).
    pub fn starts_with(&self, prefix: &str) -> bool {
        self.0.starts_with(prefix)
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for CacheKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for CacheKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for CacheKey {
    type Error = CacheError;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl TryFrom<String> for CacheKey {
    type Error = CacheError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}
