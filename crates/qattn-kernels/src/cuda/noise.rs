//! Measurement-noise channels on the GPU (`cuda/noise.cu`): depolarising, amplitude damping and
//! readout flips applied to sampled key indices exactly as [`crate::noise::Channel::apply`]
//! does — the same Philox4x32-10 Noise stream and the same counters per shot — so the same seed
//! gives the same noisy indices on both.
//!
//! One GPU thread handles one (row, shot): thread t = blockIdx.x·blockDim.x + threadIdx.x is
//! row t / shots, shot t % shots; row = bh·Lq + query, bh = batch·H + head; the shot's number
//! in its query's Noise stream is `shot_base + shot` (the CPU's `round·n + s`), and it uses the
//! Noise-stream words `(shot_base + shot)·(2 + 2m) + …` (m index qubits). The kernel also flags
//! the outcomes that name a usable key (< the causal limit and not masked); excluding top-k's
//! exact keys is the caller's job.
//!
//! Readout mitigation stays on the host: it is the tensored inverse of a 2×2 confusion matrix
//! applied to each query's 2^m-outcome histogram ([`crate::noise::Channel::mitigate`]), a small
//! O(m·2^m) operation on the outcomes this kernel returns.
//!
//! [`emulate_noise_kernel`] runs the kernel's body on the host, thread by thread, calling
//! Philox directly with the counters the kernel builds; the tests check it against
//! `Channel::apply`.

use crate::error::{Error, Result};
use crate::noise::index_qubits;
use crate::philox::philox4x32_10;
use crate::spec::Noise;

/// Threads per block of `qattn_noise_apply`.
pub const NOISE_BLOCK: u32 = 256;

/// Where a batch of shots sits: `rows = batch·heads·lq` rows of `shots` shots each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoiseLayout {
    /// Batch size B.
    pub batch: usize,
    /// Heads per batch element H.
    pub heads: usize,
    /// Queries per head.
    pub lq: usize,
    /// Keys per head (sets the register width m = ⌈log2 Lk⌉).
    pub lk: usize,
    /// Shots per row.
    pub shots: usize,
    /// Causal masking: query i may only use keys j ≤ i.
    pub causal: bool,
}

impl NoiseLayout {
    /// Number of rows, B·H·Lq.
    pub fn rows(&self) -> usize {
        self.batch * self.heads * self.lq
    }

    pub(crate) fn check(&self, ideal: usize, mask: Option<&[u8]>) -> Result<()> {
        let want = self.rows() * self.shots;
        if ideal != want {
            return Err(Error::Options(format!(
                "cuda::noise: {ideal} ideal indices given, layout {self:?} needs {want}"
            )));
        }
        if let Some(m) = mask
            && m.len() != self.batch * self.lk
        {
            return Err(Error::Options(format!(
                "cuda::noise: mask has {} entries, expected batch·lk = {}",
                m.len(),
                self.batch * self.lk
            )));
        }
        if self.batch >= 1 << 24 || self.lq > u32::MAX as usize || self.lk > u32::MAX as usize {
            return Err(Error::Options(format!(
                "cuda::noise: layout {self:?} exceeds the counter layout (batch < 2^24, lengths < 2^32)"
            )));
        }
        Ok(())
    }
}

/// Noisy outcomes of a batch of shots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NoisyShots {
    /// The noisy outcome of each shot (may name no key: ≥ Lk, masked, beyond the causal limit).
    pub outcome: Vec<u32>,
    /// 1 where the outcome names a usable key (below the causal limit and not masked).
    pub usable: Vec<u8>,
}

/// The kernel's scalar parameters for a noise model, in the order `qattn_noise_apply` takes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct NoiseParams {
    pub(crate) qubits: u32,
    pub(crate) depol: f64,
    pub(crate) e01: f64,
    pub(crate) e10: f64,
    pub(crate) damp: f64,
    /// bit 0: readout on; bit 1: causal.
    pub(crate) flags: u32,
}

