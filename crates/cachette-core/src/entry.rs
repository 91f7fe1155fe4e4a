//! Cache entries: a stored HTTP response, a raw value or a Vary index, plus the
//! metadata that decides how long it is fresh, how long it may be served stale
//! and how long it is kept.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};

use crate::{DecodeError, ServingFields, codec};

/// The largest age or delta-seconds value cachette works with: 2^31 s (68
/// years). RFC 9111 §1.2.2: a recipient must treat a larger delta-seconds
/// as this value; arithmetic on times then never overflows.
pub const MAX_DELTA: Duration = Duration::from_secs(1 << 31);

/// What an entry holds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Payload {
    /// A complete HTTP response.
    Response(StoredResponse),
    /// An opaque value (the data cache API stores serialized values here).
    Value(Bytes),
    /// The response for this key varies on these request headers: the
    /// response itself is stored under a second-level key built from their
    /// values (as Django's cache middleware does).
    Variants(Vec<HeaderName>),
    /// An integer counter: incremented atomically (`INCRBY` on Redis, where it
    /// is stored as a plain integer).
    Counter(i64),
}

/// A stored HTTP response, ready to serve.
///
/// The body is [`Bytes`]: serving a hit clones a reference count, never the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// The status code.
    pub status: StatusCode,
    /// The response headers as stored (hop-by-hop headers removed).
    pub headers: HeaderMap,
    /// The complete body.
    pub body: Bytes,
}

impl StoredResponse {
    /// The strong or weak entity tag, if the origin sent one.
    pub fn etag(&self) -> Option<&HeaderValue> {
        self.headers.get(header::ETAG)
    }

    /// The `Last-Modified` validator, if the origin sent one.
    pub fn last_modified(&self) -> Option<&HeaderValue> {
        self.headers.get(header::LAST_MODIFIED)
    }

    /// Whether the response carries a validator, so a stale copy can be
    /// revalidated with a conditional request instead of refetched.
    pub fn has_validator(&self) -> bool {
        self.etag().is_some() || self.last_modified().is_some()
    }
}

/// When an entry was stored, how long it is fresh, may be served stale, and kept.
///
/// Times are absolute (wall clock), so an entry copied between tiers or
/// replayed from a journal keeps its *remaining* lifetime, never a fresh one.
/// The binary codec keeps millisecond precision for times and whole seconds
/// for the windows.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntryMeta {
    /// When the response was received from the origin (or the value was set).
    pub stored_at: SystemTime,
    /// The entry is fresh before this instant.
    pub fresh_until: SystemTime,
    /// Tiers may keep the entry until this instant (fresh time plus the stale
    /// windows, or longer for responses that can be revalidated).
    pub keep_until: SystemTime,
    /// `stale-while-revalidate`: after `fresh_until`, serve stale for this long
    /// while one background request refreshes the entry.
    pub stale_while_revalidate: Duration,
    /// `stale-if-error`: after `fresh_until`, serve stale for this long when the
    /// origin fails.
    pub stale_if_error: Duration,
    /// The response's age when it was stored (its `Age` header and any
    /// apparent age from `Date`), added to the resident time in `Age`.
    pub initial_age: Duration,
    /// `must-revalidate` / `proxy-revalidate` / `no-cache`: a stale copy must
    /// never be served without successful revalidation, whatever the windows say.
    pub must_revalidate: bool,
    /// Tags the entry can be invalidated by.
    pub tags: Vec<String>,
    /// Never expires (Django's `timeout=None`): `fresh_until` and
    /// `keep_until` are ignored and tiers store it without a TTL.
    pub persistent: bool,
}

impl EntryMeta {
    /// Metadata for an entry stored at `stored_at`, fresh and kept for `ttl`,
    /// with no stale windows and no tags.
    pub fn new(stored_at: SystemTime, ttl: Duration) -> Self {
        let until = stored_at.checked_add(ttl).unwrap_or(stored_at);
        Self {
            stored_at,
            fresh_until: until,
            keep_until: until,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            initial_age: Duration::ZERO,
            must_revalidate: false,
            tags: Vec::new(),
            persistent: false,
        }
    }

    /// Metadata for an entry that never expires.
    pub fn persistent(stored_at: SystemTime) -> Self {
        Self {
            persistent: true,
            ..Self::new(stored_at, Duration::ZERO)
        }
    }

    /// Sets the stale windows and extends `keep_until` to cover them.
    pub fn with_stale_windows(mut self, while_revalidate: Duration, if_error: Duration) -> Self {
        self.stale_while_revalidate = while_revalidate;
        self.stale_if_error = if_error;
        let stale = while_revalidate.max(if_error);
        let keep = self
            .fresh_until
            .checked_add(stale)
            .unwrap_or(self.fresh_until);
        self.keep_until = self.keep_until.max(keep);
        self
    }

