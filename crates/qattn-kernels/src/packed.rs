//! Dense layers at inference: `y = x Wᵀ` against a weight packed once into column panels.
//!
//! A general GEMM (the `gemm` crate behind candle's matmul) packs both operands on every
//! call. For the many-row matmuls of a batch that cost is spread over many rows; for the few
//! rows of a single short sequence it is not: packing the weight reads and writes as much
//! memory as the multiply itself reads, and at inference the weight of every layer streams
//! from main memory on each call. [`PackedWeight`] stores the weight of a `Linear` layer once
//! in the layout the micro-kernel reads (panels of [`NR`] output columns, the reduction
//! dimension contiguous inside a panel), so a small-`M` matmul reads each weight element
//! exactly once from memory and does no packing at all. For many rows the same kernel walks
//! blocks of [`MC`] rows that stay in cache, and it is close to gemm there too
//! (the `packed_matmul` example: 0.9–1.3× at 1024–4096 rows, 1.1–3.1× at 8–64 rows on a
//! 2-core AVX2 machine; the MiniLM forward at batch 32 × 128 1.03–1.16× in four alternating
//! pairs). The cost is memory: the packed copy is as large as the weight (MiniLM-L6: +42 MB).
//!
//! The micro-kernel keeps a block of up to `MR` rows × `NR` outputs in registers and walks the
//! reduction dimension: per step one panel row of `NR` weights and the block's broadcast
//! inputs feed one fused multiply-add per row. It is plain Rust over fixed-size arrays,
//! compiled three times (AVX-512F, AVX2+FMA, baseline) and chosen at run time like the other
//! kernels of this crate; the baseline build is only used where no FMA unit is detected
//! ([`available`] says whether the packed path is worth taking). Panels are split over rayon
//! in fixed chunks, and every output element is one sequential sum over the reduction
//! dimension, so results do not depend on the thread count.
//!
//! At a single short sequence the layer is bound by streaming its weight from memory, not by
//! the FMAs, so every pass over a panel counts: with AVX-512 (32 registers) a block holds up
//! to 12 rows (`MR`; 6 with AVX2), rows are split into near-equal blocks (19 rows: 10 + 9,
//! two passes over each panel instead of four of 6), and the weight stream is prefetched
//! `PREFETCH_ROWS` (16) panel rows ahead. On the 2-core Intel Xeon (AVX-512) the MiniLM forward
//! at batch 1 × 19 tokens went from 5.4–5.6 ms to 4.2–4.3 ms (`bench_forward`, two
//! alternating pairs); at 1 × 8, 1 × 64, 1 × 128 and 8 × 19 it was as fast or faster.
//!
//! Accuracy: each output is an f32 fused multiply-add chain in the natural order, so it
//! differs from gemm's blocked sums by rounding only (tested against an f64 reference at
//! 1e-5 relative to the row's ℓ1 mass).
//!
//! On a CPU with AVX-512F, gemm's AVX-512 kernels are faster from [`AVX512_GEMM_FROM_ROWS`]
//! rows on ([`AVX512_GEMM_FROM_ROWS_NARROWING`] for a weight with fewer outputs than inputs),
//! so [`worth_it`] sends those matmuls to gemm (the MiniLM forward at batch 32 × 128,
//! 4096 rows per dense layer: 73–74 sequences/s packed against 88–98 through gemm, three
//! alternating pairs on a 2-core Intel Xeon).
//!
//! Set `QATTN_PACKED_MATMUL=0` to turn the packed path off (every dense layer then goes
//! through candle's matmul), `=1` to take it at every row count; the tests use them to check
//! both paths agree.

use candle_core::{DType, Device, Storage, Tensor};
use rayon::prelude::*;

/// Output columns per panel (one AVX-512 register, two AVX2 registers).
pub const NR: usize = 16;
/// Most rows per register block of the micro-kernel (AVX-512: 32 registers hold 12 rows of
/// accumulators; AVX2 uses [`MR_AVX2`], its 16 registers hold 6 rows of two halves).
const MR: usize = 12;
/// Rows per register block on CPUs without AVX-512F.
const MR_AVX2: usize = 6;
/// Panels per rayon task: enough work per task to amortise scheduling on small matmuls.
const PANELS_PER_TASK: usize = 4;
/// Rows per rayon task: a block of `x` that stays in cache while the task walks its panels.
const MC: usize = 192;

