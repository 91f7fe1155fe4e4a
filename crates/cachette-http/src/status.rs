//! The `Cache-Status` response header (RFC 9211).

use std::{fmt::Write as _, sync::Arc};

use http::HeaderValue;

/// The `Cache-Status` field name.
pub const CACHE_STATUS: http::HeaderName = http::HeaderName::from_static("cache-status");

/// Why a request went forward to the origin (RFC 9211 §2.2 `fwd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forward {
    /// Not cached by configuration (`unless`, request `no-store`).
    Bypass,
    /// The method is not cacheable.
    Method,
    /// Nothing stored for the URL.
    Miss,
    /// Stored for the URL, but not for this request's `Vary` headers.
    VaryMiss,
    /// A stored response was stale.
    Stale,
    /// The request's directives asked to go forward.
    Request,
}

impl Forward {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Bypass => "bypass",
            Self::Method => "method",
            Self::Miss => "miss",
            Self::VaryMiss => "vary-miss",
            Self::Stale => "stale",
            Self::Request => "request",
        }
    }
}

/// One `Cache-Status` list member.
#[derive(Debug, Clone, Default)]
pub(crate) struct CacheStatus {
    pub(crate) hit: bool,
    pub(crate) fwd: Option<Forward>,
    pub(crate) fwd_status: Option<u16>,
    pub(crate) ttl: Option<i64>,
    pub(crate) stored: bool,
    pub(crate) collapsed: bool,
    pub(crate) detail: Option<&'static str>,
    pub(crate) tier: Option<Arc<str>>,
}

impl CacheStatus {
    pub(crate) fn hit(ttl: i64, tier: Option<Arc<str>>) -> Self {
        Self {
            hit: true,
            ttl: Some(ttl),
            tier,
            ..Self::default()
        }
    }

    pub(crate) fn forward(fwd: Forward) -> Self {
        Self {
            fwd: Some(fwd),
            ..Self::default()
        }
    }

    pub(crate) fn to_header(&self, cache_name: &str) -> HeaderValue {
        let mut out = String::with_capacity(48);
        out.push_str(cache_name);
        if self.hit {
            out.push_str("; hit");
        }
        if let Some(fwd) = self.fwd {
            let _ = write!(out, "; fwd={}", fwd.as_str());
        }
        if let Some(status) = self.fwd_status {
            let _ = write!(out, "; fwd-status={status}");
        }
        if let Some(ttl) = self.ttl {
            let _ = write!(out, "; ttl={ttl}");
        }
        if self.stored {
            out.push_str("; stored");
        }
        if self.collapsed {
            out.push_str("; collapsed");
        }
        match (&self.tier, self.detail) {
            (Some(tier), Some(detail)) => {
                let _ = write!(out, "; detail=\"{tier} {detail}\"");
            }
            (Some(tier), None) => {
                let _ = write!(out, "; detail={tier}");
            }
            (None, Some(detail)) => {
                let _ = write!(out, "; detail={detail}");
            }
            (None, None) => {}
        }
        HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static("cachette"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_members() {
        assert_eq!(
            CacheStatus::hit(57, Some(Arc::from("memory"))).to_header("cachette"),
            "cachette; hit; ttl=57; detail=memory"
        );
        let mut s = CacheStatus::forward(Forward::Stale);
        s.fwd_status = Some(304);
        assert_eq!(
            s.to_header("cachette"),
            "cachette; fwd=stale; fwd-status=304"
        );
        let mut s = CacheStatus::forward(Forward::Miss);
        s.fwd_status = Some(200);
        s.stored = true;
        assert_eq!(
            s.to_header("cachette"),
            "cachette; fwd=miss; fwd-status=200; stored"
        );
    }
}
