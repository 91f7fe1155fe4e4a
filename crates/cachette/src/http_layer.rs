//! Building the response-cache layer of a named cache.

use crate::{Cache, CacheLayer};

pub(crate) fn layer_for(cache: &Cache) -> CacheLayer {
    let http = &cache.inner.http;
    let prefix = crate::cache::default_key("", &cache.inner.key_prefix, cache.inner.version);
    let mut layer = CacheLayer::new(cache.tiered().clone()).key_prefix(prefix);
    let d = |v: &Option<cachette_settings::HumanDuration>| v.map(|d| d.0);
    // Responses without freshness information are stored only when the
    // settings opt in (`http.default_ttl`): a page with no caching headers
    // may well be personal.
    if let Some(ttl) = d(&http.default_ttl) {
        layer = layer.default_ttl(ttl);
    }
    if let Some(ttl) = d(&http.ttl) {
        layer = layer.ttl(ttl);
    }
    if let Some(window) = d(&http.stale_while_revalidate) {
        layer = layer.stale_while_revalidate(window);
    }
    if let Some(window) = d(&http.stale_if_error) {
        layer = layer.stale_if_error(window);
    }
    let key_headers: Vec<http::HeaderName> = http
        .key_headers
        .iter()
        .filter_map(|name| http::HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    if !key_headers.is_empty() {
        layer = layer.key_headers(key_headers);
    }
    if !http.key_cookies.is_empty() {
        layer = layer.key_cookies(&http.key_cookies);
    }
    if let Some(max) = http.max_buffered_bytes {
        layer = layer.max_buffered_bytes(usize::try_from(max.0).unwrap_or(usize::MAX));
    }
    if let Some(max) = http.max_body_bytes {
        layer = layer.max_body_bytes(usize::try_from(max.0).unwrap_or(usize::MAX));
    }
    if !http.ignore_query_params.is_empty() {
        layer = layer.ignore_query_params(http.ignore_query_params.clone());
    }
    if let Some(include) = http.include_host {
        layer = layer.include_host(include);
    }
    if let Some(fraction) = http.heuristic_freshness {
        layer = layer.heuristic_freshness(fraction);
    }
    if let Some(timeout) = d(&http.fill_timeout) {
        layer = layer.fill_timeout(timeout);
    }
    if let Some(timeout) = d(&http.body_idle_timeout) {
        layer = layer.body_idle_timeout(timeout);
    }
    if let Some(timeout) = d(&http.lock_timeout) {
        layer = layer.lock_timeout(timeout);
    }
    if let Some(window) = d(&http.hit_for_miss) {
        layer = layer.hit_for_miss(window);
    }
    if let Some(timeout) = d(&http.origin_timeout) {
        layer = layer.origin_timeout(timeout);
    }
    if let Some(timeout) = d(&http.soft_timeout) {
        layer = layer.soft_timeout(timeout);
    }
    if let Some(lease) = d(&http.fill_lease) {
        layer = layer.fill_lease(lease);
    }
    if http.fleet_coalescing == Some(true) {
        layer = layer.fleet_coalescing(true);
    }
    if let Some(fraction) = http.refresh_ahead {
        layer = layer.refresh_ahead(fraction);
    }
    if let Some(strip) = http.strip_set_cookie {
        layer = layer.strip_set_cookie(strip);
    }
    if let Some(name) = &http.status_name {
        layer = layer.status_name(name.clone());
    }
    layer
}
