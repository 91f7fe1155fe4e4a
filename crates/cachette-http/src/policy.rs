//! Storability and freshness of origin responses (RFC 9111, shared cache),
//! computed with http-cache-semantics, plus the targeted-field (RFC 9213),
//! layer-TTL and stale-window rules cachette adds on top.

use std::time::{Duration, SystemTime};

use cachette_core::{EntryMeta, StoredResponse};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header, request, response};
use http_cache_semantics::CachePolicy;

use crate::{Config, directives::Directives, key::vary_names};

/// The statuses http-cache-semantics stores on its own (and may give
/// heuristic freshness).
const UNDERSTOOD_STATUSES: &[u16] = &[
    200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 501,
];

/// Why a response was not stored (logged at debug level).
pub(crate) type NotStorable = &'static str;

/// A response ready to be stored: its headers as stored and its metadata.
pub(crate) struct Storable {
    pub(crate) response: StoredResponse,
    pub(crate) meta: EntryMeta,
    pub(crate) vary: Vec<HeaderName>,
}

impl Storable {
    /// The same response with `body` (storability depends on the head only,
    /// so it is decided before the body is read).
    pub(crate) fn with_body(mut self, body: bytes::Bytes) -> Self {
        self.response
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        self.response.body = body;
        self
    }
}

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Removes hop-by-hop fields and those named in `Connection` (RFC 9110 §7.6.1).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().to_ascii_lowercase().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    // Most responses have none: look once over the names present rather
    // than parse and remove each hop-by-hop name.
    let present: Vec<HeaderName> = headers
        .keys()
        .filter(|name| HOP_BY_HOP.contains(&name.as_str()))
        .cloned()
        .collect();
    for name in present {
        headers.remove(name);
    }
}

/// The directives cachette obeys for a response: the first configured
/// targeted field present and valid (RFC 9213), else `Cache-Control`.
fn effective_directives(config: &Config, headers: &HeaderMap) -> (Directives, bool) {
    for name in &config.targeted_fields {
        if headers.contains_key(name) {
            if let Some(directives) = targeted_directives(headers, name) {
                return (directives, true);
            }
        }
    }
    (
        Directives::parse(headers.get_all(header::CACHE_CONTROL)),
        false,
    )
}

/// A targeted field (RFC 9213 §2.1) as directives: an RFC 9651 Dictionary,
/// every line of it. A field that does not parse, or whose known directives
/// have the wrong type (`max-age="10"`, `max-age=1.5`, a negative age), is
/// invalid as a whole: `None`, and the response falls back to the next
/// targeted field or to `Cache-Control`/`Expires`.
fn targeted_directives(headers: &HeaderMap, name: &HeaderName) -> Option<Directives> {
    use sfv::{BareItem, Dictionary, ListEntry, Parser};
    const DELTAS: [&str; 4] = [
        "max-age",
        "s-maxage",
        "stale-while-revalidate",
        "stale-if-error",
    ];
    let mut joined = String::new();
    for value in headers.get_all(name) {
        if !joined.is_empty() {
            joined.push_str(", ");
        }
        joined.push_str(value.to_str().ok()?);
    }
    let dictionary: Dictionary = Parser::new(&joined).parse().ok()?;
    // An empty field is an absent one (RFC 9651 §3.2): it must not displace
    // Cache-Control (`private`, `no-store`).
    if dictionary.is_empty() {
        return None;
    }
    let mut directives = Directives::default();
    for (key, entry) in &dictionary {
        let key = key.as_str();
        let arg = match entry {
            ListEntry::Item(item) => match &item.bare_item {
                BareItem::Integer(n) if DELTAS.contains(&key) => {
                    let n = i64::from(*n);
                    if n < 0 {
                        return None;
                    }
                    Some(n.to_string())
                }
                _ if DELTAS.contains(&key) => return None,
                BareItem::Boolean(true) => None,
                // `?0` says the directive is absent.
                BareItem::Boolean(false) => continue,
                // Arguments of other directives (field names of
                // `no-cache`/`private`...) do not change what a cache does.
                _ => None,
            },
            ListEntry::InnerList(_) if DELTAS.contains(&key) => return None,
            ListEntry::InnerList(_) => None,
        };
        directives.push(key, arg);
    }
    Some(directives)
}

