//! TLS termination for `cachette proxy --tls-cert FILE --tls-key FILE`:
//! rustls (TLS 1.2 and 1.3 only, ring), HTTP/2 or HTTP/1.1 chosen by ALPN,
//! the certificate and key reloaded on `SIGHUP` without dropping a
//! connection (new handshakes use the new pair; one that does not load is
//! logged and the old pair kept).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use axum::{Router, extract::ConnectInfo};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

/// Marks a request that arrived over TLS (the proxy then says
/// `X-Forwarded-Proto: https`).
#[derive(Debug, Clone, Copy)]
pub struct Tls;

/// The certificate and key files, and the server settings made from them.
#[derive(Debug)]
pub struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    config: RwLock<Arc<ServerConfig>>,
}

/// Reads a PEM certificate chain and private key into server settings.
fn load(cert: &Path, key: &Path) -> Result<ServerConfig, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "--tls-cert {}: no PEM certificate in it",
            cert.display()
        ));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            format!(
                "--tls-cert {} / --tls-key {}: {e}",
                cert.display(),
                key.display()
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

impl TlsFiles {
    /// Loads `cert` and `key` (PEM); a file that is missing or does not hold
    /// a matching pair is an error naming it.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, String> {
        let config = load(cert, key)?;
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            config: RwLock::new(Arc::new(config)),
        })
    }

    /// Loads the files again; on success new handshakes use them.
    pub fn reload(&self) -> Result<(), String> {
        let config = load(&self.cert, &self.key)?;
        *self
            .config
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(config);
        Ok(())
    }

    fn current(&self) -> Arc<ServerConfig> {
        self.config
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Reloads `files` on every `SIGHUP`, for as long as the process runs.
pub fn reload_on_hangup(files: Arc<TlsFiles>) -> std::io::Result<()> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match files.reload() {
                Ok(()) => tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded"),
                Err(error) => {
                    tracing::error!(%error, "TLS certificate not reloaded; the previous one stays");
                }
            }
        }
    });
    Ok(())
}

/// Serves `app` over TLS on `listener` until `shutdown`, then lets the
/// connections in flight finish. A handshake that fails (a plain-HTTP
/// client, a scanner) costs only that connection.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: Router,
    files: Arc<TlsFiles>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors and the like: wait, do not spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(files.current());
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // A client that opens a connection and says nothing gets ten
            // seconds to finish its handshake.
            let handshake =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp));
            let Ok(Ok(stream)) = handshake.await else {
                return;
            };
            let service = tower::ServiceExt::map_request(
                app,
                move |mut request: http::Request<hyper::body::Incoming>| {
                    request
                        .extensions_mut()
                        .insert(ConnectInfo::<SocketAddr>(peer));
                    request.extensions_mut().insert(Tls);
                    request.map(axum::body::Body::new)
                },
            );
            // A client that sends half a request head, or keeps an idle
            // HTTP/2 connection without answering pings, is let go.
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(30));
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(std::time::Duration::from_secs(30)))
                .keep_alive_timeout(std::time::Duration::from_secs(10));
            let connection = builder.serve_connection_with_upgrades(
                TokioIo::new(stream),
                TowerToHyperService::new(service),
            );
            let _ = watcher.watch(connection.into_owned()).await;
        });
    }
    drop(listener);
    // Requests in flight finish; a connection that never does is not
    // waited for past a minute.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(60), graceful.shutdown()).await;
    Ok(())
}
