//! Conditional requests (RFC 9110 §13) evaluated against a stored response.

use std::time::SystemTime;

use cachette_core::StoredResponse;
use http::{HeaderMap, HeaderValue, header};

/// Strips the weakness indicator: weak comparison (RFC 9110 §8.8.3.2).
fn opaque(tag: &str) -> &str {
    tag.trim().trim_start_matches("W/")
}

fn parse_date(value: &HeaderValue) -> Option<SystemTime> {
    httpdate::parse_http_date(value.to_str().ok()?).ok()
}

/// Whether a GET/HEAD request's preconditions make the stored response a
/// `304 Not Modified`: `If-None-Match` (weak comparison, lists, `*`) wins;
/// `If-Modified-Since` is evaluated only without it.
pub(crate) fn is_not_modified(request: &HeaderMap, stored: &StoredResponse) -> bool {
    let mut if_none_match = request.get_all(header::IF_NONE_MATCH).iter().peekable();
    if if_none_match.peek().is_some() {
        let Some(etag) = stored.etag().and_then(|e| e.to_str().ok()) else {
            // `*` matches any current representation, with or without an ETag.
            return if_none_match
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.split(',').any(|t| t.trim() == "*"));
        };
        let etag = opaque(etag);
        return if_none_match
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|candidate| candidate.trim() == "*" || opaque(candidate) == etag);
    }
    let Some(since) = request.get(header::IF_MODIFIED_SINCE).and_then(parse_date) else {
        return false;
    };
    let Some(modified) = stored.last_modified().and_then(parse_date) else {
        return false;
    };
    modified <= since
}

/// Headers a 304 carries (RFC 9110 §15.4.5): those that would have been sent
/// with a 200 and may guide cache updates.
pub(crate) const NOT_MODIFIED_HEADERS: [header::HeaderName; 7] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::LAST_MODIFIED,
    header::VARY,
];

/// Request headers that make an origin request conditional: removed before a
/// fetch meant to fill the cache, so the origin answers with a full response.
pub(crate) const CONDITIONAL_REQUEST_HEADERS: [header::HeaderName; 5] = [
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
];

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::StatusCode;

    fn stored(etag: Option<&'static str>, lm: Option<&'static str>) -> StoredResponse {
        let mut headers = HeaderMap::new();
        if let Some(e) = etag {
            headers.insert(header::ETAG, HeaderValue::from_static(e));
        }
        if let Some(l) = lm {
            headers.insert(header::LAST_MODIFIED, HeaderValue::from_static(l));
        }
        StoredResponse {
            status: StatusCode::OK,
            headers,
            body: Bytes::new(),
        }
    }

    fn req(pairs: &[(header::HeaderName, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(n.clone(), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn if_none_match_weak_lists_and_star() {
        let s = stored(Some("W/\"v1\""), None);
        assert!(is_not_modified(
            &req(&[(header::IF_NONE_MATCH, "\"v1\"")]),
            &s
        ));
        assert!(is_not_modified(
            &req(&[(header::IF_NONE_MATCH, "\"x\", W/\"v1\"")]),
            &s
        ));
        assert!(is_not_modified(&req(&[(header::IF_NONE_MATCH, "*")]), &s));
        assert!(!is_not_modified(
            &req(&[(header::IF_NONE_MATCH, "\"v2\"")]),
            &s
        ));
        // If-None-Match present and not matching: If-Modified-Since is ignored.
        let s = stored(Some("\"v1\""), Some("Mon, 01 Jan 2024 00:00:00 GMT"));
        assert!(!is_not_modified(
            &req(&[
                (header::IF_NONE_MATCH, "\"v2\""),
                (header::IF_MODIFIED_SINCE, "Tue, 02 Jan 2024 00:00:00 GMT")
            ]),
            &s
        ));
    }

    #[test]
    fn if_modified_since() {
        let s = stored(None, Some("Mon, 01 Jan 2024 00:00:00 GMT"));
        assert!(is_not_modified(
            &req(&[(header::IF_MODIFIED_SINCE, "Mon, 01 Jan 2024 00:00:00 GMT")]),
            &s
        ));
        assert!(!is_not_modified(
            &req(&[(header::IF_MODIFIED_SINCE, "Sun, 31 Dec 2023 00:00:00 GMT")]),
            &s
        ));
        assert!(!is_not_modified(
            &req(&[(header::IF_MODIFIED_SINCE, "garbage")]),
            &s
        ));
    }
}