/// A weight `W` of shape `[n, k]` (a `Linear` layer's `out × in`), stored for `x Wᵀ` in
/// panels of [`NR`] output columns: panel `p` holds `W[p·NR + j, kk]` at `(kk·NR + j)`,
/// zero-padded past `n`.
#[derive(Debug, Clone)]
pub struct PackedWeight {
    n: usize,
    k: usize,
    panels: Vec<f32>,
}

fn err(msg: String) -> candle_core::Error {
    candle_core::Error::Msg(msg)
}

/// Whether the packed path is on: a CPU with FMA (AVX2+FMA or AVX-512F on x86-64, any aarch64)
/// and `QATTN_PACKED_MATMUL` not set to `0`. Without FMA the portable kernel would be slower
/// than gemm, so callers keep candle's matmul there.
pub fn available() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        if std::env::var("QATTN_PACKED_MATMUL").is_ok_and(|v| v.trim() == "0") {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        {
            std::is_x86_feature_detected!("avx512f")
                || (std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"))
        }
        #[cfg(target_arch = "aarch64")]
        {
            true
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            false
        }
    })
}

/// The fewest rows at which a CPU with AVX-512F leaves the packed kernel for gemm.
///
/// gemm's AVX-512 micro-kernels (the `x86-v4` feature) outrun the packed kernel once its
/// packing cost is spread over enough rows. The `packed_matmul` example on a 2-core Intel Xeon
/// (AVX-512), MiniLM shapes, packed ÷ gemm time: 1.0–1.7× faster at 128 rows, 0.79–1.02× at
/// 256, 0.64–0.77× at 1024–4096 (gemm 350–378 GFLOP/s there, packed 240–264). On AVX2 the
/// packed kernel stays at least even with gemm at every row count measured, so there it is
/// taken for any number of rows.
pub const AVX512_GEMM_FROM_ROWS: usize = 256;

/// The fewest rows at which a CPU with AVX-512F leaves the packed kernel for gemm when the
/// weight narrows its input (k > n, as in a feed-forward block's down projection).
///
/// gemm is slow on those shapes until the rows are many: on a 2-core AMD EPYC (Zen 5),
/// k = 1536, n = 384, gemm ran at 194 / 284 / 328 GFLOP/s at 128 / 256 / 384 rows against the
/// packed kernel's 423–432 (2.2× / 1.53× / 1.29×), and the two were even from 512 rows on
/// (1.00–1.06× at 512–1024, 0.89× at 4096). MiniLM at batch 2 × 128 (256 rows per dense layer):
/// 21.4 ms through gemm against 18.0 ms with every layer packed (`bench_forward`).
pub const AVX512_GEMM_FROM_ROWS_NARROWING: usize = 512;

/// Whether a matmul of `rows` input rows of width `k` by a weight of `n` outputs should take
/// the packed kernel: [`available`], and on a CPU with AVX-512F fewer than
/// [`AVX512_GEMM_FROM_ROWS`] rows, or fewer than [`AVX512_GEMM_FROM_ROWS_NARROWING`] when
/// k > n (`QATTN_PACKED_MATMUL=1` takes it at every row count).
pub fn worth_it(rows: usize, k: usize, n: usize) -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let forced = || {
        *FORCED.get_or_init(|| std::env::var("QATTN_PACKED_MATMUL").is_ok_and(|v| v.trim() == "1"))
    };
    let limit = if k > n {
        AVX512_GEMM_FROM_ROWS_NARROWING
    } else {
        AVX512_GEMM_FROM_ROWS
    };
    available() && (rows < limit || !has_avx512f() || forced())
}

