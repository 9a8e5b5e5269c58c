// Exact attention forward for qattn-kernels: tiled, online softmax, never an Lq x Lk matrix.
// Outputs o [B,H,Lq,D] (f32) and the natural log-sum-exp [B,H,Lq] of the scaled logits
// (-inf for a row with no visible key, whose output is 0).
//
//   exact_f32_d{16,32,64}   — one thread per query, K/V tiles of 64 keys in shared memory,
//                             f32 throughout.
//   exact_{bf16,f16}_d{32,64} — tensor cores through WMMA 16x16x16 (f32 accumulation): 4 warps
//                             x 16 queries, K/V tiles of 32 keys; S and the output accumulator
//                             kept in shared memory so rows can be rescaled (online softmax).
#include <stdint.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#define LOG2E_F 1.4426950408889634f
#define LN2_F 0.6931471805599453f

__device__ __forceinline__ bool visible(const unsigned char* mask, int batch, int lk, int j, int i,
                                        int causal) {
    if (j >= lk) return false;
    if (causal && j > i) return false;
    return mask == nullptr || mask[(size_t)batch * lk + j] != 0;
}

// ------------------------------------------------------------------------------------- f32
#define FBQ 64
#define FBK 64
#define FCH 16
template <int D>
__device__ void exact_f32(const float* __restrict__ q, const float* __restrict__ k,
                          const float* __restrict__ v, const unsigned char* __restrict__ mask,
                          float* __restrict__ out, float* __restrict__ lse, int H, int lq, int lk,
                          float scale, int causal) {
    __shared__ float Ks[FBK][D];
    __shared__ float Vs[FBK][D];
    const int bh = blockIdx.y, batch = bh / H;
    const int i = blockIdx.x * FBQ + threadIdx.x;
    const bool active = i < lq;
    const float* kh = k + (size_t)bh * lk * D;
    const float* vh = v + (size_t)bh * lk * D;
    float qr[D], o[D];
    const float sl2 = scale * LOG2E_F;
#pragma unroll
    for (int t = 0; t < D; ++t) {
        qr[t] = active ? q[((size_t)bh * lq + i) * D + t] * sl2 : 0.0f;
        o[t] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    int kend = lk;
    if (causal) kend = min(lk, (int)(blockIdx.x * FBQ + FBQ));
    for (int kt = 0; kt < kend; kt += FBK) {
        __syncthreads();
        for (int e = threadIdx.x; e < FBK * D; e += FBQ) {
            int r = e / D, c = e % D, j = kt + r;
            Ks[r][c] = j < lk ? kh[(size_t)j * D + c] : 0.0f;
            Vs[r][c] = j < lk ? vh[(size_t)j * D + c] : 0.0f;
        }
        __syncthreads();
        if (!active) continue;
        for (int c0 = 0; c0 < FBK; c0 += FCH) {
            float s[FCH];
            float cm = -INFINITY;
#pragma unroll
            for (int c = 0; c < FCH; ++c) {
                int j = kt + c0 + c;
                float acc = 0.0f;
#pragma unroll
                for (int t = 0; t < D; ++t) acc = fmaf(qr[t], Ks[c0 + c][t], acc);
                s[c] = visible(mask, batch, lk, j, i, causal) ? acc : -INFINITY;
                cm = fmaxf(cm, s[c]);
            }
            float mn = fmaxf(m, cm);
            if (mn == -INFINITY) continue;
            float alpha = exp2f(m - mn);
            float ps = 0.0f;
#pragma unroll
            for (int c = 0; c < FCH; ++c) { s[c] = exp2f(s[c] - mn); ps += s[c]; }
            l = l * alpha + ps;
#pragma unroll
            for (int t = 0; t < D; ++t) {
                float a = o[t] * alpha;
#pragma unroll
                for (int c = 0; c < FCH; ++c) a = fmaf(s[c], Vs[c0 + c][t], a);
                o[t] = a;
            }
            m = mn;
        }
    }
    if (!active) return;
    const size_t r = (size_t)bh * lq + i;
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
    for (int t = 0; t < D; ++t) out[r * D + t] = o[t] * inv;
    lse[r] = l > 0.0f ? (m + log2f(l)) * LN2_F : -INFINITY;
}

#define F32_ENTRY(D)                                                                            \
    extern "C" __global__ void __launch_bounds__(FBQ) exact_f32_d##D(                             \
        const float* q, const float* k, const float* v, const unsigned char* mask, float* out,   \
        float* lse, int H, int lq, int lk, float scale, int causal) {                            \
        exact_f32<D>(q, k, v, mask, out, lse, H, lq, lk, scale, causal);                         \
    }
