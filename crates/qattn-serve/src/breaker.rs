//! Circuit breaker around Monte-Carlo inference.
//!
//! - **Closed**: requests run Monte-Carlo attention ([`Route::Mc`]). Failures (errors,
//!   non-finite outputs, blown latency budgets — the caller decides) are counted in a sliding
//!   window; `failure_threshold` failures within `window` open the breaker.
//! - **Open**: requests run exact attention ([`Route::Exact`]) until `open_for` has elapsed.
//! - **Half-open**: the first [`Breaker::route`] call after `open_for` gets [`Route::Probe`]
//!   — exactly one caller, even under concurrency (the transition happens under a mutex) — and
//!   everyone else keeps getting `Exact`. The probe's [`Breaker::record_success`] closes the
//!   breaker (and clears the failure window); its [`Breaker::record_failure`] re-opens it for
//!   another `open_for`. A probe that never reports (its caller vanished) does not wedge the
//!   breaker: after a further `open_for` without an outcome, the next caller gets a new probe.
//!
//! Outcomes are not tied to the route that produced them: a Monte-Carlo request admitted while
//! closed that finishes while half-open is taken as the probe's outcome. That is conservative
//! in both directions (a late failure re-opens, a late success is real evidence MC works).
//! Failures reported while open are ignored (they come from requests admitted earlier).
//!
//! `failure_threshold == 0` disables the breaker: it stays closed.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Monte-Carlo inference runs.
    Closed,
    /// Exact inference runs until the open period ends.
    Open,
    /// One probe request is trying Monte-Carlo inference.
    HalfOpen,
}

impl BreakerState {
    /// The value of the `qattn_breaker_state` gauge: 0 closed, 1 open, 2 half-open.
    pub fn gauge_value(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
        }
    }

    /// Lower-case name (`closed`, `open`, `half_open`).
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Which attention a request should use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// Monte-Carlo attention (breaker closed).
    Mc,
    /// Exact attention (breaker open, or half-open with the probe already out).
    Exact,
    /// This request is the half-open probe: try Monte-Carlo and report the outcome.
    Probe,
}

/// Breaker parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Failures within `window` that open the breaker (0 disables the breaker).
    pub failure_threshold: u32,
    /// Sliding window for counting failures.
    pub window: Duration,
    /// How long the breaker stays open before a probe is allowed.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            window: Duration::from_secs(30),
            open_for: Duration::from_secs(10),
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    /// Failure times within the window (closed state), oldest first.
    failures: VecDeque<Instant>,
    /// Open: when it opened. Half-open: when the current probe was handed out.
    since: Instant,
}

