// Backward passes (issue 8): the sampled-gradient backward of the Monte-Carlo estimators and
// the exact-attention backward in f32.
//
// Layout (all contiguous, row-major): q [BH, Lq, D], k [BH, Lk, D], v [BH, Lk, Dv],
// out/dout [BH, Lq, Dv], lse [BH, Lq] (natural log of the scaled logits' partition function,
// -inf for a row with no visible key), mask [B, Lk] (nonzero = keep, may be null).
//
// ---------------------------------------------------------------------------------------------
// Sampled backward (src/cpu/mc.rs `backward_sampled`, estimators without a control variate).
// Each query row r = bh * Lq + i has up to P "entries" (slots r*P .. r*P + nent[r]): key j,
// cdv = its coefficient in the estimate, cds = the coefficient of its logit gradient
// (cdv * kappa for sampled keys, cdv for top-k's exact keys). With g = dout_r, o = out_r:
//   b = g.o, a_j = g.v_j, ds_j = cds * (a_j - b) * scale,
//   dq_r = sum_entries ds_j k_j, dk_j += ds_j q_r, dv_j += cdv g   (ds_j == 0 adds nothing)
// The scatter into dk/dv is made race-free AND deterministic without atomics on floats:
//   1. qattn_sb_rows: one warp per row computes ds of each entry and dq_r (no race: one owner).
//   2. qattn_sb_count / qattn_sb_scan / qattn_sb_place: counting sort of the entries by key
//      (integer atomics only; the counts are order-independent).
//   3. qattn_sb_rank: inside each key's segment, entries are put in ascending entry id
//      (= ascending query, then slot), which is the CPU's accumulation order.
//   4. qattn_sb_keys: one warp per key sums its segment sequentially in that order.
// Every f32 operation uses __fmul_rn / __fadd_rn / __fsub_rn (never contracted to FMA, not
// changed by --use_fast_math) and dot products reduce through 16 fixed lanes then sequentially,
// exactly like src/math.rs `dot`, so dq/dk/dv equal the CPU's bit for bit.
// ---------------------------------------------------------------------------------------------

#include <stdint.h>
#include <math.h>

#define QATTN_MAX_PER_LANE 8  // D, Dv <= 256 for the sampled backward (checked by the host)

namespace {

// src/math.rs `dot`: 16 lanes, lane l accumulates x[c*16+l]*y[c*16+l] in order, then the
// lanes are summed left to right starting from -0.0 (Rust's f32 Sum). Called by a full warp;
// every lane gets the result.
__device__ __forceinline__ float warp_dot16(const float* __restrict__ x, const float* __restrict__ y,
                                            uint32_t n) {
    const uint32_t lane = threadIdx.x & 31;
    float acc = 0.0f;
    if (lane < 16) {
        for (uint32_t t = lane; t < n; t += 16) acc = __fadd_rn(acc, __fmul_rn(x[t], y[t]));
    }
    float total = -0.0f;
#pragma unroll
    for (int l = 0; l < 16; ++l) total = __fadd_rn(total, __shfl_sync(0xffffffffu, acc, l));
    return total;
}

}  // namespace

// Builds the entries of multinomial:S / stratified:S rows from the raw shot indices
// idx [rows, S] (no noise, no top-k): sorted unique keys with cdv = count / S (computed in f64
// and rounded once, as the CPU does) and cds = cdv * kappa, kappa = S / (S - 1) for
// multinomial (i.i.d. shots, S >= 2) and 1 otherwise. P = S slots per row; rows whose lse is
// -inf (no visible key) get no entry. One thread per row; insertion sort in place (stratified
// indices arrive sorted, multinomial ones in shot order).
extern "C" __global__ void qattn_sb_from_shots(const uint32_t* __restrict__ idx,
                                               const float* __restrict__ lse, uint32_t rows,
                                               uint32_t S, uint32_t iid, uint32_t* __restrict__ key,
                                               float* __restrict__ cdv, float* __restrict__ cds,
                                               uint32_t* __restrict__ nent) {
    const uint32_t r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    uint32_t* kr = key + (unsigned long long)r * S;
    if (S == 0 || (lse != nullptr && lse[r] == -INFINITY)) {
        nent[r] = 0;
        return;
    }
    for (uint32_t s = 0; s < S; ++s) {
        const uint32_t x = idx[(unsigned long long)r * S + s];
        uint32_t t = s;
        while (t > 0 && kr[t - 1] > x) {
            kr[t] = kr[t - 1];
            --t;
        }
        kr[t] = x;
    }
    const float kappa = (iid != 0 && S >= 2) ? __fdiv_rn((float)S, __fsub_rn((float)S, 1.0f)) : 1.0f;
    uint32_t n = 0;
    uint32_t s = 0;
    while (s < S) {
        const uint32_t j = kr[s];
        uint32_t c = 0;
        while (s < S && kr[s] == j) {
            ++c;
            ++s;
        }
        const float cf = (float)((double)c / (double)S);
        kr[n] = j;
        cdv[(unsigned long long)r * S + n] = cf;
        cds[(unsigned long long)r * S + n] = __fmul_rn(cf, kappa);
        ++n;
    }
    nent[r] = n;
}