/// Whether a stored response may answer a request carrying `Authorization`
/// (RFC 9111 §3.5: `public`, `s-maxage` or `must-revalidate`).
pub(crate) fn allows_authorized(config: &Config, stored: &StoredResponse) -> bool {
    let (cc, _) = effective_directives(config, &stored.headers);
    cc.has("public") || cc.has("s-maxage") || cc.has("must-revalidate")
}

/// The response as http-cache-semantics sees it: `Age` reduced to one
/// valid value (the first member of the first line: RFC 9111 §5.1 allows
/// no list, and a recipient uses the first) and every delta-seconds capped
/// at 2^31 (§1.2.2), so that no header value can make the library's time
/// arithmetic overflow.
fn response_parts(status: StatusCode, mut headers: HeaderMap) -> response::Parts {
    let age = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|v| crate::directives::delta_seconds(v.trim()));
    headers.remove(header::AGE);
    if let Some(age) = age {
        headers.insert(header::AGE, HeaderValue::from(age));
    }
    let capped: Vec<HeaderValue> = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .map(cap_delta_seconds)
        .collect();
    if !capped.is_empty() {
        headers.remove(header::CACHE_CONTROL);
        for value in capped {
            headers.append(header::CACHE_CONTROL, value);
        }
    }
    normalize_dates(&mut headers);
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = status;
    parts.headers = headers;
    parts
}

/// HTTP dates as RFC 9110 §5.6.7 reads them: IMF-fixdate exactly, and the
/// obsolete RFC 850 and asctime forms (a recipient must accept them), each
/// rewritten as IMF-fixdate for http-cache-semantics (which would read them
/// as RFC 2822, leniently). An invalid `Expires` means "already expired"
/// (RFC 9111 §5.3); an invalid `Date` or `Last-Modified` is dropped.
fn normalize_dates(headers: &mut HeaderMap) {
    for name in [header::DATE, header::EXPIRES, header::LAST_MODIFIED] {
        let Some(value) = headers.get(&name) else {
            continue;
        };
        let parsed = value
            .to_str()
            .ok()
            .and_then(|v| httpdate::parse_http_date(v.trim()).ok());
        match parsed {
            Some(date) => {
                if let Ok(value) = HeaderValue::from_str(&httpdate::fmt_http_date(date)) {
                    headers.insert(name, value);
                }
            }
            None if name == header::EXPIRES => {
                headers.insert(
                    name,
                    HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"),
                );
            }
            None => {
                headers.remove(name);
            }
        }
    }
}

/// A `Cache-Control` line with each `name=digits` argument above 2^31
/// replaced by 2^31.
fn cap_delta_seconds(value: &HeaderValue) -> HeaderValue {
    let Ok(text) = value.to_str() else {
        return value.clone();
    };
    let mut changed = false;
    let items: Vec<String> = text
        .split(',')
        .map(|item| {
            if let Some((name, arg)) = item.split_once('=') {
                let arg = arg.trim();
                if let Some(n) = crate::directives::delta_seconds(arg) {
                    // Capped (larger, or too large for any integer); leading
                    // zeros alone change nothing.
                    if n == crate::directives::MAX_DELTA_SECONDS
                        && arg.trim_start_matches('0') != n.to_string()
                    {
                        changed = true;
                        return format!("{}={n}", name.trim());
                    }
                }
            }
            item.to_owned()
        })
        .collect();
    if !changed {
        return value.clone();
    }
    HeaderValue::from_str(&items.join(",")).unwrap_or_else(|_| value.clone())
}

/// `now` as an HTTP date, formatted once per second per thread (most
/// stored responses get one, and formatting was most of a small store's
/// header work), copied into each response's own value.
fn http_date(now: SystemTime) -> Option<HeaderValue> {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(u64, HeaderValue)>> = const { std::cell::RefCell::new(None) };
    }
    let second = now.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs();
    let format = || HeaderValue::from_str(&httpdate::fmt_http_date(now)).ok();
    LAST.try_with(|last| {
        let mut last = last.try_borrow_mut().ok()?;
        match &*last {
            // A copy, not a shared reference count: hits on every entry
            // stored in this second would all write that one count.
            Some((at, value)) if *at == second => HeaderValue::from_bytes(value.as_bytes()).ok(),
            _ => {
                let value = format()?;
                *last = Some((second, value.clone()));
                Some(value)
            }
        }
    })
    .ok()
    .flatten()
    .or_else(format)
}

