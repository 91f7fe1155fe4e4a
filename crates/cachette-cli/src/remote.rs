//! A client of a running process's admin routes (`--admin URL`).

use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::BodyExt;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde::de::DeserializeOwned;

use crate::Failure;

/// The admin base URL, checked.
pub(crate) fn base(url: &str) -> Result<String, Failure> {
    let uri: Uri = url
        .parse()
        .map_err(|e| Failure::usage(format!("--admin `{url}` is not a URL: {e}")))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(Failure::usage(format!(
            "--admin `{url}` must be http://host:port (the address given to `cachette proxy --admin`)"
        )));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// Sends a request to the admin routes; returns the status and the body.
async fn send(request: Request<Body>) -> Result<(StatusCode, Bytes), Failure> {
    let uri = request.uri().to_string();
    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let response = tokio::time::timeout(Duration::from_secs(600), client.request(request))
        .await
        .map_err(|_| Failure::operational(format!("{uri}: no answer in 10 minutes")))?
        .map_err(|e| Failure::operational(format!("{uri}: cannot reach the admin routes: {e}")))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| Failure::operational(format!("{uri}: {e}")))?
        .to_bytes();
    Ok((status, body))
}

fn decode<T: DeserializeOwned>(uri: &str, body: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(body)
        .map_err(|e| Failure::operational(format!("{uri}: unexpected answer: {e}")))
}

/// The error message of an admin route's JSON problem, or the body as text.
fn problem(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Problem {
        error: String,
    }
    serde_json::from_slice::<Problem>(body)
        .map(|p| p.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).trim().to_owned())
}

/// `GET {base}{path}` as JSON.
pub(crate) async fn get_json<T: DeserializeOwned>(base: &str, path: &str) -> Result<T, Failure> {
    let uri = format!("{base}{path}");
    let request = Request::get(&uri)
        .body(Body::empty())
        .map_err(|e| Failure::usage(format!("{uri}: {e}")))?;
    let (status, body) = send(request).await?;
    if !status.is_success() {
        return Err(Failure::operational(format!(
            "{uri}: {status}: {}",
            problem(&body)
        )));
    }
    decode(&uri, &body)
}

/// `POST {base}{path}` with a JSON body and a bearer token; a JSON answer
/// with a 2xx or 503 status (the route's "done" and "not complete").
pub(crate) async fn post_json<T: DeserializeOwned>(
    base: &str,
    path: &str,
    token: &str,
    body: &impl serde::Serialize,
) -> Result<T, Failure> {
    let uri = format!("{base}{path}");
    let json = serde_json::to_vec(body).map_err(Failure::operational)?;
    let request = Request::post(&uri)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::from(json))
        .map_err(|e| Failure::usage(format!("{uri}: {e}")))?;
    let (status, body) = send(request).await?;
    match status {
        s if s.is_success() || s == StatusCode::SERVICE_UNAVAILABLE => decode(&uri, &body),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(Failure::usage(format!(
            "{uri}: {status}: {} (give the admin token with --token or CACHETTE_ADMIN_TOKEN)",
            problem(&body)
        ))),
        StatusCode::NOT_FOUND if problem(&body).is_empty() => Err(Failure::usage(format!(
            "{uri}: 404: the process has no purge route (no admin.token configured)"
        ))),
        StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND => Err(Failure::usage(format!(
            "{uri}: {status}: {}",
            problem(&body)
        ))),
        _ => Err(Failure::operational(format!(
            "{uri}: {status}: {}",
            problem(&body)
        ))),
    }
}
