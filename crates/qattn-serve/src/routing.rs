//! Model versions: weighted A/B splits with sticky assignment, and automatic rollback.
//!
//! - [`Split`] picks a version for each request: by a uniform draw, or — when the request
//!   carries a sticky key (an API key id, a user id) — by a stable hash of that key, so the same
//!   key keeps landing on the same version for as long as the split is unchanged. The hash is
//!   FNV-1a followed by the SplitMix64 finaliser: fixed, documented, and independent of the Rust
//!   release or process (unlike `std`'s `DefaultHasher`).
//! - [`RolloutMonitor`] watches a newly promoted version and answers with the previous version
//!   once the promoted one's error rate exceeds a threshold within a sliding time window.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// Invalid version splits.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RoutingError {
    /// The split lists no version.
    #[error("traffic split: no versions given")]
    Empty,
    /// A version name is empty.
    #[error("traffic split: entry {index} has an empty version name")]
    EmptyVersion {
        /// 0-based position in the list.
        index: usize,
    },
    /// A version appears twice.
    #[error("traffic split: version {version:?} is listed twice")]
    Duplicate {
        /// The version.
        version: String,
    },
    /// A weight is negative, NaN or infinite.
    #[error(
        "traffic split: version {version:?} has weight {weight}; weights must be finite and >= 0"
    )]
    InvalidWeight {
        /// The version.
        version: String,
        /// The weight given.
        weight: f64,
    },
    /// All weights are zero.
    #[error("traffic split: the weights sum to 0; at least one version needs a positive weight")]
    ZeroTotal,
    /// The weights are finite but their sum is not.
    #[error("traffic split: the weights sum to more than f64::MAX; use smaller weights")]
    TotalOverflow,
}

/// A weighted split of traffic between versions: `(version, weight)` pairs, weights >= 0 with a
/// positive sum; a version's share is its weight over the sum. Zero-weight versions are never
/// chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    versions: Vec<String>,
    weights: Vec<f64>,
    /// Cumulative normalised weights; the last one is exactly 1.
    cumulative: Vec<f64>,
}

impl Split {
    /// Validates and builds a split.
    pub fn new(weights: Vec<(String, f64)>) -> Result<Split, RoutingError> {
        if weights.is_empty() {
            return Err(RoutingError::Empty);
        }
        for (i, (v, w)) in weights.iter().enumerate() {
            if v.is_empty() {
                return Err(RoutingError::EmptyVersion { index: i });
            }
            if weights[..i].iter().any(|(u, _)| u == v) {
                return Err(RoutingError::Duplicate { version: v.clone() });
            }
            if !(w.is_finite() && *w >= 0.0) {
                return Err(RoutingError::InvalidWeight {
                    version: v.clone(),
                    weight: *w,
                });
            }
        }
        let total: f64 = weights.iter().map(|(_, w)| w).sum();
        if !total.is_finite() {
            return Err(RoutingError::TotalOverflow);
        }
        if total <= 0.0 {
            return Err(RoutingError::ZeroTotal);
        }
        let mut acc = 0.0;
        let mut cumulative: Vec<f64> = weights
            .iter()
            .map(|(_, w)| {
                acc += w / total;
                acc
            })
            .collect();
        // Pin the end of the last positive-weight entry (and every zero entry after it) to 1
        // so that rounding can never leave a gap below 1.
        if let Some(last) = weights.iter().rposition(|(_, w)| *w > 0.0) {
            for c in &mut cumulative[last..] {
                *c = 1.0;
            }
        }
        let (versions, weights) = weights.into_iter().unzip();
        Ok(Split {
            versions,
            weights,
            cumulative,
        })
    }

    /// All traffic to one version.
    pub fn single(version: impl Into<String>) -> Split {
        let version = version.into();
        Split {
            versions: vec![version],
            weights: vec![1.0],
            cumulative: vec![1.0],
        }
    }

