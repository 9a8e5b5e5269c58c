// FlashAttention-2-style exact attention forward for bf16/f16 inputs (f32 output and natural
// log-sum-exp, the same contract as exact_{bf16,f16}_d* in exact.cu, so it is a drop-in).
//
//   flash_{bf16,f16}_d{32,64}(q, k, v, mask, out, lse, H, lq, lk, scale, causal)
//
//   flash2_{bf16,f16}_d{32,64}: the same with 32 query rows per warp (128-query tiles), which
//   reuses every K/V fragment for two m16 tiles (half the ldmatrix traffic per mma).
//
// Design: one CTA of 4 warps per (batch*head, 16*MT*4-query tile); each warp owns 16*MT query
// rows (MT = 1 or 2 m16 tiles). Q is loaded once (cp.async, staged in the second K/V buffer)
// and kept as mma A fragments in registers. K/V tiles of 64 keys are double buffered in shared
// memory with cp.async (zero-filled past Lk); rows are padded by 16 bytes so every ldmatrix
// phase (8 rows x 16 bytes) hits 8 distinct 16-byte bank groups.
// S = Q K^T with mma.sync.m16n8k16 (f32 accumulation, K fragments by ldmatrix), online softmax
// on the accumulator fragments in registers (exp2 of log2(e)-prescaled scores, row max by quad
// shuffles), P rounded to bf16/f16 in registers and used directly as the A operand of P V (the
// C fragments of the n8 tiles 2kk and 2kk+1 are exactly the A fragment of k16 step kk), V
// fragments by ldmatrix.trans, O in registers, final 1/l scaling.
//
// Fragment layouts (PTX ISA, mma.m16n8k16 with 16-bit A/B; g = lane>>2, t = lane&3):
//   A (16x16): a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//   B (16x8) : b0 = (k 2t..2t+1, n g), b1 = (k 2t+8..2t+9, n g)
//   C (16x8) : c0,c1 = (g, 2t..2t+1), c2,c3 = (g+8, 2t..2t+1)
// src/cuda/flash_emu.rs emulates these mappings (and the addresses below) on the host.
#include <stdint.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#define FL_LOG2E 1.4426950408889634f
#define FL_LN2 0.6931471805599453f
#define FL_BK 64          // keys per tile
#define FL_WARPS 4
#define FL_THREADS (FL_WARPS * 32)
#define FL_PAD 8          // elements of padding per shared-memory row (16 bytes)

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy; src_bytes = 0 zero-fills the destination.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
                 "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3,
                                            uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                                  uint32_t& r3, uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

template <typename T> struct FlashType;
template <> struct FlashType<__nv_bfloat16> {
    __device__ __forceinline__ static void mma(float* c, const uint32_t* a, uint32_t b0,
                                               uint32_t b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
        __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);  // .x = lo (lower 16 bits)
        return *reinterpret_cast<uint32_t*>(&h);
    }
};
template <> struct FlashType<__half> {
    __device__ __forceinline__ static void mma(float* c, const uint32_t* a, uint32_t b0,
                                               uint32_t b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
        __half2 h = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&h);
    }
};

// Loads `rows` x D elements starting at global row `row0` (of `nrows` valid rows) into a padded
// shared tile; rows past the end are zero-filled.
template <typename T, int D, int ROWS>
__device__ __forceinline__ void load_tile(T* sm, const T* __restrict__ g, int row0, int nrows) {
    constexpr int CH = D / 8;  // 16-byte chunks per row
#pragma unroll
    for (int e = threadIdx.x; e < ROWS * CH; e += FL_THREADS) {
        const int r = e / CH, c = (e % CH) * 8;
        const int gr = row0 + r;
        const bool ok = gr < nrows;
        const T* src = g + (size_t)(ok ? gr : 0) * D + c;
        cp_async16(smem_u32(sm + r * (D + FL_PAD) + c), src, ok ? 16 : 0);
    }
}

