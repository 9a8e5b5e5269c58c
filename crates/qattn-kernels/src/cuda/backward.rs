//! Backward passes on the GPU (`cuda/backward.cu`): the sampled-gradient backward of the
//! Monte-Carlo estimators and the exact-attention backward in f32.
//!
//! # Sampled backward
//! Each query row r = bh·Lq + i carries up to P *entries* (key j, `cdv` = its coefficient in
//! the estimate, `cds` = the coefficient of its logit gradient: `cdv·κ` for sampled keys,
//! `cdv` for top-k's exact keys), in the padded layout of [`SampledEntries`]. With g = dO_r and
//! o = O_r the gradient is, as in `cpu/mc.rs::backward_sampled`,
//! ds_j = cds·(g·v_j − g·o)·scale, dQ_r = Σ ds_j k_j, dK_j += ds_j q_r, dV_j += cdv·g.
//!
//! dK and dV are scatters (many rows hit the same key). They are made race-free **and
//! deterministic** without float atomics: the entries are counting-sorted by key (integer
//! atomics only; counts do not depend on order), each key's segment is then put in ascending
//! entry id — which is the CPU's order (query, then slot) — and one warp per key sums its
//! segment sequentially. Every f32 operation is an explicitly rounded `__fmul_rn`/`__fadd_rn`
//! (no FMA contraction) and dot products use `math::dot`'s 16-lane order, so the GPU result is
//! the CPU's bit for bit. Float atomics would be faster to write but make every run differ in
//! the last bits, which would break the project's "same seed ⇒ same result" guarantee for
//! training runs; the sort costs Σ (segment size)² integer compares, small at S ≪ Lk.
//! [`emulate_sampled_backward`] executes the same steps on the host (tests check it against
//! the CPU path with the placement order scrambled, as atomics would scramble it).
//!
//! The control-variate estimator (`cv:R:S`) has a dense control part and is not supported on
//! the GPU: its records are rejected with a clear error.
//!
//! # Exact backward
//! FlashAttention-2 recurrence in f32 from the forward's log-sum-exp, tiled (32 rows × D ≤ 64,
//! or 16 rows × D ≤ 128), deterministic: one block per key tile owns dK/dV, one block per
//! query tile owns dQ (P and dP are computed twice instead of using float atomics on dQ).

use crate::cpu::mc::RowRecord;
use crate::error::{Error, Result};

/// Sampled-backward entries in the kernels' padded layout: row r's entries are at
/// `r·slots .. r·slots + nent[r]`, in the CPU's order (top-k's exact keys, then sampled keys,
/// each ascending).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SampledEntries {
    /// Slots per row (P).
    pub slots: usize,
    /// Key index of each slot.
    pub key: Vec<u32>,
    /// Coefficient of the key's value in the estimate (the dV weight).
    pub cdv: Vec<f32>,
    /// Coefficient of the key's logit gradient (`cdv·κ` for sampled keys, `cdv` for exact ones).
    pub cds: Vec<f32>,
    /// Number of used slots per row.
    pub nent: Vec<u32>,
}

impl SampledEntries {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.nent.len()
    }

    /// Builds the entries from the CPU forward's per-row records (any estimator except `cv`).
    #[cfg_attr(not(any(test, feature = "cuda")), allow(dead_code))]
    pub(crate) fn from_records(rows: &[RowRecord]) -> Self {
        let slots = rows
            .iter()
            .map(|r| r.exact.len() + r.sampled.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let n = rows.len() * slots;
        let mut e = SampledEntries {
            slots,
            key: vec![0; n],
            cdv: vec![0.0; n],
            cds: vec![0.0; n],
            nent: vec![0; rows.len()],
        };
        for (r, rec) in rows.iter().enumerate() {
            let items = rec
                .exact
                .iter()
                .map(|&(j, c)| (j, c, c))
                .chain(rec.sampled.iter().map(|&(j, c)| (j, c, c * rec.kappa)));
            let mut k = 0;
            for (j, c, cs) in items {
                e.key[r * slots + k] = j;
                e.cdv[r * slots + k] = c;
                e.cds[r * slots + k] = cs;
                k += 1;
            }
            e.nent[r] = k as u32;
        }
        e
    }

    /// Host emulation of `qattn_sb_from_shots`: entries of `multinomial:S` (`iid`) or
    /// `stratified:S` rows from the raw shot indices `idx` [rows, S] (no noise, no top-k).
    /// Rows whose `lse` is −∞ (no visible key) get no entry.
    pub fn from_shots(idx: &[u32], lse: Option<&[f32]>, shots: usize, iid: bool) -> Result<Self> {
        if shots == 0 || !idx.len().is_multiple_of(shots) {
            return Err(Error::Options(format!(
                "cuda::backward::SampledEntries::from_shots: {} indices are not rows of {shots} shots",
                idx.len()
            )));
        }
        let rows = idx.len() / shots;
        if let Some(l) = lse
            && l.len() != rows
        {
            return Err(Error::Options(format!(
                "cuda::backward::SampledEntries::from_shots: lse has {} rows, indices have {rows}",
                l.len()
            )));
        }
        let mut e = SampledEntries {
            slots: shots,
            key: vec![0; idx.len()],
            cdv: vec![0.0; idx.len()],
            cds: vec![0.0; idx.len()],
            nent: vec![0; rows],
        };
        let kappa = if iid && shots >= 2 {
            shots as f32 / (shots as f32 - 1.0)
        } else {
            1.0
        };
        for r in 0..rows {
            if lse.is_some_and(|l| l[r] == f32::NEG_INFINITY) {
                continue;
            }
            let kr = &mut e.key[r * shots..(r + 1) * shots];
            // Insertion sort, as the kernel does it.
            for s in 0..shots {
                let x = idx[r * shots + s];
                let mut t = s;
                while t > 0 && kr[t - 1] > x {
                    kr[t] = kr[t - 1];
                    t -= 1;
                }
                kr[t] = x;
            }
            let (mut n, mut s) = (0usize, 0usize);
            while s < shots {
                let j = kr[s];
                let mut c = 0u32;
                while s < shots && kr[s] == j {
                    c += 1;
                    s += 1;
                }
                let cf = (f64::from(c) / shots as f64) as f32;
                kr[n] = j;
                e.cdv[r * shots + n] = cf;
                e.cds[r * shots + n] = cf * kappa;
                n += 1;
            }
            e.nent[r] = n as u32;
        }
        Ok(e)
    }
}