impl NoiseParams {
    pub(crate) fn new(noise: &Noise, layout: &NoiseLayout) -> Self {
        let (e01, e10) = noise.readout_or_zero();
        NoiseParams {
            qubits: index_qubits(layout.lk),
            depol: noise.depol,
            e01,
            e10,
            damp: noise.damp,
            flags: u32::from(noise.readout.is_some()) | (u32::from(layout.causal) << 1),
        }
    }
}

/// The Noise stream of one (seed, batch, head, query) as the kernel's `NoiseStream` builds it:
/// key (seed lo, seed hi), counter (word >> 2, query, head, (batch & 0xFFFFFF) | 1 << 24),
/// caching the last Philox block.
struct KernelNoiseStream {
    key: [u32; 2],
    ctr_tail: [u32; 3],
    cached: Option<(u32, [u32; 4])>,
}

impl KernelNoiseStream {
    fn new(seed: u64, batch: u32, head: u32, query: u32) -> Self {
        KernelNoiseStream {
            key: [seed as u32, (seed >> 32) as u32],
            ctr_tail: [query, head, (batch & 0x00FF_FFFF) | (1 << 24)],
            cached: None,
        }
    }

    fn bits(&mut self, i: u64) -> u32 {
        let block = (i >> 2) as u32;
        let words = match self.cached {
            Some((b, w)) if b == block => w,
            _ => {
                let c = self.ctr_tail;
                let w = philox4x32_10([block, c[0], c[1], c[2]], self.key);
                self.cached = Some((block, w));
                w
            }
        };
        words[(i & 3) as usize]
    }

    fn uniform(&mut self, i: u64) -> f64 {
        (f64::from(self.bits(i)) + 0.5) * (1.0 / 4_294_967_296.0)
    }
}

/// Host emulation of `qattn_noise_apply`: walks the launch grid (blocks of [`NOISE_BLOCK`]
/// threads) and executes each thread's body with the kernel's indexing and Philox counters.
pub fn emulate_noise_kernel(
    ideal: &[u32],
    layout: &NoiseLayout,
    noise: &Noise,
    seed: u64,
    shot_base: u64,
    mask: Option<&[u8]>,
) -> Result<NoisyShots> {
    layout.check(ideal.len(), mask)?;
    let prm = NoiseParams::new(noise, layout);
    let total = (layout.rows() * layout.shots) as u64;
    let mut res = NoisyShots {
        outcome: vec![0; total as usize],
        usable: vec![0; total as usize],
    };
    let grid = total.div_ceil(u64::from(NOISE_BLOCK));
    let (shots, lq, heads, lk) = (
        layout.shots as u64,
        layout.lq as u64,
        layout.heads as u64,
        layout.lk as u32,
    );
    for block in 0..grid {
        for thread in 0..u64::from(NOISE_BLOCK) {
            let t = block * u64::from(NOISE_BLOCK) + thread;
            if t >= total {
                break;
            }
            let row = t / shots;
            let s = t % shots;
            let query = (row % lq) as u32;
            let bh = row / lq;
            let head = (bh % heads) as u32;
            let batch = (bh / heads) as u32;
            let mut st = KernelNoiseStream::new(seed, batch, head, query);
            let stride = 2 + 2 * u64::from(prm.qubits);
            let base = (shot_base + s) * stride;
            let mut o = ideal[t as usize];
            if prm.depol > 0.0 && st.uniform(base) < prm.depol {
                o = if prm.qubits == 0 {
                    0
                } else {
                    st.bits(base + 1) >> (32 - prm.qubits)
                };
            }
            for b in 0..prm.qubits {
                let bit = 1u32 << b;
                if prm.damp > 0.0
                    && o & bit != 0
                    && st.uniform(base + 2 + 2 * u64::from(b)) < prm.damp
                {
                    o &= !bit;
                }
                if prm.flags & 1 != 0 {
                    let u = st.uniform(base + 3 + 2 * u64::from(b));
                    if o & bit == 0 {
                        if u < prm.e01 {
                            o |= bit;
                        }
                    } else if u < prm.e10 {
                        o &= !bit;
                    }
                }
            }
            res.outcome[t as usize] = o;
            let keff = if prm.flags & 2 != 0 {
                lk.min(query + 1)
            } else {
                lk
            };
            let mut ok = o < keff;
            if ok && let Some(m) = mask {
                ok = m[batch as usize * layout.lk + o as usize] != 0;
            }
            res.usable[t as usize] = u8::from(ok);
        }
    }
    Ok(res)
}

