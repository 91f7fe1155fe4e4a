//! `cachette top`: a live terminal view of a running process's caches,
//! read from its admin routes (`GET /stats`, the same report as the status
//! page). One block per cache (figures, a sparkline of the hit ratio, one
//! row per tier), redrawn every interval; `q`, Esc or Ctrl-C quits. Plain
//! terminal I/O through crossterm: it works over SSH.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use cachette::ops::{CacheReport, Report, TierReport};
use ratatui::{
    Frame,
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Paragraph, Row, Sparkline, Table},
};

use crate::{
    Failure,
    cli::TopArgs,
    remote,
    render::{self, bytes},
};

/// Samples of hit ratio kept per cache (the sparkline's width at most).
const KEEP: usize = 240;

/// What the view remembers between readings.
#[derive(Debug, Default)]
pub(crate) struct View {
    /// The admin base URL, for the header.
    pub(crate) admin: String,
    /// The last report read.
    pub(crate) report: Option<Report>,
    /// When it was read.
    read_at: Option<Instant>,
    /// The last failure to read one, if the latest attempt failed.
    pub(crate) error: Option<String>,
    /// Per cache: the counters of the previous reading, and the hit ratio
    /// (per mille) of each interval since.
    history: HashMap<String, (Counts, VecDeque<u64>)>,
    /// Requests per second per cache over the last interval.
    rates: HashMap<String, f64>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    requests: u64,
    hits: u64,
}

fn counts(cache: &CacheReport) -> Counts {
    let c = &cache.counters;
    Counts {
        requests: c.hits + c.misses + c.stale_served,
        hits: c.hits + c.stale_served,
    }
}

impl View {
    /// Takes a new reading.
    pub(crate) fn update(&mut self, report: Report, now: Instant) {
        let seconds = self
            .read_at
            .map(|at| now.saturating_duration_since(at).as_secs_f64())
            .filter(|s| *s > 0.0);
        for cache in &report.caches {
            let current = counts(cache);
            let (previous, ratios) = self
                .history
                .entry(cache.alias.clone())
                .or_insert_with(|| (current, VecDeque::new()));
            // Counters that went down: the process restarted; this interval
            // says nothing.
            let reset = current.requests < previous.requests || current.hits < previous.hits;
            let requests = current.requests.saturating_sub(previous.requests);
            let hits = current.hits.saturating_sub(previous.hits).min(requests);
            if let (Some(seconds), false) = (seconds, reset) {
                self.rates
                    .insert(cache.alias.clone(), requests as f64 / seconds);
                // An idle interval keeps the last ratio: the line does not
                // drop to zero when nothing happens.
                let ratio = match requests {
                    0 => ratios.back().copied().unwrap_or(0),
                    _ => hits.saturating_mul(1000) / requests,
                };
                ratios.push_back(ratio);
                while ratios.len() > KEEP {
                    ratios.pop_front();
                }
            }
            *previous = current;
        }
        self.report = Some(report);
        self.read_at = Some(now);
        self.error = None;
    }
}

fn state_style(state: &str) -> Style {
    let color = match state {
        "ok" | "closed" => Color::Green,
        "degraded" | "half-open" => Color::Yellow,
        "down" | "open" => Color::Red,
        _ => Color::Reset,
    };
    Style::default().fg(color).add_modifier(Modifier::BOLD)
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "—".into()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

/// Latency, or a dash for a tier that timed nothing.
fn micros(us: u64) -> String {
    if us == 0 {
        "—".into()
    } else {
        render::micros(us)
    }
}

fn tier_row(tier: &TierReport) -> Row<'static> {
    let up = match tier.up {
        Some(true) => "up".to_owned(),
        Some(false) => "down".to_owned(),
        None => "—".to_owned(),
    };
    let memory = match (tier.bytes, tier.capacity_bytes) {
        (Some(used), Some(max)) => format!("{} / {}", bytes(used), bytes(max)),
        (Some(used), None) => bytes(used),
        _ => "—".into(),
    };
    Row::new(vec![
        Cell::from(tier.name.clone()),
        Cell::from(tier.role.clone().unwrap_or_else(|| tier.kind.clone())),
        Cell::from(tier.address.clone().unwrap_or_else(|| "—".into())),
        Cell::from(up),
        Cell::from(Span::styled(
            tier.breaker.clone(),
            state_style(&tier.breaker),
        )),
        Cell::from(percent(tier.hits, tier.hits + tier.misses)),
        Cell::from(micros(tier.latency.p50_us)),
        Cell::from(micros(tier.latency.p99_us)),
        Cell::from(tier.errors.to_string()),
        Cell::from(memory),
    ])
}