    /// Picks a version. `sticky_key` `Some(k)`: a stable hash of `k` decides (the same key gets
    /// the same version while the split is unchanged); `None`: the uniform draw `u` in `[0, 1)`
    /// decides (values outside are clamped; NaN counts as 0).
    pub fn choose(&self, sticky_key: Option<&str>, u: f64) -> &str {
        let u = match sticky_key {
            Some(k) => unit_interval(stable_hash(k.as_bytes())),
            None if u.is_nan() => 0.0,
            None => u.clamp(0.0, 1.0),
        };
        let i = self
            .cumulative
            .iter()
            .position(|&c| u < c)
            // u == 1.0 (clamped input): the last version with a positive weight.
            .unwrap_or_else(|| self.weights.iter().rposition(|&w| w > 0.0).unwrap_or(0));
        &self.versions[i]
    }

    /// The `(version, weight)` pairs as given.
    pub fn entries(&self) -> impl Iterator<Item = (&str, f64)> {
        self.versions
            .iter()
            .map(String::as_str)
            .zip(self.weights.iter().copied())
    }

    /// `version`'s share of traffic in `[0, 1]` (0 when absent).
    pub fn share(&self, version: &str) -> f64 {
        let total: f64 = self.weights.iter().sum();
        self.versions
            .iter()
            .position(|v| v == version)
            .map_or(0.0, |i| self.weights[i] / total)
    }

    /// `true` when `version` is part of the split (with any weight).
    pub fn contains(&self, version: &str) -> bool {
        self.versions.iter().any(|v| v == version)
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (v, w)) in self.entries().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{v}={w}")?;
        }
        Ok(())
    }
}

