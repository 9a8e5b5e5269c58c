//! A dense layer, `x Wᵀ (+ b)`, as one autograd node for training on the CPU.
//!
//! Written with candle's ops, a dense layer is five graph nodes (reshape, transpose of the
//! weight, matmul, reshape back, bias add). candle's backward gives every node's every input a
//! gradient buffer that starts as zeros and is then added to, so each node costs a zeroed
//! allocation and a full pass over an activation-sized tensor on top of its own gradient, and
//! the transposed weight's gradient is added back through a strided (unvectorised) copy. In a
//! MiniLM training step (`bench_train`, two threads) candle's binary maps and `memset`, most of
//! them this bookkeeping, were ≈ 9% of the CPU samples, nearly all on the main thread while
//! the other core waited. [`linear`] is one node: its forward writes the bias into the output
//! and lets the GEMM accumulate onto it (no separate bias pass), and its backward computes
//! dx = dy·W, dW = dyᵀ·x and db = Σ_rows dy directly — the products with the `gemm` crate (the
//! engine candle's matmul calls) on rayon's threads, the bias sum with the fused ops' parallel
//! column sum.
//!
//! The packed micro-kernel of [`crate::packed`] (weight, or its transpose, packed on every
//! call) was tried for the forward and `dx` products: faster than gemm in isolation at these
//! shapes (`packed_matmul` example), but over three alternating pairs of `bench_train` runs
//! (MiniLM, batch 32 × 128, two threads) it gave 3.36 s per step against gemm's 3.25 s, so the
//! training path stays on gemm.
//!
//! Only f32 tensors on the CPU take this path ([`crate::fused::supported`]); callers keep
//! candle's ops for other dtypes and devices.

use crate::cpu::gemm::{Mat, matmul_par, matmul_par_uninit};
use crate::fused::{column_sums, contiguous_f32, err, rows_per_block, with_slice};
use candle_core::{CpuStorage, Layout, Shape, Tensor};
use rayon::prelude::*;

/// `x Wᵀ + b` over the last dimension of `x` (`[..., K]` → `[..., M]`, `w` [M, K], `bias`
/// \[M\] when given), differentiable in all of them.
///
/// Errors when the shapes disagree, or the tensors are not f32 on the CPU.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let (_, k) = w.dims2().map_err(|_| {
        err(format!(
            "linear: the weight must be 2-D [out, in], got {:?}",
            w.dims()
        ))
    })?;
    if x.dims().last() != Some(&k) {
        return Err(err(format!(
            "linear: x has shape {:?}, its last dimension must be the weight's input size {k}",
            x.dims()
        )));
    }
    let m = w.dim(0)?;
    let x = x.contiguous()?;
    let w = w.contiguous()?;
    match bias {
        Some(b) => {
            if b.dims() != [m] {
                return Err(err(format!(
                    "linear: bias has shape {:?}, expected [{m}] (the weight's output size)",
                    b.dims()
                )));
            }
            x.apply_op3(&w, &b.contiguous()?, Linear)
        }
        None => x.apply_op2(&w, Linear),
    }
}

struct Linear;

/// Rows of an input of shape `dims` (`[..., K]`): the product of the leading dimensions, which
/// is right even when K = 0.
fn rows(dims: &[usize]) -> usize {
    dims.split_last()
        .map_or(1, |(_, lead)| lead.iter().product())
}

/// `lhs · rhs` as a new row-major vector, written without zeroing it first (a gradient of a
/// dense layer is as large as its input or weight, so a zero fill would cost a full pass).
fn product(lhs: Mat<'_>, rhs: Mat<'_>) -> Vec<f32> {
    let len = lhs.rows * rhs.cols;
    let mut out = Vec::<f32>::with_capacity(len);
    matmul_par_uninit(&mut out.spare_capacity_mut()[..len], lhs, rhs, 1.0);
    // SAFETY: `matmul_par_uninit` writes every one of the `len` elements of its destination.
    unsafe { out.set_len(len) };
    out
}

/// The output shape: `x`'s with its last dimension replaced by `m`.
fn out_shape(x: &Layout, m: usize) -> Shape {
    let mut dims = x.shape().dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = m;
    }
    Shape::from(dims)
}

impl Linear {
    fn forward(
        &self,
        x: &[f32],
        xl: &Layout,
        w: &[f32],
        m: usize,
        bias: Option<&[f32]>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let k = w.len() / m.max(1);
        let n = rows(xl.dims());
        if let Some(b) = bias.filter(|b| b.len() != m) {
            return Err(err(format!(
                "linear: {} biases for {m} outputs (internal error)",
                b.len()
            )));
        }
        let (xm, wm) = (Mat::rows(x, n, k, k), Mat::rows(w, m, k, k).t());
        // Fresh outputs are never zeroed first: gemm either adds x·Wᵀ to the bias rows written
        // straight into the new buffer, or overwrites the buffer without reading it.
        let mut out = Vec::<f32>::with_capacity(n * m);
        let fresh = &mut out.spare_capacity_mut()[..n * m];
        match bias {
            Some(b) if m > 0 => {
                fresh
                    .par_chunks_mut(rows_per_block(m) * m)
                    .for_each(|rows| {
                        for r in rows.chunks_mut(m) {
                            for (d, &v) in r.iter_mut().zip(b) {
                                d.write(v);
                            }
                        }
                    });
            }
            _ => matmul_par_uninit(fresh, xm, wm, 1.0),
        }
        // SAFETY: every one of the n·m elements was written above: the bias rows (b.len() == m
        // was checked, and the n·m elements split into whole rows of m), or by
        // `matmul_par_uninit`, which writes its whole destination.
        unsafe { out.set_len(n * m) };
        if bias.is_some() && m > 0 {
            matmul_par(&mut out, m, true, xm, wm, 1.0);
        }
        Ok((CpuStorage::F32(out), out_shape(xl, m)))
    }

