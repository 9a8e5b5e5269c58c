//! Host-side emulation of the CUDA sampling kernels (`cuda/mc.cu`), written with the kernels'
//! own decomposition: logits as a sequential FMA chain over D times the scale (what the CPU
//! path's gemm computes), weights by the same branch-free exp, 64-key block sums in 16 lanes,
//! an f64 prefix over blocks, and one independent search per target (binary search over the
//! block ends, then sub-blocks of 16 in pairwise order, then keys). The tests check that this
//! gives exactly the CPU estimator's indices and outputs, which is what makes the GPU's
//! indices comparable with the CPU's: the kernels execute these same operations.

use crate::cpu::Problem;
use crate::math::exp_approx;
use crate::philox::{SampleStream, Stream};

/// Keys per block of the two-level CDF (as in `cpu/mc.rs`).
pub(crate) const BLOCK: usize = 64;
/// Keys per sub-block.
pub(crate) const SUB: usize = 16;

/// The logit of query row `q` against key row `k`: a sequential FMA chain over the head
/// dimension, then one multiply by the scale.
#[inline]
pub(crate) fn logit(q: &[f32], k: &[f32], scale: f32) -> f32 {
    let mut acc = 0.0f32;
    for (a, b) in q.iter().zip(k) {
        acc = a.mul_add(*b, acc);
    }
    scale * acc
}

/// Sum of one block of ≤ 64 weights: lane l adds elements l, l+16, l+32, l+48 in order, then
/// the 16 lanes are added left to right.
pub(crate) fn block_sum(w: &[f32]) -> f32 {
    let mut acc = [0.0f32; SUB];
    for (i, &x) in w.iter().enumerate() {
        acc[i % SUB] += x;
    }
    let mut s = -0.0f32;
    for a in acc {
        s += a;
    }
    s
}

/// Pairwise sum of up to 16 values (strides 8, 4, 2, 1).
pub(crate) fn sum16(x: &[f32]) -> f32 {
    let mut e = [0.0f32; SUB];
    e[..x.len()].copy_from_slice(x);
    let mut h = SUB / 2;
    while h > 0 {
        for l in 0..h {
            e[l] += e[l + h];
        }
        h /= 2;
    }
    e[0]
}

fn last_pos(w: &[f32], lo: usize, hi: usize) -> Option<u32> {
    (lo..hi).rev().find(|&j| w[j] > 0.0).map(|j| j as u32)
}

/// The key drawn for target `x` (one thread of the kernel): `ends[b]` is the f64 prefix of
/// block sums up to and including block b.
pub(crate) fn locate(w: &[f32], ends: &[f64], x: f64) -> u32 {
    // First block whose end exceeds x (upper bound; blocks of zero mass never qualify).
    let (mut lo, mut hi) = (0usize, ends.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if x < ends[mid] {
            hi = mid
        } else {
            lo = mid + 1
        }
    }
    let b = lo;
    if b == ends.len() {
        return last_pos(w, 0, w.len()).unwrap_or(0);
    }
    let start = b * BLOCK;
    let stop = (start + BLOCK).min(w.len());
    let mut c = if b == 0 { 0.0 } else { ends[b - 1] };
    let mut s0 = start;
    while s0 < stop {
        let s1 = (s0 + SUB).min(stop);
        let ss = f64::from(sum16(&w[s0..s1]));
        if ss > 0.0 && x < c + ss {
            let mut cc = c;
            for (j, &wj) in w.iter().enumerate().take(s1).skip(s0) {
                if wj > 0.0 {
                    cc += f64::from(wj);
                    if x < cc {
                        return j as u32;
                    }
                }
            }
            return last_pos(w, s0, s1).unwrap_or(0);
        }
        c += ss;
        s0 = s1;
    }
    last_pos(w, start, stop).unwrap_or(0)
}

/// Result of the emulated sampling forward pass.
pub(crate) struct Emulated {
    pub(crate) out: Vec<f32>,
    pub(crate) lse: Vec<f32>,
    /// `n` indices per (batch, head, query), in shot order (0 for rows without visible keys).
    pub(crate) indices: Vec<u32>,
}