/// Decides whether an origin response is stored, and for how long, from its
/// head (its body and `Content-Length` come with [`Storable::with_body`]).
pub(crate) fn evaluate(
    config: &Config,
    request: &request::Parts,
    status: StatusCode,
    headers: &HeaderMap,
    now: SystemTime,
) -> Result<Storable, NotStorable> {
    if status == StatusCode::PARTIAL_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Err("partial or not-modified response");
    }
    let mut vary = vary_names(headers).ok_or("Vary: *")?;
    // Request fields the layer keys on, whatever the origin says: stored as
    // if the response varied on them (so invalidating the URL reaches every
    // value), not shown to clients.
    for name in &config.key_headers {
        if !vary.contains(name) {
            vary.push(name.clone());
        }
    }
    let has_cookie = headers.contains_key(header::SET_COOKIE);
    if has_cookie && !config.strip_set_cookie {
        return Err("Set-Cookie");
    }

    let (mut cc, targeted) = effective_directives(config, headers);
    // The origin's own freshness, before any layer default or override.
    let explicit_freshness = cc.has("max-age")
        || cc.has("s-maxage")
        || (!targeted && headers.contains_key(header::EXPIRES));
    let origin_s_maxage = cc.has("s-maxage");
    let explicit_swr = cc.seconds("stale-while-revalidate");
    let explicit_sie = cc.seconds("stale-if-error");
    // Before the directives are rewritten with the layer's TTL.
    let ttl_injected = config.ttl_override.is_some()
        || (config.default_ttl.is_some()
            && !explicit_freshness_for_default(&cc, headers, targeted));
    let (header_age, lifetime) = match fast_lifetime(config, request, status, headers, targeted) {
        Some(found) => found,
        None => library_lifetime(
            config,
            request,
            status,
            headers,
            &mut cc,
            targeted,
            explicit_freshness,
            now,
        )?,
    };
    let apparent_age = headers
        .get(header::DATE)
        .and_then(|d| httpdate::parse_http_date(d.to_str().ok()?).ok())
        .and_then(|date| now.duration_since(date).ok())
        .unwrap_or_default();
    let age = header_age.max(apparent_age);
    let ttl = if lifetime > header_age {
        lifetime.saturating_sub(age)
    } else {
        Duration::ZERO
    };
    let has_validator =
        headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED);
    if ttl.is_zero() && !has_validator {
        return Err("no freshness lifetime and no validator");
    }

    // s-maxage implies proxy-revalidate for a shared cache (RFC 9111 §5.2.2.10),
    // unless the origin explicitly allowed stale serving.
    let must_revalidate = cc.has("must-revalidate")
        || cc.has("proxy-revalidate")
        || cc.has("no-cache")
        || (origin_s_maxage && !ttl_injected && explicit_swr.is_none() && explicit_sie.is_none());
    let swr = explicit_swr.map_or(config.stale_while_revalidate, Duration::from_secs);
    let sie = explicit_sie.map_or(config.stale_if_error, Duration::from_secs);
    let mut meta = EntryMeta::new(now, ttl)
        .with_initial_age(age)
        .with_must_revalidate(must_revalidate)
        .with_stale_windows(swr, sie);
    if has_validator {
        let revalidatable = meta
            .fresh_until
            .checked_add(config.revalidation_window)
            .unwrap_or(meta.fresh_until);
        meta = meta.keep_at_least_until(revalidatable);
    }

    let mut tags = config.tags.clone();
    for name in &config.tags_headers {
        for value in headers.get_all(name).iter().filter_map(|v| v.to_str().ok()) {
            tags.extend(
                value
                    .split([',', ' '])
                    .map(str::trim)
                    // `#vary:` tags are cachette's own: an origin cannot
                    // attach a response to another URL's variants.
                    .filter(|t| !t.is_empty() && !cachette_core::is_variants_tag(t))
                    .map(str::to_owned),
            );
        }
    }
    tags.sort();
    tags.dedup();
    meta = meta.with_tags(tags);

    // With room for the two fields added here and by `with_body`: a clone
    // is exactly full, and growing a map rebuilds it.
    // (A map near the field limit cannot be given room: cloned as it is.)
    let mut stored = match HeaderMap::try_with_capacity(headers.len().saturating_add(2)) {
        Ok(mut stored) => {
            for (name, value) in headers {
                stored.append(name.clone(), value.clone());
            }
            stored
        }
        Err(_) => headers.clone(),
    };
    strip_hop_by_hop(&mut stored);
    let unstored: Vec<HeaderName> = stored
        .keys()
        .filter(|name| {
            *name == header::SET_COOKIE
                || *name == header::AGE
                || config.strip_fields.contains(name)
        })
        .cloned()
        .collect();
    for name in unstored {
        stored.remove(name);
    }
    if !stored.contains_key(header::DATE) {
        if let Some(date) = http_date(now) {
            stored.insert(header::DATE, date);
        }
    }
    Ok(Storable {
        response: StoredResponse {
            status,
            headers: stored,
            body: bytes::Bytes::new(),
        },
        meta,
        vary,
    })
}