template <typename T, int D, int MT>
__device__ __forceinline__ void flash_fwd(const T* __restrict__ q, const T* __restrict__ k,
                                          const T* __restrict__ v,
                                          const unsigned char* __restrict__ mask,
                                          float* __restrict__ out, float* __restrict__ lse, int H,
                                          int lq, int lk, float scale, int causal) {
    constexpr int LD = D + FL_PAD;     // shared row stride (elements)
    constexpr int KD = D / 16;         // k16 steps of Q K^T
    constexpr int NS = FL_BK / 8;      // n8 tiles of S per warp (64 keys)
    constexpr int NO = D / 8;          // n8 tiles of O
    constexpr int FL_BQ = FL_WARPS * 16 * MT;  // queries per CTA
    static_assert(FL_BQ <= 2 * FL_BK, "Q is staged in the second K/V buffer");
    // [K0][V0][K1][V1]; Q is staged in [K1][V1] before the pipeline starts.
    __shared__ __align__(128) T smem[4 * FL_BK * LD];
    constexpr int STAGE = 2 * FL_BK * LD;  // one K/V buffer pair: K at +0, V at +FL_BK*LD
    T* Qs = smem + STAGE;

    const int bh = blockIdx.y, batch = bh / H;
    // Causal: the largest query tiles (most keys) are scheduled first.
    const int qt = causal ? (int)(gridDim.x - 1 - blockIdx.x) : (int)blockIdx.x;
    const int q0 = qt * FL_BQ;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    const T* qh = q + (size_t)bh * lq * D;
    const T* kh = k + (size_t)bh * lk * D;
    const T* vh = v + (size_t)bh * lk * D;
    const unsigned char* mrow = mask ? mask + (size_t)batch * lk : nullptr;

    int kend = lk;
    if (causal) kend = min(lk, q0 + FL_BQ);
    const int ntiles = (kend + FL_BK - 1) / FL_BK;

    load_tile<T, D, FL_BQ>(Qs, qh, q0, lq);
    load_tile<T, D, FL_BK>(smem, kh, 0, lk);
    load_tile<T, D, FL_BK>(smem + FL_BK * LD, vh, 0, lk);
    cp_async_commit();

    // ldmatrix lane offsets (elements): A-style (Q), B-style (K), B.trans-style (V).
    const int a_off = (warp * 16 * MT + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + (lane >> 4) * 8;
    const int k_off = ((lane & 7) + (lane >> 4) * 8) * LD + ((lane >> 3) & 1) * 8;
    const int v_off = ((lane & 7) + ((lane >> 3) & 1) * 8) * LD + (lane >> 4) * 8;

    // Q fragments to registers; then the staging area is free for the K/V pipeline.
    uint32_t qf[MT][KD][4];
    cp_async_wait<0>();
    __syncthreads();
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int kd = 0; kd < KD; ++kd)
            ldmatrix_x4(qf[mt][kd][0], qf[mt][kd][1], qf[mt][kd][2], qf[mt][kd][3],
                        smem_u32(Qs + a_off + mt * 16 * LD + kd * 16));
    __syncthreads();

    // Row stats for rows g and g+8 of each m16 tile (raw, unscaled maxima; per-lane partial
    // sums, reduced over the quad at the end).
    float m[MT][2], l[MT][2];
    float o[MT][NO][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        m[mt][0] = m[mt][1] = -INFINITY;
        l[mt][0] = l[mt][1] = 0.0f;
#pragma unroll
        for (int n = 0; n < NO; ++n) o[mt][n][0] = o[mt][n][1] = o[mt][n][2] = o[mt][n][3] = 0.0f;
    }
    const float sl2 = scale * FL_LOG2E;
    // Query index of row g of m16 tile mt is row0 + 16 * mt; row g+8 is 8 further.
    const int row0 = q0 + warp * 16 * MT + g;

    for (int it = 0; it < ntiles; ++it) {
        const int buf = it & 1;
        if (it + 1 < ntiles) {
            T* nxt = smem + (buf ^ 1) * STAGE;
            load_tile<T, D, FL_BK>(nxt, kh, (it + 1) * FL_BK, lk);
            load_tile<T, D, FL_BK>(nxt + FL_BK * LD, vh, (it + 1) * FL_BK, lk);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const int kt = it * FL_BK;
        // ---- S = Q K^T (16*MT x 64 per warp)
        float s[MT][NS][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int n = 0; n < NS; ++n) s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.0f;
        const T* kb = smem + buf * STAGE;
#pragma unroll
        for (int np = 0; np < NS / 2; ++np) {
#pragma unroll
            for (int kd = 0; kd < KD; ++kd) {
                uint32_t b0, b1, b2, b3;
                ldmatrix_x4(b0, b1, b2, b3, smem_u32(kb + k_off + np * 16 * LD + kd * 16));
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    FlashType<T>::mma(s[mt][2 * np], qf[mt][kd], b0, b1);
                    FlashType<T>::mma(s[mt][2 * np + 1], qf[mt][kd], b2, b3);
                }
            }
        }
        // ---- masking (only on tiles that need it)
        const bool need = (kt + FL_BK > lk) || (causal && kt + FL_BK - 1 > q0) || mrow != nullptr;
        uint32_t pa[MT][NS / 2][4];  // P as A fragments of the k16 steps of P V
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            if (need) {
#pragma unroll
                for (int n = 0; n < NS; ++n) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int j = kt + n * 8 + 2 * t + (e & 1);
                        const int i = row0 + mt * 16 + (e >> 1) * 8;
                        bool vis = j < lk;
                        if (causal && j > i) vis = false;
                        if (vis && mrow != nullptr && mrow[j] == 0) vis = false;
                        if (!vis) s[mt][n][e] = -INFINITY;
                    }
                }
            }
            // ---- online softmax (row g: elements 0,1; row g+8: elements 2,3)
            float mx[2] = {m[mt][0], m[mt][1]};