/// The kernels' sampling forward (`multinomial:n` when `stratified` is false) over a problem.
pub(crate) fn mc_forward(p: &Problem<'_>, n: usize, stratified: bool, seed: u64) -> Emulated {
    let (lq, lk, d, dv) = (p.lq, p.lk, p.d, p.dv);
    let rows = p.heads() * lq;
    let mut out = vec![0.0f32; rows * dv];
    let mut lse = vec![0.0f32; rows];
    let mut indices = vec![0u32; rows * n];
    let mut w = vec![0.0f32; lk];
    for bh in 0..p.heads() {
        let h = p.head(bh);
        for i in 0..lq {
            let r = bh * lq + i;
            let keff = if h.causal { lk.min(i + 1) } else { lk };
            let w = &mut w[..keff];
            let qi = &h.q[i * d..(i + 1) * d];
            for (j, x) in w.iter_mut().enumerate() {
                let keep = h.mask.is_none_or(|m| m[j] != 0);
                *x = if keep {
                    logit(qi, &h.k[j * d..(j + 1) * d], h.scale)
                } else {
                    f32::NEG_INFINITY
                };
            }
            let mx = w
                .iter()
                .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
            if mx == f32::NEG_INFINITY {
                lse[r] = f32::NEG_INFINITY;
                continue;
            }
            for x in w.iter_mut() {
                *x = exp_approx(*x - mx);
            }
            let mut ends = Vec::with_capacity(keff.div_ceil(BLOCK));
            let mut cum = 0.0f64;
            for blk in w.chunks(BLOCK) {
                cum += f64::from(block_sum(blk));
                ends.push(cum);
            }
            let total = cum;
            lse[r] = mx + total.ln() as f32;
            let stream = SampleStream::new(seed, h.batch, h.head, i);
            let idx = &mut indices[r * n..(r + 1) * n];
            for (s, slot) in idx.iter_mut().enumerate() {
                let u = stream.uniform(Stream::Draw, s as u64);
                let t = if stratified {
                    (s as f64 + u) / n as f64
                } else {
                    u
                };
                *slot = locate(w, &ends, t * total);
            }
            let mut sorted = idx.to_vec();
            sorted.sort_unstable();
            let o = &mut out[r * dv..(r + 1) * dv];
            let mut a = 0;
            while a < sorted.len() {
                let j = sorted[a];
                let mut b = a;
                while b < sorted.len() && sorted[b] == j {
                    b += 1;
                }
                let coef = ((b - a) as f64 / n as f64) as f32;
                let vj = &h.v[j as usize * dv..(j as usize + 1) * dv];
                for (x, &y) in o.iter_mut().zip(vj) {
                    *x += coef * y;
                }
                a = b;
            }
        }
    }
    Emulated { out, lse, indices }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::gemm::{Mat, matmul};
    use crate::cpu::mc;
    use crate::spec::EstimatorSpec;

    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> f32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
        fn vec(&mut self, n: usize, amp: f32) -> Vec<f32> {
            (0..n).map(|_| self.next() * amp).collect()
        }
    }

    /// The CPU path's logits come from gemm's FMA-chain microkernel whenever its query block
    /// has ≥ 2 rows, rows × keys > 256 and D ≥ 3; then they equal `logit` bit for bit. (Below
    /// that, gemm switches to horizontal/gemv kernels whose order depends on the SIMD width.)
    #[test]
    fn logits_match_the_cpu_gemm_bitwise() {
        let mut g = Lcg(7);
        for &(m, n, d) in &[
            (64usize, 200usize, 64usize),
            (37, 65, 32),
            (64, 1000, 128),
            (2, 129, 64),
            (6, 200, 64),
            (33, 17, 16),
            (64, 5, 3),
        ] {
            let q = g.vec(m * d, 2.0);
            let k = g.vec(n * d, 2.0);
            let scale = 1.0 / (d as f32).sqrt();
            let mut s = vec![0.0f32; m * n];
            matmul(
                &mut s,
                n,
                false,
                Mat::rows(&q, m, d, d),
                Mat::rows(&k, n, d, d).t(),
                scale,
            );
            let mut bad = 0;
            for i in 0..m {
                for j in 0..n {
                    let e = logit(&q[i * d..(i + 1) * d], &k[j * d..(j + 1) * d], scale);
                    if e.to_bits() != s[i * n + j].to_bits() {
                        bad += 1;
                    }
                }
            }
            assert_eq!(bad, 0, "({m},{n},{d}): {bad} of {} logits differ", m * n);
        }
    }

    /// The emulated kernel decomposition gives the CPU estimator's indices and outputs exactly.
    #[test]
    fn emulation_matches_cpu_estimator_exactly() {
        let mut g = Lcg(11);
        let cases: &[(usize, usize, usize, usize, usize, bool, bool)] = &[
            // (b, h, lq, lk, d, causal, masked)
            (1, 2, 70, 200, 64, false, false),
            (2, 1, 33, 65, 32, false, true),
            (1, 1, 64, 17, 16, false, false),
            (1, 2, 80, 80, 64, true, false),
            (2, 2, 20, 130, 64, false, true),
        ];
        for (ci, &(b, h, lq, lk, d, causal, masked)) in cases.iter().enumerate() {
            let q = g.vec(b * h * lq * d, 3.0);
            let k = g.vec(b * h * lk * d, 3.0);
            let v = g.vec(b * h * lk * d, 1.0);
            let mask: Option<Vec<u8>> =
                masked.then(|| (0..b * lk).map(|i| u8::from(i % 7 != 3)).collect());
            let p = Problem {
                q: &q,
                k: &k,
                v: &v,
                b,
                h,
                lq,
                lk,
                d,
                dv: d,
                scale: 1.0 / (d as f32).sqrt(),
                causal,
                mask: mask.as_deref(),
            };
            for (n, strat) in [(32usize, true), (32, false), (7, true), (1, false)] {
                for seed in [0u64, 1, 0xDEAD_BEEF_1234] {
                    let name = if strat { "stratified" } else { "multinomial" };
                    let spec: EstimatorSpec = format!("{name}:{n}").parse().unwrap();
                    let cpu = mc::forward(&p, &spec, seed, true);
                    let emu = mc_forward(&p, n, strat, seed);
                    let rows = cpu.rows.unwrap();
                    for (r, row) in rows.iter().enumerate() {
                        let want = &row.diag.samples;
                        if want.is_empty() {
                            continue;
                        }
                        assert_eq!(
                            want.as_slice(),
                            &emu.indices[r * n..(r + 1) * n],
                            "case {ci} {name}:{n} seed {seed} row {r}"
                        );
                    }
                    for (i, (a, e)) in cpu.out.iter().zip(&emu.out).enumerate() {
                        assert_eq!(a.to_bits(), e.to_bits(), "case {ci} out[{i}] {a} vs {e}");
                    }
                    for (a, e) in cpu.lse.iter().zip(&emu.lse) {
                        assert!(a == e || (a - e).abs() <= 1e-6 * a.abs().max(1.0));
                    }
                }
            }
        }
    }

    #[test]
    fn locate_edge_cases() {
        // All-equal weights, Lk not a multiple of 16 or 64: target t·total lands on key ⌊t·Lk⌋.
        for lk in [1usize, 15, 17, 63, 64, 65, 130] {
            let w = vec![1.0f32; lk];
            let mut ends = Vec::new();
            let mut c = 0.0;
            for b in w.chunks(BLOCK) {
                c += f64::from(block_sum(b));
                ends.push(c);
            }
            assert_eq!(c, lk as f64);
            for s in 0..lk {
                let x = s as f64 + 0.5;
                assert_eq!(locate(&w, &ends, x), s as u32, "lk {lk}");
            }
            // Past the total: the last positive key.
            assert_eq!(locate(&w, &ends, lk as f64 + 1.0), lk as u32 - 1);
        }
        // Zero-weight keys (masked) are never drawn, also at block edges.
        let mut w = vec![1.0f32; 130];
        for j in [0usize, 15, 16, 63, 64, 127, 128, 129] {
            w[j] = 0.0;
        }
        let mut ends = Vec::new();
        let mut c = 0.0;
        for b in w.chunks(BLOCK) {
            c += f64::from(block_sum(b));
            ends.push(c);
        }
        for i in 0..1000 {
            let x = (i as f64 + 0.5) / 1000.0 * c;
            let j = locate(&w, &ends, x) as usize;
            assert!(w[j] > 0.0, "drew zero-weight key {j}");
        }
        assert_eq!(locate(&w, &ends, c * 2.0), 126);
    }
}