F32_ENTRY(16)
F32_ENTRY(32)
F32_ENTRY(64)

// ------------------------------------------------------------------------------- bf16 / f16
using namespace nvcuda;
#define HBQ 64
#define HBK 32
#define HW 4
template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ __nv_bfloat16 from_f32(float x) { return __float2bfloat16(x); }
template <> __device__ __forceinline__ __half from_f32(float x) { return __float2half(x); }

template <typename T, int D>
__device__ void exact_half(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                           const unsigned char* __restrict__ mask, float* __restrict__ out,
                           float* __restrict__ lse, int H, int lq, int lk, float scale, int causal) {
    __shared__ __align__(32) T Qs[HBQ * D];
    __shared__ __align__(32) T Ks[HBK * D];
    __shared__ __align__(32) T Vs[HBK * D];
    __shared__ __align__(32) float Ss[HW][16 * HBK];
    __shared__ __align__(32) T Ps[HW][16 * HBK];
    __shared__ __align__(32) float Os[HW][16 * D];
    const int bh = blockIdx.y, batch = bh / H;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int q0 = blockIdx.x * HBQ;
    const T* qh = q + (size_t)bh * lq * D;
    const T* kh = k + (size_t)bh * lk * D;
    const T* vh = v + (size_t)bh * lk * D;
    const T zero = from_f32<T>(0.0f);
    // Q tile (16-byte vector loads: D is a multiple of 8).
    for (int e = threadIdx.x * 8; e < HBQ * D; e += HW * 32 * 8) {
        int r = e / D, c = e % D, i = q0 + r;
        if (i < lq) {
            *reinterpret_cast<uint4*>(&Qs[e]) = *reinterpret_cast<const uint4*>(&qh[(size_t)i * D + c]);
        } else {
            for (int t = 0; t < 8; ++t) Qs[e + t] = zero;
        }
    }
    for (int e = lane; e < 16 * D; e += 32) Os[warp][e] = 0.0f;
    __syncthreads();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> qf[D / 16];
#pragma unroll
    for (int kd = 0; kd < D / 16; ++kd) wmma::load_matrix_sync(qf[kd], Qs + warp * 16 * D + kd * 16, D);
    const int r = lane >> 1, half = lane & 1;       // this lane's row and column half
    const int i = q0 + warp * 16 + r;
    const float sl2 = scale * LOG2E_F;
    float m = -INFINITY, l = 0.0f;
    int kend = lk;
    if (causal) kend = min(lk, q0 + HBQ);
    for (int kt = 0; kt < kend; kt += HBK) {
        __syncthreads();
        for (int e = threadIdx.x * 8; e < HBK * D; e += HW * 32 * 8) {
            int rr = e / D, c = e % D, j = kt + rr;
            if (j < lk) {
                *reinterpret_cast<uint4*>(&Ks[e]) = *reinterpret_cast<const uint4*>(&kh[(size_t)j * D + c]);
                *reinterpret_cast<uint4*>(&Vs[e]) = *reinterpret_cast<const uint4*>(&vh[(size_t)j * D + c]);
            } else {
                for (int t = 0; t < 8; ++t) { Ks[e + t] = zero; Vs[e + t] = zero; }
            }
        }
        __syncthreads();
        // S = Q K^T for this warp's 16 rows and the tile's HBK keys.
#pragma unroll
        for (int n = 0; n < HBK / 16; ++n) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> sf;
            wmma::fill_fragment(sf, 0.0f);
#pragma unroll
            for (int kd = 0; kd < D / 16; ++kd) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> kf;
                wmma::load_matrix_sync(kf, Ks + n * 16 * D + kd * 16, D);
                wmma::mma_sync(sf, qf[kd], kf, sf);
            }
            wmma::store_matrix_sync(Ss[warp] + n * 16, sf, HBK, wmma::mem_row_major);
        }
        __syncwarp();
        // Online softmax on this lane's half row.
        const int c0 = half * (HBK / 2);
        float s[HBK / 2];
        float cm = -INFINITY;