// Step 1: one warp per row: ds of each entry (into ds_out [rows, P]) and dq_r.
extern "C" __global__ void qattn_sb_rows(const float* __restrict__ q, const float* __restrict__ k,
                                         const float* __restrict__ v, const float* __restrict__ out,
                                         const float* __restrict__ dout,
                                         const uint32_t* __restrict__ key,
                                         const float* __restrict__ cds,
                                         const uint32_t* __restrict__ nent, uint32_t P,
                                         uint32_t rows, uint32_t lq, uint32_t lk, uint32_t d,
                                         uint32_t dv, float scale, float* __restrict__ ds_out,
                                         float* __restrict__ dq) {
    const uint32_t warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const uint32_t lane = threadIdx.x & 31;
    if (warp >= rows) return;  // whole warps exit together
    const uint32_t r = warp;
    const unsigned long long bh = r / lq;
    const float* g = dout + (unsigned long long)r * dv;
    const float* o = out + (unsigned long long)r * dv;
    const float* kh = k + bh * lk * d;
    const float* vh = v + bh * lk * dv;
    float acc[QATTN_MAX_PER_LANE];
#pragma unroll
    for (int m = 0; m < QATTN_MAX_PER_LANE; ++m) acc[m] = 0.0f;
    const float b = warp_dot16(g, o, dv);
    const uint32_t n = nent[r];
    for (uint32_t s = 0; s < n; ++s) {
        const unsigned long long e = (unsigned long long)r * P + s;
        const uint32_t j = key[e];
        const float a = warp_dot16(g, vh + (unsigned long long)j * dv, dv);
        const float dl = __fmul_rn(cds[e], __fsub_rn(a, b));
        const float ds = __fmul_rn(dl, scale);
        if (lane == 0) ds_out[e] = ds;
        if (ds != 0.0f) {
            const float* kj = kh + (unsigned long long)j * d;
#pragma unroll
            for (int m = 0; m < QATTN_MAX_PER_LANE; ++m) {
                const uint32_t t = lane + 32u * m;
                if (t < d) acc[m] = __fadd_rn(acc[m], __fmul_rn(ds, kj[t]));
            }
        }
    }
#pragma unroll
    for (int m = 0; m < QATTN_MAX_PER_LANE; ++m) {
        const uint32_t t = lane + 32u * m;
        if (t < d) dq[(unsigned long long)r * d + t] = acc[m];
    }
}

// Step 2a: entries per (bh, key). counts [BH * Lk] must be zero on entry.
extern "C" __global__ void qattn_sb_count(const uint32_t* __restrict__ key,
                                          const uint32_t* __restrict__ nent, uint32_t P,
                                          uint32_t rows, uint32_t lq, uint32_t lk,
                                          uint32_t* __restrict__ counts) {
    const unsigned long long e = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (unsigned long long)rows * P) return;
    const uint32_t r = (uint32_t)(e / P);
    if (e % P >= nent[r]) return;
    const unsigned long long bh = r / lq;
    atomicAdd(&counts[bh * lk + key[e]], 1u);
}

