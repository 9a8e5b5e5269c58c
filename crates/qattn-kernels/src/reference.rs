//! Naive f64 reference attention on f64 inputs (materialises the full probability matrix). Slow by design:
//! it is the ground truth every fast kernel is tested against.

/// Dimensions of a reference problem: q [b,h,lq,d], k [b,h,lk,d], v [b,h,lk,dv].
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    /// Batch size.
    pub b: usize,
    /// Heads.
    pub h: usize,
    /// Query length.
    pub lq: usize,
    /// Key length.
    pub lk: usize,
    /// Query/key width.
    pub d: usize,
    /// Value width.
    pub dv: usize,
}

/// The attention probabilities [b,h,lq,lk] in f64. Masked keys (mask[b,j] == 0) and keys
/// j > i under `causal` (top-left aligned, as PyTorch SDPA) get probability 0; a row with no
/// visible key is all zeros.
pub fn probabilities(
    q: &[f64],
    k: &[f64],
    dims: Dims,
    scale: f64,
    causal: bool,
    mask: Option<&[u8]>,
) -> Vec<f64> {
    let Dims {
        b, h, lq, lk, d, ..
    } = dims;
    let mut p = vec![0.0f64; b * h * lq * lk];
    for bh in 0..b * h {
        let batch = bh / h;
        for i in 0..lq {
            let row = &mut p[(bh * lq + i) * lk..(bh * lq + i + 1) * lk];
            let mut mx = f64::NEG_INFINITY;
            for (j, x) in row.iter_mut().enumerate() {
                let visible = mask.is_none_or(|m| m[batch * lk + j] != 0) && (!causal || j <= i);
                *x = if visible {
                    let s: f64 = (0..d)
                        .map(|t| q[(bh * lq + i) * d + t] * k[(bh * lk + j) * d + t])
                        .sum();
                    s * scale
                } else {
                    f64::NEG_INFINITY
                };
                mx = mx.max(*x);
            }
            if mx == f64::NEG_INFINITY {
                row.fill(0.0);
                continue;
            }
            let mut z = 0.0;
            for x in row.iter_mut() {
                *x = (*x - mx).exp();
                z += *x;
            }
            row.iter_mut().for_each(|x| *x /= z);
        }
    }
    p
}

/// Exact attention output [b,h,lq,dv] in f64.
pub fn attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    dims: Dims,
    scale: f64,
    causal: bool,
    mask: Option<&[u8]>,
) -> Vec<f64> {
    let p = probabilities(q, k, dims, scale, causal, mask);
    let Dims {
        b, h, lq, lk, dv, ..
    } = dims;
    let mut out = vec![0.0f64; b * h * lq * dv];
    for bh in 0..b * h {
        for i in 0..lq {
            for j in 0..lk {
                let pij = p[(bh * lq + i) * lk + j];
                if pij != 0.0 {
                    for t in 0..dv {
                        out[(bh * lq + i) * dv + t] += pij * v[(bh * lk + j) * dv + t];
                    }
                }
            }
        }
    }
    out
}

/// Gradients (dq, dk, dv) of exact attention for an upstream gradient `dout`, in f64.
#[allow(clippy::too_many_arguments)]
pub fn attention_grad(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    dout: &[f64],
    dims: Dims,
    scale: f64,
    causal: bool,
    mask: Option<&[u8]>,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let p = probabilities(q, k, dims, scale, causal, mask);
    let o = attention(q, k, v, dims, scale, causal, mask);
    let Dims {
        b,
        h,
        lq,
        lk,
        d,
        dv,
    } = dims;
    let (mut dq, mut dk, mut dvv) = (
        vec![0.0; b * h * lq * d],
        vec![0.0; b * h * lk * d],
        vec![0.0; b * h * lk * dv],
    );
    for bh in 0..b * h {
        for i in 0..lq {
            let g = |t: usize| dout[(bh * lq + i) * dv + t];
            let delta: f64 = (0..dv).map(|t| g(t) * o[(bh * lq + i) * dv + t]).sum();
            for j in 0..lk {
                let pij = p[(bh * lq + i) * lk + j];
                if pij == 0.0 {
                    continue;
                }
                let a: f64 = (0..dv).map(|t| g(t) * v[(bh * lk + j) * dv + t]).sum();
                let ds = pij * (a - delta) * scale;
                for t in 0..dv {
                    dvv[(bh * lk + j) * dv + t] += pij * g(t);
                }
                for t in 0..d {
                    dq[(bh * lq + i) * d + t] += ds * k[(bh * lk + j) * d + t];
                    dk[(bh * lk + j) * d + t] += ds * q[(bh * lq + i) * d + t];
                }
            }
        }
    }
    (dq, dk, dvv)
}