/// The CPU reference: [`crate::noise::Channel::apply`] on every (row, shot) with the row's
/// [`crate::philox::SampleStream`], plus the same usability flag.
pub fn cpu_noise_reference(
    ideal: &[u32],
    layout: &NoiseLayout,
    noise: &Noise,
    seed: u64,
    shot_base: u64,
    mask: Option<&[u8]>,
) -> Result<NoisyShots> {
    use crate::noise::Channel;
    use crate::philox::SampleStream;
    layout.check(ideal.len(), mask)?;
    let ch = Channel::new(*noise, layout.lk);
    let mut res = NoisyShots::default();
    for row in 0..layout.rows() {
        let query = row % layout.lq;
        let bh = row / layout.lq;
        let (batch, head) = (bh / layout.heads, bh % layout.heads);
        let stream = SampleStream::new(seed, batch, head, query);
        let keff = if layout.causal {
            layout.lk.min(query + 1)
        } else {
            layout.lk
        };
        for s in 0..layout.shots {
            let o = ch.apply(ideal[row * layout.shots + s], &stream, shot_base + s as u64);
            let ok =
                (o as usize) < keff && mask.is_none_or(|m| m[batch * layout.lk + o as usize] != 0);
            res.outcome.push(o);
            res.usable.push(u8::from(ok));
        }
    }
    Ok(res)
}

#[cfg(feature = "cuda")]
pub use device::{apply_noise, gpu_self_check};

#[cfg(feature = "cuda")]
mod device {
    use super::*;
    use crate::cuda::GpuContext;
    use crate::cuda::backward::CheckLine;
    use crate::cuda::gpu::cuda_err;
    use crate::cudarc::driver::{LaunchConfig, PushKernelArg};

