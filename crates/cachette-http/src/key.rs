//! Cache keys for HTTP responses.
//!
//! A primary key names a resource: `{prefix}{class}:{host}{path}?{sorted query}`,
//! e.g. `GET:example.com/users/1?page=2`. It stays readable so that purge by
//! URL prefix works. When the stored response has `Vary`, the response itself
//! lives under a second-level key, `{primary}#vary:{name}={value}&...`, built
//! from the request headers the response varies on (as Django's cache
//! middleware does). Only overlong parts are hashed.

use std::fmt::Write as _;

use cachette_core::CacheKey;
use http::{HeaderMap, HeaderName, Method, Uri, header};

/// Path and query longer than this are shortened to a readable head plus a hash.
const MAX_URL_PART: usize = 512;
/// Vary values longer than this (all together) are replaced by their hash.
const MAX_VARY_PART: usize = 256;

/// How request URLs become cache keys.
#[derive(Debug, Clone)]
pub struct KeyOptions {
    pub(crate) prefix: String,
    pub(crate) include_host: bool,
    pub(crate) sort_query: bool,
    pub(crate) ignored_query: Vec<String>,
}

impl Default for KeyOptions {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            include_host: true,
            sort_query: true,
            ignored_query: Vec::new(),
        }
    }
}

pub(crate) use cachette_core::stable_hash as fnv1a;

fn push_shortened(out: &mut String, part: &str, max: usize) {
    if part.len() <= max {
        out.push_str(part);
        return;
    }
    let mut head = max / 2;
    while !part.is_char_boundary(head) {
        head -= 1;
    }
    out.push_str(&part[..head]);
    let _ = write!(out, "~{:016x}", fnv1a(part.as_bytes()));
}

