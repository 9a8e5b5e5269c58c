// Monte-Carlo sampling forward (multinomial:S, stratified:S) for qattn-kernels.
//
// Compiled WITHOUT fast math and with -fmad=false: every operation below is the one the CPU
// path (src/cpu/mc.rs, src/math.rs, src/philox.rs) performs, in the same order, so the same
// seed gives the same sampled indices (src/cuda/emu.rs is the host-side emulation that the CPU
// tests compare with the CPU estimator).
//
// Two kernels per chunk of (head, query) rows:
//   mc_logits  — logits l_ij = scale * fma-chain_d(q_id * k_jd) (what the CPU gemm computes),
//                masked keys -inf, into a scratch [rows, Lk] f32 buffer (tiled 64x64).
//   mc_sample  — one block per row: max, w = exp(l - max) in place, 64-key block sums in
//                16 lanes, f64 prefix over blocks (one thread, left to right), then one thread
//                per shot: Philox4x32-10 uniform, target, binary search over the block ends,
//                sub-blocks of 16 (pairwise sums), keys; then counts in key order and the
//                gather-accumulate of V.

#include <stdint.h>

#define BLOCK 64
#define SUBB 16

// ---------------------------------------------------------------- Philox4x32-10 (src/philox.rs)
__device__ __forceinline__ void philox4x32_10(uint32_t c[4], uint32_t k0, uint32_t k1) {
    const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round > 0) { k0 += W0; k1 += W1; }
        uint32_t hi0 = __umulhi(M0, c[0]), lo0 = M0 * c[0];
        uint32_t hi1 = __umulhi(M1, c[2]), lo1 = M1 * c[2];
        uint32_t n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
        c[0] = n0; c[1] = lo1; c[2] = n2; c[3] = lo0;
    }
}

// The i-th uniform in (0,1) of the Draw stream (stream 0) of (seed, batch, head, query).
__device__ __forceinline__ double draw_uniform(unsigned long long seed, uint32_t batch,
                                               uint32_t head, uint32_t query, uint64_t i) {
    uint32_t c[4] = {(uint32_t)(i >> 2), query, head, batch & 0x00FFFFFFu};
    philox4x32_10(c, (uint32_t)seed, (uint32_t)(seed >> 32));
    uint32_t x = c[i & 3];
    return ((double)x + 0.5) * (1.0 / 4294967296.0);
}

// ---------------------------------------------------------------- exp (src/math.rs exp_approx)
__device__ __forceinline__ float exp_approx(float x) {
    const float LOG2E = 1.44269504088896340736f;
    const float MAGIC = 12582912.0f;
    const float LN2_HI = 0.693359375f;
    const float LN2_LO = -2.12194440e-4f;
    float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float t = __fadd_rn(__fmul_rn(xc, LOG2E), MAGIC);
    float n = __fsub_rn(t, MAGIC);
    int ni = __float_as_int(t) - 0x4B400000;
    float r = __fsub_rn(__fsub_rn(xc, __fmul_rn(n, LN2_HI)), __fmul_rn(n, LN2_LO));
    float p = 1.9875691e-4f;
    p = __fadd_rn(__fmul_rn(p, r), 1.3981999e-3f);
    p = __fadd_rn(__fmul_rn(p, r), 8.333452e-3f);
    p = __fadd_rn(__fmul_rn(p, r), 4.1665796e-2f);
    p = __fadd_rn(__fmul_rn(p, r), 1.6666665e-1f);
    p = __fadd_rn(__fmul_rn(p, r), 0.5f);
    float y = __fadd_rn(__fadd_rn(__fmul_rn(__fmul_rn(p, r), r), r), 1.0f);
    float scale = __int_as_float((int)(((uint32_t)(ni + 127)) << 23));
    float res = __fmul_rn(y, scale);
    return x < -87.0f ? 0.0f : res;
}