/// Shapes of one attention problem: q [B·H, Lq, D], k [B·H, Lk, D], v [B·H, Lk, Dv],
/// out/dout [B·H, Lq, Dv], lse [B·H, Lq], optional key mask [B, Lk] (nonzero = keep).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BwdShape {
    /// Batch size B.
    pub batch: usize,
    /// Heads per batch element H.
    pub heads: usize,
    /// Queries per head.
    pub lq: usize,
    /// Keys per head.
    pub lk: usize,
    /// Query/key dimension.
    pub d: usize,
    /// Value dimension.
    pub dv: usize,
    /// Logit scale (usually 1/√D).
    pub scale: f32,
    /// Causal masking (key j visible to query i iff j ≤ i).
    pub causal: bool,
}

impl BwdShape {
    /// B·H.
    pub fn bh(&self) -> usize {
        self.batch * self.heads
    }

    /// Checks the lengths of host inputs against the shape; `what` names the caller in errors.
    #[allow(clippy::too_many_arguments)]
    pub fn check(
        &self,
        what: &str,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: &[f32],
        dout: &[f32],
        lse: &[f32],
    ) -> Result<()> {
        let bh = self.bh();
        let want = [
            ("q", q.len(), bh * self.lq * self.d),
            ("k", k.len(), bh * self.lk * self.d),
            ("v", v.len(), bh * self.lk * self.dv),
            ("out", out.len(), bh * self.lq * self.dv),
            ("dout", dout.len(), bh * self.lq * self.dv),
            ("lse", lse.len(), bh * self.lq),
        ];
        for (name, got, exp) in want {
            if got != exp {
                return Err(Error::Options(format!(
                    "{what}: `{name}` has {got} elements, expected {exp} for {self:?}"
                )));
            }
        }
        if self.lq > u32::MAX as usize / 2 || self.lk > u32::MAX as usize / 2 {
            return Err(Error::Options(format!(
                "{what}: sequence lengths above 2^31 are not supported ({self:?})"
            )));
        }
        Ok(())
    }
}

/// Largest D and Dv the sampled-backward kernels take (8 values per lane of a warp).
pub const SAMPLED_MAX_DIM: usize = 256;

/// src/math.rs `dot` in the warp order of `warp_dot16` (16 lanes, then left to right from −0).
fn dot16(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    for (t, (a, b)) in x.iter().zip(y).enumerate() {
        acc[t % 16] += a * b;
    }
    let mut s = -0.0f32;
    for a in acc {
        s += a;
    }
    s
}

/// Host emulation of the sampled-backward kernels, step for step: `qattn_sb_rows` (one warp
/// per row: ds of each entry and dQ), `qattn_sb_count`, `qattn_sb_scan` (chunked over 1024
/// threads), `qattn_sb_place` with entries arriving in the order `arrival` (a permutation of
/// the entry ids, standing in for the unspecified order of atomics; `None` = reverse order),
/// `qattn_sb_rank` and `qattn_sb_keys`. Returns (dq, dk, dv).
#[allow(clippy::too_many_arguments)]
pub fn emulate_sampled_backward(
    shape: &BwdShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    dout: &[f32],
    entries: &SampledEntries,
    arrival: Option<&[usize]>,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let (lq, lk, d, dv) = (shape.lq, shape.lk, shape.d, shape.dv);
    let bh = shape.bh();
    let rows = bh * lq;
    let p = entries.slots;
    if entries.rows() != rows || entries.key.len() != rows * p {
        return Err(Error::Options(format!(
            "cuda::backward: entries describe {} rows of {p} slots, the problem has {rows} rows",
            entries.rows()
        )));
    }
    // qattn_sb_rows
    let mut ds_out = vec![0.0f32; rows * p];
    let mut dq = vec![0.0f32; rows * d];
    for r in 0..rows {
        let h = r / lq;
        let g = &dout[r * dv..(r + 1) * dv];
        let b = dot16(g, &out[r * dv..(r + 1) * dv]);
        let acc = &mut dq[r * d..(r + 1) * d];
        for s in 0..entries.nent[r] as usize {
            let e = r * p + s;
            let j = entries.key[e] as usize;
            let vj = &v[(h * lk + j) * dv..(h * lk + j + 1) * dv];
            let a = dot16(g, vj);
            let ds = entries.cds[e] * (a - b) * shape.scale;
            ds_out[e] = ds;
            if ds != 0.0 {
                let kj = &k[(h * lk + j) * d..(h * lk + j + 1) * d];
                for (x, &kt) in acc.iter_mut().zip(kj) {
                    *x += ds * kt;
                }
            }
        }
    }
    // qattn_sb_count
    let nseg = bh * lk;
    let live = |e: usize| e % p < entries.nent[e / p] as usize;
    let seg_of = |e: usize| (e / p / lq) * lk + entries.key[e] as usize;
    let mut counts = vec![0u32; nseg];
    for e in (0..rows * p).filter(|&e| live(e)) {
        counts[seg_of(e)] += 1;
    }
    // qattn_sb_scan: 1024 threads, each a contiguous chunk.
    let threads = 1024usize;
    let chunk = nseg.div_ceil(threads);
    let mut part = vec![0u32; threads];
    for (t, pt) in part.iter_mut().enumerate() {
        let lo = (t * chunk).min(nseg);
        let hi = (lo + chunk).min(nseg);
        *pt = counts[lo..hi].iter().sum();
    }
    let mut start = vec![0u32; nseg + 1];
    let mut run = 0u32;
    for (t, &pt) in part.iter().enumerate() {
        let lo = (t * chunk).min(nseg);
        let hi = (lo + chunk).min(nseg);
        let mut x = run;
        for s in lo..hi {
            start[s] = x;
            x += counts[s];
        }
        run += pt;
    }
    start[nseg] = run;
    // qattn_sb_place in the given arrival order.
    let reverse: Vec<usize>;
    let order = match arrival {
        Some(a) => a,
        None => {
            reverse = (0..rows * p).rev().collect();
            &reverse
        }
    };
    let mut fill = vec![0u32; nseg];
    let mut unordered = vec![0u32; run as usize];
    for &e in order.iter().filter(|&&e| e < rows * p && live(e)) {
        let seg = seg_of(e);
        unordered[(start[seg] + fill[seg]) as usize] = e as u32;
        fill[seg] += 1;
    }
    if fill != counts {
        return Err(Error::Options(
            "cuda::backward: the arrival order is not a permutation of the entries".into(),
        ));
    }
    // qattn_sb_rank
    let mut ordered = vec![0u32; run as usize];
    for &e in &unordered {
        let seg = seg_of(e as usize);
        let (lo, hi) = (start[seg] as usize, start[seg + 1] as usize);
        let rank = unordered[lo..hi].iter().filter(|&&x| x < e).count();
        ordered[lo + rank] = e;
    }
    // qattn_sb_keys
    let mut dk = vec![0.0f32; nseg * d];
    let mut dvv = vec![0.0f32; nseg * dv];
    for seg in 0..nseg {
        let ak = &mut dk[seg * d..(seg + 1) * d];
        let av = &mut dvv[seg * dv..(seg + 1) * dv];
        for &e in &ordered[start[seg] as usize..start[seg + 1] as usize] {
            let e = e as usize;
            let r = e / p;
            let ds = ds_out[e];
            if ds != 0.0 {
                for (x, &qt) in ak.iter_mut().zip(&q[r * d..(r + 1) * d]) {
                    *x += ds * qt;
                }
            }
            let c = entries.cdv[e];
            for (x, &gt) in av.iter_mut().zip(&dout[r * dv..(r + 1) * dv]) {
                *x += c * gt;
            }
        }
    }
    Ok((dq, dk, dvv))
}

