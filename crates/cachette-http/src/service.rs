//! [`CacheService`]: the request path through the cache.

use std::{
    fmt,
    future::poll_fn,
    sync::{
        Arc, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use cachette_core::{
    CacheKey, Entry, EntryMeta, FirstTier, FleetFill, Freshness, LeaseEnd, Payload, Role,
    ServingFields, StoredResponse, Tiered,
};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, header, request,
};
use http_body::Body;
use tower_service::Service;

use crate::{
    CacheBody, CacheLayer, KeyOptions,
    body::{Collected, Uncached, collect_limited},
    conditional::{CONDITIONAL_REQUEST_HEADERS, NOT_MODIFIED_HEADERS, is_not_modified},
    future::ResponseFuture,
    policy::{self, Storable},
    status::{CACHE_STATUS, CacheStatus, Forward},
};

/// A stored origin result that coalesced requests can be answered from.
#[derive(Debug, Clone)]
pub(crate) struct Filled {
    entry: Arc<Entry>,
    /// The `Vary` names and the second-level key the entry was stored under.
    variant: Option<(Vec<HeaderName>, CacheKey)>,
    /// Served stale because the origin failed (stale-if-error).
    stale: bool,
    fwd_status: Option<u16>,
    /// Every tier took the write (none failed or journaled it): other nodes
    /// can read it from the shared tier now.
    written: bool,
}

/// What a node's fill leaves for the requests waiting on it.
#[derive(Debug, Clone)]
pub(crate) enum Shared {
    /// A result to answer from, when it fits the request.
    Entry(Filled),
    /// Nothing to share: each waiting request calls the origin, storing
    /// what it may.
    Alone,
    /// Another node's fill is late: each waiting request calls the origin
    /// and stores nothing over what that fill will store.
    AloneUnstored,
}

impl From<Option<Filled>> for Shared {
    fn from(filled: Option<Filled>) -> Self {
        filled.map_or(Self::Alone, Self::Entry)
    }
}

/// The service made by [`CacheLayer`]: answers GET and HEAD from the cache,
/// fills it from the inner service, and invalidates on unsafe methods.
pub struct CacheService<S> {
    inner: S,
    state: Arc<CacheLayer>,
}

impl<S: Clone> Clone for CacheService<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            state: self.state.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for CacheService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheService")
            .field("inner", &self.inner)
            .field("layer", &self.state)
            .finish()
    }
}

impl<S> CacheService<S> {
    pub(crate) fn new(inner: S, layer: CacheLayer) -> Self {
        Self {
            inner,
            state: Arc::new(layer),
        }
    }

    /// The cache this service stores into.
    pub fn cache(&self) -> &Tiered {
        &self.state.cache
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CacheService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: fmt::Display + Send + 'static,
    ReqBody: Default + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: fmt::Display + Send,
{
    type Response = Response<CacheBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let first_tier_missed = match fresh_hit_now(&self.state, &request) {
            Now::Served(response) => return ResponseFuture::ready(Ok(response)),
            Now::Missed => true,
            Now::Declined => false,
        };
        // The ready service handles this request; the clone waits for the next.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(handle(
            inner,
            self.state.clone(),
            request,
            first_tier_missed,
        ))
    }
}

/// A fresh hit answered in [`Service::call`] itself: the common case of a
/// `GET` or `HEAD` whose stored response is in an in-process first tier
/// and fresh. No future is boxed, no state machine is moved, the inner
/// service is not cloned. `None`: anything else (a miss, a stale or
/// `Vary`-marked entry, a request the layer does not simply answer), which
/// [`handle`] takes from the start; nothing has been counted for it (or,
/// when the first tier has nothing for the key, [`Now::Missed`]: counted as
/// its miss, and `handle` looks below it only).
///
/// The checks are [`handle`]'s, in its order, for the requests it answers
/// with a fresh hit; requests it would treat in any other way fall back.
fn fresh_hit_now<ReqBody, ResBody>(
    layer: &CacheLayer,
    request: &Request<ReqBody>,
) -> Now<Response<CacheBody<ResBody>>> {
    let method = request.method();
    let head = *method == Method::HEAD;
    // One pass over the request's fields instead of a lookup per rule:
    // most requests carry none of these, and then neither a 304 nor a
    // range is possible, and no field forbids storing or needs
    // authorisation checks.
    let plain = !request
        .headers()
        .keys()
        .any(|name| SERVED_DIFFERENTLY.contains(name));
    if !(head || *method == Method::GET)
        // `unless` is given the request's parts, which only `handle` takes apart.
        || layer.config.unless.is_some()
        || (!plain
            && (request_forbids_store(request.headers())
                || request.headers().contains_key(header::AUTHORIZATION)))
    {
        return Now::Declined;
    }
    let now = SystemTime::now();
    let refresh_ahead = layer.config.refresh_ahead;
    let mut fresh = None;
    let accept = |entry: &Entry| {
        if entry.as_response().is_none() {
            return false;
        }
        let freshness = entry.freshness(now);
        let serve = match freshness {
            Freshness::Fresh { ttl } => {
                !refresh_ahead.is_some_and(|fraction| due_for_refresh(entry, ttl, fraction))
            }
            Freshness::Stale { .. } => false,
        };
        fresh = Some(freshness);
        serve
    };
    // Looked up by the key's text: no key is built for a hit.
    let found = layer.config.keys.with_primary_text(
        method,
        request.uri(),
        request.headers(),
        |key| match layer.cache.get_now_if(key, accept) {
            FirstTier::Hit(hit) => {
                tracing::debug!(cache = layer.cache.name(), key = %key, tier = %hit.tier_name(), outcome = "hit");
                Some(Ok(hit))
            }
            FirstTier::Missed => Some(Err(Now::Missed)),
            FirstTier::Declined => None,
        },
    );
    let hit = match found {
        Some(Ok(hit)) => hit,
        Some(Err(missed)) => return missed,
        None => return Now::Declined,
    };
    // Both hold: `accept` took a stored response and said how fresh.
    let (Some(stored), Some(freshness)) = (hit.entry.as_response(), fresh) else {
        return Now::Declined;
    };
    count(&layer.cache.counters().hits);
    let status = CacheStatus::hit(ttl_seconds(freshness), Some(hit.tier_name()));
    if plain {
        if let Some(fields) = hit.entry.serving_fields() {
            let age = crate::status::age_value(hit.entry.age(now).as_secs());
            return Now::Served(serve_full(layer, stored, fields, head, age, &status));
        }
    }
    Now::Served(serve_entry(
        layer,
        &hit.entry,
        stored,
        request.headers(),
        head,
        now,
        &status,
    ))
}

