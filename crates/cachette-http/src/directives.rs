//! A minimal reader of `Cache-Control`-style directive lists.
//!
//! http-cache-semantics decides storability and freshness; this module only
//! reads the directives it does not expose (`stale-while-revalidate`,
//! `stale-if-error`, `must-revalidate`, ...) and rewrites the field when a
//! targeted field (`CDN-Cache-Control`, `Cachette-Control`) or a configured TTL
//! takes precedence.

use http::HeaderValue;

/// 2^31, the largest delta-seconds value (RFC 9111 §1.2.2).
pub(crate) const MAX_DELTA_SECONDS: u64 = 1 << 31;

/// Parses delta-seconds (`1*DIGIT`), capped at [`MAX_DELTA_SECONDS`].
pub(crate) fn delta_seconds(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        text.parse::<u64>()
            .map_or(MAX_DELTA_SECONDS, |n| n.min(MAX_DELTA_SECONDS)),
    )
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Directives(Vec<(String, Option<String>)>);

impl Directives {
    pub(crate) fn parse<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> Self {
        let mut out = Vec::new();
        for value in values {
            let Ok(value) = value.to_str() else { continue };
            for item in value.split(',') {
                let item = item.trim();
                if item.is_empty() {
                    continue;
                }
                let (name, arg) = match item.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"').to_owned())),
                    None => (item, None),
                };
                out.push((name.to_ascii_lowercase(), arg));
            }
        }
        Self(out)
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    /// A delta-seconds argument, at most 2^31 (RFC 9111 §1.2.2: a larger
    /// value, even one that overflows any integer, means 2^31); an
    /// unparsable one counts as absent.
    pub(crate) fn seconds(&self, name: &str) -> Option<u64> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, arg)| arg.as_deref())
            .and_then(delta_seconds)
    }

    pub(crate) fn remove(&mut self, names: &[&str]) {
        self.0.retain(|(n, _)| !names.contains(&n.as_str()));
    }

    pub(crate) fn push(&mut self, name: &str, arg: Option<String>) {
        self.0.push((name.to_owned(), arg));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn to_header(&self) -> Option<HeaderValue> {
        let text = self
            .0
            .iter()
            .map(|(n, a)| match a {
                Some(a) => format!("{n}={a}"),
                None => n.clone(),
            })
            .collect::<Vec<_>>()
            .join(", ");
        HeaderValue::from_str(&text).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_rewrites() {
        let v = HeaderValue::from_static("Max-Age=60, stale-while-revalidate=\"30\", public");
        let mut d = Directives::parse([&v]);
        assert_eq!(d.seconds("max-age"), Some(60));
        assert_eq!(d.seconds("stale-while-revalidate"), Some(30));
        assert!(d.has("public"));
        d.remove(&["max-age"]);
        d.push("s-maxage", Some("5".into()));
        assert_eq!(
            d.to_header().unwrap(),
            "stale-while-revalidate=30, public, s-maxage=5"
        );
    }
}
