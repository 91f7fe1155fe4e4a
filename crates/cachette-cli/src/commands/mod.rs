//! The commands.

mod journal;
mod purge;
mod warm;

use std::path::Path;

use cachette::{Caches, ops::Report, settings::Settings};

use crate::{
    Failure, Outcome,
    cli::{CheckArgs, ProxyArgs, StatsArgs},
    proxy, remote, render,
};

pub(crate) use journal::{journal_replay, journal_status};
pub(crate) use purge::purge;
pub(crate) use warm::warm;

/// Loads and validates a settings file.
fn load(path: &Path) -> Result<Settings, Failure> {
    Settings::load(path).map_err(Failure::usage)
}

/// Builds the caches of `settings` for a one-shot command: no background
/// journal replay (a command that only looks must not change anything).
async fn open(settings: Settings) -> Result<Caches, Failure> {
    Caches::builder()
        .background_replay(false)
        .from_settings(settings)
        .await
        .map_err(|error| {
            let in_use = matches!(&error, cachette::Error::Cache { source, .. }
                if source.to_string().contains("in use by another process"));
            if in_use {
                Failure::operational(format!(
                    "{error}; a running process holds it: ask that process with --admin http://<its admin address>"
                ))
            } else {
                Failure::from(error)
            }
        })
}

/// Checks that `alias` is one of the caches.
fn known(caches: &Caches, alias: &str) -> Result<(), Failure> {
    caches.cache(alias).map(|_| ()).map_err(Failure::from)
}

fn print_json(value: &impl serde::Serialize) -> Outcome {
    let text = serde_json::to_string_pretty(value).map_err(Failure::operational)?;
    println!("{text}");
    Ok(())
}

pub(crate) fn check(args: &CheckArgs) -> Outcome {
    let settings = load(&args.file)?;
    let aliases: Vec<String> = settings
        .caches
        .iter()
        .map(|(alias, cache)| {
            let tiers: Vec<String> = cache.tiers().iter().map(ToString::to_string).collect();
            format!("{alias} [{}]", tiers.join(", "))
        })
        .collect();
    println!(
        "{}: ok: {} cache(s): {}; {} Redis topolog{}; purge route {}",
        args.file.display(),
        settings.caches.len(),
        aliases.join("; "),
        settings.redis.len(),
        if settings.redis.len() == 1 {
            "y"
        } else {
            "ies"
        },
        if settings.admin.token.is_some() {
            "on (admin.token set)"
        } else {
            "off (no admin.token)"
        }
    );
    Ok(())
}

pub(crate) async fn stats(args: StatsArgs) -> Outcome {
    let only: Option<Vec<&str>> = args.cache.as_deref().map(|c| vec![c]);
    let report: Report = if let Some(admin) = &args.target.admin {
        let base = remote::base(admin)?;
        let mut report: Report = remote::get_json(&base, "/stats").await?;
        if let Some(alias) = &args.cache {
            report.caches.retain(|c| &c.alias == alias);
            if report.caches.is_empty() {
                return Err(Failure::usage(format!(
                    "{base} has no cache named `{alias}`"
                )));
            }
        }
        report
    } else if let Some(config) = &args.target.config {
        let caches = open(load(config)?).await?;
        if let Some(alias) = &args.cache {
            known(&caches, alias)?;
        }
        caches.report(true, only.as_deref()).await
    } else {
        return Err(Failure::usage("give --config FILE or --admin URL"));
    };
    if args.json {
        print_json(&report)
    } else {
        print!("{}", render::report(&report));
        Ok(())
    }
}

pub(crate) async fn proxy(args: ProxyArgs) -> Outcome {
    let caches = match &args.config {
        Some(path) => Caches::from_settings(load(path)?)
            .await
            .map_err(Failure::from)?,
        None => Caches::memory_only(),
    };
    let layer = caches.layer(&args.cache).map_err(Failure::from)?;
    let trusted = proxy::TrustedProxies::parse(&args.trusted_proxies).map_err(Failure::usage)?;
    let upstream = proxy::Upstream::with_ca(
        &args.upstream,
        args.upstream_timeout,
        args.upstream_ca.as_deref(),
    )
    .map_err(Failure::usage)?
    .trust(trusted)
    .with_headers(
        caches
            .settings()
            .proxy_upstream_headers()
            .map_err(|e| Failure::usage(e.to_string()))?
            .iter()
            .map(|(name, value)| (name.as_str(), value.expose())),
    )
    .map_err(Failure::usage)?;
    // TLS termination: both files or neither; loaded (and checked) before
    // anything listens.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let files =
                std::sync::Arc::new(crate::tls::TlsFiles::load(cert, key).map_err(Failure::usage)?);
            crate::tls::reload_on_hangup(files.clone())
                .map_err(|e| Failure::operational(format!("cannot watch SIGHUP: {e}")))?;
            Some(files)
        }
        (None, None) => None,
        _ => {
            return Err(Failure::usage(
                "--tls-cert and --tls-key go together (the certificate chain and its private key, PEM)",
            ));
        }
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Failure::operational(format!("cannot listen on {}: {e}", args.listen)))?;
    let admin = match args.admin {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Failure::operational(format!("cannot listen on {addr}: {e}")))?,
        ),
        None => None,
    };
    if let Some(listener) = admin {
        let router = caches.admin_router();
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::error!(%error, "admin routes stopped");
            }
        });
    }
    tracing::info!(
        listen = %args.listen,
        upstream = %args.upstream,
        cache = %args.cache,
        admin = ?args.admin,
        "cachette proxy started"
    );
    let app = proxy::router(upstream, layer);
    let limits = crate::listen::ClientLimits {
        header_read_timeout: args.client_header_timeout,
        ..crate::listen::ClientLimits::default()
    };
    match tls {
        Some(files) => crate::tls::serve_tls(listener, app, files, limits, shutdown_signal()).await,
        None => proxy::serve_with(listener, app, limits, shutdown_signal()).await,
    }
    .map_err(|e| Failure::operational(format!("proxy stopped: {e}")))
}

/// Resolves on Ctrl-C or SIGTERM, for a graceful stop.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("stopping: finishing the requests in flight");
}
