//! The `cachette` binary as a library: the caching reverse proxy
//! ([`proxy`]) and the operators' commands, so that tests and other tools
//! can run them in-process.
//!
//! ```text
//! cachette proxy   --listen 127.0.0.1:8080 --upstream http://127.0.0.1:3000 [--config caches.toml] [--admin 127.0.0.1:9090]
//! cachette check   caches.toml
//! cachette stats   (--config caches.toml | --admin http://127.0.0.1:9090) [--cache NAME] [--json]
//! cachette purge   (--config caches.toml | --admin URL --token T) --cache NAME (--key K | --url U | --prefix P | --tag T | --all)
//! cachette journal (status | replay) --config caches.toml [--cache NAME]
//! ```

pub mod cli;
mod commands;
mod failure;
pub mod listen;
pub mod proxy;
mod remote;
mod render;
pub mod tls;
mod top;

use std::str::FromStr;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

pub use failure::{Failure, Outcome};

/// Runs a parsed command line.
pub async fn run(cli: cli::Cli) -> Outcome {
    use cli::{Command, JournalAction};
    match cli.command {
        Command::Proxy(args) => commands::proxy(args).await,
        Command::Check(args) => commands::check(&args),
        Command::Stats(args) => commands::stats(args).await,
        Command::Purge(args) => commands::purge(args).await,
        Command::Journal(args) => match args.action {
            JournalAction::Status(args) => commands::journal_status(args).await,
            JournalAction::Replay(args) => commands::journal_replay(args).await,
        },
        Command::Top(args) => top::run(args).await,
        Command::Warm(args) => commands::warm(args).await,
    }
}

/// Logs to stderr. The proxy logs at `info`; the one-shot commands only log
/// errors, so that their output stays their answer. `RUST_LOG` (targets and
/// levels, e.g. `cachette=debug,info`) overrides both.
pub fn init_logging(command: &cli::Command) {
    let default = match command {
        cli::Command::Proxy(_) => LevelFilter::INFO,
        _ => LevelFilter::OFF,
    };
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|spec| Targets::from_str(&spec).ok())
        .unwrap_or_else(|| Targets::new().with_default(default));
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false),
        )
        .with(filter)
        .try_init();
}