thread_local! {
    /// Where [`KeyOptions::primary`] writes a key before it is copied into
    /// the key's own allocation.
    static KEY_BUFFER: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Query parameters sorted without allocating (more are sorted in a `Vec`).
const SORTED_IN_PLACE: usize = 16;

fn is_key_safe(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

impl KeyOptions {
    fn query_param_ignored(&self, name: &str) -> bool {
        self.ignored_query
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == pattern,
            })
    }

    /// Appends `query` normalised: empty and ignored parameters dropped,
    /// the rest sorted (when configured), joined with `&`. Up to
    /// [`SORTED_IN_PLACE`] parameters are sorted on the stack: no
    /// allocation beyond the key's own.
    fn push_normalized_query(&self, out: &mut String, query: &str) {
        if !self.sort_query && self.ignored_query.is_empty() {
            out.push_str(query);
            return;
        }
        // One parameter (the common case): nothing to sort.
        if !query.contains('&') {
            let name = query.split('=').next().unwrap_or_default();
            if !self.query_param_ignored(name) {
                out.push_str(query);
            }
            return;
        }
        let kept = query.split('&').filter(|pair| {
            !pair.is_empty()
                && !self.query_param_ignored(pair.split('=').next().unwrap_or_default())
        });
        let mut on_stack = [""; SORTED_IN_PLACE];
        let mut count = 0;
        let mut spilled: Vec<&str> = Vec::new();
        for pair in kept {
            match on_stack.get_mut(count) {
                Some(slot) if spilled.is_empty() => {
                    *slot = pair;
                    count += 1;
                }
                _ => {
                    if spilled.is_empty() {
                        spilled.extend_from_slice(&on_stack[..count]);
                    }
                    spilled.push(pair);
                }
            }
        }
        let pairs: &mut [&str] = if spilled.is_empty() {
            &mut on_stack[..count]
        } else {
            &mut spilled
        };
        if self.sort_query {
            pairs.sort_unstable();
        }
        for (i, pair) in pairs.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            out.push_str(pair);
        }
    }

    /// Appends the request's host, lower-cased (or its hash when it is not
    /// key-safe), without allocating.
    fn push_host(&self, key: &mut String, uri: &Uri, headers: &HeaderMap) {
        if !self.include_host {
            return;
        }
        let Some(host) = uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        else {
            return;
        };
        if is_key_safe(host) && host.len() <= 255 {
            let start = key.len();
            key.push_str(host);
            key[start..].make_ascii_lowercase();
        } else {
            let lowered = host.to_ascii_lowercase();
            let _ = write!(key, "~{:016x}", fnv1a(lowered.as_bytes()));
        }
    }

    /// The method class: GET and HEAD share stored responses.
    fn method_class(method: &Method) -> &str {
        if method == Method::HEAD {
            "GET"
        } else {
            method.as_str()
        }
    }

    /// The primary key of a request: prefix, method class, host, path and
    /// normalized query.
    pub fn primary(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> CacheKey {
        // Written into this thread's buffer, then copied once into the key's
        // own allocation: one allocation per key, not two.
        KEY_BUFFER
            .try_with(|buffer| match buffer.try_borrow_mut() {
                Ok(mut key) => {
                    key.clear();
                    let made = self.primary_in(&mut key, method, uri, headers);
                    // A hostile long URL must not keep a large buffer alive.
                    if key.capacity() > 4 * 1024 {
                        *key = String::new();
                    }
                    made
                }
                Err(_) => self.primary_in(&mut String::new(), method, uri, headers),
            })
            .unwrap_or_else(|_| self.primary_in(&mut String::new(), method, uri, headers))
    }

    /// Calls `f` with the text of the primary key [`Self::primary`] makes
    /// for the request, written into this thread's buffer: nothing is
    /// allocated for a lookup. (A request whose text would not be a valid
    /// key gets another key from `primary`; nothing is stored under its
    /// text.) `None` when `f` answers none, or, in a thread tearing down
    /// its locals, without calling `f`.
    pub(crate) fn with_primary_text<T>(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        f: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        KEY_BUFFER
            .try_with(|buffer| match buffer.try_borrow_mut() {
                Ok(mut key) => {
                    key.clear();
                    self.write_primary(&mut key, method, uri, headers);
                    let answer = f(&key);
                    // A hostile long URL must not keep a large buffer alive.
                    if key.capacity() > 4 * 1024 {
                        *key = String::new();
                    }
                    answer
                }
                Err(_) => {
                    let mut key = String::new();
                    self.write_primary(&mut key, method, uri, headers);
                    f(&key)
                }
            })
            .ok()
            .flatten()
    }

    fn primary_in(
        &self,
        key: &mut String,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> CacheKey {
        self.write_primary(key, method, uri, headers);
        CacheKey::new(&*key).unwrap_or_else(|_| {
            // Unreachable for URIs the http crate accepts; stay total anyway.
            let fallback = format!(
                "{}{}:~{:016x}",
                self.prefix,
                Self::method_class(method),
                fnv1a(key.as_bytes())
            );
            CacheKey::new(fallback).unwrap_or_else(|_| hashed_only(key))
        })
    }

    /// The text of the primary key, appended to `key`.
    fn write_primary(&self, key: &mut String, method: &Method, uri: &Uri, headers: &HeaderMap) {
        key.push_str(&self.prefix);
        key.push_str(Self::method_class(method));
        key.push(':');
        self.push_host(key, uri, headers);
        let url_start = key.len();
        key.push_str(uri.path());
        if let Some(query) = uri.query() {
            let query_start = key.len();
            key.push('?');
            self.push_normalized_query(key, query);
            if key.len() == query_start + 1 {
                // Nothing left of it: no query.
                key.truncate(query_start);
            }
        }
        if key.len() - url_start > MAX_URL_PART {
            let url = key.split_off(url_start);
            push_shortened(key, &url, MAX_URL_PART);
        }
    }

    /// The key prefix under which every stored variant of `primary` lives.
    pub fn variants_prefix(primary: &CacheKey) -> String {
        format!("{primary}#vary:")
    }

    /// The second-level key of the variant of `primary` selected by the request
    /// headers named in the stored response's `Vary`.
    pub fn variant(primary: &CacheKey, vary: &[HeaderName], headers: &HeaderMap) -> CacheKey {
        let mut part = String::new();
        for (i, name) in vary.iter().enumerate() {
            if i > 0 {
                part.push('&');
            }
            part.push_str(name.as_str());
            part.push('=');
            if let Some(cookie) = name.as_str().strip_prefix(COOKIE_KEY_PREFIX) {
                // A keyed cookie: its value alone, not the whole Cookie field.
                if let Some(value) = cookie_value(headers, cookie) {
                    part.push_str(value);
                }
                continue;
            }
            let mut first = true;
            for value in headers.get_all(name) {
                if !first {
                    part.push(',');
                }
                first = false;
                match value.to_str() {
                    Ok(v) => part.push_str(&normalized_value(name, v)),
                    Err(_) => {
                        let _ = write!(part, "~{:016x}", fnv1a(value.as_bytes()));
                    }
                }
            }
        }
        let mut key = Self::variants_prefix(primary);
        if part.len() <= MAX_VARY_PART && is_key_safe(&part) {
            key.push_str(&part);
        } else {
            let _ = write!(key, "~{:016x}", fnv1a(part.as_bytes()));
        }
        CacheKey::new(&key).unwrap_or_else(|_| hashed_only(&key))
    }
}

/// Where the stored responses of every URL starting with a given prefix live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlScope {
    /// Every key starting with this.
    Prefix(String),
    /// Every key matching this Redis-style glob: a path prefix with no host,
    /// when keys hold the host. A glob cannot say "no `/` here", so
    /// `/api/` also matches paths that hold `/api/` further in: more is
    /// removed than asked, never less.
    Pattern(String),
}