/// Lines a cache's block takes: borders, states, figures, sparkline,
/// table head and one line per tier.
fn cache_height(cache: &CacheReport) -> u16 {
    let tiers = u16::try_from(cache.tiers.len()).unwrap_or(u16::MAX);
    tiers.saturating_add(7)
}

fn draw_cache(frame: &mut Frame<'_>, area: Rect, view: &View, cache: &CacheReport) {
    let c = &cache.counters;
    let title = Line::from(vec![
        Span::raw(format!(" {} ", cache.alias)),
        Span::styled(cache.status.as_str(), state_style(cache.status.as_str())),
        Span::raw(" "),
    ]);
    let block = Block::default().borders(Borders::ALL).title(title);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [alarms, figures, spark, table] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(2),
        Constraint::Min(1),
    ])
    .areas(inner);
    let (requests, hits) = (c.hits + c.misses + c.stale_served, c.hits + c.stale_served);
    let rate = view.rates.get(&cache.alias).copied().unwrap_or(0.0);
    frame.render_widget(
        Paragraph::new(Line::from(Span::raw(format!(
            "req/s {rate:.1}  hit ratio {}  hits {}  misses {}  stale {}  coalesced {}  origin errors {}",
            percent(hits, requests),
            c.hits,
            c.misses,
            c.stale_served,
            c.coalesced,
            c.origin_errors
        )))),
        figures,
    );
    // The states an operator acts on come first, on their own line, so a
    // narrow terminal does not cut them off.
    let mut spans = Vec::new();
    if let Some(journal) = &cache.journal {
        let style = if journal.depth > 0 || !journal.writable {
            Style::default()
                .fg(Color::Yellow)
                .add_modifier(Modifier::BOLD)
        } else {
            Style::default()
        };
        let text = if journal.writable {
            format!("  journal {} waiting", journal.depth)
        } else {
            format!("  journal {} waiting, NOT WRITABLE", journal.depth)
        };
        spans.push(Span::styled(text, style));
    }
    if let Some(redis) = &cache.redis {
        let (bus, style) = match redis.bus_connected {
            Some(true) => ("bus connected", Style::default().fg(Color::Green)),
            Some(false) => (
                "bus DOWN",
                Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
            ),
            None => ("bus off", Style::default()),
        };
        spans.push(Span::styled(format!("  {bus}"), style));
        spans.push(Span::raw(format!(
            " ({} resubscriptions)  master {}  failovers {}",
            redis.bus_subscriptions,
            redis.master.as_deref().unwrap_or("unknown"),
            redis.failovers,
        )));
    }
    if spans.is_empty() {
        spans.push(Span::raw("  memory only"));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), alarms);
    let ratios: Vec<u64> = view
        .history
        .get(&cache.alias)
        .map(|(_, r)| {
            let width = usize::from(spark.width);
            r.iter()
                .skip(r.len().saturating_sub(width))
                .copied()
                .collect()
        })
        .unwrap_or_default();
    frame.render_widget(
        Sparkline::default()
            .data(&ratios)
            .max(1000)
            .style(Style::default().fg(Color::Green)),
        spark,
    );
    let header = Row::new([
        "tier", "role", "address", "up", "breaker", "hit%", "p50", "p99", "errors", "memory",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    let widths = [
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(22),
        Constraint::Length(5),
        Constraint::Length(10),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Min(10),
    ];
    frame.render_widget(
        Table::new(cache.tiers.iter().map(tier_row), widths).header(header),
        table,
    );
}

/// Draws the whole view.
pub(crate) fn draw(frame: &mut Frame<'_>, view: &View) {
    let area = frame.area();
    let [header, body] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(area);
    let status = view
        .report
        .as_ref()
        .map_or("unknown", |r| r.status.as_str());
    let mut spans = vec![
        Span::styled(
            "cachette top ",
            Style::default().add_modifier(Modifier::BOLD),
        ),
        Span::raw(format!("{}  status ", view.admin)),
        Span::styled(status, state_style(status)),
        Span::raw("  (q quits)"),
    ];
    if let Some(error) = &view.error {
        spans.push(Span::styled(
            format!("  cannot read /stats: {error}"),
            Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
        ));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), header);
    let Some(report) = &view.report else {
        return;
    };
    // As many whole blocks as fit, then a line saying how many did not.
    let mut room = body.height;
    let mut shown = 0;
    for cache in &report.caches {
        let needed = cache_height(cache);
        let reserve = u16::from(shown + 1 < report.caches.len());
        if needed.saturating_add(reserve) > room {
            break;
        }
        room -= needed;
        shown += 1;
    }
    let mut constraints: Vec<Constraint> = report.caches[..shown]
        .iter()
        .map(|c| Constraint::Length(cache_height(c)))
        .collect();
    constraints.push(Constraint::Min(0));
    let areas = Layout::vertical(constraints).split(body);
    for (cache, area) in report.caches[..shown].iter().zip(areas.iter()) {
        draw_cache(frame, *area, view, cache);
    }
    let hidden = report.caches.len() - shown;
    if hidden > 0 {
        if let Some(rest) = areas.last() {
            frame.render_widget(
                Paragraph::new(format!(
                    "… {hidden} more cache(s): a taller terminal shows them"
                )),
                *rest,
            );
        }
    }
}