// Step 2b: exclusive scan of counts [n] into start [n + 1] (start[n] = total). One block of
// 1024 threads; each thread scans a contiguous chunk, chunk totals are scanned in shared memory.
extern "C" __global__ void qattn_sb_scan(const uint32_t* __restrict__ counts, uint32_t n,
                                         uint32_t* __restrict__ start) {
    __shared__ uint32_t part[1024];
    const uint32_t tid = threadIdx.x;
    const uint32_t chunk = (n + blockDim.x - 1) / blockDim.x;
    const uint32_t lo = min(n, tid * chunk);
    const uint32_t hi = min(n, lo + chunk);
    uint32_t sum = 0;
    for (uint32_t x = lo; x < hi; ++x) sum += counts[x];
    part[tid] = sum;
    __syncthreads();
    // Hillis-Steele inclusive scan over the chunk totals.
    for (uint32_t off = 1; off < blockDim.x; off <<= 1) {
        const uint32_t add = tid >= off ? part[tid - off] : 0u;
        __syncthreads();
        part[tid] += add;
        __syncthreads();
    }
    uint32_t run = part[tid] - sum;
    for (uint32_t x = lo; x < hi; ++x) {
        start[x] = run;
        run += counts[x];
    }
    if (tid == blockDim.x - 1) start[n] = part[tid];
}

// Step 2c: scatter entry ids into their key's segment (order inside a segment arbitrary).
// fill [BH * Lk] must be zero on entry.
extern "C" __global__ void qattn_sb_place(const uint32_t* __restrict__ key,
                                          const uint32_t* __restrict__ nent, uint32_t P,
                                          uint32_t rows, uint32_t lq, uint32_t lk,
                                          const uint32_t* __restrict__ start,
                                          uint32_t* __restrict__ fill,
                                          uint32_t* __restrict__ unordered) {
    const unsigned long long e = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (unsigned long long)rows * P) return;
    const uint32_t r = (uint32_t)(e / P);
    if (e % P >= nent[r]) return;
    const unsigned long long seg = (unsigned long long)(r / lq) * lk + key[e];
    const uint32_t pos = atomicAdd(&fill[seg], 1u);
    unordered[start[seg] + pos] = (uint32_t)e;
}

// Step 3: deterministic order inside each segment: an entry's rank is the number of entries of
// its segment with a smaller id (ids are unique). Work is the sum of squared segment sizes.
// Launched over the capacity rows * P; the live total is start[nseg].
extern "C" __global__ void qattn_sb_rank(const uint32_t* __restrict__ key,
                                         const uint32_t* __restrict__ unordered, uint32_t nseg,
                                         uint32_t P, uint32_t lq, uint32_t lk,
                                         const uint32_t* __restrict__ start,
                                         uint32_t* __restrict__ ordered) {
    const uint32_t p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= start[nseg]) return;
    const uint32_t e = unordered[p];
    const unsigned long long seg = (unsigned long long)(e / P / lq) * lk + key[e];
    const uint32_t lo = start[seg], hi = start[seg + 1];
    uint32_t rank = 0;
    for (uint32_t x = lo; x < hi; ++x) rank += unordered[x] < e ? 1u : 0u;
    ordered[lo + rank] = e;
}

// Step 4: one warp per (bh, key): dk_j = sum ds q_r, dv_j = sum cdv g_r in segment order.
extern "C" __global__ void qattn_sb_keys(const float* __restrict__ q, const float* __restrict__ dout,
                                         const float* __restrict__ cdv,
                                         const float* __restrict__ ds_in,
                                         const uint32_t* __restrict__ ordered,
                                         const uint32_t* __restrict__ start, uint32_t nseg,
                                         uint32_t P, uint32_t d, uint32_t dv,
                                         float* __restrict__ dk, float* __restrict__ dvv) {
    const uint32_t seg = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const uint32_t lane = threadIdx.x & 31;
    if (seg >= nseg) return;
    float ak[QATTN_MAX_PER_LANE], av[QATTN_MAX_PER_LANE];
#pragma unroll
    for (int m = 0; m < QATTN_MAX_PER_LANE; ++m) {
        ak[m] = 0.0f;
        av[m] = 0.0f;
    }
    const uint32_t lo = start[seg], hi = start[seg + 1];
    for (uint32_t p = lo; p < hi; ++p) {
        const uint32_t e = ordered[p];
        const unsigned long long r = e / P;
        const float ds = ds_in[e];
        const float c = cdv[e];
        if (ds != 0.0f) {
            const float* qr = q + r * d;
#pragma unroll
            for (int m = 0; m < QATTN_MAX_PER_LANE; ++m) {
                const uint32_t t = lane + 32u * m;
                if (t < d) ak[m] = __fadd_rn(ak[m], __fmul_rn(ds, qr[t]));
            }
        }
        const float* gr = dout + r * dv;
#pragma unroll
        for (int m = 0; m < QATTN_MAX_PER_LANE; ++m) {
            const uint32_t t = lane + 32u * m;
            if (t < dv) av[m] = __fadd_rn(av[m], __fmul_rn(c, gr[t]));
        }
    }
#pragma unroll
    for (int m = 0; m < QATTN_MAX_PER_LANE; ++m) {
        const uint32_t t = lane + 32u * m;
        if (t < d) dk[(unsigned long long)seg * d + t] = ak[m];
        if (t < dv) dvv[(unsigned long long)seg * dv + t] = av[m];
    }
}

