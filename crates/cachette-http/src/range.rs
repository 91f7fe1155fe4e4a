//! Range requests answered from a stored full response (RFC 9110 §14).
//!
//! One range is answered with `206 Partial Content` and `Content-Range`; a
//! range that starts past the end is `416 Range Not Satisfiable` with
//! `Content-Range: bytes */{length}`. Several ranges get the full `200`
//! (a server may ignore `Range`; multipart/byteranges is not produced). An
//! `If-Range` that does not match the stored response's strong `ETag` or
//! its `Last-Modified` date gets the full `200` too.

use http::{HeaderMap, HeaderValue, StatusCode, header};

use cachette_core::StoredResponse;

/// How a stored response answers the request's `Range`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ranged {
    /// The whole response.
    Full,
    /// Bytes `start..=end` of the body.
    Part { start: usize, end: usize },
    /// `416`.
    Unsatisfiable,
}

/// Decides from the request headers and the stored response.
pub(crate) fn ranged(client: &HeaderMap, stored: &StoredResponse) -> Ranged {
    let Some(range) = client.get(header::RANGE) else {
        return Ranged::Full;
    };
    if stored.status != StatusCode::OK || client.get_all(header::RANGE).iter().count() > 1 {
        return Ranged::Full;
    }
    if let Some(if_range) = client.get(header::IF_RANGE) {
        if !if_range_matches(if_range, stored) {
            return Ranged::Full;
        }
    }
    let Some(spec) = range
        .to_str()
        .ok()
        .and_then(|r| r.trim().strip_prefix("bytes="))
    else {
        return Ranged::Full;
    };
    if spec.contains(',') {
        return Ranged::Full;
    }
    let len = stored.body.len();
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ranged::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if first.is_empty() {
        // `-N`: the last N bytes.
        if !digits(last) {
            return Ranged::Full;
        }
        let suffix = last.parse::<usize>().unwrap_or(usize::MAX);
        if suffix == 0 || len == 0 {
            return Ranged::Unsatisfiable;
        }
        return Ranged::Part {
            start: len - suffix.min(len),
            end: len - 1,
        };
    }
    if !digits(first) || !(last.is_empty() || digits(last)) {
        return Ranged::Full;
    }
    let start = first.parse::<usize>().unwrap_or(usize::MAX);
    let end = if last.is_empty() {
        usize::MAX
    } else {
        last.parse::<usize>().unwrap_or(usize::MAX)
    };
    if end < start {
        return Ranged::Full; // invalid: ignored (RFC 9110 §14.1.1)
    }
    if start >= len {
        return Ranged::Unsatisfiable;
    }
    Ranged::Part {
        start,
        end: end.min(len - 1),
    }
}

/// `If-Range` (RFC 9110 §13.1.5): a strong entity-tag equal to the stored
/// `ETag`, or an HTTP-date equal to the stored `Last-Modified`.
fn if_range_matches(if_range: &HeaderValue, stored: &StoredResponse) -> bool {
    let Ok(value) = if_range.to_str() else {
        return false;
    };
    let value = value.trim();
    if value.starts_with('"') {
        return stored
            .headers
            .get(header::ETAG)
            .and_then(|e| e.to_str().ok())
            .is_some_and(|etag| etag.trim() == value);
    }
    if value.starts_with("W/") {
        return false; // a weak tag never matches If-Range
    }
    let date = httpdate::parse_http_date(value).ok();
    let modified = stored
        .headers
        .get(header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v.trim()).ok());
    date.is_some() && date == modified
}
