//! Vectorisable elementwise kernels (exp, max) with run-time CPU feature dispatch.
//!
//! The scalar code is written branch-free so LLVM vectorises it; each entry point is compiled
//! three times (baseline x86-64, AVX2+FMA, AVX-512F) and the best one is picked at run time, so
//! release binaries stay portable (no `target-cpu=native`). Results are bit-identical across the
//! variants: the code uses no contracted multiply-add (only explicit `mul_add`, which is exactly
//! rounded everywhere) and reduces through 16 fixed lanes.

const LANES: usize = 16;

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// 1.5 · 2²³: adding it rounds to an integer.
const MAGIC: f32 = 12_582_912.0;
/// ln 2 split in two (Cody–Waite): `n · LN2_HI` is exact for |n| < 2¹⁴.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// exp(x) for f32 with ~2 ulp relative error on [-87, 88]; exactly 0 below -87 (so masked
/// logits set to -inf contribute nothing). Cephes-style range reduction and polynomial.
#[inline(always)]
pub(crate) fn exp_approx(x: f32) -> f32 {
    let xc = x.clamp(-87.0, 88.0);
    let t = xc * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let res = exp_reduced(t, r);
    if x < -87.0 { 0.0 } else { res }
}

/// [`exp_approx`] with fused multiply-adds in the range reduction and the polynomial: about
/// half the instructions, the same accuracy, rounded differently. For kernels with no
/// cross-device identity to keep (exact attention's softmax); the samplers and the GPU
/// kernels use [`exp_approx`].
#[inline(always)]
pub(crate) fn exp_fused(x: f32) -> f32 {
    let xc = x.clamp(-87.0, 88.0);
    let t = xc.mul_add(LOG2E, MAGIC);
    let n = t - MAGIC;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, xc));
    let ni = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let scale = f32::from_bits(((ni + 127) as u32) << 23);
    let res = exp_poly_fused(r) * scale;
    if x < -87.0 { 0.0 } else { res }
}

/// exp(hi + lo) for a sum that f32 cannot hold exactly (`lo` small against `hi`, both
/// finite), as `(y, a, b)` with exp(hi + lo) = y·a·b: `lo` joins the reduced argument after the
/// exact step `hi − n·ln2_hi`, so the value has the accuracy of [`exp_approx`] on the exact sum.
/// The power of two comes as two normal factors, so callers can scale `y` first and round into
/// the subnormal range only once, at the end. Valid for −174 ≤ hi + lo ≤ 88.
#[inline(always)]
fn exp_sum_parts(hi: f32, lo: f32) -> (f32, f32, f32) {
    let t = (hi + lo).clamp(-174.0, 88.0) * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = (hi - n * LN2_HI) - n * LN2_LO + lo;
    let ni = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let (na, nb) = (ni >> 1, ni - (ni >> 1));
    let pow2 = |k: i32| f32::from_bits(((k + 127) as u32) << 23);
    (exp_poly_fused(r), pow2(na), pow2(nb))
}

/// 2ⁿ · exp(r) for |r| ≤ ln2/2 (plus rounding), with n encoded in `t = n + MAGIC`.
#[inline(always)]
fn exp_reduced(t: f32, r: f32) -> f32 {
    let ni = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let scale = f32::from_bits(((ni + 127) as u32) << 23);
    exp_poly(r) * scale
}

/// exp(r) for |r| ≤ ln2/2 (plus rounding): the Cephes polynomial.
#[inline(always)]
fn exp_poly(r: f32) -> f32 {
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    p * r * r + r + 1.0
}

/// `xs[i] = exp(xs[i] - shift)`, each new value added to lane `i mod 16` of the returned sums.
#[inline(always)]
fn exp_shift_lanes(xs: &mut [f32], shift: f32) -> [f32; LANES] {
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
    acc
}

#[inline(always)]
fn exp_shift_sum_impl(xs: &mut [f32], shift: f32) -> f32 {
    exp_shift_lanes(xs, shift).iter().sum()
}

