//! Typed errors of the cache tiers and of the entry codec.

use std::time::Duration;

/// A boxed error from a backend's client library (Redis, I/O, ...).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error from a cache tier.
///
/// The tiers fail open: [`Tiered`](crate::Tiered) turns every one of these into a
/// miss (reads) or a skipped tier (writes), counts it, and never surfaces it as a
/// failed request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The tier did not answer within its configured timeout.
    #[error("tier `{tier}` timed out after {timeout:?}")]
    Timeout {
        /// The tier's name.
        tier: String,
        /// The configured timeout.
        timeout: Duration,
    },
    /// The tier's circuit breaker is open: the call was not attempted.
    #[error("tier `{tier}` is skipped: its circuit breaker is open")]
    CircuitOpen {
        /// The tier's name.
        tier: String,
    },
    /// Stored bytes could not be decoded; the caller treats this as a miss.
    #[error("stored entry is unreadable: {0}")]
    Decode(#[from] DecodeError),
    /// The key cannot be used (empty, too long, control characters).
    #[error("invalid cache key: {0}")]
    InvalidKey(String),
    /// The key holds no counter to increment (Django raises `ValueError`).
    #[error("key `{0}` not found")]
    KeyNotFound(String),
    /// The value under the key is not an integer counter.
    #[error("the value of `{0}` is not an integer")]
    NotACounter(String),
    /// Incrementing would overflow an `i64`.
    #[error("incrementing `{0}` would overflow")]
    Overflow(String),
    /// A value could not be serialized.
    #[error("value cannot be serialized: {0}")]
    Serialize(String),
    /// The tier holds a newer value for the key, or a later delete or purge
    /// covers it: the write was refused, and nothing is lost (the newer state
    /// stands).
    #[error("tier `{tier}` refused the write: it holds newer data for the key")]
    Superseded {
        /// The tier's kind or role.
        tier: String,
    },
    /// The whole operation did not finish within its per-call deadline.
    #[error("operation did not finish within {0:?}")]
    Deadline(Duration),
    /// The tier cannot do this operation.
    #[error("`{operation}` is not supported by the `{backend}` tier")]
    Unsupported {
        /// The backend kind.
        backend: &'static str,
        /// The operation.
        operation: &'static str,
    },
    /// The backend's client reported an error.
    #[error("backend `{backend}` failed: {source}")]
    Backend {
        /// The backend kind, e.g. `redis`.
        backend: &'static str,
        /// The client library's error.
        #[source]
        source: BoxError,
    },
}

impl CacheError {
    /// Wraps a client library error of the backend kind `backend`.
    pub fn backend(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Backend {
            backend,
            source: source.into(),
        }
    }
}

/// Why a byte string is not a readable [`Entry`](crate::Entry).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than the format needs.
    #[error("truncated: needed {needed} more bytes at offset {offset}")]
    Truncated {
        /// Where the read started.
        offset: usize,
        /// How many bytes were missing.
        needed: usize,
    },
    /// The bytes do not start with cachette's magic number.
    #[error("not a cachette entry (bad magic number)")]
    BadMagic,
    /// Written by another format version.
    #[error("unsupported format version {found} (this build reads {supported})")]
    UnsupportedVersion {
        /// The version in the bytes.
        found: u8,
        /// The version this build reads.
        supported: u8,
    },
    /// The checksum does not match the content.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The checksum in the bytes.
        stored: u32,
        /// The checksum of the content.
        computed: u32,
    },
    /// A field holds a value that is not valid for it.
    #[error("invalid {field}")]
    Invalid {
        /// Which field.
        field: &'static str,
    },
    /// Bytes left over after the last field.
    #[error("{0} unexpected trailing bytes")]
    Trailing(usize),
}
