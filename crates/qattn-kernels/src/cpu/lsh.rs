//! `lsh:BITS:BLOCK:S` on the CPU: exact attention inside LSH blocks plus an importance-sampled
//! remainder (after HyperAttention, Han et al. 2023), in O(L·(BLOCK + S)·D) per head.
//!
//! For one (batch, head):
//!
//! 1. **Hash.** BITS hyperplanes r_1..r_BITS with i.i.d. N(0, 1) entries (Philox stream
//!    [`Stream::Hash`] of (seed, batch, head)) give every query and key the code
//!    c = Σ_b [r_b·x > 0]·2^b; buckets are ordered by the inverse Gray code of c, so that
//!    neighbouring buckets differ in one hyperplane (one bit of angle).
//! 2. **Sort.** Queries (all) and visible keys (those the padding mask keeps) are sorted by
//!    (bucket rank, index).
//! 3. **Blocks.** The sorted queries are cut into nb = ⌈Lq/BLOCK⌉ blocks; query block β is paired
//!    with the sorted keys whose buckets lie between its first and last query's buckets, widened
//!    to BLOCK keys when fewer and cut to 4·BLOCK around its median query's bucket when more
//!    ([`Plan::key_range`]). A query's block keys B_i are those of its block it may see (j ≤ i
//!    when causal); their terms are computed exactly.
//! 4. **Remainder.** Each query block draws S keys uniformly, with replacement, from the m keys
//!    visible to its last query (Philox stream [`Stream::Draw`] of (seed, batch, head, block)),
//!    shared by its queries so that their logits and values are two GEMMs. A draw j counts for
//!    query i, with weight w = m/S, when i may see it and it is not among i's block keys B_i.
//!    Then E[Σ_s w·[j_s counts]·f(j_s)] = Σ_{j ∈ V_i \ B_i} f(j) for any f, so both
//!    N_i = Σ_{j∈B_i} e^{l_ij} v_j + Σ_s w·[j_s counts]·e^{l_{i j_s}} v_{j_s}   and
//!    D_i = Σ_{j∈B_i} e^{l_ij}     + Σ_s w·[j_s counts]·e^{l_{i j_s}}
//!    are unbiased for the exact numerator and normaliser, and o_i = N_i / D_i (a ratio of
//!    unbiased estimates) is consistent with O(1/S) bias. When the block covers every visible key
//!    no draw counts and o_i is exact. Queries of one block share draws, so their errors are
//!    correlated; each query's estimate is unbiased on its own.
//!
//! Everything is keyed by Philox counters, so results do not depend on the thread count. The
//! sampled gradient is the gradient of o_i = softmax over the selected terms (logits
//! l + ln w) with the selection held fixed; [`backward_sampled`] recomputes the selection from
//! the same streams instead of storing it.

use super::gemm::{Mat, matmul};
use super::{HeadInput, Problem};
use crate::math;
use crate::noise::Channel;
use crate::philox::{SampleStream, Stream};
use crate::spec::Noise;
use rayon::prelude::*;

use super::mc::{McForward, QueryDiagnostics, RowRecord};

/// The shape of an `lsh:BITS:BLOCK:S[:R]` estimator.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lsh {
    pub(crate) bits: usize,
    pub(crate) block: usize,
    pub(crate) samples: usize,
    /// Independent hashings (rounds) whose blocks are united.
    pub(crate) rounds: usize,
    /// Measurement noise on the remainder draws (none: the ideal uniform draws).
    pub(crate) noise: Noise,
}

/// The hashing and sorting of one head.
struct Plan {
    /// Query indices in sorted order.
    q_order: Vec<u32>,
    /// Visible key indices in sorted order.
    k_order: Vec<u32>,
    /// Sorted position of each key (`u32::MAX` for a masked key).
    k_pos: Vec<u32>,
    /// Visible key indices, ascending.
    visible: Vec<u32>,
    /// Bucket rank of each sorted query position.
    q_ranks: Vec<u32>,
    /// Bucket rank of each sorted key position.
    k_ranks: Vec<u32>,
    /// Queries per block.
    block: usize,
    /// Number of query blocks.
    blocks: usize,
    /// Query block of each query index.
    q_block: Vec<u32>,
    /// Sorted-key range [lo, hi) of each query block ([`Plan::key_range`]).
    ranges: Vec<(usize, usize)>,
}

