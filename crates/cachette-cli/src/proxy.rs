//! The caching reverse proxy: [`CacheLayer`] in front of a forwarding
//! service.
//!
//! Before the cache sees a request, [`normalize`] makes what is keyed and
//! what is forwarded the same request: hop-by-hop headers (those named in
//! `Connection` too) are removed, an absolute-form target's authority
//! replaces `Host` (RFC 9112 §3.2.2), and the forwarding headers a client
//! could use to steer the origin unkeyed (`X-Forwarded-*`, `Forwarded`,
//! `X-Original-URL`, method overrides...) are dropped unless the client is a
//! trusted front proxy ([`Upstream::trust`]). Otherwise the cache would
//! store the answer to one request under another request's key.
//!
//! The forwarder sends every method, path, query and header to the upstream
//! (`http://`, or `https://` with the certificate verified, SNI and `Host`
//! from the upstream's name, HTTP/2 when offered) over a pooled keep-alive
//! client, with `Via` added and `X-Forwarded-For`,
//! `-Proto` and `-Host` set by the proxy; bodies stream both ways. An unreachable upstream is a `502` and a slow one a `504`, which
//! the layer answers with a stale entry inside stale-if-error. What is stored
//! and for how long is exactly the layer's RFC 9111 shared-cache behaviour.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use std::time::Duration;
//! use cachette::{CacheLayer, MemoryTier, Tiered};
//! use cachette_cli::proxy::{Upstream, router};
//!
//! let cache = Tiered::builder("proxy").tier("memory", MemoryTier::default()).build();
//! let upstream = Upstream::new("http://127.0.0.1:3000", Duration::from_secs(60))
//!     .map_err(std::io::Error::other)?;
//! let app = router(upstream, CacheLayer::new(cache));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! cachette_cli::proxy::serve(listener, app).await
//! # }
//! ```

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, body::Body, extract::ConnectInfo};
use cachette::CacheLayer;
use http::{
    HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, header,
    uri::{Authority, PathAndQuery, Scheme},
};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

/// The TLS client settings for the upstream: certificates verified against
/// the system's roots and `extra_ca`, TLS 1.2 and 1.3, the ring provider.
/// An `https://` upstream with no root to verify it by is an error at
/// startup, not a `502` on every request.
fn tls_config(
    url: &str,
    https: bool,
    extra_ca: Option<&std::path::Path>,
) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    if https {
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            // A system root rustls cannot parse is skipped, as browsers do.
            let _ = roots.add(cert);
        }
    }
    if let Some(path) = extra_ca {
        let shown = path.display();
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("--upstream-ca {shown}: {e}"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("--upstream-ca {shown}: {e}"))?;
        if certs.is_empty() {
            return Err(format!("--upstream-ca {shown}: no PEM certificate in it"));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("--upstream-ca {shown}: {e}"))?;
        }
    }
    if https && roots.is_empty() {
        return Err(format!(
            "--upstream `{url}`: no trusted root certificate to verify it (install the system's CA certificates, e.g. Debian's ca-certificates, or pass --upstream-ca FILE)"
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The `Via` pseudonym of this proxy (RFC 9110 §7.6.3).
const VIA: &str = "1.1 cachette";

/// Request fields that tell an origin where a request came from or what it
/// "really" is. From an untrusted client they are dropped: they are not part
/// of the cache key, so a client that sets them would choose the answer
/// stored for everyone.
const FORWARDING_FIELDS: &[&str] = &[
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-real-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-original-host",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-forwarded-ssl",
    "front-end-https",
    "x-url-scheme",
    "x-forwarded-uri",
    "x-original-uri",
    "x-host",
    "true-client-ip",
    "x-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
];

/// Addresses whose forwarding headers are believed (front proxies, load
/// balancers): single addresses or CIDR ranges.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<(std::net::IpAddr, u8)>);

impl TrustedProxies {
    /// Parses `10.0.0.0/8`, `192.168.1.5`, `::1`, `fd00::/8`.
    pub fn parse<I, S>(items: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut nets = Vec::new();
        for item in items {
            let item = item.as_ref().trim();
            let (addr, bits) = match item.split_once('/') {
                Some((addr, bits)) => (addr, Some(bits)),
                None => (item, None),
            };
            let addr: std::net::IpAddr = addr.parse().map_err(|_| {
                format!("--trusted-proxy `{item}` is not an IP address or CIDR range")
            })?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                Some(bits) => bits
                    .parse::<u8>()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| {
                        format!("--trusted-proxy `{item}`: the prefix length must be 0..={max}")
                    })?,
                None => max,
            };
            // Clients' IPv4-mapped addresses are compared as IPv4: so are
            // such networks.
            let (addr, bits) = match addr {
                std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                    Some(v4) if bits >= 96 => (std::net::IpAddr::V4(v4), bits - 96),
                    _ => (addr, bits),
                },
                v4 => (v4, bits),
            };
            nets.push((addr, bits));
        }
        Ok(Self(nets))
    }

    /// Whether `ip` is trusted.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|(net, bits)| match (net, ip) {
            (std::net::IpAddr::V4(net), std::net::IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(*bits)).unwrap_or(0);
                u32::from(*net) & mask == u32::from(ip) & mask
            }
            (std::net::IpAddr::V6(net), std::net::IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(*bits)).unwrap_or(0);
                u128::from(*net) & mask == u128::from(ip) & mask
            }
            _ => false,
        })
    }
}