impl KeyOptions {
    /// The keys of every GET response whose URL starts with `url_prefix`:
    /// `https://host/path`, `host/path`, or `/path` (every host).
    pub fn url_scope(&self, url_prefix: &str) -> Result<UrlScope, String> {
        let rest = match url_prefix.split_once("://") {
            Some((scheme, rest)) if scheme == "http" || scheme == "https" => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "`{url_prefix}`: only http:// and https:// URLs are cached (not {scheme}://)"
                ));
            }
            None => url_prefix,
        };
        let (host, path) = match rest.find('/') {
            Some(0) => (None, rest),
            Some(slash) => (Some(&rest[..slash]), &rest[slash..]),
            None if rest.is_empty() => {
                return Err(
                    "an empty URL prefix would remove every page: purge all instead".into(),
                );
            }
            None => (Some(rest), "/"),
        };
        if let Some(bad) = url_prefix
            .chars()
            .find(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!("`{url_prefix}` holds {bad:?}, which no URL holds"));
        }
        let mut key = format!("{}GET:", self.prefix);
        match host {
            _ if !self.include_host => {}
            Some(host) => key.push_str(&host.to_ascii_lowercase()),
            None => {
                let pattern = format!(
                    "{}*{}*",
                    cachette_core::escape_glob(&key),
                    cachette_core::escape_glob(path)
                );
                return Ok(UrlScope::Pattern(pattern));
            }
        }
        key.push_str(path);
        Ok(UrlScope::Prefix(key))
    }
}

/// A name in a `Vary` list that stands for one request cookie: the variant
/// key holds that cookie's value (see `CacheLayer::key_cookies`).
pub(crate) const COOKIE_KEY_PREFIX: &str = "cachette-cookie-";

/// The value of the cookie `name` in the request's `Cookie` fields.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| n.trim() == name)
        .map(|(_, v)| v.trim())
}

