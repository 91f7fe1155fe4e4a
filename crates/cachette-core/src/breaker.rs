//! A lock-free circuit breaker per tier.

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// When a tier's breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures (errors or timeouts) that open the breaker.
    pub failure_threshold: u32,
    /// How long an open breaker skips the tier before one probe call is let through.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(2),
        }
    }
}

/// The state of a tier's circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are skipped until the open period ends.
    Open,
    /// The open period ended; one probe call is in flight.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half-open`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half-open",
        }
    }
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

fn millis_since_start() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Skips a tier that keeps failing, and lets one probe through after a pause.
///
/// Closed → (N consecutive failures) → Open → (after `open_for`) → HalfOpen
/// with exactly one probe → Closed on success, Open again on failure.
#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: AtomicU8,
    consecutive_failures: AtomicU32,
    /// When the breaker opened, or (half-open) when the probe started.
    opened_at_ms: AtomicU64,
}

/// What [`CircuitBreaker::admit`] decided for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The breaker is closed: the call goes through.
    Pass,
    /// The call is the one probe of a half-open breaker. Its outcome must be
    /// recorded; a probe abandoned without one is reported with
    /// [`CircuitBreaker::abandon_probe`] (see [`ProbeGuard`]).
    Probe,
    /// The breaker is open: skip the tier.
    Deny,
}

/// Hands a probe back if its call is dropped before its outcome is recorded
/// (the caller was cancelled: a client hung up, a deadline around the call).
/// Without it the breaker would wait for an outcome that never comes.
#[derive(Debug)]
pub struct ProbeGuard<'a> {
    breaker: Option<&'a CircuitBreaker>,
    /// When this probe was claimed: only this probe is handed back (not a
    /// newer one that took over after this one expired).
    claimed_at: u64,
}

impl<'a> ProbeGuard<'a> {
    /// Guards `admission` on `breaker` (does nothing unless it is a probe).
    /// Call right after [`CircuitBreaker::admit`].
    pub fn new(breaker: &'a CircuitBreaker, admission: Admission) -> Self {
        Self {
            breaker: (admission == Admission::Probe).then_some(breaker),
            claimed_at: breaker.opened_at_ms.load(Ordering::Acquire),
        }
    }

    /// The probe's outcome was recorded: nothing to hand back.
    pub fn disarm(mut self) {
        self.breaker = None;
    }
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if let Some(breaker) = self.breaker {
            breaker.abandon_probe_claimed_at(self.claimed_at);
        }
    }
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: AtomicU8::new(CLOSED),
            consecutive_failures: AtomicU32::new(0),
            opened_at_ms: AtomicU64::new(0),
        }
    }

    /// Whether a call may go through now. In the open state, the first caller
    /// after the pause becomes the probe (half-open); others stay skipped.
    /// Prefer [`admit`](Self::admit), which tells the probe apart.
    pub fn allow(&self) -> bool {
        self.admit() != Admission::Deny
    }

    /// Decides one call. In the open state, the first caller after the pause
    /// becomes the probe (half-open); others stay skipped. A probe that has
    /// neither succeeded nor failed within another `open_for` is presumed
    /// lost and the next caller probes instead, so a breaker can never stay
    /// half-open for good.
    pub fn admit(&self) -> Admission {
        let state = self.state.load(Ordering::Acquire);
        if state == CLOSED {
            return Admission::Pass;
        }
        let since = self.opened_at_ms.load(Ordering::Acquire);
        let open_ms = u64::try_from(self.config.open_for.as_millis()).unwrap_or(u64::MAX);
        let now = millis_since_start();
        if now.saturating_sub(since) < open_ms {
            return Admission::Deny;
        }
        // Claim the probe: whoever moves the start time wins.
        if self
            .opened_at_ms
            .compare_exchange(since, now, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Admission::Deny;
        }
        match self
            .state
            .compare_exchange(state, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Admission::Probe,
            Err(_) => Admission::Deny,
        }
    }

    /// A probe's call was dropped before it had an outcome: the breaker is
    /// open again, and the next caller may probe at once (a cancelled call
    /// says nothing about the tier's health).
    pub fn abandon_probe(&self) {
        self.abandon_probe_claimed_at(self.opened_at_ms.load(Ordering::Acquire));
    }

    /// [`abandon_probe`](Self::abandon_probe) for the probe claimed at
    /// `claimed_at`; nothing if another probe has taken over since.
    fn abandon_probe_claimed_at(&self, claimed_at: u64) {
        if self.state.load(Ordering::Acquire) != HALF_OPEN {
            return;
        }
        let open_ms = u64::try_from(self.config.open_for.as_millis()).unwrap_or(u64::MAX);
        let now = millis_since_start();
        // Backdate the claim so that the next caller may probe at once.
        if self
            .opened_at_ms
            .compare_exchange(
                claimed_at,
                now.saturating_sub(open_ms),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            let _ =
                self.state
                    .compare_exchange(HALF_OPEN, OPEN, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Records a successful call: closes the breaker.
    pub fn record_success(&self) {
        // Read before writing: a store on every success would make every
        // core's call pull the cache line over.
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Release);
        }
        if self.state.load(Ordering::Acquire) != CLOSED {
            self.state.store(CLOSED, Ordering::Release);
            tracing::info!("circuit breaker closed: tier answered again");
        }
    }

    /// Records a failed call; returns `true` when this failure opened the breaker.
    pub fn record_failure(&self) -> bool {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        let state = self.state.load(Ordering::Acquire);
        let should_open =
            state == HALF_OPEN || (state == CLOSED && failures >= self.config.failure_threshold);
        if should_open {
            self.opened_at_ms
                .store(millis_since_start(), Ordering::Release);
            self.state.store(OPEN, Ordering::Release);
        }
        should_open
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_probes_once() {
        let breaker = CircuitBreaker::new(BreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_millis(30),
        });
        assert!(breaker.allow());
        assert!(!breaker.record_failure());
        assert!(!breaker.record_failure());
        assert!(breaker.record_failure());
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(!breaker.allow());
        std::thread::sleep(Duration::from_millis(40));
        assert!(breaker.allow(), "first caller after the pause probes");
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(!breaker.allow(), "only one probe at a time");
        assert!(breaker.record_failure(), "a failed probe reopens");
        assert_eq!(breaker.state(), BreakerState::Open);
        std::thread::sleep(Duration::from_millis(40));
        {
            let probe = ProbeGuard::new(&breaker, breaker.admit());
            assert_eq!(breaker.state(), BreakerState::HalfOpen);
            drop(probe); // the probe's caller was cancelled
        }
        assert_eq!(
            breaker.admit(),
            Admission::Probe,
            "an abandoned probe is handed to the next caller at once"
        );
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(
            breaker.admit(),
            Admission::Probe,
            "a probe that never reports expires after open_for"
        );
        assert!(breaker.record_failure());
        assert_eq!(breaker.state(), BreakerState::Open);
        std::thread::sleep(Duration::from_millis(40));
        assert!(breaker.allow());
        breaker.record_success();
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.allow());
    }
}