// ---------------------------------------------------------------- logits
// Rows of the chunk: heads [bh0, bh0 + gridDim.z), queries [i0, i0 + nq). Scratch row
// ((bh - bh0) * nq + (i - i0)) holds the logits of (bh, i) against all Lk keys.
#define LT 64
#define DC 32
extern "C" __global__ void __launch_bounds__(256) mc_logits(
    const float* __restrict__ q, const float* __restrict__ k, const unsigned char* __restrict__ mask,
    float* __restrict__ L, int H, int lq, int lk, int d, float scale, int causal, int bh0, int i0,
    int nq) {
    __shared__ float Qs[LT][DC + 1];
    __shared__ float Ks[LT][DC + 1];
    const int bh = bh0 + blockIdx.z;
    const int batch = bh / H;
    const int qt = blockIdx.y * LT, kt = blockIdx.x * LT;
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const float* qh = q + ((size_t)bh * lq) * d;
    const float* kh = k + ((size_t)bh * lk) * d;
    float acc[4][4];
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b) acc[a][b] = 0.0f;
    for (int d0 = 0; d0 < d; d0 += DC) {
        for (int e = threadIdx.x; e < LT * DC; e += 256) {
            int r = e / DC, c = e % DC;
            int qi = i0 + qt + r, kj = kt + r, dd = d0 + c;
            Qs[r][c] = (qi < i0 + nq && qi < lq && dd < d) ? qh[(size_t)qi * d + dd] : 0.0f;
            Ks[r][c] = (kj < lk && dd < d) ? kh[(size_t)kj * d + dd] : 0.0f;
        }
        __syncthreads();
        const int dn = min(DC, d - d0);
        for (int c = 0; c < dn; ++c) {
            float qa[4], kb[4];
#pragma unroll
            for (int a = 0; a < 4; ++a) qa[a] = Qs[ty + 16 * a][c];
#pragma unroll
            for (int b = 0; b < 4; ++b) kb[b] = Ks[tx + 16 * b][c];
#pragma unroll
            for (int a = 0; a < 4; ++a)
#pragma unroll
                for (int b = 0; b < 4; ++b) acc[a][b] = __fmaf_rn(qa[a], kb[b], acc[a][b]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int a = 0; a < 4; ++a) {
        int qi = i0 + qt + ty + 16 * a;
        if (qi >= i0 + nq || qi >= lq) continue;
        float* row = L + ((size_t)blockIdx.z * nq + (qi - i0)) * lk;
#pragma unroll
        for (int b = 0; b < 4; ++b) {
            int kj = kt + tx + 16 * b;
            if (kj >= lk) continue;
            bool keep = (mask == nullptr || mask[(size_t)batch * lk + kj] != 0) && !(causal && kj > qi);
            row[kj] = keep ? __fmul_rn(scale, acc[a][b]) : -INFINITY;
        }
    }
}

// ---------------------------------------------------------------- sampling
__device__ __forceinline__ float sum16(const float* x, int len) {
    float e[SUBB];
#pragma unroll
    for (int l = 0; l < SUBB; ++l) e[l] = l < len ? x[l] : 0.0f;
#pragma unroll
    for (int h = SUBB / 2; h > 0; h /= 2)
#pragma unroll
        for (int l = 0; l < h; ++l) e[l] = __fadd_rn(e[l], e[l + h]);
    return e[0];
}

__device__ int last_pos(const float* w, int lo, int hi) {
    for (int j = hi - 1; j >= lo; --j)
        if (w[j] > 0.0f) return j;
    return -1;
}

// src/cuda/emu.rs `locate`.
__device__ uint32_t locate(const float* w, int keff, const double* ends, int nblk, double x) {
    int lo = 0, hi = nblk;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (x < ends[mid]) hi = mid; else lo = mid + 1;
    }
    int b = lo;
    if (b == nblk) { int j = last_pos(w, 0, keff); return j < 0 ? 0u : (uint32_t)j; }
    int start = b * BLOCK, stop = min(start + BLOCK, keff);
    double c = b == 0 ? 0.0 : ends[b - 1];
    for (int s0 = start; s0 < stop; s0 += SUBB) {
        int s1 = min(s0 + SUBB, stop);
        double ss = (double)sum16(w + s0, s1 - s0);
        if (ss > 0.0 && x < __dadd_rn(c, ss)) {
            double cc = c;
            for (int j = s0; j < s1; ++j) {
                float wj = w[j];
                if (wj > 0.0f) {
                    cc = __dadd_rn(cc, (double)wj);
                    if (x < cc) return (uint32_t)j;
                }
            }
            int j = last_pos(w, s0, s1);
            return j < 0 ? 0u : (uint32_t)j;
        }
        c = __dadd_rn(c, ss);
    }
    int j = last_pos(w, start, stop);
    return j < 0 ? 0u : (uint32_t)j;
}

