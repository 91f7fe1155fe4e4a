//! RFC 9110/9111 details through a real axum `Router`: HTTP-date forms,
//! status codes, ranges.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::{Router, routing::get};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_dates_are_read_in_all_three_forms_and_strictly() {
    let counter = Counter::default();
    let app = Router::new()
        // asctime, far in the future: fresh (RFC 9110 §5.6.7: recipients
        // accept the obsolete forms).
        .route("/asctime", counting_get(&counter, &[("expires", "Fri Dec 31 23:59:59 2100")]))
        // IMF-fixdate with a doubled space: invalid, hence already expired.
        .route(
            "/sloppy",
            counting_get(&counter, &[("expires", "Fri,  31 Dec 2100 23:59:59 GMT")]),
        )
        // RFC 850, in the past: stale.
        .route(
            "/rfc850",
            counting_get(&counter, &[("expires", "Sunday, 06-Nov-94 08:49:37 GMT")]),
        )
        .layer(layer());
    fetch(&app, "/asctime").await;
    assert!(fetch(&app, "/asctime").await.is_hit(), "asctime Expires is honoured");
    for uri in ["/sloppy", "/rfc850"] {
        fetch(&app, uri).await;
        let again = fetch(&app, uri).await;
        assert!(!again.is_hit(), "{uri}: {}", again.cache_status());
    }
}