/// Reads `/stats` within `limit`.
async fn read(admin: &str, limit: Duration) -> Result<Report, String> {
    match tokio::time::timeout(limit, remote::get_json::<Report>(admin, "/stats")).await {
        Ok(Ok(report)) => Ok(report),
        Ok(Err(failure)) => Err(failure.to_string()),
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(limit)
        )),
    }
}

/// Restores the terminal however the view ends.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// `cachette top`.
pub(crate) async fn run(args: TopArgs) -> Result<(), Failure> {
    let admin = remote::base(&args.admin)?;
    let interval = args
        .interval
        .clamp(Duration::from_millis(100), Duration::from_secs(3600));
    let limit = interval.max(Duration::from_secs(2));
    // Unreachable at the start: a clear error, not an empty screen.
    let first = read(&admin, limit)
        .await
        .map_err(|error| Failure::operational(format!("cannot read {admin}/stats: {error}")))?;
    let mut view = View {
        admin: admin.clone(),
        ..View::default()
    };
    view.update(first, Instant::now());

    let mut terminal = ratatui::try_init()
        .map_err(|e| Failure::operational(format!("cannot use this terminal: {e}")))?;
    let _restore = Restore;
    // Keys are read on a thread of their own (crossterm's reads block); it
    // wakes `quit` on q, Esc or Ctrl-C, and ends when the view does.
    let quit = Arc::new(tokio::sync::Notify::new());
    let ended = Arc::new(AtomicBool::new(false));
    let _end = End(ended.clone());
    {
        let (quit, ended) = (quit.clone(), ended.clone());
        std::thread::spawn(move || {
            while !ended.load(Ordering::Relaxed) {
                match event::poll(Duration::from_millis(50)) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(_) => break,
                }
                let Ok(Event::Key(key)) = event::read() else {
                    continue;
                };
                let ctrl_c =
                    key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
                if key.kind == KeyEventKind::Press
                    && (ctrl_c || matches!(key.code, KeyCode::Char('q') | KeyCode::Esc))
                {
                    break;
                }
            }
            // A permit: the view quits even if it is not waiting right now.
            quit.notify_one();
        });
    }
    // A reading slower than the interval delays the next one (no burst of
    // back-to-back readings when the admin routes are slow).
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        terminal
            .draw(|frame| draw(frame, &view))
            .map_err(|e| Failure::operational(format!("cannot draw: {e}")))?;
        tokio::select! {
            () = quit.notified() => return Ok(()),
            _ = ticker.tick() => {}
        }
        tokio::select! {
            () = quit.notified() => return Ok(()),
            read = read(&admin, limit) => match read {
                Ok(report) => view.update(report, Instant::now()),
                Err(error) => view.error = Some(error),
            },
        }
    }
}

/// Tells the key thread that the view ended.
struct End(Arc<AtomicBool>);

impl Drop for End {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::{Terminal, backend::TestBackend};