#define ST 128
// Dynamic shared memory: nblk doubles (block ends), then n uint32 (shots).
extern "C" __global__ void __launch_bounds__(ST) mc_sample(
    float* __restrict__ L, const float* __restrict__ v, int H, int lq, int lk, int dv, int causal,
    int bh0, int i0, int nq, int n, int stratified, unsigned long long seed,
    float* __restrict__ out, float* __restrict__ lse, uint32_t* __restrict__ idx) {
    extern __shared__ double smem[];
    __shared__ float red[ST / 32];
    __shared__ double total_sh;
    const int row = blockIdx.x;                   // row within the chunk
    const int bh = bh0 + row / nq, i = i0 + row % nq;
    const int batch = bh / H, head = bh % H;
    const size_t grow = (size_t)bh * lq + i;      // global row
    const int keff = causal ? min(lk, i + 1) : lk;
    const int nblk = (keff + BLOCK - 1) / BLOCK;
    double* ends = smem;
    uint32_t* keys = (uint32_t*)(smem + nblk);
    float* w = L + (size_t)row * lk;
    const int tid = threadIdx.x;

    // max
    float mx = -INFINITY;
    for (int j = tid; j < keff; j += ST) { float x = w[j]; mx = x > mx ? x : mx; }
    for (int o = 16; o > 0; o >>= 1) { float y = __shfl_xor_sync(0xffffffffu, mx, o); mx = y > mx ? y : mx; }
    if ((tid & 31) == 0) red[tid >> 5] = mx;
    __syncthreads();
    mx = red[0];
    for (int t = 1; t < ST / 32; ++t) mx = red[t] > mx ? red[t] : mx;
    if (mx == -INFINITY) {
        for (int t = tid; t < dv; t += ST) out[grow * dv + t] = 0.0f;
        for (int s = tid; s < n; s += ST) idx[grow * n + s] = 0u;
        if (tid == 0) lse[grow] = -INFINITY;
        return;
    }
    // weights in place
    for (int j = tid; j < keff; j += ST) w[j] = exp_approx(__fsub_rn(w[j], mx));
    __syncthreads();
    // block sums (16 lanes, then lanes left to right)
    for (int b = tid; b < nblk; b += ST) {
        int start = b * BLOCK, len = min(BLOCK, keff - start);
        float acc[SUBB];
#pragma unroll
        for (int l = 0; l < SUBB; ++l) acc[l] = 0.0f;
#pragma unroll
        for (int l = 0; l < SUBB; ++l)
            for (int e = l; e < len; e += SUBB) acc[l] = __fadd_rn(acc[l], w[start + e]);
        float s = -0.0f;
#pragma unroll
        for (int l = 0; l < SUBB; ++l) s = __fadd_rn(s, acc[l]);
        ends[b] = (double)s;
    }
    __syncthreads();
    if (tid == 0) {
        double cum = 0.0;
        for (int b = 0; b < nblk; ++b) { cum = __dadd_rn(cum, ends[b]); ends[b] = cum; }
        total_sh = cum;
        lse[grow] = __fadd_rn(mx, (float)log(cum));
    }
    __syncthreads();
    const double total = total_sh;
    for (int s = tid; s < n; s += ST) {
        double u = draw_uniform(seed, (uint32_t)batch, (uint32_t)head, (uint32_t)i, (uint64_t)s);
        double t = stratified ? __ddiv_rn(__dadd_rn((double)s, u), (double)n) : u;
        uint32_t j = locate(w, keff, ends, nblk, __dmul_rn(t, total));
        idx[grow * n + s] = j;
        keys[s] = j;
    }
    __syncthreads();
    if (tid == 0) {  // insertion sort of the shots (n is small)
        for (int a = 1; a < n; ++a) {
            uint32_t x = keys[a];
            int b = a - 1;
            while (b >= 0 && keys[b] > x) { keys[b + 1] = keys[b]; --b; }
            keys[b + 1] = x;
        }
    }
    __syncthreads();
    for (int t = tid; t < dv; t += ST) {
        float o = 0.0f;
        int a = 0;
        while (a < n) {
            uint32_t j = keys[a];
            int b = a;
            while (b < n && keys[b] == j) ++b;
            float coef = (float)__ddiv_rn((double)(b - a), (double)n);
            o = __fadd_rn(o, __fmul_rn(coef, v[((size_t)bh * lk + j) * dv + t]));
            a = b;
        }
        out[grow * dv + t] = o;
    }
}