/// Makes the request the cache keys and the request the upstream gets the
/// same one (see the module docs). Returns the problem when the request
/// cannot be made unambiguous (several `Host` fields, or one that is not a
/// valid authority).
pub fn normalize(
    request: &mut Request<Body>,
    trusted: &TrustedProxies,
) -> Result<(), &'static str> {
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let uri = request.uri().clone();
    let headers = request.headers_mut();
    strip_hop_by_hop(headers);
    if headers.get_all(header::HOST).iter().count() > 1 {
        return Err("several Host fields");
    }
    if let Some(authority) = uri.authority() {
        // Absolute form: the target's authority is the request's (RFC 9112
        // §3.2.2), whatever Host says.
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| "bad authority")?;
        headers.insert(header::HOST, host);
    } else if let Some(host) = headers.get(header::HOST) {
        host.to_str()
            .ok()
            .and_then(|h| h.parse::<Authority>().ok())
            .ok_or("Host is not a valid authority")?;
    }
    if !client.is_some_and(|ip| trusted.contains(ip)) {
        for name in FORWARDING_FIELDS {
            headers.remove(*name);
        }
        // `X_Forwarded_Host` is `HTTP_X_FORWARDED_HOST` to CGI-style
        // servers (WSGI, Rack...): fields with underscores are dropped, as
        // nginx does by default.
        let underscored: Vec<HeaderName> = headers
            .keys()
            .filter(|name| name.as_str().contains('_'))
            .cloned()
            .collect();
        for name in underscored {
            headers.remove(name);
        }
    }
    Ok(())
}

/// Where requests go: the upstream's scheme, authority and base path, and
/// the pooled client.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Body>,
    scheme: Scheme,
    authority: Authority,
    base_path: Arc<str>,
    timeout: Duration,
    trusted: Arc<TrustedProxies>,
    /// Fields added to every upstream request the client did not set
    /// itself (`[proxy] upstream_headers`); their values are secrets.
    extra_headers: Arc<Vec<(HeaderName, HeaderValue)>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("scheme", &self.scheme)
            .field("authority", &self.authority)
            .field("base_path", &self.base_path)
            .field("timeout", &self.timeout)
            .field("trusted", &self.trusted)
            .finish()
    }
}