#pragma unroll
            for (int n = 0; n < NS; ++n) {
                mx[0] = fmaxf(mx[0], fmaxf(s[mt][n][0], s[mt][n][1]));
                mx[1] = fmaxf(mx[1], fmaxf(s[mt][n][2], s[mt][n][3]));
            }
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            }
            float ms[2], alpha[2];
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                ms[r] = mx[r] == -INFINITY ? 0.0f : mx[r] * sl2;
                alpha[r] = exp2f(m[mt][r] * sl2 - ms[r]);  // 0 when m = -inf
                m[mt][r] = mx[r];
                l[mt][r] *= alpha[r];
            }
#pragma unroll
            for (int n = 0; n < NO; ++n) {
                o[mt][n][0] *= alpha[0];
                o[mt][n][1] *= alpha[0];
                o[mt][n][2] *= alpha[1];
                o[mt][n][3] *= alpha[1];
            }
#pragma unroll
            for (int n = 0; n < NS; ++n) {
                const float p0 = exp2f(fmaf(s[mt][n][0], sl2, -ms[0]));
                const float p1 = exp2f(fmaf(s[mt][n][1], sl2, -ms[0]));
                const float p2 = exp2f(fmaf(s[mt][n][2], sl2, -ms[1]));
                const float p3 = exp2f(fmaf(s[mt][n][3], sl2, -ms[1]));
                l[mt][0] += p0 + p1;
                l[mt][1] += p2 + p3;
                // tile 2kk -> a0 (row g), a1 (row g+8); tile 2kk+1 -> a2 (row g), a3 (row g+8)
                pa[mt][n >> 1][(n & 1) * 2 + 0] = FlashType<T>::pack(p0, p1);
                pa[mt][n >> 1][(n & 1) * 2 + 1] = FlashType<T>::pack(p2, p3);
            }
        }
        // ---- O += P V
        const T* vb = smem + buf * STAGE + FL_BK * LD;
#pragma unroll
        for (int kk = 0; kk < FL_BK / 16; ++kk) {
#pragma unroll
            for (int dp = 0; dp < NO / 2; ++dp) {
                uint32_t b0, b1, b2, b3;
                ldmatrix_x4_trans(b0, b1, b2, b3, smem_u32(vb + v_off + kk * 16 * LD + dp * 16));
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    FlashType<T>::mma(o[mt][2 * dp], pa[mt][kk], b0, b1);
                    FlashType<T>::mma(o[mt][2 * dp + 1], pa[mt][kk], b2, b3);
                }
            }
        }
        __syncthreads();  // this buffer is refilled by the next iteration's prefetch
    }
    cp_async_wait<0>();

    // ---- epilogue: reduce l over the quad, scale, write
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float lr = l[mt][r];
            lr += __shfl_xor_sync(0xffffffffu, lr, 1);
            lr += __shfl_xor_sync(0xffffffffu, lr, 2);
            const int i = row0 + mt * 16 + r * 8;
            if (i >= lq) continue;
            const size_t row = (size_t)bh * lq + i;
            const float inv = lr > 0.0f ? 1.0f / lr : 0.0f;
#pragma unroll
            for (int n = 0; n < NO; ++n) {
                float2 val = make_float2(o[mt][n][2 * r] * inv, o[mt][n][2 * r + 1] * inv);
                *reinterpret_cast<float2*>(out + row * D + n * 8 + 2 * t) = val;
            }
            if (t == 0) lse[row] = lr > 0.0f ? (m[mt][r] * sl2 + log2f(lr)) * FL_LN2 : -INFINITY;
        }
    }
}

#define FLASH_ENTRY(PRE, NAME, T, D, MT)                                                        \
    extern "C" __global__ void __launch_bounds__(FL_THREADS) PRE##_##NAME##_d##D(                 \
        const T* q, const T* k, const T* v, const unsigned char* mask, float* out, float* lse,   \
        int H, int lq, int lk, float scale, int causal) {                                        \
        flash_fwd<T, D, MT>(q, k, v, mask, out, lse, H, lq, lk, scale, causal);                  \
    }
FLASH_ENTRY(flash, bf16, __nv_bfloat16, 32, 1)
FLASH_ENTRY(flash, bf16, __nv_bfloat16, 64, 1)
FLASH_ENTRY(flash, f16, __half, 32, 1)
FLASH_ENTRY(flash, f16, __half, 64, 1)
FLASH_ENTRY(flash2, bf16, __nv_bfloat16, 32, 2)
FLASH_ENTRY(flash2, bf16, __nv_bfloat16, 64, 2)
FLASH_ENTRY(flash2, f16, __half, 32, 2)
FLASH_ENTRY(flash2, f16, __half, 64, 2)
