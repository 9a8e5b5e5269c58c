//! Host emulation of `cuda/flash.cu` at the level of lanes and fragments (tests only).
//!
//! It mirrors the kernel's index arithmetic — padded shared-memory tiles, the per-lane
//! ldmatrix row addresses (`a_off`, `k_off`, `v_off`), the m16n8k16 fragment layouts of the PTX
//! ISA, the reuse of the S accumulators as the A operand of P·V, quad shuffles, masking, the
//! online softmax and the epilogue — and is checked against a direct f64 attention. A wrong
//! lane/element mapping in the kernel's formulas shows up here as a wrong result on the CPU.
//! `ldmatrix` and `mma` are emulated from the ISA's definitions (independently of the kernel's
//! formulas), so the test checks the formulas against the hardware contract.

// Lane-indexed loops mirror the kernel's per-lane code one to one.
#![allow(clippy::needless_range_loop)]

const BK: usize = 64;
const PAD: usize = 8;
const WARPS: usize = 4;

/// Per lane: 4 registers of 2 16-bit elements (held as f32 here).
type Frag4 = [[[f32; 2]; 4]; 32];

/// `ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16`: lane `8j + r` gives the address of row r
/// of matrix j; without .trans lane l receives row l/4, columns 2(l%4), 2(l%4)+1 of each matrix
/// in register j; with .trans it receives rows 2(l%4), 2(l%4)+1 of column l/4.
fn ldmatrix_x4(sm: &[f32], addr: &[usize; 32], trans: bool) -> Frag4 {
    let mut r = [[[0.0f32; 2]; 4]; 32];
    for (lane, regs) in r.iter_mut().enumerate() {
        let (row, c2) = (lane >> 2, 2 * (lane & 3));
        for (j, reg) in regs.iter_mut().enumerate() {
            for (e, x) in reg.iter_mut().enumerate() {
                *x = if trans {
                    sm[addr[8 * j + c2 + e] + row]
                } else {
                    sm[addr[8 * j + row] + c2 + e]
                };
            }
        }
    }
    r
}

/// `mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}`: builds A (16×16) and B (16×8) from the
/// lanes' fragments per the PTX ISA layout, checking that every element is given exactly once,
/// and accumulates A·B into the lanes' C fragments.
fn mma(c: &mut [[f32; 4]; 32], a: &[[[f32; 2]; 4]; 32], b: &[[[f32; 2]; 2]; 32]) {
    let mut am = [[f32::NAN; 16]; 16];
    let mut bm = [[f32::NAN; 8]; 16];
    let mut seen_a = [[0u8; 16]; 16];
    let mut seen_b = [[0u8; 8]; 16];
    for lane in 0..32 {
        let (g, t) = (lane >> 2, lane & 3);
        for e in 0..2 {
            for (reg, (r, col)) in [
                (g, 2 * t),
                (g + 8, 2 * t),
                (g, 2 * t + 8),
                (g + 8, 2 * t + 8),
            ]
            .into_iter()
            .enumerate()
            {
                am[r][col + e] = a[lane][reg][e];
                seen_a[r][col + e] += 1;
            }
            for (reg, k) in [2 * t, 2 * t + 8].into_iter().enumerate() {
                bm[k + e][g] = b[lane][reg][e];
                seen_b[k + e][g] += 1;
            }
        }
    }
    assert!(
        seen_a.iter().flatten().all(|&n| n == 1),
        "A fragment coverage"
    );
    assert!(
        seen_b.iter().flatten().all(|&n| n == 1),
        "B fragment coverage"
    );
    for lane in 0..32 {
        let (g, t) = (lane >> 2, lane & 3);
        for (e, (r, col)) in [
            (g, 2 * t),
            (g, 2 * t + 1),
            (g + 8, 2 * t),
            (g + 8, 2 * t + 1),
        ]
        .into_iter()
        .enumerate()
        {
            let acc: f64 = (0..16)
                .map(|kk| f64::from(am[r][kk]) * f64::from(bm[kk][col]))
                .sum();
            c[lane][e] += acc as f32;
        }
    }
}