impl Upstream {
    /// An upstream at `url` (`http://host:port[/base]`); responses slower
    /// than `timeout` become `504`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        Self::with_ca(url, timeout, None)
    }

    /// [`new`](Self::new), trusting the certificates in the PEM file
    /// `extra_ca` too (besides the system's roots) for an `https://`
    /// upstream: a private CA, or a test one.
    pub fn with_ca(
        url: &str,
        timeout: Duration,
        extra_ca: Option<&std::path::Path>,
    ) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("--upstream `{url}` is not a URL: {e}"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| format!("--upstream `{url}` needs a scheme: http://{url}"))?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(format!(
                "--upstream `{url}`: the scheme must be http:// or https://"
            ));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("--upstream `{url}` has no host"))?;
        if uri.query().is_some() {
            return Err(format!("--upstream `{url}` must not have a query"));
        }
        if authority.as_str().contains('@') {
            return Err(format!(
                "--upstream `{url}`: no user or password in the URL (it would be sent as Host and logged); give credentials with [proxy] upstream_headers"
            ));
        }
        let base_path = uri.path().trim_end_matches('/');
        let tls = tls_config(url, scheme == Scheme::HTTPS, extra_ca)?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        // The TLS layer below takes `https://`; plain `http://` passes.
        connector.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(connector);
        Ok(Self {
            client,
            scheme,
            authority,
            base_path: Arc::from(base_path),
            timeout,
            trusted: Arc::default(),
            extra_headers: Arc::default(),
        })
    }

    /// Adds these fields to every `GET`/`HEAD` request to the upstream (a
    /// client's own `Authorization` goes on as it is, and makes the request
    /// uncached as before; any other field is the configured value,
    /// whatever the client sent). Values are marked sensitive (never
    /// indexed by HTTP/2 header compression, never logged); `TRACE`, which
    /// would echo them, is refused.
    pub fn with_headers<'a>(
        mut self,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, String> {
        let mut parsed = Vec::new();
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| format!("proxy.upstream_headers.{name}: {e}"))?;
            let mut value = HeaderValue::from_str(value)
                .map_err(|e| format!("proxy.upstream_headers.{name}: {e}"))?;
            value.set_sensitive(true);
            parsed.push((name, value));
        }
        self.extra_headers = Arc::new(parsed);
        Ok(self)
    }

    /// Believes the forwarding headers (`X-Forwarded-*`, `Forwarded`...) of
    /// requests from these addresses (front proxies that set them); from
    /// anyone else they are dropped. Such a proxy must set them the same way
    /// for every request that shares a cache key, or the origin must `Vary`
    /// on them.
    pub fn trust(mut self, trusted: TrustedProxies) -> Self {
        self.trusted = Arc::new(trusted);
        self
    }

    fn target(&self, uri: &Uri) -> Result<Uri, http::Error> {
        let path = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let path_and_query = if self.base_path.is_empty() {
            PathAndQuery::try_from(path)?
        } else {
            PathAndQuery::try_from(format!("{}{path}", self.base_path))?
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }

    async fn forward(&self, request: Request<Body>) -> Response<Body> {
        let client_addr = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        let (mut parts, body) = request.into_parts();
        parts.uri = match self.target(&parts.uri) {
            Ok(uri) => uri,
            Err(error) => {
                return short(
                    StatusCode::BAD_REQUEST,
                    &format!("bad request URI: {error}"),
                );
            }
        };
        strip_hop_by_hop(&mut parts.headers);
        // The proxy's own credentials go with reads only: a client cannot
        // write upstream with them. A client's `Authorization` is its own
        // (the cache treats it as credentials); any other configured field
        // is the proxy's, whatever the client sent (the cache keys no
        // such field, so a client's value must not choose the answer).
        if parts.method == http::Method::GET || parts.method == http::Method::HEAD {
            for (name, value) in self.extra_headers.iter() {
                if name != header::AUTHORIZATION || !parts.headers.contains_key(name) {
                    parts.headers.insert(name.clone(), value.clone());
                }
            }
        }
        append(&mut parts.headers, header::VIA, VIA);
        // The forwarding headers are the proxy's own unless a trusted front
        // proxy set them (`normalize` dropped a client's).
        if let Some(ip) = client_addr {
            append_forwarded_for(&mut parts.headers, &ip.to_string());
        }
        if !parts.headers.contains_key("x-forwarded-proto") {
            let proto = if parts.extensions.get::<crate::tls::Tls>().is_some() {
                "https"
            } else {
                "http"
            };
            parts
                .headers
                .insert("x-forwarded-proto", HeaderValue::from_static(proto));
        }
        if !parts.headers.contains_key("x-forwarded-host") {
            if let Some(host) = parts.headers.get(header::HOST).cloned() {
                parts.headers.insert("x-forwarded-host", host);
            }
        }
        // A remote site (an `https://` upstream) is addressed by its own
        // name, as nginx's default `proxy_set_header Host $proxy_host`; the
        // client's `Host` goes on in `X-Forwarded-Host`. A local app behind
        // `http://` gets the client's `Host`.
        if self.scheme == Scheme::HTTPS {
            if let Ok(host) = HeaderValue::from_str(self.authority.as_str()) {
                parts.headers.insert(header::HOST, host);
            }
        }
        // The client's own HTTP version is between it and us.
        parts.version = http::Version::HTTP_11;
        let call = self.client.request(Request::from_parts(parts, body));
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(response)) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                append(&mut parts.headers, header::VIA, VIA);
                Response::from_parts(parts, Body::new(body))
            }
            Ok(Err(error)) => {
                tracing::warn!(upstream = %self.authority, error = %error_chain(&error), "upstream unreachable");
                short(StatusCode::BAD_GATEWAY, "upstream unreachable")
            }
            Err(_) => {
                tracing::warn!(upstream = %self.authority, timeout = ?self.timeout, "upstream timed out");
                short(StatusCode::GATEWAY_TIMEOUT, "upstream timed out")
            }
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A short plain-text answer of the proxy's own, never stored.
fn short(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(Body::from(format!("{text}\n")));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    append(headers, header::VIA, VIA);
    response
}

