//! CPU implementations. Work is split into rayon tasks over (batch·head, query block); every
//! task's result depends only on its inputs and the Philox counters, never on scheduling.

pub(crate) mod exact;
pub(crate) mod gemm;
pub(crate) mod lsh;
pub(crate) mod mc;
pub(crate) mod tile;

use rayon::prelude::*;

/// One attention problem with contiguous row-major f32 inputs.
#[derive(Clone, Copy)]
pub(crate) struct Problem<'a> {
    pub(crate) q: &'a [f32],
    pub(crate) k: &'a [f32],
    pub(crate) v: &'a [f32],
    pub(crate) b: usize,
    pub(crate) h: usize,
    pub(crate) lq: usize,
    pub(crate) lk: usize,
    pub(crate) d: usize,
    pub(crate) dv: usize,
    pub(crate) scale: f32,
    pub(crate) causal: bool,
    /// Key mask [B, Lk], nonzero = keep.
    pub(crate) mask: Option<&'a [u8]>,
}

/// The slice of a [`Problem`] for one (batch, head).
#[derive(Clone, Copy)]
pub(crate) struct HeadInput<'a> {
    pub(crate) q: &'a [f32],
    pub(crate) k: &'a [f32],
    pub(crate) v: &'a [f32],
    pub(crate) lq: usize,
    pub(crate) lk: usize,
    pub(crate) d: usize,
    pub(crate) dv: usize,
    pub(crate) scale: f32,
    pub(crate) causal: bool,
    pub(crate) mask: Option<&'a [u8]>,
    pub(crate) batch: usize,
    pub(crate) head: usize,
}

impl<'a> Problem<'a> {
    pub(crate) fn heads(&self) -> usize {
        self.b * self.h
    }

    pub(crate) fn head(&self, bh: usize) -> HeadInput<'a> {
        let (lq, lk, d, dv) = (self.lq, self.lk, self.d, self.dv);
        let batch = bh / self.h;
        HeadInput {
            q: &self.q[bh * lq * d..(bh + 1) * lq * d],
            k: &self.k[bh * lk * d..(bh + 1) * lk * d],
            v: &self.v[bh * lk * dv..(bh + 1) * lk * dv],
            lq,
            lk,
            d,
            dv,
            scale: self.scale,
            causal: self.causal,
            mask: self.mask.map(|m| &m[batch * lk..(batch + 1) * lk]),
            batch,
            head: bh % self.h,
        }
    }
}

/// Exact forward: (output [B,H,Lq,Dv], log-sum-exp [B,H,Lq]).
pub(crate) fn exact_forward(p: &Problem<'_>) -> (Vec<f32>, Vec<f32>) {
    let (lq, dv) = (p.lq, p.dv);
    let mut out = vec![0.0f32; p.heads() * lq * dv];
    let mut lse = vec![0.0f32; p.heads() * lq];
    if lq == 0 {
        return (out, lse);
    }
    out.par_chunks_mut((lq * dv).max(1))
        .zip(lse.par_chunks_mut(lq))
        .enumerate()
        .for_each(|(bh, (out_h, lse_h))| {
            let h = p.head(bh);
            out_h
                .par_chunks_mut((exact::BQ * dv).max(1))
                .zip(lse_h.par_chunks_mut(exact::BQ))
                .enumerate()
                .for_each(|(blk, (o, l))| exact::forward_block(&h, blk * exact::BQ, o, l));
        });
    (out, lse)
}

/// Exact backward: (dq, dk, dv), each shaped like its input.
pub(crate) fn exact_backward(
    p: &Problem<'_>,
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (lq, lk, d, dv) = (p.lq, p.lk, p.d, p.dv);
    let mut dq = vec![0.0f32; p.heads() * lq * d];
    let mut dk = vec![0.0f32; p.heads() * lk * d];
    let mut dvv = vec![0.0f32; p.heads() * lk * dv];
    if p.heads() == 0 || lq == 0 || lk == 0 {
        return (dq, dk, dvv);
    }
    dq.par_chunks_mut((lq * d).max(1))
        .zip(dk.par_chunks_mut((lk * d).max(1)))
        .zip(dvv.par_chunks_mut((lk * dv).max(1)))
        .enumerate()
        .for_each(|(bh, ((dq_h, dk_h), dv_h))| {
            let h = p.head(bh);
            exact::backward_head(
                &h,
                &out[bh * lq * dv..(bh + 1) * lq * dv],
                &lse[bh * lq..(bh + 1) * lq],
                &dout[bh * lq * dv..(bh + 1) * lq * dv],
                dq_h,
                dk_h,
                dv_h,
            );
        });
    (dq, dk, dvv)
}