// ---------------------------------------------------------------------------------------------
// Exact attention backward, f32, tiled (FlashAttention-2 recurrence, recomputing
// P = exp(S - lse) from the forward's log-sum-exp one tile at a time; no Lq x Lk matrix).
// Deterministic: dk/dv are owned by one block per key tile (loop over query tiles) and dq by
// one block per query tile (loop over key tiles), so no atomics; the price is computing
// P and dP twice. delta_r = dout_r . out_r comes from qattn_exact_bwd_delta.
// Tiles: BT rows x up to MAXD columns in shared memory (row stride MAXD + 1 avoids bank
// conflicts); 256 threads. Instantiations: BT = 32 for D, Dv <= 64; BT = 16 for D, Dv <= 128.
// Inner products use explicit fmaf: this file is built with -fmad=false (for the sampled part,
// which must not contract), and an explicit fmaf is still a fused multiply-add.
// ---------------------------------------------------------------------------------------------

extern "C" __global__ void qattn_exact_bwd_delta(const float* __restrict__ out,
                                                 const float* __restrict__ dout, uint32_t rows,
                                                 uint32_t dv, float* __restrict__ delta) {
    const uint32_t warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const uint32_t lane = threadIdx.x & 31;
    if (warp >= rows) return;
    const float* o = out + (unsigned long long)warp * dv;
    const float* g = dout + (unsigned long long)warp * dv;
    float s = 0.0f;
    for (uint32_t t = lane; t < dv; t += 32) s = fmaf(o[t], g[t], s);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0) delta[warp] = s;
}