fn append(headers: &mut HeaderMap, name: HeaderName, value: &'static str) {
    headers.append(name, HeaderValue::from_static(value));
}

fn append_forwarded_for(headers: &mut HeaderMap, ip: &str) {
    let name = HeaderName::from_static("x-forwarded-for");
    // Every line a trusted front proxy sent, in order, then this client.
    let mut joined: Vec<&str> = headers
        .get_all(&name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    joined.push(ip);
    let joined = joined.join(", ");
    if let Ok(value) = HeaderValue::from_str(&joined) {
        headers.remove(&name);
        headers.insert(name, value);
    }
}

/// Removes the hop-by-hop fields: those named by `Connection`, and the
/// fixed list of RFC 9110 §7.6.1 (plus the legacy `Proxy-Connection` and
/// `Keep-Alive`).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// The forwarding service: a [`tower::Service`] that sends each request to
/// the [`Upstream`].
#[derive(Debug, Clone)]
pub struct Forward {
    // Shared, not cloned: the service is cloned for every request (hits
    // too), and cloning the pooled client is a dozen reference counts.
    upstream: Arc<Upstream>,
}

impl Forward {
    /// Forwards to `upstream`.
    pub fn new(upstream: Upstream) -> Self {
        Self {
            upstream: Arc::new(upstream),
        }
    }
}

impl tower::Service<Request<Body>> for Forward {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let upstream = Arc::clone(&self.upstream);
        Box::pin(async move { Ok(upstream.forward(request).await) })
    }
}

/// The proxy's router: every request is [normalized](normalize), goes
/// through `layer`, then to `upstream`.
pub fn router(upstream: Upstream, layer: CacheLayer) -> Router {
    let trusted = upstream.trusted.clone();
    let service = tower::ServiceBuilder::new()
        .layer(layer)
        .service(Forward::new(upstream));
    let service = tower::service_fn(move |mut request: Request<Body>| {
        let mut service = service.clone();
        // TRACE echoes the request, with whatever the proxy added to it
        // (`[proxy] upstream_headers`): refused, as nginx does.
        let normalized = if request.method() == http::Method::TRACE {
            Err("TRACE is not forwarded")
        } else {
            normalize(&mut request, &trusted)
        };
        async move {
            match normalized {
                Err("TRACE is not forwarded") => Ok::<_, Infallible>(short(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "TRACE is not forwarded",
                )),
                Ok(()) => tower::Service::call(&mut service, request)
                    .await
                    .map(|response| response.map(Body::new)),
                Err(problem) => Ok::<_, Infallible>(short(StatusCode::BAD_REQUEST, problem)),
            }
        }
    });
    Router::new().fallback_service(service)
}

/// Serves `app` on `listener` with each client's address available to the
/// forwarder (for `X-Forwarded-For`).
pub async fn serve(listener: tokio::net::TcpListener, app: Router) -> std::io::Result<()> {
    serve_until(listener, app, std::future::pending()).await
}

/// [`serve`] until `shutdown` resolves, then finishes the requests in flight.
pub async fn serve_until(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(
        listener,
        app,
        crate::listen::ClientLimits::default(),
        shutdown,
    )
    .await
}

/// [`serve_until`] with `limits` on slow or silent clients.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: crate::listen::ClientLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::listen::serve_connections(listener, app, None, limits, shutdown).await
}