impl Plan {
    /// The plan of hashing round `round` (its own hyperplanes).
    fn new(h: &HeadInput<'_>, lsh: Lsh, seed: u64, batch: usize, round: usize) -> Plan {
        let d = h.d;
        let planes = hyperplanes(lsh.bits, d, seed, batch, h.head, round);
        let code = |x: &[f32]| -> u32 {
            let mut c = 0u32;
            for (b, r) in planes.chunks_exact(d).enumerate() {
                if math::dot(r, x) > 0.0 {
                    c |= 1 << b;
                }
            }
            gray_rank(c)
        };
        let visible: Vec<u32> = (0..h.lk as u32)
            .filter(|&j| h.mask.is_none_or(|m| m[j as usize] != 0))
            .collect();
        let q_codes: Vec<u32> = (0..h.lq).map(|i| code(&h.q[i * d..(i + 1) * d])).collect();
        let mut q_order: Vec<u32> = (0..h.lq as u32).collect();
        q_order.sort_by_key(|&i| (q_codes[i as usize], i));
        let k_codes: Vec<(u32, u32)> = visible
            .iter()
            .map(|&j| (code(&h.k[j as usize * d..(j as usize + 1) * d]), j))
            .collect();
        let mut k_sorted = k_codes;
        k_sorted.sort_unstable();
        let k_ranks: Vec<u32> = k_sorted.iter().map(|&(c, _)| c).collect();
        let k_order: Vec<u32> = k_sorted.into_iter().map(|(_, j)| j).collect();
        let q_ranks: Vec<u32> = q_order.iter().map(|&i| q_codes[i as usize]).collect();
        let mut k_pos = vec![u32::MAX; h.lk];
        for (p, &j) in k_order.iter().enumerate() {
            k_pos[j as usize] = p as u32;
        }
        let block = lsh.block.max(1);
        let mut q_block = vec![0u32; h.lq];
        for (t, &i) in q_order.iter().enumerate() {
            q_block[i as usize] = (t / block) as u32;
        }
        let mut plan = Plan {
            q_order,
            k_order,
            k_pos,
            visible,
            q_ranks,
            k_ranks,
            block,
            blocks: h.lq.div_ceil(block).max(1),
            q_block,
            ranges: Vec::new(),
        };
        plan.ranges = (0..plan.blocks).map(|beta| plan.key_range(beta)).collect();
        plan
    }

    /// The queries (sorted positions) of block `beta`.
    fn queries(&self, beta: usize) -> &[u32] {
        let lq = self.q_order.len();
        &self.q_order[(beta * self.block).min(lq)..((beta + 1) * self.block).min(lq)]
    }

    /// Whether key `j` is among the keys of query `i`'s block in this round.
    fn in_block(&self, i: usize, j: u32) -> bool {
        let (lo, hi) = self.ranges[self.q_block[i] as usize];
        (lo..hi).contains(&(self.k_pos[j as usize] as usize))
    }

    /// Sorted-key positions [lo, hi) of block `beta`: the keys whose buckets lie between the
    /// first and the last bucket of the block's queries (every key sharing a bucket with one of
    /// its queries), widened symmetrically to BLOCK keys when fewer match, and cut to a window
    /// of [`RANGE_CAP`]·BLOCK keys around the block's median query's bucket when more do.
    /// Query and key buckets need not hold equal numbers, so cutting both sorted lists at the
    /// same proportional positions would pair a query block with its neighbours' keys.
    fn key_range(&self, beta: usize) -> (usize, usize) {
        let n = self.k_order.len();
        let lq = self.q_ranks.len();
        let t0 = (beta * self.block).min(lq);
        let t1 = ((beta + 1) * self.block).min(lq);
        if n == 0 || t0 == t1 {
            return (0, 0);
        }
        let (r_lo, r_hi) = (self.q_ranks[t0], self.q_ranks[t1 - 1]);
        let a = self.k_ranks.partition_point(|&r| r < r_lo);
        let b = self.k_ranks.partition_point(|&r| r <= r_hi);
        let want = self.block.min(n);
        let cap = (RANGE_CAP * self.block).min(n);
        let window = |center: usize, len: usize| -> (usize, usize) {
            let lo = center.saturating_sub(len / 2).min(n - len);
            (lo, lo + len)
        };
        if b - a < want {
            // Contains [a, b): the window is centred on it and at least as long.
            window((a + b) / 2, want)
        } else if b - a > cap {
            let r_mid = self.q_ranks[(t0 + t1 - 1) / 2];
            let m0 = self.k_ranks.partition_point(|&r| r < r_mid);
            let m1 = self.k_ranks.partition_point(|&r| r <= r_mid);
            let (lo, _) = window((m0 + m1) / 2, cap);
            let lo = lo.clamp(a, b - cap);
            (lo, lo + cap)
        } else {
            (a, b)
        }
    }

    /// Visible keys of query `i`: all visible keys, or those j ≤ i when causal.
    fn visible_count(&self, i: usize, causal: bool) -> usize {
        if causal {
            self.visible.partition_point(|&j| j as usize <= i)
        } else {
            self.visible.len()
        }
    }
}

/// The most keys a query block computes exactly, in multiples of BLOCK (when its queries'
/// buckets hold more keys).
const RANGE_CAP: usize = 4;

/// BITS × D standard normal entries (Box–Muller on the head's [`Stream::Hash`] uniforms; the
/// round is the stream's query field, so round 0 is the single-round hashing).
fn hyperplanes(
    bits: usize,
    d: usize,
    seed: u64,
    batch: usize,
    head: usize,
    round: usize,
) -> Vec<f32> {
    let stream = SampleStream::new(seed, batch, head, round);
    let n = bits * d;
    let mut out = Vec::with_capacity(n + 1);
    let mut i = 0u64;
    while out.len() < n {
        let u1 = stream.uniform(Stream::Hash, i);
        let u2 = stream.uniform(Stream::Hash, i + 1);
        i += 2;
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        out.push((r * t.cos()) as f32);
        out.push((r * t.sin()) as f32);
    }
    out.truncate(n);
    out
}

/// Position of Gray code `g` in the Gray sequence (its binary value): adjacent positions differ
/// in one bit.
fn gray_rank(g: u32) -> u32 {
    let mut b = g;
    let mut s = 1;
    while s < 32 {
        b ^= b >> s;
        s <<= 1;
    }
    b
}