/// `xs[i] = exp(xs[i] - shift)`, and the sums of the new values over consecutive blocks of
/// `block` elements (a multiple of 16) pushed to `sums` (cleared first) as [`sum`] of each
/// block, widened; returns their f64 total, summed left to right. One pass instead of
/// [`exp_shift_sum`] then [`sum`] per block, with the same values.
#[inline(always)]
fn exp_block_sums_impl(xs: &mut [f32], shift: f32, block: usize, sums: &mut Vec<f64>) -> f64 {
    sums.clear();
    let mut total = 0.0f64;
    for blk in xs.chunks_mut(block.max(LANES)) {
        let s = f64::from(exp_shift_lanes(blk, shift).iter().sum::<f32>());
        sums.push(s);
        total += s;
    }
    total
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
fn add_assign_impl(y: &mut [f32], x: &[f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += xi;
    }
}

#[inline(always)]
fn axpy_impl(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// [`combine_rows_impl`] on the columns `from..` in blocks of `W` held in registers, as many
/// whole blocks as fit; returns where they end.
#[inline(always)]
fn combine_columns<const W: usize>(
    list: &[(u32, f32)],
    v: &[f32],
    dv: usize,
    from: usize,
    out: &mut [f32],
) -> usize {
    let end = from + (dv - from) / W * W;
    for c0 in (from..end).step_by(W) {
        let mut acc = [0.0f32; W];
        acc.copy_from_slice(&out[c0..c0 + W]);
        for &(j, c) in list {
            let x = &v[j as usize * dv + c0..j as usize * dv + c0 + W];
            for l in 0..W {
                acc[l] += c * x[l];
            }
        }
        out[c0..c0 + W].copy_from_slice(&acc);
    }
    end
}

/// `out += Σ c·v[j]` over `(j, c)` in list order, where `v[j]` is row j of `v` (width `dv`).
/// Each element sees the same additions in the same order as one [`axpy`] per row, so the
/// result is bit-identical; the accumulator stays in registers, 16 columns at a time.
#[inline(always)]
fn combine_rows_impl(list: &[(u32, f32)], v: &[f32], dv: usize, out: &mut [f32]) {
    // Two register blocks per pass over the list (independent chains hide the add latency),
    // then one, then the columns left.
    let wide = combine_columns::<{ 2 * LANES }>(list, v, dv, 0, out);
    let full = combine_columns::<LANES>(list, v, dv, wide, out);
    if full < dv {
        for &(j, c) in list {
            let x = &v[j as usize * dv + full..(j as usize + 1) * dv];
            for (o, &xi) in out[full..dv].iter_mut().zip(x) {
                *o += c * xi;
            }
        }
    }
}

/// Coefficients of the Chebyshev fit of Numerical Recipes' `erfcc`:
/// erfc(z) = t·exp(−z² + P(t)), t = 1/(1 + z/2), z ≥ 0, fractional error < 1.2e-7 for every z.
#[allow(clippy::excessive_precision)] // the published coefficients, as printed
const ERFC_P: [f32; 10] = [
    -1.265_512_2,
    1.000_023_7,
    0.374_091_96,
    0.096_784_18,
    -0.186_288_06,
    0.278_868_07,
    -1.135_203_9,
    1.488_515_9,
    -0.822_152_23,
    0.170_872_77,
];

/// 1/√(2π).
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// The pieces of the standard normal tails at `x`: (exp(−x²/2), Φ(−|x|)/exp(−x²/2), e) with
/// e = x² − fl(x²), branch-free so it vectorises.
///
/// Φ(−|x|) = erfc(|x|/√2)/2 is evaluated directly (no cancellation in the lower tail), with
/// exp(−x²/2) split as exp(−p/2)·exp(−e/2) where p + e = x² exactly (`mul_add` gives e), so the
/// large exponent is never rounded. The small factor exp(−x²/2) is returned apart so callers
/// multiply it last and keep full precision down to f32's smallest normal results.
#[inline(always)]
fn normal_tail_parts(x: f32) -> (f32, f32, f32) {
    let p = x * x;
    let e = x.mul_add(x, -p);
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    (
        exp_approx(-0.5 * p),
        0.5 * t * exp_approx(erfc_poly_fused(t) - 0.5 * e),
        e,
    )
}

/// [`exp_poly`] with fused multiply-adds: a shorter dependency chain (rounded differently,
/// so only for callers with no cross-device identity to keep; [`exp_approx`] keeps the
/// unfused form the GPU kernels reproduce).
#[inline(always)]
fn exp_poly_fused(r: f32) -> f32 {
    let mut p = 1.987_569_1e-4_f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    (p * r).mul_add(r, r) + 1.0
}

/// P(t) of [`ERFC_P`] by Horner's rule with fused multiply-adds.
#[inline(always)]
fn erfc_poly_fused(t: f32) -> f32 {
    let mut poly = ERFC_P[9];
    for &c in ERFC_P[..9].iter().rev() {
        poly = poly.mul_add(t, c);
    }
    poly
}

/// GELU, exact erf form: x·Φ(x). Relative error ≤ 1e-6 against f64 wherever the result is a
/// normal f32 (tested).
///
/// The tail Φ(−|x|) = ½·t·exp(−x²/2 + P(t)) takes one exponential of the two-part sum
/// (−p/2) + (P(t) − e/2), p + e = x² exactly ([`normal_tail_parts`] splits it into two
/// exponentials because the derivative needs exp(−x²/2) on its own).
#[inline(always)]
fn gelu_scalar(x: f32) -> f32 {
    // Beyond ±14 the lower tail is below f32's range; clamping keeps ±inf out of the tails.
    let xc = x.clamp(-14.0, 14.0);
    let p = xc * xc;
    let e = xc.mul_add(xc, -p);
    let z = xc.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let (y, a, b) = exp_sum_parts(-0.5 * p, erfc_poly_fused(t) - 0.5 * e);
    let m = 0.5 * t * y;
    // Below zero x·tail takes the powers of two last: a result near f32's smallest normal is
    // rounded once, not first as a subnormal tail. Below −14 the clamped x keeps the result
    // at a subnormal (0 in the limit) instead of x·0 (−∞ or NaN at x = −∞).
    if x >= 0.0 {
        x * (1.0 - m * a * b)
    } else {
        (xc * m) * a * b
    }
}

/// d/dx GELU(x) = Φ(x) + x·φ(x).
#[inline(always)]
fn gelu_grad_scalar(x: f32) -> f32 {
    let xc = x.clamp(-14.0, 14.0);
    let (g, rest, e) = normal_tail_parts(xc);
    let tail = rest * g;
    let cdf = if x >= 0.0 { 1.0 - tail } else { tail };
    let pdf = INV_SQRT_2PI * g * (1.0 - 0.5 * e);
    cdf + xc * pdf
}

#[inline(always)]
fn bias_gelu_impl(x: &[f32], bias: &[f32], out: &mut [f32]) {
    let n = bias.len().max(1);
    for (xr, or) in x.chunks(n).zip(out.chunks_mut(n)) {
        for ((o, &xi), &b) in or.iter_mut().zip(xr).zip(bias) {
            *o = gelu_scalar(xi + b);
        }
    }
}

#[inline(always)]
fn bias_gelu_inplace_impl(x: &mut [f32], bias: &[f32]) {
    let n = bias.len().max(1);
    for xr in x.chunks_mut(n) {
        for (xi, &b) in xr.iter_mut().zip(bias) {
            *xi = gelu_scalar(*xi + b);
        }
    }
}

#[inline(always)]
fn bias_gelu_grad_impl(x: &[f32], bias: &[f32], grad: &[f32], out: &mut [f32]) {
    let n = bias.len().max(1);
    for ((xr, gr), or) in x.chunks(n).zip(grad.chunks(n)).zip(out.chunks_mut(n)) {
        for (((o, &xi), &g), &b) in or.iter_mut().zip(xr).zip(gr).zip(bias) {
            *o = g * gelu_grad_scalar(xi + b);
        }
    }
}

/// `z = x + bias (+ residual)` into `z`, then z ← (z − μ)/√(σ² + eps) in place; returns
/// 1/√(σ² + eps).
#[inline(always)]
fn add_normalize(x: &[f32], residual: &[f32], bias: &[f32], eps: f32, z: &mut [f32]) -> f32 {
    if residual.is_empty() {
        for ((o, &xi), &b) in z.iter_mut().zip(x).zip(bias) {
            *o = xi + b;
        }
    } else {
        for (((o, &xi), &r), &b) in z.iter_mut().zip(x).zip(residual).zip(bias) {
            *o = xi + b + r;
        }
    }
    normalize(z, eps)
}

/// z ← (z − μ)/√(σ² + eps) in place (two-pass mean and variance through 16 fixed lanes);
/// returns 1/√(σ² + eps).
#[inline(always)]
fn normalize(z: &mut [f32], eps: f32) -> f32 {
    let h = z.len();
    let mean = sum_impl(z) / h as f32;
    let mut acc = [0.0f32; LANES];
    let mut chunks = z.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            c[l] -= mean;
            acc[l] += c[l] * c[l];
        }
    }
    for (l, v) in chunks.into_remainder().iter_mut().enumerate() {
        *v -= mean;
        acc[l] += *v * *v;
    }
    let var = acc.iter().sum::<f32>() / h as f32;
    let rstd = 1.0 / (var + eps).sqrt();
    for v in z.iter_mut() {
        *v *= rstd;
    }
    rstd
}

