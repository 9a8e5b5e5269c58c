//! Small matmuls of attention tiles without packing.
//!
//! A general GEMM (the `gemm` crate) copies both operands into its panel layout on every call.
//! For the products inside an attention tile (64 queries × 128 keys × head width 32–128) that
//! copy is a large share of the work: in the exact forward at Lk = 2048 gemm's packing and
//! dispatch took 16% of the time against 54% in its micro-kernel. Every product attention needs
//! can instead be written as `C = A · B` with `B` row-major (contiguous along the output
//! columns) and `A` read one element at a time at any strides, which is what an AVX-512
//! register-blocked micro-kernel reads anyway: per reduction step it loads a row of `B` into
//! `NV` registers and broadcasts `MR` elements of `A`, then does `MR·NV` fused multiply-adds.
//! The attention kernels arrange their tiles so that `B` is always an input row block as stored
//! (keys, values, output gradients) or a small block transposed once per query block.
//!
//! Without AVX-512F (or with `QATTN_TILE_MATMUL=0`) the same calls go to gemm, so every caller
//! works on any CPU; the tests compare both paths against an f64 reference.

use super::gemm::{Mat, matmul};

/// What the product is added to.
#[derive(Clone, Copy)]
pub(crate) enum Init<'a> {
    /// `C = alpha·A·B` (C is not read).
    Zero,
    /// `C += alpha·A·B`.
    Add,
    /// `C[i, :] = s[i]·C[i, :] + alpha·A·B` (one scale per row of C).
    Scale(&'a [f32]),
}

/// Whether [`tile_matmul`] takes the AVX-512 micro-kernel: AVX-512F detected and
/// `QATTN_TILE_MATMUL` not set to `0`.
pub(crate) fn fast_path() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        if std::env::var("QATTN_TILE_MATMUL").is_ok_and(|v| v.trim() == "0") {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        {
            std::is_x86_feature_detected!("avx512f")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// `C = init(C) + alpha · A · B` with `C` row-major (row stride `crs`), `A` at any strides and
/// `B` row-major (`b.cs == 1`, else the call goes to gemm). Panics (as a bug) on out-of-bounds
/// views.
pub(crate) fn tile_matmul(
    c: &mut [f32],
    crs: usize,
    init: Init<'_>,
    a: Mat<'_>,
    b: Mat<'_>,
    alpha: f32,
) {
    tile_matmul_with(fast_path(), c, crs, init, a, b, alpha)
}

/// [`tile_matmul`] on the path chosen by `fast` (tests run both).
pub(crate) fn tile_matmul_with(
    fast: bool,
    c: &mut [f32],
    crs: usize,
    init: Init<'_>,
    a: Mat<'_>,
    b: Mat<'_>,
    alpha: f32,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "inner dimensions differ");
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * crs + n <= c.len(), "destination out of bounds");
    if let Init::Scale(s) = init {
        assert!(s.len() >= m, "one scale per row");
    }
    #[cfg(target_arch = "x86_64")]
    if fast && b.cs == 1 && k > 0 {
        a.check();
        b.check();
        // SAFETY: the three views were bounds-checked above for the extents used, the scales
        // cover every row, and `fast_path`/the caller established AVX-512F.
        unsafe { avx512::matmul(c.as_mut_ptr(), crs, init, m, n, k, a, b, alpha) };
        return;
    }
    let _ = fast;
    match init {
        Init::Zero => matmul(c, crs, false, a, b, alpha),
        Init::Add => matmul(c, crs, true, a, b, alpha),
        Init::Scale(s) => {
            for (i, &si) in s[..m].iter().enumerate() {
                for x in &mut c[i * crs..i * crs + n] {
                    *x *= si;
                }
            }
            matmul(c, crs, true, a, b, alpha)
        }
    }
}

/// A zeroed f32 buffer of `len` values starting on a 64-byte boundary, so that the vector rows
/// of an operand laid out in it do not straddle cache lines (a split 64-byte load costs two).
pub(crate) struct AlignedBuf {
    buf: Vec<f32>,
    off: usize,
    len: usize,
}

