//! `cachette purge`.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use cachette::{
    admin::PurgeRequest,
    core::sweep::{self, SweepObserver, SweepStep},
    ops::{Purge, PurgeReport, TierOutcome},
    settings::{HumanDuration, TierKind},
};
use indicatif::{ProgressBar, ProgressStyle};

use super::{load, open};
use crate::{Failure, Outcome, cli::PurgeArgs, remote, render};

/// Counts what SCAN sweeps remove, per tier, and shows it as it goes.
struct Progress {
    bar: ProgressBar,
    removed: Mutex<BTreeMap<&'static str, u64>>,
}

impl SweepObserver for Progress {
    fn step(&self, step: &SweepStep) {
        let mut removed = self.removed.lock().unwrap_or_else(PoisonError::into_inner);
        *removed.entry(step.tier).or_default() += step.removed;
        let line: Vec<String> = removed
            .iter()
            .map(|(tier, n)| format!("{tier}: {n} removed"))
            .collect();
        self.bar.set_message(line.join(", "));
        self.bar.tick();
    }
}

impl Progress {
    fn new() -> Self {
        // Draws on stderr only when it is a terminal.
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} purging ({elapsed}): {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        Self {
            bar,
            removed: Mutex::new(BTreeMap::new()),
        }
    }

    /// `master 120, local 118`, or `None` when no sweep ran.
    fn summary(&self) -> Option<String> {
        let removed = self.removed.lock().unwrap_or_else(PoisonError::into_inner);
        if removed.is_empty() {
            return None;
        }
        let parts: Vec<String> = removed.iter().map(|(t, n)| format!("{t} {n}")).collect();
        let most = removed.values().max().copied().unwrap_or(0);
        Some(format!("{most} keys removed ({})", parts.join(", ")))
    }
}

fn target(args: &PurgeArgs) -> Result<Purge, Failure> {
    let what = &args.what;
    let purge = if let Some(key) = &what.key {
        Purge::Key(key.clone())
    } else if let Some(url) = &what.url {
        Purge::Url(url.clone())
    } else if let Some(prefix) = &what.prefix {
        Purge::UrlPrefix(prefix.clone())
    } else if let Some(tag) = &what.tag {
        Purge::Tag(tag.clone())
    } else if what.all {
        Purge::All
    } else {
        return Err(Failure::usage(
            "name what to purge: --key, --url, --prefix, --tag or --all",
        ));
    };
    Ok(purge)
}

fn finish(report: &PurgeReport, removed: Option<String>) -> Outcome {
    print!("{}", render::purge(report, removed));
    if report.applied {
        return Ok(());
    }
    let pending: Vec<String> = report
        .tiers
        .iter()
        .filter_map(|(tier, outcome)| match outcome {
            TierOutcome::Done => None,
            TierOutcome::Journaled => Some(format!(
                "{tier} is unreachable: the purge is journaled and reaches it (and the other nodes) when it answers again"
            )),
            TierOutcome::Failed(error) => Some(format!("{tier} did not take it: {error}")),
        })
        .collect();
    Err(Failure::operational(format!(
        "purge not applied everywhere: {}",
        pending.join("; ")
    )))
}

pub(crate) async fn purge(args: PurgeArgs) -> Outcome {
    let purge = target(&args)?;
    if let Some(admin) = &args.target.admin {
        let base = remote::base(admin)?;
        let token = args.token.as_deref().ok_or_else(|| {
            Failure::usage("--admin purges need the admin token: --token or CACHETTE_ADMIN_TOKEN")
        })?;
        let mut request = PurgeRequest::new(args.cache.clone(), &purge);
        request.soft = args.soft;
        let report: PurgeReport = remote::post_json(&base, "/purge", token, &request).await?;
        return finish(&report, None);
    }
    let Some(config) = &args.target.config else {
        return Err(Failure::usage("give --config FILE or --admin URL"));
    };
    let mut settings = load(config)?;
    let Some(cache_settings) = settings.caches.get(&args.cache) else {
        let known: Vec<&String> = settings.caches.keys().collect();
        return Err(Failure::usage(format!(
            "no cache named `{}` in {} (configured: {known:?})",
            args.cache,
            config.display()
        )));
    };
    if !cache_settings.has(TierKind::Master) {
        return Err(Failure::usage(format!(
            "cache `{}` has no Redis tier: its entries live in each process's memory, which this command cannot reach; purge through a running process: --admin http://<its admin address>",
            args.cache
        )));
    }
    // A sweep of a large keyspace takes longer than a request's timeout.
    for redis in settings.redis.values_mut() {
        redis.master_timeout = Some(HumanDuration(args.timeout));
        redis.local_timeout = Some(HumanDuration(args.timeout));
    }
    let caches = open(settings).await?;
    let progress = Arc::new(Progress::new());
    let purging = async {
        if args.soft {
            caches.soft_purge(&args.cache, &purge).await
        } else {
            caches.purge(&args.cache, &purge).await
        }
    };
    let result = sweep::observe(progress.clone(), purging).await;
    progress.bar.finish_and_clear();
    let report = result.map_err(Failure::from)?;
    finish(&report, progress.summary())
}