/// Whether the origin gave the freshness the layer's `default_ttl` defers to
/// (as [`library_lifetime`] decides whether to inject it).
fn explicit_freshness_for_default(cc: &Directives, headers: &HeaderMap, targeted: bool) -> bool {
    cc.has("max-age")
        || cc.has("s-maxage")
        || cc.has("no-cache")
        || (!targeted && headers.contains_key(header::EXPIRES))
}

/// The freshness of the common response, without http-cache-semantics: a
/// 200 to a GET or HEAD without `Authorization`, whose only freshness
/// information is one `max-age` or `s-maxage` (digits, each at most once),
/// with only `public`, `must-revalidate`, `stale-while-revalidate` and
/// `stale-if-error` beside them, no `Age`, `Expires`, `Pragma` or targeted
/// field, and no TTL override. For these the library's answer is known: storable,
/// no header age, the lifetime `s-maxage` (a shared cache) or else
/// `max-age` (checked against the library by a property test). `None`:
/// ask the library. Returns `(header age, lifetime)`.
fn fast_lifetime(
    config: &Config,
    request: &request::Parts,
    status: StatusCode,
    headers: &HeaderMap,
    targeted: bool,
) -> Option<(Duration, Duration)> {
    if status != StatusCode::OK
        || targeted
        || config.ttl_override.is_some()
        || !config.rfc_options.shared
        || !(request.method == http::Method::GET || request.method == http::Method::HEAD)
        || request.headers.contains_key(header::AUTHORIZATION)
        || request.headers.contains_key(header::CACHE_CONTROL)
        || headers.contains_key(header::AGE)
        || headers.contains_key(header::EXPIRES)
        || headers.contains_key(header::PRAGMA)
        || headers.contains_key(header::SET_COOKIE)
    {
        return None;
    }
    let mut values = headers.get_all(header::CACHE_CONTROL).iter();
    let text = values.next()?.to_str().ok()?;
    if values.next().is_some() {
        return None;
    }
    let (mut max_age, mut s_maxage, mut seen) = (None, None, 0u8);
    for item in text.split(',') {
        let item = item.trim_matches([' ', '\t']);
        let (name, arg) = match item.split_once('=') {
            Some((name, arg)) => (name, Some(arg)),
            None => (item, None),
        };
        let digits = |arg: Option<&str>| {
            arg.filter(|a| !a.is_empty() && a.len() <= 10 && a.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|a| a.parse::<u64>().ok())
                .filter(|n| *n <= cachette_core::MAX_DELTA.as_secs())
        };
        let bit = match name {
            "max-age" => {
                max_age = Some(digits(arg)?);
                1
            }
            "s-maxage" => {
                s_maxage = Some(digits(arg)?);
                2
            }
            "stale-while-revalidate" => {
                digits(arg)?;
                4
            }
            "stale-if-error" => {
                digits(arg)?;
                8
            }
            "public" if arg.is_none() => 16,
            "must-revalidate" if arg.is_none() => 32,
            _ => return None,
        };
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
    }
    let seconds = s_maxage.or(max_age)?;
    Some((Duration::ZERO, Duration::from_secs(seconds)))
}