/// The remainder draws of one query block, shared by its queries: S keys drawn uniformly, with
/// replacement, from the keys visible to the block's last query (all visible keys, or those
/// j ≤ max i when causal; m of them), each with weight m/S. For query i a draw counts when i
/// may see it and it is not among i's block keys: then E[Σ_s w·[j_s counts]·f(j_s)] =
/// Σ_{j ∈ V_i \ B_i} f(j), so every query's estimate is unbiased, and the block's draws make
/// one GEMM.
///
/// With measurement noise each draw is read out through the noise channel (the drawn index
/// held in ⌈log2 Lk⌉ qubits, as for the other estimators): an outcome that is not a key the
/// block drew from (≥ Lk, masked, or past the last query when causal) is discarded, the kept
/// ones share the weight m/kept, and another round of S draws is made while none is kept (at
/// most [`MAX_DRAW_ROUNDS`]). The noisy outcomes are not uniform over the visible keys, so the
/// estimate is biased by the noise — what the noise terms exist to show.
struct Draws {
    keys: Vec<u32>,
    weight: f32,
    /// Outcomes the noise made unusable for the block (discarded before any query sees them).
    discarded: u32,
}

/// Rounds of S noisy draws a block makes at most while every outcome is discarded.
const MAX_DRAW_ROUNDS: usize = 16;

fn block_draws(
    plan: &Plan,
    lsh: Lsh,
    queries: &[u32],
    causal: bool,
    stream: &SampleStream,
) -> Draws {
    let last = queries.iter().copied().max().unwrap_or(0) as usize;
    let m = plan.visible_count(last, causal);
    if m == 0 {
        return Draws {
            keys: Vec::new(),
            weight: 0.0,
            discarded: 0,
        };
    }
    let ideal = |shot: u64| {
        let u = stream.uniform(Stream::Draw, shot);
        plan.visible[((u * m as f64) as usize).min(m - 1)]
    };
    if lsh.noise.is_none() {
        let keys = (0..lsh.samples as u64).map(ideal).collect();
        return Draws {
            keys,
            weight: m as f32 / lsh.samples as f32,
            discarded: 0,
        };
    }
    let lk = plan.k_pos.len();
    let channel = Channel::new(lsh.noise, lk);
    let usable = |j: u32| {
        (j as usize) < lk && plan.k_pos[j as usize] != u32::MAX && (!causal || j as usize <= last)
    };
    let mut keys = Vec::with_capacity(lsh.samples);
    let mut discarded = 0u32;
    for round in 0..MAX_DRAW_ROUNDS {
        for s in 0..lsh.samples {
            let shot = (round * lsh.samples + s) as u64;
            let o = channel.apply(ideal(shot), stream, shot);
            if usable(o) {
                keys.push(o);
            } else {
                discarded += 1;
            }
        }
        if !keys.is_empty() {
            break;
        }
    }
    let weight = if keys.is_empty() {
        0.0
    } else {
        m as f32 / keys.len() as f32
    };
    Draws {
        keys,
        weight,
        discarded,
    }
}

/// The Philox stream of query block `beta`'s draws (query field: the block index).
fn draw_stream(seed: u64, batch: usize, head: usize, beta: usize) -> SampleStream {
    SampleStream::new(seed, batch, head, beta)
}

/// The R hashing rounds of one head. A query's exact keys are the union of its blocks' keys
/// over the rounds, each counted once (in the first round whose block holds it).
struct HeadPlan {
    rounds: Vec<Plan>,
}

impl HeadPlan {
    fn new(h: &HeadInput<'_>, lsh: Lsh, seed: u64, batch: usize) -> HeadPlan {
        HeadPlan {
            rounds: (0..lsh.rounds.max(1))
                .map(|r| Plan::new(h, lsh, seed, batch, r))
                .collect(),
        }
    }

    /// The first round (its blocks own the draws).
    fn first(&self) -> &Plan {
        &self.rounds[0]
    }

    /// Whether key `j` is among query `i`'s block keys in a round before `round`.
    fn seen_before(&self, round: usize, i: usize, j: u32) -> bool {
        self.rounds[..round].iter().any(|p| p.in_block(i, j))
    }

    /// Whether key `j` is among query `i`'s block keys in any round.
    fn covered(&self, i: usize, j: u32) -> bool {
        self.seen_before(self.rounds.len(), i, j)
    }
}

/// Whether draw `j` counts for query `i`: `i` may see it and no round's block of `i` holds it.
fn counts(hp: &HeadPlan, causal: bool, i: usize, j: u32) -> bool {
    (!causal || j as usize <= i) && !hp.covered(i, j)
}

/// Query i's terms (key, weight): its block keys of every round (each once) with weight 1, then
/// the draws of its first-round block that count for it, with the draw weight.
fn terms<'a>(
    hp: &'a HeadPlan,
    draws: &'a Draws,
    causal: bool,
    i: usize,
) -> impl Iterator<Item = (u32, f32)> + 'a {
    let block = hp.rounds.iter().enumerate().flat_map(move |(r, plan)| {
        let (lo, hi) = plan.ranges[plan.q_block[i] as usize];
        plan.k_order[lo..hi]
            .iter()
            .filter(move |&&j| (!causal || j as usize <= i) && !hp.seen_before(r, i, j))
            .map(|&j| (j, 1.0f32))
    });
    let drawn = draws
        .keys
        .iter()
        .filter(move |&&j| counts(hp, causal, i, j))
        .map(|&j| (j, draws.weight));
    block.chain(drawn)
}

