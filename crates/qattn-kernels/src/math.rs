//! Vectorisable elementwise kernels (exp, max) with run-time CPU feature dispatch.
//!
//! The scalar code is written branch-free so LLVM vectorises it; each entry point is compiled
//! three times (baseline x86-64, AVX2+FMA, AVX-512F) and the best one is picked at run time, so
//! release binaries stay portable (no `target-cpu=native`). Results are bit-identical across the
//! variants: the code uses no fused multiply-add and reduces through 16 fixed lanes.

const LANES: usize = 16;

/// exp(x) for f32 with ~2 ulp relative error on [-87, 88]; exactly 0 below -87 (so masked
/// logits set to -inf contribute nothing). Cephes-style range reduction and polynomial.
#[inline(always)]
pub(crate) fn exp_approx(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = x.clamp(-87.0, 88.0);
    let t = xc * LOG2E + MAGIC;
    let n = t - MAGIC;
    let ni = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let scale = f32::from_bits(((ni + 127) as u32) << 23);
    let res = y * scale;
    if x < -87.0 { 0.0 } else { res }
}

#[inline(always)]
fn exp_shift_sum_impl(xs: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = xs.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            let e = exp_approx(c[l] - shift);
            c[l] = e;
            acc[l] += e;
        }
    }
    for (l, x) in chunks.into_remainder().iter_mut().enumerate() {
        let e = exp_approx(*x - shift);
        *x = e;
        acc[l] += e;
    }
    acc.iter().sum()
}

#[inline(always)]
fn sum_impl(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rem = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    for (l, &x) in rem.iter().enumerate() {
        acc[l] += x;
    }
    acc.iter().sum()
}

#[inline(always)]
fn max_impl(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rem = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    for (l, &x) in rem.iter().enumerate() {
        acc[l] = if x > acc[l] { x } else { acc[l] };
    }
    acc.iter()
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a })
}

#[inline(always)]
fn dot_impl(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    for (l, (x, y)) in ra.iter().zip(rb).enumerate() {
        acc[l] += x * y;
    }
    acc.iter().sum()
}

#[inline(always)]
fn axpy_impl(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

macro_rules! dispatch {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),*) -> $ret:ty => $imp:ident) => {
        $(#[$doc])*
        #[inline]
        $vis fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) -> $ret { $imp($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) -> $ret { $imp($($arg),*) }
                if std::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports the features the function was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $imp($($arg),*)
        }
    };
}

dispatch!(
    /// `xs[i] = exp(xs[i] - shift)`; returns the sum of the new values.
    pub(crate) fn exp_shift_sum(xs: &mut [f32], shift: f32) -> f32 => exp_shift_sum_impl
);
dispatch!(
    /// Sum of `xs` through 16 fixed lanes.
    pub(crate) fn sum(xs: &[f32]) -> f32 => sum_impl
);
dispatch!(
    /// Maximum of `xs` (-inf when empty).
    pub(crate) fn max(xs: &[f32]) -> f32 => max_impl
);
dispatch!(
    /// Dot product over the common length.
    pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 => dot_impl
);
dispatch!(
    /// `y += alpha * x`.
    pub(crate) fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) -> () => axpy_impl
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_within_tolerance() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let got = f64::from(exp_approx(x));
            let want = f64::from(x).exp();
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 5e-7, "relative error {worst}");
        assert_eq!(exp_approx(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_approx(-100.0), 0.0);
        assert_eq!(exp_approx(0.0), 1.0);
    }

    #[test]
    fn dispatched_kernels_agree_with_scalar() {
        let xs: Vec<f32> = (0..103)
            .map(|i| ((i * 37) % 23) as f32 * 0.3 - 3.0)
            .collect();
        let mut a = xs.clone();
        let mut b = xs.clone();
        let sa = exp_shift_sum(&mut a, 1.5);
        let sb = exp_shift_sum_impl(&mut b, 1.5);
        assert_eq!(a, b);
        assert_eq!(sa, sb);
        assert_eq!(
            max(&xs),
            xs.iter().cloned().fold(f32::NEG_INFINITY, f32::max)
        );
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        let d: f32 = xs.iter().zip(&a).map(|(x, y)| x * y).sum();
        assert!((dot(&xs, &a) - d).abs() < 1e-3 * d.abs().max(1.0));
    }
}