namespace {

constexpr int BWD_THREADS = 256;

struct BwdArgs {
    const float* q;
    const float* k;
    const float* v;
    const float* dout;
    const float* lse;
    const float* delta;
    const uint8_t* mask;
    uint32_t heads, lq, lk, d, dv;
    float scale;
    uint32_t causal;
};

// Loads `n` rows (row0..row0+n of a [len, cols] matrix) into a BT x (MAXD+1) tile, zero-padding.
template <int BT, int MAXD>
__device__ __forceinline__ void load_tile(float (*dst)[MAXD + 1], const float* src, uint32_t row0,
                                          uint32_t len, uint32_t cols) {
    for (uint32_t x = threadIdx.x; x < (uint32_t)BT * cols; x += BWD_THREADS) {
        const uint32_t rr = x / cols, cc = x % cols;
        const uint32_t row = row0 + rr;
        dst[rr][cc] = row < len ? src[(unsigned long long)row * cols + cc] : 0.0f;
    }
}

// P and dS of one (query tile, key tile) pair into shared memory.
template <int BT, int MAXD>
__device__ __forceinline__ void tile_p_ds(const BwdArgs& a, uint32_t batch, uint32_t i0, uint32_t j0,
                                          const float (*qs)[MAXD + 1], const float (*ks)[MAXD + 1],
                                          const float (*vs)[MAXD + 1], const float (*gs)[MAXD + 1],
                                          const float* lse_s, const float* delta_s,
                                          float (*ps)[BT + 1], float (*dss)[BT + 1]) {
    for (uint32_t x = threadIdx.x; x < (uint32_t)BT * BT; x += BWD_THREADS) {
        const uint32_t ii = x / BT, jj = x % BT;
        const uint32_t i = i0 + ii, j = j0 + jj;
        float p = 0.0f, ds = 0.0f;
        bool live = i < a.lq && j < a.lk && lse_s[ii] != -INFINITY;
        if (live && a.causal && j > i) live = false;
        if (live && a.mask != nullptr && a.mask[(unsigned long long)batch * a.lk + j] == 0) live = false;
        if (live) {
            float s = 0.0f, dp = 0.0f;
            for (uint32_t t = 0; t < a.d; ++t) s = fmaf(qs[ii][t], ks[jj][t], s);
            for (uint32_t t = 0; t < a.dv; ++t) dp = fmaf(gs[ii][t], vs[jj][t], dp);
            p = expf(s * a.scale - lse_s[ii]);
            ds = p * (dp - delta_s[ii]);
        }
        ps[ii][jj] = p;
        dss[ii][jj] = ds;
    }
}

template <int BT, int MAXD>
__device__ void exact_bwd_dkdv(const BwdArgs& a, float* dk, float* dvv) {
    constexpr int PER = (BT * MAXD + BWD_THREADS - 1) / BWD_THREADS;
    __shared__ float qs[BT][MAXD + 1], ks[BT][MAXD + 1], vs[BT][MAXD + 1], gs[BT][MAXD + 1];
    __shared__ float ps[BT][BT + 1], dss[BT][BT + 1];
    __shared__ float lse_s[BT], delta_s[BT];
    const uint32_t bh = blockIdx.y;
    const uint32_t batch = bh / a.heads;
    const uint32_t j0 = blockIdx.x * BT;
    const float* qh = a.q + (unsigned long long)bh * a.lq * a.d;
    const float* gh = a.dout + (unsigned long long)bh * a.lq * a.dv;
    load_tile<BT, MAXD>(ks, a.k + (unsigned long long)bh * a.lk * a.d, j0, a.lk, a.d);
    load_tile<BT, MAXD>(vs, a.v + (unsigned long long)bh * a.lk * a.dv, j0, a.lk, a.dv);
    float acc_k[PER], acc_v[PER];
#pragma unroll
    for (int m = 0; m < PER; ++m) {
        acc_k[m] = 0.0f;
        acc_v[m] = 0.0f;
    }
    const uint32_t i_start = a.causal ? (j0 / BT) * BT : 0;
    for (uint32_t i0 = i_start; i0 < a.lq; i0 += BT) {
        __syncthreads();
        load_tile<BT, MAXD>(qs, qh, i0, a.lq, a.d);
        load_tile<BT, MAXD>(gs, gh, i0, a.lq, a.dv);
        for (uint32_t x = threadIdx.x; x < (uint32_t)BT; x += BWD_THREADS) {
            const uint32_t i = i0 + x;
            lse_s[x] = i < a.lq ? a.lse[(unsigned long long)bh * a.lq + i] : -INFINITY;
            delta_s[x] = i < a.lq ? a.delta[(unsigned long long)bh * a.lq + i] : 0.0f;
        }
        __syncthreads();
        tile_p_ds<BT, MAXD>(a, batch, i0, j0, qs, ks, vs, gs, lse_s, delta_s, ps, dss);
        __syncthreads();
#pragma unroll
        for (int m = 0; m < PER; ++m) {
            const uint32_t x = threadIdx.x + BWD_THREADS * m;
            if (x < (uint32_t)BT * a.dv) {
                const uint32_t jj = x / a.dv, t = x % a.dv;
                float s = acc_v[m];
                for (int ii = 0; ii < BT; ++ii) s = fmaf(ps[ii][jj], gs[ii][t], s);
                acc_v[m] = s;
            }
            if (x < (uint32_t)BT * a.d) {
                const uint32_t jj = x / a.d, t = x % a.d;
                float s = acc_k[m];
                for (int ii = 0; ii < BT; ++ii) s = fmaf(dss[ii][jj], qs[ii][t], s);
                acc_k[m] = s;
            }
        }
    }
#pragma unroll
    for (int m = 0; m < PER; ++m) {
        const uint32_t x = threadIdx.x + BWD_THREADS * m;
        if (x < (uint32_t)BT * a.dv) {
            const uint32_t jj = x / a.dv, t = x % a.dv;
            if (j0 + jj < a.lk) dvv[((unsigned long long)bh * a.lk + j0 + jj) * a.dv + t] = acc_v[m];
        }
        if (x < (uint32_t)BT * a.d) {
            const uint32_t jj = x / a.d, t = x % a.d;
            if (j0 + jj < a.lk)
                dk[((unsigned long long)bh * a.lk + j0 + jj) * a.d + t] = acc_k[m] * a.scale;
        }
    }
}

template <int BT, int MAXD>
__device__ void exact_bwd_dq(const BwdArgs& a, float* dq) {
    constexpr int PER = (BT * MAXD + BWD_THREADS - 1) / BWD_THREADS;
    __shared__ float qs[BT][MAXD + 1], ks[BT][MAXD + 1], vs[BT][MAXD + 1], gs[BT][MAXD + 1];
    __shared__ float ps[BT][BT + 1], dss[BT][BT + 1];
    __shared__ float lse_s[BT], delta_s[BT];
    const uint32_t bh = blockIdx.y;
    const uint32_t batch = bh / a.heads;
    const uint32_t i0 = blockIdx.x * BT;
    load_tile<BT, MAXD>(qs, a.q + (unsigned long long)bh * a.lq * a.d, i0, a.lq, a.d);
    load_tile<BT, MAXD>(gs, a.dout + (unsigned long long)bh * a.lq * a.dv, i0, a.lq, a.dv);
    for (uint32_t x = threadIdx.x; x < (uint32_t)BT; x += BWD_THREADS) {
        const uint32_t i = i0 + x;
        lse_s[x] = i < a.lq ? a.lse[(unsigned long long)bh * a.lq + i] : -INFINITY;
        delta_s[x] = i < a.lq ? a.delta[(unsigned long long)bh * a.lq + i] : 0.0f;
    }
    const float* kh = a.k + (unsigned long long)bh * a.lk * a.d;
    const float* vh = a.v + (unsigned long long)bh * a.lk * a.dv;
    float acc[PER];
#pragma unroll
    for (int m = 0; m < PER; ++m) acc[m] = 0.0f;
    const uint32_t j_end = a.causal ? min(a.lk, i0 + BT) : a.lk;
    for (uint32_t j0 = 0; j0 < j_end; j0 += BT) {
        __syncthreads();
        load_tile<BT, MAXD>(ks, kh, j0, a.lk, a.d);
        load_tile<BT, MAXD>(vs, vh, j0, a.lk, a.dv);
        __syncthreads();
        tile_p_ds<BT, MAXD>(a, batch, i0, j0, qs, ks, vs, gs, lse_s, delta_s, ps, dss);
        __syncthreads();
#pragma unroll
        for (int m = 0; m < PER; ++m) {
            const uint32_t x = threadIdx.x + BWD_THREADS * m;
            if (x < (uint32_t)BT * a.d) {
                const uint32_t ii = x / a.d, t = x % a.d;
                float s = acc[m];
                for (int jj = 0; jj < BT; ++jj) s = fmaf(dss[ii][jj], ks[jj][t], s);
                acc[m] = s;
            }
        }
    }
#pragma unroll
    for (int m = 0; m < PER; ++m) {
        const uint32_t x = threadIdx.x + BWD_THREADS * m;
        if (x < (uint32_t)BT * a.d) {
            const uint32_t ii = x / a.d, t = x % a.d;
            if (i0 + ii < a.lq) dq[((unsigned long long)bh * a.lq + i0 + ii) * a.d + t] = acc[m] * a.scale;
        }
    }
}

}  // namespace