/// What [`fresh_hit_now`] did with a request.
enum Now<R> {
    /// Answered: a fresh hit.
    Served(R),
    /// The in-process first tier holds nothing for the request's key
    /// (counted): the full path looks below it only, rather than ask it
    /// again (which would count twice and record the miss twice in moka's
    /// policy).
    Missed,
    /// Anything else: the full path from the start; nothing counted.
    Declined,
}

/// Request fields after which a stored response may be answered other than
/// in full (a 304, a range) or not at all from the cache (`no-store`,
/// credentials): see [`fresh_hit_now`].
/// (`If-Range` matters only with `Range`.)
const SERVED_DIFFERENTLY: [HeaderName; 5] = [
    header::CACHE_CONTROL,
    header::AUTHORIZATION,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::RANGE,
];

fn count(counter: &cachette_core::Counter) {
    counter.incr();
}

/// Calls a service that may not have been polled ready.
async fn call_ready<S, Req>(service: &mut S, request: Req) -> Result<S::Response, S::Error>
where
    S: Service<Req>,
{
    poll_fn(|cx| service.poll_ready(cx)).await?;
    service.call(request).await
}

fn with_status<B>(
    mut response: Response<B>,
    layer: &CacheLayer,
    status: &CacheStatus,
) -> Response<B> {
    let _ = response
        .headers_mut()
        .try_append(CACHE_STATUS, status.to_header(&layer.config.status_name));
    response
}