/// A request field value as the variant key holds it. The content
/// negotiation fields are lists of case-insensitive tokens with optional
/// weights: whitespace, case and the spelling of weights (`q=1.0`, `q=1`)
/// do not make another variant. Members are reordered only for
/// `Accept-Encoding`, where the server picks by its own preference; in
/// `Accept-Language` and `Accept` the order among equal weights is the
/// client's preference, which origins honour, so `en, de` and `de, en` stay
/// two variants.
fn normalized_value(name: &HeaderName, value: &str) -> String {
    let negotiated = [
        header::ACCEPT_LANGUAGE,
        header::ACCEPT_ENCODING,
        header::ACCEPT,
        header::ACCEPT_CHARSET,
    ];
    if !negotiated.contains(name) {
        return value.trim().to_owned();
    }
    let mut members: Vec<String> = value
        .split(',')
        .filter_map(|member| {
            let mut parts = member.split(';').map(str::trim);
            let token = parts.next().filter(|t| !t.is_empty())?.to_ascii_lowercase();
            let mut out = token;
            for param in parts.filter(|p| !p.is_empty()) {
                let (key, val) = param.split_once('=').unwrap_or((param, ""));
                let (key, val) = (key.trim().to_ascii_lowercase(), val.trim());
                let val = if key == "q" {
                    normalized_weight(val)
                } else {
                    val.to_ascii_lowercase()
                };
                out.push(';');
                out.push_str(&key);
                out.push('=');
                out.push_str(&val);
            }
            Some(out)
        })
        .collect();
    if name == header::ACCEPT_ENCODING {
        members.sort();
    }
    members.join(",")
}

/// `q=1.000` and `q=1` are one weight; so are `0.50` and `0.5`.
fn normalized_weight(value: &str) -> String {
    match value.split_once('.') {
        Some((whole, fraction)) => {
            let fraction = fraction.trim_end_matches('0');
            if fraction.is_empty() {
                whole.to_owned()
            } else {
                format!("{whole}.{fraction}")
            }
        }
        None => value.to_owned(),
    }
}

fn hashed_only(raw: &str) -> CacheKey {
    CacheKey::from_hash(fnv1a(raw.as_bytes()))
}

