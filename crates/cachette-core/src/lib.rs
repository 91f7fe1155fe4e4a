//! The core model of [cachette](https://docs.rs/cachette): keys, entries and
//! their binary encoding, the [`Backend`] trait every tier implements,
//! [`Tiered`] (tiers read in order, promotion, timeouts, circuit breakers),
//! [`SingleFlight`] and stats.
//!
//! Most applications use the `cachette` facade crate instead of this one.

mod backend;
mod breaker;
pub mod codec;
mod entry;
mod error;
mod glob;
mod journal;
mod key;
mod lease;
mod serving;
mod single_flight;
mod stats;
pub mod sweep;
mod tiered;

pub use backend::{Backend, TierInfo};
pub use breaker::{Admission, BreakerConfig, BreakerState, CircuitBreaker, ProbeGuard};
pub use entry::{Entry, EntryMeta, Freshness, MAX_DELTA, Payload, StoredResponse};
pub use error::{BoxError, CacheError, DecodeError};
pub use glob::{escape_glob, glob_match};
pub use journal::{Journal, JournalOp, Recorded, unix_millis};
pub use key::{
    CacheKey, MAX_KEY_LEN, VARIANTS_TAG_PREFIX, is_variants_tag, stable_hash, variants_tag,
};
pub use lease::{
    DEFAULT_FILL_LEASE, FillLease, FillWakers, FillWatch, FleetFill, LeaseEnd, LeaseHolder,
    LeaseOptions, LeaseState,
};
pub use serving::ServingFields;
pub use single_flight::{Role, SingleFlight};
pub use stats::{
    CacheCounters, CacheCountersSnapshot, Counter, LatencyHistogram, LatencySnapshot,
    StatsSnapshot, TierCounters, TierCountersSnapshot, TierSnapshot, TierStats,
};
pub use tiered::{
    FirstTier, Hit, TierFailure, TierOptions, TierProbe, Tiered, TieredBuilder, WriteReport,
};

/// Re-exported so that backends implement [`Backend`] with the same macro version.
pub use async_trait::async_trait;
