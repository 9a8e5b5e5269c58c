//! Monte-Carlo attention estimators on the CPU.
//!
//! For a block of queries the logits against all visible keys are computed with one matmul into
//! a per-task buffer (64 queries × Lk, never Lq × Lk); each row is then turned into unnormalised
//! weights w_j = exp(l_j − max) and sampled by inverse CDF: targets u·W are walked once along the
//! running sum of w (accumulated in f64, left to right), so a draw is a pure function of its
//! Philox uniform and the row. See docs/estimators.md for the estimators' maths.

use super::exact::key_limit;
use super::gemm::{Mat, matmul};
use super::{HeadInput, Problem};
use crate::math;
use crate::noise::Channel;
use crate::philox::{SampleStream, Stream};
use crate::spec::{Estimator, EstimatorSpec};
use rayon::prelude::*;

/// Query rows per task for the sampling estimators.
const BQM: usize = 64;
/// Rounds of shots drawn before giving up when noise discards every shot of a query.
const MAX_ROUNDS: u64 = 64;

/// What one query's estimate was made of (diagnostics and the sampled backward pass).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueryDiagnostics {
    /// Shots measured (including discarded ones and extra rounds).
    pub shots: u32,
    /// Shots whose noisy outcome named no usable key and were discarded.
    pub discarded: u32,
    /// Effective sample size of the row's attention distribution, 1/Σp².
    pub ess: f32,
    /// Estimated variance of the estimate (trace over output dimensions); NaN when it cannot be
    /// estimated (fewer than two usable shots, or mitigated counts).
    pub variance: f32,
    /// Measured key index of every usable shot, in shot order.
    pub samples: Vec<u32>,
}

/// Per-query record of a sampled forward pass.
#[derive(Clone, Debug, Default)]
pub(crate) struct RowRecord {
    /// Keys summed exactly (top-k's top keys) with their probabilities.
    pub(crate) exact: Vec<(u32, f32)>,
    /// Sampled keys with their coefficients in the estimate (tail mass included).
    pub(crate) sampled: Vec<(u32, f32)>,
    /// Leave-one-out factor n/(n−1) applied to the sampled part's logit gradient for i.i.d. draws.
    pub(crate) kappa: f32,
    pub(crate) diag: QueryDiagnostics,
}

/// Result of a sampled forward pass.
pub(crate) struct McForward {
    pub(crate) out: Vec<f32>,
    pub(crate) lse: Vec<f32>,
    /// One record per (batch, head, query) when requested.
    pub(crate) rows: Option<Vec<RowRecord>>,
}

/// The control variate of one head: g(v) = μ + (v − μ)UUᵀ with U the top-R principal directions
/// of the head's (unmasked) values; z_j = (v_j − μ)U.
pub(crate) struct CvContext {
    pub(crate) rank: usize,
    pub(crate) mu: Vec<f32>,
    /// Dv × R, row-major.
    pub(crate) u: Vec<f32>,
    /// Lk × R, row-major.
    pub(crate) z: Vec<f32>,
}

impl CvContext {
    pub(crate) fn new(h: &HeadInput<'_>, rank: usize) -> Self {
        let (lk, dv) = (h.lk, h.dv);
        let rank = rank.min(dv).max(1);
        let keep = |j: usize| h.mask.is_none_or(|m| m[j] != 0);
        let n = (0..lk).filter(|&j| keep(j)).count().max(1) as f64;
        let mut mu = vec![0.0f64; dv];
        for j in (0..lk).filter(|&j| keep(j)) {
            for (m, &x) in mu.iter_mut().zip(&h.v[j * dv..(j + 1) * dv]) {
                *m += f64::from(x);
            }
        }
        mu.iter_mut().for_each(|m| *m /= n);
        let mut cov = vec![0.0f64; dv * dv];
        let mut c = vec![0.0f64; dv];
        for j in (0..lk).filter(|&j| keep(j)) {
            for t in 0..dv {
                c[t] = f64::from(h.v[j * dv + t]) - mu[t];
            }
            for a in 0..dv {
                for b in a..dv {
                    cov[a * dv + b] += c[a] * c[b];
                }
            }
        }
        for a in 0..dv {
            for b in 0..a {
                cov[a * dv + b] = cov[b * dv + a];
            }
        }
        let vecs = top_eigenvectors(&mut cov, dv, rank);
        let u: Vec<f32> = (0..dv * rank).map(|i| vecs[i] as f32).collect();
        let mu: Vec<f32> = mu.iter().map(|&m| m as f32).collect();
        let mut z = vec![0.0f32; lk * rank];
        let mut centred = vec![0.0f32; dv];
        for j in 0..lk {
            for t in 0..dv {
                centred[t] = h.v[j * dv + t] - mu[t];
            }
            for r in 0..rank {
                z[j * rank + r] = (0..dv).map(|t| centred[t] * u[t * rank + r]).sum();
            }
        }
        CvContext { rank, mu, u, z }
    }

    fn zrow(&self, j: usize) -> &[f32] {
        &self.z[j * self.rank..(j + 1) * self.rank]
    }

    /// out += y Uᵀ for an R-vector y.
    fn add_lift(&self, y: &[f64], out: &mut [f32]) {
        for (t, o) in out.iter_mut().enumerate() {
            let row = &self.u[t * self.rank..(t + 1) * self.rank];
            *o += row
                .iter()
                .zip(y)
                .map(|(&a, &b)| f64::from(a) * b)
                .sum::<f64>() as f32;
        }
    }

    /// x·U for a Dv-vector x.
    fn project(&self, x: &[f32]) -> Vec<f32> {
        let mut y = vec![0.0f32; self.rank];
        for (t, &xt) in x.iter().enumerate() {
            for (yr, &ur) in y
                .iter_mut()
                .zip(&self.u[t * self.rank..(t + 1) * self.rank])
            {
                *yr += xt * ur;
            }
        }
        y
    }
}

/// Top-`rank` eigenvectors (columns of a dv × rank row-major matrix) of a symmetric matrix, by
/// cyclic Jacobi rotations in f64. `a` is destroyed.
fn top_eigenvectors(a: &mut [f64], n: usize, rank: usize) -> Vec<f64> {
    let mut v = vec![0.0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let norm: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    for _sweep in 0..60 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum::<f64>()
            .sqrt();
        if off <= 1e-12 * norm.max(1e-300) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| a[y * n + y].total_cmp(&a[x * n + x]).then(x.cmp(&y)));
    let mut out = vec![0.0f64; n * rank];
    for (r, &col) in order.iter().take(rank).enumerate() {
        for k in 0..n {
            out[k * rank + r] = v[k * n + col];
        }
    }
    out
}

/// How the shots of one row are placed.
#[derive(Clone, Copy, PartialEq)]
enum Placement {
    Iid,
    Stratified,
}

/// Reusable per-task buffers.
#[derive(Default)]
struct Scratch {
    uniforms: Vec<f64>,
    bsum: Vec<f64>,
    targets: Vec<(f64, u32)>,
    ideal: Vec<u32>,
    hist: Vec<f64>,
    counts: Vec<(u32, u32)>,
    /// Usable shots of the row (handed to [`Shots`] and back).
    keys: Vec<u32>,
    /// The shots sorted, when they were not drawn in order.
    sorted: Vec<u32>,
    /// The sampled part's coefficients.
    sampled: Vec<(u32, f32)>,
    /// The walk's running sums.
    prefix: Prefix,
}

/// Everything a row needs that is shared across the head.
struct RowCtx<'a> {
    h: &'a HeadInput<'a>,
    estimator: Estimator,
    channel: Option<Channel>,
    seed: u64,
    /// Added to the batch index of the Philox streams (see [`forward_at`]).
    batch_offset: usize,
    cv: Option<&'a CvContext>,
    /// Whether records carry the estimated variance (see [`forward_at`]).
    variance: bool,
}

/// The usable shots of one row's sampled part.
struct Shots {
    keys: Vec<u32>,
    total: u32,
    discarded: u32,
    mitigated: Option<Vec<(u32, f32)>>,
    placement: Placement,
}

/// Keys per block of the two-level CDF.
pub(crate) const CDF_BLOCK: usize = 64;