impl AlignedBuf {
    /// `len` zeros.
    pub(crate) fn zeros(len: usize) -> Self {
        let buf = vec![0.0f32; len + 15];
        let off = buf.as_ptr().align_offset(64).min(15);
        AlignedBuf { buf, off, len }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[self.off..self.off + self.len]
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.off..self.off + self.len]
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Init, Mat};
    use std::arch::x86_64::*;

    /// Rows of `C` per register block.
    const MR: usize = 6;
    /// 16-float vectors of `C` per register block (MR·NV = 24 accumulators of 32 registers).
    const NV: usize = 4;

    /// Walks `C` in blocks of `NV·16` columns, each in blocks of `MR` rows.
    ///
    /// # Safety
    /// AVX-512F; `c` holds `m` rows of `n` at stride `crs`; the views hold the extents used;
    /// a `Scale` init has `m` scales.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)] // the operands of one product, as `tile_matmul` takes them
    pub(super) unsafe fn matmul(
        c: *mut f32,
        crs: usize,
        init: Init<'_>,
        m: usize,
        n: usize,
        k: usize,
        a: Mat<'_>,
        b: Mat<'_>,
        alpha: f32,
    ) {
        let (kind, scales) = match init {
            Init::Zero => (0u8, std::ptr::null()),
            Init::Add => (1u8, std::ptr::null()),
            Init::Scale(s) => (2u8, s.as_ptr()),
        };
        let mut j = 0;
        while j < n {
            let w = (n - j).min(NV * 16);
            let nv = w.div_ceil(16);
            let tail = w - (nv - 1) * 16;
            let mask: __mmask16 = if tail == 16 {
                0xFFFF
            } else {
                (1u16 << tail) - 1
            };
            let mut i = 0;
            while i < m {
                let mr = (m - i).min(MR);
                let blk = Block {
                    k,
                    a: a.data.as_ptr().wrapping_add(i * a.rs),
                    ars: a.rs,
                    acs: a.cs,
                    b: b.data.as_ptr().wrapping_add(j),
                    brs: b.rs,
                    c: c.wrapping_add(i * crs + j),
                    crs,
                    mask,
                    kind,
                    scales: scales.wrapping_add(i),
                    alpha,
                };
                // SAFETY: as the function's own contract; the block lies inside the views.
                unsafe {
                    macro_rules! go {
                        ($($r:literal),*) => {
                            match (mr, nv) {
                                $(($r, 1) => micro::<$r, 1>(&blk),
                                ($r, 2) => micro::<$r, 2>(&blk),
                                ($r, 3) => micro::<$r, 3>(&blk),
                                ($r, _) => micro::<$r, 4>(&blk),)*
                                _ => unreachable!("row block of {mr}"),
                            }
                        };
                    }
                    go!(1, 2, 3, 4, 5, 6);
                }
                i += mr;
            }
            j += w;
        }
    }

    /// One register block: `R` rows × `V` vectors of `C` (the last vector masked).
    struct Block {
        k: usize,
        a: *const f32,
        ars: usize,
        acs: usize,
        b: *const f32,
        brs: usize,
        c: *mut f32,
        crs: usize,
        mask: __mmask16,
        kind: u8,
        scales: *const f32,
        alpha: f32,
    }

    /// # Safety
    /// As [`matmul`], for this block.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn micro<const R: usize, const V: usize>(p: &Block) {
        // SAFETY: every load reads A at (r < R, s < k), B at (s < k, the block's columns, the
        // last vector masked to the columns that exist), C likewise; all inside the views.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); V]; R];
            let (mut ap, mut bp) = (p.a, p.b);
            // One reduction step: a row of B into registers, R broadcasts of A, R·V FMAs.
            let step = |acc: &mut [[__m512; V]; R], ap: *const f32, bp: *const f32| {
                let mut bv = [_mm512_setzero_ps(); V];
                for (v, x) in bv.iter_mut().enumerate() {
                    *x = if v + 1 == V {
                        _mm512_maskz_loadu_ps(p.mask, bp.add(16 * v))
                    } else {
                        _mm512_loadu_ps(bp.add(16 * v))
                    };
                }
                for (r, row) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*ap.add(r * p.ars));
                    for (acc, &y) in row.iter_mut().zip(&bv) {
                        *acc = _mm512_fmadd_ps(x, y, *acc);
                    }
                }
            };
            for _ in 0..p.k {
                step(&mut acc, ap, bp);
                ap = ap.add(p.acs);
                bp = bp.add(p.brs);
            }
            let alpha = _mm512_set1_ps(p.alpha);
            for (r, row) in acc.iter().enumerate() {
                let cr = p.c.add(r * p.crs);
                for (v, &x) in row.iter().enumerate() {
                    let m = if v + 1 == V { p.mask } else { 0xFFFF };
                    let dst = cr.add(16 * v);
                    let y = match p.kind {
                        0 => _mm512_mul_ps(x, alpha),
                        1 => _mm512_fmadd_ps(x, alpha, _mm512_maskz_loadu_ps(m, dst)),
                        _ => _mm512_fmadd_ps(
                            _mm512_maskz_loadu_ps(m, dst),
                            _mm512_set1_ps(*p.scales.add(r)),
                            _mm512_mul_ps(x, alpha),
                        ),
                    };
                    _mm512_mask_storeu_ps(dst, m, y);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(n: usize, seed: u64) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let v = (i as u64 * 2_654_435_761 + seed * 40_503) % 2001;
                v as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Every init mode, on both paths, against f64: row counts around the register block,
    /// column counts around the vector width and the column block, A transposed or not, B
    /// with a row stride wider than its columns.
    #[test]
    fn aligned_buffers_start_on_a_cache_line() {
        for len in [0, 1, 17, 1000] {
            let b = AlignedBuf::zeros(len);
            assert_eq!(b.len(), len);
            assert!(b.iter().all(|&x| x == 0.0));
            assert_eq!(b.as_ptr() as usize % 64, 0, "len {len}");
        }
    }

    #[test]
    fn both_paths_match_f64() {
        for fast in [false, true] {
            if fast && !fast_path() {
                continue;
            }
            for &(m, k, n) in &[
                (1, 1, 1),
                (6, 8, 16),
                (7, 5, 17),
                (13, 64, 64),
                (64, 32, 65),
                (37, 100, 130),
                (5, 3, 200),
            ] {
                for transposed in [false, true] {
                    let a_buf = det(m * k + 3, 1);
                    let a = if transposed {
                        Mat::rows(&a_buf, k, m, m).t()
                    } else {
                        Mat::rows(&a_buf, m, k, k)
                    };
                    let brs = n + 5;
                    let b_buf = det(k * brs, 2);
                    let b = Mat::rows(&b_buf, k, n, brs);
                    let crs = n + 2;
                    let c0 = det(m * crs, 3);
                    let scales = det(m, 4);
                    let alpha = 0.75f32;
                    for mode in 0..3 {
                        let mut c = c0.clone();
                        let init = match mode {
                            0 => Init::Zero,
                            1 => Init::Add,
                            _ => Init::Scale(&scales),
                        };
                        tile_matmul_with(fast, &mut c, crs, init, a, b, alpha);
                        for i in 0..m {
                            for j in 0..n {
                                let ab: f64 = (0..k)
                                    .map(|s| {
                                        f64::from(a.data[i * a.rs + s * a.cs])
                                            * f64::from(b_buf[s * brs + j])
                                    })
                                    .sum();
                                let c_in = f64::from(c0[i * crs + j]);
                                let want = f64::from(alpha) * ab
                                    + match mode {
                                        0 => 0.0,
                                        1 => c_in,
                                        _ => f64::from(scales[i]) * c_in,
                                    };
                                let got = f64::from(c[i * crs + j]);
                                assert!(
                                    (got - want).abs() <= 1e-5 * (k as f64 + 2.0),
                                    "fast {fast} {m}x{k}x{n} transposed {transposed} mode {mode} \
                                     at ({i}, {j}): {got} vs {want}"
                                );
                            }
                            // Padding between rows of C is never written.
                            for j in n..crs {
                                assert_eq!(c[i * crs + j], c0[i * crs + j]);
                            }
                        }
                    }
                }
            }
        }
    }
}