#[cfg(feature = "cuda")]
pub use device::{
    BwdDevice, DeviceGrads, SampledDevice, exact_backward, exact_backward_run, gpu_self_check,
    sampled_backward, sampled_backward_run, time_exact_backward, time_sampled_backward,
};

/// One line of a GPU-vs-CPU check.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckLine {
    /// What was compared.
    pub name: String,
    /// Whether it met its tolerance.
    pub passed: bool,
    /// The measured error and the tolerance, in words.
    pub detail: String,
}

/// max |a − b| / max |b| (0 when both are zero), and whether a and b are equal bit for bit.
pub fn rel_err(a: &[f32], b: &[f32]) -> (f64, bool) {
    let scale = b.iter().fold(0.0f64, |m, &x| m.max(f64::from(x).abs()));
    let diff = a.iter().zip(b).fold(0.0f64, |m, (&x, &y)| {
        m.max((f64::from(x) - f64::from(y)).abs())
    });
    let same = a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
    let rel = if a.len() != b.len() {
        f64::INFINITY
    } else if scale == 0.0 {
        diff
    } else {
        diff / scale
    };
    (rel, same)
}

#[cfg(feature = "cuda")]
mod device {
    use super::*;
    use crate::cpu::{Problem, exact_backward as cpu_exact_backward, exact_forward, mc};
    use crate::cuda::gpu::cuda_err;
    use crate::cuda::{GpuContext, GpuDType, GpuOptions, GpuShape};
    use crate::cudarc::driver::{CudaSlice, DriverError, LaunchConfig, PushKernelArg};
    use crate::spec::{Estimator, EstimatorSpec};

    const MODULE: &str = "backward";

    fn launch_err(name: &'static str) -> impl FnOnce(DriverError) -> Error {
        move |e| Error::Cuda {
            what: format!("launch of kernel `{name}`"),
            reason: e.to_string(),
        }
    }

    fn cfg(blocks: usize, threads: u32) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (blocks.max(1) as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    fn bwd_shape(shape: GpuShape, opts: &GpuOptions) -> BwdShape {
        BwdShape {
            batch: shape.b,
            heads: shape.h,
            lq: shape.lq,
            lk: shape.lk,
            d: shape.d,
            dv: shape.d,
            scale: opts.scale_for(shape.d),
            causal: opts.causal,
        }
    }

    /// Inputs of a backward pass resident on the device: q, k, v, the forward's output and
    /// log-sum-exp, the incoming gradient dout and the optional key mask.
    pub struct BwdDevice {
        shape: BwdShape,
        q: CudaSlice<f32>,
        k: CudaSlice<f32>,
        v: CudaSlice<f32>,
        out: CudaSlice<f32>,
        dout: CudaSlice<f32>,
        lse: CudaSlice<f32>,
        mask: Option<CudaSlice<u8>>,
    }

    impl BwdDevice {
        /// Copies the inputs to the device (layout of [`GpuShape`]; the value dimension is D).
        #[allow(clippy::too_many_arguments)]
        pub fn upload(
            ctx: &GpuContext,
            q: &[f32],
            k: &[f32],
            v: &[f32],
            out: &[f32],
            dout: &[f32],
            lse: &[f32],
            shape: GpuShape,
            opts: &GpuOptions,
        ) -> Result<Self> {
            shape.check(q.len(), k.len(), v.len(), opts.mask.as_ref().map(Vec::len))?;
            bwd_shape(shape, opts).check("cuda::backward", q, k, v, out, dout, lse)?;
            let s = ctx.stream();
            let up = |x: &[f32], n: &str| {
                s.clone_htod(x)
                    .map_err(cuda_err(format!("cuda::backward: upload of {n}")))
            };
            Self::from_device(
                ctx,
                up(q, "q")?,
                up(k, "k")?,
                up(v, "v")?,
                up(out, "out")?,
                up(dout, "dout")?,
                up(lse, "lse")?,
                shape,
                opts,
            )
        }
    }

    impl BwdDevice {
        /// Inputs already on `ctx`'s device (layout of [`GpuShape`]; the value dimension is D),
        /// e.g. candle tensors' storage; the mask of `opts` is uploaded.
        #[allow(clippy::too_many_arguments)]
        pub fn from_device(
            ctx: &GpuContext,
            q: CudaSlice<f32>,
            k: CudaSlice<f32>,
            v: CudaSlice<f32>,
            out: CudaSlice<f32>,
            dout: CudaSlice<f32>,
            lse: CudaSlice<f32>,
            shape: GpuShape,
            opts: &GpuOptions,
        ) -> Result<Self> {
            shape.check(q.len(), k.len(), v.len(), opts.mask.as_ref().map(Vec::len))?;
            let bs = bwd_shape(shape, opts);
            let rows = bs.bh() * bs.lq;
            for (name, got, want) in [
                ("out", out.len(), rows * bs.dv),
                ("dout", dout.len(), rows * bs.dv),
                ("lse", lse.len(), rows),
            ] {
                if got != want {
                    return Err(Error::Shape {
                        name,
                        expected: format!("{want} elements"),
                        actual: vec![got],
                    });
                }
            }
            if bs.bh() > 65_535 {
                return Err(Error::Options(format!(
                    "cuda::backward: B·H = {} exceeds the grid limit 65535",
                    bs.bh()
                )));
            }
            let mask = match &opts.mask {
                Some(m) => Some(
                    ctx.stream()
                        .clone_htod(m.as_slice())
                        .map_err(cuda_err("cuda::backward: upload of mask"))?,
                ),
                None => None,
            };
            Ok(BwdDevice {
                shape: bs,
                q,
                k,
                v,
                out,
                dout,
                lse,
                mask,
            })
        }
    }

    /// Gradients (and the exact backward's δ scratch) on the device.
    pub struct DeviceGrads {
        dq: CudaSlice<f32>,
        dk: CudaSlice<f32>,
        dv: CudaSlice<f32>,
        delta: CudaSlice<f32>,
    }

    impl DeviceGrads {
        /// Buffers for the gradients of `bw`: NaN for a context from [`GpuContext::new`] (an
        /// unwritten element shows), zeros for one from [`GpuContext::from_device`].
        pub fn alloc(ctx: &GpuContext, bw: &BwdDevice) -> Result<Self> {
            let sh = &bw.shape;
            let nan = |n: usize| ctx.poisoned(n);
            Ok(DeviceGrads {
                dq: nan(sh.bh() * sh.lq * sh.d)?,
                dk: nan(sh.bh() * sh.lk * sh.d)?,
                dv: nan(sh.bh() * sh.lk * sh.dv)?,
                delta: nan(sh.bh() * sh.lq)?,
            })
        }

        /// (dq, dk, dv) on the device.
        pub fn into_parts(self) -> (CudaSlice<f32>, CudaSlice<f32>, CudaSlice<f32>) {
            (self.dq, self.dk, self.dv)
        }

        /// (dq, dk, dv) on the host (synchronises).
        pub fn download(&self, ctx: &GpuContext) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
            let s = ctx.stream();
            let d = |x: &CudaSlice<f32>, n: &str| {
                s.clone_dtoh(x)
                    .map_err(cuda_err(format!("cuda::backward: download of {n}")))
            };
            Ok((d(&self.dq, "dq")?, d(&self.dk, "dk")?, d(&self.dv, "dv")?))
        }
    }