/// Parses the `Vary` header lines of a response into header names.
/// Returns `None` for `Vary: *` in any spelling (`*`, `*, accept`, split lines).
pub(crate) fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::VARY) {
        let Ok(value) = value.to_str() else {
            return None;
        };
        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if item == "*" {
                return None;
            }
            let name = HeaderName::from_bytes(item.to_ascii_lowercase().as_bytes()).ok()?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    Some(names)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The normalisation as it was first written (a `Vec` and a join), the
    /// reference for the one that writes in place.
    fn reference_query(opts: &KeyOptions, query: &str) -> String {
        if !opts.sort_query && opts.ignored_query.is_empty() {
            return query.to_owned();
        }
        if !query.contains('&') {
            let name = query.split('=').next().unwrap_or_default();
            return if opts.query_param_ignored(name) {
                String::new()
            } else {
                query.to_owned()
            };
        }
        let mut pairs: Vec<&str> = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .filter(|pair| !opts.query_param_ignored(pair.split('=').next().unwrap_or_default()))
            .collect();
        if opts.sort_query {
            pairs.sort_unstable();
        }
        pairs.join("&")
    }

    proptest! {
        #[test]
        fn query_normalised_in_place_as_the_reference(
            pairs in proptest::collection::vec("(utm_[a-c]|[a-d]{0,2})(=[0-9a-z]{0,3})?", 0..40),
            sort in any::<bool>(),
            ignore in any::<bool>(),
        ) {
            let opts = KeyOptions {
                sort_query: sort,
                ignored_query: if ignore { vec!["utm_*".into(), "b".into()] } else { Vec::new() },
                ..KeyOptions::default()
            };
            let query = pairs.join("&");
            let mut written = String::new();
            opts.push_normalized_query(&mut written, &query);
            prop_assert_eq!(written, reference_query(&opts, &query));
        }
    }

    fn key(opts: &KeyOptions, uri: &str) -> String {
        let uri: Uri = uri.parse().unwrap();
        opts.primary(&Method::GET, &uri, &HeaderMap::new())
            .to_string()
    }

    #[test]
    fn query_is_sorted_and_ignored_params_dropped() {
        let opts = KeyOptions {
            ignored_query: vec!["utm_*".into(), "fbclid".into()],
            ..KeyOptions::default()
        };
        assert_eq!(
            key(&opts, "http://Example.com/a?b=2&utm_source=x&a=1&fbclid=9"),
            "GET:example.com/a?a=1&b=2"
        );
        assert_eq!(
            key(&opts, "http://example.com/a?utm_campaign=1"),
            "GET:example.com/a"
        );
        // One parameter, kept as it is; an empty query is no query.
        assert_eq!(
            key(&opts, "http://example.com/a?k=42"),
            "GET:example.com/a?k=42"
        );
        assert_eq!(key(&opts, "http://example.com/a?"), "GET:example.com/a");
        assert_eq!(
            key(&opts, "http://example.com/a?fbclid"),
            "GET:example.com/a"
        );
        // Long URLs are still shortened with a hash, query included.
        let long = format!("http://example.com/{}?k=1", "p".repeat(600));
        let shortened = key(&opts, &long);
        assert!(
            shortened.len() < 600 && shortened.contains('~'),
            "{shortened}"
        );
        assert_ne!(shortened, key(&opts, &long.replace("k=1", "k=2")));
    }

    #[test]
    fn head_shares_the_get_class_and_host_can_be_ignored() {
        let opts = KeyOptions {
            include_host: false,
            ..KeyOptions::default()
        };
        let uri: Uri = "http://a.example/x".parse().unwrap();
        assert_eq!(
            opts.primary(&Method::HEAD, &uri, &HeaderMap::new())
                .as_str(),
            "GET:/x"
        );
    }

    #[test]
    fn overlong_urls_keep_a_readable_head() {
        let long = format!("http://h/{}", "p".repeat(4000));
        let k = key(&KeyOptions::default(), &long);
        assert!(k.starts_with("GET:h/pppp"));
        assert!(k.len() < 600);
    }

    #[test]
    fn negotiation_values_are_normalized_before_keying() {
        let primary = CacheKey::new("GET:h/p").unwrap();
        let key = |name: HeaderName, value: &str| {
            let mut h = HeaderMap::new();
            h.insert(name.clone(), value.parse().unwrap());
            KeyOptions::variant(&primary, &[name], &h)
        };
        let lang = header::ACCEPT_LANGUAGE;
        assert_eq!(key(lang.clone(), "en, de"), key(lang.clone(), " EN ,   de"));
        assert_eq!(
            key(lang.clone(), "fr;q=1.0, en;q=0.50"),
            key(lang.clone(), "fr; q=1 ,en;Q=0.5")
        );
        assert_ne!(
            key(lang.clone(), "en, de"),
            key(lang.clone(), "de, en"),
            "order is the client's preference"
        );
        let enc = header::ACCEPT_ENCODING;
        assert_eq!(key(enc.clone(), "gzip, br"), key(enc.clone(), "br,gzip"));
        assert_ne!(key(lang.clone(), "en"), key(lang, "de"));
    }

    #[test]
    fn vary_star_in_any_spelling() {
        let mut h = HeaderMap::new();
        h.append(header::VARY, "accept".parse().unwrap());
        h.append(header::VARY, " * ".parse().unwrap());
        assert!(vary_names(&h).is_none());
        let mut h = HeaderMap::new();
        h.append(header::VARY, "Accept-Language, accept".parse().unwrap());
        let names = vary_names(&h).unwrap();
        assert_eq!(names, vec![header::ACCEPT, header::ACCEPT_LANGUAGE]);
    }
}
