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

/// The page, with the purge form on or off.
pub(crate) fn page(purge: bool) -> String {
    PAGE.replace("{{purge}}", if purge { "on" } else { "off" })
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

pub(crate) fn html(page: &str) -> Response {
    (headers("text/html; charset=utf-8"), page.to_owned()).into_response()
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
        assert!(PAGE.contains(r#"src="status.js""#) && PAGE.contains(r#"href="status.css""#));
        // Server data only ever goes in as text.
        assert!(!SCRIPT.contains("innerHTML"));
    }
}