    fn report(hits: u64, misses: u64, breaker: &str) -> Report {
        serde_json::from_value(serde_json::json!({
            "status": if breaker == "open" { "degraded" } else { "ok" },
            "caches": [{
                "alias": "pages",
                "status": if breaker == "open" { "degraded" } else { "ok" },
                "counters": {"hits": hits, "misses": misses, "stale_served": 0, "coalesced": 0,
                    "hit_for_miss": 0, "stored": misses, "not_stored": 0, "revalidated": 0,
                    "bypassed": 0, "origin_errors": 0, "invalidations": 0},
                "tiers": [
                    {"name": "memory", "kind": "memory", "breaker": "closed", "hits": hits, "misses": misses,
                     "errors": 0, "timeouts": 0, "skipped": 0, "writes": 0, "promotions": 0,
                     "bytes": 2048, "capacity_bytes": 67108864,
                     "latency": {"count": 0, "p50_us": 0, "p90_us": 0, "p99_us": 0}},
                    {"name": "master", "kind": "redis", "up": breaker != "open", "breaker": breaker,
                     "role": "master", "address": "10.0.0.5:6379", "hits": 0, "misses": misses,
                     "errors": 3, "timeouts": 0, "skipped": 0, "writes": 0, "promotions": 0,
                     "latency": {"count": 5, "p50_us": 512, "p90_us": 1024, "p99_us": 2048}}
                ],
                "journal": {"path": "j", "depth": 4, "bytes": 100, "replayed": 0, "obsolete": 0,
                    "rejected": 0, "unreadable": 0, "dropped": 0, "collapsed": 0, "io_errors": 0,
                    "writable": true}
            }]
        }))
        .unwrap()
    }

    fn screen(view: &View) -> String {
        screen_of(view, 140, 20)
    }

    fn screen_of(view: &View, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|frame| draw(frame, view)).unwrap();
        let buffer = terminal.backend().buffer().clone();
        let mut out = String::new();
        for y in 0..buffer.area.height {
            for x in 0..buffer.area.width {
                out.push_str(buffer[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    #[test]
    fn rows_per_cache_and_tier_with_states_in_words_and_the_rate_between_readings() {
        let mut view = View {
            admin: "http://127.0.0.1:9090".into(),
            ..View::default()
        };
        let start = Instant::now();
        view.update(report(10, 10, "closed"), start);
        view.update(report(110, 10, "open"), start + Duration::from_secs(2));
        let text = screen(&view);
        assert!(text.contains(" pages "), "{text}");
        assert!(text.contains("status degraded"), "{text}");
        assert!(text.contains("req/s 50.0"), "{text}");
        assert!(text.contains("memory") && text.contains("master"), "{text}");
        assert!(
            text.contains("10.0.0.5:6379") && text.contains("open"),
            "{text}"
        );
        assert!(text.contains("journal 4 waiting"), "{text}");
        assert!(text.contains("2.0 KiB / 64.0 MiB"), "{text}");
        // 100 hits of 100 requests in the interval.
        assert_eq!(view.history["pages"].1.back(), Some(&1000));
    }

    #[test]
    fn a_failed_reading_is_shown_and_the_last_report_kept() {
        let mut view = View::default();
        view.update(report(1, 1, "closed"), Instant::now());
        view.error = Some("connection refused".into());
        let text = screen(&view);
        assert!(
            text.contains("cannot read /stats: connection refused"),
            "{text}"
        );
        assert!(text.contains(" pages "), "{text}");
    }

    #[test]
    fn a_restart_is_not_a_spike_and_the_alarms_fit_a_narrow_terminal() {
        let mut view = View::default();
        let start = Instant::now();
        view.update(report(100, 100, "closed"), start);
        // The process restarted: counters went down.
        view.update(report(1, 0, "closed"), start + Duration::from_secs(1));
        assert!(view.history["pages"].1.is_empty(), "no interval recorded");
        view.update(report(2, 0, "closed"), start + Duration::from_secs(2));
        assert_eq!(view.history["pages"].1.back(), Some(&1000));
        let text = screen_of(&view, 60, 20);
        assert!(text.contains("journal 4 waiting"), "{text}");
    }

    #[test]
    fn caches_that_do_not_fit_are_counted_not_squeezed() {
        let mut many = report(1, 1, "closed");
        let one = many.caches[0].clone();
        many.caches = (0..5)
            .map(|i| {
                let mut cache = one.clone();
                cache.alias = format!("cache{i}");
                cache
            })
            .collect();
        let mut view = View::default();
        view.update(many, Instant::now());
        let text = screen_of(&view, 140, 24);
        assert!(
            text.contains(" cache0 ") && text.contains(" cache1 "),
            "{text}"
        );
        assert!(!text.contains(" cache2 "), "{text}");
        assert!(text.contains("3 more cache(s)"), "{text}");
    }
}
