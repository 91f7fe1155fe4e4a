//! The command line.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

/// cachette: a caching reverse proxy, and the operator's commands for
/// cachette caches (stats, purge, journal, check).
///
/// Exit codes: 0 success, 1 operational failure (a server unreachable, a
/// purge not taken), 2 usage or settings error.
#[derive(Debug, Parser)]
#[command(name = "cachette", version, propagate_version = true)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs a caching reverse proxy in front of an upstream HTTP server.
    Proxy(ProxyArgs),
    /// Validates a settings file (with CACHETTE__* overrides); connects to nothing.
    Check(CheckArgs),
    /// Shows each cache and tier: status, counters, usage, Redis role and
    /// address, journal depth and age.
    Stats(StatsArgs),
    /// Removes entries from a cache, on every tier and every node.
    Purge(PurgeArgs),
    /// Inspects or replays this node's journal of master writes that failed.
    Journal(JournalArgs),
    /// Warms this node of a fleet of peers: copies another node's most
    /// recently stored entries into this node's Redis (before this node
    /// serves, typically), with a progress bar.
    Warm(WarmArgs),
    /// A live terminal view of a running process's caches (from its admin
    /// routes): one row per cache and tier, refreshed every second; q quits.
    Top(TopArgs),
}

/// `cachette top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// The running process's admin routes, e.g. http://127.0.0.1:9090
    /// (`cachette proxy --admin`, or an app's `caches.admin_router()`).
    #[arg(long)]
    pub admin: String,
    /// How often to read them.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
}

/// `cachette proxy`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Address to serve clients on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The upstream server: `http://host:port` or `https://host[:port]`,
    /// optionally with a base path. An `https://` upstream's certificate is
    /// verified (system roots and --upstream-ca), its name sent as SNI and
    /// `Host`, and HTTP/2 used when it offers it.
    #[arg(long)]
    pub upstream: String,
    /// A PEM file of CA certificates to trust for an `https://` upstream,
    /// besides the system's roots (a private CA).
    #[arg(long, value_name = "FILE")]
    pub upstream_ca: Option<PathBuf>,
    /// Terminate TLS on --listen with this certificate chain (PEM); needs
    /// --tls-key. TLS 1.2+, HTTP/2 or HTTP/1.1 by ALPN; reloaded on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Settings file; without it, one memory-only cache (64 MiB).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The cache (alias) the proxy stores into.
    #[arg(long, default_value = "default")]
    pub cache: String,
    /// Also serve the admin routes (/health, /stats, /metrics, /purge) on
    /// this address. Keep it internal.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// An upstream response slower than this is answered with 504 (or stale,
    /// within stale-if-error).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,
    /// A client that has not sent a whole request head within this is
    /// disconnected (slowloris; HTTP/1.1, plain and TLS listeners).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub client_header_timeout: Duration,
    /// A front proxy (IP or CIDR range; repeat for several) whose
    /// X-Forwarded-* / Forwarded headers are passed on. From any other
    /// client they are dropped: they are not part of the cache key.
    #[arg(long = "trusted-proxy", value_name = "IP[/BITS]")]
    pub trusted_proxies: Vec<String>,
}

/// `cachette check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The settings file.
    pub file: PathBuf,
}

/// Where the one-shot commands find the caches.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// Settings file: connect to the caches' Redis servers and journal
    /// directly. Counters are this command's own; ask a running process with
    /// --admin for its counters.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The admin address of a running process (`http://127.0.0.1:9090`):
    /// ask it instead, with its own counters and journal.
    #[arg(long)]
    pub admin: Option<String>,
}

/// `cachette stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Where the caches are.
    #[command(flatten)]
    pub target: Target,
    /// Only this cache.
    #[arg(long)]
    pub cache: Option<String>,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What to purge: exactly one.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct PurgeWhat {
    /// One data-API key (the cache's key prefix and version applied).
    #[arg(long)]
    pub key: Option<String>,
    /// One page, every `Vary` variant: `https://host/path?query`.
    #[arg(long)]
    pub url: Option<String>,
    /// Every page whose URL starts with this: `https://host/api/`, or
    /// `/api/` for every host.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Every entry stored with this tag.
    #[arg(long)]
    pub tag: Option<String>,
    /// Everything in the cache's namespace.
    #[arg(long)]
    pub all: bool,
}

/// `cachette purge`.
#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// Where the caches are.
    #[command(flatten)]
    pub target: Target,
    /// The cache (alias).
    #[arg(long)]
    pub cache: String,
    /// What to remove.
    #[command(flatten)]
    pub what: PurgeWhat,
    /// Mark stale instead of remove: the next request revalidates (a cheap
    /// 304 when unchanged), and stale-while-revalidate / stale-if-error can
    /// still serve what was purged.
    #[arg(long)]
    pub soft: bool,
    /// The admin bearer token, for --admin.
    #[arg(long, env = "CACHETTE_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// How long a Redis tier may take for the purge (SCAN sweeps of large
    /// keyspaces take a while); with --config.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// `cachette journal`.
#[derive(Debug, Args)]
pub struct JournalArgs {
    /// status or replay.
    #[command(subcommand)]
    pub action: JournalAction,
}

/// What to do with the journal.
#[derive(Debug, Subcommand)]
pub enum JournalAction {
    /// Depth, size, age of the oldest op, and the first ops waiting.
    Status(JournalStatusArgs),
    /// Replays the journal to the master now.
    Replay(JournalReplayArgs),
}

/// `cachette journal status`.
#[derive(Debug, Args)]
pub struct JournalStatusArgs {
    /// The settings file.
    #[arg(long)]
    pub config: PathBuf,
    /// Only this cache.
    #[arg(long)]
    pub cache: Option<String>,
    /// How many waiting ops to list.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `cachette journal replay`.
#[derive(Debug, Args)]
pub struct JournalReplayArgs {
    /// The settings file.
    #[arg(long)]
    pub config: PathBuf,
    /// Only this cache.
    #[arg(long)]
    pub cache: Option<String>,
}

/// `cachette warm`.
#[derive(Debug, Args)]
pub struct WarmArgs {
    /// The settings file (its cache's topology is a fleet of `peers`).
    #[arg(long)]
    pub config: PathBuf,
    /// The cache (alias).
    #[arg(long)]
    pub cache: String,
    /// The peer to copy from: its URL or host:port, as in `peers`.
    #[arg(long)]
    pub from: String,
    /// Entries copied at most (the most recently stored first).
    #[arg(long, default_value_t = 10_000)]
    pub max_entries: usize,
    /// Bytes copied at most, e.g. 256MiB.
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub max_bytes: u64,
}

fn parse_size(text: &str) -> Result<u64, String> {
    text.parse::<cachette::settings::ByteSize>().map(|b| b.0)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("`{text}`: {e} (e.g. 500ms, 30s, 5m)"))
}
