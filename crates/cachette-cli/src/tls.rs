//! TLS termination for `cachette proxy --tls-cert FILE --tls-key FILE`:
//! rustls (TLS 1.2 and 1.3 only, ring), HTTP/2 or HTTP/1.1 chosen by ALPN,
//! the certificate and key reloaded on `SIGHUP` without dropping a
//! connection (new handshakes use the new pair; one that does not load is
//! logged and the old pair kept).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use axum::Router;
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

    pub(crate) fn current(&self) -> Arc<ServerConfig> {
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
    limits: crate::listen::ClientLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::listen::serve_connections(listener, app, Some(files), limits, shutdown).await
}