/// [`add_layer_norm`] with the output written over `x`.
#[inline(always)]
fn add_layer_norm_inplace_impl(x: &mut [f32], residual: &[f32], params: &[f32], eps: f32) {
    let h = params.len() / 3;
    if h == 0 {
        return;
    }
    let (bias, rest) = params.split_at(h);
    let (gamma, beta) = rest.split_at(h);
    for (r, z) in x.chunks_exact_mut(h).enumerate() {
        if residual.is_empty() {
            for (v, &b) in z.iter_mut().zip(bias) {
                *v += b;
            }
        } else {
            for ((v, &res), &b) in z.iter_mut().zip(&residual[r * h..(r + 1) * h]).zip(bias) {
                *v = *v + b + res;
            }
        }
        normalize(z, eps);
        for ((v, &g), &b) in z.iter_mut().zip(gamma).zip(beta) {
            *v = *v * g + b;
        }
    }
}

/// Rows of residual + LayerNorm: for each row of width `h = out.len() / rows`,
/// `out = γ·(z − μ)/√(σ² + eps) + β` with `z = x + bias + residual` (`residual` may be
/// empty). `params` is `[bias; γ; β]`, 3·h values.
#[inline(always)]
fn add_layer_norm_impl(x: &[f32], residual: &[f32], params: &[f32], eps: f32, out: &mut [f32]) {
    let h = params.len() / 3;
    if h == 0 {
        return;
    }
    let (bias, rest) = params.split_at(h);
    let (gamma, beta) = rest.split_at(h);
    for (r, o) in out.chunks_exact_mut(h).enumerate() {
        let res = if residual.is_empty() {
            &[][..]
        } else {
            &residual[r * h..(r + 1) * h]
        };
        add_normalize(&x[r * h..(r + 1) * h], res, bias, eps, o);
        for ((v, &g), &b) in o.iter_mut().zip(gamma).zip(beta) {
            *v = *v * g + b;
        }
    }
}

