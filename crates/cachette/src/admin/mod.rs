//! The admin routes: health, stats, metrics and purge, for an axum app
//! ([`Caches::admin_router`]) and for `cachette proxy --admin`.
//!
//! | route | answers |
//! |---|---|
//! | `GET /` | the status page: every cache's traffic, hit ratio (a chart of the last minutes), tiers, breakers, journal and bus, refreshed every second; a purge form when a token is configured ([`status_page`]) |
//! | `GET /health` | JSON: each cache's status and tiers (up, role, address, breaker), master, journal depth. `200` while every cache can serve from some tier, `503` when one cannot |
//! | `GET /stats` | JSON: the full [`Report`] (counters, latencies, usage, Redis, journal) |
//! | `GET /metrics` | the metrics in the Prometheus text format |
//! | `POST /purge` | JSON body `{"cache": "pages", "prefix": "/api/"}` (or `key`, `url`, `tag`, `"all": true`); needs `Authorization: Bearer <admin.token>`. Absent when no token is configured |
//!
//! Serve them on a separate, internal address: they tell about the
//! infrastructure.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use serde::{Deserialize, Serialize};

use crate::{
    Caches,
    metrics::describe_metrics,
    ops::{Purge, Report, Status},
};

pub mod status_page;

struct AdminState {
    caches: Caches,
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    token: Option<String>,
    page: String,
}

impl Caches {
    /// The admin routes (see [the module](crate::admin)) for this registry.
    /// `POST /purge` exists only when `admin.token` is configured.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use axum::{Router, body::Body, http::Request};
    /// use tower::ServiceExt;
    ///
    /// let caches = cachette::Caches::memory_only();
    /// let admin: Router = caches.admin_router();
    /// let response = admin
    ///     .oneshot(Request::get("/health").body(Body::empty()).unwrap())
    ///     .await
    ///     .unwrap();
    /// assert_eq!(response.status(), 200);
    /// # }
    /// ```
    pub fn admin_router(&self) -> Router {
        // A recorder of its own: the route works whether or not the
        // application installed a global one, and does not disturb it.
        let recorder = PrometheusBuilder::new().build_recorder();
        metrics::with_local_recorder(&recorder, describe_metrics);
        let token = self
            .settings()
            .admin
            .token
            .as_ref()
            .map(|t| t.expose().to_owned());
        let has_token = token.is_some();
        let state = Arc::new(AdminState {
            caches: self.clone(),
            handle: recorder.handle(),
            recorder,
            token,
            page: status_page::page(has_token),
        });
        let router = Router::new()
            .route(
                "/",
                get(
                    |State(state): State<Arc<AdminState>>,
                     axum::extract::OriginalUri(uri): axum::extract::OriginalUri| async move {
                        status_page::html(&state.page, uri.path())
                    },
                ),
            )
            .route("/status.css", get(status_page::style))
            .route("/status.js", get(status_page::script))
            .route("/health", get(health))
            .route("/stats", get(stats))
            .route("/metrics", get(prometheus));
        let router = if has_token {
            router.route("/purge", post(purge))
        } else {
            router
        };
        router.with_state(state)
    }
}

/// The `GET /health` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Health {
    /// `ok`, `degraded` or `down`.
    pub status: Status,
    /// Each cache.
    pub caches: Vec<CacheHealth>,
}

/// One cache in [`Health`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CacheHealth {
    /// The alias.
    pub alias: String,
    /// `ok`, `degraded` or `down`.
    pub status: Status,
    /// The Redis master's address now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    /// Ops waiting in the journal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub journal_depth: Option<u64>,
    /// Each tier, in read order.
    pub tiers: Vec<TierHealth>,
}

/// One tier in [`CacheHealth`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TierHealth {
    /// The tier's name.
    pub name: String,
    /// Whether it answered.
    pub up: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `closed`, `open`, `half-open`.
    pub breaker: String,
    /// The role the server reports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The server's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