/// Block sums of `w` (each summed in 16 fixed f32 lanes, then widened) and their f64 total,
/// summed left to right. The total is the normaliser every draw of the row is scaled by.
/// ([`math::exp_block_sums`] computes the same sums while it exponentiates.)
fn block_sums(w: &[f32], out: &mut Vec<f64>) -> f64 {
    out.clear();
    let mut total = 0.0f64;
    for blk in w.chunks(CDF_BLOCK) {
        let s = f64::from(math::sum(blk));
        out.push(s);
        total += s;
    }
    total
}

/// Keys per sub-block inside a CDF block.
const SUB: usize = 16;

/// Sum of up to 16 values in a fixed pairwise order (depth 4, so it pipelines).
#[inline(always)]
fn sum16(x: &[f32]) -> f32 {
    let mut e = [0.0f32; SUB];
    e[..x.len()].copy_from_slice(x);
    let mut w = SUB / 2;
    while w > 0 {
        for l in 0..w {
            e[l] += e[l + w];
        }
        w /= 2;
    }
    e[0]
}

/// Sub-blocks per CDF block.
const SUBS: usize = CDF_BLOCK / SUB;
/// Sub-blocks whose running sums are accumulated side by side (one f64 lane each): two CDF
/// blocks, 128 keys.
const GROUP: usize = 8;
/// Keys per group.
const GROUP_KEYS: usize = GROUP * SUB;

/// The running sums of one group of sub-blocks. Lane l is sub-block `GROUP·g + l` of the row:
/// `ss[l]` its sum (fixed pairwise f32 order, widened), `start[l]` where its running sums start
/// on the CDF (its block's start plus the sums of the block's earlier sub-blocks, f64, left to
/// right) and `pre[j][l] = start[l] + w_0 + … + w_j` over its keys, left to right in f64.
/// Positions past the row's end hold the sub-block's total (a zero weight adds exactly nothing).
/// Each lane is the same chain of additions as one running sum per sub-block; the eight chains
/// run side by side.
struct Prefix {
    /// The group held (`usize::MAX`: none yet).
    group: usize,
    start: [f64; GROUP],
    ss: [f64; GROUP],
    pre: [[f64; GROUP]; SUB],
}

impl Default for Prefix {
    fn default() -> Self {
        Self {
            group: usize::MAX,
            start: [0.0; GROUP],
            ss: [0.0; GROUP],
            pre: [[0.0; GROUP]; SUB],
        }
    }
}

impl Prefix {
    /// Fills group `g` of row `w`; `cum` is where the group's first block starts on the CDF and
    /// `bsum` the row's block sums.
    #[inline(always)]
    fn fill(&mut self, w: &[f32], bsum: &[f64], g: usize, cum: f64, simd: bool) {
        let k0 = g * GROUP_KEYS;
        let keys = &w[k0..(k0 + GROUP_KEYS).min(w.len())];
        let mut buf = [0.0f32; GROUP_KEYS];
        buf[..keys.len()].copy_from_slice(keys);
        // The second block starts where the first ends on the block level.
        let second = cum + bsum[g * GROUP / SUBS];
        self.group = g;
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: `simd` is only set where the CPU supports AVX-512F (see [`simd_prefix`]).
            unsafe { prefix_lanes_avx512(&buf, cum, second, self) };
            return;
        }
        let _ = simd;
        for l in 0..GROUP {
            self.ss[l] = f64::from(sum16(&buf[l * SUB..(l + 1) * SUB]));
        }
        self.set_starts(cum, second);
        let mut cc = self.start;
        for (j, row) in self.pre.iter_mut().enumerate() {
            for (l, x) in cc.iter_mut().enumerate() {
                *x += f64::from(buf[l * SUB + j]);
            }
            *row = cc;
        }
    }

    /// `start` from `ss`: each block's sub-blocks start where the earlier ones end.
    #[inline(always)]
    fn set_starts(&mut self, cum: f64, second: f64) {
        let mut c = cum;
        for l in 0..GROUP {
            if l == SUBS {
                c = second;
            }
            self.start[l] = c;
            c += self.ss[l];
        }
    }

    /// The number of lane `l`'s running sums at or below `tv`, for `tv` below its last one.
    /// The sums never decrease (the weights are ≥ 0 and finite), so it is a search in two
    /// branch-free levels of three independent comparisons: the quarter, then the place in it.
    #[inline(always)]
    fn count(&self, l: usize, tv: f64) -> u32 {
        let le = |j: usize| usize::from(self.pre[j][l] <= tv);
        let q = 4 * (le(3) + le(7) + le(11));
        (q + le(q) + le(q + 1) + le(q + 2)) as u32
    }
}

/// Whether [`Prefix::fill`] may use [`prefix_lanes_avx512`].
fn simd_prefix() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Column j (key j of each of the eight 16-key rows of `buf`) for j = 0..16: an 8 × 16
/// transpose in registers (in-lane unpacks, then one two-source permute per pair of columns).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn columns_avx512(buf: &[f32; GROUP_KEYS]) -> [std::arch::x86_64::__m256; SUB] {
    use std::arch::x86_64::*;
    // SAFETY: row l reads buf[16·l..16·l + 16] < 128.
    let r: [__m512; GROUP] =
        std::array::from_fn(|l| unsafe { _mm512_loadu_ps(buf.as_ptr().add(l * SUB)) });
    // In each 128-bit lane k: pairs of rows interleaved ...
    let lo = |a: __m512, b: __m512| _mm512_unpacklo_ps(a, b);
    let hi = |a: __m512, b: __m512| _mm512_unpackhi_ps(a, b);
    let (a0, a1) = (lo(r[0], r[1]), hi(r[0], r[1]));
    let (b0, b1) = (lo(r[2], r[3]), hi(r[2], r[3]));
    let (c0, c1) = (lo(r[4], r[5]), hi(r[4], r[5]));
    let (d0, d1) = (lo(r[6], r[7]), hi(r[6], r[7]));
    // ... then quadruples: e[a] (rows 0–3) and f[a] (rows 4–7) hold key 4k + a in lane k.
    let pd_lo = |x: __m512, y: __m512| {
        _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(x), _mm512_castps_pd(y)))
    };
    let pd_hi = |x: __m512, y: __m512| {
        _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(x), _mm512_castps_pd(y)))
    };
    let e = [pd_lo(a0, b0), pd_hi(a0, b0), pd_lo(a1, b1), pd_hi(a1, b1)];
    let f = [pd_lo(c0, d0), pd_hi(c0, d0), pd_lo(c1, d1), pd_hi(c1, d1)];
    // Lanes (e.k, f.k, e.k+1, f.k+1): columns 4k + a and 4(k + 1) + a.
    let first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    let second = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    let low = |x: __m512| _mm512_castps512_ps256(x);
    let high = |x: __m512| _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x)));
    let mut col = [_mm256_setzero_ps(); SUB];
    for a in 0..4 {
        let x = _mm512_permutex2var_ps(e[a], first, f[a]);
        let y = _mm512_permutex2var_ps(e[a], second, f[a]);
        col[a] = low(x);
        col[4 + a] = high(x);
        col[8 + a] = low(y);
        col[12 + a] = high(y);
    }
    col
}

/// [`Prefix::fill`] on AVX-512: column j of the group is key j of each of its eight sub-blocks
/// ([`columns_avx512`]). The sub-block sums come from the columns by the pairwise tree of [`sum16`]
/// (lane l of each step adds the same two values as sub-block l's sum16), and lane l of the
/// running sums accumulates column after column onto `start[l]` (the same additions as the
/// scalar loop).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2")]
unsafe fn prefix_lanes_avx512(buf: &[f32; GROUP_KEYS], cum: f64, second: f64, p: &mut Prefix) {
    use std::arch::x86_64::*;
    // SAFETY: every store writes eight f64 into `p.ss` or one row of `p.pre`; the CPU has
    // AVX-512F (this function's own requirement).
    unsafe {
        let col = columns_avx512(buf);
        let mut e = col;
        let mut width = SUB / 2;
        while width > 0 {
            for j in 0..width {
                e[j] = _mm256_add_ps(e[j], e[j + width]);
            }
            width /= 2;
        }
        _mm512_storeu_pd(p.ss.as_mut_ptr(), _mm512_cvtps_pd(e[0]));
        p.set_starts(cum, second);
        let mut cc = _mm512_loadu_pd(p.start.as_ptr());
        for (row, x) in p.pre.iter_mut().zip(col) {
            cc = _mm512_add_pd(cc, _mm512_cvtps_pd(x));
            _mm512_storeu_pd(row.as_mut_ptr(), cc);
        }
    }
}