/// Forward pass over all heads: output [B,H,Lq,Dv], the estimated log-normaliser ln D_i, and
/// per-query records (draws and diagnostics) when `record`.
pub(crate) fn forward(
    p: &Problem<'_>,
    lsh: Lsh,
    seed: u64,
    batch_offset: usize,
    record: bool,
) -> McForward {
    let (lq, dv) = (p.lq, p.dv);
    let heads = p.heads();
    let mut out = vec![0.0f32; heads * lq * dv];
    let mut lse = vec![f32::NEG_INFINITY; heads * lq];
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
    let plans: Vec<HeadPlan> = (0..heads)
        .into_par_iter()
        .map(|bh| {
            let h = p.head(bh);
            HeadPlan::new(&h, lsh, seed, batch_offset + h.batch)
        })
        .collect();
    // One task per (head, round, query block); each returns the partial sums of its rows, merged
    // per query afterwards in task order (so results do not depend on the thread count).
    let plans_ref = &plans;
    let tasks: Vec<(usize, usize, usize)> = (0..heads)
        .flat_map(|bh| {
            let hp = &plans_ref[bh];
            (0..hp.rounds.len())
                .flat_map(move |r| (0..hp.rounds[r].blocks).map(move |beta| (bh, r, beta)))
        })
        .collect();
    let results: Vec<Vec<Partial>> = tasks
        .par_iter()
        .map(|&(bh, r, beta)| {
            let h = p.head(bh);
            block_forward(&h, &plans[bh], r, lsh, seed, batch_offset, beta, record)
        })
        .collect();
    // Merge: Σ e^{l−M}·v and Σ e^{l−M} per query, rescaled to the larger shift.
    let mut den = vec![0.0f32; heads * lq];
    let mut shift = vec![f32::NEG_INFINITY; heads * lq];
    for (&(bh, _, _), parts) in tasks.iter().zip(results) {
        for Partial {
            query,
            num,
            den: d,
            shift: m,
            record: rec,
        } in parts
        {
            let at = bh * lq + query;
            if let Some(r) = rec {
                rows[at] = r;
            }
            if m == f32::NEG_INFINITY {
                continue;
            }
            let o = &mut out[at * dv..(at + 1) * dv];
            if shift[at] == f32::NEG_INFINITY {
                o.copy_from_slice(&num);
                den[at] = d;
                shift[at] = m;
            } else {
                let mm = shift[at].max(m);
                let (a, b) = ((shift[at] - mm).exp(), (m - mm).exp());
                for (x, &y) in o.iter_mut().zip(&num) {
                    *x = *x * a + y * b;
                }
                den[at] = den[at] * a + d * b;
                shift[at] = mm;
            }
        }
    }
    for (at, l) in lse.iter_mut().enumerate() {
        let o = &mut out[at * dv..(at + 1) * dv];
        if shift[at] == f32::NEG_INFINITY {
            // No visible key: the row's output stays 0 and its log-normaliser −∞.
            o.fill(0.0);
        } else {
            let inv = 1.0 / den[at];
            o.iter_mut().for_each(|x| *x *= inv);
            *l = shift[at] + den[at].ln();
        }
    }
    McForward {
        out,
        lse,
        rows: record.then_some(rows),
    }
}

/// One query's share of one (round, block) task: Σ e^{l−shift}·v over its terms there, their
/// Σ e^{l−shift}, the shift (−∞: no term), and its record (first round only).
struct Partial {
    query: usize,
    num: Vec<f32>,
    den: f32,
    shift: f32,
    record: Option<RowRecord>,
}