/// Whether the CPU has AVX-512F (runtime detection; `false` off x86-64).
fn has_avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl PackedWeight {
    /// Packs a row-major `[n, k]` weight.
    ///
    /// # Errors
    /// When `w.len() != n·k`.
    pub fn pack(w: &[f32], n: usize, k: usize) -> candle_core::Result<Self> {
        if w.len() != n * k {
            return Err(err(format!(
                "packing a weight of shape [{n}, {k}]: got {} values",
                w.len()
            )));
        }
        let panels_n = n.div_ceil(NR);
        let mut panels = vec![0.0f32; panels_n * k * NR];
        if k == 0 {
            return Ok(PackedWeight { n, k, panels });
        }
        panels
            .par_chunks_exact_mut(k * NR)
            .enumerate()
            .for_each(|(p, panel)| {
                for j in 0..NR.min(n - p * NR) {
                    let row = &w[(p * NR + j) * k..(p * NR + j + 1) * k];
                    for (kk, &v) in row.iter().enumerate() {
                        panel[kk * NR + j] = v;
                    }
                }
            });
        Ok(PackedWeight { n, k, panels })
    }

    /// Packs a 2-D f32 CPU tensor of shape `[n, k]`.
    ///
    /// # Errors
    /// When `w` is not a 2-D f32 tensor on the CPU.
    pub fn from_tensor(w: &Tensor) -> candle_core::Result<Self> {
        let (n, k) = w.dims2()?;
        if w.dtype() != DType::F32 || !matches!(w.device(), Device::Cpu) {
            return Err(err(format!(
                "packing a weight: needs f32 on the CPU, got {:?} on {:?}",
                w.dtype(),
                w.device()
            )));
        }
        let data = w.flatten_all()?.to_vec1::<f32>()?;
        Self::pack(&data, n, k)
    }

    /// Packs several `[nᵢ, k]` weights stacked along the output dimension (e.g. a layer's
    /// query, key and value projections as one `[Σnᵢ, k]` matmul).
    ///
    /// # Errors
    /// When the tensors are not 2-D f32 CPU tensors with the same `k`.
    pub fn stacked(ws: &[&Tensor]) -> candle_core::Result<Self> {
        Self::from_tensor(&Tensor::cat(ws, 0)?)
    }

    /// Output columns `n` (the weight's first dimension).
    pub fn out_dim(&self) -> usize {
        self.n
    }

    /// Reduction length `k` (the weight's second dimension).
    pub fn in_dim(&self) -> usize {
        self.k
    }

    /// Bytes held by the packed copy.
    pub fn bytes(&self) -> usize {
        self.panels.len() * std::mem::size_of::<f32>()
    }

    /// `out = x Wᵀ` for a row-major `x` of `m` rows of length `k`; `out` is `m` rows of `n`.
    ///
    /// # Errors
    /// When the slice lengths do not match `m`, `k` and `n`.
    pub fn matmul_into(&self, x: &[f32], m: usize, out: &mut [f32]) -> candle_core::Result<()> {
        self.matmul_bias_into(x, m, None, out)
    }

    /// `out = x Wᵀ + bias` (bias over the `n` columns, added as the results are stored; no
    /// bias: as [`PackedWeight::matmul_into`]).
    ///
    /// # Errors
    /// When the slice lengths do not match `m`, `k` and `n`.
    pub fn matmul_bias_into(
        &self,
        x: &[f32],
        m: usize,
        bias: Option<&[f32]>,
        out: &mut [f32],
    ) -> candle_core::Result<()> {
        self.check_args(x.len(), m, bias)?;
        if out.len() != m * self.n {
            return Err(err(format!(
                "packed matmul: out has {} values for m = {m}, n = {}",
                out.len(),
                self.n
            )));
        }
        // SAFETY: `out` holds the m·n values the call writes (checked above).
        unsafe { self.matmul_bias_raw(x, m, bias, out.as_mut_ptr()) };
        Ok(())
    }

    /// Checks an input of `x_len` values for `m` rows and the bias against the weight.
    fn check_args(&self, x_len: usize, m: usize, bias: Option<&[f32]>) -> candle_core::Result<()> {
        let (n, k) = (self.n, self.k);
        if let Some(b) = bias
            && b.len() != n
        {
            return Err(err(format!(
                "packed matmul: bias has {} values for n = {n}",
                b.len()
            )));
        }
        if x_len != m * k {
            return Err(err(format!(
                "packed matmul: x has {x_len} values for m = {m}, k = {k}"
            )));
        }
        Ok(())
    }

    /// The body of [`PackedWeight::matmul_bias_into`]: writes all `m·n` outputs through `out`
    /// (never reading them), so `out` may be uninitialised memory.
    ///
    /// # Safety
    /// `out` is valid for writes of `m·n` f32 values and nothing else accesses them during
    /// the call; `x.len() == m·k`; `bias`, when given, holds `n` values.
    unsafe fn matmul_bias_raw(&self, x: &[f32], m: usize, bias: Option<&[f32]>, out: *mut f32) {
        let (n, k) = (self.n, self.k);
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            for r in 0..m {
                for j in 0..n {
                    // SAFETY: r·n + j < m·n, per the contract.
                    unsafe { out.add(r * n + j).write(bias.map_or(0.0, |b| b[j])) };
                }
            }
            return;
        }
        let out_ptr = SyncPtr(out);
        let panels_n = n.div_ceil(NR);
        let groups = panels_n.div_ceil(PANELS_PER_TASK);
        let row_blocks = m.div_ceil(MC);
        (0..row_blocks * groups).into_par_iter().for_each(|task| {
            // Row blocks outermost: consecutive tasks share a block of x (in cache) and walk
            // the weight's panels.
            let (rb, g) = (task / groups, task % groups);
            let r0 = rb * MC;
            let rows = MC.min(m - r0);
            let x = &x[r0 * k..(r0 + rows) * k];
            for p in g * PANELS_PER_TASK..((g + 1) * PANELS_PER_TASK).min(panels_n) {
                let panel = &self.panels[p * k * NR..(p + 1) * k * NR];
                let col = p * NR;
                let width = NR.min(n - col);
                let bias = bias.map(|b| &b[col..col + width]);
                // SAFETY: this task writes only rows r0..r0 + rows and columns col..col + width
                // of `out`, disjoint from every other task's block; `out` holds m·n values
                // (checked above) and outlives the parallel loop.
                unsafe {
                    panel_rows(
                        x,
                        rows,
                        k,
                        panel,
                        bias,
                        SyncPtr(out_ptr.get().add(r0 * n)),
                        n,
                        col,
                        width,
                    )
                };
            }
        });
    }

    /// `x Wᵀ` for a 2-D f32 CPU tensor `x` of shape `[m, k]`; returns `[m, n]`.
    ///
    /// # Errors
    /// When `x` is not a 2-D f32 CPU tensor with `k` columns.
    pub fn matmul_t(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.matmul_bias_t(x, None)
    }

    /// `x Wᵀ + bias` for a 2-D f32 CPU tensor `x` of shape `[m, k]` and `n` bias values;
    /// returns `[m, n]`.
    ///
    /// # Errors
    /// When `x` is not a 2-D f32 CPU tensor with `k` columns, or the bias is not `n` long.
    pub fn matmul_bias_t(&self, x: &Tensor, bias: Option<&[f32]>) -> candle_core::Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.k {
            return Err(err(format!(
                "packed matmul: x has {k} columns, the weight {}",
                self.k
            )));
        }
        let x = x.contiguous()?;
        // The kernel writes every output, so the buffer is not zeroed first (at batch 32 × 128
        // zeroing the outputs of a MiniLM forward costs as much as its LayerNorms).
        let len = m * self.n;
        let mut out: Vec<f32> = Vec::with_capacity(len);
        {
            let (s, l) = x.storage_and_layout();
            let data = match &*s {
                Storage::Cpu(candle_core::CpuStorage::F32(v)) => v.as_slice(),
                _ => {
                    return Err(err(format!(
                        "packed matmul: x must be f32 on the CPU, got {:?} on {:?}",
                        x.dtype(),
                        x.device()
                    )));
                }
            };
            let (a, b) = l
                .contiguous_offsets()
                .ok_or_else(|| err("packed matmul: x must be contiguous".into()))?;
            let x = &data[a..b];
            self.check_args(x.len(), m, bias)?;
            // SAFETY: the buffer has capacity for the m·n values the call writes, and every
            // one of them is written before the length is set.
            unsafe {
                self.matmul_bias_raw(x, m, bias, out.as_mut_ptr());
                out.set_len(len);
            }
        }
        Tensor::from_vec(out, (m, self.n), &Device::Cpu)
    }
}

