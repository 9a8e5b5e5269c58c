//! How gradients are combined across processes, and what it costs.
//!
//! [`GradientReduction`] picks the wire format (`gradient_reduction` in [`crate::TrainingArgs`]):
//!
//! - `f32`: the gradients are averaged with an all-reduce in f32, bucket by bucket
//!   ([`crate::collective::average_gradients`]). Exact up to summation order.
//! - `bf16`: every rank rounds its bucket to bf16 (round to nearest even), the ranks exchange
//!   them with an all-gather, and each rank sums the W contributions in f32 in rank order, so
//!   every rank gets the same result. Half the bytes of an f32 payload; the all-gather
//!   receives (W−1)·2 bytes per value, less than a ring all-reduce of f32 (≈ 2·(W−1)/W·4 bytes
//!   per value) up to W = 4 and more beyond, where it stops paying.
//! - `topk:F`: each rank sends only the ⌈F·n⌉ entries of largest magnitude of each bucket of n
//!   values, as (index, value) pairs, and keeps the rest as a residual that is added to its next
//!   step's gradient (error feedback: nothing is dropped, only delayed). The ranks all-gather
//!   the pairs and sum them densely. 8 bytes per sent entry.
//!
//! With `hierarchical_allreduce`, `f32` reduces inside each node first (to its first rank),
//! all-reduces across the nodes' first ranks, and broadcasts back inside each node (the split
//! communicators of [`crate::collective::Collective::all_reduce_mean_hierarchical`]).
//!
//! The top-k residual is part of the run's state: checkpoints store every rank's residual
//! (`topk_residual.rank{r}` tensors next to the optimiser moments), and a resume on the same
//! number of ranks gives each rank its own back ([`residual_for_rank`]); on a different number
//! of ranks each rank gets the mean of the saved residuals, which keeps the gradient mass still
//! to be sent — (1/W)·Σ_r residual_r — the same. A single process does not compress, so it
//! drops the residual (the trainer says so).
//!
//! [`Reducer::reduce`] reports [`CommStats`]: the bytes this rank contributed and the
//! seconds it spent reducing (waiting for slower ranks included), which the trainer logs per
//! step as `comm_bytes` and `comm_seconds`.

use crate::collective::{BUCKET_ELEMS, Collective, average_gradients_with};
use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;
use std::time::Instant;

/// The wire format of gradient averaging (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum GradientReduction {
    /// f32 all-reduce.
    #[default]
    F32,
    /// bf16 values, all-gathered and summed in f32.
    Bf16,
    /// The largest `fraction` of each bucket, with error feedback.
    TopK {
        /// Share of each bucket sent, in (0, 1].
        fraction: f64,
    },
}

impl GradientReduction {
    /// Whether this is the default (`f32`).
    pub fn is_default(&self) -> bool {
        *self == GradientReduction::F32
    }
}

impl FromStr for GradientReduction {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        match s {
            "f32" => Ok(GradientReduction::F32),
            "bf16" => Ok(GradientReduction::Bf16),
            _ => {
                let bad = || {
                    Error::Args(format!(
                        "gradient_reduction {s:?}: expected `f32`, `bf16` or `topk:F` with F in \
                         (0, 1], e.g. `topk:0.01`"
                    ))
                };
                let f = s.strip_prefix("topk:").ok_or_else(bad)?;
                let fraction: f64 = f.parse().map_err(|_| bad())?;
                if !(fraction > 0.0 && fraction <= 1.0) {
                    return Err(bad());
                }
                Ok(GradientReduction::TopK { fraction })
            }
        }
    }
}

impl fmt::Display for GradientReduction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GradientReduction::F32 => f.write_str("f32"),
            GradientReduction::Bf16 => f.write_str("bf16"),
            GradientReduction::TopK { fraction } => write!(f, "topk:{fraction}"),
        }
    }
}

impl serde::Serialize for GradientReduction {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for GradientReduction {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What one reduction cost this rank.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CommStats {
    /// Payload bytes this rank contributed (f32: 4 per value, bf16: 2, top-k: 8 per sent
    /// entry); what the transport moves on top depends on the MPI algorithm.
    pub bytes: u64,
    /// Wall-clock seconds inside the reduction, including waiting for slower ranks.
    pub seconds: f64,
}

/// Gradient averaging with a [`GradientReduction`] and its error-feedback state.
#[derive(Debug)]
pub struct Reducer {
    how: GradientReduction,
    hierarchical: bool,
    bucket_elems: usize,
    /// Top-k residual over the flattened gradients (empty until the first top-k step).
    residual: Vec<f32>,
}

impl Reducer {
    /// A reducer for `how` over buckets of [`BUCKET_ELEMS`] values.
    pub fn new(how: GradientReduction, hierarchical: bool) -> Self {
        Reducer::with_bucket(how, hierarchical, BUCKET_ELEMS)
    }