/// The rows of query block `beta` of round `round` of one head: the round's block keys not in
/// an earlier round's block of the query, and (first round) the block's draws.
#[allow(clippy::too_many_arguments)]
fn block_forward(
    h: &HeadInput<'_>,
    hp: &HeadPlan,
    round: usize,
    lsh: Lsh,
    seed: u64,
    batch_offset: usize,
    beta: usize,
    record: bool,
) -> Vec<Partial> {
    let plan = &hp.rounds[round];
    let (d, dv) = (h.d, h.dv);
    let queries = plan.queries(beta);
    let (lo, hi) = plan.ranges[beta];
    let keys = &plan.k_order[lo..hi];
    // Block logits: gathered queries × gathered keys, one GEMM.
    let (bq, bk) = (queries.len(), keys.len());
    let mut qg = Vec::with_capacity(bq * d);
    for &i in queries {
        qg.extend_from_slice(&h.q[i as usize * d..(i as usize + 1) * d]);
    }
    let mut kg = Vec::with_capacity(bk * d);
    for &j in keys {
        kg.extend_from_slice(&h.k[j as usize * d..(j as usize + 1) * d]);
    }
    let mut s = vec![0.0f32; bq * bk];
    if bk > 0 {
        matmul(
            &mut s,
            bk,
            false,
            Mat::rows(&qg, bq, d, d),
            Mat::rows(&kg, bk, d, d).t(),
            h.scale,
        );
    }
    // The block's shared draws (first round): logits of every (query, draw) pair in one GEMM.
    let draws = if round == 0 {
        let stream = draw_stream(seed, batch_offset + h.batch, h.head, beta);
        block_draws(plan, lsh, queries, h.causal, &stream)
    } else {
        Draws {
            keys: Vec::new(),
            weight: 1.0,
            discarded: 0,
        }
    };
    let ns = draws.keys.len();
    let mut sd = vec![0.0f32; bq * ns];
    let mut kd = Vec::with_capacity(ns * d);
    let mut vd = Vec::with_capacity(ns * dv);
    for &j in &draws.keys {
        kd.extend_from_slice(&h.k[j as usize * d..(j as usize + 1) * d]);
        vd.extend_from_slice(&h.v[j as usize * dv..(j as usize + 1) * dv]);
    }
    if ns > 0 {
        matmul(
            &mut sd,
            ns,
            false,
            Mat::rows(&qg, bq, d, d),
            Mat::rows(&kd, ns, d, d).t(),
            h.scale,
        );
    }
    let ln_w = draws.weight.ln();
    // Per query: mask what it may not use, one shift M for block and draws, rows turned into
    // e^{l − M} in place so that P·V are two GEMMs.
    let mut sums = vec![0.0f32; bq * dv];
    let mut dens = vec![0.0f32; bq];
    let mut shifts = vec![f32::NEG_INFINITY; bq];
    let mut recs: Vec<Option<RowRecord>> = Vec::with_capacity(bq);
    for (r, &i) in queries.iter().enumerate() {
        let i = i as usize;
        let row = &mut s[r * bk..(r + 1) * bk];
        for (c, &j) in keys.iter().enumerate() {
            if (h.causal && j as usize > i) || (round > 0 && hp.seen_before(round, i, j)) {
                row[c] = f32::NEG_INFINITY;
            }
        }
        let drow = &mut sd[r * ns..(r + 1) * ns];
        let mut used = 0u32;
        for (c, &j) in draws.keys.iter().enumerate() {
            if counts(hp, h.causal, i, j) {
                drow[c] += ln_w;
                used += 1;
            } else {
                drow[c] = f32::NEG_INFINITY;
            }
        }
        let mx = math::max(row).max(math::max(drow));
        if mx == f32::NEG_INFINITY {
            // No term here: the row contributes nothing.
            row.fill(0.0);
            drow.fill(0.0);
        } else {
            dens[r] = math::exp_shift_sum(row, mx) + math::exp_shift_sum(drow, mx);
            shifts[r] = mx;
        }
        recs.push((record && round == 0).then(|| {
            RowRecord {
                diag: QueryDiagnostics {
                    shots: ns as u32 + draws.discarded,
                    discarded: ns as u32 - used + draws.discarded,
                    ess: f32::NAN,
                    variance: f32::NAN,
                    samples: draws
                        .keys
                        .iter()
                        .copied()
                        .filter(|&j| counts(hp, h.causal, i, j))
                        .collect(),
                },
                ..Default::default()
            }
        }));
    }
    if ns > 0 {
        matmul(
            &mut sums,
            dv,
            false,
            Mat::rows(&sd, bq, ns, ns),
            Mat::rows(&vd, ns, dv, dv),
            1.0,
        );
    }
    if bk > 0 {
        let mut vg = Vec::with_capacity(bk * dv);
        for &j in keys {
            vg.extend_from_slice(&h.v[j as usize * dv..(j as usize + 1) * dv]);
        }
        matmul(
            &mut sums,
            dv,
            true,
            Mat::rows(&s, bq, bk, bk),
            Mat::rows(&vg, bk, dv, dv),
            1.0,
        );
    }
    queries
        .iter()
        .zip(recs)
        .enumerate()
        .map(|(r, (&i, rec))| Partial {
            query: i as usize,
            num: sums[r * dv..(r + 1) * dv].to_vec(),
            den: dens[r],
            shift: shifts[r],
            record: rec,
        })
        .collect()
}