/// Inverse-CDF draws over a hierarchical CDF: `out[s]` = the key whose cumulative weight interval
/// contains target s. Targets (sorted ascending) are located among the block sums (64 keys),
/// then among the block's sub-block sums (16 keys, fixed pairwise order), then by a left-to-right
/// f64 running sum inside the sub-block; a target that rounding leaves past a sub-block's or
/// block's last element takes its last positive key, and one past the total takes the row's last
/// positive key. Keys with zero weight are never drawn.
///
/// The running sums come from [`Prefix`] (eight sub-blocks at a time) and a target is placed by
/// binary search among them. A row whose weights do not sum to a finite value (NaN or infinite
/// logits) takes [`walk_scalar`], one running sum per sub-block and a count per target: both
/// give the same draws wherever the sums are monotone.
#[inline(always)]
fn walk(w: &[f32], bsum: &[f64], targets: &[(f64, u32)], out: &mut [u32], p: &mut Prefix) {
    walk_with(w, bsum, targets, out, p, simd_prefix());
}

/// [`walk`], with the AVX-512 running sums on or off.
#[inline(always)]
fn walk_with(
    w: &[f32],
    bsum: &[f64],
    targets: &[(f64, u32)],
    out: &mut [u32],
    p: &mut Prefix,
    simd: bool,
) {
    if !bsum.iter().sum::<f64>().is_finite() {
        walk_scalar(w, bsum, targets, out);
        return;
    }
    let n = targets.len();
    let mut t = 0;
    let mut cum = 0.0f64;
    let last_pos = |lo: usize, hi: usize| (lo..hi).rev().find(|&j| w[j] > 0.0).map(|j| j as u32);
    // The buffer is reused from row to row: nothing in it is valid yet. A short row that
    // falls back keeps the group 0 `walk_short` filled (the same fill the loop below makes).
    p.group = usize::MAX;
    if w.len() <= GROUP_KEYS && walk_short(w, bsum, targets, out, p, simd) {
        return;
    }
    // Where the current group's first block starts on the CDF.
    let mut group_cum = 0.0f64;
    for (b, &bs) in bsum.iter().enumerate() {
        if b % (GROUP / SUBS) == 0 {
            group_cum = cum;
        }
        if t == n {
            return;
        }
        if bs <= 0.0 {
            continue;
        }
        let end = cum + bs;
        if targets[t].0 < end {
            let start = b * CDF_BLOCK;
            let stop = (start + CDF_BLOCK).min(w.len());
            let g = b * SUBS / GROUP;
            if p.group != g {
                p.fill(w, bsum, g, group_cum, simd);
            }
            let l0 = b * SUBS % GROUP;
            let mut i = 0;
            while start + i * SUB < stop && t < n && targets[t].0 < end {
                let s0 = start + i * SUB;
                let s1 = (s0 + SUB).min(stop);
                let l = l0 + i;
                let (c, ss) = (p.start[l], p.ss[l]);
                if ss > 0.0 && targets[t].0 < c + ss {
                    // A target goes to the first key whose running sum exceeds it, which has a
                    // positive weight (a zero weight adds exactly nothing, and ss > 0 rules out
                    // NaN); positions past the row's end hold the total, which exceeds it.
                    let cc = p.pre[SUB - 1][l];
                    while t < n && targets[t].0 < cc {
                        out[targets[t].1 as usize] = s0 as u32 + p.count(l, targets[t].0);
                        t += 1;
                    }
                    if let Some(last) = last_pos(s0, s1) {
                        assign_below(targets, &mut t, c + ss, last, out);
                    }
                }
                i += 1;
            }
            if t < n
                && targets[t].0 < end
                && let Some(last) = last_pos(start, stop)
            {
                assign_below(targets, &mut t, end, last, out);
            }
        }
        cum = end;
    }
    if t < n {
        let last = last_pos(0, w.len()).unwrap_or(0);
        for &(_, s) in &targets[t..] {
            out[s as usize] = last;
        }
    }
}

/// [`walk`] for a row of one group (at most 128 keys) when every target can be placed on its
/// own; returns false, having written nothing that counts, when one cannot.
///
/// The walk visits regions in order (each sub-block, then its block's end) and a region takes
/// the targets below its bounds from the smallest one left, so where a target lands can depend
/// on the targets before it only where the bounds disagree by rounding: between a sub-block's
/// f64 running total `cc` and its start plus pairwise sum `c + ss`, and past the block's end. A
/// target x with `M ≤ x < min(c + ss, cc, end)` for a sub-block with weight, where M is the
/// largest bound of every region before it, is placed in that sub-block whatever else was drawn:
/// no earlier region can take it, every earlier decision sees a current target ≤ x, and the
/// sub-block's own tests pass. Such a target goes to the sub-block's first key plus the number
/// of its running sums at or below x, as in the walk. A target outside every such interval (a
/// rounding gap, or past the total) sends the row to the ordered walk.
#[inline(always)]
fn walk_short(
    w: &[f32],
    bsum: &[f64],
    targets: &[(f64, u32)],
    out: &mut [u32],
    p: &mut Prefix,
    simd: bool,
) -> bool {
    // The second block starts where the first ends (the walk's `cum + bs` from 0).
    let ends = [bsum[0], bsum[0] + bsum.get(1).copied().unwrap_or(0.0)];
    p.fill(w, bsum, 0, 0.0, simd);
    let subs = w.len().div_ceil(SUB);
    // Lane l places the targets in [lo[l], hi[l]); an empty interval where it places none.
    let mut lo = [f64::INFINITY; GROUP];
    let mut hi = [f64::NEG_INFINITY; GROUP];
    // Every sum here is finite (the caller checked the total), so plain comparisons do.
    let min = |a: f64, b: f64| if b < a { b } else { a };
    let max = |a: f64, b: f64| if b > a { b } else { a };
    let mut bound = f64::NEG_INFINITY;
    for l in 0..subs {
        let b = l / SUBS;
        if b > 0 && l % SUBS == 0 {
            bound = max(bound, ends[b - 1]);
        }
        let (c, ss, cc) = (p.start[l], p.ss[l], p.pre[SUB - 1][l]);
        if ss > 0.0 && bsum[b] > 0.0 {
            lo[l] = bound;
            hi[l] = min(min(c + ss, cc), ends[b]);
        }
        bound = max(max(bound, c + ss), cc);
    }
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is only set where the CPU supports AVX-512F (see [`simd_prefix`]).
        return unsafe { place_short_avx512(&lo, &hi, targets, out, p) };
    }
    for &(x, dst) in targets {
        let mut lanes = 0u32;
        for l in 0..GROUP {
            lanes |= u32::from(lo[l] <= x && x < hi[l]) << l;
        }
        if lanes == 0 {
            return false;
        }
        let l = lanes.trailing_zeros() as usize;
        out[dst as usize] = (l * SUB) as u32 + p.count(l, x);
    }
    true
}

