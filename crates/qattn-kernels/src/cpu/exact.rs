//! Exact attention on the CPU: tiled over keys with an online softmax (FlashAttention-style), so
//! no Lq×Lk matrix is ever held; the backward pass recomputes probabilities from the saved
//! log-sum-exp one tile at a time.

use super::HeadInput;
use super::gemm::Mat;
use super::tile::{AlignedBuf, Init, tile_matmul};
use crate::math;

/// Query rows per task.
pub(crate) const BQ: usize = 64;
/// Keys per tile.
pub(crate) const BK: usize = 128;

/// The number of keys a query block [i0, i1) can see.
#[inline]
pub(crate) fn key_limit(h: &HeadInput<'_>, i1: usize) -> usize {
    if h.causal { h.lk.min(i1) } else { h.lk }
}

/// Masks a transposed score tile in place: row j of `s` (stride [`BQ`]) holds key `j0 + j`
/// against the `bq` queries from `i0`; masked keys and keys past a query's causal limit become
/// -inf.
fn mask_tile(h: &HeadInput<'_>, s: &mut [f32], bq: usize, bk: usize, i0: usize, j0: usize) {
    if h.mask.is_none() && !h.causal {
        return;
    }
    for j in 0..bk {
        let row = &mut s[j * BQ..j * BQ + bq];
        if h.mask.is_some_and(|m| m[j0 + j] == 0) {
            row.fill(f32::NEG_INFINITY);
        } else if h.causal {
            // Query i0 + r sees key j0 + j when j0 + j <= i0 + r.
            let hidden = (j0 + j).saturating_sub(i0).min(bq);
            row[..hidden].fill(f32::NEG_INFINITY);
        }
    }
}

/// `dst[c·BQ + r] = mul · src[r·width + c]` for `r < rows`, `c < width`: a row block
/// transposed into the layout [`tile_matmul`] reads as its right operand.
fn transpose_block(src: &[f32], rows: usize, width: usize, mul: f32, dst: &mut [f32]) {
    if width == 0 {
        return;
    }
    for (r, row) in src.chunks_exact(width).take(rows).enumerate() {
        for (c, &x) in row.iter().enumerate() {
            dst[c * BQ + r] = mul * x;
        }
    }
}

/// A transposed tile (`rows` keys × `cols` queries at stride [`BQ`]) read as its transpose.
fn queries_by_keys(s: &[f32], cols: usize, rows: usize) -> Mat<'_> {
    Mat {
        data: s,
        rows: cols,
        cols: rows,
        rs: 1,
        cs: BQ,
    }
}