/// Gradient of the estimate with its selection held fixed (recomputed from the same streams):
/// softmax attention over the selected terms with logits l + ln w. `out` and `lse` come from
/// [`forward`].
pub(crate) fn backward_sampled(
    p: &Problem<'_>,
    lsh: Lsh,
    seed: u64,
    batch_offset: usize,
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (lq, lk, d, dv) = (p.lq, p.lk, p.d, p.dv);
    let heads = p.heads();
    let mut dq = vec![0.0f32; heads * lq * d];
    let mut dk = vec![0.0f32; heads * lk * d];
    let mut dvv = vec![0.0f32; heads * lk * dv];
    if lq == 0 {
        return (dq, dk, dvv);
    }
    dq.par_chunks_mut(lq * d)
        .zip(dk.par_chunks_mut((lk * d).max(1)))
        .zip(dvv.par_chunks_mut((lk * dv).max(1)))
        .enumerate()
        .for_each(|(bh, ((dq_h, dk_h), dv_h))| {
            let h = p.head(bh);
            let hp = HeadPlan::new(&h, lsh, seed, batch_offset + h.batch);
            let plan = hp.first();
            for beta in 0..plan.blocks {
                let queries = plan.queries(beta);
                let stream = draw_stream(seed, batch_offset + h.batch, h.head, beta);
                let draws = block_draws(plan, lsh, queries, h.causal, &stream);
                for &i in queries {
                    let i = i as usize;
                    let row = bh * lq + i;
                    if lse[row] == f32::NEG_INFINITY {
                        continue;
                    }
                    let qi = &h.q[i * d..(i + 1) * d];
                    let doi = &dout[row * dv..(row + 1) * dv];
                    let delta = math::dot(doi, &out[row * dv..(row + 1) * dv]);
                    for (j, w) in terms(&hp, &draws, h.causal, i) {
                        let j = j as usize;
                        let kj = &h.k[j * d..(j + 1) * d];
                        let vj = &h.v[j * dv..(j + 1) * dv];
                        let pj = w * (h.scale * math::dot(qi, kj) - lse[row]).exp();
                        math::axpy(pj, doi, &mut dv_h[j * dv..(j + 1) * dv]);
                        let dl = pj * (math::dot(doi, vj) - delta) * h.scale;
                        math::axpy(dl, kj, &mut dq_h[i * d..(i + 1) * d]);
                        math::axpy(dl, qi, &mut dk_h[j * d..(j + 1) * d]);
                    }
                }
            }
        });
    (dq, dk, dvv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::philox::philox4x32_10;

    /// Deterministic inputs in (-scale, scale).
    fn vals(n: usize, seed: u32, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let r = philox4x32_10([i as u32, seed, 0, 0], [7, 9])[0];
                ((r as f64 / 4_294_967_296.0) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    struct Case {
        q: Vec<f32>,
        k: Vec<f32>,
        v: Vec<f32>,
        mask: Option<Vec<u8>>,
        b: usize,
        h: usize,
        l: usize,
        d: usize,
        causal: bool,
    }

    impl Case {
        /// A masked case (2 × 2 heads, 40 keys) whose masked keys and values are NaN, so any
        /// use of one shows up in the output; with its mask.
        fn poisoned() -> (Case, Vec<u8>) {
            let mut c = Case::new(2, 2, 40, 8, false, true);
            let mask = c.mask.clone().unwrap();
            for b in 0..c.b {
                for hh in 0..c.h {
                    for j in 0..c.l {
                        if mask[b * c.l + j] == 0 {
                            let at = ((b * c.h + hh) * c.l + j) * c.d;
                            c.v[at..at + c.d].fill(f32::NAN);
                            c.k[at..at + c.d].fill(f32::NAN);
                        }
                    }
                }
            }
            (c, mask)
        }

        fn new(b: usize, h: usize, l: usize, d: usize, causal: bool, masked: bool) -> Case {
            Case {
                q: vals(b * h * l * d, 1, 1.5),
                k: vals(b * h * l * d, 2, 1.5),
                v: vals(b * h * l * d, 3, 1.0),
                mask: masked.then(|| (0..b * l).map(|i| u8::from(i % 5 != 2)).collect()),
                b,
                h,
                l,
                d,
                causal,
            }
        }
        fn problem(&self) -> Problem<'_> {
            Problem {
                q: &self.q,
                k: &self.k,
                v: &self.v,
                b: self.b,
                h: self.h,
                lq: self.l,
                lk: self.l,
                d: self.d,
                dv: self.d,
                scale: 1.0 / (self.d as f32).sqrt(),
                causal: self.causal,
                mask: self.mask.as_deref(),
            }
        }
    }

    /// Exact numerator Σ e^l v and normaliser Σ e^l of one query, in f64.
    fn exact_parts(h: &HeadInput<'_>, i: usize) -> (Vec<f64>, f64) {
        let (d, dv) = (h.d, h.dv);
        let mut num = vec![0.0f64; dv];
        let mut den = 0.0;
        for j in 0..h.lk {
            if h.mask.is_some_and(|m| m[j] == 0) || (h.causal && j > i) {
                continue;
            }
            let l: f64 = (0..d)
                .map(|c| f64::from(h.q[i * d + c]) * f64::from(h.k[j * d + c]))
                .sum::<f64>()
                * f64::from(h.scale);
            den += l.exp();
            for (c, n) in num.iter_mut().enumerate() {
                *n += l.exp() * f64::from(h.v[j * dv + c]);
            }
        }
        (num, den)
    }

    /// The estimator's numerator and normaliser of one query, in f64, from its selection.
    fn estimated_parts(h: &HeadInput<'_>, lsh: Lsh, seed: u64, i: usize) -> (Vec<f64>, f64) {
        let hp = HeadPlan::new(h, lsh, seed, h.batch);
        let plan = hp.first();
        let beta = plan.q_block[i] as usize;
        let stream = draw_stream(seed, h.batch, h.head, beta);
        let draws = block_draws(plan, lsh, plan.queries(beta), h.causal, &stream);
        let (d, dv) = (h.d, h.dv);
        let mut num = vec![0.0f64; dv];
        let mut den = 0.0;
        for (j, w) in terms(&hp, &draws, h.causal, i) {
            let j = j as usize;
            let l: f64 = (0..d)
                .map(|c| f64::from(h.q[i * d + c]) * f64::from(h.k[j * d + c]))
                .sum::<f64>()
                * f64::from(h.scale);
            let e = f64::from(w) * l.exp();
            den += e;
            for (c, n) in num.iter_mut().enumerate() {
                *n += e * f64::from(h.v[j * dv + c]);
            }
        }
        (num, den)
    }

    fn exact_out(c: &Case) -> (Vec<f32>, Vec<f32>) {
        super::super::exact_forward(&c.problem())
    }

    #[test]
    fn blocks_that_cover_every_key_are_exact() {
        for (causal, masked) in [(false, false), (true, false), (false, true), (true, true)] {
            let c = Case::new(2, 2, 37, 8, causal, masked);
            let lsh = Lsh {
                bits: 3,
                block: 64,
                samples: 5,
                rounds: 1,
                noise: Noise::default(),
            };
            let f = forward(&c.problem(), lsh, 11, 0, true);
            let (o, l) = exact_out(&c);
            for (a, b) in f.out.iter().zip(&o) {
                assert!(
                    (a - b).abs() < 1e-5,
                    "causal {causal} masked {masked}: {a} vs {b}"
                );
            }
            for (a, b) in f.lse.iter().zip(&l) {
                assert!(
                    (a - b).abs() < 1e-5 || (a.is_infinite() && b.is_infinite()),
                    "lse {a} vs {b}"
                );
            }
            // No draw counts when the block already holds every visible key.
            assert!(f.rows.unwrap().iter().all(|r| r.diag.samples.is_empty()));
        }
    }

    #[test]
    fn numerator_and_normaliser_are_unbiased() {
        // Many seeds: the mean of each estimate approaches the exact value within 5 standard
        // errors, for every query, with blocks much smaller than the sequence.
        for (causal, masked, rounds) in [(false, false, 1), (true, true, 1), (true, false, 2)] {
            let c = Case::new(1, 1, 24, 6, causal, masked);
            let p = c.problem();
            let h = p.head(0);
            let lsh = Lsh {
                bits: 2,
                block: 4,
                samples: 3,
                rounds,
                noise: Noise::default(),
            };
            let n = 4000;
            for i in [0usize, 5, 13, 23] {
                let (num, den) = exact_parts(&h, i);
                let mut sum = vec![0.0f64; h.dv + 1];
                let mut sq = vec![0.0f64; h.dv + 1];
                for seed in 0..n {
                    let (en, ed) = estimated_parts(&h, lsh, seed, i);
                    for (c, x) in en.iter().chain(std::iter::once(&ed)).enumerate() {
                        sum[c] += x;
                        sq[c] += x * x;
                    }
                }
                for (c, want) in num.iter().chain(std::iter::once(&den)).enumerate() {
                    let mean = sum[c] / n as f64;
                    let var = (sq[c] / n as f64 - mean * mean).max(0.0);
                    let se = (var / n as f64).sqrt();
                    assert!(
                        (mean - want).abs() <= 5.0 * se + 1e-7 * want.abs().max(1.0),
                        "causal {causal}, query {i}, component {c}: mean {mean} vs exact {want} (se {se})"
                    );
                }
            }
        }
    }

    #[test]
    fn error_shrinks_as_draws_grow() {
        let c = Case::new(1, 2, 128, 16, false, false);
        let (exact, _) = exact_out(&c);
        let err = |s: usize| -> f64 {
            let lsh = Lsh {
                bits: 3,
                block: 16,
                samples: s,
                rounds: 1,
                noise: Noise::default(),
            };
            let mut total = 0.0;
            for seed in 0..8 {
                let f = forward(&c.problem(), lsh, seed, 0, false);
                let e: f64 = f
                    .out
                    .iter()
                    .zip(&exact)
                    .map(|(a, b)| f64::from(a - b).powi(2))
                    .sum();
                total += e;
            }
            total
        };
        let (e4, e64, e1024) = (err(4), err(64), err(1024));
        assert!(e64 < e4 / 4.0, "S 4 → 64: {e4} → {e64}");
        assert!(e1024 < e64 / 4.0, "S 64 → 1024: {e64} → {e1024}");
    }

    #[test]
    fn masked_keys_are_never_used() {
        let (c, mask) = Case::poisoned();
        let lsh = Lsh {
            bits: 2,
            block: 8,
            samples: 16,
            rounds: 1,
            noise: Noise::default(),
        };
        let f = forward(&c.problem(), lsh, 3, 0, true);
        assert!(f.out.iter().all(|x| x.is_finite()));
        for (row, r) in f.rows.unwrap().iter().enumerate() {
            let b = row / (c.h * c.l);
            assert!(
                r.diag
                    .samples
                    .iter()
                    .all(|&j| mask[b * c.l + j as usize] != 0)
            );
        }
    }

    /// Noise on the remainder draws: outcomes that are not usable keys (masked keys, or past
    /// Lk in the 6-qubit register of Lk = 40) are discarded and counted, never used; the
    /// estimate moves with the noise, stays finite and is reproducible.
    #[test]
    fn noisy_draws_discard_unusable_outcomes() {
        let (c, mask) = Case::poisoned();
        let spec: crate::spec::EstimatorSpec =
            "lsh:2:8:16+depol:0.5+readout:0.05:0.05".parse().unwrap();
        let clean = Lsh {
            bits: 2,
            block: 8,
            samples: 16,
            rounds: 1,
            noise: Noise::default(),
        };
        let noisy = Lsh {
            noise: spec.noise,
            ..clean
        };
        let f = forward(&c.problem(), noisy, 3, 0, true);
        assert!(f.out.iter().all(|x| x.is_finite()));
        let rows = f.rows.unwrap();
        let mut discarded = 0u64;
        for (row, r) in rows.iter().enumerate() {
            let b = row / (c.h * c.l);
            assert!(
                r.diag
                    .samples
                    .iter()
                    .all(|&j| (j as usize) < c.l && mask[b * c.l + j as usize] != 0)
            );
            assert!(r.diag.discarded <= r.diag.shots);
            discarded += u64::from(r.diag.discarded);
        }
        assert!(
            discarded > 0,
            "depolarising half the draws must hit unusable outcomes"
        );
        let again = forward(&c.problem(), noisy, 3, 0, false);
        assert_eq!(f.out, again.out, "same seed, same noisy draws");
        let ideal = forward(&c.problem(), clean, 3, 0, false);
        assert_ne!(f.out, ideal.out, "the noise changes the draws");
    }

    /// Clustered inputs (each query's mass on the keys of its cluster; clusters of unequal
    /// sizes): the blocks follow the buckets, so the estimate is close to exact attention, and
    /// a second hashing round does not make it worse. Rounds cover more keys exactly: with
    /// blocks covering every key, any number of rounds is exact.
    #[test]
    fn clustered_inputs_are_close_and_rounds_unite_blocks() {
        let (l, d, clusters) = (512usize, 16usize, 8usize);
        let centres = vals(clusters * d, 21, 1.0);
        let norm = |c: usize| -> f32 {
            centres[c * d..(c + 1) * d]
                .iter()
                .map(|x| x * x)
                .sum::<f32>()
                .sqrt()
        };
        // Cluster of point t: uneven sizes from a deterministic hash.
        let member = |t: usize, salt: u32| -> usize {
            (philox4x32_10([t as u32, salt, 0, 0], [3, 4])[0] as usize) % clusters
        };
        let point = |t: usize, salt: u32, noise_seed: u32| -> Vec<f32> {
            let c = member(t, salt);
            let noise = vals(d, noise_seed.wrapping_add(t as u32 * 7919), 0.02);
            (0..d)
                .map(|x| centres[c * d + x] / norm(c) * 6.0 + noise[x])
                .collect()
        };
        let mut case = Case::new(1, 1, l, d, false, false);
        case.q = (0..l).flat_map(|t| point(t, 1, 100)).collect();
        case.k = (0..l).flat_map(|t| point(t, 2, 200)).collect();
        let (exact, _) = exact_out(&case);
        let rel = |lsh: Lsh| -> f64 {
            let f = forward(&case.problem(), lsh, 4, 0, false);
            let num: f64 = f
                .out
                .iter()
                .zip(&exact)
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum();
            let den: f64 = exact.iter().map(|b| f64::from(*b).powi(2)).sum();
            (num / den).sqrt()
        };
        let one = rel(Lsh {
            bits: 6,
            block: 64,
            samples: 32,
            rounds: 1,
            noise: Noise::default(),
        });
        let two = rel(Lsh {
            bits: 6,
            block: 64,
            samples: 32,
            rounds: 2,
            noise: Noise::default(),
        });
        assert!(one < 0.1, "one round: relative error {one}");
        assert!(two <= one * 1.05 + 1e-6, "two rounds {two} vs one {one}");
        let all = rel(Lsh {
            bits: 6,
            block: 1024,
            samples: 8,
            rounds: 3,
            noise: Noise::default(),
        });
        assert!(all < 1e-5, "blocks covering every key, three rounds: {all}");
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let c = Case::new(2, 3, 50, 8, true, true);
        let lsh = Lsh {
            bits: 3,
            block: 7,
            samples: 9,
            rounds: 2,
            noise: Noise::default(),
        };
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| forward(&c.problem(), lsh, 5, 0, false))
        };
        let (a, b) = (run(1), run(3));
        assert_eq!(a.out, b.out);
        assert_eq!(a.lse, b.lse);
        // A batch offset moves the streams: a batch split in two draws what the whole draws.
        let whole = forward(&c.problem(), lsh, 5, 0, false);
        let half = Case {
            q: c.q[c.h * c.l * c.d..].to_vec(),
            k: c.k[c.h * c.l * c.d..].to_vec(),
            v: c.v[c.h * c.l * c.d..].to_vec(),
            mask: c.mask.as_ref().map(|m| m[c.l..].to_vec()),
            b: 1,
            ..Case::new(1, 3, 50, 8, true, true)
        };
        let second = forward(&half.problem(), lsh, 5, 1, false);
        assert_eq!(second.out, whole.out[c.h * c.l * c.d..].to_vec());
    }

    #[test]
    fn sampled_gradient_matches_finite_differences_of_the_estimate() {
        // With the selection fixed by the seed (the hash codes do not change under a small
        // perturbation here), the gradient is that of a smooth function of q, k, v.
        let c = Case::new(1, 1, 20, 4, false, false);
        let lsh = Lsh {
            bits: 2,
            block: 4,
            samples: 6,
            rounds: 1,
            noise: Noise::default(),
        };
        let seed = 9;
        let f = forward(&c.problem(), lsh, seed, 0, false);
        let dout = vals(f.out.len(), 5, 1.0);
        let (dq, dk, dv) = backward_sampled(&c.problem(), lsh, seed, 0, &f.out, &f.lse, &dout);
        let loss = |c: &Case| -> f64 {
            let f = forward(&c.problem(), lsh, seed, 0, false);
            f.out
                .iter()
                .zip(&dout)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum()
        };
        let eps = 1e-3f32;
        let check = |which: usize, idx: usize, analytic: f32| {
            let mut plus = Case {
                ..Case::new(1, 1, 20, 4, false, false)
            };
            let mut minus = Case {
                ..Case::new(1, 1, 20, 4, false, false)
            };
            for (cc, sign) in [(&mut plus, 1.0f32), (&mut minus, -1.0)] {
                let t = match which {
                    0 => &mut cc.q,
                    1 => &mut cc.k,
                    _ => &mut cc.v,
                };
                t[idx] += sign * eps;
            }
            let fd = (loss(&plus) - loss(&minus)) / (2.0 * f64::from(eps));
            assert!(
                (fd - f64::from(analytic)).abs() <= 2e-3 + 2e-2 * fd.abs(),
                "tensor {which} index {idx}: finite difference {fd} vs analytic {analytic}"
            );
        };
        for idx in [0usize, 7, 33, 62, 79] {
            check(0, idx, dq[idx]);
            check(1, idx, dk[idx]);
            check(2, idx, dv[idx]);
        }
    }
}