/// [`walk_short`]'s placement on AVX-512, eight targets per step: a target's lane is the one
/// interval that holds it (the intervals are disjoint: each starts at or after every earlier
/// bound), and its place the number of that lane's running sums at or below it, picked out of
/// each row of sums by a permute.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn place_short_avx512(
    lo: &[f64; GROUP],
    hi: &[f64; GROUP],
    targets: &[(f64, u32)],
    out: &mut [u32],
    p: &Prefix,
) -> bool {
    use std::arch::x86_64::*;
    let one = _mm512_set1_epi64(1);
    for chunk in targets.chunks(8) {
        // Built in registers: eight scalar stores read back as one vector would stall on
        // store forwarding.
        let x = |i: usize| chunk.get(i).map_or(0.0, |t| t.0);
        let vx = _mm512_setr_pd(x(0), x(1), x(2), x(3), x(4), x(5), x(6), x(7));
        let active = ((1u32 << chunk.len()) - 1) as __mmask8;
        let mut keys = [0u64; 8];
        // SAFETY: the loads read the rows of `p.pre`; the store writes the eight-element
        // array `keys`.
        unsafe {
            let mut lane = _mm512_setzero_si512();
            let mut found: __mmask8 = 0;
            for l in 0..GROUP {
                let inside = _mm512_cmp_pd_mask::<_CMP_LE_OQ>(_mm512_set1_pd(lo[l]), vx)
                    & _mm512_cmp_pd_mask::<_CMP_LT_OQ>(vx, _mm512_set1_pd(hi[l]));
                lane = _mm512_mask_mov_epi64(lane, inside, _mm512_set1_epi64(l as i64));
                found |= inside;
            }
            if found & active != active {
                return false;
            }
            let mut cnt = _mm512_setzero_si512();
            for row in &p.pre {
                let v = _mm512_permutexvar_pd(lane, _mm512_loadu_pd(row.as_ptr()));
                let le = _mm512_cmp_pd_mask::<_CMP_LE_OQ>(v, vx);
                cnt = _mm512_mask_add_epi64(cnt, le, cnt, one);
            }
            let key = _mm512_add_epi64(_mm512_slli_epi64::<4>(lane), cnt);
            _mm512_storeu_si512(keys.as_mut_ptr().cast(), key);
        }
        for (t, &k) in chunk.iter().zip(&keys) {
            out[t.1 as usize] = k as u32;
        }
    }
    true
}

/// [`walk`] with one running sum per visited sub-block and a count per target (the form every
/// other implementation, the CUDA kernels' included, is checked against):
/// inverse-CDF draws over a hierarchical CDF: `out[s]` = the key whose cumulative weight interval
/// contains target s. Targets (sorted ascending) are located among the block sums (64 keys),
/// then among the block's sub-block sums (16 keys, fixed pairwise order), then by a left-to-right
/// f64 running sum inside the sub-block; a target that rounding leaves past a sub-block's or
/// block's last element takes its last positive key, and one past the total takes the row's last
/// positive key. Keys with zero weight are never drawn.
fn walk_scalar(w: &[f32], bsum: &[f64], targets: &[(f64, u32)], out: &mut [u32]) {
    let n = targets.len();
    let mut t = 0;
    let mut cum = 0.0f64;
    let last_pos = |lo: usize, hi: usize| (lo..hi).rev().find(|&j| w[j] > 0.0).map(|j| j as u32);
    for (b, &bs) in bsum.iter().enumerate() {
        if t == n {
            return;
        }
        if bs <= 0.0 {
            continue;
        }
        let end = cum + bs;
        if targets[t].0 < end {
            let start = b * CDF_BLOCK;
            let stop = (start + CDF_BLOCK).min(w.len());
            let mut c = cum;
            let mut s0 = start;
            while s0 < stop && t < n && targets[t].0 < end {
                let s1 = (s0 + SUB).min(stop);
                let ss = f64::from(sum16(&w[s0..s1]));
                if ss > 0.0 && targets[t].0 < c + ss {
                    // The running sums cc_j, left to right in f64 (a zero weight adds exactly
                    // nothing, and ss > 0 rules out NaN); a target goes to the first key whose
                    // running sum exceeds it, which has a positive weight. Counting the sums at
                    // or below it finds that key without a branch per key.
                    let mut pre = [f64::INFINITY; SUB];
                    let mut cc = c;
                    for (p, &x) in pre.iter_mut().zip(&w[s0..s1]) {
                        cc += f64::from(x);
                        *p = cc;
                    }
                    while t < n && targets[t].0 < cc {
                        let tv = targets[t].0;
                        let j = pre.iter().map(|&p| usize::from(p <= tv)).sum::<usize>();
                        out[targets[t].1 as usize] = (s0 + j) as u32;
                        t += 1;
                    }
                    if let Some(last) = last_pos(s0, s1) {
                        assign_below(targets, &mut t, c + ss, last, out);
                    }
                }
                c += ss;
                s0 = s1;
            }
            if let Some(last) = last_pos(start, stop).filter(|_| t < n && targets[t].0 < end) {
                assign_below(targets, &mut t, end, last, out);
            }
        }
        cum = end;
    }
    if t < n {
        let last = last_pos(0, w.len()).unwrap_or(0);
        for &(_, s) in &targets[t..] {
            out[s as usize] = last;
        }
    }
}

/// `out[s] = key` for the targets `(x, s)` from `*t` on while `x < bound`, advancing `*t`.
#[inline(always)]
fn assign_below(targets: &[(f64, u32)], t: &mut usize, bound: f64, key: u32, out: &mut [u32]) {
    while *t < targets.len() && targets[*t].0 < bound {
        out[targets[*t].1 as usize] = key;
        *t += 1;
    }
}

/// The distinct keys of `sorted` (non-empty, ascending) with their multiplicities, in order,
/// without a branch per key.
#[inline(always)]
fn run_lengths(sorted: &[u32], counts: &mut Vec<(u32, u32)>) {
    counts.clear();
    counts.resize(sorted.len(), (0, 0));
    let (mut cur, mut run, mut m) = (sorted[0], 0u32, 0usize);
    for &j in sorted {
        // Slot m always holds the current run as of the previous key; a new key leaves it
        // final and moves on.
        counts[m] = (cur, run);
        let new = j != cur;
        m += usize::from(new);
        run = if new { 1 } else { run + 1 };
        cur = j;
    }
    counts[m] = (cur, run);
    counts.truncate(m + 1);
}

