//! Measurement noise on the index register and tensored readout mitigation.
//!
//! The key index j ∈ [0, Lk) is held in m = ⌈log2 Lk⌉ qubits (bit b of j is qubit b). One shot
//! goes through, in this order: global depolarizing (with probability λ the outcome is replaced by
//! a uniform draw over all 2^m basis states), amplitude damping on each qubit (|1⟩ → |0⟩ with
//! probability γ), then readout bit flips (0 read as 1 with ε01, 1 read as 0 with ε10). All three
//! act on computational-basis statistics as stochastic matrices, which is what [`Channel::analytic`]
//! applies. Phase damping (dephasing) only shrinks off-diagonal density-matrix elements, so it
//! leaves computational-basis statistics unchanged; qattn therefore has no `phase` term (see the
//! `phase_damping_does_not_change_outcomes` test, which applies it to a density matrix).
//!
//! Outcomes that do not name a key the estimator may use (≥ Lk, masked, beyond the causal limit,
//! or one of top-k's exact keys when sampling the tail) are discarded and counted; the estimate
//! uses the remaining shots (post-selection), and another round of shots is drawn if none is left.

use crate::philox::{SampleStream, Stream};
use crate::spec::Noise;

/// Number of index qubits for `lk` keys: ⌈log2 lk⌉ (0 for a single key).
pub fn index_qubits(lk: usize) -> u32 {
    if lk <= 1 {
        0
    } else {
        usize::BITS - (lk - 1).leading_zeros()
    }
}

/// The noise channel of one register of `qubits` qubits.
#[derive(Clone, Copy, Debug)]
pub struct Channel {
    /// Register width m.
    pub qubits: u32,
    /// The noise parameters.
    pub noise: Noise,
}

impl Channel {
    /// The channel for `lk` keys.
    pub fn new(noise: Noise, lk: usize) -> Self {
        Channel {
            qubits: index_qubits(lk),
            noise,
        }
    }

    /// Number of noise-stream uniforms one shot consumes.
    fn stride(&self) -> u64 {
        2 + 2 * u64::from(self.qubits)
    }

    /// Applies the channel to one shot whose ideal outcome is `ideal`; `shot` is the global shot
    /// number within the query's noise stream.
    #[inline]
    pub fn apply(&self, ideal: u32, stream: &SampleStream, shot: u64) -> u32 {
        let n = &self.noise;
        let base = shot * self.stride();
        let mut o = ideal;
        if n.depol > 0.0 && stream.uniform(Stream::Noise, base) < n.depol {
            o = if self.qubits == 0 {
                0
            } else {
                stream.bits(Stream::Noise, base + 1) >> (32 - self.qubits)
            };
        }
        let (e01, e10) = n.readout_or_zero();
        for b in 0..self.qubits {
            let bit = 1u32 << b;
            if n.damp > 0.0
                && o & bit != 0
                && stream.uniform(Stream::Noise, base + 2 + 2 * u64::from(b)) < n.damp
            {
                o &= !bit;
            }
            if n.readout.is_some() {
                let u = stream.uniform(Stream::Noise, base + 3 + 2 * u64::from(b));
                if o & bit == 0 {
                    if u < e01 {
                        o |= bit;
                    }
                } else if u < e10 {
                    o &= !bit;
                }
            }
        }
        o
    }

    /// Per-qubit damping matrix D (column = state before, row = after).
    fn damping(&self) -> [[f64; 2]; 2] {
        let g = self.noise.damp;
        [[1.0, g], [0.0, 1.0 - g]]
    }

    /// Per-qubit readout matrix R (column = state, row = reading).
    fn readout(&self) -> [[f64; 2]; 2] {
        let (e01, e10) = self.noise.readout_or_zero();
        [[1.0 - e01, e10], [e01, 1.0 - e10]]
    }

    /// The calibrated per-qubit confusion matrix M = R·D that readout mitigation inverts.
    pub fn confusion(&self) -> [[f64; 2]; 2] {
        mat_mul(self.readout(), self.damping())
    }