    /// The same entry made stale at `now` (a soft purge): no longer fresh,
    /// but kept as long as before, so that stale-while-revalidate,
    /// stale-if-error and revalidation with its validators still use it.
    pub fn staled(mut self, now: SystemTime) -> Self {
        self.fresh_until = self.fresh_until.min(now);
        self
    }

    /// The same lifetime, stamped as written at `now`: for a copy that is a
    /// new write (moving a value to a new key), which must order as one.
    pub fn written_at(mut self, now: SystemTime) -> Self {
        self.stored_at = now;
        self
    }

    /// Keeps the entry at least until `until` (e.g. so it can be revalidated).
    pub fn keep_at_least_until(mut self, until: SystemTime) -> Self {
        self.keep_until = self.keep_until.max(until);
        self
    }

    /// Sets the age the entry had when stored (at most [`MAX_DELTA`]).
    pub fn with_initial_age(mut self, age: Duration) -> Self {
        self.initial_age = age.min(MAX_DELTA);
        self
    }

    /// Marks the entry as never servable stale.
    pub fn with_must_revalidate(mut self, must_revalidate: bool) -> Self {
        self.must_revalidate = must_revalidate;
        self
    }

    /// Sets the tags.
    pub fn with_tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }
}

/// Whether an entry may be served now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Fresh for `ttl` more.
    Fresh {
        /// Time left until the entry becomes stale.
        ttl: Duration,
    },
    /// Stale by `stale_for`.
    Stale {
        /// How long ago the entry became stale.
        stale_for: Duration,
        /// It may be served while one background request refreshes it.
        within_stale_while_revalidate: bool,
        /// It may be served if the origin fails.
        within_stale_if_error: bool,
    },
}

/// A cache entry: a payload plus its [`EntryMeta`].
///
/// Tiers share entries as `Arc<Entry>`: the memory tier holds them decoded, so
/// a hit neither parses nor copies anything; only the Redis tiers use the
/// [binary encoding](Entry::encode).
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use bytes::Bytes;
/// use cachette_core::{Entry, EntryMeta, Freshness};
///
/// let now = SystemTime::now();
/// let entry = Entry::value(Bytes::from_static(b"42"), EntryMeta::new(now, Duration::from_secs(60)));
/// let bytes = entry.encode();
/// let back = Entry::decode(bytes).unwrap();
/// assert!(matches!(back.freshness(now), Freshness::Fresh { .. }));
/// // Corrupt bytes are an error the caller treats as a miss, never a panic.
/// assert!(Entry::decode(bytes::Bytes::from_static(b"garbage")).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    payload: Payload,
    meta: EntryMeta,
    prepared: Prepared,
}

/// A representation derived once from a stored response for serving it
/// (see [`Entry::serving_fields`]). Not part of the entry's value: two
/// entries are equal whether or not either was prepared, and it is never
/// encoded.
#[derive(Clone, Default)]
struct Prepared(std::sync::OnceLock<Option<ServingFields>>);

impl PartialEq for Prepared {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Prepared {}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "prepared"
        } else {
            "unprepared"
        })
    }
}

impl Entry {
    /// An entry holding any payload.
    pub fn new(payload: Payload, meta: EntryMeta) -> Self {
        Self {
            payload,
            meta,
            prepared: Prepared::default(),
        }
    }

    /// The fields to serve this entry's response with, if they have been
    /// laid out ([`Entry::prepare_for_serving`], which the memory tier does
    /// for every response it keeps): a server answering many hits builds
    /// each response's map from them instead of cloning the stored one.
    /// `None` when the entry holds no response, was not prepared (an entry
    /// read from Redis is served once, from its stored fields), or its
    /// fields cannot be laid out that way (a map's size limit).
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use bytes::Bytes;
    /// use cachette_core::{Entry, EntryMeta, StoredResponse};
    /// use http::{HeaderMap, HeaderValue, StatusCode, header};
    ///
    /// let mut headers = HeaderMap::new();
    /// headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    /// let stored = StoredResponse { status: StatusCode::OK, headers, body: Bytes::from_static(b"hi") };
    /// let entry = Entry::response(stored, EntryMeta::new(SystemTime::now(), Duration::from_secs(60)));
    /// assert!(entry.serving_fields().is_none());
    /// entry.prepare_for_serving();
    /// let fields = entry.serving_fields().unwrap();
    /// let map = fields.to_map(HeaderValue::from(12), HeaderValue::from_static("cachette; hit"));
    /// assert_eq!(map.len(), 3);
    /// assert_eq!(map[header::AGE], "12");
    /// ```
    pub fn serving_fields(&self) -> Option<&ServingFields> {
        self.prepared.0.get()?.as_ref()
    }

    /// Lays out a response's fields for serving ([`ServingFields`]), once;
    /// nothing for other payloads. For entries that will be served many
    /// times: laying out costs more than serving once from the stored
    /// fields.
    pub fn prepare_for_serving(&self) {
        if let Some(stored) = self.as_response() {
            self.prepared
                .0
                .get_or_init(|| ServingFields::new(&stored.headers));
        }
    }

