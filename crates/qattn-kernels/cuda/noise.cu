// Measurement-noise channels on sampled key indices (issue 8), bit-identical to
// src/noise.rs `Channel::apply`.
//
// One thread per (row, shot). row = bh * lq + query, bh = batch * heads + head; the shot's
// global number within its query's Noise stream is `shot_base + shot` (the CPU uses
// round * n + s). The Philox counters are exactly src/philox.rs `SampleStream::bits(Noise, i)`:
//   key = (seed lo, seed hi), counter = (i >> 2, query, head, (batch & 0xFFFFFF) | 1 << 24),
//   word i & 3; uniforms are (x + 0.5) / 2^32 in f64 (exact, so no rounding-mode concerns).
// Per shot the channel consumes stride = 2 + 2m words from base = shot * stride:
//   base: depolarise?  base+1: replacement outcome (top m bits)
//   base+2+2b: damping of qubit b   base+3+2b: readout flip of qubit b.
// Only integer and exactly representable f64 arithmetic is used, so --use_fast_math cannot
// change the result.
//
// Readout mitigation is not done here: it is the tensored inverse of a 2x2 confusion matrix
// applied to the 2^m-outcome histogram of a query (src/noise.rs `Channel::mitigate`), which the
// host does on the noisy outcomes this kernel returns.

#include <stdint.h>

namespace {

constexpr uint32_t PHILOX_M0 = 0xD2511F53u;
constexpr uint32_t PHILOX_M1 = 0xCD9E8D57u;
constexpr uint32_t PHILOX_W0 = 0x9E3779B9u;
constexpr uint32_t PHILOX_W1 = 0xBB67AE85u;

__device__ __forceinline__ uint4 philox4x32_10(uint4 c, uint32_t k0, uint32_t k1) {
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k0 += PHILOX_W0;
            k1 += PHILOX_W1;
        }
        const uint32_t hi0 = __umulhi(PHILOX_M0, c.x);
        const uint32_t lo0 = PHILOX_M0 * c.x;
        const uint32_t hi1 = __umulhi(PHILOX_M1, c.z);
        const uint32_t lo1 = PHILOX_M1 * c.z;
        c = make_uint4(hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0);
    }
    return c;
}

// The Noise stream (stream id 1) of one (seed, batch, head, query), caching the last block.
struct NoiseStream {
    uint32_t k0, k1, query, head, batch_word;
    uint32_t cached_block;
    bool have;
    uint4 words;

    __device__ NoiseStream(unsigned long long seed, uint32_t batch, uint32_t head_, uint32_t query_)
        : k0((uint32_t)seed), k1((uint32_t)(seed >> 32)), query(query_), head(head_),
          batch_word((batch & 0x00FFFFFFu) | (1u << 24)), cached_block(0), have(false) {}

    __device__ uint32_t bits(unsigned long long i) {
        const uint32_t block = (uint32_t)(i >> 2);
        if (!have || block != cached_block) {
            words = philox4x32_10(make_uint4(block, query, head, batch_word), k0, k1);
            cached_block = block;
            have = true;
        }
        switch ((uint32_t)(i & 3)) {
            case 0: return words.x;
            case 1: return words.y;
            case 2: return words.z;
            default: return words.w;
        }
    }

    __device__ double uniform(unsigned long long i) {
        return ((double)bits(i) + 0.5) * (1.0 / 4294967296.0);
    }
};

}  // namespace

// ideal/outcome: [rows * shots] (row-major: row r's shots are contiguous).
// usable (may be null): 1 when the noisy outcome names a key the estimator may use
// (< keff, not masked); top-k's exact keys are excluded by the caller.
// mask (may be null): [batch, lk], nonzero = keep. flags: bit0 readout on, bit1 causal.
extern "C" __global__ void qattn_noise_apply(
    const uint32_t* __restrict__ ideal, uint32_t* __restrict__ outcome,
    uint8_t* __restrict__ usable, const uint8_t* __restrict__ mask,
    uint32_t rows, uint32_t shots, unsigned long long shot_base, unsigned long long seed,
    uint32_t heads, uint32_t lq, uint32_t lk, uint32_t qubits,
    double depol, double e01, double e10, double damp, uint32_t flags) {
    const unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned long long total = (unsigned long long)rows * shots;
    if (t >= total) return;
    const uint32_t row = (uint32_t)(t / shots);
    const uint32_t s = (uint32_t)(t % shots);
    const uint32_t query = row % lq;
    const uint32_t bh = row / lq;
    const uint32_t head = bh % heads;
    const uint32_t batch = bh / heads;
    NoiseStream st(seed, batch, head, query);
    const unsigned long long stride = 2ull + 2ull * qubits;
    const unsigned long long base = (shot_base + s) * stride;
    const bool readout = (flags & 1u) != 0;
    uint32_t o = ideal[t];
    if (depol > 0.0 && st.uniform(base) < depol) {
        o = qubits == 0 ? 0u : (st.bits(base + 1) >> (32 - qubits));
    }
    for (uint32_t b = 0; b < qubits; ++b) {
        const uint32_t bit = 1u << b;
        if (damp > 0.0 && (o & bit) != 0 && st.uniform(base + 2 + 2ull * b) < damp) {
            o &= ~bit;
        }
        if (readout) {
            const double u = st.uniform(base + 3 + 2ull * b);
            if ((o & bit) == 0) {
                if (u < e01) o |= bit;
            } else if (u < e10) {
                o &= ~bit;
            }
        }
    }
    outcome[t] = o;
    if (usable != nullptr) {
        const bool causal = (flags & 2u) != 0;
        const uint32_t keff = causal ? min(lk, query + 1) : lk;
        bool ok = o < keff;
        if (ok && mask != nullptr) ok = mask[(unsigned long long)batch * lk + o] != 0;
        usable[t] = ok ? 1 : 0;
    }
}
