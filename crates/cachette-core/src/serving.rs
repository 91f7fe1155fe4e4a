//! A stored response's fields laid out once for serving hits.
//!
//! A hit must hand the server an owned [`HeaderMap`]. Cloning one kept
//! with the entry reads every bucket of it (about 110 bytes per field), and
//! every value's reference count, each in an allocation of its own. With
//! many entries none of that is in the CPU's caches, and such a hit waited
//! on more cache lines than it computed with (callgrind with a 4 MiB
//! last-level cache, 100,000 entries: 23 lines missed per hit, 10 of them
//! in the clone). [`ServingFields`] keeps one array of names and value
//! handles, the values slices of one buffer: a hit reads a few adjacent
//! lines and takes one reference count, and builds its map from them.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, header};

/// The `cache-status` field (RFC 9211).
const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// A stored response's fields, prepared for serving: every stored field in
/// order except `age` (a hit sends its own), ready to be turned into the map
/// of one response with [`ServingFields::to_map`].
///
/// ```
/// use cachette_core::ServingFields;
/// use http::{HeaderMap, HeaderValue, header};
///
/// let mut stored = HeaderMap::new();
/// stored.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
/// stored.insert(header::AGE, HeaderValue::from_static("30"));
/// stored.append("cache-status", HeaderValue::from_static("origin; hit"));
/// let fields = ServingFields::new(&stored).unwrap();
/// let map = fields.to_map(HeaderValue::from(42), HeaderValue::from_static("cachette; hit"));
/// assert_eq!(map["content-type"], "text/plain");
/// assert_eq!(map["age"], "42");
/// // The cache's own member comes after the origin's (RFC 9211).
/// let status: Vec<_> = map.get_all("cache-status").iter().collect();
/// assert_eq!(status, ["origin; hit", "cachette; hit"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingFields {
    fields: Box<[(HeaderName, HeaderValue)]>,
}

impl ServingFields {
    /// Lays out `stored` for serving. `None` when the fields cannot be held
    /// this way (more fields than a [`HeaderMap`] can take with the two a
    /// hit adds); such an entry is served the general way.
    pub fn new(stored: &HeaderMap) -> Option<Self> {
        if stored.len() > MAX_FIELDS {
            return None;
        }
        // Every value a slice of one buffer: one reference count for a hit
        // to take and release, next to the bytes the server then writes.
        let total: usize = stored.values().map(HeaderValue::len).sum();
        let mut bytes = Vec::with_capacity(total);
        for (name, value) in stored {
            if name != header::AGE {
                bytes.extend_from_slice(value.as_bytes());
            }
        }
        let bytes = Bytes::from(bytes);
        let mut start = 0;
        let mut fields = Vec::with_capacity(stored.len());
        for (name, stored_value) in stored {
            if name == header::AGE {
                continue;
            }
            let end = start + stored_value.len();
            // Valid as stored, so this cannot fail; were it to, the stored
            // value is kept as it is.
            let mut value = HeaderValue::from_maybe_shared(bytes.slice(start..end))
                .unwrap_or_else(|_| stored_value.clone());
            value.set_sensitive(stored_value.is_sensitive());
            fields.push((name.clone(), value));
            start = end;
        }
        Some(Self {
            fields: fields.into_boxed_slice(),
        })
    }

    /// The map for one response: the stored fields, then `age` and, after
    /// any the origin sent, this cache's `cache-status` member (RFC 9211).
    pub fn to_map(&self, age: HeaderValue, cache_status: HeaderValue) -> HeaderMap {
        let mut map = match HeaderMap::try_with_capacity(self.fields.len().saturating_add(2)) {
            Ok(map) => map,
            // Unreachable for a map `new` accepted; served without fields
            // rather than a panic.
            Err(_) => HeaderMap::new(),
        };
        for (name, value) in self.fields.iter() {
            let _ = map.try_append(name.clone(), value.clone());
        }
        let _ = map.try_append(header::AGE, age);
        let _ = map.try_append(CACHE_STATUS, cache_status);
        map
    }

    /// The number of stored fields served (all but `age`).
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether no stored field is served.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// A [`HeaderMap`] holds at most 32,768 fields; a hit adds two.
const MAX_FIELDS: usize = (1 << 15) - 2;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_is_served_in_order_with_its_sensitivity_and_one_age() {
        let mut stored = HeaderMap::new();
        stored.append("link", HeaderValue::from_static("</a>; rel=preload"));
        stored.append(header::AGE, HeaderValue::from_static("7"));
        stored.append("link", HeaderValue::from_static("</b>; rel=preload"));
        let mut secret = HeaderValue::from_static("token");
        secret.set_sensitive(true);
        stored.append("x-secret", secret);
        stored.append(header::CONTENT_LENGTH, HeaderValue::from(1024));
        let fields = ServingFields::new(&stored).unwrap();
        assert_eq!(fields.len(), 4);
        for _ in 0..2 {
            let map = fields.to_map(HeaderValue::from(9), HeaderValue::from_static("c; hit"));
            let links: Vec<_> = map.get_all("link").iter().collect();
            assert_eq!(links, ["</a>; rel=preload", "</b>; rel=preload"]);
            assert!(map["x-secret"].is_sensitive());
            assert!(!map["link"].is_sensitive());
            assert_eq!(map[header::CONTENT_LENGTH], "1024");
            let ages: Vec<_> = map.get_all(header::AGE).iter().collect();
            assert_eq!(ages, ["9"]);
            assert_eq!(map.len(), 6);
        }
    }

    #[test]
    fn a_response_without_fields_gets_age_and_cache_status() {
        let fields = ServingFields::new(&HeaderMap::new()).unwrap();
        assert!(fields.is_empty());
        let map = fields.to_map(HeaderValue::from(0), HeaderValue::from_static("c; hit"));
        assert_eq!(map.len(), 2);
        assert_eq!(map["cache-status"], "c; hit");
    }
}
