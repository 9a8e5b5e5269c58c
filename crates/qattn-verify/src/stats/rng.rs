//! A small seeded resampler on Philox4x32-10 ([`qattn_kernels::philox`]).
//!
//! Every number is a pure function of `(seed, stream, position)`: the `i`-th 32-bit word of a
//! stream is lane `i mod 4` of `philox4x32_10([⌊i/4⌋ low 32 bits, ⌊i/4⌋ high 32 bits, stream,
//! TAG], [seed low 32 bits, seed high 32 bits])`, where `TAG` = `0x5645_5246` ("VERF") keeps
//! these counters apart from the attention estimators' counters. The same seed therefore gives
//! the same resamples on every machine and thread count, and no `rand` crate is involved.

use qattn_kernels::philox::{philox4x32_10, u32_to_open01};

/// Separates the resampler's counters from the estimators' (`SampleStream`) counters.
const TAG: u32 = 0x5645_5246;

/// A seeded stream of unbiased indices, fair coins and uniforms.
///
/// ```
/// use qattn_verify::stats::Resampler;
/// let mut r = Resampler::new(7);
/// let i = r.index(10);
/// assert!(i < 10);
/// assert_eq!(Resampler::new(7).index(10), i);
/// ```
#[derive(Clone, Debug)]
pub struct Resampler {
    key: [u32; 2],
    stream: u32,
    block: u64,
    buf: [u32; 4],
    lane: usize,
}

impl Resampler {
    /// The stream 0 of `seed`.
    pub fn new(seed: u64) -> Self {
        Self::with_stream(seed, 0)
    }

    /// Stream `stream` of `seed`: streams of one seed are independent of each other.
    pub fn with_stream(seed: u64, stream: u32) -> Self {
        Self {
            key: [seed as u32, (seed >> 32) as u32],
            stream,
            block: 0,
            buf: [0; 4],
            lane: 4,
        }
    }

    /// The next 32 random bits.
    #[inline]
    pub fn next_u32(&mut self) -> u32 {
        if self.lane == 4 {
            let ctr = [
                self.block as u32,
                (self.block >> 32) as u32,
                self.stream,
                TAG,
            ];
            self.buf = philox4x32_10(ctr, self.key);
            self.block = self.block.wrapping_add(1);
            self.lane = 0;
        }
        let x = self.buf[self.lane];
        self.lane += 1;
        x
    }

    /// The next 64 random bits (two consecutive words, the first one high).
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let hi = u64::from(self.next_u32());
        (hi << 32) | u64::from(self.next_u32())
    }

    /// A uniform integer in `0..n`, exactly unbiased.
    ///
    /// Lemire's multiply-shift with rejection ("Fast random integer generation in an interval",
    /// ACM TOMS 2019): with 64 random bits `x`, `m = x·n` (128-bit); the result is `m >> 64`,
    /// and draws whose low half `m mod 2^64` falls below `2^64 mod n` are rejected and redrawn,
    /// which removes the bias exactly. `n = 0` (an empty range) returns 0.
    #[inline]
    pub fn index(&mut self, n: usize) -> usize {
        if n <= 1 {
            return 0;
        }
        let n = n as u64;
        let mut m = u128::from(self.next_u64()) * u128::from(n);
        if (m as u64) < n {
            let threshold = n.wrapping_neg() % n; // 2^64 mod n
            while (m as u64) < threshold {
                m = u128::from(self.next_u64()) * u128::from(n);
            }
        }
        (m >> 64) as usize
    }

    /// A fair coin: the top bit of the next 32-bit word (exactly probability ½).
    #[inline]
    pub fn coin(&mut self) -> bool {
        self.next_u32() >> 31 == 1
    }

    /// A uniform in the open interval (0, 1) from the next 32-bit word
    /// ([`u32_to_open01`]: `(x + ½) / 2^32`).
    #[inline]
    pub fn uniform(&mut self) -> f64 {
        u32_to_open01(self.next_u32())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_streams_differ() {
        let a: Vec<u32> = {
            let mut r = Resampler::new(3);
            (0..9).map(|_| r.next_u32()).collect()
        };
        let b: Vec<u32> = {
            let mut r = Resampler::new(3);
            (0..9).map(|_| r.next_u32()).collect()
        };
        assert_eq!(a, b);
        let mut c = Resampler::with_stream(3, 1);
        assert_ne!(a[0], c.next_u32());
        let mut d = Resampler::new(4);
        assert_ne!(a[0], d.next_u32());
        // word i is lane i mod 4 of block i / 4
        let blk = philox4x32_10([1, 0, 0, TAG], [3, 0]);
        assert_eq!(&a[4..8], &blk[..]);
    }

    #[test]
    fn index_is_in_range_and_roughly_uniform() {
        let mut r = Resampler::new(11);
        let n = 7;
        let draws = 70_000;
        let mut counts = [0usize; 7];
        for _ in 0..draws {
            let i = r.index(n);
            assert!(i < n);
            counts[i] += 1;
        }
        // chi-square with 6 df: 99.9% quantile is 22.46
        let e = draws as f64 / n as f64;
        let chi2: f64 = counts.iter().map(|&c| (c as f64 - e).powi(2) / e).sum();
        assert!(chi2 < 22.46, "chi2 = {chi2}, counts {counts:?}");
        assert_eq!(r.index(0), 0);
        assert_eq!(r.index(1), 0);
    }

    #[test]
    fn coin_is_fair() {
        let mut r = Resampler::new(5);
        let n = 100_000;
        let heads = (0..n).filter(|_| r.coin()).count() as f64;
        // 4.5 standard deviations of Binomial(n, 1/2)
        assert!((heads - n as f64 / 2.0).abs() < 4.5 * (n as f64 / 4.0).sqrt());
    }
}