    /// Applies the noise channel to `ideal` [rows, shots] on the GPU (`qattn_noise_apply`):
    /// the same outcomes as [`crate::noise::Channel::apply`] for the same seed, and the
    /// usability flag of each (see the module docs). `shot_base` is the number of the first
    /// shot of each row in its Noise stream (0 for the first round of draws, round·S later).
    pub fn apply_noise(
        ctx: &GpuContext,
        ideal: &[u32],
        layout: &NoiseLayout,
        noise: &Noise,
        seed: u64,
        shot_base: u64,
        mask: Option<&[u8]>,
    ) -> Result<NoisyShots> {
        layout.check(ideal.len(), mask)?;
        let total = ideal.len();
        if total == 0 {
            return Ok(NoisyShots::default());
        }
        if total as u64 > u64::from(u32::MAX) * u64::from(NOISE_BLOCK) {
            return Err(Error::Options(format!(
                "cuda::noise: {total} shots exceed one launch"
            )));
        }
        let prm = NoiseParams::new(noise, layout);
        let s = ctx.stream();
        let d_ideal = s
            .clone_htod(ideal)
            .map_err(cuda_err("cuda::noise: upload of ideal indices"))?;
        let mut d_out = s
            .alloc_zeros::<u32>(total)
            .map_err(cuda_err("cuda::noise: alloc"))?;
        let mut d_ok = s
            .alloc_zeros::<u8>(total)
            .map_err(cuda_err("cuda::noise: alloc"))?;
        let d_mask = match mask {
            Some(m) => Some(
                s.clone_htod(m)
                    .map_err(cuda_err("cuda::noise: upload of mask"))?,
            ),
            None => None,
        };
        let null = 0u64;
        let (rows, shots, heads, lq, lk) = (
            layout.rows() as u32,
            layout.shots as u32,
            layout.heads as u32,
            layout.lq as u32,
            layout.lk as u32,
        );
        let f = ctx.function("noise", "qattn_noise_apply")?;
        let mut a = s.launch_builder(&f);
        a.arg(&d_ideal).arg(&mut d_out).arg(&mut d_ok);
        match &d_mask {
            Some(m) => a.arg(m),
            None => a.arg(&null),
        };
        a.arg(&rows)
            .arg(&shots)
            .arg(&shot_base)
            .arg(&seed)
            .arg(&heads)
            .arg(&lq)
            .arg(&lk)
            .arg(&prm.qubits)
            .arg(&prm.depol)
            .arg(&prm.e01)
            .arg(&prm.e10)
            .arg(&prm.damp)
            .arg(&prm.flags);
        let cfg = LaunchConfig {
            grid_dim: (total.div_ceil(NOISE_BLOCK as usize) as u32, 1, 1),
            block_dim: (NOISE_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: matches qattn_noise_apply(ideal, outcome, usable, mask, rows, shots,
        // shot_base, seed, heads, lq, lk, qubits, depol, e01, e10, damp, flags) in
        // cuda/noise.cu; buffers hold rows·shots elements, the mask batch·lk.
        unsafe { a.launch(cfg) }.map_err(|e| Error::Cuda {
            what: "launch of kernel `qattn_noise_apply`".into(),
            reason: e.to_string(),
        })?;
        Ok(NoisyShots {
            outcome: s
                .clone_dtoh(&d_out)
                .map_err(cuda_err("cuda::noise: download of outcomes"))?,
            usable: s
                .clone_dtoh(&d_ok)
                .map_err(cuda_err("cuda::noise: download of usable flags"))?,
        })
    }

    /// GPU-vs-CPU check of the noise kernel: identical noisy outcomes and usability flags to
    /// `Channel::apply` for several channels, shapes, masks and shot offsets.
    pub fn gpu_self_check(ctx: &GpuContext) -> Result<Vec<CheckLine>> {
        let mut lines = Vec::new();
        let channels = [
            Noise {
                depol: 0.2,
                readout: None,
                damp: 0.0,
                mitigate: false,
            },
            Noise {
                depol: 0.0,
                readout: Some((0.05, 0.1)),
                damp: 0.1,
                mitigate: false,
            },
            Noise {
                depol: 0.1,
                readout: Some((0.02, 0.03)),
                damp: 0.05,
                mitigate: true,
            },
        ];
        let layouts = [
            NoiseLayout {
                batch: 2,
                heads: 4,
                lq: 100,
                lk: 1000,
                shots: 32,
                causal: false,
            },
            NoiseLayout {
                batch: 1,
                heads: 2,
                lq: 64,
                lk: 64,
                shots: 7,
                causal: true,
            },
            NoiseLayout {
                batch: 1,
                heads: 1,
                lq: 3,
                lk: 1,
                shots: 5,
                causal: false,
            },
        ];
        let mut state = 5u64;
        for (li, layout) in layouts.iter().enumerate() {
            let ideal: Vec<u32> = (0..layout.rows() * layout.shots)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 33) % layout.lk as u64) as u32
                })
                .collect();
            let mask: Vec<u8> = (0..layout.batch * layout.lk)
                .map(|i| u8::from(i % 4 != 1))
                .collect();
            let mask = (li == 0).then_some(mask.as_slice());
            for noise in &channels {
                for base in [0u64, 3 * layout.shots as u64] {
                    let seed = 0x1234_5678_9abc_def0 ^ ((li as u64) << 8) ^ base;
                    let want = cpu_noise_reference(&ideal, layout, noise, seed, base, mask)?;
                    let got = apply_noise(ctx, &ideal, layout, noise, seed, base, mask)?;
                    let diff_o = got
                        .outcome
                        .iter()
                        .zip(&want.outcome)
                        .filter(|(a, b)| a != b)
                        .count();
                    let diff_u = got
                        .usable
                        .iter()
                        .zip(&want.usable)
                        .filter(|(a, b)| a != b)
                        .count();
                    let changed = want
                        .outcome
                        .iter()
                        .zip(&ideal)
                        .filter(|(a, b)| a != b)
                        .count();
                    lines.push(CheckLine {
                        name: format!("noise kernel {noise:?} {layout:?} shot_base {base}"),
                        passed: diff_o == 0 && diff_u == 0 && got.outcome.len() == ideal.len(),
                        detail: format!(
                            "{diff_o} outcomes and {diff_u} flags differ of {} (noise changed {changed}); required: identical",
                            ideal.len()
                        ),
                    });
                }
            }
        }
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noises() -> Vec<Noise> {
        let n = |depol, readout, damp| Noise {
            depol,
            readout,
            damp,
            mitigate: false,
        };
        vec![
            n(0.3, None, 0.0),
            n(0.0, Some((0.05, 0.1)), 0.0),
            n(0.0, None, 0.2),
            n(0.15, Some((0.02, 0.03)), 0.1),
            n(1.0, Some((0.5, 0.5)), 0.9),
        ]
    }