/// Backward of [`add_layer_norm`] over rows: writes dL/dz into `dz` and adds the rows'
/// contributions to `dparams` = [Σ dz; Σ g·x̂; Σ g] (the bias, γ and β gradients).
#[inline(always)]
fn add_layer_norm_grad_impl(
    x: &[f32],
    residual: &[f32],
    params: &[f32],
    eps: f32,
    grad: &[f32],
    dz: &mut [f32],
    dparams: &mut [f32],
) {
    let h = params.len() / 3;
    if h == 0 {
        return;
    }
    let (bias, rest) = params.split_at(h);
    let gamma = &rest[..h];
    let (db, rest) = dparams.split_at_mut(h);
    let (dgamma, dbeta) = rest.split_at_mut(h);
    for (r, d) in dz.chunks_exact_mut(h).enumerate() {
        let res = if residual.is_empty() {
            &[][..]
        } else {
            &residual[r * h..(r + 1) * h]
        };
        let rstd = add_normalize(&x[r * h..(r + 1) * h], res, bias, eps, d);
        let g = &grad[r * h..(r + 1) * h];
        let mut s1 = [0.0f32; LANES];
        let mut s2 = [0.0f32; LANES];
        for (((cx, cg), cm), (cdg, cdb)) in d
            .chunks(LANES)
            .zip(g.chunks(LANES))
            .zip(gamma.chunks(LANES))
            .zip(dgamma.chunks_mut(LANES).zip(dbeta.chunks_mut(LANES)))
        {
            for l in 0..cx.len() {
                let gg = cg[l] * cm[l];
                s1[l] += gg;
                s2[l] += gg * cx[l];
                cdg[l] += cg[l] * cx[l];
                cdb[l] += cg[l];
            }
        }
        let m1 = s1.iter().sum::<f32>() / h as f32;
        let m2 = s2.iter().sum::<f32>() / h as f32;
        for (((v, &gi), &gm), dbi) in d.iter_mut().zip(g).zip(gamma).zip(db.iter_mut()) {
            let out = rstd * (gi * gm - m1 - *v * m2);
            *v = out;
            *dbi += out;
        }
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
pub(crate) use dispatch;

dispatch!(
    /// `xs[i] = exp(xs[i] - shift)`; returns the sum of the new values.
    pub(crate) fn exp_shift_sum(xs: &mut [f32], shift: f32) -> f32 => exp_shift_sum_impl
);
dispatch!(
    /// Exponentiates `xs` against `shift` and returns the blocks' sums (see
    /// [`exp_block_sums_impl`]).
    pub(crate) fn exp_block_sums(xs: &mut [f32], shift: f32, block: usize, sums: &mut Vec<f64>)
        -> f64 => exp_block_sums_impl
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
dispatch!(
    /// `out += Σ c·v[j]` over the `(j, c)` of `list` (rows of `v`, width `dv`), in list order:
    /// bit-identical to one [`axpy`] per entry.
    pub(crate) fn combine_rows(list: &[(u32, f32)], v: &[f32], dv: usize, out: &mut [f32]) -> ()
        => combine_rows_impl
);
dispatch!(
    /// `y += x` over the common length.
    pub(crate) fn add_assign(y: &mut [f32], x: &[f32]) -> () => add_assign_impl
);
dispatch!(
    /// `out = gelu(x + bias)` row by row (`bias.len()` is the row width), exact erf form.
    pub(crate) fn bias_gelu(x: &[f32], bias: &[f32], out: &mut [f32]) -> () => bias_gelu_impl
);
dispatch!(
    /// `x = gelu(x + bias)` row by row, in place.
    pub(crate) fn bias_gelu_inplace(x: &mut [f32], bias: &[f32]) -> () => bias_gelu_inplace_impl
);
dispatch!(
    /// [`add_layer_norm`] written over `x`.
    pub(crate) fn add_layer_norm_inplace(x: &mut [f32], residual: &[f32], params: &[f32],
        eps: f32) -> () => add_layer_norm_inplace_impl
);
dispatch!(
    /// `out = grad · gelu'(x + bias)` row by row.
    pub(crate) fn bias_gelu_grad(x: &[f32], bias: &[f32], grad: &[f32], out: &mut [f32]) -> ()
        => bias_gelu_grad_impl
);
dispatch!(
    /// Rows of `LayerNorm(x + bias + residual)`; `params` = [bias; γ; β].
    pub(crate) fn add_layer_norm(x: &[f32], residual: &[f32], params: &[f32], eps: f32,
        out: &mut [f32]) -> () => add_layer_norm_impl
);
dispatch!(
    /// Backward of [`add_layer_norm`]: dL/dz into `dz`, parameter gradients added to `dparams`.
    pub(crate) fn add_layer_norm_grad(x: &[f32], residual: &[f32], params: &[f32], eps: f32,
        grad: &[f32], dz: &mut [f32], dparams: &mut [f32]) -> () => add_layer_norm_grad_impl
);

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused pass gives the values and block sums of exp_shift_sum then sum per block,
    /// bit for bit, for lengths around the block and lane sizes.
    #[test]
    fn exp_block_sums_is_exp_then_block_sums() {
        for len in [0usize, 1, 15, 16, 17, 63, 64, 65, 127, 128, 200] {
            let x: Vec<f32> = (0..len)
                .map(|i| ((i * 53 % 97) as f32 - 60.0) / 9.0)
                .collect();
            let shift = x.iter().copied().fold(f32::NEG_INFINITY, f32::max).max(0.0);
            let mut want = x.clone();
            exp_shift_sum(&mut want, shift);
            let want_sums: Vec<f64> = want.chunks(64).map(|b| f64::from(sum(b))).collect();
            let mut got = x;
            let mut sums = vec![7.0];
            let total = exp_block_sums(&mut got, shift, 64, &mut sums);
            let bits = |x: &[f32]| x.iter().map(|y| y.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "len {len}");
            assert_eq!(sums, want_sums, "len {len}");
            assert_eq!(total, want_sums.iter().fold(0.0, |a, b| a + b), "len {len}");
        }
    }

    /// One pass over the list gives, bit for bit, what one axpy per entry gives, for widths
    /// below, at and around the register blocks.
    #[test]
    fn combine_rows_is_one_axpy_per_entry() {
        for dv in [1usize, 15, 16, 17, 31, 32, 33, 48, 64, 100] {
            let rows = 7;
            let v: Vec<f32> = (0..rows * dv)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let list: Vec<(u32, f32)> = vec![(3, 0.125), (0, 0.3), (6, 1e-3), (3, 0.7), (5, -2.5)];
            let start: Vec<f32> = (0..dv).map(|i| i as f32 * 0.01).collect();
            let mut want = start.clone();
            for &(j, c) in &list {
                axpy(c, &v[j as usize * dv..(j as usize + 1) * dv], &mut want);
            }
            let mut got = start;
            combine_rows(&list, &v, dv, &mut got);
            let bits = |x: &[f32]| x.iter().map(|y| y.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "dv {dv}");
        }
    }

    #[test]
    fn exp_matches_std_within_tolerance() {
        for (name, exp) in [
            ("unfused", exp_approx as fn(f32) -> f32),
            ("fused", exp_fused),
        ] {
            let mut worst = 0.0f64;
            let mut x = -87.0f32;
            while x < 88.0 {
                let got = f64::from(exp(x));
                let want = f64::from(x).exp();
                worst = worst.max(((got - want) / want).abs());
                x += 0.0137;
            }
            assert!(worst < 5e-7, "{name}: relative error {worst}");
        }
        assert_eq!(exp_fused(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_fused(-100.0), 0.0);
        assert_eq!(exp_fused(0.0), 1.0);
        assert!(exp_fused(f32::NAN).is_nan());
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
        // The fused encoder kernels: the dispatched (AVX-512F / AVX2+FMA) variants give the
        // baseline build's bits.
        let bias: Vec<f32> = (0..xs.len()).map(|i| i as f32 * 0.01 - 0.5).collect();
        let grad: Vec<f32> = xs.iter().map(|x| x * 0.7 + 0.1).collect();
        let (mut o1, mut o2) = (vec![0.0; xs.len()], vec![0.0; xs.len()]);
        bias_gelu(&xs, &bias, &mut o1);
        bias_gelu_impl(&xs, &bias, &mut o2);
        assert_eq!(o1, o2);
        let mut inplace = xs.clone();
        bias_gelu_inplace(&mut inplace, &bias);
        assert_eq!(inplace, o1);
        bias_gelu_grad(&xs, &bias, &grad, &mut o1);
        bias_gelu_grad_impl(&xs, &bias, &grad, &mut o2);
        assert_eq!(o1, o2);
        let params: Vec<f32> = (0..3 * 21).map(|i| (i % 7) as f32 * 0.3 - 0.4).collect();
        let rows = &xs[..84];
        let (mut n1, mut n2) = (vec![0.0; 84], vec![0.0; 84]);
        add_layer_norm(rows, &grad[..84], &params, 1e-5, &mut n1);
        add_layer_norm_impl(rows, &grad[..84], &params, 1e-5, &mut n2);
        assert_eq!(n1, n2);
        let mut inplace = rows.to_vec();
        add_layer_norm_inplace(&mut inplace, &grad[..84], &params, 1e-5);
        assert_eq!(inplace, n1);
        let (mut p1, mut p2) = (vec![0.0; 63], vec![0.0; 63]);
        add_layer_norm_grad(rows, &[], &params, 1e-5, &grad[..84], &mut n1, &mut p1);
        add_layer_norm_grad_impl(rows, &[], &params, 1e-5, &grad[..84], &mut n2, &mut p2);
        assert_eq!((n1, p1), (n2, p2));
        let d: f32 = xs.iter().zip(&a).map(|(x, y)| x * y).sum();
        assert!((dot(&xs, &a) - d).abs() < 1e-3 * d.abs().max(1.0));
    }
}
