//! The status page (`GET /` on the admin routes): one HTML page with its
//! stylesheet and script, embedded in the binary (no CDN, no external
//! fonts: it works offline and on an internal network). The script polls
//! `/stats` every second and draws it; the purge form, shown only when an
//! admin token is configured, sends the token typed into it with the one
//! `POST /purge` it makes. The page is static: it holds no data and no
//! secret, and it adds no route that writes.

use axum::{
    http::{HeaderName, HeaderValue, header},
    response::{IntoResponse, Response},
};

const PAGE: &str = include_str!("status.html");
const STYLE: &str = include_str!("status.css");
const SCRIPT: &str = include_str!("status.js");

/// The page, with the purge form on or off; `{{base}}` stays for [`html`].
pub(crate) fn page(purge: bool) -> String {
    PAGE.replace("{{purge}}", if purge { "on" } else { "off" })
}

/// Where the admin routes are mounted, from the path the page was asked
/// at (`/` at the root; `/admin` or `/admin/` when nested under `/admin`):
/// the page's own requests go there, not to the host app. Only a plain
/// path is taken (it goes into the page); anything else is the root.
pub(crate) fn base_of(path: &str) -> &str {
    let base = path.trim_end_matches('/');
    let plain = base
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~'));
    if plain && !base.contains("//") {
        base
    } else {
        ""
    }
}

/// Headers every part of the page carries: no caching, no sniffing, no
/// framing, and a policy that runs only the page's own script and talks
/// only to its own origin (a hostile value in the stats cannot load or
/// send anything elsewhere).
fn headers(content_type: &'static str) -> [(HeaderName, HeaderValue); 5] {
    [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
            ),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ]
}

/// The page for a request at `path`.
pub(crate) fn html(page: &str, path: &str) -> Response {
    let page = page.replace("{{base}}", base_of(path));
    (headers("text/html; charset=utf-8"), page).into_response()
}

pub(crate) async fn style() -> Response {
    (headers("text/css; charset=utf-8"), STYLE).into_response()
}

pub(crate) async fn script() -> Response {
    (headers("text/javascript; charset=utf-8"), SCRIPT).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_its_parts_and_says_whether_purge_is_on() {
        assert!(page(true).contains(r#"<meta name="cachette-purge" content="on">"#));
        assert!(page(false).contains(r#"<meta name="cachette-purge" content="off">"#));
        assert!(PAGE.contains(r#"src="{{base}}/status.js""#));
        assert_eq!(base_of("/"), "");
        assert_eq!(base_of("/admin"), "/admin");
        assert_eq!(base_of("/ops/admin/"), "/ops/admin");
        // Nothing that could leave the attribute or the origin.
        assert_eq!(base_of("/a\"><script>"), "");
        assert_eq!(base_of("//evil.example"), "");
        // Server data only ever goes in as text.
        assert!(!SCRIPT.contains("innerHTML"));
    }
}