    /// The kernel's thread → (row, shot) mapping and Philox counters reproduce
    /// `Channel::apply`'s outcomes exactly, for many seeds, shapes (including Lk = 1, non-powers
    /// of two, masks, causal rows) and shot offsets (later rounds).
    #[test]
    fn emulated_kernel_equals_channel_apply() {
        let mut state = 77u64;
        let mut next = |m: u64| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % m
        };
        let mut changed = 0usize;
        let mut total = 0usize;
        for (li, (batch, heads, lq, lk, shots)) in [
            (1, 1, 1, 1, 5),
            (2, 3, 7, 37, 9),
            (1, 2, 65, 64, 16),
            (3, 1, 5, 1000, 33),
            (1, 1, 300, 2, 3),
        ]
        .into_iter()
        .enumerate()
        {
            for (ni, noise) in noises().into_iter().enumerate() {
                for (causal, masked) in [(false, false), (true, true)] {
                    let layout = NoiseLayout {
                        batch,
                        heads,
                        lq,
                        lk,
                        shots,
                        causal,
                    };
                    let ideal: Vec<u32> = (0..layout.rows() * shots)
                        .map(|_| next(lk as u64) as u32)
                        .collect();
                    let mask: Option<Vec<u8>> =
                        masked.then(|| (0..batch * lk).map(|i| u8::from(i % 3 != 1)).collect());
                    let seed = next(u64::MAX) ^ (((li * 10 + ni) as u64) << 40);
                    for shot_base in [0u64, shots as u64 * 3] {
                        let cpu = cpu_noise_reference(
                            &ideal,
                            &layout,
                            &noise,
                            seed,
                            shot_base,
                            mask.as_deref(),
                        )
                        .unwrap();
                        let emu = emulate_noise_kernel(
                            &ideal,
                            &layout,
                            &noise,
                            seed,
                            shot_base,
                            mask.as_deref(),
                        )
                        .unwrap();
                        assert_eq!(emu, cpu, "{layout:?} {noise:?} base {shot_base}");
                        changed += emu
                            .outcome
                            .iter()
                            .zip(&ideal)
                            .filter(|(a, b)| a != b)
                            .count();
                        total += ideal.len();
                    }
                }
            }
        }
        // The channels really act (otherwise the comparison would be vacuous).
        assert!(
            changed > total / 10,
            "{changed} of {total} outcomes changed"
        );
    }

    #[test]
    fn layout_errors_name_the_problem() {
        let layout = NoiseLayout {
            batch: 1,
            heads: 1,
            lq: 2,
            lk: 4,
            shots: 3,
            causal: false,
        };
        let e = emulate_noise_kernel(&[0; 5], &layout, &Noise::default(), 1, 0, None).unwrap_err();
        assert!(e.to_string().contains("5 ideal indices"), "{e}");
        let e = emulate_noise_kernel(&[0; 6], &layout, &Noise::default(), 1, 0, Some(&[1; 3]))
            .unwrap_err();
        assert!(e.to_string().contains("mask has 3"), "{e}");
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