    /// Queues the exact f32 backward (asynchronous): δ, then dK/dV per key tile, then dQ per
    /// query tile.
    pub fn exact_backward_run(ctx: &GpuContext, bw: &BwdDevice, g: &mut DeviceGrads) -> Result<()> {
        let sh = bw.shape;
        let (bt, dkdv, dqk): (usize, &'static str, &'static str) = if sh.d.max(sh.dv) <= 64 {
            (32, "qattn_exact_bwd_dkdv_32x64", "qattn_exact_bwd_dq_32x64")
        } else if sh.d.max(sh.dv) <= 128 {
            (
                16,
                "qattn_exact_bwd_dkdv_16x128",
                "qattn_exact_bwd_dq_16x128",
            )
        } else {
            return Err(Error::Options(format!(
                "cuda::backward::exact_backward: head dimension {} not supported (at most 128)",
                sh.d.max(sh.dv)
            )));
        };
        let s = ctx.stream();
        let rows = sh.bh() * sh.lq;
        let (rows_u, dv_u) = (rows as u32, sh.dv as u32);
        let f = ctx.function(MODULE, "qattn_exact_bwd_delta")?;
        let mut a = s.launch_builder(&f);
        a.arg(&bw.out)
            .arg(&bw.dout)
            .arg(&rows_u)
            .arg(&dv_u)
            .arg(&mut g.delta);
        // SAFETY: matches qattn_exact_bwd_delta(out, dout, rows, dv, delta); sizes from `sh`.
        unsafe { a.launch(cfg(rows.div_ceil(8), 256)) }
            .map_err(launch_err("qattn_exact_bwd_delta"))?;
        let null = 0u64;
        let (heads, lq, lk, d, dv) = (
            sh.heads as u32,
            sh.lq as u32,
            sh.lk as u32,
            sh.d as u32,
            sh.dv as u32,
        );
        let causal = u32::from(sh.causal);
        for (name, tiles) in [(dkdv, sh.lk.div_ceil(bt)), (dqk, sh.lq.div_ceil(bt))] {
            let f = ctx.function(MODULE, name)?;
            let mut a = s.launch_builder(&f);
            a.arg(&bw.q)
                .arg(&bw.k)
                .arg(&bw.v)
                .arg(&bw.dout)
                .arg(&bw.lse)
                .arg(&g.delta);
            match &bw.mask {
                Some(m) => a.arg(m),
                None => a.arg(&null),
            };
            a.arg(&heads)
                .arg(&lq)
                .arg(&lk)
                .arg(&d)
                .arg(&dv)
                .arg(&sh.scale)
                .arg(&causal);
            if name == dkdv {
                a.arg(&mut g.dk).arg(&mut g.dv);
            } else {
                a.arg(&mut g.dq);
            }
            let c = LaunchConfig {
                grid_dim: (tiles.max(1) as u32, sh.bh() as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: matches QATTN_BWD_ENTRY's signature in cuda/backward.cu (q, k, v, dout,
            // lse, delta, mask, heads, lq, lk, d, dv, scale, causal, outputs); the tile kind
            // was chosen for d, dv; buffers sized from `sh`.
            unsafe { a.launch(c) }.map_err(|e| Error::Cuda {
                what: format!("launch of kernel `{name}`"),
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// Exact-attention backward in f32 on the GPU from host slices: `out` and `lse` are the
    /// forward's (e.g. [`GpuContext::exact_forward`]'s). Returns (dq, dk, dv).
    #[allow(clippy::too_many_arguments)]
    pub fn exact_backward(
        ctx: &GpuContext,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: &[f32],
        dout: &[f32],
        lse: &[f32],
        shape: GpuShape,
        opts: &GpuOptions,
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let bw = BwdDevice::upload(ctx, q, k, v, out, dout, lse, shape, opts)?;
        let mut g = DeviceGrads::alloc(ctx, &bw)?;
        exact_backward_run(ctx, &bw, &mut g)?;
        g.download(ctx)
    }

    /// The sampled backward's entries and scratch on the device. Built either from host
    /// [`SampledEntries`] or from raw shot indices, in which case every
    /// [`sampled_backward_run`] first rebuilds the entries on the device
    /// (`qattn_sb_from_shots`), as a training step would.
    pub struct SampledDevice {
        slots: usize,
        shots: Option<(CudaSlice<u32>, u32)>,
        key: CudaSlice<u32>,
        cdv: CudaSlice<f32>,
        cds: CudaSlice<f32>,
        nent: CudaSlice<u32>,
        ds: CudaSlice<f32>,
        counts: CudaSlice<u32>,
        fill: CudaSlice<u32>,
        start: CudaSlice<u32>,
        unordered: CudaSlice<u32>,
        ordered: CudaSlice<u32>,
    }

    impl SampledDevice {
        fn scratch(
            ctx: &GpuContext,
            bw: &BwdDevice,
            slots: usize,
            shots: Option<(CudaSlice<u32>, u32)>,
            host: Option<&SampledEntries>,
        ) -> Result<Self> {
            let sh = &bw.shape;
            if sh.d > SAMPLED_MAX_DIM || sh.dv > SAMPLED_MAX_DIM {
                return Err(Error::Options(format!(
                    "cuda::backward::sampled_backward: head dimension {} above {SAMPLED_MAX_DIM}",
                    sh.d.max(sh.dv)
                )));
            }
            let rows = sh.bh() * sh.lq;
            let cap = rows * slots;
            let nseg = sh.bh() * sh.lk;
            if cap > u32::MAX as usize || nseg >= u32::MAX as usize {
                return Err(Error::Options(format!(
                    "cuda::backward::sampled_backward: {rows} rows × {slots} slots exceed 2^32"
                )));
            }
            let s = ctx.stream();
            let err = || cuda_err("cuda::backward: sampled scratch alloc");
            let zu = |n: usize| s.alloc_zeros::<u32>(n.max(1)).map_err(err());
            let zf = |n: usize| s.alloc_zeros::<f32>(n.max(1)).map_err(err());
            let (key, cdv, cds, nent) = match host {
                Some(e) => (
                    s.clone_htod(&e.key).map_err(err())?,
                    s.clone_htod(&e.cdv).map_err(err())?,
                    s.clone_htod(&e.cds).map_err(err())?,
                    s.clone_htod(&e.nent).map_err(err())?,
                ),
                None => (zu(cap)?, zf(cap)?, zf(cap)?, zu(rows)?),
            };
            Ok(SampledDevice {
                slots,
                shots,
                key,
                cdv,
                cds,
                nent,
                ds: zf(cap)?,
                counts: zu(nseg)?,
                fill: zu(nseg)?,
                start: zu(nseg + 1)?,
                unordered: zu(cap)?,
                ordered: zu(cap)?,
            })
        }

        /// Entries built on the host (any estimator but `cv`; see [`SampledEntries`]).
        pub fn from_entries(ctx: &GpuContext, bw: &BwdDevice, e: &SampledEntries) -> Result<Self> {
            let rows = bw.shape.bh() * bw.shape.lq;
            if e.rows() != rows || e.key.len() != rows * e.slots {
                return Err(Error::Options(format!(
                    "cuda::backward: entries describe {} rows of {} slots, the problem has {rows} rows",
                    e.rows(),
                    e.slots
                )));
            }
            if let Some((r, &j)) = e.key.iter().enumerate().find(|&(i, &j)| {
                i % e.slots.max(1) < e.nent[i / e.slots.max(1)] as usize
                    && j as usize >= bw.shape.lk
            }) {
                return Err(Error::Options(format!(
                    "cuda::backward: entry {r} names key {j}, but Lk = {}",
                    bw.shape.lk
                )));
            }
            Self::scratch(ctx, bw, e.slots, None, Some(e))
        }

        /// Raw shot indices [B·H·Lq, S] of `multinomial:S` (`iid`) or `stratified:S` (as
        /// [`GpuContext::mc_forward`] returns them); rows whose lse is −∞ get no entry.
        pub fn from_shots(
            ctx: &GpuContext,
            bw: &BwdDevice,
            idx: &[u32],
            shots: usize,
            iid: bool,
        ) -> Result<Self> {
            let rows = bw.shape.bh() * bw.shape.lq;
            if shots == 0 || idx.len() != rows * shots {
                return Err(Error::Options(format!(
                    "cuda::backward: {} shot indices given, expected {rows} rows × {shots}",
                    idx.len()
                )));
            }
            if let Some(&j) = idx.iter().find(|&&j| j as usize >= bw.shape.lk) {
                return Err(Error::Options(format!(
                    "cuda::backward: shot index {j} out of range (Lk = {})",
                    bw.shape.lk
                )));
            }
            let d = ctx
                .stream()
                .clone_htod(idx)
                .map_err(cuda_err("cuda::backward: upload of shot indices"))?;
            Self::scratch(ctx, bw, shots, Some((d, u32::from(iid))), None)
        }

        /// The entries as the device holds them (after a run when built from shots).
        pub fn entries(&self, ctx: &GpuContext) -> Result<SampledEntries> {
            let s = ctx.stream();
            let err = || cuda_err("cuda::backward: download of entries");
            Ok(SampledEntries {
                slots: self.slots,
                key: s.clone_dtoh(&self.key).map_err(err())?,
                cdv: s.clone_dtoh(&self.cdv).map_err(err())?,
                cds: s.clone_dtoh(&self.cds).map_err(err())?,
                nent: s.clone_dtoh(&self.nent).map_err(err())?,
            })
        }
    }

    /// Queues the sampled backward (asynchronous): entries from shots if needed, then
    /// rows → count → scan → place → rank → keys (see the module docs).
    pub fn sampled_backward_run(
        ctx: &GpuContext,
        bw: &BwdDevice,
        sd: &mut SampledDevice,
        g: &mut DeviceGrads,
    ) -> Result<()> {
        let sh = bw.shape;
        let s = ctx.stream();
        let rows = sh.bh() * sh.lq;
        let cap = rows * sd.slots;
        let nseg = sh.bh() * sh.lk;
        let (rows_u, p_u, lq_u, lk_u, d_u, dv_u, nseg_u) = (
            rows as u32,
            sd.slots as u32,
            sh.lq as u32,
            sh.lk as u32,
            sh.d as u32,
            sh.dv as u32,
            nseg as u32,
        );
        if let Some((idx, iid)) = &sd.shots {
            let f = ctx.function(MODULE, "qattn_sb_from_shots")?;
            let mut a = s.launch_builder(&f);
            a.arg(idx)
                .arg(&bw.lse)
                .arg(&rows_u)
                .arg(&p_u)
                .arg(iid)
                .arg(&mut sd.key)
                .arg(&mut sd.cdv)
                .arg(&mut sd.cds)
                .arg(&mut sd.nent);
            // SAFETY: matches qattn_sb_from_shots(idx, lse, rows, S, iid, key, cdv, cds, nent);
            // idx and the entry buffers hold rows·S elements.
            unsafe { a.launch(cfg(rows.div_ceil(128), 128)) }
                .map_err(launch_err("qattn_sb_from_shots"))?;
        }
        let f = ctx.function(MODULE, "qattn_sb_rows")?;
        let mut a = s.launch_builder(&f);
        a.arg(&bw.q)
            .arg(&bw.k)
            .arg(&bw.v)
            .arg(&bw.out)
            .arg(&bw.dout)
            .arg(&sd.key)
            .arg(&sd.cds)
            .arg(&sd.nent)
            .arg(&p_u)
            .arg(&rows_u)
            .arg(&lq_u)
            .arg(&lk_u)
            .arg(&d_u)
            .arg(&dv_u)
            .arg(&sh.scale)
            .arg(&mut sd.ds)
            .arg(&mut g.dq);
        // SAFETY: matches qattn_sb_rows; one warp per row (4 per 128-thread block).
        unsafe { a.launch(cfg(rows.div_ceil(4), 128)) }.map_err(launch_err("qattn_sb_rows"))?;
        s.memset_zeros(&mut sd.counts)
            .map_err(cuda_err("cuda::backward: memset counts"))?;
        s.memset_zeros(&mut sd.fill)
            .map_err(cuda_err("cuda::backward: memset fill"))?;
        let f = ctx.function(MODULE, "qattn_sb_count")?;
        let mut a = s.launch_builder(&f);
        a.arg(&sd.key)
            .arg(&sd.nent)
            .arg(&p_u)
            .arg(&rows_u)
            .arg(&lq_u)
            .arg(&lk_u)
            .arg(&mut sd.counts);
        // SAFETY: matches qattn_sb_count; one thread per slot.
        unsafe { a.launch(cfg(cap.div_ceil(256), 256)) }.map_err(launch_err("qattn_sb_count"))?;
        let f = ctx.function(MODULE, "qattn_sb_scan")?;
        let mut a = s.launch_builder(&f);
        a.arg(&sd.counts).arg(&nseg_u).arg(&mut sd.start);
        // SAFETY: matches qattn_sb_scan(counts, n, start); one block of 1024 threads.
        unsafe { a.launch(cfg(1, 1024)) }.map_err(launch_err("qattn_sb_scan"))?;
        let f = ctx.function(MODULE, "qattn_sb_place")?;
        let mut a = s.launch_builder(&f);
        a.arg(&sd.key)
            .arg(&sd.nent)
            .arg(&p_u)
            .arg(&rows_u)
            .arg(&lq_u)
            .arg(&lk_u)
            .arg(&sd.start)
            .arg(&mut sd.fill)
            .arg(&mut sd.unordered);
        // SAFETY: matches qattn_sb_place; one thread per slot.
        unsafe { a.launch(cfg(cap.div_ceil(256), 256)) }.map_err(launch_err("qattn_sb_place"))?;
        let f = ctx.function(MODULE, "qattn_sb_rank")?;
        let mut a = s.launch_builder(&f);
        a.arg(&sd.key)
            .arg(&sd.unordered)
            .arg(&nseg_u)
            .arg(&p_u)
            .arg(&lq_u)
            .arg(&lk_u)
            .arg(&sd.start)
            .arg(&mut sd.ordered);
        // SAFETY: matches qattn_sb_rank; launched over the capacity, bounded by start[nseg].
        unsafe { a.launch(cfg(cap.div_ceil(256), 256)) }.map_err(launch_err("qattn_sb_rank"))?;
        let f = ctx.function(MODULE, "qattn_sb_keys")?;
        let mut a = s.launch_builder(&f);
        a.arg(&bw.q)
            .arg(&bw.dout)
            .arg(&sd.cdv)
            .arg(&sd.ds)
            .arg(&sd.ordered)
            .arg(&sd.start)
            .arg(&nseg_u)
            .arg(&p_u)
            .arg(&d_u)
            .arg(&dv_u)
            .arg(&mut g.dk)
            .arg(&mut g.dv);
        // SAFETY: matches qattn_sb_keys; one warp per (bh, key) segment.
        unsafe { a.launch(cfg(nseg.div_ceil(4), 128)) }.map_err(launch_err("qattn_sb_keys"))?;
        Ok(())
    }

    /// The sampled-gradient backward on the GPU from host slices and host entries.
    /// Returns (dq, dk, dv), equal to the CPU's `backward_sampled` for the same entries.
    #[allow(clippy::too_many_arguments)]
    pub fn sampled_backward(
        ctx: &GpuContext,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: &[f32],
        dout: &[f32],
        lse: &[f32],
        shape: GpuShape,
        opts: &GpuOptions,
        entries: &SampledEntries,
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let bw = BwdDevice::upload(ctx, q, k, v, out, dout, lse, shape, opts)?;
        let mut sd = SampledDevice::from_entries(ctx, &bw, entries)?;
        let mut g = DeviceGrads::alloc(ctx, &bw)?;
        sampled_backward_run(ctx, &bw, &mut sd, &mut g)?;
        g.download(ctx)
    }

    /// A deterministic pseudo-random vector in [−amp, amp).
    fn lcg_vec(seed: u64, n: usize, amp: f32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
            })
            .collect()
    }

    /// Times the exact f32 backward (ms per call, CUDA events; see [`GpuContext::time_ms`]) for
    /// the given inputs; the forward (out, lse) is computed once on the GPU beforehand and a
    /// fixed pseudo-random dout is used.
    #[allow(clippy::too_many_arguments)]
    pub fn time_exact_backward(
        ctx: &GpuContext,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        shape: GpuShape,
        opts: &GpuOptions,
        warmup: usize,
        reps: usize,
    ) -> Result<Vec<f32>> {
        let f = ctx.exact_forward(q, k, v, shape, opts, GpuDType::F32)?;
        let dout = lcg_vec(17, f.out.len(), 1.0);
        let bw = BwdDevice::upload(ctx, q, k, v, &f.out, &dout, &f.lse, shape, opts)?;
        let mut g = DeviceGrads::alloc(ctx, &bw)?;
        ctx.time_ms(warmup, reps, || exact_backward_run(ctx, &bw, &mut g))
    }

    /// Times the sampled backward of `multinomial:S` / `stratified:S` (ms per call, including
    /// the on-device construction of the entries from the forward's shot indices); the forward
    /// runs once on the GPU beforehand.
    #[allow(clippy::too_many_arguments)]
    pub fn time_sampled_backward(
        ctx: &GpuContext,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        shape: GpuShape,
        opts: &GpuOptions,
        spec: &EstimatorSpec,
        seed: u64,
        warmup: usize,
        reps: usize,
    ) -> Result<Vec<f32>> {
        let iid = matches!(spec.estimator, Estimator::Multinomial { .. });
        let f = ctx.mc_forward(q, k, v, shape, opts, spec, seed)?;
        let dout = lcg_vec(19, f.out.len(), 1.0);
        let bw = BwdDevice::upload(ctx, q, k, v, &f.out, &dout, &f.lse, shape, opts)?;
        let mut sd = SampledDevice::from_shots(ctx, &bw, &f.indices, f.shots, iid)?;
        let mut g = DeviceGrads::alloc(ctx, &bw)?;
        ctx.time_ms(warmup, reps, || {
            sampled_backward_run(ctx, &bw, &mut sd, &mut g)
        })
    }

    struct Inputs {
        shape: GpuShape,
        opts: GpuOptions,
        q: Vec<f32>,
        k: Vec<f32>,
        v: Vec<f32>,
        dout: Vec<f32>,
    }

    impl Inputs {
        fn new(seed: u64, shape: GpuShape, causal: bool, masked: bool) -> Self {
            let GpuShape { b, h, lq, lk, d } = shape;
            let mask = masked.then(|| (0..b * lk).map(|i| u8::from(i % 7 != 3)).collect());
            Inputs {
                q: lcg_vec(seed, b * h * lq * d, 2.0),
                k: lcg_vec(seed + 1, b * h * lk * d, 2.0),
                v: lcg_vec(seed + 2, b * h * lk * d, 1.0),
                dout: lcg_vec(seed + 3, b * h * lq * d, 1.0),
                opts: GpuOptions {
                    scale: None,
                    causal,
                    mask,
                },
                shape,
            }
        }

        fn problem(&self) -> Problem<'_> {
            let GpuShape { b, h, lq, lk, d } = self.shape;
            Problem {
                q: &self.q,
                k: &self.k,
                v: &self.v,
                b,
                h,
                lq,
                lk,
                d,
                dv: d,
                scale: self.opts.scale_for(d),
                causal: self.opts.causal,
                mask: self.opts.mask.as_deref(),
            }
        }
    }

    fn grads_line(
        name: String,
        got: &(Vec<f32>, Vec<f32>, Vec<f32>),
        want: &(Vec<f32>, Vec<f32>, Vec<f32>),
        tol: f64,
    ) -> CheckLine {
        let parts = [
            ("dq", &got.0, &want.0),
            ("dk", &got.1, &want.1),
            ("dv", &got.2, &want.2),
        ];
        let mut passed = true;
        let mut detail = Vec::new();
        for (n, a, b) in parts {
            let (rel, same) = rel_err(a, b);
            passed &= rel <= tol && a.iter().all(|x| x.is_finite());
            detail.push(format!(
                "{n} rel {rel:.2e}{}",
                if same { " (bitwise equal)" } else { "" }
            ));
        }
        CheckLine {
            name,
            passed,
            detail: format!("{} (tolerance {tol:.0e})", detail.join(", ")),
        }
    }

    /// GPU-vs-CPU checks of the backward kernels: the exact f32 backward against the CPU's
    /// (relative error ≤ 1e-4 of the largest gradient: both sum in f32 in different orders and
    /// use different exp implementations), and the sampled backward against the CPU's
    /// `backward_sampled` for the same forward records (the kernels reproduce the CPU's
    /// operation order without FMA, so equality is expected; the pass criterion is ≤ 1e-6 and
    /// each line says whether the result was bitwise equal). Also checks the on-device entry
    /// construction from shots against the CPU's records.
    pub fn gpu_self_check(ctx: &GpuContext) -> Result<Vec<CheckLine>> {
        let mut lines = Vec::new();
        let shapes = [
            (
                GpuShape {
                    b: 2,
                    h: 2,
                    lq: 100,
                    lk: 130,
                    d: 64,
                },
                false,
                true,
            ),
            (
                GpuShape {
                    b: 1,
                    h: 3,
                    lq: 77,
                    lk: 77,
                    d: 32,
                },
                true,
                false,
            ),
            (
                GpuShape {
                    b: 1,
                    h: 2,
                    lq: 40,
                    lk: 300,
                    d: 128,
                },
                false,
                false,
            ),
        ];
        for (si, &(shape, causal, masked)) in shapes.iter().enumerate() {
            let inp = Inputs::new(1000 + si as u64, shape, causal, masked);
            let p = inp.problem();
            let (out, lse) = exact_forward(&p);
            let want = cpu_exact_backward(&p, &out, &lse, &inp.dout);
            let got = exact_backward(
                ctx, &inp.q, &inp.k, &inp.v, &out, &inp.dout, &lse, shape, &inp.opts,
            )?;
            lines.push(grads_line(
                format!("exact backward f32 {shape:?} causal={causal} mask={masked}"),
                &got,
                &want,
                1e-4,
            ));
            for spec in [
                "multinomial:8",
                "stratified:32",
                "topk:4:8",
                "multinomial:6+depol:0.1+readout:0.02:0.05",
            ] {
                let spec: EstimatorSpec = spec.parse()?;
                let fwd = mc::forward(&p, &spec, 4242, true);
                let rows = fwd.rows.as_ref().ok_or_else(|| {
                    Error::Options("cuda::backward self-check: forward kept no records".into())
                })?;
                let want = mc::backward_sampled(&p, &spec, &fwd.out, &fwd.lse, rows, &inp.dout);
                let ent = SampledEntries::from_records(rows);
                let got = sampled_backward(
                    ctx, &inp.q, &inp.k, &inp.v, &fwd.out, &inp.dout, &fwd.lse, shape, &inp.opts,
                    &ent,
                )?;
                lines.push(grads_line(
                    format!("sampled backward `{spec}` {shape:?} causal={causal} mask={masked}"),
                    &got,
                    &want,
                    1e-6,
                ));
                let iid = match spec.estimator {
                    Estimator::Multinomial { .. } => true,
                    Estimator::Stratified { .. } => false,
                    _ => continue,
                };
                if !spec.noise.is_none() {
                    continue;
                }
                // Entries built on the device from the raw shots.
                let n = spec.estimator.nominal_samples();
                let mut idx = Vec::with_capacity(rows.len() * n);
                for r in rows {
                    if r.diag.samples.len() == n {
                        idx.extend_from_slice(&r.diag.samples);
                    } else {
                        idx.extend(std::iter::repeat_n(0u32, n));
                    }
                }
                let bw = BwdDevice::upload(
                    ctx, &inp.q, &inp.k, &inp.v, &fwd.out, &inp.dout, &fwd.lse, shape, &inp.opts,
                )?;
                let mut sd = SampledDevice::from_shots(ctx, &bw, &idx, n, iid)?;
                let mut g = DeviceGrads::alloc(ctx, &bw)?;
                sampled_backward_run(ctx, &bw, &mut sd, &mut g)?;
                let got = g.download(ctx)?;
                let dev = sd.entries(ctx)?;
                let host = SampledEntries::from_shots(&idx, Some(&fwd.lse), n, iid)?;
                let same_entries = (0..host.rows()).all(|r| {
                    let m = host.nent[r] as usize;
                    let lo = r * n;
                    dev.nent[r] == host.nent[r]
                        && dev.key[lo..lo + m] == host.key[lo..lo + m]
                        && dev.cdv[lo..lo + m] == host.cdv[lo..lo + m]
                        && dev.cds[lo..lo + m] == host.cds[lo..lo + m]
                });
                let mut line = grads_line(
                    format!("sampled backward from shots `{spec}` {shape:?}"),
                    &got,
                    &want,
                    1e-6,
                );
                line.passed &= same_entries;
                line.detail = format!(
                    "entries equal host emulation: {same_entries}; {}",
                    line.detail
                );
                lines.push(line);
            }
        }
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::{Problem, mc};
    use crate::spec::EstimatorSpec;

    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> f32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
        fn vec(&mut self, n: usize, amp: f32) -> Vec<f32> {
            (0..n).map(|_| self.next() * amp).collect()
        }
    }

    struct Case {
        shape: BwdShape,
        q: Vec<f32>,
        k: Vec<f32>,
        v: Vec<f32>,
        dout: Vec<f32>,
        mask: Option<Vec<u8>>,
    }

    fn case(seed: u64, shape: BwdShape, masked: bool) -> Case {
        let mut g = Lcg(seed);
        let bh = shape.bh();
        let mask = masked.then(|| {
            (0..shape.batch * shape.lk)
                .map(|i| u8::from(i % 5 != 2))
                .collect()
        });
        Case {
            q: g.vec(bh * shape.lq * shape.d, 2.0),
            k: g.vec(bh * shape.lk * shape.d, 2.0),
            v: g.vec(bh * shape.lk * shape.dv, 1.0),
            dout: g.vec(bh * shape.lq * shape.dv, 1.0),
            shape,
            mask,
        }
    }

    fn problem(c: &Case) -> Problem<'_> {
        let s = c.shape;
        Problem {
            q: &c.q,
            k: &c.k,
            v: &c.v,
            b: s.batch,
            h: s.heads,
            lq: s.lq,
            lk: s.lk,
            d: s.d,
            dv: s.dv,
            scale: s.scale,
            causal: s.causal,
            mask: c.mask.as_deref(),
        }
    }

    fn shape(batch: usize, heads: usize, lq: usize, lk: usize, d: usize, dv: usize) -> BwdShape {
        BwdShape {
            batch,
            heads,
            lq,
            lk,
            d,
            dv,
            scale: 1.0 / (d as f32).sqrt(),
            causal: false,
        }
    }

    fn bits(x: &[f32]) -> Vec<u32> {
        x.iter().map(|v| v.to_bits()).collect()
    }

    /// The emulated kernels reproduce `backward_sampled` bit for bit, whatever order the
    /// atomics place entries in, for every GPU-supported estimator, with noise, masks and
    /// causal rows.
    #[test]
    fn emulated_sampled_backward_equals_cpu_bitwise() {
        let specs = [
            "multinomial:8",
            "stratified:16",
            "topk:3:5",
            "multinomial:6+depol:0.2+readout:0.05:0.1",
            "stratified:8+damp:0.1+readout:0.03:0.02+mitigate",
            "adaptive:2:12",
            "multinomial:1",
        ];
        let mut checked = 0;
        for (ci, spec) in specs.iter().enumerate() {
            let spec: EstimatorSpec = spec.parse().unwrap();
            for (si, mut s) in [
                shape(2, 2, 17, 37, 20, 12),
                shape(1, 3, 9, 130, 64, 33),
                shape(1, 1, 40, 40, 8, 8),
                // B·H·Lk > 1024: the scan's threads take chunks of several keys.
                shape(1, 2, 9, 1300, 8, 8),
            ]
            .into_iter()
            .enumerate()
            {
                s.causal = si == 2;
                let c = case(100 + (ci * 7 + si) as u64, s, si == 0);
                let p = problem(&c);
                let fwd = mc::forward(&p, &spec, 1234 + ci as u64, true);
                let rows = fwd.rows.as_ref().unwrap();
                let (dq, dk, dv) =
                    mc::backward_sampled(&p, &spec, &fwd.out, &fwd.lse, rows, &c.dout);
                let ent = SampledEntries::from_records(rows);
                let n = ent.key.len();
                let mut g = Lcg(ci as u64 + 1);
                let mut scrambled: Vec<usize> = (0..n).collect();
                for i in (1..n).rev() {
                    let j = ((g.next() + 1.0) * 0.5 * i as f32) as usize % (i + 1);
                    scrambled.swap(i, j);
                }
                for arrival in [None, Some(scrambled.as_slice())] {
                    let (eq, ek, ev) = emulate_sampled_backward(
                        &s, &c.q, &c.k, &c.v, &fwd.out, &c.dout, &ent, arrival,
                    )
                    .unwrap();
                    assert_eq!(bits(&eq), bits(&dq), "{spec} {s:?}: dq");
                    assert_eq!(bits(&ek), bits(&dk), "{spec} {s:?}: dk");
                    assert_eq!(bits(&ev), bits(&dv), "{spec} {s:?}: dv");
                }
                // (One i.i.d. shot: ô = v_j, so its logit gradient is exactly zero.)
                let one_shot = spec.estimator.nominal_samples() == 1;
                assert!(
                    one_shot || dk.iter().any(|&x| x != 0.0),
                    "{spec}: trivial dk"
                );
                assert!(dv.iter().any(|&x| x != 0.0), "{spec}: trivial dv");
                checked += 1;
            }
        }
        assert_eq!(checked, specs.len() * 4);
    }

    /// `from_shots` (the host twin of `qattn_sb_from_shots`) builds exactly the entries the
    /// CPU's records give for noiseless multinomial and stratified rows.
    #[test]
    fn entries_from_shots_equal_entries_from_records() {
        for (spec, iid) in [
            ("multinomial:12", true),
            ("stratified:12", false),
            ("multinomial:1", true),
        ] {
            let spec: EstimatorSpec = spec.parse().unwrap();
            let mut s = shape(1, 2, 21, 50, 16, 16);
            s.causal = true;
            let c = case(7, s, true);
            let p = problem(&c);
            let fwd = mc::forward(&p, &spec, 99, true);
            let rows = fwd.rows.as_ref().unwrap();
            let n = spec.estimator.nominal_samples();
            let mut idx = Vec::new();
            for r in rows {
                if r.diag.samples.is_empty() {
                    idx.extend(std::iter::repeat_n(0u32, n));
                } else {
                    assert_eq!(r.diag.samples.len(), n);
                    idx.extend_from_slice(&r.diag.samples);
                }
            }
            let a = SampledEntries::from_shots(&idx, Some(&fwd.lse), n, iid).unwrap();
            let b = SampledEntries::from_records(rows);
            // from_records pads to the longest row; compare row by row.
            for r in 0..rows.len() {
                let (na, nb) = (a.nent[r] as usize, b.nent[r] as usize);
                assert_eq!(na, nb, "{spec}: row {r} entry count");
                let ra = r * a.slots..r * a.slots + na;
                let rb = r * b.slots..r * b.slots + nb;
                assert_eq!(a.key[ra.clone()], b.key[rb.clone()], "{spec}: row {r} keys");
                assert_eq!(bits(&a.cdv[ra.clone()]), bits(&b.cdv[rb.clone()]));
                assert_eq!(bits(&a.cds[ra]), bits(&b.cds[rb]));
            }
            assert!(SampledEntries::from_shots(&idx, None, 0, iid).is_err());
            if n > 1 {
                assert!(SampledEntries::from_shots(&idx[1..], None, n, iid).is_err());
            }
        }
    }
}

/// GPU tests: skip at run time (with a message) when no GPU is usable; run with
/// `--test-threads=1` on a GPU machine (`cargo test -p qattn-kernels --features cuda --lib
/// gpu_tests`).
#[cfg(all(test, feature = "cuda"))]
mod gpu_tests {
    #[test]
    fn gpu_matches_cpu() {
        crate::cuda::assert_self_check_passes(super::gpu_self_check);
    }
}