/// `__shfl_xor_sync` followed by `op`.
fn quad_reduce(x: &mut [f32; 32], op: impl Fn(f32, f32) -> f32) {
    for m in [1, 2] {
        let y = *x;
        for lane in 0..32 {
            x[lane] = op(y[lane], y[lane ^ m]);
        }
    }
}

/// Problem for the emulation: q [BH, lq, d], k/v [BH, lk, d], `h` heads per batch.
pub(crate) struct EmuProblem<'a> {
    pub(crate) q: &'a [f32],
    pub(crate) k: &'a [f32],
    pub(crate) v: &'a [f32],
    pub(crate) bh: usize,
    pub(crate) h: usize,
    pub(crate) lq: usize,
    pub(crate) lk: usize,
    pub(crate) d: usize,
    pub(crate) scale: f32,
    pub(crate) causal: bool,
    pub(crate) mask: Option<&'a [u8]>,
}

/// The kernel with `mt_n` m16 tiles per warp (1: `flash_*`, 2: `flash2_*`), executed CTA by
/// CTA, warp by warp, lane by lane; `round_p` is applied to P before P·V (bf16/f16 rounding, or
/// the identity). Returns (out [BH,lq,d], lse [BH,lq]).
pub(crate) fn flash_forward(
    p: &EmuProblem<'_>,
    mt_n: usize,
    round_p: impl Fn(f32) -> f32,
) -> (Vec<f32>, Vec<f32>) {
    let (lq, lk, d) = (p.lq, p.lk, p.d);
    let bq = WARPS * 16 * mt_n;
    let ld = d + PAD;
    let (kd_steps, ns, no) = (d / 16, BK / 8, d / 8);
    let mut out = vec![f32::NAN; p.bh * lq * d];
    let mut lse = vec![f32::NAN; p.bh * lq];
    let sl2 = p.scale * std::f32::consts::LOG2_E;
    let load = |src: &[f32], row0: usize, nrows: usize, rows: usize| -> Vec<f32> {
        let mut sm = vec![f32::NAN; rows * ld]; // padding stays NaN: reading it would show
        for r in 0..rows {
            for c in 0..d {
                sm[r * ld + c] = if row0 + r < nrows {
                    src[(row0 + r) * d + c]
                } else {
                    0.0
                };
            }
        }
        sm
    };
    for bh in 0..p.bh {
        let batch = bh / p.h;
        let qh = &p.q[bh * lq * d..(bh + 1) * lq * d];
        let kh = &p.k[bh * lk * d..(bh + 1) * lk * d];
        let vh = &p.v[bh * lk * d..(bh + 1) * lk * d];
        let mrow = p.mask.map(|m| &m[batch * lk..(batch + 1) * lk]);
        for qt in 0..lq.div_ceil(bq) {
            let q0 = qt * bq;
            let kend = if p.causal { lk.min(q0 + bq) } else { lk };
            let ntiles = kend.div_ceil(BK);
            let qs = load(qh, q0, lq, bq);
            for warp in 0..WARPS {
                let row0 = q0 + warp * 16 * mt_n; // + g + 16 mt + 8 r
                let mut m = vec![[[f32::NEG_INFINITY; 2]; 32]; mt_n];
                let mut l = vec![[[0.0f32; 2]; 32]; mt_n];
                let mut o = vec![vec![[[0.0f32; 4]; 32]; no]; mt_n];
                let a_addr: [usize; 32] = std::array::from_fn(|lane| {
                    (warp * 16 * mt_n + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + (lane >> 4) * 8
                });
                let k_addr: [usize; 32] = std::array::from_fn(|lane| {
                    ((lane & 7) + (lane >> 4) * 8) * ld + ((lane >> 3) & 1) * 8
                });
                let v_addr: [usize; 32] = std::array::from_fn(|lane| {
                    ((lane & 7) + ((lane >> 3) & 1) * 8) * ld + (lane >> 4) * 8
                });
                let qf: Vec<Vec<Frag4>> = (0..mt_n)
                    .map(|mt| {
                        (0..kd_steps)
                            .map(|kd| {
                                let addr = a_addr.map(|x| x + mt * 16 * ld + kd * 16);
                                ldmatrix_x4(&qs, &addr, false)
                            })
                            .collect()
                    })
                    .collect();
                for it in 0..ntiles {
                    let kt = it * BK;
                    let ks = load(kh, kt, lk, BK);
                    let vs = load(vh, kt, lk, BK);
                    let mut s = vec![vec![[[0.0f32; 4]; 32]; ns]; mt_n];
                    for np in 0..ns / 2 {
                        for kd in 0..kd_steps {
                            let addr = k_addr.map(|x| x + np * 16 * ld + kd * 16);
                            let b = ldmatrix_x4(&ks, &addr, false);
                            let b01 = b.map(|r| [r[0], r[1]]);
                            let b23 = b.map(|r| [r[2], r[3]]);
                            for mt in 0..mt_n {
                                mma(&mut s[mt][2 * np], &qf[mt][kd], &b01);
                                mma(&mut s[mt][2 * np + 1], &qf[mt][kd], &b23);
                            }
                        }
                    }
                    let need = kt + BK > lk || (p.causal && kt + BK - 1 > q0) || mrow.is_some();
                    // pa[mt][kk][lane][reg] = 2 elements: P as A fragments.
                    let mut pa = vec![vec![[[[0.0f32; 2]; 4]; 32]; ns / 2]; mt_n];
                    for mt in 0..mt_n {
                        if need {
                            for (n, sn) in s[mt].iter_mut().enumerate() {
                                for (lane, sl) in sn.iter_mut().enumerate() {
                                    let (g, t) = (lane >> 2, lane & 3);
                                    for (e, x) in sl.iter_mut().enumerate() {
                                        let j = kt + n * 8 + 2 * t + (e & 1);
                                        let i = row0 + g + mt * 16 + (e >> 1) * 8;
                                        let mut vis = j < lk;
                                        if p.causal && j > i {
                                            vis = false;
                                        }
                                        if vis && mrow.is_some_and(|mr| mr[j] == 0) {
                                            vis = false;
                                        }
                                        if !vis {
                                            *x = f32::NEG_INFINITY;
                                        }
                                    }
                                }
                            }
                        }
                        let mut ms = [[0.0f32; 2]; 32];
                        let mut alpha = [[0.0f32; 2]; 32];
                        for r in 0..2 {
                            let mut mx: [f32; 32] = std::array::from_fn(|lane| {
                                s[mt].iter().fold(m[mt][lane][r], |a, sn| {
                                    a.max(sn[lane][2 * r]).max(sn[lane][2 * r + 1])
                                })
                            });
                            quad_reduce(&mut mx, f32::max);
                            for lane in 0..32 {
                                ms[lane][r] = if mx[lane] == f32::NEG_INFINITY {
                                    0.0
                                } else {
                                    mx[lane] * sl2
                                };
                                alpha[lane][r] = (m[mt][lane][r] * sl2 - ms[lane][r]).exp2();
                                m[mt][lane][r] = mx[lane];
                                l[mt][lane][r] *= alpha[lane][r];
                            }
                        }
                        for on in o[mt].iter_mut() {
                            for (lane, ol) in on.iter_mut().enumerate() {
                                for (e, x) in ol.iter_mut().enumerate() {
                                    *x *= alpha[lane][e >> 1];
                                }
                            }
                        }
                        for (n, sn) in s[mt].iter().enumerate() {
                            for lane in 0..32 {
                                let pv: [f32; 4] = std::array::from_fn(|e| {
                                    sn[lane][e].mul_add(sl2, -ms[lane][e >> 1]).exp2()
                                });
                                l[mt][lane][0] += pv[0] + pv[1];
                                l[mt][lane][1] += pv[2] + pv[3];
                                pa[mt][n >> 1][lane][(n & 1) * 2] =
                                    [round_p(pv[0]), round_p(pv[1])];
                                pa[mt][n >> 1][lane][(n & 1) * 2 + 1] =
                                    [round_p(pv[2]), round_p(pv[3])];
                            }
                        }
                    }
                    for kk in 0..ns / 2 {
                        for dp in 0..no / 2 {
                            let addr = v_addr.map(|x| x + kk * 16 * ld + dp * 16);
                            let b = ldmatrix_x4(&vs, &addr, true);
                            let b01 = b.map(|r| [r[0], r[1]]);
                            let b23 = b.map(|r| [r[2], r[3]]);
                            for mt in 0..mt_n {
                                mma(&mut o[mt][2 * dp], &pa[mt][kk], &b01);
                                mma(&mut o[mt][2 * dp + 1], &pa[mt][kk], &b23);
                            }
                        }
                    }
                }
                for mt in 0..mt_n {
                    for r in 0..2 {
                        let mut lr: [f32; 32] = std::array::from_fn(|lane| l[mt][lane][r]);
                        quad_reduce(&mut lr, |a, b| a + b);
                        for lane in 0..32 {
                            let (g, t) = (lane >> 2, lane & 3);
                            let i = row0 + g + mt * 16 + r * 8;
                            if i >= lq {
                                continue;
                            }
                            let row = bh * lq + i;
                            let inv = if lr[lane] > 0.0 { 1.0 / lr[lane] } else { 0.0 };
                            for (n, on) in o[mt].iter().enumerate() {
                                out[row * d + n * 8 + 2 * t] = on[lane][2 * r] * inv;
                                out[row * d + n * 8 + 2 * t + 1] = on[lane][2 * r + 1] * inv;
                            }
                            if t == 0 {
                                lse[row] = if lr[lane] > 0.0 {
                                    (m[mt][lane][r] * sl2 + lr[lane].log2())
                                        * std::f32::consts::LN_2
                                } else {
                                    f32::NEG_INFINITY
                                };
                            }
                        }
                    }
                }
            }
        }
    }
    (out, lse)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng_vec(seed: &mut u64, n: usize, amp: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * amp
            })
            .collect()
    }

    /// Direct f64 attention: (out, lse).
    fn reference(p: &EmuProblem<'_>) -> (Vec<f64>, Vec<f64>) {
        let (lq, lk, d) = (p.lq, p.lk, p.d);
        let mut out = vec![0.0f64; p.bh * lq * d];
        let mut lse = vec![f64::NEG_INFINITY; p.bh * lq];
        for bh in 0..p.bh {
            let batch = bh / p.h;
            for i in 0..lq {
                let logits: Vec<f64> = (0..lk)
                    .map(|j| {
                        let vis =
                            !(p.causal && j > i) && p.mask.is_none_or(|m| m[batch * lk + j] != 0);
                        if !vis {
                            return f64::NEG_INFINITY;
                        }
                        f64::from(p.scale)
                            * (0..d)
                                .map(|c| {
                                    f64::from(p.q[(bh * lq + i) * d + c])
                                        * f64::from(p.k[(bh * lk + j) * d + c])
                                })
                                .sum::<f64>()
                    })
                    .collect();
                let mx = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                if mx == f64::NEG_INFINITY {
                    continue;
                }
                let w: Vec<f64> = logits.iter().map(|&x| (x - mx).exp()).collect();
                let z: f64 = w.iter().sum();
                lse[bh * lq + i] = mx + z.ln();
                for c in 0..d {
                    out[(bh * lq + i) * d + c] = (0..lk)
                        .map(|j| w[j] * f64::from(p.v[(bh * lk + j) * d + c]))
                        .sum::<f64>()
                        / z;
                }
            }
        }
        (out, lse)
    }

    fn check(bh: usize, h: usize, lq: usize, lk: usize, d: usize, causal: bool, masked: bool) {
        let mut seed = (bh * 1000 + lq * 7 + lk * 13 + d) as u64;
        let q = rng_vec(&mut seed, bh * lq * d, 1.5);
        let k = rng_vec(&mut seed, bh * lk * d, 1.5);
        let v = rng_vec(&mut seed, bh * lk * d, 1.0);
        let b = bh / h;
        let mask: Option<Vec<u8>> = masked.then(|| {
            (0..b * lk)
                .map(|x| u8::from(x % 3 != 1 && x % lk != lk - 1))
                .collect()
        });
        let p = EmuProblem {
            q: &q,
            k: &k,
            v: &v,
            bh,
            h,
            lq,
            lk,
            d,
            scale: 1.0 / (d as f32).sqrt(),
            causal,
            mask: mask.as_deref(),
        };
        for mt_n in [1, 2] {
            let what =
                format!("mt {mt_n} bh {bh} lq {lq} lk {lk} d {d} causal {causal} masked {masked}");
            let (o, l) = flash_forward(&p, mt_n, |x| x);
            let (ro, rl) = reference(&p);

            for (i, (&a, &b)) in o.iter().zip(&ro).enumerate() {
                assert!(a.is_finite(), "{what}: out[{i}] = {a}");
                assert!(
                    (f64::from(a) - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "{what}: out[{i}] {a} vs {b}"
                );
            }
            for (i, (&a, &b)) in l.iter().zip(&rl).enumerate() {
                if b == f64::NEG_INFINITY {
                    assert_eq!(a, f32::NEG_INFINITY, "{what}: lse[{i}]");
                } else {
                    assert!(
                        (f64::from(a) - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "{what}: lse[{i}] {a} vs {b}"
                    );
                }
            }
            // With P rounded to bf16 (as the kernel does), the error stays within the GPU check's
            // 1e-2 relative tolerance.
            let (ob, _) = flash_forward(&p, mt_n, |x| half::bf16::from_f32(x).to_f32());
            let num: f64 = ob
                .iter()
                .zip(&ro)
                .map(|(&a, &b)| (f64::from(a) - b).powi(2))
                .sum();
            let den: f64 = ro.iter().map(|b| b * b).sum();
            assert!(
                (num / den.max(1e-300)).sqrt() < 1e-2,
                "{what}: bf16 P rel err"
            );
        }
    }

    #[test]
    fn flash_emulation_matches_reference() {
        check(1, 1, 64, 64, 64, false, false);
        check(2, 2, 70, 130, 64, false, false); // partial query and key tiles
        check(1, 1, 5, 3, 32, false, false);
        check(1, 1, 130, 130, 64, true, false);
        check(2, 1, 100, 150, 32, false, true);
        check(2, 2, 77, 77, 64, true, true);
    }

    #[test]
    fn p_accumulators_are_the_a_fragment_of_pv() {
        // The C fragments of S tiles 2kk (keys 0..8) and 2kk+1 (keys 8..16), packed as the
        // kernel packs them, equal the A fragment (ldmatrix of the row-major 16×16 P block).
        let pm: Vec<f32> = (0..16 * 16).map(|x| x as f32).collect();
        let mut c = [[[0.0f32; 4]; 32]; 2];
        for (n, cn) in c.iter_mut().enumerate() {
            for (lane, cl) in cn.iter_mut().enumerate() {
                let (g, t) = (lane >> 2, lane & 3);
                for (e, x) in cl.iter_mut().enumerate() {
                    *x = pm[(g + (e >> 1) * 8) * 16 + n * 8 + 2 * t + (e & 1)];
                }
            }
        }
        let mut pa = [[[0.0f32; 2]; 4]; 32];
        for (n, cn) in c.iter().enumerate() {
            for lane in 0..32 {
                pa[lane][(n & 1) * 2] = [cn[lane][0], cn[lane][1]];
                pa[lane][(n & 1) * 2 + 1] = [cn[lane][2], cn[lane][3]];
            }
        }
        let addr: [usize; 32] =
            std::array::from_fn(|lane| ((lane & 7) + ((lane >> 3) & 1) * 8) * 16 + (lane >> 4) * 8);
        assert_eq!(pa, ldmatrix_x4(&pm, &addr, false));
    }
}