/// A thread-safe circuit breaker (see the [module docs](self)).
#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    inner: Mutex<Inner>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(cfg: BreakerConfig) -> Self {
        Breaker {
            cfg,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                failures: VecDeque::new(),
                since: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.cfg
    }

    /// Route for a request arriving at `now`: [`Route::Mc`] (closed), [`Route::Exact`] (open),
    /// [`Route::Probe`] (the one request that tries Monte-Carlo once `open_for` has elapsed).
    pub fn route(&self, now: Instant) -> Route {
        let mut inner = self.lock();
        match inner.state {
            BreakerState::Closed => Route::Mc,
            BreakerState::Open | BreakerState::HalfOpen => {
                if now.saturating_duration_since(inner.since) >= self.cfg.open_for {
                    inner.state = BreakerState::HalfOpen;
                    inner.since = now;
                    Route::Probe
                } else {
                    Route::Exact
                }
            }
        }
    }

    /// Reports a successful Monte-Carlo request. Closes a half-open breaker.
    pub fn record_success(&self, _now: Instant) {
        let mut inner = self.lock();
        if inner.state == BreakerState::HalfOpen {
            inner.state = BreakerState::Closed;
            inner.failures.clear();
        }
    }

    /// Reports a failed Monte-Carlo request at `now`. Opens a closed breaker once the window
    /// holds `failure_threshold` failures; re-opens a half-open one.
    pub fn record_failure(&self, now: Instant) {
        if self.cfg.failure_threshold == 0 {
            return;
        }
        let mut inner = self.lock();
        match inner.state {
            BreakerState::Closed => {
                while let Some(&t) = inner.failures.front() {
                    if now.saturating_duration_since(t) <= self.cfg.window {
                        break;
                    }
                    inner.failures.pop_front();
                }
                inner.failures.push_back(now);
                if inner.failures.len() >= self.cfg.failure_threshold as usize {
                    inner.state = BreakerState::Open;
                    inner.since = now;
                    inner.failures.clear();
                }
            }
            BreakerState::HalfOpen => {
                inner.state = BreakerState::Open;
                inner.since = now;
            }
            BreakerState::Open => {}
        }
    }

    /// The current state (an open breaker whose `open_for` has elapsed stays `Open` until the
    /// next [`Breaker::route`] call hands out the probe).
    pub fn state(&self) -> BreakerState {
        self.lock().state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 3,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
        }
    }

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn opens_after_threshold_failures_within_window() {
        let b = Breaker::new(cfg());
        let t0 = Instant::now();
        assert_eq!(b.route(t0), Route::Mc);
        b.record_failure(t0);
        b.record_failure(t0 + s(1));
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.route(t0 + s(2)), Route::Mc);
        b.record_failure(t0 + s(2));
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.route(t0 + s(3)), Route::Exact);
        assert_eq!(b.route(t0 + s(6)), Route::Exact); // 4 s after opening
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let b = Breaker::new(cfg());
        let t0 = Instant::now();
        b.record_failure(t0);
        b.record_failure(t0 + s(1));
        b.record_failure(t0 + s(12)); // first two are > 10 s old
        b.record_failure(t0 + s(13)); // t0 + 1 s is 12 s old
        assert_eq!(b.state(), BreakerState::Closed);
        b.record_failure(t0 + s(14));
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn successes_while_closed_do_not_reset_the_window() {
        let b = Breaker::new(cfg());
        let t0 = Instant::now();
        b.record_failure(t0);
        b.record_success(t0);
        b.record_failure(t0);
        b.record_success(t0);
        b.record_failure(t0);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn probe_success_closes_and_probe_failure_reopens() {
        let b = Breaker::new(cfg());
        let t0 = Instant::now();
        for _ in 0..3 {
            b.record_failure(t0);
        }
        assert_eq!(b.route(t0 + s(5)), Route::Probe);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.route(t0 + s(5)), Route::Exact);
        b.record_failure(t0 + s(6));
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.route(t0 + s(10)), Route::Exact); // re-opened at 6 s, for 5 s
        assert_eq!(b.route(t0 + s(11)), Route::Probe);
        b.record_success(t0 + s(11));
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.route(t0 + s(11)), Route::Mc);
        // the failure window was cleared on closing: two more failures do not open it
        b.record_failure(t0 + s(12));
        b.record_failure(t0 + s(12));
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn failures_while_open_are_ignored() {
        let b = Breaker::new(cfg());
        let t0 = Instant::now();
        for _ in 0..3 {
            b.record_failure(t0);
        }
        b.record_failure(t0 + s(4)); // late report: must not extend the open period
        assert_eq!(b.route(t0 + s(5)), Route::Probe);
    }

    #[test]
    fn lost_probe_is_replaced_after_open_for() {
        let b = Breaker::new(cfg());
        let t0 = Instant::now();
        for _ in 0..3 {
            b.record_failure(t0);
        }
        assert_eq!(b.route(t0 + s(5)), Route::Probe);
        assert_eq!(b.route(t0 + s(9)), Route::Exact);
        assert_eq!(b.route(t0 + s(10)), Route::Probe);
        assert_eq!(b.route(t0 + s(10)), Route::Exact);
    }

    #[test]
    fn zero_threshold_disables() {
        let b = Breaker::new(BreakerConfig {
            failure_threshold: 0,
            ..cfg()
        });
        let t0 = Instant::now();
        for _ in 0..100 {
            b.record_failure(t0);
        }
        assert_eq!(b.route(t0), Route::Mc);
    }

    #[test]
    fn exactly_one_concurrent_caller_gets_the_probe() {
        for _ in 0..20 {
            let b = Arc::new(Breaker::new(cfg()));
            let t0 = Instant::now();
            for _ in 0..3 {
                b.record_failure(t0);
            }
            let probes = Arc::new(AtomicUsize::new(0));
            let exact = Arc::new(AtomicUsize::new(0));
            let barrier = Arc::new(std::sync::Barrier::new(8));
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let (b, probes, exact, barrier) =
                        (b.clone(), probes.clone(), exact.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        for _ in 0..100 {
                            match b.route(t0 + s(7)) {
                                Route::Probe => probes.fetch_add(1, Ordering::SeqCst),
                                Route::Exact => exact.fetch_add(1, Ordering::SeqCst),
                                Route::Mc => panic!("closed while open"),
                            };
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            assert_eq!(probes.load(Ordering::SeqCst), 1);
            assert_eq!(exact.load(Ordering::SeqCst), 799);
        }
    }

    #[test]
    fn gauge_values() {
        assert_eq!(BreakerState::Closed.gauge_value(), 0.0);
        assert_eq!(BreakerState::Open.gauge_value(), 1.0);
        assert_eq!(BreakerState::HalfOpen.gauge_value(), 2.0);
    }
}
