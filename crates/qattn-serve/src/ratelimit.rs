//! Per-key rate limits: one token bucket per key id.
//!
//! A bucket holds up to `burst` tokens and refills at `rate_per_sec` tokens per second; a
//! request takes one token. A key seen for the first time starts with a full bucket.
//!
//! ## Exact arithmetic
//! Tokens are kept as integer nanoseconds of "credit": one token is worth the emission interval
//! `T = round(1e9 / rate_per_sec)` ns and credit grows by one per elapsed nanosecond, capped at
//! `round(burst * T)`. Refill, spending and the `retry_after` answer are therefore exact
//! integer operations on [`Instant`] differences: after waiting exactly the `retry_after`
//! returned by [`RateLimiter::check`], the next check for that key succeeds, and one nanosecond
//! earlier it does not. The only rounding is of `T` itself to a whole nanosecond (a relative
//! rate error below `rate_per_sec * 1e-9 / 2`).
//!
//! Time comes from the caller (`now`), so tests inject a clock. A `now` earlier than the last
//! one seen for a key adds no credit (time never runs backwards for a bucket).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Invalid rate-limit parameters.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RateLimitError {
    /// The rate is not a positive finite number.
    #[error("rate limit: rate_per_sec must be a positive finite number, got {0}")]
    Rate(f64),
    /// The burst is not a finite number of at least 1.
    #[error("rate limit: burst must be a finite number >= 1, got {0}")]
    Burst(f64),
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Credit in nanoseconds, at most `RateLimiter::capacity_ns`.
    credit_ns: u128,
    /// The instant `credit_ns` refers to.
    at: Instant,
}

