//! A bounds-checked wrapper over the `gemm` crate (the matmul engine candle uses on the CPU).

/// A strided read-only matrix view: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major matrix with row stride `rs`.
    pub(crate) fn rows(data: &'a [f32], rows: usize, cols: usize, rs: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            rs,
            cs: 1,
        }
    }

    /// The transpose view.
    pub(crate) fn t(self) -> Self {
        Mat {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Panics when the view reaches past its data.
    pub(crate) fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
            assert!(last < self.data.len(), "matrix view out of bounds");
        }
    }
}

/// `dst = (accumulate ? dst : 0) + beta · lhs · rhs`, with `dst` row-major (row stride `dst_rs`),
/// on the calling thread.
pub(crate) fn matmul(
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    beta: f32,
) {
    matmul_in(
        dst,
        dst_rs,
        accumulate,
        lhs,
        rhs,
        beta,
        gemm::Parallelism::None,
    )
}

/// [`matmul`] split over rayon's threads (as candle's own matmul is), for one large product.
pub(crate) fn matmul_par(
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    beta: f32,
) {
    let threads = rayon::current_num_threads();
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    matmul_in(dst, dst_rs, accumulate, lhs, rhs, beta, par)
}

/// `dst = beta · lhs · rhs` into fresh, uninitialised memory: `dst` holds exactly the
/// `rows × cols` product, row-major, and every element is written (gemm with `read_dst` off
/// never reads the destination), so the caller may treat it as initialised afterwards.
pub(crate) fn matmul_par_uninit(
    dst: &mut [std::mem::MaybeUninit<f32>],
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    beta: f32,
) {
    let (m, n) = (lhs.rows, rhs.cols);
    assert_eq!(dst.len(), m * n, "destination is not rows × cols");
    if lhs.cols == 0 {
        for d in dst.iter_mut() {
            d.write(0.0);
        }
        return;
    }
    // SAFETY: MaybeUninit<f32> has the layout of f32. The slice is only written through (gemm
    // with `read_dst` = false does not read it), and a plain f32 has no invalid bit patterns.
    let dst = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<f32>(), m * n) };
    matmul_par(dst, n, false, lhs, rhs, beta)
}

fn matmul_in(
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    beta: f32,
    parallelism: gemm::Parallelism,
) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(k, rhs.rows, "inner dimensions differ");
    lhs.check();
    rhs.check();
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        (m - 1) * dst_rs + n <= dst.len(),
        "destination out of bounds"
    );
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * dst_rs..r * dst_rs + n].fill(0.0);
            }
        }
        return;
    }
    // SAFETY: all three views were bounds-checked above for the (m, n, k) extents used here.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            beta,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_with_transposes() {
        let a: Vec<f32> = (0..12).map(|x| x as f32 * 0.5 - 2.0).collect(); // 3x4
        let b: Vec<f32> = (0..20).map(|x| (x % 7) as f32 - 3.0).collect(); // 5x4 (used as 4x5 via t)
        let mut c = vec![1.0f32; 15];
        matmul(
            &mut c,
            5,
            true,
            Mat::rows(&a, 3, 4, 4),
            Mat::rows(&b, 5, 4, 4).t(),
            2.0,
        );
        for i in 0..3 {
            for j in 0..5 {
                let mut s = 0.0;
                for k in 0..4 {
                    s += a[i * 4 + k] * b[j * 4 + k];
                }
                assert!((c[i * 5 + j] - (1.0 + 2.0 * s)).abs() < 1e-4);
            }
        }
    }
}