#pragma unroll
        for (int c = 0; c < HBK / 2; ++c) {
            int j = kt + c0 + c;
            float x = Ss[warp][r * HBK + c0 + c] * sl2;
            s[c] = (i < lq && visible(mask, batch, lk, j, i, causal)) ? x : -INFINITY;
            cm = fmaxf(cm, s[c]);
        }
        cm = fmaxf(cm, __shfl_xor_sync(0xffffffffu, cm, 1));
        const float mn = fmaxf(m, cm);
        const float mu = mn == -INFINITY ? 0.0f : mn;
        const float alpha = exp2f(m - mu);
        float ps = 0.0f;
#pragma unroll
        for (int c = 0; c < HBK / 2; ++c) {
            float p = exp2f(s[c] - mu);
            T pt = from_f32<T>(p);
            Ps[warp][r * HBK + c0 + c] = pt;
            ps += p;
        }
        ps += __shfl_xor_sync(0xffffffffu, ps, 1);
        l = l * alpha + ps;
        m = mn;
#pragma unroll
        for (int t = 0; t < D / 2; ++t) Os[warp][r * D + half * (D / 2) + t] *= alpha;
        __syncwarp();
        // O += P V
#pragma unroll
        for (int n = 0; n < D / 16; ++n) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> of;
            wmma::load_matrix_sync(of, Os[warp] + n * 16, D, wmma::mem_row_major);
#pragma unroll
            for (int kk = 0; kk < HBK / 16; ++kk) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> pf;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> vf;
                wmma::load_matrix_sync(pf, Ps[warp] + kk * 16, HBK);
                wmma::load_matrix_sync(vf, Vs + kk * 16 * D + n * 16, D);
                wmma::mma_sync(of, pf, vf, of);
            }
            wmma::store_matrix_sync(Os[warp] + n * 16, of, D, wmma::mem_row_major);
        }
        __syncwarp();
    }
    if (i < lq) {
        const size_t row = (size_t)bh * lq + i;
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
        for (int t = 0; t < D / 2; ++t) {
            int c = half * (D / 2) + t;
            out[row * D + c] = Os[warp][r * D + c] * inv;
        }
        if (half == 0) lse[row] = l > 0.0f ? (m + log2f(l)) * LN2_F : -INFINITY;
    }
}

#define HALF_ENTRY(NAME, T, D)                                                                  \
    extern "C" __global__ void __launch_bounds__(HW * 32) exact_##NAME##_d##D(                    \
        const T* q, const T* k, const T* v, const unsigned char* mask, float* out, float* lse,   \
        int H, int lq, int lk, float scale, int causal) {                                        \
        exact_half<T, D>(q, k, v, mask, out, lse, H, lq, lk, scale, causal);                     \
    }
HALF_ENTRY(bf16, __nv_bfloat16, 32)
HALF_ENTRY(bf16, __nv_bfloat16, 64)
HALF_ENTRY(f16, __half, 32)
HALF_ENTRY(f16, __half, 64)
