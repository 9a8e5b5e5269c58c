//! Philox4x32-10 counter-based random numbers (Salmon et al., SC'11, as in Random123).
//!
//! Every random number qattn draws is a pure function of a counter and a key, so results do
//! not depend on thread count or scheduling, and the GPU kernels can reproduce the same stream.
//!
//! Counter layout used by the estimators (see [`SampleStream`]):
//! key = (seed low 32 bits, seed high 32 bits); counter = (block, query, head,
//! batch | stream << 24), where `block` indexes groups of four 32-bit outputs and `stream`
//! separates independent uses (ideal draws, noise) of the same (batch, head, query).

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

#[inline(always)]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = u64::from(a) * u64::from(b);
    ((p >> 32) as u32, p as u32)
}

/// One Philox4x32 block with 10 rounds.
#[inline]
pub fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = ctr;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        let (hi0, lo0) = mulhilo(M0, c[0]);
        let (hi1, lo1) = mulhilo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// Maps 32 random bits to a uniform in the open interval (0, 1), as an f64 (exact: x/2^32 + 2^-33).
#[inline(always)]
pub fn u32_to_open01(x: u32) -> f64 {
    (f64::from(x) + 0.5) * (1.0 / 4_294_967_296.0)
}

/// Independent streams drawn for one (batch, head, query).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Stream {
    /// Uniforms that pick the ideal (noiseless) measured key of each shot.
    Draw = 0,
    /// Uniforms that drive the measurement-noise channels of each shot.
    Noise = 1,
    /// Normal variates of the random hyperplanes of `lsh` (drawn with query index 0).
    Hash = 2,
}

/// The random stream of one (seed, batch, head, query): `uniform(stream, i)` is the i-th uniform.
#[derive(Clone, Copy, Debug)]
pub struct SampleStream {
    key: [u32; 2],
    query: u32,
    head: u32,
    batch: u32,
}

impl SampleStream {
    /// The stream for (seed, batch, head, query). Batch indices must be below 2^24.
    pub fn new(seed: u64, batch: usize, head: usize, query: usize) -> Self {
        Self {
            key: [seed as u32, (seed >> 32) as u32],
            query: query as u32,
            head: head as u32,
            batch: (batch as u32) & 0x00FF_FFFF,
        }
    }

    /// The i-th 32-bit word of `stream`.
    #[inline]
    pub fn bits(&self, stream: Stream, i: u64) -> u32 {
        let block = (i >> 2) as u32;
        let ctr = [
            block,
            self.query,
            self.head,
            self.batch | ((stream as u32) << 24),
        ];
        philox4x32_10(ctr, self.key)[(i & 3) as usize]
    }

    /// The i-th uniform in (0, 1) of `stream`.
    #[inline]
    pub fn uniform(&self, stream: Stream, i: u64) -> f64 {
        u32_to_open01(self.bits(stream, i))
    }

    /// Fills `out` with consecutive uniforms `start..start+out.len()` of `stream`
    /// (one Philox call per four values).
    pub fn fill_uniform(&self, stream: Stream, start: u64, out: &mut [f64]) {
        let mut i = 0usize;
        while i < out.len() {
            let idx = start + i as u64;
            let block = (idx >> 2) as u32;
            let ctr = [
                block,
                self.query,
                self.head,
                self.batch | ((stream as u32) << 24),
            ];
            let r = philox4x32_10(ctr, self.key);
            let mut lane = (idx & 3) as usize;
            while lane < 4 && i < out.len() {
                out[i] = u32_to_open01(r[lane]);
                lane += 1;
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Random123 tests/kat_vectors for philox4x32_10.
    #[test]
    fn random123_known_answers() {
        assert_eq!(
            philox4x32_10([0, 0, 0, 0], [0, 0]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn fill_matches_single_draws() {
        let s = SampleStream::new(42, 1, 2, 3);
        let mut buf = vec![0.0; 11];
        s.fill_uniform(Stream::Noise, 3, &mut buf);
        for (i, &u) in buf.iter().enumerate() {
            assert_eq!(u, s.uniform(Stream::Noise, 3 + i as u64));
            assert!(u > 0.0 && u < 1.0);
        }
        assert_ne!(s.uniform(Stream::Draw, 0), s.uniform(Stream::Noise, 0));
    }
}