    /// An entry holding an HTTP response.
    pub fn response(response: StoredResponse, meta: EntryMeta) -> Self {
        Self::new(Payload::Response(response), meta)
    }

    /// An entry holding an opaque value.
    pub fn value(value: Bytes, meta: EntryMeta) -> Self {
        Self::new(Payload::Value(value), meta)
    }

    /// An integer counter.
    pub fn counter(value: i64, meta: EntryMeta) -> Self {
        Self::new(Payload::Counter(value), meta)
    }

    /// The same payload with new metadata (e.g. a new lifetime after `touch`).
    pub fn with_meta(&self, meta: EntryMeta) -> Self {
        Self {
            payload: self.payload.clone(),
            meta,
            // The same payload: its fields as laid out, if they are.
            prepared: self.prepared.clone(),
        }
    }

    /// An entry recording that responses for a key vary on `headers`.
    pub fn variants(headers: Vec<HeaderName>, meta: EntryMeta) -> Self {
        Self::new(Payload::Variants(headers), meta)
    }

    /// The payload.
    pub fn payload(&self) -> &Payload {
        &self.payload
    }

    /// The metadata.
    pub fn meta(&self) -> &EntryMeta {
        &self.meta
    }

    /// The stored response, if this entry holds one.
    pub fn as_response(&self) -> Option<&StoredResponse> {
        match &self.payload {
            Payload::Response(response) => Some(response),
            _ => None,
        }
    }

    /// Splits the entry into its parts.
    pub fn into_parts(self) -> (Payload, EntryMeta) {
        (self.payload, self.meta)
    }

    /// Whether the entry is fresh at `now`, or how stale it is.
    pub fn freshness(&self, now: SystemTime) -> Freshness {
        if self.meta.persistent {
            return Freshness::Fresh { ttl: Duration::MAX };
        }
        match self.meta.fresh_until.duration_since(now) {
            Ok(ttl) if !ttl.is_zero() => Freshness::Fresh { ttl },
            _ => {
                let stale_for = now
                    .duration_since(self.meta.fresh_until)
                    .unwrap_or_default();
                let may_serve_stale = !self.meta.must_revalidate;
                Freshness::Stale {
                    stale_for,
                    within_stale_while_revalidate: may_serve_stale
                        && stale_for < self.meta.stale_while_revalidate,
                    within_stale_if_error: may_serve_stale && stale_for < self.meta.stale_if_error,
                }
            }
        }
    }

    /// How long tiers should still keep the entry; zero once `keep_until` has
    /// passed (saturating: an expired entry never wraps to a huge TTL), and
    /// [`Duration::MAX`] for a persistent entry (tiers store it without a TTL).
    pub fn remaining_ttl(&self, now: SystemTime) -> Duration {
        if self.meta.persistent {
            return Duration::MAX;
        }
        self.meta
            .keep_until
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
    }

    /// The entry's current age: its age when stored plus its time in cache
    /// (saturating: a hostile `Age` cannot overflow it).
    pub fn age(&self, now: SystemTime) -> Duration {
        self.meta.initial_age.saturating_add(
            now.duration_since(self.meta.stored_at)
                .unwrap_or(Duration::ZERO),
        )
    }

    /// Approximate memory held by the entry, used to bound the memory tier by bytes.
    pub fn weight(&self) -> usize {
        const OVERHEAD: usize = 160;
        let tags: usize = self.meta.tags.iter().map(|t| t.len() + 24).sum();
        let payload = match &self.payload {
            Payload::Response(r) => {
                // The fields laid out for serving (`serving_fields`; the
                // memory tier lays them out before it weighs an entry):
                // as laid out, or as if they were, with a shared template.
                let prepared = match self.prepared.0.get() {
                    Some(Some(fields)) => fields.weight(),
                    Some(None) => 0,
                    None => {
                        r.headers.len() * 48
                            + r.headers.values().map(HeaderValue::len).sum::<usize>()
                            + 64
                    }
                };
                r.body.len()
                    + prepared
                    + r.headers
                        .iter()
                        .map(|(n, v)| n.as_str().len() + v.len() + 48)
                        .sum::<usize>()
            }
            Payload::Value(v) => v.len(),
            Payload::Variants(names) => names.iter().map(|n| n.as_str().len() + 24).sum(),
            Payload::Counter(_) => 8,
        };
        OVERHEAD + tags + payload
    }

    /// Encodes the entry in cachette's binary format (magic number, format
    /// version, fields, CRC32).
    pub fn encode(&self) -> Bytes {
        codec::encode(self)
    }

    /// Decodes bytes written by [`Entry::encode`]. Truncated, corrupt or
    /// other-version input is an error (callers treat it as a miss); it never
    /// panics. The body is a zero-copy slice of `bytes`.
    pub fn decode(bytes: Bytes) -> Result<Self, DecodeError> {
        codec::decode(bytes)
    }
}
