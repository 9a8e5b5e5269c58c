//! Exact attention on the CPU: tiled over keys with an online softmax (FlashAttention-style), so
//! no Lq×Lk matrix is ever held; the backward pass recomputes probabilities from the saved
//! log-sum-exp one tile at a time.

use super::HeadInput;
use super::gemm::{Mat, matmul};
use crate::math;

/// Query rows per task.
pub(crate) const BQ: usize = 64;
/// Keys per tile.
pub(crate) const BK: usize = 256;

/// Masks one tile row in place: masked keys and keys beyond the causal limit become -inf.
#[inline]
pub(crate) fn mask_row(h: &HeadInput<'_>, row: &mut [f32], qi: usize, j0: usize) {
    if let Some(mask) = h.mask {
        let n = row.len();
        for (x, &keep) in row.iter_mut().zip(&mask[j0..j0 + n]) {
            if keep == 0 {
                *x = f32::NEG_INFINITY;
            }
        }
    }
    if h.causal && j0 + row.len() > qi + 1 {
        let start = (qi + 1).saturating_sub(j0);
        row[start..].fill(f32::NEG_INFINITY);
    }
}

/// The number of keys a query block [i0, i1) can see.
#[inline]
pub(crate) fn key_limit(h: &HeadInput<'_>, i1: usize) -> usize {
    if h.causal { h.lk.min(i1) } else { h.lk }
}

/// Forward for query rows [i0, i0 + out.len()/dv): writes the normalised output and the
/// log-sum-exp (natural log, including the scale; -inf for a row with no visible key).
pub(crate) fn forward_block(h: &HeadInput<'_>, i0: usize, out: &mut [f32], lse: &mut [f32]) {
    let (d, dv) = (h.d, h.dv);
    let bq = lse.len();
    let i1 = i0 + bq;
    let mut s = vec![0.0f32; bq * BK];
    let mut m = vec![f32::NEG_INFINITY; bq];
    let mut l = vec![0.0f32; bq];
    out.fill(0.0);
    let kend = key_limit(h, i1);
    let q_blk = Mat::rows(&h.q[i0 * d..i1 * d], bq, d, d);
    let mut j0 = 0;
    while j0 < kend {
        let bk = BK.min(kend - j0);
        let k_tile = Mat::rows(&h.k[j0 * d..(j0 + bk) * d], bk, d, d);
        matmul(&mut s[..bq * bk], bk, false, q_blk, k_tile.t(), h.scale);
        for r in 0..bq {
            let row = &mut s[r * bk..(r + 1) * bk];
            mask_row(h, row, i0 + r, j0);
            let m_new = m[r].max(math::max(row));
            if m_new == f32::NEG_INFINITY {
                row.fill(0.0);
                continue;
            }
            let psum = math::exp_shift_sum(row, m_new);
            let alpha = if m[r] == f32::NEG_INFINITY {
                0.0
            } else {
                math::exp_approx(m[r] - m_new)
            };
            if alpha != 1.0 {
                for x in &mut out[r * dv..(r + 1) * dv] {
                    *x *= alpha;
                }
            }
            l[r] = l[r] * alpha + psum;
            m[r] = m_new;
        }
        let v_tile = Mat::rows(&h.v[j0 * dv..(j0 + bk) * dv], bk, dv, dv);
        matmul(
            out,
            dv,
            true,
            Mat::rows(&s[..bq * bk], bq, bk, bk),
            v_tile,
            1.0,
        );
        j0 += bk;
    }
    for r in 0..bq {
        let row = &mut out[r * dv..(r + 1) * dv];
        if l[r] > 0.0 {
            let inv = 1.0 / l[r];
            for x in row.iter_mut() {
                *x *= inv;
            }
            lse[r] = m[r] + l[r].ln();
        } else {
            row.fill(0.0);
            lse[r] = f32::NEG_INFINITY;
        }
    }
}

/// Backward of exact attention for one head. `out` and `lse` come from [`forward_block`];
/// gradients are written (not accumulated) into `dq`, `dk`, `dv`.
pub(crate) fn backward_head(
    h: &HeadInput<'_>,
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dvv: &mut [f32],
) {
    let (d, dv, lq) = (h.d, h.dv, h.lq);
    dq.fill(0.0);
    dk.fill(0.0);
    dvv.fill(0.0);
    let delta: Vec<f32> = (0..lq)
        .map(|i| math::dot(&dout[i * dv..(i + 1) * dv], &out[i * dv..(i + 1) * dv]))
        .collect();
    let mut p = vec![0.0f32; BQ * BK];
    let mut dp = vec![0.0f32; BQ * BK];
    let mut i0 = 0;
    while i0 < lq {
        let bq = BQ.min(lq - i0);
        let i1 = i0 + bq;
        let q_blk = Mat::rows(&h.q[i0 * d..i1 * d], bq, d, d);
        let do_blk = Mat::rows(&dout[i0 * dv..i1 * dv], bq, dv, dv);
        let kend = key_limit(h, i1);
        let mut j0 = 0;
        while j0 < kend {
            let bk = BK.min(kend - j0);
            let k_tile = Mat::rows(&h.k[j0 * d..(j0 + bk) * d], bk, d, d);
            let v_tile = Mat::rows(&h.v[j0 * dv..(j0 + bk) * dv], bk, dv, dv);
            let p = &mut p[..bq * bk];
            let dp = &mut dp[..bq * bk];
            matmul(p, bk, false, q_blk, k_tile.t(), h.scale);
            for r in 0..bq {
                let row = &mut p[r * bk..(r + 1) * bk];
                mask_row(h, row, i0 + r, j0);
                if lse[i0 + r] == f32::NEG_INFINITY {
                    row.fill(0.0);
                } else {
                    math::exp_shift_sum(row, lse[i0 + r]);
                }
            }
            // dV_tile += Pᵀ dO
            matmul(
                &mut dvv[j0 * dv..(j0 + bk) * dv],
                dv,
                true,
                Mat::rows(p, bq, bk, bk).t(),
                do_blk,
                1.0,
            );
            // dP = dO Vᵀ ; dS = P ∘ (dP − δ)
            matmul(dp, bk, false, do_blk, v_tile.t(), 1.0);
            for r in 0..bq {
                let dl = delta[i0 + r];
                for (g, &pp) in dp[r * bk..(r + 1) * bk]
                    .iter_mut()
                    .zip(&p[r * bk..(r + 1) * bk])
                {
                    *g = pp * (*g - dl);
                }
            }
            let ds = Mat::rows(dp, bq, bk, bk);
            matmul(&mut dq[i0 * d..i1 * d], d, true, ds, k_tile, h.scale);
            matmul(
                &mut dk[j0 * d..(j0 + bk) * d],
                d,
                true,
                ds.t(),
                q_blk,
                h.scale,
            );
            j0 += bk;
        }
        i0 = i1;
    }
}
