//! The `Cache-Status` response header (RFC 9211).

use std::sync::OnceLock;

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
    pub(crate) tier: Option<&'static str>,
}

impl CacheStatus {
    pub(crate) fn hit(ttl: i64, tier: Option<&'static str>) -> Self {
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

    /// The header value. A plain hit's value is remembered per thread (it
    /// changes once a second per entry); others are built by hand, without
    /// the `fmt` machinery.
    pub(crate) fn to_header(&self, cache_name: &str) -> HeaderValue {
        match (self.plain_hit(), &self.tier) {
            (Some(ttl), Some(tier)) => recent_hit(cache_name, tier, ttl, || self.build(cache_name)),
            _ => self.build(cache_name),
        }
    }

    /// The ttl of a hit with nothing else to say (no forward, detail or flag).
    fn plain_hit(&self) -> Option<i64> {
        let plain = self.hit
            && self.fwd.is_none()
            && self.fwd_status.is_none()
            && !self.stored
            && !self.collapsed
            && self.detail.is_none();
        plain.then_some(self.ttl).flatten()
    }

    fn build(&self, cache_name: &str) -> HeaderValue {
        let mut out = String::with_capacity(cache_name.len() + 48);
        out.push_str(cache_name);
        if self.hit {
            out.push_str("; hit");
        }
        if let Some(fwd) = self.fwd {
            out.push_str("; fwd=");
            out.push_str(fwd.as_str());
        }
        if let Some(status) = self.fwd_status {
            out.push_str("; fwd-status=");
            push_int(&mut out, i64::from(status));
        }
        if let Some(ttl) = self.ttl {
            out.push_str("; ttl=");
            push_int(&mut out, ttl);
        }
        if self.stored {
            out.push_str("; stored");
        }
        if self.collapsed {
            out.push_str("; collapsed");
        }
        match (&self.tier, self.detail) {
            (Some(tier), Some(detail)) => {
                out.push_str("; detail=\"");
                out.push_str(tier);
                out.push(' ');
                out.push_str(detail);
                out.push('"');
            }
            (Some(tier), None) => {
                out.push_str("; detail=");
                out.push_str(tier);
            }
            (None, Some(detail)) => {
                out.push_str("; detail=");
                out.push_str(detail);
            }
            (None, None) => {}
        }
        HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static("cachette"))
    }
}

/// A remembered hit value: what it was built from, and the value.
struct RecentHit {
    ttl: i64,
    tier: &'static str,
    cache_name: Box<str>,
    value: HeaderValue,
}

/// Remembered hit values per thread, by ttl. Small and direct-mapped: the
/// point is the hot entries of the current second.
const RECENT_HITS: usize = 16;

thread_local! {
    static RECENT: std::cell::RefCell<[Option<RecentHit>; RECENT_HITS]> =
        const { std::cell::RefCell::new([const { None }; RECENT_HITS]) };
}

/// The `Cache-Status` of a plain hit, from this thread's recent values when
/// one matches (same ttl, tier and cache name), else built and remembered.
fn recent_hit(
    cache_name: &str,
    tier: &'static str,
    ttl: i64,
    build: impl FnOnce() -> HeaderValue,
) -> HeaderValue {
    let slot = (ttl.unsigned_abs() % RECENT_HITS as u64) as usize;
    RECENT
        .try_with(|recent| {
            let mut recent = recent.borrow_mut();
            match &recent[slot] {
                Some(hit)
                    if hit.ttl == ttl && hit.tier == tier && *hit.cache_name == *cache_name =>
                {
                    hit.value.clone()
                }
                _ => {
                    let value = build();
                    recent[slot] = Some(RecentHit {
                        ttl,
                        tier,
                        cache_name: cache_name.into(),
                        value: value.clone(),
                    });
                    value
                }
            }
        })
        .unwrap_or_else(|_| HeaderValue::from_static("cachette; hit"))
}

/// Appends the decimal digits of `value`.
fn push_int(out: &mut String, value: i64) {
    if value < 0 {
        out.push('-');
    }
    let mut digits = [0u8; 20];
    let mut n = value.unsigned_abs();
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &digit in &digits[i..] {
        out.push(char::from(digit));
    }
}

/// Ages below this are answered from a table of static header values: a
/// hit then allocates nothing for `Age`.
const STATIC_AGES: u64 = 3600;

/// The `Age` header value for `secs`.
pub(crate) fn age_value(secs: u64) -> HeaderValue {
    static TABLE: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    if secs >= STATIC_AGES {
        return HeaderValue::from(secs);
    }
    let table = TABLE.get_or_init(|| {
        // One leaked string holds every number once; each value borrows a
        // slice of it, so cloning one touches no reference count.
        let mut all = String::new();
        let mut bounds = Vec::with_capacity(STATIC_AGES as usize);
        for age in 0..STATIC_AGES {
            let start = all.len();
            push_int(&mut all, age as i64);
            bounds.push((start, all.len()));
        }
        let all: &'static str = Box::leak(all.into_boxed_str());
        bounds
            .into_iter()
            .map(|(start, end)| HeaderValue::from_static(&all[start..end]))
            .collect()
    });
    table
        .get(secs as usize)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_members() {
        assert_eq!(
            CacheStatus::hit(57, Some("memory")).to_header("cachette"),
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
        let mut s = CacheStatus::hit(-12, Some("local"));
        s.detail = Some("stale-while-revalidate");
        assert_eq!(
            s.to_header("edge"),
            "edge; hit; ttl=-12; detail=\"local stale-while-revalidate\""
        );
    }

    #[test]
    fn remembered_hits_match_what_they_were_built_from() {
        let memory = "memory";
        let local = "local";
        for _ in 0..2 {
            assert_eq!(
                CacheStatus::hit(7, Some(memory)).to_header("cachette"),
                "cachette; hit; ttl=7; detail=memory"
            );
            assert_eq!(
                CacheStatus::hit(7, Some(local)).to_header("cachette"),
                "cachette; hit; ttl=7; detail=local"
            );
            assert_eq!(
                CacheStatus::hit(7, Some(memory)).to_header("edge"),
                "edge; hit; ttl=7; detail=memory"
            );
            assert_eq!(
                CacheStatus::hit(23, Some(memory)).to_header("cachette"),
                "cachette; hit; ttl=23; detail=memory"
            );
        }
        let mut collapsed = CacheStatus::hit(7, Some(memory));
        collapsed.collapsed = true;
        assert_eq!(
            collapsed.to_header("cachette"),
            "cachette; hit; ttl=7; collapsed; detail=memory"
        );
    }

    #[test]
    fn age_values() {
        for age in [0, 1, 9, 10, 59, 3599, 3600, 86_400, u64::MAX] {
            assert_eq!(age_value(age), age.to_string().as_str());
        }
    }
}