/// The freshness by http-cache-semantics, after applying the layer's TTL
/// override or default to the directives: `(header age, lifetime)`.
#[allow(clippy::too_many_arguments)]
fn library_lifetime(
    config: &Config,
    request: &request::Parts,
    status: StatusCode,
    headers: &HeaderMap,
    cc: &mut Directives,
    targeted: bool,
    explicit_freshness: bool,
    now: SystemTime,
) -> Result<(Duration, Duration), NotStorable> {
    let mut policy_headers = headers.clone();
    policy_headers.remove(header::SET_COOKIE);
    if targeted {
        // A targeted field replaces Cache-Control and Expires for this cache.
        policy_headers.remove(header::EXPIRES);
        policy_headers.remove(header::PRAGMA);
    }
    if let Some(ttl) = config.ttl_override {
        cc.remove(&["max-age", "s-maxage", "no-cache"]);
        cc.push("s-maxage", Some(ttl.as_secs().to_string()));
        policy_headers.remove(header::EXPIRES);
        policy_headers.remove(header::PRAGMA);
    } else if let Some(ttl) = config.default_ttl {
        let explicit = cc.has("max-age")
            || cc.has("s-maxage")
            || cc.has("no-cache")
            || policy_headers.contains_key(header::EXPIRES);
        if !explicit {
            cc.push("s-maxage", Some(ttl.as_secs().to_string()));
        }
    }
    match cc.to_header().filter(|_| !cc.is_empty()) {
        Some(value) => {
            policy_headers.insert(header::CACHE_CONTROL, value);
        }
        None => {
            policy_headers.remove(header::CACHE_CONTROL);
        }
    }

    // RFC 9111 §3: a shared cache may store a response of any final status
    // the origin gave explicit freshness (a 503 with `max-age=5`, a 599...);
    // http-cache-semantics stores only the statuses it knows. Such a status
    // is judged as a 200 would be, with no heuristic freshness.
    let policy_status = if UNDERSTOOD_STATUSES.contains(&status.as_u16()) {
        status
    } else if explicit_freshness {
        StatusCode::OK
    } else {
        return Err("status not storable without explicit freshness");
    };
    let policy = CachePolicy::new_options(
        request,
        &response_parts(policy_status, policy_headers),
        now,
        config.rfc_options,
    );
    if !policy.is_storable() {
        return Err(
            "not storable by RFC 9111 (no-store, private, Authorization, status or method)",
        );
    }
    // RFC 9111 §4.2.3: the initial age is the larger of the Age header and the
    // apparent age (response time minus Date). http-cache-semantics counts only
    // the former, so correct the remaining lifetime here.
    let header_age = policy.age(now).min(cachette_core::MAX_DELTA);
    let lifetime = policy
        .time_to_live(now)
        .min(cachette_core::MAX_DELTA)
        .saturating_add(header_age);
    Ok((header_age, lifetime))
}

/// Applies a `304 Not Modified` from the origin to a stale stored response
/// (RFC 9111 §4.3.4): returns the updated response and its new metadata, or
/// `None` when the 304 does not match the stored validators.
pub(crate) fn revalidated(
    config: &Config,
    request: &request::Parts,
    stored: &StoredResponse,
    old_meta: &EntryMeta,
    not_modified: &HeaderMap,
    now: SystemTime,
) -> Option<Storable> {
    let old_policy = CachePolicy::new_options(
        request,
        &response_parts(stored.status, stored.headers.clone()),
        old_meta.stored_at,
        config.rfc_options,
    );
    let http_cache_semantics::AfterResponse::NotModified(_, parts) = old_policy.after_response(
        request,
        &response_parts(StatusCode::NOT_MODIFIED, not_modified.clone()),
        now,
    ) else {
        return None;
    };
    let mut merged = parts.headers;
    // The library's cached view adds a computed Age and may drop fields; keep
    // the stored fields it did not replace.
    merged.remove(header::AGE);
    for (name, value) in &stored.headers {
        if !merged.contains_key(name) {
            merged.insert(name.clone(), value.clone());
        }
    }
    let mut updated = evaluate(config, request, stored.status, &merged, now)
        .ok()?
        .with_body(stored.body.clone());
    // The tag fields were consumed when the response was stored (they are
    // not kept in its headers): its tags carry over, with any the 304 adds.
    // (A URL's variants tag is added again by the store.)
    let mut tags = updated.meta.tags.clone();
    tags.extend(
        old_meta
            .tags
            .iter()
            .filter(|t| !cachette_core::is_variants_tag(t))
            .cloned(),
    );
    tags.sort();
    tags.dedup();
    updated.meta = updated.meta.with_tags(tags);
    Some(updated)
}