math::dispatch!(
    /// [`forward_block_impl`], compiled for the CPU's vector width (its column loops vectorise
    /// at it).
    pub(crate) fn forward_block(h: &HeadInput<'_>, i0: usize, out: &mut [f32], lse: &mut [f32])
        -> () => forward_block_impl
);

/// Forward for query rows [i0, i0 + out.len()/dv): writes the normalised output and the
/// log-sum-exp (natural log, including the scale; -inf for a row with no visible key).
///
/// Scores are computed transposed, keys × queries (`Sᵀ = K · (scale·Q)ᵀ`), so that the
/// softmax statistics of the block's queries are vector lanes, and both products read their
/// right operand as stored: the block's queries transposed once, then the values.
#[inline(always)]
fn forward_block_impl(h: &HeadInput<'_>, i0: usize, out: &mut [f32], lse: &mut [f32]) {
    let (d, dv) = (h.d, h.dv);
    let bq = lse.len();
    let i1 = i0 + bq;
    let mut qt = AlignedBuf::zeros(d * BQ);
    transpose_block(&h.q[i0 * d..i1 * d], bq, d, h.scale, &mut qt);
    let mut s = AlignedBuf::zeros(BK * BQ);
    let mut m = [f32::NEG_INFINITY; BQ];
    let mut l = [0.0f32; BQ];
    out.fill(0.0);
    let kend = key_limit(h, i1);
    let mut j0 = 0;
    while j0 < kend {
        let bk = BK.min(kend - j0);
        let s = &mut s[..bk * BQ];
        tile_matmul(
            s,
            BQ,
            Init::Zero,
            Mat::rows(&h.k[j0 * d..(j0 + bk) * d], bk, d, d),
            Mat::rows(&qt, d, bq, BQ),
            1.0,
        );
        mask_tile(h, s, bq, bk, i0, j0);
        let mut tile_max = [f32::NEG_INFINITY; BQ];
        for row in s.chunks_exact(BQ) {
            for (t, &x) in tile_max.iter_mut().zip(row) {
                *t = t.max(x);
            }
        }
        let mut shift = [0.0f32; BQ];
        let mut alpha = [0.0f32; BQ];
        for r in 0..BQ {
            let m_new = m[r].max(tile_max[r]);
            // A query with no visible key so far keeps weight 0 everywhere (exp(-inf) = 0).
            shift[r] = if m_new == f32::NEG_INFINITY {
                0.0
            } else {
                m_new
            };
            alpha[r] = if m[r] == f32::NEG_INFINITY {
                0.0
            } else {
                math::exp_approx(m[r] - m_new)
            };
            m[r] = m_new;
        }
        let mut tile_sum = [0.0f32; BQ];
        for row in s.chunks_exact_mut(BQ) {
            for ((x, &sh), t) in row.iter_mut().zip(&shift).zip(tile_sum.iter_mut()) {
                let e = math::exp_fused(*x - sh);
                *x = e;
                *t += e;
            }
        }
        for r in 0..BQ {
            l[r] = l[r] * alpha[r] + tile_sum[r];
        }
        tile_matmul(
            out,
            dv,
            Init::Scale(&alpha),
            queries_by_keys(s, bq, bk),
            Mat::rows(&h.v[j0 * dv..(j0 + bk) * dv], bk, dv, dv),
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

math::dispatch!(
    /// [`backward_head_impl`], compiled for the CPU's vector width.
    pub(crate) fn backward_head(h: &HeadInput<'_>, out: &[f32], lse: &[f32], dout: &[f32],
        dq: &mut [f32], dk: &mut [f32], dvv: &mut [f32]) -> () => backward_head_impl
);

/// Backward of exact attention for one head. `out` and `lse` come from [`forward_block`];
/// gradients are written (not accumulated) into `dq`, `dk`, `dv`. Tiles are transposed as in
/// the forward (keys × queries), which makes every product read its right operand as stored.
#[inline(always)]
fn backward_head_impl(
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
    let mut qt = AlignedBuf::zeros(d * BQ);
    let mut dot = AlignedBuf::zeros(dv * BQ);
    let mut p = AlignedBuf::zeros(BK * BQ);
    let mut dp = AlignedBuf::zeros(BK * BQ);
    let mut i0 = 0;
    while i0 < lq {
        let bq = BQ.min(lq - i0);
        let i1 = i0 + bq;
        transpose_block(&h.q[i0 * d..i1 * d], bq, d, h.scale, &mut qt);
        transpose_block(&dout[i0 * dv..i1 * dv], bq, dv, 1.0, &mut dot);
        // Columns past the block, and queries that see no key, get weight exp(-inf) = 0.
        let mut shift = [f32::INFINITY; BQ];
        let mut delta = [0.0f32; BQ];
        for r in 0..bq {
            let i = i0 + r;
            if lse[i] != f32::NEG_INFINITY {
                shift[r] = lse[i];
            }
            delta[r] = math::dot(&dout[i * dv..(i + 1) * dv], &out[i * dv..(i + 1) * dv]);
        }
        let kend = key_limit(h, i1);
        let mut j0 = 0;
        while j0 < kend {
            let bk = BK.min(kend - j0);
            let k_tile = Mat::rows(&h.k[j0 * d..(j0 + bk) * d], bk, d, d);
            let p = &mut p[..bk * BQ];
            let dp = &mut dp[..bk * BQ];
            tile_matmul(p, BQ, Init::Zero, k_tile, Mat::rows(&qt, d, bq, BQ), 1.0);
            mask_tile(h, p, bq, bk, i0, j0);
            for row in p.chunks_exact_mut(BQ) {
                for (x, &sh) in row.iter_mut().zip(&shift) {
                    *x = math::exp_fused(*x - sh);
                }
            }
            // dV_tile += Pᵀ dO
            tile_matmul(
                &mut dvv[j0 * dv..(j0 + bk) * dv],
                dv,
                Init::Add,
                Mat::rows(p, bk, bq, BQ),
                Mat::rows(&dout[i0 * dv..i1 * dv], bq, dv, dv),
                1.0,
            );
            // dPᵀ = V dOᵀ ; dSᵀ = Pᵀ ∘ (dPᵀ − δ)
            tile_matmul(
                dp,
                BQ,
                Init::Zero,
                Mat::rows(&h.v[j0 * dv..(j0 + bk) * dv], bk, dv, dv),
                Mat::rows(&dot, dv, bq, BQ),
                1.0,
            );
            for (g_row, p_row) in dp.chunks_exact_mut(BQ).zip(p.chunks_exact(BQ)) {
                for ((g, &pp), &dl) in g_row.iter_mut().zip(p_row).zip(&delta) {
                    *g = pp * (*g - dl);
                }
            }
            // dQ += scale · dS K ; dK += scale · dSᵀ Q
            tile_matmul(
                &mut dq[i0 * d..i1 * d],
                d,
                Init::Add,
                queries_by_keys(dp, bq, bk),
                k_tile,
                h.scale,
            );
            tile_matmul(
                &mut dk[j0 * d..(j0 + bk) * d],
                d,
                Init::Add,
                Mat::rows(dp, bk, bq, BQ),
                Mat::rows(&h.q[i0 * d..i1 * d], bq, d, d),
                h.scale,
            );
            j0 += bk;
        }
        i0 = i1;
    }
}