impl RowCtx<'_> {
    fn eligible(&self, o: u32, keff: usize, top: &[u32]) -> bool {
        let o = o as usize;
        o < keff && self.h.mask.is_none_or(|m| m[o] != 0) && top.binary_search(&(o as u32)).is_err()
    }

    /// Draws `n` shots from the weights `w` (total `total`), applies noise and post-selection.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn shots(
        &self,
        stream: &SampleStream,
        w: &[f32],
        bsum: &[f64],
        total: f64,
        n: usize,
        placement: Placement,
        top: &[u32],
        sc: &mut Scratch,
    ) -> Shots {
        let keff = w.len();
        let mut keys = std::mem::take(&mut sc.keys);
        keys.clear();
        let mut total_shots = 0u32;
        let mut discarded = 0u32;
        let mut mitigated = None;
        for round in 0..MAX_ROUNDS {
            let base = round * n as u64;
            sc.targets.clear();
            sc.uniforms.resize(n, 0.0);
            stream.fill_uniform(Stream::Draw, base, &mut sc.uniforms);
            for s in 0..n {
                let u = sc.uniforms[s];
                let t = match placement {
                    Placement::Iid => u,
                    Placement::Stratified => (s as f64 + u) / n as f64,
                };
                sc.targets.push((t * total, s as u32));
            }
            if placement == Placement::Iid {
                sc.targets
                    .sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            }
            sc.ideal.clear();
            sc.ideal.resize(n, 0);
            walk(w, bsum, &sc.targets, &mut sc.ideal, &mut sc.prefix);
            total_shots += n as u32;
            match self.channel {
                None => {
                    keys.extend_from_slice(&sc.ideal);
                    return Shots {
                        keys,
                        total: total_shots,
                        discarded,
                        mitigated,
                        placement,
                    };
                }
                Some(ch) => {
                    if ch.noise.mitigate && round == 0 {
                        sc.hist.clear();
                        sc.hist.resize(1usize << ch.qubits, 0.0);
                    }
                    for (s, &ideal) in sc.ideal.iter().enumerate() {
                        let o = ch.apply(ideal, stream, base + s as u64);
                        if ch.noise.mitigate && round == 0 {
                            sc.hist[o as usize] += 1.0 / n as f64;
                        }
                        if self.eligible(o, keff, top) {
                            keys.push(o);
                        } else {
                            discarded += 1;
                        }
                    }
                    if ch.noise.mitigate && round == 0 {
                        ch.mitigate(&mut sc.hist);
                        let mut list: Vec<(u32, f64)> = sc
                            .hist
                            .iter()
                            .enumerate()
                            .filter(|&(o, &x)| x > 0.0 && self.eligible(o as u32, keff, top))
                            .map(|(o, &x)| (o as u32, x))
                            .collect();
                        let mass: f64 = list.iter().map(|x| x.1).sum();
                        if mass > 0.0 {
                            list.iter_mut().for_each(|x| x.1 /= mass);
                            mitigated =
                                Some(list.into_iter().map(|(o, x)| (o, x as f32)).collect());
                            return Shots {
                                keys,
                                total: total_shots,
                                discarded,
                                mitigated,
                                placement,
                            };
                        }
                    }
                    if !keys.is_empty() {
                        let placement = if discarded > 0 {
                            Placement::Iid
                        } else {
                            placement
                        };
                        return Shots {
                            keys,
                            total: total_shots,
                            discarded,
                            mitigated,
                            placement,
                        };
                    }
                }
            }
        }
        Shots {
            keys,
            total: total_shots,
            discarded,
            mitigated,
            placement: Placement::Iid,
        }
    }

    /// Processes one query row. `w` holds the scaled logits of the visible keys and is
    /// overwritten. Returns the log-sum-exp.
    fn row(
        &self,
        qi: usize,
        w: &mut [f32],
        out: &mut [f32],
        sc: &mut Scratch,
        rec: Option<&mut RowRecord>,
    ) -> f32 {
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma,popcnt")]
            unsafe fn avx512(
                ctx: &RowCtx<'_>,
                qi: usize,
                w: &mut [f32],
                out: &mut [f32],
                sc: &mut Scratch,
                rec: Option<&mut RowRecord>,
            ) -> f32 {
                ctx.row_impl(qi, w, out, sc, rec)
            }
            if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("popcnt") {
                // SAFETY: the CPU supports the features the function was compiled for.
                return unsafe { avx512(self, qi, w, out, sc, rec) };
            }
        }
        self.row_impl(qi, w, out, sc, rec)
    }

    /// [`Self::row`]'s body, compiled once per instruction set it is dispatched to.
    #[inline(always)]
    fn row_impl(
        &self,
        qi: usize,
        w: &mut [f32],
        out: &mut [f32],
        sc: &mut Scratch,
        rec: Option<&mut RowRecord>,
    ) -> f32 {
        let h = self.h;
        let dv = h.dv;
        let keff = w.len();
        if let Some(mask) = h.mask {
            for (x, &keep) in w.iter_mut().zip(&mask[..keff]) {
                if keep == 0 {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
        out.fill(0.0);
        let mx = math::max(w);
        if mx == f32::NEG_INFINITY {
            if let Some(r) = rec {
                *r = RowRecord {
                    kappa: 1.0,
                    ..Default::default()
                };
            }
            return f32::NEG_INFINITY;
        }
        let mut bsum = std::mem::take(&mut sc.bsum);
        let sum = math::exp_block_sums(w, mx, CDF_BLOCK, &mut bsum);
        let need_ess = rec.is_some() || matches!(self.estimator, Estimator::Adaptive { .. });
        let sumsq = if need_ess {
            f64::from(math::dot(w, w))
        } else {
            f64::NAN
        };
        let lse = mx + sum.ln() as f32;
        let ess = (sum * sum / sumsq) as f32;
        let stream = SampleStream::new(self.seed, self.batch_offset + h.batch, h.head, qi);

        let mut exact_part: Vec<(u32, f32)> = Vec::new();
        let mut top: Vec<u32> = Vec::new();
        let mut mass = 1.0f64;
        let (n, placement, iid_kappa) = match self.estimator {
            Estimator::Exact => unreachable!("exact attention does not go through the sampler"),
            Estimator::Lsh { .. } => unreachable!("lsh has its own kernel (cpu::lsh)"),
            Estimator::Multinomial { samples } => (samples, Placement::Iid, true),
            Estimator::Stratified { samples } => (samples, Placement::Stratified, false),
            Estimator::Adaptive { min, max } => {
                // Neyman allocation under isotropic values: E_v[Var] ∝ 1 − 1/ESS, so S ∝ √(1 − 1/ESS).
                let s = ((max as f64 * (1.0 - 1.0 / f64::from(ess)).max(0.0).sqrt()).ceil()
                    as usize)
                    .clamp(min, max);
                (s, Placement::Stratified, false)
            }
            Estimator::ControlVariate { samples, .. } => (samples, Placement::Iid, true),
            Estimator::TopK { k, samples } => {
                let visible = w.iter().filter(|&&x| x > 0.0).count();
                // Top-k by weight; ties broken by the lower index.
                let mut idx: Vec<u32> = (0..keff as u32).filter(|&j| w[j as usize] > 0.0).collect();
                if k < visible {
                    idx.select_nth_unstable_by(k, |&a, &b| {
                        w[b as usize].total_cmp(&w[a as usize]).then(a.cmp(&b))
                    });
                    idx.truncate(k);
                }
                idx.sort_unstable();
                let top_sum: f64 = idx.iter().map(|&j| f64::from(w[j as usize])).sum();
                for &j in &idx {
                    exact_part.push((j, (f64::from(w[j as usize]) / sum) as f32));
                    w[j as usize] = 0.0;
                }
                top = idx;
                let tail = (sum - top_sum).max(0.0);
                if tail <= 0.0 || k >= visible {
                    (0, Placement::Iid, false)
                } else {
                    mass = tail / (top_sum + tail);
                    (samples, Placement::Iid, false)
                }
            }
        };
        let cv = self.cv;
        let total = if top.is_empty() {
            sum
        } else {
            block_sums(w, &mut bsum)
        };
        let shots = if n > 0 {
            Some(self.shots(&stream, w, &bsum, total, n, placement, &top, sc))
        } else {
            None
        };
        sc.bsum = bsum;

        // Coefficients of the sampled part (summing to `mass`).
        let mut sampled = std::mem::take(&mut sc.sampled);
        sampled.clear();
        if let Some(s) = &shots {
            if let Some(list) = &s.mitigated {
                sampled.extend(list.iter().map(|&(j, x)| (j, (f64::from(x) * mass) as f32)));
            } else if !s.keys.is_empty() {
                // Stratified shots without noise come out in key order already.
                let in_order = s.keys.windows(2).fold(true, |a, p| a & (p[0] <= p[1]));
                let sorted: &[u32] = if in_order {
                    &s.keys
                } else {
                    sc.sorted.clear();
                    sc.sorted.extend_from_slice(&s.keys);
                    sc.sorted.sort_unstable();
                    &sc.sorted
                };
                run_lengths(sorted, &mut sc.counts);
                let nk = s.keys.len() as f64;
                sampled.extend(
                    sc.counts
                        .iter()
                        .map(|&(j, c)| (j, (f64::from(c) / nk * mass) as f32)),
                );
            }
        }

        if !exact_part.is_empty() {
            math::combine_rows(&exact_part, h.v, dv, out);
        }
        math::combine_rows(&sampled, h.v, dv, out);
        if let Some(cv) = cv {
            // out += (Σ p_j z_j − Σ ŵ_j z_j) Uᵀ
            let mut y = vec![0.0f64; cv.rank];
            for (j, &x) in w.iter().enumerate() {
                if x > 0.0 {
                    let p = f64::from(x) / sum;
                    for (yr, &zr) in y.iter_mut().zip(cv.zrow(j)) {
                        *yr += p * f64::from(zr);
                    }
                }
            }
            for &(j, c) in &sampled {
                for (yr, &zr) in y.iter_mut().zip(cv.zrow(j as usize)) {
                    *yr -= f64::from(c) * f64::from(zr);
                }
            }
            cv.add_lift(&y, out);
            if sampled.is_empty() {
                // No usable shot (noise discarded all): the estimate is the control's expectation.
                math::axpy(1.0, &cv.mu, out);
            }
        }

        if let Some(r) = rec {
            let (keys, total_shots, discarded, mitigated, placement) = match &shots {
                Some(s) => (
                    s.keys.clone(),
                    s.total,
                    s.discarded,
                    s.mitigated.is_some(),
                    s.placement,
                ),
                None => (Vec::new(), 0, 0, false, Placement::Iid),
            };
            let nk = keys.len();
            let kappa = if iid_kappa && !mitigated && nk >= 2 {
                nk as f32 / (nk as f32 - 1.0)
            } else {
                1.0
            };
            let variance = if mitigated || !self.variance {
                f32::NAN
            } else if nk == 0 {
                if shots.is_none() { 0.0 } else { f32::NAN }
            } else {
                self.variance(&keys, placement, mass) as f32
            };
            *r = RowRecord {
                exact: exact_part,
                sampled: sampled.clone(),
                kappa,
                diag: QueryDiagnostics {
                    shots: total_shots,
                    discarded,
                    ess,
                    variance,
                    samples: keys,
                },
            };
        }
        sc.sampled = sampled;
        if let Some(s) = shots {
            sc.keys = s.keys;
        }
        lse
    }

    /// The summand of the sampled part for key j: v_j, or the residual v_j − g(v_j) for cv.
    fn summand(&self, j: u32, buf: &mut [f32]) {
        let h = self.h;
        let dv = h.dv;
        buf.copy_from_slice(&h.v[j as usize * dv..(j as usize + 1) * dv]);
        if let Some(cv) = self.cv {
            let z = cv.zrow(j as usize);
            for (t, b) in buf.iter_mut().enumerate() {
                let lift: f32 = (0..cv.rank).map(|r| cv.u[t * cv.rank + r] * z[r]).sum();
                *b -= cv.mu[t] + lift;
            }
        }
    }

    /// Estimated variance (trace) of the sampled part: sample variance / n for i.i.d. shots;
    /// the collapsed-strata estimator (pairs of adjacent strata, the last three strata as one
    /// group when S is odd) for stratified shots.
    fn variance(&self, keys: &[u32], placement: Placement, mass: f64) -> f64 {
        let n = keys.len();
        if n < 2 {
            return f64::NAN;
        }
        let dv = self.h.dv;
        let v = match placement {
            Placement::Iid => {
                let mut a = vec![0.0f32; dv];
                let mut mean = vec![0.0f64; dv];
                let mut sq = 0.0f64;
                for &j in keys {
                    self.summand(j, &mut a);
                    for (m, &x) in mean.iter_mut().zip(&a) {
                        *m += f64::from(x);
                        sq += f64::from(x) * f64::from(x);
                    }
                }
                let nn = n as f64;
                let ss: f64 = mean.iter().map(|m| m * m / nn).sum();
                ((sq - ss) / (nn - 1.0)) / nn
            }
            Placement::Stratified => {
                // Collapsed strata: adjacent strata grouped in pairs, the last three in a triple
                // when S is odd. A group G of g strata (one shot each) adds
                // g/(g − 1)·Σ_{s∈G} ‖f_s − f̄_G‖², whose expectation is
                // Σ_{s∈G} Var_s + g/(g − 1)·Σ_{s∈G} ‖o_s − ō_G‖² ≥ Σ_{s∈G} Var_s, so the sum over
                // groups, divided by S², is conservative for every S ≥ 2.
                let mut grp = vec![0.0f32; 3 * dv];
                let mut mean = vec![0.0f64; dv];
                let mut acc = 0.0f64;
                let mut start = 0;
                while start < n {
                    let g = if n - start == 3 { 3 } else { 2 };
                    mean.fill(0.0);
                    for (r, &j) in keys[start..start + g].iter().enumerate() {
                        let f = &mut grp[r * dv..(r + 1) * dv];
                        self.summand(j, f);
                        for (m, &x) in mean.iter_mut().zip(f.iter()) {
                            *m += f64::from(x) / g as f64;
                        }
                    }
                    let ss: f64 = grp[..g * dv]
                        .chunks(dv)
                        .flat_map(|f| {
                            f.iter()
                                .zip(&mean)
                                .map(|(&x, &m)| (f64::from(x) - m).powi(2))
                        })
                        .sum();
                    acc += ss * g as f64 / (g as f64 - 1.0);
                    start += g;
                }
                let nn = n as f64;
                acc / (nn * nn)
            }
        };
        v * mass * mass
    }
}

/// Logits (f32) a worker thread keeps between tasks: 64 queries × 16384 keys, 4 MiB.
const KEEP_LOGITS: usize = BQM * 16384;

thread_local! {
    /// Each worker thread's logits block and row scratch, kept from task to task (a task
    /// writes every logit it reads and each row resets what it uses of the scratch).
    static TASK_BUFFERS: std::cell::RefCell<(Vec<f32>, Scratch)> =
        std::cell::RefCell::new((Vec::new(), Scratch::default()));
}

/// Sampling forward pass over all heads (the CUDA emulation tests compare against it).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn forward(p: &Problem<'_>, spec: &EstimatorSpec, seed: u64, record: bool) -> McForward {
    forward_at(p, spec, seed, 0, record, record)
}

/// [`forward`] for a batch that is rows `batch_offset..batch_offset + B` of a larger logical
/// batch: row b draws from the streams of batch index `batch_offset + b`, so a batch split
/// across processes draws exactly what the whole batch draws in one call. `record` keeps each
/// query's record (the sampled backward replays it); `diagnostics` also estimates each
/// query's variance, which only diagnostics report (records kept for the backward alone carry
/// NaN there).
pub(crate) fn forward_at(
    p: &Problem<'_>,
    spec: &EstimatorSpec,
    seed: u64,
    batch_offset: usize,
    record: bool,
    diagnostics: bool,
) -> McForward {
    let (lq, lk, d, dv) = (p.lq, p.lk, p.d, p.dv);
    let heads = p.heads();
    let mut out = vec![0.0f32; heads * lq * dv];
    let mut lse = vec![0.0f32; heads * lq];
    let mut rows: Vec<RowRecord> = if record {
        vec![RowRecord::default(); heads * lq]
    } else {
        Vec::new()
    };
    if lq == 0 {
        return McForward {
            out,
            lse,
            rows: record.then_some(rows),
        };
    }
    let channel = (!spec.noise.is_none()).then(|| Channel::new(spec.noise, lk));
    let per_head =
        |bh: usize, out_h: &mut [f32], lse_h: &mut [f32], rows_h: Option<&mut [RowRecord]>| {
            let h = p.head(bh);
            let cv = match spec.estimator {
                Estimator::ControlVariate { rank, .. } => Some(CvContext::new(&h, rank)),
                _ => None,
            };
            let ctx = RowCtx {
                h: &h,
                estimator: spec.estimator,
                channel,
                seed,
                batch_offset,
                cv: cv.as_ref(),
                variance: diagnostics,
            };
            let task =
                |blk: usize, o: &mut [f32], l: &mut [f32], mut r: Option<&mut [RowRecord]>| {
                    let i0 = blk * BQM;
                    let bq = l.len();
                    let kend = key_limit(&h, i0 + bq);
                    TASK_BUFFERS.with_borrow_mut(|(logits, sc)| {
                        if logits.len() < bq * kend {
                            logits.resize(bq * kend, 0.0);
                        }
                        // Every element is written (no accumulation): stale values never show.
                        let s = &mut logits[..bq * kend];
                        matmul(
                            s,
                            kend,
                            false,
                            Mat::rows(&h.q[i0 * d..(i0 + bq) * d], bq, d, d),
                            Mat::rows(&h.k[..kend * d], kend, d, d).t(),
                            h.scale,
                        );
                        for rr in 0..bq {
                            let qi = i0 + rr;
                            let keff = if h.causal { lk.min(qi + 1) } else { lk };
                            let w = &mut s[rr * kend..rr * kend + keff];
                            let rec = r.as_deref_mut().map(|r| &mut r[rr]);
                            l[rr] = ctx.row(qi, w, &mut o[rr * dv..(rr + 1) * dv], sc, rec);
                        }
                        if logits.capacity() > KEEP_LOGITS {
                            // A long sequence's block is not kept alive between calls.
                            *logits = Vec::new();
                        }
                    });
                };
            match rows_h {
                Some(rows_h) => out_h
                    .par_chunks_mut((BQM * dv).max(1))
                    .zip(lse_h.par_chunks_mut(BQM))
                    .zip(rows_h.par_chunks_mut(BQM))
                    .enumerate()
                    .for_each(|(blk, ((o, l), r))| task(blk, o, l, Some(r))),
                None => out_h
                    .par_chunks_mut((BQM * dv).max(1))
                    .zip(lse_h.par_chunks_mut(BQM))
                    .enumerate()
                    .for_each(|(blk, (o, l))| task(blk, o, l, None)),
            }
        };
    if dv == 0 {
        // Nothing to estimate; still report the log-sum-exp through the exact path.
        let (_, l) = super::exact_forward(p);
        return McForward {
            out,
            lse: l,
            rows: record.then_some(rows),
        };
    }
    if record {
        out.par_chunks_mut(lq * dv)
            .zip(lse.par_chunks_mut(lq))
            .zip(rows.par_chunks_mut(lq))
            .enumerate()
            .for_each(|(bh, ((o, l), r))| per_head(bh, o, l, Some(r)));
    } else {
        out.par_chunks_mut(lq * dv)
            .zip(lse.par_chunks_mut(lq))
            .enumerate()
            .for_each(|(bh, (o, l))| per_head(bh, o, l, None));
    }
    McForward {
        out,
        lse,
        rows: record.then_some(rows),
    }
}

/// Backward of the sampled estimator (gradient mode `sampled`). Needs the records of the forward
/// pass and its output. Per head, sequential over queries (deterministic), parallel over heads.
pub(crate) fn backward_sampled(
    p: &Problem<'_>,
    spec: &EstimatorSpec,
    out: &[f32],
    lse: &[f32],
    rows: &[RowRecord],
    dout: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (lq, lk, d, dv) = (p.lq, p.lk, p.d, p.dv);
    let heads = p.heads();
    let mut dq = vec![0.0f32; heads * lq * d];
    let mut dk = vec![0.0f32; heads * lk * d];
    let mut dvv = vec![0.0f32; heads * lk * dv];
    if heads == 0 || lq == 0 || lk == 0 {
        return (dq, dk, dvv);
    }
    dq.par_chunks_mut((lq * d).max(1))
        .zip(dk.par_chunks_mut((lk * d).max(1)))
        .zip(dvv.par_chunks_mut((lk * dv).max(1)))
        .enumerate()
        .for_each(|(bh, ((dq_h, dk_h), dv_h))| {
            let args = BackwardInputs {
                p,
                spec,
                out,
                lse,
                rows,
                dout,
            };
            backward_head(&args, bh, dq_h, dk_h, dv_h);
        });
    (dq, dk, dvv)
}

/// What every head's sampled backward reads.
struct BackwardInputs<'a> {
    p: &'a Problem<'a>,
    spec: &'a EstimatorSpec,
    out: &'a [f32],
    lse: &'a [f32],
    rows: &'a [RowRecord],
    dout: &'a [f32],
}