#define QATTN_BWD_ENTRY(NAME, KIND, BT, MAXD, OUTS, CALLOUTS)                                        \
    extern "C" __global__ void __launch_bounds__(BWD_THREADS)                                      \
        NAME(const float* q, const float* k, const float* v, const float* dout, const float* lse,   \
             const float* delta, const uint8_t* mask, uint32_t heads, uint32_t lq, uint32_t lk,     \
             uint32_t d, uint32_t dv, float scale, uint32_t causal, OUTS) {                         \
        const BwdArgs a{q, k, v, dout, lse, delta, mask, heads, lq, lk, d, dv, scale, causal};     \
        KIND<BT, MAXD>(a, CALLOUTS);                                                               \
    }

#define QATTN_COMMA ,
// Grid: (ceil(Lk / BT), BH) for dkdv, (ceil(Lq / BT), BH) for dq; 256 threads.
QATTN_BWD_ENTRY(qattn_exact_bwd_dkdv_32x64, exact_bwd_dkdv, 32, 64,
                float* dk QATTN_COMMA float* dvv, dk QATTN_COMMA dvv)
QATTN_BWD_ENTRY(qattn_exact_bwd_dkdv_16x128, exact_bwd_dkdv, 16, 128,
                float* dk QATTN_COMMA float* dvv, dk QATTN_COMMA dvv)
QATTN_BWD_ENTRY(qattn_exact_bwd_dq_32x64, exact_bwd_dq, 32, 64, float* dq, dq)
QATTN_BWD_ENTRY(qattn_exact_bwd_dq_16x128, exact_bwd_dq, 16, 128, float* dq, dq)