/// FNV-1a (64 bit) of `bytes`, then the SplitMix64 finaliser to spread the bits.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The top 53 bits of `h` as a float in `[0, 1)`.
fn unit_interval(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// When a promoted version is rolled back automatically.
#[derive(Debug, Clone, PartialEq)]
pub struct RollbackPolicy {
    /// Roll back when the error rate within the window is strictly above this fraction.
    pub error_rate_threshold: f64,
    /// Length of the sliding window of outcomes considered.
    pub window: Duration,
    /// No rollback before the window holds at least this many outcomes of the promoted version.
    pub min_requests: u64,
}

impl Default for RollbackPolicy {
    fn default() -> Self {
        RollbackPolicy {
            error_rate_threshold: 0.05,
            window: Duration::from_secs(60),
            min_requests: 20,
        }
    }
}

/// Watches a newly promoted version and decides when to roll back to the previous one.
///
/// Only outcomes of the promoted version count. An outcome is inside the window when it was
/// recorded at most `window` before the current `now`; older outcomes are forgotten. The
/// monitor fires once: after it has returned the previous version, it returns `None`.
#[derive(Debug, Clone)]
pub struct RolloutMonitor {
    policy: RollbackPolicy,
    promoted: String,
    previous: String,
    since: Instant,
    /// (time, ok) of the promoted version's outcomes within the window, oldest first.
    outcomes: VecDeque<(Instant, bool)>,
    errors: u64,
    rolled_back: bool,
}

impl RolloutMonitor {
    /// Starts watching `promoted` (which replaced `previous`) at `now`. Outcomes recorded with
    /// an earlier time are ignored.
    pub fn new(policy: RollbackPolicy, promoted: String, previous: String, now: Instant) -> Self {
        RolloutMonitor {
            policy,
            promoted,
            previous,
            since: now,
            outcomes: VecDeque::new(),
            errors: 0,
            rolled_back: false,
        }
    }

    /// Records one request outcome. Returns `Some(previous version)` when the promoted version
    /// must be rolled back: the window holds at least `min_requests` outcomes of it and their
    /// error rate is above `error_rate_threshold`.
    pub fn record(&mut self, version: &str, ok: bool, now: Instant) -> Option<String> {
        if self.rolled_back || version != self.promoted || now < self.since {
            return None;
        }
        self.evict(now);
        self.outcomes.push_back((now, ok));
        if !ok {
            self.errors += 1;
        }
        let n = self.outcomes.len() as u64;
        if n >= self.policy.min_requests.max(1)
            && self.errors as f64 / n as f64 > self.policy.error_rate_threshold
        {
            self.rolled_back = true;
            self.outcomes.clear();
            self.errors = 0;
            return Some(self.previous.clone());
        }
        None
    }

    fn evict(&mut self, now: Instant) {
        while let Some(&(t, ok)) = self.outcomes.front() {
            if now.saturating_duration_since(t) <= self.policy.window {
                break;
            }
            self.outcomes.pop_front();
            if !ok {
                self.errors -= 1;
            }
        }
    }

    /// The promoted version being watched.
    pub fn promoted(&self) -> &str {
        &self.promoted
    }

    /// The version a rollback returns to.
    pub fn previous(&self) -> &str {
        &self.previous
    }

    /// `true` once the monitor has answered with a rollback.
    pub fn rolled_back(&self) -> bool {
        self.rolled_back
    }

    /// (outcomes, errors) of the promoted version within the window ending at `now`.
    pub fn window_counts(&mut self, now: Instant) -> (u64, u64) {
        self.evict(now);
        (self.outcomes.len() as u64, self.errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split(w: &[(&str, f64)]) -> Result<Split, RoutingError> {
        Split::new(w.iter().map(|(v, w)| (v.to_string(), *w)).collect())
    }

    /// Chi-square statistic of observed counts against expected shares.
    fn chi_square(counts: &[u64], shares: &[f64], n: u64) -> f64 {
        counts
            .iter()
            .zip(shares)
            .filter(|(_, p)| **p > 0.0)
            .map(|(&c, &p)| {
                let e = p * n as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum()
    }

    fn count(versions: &[&str], draw: impl Fn(u64) -> String, n: u64) -> Vec<u64> {
        let mut counts = vec![0u64; versions.len()];
        for i in 0..n {
            let v = draw(i);
            let k = versions
                .iter()
                .position(|x| *x == v)
                .expect("known version");
            counts[k] += 1;
        }
        counts
    }

    #[test]
    fn uniform_draw_proportions_pass_chi_square() {
        // Draws: the hash of the index, i.e. a fixed pseudo-random sequence (no RNG dependency).
        let s = split(&[("v1", 70.0), ("v2", 20.0), ("v3", 10.0), ("v4", 0.0)]).unwrap();
        let versions = ["v1", "v2", "v3", "v4"];
        let n = 10_000;
        let counts = count(
            &versions,
            |i| {
                s.choose(None, unit_interval(stable_hash(&i.to_le_bytes())))
                    .to_owned()
            },
            n,
        );
        assert_eq!(counts[3], 0, "zero-weight version chosen");
        let chi = chi_square(&counts, &[0.7, 0.2, 0.1, 0.0], n);
        // 2 degrees of freedom: P(chi2 > 13.82) = 0.001
        assert!(chi < 13.82, "chi-square {chi} for counts {counts:?}");
    }

    #[test]
    fn sticky_keys_spread_by_weight_and_stay_put() {
        let s = split(&[("a", 1.0), ("b", 3.0)]).unwrap();
        let n = 10_000u64;
        let keys: Vec<String> = (0..n).map(|i| format!("user-{i}")).collect();
        let mut b = 0u64;
        for k in &keys {
            let first = s.choose(Some(k), 0.0);
            // the draw argument is ignored for sticky keys
            assert_eq!(s.choose(Some(k), 0.999), first);
            if first == "b" {
                b += 1;
            }
        }
        // binomial 99.9% interval around 0.75 * n: 3.29 sigma
        let sigma = (n as f64 * 0.75 * 0.25).sqrt();
        assert!((b as f64 - 7500.0).abs() < 3.29 * sigma, "b got {b} of {n}");
        // a rebuilt identical split routes every key the same way
        let s2 = split(&[("a", 1.0), ("b", 3.0)]).unwrap();
        for k in &keys {
            assert_eq!(s.choose(Some(k), 0.0), s2.choose(Some(k), 0.0));
        }
    }

    #[test]
    fn stable_hash_is_fixed() {
        // Pinned values: a change here would reshuffle every sticky assignment.
        assert_eq!(stable_hash(b""), {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            h ^ (h >> 31)
        });
        assert_ne!(stable_hash(b"alice"), stable_hash(b"bob"));
        assert_eq!(stable_hash(b"alice"), stable_hash(b"alice"));
    }

    #[test]
    fn edges_of_the_unit_interval() {
        let s = split(&[("a", 1.0), ("b", 1.0), ("z", 0.0)]).unwrap();
        assert_eq!(s.choose(None, 0.0), "a");
        assert_eq!(s.choose(None, 0.4999), "a");
        assert_eq!(s.choose(None, 0.5), "b");
        assert_eq!(s.choose(None, 0.999_999_999), "b");
        assert_eq!(s.choose(None, 1.0), "b");
        assert_eq!(s.choose(None, 7.0), "b");
        assert_eq!(s.choose(None, -3.0), "a");
        assert_eq!(s.choose(None, f64::NAN), "a");
        let only_zero_first = split(&[("z", 0.0), ("a", 2.0)]).unwrap();
        assert_eq!(only_zero_first.choose(None, 0.0), "a");
        assert_eq!(Split::single("v9").choose(Some("x"), 0.3), "v9");
    }

    #[test]
    fn invalid_splits_are_errors() {
        assert_eq!(split(&[]), Err(RoutingError::Empty));
        assert_eq!(
            split(&[("a", 0.0), ("b", 0.0)]),
            Err(RoutingError::ZeroTotal)
        );
        assert_eq!(
            split(&[("a", 1.0), ("a", 2.0)]),
            Err(RoutingError::Duplicate {
                version: "a".into()
            })
        );
        assert_eq!(
            split(&[("", 1.0)]),
            Err(RoutingError::EmptyVersion { index: 0 })
        );
        for w in [-1.0, f64::NAN, f64::INFINITY] {
            let e = split(&[("a", 1.0), ("b", w)]).unwrap_err();
            assert!(matches!(e, RoutingError::InvalidWeight { ref version, .. } if version == "b"));
            assert!(e.to_string().contains("\"b\""), "{e}");
        }
        // huge finite weights whose sum overflows
        assert_eq!(
            split(&[("a", f64::MAX), ("b", f64::MAX)]),
            Err(RoutingError::TotalOverflow)
        );
    }

    #[test]
    fn shares_and_display() {
        let s = split(&[("v1", 3.0), ("v2", 1.0)]).unwrap();
        assert_eq!(s.share("v1"), 0.75);
        assert_eq!(s.share("nope"), 0.0);
        assert!(s.contains("v2") && !s.contains("v3"));
        assert_eq!(s.to_string(), "v1=3,v2=1");
    }

    fn policy() -> RollbackPolicy {
        RollbackPolicy {
            error_rate_threshold: 0.2,
            window: Duration::from_secs(10),
            min_requests: 10,
        }
    }

    #[test]
    fn no_rollback_before_min_requests() {
        let t0 = Instant::now();
        let mut m = RolloutMonitor::new(policy(), "v2".into(), "v1".into(), t0);
        for i in 0..9 {
            assert_eq!(m.record("v2", false, t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(
            m.record("v2", false, t0 + Duration::from_millis(9)),
            Some("v1".into())
        );
        assert!(m.rolled_back());
        // fires once
        assert_eq!(m.record("v2", false, t0 + Duration::from_millis(10)), None);
    }

    #[test]
    fn rollback_only_strictly_above_threshold() {
        let t0 = Instant::now();
        let mut m = RolloutMonitor::new(policy(), "v2".into(), "v1".into(), t0);
        // 2 errors in 10 = 0.2: not above
        for i in 0..10 {
            assert_eq!(m.record("v2", i < 8, t0), None);
        }
        for _ in 0..10 {
            // keep the rate at or below 0.2 with successes
            assert_eq!(m.record("v2", true, t0), None);
        }
        // 2/20 errors so far; push to 5/23 = 0.217 > 0.2
        assert_eq!(m.record("v2", false, t0), None); // 3/21
        assert_eq!(m.record("v2", false, t0), None); // 4/22 = 0.18
        assert_eq!(m.record("v2", false, t0), Some("v1".into())); // 5/23
    }

    #[test]
    fn other_versions_and_old_outcomes_do_not_count() {
        let t0 = Instant::now();
        let mut m = RolloutMonitor::new(policy(), "v2".into(), "v1".into(), t0);
        for _ in 0..50 {
            assert_eq!(m.record("v1", false, t0), None);
        }
        // 9 errors at t0, then the window slides past them
        for _ in 0..9 {
            assert_eq!(m.record("v2", false, t0), None);
        }
        let later = t0 + Duration::from_secs(11);
        for _ in 0..9 {
            assert_eq!(m.record("v2", true, later), None);
        }
        assert_eq!(m.window_counts(later), (9, 0));
        // one error among 10 fresh outcomes: 0.1, below threshold
        assert_eq!(m.record("v2", false, later), None);
        // outcomes stamped before promotion are ignored
        let mut m = RolloutMonitor::new(policy(), "v2".into(), "v1".into(), later);
        for _ in 0..20 {
            assert_eq!(m.record("v2", false, t0), None);
        }
        assert_eq!(m.window_counts(later), (0, 0));
    }

    #[test]
    fn outcome_exactly_window_old_still_counts() {
        let t0 = Instant::now();
        let mut m = RolloutMonitor::new(policy(), "v2".into(), "v1".into(), t0);
        for _ in 0..5 {
            m.record("v2", false, t0);
        }
        let edge = t0 + Duration::from_secs(10);
        for _ in 0..4 {
            assert_eq!(m.record("v2", true, edge), None);
        }
        assert_eq!(m.record("v2", true, edge), Some("v1".into())); // 5 errors / 10
    }

    proptest! {
        /// The monitor agrees with a brute-force recount of the window at every step.
        #[test]
        fn monitor_matches_brute_force(
            events in proptest::collection::vec((0u64..3000, any::<bool>(), any::<bool>()), 1..300),
            threshold in 0.0f64..0.6,
            min in 1u64..30,
        ) {
            let pol = RollbackPolicy { error_rate_threshold: threshold, window: Duration::from_secs(1), min_requests: min };
            let t0 = Instant::now();
            let mut m = RolloutMonitor::new(pol.clone(), "new".into(), "old".into(), t0);
            let mut now = t0;
            let mut seen: Vec<(Instant, bool)> = Vec::new();
            for (gap_ms, is_new, ok) in events {
                now += Duration::from_millis(gap_ms % 200);
                let version = if is_new { "new" } else { "old" };
                let got = m.record(version, ok, now);
                if is_new {
                    seen.push((now, ok));
                }
                let window: Vec<_> = seen.iter().filter(|(t, _)| now.duration_since(*t) <= pol.window).collect();
                let n = window.len() as u64;
                let errs = window.iter().filter(|(_, ok)| !ok).count() as f64;
                let should = is_new && n >= min && errs / n as f64 > threshold;
                prop_assert_eq!(got.is_some(), should);
                if should {
                    prop_assert_eq!(got.as_deref(), Some("old"));
                    break;
                }
            }
        }

        /// Choosing never panics and always returns a version with positive weight.
        #[test]
        fn choose_returns_a_positive_weight_version(
            ws in proptest::collection::vec(0.0f64..10.0, 1..6),
            u in proptest::num::f64::ANY,
            key in proptest::option::of(".*"),
        ) {
            prop_assume!(ws.iter().sum::<f64>() > 0.0);
            let s = Split::new(ws.iter().enumerate().map(|(i, w)| (format!("v{i}"), *w)).collect()).unwrap();
            let v = s.choose(key.as_deref(), u);
            prop_assert!(s.share(v) > 0.0, "{} chosen from {}", v, s);
        }
    }
}