#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: the pointer is only written through at disjoint positions by the parallel tasks of
// `matmul_into` (see the comment there).
unsafe impl Send for SyncPtr {}
// SAFETY: as above.
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// The pointer (a method, so closures capture the `Sync` wrapper, not the raw field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Rows per register block here: [`MR`] with AVX-512F, [`MR_AVX2`] otherwise.
fn block_rows() -> usize {
    if has_avx512f() { MR } else { MR_AVX2 }
}

/// All `m` rows of `x` against one panel, in register blocks of at most [`block_rows`] rows.
///
/// # Safety
/// `out.0` points to `m·n` values; `col + width ≤ n`; nothing else writes these columns;
/// `bias`, when given, holds the `width` bias values of these columns.
#[allow(clippy::too_many_arguments)]
unsafe fn panel_rows(
    x: &[f32],
    m: usize,
    k: usize,
    panel: &[f32],
    bias: Option<&[f32]>,
    out: SyncPtr,
    n: usize,
    col: usize,
    width: usize,
) {
    // Blocks of at most `block_rows()` rows (each block streams the panel once), of near-equal
    // size: 13 rows go as 7 + 6, not 12 + 1, whose one-row block would run the
    // latency-bound two-chain path for a whole pass.
    let most = block_rows();
    let blocks = m.div_ceil(most);
    let (base, extra) = (m / blocks, m % blocks);
    let mut r = 0;
    for b in 0..blocks {
        let rows = base + usize::from(b < extra);
        let mut acc = [[0.0f32; NR]; MR];
        micro(&x[r * k..(r + rows) * k], rows, k, panel, &mut acc);
        for (i, a) in acc.iter().take(rows).enumerate() {
            // SAFETY: row r + i < m and columns col..col + width < n, per the contract; the
            // destination may be uninitialised, so it is only written through the pointer.
            let dst = unsafe { out.0.add((r + i) * n + col) };
            for (j, &v) in a[..width].iter().enumerate() {
                let v = bias.map_or(v, |b| v + b[j]);
                // SAFETY: j < width, as above.
                unsafe { dst.add(j).write(v) };
            }
        }
        r += rows;
    }
}