#[cfg(test)]
mod properties {
    #![allow(clippy::unwrap_used)]

    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use cachette_core::Entry;
    use http::{HeaderMap, HeaderValue, StatusCode, header};
    use proptest::prelude::*;

    use super::{evaluate, fast_lifetime, library_lifetime, revalidated};
    use crate::Config;
    use crate::directives::Directives;

    /// Header values as hostile origins write them: huge and negative
    /// numbers, lists, junk, dates of every form.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            "[0-9]{1,40}",
            "-[0-9]{1,20}",
            "[0-9]{1,25}, [0-9]{1,25}",
            "[ -~]{0,40}",
            (0u64..=u64::MAX).prop_map(|s| httpdate::fmt_http_date(
                UNIX_EPOCH + Duration::from_secs(s % 253_402_300_799)
            )),
        ]
    }

    fn directives() -> impl Strategy<Value = String> {
        let directive = prop_oneof![
            value().prop_map(|v| format!("max-age={v}")),
            value().prop_map(|v| format!("s-maxage={v}")),
            value().prop_map(|v| format!("stale-while-revalidate={v}")),
            value().prop_map(|v| format!("stale-if-error={v}")),
            Just("must-revalidate".to_owned()),
            Just("public".to_owned()),
            Just("no-cache".to_owned()),
        ];
        proptest::collection::vec(directive, 0..4).prop_map(|d| d.join(", "))
    }

    proptest! {
        #[test]
        fn no_header_value_makes_the_policy_or_an_entry_panic(
            age in value(),
            cc in directives(),
            cdn in directives(),
            expires in value(),
            date in value(),
            later in 0u64..=u64::MAX,
        ) {
            let mut headers = HeaderMap::new();
            for (name, text) in [
                (header::AGE, &age),
                (header::CACHE_CONTROL, &cc),
                (header::EXPIRES, &expires),
                (header::DATE, &date),
            ] {
                if let Ok(v) = HeaderValue::from_str(text) {
                    headers.insert(name, v);
                }
            }
            if let Ok(v) = HeaderValue::from_str(&cdn) {
                headers.insert("cdn-cache-control", v);
            }
            headers.insert(header::ETAG, HeaderValue::from_static("\"v\""));
            let config = Config::default();
            let (request, ()) = http::Request::get("http://h/p").body(()).unwrap().into_parts();
            let now = SystemTime::now();
            if let Ok(storable) = evaluate(&config, &request, StatusCode::OK, &headers, now) {
                let entry = Entry::response(storable.response.clone(), storable.meta.clone());
                for offset in [0, 1, later % (1 << 40), later] {
                    let then = now.checked_add(Duration::from_secs(offset)).unwrap_or(now);
                    let _ = entry.age(then);
                    let _ = entry.remaining_ttl(then);
                    let _ = entry.freshness(then);
                }
                let _ = revalidated(&config, &request, &storable.response, &storable.meta, &headers, now);
            }
        }
    }

    /// Directives as the common origin writes them (what the fast path
    /// takes), and near misses it must leave to the library.
    fn simple_directives() -> impl Strategy<Value = String> {
        let number = prop_oneof![
            0u64..100_000,
            Just(1u64 << 31),
            Just((1u64 << 31) + 1),
            Just(99_999_999_999u64)
        ];
        let directive = prop_oneof![
            number.clone().prop_map(|n| format!("max-age={n}")),
            number.clone().prop_map(|n| format!("s-maxage={n}")),
            number
                .clone()
                .prop_map(|n| format!("stale-while-revalidate={n}")),
            number.prop_map(|n| format!("stale-if-error={n}")),
            Just("public".to_owned()),
            Just("must-revalidate".to_owned()),
            Just("proxy-revalidate".to_owned()),
            Just("no-cache".to_owned()),
            Just("private".to_owned()),
            Just("immutable".to_owned()),
            Just("max-age=\"5\"".to_owned()),
            Just("max-age = 5".to_owned()),
            Just("Max-Age=5".to_owned()),
            Just("max-age=".to_owned()),
        ];
        (
            proptest::collection::vec(directive, 0..4),
            prop_oneof![Just(", "), Just(","), Just(" , ")],
        )
            .prop_map(|(d, sep)| d.join(sep))
    }

    proptest! {
        #[test]
        fn the_fast_path_agrees_with_http_cache_semantics(
            cc in simple_directives(),
            date in proptest::option::of(0u64..120),
            etag in any::<bool>(),
            default_ttl in proptest::option::of(1u64..1000),
            authorization in any::<bool>(),
            head in any::<bool>(),
        ) {
            let mut headers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&cc) {
                headers.insert(header::CACHE_CONTROL, v);
            }
            let now = SystemTime::now();
            if let Some(ago) = date {
                let at = now.checked_sub(Duration::from_secs(ago)).unwrap_or(now);
                headers.insert(header::DATE, HeaderValue::from_str(&httpdate::fmt_http_date(at)).unwrap());
            }
            if etag {
                headers.insert(header::ETAG, HeaderValue::from_static("\"v\""));
            }
            let config = Config {
                default_ttl: default_ttl.map(Duration::from_secs),
                ..Config::default()
            };
            let mut request = if head { http::Request::head("http://h/p") } else { http::Request::get("http://h/p") };
            if authorization {
                request = request.header(header::AUTHORIZATION, "Bearer x");
            }
            let (request, ()) = request.body(()).unwrap().into_parts();
            if let Some(fast) = fast_lifetime(&config, &request, StatusCode::OK, &headers, false) {
                let mut cc = Directives::parse(headers.get_all(header::CACHE_CONTROL));
                let explicit = cc.has("max-age") || cc.has("s-maxage") || headers.contains_key(header::EXPIRES);
                let library = library_lifetime(&config, &request, StatusCode::OK, &headers, &mut cc, false, explicit, now);
                prop_assert_eq!(Ok(fast), library, "{}", cc_text(&headers));
            }
        }
    }

    fn cc_text(headers: &HeaderMap) -> String {
        headers
            .get(header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    }

    #[test]
    fn the_fast_path_takes_the_common_responses_and_leaves_the_rest() {
        let config = Config::default();
        let (request, ()) = http::Request::get("http://h/p")
            .body(())
            .unwrap()
            .into_parts();
        let fast = |cc: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_str(cc).unwrap());
            fast_lifetime(&config, &request, StatusCode::OK, &headers, false)
                .map(|(_, l)| l.as_secs())
        };
        assert_eq!(fast("max-age=15"), Some(15));
        assert_eq!(
            fast("public, max-age=60, stale-while-revalidate=30"),
            Some(60)
        );
        assert_eq!(fast("s-maxage=10, max-age=5, must-revalidate"), Some(10));
        for other in [
            "private, max-age=5",
            "no-cache",
            "max-age=\"5\"",
            "max-age=5, max-age=6",
            "proxy-revalidate, max-age=5",
            "public",
            "max-age=99999999999",
        ] {
            assert_eq!(fast(other), None, "{other}");
        }
    }

    #[test]
    fn a_response_near_the_field_limit_is_evaluated_without_a_panic() {
        let config = Config::default();
        let (request, ()) = http::Request::get("http://h/p")
            .body(())
            .unwrap()
            .into_parts();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=60"),
        );
        // 25,000 values: room for two more fields cannot be reserved.
        for i in 0..25_000 {
            headers.append(
                http::HeaderName::from_static("x-many"),
                HeaderValue::from_str(&i.to_string()).unwrap(),
            );
        }
        let outcome = evaluate(
            &config,
            &request,
            StatusCode::OK,
            &headers,
            SystemTime::now(),
        )
        .map(|storable| storable.with_body(bytes::Bytes::from_static(b"body")));
        if let Ok(storable) = outcome {
            assert!(storable.response.headers.len() >= 25_000);
        }
    }
}