/// One head of [`backward_sampled`], compiled for AVX-512F where the CPU has it (its many
/// short dot products and axpys then inline instead of dispatching one by one).
fn backward_head(
    a: &BackwardInputs<'_>,
    bh: usize,
    dq_h: &mut [f32],
    dk_h: &mut [f32],
    dv_h: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn avx512(
            a: &BackwardInputs<'_>,
            bh: usize,
            dq_h: &mut [f32],
            dk_h: &mut [f32],
            dv_h: &mut [f32],
        ) {
            backward_head_impl(a, bh, dq_h, dk_h, dv_h)
        }
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the features the function was compiled for.
            return unsafe { avx512(a, bh, dq_h, dk_h, dv_h) };
        }
    }
    backward_head_impl(a, bh, dq_h, dk_h, dv_h)
}

/// [`backward_head`]'s body.
#[inline(always)]
fn backward_head_impl(
    a: &BackwardInputs<'_>,
    bh: usize,
    dq_h: &mut [f32],
    dk_h: &mut [f32],
    dv_h: &mut [f32],
) {
    let BackwardInputs {
        p,
        spec,
        out,
        lse,
        rows,
        dout,
    } = *a;
    let (lq, lk, d, dv) = (p.lq, p.lk, p.d, p.dv);
    let h = p.head(bh);
    let cv = match spec.estimator {
        Estimator::ControlVariate { rank, .. } => Some(CvContext::new(&h, rank)),
        _ => None,
    };
    let mut acc_z = cv.as_ref().map(|c| vec![0.0f32; lk * c.rank]);
    let mut logits = vec![0.0f32; lk];
    let mut dq_i = vec![0.0f32; d];
    for i in 0..lq {
        let rec = &rows[bh * lq + i];
        let g = &dout[(bh * lq + i) * dv..(bh * lq + i + 1) * dv];
        let o = &out[(bh * lq + i) * dv..(bh * lq + i + 1) * dv];
        let q_i = &h.q[i * d..(i + 1) * d];
        dq_i.fill(0.0);
        let push = |j: usize, dl: f32, dk_h: &mut [f32], dq_i: &mut [f32]| {
            let ds = dl * h.scale;
            if ds != 0.0 {
                math::axpy(ds, &h.k[j * d..(j + 1) * d], dq_i);
                math::axpy(ds, q_i, &mut dk_h[j * d..(j + 1) * d]);
            }
        };
        match &cv {
            None => {
                let b = math::dot(g, o);
                for (&(j, c), is_sampled) in rec
                    .exact
                    .iter()
                    .map(|e| (e, false))
                    .chain(rec.sampled.iter().map(|e| (e, true)))
                {
                    let j = j as usize;
                    let vj = &h.v[j * dv..(j + 1) * dv];
                    let a = math::dot(g, vj);
                    let coef = if is_sampled { c * rec.kappa } else { c };
                    push(j, coef * (a - b), dk_h, &mut dq_i);
                    math::axpy(c, g, &mut dv_h[j * dv..(j + 1) * dv]);
                }
            }
            Some(cv) => {
                let lse_i = lse[bh * lq + i];
                let gu = cv.project(g);
                let gmu = math::dot(g, &cv.mu);
                let keff = if h.causal { lk.min(i + 1) } else { lk };
                // Control part (exact expectation, dense over visible keys).
                if lse_i > f32::NEG_INFINITY {
                    for (j, l) in logits[..keff].iter_mut().enumerate() {
                        let keep = h.mask.is_none_or(|m| m[j] != 0);
                        *l = if keep {
                            (math::dot(q_i, &h.k[j * d..(j + 1) * d]) * h.scale - lse_i).exp()
                        } else {
                            0.0
                        };
                    }
                    let mut zbar = vec![0.0f32; cv.rank];
                    for (j, &pj) in logits[..keff].iter().enumerate() {
                        math::axpy(pj, cv.zrow(j), &mut zbar);
                    }
                    let gz_bar = math::dot(&gu, &zbar);
                    let acc = acc_z.as_mut().expect("cv accumulator");
                    for j in 0..keff {
                        let pj = logits[j];
                        if pj > 0.0 {
                            let dl = pj * (math::dot(&gu, cv.zrow(j)) - gz_bar);
                            push(j, dl, dk_h, &mut dq_i);
                            math::axpy(pj, &gu, &mut acc[j * cv.rank..(j + 1) * cv.rank]);
                        }
                    }
                }
                // Residual part (sampled).
                let gr = |j: usize| {
                    math::dot(g, &h.v[j * dv..(j + 1) * dv]) - gmu - math::dot(&gu, cv.zrow(j))
                };
                let gr_hat: f32 = rec.sampled.iter().map(|&(j, c)| c * gr(j as usize)).sum();
                let mut g_perp = g.to_vec();
                let gu64: Vec<f64> = gu.iter().map(|&x| -f64::from(x)).collect();
                cv.add_lift(&gu64, &mut g_perp);
                for &(j, c) in &rec.sampled {
                    let j = j as usize;
                    push(j, rec.kappa * c * (gr(j) - gr_hat), dk_h, &mut dq_i);
                    math::axpy(c, &g_perp, &mut dv_h[j * dv..(j + 1) * dv]);
                }
            }
        }
        dq_h[i * d..(i + 1) * d].copy_from_slice(&dq_i);
    }
    if let (Some(cv), Some(acc)) = (&cv, &acc_z) {
        for j in 0..lk {
            let y: Vec<f64> = acc[j * cv.rank..(j + 1) * cv.rank]
                .iter()
                .map(|&x| f64::from(x))
                .collect();
            cv.add_lift(&y, &mut dv_h[j * dv..(j + 1) * dv]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_lengths_count_each_distinct_key() {
        let mut counts = Vec::new();
        for (keys, want) in [
            (vec![0u32], vec![(0u32, 1u32)]),
            (vec![0, 0, 0], vec![(0, 3)]),
            (vec![3, 3, 5, 9, 9, 9], vec![(3, 2), (5, 1), (9, 3)]),
            (vec![0, 1, 2, 3], vec![(0, 1), (1, 1), (2, 1), (3, 1)]),
        ] {
            run_lengths(&keys, &mut counts);
            assert_eq!(counts, want, "{keys:?}");
        }
    }

    /// The block-wise walk draws exactly what the walk with one chain per sub-block draws, also
    /// for targets placed on the running sums, sub-block and block boundaries, past the total,
    /// with zero and tiny weights and every length around the block sizes.
    #[test]
    fn walk_draws_exactly_what_the_reference_walk_draws() {
        let mut state = 99u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64) / (1u64 << 53) as f64
        };
        let mut compared = 0usize;
        let (mut short, mut tried) = (0usize, 0usize);
        // One buffer for every row, as in the sampler.
        let mut prefix = Prefix::default();
        for len in (1usize..=130).chain([191, 192, 193, 257, 1000]) {
            for kind in 0..7 {
                let w: Vec<f32> = (0..len)
                    .map(|k| {
                        let u = next();
                        match kind {
                            // Whole blocks without weight.
                            6 => {
                                if (k / CDF_BLOCK) % 3 == 1 {
                                    0.0
                                } else {
                                    u as f32
                                }
                            }
                            0 => u as f32,
                            1 => {
                                if u < 0.4 {
                                    0.0
                                } else {
                                    next() as f32
                                }
                            }
                            2 => (-(40.0 * u)).exp() as f32,
                            3 => {
                                if u < 0.9 {
                                    1e-30 * next() as f32
                                } else {
                                    1.0
                                }
                            }
                            // Rows that take the scalar walk: infinite and NaN weights.
                            4 => {
                                if u < 0.05 {
                                    f32::INFINITY
                                } else {
                                    u as f32
                                }
                            }
                            _ => {
                                if u < 0.05 {
                                    f32::NAN
                                } else {
                                    u as f32
                                }
                            }
                        }
                    })
                    .collect();
                let mut bsum = Vec::new();
                let total = block_sums(&w, &mut bsum);
                let total = if total.is_finite() { total } else { len as f64 };
                if total <= 0.0 {
                    continue;
                }
                // Random targets plus every boundary the walk compares against.
                let mut tv: Vec<f64> = (0..64).map(|_| next() * total).collect();
                let mut cum = 0.0f64;
                for (b, blk) in w.chunks(CDF_BLOCK).enumerate() {
                    let mut c = cum;
                    for sub in blk.chunks(SUB) {
                        let ss = f64::from(sum16(sub));
                        let mut cc = c;
                        for &x in sub {
                            cc += f64::from(x);
                            tv.extend([cc, cc.next_down(), cc.next_up()]);
                        }
                        tv.extend([c + ss, (c + ss).next_down()]);
                        c += ss;
                    }
                    cum += bsum[b];
                    tv.extend([cum, cum.next_down(), c, c.next_down()]);
                }
                tv.extend([total, total.next_down(), total * 1.5]);
                tv.retain(|x| *x >= 0.0);
                tv.sort_by(f64::total_cmp);
                if len <= GROUP_KEYS && kind < 4 {
                    // Random targets (no boundaries) are placed without the ordered walk.
                    let mut random: Vec<(f64, u32)> =
                        (0..32).map(|s| (next() * total, s)).collect();
                    random.sort_by(|a, b| a.0.total_cmp(&b.0));
                    let mut got = vec![u32::MAX; 32];
                    let mut want = vec![u32::MAX; 32];
                    walk_scalar(&w, &bsum, &random, &mut want);
                    for simd in [false, simd_prefix()] {
                        if walk_short(&w, &bsum, &random, &mut got, &mut prefix, simd) {
                            short += 1;
                            assert_eq!(got, want, "len {len}, kind {kind}, simd {simd}");
                        }
                        tried += 1;
                    }
                }
                // Every boundary alone and after its predecessor: where a target lands then
                // depends on that target (and one neighbour) only, so a wrong bound of the
                // placement without the ordered walk shows.
                for k in 0..tv.len() {
                    let lo = k.saturating_sub(1);
                    for set in [&tv[k..=k], &tv[lo..=k]] {
                        let targets: Vec<(f64, u32)> = set
                            .iter()
                            .enumerate()
                            .map(|(s, &x)| (x, s as u32))
                            .collect();
                        let mut want = vec![u32::MAX; targets.len()];
                        walk_scalar(&w, &bsum, &targets, &mut want);
                        let mut got = vec![u32::MAX; targets.len()];
                        walk_with(&w, &bsum, &targets, &mut got, &mut prefix, simd_prefix());
                        assert_eq!(got, want, "len {len}, kind {kind}, targets {targets:?}");
                        compared += targets.len();
                    }
                }
                // Also a few targets only, so that groups of sub-blocks are skipped.
                let mut sparse: Vec<f64> = (0..3).map(|_| next() * total).collect();
                sparse.sort_by(f64::total_cmp);
                for tv in [tv, sparse] {
                    let targets: Vec<(f64, u32)> =
                        tv.iter().enumerate().map(|(s, &x)| (x, s as u32)).collect();
                    let mut want = vec![u32::MAX; targets.len()];
                    walk_scalar(&w, &bsum, &targets, &mut want);
                    for simd in [false, simd_prefix()] {
                        let mut got = vec![u32::MAX; targets.len()];
                        walk_with(&w, &bsum, &targets, &mut got, &mut prefix, simd);
                        assert_eq!(got, want, "len {len}, kind {kind}, simd {simd}");
                        compared += targets.len();
                    }
                }
            }
        }
        assert!(compared > 50_000, "only {compared} draws compared");
        assert!(
            short * 10 > tried * 9,
            "random targets took the ordered walk in {} of {tried} rows",
            tried - short
        );
    }

    /// The hierarchical walk agrees with a plain inverse CDF over f64 running sums, across block
    /// and sub-block boundaries and with zero-weight keys, and never draws a zero-weight key.
    #[test]
    fn walk_matches_plain_inverse_cdf() {
        let mut state = 12345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f64) / (1u64 << 31) as f64
        };
        for len in [1usize, 5, 16, 17, 63, 64, 65, 200, 1000] {
            let w: Vec<f32> = (0..len)
                .map(|_| if next() < 0.3 { 0.0 } else { next() as f32 })
                .collect();
            let mut bsum = Vec::new();
            let mut total = 0.0f64;
            for blk in w.chunks(CDF_BLOCK) {
                let s = f64::from(math::sum(blk));
                bsum.push(s);
                total += s;
            }
            if total == 0.0 {
                continue;
            }
            let mut targets: Vec<(f64, u32)> = (0..50).map(|s| (next() * total, s)).collect();
            targets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut out = vec![0u32; 50];
            walk(&w, &bsum, &targets, &mut out, &mut Prefix::default());
            for &(t, s) in &targets {
                let j = out[s as usize] as usize;
                assert!(w[j] > 0.0, "len {len}: drew a zero-weight key");
                // Plain inverse CDF; allow a neighbour only when t sits within rounding of a boundary.
                let mut cum = 0.0f64;
                let mut want = None;
                for (k, &x) in w.iter().enumerate() {
                    cum += f64::from(x);
                    if x > 0.0 && t < cum {
                        want = Some((k, cum));
                        break;
                    }
                }
                if let Some((k, c)) = want {
                    let near = (t - c).abs() < 1e-5 * total
                        || (t - (c - f64::from(w[k]))).abs() < 1e-5 * total;
                    assert!(
                        j == k || near,
                        "len {len}: target {t} drew {j}, plain CDF {k}"
                    );
                }
            }
        }
    }
}