/// `acc[i][j] = Σ_kk x[i·k + kk] · panel[kk·NR + j]` for `i < rows ≤ MR`.
fn micro(x: &[f32], rows: usize, k: usize, panel: &[f32], acc: &mut [[f32; NR]; MR]) {
    match rows {
        12 => micro_dispatch::<12>(x, k, panel, acc),
        11 => micro_dispatch::<11>(x, k, panel, acc),
        10 => micro_dispatch::<10>(x, k, panel, acc),
        9 => micro_dispatch::<9>(x, k, panel, acc),
        8 => micro_dispatch::<8>(x, k, panel, acc),
        7 => micro_dispatch::<7>(x, k, panel, acc),
        6 => micro_dispatch::<6>(x, k, panel, acc),
        5 => micro_dispatch::<5>(x, k, panel, acc),
        4 => micro_dispatch::<4>(x, k, panel, acc),
        3 => micro_dispatch::<3>(x, k, panel, acc),
        2 => micro_dispatch::<2>(x, k, panel, acc),
        _ => micro_dispatch::<1>(x, k, panel, acc),
    }
}

/// `a[i] += x[i·k + kk] · w` for every row `i < R`.
#[inline(always)]
fn fma_rows<const R: usize>(a: &mut [[f32; NR]; R], x: &[f32], k: usize, kk: usize, w: &[f32]) {
    let w: &[f32; NR] = w.try_into().expect("a panel row holds NR values");
    for (i, ai) in a.iter_mut().enumerate() {
        debug_assert!(i * k + kk < x.len());
        // SAFETY: callers guarantee i < R, kk < k and x.len() ≥ R·k.
        let xv = unsafe { *x.get_unchecked(i * k + kk) };
        for j in 0..NR {
            ai[j] = xv.mul_add(w[j], ai[j]);
        }
    }
}

/// Asks for the panel row [`PREFETCH_ROWS`] steps ahead of `w` (a hint; past the panel's end
/// it fetches the next panel's start or nothing).
#[inline(always)]
fn prefetch_ahead(w: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        let ahead = w.as_ptr().wrapping_add(PREFETCH_ROWS * NR).cast::<i8>();
        // SAFETY: prefetching never faults, whatever the address.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(ahead) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = w;
}

/// How many panel rows (of 64 bytes) ahead the weight stream is prefetched.
const PREFETCH_ROWS: usize = 16;