    /// dx = dy·W, dW = dyᵀ·x, db = column sums of dy (when there is a bias).
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        with_bias: bool,
        grad: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor, Option<Tensor>)> {
        let (m, k) = w.dims2()?;
        let n = rows(x.dims());
        let dev = x.device();
        with_slice(grad, "linear", "grad", |g| {
            with_slice(x, "linear", "x", |xs| {
                with_slice(w, "linear", "w", |ws| {
                    let dx = product(Mat::rows(g, n, m, m), Mat::rows(ws, m, k, k));
                    let dw = product(Mat::rows(g, n, m, m).t(), Mat::rows(xs, n, k, k));
                    let db = with_bias.then(|| column_sums(g, m));
                    Ok((
                        Tensor::from_vec(dx, x.shape(), dev)?,
                        Tensor::from_vec(dw, (m, k), dev)?,
                        db.map(|d| Tensor::from_vec(d, m, dev)).transpose()?,
                    ))
                })
            })
        })
    }
}

impl candle_core::CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "qattn-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name(), "x")?;
        let w = contiguous_f32(s2, l2, self.name(), "w")?;
        self.forward(x, l1, w, l2.dims()[0], None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.backward(x, w, false, grad)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl candle_core::CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "qattn-linear-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let name = <Self as candle_core::CustomOp3>::name(self);
        let x = contiguous_f32(s1, l1, name, "x")?;
        let w = contiguous_f32(s2, l2, name, "w")?;
        let b = contiguous_f32(s3, l3, name, "bias")?;
        self.forward(x, l1, w, l2.dims()[0], Some(b))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = self.backward(x, w, true, grad)?;
        Ok((Some(dx), Some(dw), db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    fn close(got: &[f32], want: &[f32], tol: f32, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tol * (1.0 + w.abs()),
                "{what}[{i}]: {g} vs {w}"
            );
        }
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
                (h % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Forward and every gradient against candle's unfused ops (reshape, matmul with the
    /// transposed weight, broadcast bias add), with and without a bias, over shapes that are
    /// not multiples of the GEMM's blocks.
    #[test]
    fn matches_candles_ops_forward_and_backward() {
        let dev = Device::Cpu;
        for &(b, l, k, m) in &[(2, 3, 5, 7), (3, 33, 40, 17), (1, 1, 1, 1), (4, 16, 64, 96)] {
            for with_bias in [false, true] {
                let x = Var::from_vec(data(b * l * k, 1), (b, l, k), &dev).unwrap();
                let w = Var::from_vec(data(m * k, 2), (m, k), &dev).unwrap();
                let bias = Var::from_vec(data(m, 3), m, &dev).unwrap();
                // A loss that weighs every output differently, so every gradient entry matters.
                let weights = Tensor::from_vec(data(b * l * m, 4), (b, l, m), &dev).unwrap();
                let fused = linear(
                    x.as_tensor(),
                    w.as_tensor(),
                    with_bias.then(|| bias.as_tensor()),
                )
                .unwrap();
                let plain = {
                    let y = x
                        .as_tensor()
                        .reshape((b * l, k))
                        .unwrap()
                        .matmul(&w.as_tensor().t().unwrap())
                        .unwrap()
                        .reshape((b, l, m))
                        .unwrap();
                    if with_bias {
                        y.broadcast_add(bias.as_tensor()).unwrap()
                    } else {
                        y
                    }
                };
                let what = format!("({b},{l},{k},{m}) bias {with_bias}");
                close(&values(&fused), &values(&plain), 1e-5, &format!("y {what}"));
                let gf = (&fused * &weights)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let gp = (&plain * &weights)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                for (name, v) in [("dx", &x), ("dw", &w)] {
                    close(
                        &values(gf.get(v.as_tensor()).unwrap()),
                        &values(gp.get(v.as_tensor()).unwrap()),
                        1e-4,
                        &format!("{name} {what}"),
                    );
                }
                match (gf.get(bias.as_tensor()), gp.get(bias.as_tensor())) {
                    (Some(f), Some(p)) => {
                        close(&values(f), &values(p), 1e-4, &format!("db {what}"))
                    }
                    (None, None) => assert!(!with_bias, "{what}"),
                    _ => panic!("bias gradient present on one side only: {what}"),
                }
            }
        }
    }

    #[test]
    fn shape_errors_name_the_argument() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 3), candle_core::DType::F32, &dev).unwrap();
        let w = Tensor::zeros((4, 3), candle_core::DType::F32, &dev).unwrap();
        let e = linear(&x, &x.t().unwrap(), None).unwrap_err().to_string();
        assert!(e.contains("last dimension"), "{e}");
        let e = linear(
            &x,
            &w,
            Some(&Tensor::zeros(3, candle_core::DType::F32, &dev).unwrap()),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bias has shape [3], expected [4]"), "{e}");
        let e = linear(
            &x,
            &Tensor::zeros(3, candle_core::DType::F32, &dev).unwrap(),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("2-D"), "{e}");
        assert_eq!(linear(&x, &w, None).unwrap().dims(), [2, 4]);
        // No input features: the output is the bias on every row.
        let x0 = Tensor::zeros((3, 0), candle_core::DType::F32, &dev).unwrap();
        let w0 = Tensor::zeros((2, 0), candle_core::DType::F32, &dev).unwrap();
        let b0 = Tensor::new(&[1.5f32, -2.0], &dev).unwrap();
        let y = linear(&x0, &w0, Some(&b0)).unwrap();
        assert_eq!(y.dims(), [3, 2]);
        assert_eq!(values(&y), [1.5, -2.0, 1.5, -2.0, 1.5, -2.0]);
    }
}
