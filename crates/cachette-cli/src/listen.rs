//! The proxy's accept loop, for plain and TLS listeners alike: HTTP/1.1
//! and HTTP/2 (by ALPN over TLS, by prior knowledge in plain text), each
//! client's address for the forwarder, limits on clients that are slow or
//! silent, and a graceful stop.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::ConnectInfo};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};

use crate::tls::{Tls, TlsFiles};

/// Limits on clients that are slow or silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// A request head (HTTP/1.1) not received in full within this is
    /// answered by closing the connection (slowloris; default 30 s).
    pub header_read_timeout: Duration,
    /// A TLS handshake not finished within this closes the connection
    /// (default 10 s).
    pub handshake_timeout: Duration,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `app` on `listener` (over TLS with `tls`) until `shutdown`, then
/// lets the connections in flight finish (not past a minute). An accept
/// that fails (out of descriptors) waits a moment rather than spin; a
/// handshake that fails costs only that connection.
pub(crate) async fn serve_connections(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<Arc<TlsFiles>>,
    limits: ClientLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Without TCP_NODELAY an HTTP/2 response whose last frame waits for
        // the client's WINDOW_UPDATE (any body over 64 KiB) is held back by
        // Nagle until the client's delayed ACK: ~40 ms each.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set on an accepted connection");
        }
        let app = app.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let builder = builder(limits);
            match tls {
                Some(files) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(files.current());
                    let handshake =
                        tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp));
                    let Ok(Ok(stream)) = handshake.await else {
                        return;
                    };
                    let service = TowerToHyperService::new(with_client(app, peer, true));
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    let _ = watcher.watch(connection.into_owned()).await;
                }
                None => {
                    let service = TowerToHyperService::new(with_client(app, peer, false));
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
                    let _ = watcher.watch(connection.into_owned()).await;
                }
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(60), graceful.shutdown()).await;
    Ok(())
}

/// HTTP/1.1 and HTTP/2 with the limits: a client that sends half a request
/// head, or keeps an idle HTTP/2 connection without answering pings, is
/// let go.
fn builder(limits: ClientLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    builder
}

/// `app` with the client's address (and, over TLS, the [`Tls`] mark) in
/// each request's extensions.
fn with_client(
    app: Router,
    peer: SocketAddr,
    tls: bool,
) -> impl tower::Service<
    http::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone {
    tower::ServiceExt::map_request(
        app,
        move |mut request: http::Request<hyper::body::Incoming>| {
            request
                .extensions_mut()
                .insert(ConnectInfo::<SocketAddr>(peer));
            if tls {
                request.extensions_mut().insert(Tls);
            }
            request.map(axum::body::Body::new)
        },
    )
}