#[inline(always)]
fn micro_impl<const R: usize>(x: &[f32], k: usize, panel: &[f32], acc: &mut [[f32; NR]; MR]) {
    assert!(x.len() >= R * k && panel.len() == k * NR && R <= MR);
    let mut a = [[0.0f32; NR]; R];
    if R <= 2 {
        // With few rows a single chain of dependent FMAs per register would wait on the FMA
        // latency: even and odd steps of the reduction go to two sets of accumulators.
        let mut b = [[0.0f32; NR]; R];
        let pairs = panel.chunks_exact(2 * NR);
        let tail = pairs.remainder();
        for (p, w) in pairs.enumerate() {
            fma_rows(&mut a, x, k, 2 * p, &w[..NR]);
            fma_rows(&mut b, x, k, 2 * p + 1, &w[NR..]);
        }
        if !tail.is_empty() {
            fma_rows(&mut a, x, k, k - 1, tail);
        }
        for (ai, bi) in a.iter_mut().zip(&b) {
            for j in 0..NR {
                ai[j] += bi[j];
            }
        }
    } else {
        for (kk, w) in panel.chunks_exact(NR).enumerate() {
            prefetch_ahead(w);
            fma_rows(&mut a, x, k, kk, w);
        }
    }
    acc[..R].copy_from_slice(&a);
}