impl From<Report> for Health {
    fn from(report: Report) -> Self {
        Self {
            status: report.status,
            caches: report
                .caches
                .into_iter()
                .map(|cache| CacheHealth {
                    alias: cache.alias,
                    status: cache.status,
                    master: cache.redis.and_then(|r| r.master),
                    journal_depth: cache.journal.map(|j| j.depth),
                    tiers: cache
                        .tiers
                        .into_iter()
                        .map(|t| TierHealth {
                            name: t.name,
                            up: t.up.unwrap_or(false),
                            error: t.error,
                            breaker: t.breaker,
                            role: t.role,
                            address: t.address,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

async fn health(State(state): State<Arc<AdminState>>) -> Response {
    let health = Health::from(state.caches.report(true, None).await);
    let code = if health.status == Status::Down {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, no_store(), Json(health)).into_response()
}

async fn stats(State(state): State<Arc<AdminState>>) -> Response {
    (no_store(), Json(state.caches.report(true, None).await)).into_response()
}

async fn prometheus(State(state): State<Arc<AdminState>>) -> Response {
    let report = state.caches.report(false, None).await;
    metrics::with_local_recorder(&state.recorder, || report.record_metrics());
    (
        no_store(),
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.handle.render(),
    )
        .into_response()
}

fn no_store() -> [(header::HeaderName, HeaderValue); 1] {
    [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))]
}

/// The `POST /purge` body: the cache (default `default`) and exactly one
/// target.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PurgeRequest {
    /// The cache's alias (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    /// A data-API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// A page's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A URL prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// A tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Everything in the cache.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    /// Mark stale instead of remove (a soft purge).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub soft: bool,
}

impl PurgeRequest {
    /// A request for `purge` in the cache `alias`.
    pub fn new(alias: impl Into<String>, purge: &Purge) -> Self {
        let mut request = Self {
            cache: Some(alias.into()),
            ..Self::default()
        };
        match purge.clone() {
            Purge::Key(key) => request.key = Some(key),
            #[cfg(feature = "http")]
            Purge::Url(url) => request.url = Some(url),
            #[cfg(feature = "http")]
            Purge::UrlPrefix(prefix) => request.prefix = Some(prefix),
            Purge::Tag(tag) => request.tag = Some(tag),
            Purge::All => request.all = true,
        }
        request
    }

    /// The target, if exactly one is given.
    pub fn target(&self) -> Result<Purge, String> {
        let mut targets = Vec::new();
        if let Some(key) = &self.key {
            targets.push(Purge::Key(key.clone()));
        }
        if let Some(url) = &self.url {
            targets.push(Purge::Url(url.clone()));
        }
        if let Some(prefix) = &self.prefix {
            targets.push(Purge::UrlPrefix(prefix.clone()));
        }
        if let Some(tag) = &self.tag {
            targets.push(Purge::Tag(tag.clone()));
        }
        if self.all {
            targets.push(Purge::All);
        }
        match targets.len() {
            1 => Ok(targets.remove(0)),
            0 => Err("name what to purge: one of key, url, prefix, tag, all".into()),
            _ => Err("name one thing to purge: key, url, prefix, tag and all are exclusive".into()),
        }
    }
}

/// Compares without stopping at the first difference, so that response time
/// does not tell how much of a guessed token was right. (The length may leak;
/// tokens are at least 16 characters.)
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn problem(code: StatusCode, message: impl Into<String>) -> Response {
    #[derive(Serialize)]
    struct Problem {
        error: String,
    }
    (
        code,
        no_store(),
        Json(Problem {
            error: message.into(),
        }),
    )
        .into_response()
}

async fn purge(State(state): State<Arc<AdminState>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(expected) = &state.token else {
        return problem(StatusCode::NOT_FOUND, "no admin token is configured");
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        None => {
            let mut response = problem(StatusCode::UNAUTHORIZED, "a bearer token is required");
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
        Some(given) if !same_secret(given.as_bytes(), expected.as_bytes()) => {
            tracing::warn!("admin purge refused: wrong bearer token");
            return problem(StatusCode::FORBIDDEN, "wrong bearer token");
        }
        Some(_) => {}
    }
    let request: PurgeRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return problem(
                StatusCode::BAD_REQUEST,
                format!("unreadable purge request: {error}"),
            );
        }
    };
    let target = match request.target() {
        Ok(target) => target,
        Err(reason) => return problem(StatusCode::BAD_REQUEST, reason),
    };
    let alias = request.cache.as_deref().unwrap_or("default");
    let outcome = if request.soft {
        state.caches.soft_purge(alias, &target).await
    } else {
        state.caches.purge(alias, &target).await
    };
    match outcome {
        Ok(report) => {
            tracing::info!(cache = alias, purged = %target, complete = report.complete, applied = report.applied, "admin purge");
            // 200: applied on every tier; 202: journaled for a tier that is
            // down (nothing lost, not applied yet); 503: a tier lost it.
            let code = if report.applied {
                StatusCode::OK
            } else if report.complete {
                StatusCode::ACCEPTED
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (code, no_store(), Json(report)).into_response()
        }
        Err(crate::Error::UnknownCache { alias, known }) => problem(
            StatusCode::NOT_FOUND,
            format!("no cache named `{alias}` (configured: {known})"),
        ),
        Err(error) => problem(StatusCode::BAD_REQUEST, error.to_string()),
    }
}
