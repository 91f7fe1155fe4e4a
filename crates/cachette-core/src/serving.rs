//! A stored response's fields laid out once for serving hits.
//!
//! A hit must hand the server an owned [`HeaderMap`]. Cloning one kept
//! with the entry reads every bucket of it (about 110 bytes per field), and
//! every value's reference count, each in an allocation of its own. With
//! many entries none of that is in the CPU's caches, and such a hit waited
//! on more cache lines than it computed with (callgrind with a 4 MiB
//! last-level cache, 100,000 entries: 23 lines missed per hit, 10 of them
//! in the clone). [`ServingFields`] splits a response's fields in two: a
//! template map of its names (with placeholder values), shared by every
//! entry whose fields have the same names and so kept in the caches by
//! every hit on any of them; and the entry's own values, one array of
//! handles that are slices of one buffer. A hit clones the template and
//! puts the values in place: a few adjacent lines read, one reference
//! count taken.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

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
    /// The response's field names with placeholder values, in serving
    /// order, `age` and `cache-status` included: shared by every entry
    /// whose fields have the same names ([`template`]), so the map a hit
    /// clones is in the CPU's caches however many entries there are.
    template: Arc<HeaderMap>,
    /// The stored values, in the template's iteration order, `age` and
    /// `cache-status` left out.
    values: Box<[HeaderValue]>,
    /// Where in that order `age` and this cache's `cache-status` come.
    age_at: usize,
    status_at: usize,
    /// Whether the template is shared (interned) or this entry's own.
    shared: bool,
}

impl ServingFields {
    /// Lays out `stored` for serving. `None` when the fields cannot be held
    /// this way (more fields than a [`HeaderMap`] can take with the two a
    /// hit adds); such an entry is served the general way.
    pub fn new(stored: &HeaderMap) -> Option<Self> {
        if stored.len() > MAX_FIELDS {
            return None;
        }
        // One name per value, in the map's order (each name's values
        // together), `age` left out.
        let names: Vec<HeaderName> = stored
            .iter()
            .filter(|(name, _)| *name != header::AGE)
            .map(|(name, _)| name.clone())
            .collect();
        let (template, shared) = template(names)?;
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
        let mut stored_values =
            stored
                .iter()
                .filter(|(name, _)| *name != header::AGE)
                .map(|(_, stored_value)| {
                    let end = start + stored_value.len();
                    // Valid as stored, so this cannot fail; were it to, the
                    // stored value is kept as it is.
                    let mut value = HeaderValue::from_maybe_shared(bytes.slice(start..end))
                        .unwrap_or_else(|_| stored_value.clone());
                    value.set_sensitive(stored_value.is_sensitive());
                    start = end;
                    value
                });
        // The template lists the stored values in the stored order, each
        // name's values together (as a map iterates), with `age` and this
        // cache's `cache-status` after the last of their name.
        let statuses = stored.get_all(CACHE_STATUS).iter().count();
        let mut seen_statuses = 0;
        let (mut age_at, mut status_at) = (usize::MAX, usize::MAX);
        let mut values = Vec::with_capacity(template.len());
        for (at, (name, _)) in template.iter().enumerate() {
            if name == header::AGE {
                age_at = at;
            } else if name == CACHE_STATUS && seen_statuses == statuses {
                status_at = at;
            } else {
                if name == CACHE_STATUS {
                    seen_statuses += 1;
                }
                values.push(stored_values.next()?);
            }
        }
        Some(Self {
            template,
            values: values.into_boxed_slice(),
            age_at,
            status_at,
            shared,
        })
    }

    /// The map for one response: the stored fields, then `age` and, after
    /// any the origin sent, this cache's `cache-status` member (RFC 9211).
    pub fn to_map(&self, age: HeaderValue, cache_status: HeaderValue) -> HeaderMap {
        let mut map = HeaderMap::clone(&self.template);
        let (mut age, mut cache_status) = (Some(age), Some(cache_status));
        let mut values = self.values.iter();
        for (at, (_, field)) in map.iter_mut().enumerate() {
            let value = if at == self.age_at {
                age.take()
            } else if at == self.status_at {
                cache_status.take()
            } else {
                values.next().cloned()
            };
            if let Some(value) = value {
                *field = value;
            }
        }
        map
    }