#[inline]
fn micro_dispatch<const R: usize>(x: &[f32], k: usize, panel: &[f32], acc: &mut [[f32; NR]; MR]) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn avx512<const R: usize>(
            x: &[f32],
            k: usize,
            panel: &[f32],
            acc: &mut [[f32; NR]; MR],
        ) {
            micro_impl::<R>(x, k, panel, acc)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<const R: usize>(
            x: &[f32],
            k: usize,
            panel: &[f32],
            acc: &mut [[f32; NR]; MR],
        ) {
            micro_impl::<R>(x, k, panel, acc)
        }
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the features the function was compiled for.
            return unsafe { avx512::<R>(x, k, panel, acc) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { avx2::<R>(x, k, panel, acc) };
        }
    }
    micro_impl::<R>(x, k, panel, acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_rows_leave_the_packed_kernel_only_on_avx512() {
        let (wide, narrowing) = ((384, 1536), (1536, 384));
        if !available() {
            assert!(!worth_it(1, 384, 384) && !worth_it(1 << 20, 384, 384));
            return;
        }
        let avx512 = has_avx512f();
        let forced = std::env::var("QATTN_PACKED_MATMUL").is_ok_and(|v| v.trim() == "1");
        let at = |rows: usize, (k, n): (usize, usize)| worth_it(rows, k, n);
        assert!(at(1, wide) && at(AVX512_GEMM_FROM_ROWS - 1, wide));
        assert!(at(1, narrowing) && at(AVX512_GEMM_FROM_ROWS_NARROWING - 1, narrowing));
        // Square weights count as widening: the plain limit.
        assert_eq!(at(AVX512_GEMM_FROM_ROWS, (384, 384)), !avx512 || forced);
        assert_eq!(at(AVX512_GEMM_FROM_ROWS, wide), !avx512 || forced);
        // Between the two limits only a narrowing weight keeps the packed kernel.
        assert!(at(AVX512_GEMM_FROM_ROWS, narrowing));
        assert_eq!(
            at(AVX512_GEMM_FROM_ROWS_NARROWING, narrowing),
            !avx512 || forced
        );
        assert_eq!(at(1 << 20, wide), !avx512 || forced);
        assert_eq!(at(1 << 20, narrowing), !avx512 || forced);
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn lcg(seed: u64, len: usize) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Every shape class (rows below, at and above both block sizes, MR_AVX2 = 6 and MR = 12,
    /// split into near-equal blocks; n not a multiple of NR; k = 1) against an f64
    /// reference, within 1e-5 of the row's ℓ1 mass |x|·|w|.
    #[test]
    fn matches_f64_reference() {
        for &(m, k, n) in &[
            (1, 1, 1),
            (1, 384, 384),
            (5, 7, 17),
            (6, 64, 16),
            (7, 33, 40),
            (12, 50, 33),
            (25, 40, 48),
            (20, 384, 1536),
            (13, 1536, 384),
            (64, 100, 3),
        ] {
            let x = lcg(m as u64 * 31 + k as u64, m * k);
            let w = lcg(n as u64 * 17 + 5, n * k);
            let p = PackedWeight::pack(&w, n, k).unwrap();
            let mut out = vec![f32::NAN; m * n];
            p.matmul_into(&x, m, &mut out).unwrap();
            for i in 0..m {
                for j in 0..n {
                    let (mut e, mut mass) = (0.0f64, 0.0f64);
                    for kk in 0..k {
                        let t = x[i * k + kk] as f64 * w[j * k + kk] as f64;
                        e += t;
                        mass += t.abs();
                    }
                    let got = out[i * n + j] as f64;
                    assert!(
                        (got - e).abs() <= 1e-5 * mass.max(1e-30),
                        "m={m} k={k} n={n} at ({i},{j}): {got} vs {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn bias_is_added_per_column_and_stacking_matches_separate_weights() {
        let dev = Device::Cpu;
        let (m, k) = (7, 30);
        let wa = Tensor::randn(0f32, 1.0, (20, k), &dev).unwrap();
        let wb = Tensor::randn(0f32, 1.0, (13, k), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
        let both = PackedWeight::stacked(&[&wa, &wb]).unwrap();
        assert_eq!(both.out_dim(), 33);
        let bias: Vec<f32> = (0..33).map(|j| j as f32 * 0.5 - 3.0).collect();
        let got = both.matmul_bias_t(&x, Some(&bias)).unwrap();
        let a = PackedWeight::from_tensor(&wa)
            .unwrap()
            .matmul_t(&x)
            .unwrap();
        let b = PackedWeight::from_tensor(&wb)
            .unwrap()
            .matmul_t(&x)
            .unwrap();
        let bias_t = Tensor::from_vec(bias.clone(), 33, &dev).unwrap();
        let want = Tensor::cat(&[&a, &b], 1)
            .unwrap()
            .broadcast_add(&bias_t)
            .unwrap();
        let diff = max_diff(&got, &want);
        assert!(diff < 1e-5, "max difference {diff}");
        let e = both
            .matmul_bias_t(&x, Some(&bias[..5]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bias has 5 values"), "{e}");
        // k = 0: the output is the bias.
        let empty = PackedWeight::pack(&[], 3, 0).unwrap();
        let mut out = vec![f32::NAN; 6];
        empty
            .matmul_bias_into(&[], 2, Some(&[1.0, 2.0, 3.0]), &mut out)
            .unwrap();
        assert_eq!(out, [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn same_result_on_any_thread_count() {
        let (m, k, n) = (9, 200, 300);
        let x = lcg(1, m * k);
        let w = lcg(2, n * k);
        let p = PackedWeight::pack(&w, n, k).unwrap();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut out = vec![0.0f32; m * n];
            pool.install(|| p.matmul_into(&x, m, &mut out).unwrap());
            out
        };
        let one = run(1);
        assert_eq!(one, run(3));
        assert_eq!(one, run(2));
    }

    #[test]
    fn bad_shapes_are_errors() {
        let p = PackedWeight::pack(&[1.0; 6], 2, 3).unwrap();
        assert_eq!((p.out_dim(), p.in_dim()), (2, 3));
        let e = PackedWeight::pack(&[1.0; 5], 2, 3).unwrap_err().to_string();
        assert!(e.contains("[2, 3]"), "{e}");
        let mut out = vec![0.0; 4];
        let e = p
            .matmul_into(&[1.0; 5], 2, &mut out)
            .unwrap_err()
            .to_string();
        assert!(e.contains("m = 2"), "{e}");
        let x = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
        let e = p.matmul_t(&x).unwrap_err().to_string();
        assert!(e.contains("4 columns"), "{e}");
    }

    #[test]
    fn tensor_path_matches_candle_matmul() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (70, 48), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (11, 48), &dev).unwrap();
        let p = PackedWeight::from_tensor(&w).unwrap();
        let got = p.matmul_t(&x).unwrap();
        let want = x.matmul(&w.t().unwrap()).unwrap();
        let diff = max_diff(&got, &want);
        assert!(diff < 1e-4, "max |packed − candle| = {diff}");
        // A transposed (non-contiguous) input is made contiguous first.
        let xt = Tensor::randn(0f32, 1.0, (48, 3), &dev)
            .unwrap()
            .t()
            .unwrap();
        let got = p.matmul_t(&xt).unwrap();
        let want = xt.matmul(&w.t().unwrap()).unwrap();
        let diff = max_diff(&got, &want);
        assert!(diff < 1e-4, "transposed input: {diff}");
    }
}