    /// The outcome distribution over all 2^m basis states for an ideal distribution `p` over
    /// keys (`p.len()` ≤ 2^m; the rest is zero): depolarizing, then damping, then readout.
    pub fn analytic(&self, p: &[f64]) -> Vec<f64> {
        let n = 1usize << self.qubits;
        let mut q = vec![0.0; n];
        q[..p.len()].copy_from_slice(p);
        let lam = self.noise.depol;
        if lam > 0.0 {
            for x in q.iter_mut() {
                *x = (1.0 - lam) * *x + lam / n as f64;
            }
        }
        apply_tensored(&mut q, self.qubits, self.damping());
        apply_tensored(&mut q, self.qubits, self.readout());
        q
    }

    /// Readout mitigation in place: applies the tensored inverse of [`Channel::confusion`] to a
    /// distribution (or histogram) over all 2^m outcomes. The result may have negative entries;
    /// callers clip and renormalise over the outcomes they can use.
    pub fn mitigate(&self, hist: &mut [f64]) {
        let m = self.confusion();
        let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
        let inv = [
            [m[1][1] / det, -m[0][1] / det],
            [-m[1][0] / det, m[0][0] / det],
        ];
        apply_tensored(hist, self.qubits, inv);
    }
}

fn mat_mul(a: [[f64; 2]; 2], b: [[f64; 2]; 2]) -> [[f64; 2]; 2] {
    let mut c = [[0.0; 2]; 2];
    for i in 0..2 {
        for j in 0..2 {
            c[i][j] = a[i][0] * b[0][j] + a[i][1] * b[1][j];
        }
    }
    c
}

/// Applies the same 2×2 matrix to every qubit of a distribution over 2^m outcomes.
fn apply_tensored(x: &mut [f64], qubits: u32, m: [[f64; 2]; 2]) {
    for b in 0..qubits {
        let bit = 1usize << b;
        for o in 0..x.len() {
            if o & bit == 0 {
                let (x0, x1) = (x[o], x[o | bit]);
                x[o] = m[0][0] * x0 + m[0][1] * x1;
                x[o | bit] = m[1][0] * x0 + m[1][1] * x1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qubit_counts() {
        assert_eq!(index_qubits(1), 0);
        assert_eq!(index_qubits(2), 1);
        assert_eq!(index_qubits(3), 2);
        assert_eq!(index_qubits(4), 2);
        assert_eq!(index_qubits(5), 3);
        assert_eq!(index_qubits(1024), 10);
    }

    #[test]
    fn analytic_is_a_distribution_and_mitigation_inverts_readout() {
        let noise = Noise {
            depol: 0.0,
            readout: Some((0.05, 0.1)),
            damp: 0.02,
            mitigate: true,
        };
        let ch = Channel::new(noise, 5);
        let p = [0.1, 0.2, 0.3, 0.25, 0.15];
        let mut q = ch.analytic(&p);
        assert!((q.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        ch.mitigate(&mut q);
        for (i, &x) in q.iter().enumerate() {
            let want = p.get(i).copied().unwrap_or(0.0);
            assert!((x - want).abs() < 1e-12, "outcome {i}: {x} vs {want}");
        }
    }

    /// Phase damping with parameter γ maps ρ → K0 ρ K0† + K1 ρ K1† with K0 = diag(1, √(1-γ)),
    /// K1 = diag(0, √γ) per qubit: the diagonal (the computational-basis distribution) is unchanged.
    #[test]
    fn phase_damping_does_not_change_outcomes() {
        // A single-qubit pure state with coherences: amplitudes (a, b).
        let (a, b) = (0.6f64, 0.8f64);
        let rho = [[a * a, a * b], [a * b, b * b]];
        let g = 0.3f64;
        let k0 = [1.0, (1.0 - g).sqrt()];
        let k1 = [0.0, g.sqrt()];
        let mut out = [[0.0; 2]; 2];
        for i in 0..2 {
            for j in 0..2 {
                out[i][j] = k0[i] * rho[i][j] * k0[j] + k1[i] * rho[i][j] * k1[j];
            }
        }
        assert!((out[0][0] - rho[0][0]).abs() < 1e-15);
        assert!((out[1][1] - rho[1][1]).abs() < 1e-15);
        assert!(out[0][1] < rho[0][1], "coherence must shrink");
    }
}
