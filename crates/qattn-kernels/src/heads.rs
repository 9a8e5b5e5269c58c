//! Head-layout copies for inference: the fused query/key/value projection split into per-head
//! tensors, and the attention context merged back, each in one parallel pass.
//!
//! candle expresses these as `reshape → transpose → contiguous`, a strided copy on one thread
//! that moves `head_dim` values per call; in a MiniLM forward at batch 32 × 128 those copies
//! took about 6% of the time while the other core waited. Here every output block is written
//! once, in parallel, into a buffer that is not zeroed first. There is no backward: these are
//! for tensors that track no gradient (the model keeps candle's ops when training), and a
//! tensor that does is an error rather than a silently detached result.

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

use crate::fused::{err, supported, with_slice};

/// Rows of the merged output per rayon task.
const MERGE_ROWS: usize = 64;

fn check(t: &Tensor, op: &str) -> candle_core::Result<()> {
    if !supported(t) {
        return Err(err(format!(
            "{op}: needs an f32 tensor on the CPU, got {:?} on {:?}",
            t.dtype(),
            t.device()
        )));
    }
    if t.track_op() {
        return Err(err(format!(
            "{op}: has no backward; the tensor tracks gradients (use candle's transpose)"
        )));
    }
    Ok(())
}

/// A buffer of `len` values, every one of them written by `fill` (which gets it uninitialised).
fn filled(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(len);
    fill(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: `fill` wrote all `len` values (each caller's loops cover the whole buffer).
    unsafe { v.set_len(len) };
    v
}

fn write(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(s);
    }
}

/// Splits the fused projection `y` of shape `[b·l, 3·nh·dh]` — each row the query, key and
/// value of one token, heads in order inside each — into `q`, `k`, `v` of shape
/// `[b, nh, l, dh]`.
///
/// # Errors
/// When `y` is not f32 on the CPU, tracks gradients, or does not have that shape.
pub fn split_qkv(
    y: &Tensor,
    b: usize,
    l: usize,
    nh: usize,
    dh: usize,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "split_qkv";
    check(y, OP)?;
    let h = nh * dh;
    if y.dims() != [b * l, 3 * h] {
        return Err(err(format!(
            "{OP}: expected shape [{}, {}] (b = {b}, l = {l}, nh = {nh}, dh = {dh}), got {:?}",
            b * l,
            3 * h,
            y.dims()
        )));
    }
    let block = l * dh;
    let parts = with_slice(y, OP, "input", |data| {
        let part = |j: usize| {
            filled(b * nh * block, |out| {
                if block == 0 {
                    return;
                }
                out.par_chunks_mut(block).enumerate().for_each(|(c, dst)| {
                    let (bi, hi) = (c / nh, c % nh);
                    for (i, row) in dst.chunks_mut(dh.max(1)).enumerate() {
                        let src = ((bi * l + i) * 3 + j) * h + hi * dh;
                        write(row, &data[src..src + dh]);
                    }
                });
            })
        };
        Ok([part(0), part(1), part(2)])
    })?;
    let [q, k, v] = parts.map(|p| Tensor::from_vec(p, (b, nh, l, dh), &Device::Cpu));
    Ok((q?, k?, v?))
}

/// Merges per-head outputs `ctx` of shape `[b, nh, l, dh]` into `[b, l, nh·dh]` (the
/// transpose candle writes as `ctx.transpose(1, 2)?.contiguous()?.reshape(..)`).
///
/// # Errors
/// When `ctx` is not a 4-D f32 CPU tensor or tracks gradients.
pub fn merge_heads(ctx: &Tensor) -> candle_core::Result<Tensor> {
    const OP: &str = "merge_heads";
    check(ctx, OP)?;
    let (b, nh, l, dh) = ctx.dims4()?;
    let h = nh * dh;
    let out = with_slice(ctx, OP, "input", |data| {
        Ok(filled(b * l * h, |out| {
            if h == 0 {
                return;
            }
            out.par_chunks_mut(MERGE_ROWS * h)
                .enumerate()
                .for_each(|(c, rows)| {
                    for (r, dst) in rows.chunks_mut(h).enumerate() {
                        let row = c * MERGE_ROWS + r;
                        let (bi, i) = (row / l, row % l);
                        for (hi, d) in dst.chunks_mut(dh).enumerate() {
                            let src = ((bi * nh + hi) * l + i) * dh;
                            write(d, &data[src..src + dh]);
                        }
                    }
                });
        }))
    })?;
    Tensor::from_vec(out, (b, l, h), &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, IndexOp, Var};

    fn close(a: &Tensor, b: &Tensor) {
        assert_eq!(a.dims(), b.dims());
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(a), flat(b), "a copy must be exact");
    }

    #[test]
    fn split_and_merge_match_candles_transposes() {
        for &(b, l, nh, dh) in &[(2, 5, 3, 4), (1, 1, 1, 1), (3, 130, 12, 32), (2, 0, 2, 8)] {
            let h = nh * dh;
            let y = Tensor::randn(0f32, 1.0, (b * l, 3 * h), &Device::Cpu).unwrap();
            let (q, k, v) = split_qkv(&y, b, l, nh, dh).unwrap();
            let y5 = y.reshape((b, l, 3, nh, dh)).unwrap();
            for (j, got) in [q, k, v].iter().enumerate() {
                let want = y5
                    .i((.., .., j))
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap()
                    .contiguous()
                    .unwrap();
                close(got, &want);
                let merged = merge_heads(got).unwrap();
                let want = got
                    .transpose(1, 2)
                    .unwrap()
                    .contiguous()
                    .unwrap()
                    .reshape((b, l, h))
                    .unwrap();
                close(&merged, &want);
            }
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let y = Tensor::zeros((6, 12), DType::F32, &Device::Cpu).unwrap();
        let e = split_qkv(&y, 2, 3, 2, 3).unwrap_err().to_string();
        assert!(e.contains("expected shape [6, 18]"), "{e}");
        let e = split_qkv(&y.to_dtype(DType::F64).unwrap(), 2, 3, 2, 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("f32"), "{e}");
        let var = Var::zeros((1, 2, 3, 4), DType::F32, &Device::Cpu).unwrap();
        let e = merge_heads(&(var.as_tensor() * 2.0).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("tracks gradients"), "{e}");
        let e = merge_heads(&y).unwrap_err().to_string();
        assert!(e.contains("rank") || e.contains("dims"), "{e}");
    }
}