    /// A reducer with buckets of `bucket_elems` values.
    pub fn with_bucket(how: GradientReduction, hierarchical: bool, bucket_elems: usize) -> Self {
        Reducer {
            how,
            hierarchical,
            bucket_elems: bucket_elems.max(1),
            residual: Vec::new(),
        }
    }

    /// The top-k residual not yet sent (flattened in parameter order; empty for other formats).
    pub fn residual(&self) -> &[f32] {
        &self.residual
    }

    /// Replaces the top-k residual (flattened in parameter order), e.g. with the one a
    /// checkpoint saved for this rank.
    pub fn set_residual(&mut self, residual: Vec<f32>) {
        self.residual = residual;
    }

    /// Whether this reducer keeps a residual between steps (top-k).
    pub fn has_feedback(&self) -> bool {
        matches!(self.how, GradientReduction::TopK { .. })
    }

    /// Averages `grads` (per parameter) across the ranks of `c` in place.
    pub fn reduce(&mut self, c: &dyn Collective, grads: &mut [Vec<f32>]) -> Result<CommStats> {
        let n: usize = grads.iter().map(Vec::len).sum();
        if c.world_size() == 1 {
            return Ok(CommStats::default());
        }
        let start = Instant::now();
        let bytes = match self.how {
            GradientReduction::F32 => {
                average_gradients_with(c, grads, self.bucket_elems, self.hierarchical)?;
                4 * n as u64
            }
            GradientReduction::Bf16 => {
                let mut flat = flatten(grads);
                for bucket in flat.chunks_mut(self.bucket_elems) {
                    let payload: Vec<u8> = bucket
                        .iter()
                        .flat_map(|&x| to_bf16(x).to_le_bytes())
                        .collect();
                    let all = c.all_gather(payload)?;
                    sum_dense(bucket, &all, c.world_size(), |b| {
                        b.chunks_exact(2)
                            .enumerate()
                            .map(|(i, p)| (i, from_bf16(u16::from_le_bytes([p[0], p[1]]))))
                            .collect()
                    })?;
                }
                unflatten(&flat, grads);
                2 * n as u64
            }
            GradientReduction::TopK { fraction } => {
                let mut flat = flatten(grads);
                if self.residual.len() != n {
                    self.residual = vec![0.0; n];
                }
                let mut sent = 0u64;
                for (bucket, residual) in flat
                    .chunks_mut(self.bucket_elems)
                    .zip(self.residual.chunks_mut(self.bucket_elems))
                {
                    let payload = top_k_with_feedback(bucket, residual, fraction);
                    sent += payload.len() as u64;
                    let all = c.all_gather(payload)?;
                    sum_dense(bucket, &all, c.world_size(), |b| {
                        b.chunks_exact(8)
                            .map(|p| {
                                (
                                    u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize,
                                    f32::from_le_bytes([p[4], p[5], p[6], p[7]]),
                                )
                            })
                            .collect()
                    })?;
                }
                unflatten(&flat, grads);
                sent
            }
        };
        Ok(CommStats {
            bytes,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

/// The name of rank `rank`'s top-k residual in a checkpoint's optimiser tensors.
pub fn residual_key(rank: usize) -> String {
    format!("{RESIDUAL_PREFIX}{rank}")
}

const RESIDUAL_PREFIX: &str = "topk_residual.rank";

/// The top-k residuals a checkpoint's optimiser tensors hold, in rank order (empty when it
/// has none). Errors when the ranks are not exactly 0..N or the lengths differ.
pub fn residuals_from_state(
    state: &std::collections::BTreeMap<String, candle_core::Tensor>,
) -> Result<Vec<Vec<f32>>> {
    let mut found: std::collections::BTreeMap<usize, Vec<f32>> = Default::default();
    for (key, t) in state {
        let Some(rank) = key.strip_prefix(RESIDUAL_PREFIX) else {
            continue;
        };
        let rank: usize = rank.parse().map_err(|_| {
            Error::Training(format!("optimizer state: {key:?} is not a rank's residual"))
        })?;
        found.insert(rank, t.flatten_all()?.to_vec1::<f32>()?);
    }
    let n = found.len();
    if found.keys().copied().ne(0..n) {
        return Err(Error::Training(format!(
            "optimizer state holds top-k residuals of ranks {:?}, not 0..{n}",
            found.keys().collect::<Vec<_>>()
        )));
    }
    let out: Vec<Vec<f32>> = found.into_values().collect();
    if out.windows(2).any(|w| w[0].len() != w[1].len()) {
        return Err(Error::Training(
            "optimizer state holds top-k residuals of different lengths".into(),
        ));
    }
    Ok(out)
}

/// The residual rank `rank` of `world` continues with, from the `saved` residuals of a
/// checkpoint (module docs): its own when the number of ranks is the same, else the mean of
/// the saved ones. `None` when nothing was saved.
pub fn residual_for_rank(saved: &[Vec<f32>], world: usize, rank: usize) -> Option<Vec<f32>> {
    if saved.is_empty() {
        return None;
    }
    if saved.len() == world {
        return saved.get(rank).cloned();
    }
    let mut mean = vec![0.0f32; saved[0].len()];
    for r in saved {
        mean.iter_mut().zip(r).for_each(|(m, x)| *m += x);
    }
    let n = saved.len() as f32;
    mean.iter_mut().for_each(|m| *m /= n);
    Some(mean)
}

fn flatten(grads: &[Vec<f32>]) -> Vec<f32> {
    let mut flat = Vec::with_capacity(grads.iter().map(Vec::len).sum());
    for g in grads {
        flat.extend_from_slice(g);
    }
    flat
}

fn unflatten(flat: &[f32], grads: &mut [Vec<f32>]) {
    let mut at = 0;
    for g in grads {
        let n = g.len();
        g.copy_from_slice(&flat[at..at + n]);
        at += n;
    }
}

/// Overwrites `bucket` with the mean over ranks of the (index, value) entries that `decode`
/// reads from each rank's payload, summed in rank order (so every rank gets the same bits).
fn sum_dense(
    bucket: &mut [f32],
    payloads: &[Vec<u8>],
    world: usize,
    decode: impl Fn(&[u8]) -> Vec<(usize, f32)>,
) -> Result<()> {
    if payloads.len() != world {
        return Err(Error::Distributed(format!(
            "all-gather returned {} contributions for {world} ranks",
            payloads.len()
        )));
    }
    bucket.iter_mut().for_each(|x| *x = 0.0);
    let len = bucket.len();
    for (rank, p) in payloads.iter().enumerate() {
        for (i, v) in decode(p) {
            let slot = bucket.get_mut(i).ok_or_else(|| {
                Error::Distributed(format!(
                    "rank {rank} sent index {i} for a bucket of {len} values"
                ))
            })?;
            *slot += v;
        }
    }
    let w = world as f32;
    bucket.iter_mut().for_each(|x| *x /= w);
    Ok(())
}

/// Top-k selection with error feedback on one bucket: `acc = bucket + residual`; the ⌈F·n⌉
/// entries of largest |acc| are returned as little-endian (u32 index, f32 value) pairs, and
/// `residual` becomes `acc` with those entries zeroed (so `sent + residual = acc` exactly).
/// Ties are broken by index, so the choice is deterministic.
pub fn top_k_with_feedback(bucket: &[f32], residual: &mut [f32], fraction: f64) -> Vec<u8> {
    let n = bucket.len();
    for (r, g) in residual.iter_mut().zip(bucket) {
        *r += g;
    }
    let k = ((fraction * n as f64).ceil() as usize).clamp(usize::from(n > 0), n);
    let mut idx: Vec<u32> = (0..n as u32).collect();
    let by_magnitude = |a: &u32, b: &u32| {
        residual[*b as usize]
            .abs()
            .total_cmp(&residual[*a as usize].abs())
            .then(a.cmp(b))
    };
    if k < n {
        idx.select_nth_unstable_by(k, by_magnitude);
        idx.truncate(k);
    }
    idx.sort_unstable();
    let mut out = Vec::with_capacity(8 * k);
    for i in idx {
        let v = residual[i as usize];
        residual[i as usize] = 0.0;
        out.extend_from_slice(&i.to_le_bytes());
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// f32 → bf16, rounding to nearest even (NaN stays NaN).
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x0040) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// bf16 → f32 (exact).
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

#[cfg(test)]
mod tests {

    #[test]
    fn checkpointed_residuals_round_trip_and_keep_the_pending_mass_across_world_sizes() {
        use candle_core::{Device, Tensor};
        let saved = vec![vec![1.0f32, -2.0, 0.5], vec![3.0, 0.0, -0.5]];
        let mut state = std::collections::BTreeMap::new();
        state.insert(
            "exp_avg.w".to_string(),
            Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
        for (r, v) in saved.iter().enumerate() {
            state.insert(
                residual_key(r),
                Tensor::from_slice(v, 3, &Device::Cpu).unwrap(),
            );
        }
        assert_eq!(residuals_from_state(&state).unwrap(), saved);
        // same number of ranks: each its own
        assert_eq!(residual_for_rank(&saved, 2, 1).unwrap(), saved[1]);
        // four ranks: each the mean, so (1/W)·Σ residual is the same before and after
        let mean = residual_for_rank(&saved, 4, 3).unwrap();
        assert_eq!(mean, vec![2.0, -1.0, 0.0]);
        let pending_before: Vec<f32> = (0..3).map(|i| (saved[0][i] + saved[1][i]) / 2.0).collect();
        let pending_after: Vec<f32> = (0..3).map(|i| 4.0 * mean[i] / 4.0).collect();
        assert_eq!(pending_before, pending_after);
        assert!(residual_for_rank(&[], 2, 0).is_none());
        // a gap in the ranks is an error naming them
        state.remove(&residual_key(0));
        let e = residuals_from_state(&state).unwrap_err().to_string();
        assert!(e.contains("[1]"), "{e}");
    }

    use super::*;
    use crate::collective::{Pending, SingleProcess};
    use std::sync::Mutex;

    #[test]
    fn formats_parse_print_and_reject_nonsense() {
        for s in ["f32", "bf16", "topk:0.01", "topk:1"] {
            let r: GradientReduction = s.parse().unwrap();
            assert_eq!(r.to_string(), s);
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<GradientReduction>(&json).unwrap(), r);
        }
        for s in ["f16", "topk:0", "topk:1.5", "topk:x", "topk:", "topk:NaN"] {
            let e = s.parse::<GradientReduction>().unwrap_err().to_string();
            assert!(e.contains("topk:F"), "{s}: {e}");
        }
        assert!(GradientReduction::default().is_default());
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(from_bf16(to_bf16(1.0)), 1.0);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
        assert_eq!(from_bf16(to_bf16(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(from_bf16(to_bf16(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
        // 8 significant bits: relative error at most 2^-8 for normal values.
        for i in 1..1000 {
            let x = i as f32 * 0.37 - 200.0;
            let y = from_bf16(to_bf16(x));
            assert!((x - y).abs() <= x.abs() / 256.0, "{x} -> {y}");
        }
    }

    #[test]
    fn top_k_sends_the_largest_and_keeps_the_rest() {
        let g = [0.1f32, -3.0, 0.5, 2.0, -0.2, 0.0];
        let mut r = vec![0.0f32; 6];
        let p = top_k_with_feedback(&g, &mut r, 0.34); // ⌈0.34·6⌉ = 3
        let sent: Vec<(u32, f32)> = p
            .chunks_exact(8)
            .map(|c| {
                (
                    u32::from_le_bytes(c[..4].try_into().unwrap()),
                    f32::from_le_bytes(c[4..].try_into().unwrap()),
                )
            })
            .collect();
        assert_eq!(sent, vec![(1, -3.0), (2, 0.5), (3, 2.0)]);
        assert_eq!(r, vec![0.1, 0.0, 0.0, 0.0, -0.2, 0.0]);
    }

    #[test]
    fn error_feedback_delays_but_never_drops_gradient() {
        // A constant gradient sent at 10 % per step: after T steps, sent + residual equals
        // T × gradient exactly (in these representable values), and every nonzero coordinate
        // has been sent (the small ones once their residual has grown among the largest).
        let g: Vec<f32> = (0..50).map(|i| (i as f32 - 20.0) / 8.0).collect();
        let mut r = vec![0.0f32; g.len()];
        let mut total_sent = vec![0.0f32; g.len()];
        let steps = 400;
        for _ in 0..steps {
            let p = top_k_with_feedback(&g, &mut r, 0.1);
            assert_eq!(p.len(), 8 * 5);
            for c in p.chunks_exact(8) {
                let i = u32::from_le_bytes(c[..4].try_into().unwrap()) as usize;
                total_sent[i] += f32::from_le_bytes(c[4..].try_into().unwrap());
            }
        }
        for i in 0..g.len() {
            assert_eq!(total_sent[i] + r[i], steps as f32 * g[i], "coordinate {i}");
            if g[i] != 0.0 {
                assert!(total_sent[i] != 0.0, "coordinate {i} never sent");
            }
        }
    }

    /// A two-rank group in one process: rank 0's view, with the other rank's contribution
    /// produced by a closure of the payload rank 0 sends (enough to check the arithmetic).
    type OtherRank = Box<dyn FnMut(&[u8]) -> Vec<u8> + Send>;

    struct Mirror {
        other: Mutex<OtherRank>,
    }
    impl Collective for Mirror {
        fn rank(&self) -> usize {
            0
        }
        fn world_size(&self) -> usize {
            2
        }
        fn all_reduce_mean(&self, bucket: Vec<f32>) -> Result<Box<dyn Pending>> {
            SingleProcess.all_reduce_mean(bucket)
        }
        fn barrier(&self) -> Result<()> {
            Ok(())
        }
        fn broadcast(&self, bytes: Vec<u8>) -> Result<Vec<u8>> {
            Ok(bytes)
        }
        fn all_gather(&self, bytes: Vec<u8>) -> Result<Vec<Vec<u8>>> {
            let theirs = (self.other.lock().unwrap())(&bytes);
            Ok(vec![bytes, theirs])
        }
    }

    #[test]
    fn bf16_and_top_k_average_what_the_ranks_send() {
        // The other rank sends the same payload: the mean is rank 0's own (rounded) values.
        let same = Mirror {
            other: Mutex::new(Box::new(|b: &[u8]| b.to_vec())),
        };
        let mut grads = vec![vec![1.0f32, 1.0 + 1.0 / 128.0, -3.0], vec![0.25]];
        let stats = Reducer::with_bucket(GradientReduction::Bf16, false, 3)
            .reduce(&same, &mut grads)
            .unwrap();
        assert_eq!(grads, vec![vec![1.0, 1.0 + 1.0 / 128.0, -3.0], vec![0.25]]);
        assert_eq!(stats.bytes, 8);
        // Top-k at 50 %: each bucket of 2 sends its largest entry; the other rank sends
        // nothing, so the mean is half of rank 0's entry and the rest waits in the residual.
        let silent = Mirror {
            other: Mutex::new(Box::new(|_: &[u8]| Vec::new())),
        };
        let mut reducer = Reducer::with_bucket(GradientReduction::TopK { fraction: 0.5 }, false, 2);
        let mut grads = vec![vec![4.0f32, -1.0, 0.5, 8.0]];
        let stats = reducer.reduce(&silent, &mut grads).unwrap();
        assert_eq!(grads, vec![vec![2.0, 0.0, 0.0, 4.0]]);
        assert_eq!(reducer.residual(), &[0.0, -1.0, 0.5, 0.0]);
        assert_eq!(stats.bytes, 16);
        // A payload with an index outside the bucket is an error, not a panic.
        let liar = Mirror {
            other: Mutex::new(Box::new(|_: &[u8]| {
                let mut p = 99u32.to_le_bytes().to_vec();
                p.extend_from_slice(&1.0f32.to_le_bytes());
                p
            })),
        };
        let err = Reducer::with_bucket(GradientReduction::TopK { fraction: 0.5 }, false, 2)
            .reduce(&liar, &mut [vec![1.0f32, 2.0]])
            .unwrap_err()
            .to_string();
        assert!(err.contains("index 99"), "{err}");
    }

    #[test]
    fn one_process_is_left_alone() {
        let mut grads = vec![vec![1.5f32, -2.0]];
        for how in [
            GradientReduction::F32,
            GradientReduction::Bf16,
            GradientReduction::TopK { fraction: 0.1 },
        ] {
            let s = Reducer::new(how, true)
                .reduce(&SingleProcess, &mut grads)
                .unwrap();
            assert_eq!(s, CommStats::default());
            assert_eq!(grads, vec![vec![1.5, -2.0]]);
        }
    }
}