    /// The number of stored fields served (all but `age`).
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether no stored field is served.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Approximate memory this entry holds for its layout (for the memory
    /// tier's byte bound): the value handles and bytes, and the template
    /// when it is the entry's own (a shared one belongs to no entry).
    pub fn weight(&self) -> usize {
        let values = self.values.len() * std::mem::size_of::<HeaderValue>()
            + self.values.iter().map(HeaderValue::len).sum::<usize>()
            + 64;
        let template = if self.shared {
            0
        } else {
            self.template.len() * TEMPLATE_FIELD_BYTES
        };
        values + template
    }
}

/// What a template holds per field: a map bucket (name, value handle,
/// links, hash) and its index.
const TEMPLATE_FIELD_BYTES: usize = 120;

/// The template for responses whose fields have these names (in the
/// order a map iterates them, `age` left out): the names with placeholder
/// values, then `age`, and `cache-status` after any stored one; and
/// whether it is shared.
///
/// Up to [`MAX_TEMPLATES`] shapes are shared, for the life of the process
/// (an application's responses have few); their names are ones that carry
/// no reference count (each distinct name's text is kept once, up to
/// [`MAX_NAME_BYTES`] in all), so that cloning a shared template writes no
/// line another core's hits also write. Beyond either bound an entry gets
/// a template of its own, which serves the same, is counted in its weight
/// and shares nothing.
fn template(names: Vec<HeaderName>) -> Option<(Arc<HeaderMap>, bool)> {
    static INTERNED: OnceLock<Mutex<Interned>> = OnceLock::new();
    let mut interned = INTERNED
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(shared) = interned.templates.get(&names) {
        return Some((shared.clone(), true));
    }
    let static_names: Option<Vec<HeaderName>> = if interned.templates.len() < MAX_TEMPLATES {
        names
            .iter()
            .map(|name| interned.static_name(name))
            .collect()
    } else {
        None
    };
    let placeholder = HeaderValue::from_static("0");
    let in_template = static_names.as_ref().unwrap_or(&names);
    let mut map = HeaderMap::try_with_capacity(in_template.len().saturating_add(2)).ok()?;
    for name in in_template {
        map.try_append(name.clone(), placeholder.clone()).ok()?;
    }
    map.try_append(header::AGE, placeholder.clone()).ok()?;
    map.try_append(CACHE_STATUS, placeholder).ok()?;
    let map = Arc::new(map);
    if static_names.is_some() {
        interned.templates.insert(names, map.clone());
        return Some((map, true));
    }
    Some((map, false))
}

/// The shared templates and the names they are made of.
#[derive(Default)]
struct Interned {
    templates: HashMap<Vec<HeaderName>, Arc<HeaderMap>>,
    /// Each name as one whose text is static: cloning it takes no
    /// reference count.
    names: HashMap<HeaderName, HeaderName>,
    name_bytes: usize,
}

impl Interned {
    /// `name` over static text (kept for the life of the process), or
    /// `None` once [`MAX_NAME_BYTES`] are kept.
    fn static_name(&mut self, name: &HeaderName) -> Option<HeaderName> {
        if let Some(kept) = self.names.get(name) {
            return Some(kept.clone());
        }
        let text = name.as_str();
        // A name's text is lower-case token characters, which is what
        // `from_static` takes (it panics on anything else): checked anyway.
        let valid = !text.is_empty()
            && text.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
            });
        if !valid || self.name_bytes.saturating_add(text.len()) > MAX_NAME_BYTES {
            return None;
        }
        let text: &'static str = Box::leak(text.to_owned().into_boxed_str());
        self.name_bytes += text.len();
        let kept = HeaderName::from_static(text);
        self.names.insert(name.clone(), kept.clone());
        Some(kept)
    }
}

/// How many field-name shapes share templates.
const MAX_TEMPLATES: usize = 1024;

/// How much name text shared templates keep (for the life of the process).
const MAX_NAME_BYTES: usize = 64 * 1024;

/// A [`HeaderMap`] can be made with room for at most 24,576 fields (three
/// quarters of its 32,768 slots); a hit adds two.
const MAX_FIELDS: usize = 24_576 - 2;

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

    #[test]
    fn entries_sharing_a_template_keep_their_own_values() {
        let fields: Vec<_> = ["a", "b"]
            .iter()
            .map(|tag| {
                let mut stored = HeaderMap::new();
                stored.append(header::ETAG, HeaderValue::from_str(tag).unwrap());
                stored.append(CACHE_STATUS, HeaderValue::from_str(tag).unwrap());
                ServingFields::new(&stored).unwrap()
            })
            .collect();
        assert!(Arc::ptr_eq(&fields[0].template, &fields[1].template));
        for (fields, tag) in fields.iter().zip(["a", "b"]) {
            let map = fields.to_map(HeaderValue::from(1), HeaderValue::from_static("c; hit"));
            assert_eq!(map[header::ETAG], tag);
            let statuses: Vec<_> = map.get_all(CACHE_STATUS).iter().collect();
            assert_eq!(statuses, [tag, "c; hit"]);
        }
    }
}