/// A token bucket per key. Thread-safe (`&self` methods, one short mutex section per check).
#[derive(Debug)]
pub struct RateLimiter {
    rate_per_sec: f64,
    burst: f64,
    /// Emission interval: credit one token is worth, in ns (>= 1).
    interval_ns: u128,
    /// Bucket capacity in ns of credit (>= interval_ns).
    capacity_ns: u128,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Buckets are swept for idle (full) entries whenever the map grows past this many keys.
const SWEEP_THRESHOLD: usize = 4096;

impl RateLimiter {
    /// A limiter allowing `rate_per_sec` requests per second per key on average, with bursts of
    /// up to `burst` requests.
    ///
    /// # Panics
    /// When `rate_per_sec` is not positive and finite or `burst` is not finite and at least 1.
    /// Validate user-supplied values with [`RateLimiter::try_new`] instead.
    pub fn new(rate_per_sec: f64, burst: f64) -> RateLimiter {
        match Self::try_new(rate_per_sec, burst) {
            Ok(l) => l,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`RateLimiter::new`], returning an error for invalid parameters.
    pub fn try_new(rate_per_sec: f64, burst: f64) -> Result<RateLimiter, RateLimitError> {
        if !(rate_per_sec.is_finite() && rate_per_sec > 0.0) {
            return Err(RateLimitError::Rate(rate_per_sec));
        }
        if !(burst.is_finite() && burst >= 1.0) {
            return Err(RateLimitError::Burst(burst));
        }
        // f64 -> u128 casts saturate; rates above 1e9/s get the 1 ns floor.
        let interval_ns = ((1e9 / rate_per_sec).round() as u128).max(1);
        let capacity_ns = ((burst * interval_ns as f64).round() as u128).max(interval_ns);
        Ok(RateLimiter {
            rate_per_sec,
            burst,
            interval_ns,
            capacity_ns,
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// The configured rate (tokens per second).
    pub fn rate_per_sec(&self) -> f64 {
        self.rate_per_sec
    }

    /// The configured burst (bucket capacity in tokens).
    pub fn burst(&self) -> f64 {
        self.burst
    }

    /// Takes one token from `key`'s bucket: `Ok(())`, or `Err(retry_after)` — the wait after
    /// which one token will be available (the request is not counted).
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(key) && buckets.len() >= SWEEP_THRESHOLD {
            self.sweep(&mut buckets, now);
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            credit_ns: self.capacity_ns,
            at: now,
        });
        if now > bucket.at {
            let elapsed = now.duration_since(bucket.at).as_nanos();
            bucket.credit_ns = (bucket.credit_ns + elapsed).min(self.capacity_ns);
            bucket.at = now;
        }
        if bucket.credit_ns >= self.interval_ns {
            bucket.credit_ns -= self.interval_ns;
            Ok(())
        } else {
            let wait = self.interval_ns - bucket.credit_ns;
            Err(duration_from_nanos(wait))
        }
    }

    /// Tokens currently available to `key` at `now` (a full bucket for an unseen key), for
    /// diagnostics and tests.
    pub fn available(&self, key: &str, now: Instant) -> f64 {
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let credit = match buckets.get(key) {
            None => self.capacity_ns,
            Some(b) => {
                let elapsed = now.saturating_duration_since(b.at).as_nanos();
                (b.credit_ns + elapsed).min(self.capacity_ns)
            }
        };
        credit as f64 / self.interval_ns as f64
    }

    /// Number of keys with a bucket in memory.
    pub fn tracked_keys(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Drops buckets that would be full at `now`: forgetting them changes nothing, since an
    /// unseen key starts full.
    fn sweep(&self, buckets: &mut HashMap<String, Bucket>, now: Instant) {
        buckets.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.at).as_nanos();
            b.credit_ns + elapsed < self.capacity_ns
        });
    }
}

fn duration_from_nanos(ns: u128) -> Duration {
    let secs = u64::try_from(ns / 1_000_000_000).unwrap_or(u64::MAX);
    Duration::new(secs, (ns % 1_000_000_000) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn burst_then_refill_at_rate() {
        let l = RateLimiter::new(10.0, 3.0); // one token per 100 ms, 3 in the bucket
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.check("k", t0), Ok(()));
        }
        assert_eq!(l.check("k", t0), Err(ms(100)));
        assert_eq!(l.check("k", t0 + ms(40)), Err(ms(60)));
        assert_eq!(l.check("k", t0 + ms(100)), Ok(()));
        assert_eq!(l.check("k", t0 + ms(100)), Err(ms(100)));
        // long idle: refills to burst, not beyond
        let t1 = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(l.check("k", t1), Ok(()));
        }
        assert!(l.check("k", t1).is_err());
    }

    #[test]
    fn keys_have_separate_buckets() {
        let l = RateLimiter::new(1.0, 1.0);
        let t0 = Instant::now();
        assert_eq!(l.check("a", t0), Ok(()));
        assert_eq!(l.check("a", t0), Err(Duration::from_secs(1)));
        assert_eq!(l.check("b", t0), Ok(()));
        assert_eq!(l.tracked_keys(), 2);
    }

    #[test]
    fn time_going_backwards_adds_no_credit() {
        let l = RateLimiter::new(1.0, 1.0);
        let t0 = Instant::now() + Duration::from_secs(10);
        assert_eq!(l.check("a", t0), Ok(()));
        assert!(l.check("a", t0 - Duration::from_secs(5)).is_err());
        assert_eq!(l.check("a", t0 + Duration::from_secs(1)), Ok(()));
    }

    #[test]
    fn fractional_burst_rounds_to_credit() {
        // burst 1.5: one immediately, the second after half an interval
        let l = RateLimiter::new(2.0, 1.5);
        let t0 = Instant::now();
        assert_eq!(l.check("k", t0), Ok(()));
        assert_eq!(l.check("k", t0), Err(ms(250)));
        assert_eq!(l.available("k", t0), 0.5);
    }

    #[test]
    fn invalid_parameters_are_errors() {
        for r in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(
                matches!(RateLimiter::try_new(r, 1.0), Err(RateLimitError::Rate(_))),
                "{r}"
            );
        }
        assert!(matches!(
            RateLimiter::try_new(1.0, 0.5),
            Err(RateLimitError::Burst(_))
        ));
        assert!(matches!(
            RateLimiter::try_new(1.0, f64::NAN),
            Err(RateLimitError::Burst(_))
        ));
        let msg = RateLimiter::try_new(1.0, 0.0).unwrap_err().to_string();
        assert!(msg.contains("burst") && msg.contains(">= 1"), "{msg}");
    }

    #[test]
    fn sweep_forgets_only_full_buckets() {
        let l = RateLimiter::new(1000.0, 1.0);
        let t0 = Instant::now();
        for i in 0..SWEEP_THRESHOLD {
            l.check(&format!("k{i}"), t0).unwrap();
        }
        // k0 just spent its token 0 ns ago; all others too. At t0 + 1 ms everyone is full again.
        l.check("fresh", t0 + ms(1)).unwrap();
        assert_eq!(l.tracked_keys(), 1);
    }

    proptest! {
        /// After an arbitrary history, waiting exactly `retry_after` makes the next check pass,
        /// and waiting 1 ns less does not.
        #[test]
        fn retry_after_is_exact(
            rate in 0.5f64..2000.0,
            burst in 1.0f64..20.0,
            gaps_us in proptest::collection::vec(0u64..50_000, 1..60),
        ) {
            let l = RateLimiter::new(rate, burst);
            let mut now = Instant::now();
            for g in gaps_us {
                now += Duration::from_micros(g);
                if let Err(wait) = l.check("k", now) {
                    prop_assert!(wait > Duration::ZERO);
                    prop_assert!(wait.as_nanos() <= l.interval_ns);
                    let probe = RateLimiter { buckets: Mutex::new(l.buckets.lock().unwrap().clone()), ..RateLimiter::new(rate, burst) };
                    prop_assert!(probe.check("k", now + wait - Duration::from_nanos(1)).is_err());
                    now += wait;
                    prop_assert_eq!(l.check("k", now), Ok(()));
                }
            }
        }

        /// A client that retries exactly when told, starting from a full bucket, gets exactly
        /// floor((capacity + elapsed) / T) requests through, which is at most
        /// burst + rate * elapsed (+1 for the rounding of T).
        #[test]
        fn admitted_count_matches_token_bucket(
            rate in 1.0f64..500.0,
            burst in 1.0f64..10.0,
            secs in 1u64..5,
        ) {
            let l = RateLimiter::new(rate, burst);
            let t0 = Instant::now();
            let end = t0 + Duration::from_secs(secs);
            let mut now = t0;
            let mut admitted = 0u64;
            while now <= end {
                match l.check("k", now) {
                    Ok(()) => admitted += 1,
                    Err(w) => now += w,
                }
            }
            // The k-th request can pass at the earliest when k * T <= capacity + elapsed.
            let expected = (l.capacity_ns + u128::from(secs) * 1_000_000_000) / l.interval_ns;
            prop_assert_eq!(u128::from(admitted), expected);
            let upper = burst + rate * secs as f64 + 1.0;
            prop_assert!(admitted as f64 <= upper);
        }
    }
}