fn plain_response<B>(status: StatusCode, text: &'static str) -> Response<CacheBody<B>> {
    let mut response = Response::new(CacheBody::full(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn origin_response<B>(
    response: Response<B>,
    layer: &CacheLayer,
    status: &CacheStatus,
) -> Response<CacheBody<B>> {
    let (mut parts, body) = response.into_parts();
    for name in &layer.config.strip_fields {
        parts.headers.remove(name);
    }
    with_status(
        Response::from_parts(parts, CacheBody::streaming(body)),
        layer,
        status,
    )
}

/// Builds the response for a stored entry: a `304` when the client's
/// preconditions match, else the stored response (body shared, not copied).
fn serve_entry<B>(
    layer: &CacheLayer,
    entry: &Arc<Entry>,
    stored: &StoredResponse,
    client: &HeaderMap,
    head: bool,
    now: SystemTime,
    status: &CacheStatus,
) -> Response<CacheBody<B>> {
    let age = crate::status::age_value(entry.age(now).as_secs());
    let mut response = if stored.status.is_success() && is_not_modified(client, stored) {
        let mut response = Response::new(CacheBody::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        let headers = response.headers_mut();
        for name in NOT_MODIFIED_HEADERS {
            for value in stored.headers.get_all(&name) {
                headers.append(name.clone(), value.clone());
            }
        }
        response
    } else {
        let ranged = if head {
            crate::range::Ranged::Full
        } else {
            crate::range::ranged(client, stored)
        };
        if let (crate::range::Ranged::Full, Some(fields)) = (&ranged, entry.serving_fields()) {
            return serve_full(layer, stored, fields, head, age, status);
        }
        let body = match ranged {
            _ if head => CacheBody::empty(),
            crate::range::Ranged::Full => CacheBody::full(stored.body.clone()),
            crate::range::Ranged::Part { start, end } => {
                CacheBody::full(stored.body.slice(start..=end))
            }
            crate::range::Ranged::Unsatisfiable => CacheBody::empty(),
        };
        let mut response = Response::new(body);
        *response.status_mut() = stored.status;
        // Room for `Age` and `Cache-Status`: a clone of the stored map is
        // exactly full, and growing it costs more than building it.
        let headers = response.headers_mut();
        // (`try_`: a stored map near the 32,768-field limit is served
        // without what does not fit, never a panic.)
        let _ = headers.try_reserve(stored.headers.len().saturating_add(2));
        // An entry held by this request only (read from Redis for it) has
        // values whose reference count no other core takes: cloning them
        // is cheaper than a copy.
        let shared_by_hits = Arc::strong_count(entry) > 1;
        for (name, value) in &stored.headers {
            let value = if shared_by_hits {
                own_copy(value)
            } else {
                value.clone()
            };
            let _ = headers.try_append(name.clone(), value);
        }
        let total = stored.body.len();
        match ranged {
            crate::range::Ranged::Full => {}
            crate::range::Ranged::Part { start, end } => {
                *response.status_mut() = StatusCode::PARTIAL_CONTENT;
                let headers = response.headers_mut();
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start + 1));
                if let Ok(range) = HeaderValue::from_str(&format!("bytes {start}-{end}/{total}")) {
                    headers.insert(header::CONTENT_RANGE, range);
                }
            }
            crate::range::Ranged::Unsatisfiable => {
                *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                let headers = response.headers_mut();
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
                if let Ok(range) = HeaderValue::from_str(&format!("bytes */{total}")) {
                    headers.insert(header::CONTENT_RANGE, range);
                }
            }
        }
        response
    };
    let _ = response.headers_mut().try_insert(header::AGE, age);
    with_status(response, layer, status)
}

/// The common hit: the whole stored response (or its head), its fields
/// built from those laid out once for the entry ([`Entry::serving_fields`]),
/// which a server with many entries reads in a few cache lines rather than
/// a stored map's every bucket.
fn serve_full<B>(
    layer: &CacheLayer,
    stored: &StoredResponse,
    fields: &ServingFields,
    head: bool,
    age: HeaderValue,
    status: &CacheStatus,
) -> Response<CacheBody<B>> {
    let body = if head {
        CacheBody::empty()
    } else {
        CacheBody::full(stored.body.clone())
    };
    let mut response = Response::new(body);
    *response.status_mut() = stored.status;
    *response.headers_mut() = fields.to_map(age, status.to_header(&layer.config.status_name));
    response
}

/// Values up to this size are copied into each response rather than
/// shared: a shared value's reference count is one cache line that every
/// core serving the entry writes twice per hit, and under load that costs
/// more than a small copy from the thread's own allocator.
const COPIED_VALUE_MAX: usize = 128;

fn own_copy(value: &HeaderValue) -> HeaderValue {
    if value.len() <= COPIED_VALUE_MAX {
        if let Ok(copy) = HeaderValue::from_bytes(value.as_bytes()) {
            let mut copy = copy;
            copy.set_sensitive(value.is_sensitive());
            return copy;
        }
    }
    value.clone()
}

fn ttl_seconds(freshness: Freshness) -> i64 {
    match freshness {
        Freshness::Fresh { ttl } => i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
        Freshness::Stale { stale_for, .. } => {
            -i64::try_from(stale_for.as_secs()).unwrap_or(i64::MAX)
        }
    }
}

enum Lookup {
    Found {
        entry: Arc<Entry>,
        tier: &'static str,
        key: CacheKey,
    },
    VaryMiss {
        key: CacheKey,
    },
    Miss,
}

/// `first_tier_missed`: the first tier was asked for `primary` already and
/// holds nothing (see [`fresh_hit_now`]).
async fn lookup(
    cache: &Tiered,
    primary: &CacheKey,
    headers: &HeaderMap,
    first_tier_missed: bool,
) -> Lookup {
    let found = if first_tier_missed {
        cache.get_below_first(primary).await
    } else {
        cache.get(primary).await
    };
    let Some(hit) = found else {
        return Lookup::Miss;
    };
    match hit.entry.payload() {
        Payload::Response(_) => Lookup::Found {
            tier: hit.tier_name(),
            entry: hit.entry,
            key: primary.clone(),
        },
        Payload::Variants(names) => {
            let key = KeyOptions::variant(primary, names, headers);
            match cache.get(&key).await {
                Some(variant) if variant.entry.as_response().is_some() => Lookup::Found {
                    tier: variant.tier_name(),
                    entry: variant.entry,
                    key,
                },
                _ => Lookup::VaryMiss { key },
            }
        }
        // A non-HTTP value under an HTTP key: not ours to serve.
        _ => Lookup::Miss,
    }
}

/// Removes the stored responses for a primary key, every `Vary` variant
/// included: the variants carry the primary's variants tag, so they are
/// found through the tag index (no keyspace sweep, and no need to read the
/// `Variants` marker first, which may be evicted or unreachable).
pub(crate) async fn invalidate_primary(
    cache: &Tiered,
    primary: &CacheKey,
) -> cachette_core::WriteReport {
    let mut report = cache.delete(primary).await;
    report.merge(
        cache
            .invalidate_tag(&cachette_core::variants_tag(primary))
            .await,
    );
    report
}

/// Whether the request forbids storing (`Cache-Control: no-store`).
fn request_forbids_store(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case("no-store"))
}

async fn handle<S, ReqBody, ResBody>(
    inner: S,
    state: Arc<CacheLayer>,
    request: Request<ReqBody>,
    first_tier_missed: bool,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: fmt::Display + Send + 'static,
    ReqBody: Default + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: fmt::Display + Send,
{
    let layer = &*state;
    let counters = layer.cache.counters();
    let method = request.method().clone();
    if method != Method::GET && method != Method::HEAD {
        return Box::pin(pass_and_invalidate(inner, &state, request)).await;
    }
    let (parts, body) = request.into_parts();
    let bypass = layer
        .config
        .unless
        .as_ref()
        .is_some_and(|unless| unless(&parts));
    if bypass || request_forbids_store(&parts.headers) {
        count(&counters.bypassed);
        let fwd = if bypass {
            Forward::Bypass
        } else {
            Forward::Request
        };
        return Box::pin(pass_through(
            inner,
            state,
            Request::from_parts(parts, body),
            fwd,
        ))
        .await;
    }

    let now = SystemTime::now();
    let head = method == Method::HEAD;
    let primary = layer
        .config
        .keys
        .primary(&method, &parts.uri, &parts.headers);
    let authorized = parts.headers.contains_key(header::AUTHORIZATION);
    let (fwd, fill_key, stale) = match lookup(
        &layer.cache,
        &primary,
        &parts.headers,
        first_tier_missed,
    )
    .await
    {
        Lookup::Found { entry, tier, key } => {
            let Some(stored) = entry.as_response() else {
                return Ok(plain_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "unreachable",
                ));
            };
            if authorized && !policy::allows_authorized(&layer.config, stored) {
                // Stored for anonymous use; this authenticated request goes to the origin.
                count(&counters.bypassed);
                let request = Request::from_parts(parts, body);
                return Box::pin(pass_through(inner, state, request, Forward::Request)).await;
            }
            let freshness = entry.freshness(now);
            match freshness {
                Freshness::Fresh { ttl } => {
                    count(&counters.hits);
                    tracing::debug!(cache = layer.cache.name(), key = %primary, tier = %tier, outcome = "hit");
                    let status = CacheStatus::hit(ttl_seconds(freshness), Some(tier));
                    let response =
                        serve_entry(layer, &entry, stored, &parts.headers, head, now, &status);
                    if layer
                        .config
                        .refresh_ahead
                        .is_some_and(|fraction| due_for_refresh(&entry, ttl, fraction))
                    {
                        spawn_refresh(inner, state.clone(), parts, primary, key, entry);
                    }
                    return Ok(response);
                }
                Freshness::Stale {
                    within_stale_while_revalidate: true,
                    ..
                } => {
                    count(&counters.stale_served);
                    tracing::debug!(cache = layer.cache.name(), key = %primary, tier = %tier, outcome = "stale-while-revalidate");
                    let mut status = CacheStatus::hit(ttl_seconds(freshness), Some(tier));
                    status.detail = Some("stale-while-revalidate");
                    let response =
                        serve_entry(layer, &entry, stored, &parts.headers, head, now, &status);
                    spawn_refresh(inner, state.clone(), parts, primary, key, entry);
                    return Ok(response);
                }
                Freshness::Stale { .. } => (Forward::Stale, key, Some(entry)),
            }
        }
        Lookup::VaryMiss { key } => (Forward::VaryMiss, key, None),
        Lookup::Miss => (Forward::Miss, primary.clone(), None),
    };

    // Everything past a hit runs in its own boxed future: the state of the
    // origin call, coalescing and storing is large, and the hit path should
    // not allocate and move it for every request.
    Box::pin(forward(
        inner, state, parts, body, primary, authorized, head, fwd, fill_key, stale,
    ))
    .await
}

/// Forwards a request the cache does not answer, untouched (boxed, as
/// [`forward`], to keep the hit path's future small).
async fn pass_through<S, ReqBody, ResBody>(
    mut inner: S,
    state: Arc<CacheLayer>,
    request: Request<ReqBody>,
    fwd: Forward,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    let response = call_ready(&mut inner, request).await?;
    Ok(origin_response(
        response,
        &state,
        &CacheStatus::forward(fwd),
    ))
}

/// The request path after the lookup found no fresh entry: the origin call
/// (coalesced), revalidation, storing, stale-if-error.
#[allow(clippy::too_many_arguments)]
async fn forward<S, ReqBody, ResBody>(
    inner: S,
    state: Arc<CacheLayer>,
    parts: request::Parts,
    body: ReqBody,
    primary: CacheKey,
    authorized: bool,
    head: bool,
    fwd: Forward,
    fill_key: CacheKey,
    stale: Option<Arc<Entry>>,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: fmt::Display + Send + 'static,
    ReqBody: Default + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: fmt::Display + Send,
{
    let layer = &*state;
    let counters = layer.cache.counters();
    if head {
        // A HEAD response has no body to store: forward it as is.
        count(&counters.misses);
        return pass_through(inner, state, Request::from_parts(parts, body), fwd).await;
    }
    let soft = layer.config.soft_timeout.and_then(|soft| {
        let entry = stale.as_ref()?;
        (!entry.meta().must_revalidate && entry.as_response().is_some())
            .then(|| (soft, entry.clone()))
    });
    if soft.is_some() || layer.config.fleet.is_some() {
        return detached(
            inner, state, parts, body, primary, authorized, fwd, fill_key, stale, soft,
        )
        .await;
    }
    fill(
        inner, state, parts, body, primary, authorized, fwd, fill_key, stale, None,
    )
    .await
}

/// [`fill`] in a task of its own, so that it no longer depends on this
/// request: a client that hangs up does not stop a fill other nodes wait
/// on (fleet coalescing). With a soft timeout and a stale entry, the fill
/// is raced with the timeout: past it, the stale entry is served and the
/// fill goes on to update the cache.
#[allow(clippy::too_many_arguments)]
async fn detached<S, ReqBody, ResBody>(
    inner: S,
    state: Arc<CacheLayer>,
    parts: request::Parts,
    body: ReqBody,
    primary: CacheKey,
    authorized: bool,
    fwd: Forward,
    fill_key: CacheKey,
    stale: Option<Arc<Entry>>,
    soft: Option<(Duration, Arc<Entry>)>,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: fmt::Display + Send + 'static,
    ReqBody: Default + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: fmt::Display + Send,
{
    let client = soft.as_ref().map(|_| parts.headers.clone());
    let leading = Arc::new(AtomicBool::new(false));
    let mut task = AbortUnlessLeading {
        task: tokio::spawn(fill(
            inner,
            state.clone(),
            parts,
            body,
            primary.clone(),
            authorized,
            fwd,
            fill_key,
            stale,
            Some(leading.clone()),
        )),
        leading,
    };
    let lost = || {
        Ok(plain_response(
            StatusCode::BAD_GATEWAY,
            "origin call was lost\n",
        ))
    };
    let (Some((soft, entry)), Some(client)) = (soft, client) else {
        return (&mut task.task).await.unwrap_or_else(|_| lost());
    };
    match tokio::time::timeout(soft, &mut task.task).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => lost(),
        Err(_) => {
            // The task is detached, not cancelled: it stores what it gets.
            let layer = &*state;
            count(&layer.cache.counters().stale_served);
            tracing::debug!(key = %primary, timeout = ?soft, "origin slower than the soft timeout; stale entry served, fill continues");
            let Some(stored) = entry.as_response() else {
                return Ok(plain_response(StatusCode::BAD_GATEWAY, "unreachable\n"));
            };
            let now = SystemTime::now();
            let mut status = CacheStatus::forward(Forward::Stale);
            status.detail = Some("soft-timeout");
            Ok(serve_entry(
                layer, &entry, stored, &client, false, now, &status,
            ))
        }
    }
}

/// A request's fill task: aborted when the request goes (its client hung
/// up, or it was answered stale on the soft timeout), unless it is the
/// node's leader for the key, whose fill others wait on and which must
/// finish to store its result.
struct AbortUnlessLeading<T> {
    task: tokio::task::JoinHandle<T>,
    leading: Arc<AtomicBool>,
}

impl<T> Drop for AbortUnlessLeading<T> {
    fn drop(&mut self) {
        if !self.leading.load(Ordering::Acquire) {
            self.task.abort();
        }
    }
}

/// The origin call for a key, coalesced per node and, with fleet
/// coalescing, across nodes. `leading` (when the call runs in its own
/// task) is raised while this request's fill is the one others wait on.
#[allow(clippy::too_many_arguments)]
async fn fill<S, ReqBody, ResBody>(
    inner: S,
    state: Arc<CacheLayer>,
    parts: request::Parts,
    body: ReqBody,
    primary: CacheKey,
    authorized: bool,
    fwd: Forward,
    fill_key: CacheKey,
    stale: Option<Arc<Entry>>,
    leading: Option<Arc<AtomicBool>>,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: fmt::Display + Send + 'static,
    ReqBody: Default + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: fmt::Display + Send,
{
    let layer = &*state;
    let counters = layer.cache.counters();
    count(&counters.misses);
    tracing::debug!(cache = layer.cache.name(), key = %primary, outcome = fwd.as_str());
    let hit_for_miss = layer.flights.is_uncacheable(&primary);
    if hit_for_miss {
        // The last response was not storable: nothing to wait for.
        count(&counters.hit_for_miss);
    }
    if !layer.config.coalesce || authorized || hit_for_miss {
        let (response, _) =
            Box::pin(fetch(inner, layer, parts, body, &primary, stale, fwd, true)).await;
        return response;
    }

    // Coalesce: one origin call per key; the others wait for its result.
    let mut leader_request = Some((inner, parts, body));
    let mut own_response = None;
    let flight = layer
        .flights
        .fills
        .run_or_give_up(&fill_key, layer.config.lock_timeout, || async {
            let Some((inner, parts, body)) = leader_request.take() else {
                return Shared::Alone;
            };
            if let Some(leading) = &leading {
                leading.store(true, Ordering::Release);
            }
            let mut lease = None;
            if let Some(options) = layer.config.fleet {
                match layer.cache.fleet_fill(&fill_key, options).await {
                    FleetFill::Lead(held) => lease = Some(held),
                    FleetFill::Filled => {
                        if let Some(filled) =
                            filled_elsewhere(layer, &primary, &parts.headers).await
                        {
                            // Served from it below, as every request here.
                            leader_request = Some((inner, parts, body));
                            return Shared::Entry(filled);
                        }
                        // Gone already (purged, another variant): fill here.
                    }
                    FleetFill::Unstorable => {
                        // Nothing to share: every request here goes to the
                        // origin now, in parallel (hit-for-miss).
                        layer
                            .flights
                            .mark_uncacheable(&primary, layer.config.hit_for_miss);
                        leader_request = Some((inner, parts, body));
                        return Shared::Alone;
                    }
                    FleetFill::TimedOut => {
                        // Another node's fill is late: every request here
                        // makes its own call, not stored over what that
                        // fill will store.
                        leader_request = Some((inner, parts, body));
                        return Shared::AloneUnstored;
                    }
                    FleetFill::Unavailable => {}
                }
            }
            let fetched = Box::pin(fetch(
                inner,
                layer,
                parts,
                body,
                &primary,
                stale.clone(),
                fwd,
                true,
            ));
            let (response, filled) = under_lease(layer, &primary, lease, fetched).await;
            own_response = Some(response);
            Shared::from(filled)
        })
        .await;
    if let Some(leading) = &leading {
        // Nobody waits on this request any more.
        leading.store(false, Ordering::Release);
    }
    let Some((shared, role)) = flight else {
        // Another request's origin call for this key has not finished within
        // the lock timeout: go to the origin ourselves, without storing (the
        // stuck fill, if it ever finishes, stores its own result).
        tracing::debug!(key = %primary, "coalesced fill took longer than the lock timeout; own uncached origin call");
        let Some((inner, parts, body)) = leader_request.take() else {
            return Ok(plain_response(
                StatusCode::BAD_GATEWAY,
                "origin call was lost\n",
            ));
        };
        let (response, _) = Box::pin(fetch(
            inner, layer, parts, body, &primary, stale, fwd, false,
        ))
        .await;
        return response;
    };
    if role == Role::Leader {
        if let Some(response) = own_response {
            return response;
        }
    }
    let now = SystemTime::now();
    let storing = !matches!(shared, Shared::AloneUnstored);
    // Here the request is still this caller's own: a follower's was never
    // taken, and a leader's is given back by every branch that returns
    // without its own response (no copy of its fields is made per miss).
    let Some((inner, parts, body)) = leader_request.take() else {
        return Ok(plain_response(
            StatusCode::BAD_GATEWAY,
            "origin call was lost\n",
        ));
    };
    let client_headers = &parts.headers;
    if let Shared::Entry(filled) = shared {
        let matches = match &filled.variant {
            None => true,
            Some((names, key)) => KeyOptions::variant(&primary, names, client_headers) == *key,
        };
        if let (true, Some(stored)) = (matches, filled.entry.as_response()) {
            let mut status = if filled.stale {
                let mut status = CacheStatus::forward(Forward::Stale);
                status.fwd_status = filled.fwd_status;
                status.detail = Some("stale-if-error");
                status
            } else {
                CacheStatus::hit(ttl_seconds(filled.entry.freshness(now)), None)
            };
            status.collapsed = true;
            count(&counters.coalesced);
            return Ok(serve_entry(
                layer,
                &filled.entry,
                stored,
                client_headers,
                false,
                now,
                &status,
            ));
        }
    }
    // The shared result does not fit this request (not storable, other
    // variant, origin error), or another node's fill is late: make our own
    // origin call.
    let (response, _) = Box::pin(fetch(
        inner, layer, parts, body, &primary, stale, fwd, storing,
    ))
    .await;
    response
}

/// Runs an origin call under the fleet lease, if this node holds one, and
/// ends the lease with its outcome: a fresh result stored on every tier is
/// shared; one that is not storable (or not fresh: nothing to share) sends
/// the waiters to the origin at once; an error, a stale-if-error answer or
/// a failed write gives the lease up, so that the next node tries (an
/// outage is not "unstorable content": coalescing stays on through it).
/// The end is sent in the background: the answer does not wait on Redis.
async fn under_lease<B, E>(
    layer: &CacheLayer,
    primary: &CacheKey,
    lease: Option<cachette_core::FillLease>,
    fetched: impl std::future::Future<Output = Fetched<B, E>>,
) -> Fetched<B, E> {
    let Some(mut lease) = lease else {
        return fetched.await;
    };
    let (response, filled) = lease.hold(fetched).await;
    let now = SystemTime::now();
    let end = match &filled {
        Some(f) if !f.stale && !matches!(f.entry.freshness(now), Freshness::Fresh { .. }) => {
            LeaseEnd::Unstorable
        }
        Some(f) if !f.stale && f.written => LeaseEnd::Filled,
        _ if layer.flights.is_uncacheable(primary) => LeaseEnd::Unstorable,
        _ => LeaseEnd::Abandoned,
    };
    tokio::spawn(lease.end(end));
    (response, filled)
}

/// What another node stored for `primary` (and this request's variant),
/// read from the shared tier and copied into this node's tiers; `None` when
/// nothing fresh is there.
async fn filled_elsewhere(
    layer: &CacheLayer,
    primary: &CacheKey,
    client: &HeaderMap,
) -> Option<Filled> {
    let now = SystemTime::now();
    let found = layer.cache.get_shared(primary).await?;
    let (entry, variant) = match found.payload() {
        Payload::Response(_) => (found, None),
        Payload::Variants(names) => {
            let key = KeyOptions::variant(primary, names, client);
            let entry = layer.cache.get_shared(&key).await?;
            (entry, Some((names.clone(), key)))
        }
        _ => return None,
    };
    if entry.as_response().is_none() || !matches!(entry.freshness(now), Freshness::Fresh { .. }) {
        return None;
    }
    Some(Filled {
        entry,
        variant,
        stale: false,
        fwd_status: None,
        written: true,
    })
}

/// An origin body that failed midway (`502`) or stalled (`504`): the stale
/// entry if its stale-if-error window allows it, else the error.
fn body_failure<B, E>(
    layer: &CacheLayer,
    stale: Option<&Arc<Entry>>,
    client: &HeaderMap,
    mut status: CacheStatus,
    code: StatusCode,
) -> Fetched<B, E> {
    if let Some((response, filled)) = stale_if_error(layer, stale, client, Some(code.as_u16())) {
        return (Ok(response), Some(filled));
    }
    status.fwd_status = Some(code.as_u16());
    let text = if code == StatusCode::GATEWAY_TIMEOUT {
        "origin body timed out\n"
    } else {
        "origin response failed\n"
    };
    let response = with_status(plain_response(code, text), layer, &status);
    (Ok(response), None)
}

/// Serves `stale` if its stale-if-error window allows it.
fn stale_if_error<B>(
    layer: &CacheLayer,
    stale: Option<&Arc<Entry>>,
    client: &HeaderMap,
    fwd_status: Option<u16>,
) -> Option<(Response<CacheBody<B>>, Filled)> {
    let entry = stale?;
    let stored = entry.as_response()?;
    let now = SystemTime::now();
    let Freshness::Stale {
        within_stale_if_error: true,
        ..
    } = entry.freshness(now)
    else {
        return None;
    };
    count(&layer.cache.counters().stale_served);
    let mut status = CacheStatus::forward(Forward::Stale);
    status.fwd_status = fwd_status;
    status.detail = Some("stale-if-error");
    let response = serve_entry(layer, entry, stored, client, false, now, &status);
    let filled = Filled {
        entry: entry.clone(),
        variant: None,
        stale: true,
        fwd_status,
        written: false,
    };
    Some((response, filled))
}

type Fetched<B, E> = (Result<Response<CacheBody<B>>, E>, Option<Filled>);

/// One origin call for a cacheable GET: revalidates `stale` when it has
/// validators, stores what may be stored (unless `storing` is false: then the
/// answer streams through), and falls back to stale on errors. The head and
/// the body read for storing are bounded by `fill_timeout` together, and each
/// body chunk by `body_idle_timeout`.
#[allow(clippy::too_many_arguments)]
async fn fetch<S, ReqBody, ResBody>(
    inner: S,
    layer: &CacheLayer,
    parts: request::Parts,
    body: ReqBody,
    primary: &CacheKey,
    stale: Option<Arc<Entry>>,
    fwd: Forward,
    storing: bool,
) -> Fetched<ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: fmt::Display,
    ReqBody: Default,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: fmt::Display,
{
    fetch_once(
        inner, layer, parts, body, primary, stale, fwd, storing, true,
    )
    .await
}

/// [`fetch`]; `revalidate` says whether a stale entry's validators are sent.
/// A `304` that cannot be applied to the stored response (it does not match
/// its validators, or the merged response is not storable) is not passed
/// on: the client did not ask conditionally (RFC 9111 §4.3.3, §4.3.4); the
/// call is made once more without validators.
#[allow(clippy::too_many_arguments)]
async fn fetch_once<S, ReqBody, ResBody>(
    mut inner: S,
    layer: &CacheLayer,
    mut parts: request::Parts,
    body: ReqBody,
    primary: &CacheKey,
    stale: Option<Arc<Entry>>,
    fwd: Forward,
    storing: bool,
    revalidate: bool,
) -> Fetched<ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: fmt::Display,
    ReqBody: Default,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: fmt::Display,
{
    let config = &*layer.config;
    let counters = layer.cache.counters();
    let client = std::mem::take(&mut parts.headers);
    let mut origin_headers = client.clone();
    for name in CONDITIONAL_REQUEST_HEADERS {
        origin_headers.remove(name);
    }
    // The whole response is fetched to be stored, and ranges answered from
    // it; a URL known not to be storable (too large, private...) gets the
    // client's Range passed on.
    let whole = storing && !layer.flights.is_uncacheable(primary);
    if whole {
        origin_headers.remove(header::RANGE);
    }
    // Revalidate only what this call may store again.
    let stale_stored = stale
        .as_ref()
        .and_then(|e| e.as_response())
        .filter(|_| storing && revalidate);
    if let Some(stored) = stale_stored {
        if let Some(etag) = stored.etag() {
            origin_headers.insert(header::IF_NONE_MATCH, etag.clone());
        }
        if let Some(modified) = stored.last_modified() {
            origin_headers.insert(header::IF_MODIFIED_SINCE, modified.clone());
        }
    }
    parts.headers = origin_headers;
    let head = parts.clone();
    let deadline = tokio::time::Instant::now() + config.fill_timeout;
    let call = call_ready(&mut inner, Request::from_parts(parts, body));
    let limit = config
        .origin_timeout
        .map_or(config.fill_timeout, |t| t.min(config.fill_timeout));
    let outcome = tokio::time::timeout(limit, call).await.map_err(|_| limit);
    let response = match outcome {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            count(&counters.origin_errors);
            tracing::warn!(key = %primary, %error, "origin failed");
            if let Some((response, filled)) = stale_if_error(layer, stale.as_ref(), &client, None) {
                return (Ok(response), Some(filled));
            }
            return (Err(error), None);
        }
        Err(limit) => {
            count(&counters.origin_errors);
            tracing::warn!(key = %primary, timeout = ?limit, "origin timed out");
            if let Some((response, filled)) =
                stale_if_error(layer, stale.as_ref(), &client, Some(504))
            {
                return (Ok(response), Some(filled));
            }
            let mut status = CacheStatus::forward(fwd);
            status.fwd_status = Some(504);
            let response = with_status(
                plain_response(StatusCode::GATEWAY_TIMEOUT, "origin timed out\n"),
                layer,
                &status,
            );
            return (Ok(response), None);
        }
    };
    let now = SystemTime::now();
    let origin_status = response.status();
    let mut status = CacheStatus::forward(fwd);
    status.fwd_status = Some(origin_status.as_u16());

    if origin_status.is_server_error() {
        count(&counters.origin_errors);
        if let Some((response, filled)) =
            stale_if_error(layer, stale.as_ref(), &client, Some(origin_status.as_u16()))
        {
            return (Ok(response), Some(filled));
        }
        // No stale answer allowed: the error itself, stored if the origin
        // gave it explicit freshness (RFC 9111 §3), like any other status.
    }

    if origin_status == StatusCode::NOT_MODIFIED {
        if let (Some(entry), Some(stored)) = (stale.as_ref(), stale_stored) {
            if let Some(updated) =
                policy::revalidated(config, &head, stored, entry.meta(), response.headers(), now)
            {
                count(&counters.revalidated);
                status.stored = true;
                let (entry, filled) =
                    Box::pin(store(layer, primary, updated, &head.headers, Vec::new())).await;
                let filled = Filled {
                    fwd_status: Some(304),
                    ..filled
                };
                let Some(stored) = entry.as_response() else {
                    return (Ok(origin_response(response, layer, &status)), None);
                };
                return (
                    Ok(serve_entry(
                        layer, &entry, stored, &client, false, now, &status,
                    )),
                    Some(filled),
                );
            }
            // A 304 the stored response cannot take: ask again, plainly
            // (the same request without any validator; built only here,
            // a miss does not pay for it).
            tracing::debug!(key = %primary, "a 304 did not validate the stored response; asking again without validators");
            drop(response);
            let mut unconditional = head;
            unconditional.headers = client;
            for name in CONDITIONAL_REQUEST_HEADERS {
                unconditional.headers.remove(name);
            }
            if whole {
                unconditional.headers.remove(header::RANGE);
            }
            return Box::pin(fetch_once(
                inner,
                layer,
                unconditional,
                ReqBody::default(),
                primary,
                stale,
                fwd,
                storing,
                false,
            ))
            .await;
        }
        return (Ok(origin_response(response, layer, &status)), None);
    }

    if !storing {
        status.detail = Some("lock-timeout");
        return (Ok(origin_response(response, layer, &status)), None);
    }
    let (res_parts, res_body) = response.into_parts();
    // Storability depends on the head only: a response that will not be
    // stored streams through at once instead of being buffered first.
    let storable = match policy::evaluate(config, &head, res_parts.status, &res_parts.headers, now)
    {
        Ok(storable) => storable,
        Err(reason) => {
            count(&counters.not_stored);
            // An error is not "unstorable content": coalescing stays on
            // through an outage, which is when it matters most; and a
            // response refused because of this request's credentials says
            // nothing about anonymous requests for the URL.
            if !origin_status.is_server_error() && !client.contains_key(header::AUTHORIZATION) {
                layer.flights.mark_uncacheable(primary, config.hit_for_miss);
            }
            tracing::debug!(key = %primary, reason, "response not stored");
            let response = Response::from_parts(res_parts, res_body);
            return (Ok(origin_response(response, layer, &status)), None);
        }
    };
    match collect_limited(
        res_body,
        config.max_body_bytes,
        config.body_idle_timeout,
        deadline,
        &layer.flights.buffers,
    )
    .await
    {
        Collected::TimedOut => {
            count(&counters.origin_errors);
            tracing::warn!(key = %primary, "origin body stalled (idle timeout)");
            body_failure(
                layer,
                stale.as_ref(),
                &client,
                status,
                StatusCode::GATEWAY_TIMEOUT,
            )
        }
        Collected::Failed(error) => {
            count(&counters.origin_errors);
            tracing::warn!(key = %primary, %error, "origin body failed");
            body_failure(
                layer,
                stale.as_ref(),
                &client,
                status,
                StatusCode::BAD_GATEWAY,
            )
        }
        Collected::TooLarge {
            buffered,
            rest,
            hold,
            why,
        } => {
            count(&counters.not_stored);
            status.detail = Some(match why {
                Uncached::TooLarge => "too-large",
                Uncached::OverBudget => "over-buffer-budget",
                Uncached::TooSlow => "fill-timeout",
            });
            // Too large or too slow will be so again: the next requests go
            // to the origin uncoalesced, with their Range passed on. (A
            // spent budget is other requests' doing: not the URL's.)
            if why != Uncached::OverBudget {
                layer.flights.mark_uncacheable(primary, config.hit_for_miss);
            }
            let mut response =
                Response::from_parts(res_parts, CacheBody::holding(buffered, rest, Some(hold)));
            for name in &config.strip_fields {
                response.headers_mut().remove(name);
            }
            (Ok(with_status(response, layer, &status)), None)
        }
        Collected::Complete(bytes) => {
            count(&counters.stored);
            layer.flights.mark_cacheable(primary);
            status.stored = true;
            let cookies: Vec<HeaderValue> = res_parts
                .headers
                .get_all(header::SET_COOKIE)
                .iter()
                .cloned()
                .collect();
            let storable = storable.with_body(bytes);
            let (entry, filled) = Box::pin(store(
                layer,
                primary,
                storable,
                &head.headers,
                cookies.clone(),
            ))
            .await;
            let Some(stored) = entry.as_response() else {
                return (
                    Ok(plain_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "unreachable\n",
                    )),
                    None,
                );
            };
            let mut response = serve_entry(layer, &entry, stored, &client, false, now, &status);
            for cookie in cookies {
                // The client that caused the store still gets its cookie.
                response.headers_mut().append(header::SET_COOKIE, cookie);
            }
            (Ok(response), Some(filled))
        }
    }
}

/// Writes a storable response: under the primary key, or, when it varies,
/// a `Variants` marker under the primary key and the response under the
/// second-level key selected by the request's headers.
async fn store(
    layer: &CacheLayer,
    primary: &CacheKey,
    storable: Storable,
    request_headers: &HeaderMap,
    _stripped_cookies: Vec<HeaderValue>,
) -> (Arc<Entry>, Filled) {
    let Storable {
        response,
        mut meta,
        vary,
    } = storable;
    if !vary.is_empty() {
        meta.tags.push(cachette_core::variants_tag(primary));
    }
    let entry = Arc::new(Entry::response(response, meta));
    // Taken by every tier now (not failed, not waiting in a journal).
    let written = |report: &cachette_core::WriteReport| {
        report.failed.is_empty() && report.journaled.is_empty()
    };
    if vary.is_empty() {
        let report = layer.cache.set(primary, entry.clone()).await;
        let filled = Filled {
            entry: entry.clone(),
            variant: None,
            stale: false,
            fwd_status: None,
            written: written(&report),
        };
        return (entry, filled);
    }
    let key = KeyOptions::variant(primary, &vary, request_headers);
    // The marker outlives every variant stored before it, so that an
    // invalidation of the URL finds it and removes them all.
    let now = SystemTime::now();
    let marker_until = entry
        .meta()
        .keep_until
        .max(now + Duration::from_secs(24 * 3600));
    let marker_meta = EntryMeta::new(now, Duration::ZERO).keep_at_least_until(marker_until);
    let marker = Arc::new(Entry::variants(vary.clone(), marker_meta));
    let marked = layer.cache.set(primary, marker).await;
    let report = layer.cache.set(&key, entry.clone()).await;
    let filled = Filled {
        entry: entry.clone(),
        variant: Some((vary, key)),
        stale: false,
        fwd_status: None,
        written: written(&marked) && written(&report),
    };
    (entry, filled)
}

/// How long a key whose background refresh brought nothing new waits
/// before the next one.
const REFRESH_BACKOFF: Duration = Duration::from_secs(1);

/// Whether a fresh entry with `ttl` left is in the last `fraction` of its
/// freshness lifetime (refresh ahead). Saturating: a clock that moved back
/// makes no lifetime negative.
fn due_for_refresh(entry: &Entry, ttl: Duration, fraction: f64) -> bool {
    let meta = entry.meta();
    if meta.persistent {
        return false;
    }
    let lifetime = meta
        .fresh_until
        .duration_since(meta.stored_at)
        .unwrap_or_default();
    ttl <= lifetime.mul_f64(fraction)
}

/// Starts one background refresh of an entry (stale-while-revalidate, or
/// refresh ahead of expiry); a refresh already running for the key makes
/// this a no-op. With fleet coalescing, one node refreshes for the fleet
/// and the others take its result.
fn spawn_refresh<S, ReqBody, ResBody>(
    inner: S,
    state: Arc<CacheLayer>,
    parts: request::Parts,
    primary: CacheKey,
    key: CacheKey,
    stale: Arc<Entry>,
) where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: fmt::Display + Send + 'static,
    ReqBody: Default + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: fmt::Display + Send,
{
    {
        let mut refreshing = state
            .flights
            .refreshing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !refreshing.insert(key.clone()) {
            return;
        }
    }
    tokio::spawn(async move {
        let layer = &*state;
        // Bounded twice over: the fetch by the fill timeout, and waiting on
        // another request's fill for the key by the lock timeout.
        let refreshed = layer
            .flights
            .fills
            .run_or_give_up(&key, layer.config.lock_timeout, || async {
                let mut lease = None;
                if let Some(options) = layer.config.fleet {
                    match layer.cache.fleet_fill(&key, options).await {
                        FleetFill::Lead(held) => {
                            // Another node may have refreshed it a moment
                            // ago: its newer entry, not another origin call.
                            if let Some(newer) = layer.cache.get_shared(&key).await {
                                if newer.meta().stored_at > stale.meta().stored_at {
                                    held.end(LeaseEnd::Filled).await;
                                    return Shared::Alone;
                                }
                            }
                            lease = Some(held);
                        }
                        FleetFill::Filled => {
                            // Another node refreshed it: take its entry,
                            // which this node's older copy would hide.
                            return filled_elsewhere(layer, &primary, &parts.headers)
                                .await
                                .into();
                        }
                        FleetFill::Unstorable => return Shared::Alone,
                        FleetFill::TimedOut => return Shared::AloneUnstored,
                        FleetFill::Unavailable => {}
                    }
                }
                let fetched = fetch(
                    inner,
                    layer,
                    parts,
                    ReqBody::default(),
                    &primary,
                    Some(stale),
                    Forward::Stale,
                    true,
                );
                under_lease(layer, &primary, lease, fetched).await.1.into()
            })
            .await;
        let fresh = matches!(&refreshed, Some((Shared::Entry(f), _)) if !f.stale);
        if !fresh {
            // Nothing new (the origin failed, the result is not shared,
            // another node's fill is late): hits in the window must not
            // start a refresh each, at request rate.
            tokio::time::sleep(REFRESH_BACKOFF).await;
        }
        layer
            .flights
            .refreshing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
    });
}

/// The URI a `Location`/`Content-Location` value names, if it is on the same
/// origin as the request (RFC 9111 §4.4: only same-origin URIs are invalidated).
fn same_origin_uri(request: &Uri, request_headers: &HeaderMap, value: &HeaderValue) -> Option<Uri> {
    let value = value.to_str().ok()?;
    let target: Uri = value.parse().ok()?;
    let request_authority = request
        .authority()
        .map(|a| a.as_str().to_ascii_lowercase())
        .or_else(|| {
            request_headers
                .get(header::HOST)?
                .to_str()
                .ok()
                .map(str::to_ascii_lowercase)
        });
    match target.authority() {
        Some(authority) => {
            (Some(authority.as_str().to_ascii_lowercase()) == request_authority).then_some(target)
        }
        None if value.starts_with('/') => match request.authority() {
            Some(authority) => {
                let scheme = request.scheme_str().unwrap_or("http");
                format!("{scheme}://{authority}{value}").parse().ok()
            }
            None => Some(target),
        },
        None => None,
    }
}

/// Forwards a request the cache does not answer; after a successful unsafe
/// method, invalidates the stored responses for its URL and for same-origin
/// `Location`/`Content-Location` URLs (RFC 9111 §4.4).
async fn pass_and_invalidate<S, ReqBody, ResBody>(
    mut inner: S,
    layer: &CacheLayer,
    request: Request<ReqBody>,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    let safe = matches!(*request.method(), Method::OPTIONS | Method::TRACE);
    let uri = request.uri().clone();
    let headers = if safe {
        HeaderMap::new()
    } else {
        request.headers().clone()
    };
    let response = call_ready(&mut inner, request).await?;
    let status = response.status();
    if !safe && (status.is_success() || status.is_redirection()) {
        let keys = &layer.config.keys;
        let _ = invalidate_primary(&layer.cache, &keys.primary(&Method::GET, &uri, &headers)).await;
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            if let Some(target) = response
                .headers()
                .get(&name)
                .and_then(|v| same_origin_uri(&uri, &headers, v))
            {
                let _ = invalidate_primary(
                    &layer.cache,
                    &keys.primary(&Method::GET, &target, &headers),
                )
                .await;
            }
        }
    }
    Ok(origin_response(
        response,
        layer,
        &CacheStatus::forward(Forward::Method),
    ))
}
