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
    /// (one Philox call per four values; eight calls side by side on AVX-512F).
    pub fn fill_uniform(&self, stream: Stream, start: u64, out: &mut [f64]) {
        #[cfg(target_arch = "x86_64")]
        if out.len() >= 32 && std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F.
            unsafe { self.fill_uniform_avx512(stream, start, out) };
            return;
        }
        self.fill_uniform_scalar(stream, start, out);
    }

    /// [`Self::fill_uniform`] one Philox block at a time.
    fn fill_uniform_scalar(&self, stream: Stream, start: u64, out: &mut [f64]) {
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

#[cfg(target_arch = "x86_64")]
impl SampleStream {
    /// [`Self::fill_uniform`] with eight Philox blocks per step, one per 64-bit lane (the
    /// product of two 32-bit words is exact in a lane, so the rounds are the scalar ones).
    /// Whole aligned runs of 32 uniforms go through the vector path, the ends through the
    /// scalar one; every value is the scalar path's, bit for bit.
    #[target_feature(enable = "avx512f,avx2")]
    unsafe fn fill_uniform_avx512(&self, stream: Stream, start: u64, out: &mut [f64]) {
        use std::arch::x86_64::*;
        // The first index at or after `start` that begins a run of 8 blocks (32 uniforms).
        let first = start.next_multiple_of(32);
        let head = ((first - start) as usize).min(out.len());
        self.fill_uniform_scalar(stream, start, &mut out[..head]);
        let mut i = head;
        let word3 = self.batch | ((stream as u32) << 24);
        let lanes = _mm512_set1_epi64(0xFFFF_FFFF);
        let m0 = _mm512_set1_epi64(i64::from(M0));
        let m1 = _mm512_set1_epi64(i64::from(M1));
        let scale = _mm512_set1_pd(1.0 / 4_294_967_296.0);
        let half = _mm512_set1_pd(0.5);
        while out.len() - i >= 32 {
            let block0 = ((start + i as u64) >> 2) as u32;
            let mut c0 = _mm512_add_epi64(
                _mm512_set1_epi64(i64::from(block0)),
                _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7),
            );
            c0 = _mm512_and_si512(c0, lanes);
            let mut c1 = _mm512_set1_epi64(i64::from(self.query));
            let mut c2 = _mm512_set1_epi64(i64::from(self.head));
            let mut c3 = _mm512_set1_epi64(i64::from(word3));
            let mut k = self.key;
            for round in 0..10 {
                if round > 0 {
                    k[0] = k[0].wrapping_add(W0);
                    k[1] = k[1].wrapping_add(W1);
                }
                let p0 = _mm512_mul_epu32(m0, c0);
                let p1 = _mm512_mul_epu32(m1, c2);
                let hi0 = _mm512_srli_epi64::<32>(p0);
                let hi1 = _mm512_srli_epi64::<32>(p1);
                let n0 = _mm512_xor_si512(
                    _mm512_xor_si512(hi1, c1),
                    _mm512_set1_epi64(i64::from(k[0])),
                );
                let n2 = _mm512_xor_si512(
                    _mm512_xor_si512(hi0, c3),
                    _mm512_set1_epi64(i64::from(k[1])),
                );
                c1 = _mm512_and_si512(p1, lanes);
                c3 = _mm512_and_si512(p0, lanes);
                c0 = n0;
                c2 = n2;
            }
            // Lane b holds block b's words (c0, c1, c2, c3); uniform 4b + w is word w.
            let mut words = [[0u64; 8]; 4];
            // SAFETY: each store writes 8 u64 into one row of `words`; the loads below read
            // `out[i..i + 32]`, in bounds by the loop condition.
            unsafe {
                for (row, c) in words.iter_mut().zip([c0, c1, c2, c3]) {
                    _mm512_storeu_si512(row.as_mut_ptr().cast(), c);
                }
                let mut v = [0.0f64; 32];
                for (w, row) in words.iter().enumerate() {
                    let x = _mm512_cvtepu32_pd(_mm512_cvtepi64_epi32(_mm512_loadu_si512(
                        row.as_ptr().cast(),
                    )));
                    let u = _mm512_mul_pd(_mm512_add_pd(x, half), scale);
                    let mut lane = [0.0f64; 8];
                    _mm512_storeu_pd(lane.as_mut_ptr(), u);
                    for (b, &x) in lane.iter().enumerate() {
                        v[4 * b + w] = x;
                    }
                }
                out[i..i + 32].copy_from_slice(&v);
            }
            i += 32;
        }
        self.fill_uniform_scalar(stream, start + i as u64, &mut out[i..]);
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

    /// The dispatched fill (eight blocks side by side where AVX-512F is present) gives the
    /// scalar path's values for every start and length around the run boundaries.
    #[test]
    fn vector_fill_matches_scalar_fill() {
        for (seed, batch) in [(7u64, 0usize), (u64::MAX, 0x00FF_FFFF), (1 << 40, 3)] {
            let s = SampleStream::new(seed, batch, 5, 1234);
            for start in [0u64, 1, 3, 4, 31, 32, 33, 100, (1 << 34) - 40] {
                for len in [0usize, 1, 31, 32, 33, 64, 65, 100, 257] {
                    let mut got = vec![0.0; len];
                    let mut want = vec![0.0; len];
                    s.fill_uniform(Stream::Draw, start, &mut got);
                    s.fill_uniform_scalar(Stream::Draw, start, &mut want);
                    assert_eq!(got, want, "seed {seed}, start {start}, len {len}");
                    for (i, &u) in got.iter().enumerate().step_by(7) {
                        assert_eq!(u, s.uniform(Stream::Draw, start + i as u64));
                    }
                }
            }
        }
    }
}
